"""The one Kubernetes layer both binaries use: credentials, requests, list+watch.

- `client`: a connection to one API server (credentials from a kubeconfig or the pod's
  service account; requests and answers as plain JSON) and `ApiError`.
- `watch`: list, then watch, one kind of object into a local cache (a reflector), with the
  "everything listed" signal.

May import: the standard library, `api` and the `kubernetes` client. Never `controller` or
`agent` (they build on it) nor the kernel layers.
"""
