"""What the controller and the agent agree on: the VirtualServer API, as plain values. Pure.

- this module: the API group, version, kind and plural (spelled here once);
- `spec`: a VirtualServer document -> frozen `model` values, or a `SpecError` naming the field;
- `conditions`: the condition types, reasons and director roles both binaries read and write,
  and the timestamp format;
- `realservers`: the wire format of `status.realServers` (the controller writes it, the agents
  program it);
- `conflicts`: which VirtualServer keeps a contested VIP:port/protocol;
- `pools`: VIPPools (which addresses a namespace may use, on what terms) and `admit`, the
  one deny-by-default check the webhook, the controller and every agent run;
- `claims`: VIPClaims, the controller's record of which namespace owns a VIP (and which
  LoadBalancer Service an address was allocated to).

May import: the standard library, `lvs_operator.model` and the rest of `api`. Never `kube`,
`controller`, `agent`, `ipvs` or `network`: both binaries (and `ipvs apply`, which parses
the same documents without a cluster) build on it.
"""

GROUP = "lvs.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "VirtualServer"
PLURAL = "virtualservers"
