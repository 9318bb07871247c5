"""Shared by the controller's cluster tests and benchmark: run `lvs-operator controller` as a
process against the test control plane, talk to the API server quickly, build objects."""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from controlplane import ControlPlane

VS_PATH = "/apis/lvs.dev/v1alpha1"
_T = TypeVar("_T")


class ApiError(RuntimeError):
    """The API server answered with an error status."""

    def __init__(self, status: int, body: str, what: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body

    @property
    def message(self) -> str:
        """Return the `message` of the API's Status answer (the whole body if it is none)."""
        try:
            return str(json.loads(self.body)["message"])
        except (ValueError, KeyError, TypeError):
            return self.body

    @property
    def fields(self) -> list[str]:
        """Return the fields the Status answer's causes name (a schema refusal's)."""
        try:
            causes = json.loads(self.body)["details"]["causes"]
        except (ValueError, KeyError, TypeError):
            return []
        return [str(c.get("field", "")) for c in causes]


class Kube:
    """A small JSON client for the API server as cluster admin (or, with `token`, as whom
    that bearer token names): one kept-alive TLS connection per thread (kubectl costs ~50 ms
    a call; a bench makes thousands)."""

    def __init__(self, cluster: ControlPlane, *, token: str | None = None) -> None:
        self.host, self.port = urlsplit(cluster.server).hostname, cluster.port
        self.context = ssl.create_default_context(cafile=str(cluster.ca_cert))
        self.auth: dict[str, str] = {}
        if token is None:
            self.context.load_cert_chain(str(cluster.admin_cert), str(cluster.admin_key))
        else:
            self.auth = {"Authorization": f"Bearer {token}"}
        self.local = threading.local()

    def _connection(self) -> http.client.HTTPSConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(str(self.host), self.port, context=self.context,
                                               timeout=60)
            self.local.conn = conn
        return conn

    def request(self, method: str, path: str, body: Any = None, *,
                content_type: str = "application/json") -> Any:
        """Send a request; return the decoded JSON answer. Raises ApiError on >= 400."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", **self.auth}
        if data is not None:
            headers["Content-Type"] = content_type
        for attempt in range(2):
            conn = self._connection()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                text = resp.read().decode()
                break
            except (http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt:
                    raise
        if resp.status >= 400:
            raise ApiError(resp.status, text, f"{method} {path}")
        return json.loads(text) if text else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def create(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def merge(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def delete(self, path: str, *, missing_ok: bool = True, grace: int | None = None) -> None:
        body = None if grace is None else {"gracePeriodSeconds": grace}
        try:
            self.request("DELETE", path, body)
        except ApiError as e:
            if not (missing_ok and e.status == 404):
                raise

    def watch(self, path: str, resource_version: str) -> Iterator[dict[str, Any]]:
        """Yield the watch events of a collection `path` (a fresh connection, closed when
        the generator is; it waits for events as long as the server keeps the watch open)."""
        conn = http.client.HTTPSConnection(str(self.host), self.port, context=self.context,
                                           timeout=None)
        sep = "&" if "?" in path else "?"
        try:
            conn.request("GET", f"{path}{sep}watch=1&resourceVersion={resource_version}"
                         "&allowWatchBookmarks=false")
            resp = conn.getresponse()
            while True:
                line = resp.readline()
                if not line:
                    return
                yield json.loads(line)
        finally:
            conn.close()


def vs_path(namespace: str, name: str = "") -> str:
    return f"{VS_PATH}/namespaces/{namespace}/virtualservers" + (f"/{name}" if name else "")


def service_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/services" + (f"/{name}" if name else "")


def slice_path(namespace: str, name: str = "") -> str:
    return (f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
            + (f"/{name}" if name else ""))


# --- objects ---------------------------------------------------------------------------------

def virtual_server(namespace: str, name: str, *, vip: str, ports: list[int] | None = None,
                   service: str | None = None, port: str | int | None = "http",
                   addresses: list[dict[str, Any]] | None = None,
                   **spec: Any) -> dict[str, Any]:
    backend: dict[str, Any] = {"addresses": addresses} if addresses is not None else \
        {"service": {"name": service, **({"port": port} if port is not None else {})}}
    return {"apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualServer",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"vip": vip, "ports": [{"port": p} for p in ports or [80]],
                     "backend": backend, **spec}}


def service(namespace: str, name: str, *, port: int = 80, selector: dict[str, str] | None = None,
            ) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"name": "http", "port": port, "targetPort": port}]}
    if selector:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def endpoint(ip: str, *, ready: bool = True, serving: bool | None = None,
             terminating: bool | None = None, node: str = "node-a") -> dict[str, Any]:
    conditions: dict[str, bool] = {"ready": ready}
    if serving is not None:
        conditions["serving"] = serving
    if terminating is not None:
        conditions["terminating"] = terminating
    return {"addresses": [ip], "conditions": conditions, "nodeName": node,
            "targetRef": {"kind": "Pod", "name": f"pod-{ip.replace('.', '-')}"}}


def endpoint_slice(namespace: str, name: str, *, service: str, endpoints: list[dict[str, Any]],
                   port: int = 80) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": endpoints}


# --- waiting ---------------------------------------------------------------------------------

def wait_for(what: str, probe: Callable[[], _T | None], *, timeout: float = 20.0,
             interval: float = 0.1) -> _T:
    """Return the first truthy result of `probe()`; AssertionError (with the last result)
    after `timeout` seconds. Exceptions of `probe` count as falsy until the end."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = probe()
        except (ApiError, KeyError, IndexError, TypeError) as e:
            last = e
        else:
            if result:
                return result
            last = result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; "
                                 f"last: {last!r}")
        time.sleep(interval)


