"""The one Kubernetes layer both binaries use: credentials, requests, list+watch, Leases,
Events. One style: threads and the synchronous `client.Client`.

- `client`: a connection to one API server (one credentials loader: a kubeconfig file when
  given, else the pod's service account, else $KUBECONFIG or ~/.kube/config; requests and
  answers as plain JSON) and `ApiError`.
- `watch`: list, then watch, one kind of object into a local cache (a reflector), with the
  "everything listed" signal; `watch.Key` is the one key type of cached objects.
- `lease`: `coordination.k8s.io` Lease requests (get, create, conditional replace, merge
  patch, delete) with their outcomes as values: the mechanics under both the controller's
  leader election and the directors' Leases (each binary keeps its own policy).
- `events`: the `events.k8s.io/v1` Event both binaries post, and posting it.

May import: the standard library, `api` and the `kubernetes` client. Never `controller` or
`agent` (they build on it) nor the kernel layers.
"""
