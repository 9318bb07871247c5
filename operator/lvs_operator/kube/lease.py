"""`coordination.k8s.io/v1` Leases: the mechanics both binaries share.

The controller elects its writer with one Lease; each director keeps one Lease of its own
and watches everyone's. They differ in policy (what a Lease says, how often it is renewed,
what a lost write means), which stays with each binary; the requests, their paths and the
answers that are outcomes rather than failures are here:
- 404 to a read: no such Lease (`Leases.get` returns None);
- 409 to a create: someone created it first (`Leases.create` returns None);
- 409 to a replace: the Lease changed since it was read, someone else wrote it
  (`Leases.replace` returns None): the optimistic concurrency a leader election rests on.
Every other failure is a `client.ApiError`.

A watch of Leases is the `kube.watch.Reflector` over the client's `lister`/`watcher` of
`leases_path(namespace)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from lvs_operator.kube import client

API_VERSION = "coordination.k8s.io/v1"
PATH = f"/apis/{API_VERSION}"
KIND = "Lease"


def leases_path(namespace: str) -> str:
    """Return the path of the Leases of `namespace` (to list, watch and create)."""
    return f"{PATH}/namespaces/{namespace}/leases"


def lease_path(namespace: str, name: str) -> str:
    """Return the path of Lease `namespace/name`."""
    return f"{leases_path(namespace)}/{name}"


def micro_time(now: datetime) -> str:
    """Return `now` as a metav1.MicroTime (RFC 3339, microseconds, UTC), the form of a
    Lease's acquireTime and renewTime (and of an Event's eventTime)."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Leases:
    """Reads and writes Leases through a client (`client.Client`, or a fake in tests).

    Each method takes `timeout`, (seconds to connect, seconds to read the answer): a Lease
    write that cannot finish within its holder's deadline is worth nothing.
    """

    def __init__(self, api: client.Requester) -> None:
        self.api = api

    def get(self, namespace: str, name: str, *,
            timeout: tuple[float, float] = client.REQUEST_TIMEOUT) -> dict[str, Any] | None:
        """Return Lease `namespace/name`, or None when there is none.

        Raises:
            client.ApiError: on any other failure.
        """
        try:
            return _lease(self.api.request("GET", lease_path(namespace, name),
                                           timeout=timeout))
        except client.ApiError as e:
            if e.status == 404:
                return None
            raise

    def create(self, namespace: str, body: Mapping[str, Any], *,
               timeout: tuple[float, float] = client.REQUEST_TIMEOUT,
               ) -> dict[str, Any] | None:
        """Create Lease `body` (its metadata names it) in `namespace`; return it as stored,
        or None when a Lease of that name exists already (someone created it first).

        Raises:
            client.ApiError: on any other failure.
        """
        try:
            return _lease(self.api.request("POST", leases_path(namespace), body=body,
                                           timeout=timeout))
        except client.ApiError as e:
            if e.status == 409:
                return None
            raise

    def replace(self, namespace: str, name: str, body: Mapping[str, Any], *,
                timeout: tuple[float, float] = client.REQUEST_TIMEOUT,
                ) -> dict[str, Any] | None:
        """Replace Lease `namespace/name` with `body` (PUT), on condition that it is still
        at `body`'s metadata.resourceVersion; return it as stored, or None when it is not
        (someone else wrote it since it was read: read it again).

        Raises:
            client.ApiError: on any other failure (404 when it was deleted).
        """
        try:
            return _lease(self.api.request("PUT", lease_path(namespace, name), body=body,
                                           timeout=timeout))
        except client.ApiError as e:
            if e.status == 409:
                return None
            raise

    def patch(self, namespace: str, name: str, patch: Mapping[str, Any], *,
              timeout: tuple[float, float] = client.REQUEST_TIMEOUT) -> dict[str, Any]:
        """Apply the JSON merge patch `patch` to Lease `namespace/name` (unconditionally:
        for a Lease only its holder writes); return it as stored.

        Raises:
            client.ApiError: on failure (404 when there is no such Lease).
        """
        return _lease(self.api.request("PATCH", lease_path(namespace, name), body=patch,
                                       content_type=client.MERGE_PATCH, timeout=timeout))

    def delete(self, namespace: str, name: str, *,
               timeout: tuple[float, float] = client.REQUEST_TIMEOUT) -> bool:
        """Delete Lease `namespace/name`; return False when there was none.

        Raises:
            client.ApiError: on any other failure.
        """
        try:
            self.api.request("DELETE", lease_path(namespace, name), timeout=timeout)
        except client.ApiError as e:
            if e.status == 404:
                return False
            raise
        return True


def _lease(answer: Any) -> dict[str, Any]:
    """Return the API server's `answer` to a Lease request as a dict (a fake's or a
    proxy's empty answer as {})."""
    return dict(answer) if isinstance(answer, Mapping) else {}
