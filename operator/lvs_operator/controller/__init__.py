"""The controller (`lvs-operator controller`): cluster in, VirtualServer status out.

It resolves every VirtualServer's backend to the real servers each director must program,
writes them to `status.realServers` with conditions and Events, and serves the Pod webhook
that injects `realserver-init` into real-server pods and the validating webhook that refuses
VirtualServers outside their namespace's VIP pools.

- `settings`: what the controller is told (its command-line options).
- `handlers`: the kopf glue: credentials (`credentials`), the `@kopf.on.event` handler
  through which VirtualServers arrive, start-up and clean-up, `run`.
- `reconciler`: the `Controller`: Services, EndpointSlices, VIPPools, VIPClaims and
  Namespaces from `kube.watch` reflectors, what changed -> which VirtualServers to
  reconcile, the queue, one reconcile (grant the VIP's claim, compute the status, write only
  a difference), Events.
- `balancers`: `type: LoadBalancer` Services (on the Controller's caches, queue and Lease):
  their addresses (VIPClaims), generated VirtualServers and `status.loadBalancer`.
- `loadbalancer` (pure): which Services are served, their annotations, address candidates,
  the generated VirtualServer.
- `objects` (pure): the in-memory forms of the watched objects.
- `leader`: leader election among replicas on a Lease (only the leader writes).
- `resolve` (pure): a backend Service and its EndpointSlices -> `status.realServers`.
- `report` (pure): the status fields the controller owns, and the Events worth posting.
- `admission` (pure): which pods the Pod webhook prepares, and the patch.
- `validation` (pure): which VirtualServer writes the validating webhook refuses (VIP pools,
  VIP claims), and its configuration.
- `webhook`: the server of both webhooks, their reads from the API server, and the TLS
  material.

One client style: the synchronous `kube.client.Client` (shared with the agent), called from
a small thread pool so that kopf's event loop never blocks on the network.

May import: `api`, `kube`, the core (`model`) and third-party Kubernetes libraries (kopf, the
`kubernetes` client). Never `agent`, `ipvs` or `network`: the controller never touches a
kernel.
"""
