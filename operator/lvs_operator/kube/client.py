"""The Kubernetes API as both binaries use it: plain JSON over the `kubernetes` client's REST layer.

The generated client's typed models and per-call validation cost far more than the binaries
need (they read a few fields of each object); the `kubernetes` package is used for what it
does well: loading kubeconfig / in-cluster credentials (refreshing tokens), TLS, and a
connection pool. Requests and answers are plain dicts.

The style is synchronous, one request per call: the agent's work blocks on netlink anyway,
and the controller calls the same client from a thread pool.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, Self

import urllib3
from kubernetes import client, config

from lvs_operator.api import API_VERSION, PLURAL, pools
from lvs_operator.kube import watch

log = logging.getLogger(__name__)

VIRTUALSERVERS = f"/apis/{API_VERSION}/{PLURAL}"
NODES = "/api/v1/nodes"
VIPPOOLS = f"/apis/{API_VERSION}/{pools.PLURAL}"  # cluster-scoped
NAMESPACES = "/api/v1/namespaces"
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = (10.0, 30.0)  # seconds to connect, to read an answer
LIST_PAGE = 500  # objects per list request


class ApiError(Exception):
    """A request to the API server failed.

    Attributes:
        status: the HTTP status (0 when there was no answer).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Requester(Protocol):
    """What `kube.lease` and `kube.events` ask of a client: one request at a time
    (`Client` does it; tests fake it)."""

    def request(self, method: str, path: str, *, query: Sequence[tuple[str, str]] = (),
                body: object = None, content_type: str = "application/json",
                timeout: tuple[float, float] = REQUEST_TIMEOUT) -> Any:
        """Send one request; return the decoded JSON answer; raise ApiError on failure."""
        ...


