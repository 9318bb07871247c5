"""The director agent (`lvs-operator agent`): one per director node, cluster in, kernel out.

May import: `api`, `kube` (the Kubernetes layer: client, list+watch, Leases, Events) and the
kernel layers (`ipvs`, `network`, `syncer`, `plan`, `ownership`, `model`). Never
`controller`.

It lists and watches VirtualServers, its own Node, the VIP pools and the Namespaces' labels,
admits each VirtualServer by the pools itself (deny by default: a forged or stale status
cannot make it hold an address outside them), computes this node's desired IPVS table
from each selected VirtualServer's spec and `status.realServers`, converges the kernel to it
(`syncer`: dump, plan, apply; owned services only; never a flush), holds the VIPs, drains
real servers gracefully, and reports `status.directors.<node>`, Events and metrics.

Pure core (no I/O; no kubernetes, kopf or pyroute2 imports):
- `settings`: what the agent is told (environment variables, CLI flags).
- `desired`: VirtualServer documents + the Node's labels + the pools' gate -> the desired
  table and VIPs.
- `election`: who holds each VIP: liveness from one Lease per director (local observation),
  rendezvous hashing over the live eligible directors, handover, self-fence.
- `role`: which role this director plays for a VirtualServer (the election, per program).
- `report`: the content of `status.directors.<node>` patches and of Events (built by
  `kube.events`).

Glue:
- `drain`: drain deadlines of withdrawn real servers (pure rules), persisted in a file
  across restarts, applied over the kernel boundary (`TimedDrain`).
- `routes`: the node's default-route interface (the VIP interface when none is given).
- `lease`: the director Lease policy (what a renewal says) on `kube.lease`'s requests:
  renews this director's Lease, watches everyone's, wakes the loop when the election's view
  changes (a Lease expiring included).
- `loop`: the `Agent`: threads, the rate-limited sync loop, status writes, the metrics server.
- `metrics`: the Prometheus metrics through `prometheus_client`: the kernel's figures as a
  collector read at scrape time (the families it yields are built by pure functions), the
  agent's own counters and histogram, the `/metrics` and `/healthz` server.
- `health`: director-side health checks of real servers (spec.healthCheck): a rise/fall
  machine per target and TCP/HTTP probes, run by a `Monitor` in a thread of its own with an
  asyncio loop (thousands of concurrent checks, one thread); a flip wakes the sync loop.

Threads, not asyncio: the Kubernetes layer's client is synchronous (one style for both
binaries), and the kernel boundary (`KernelIPVS`, the VIP calls: plain blocking netlink
sockets; pyroute2 only marshals messages) and the sysctl writes block anyway. The watch
threads fill caches and wake the single sync thread, which is the only one that writes
to the kernel (the metrics thread reads it under the same lock).
"""
