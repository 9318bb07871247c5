"""The keepalived container's program: `lvs-operator keepalived`.

Each director's agent pod runs two containers that share a folder (`vrrp.Paths`): the
agent renders keepalived.conf and instances.json there, and this program runs keepalived on
them and makes sure no VIP outlives it (issue 14: the data plane must not depend on the
API server; VRRP, not Leases, carries the directors' liveness).

- `supervisor`: waits for the agent's files, installs the VRRP guard, runs keepalived as a
  child (`-n -l -D --vrrp`), reloads it (SIGHUP) when its configuration changes, passes
  SIGTERM/SIGINT on and exits with its status; when keepalived dies on its own, deletes the
  VIPs it held and exits non-zero so that the kubelet restarts the container.
- `watchdog`: sees keepalived's own outgoing adverts (a filtered AF_PACKET socket), keeps a
  finite lifetime on the VIPs of instances that advertise, deletes at once those of
  instances that stopped (keepalived frozen or killed). A killed container's VIPs expire.
- `metrics`: the Prometheus metrics and their `/metrics` + `/healthz` server.

The VRRP guard itself (an nftables table) is kernel-boundary code: `network.nftables`.

It may import `lvs_operator.model`, `vrrp`, `network` and `files` only: never the agent,
the Kubernetes layer or the controller (it must keep working with the API server away, and
with the agent dead). tests/unit/test_layers.py holds it to that.
"""