class Client:
    """A connection (pool) to one API server, with credentials."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api

    @classmethod
    def connect(cls, kubeconfig: str | None, *, pool: int | None = None) -> Self:
        """Return a client with the credentials of the kubeconfig file `kubeconfig` when
        given; else of the pod's service account (in a cluster); else of $KUBECONFIG or
        ~/.kube/config. `pool`: the most connections kept open at once (None: the
        `kubernetes` package's default, 5 per CPU).

        Raises:
            ApiError: (status 0) when no credentials can be loaded: the message names what
                was tried.
        """
        configuration = client.Configuration()
        # The config loaders carry no annotations (hence the ignores).
        try:
            if kubeconfig:
                tried = f"the kubeconfig file {kubeconfig}"
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig, client_configuration=configuration)
            else:
                try:
                    tried = "the in-cluster service account"
                    config.load_incluster_config(  # type: ignore[no-untyped-call]
                        client_configuration=configuration)
                except config.ConfigException:
                    # Read now, not when `kubernetes` was imported (its own default).
                    default = os.environ.get("KUBECONFIG") or "~/.kube/config"
                    tried = f"the in-cluster service account, then {default}"
                    config.load_kube_config(  # type: ignore[no-untyped-call]
                        config_file=default, client_configuration=configuration)
        except (config.ConfigException, OSError) as e:
            raise ApiError(0, f"cannot load Kubernetes credentials from {tried}: {e}; pass "
                           "--kubeconfig (or set KUBECONFIG) outside a pod") from None
        if pool is not None:
            configuration.connection_pool_maxsize = pool
        return cls(client.ApiClient(configuration))

    @property
    def configuration(self) -> client.Configuration:
        """The credentials and server this client uses (to give another client, kopf's,
        the same ones)."""
        configuration: client.Configuration = self._api.configuration
        return configuration

    def close(self) -> None:
        """Close the connection pool."""
        self._api.close()  # type: ignore[no-untyped-call]

    def request(self, method: str, path: str, *, query: Sequence[tuple[str, str]] = (),
                body: object = None, content_type: str = "application/json",
                timeout: tuple[float, float] = REQUEST_TIMEOUT) -> Any:
        """Send one request; return the decoded JSON answer. `timeout` is (seconds to
        connect, seconds to read the answer).

        Raises:
            ApiError: on a non-2xx answer (with the API server's message) or no answer.
        """
        response = self._send(method, path, query=query, body=body, content_type=content_type,
                              timeout=timeout)
        try:
            return json.loads(response.data or b"null")
        except ValueError as e:
            raise ApiError(response.status, f"{method} {path}: not JSON: {e}") from None
        finally:
            response.release_conn()

    def lister(self, path: str, *, query: Sequence[tuple[str, str]] = ()) -> watch.Lister:
        """Return a function that lists `path`: (items, resourceVersion), in pages of
        `LIST_PAGE` objects (bounded answers: a few requests per thousand objects)."""
        def list_() -> tuple[list[watch.Object], str]:
            items: list[watch.Object] = []
            token = ""
            while True:
                page = [*query, ("limit", str(LIST_PAGE))] + (
                    [("continue", token)] if token else [])
                answer = self.request("GET", path, query=page)
                items.extend(answer.get("items") or [])
                token = (answer.get("metadata") or {}).get("continue") or ""
                if not token:
                    return items, str(answer["metadata"]["resourceVersion"])
        return list_

    def watcher(self, path: str, *, query: Sequence[tuple[str, str]] = (),
                timeout_seconds: int = 300, read_timeout: float = 120.0) -> watch.Watcher:
        """Return a function that watches `path` from a resourceVersion, with bookmarks.

        Each watch asks the server to end it after `timeout_seconds` give or take a fifth
        (so that many agents do not come back at the same moment); a watch silent for
        `read_timeout` seconds fails, and the reflector watches again.
        """
        def watch_(version: str) -> watch.Stream:
            seconds = int(timeout_seconds * random.uniform(0.8, 1.2))
            params = [*query, ("watch", "true"), ("allowWatchBookmarks", "true"),
                      ("resourceVersion", version), ("timeoutSeconds", str(seconds))]
            response = self._send("GET", path, query=params, body=None,
                                  content_type="application/json",
                                  timeout=(REQUEST_TIMEOUT[0], read_timeout), stream=True)
            return _Stream(response)
        return watch_

    def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> Any:
        """Merge-patch the status subresource of VirtualServer namespace/name.

        Raises:
            ApiError: as `request` (404 when the object is gone).
        """
        return self.request(
            "PATCH", f"/apis/{API_VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status",
            body=patch, content_type=MERGE_PATCH)

    def _send(self, method: str, path: str, *, query: Sequence[tuple[str, str]], body: object,
              content_type: str, timeout: tuple[float, float],
              stream: bool = False) -> urllib3.BaseHTTPResponse:
        """Send a request; return the urllib3 response of a 2xx answer.

        Raises:
            watch.Gone: on 410 to a watch (`stream`).
            ApiError: on any other non-2xx answer, or no answer.
        """
        try:
            request = self._api.param_serialize(
                method=method, resource_path=path, query_params=list(query),
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body, auth_settings=["BearerToken"])
            answer = self._api.call_api(*request, _request_timeout=timeout)
        except (client.ApiException, urllib3.exceptions.HTTPError, OSError) as e:
            raise ApiError(0, f"{method} {path}: {e}") from None
        response: urllib3.BaseHTTPResponse = answer.response
        if 200 <= response.status < 300:
            return response
        data = response.data
        response.release_conn()
        try:
            message = json.loads(data).get("message") or data.decode(errors="replace")
        except (ValueError, AttributeError):
            message = data.decode(errors="replace")
        if stream and response.status == 410:
            raise watch.Gone(message)
        raise ApiError(response.status, f"{method} {path}: {response.status} {message}")


class _Stream:
    """A watch response: one JSON event per line."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response

    def __iter__(self) -> Iterator[watch.Object]:
        buffer = bytearray()
        for chunk in self._response.stream(amt=None, decode_content=False):
            buffer += chunk
            # Lines end with "\n"; a chunk may hold several lines, or part of one.
            start = 0
            while (end := buffer.find(b"\n", start)) >= 0:
                line = bytes(buffer[start:end]).strip()
                start = end + 1
                if line:
                    yield json.loads(line)
            del buffer[:start]

    def close(self) -> None:
        # shutdown() unblocks a read in progress in another thread; close() frees the socket.
        # A watch that has just ended in its own thread has no socket left to shut down
        # (EBADF, or the connection back in the pool): nothing to unblock then, and the
        # caller (a reflector stopping, then an agent deleting its Lease) must go on.
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            self._response.shutdown()
        self._response.close()
