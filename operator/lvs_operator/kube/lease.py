"""coordination.k8s.io/v1 Leases: the requests both binaries make of them.

The mechanics only; the policies live with their users: the controller's leader election
(`controller.leader`) and the directors' Leases (`agent.lease`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from lvs_operator.kube import client

PATH = "/apis/coordination.k8s.io/v1"


class Api(Protocol):
    """What the Lease requests need of a client (`kube.client.Client` has it)."""

    def request(self, method: str, path: str, *, query: Sequence[tuple[str, str]] = (),
                body: object = None, content_type: str = "application/json",
                timeout: tuple[float, float] = client.REQUEST_TIMEOUT) -> Any:
        """Send one request; return the decoded answer; raise client.ApiError on failure."""
        ...


def leases_path(namespace: str) -> str:
    """Return the path of the Leases of `namespace`."""
    return f"{PATH}/namespaces/{namespace}/leases"


def lease_path(namespace: str, name: str) -> str:
    """Return the path of Lease namespace/name."""
    return f"{leases_path(namespace)}/{name}"


def micro_time(now: datetime) -> str:
    """Return `now` as a metav1.MicroTime (RFC 3339, microseconds, UTC)."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Leases:
    """Reads and writes Leases through `api`; each call blocks on the API server."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Return the Lease, or None when there is none.

        Raises:
            client.ApiError: on any other failure.
        """
        try:
            answer: dict[str, Any] = self.api.request("GET", lease_path(namespace, name))
        except client.ApiError as error:
            if error.status == 404:
                return None
            raise
        return answer

    def create(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create a Lease; return it, or None when someone else created it first (409).

        Raises:
            client.ApiError: on any other failure.
        """
        return self._unless_conflict("POST", leases_path(namespace), body)

    def replace(self, namespace: str, name: str,
                body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Replace a Lease if its metadata.resourceVersion is still the stored one; return
        it, or None when someone else wrote it meanwhile (409).

        Raises:
            client.ApiError: on any other failure.
        """
        return self._unless_conflict("PUT", lease_path(namespace, name), body)

    def patch(self, namespace: str, name: str, patch: Mapping[str, Any], *,
              timeout: tuple[float, float] = client.REQUEST_TIMEOUT) -> dict[str, Any]:
        """JSON-merge-patch a Lease; return it.

        Raises:
            client.ApiError: on failure (404 when it does not exist).
        """
        answer: dict[str, Any] = self.api.request(
            "PATCH", lease_path(namespace, name), body=patch,
            content_type=client.MERGE_PATCH, timeout=timeout)
        return answer

    def _unless_conflict(self, method: str, path: str,
                         body: Mapping[str, Any]) -> dict[str, Any] | None:
        try:
            answer: dict[str, Any] = self.api.request(method, path, body=body)
        except client.ApiError as error:
            if error.status == 409:
                return None
            raise
        return answer