def condition(vs: dict[str, Any], kind: str) -> dict[str, Any]:
    """Return the condition `kind` of a VirtualServer (KeyError if absent)."""
    for c in vs.get("status", {}).get("conditions", []):
        if c["type"] == kind:
            return dict(c)
    raise KeyError(kind)


# --- the controller process ------------------------------------------------------------------

def _die_with_parent() -> None:
    """preexec_fn: the kernel kills the controller when the test process dies, however."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


class Controller:
    """`lvs-operator controller` as a child process with its own log file."""

    def __init__(self, cluster: ControlPlane, *, identity: str, lease: str, log_dir: Path,
                 lease_duration: float = 3.0, extra: tuple[str, ...] = ()) -> None:
        self.cluster = cluster
        self.identity = identity
        self.lease = lease
        self.log_path = log_dir / f"controller-{identity}.log"
        self.argv = [sys.executable, "-m", "lvs_operator.cli", "controller",
                     "--kubeconfig", str(cluster.kubeconfig), "--identity", identity,
                     "--lease-namespace", "default", "--lease-name", lease,
                     "--lease-duration", str(lease_duration), *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Controller:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.cluster.env,
                                         preexec_fn=_die_with_parent)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_leading(self, timeout: float = 30.0) -> None:
        """Wait until this replica says it leads (and the Lease names it)."""
        def leading() -> bool:
            assert self.alive(), f"controller {self.identity} died:\n{self.log()[-3000:]}"
            return "leading (Lease" in self.log() and self.holder() == self.identity
        wait_for(f"controller {self.identity} to lead", leading, timeout=timeout)

    def holder(self) -> str | None:
        r = self.cluster.kubectl("get", "lease", "-n", "default", self.lease, "-o",
                                 "jsonpath={.spec.holderIdentity}", check=False)
        return r.stdout.strip() or None if r.returncode == 0 else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def writes(self, namespace: str, name: str) -> int:
        """Return how many status writes for namespace/name this replica has logged."""
        return len(re.findall(rf"VirtualServer {re.escape(namespace)}/{re.escape(name)}: "
                              "status written", self.log()))

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop it (SIGTERM: it releases the Lease; SIGKILL: it does not)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def peak_rss_mib(self) -> float:
        """Return the process's peak resident memory (VmHWM) so far, in MiB."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

