"""The controller at scale, against the real API server (printed, not asserted).

1,000 VirtualServers, each backed by a selector-less Service with one EndpointSlice of 20
ready endpoints, all created before the controller starts. Then:
- cold start: time from starting `lvs-operator controller` until every VirtualServer's
  status lists its 20 ready real servers (seen through a watch, as an agent would);
- change latency: one endpoint flips ready / not ready 100 times; time from the EndpointSlice
  write until the VirtualServer's status.realServers shows it, p50 and p99;
- restart: a second controller takes over with nothing changed: how many statuses it
  rewrites (the answer should be none);
- the controller's peak resident memory (VmHWM).

`LVS_BENCH_VIRTUAL_SERVERS` and `LVS_BENCH_FLIPS` scale it down for a quick try.
"""

from __future__ import annotations

import os
import queue
import secrets
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from controller_support import (
    Controller,
    Kube,
    endpoint,
    endpoint_slice,
    service,
    service_path,
    slice_path,
    virtual_server,
    vs_path,
)
from controlplane import ControlPlane
from crd_support import install_crd

VIRTUAL_SERVERS = int(os.environ.get("LVS_BENCH_VIRTUAL_SERVERS", "1000"))
ENDPOINTS = 20
FLIPS = int(os.environ.get("LVS_BENCH_FLIPS", "100"))
CREATORS = 8  # client threads creating the objects
RESOLVE_TIMEOUT = 600.0

pytestmark = pytest.mark.cluster


def _name(i: int) -> str:
    return f"vs-{i:04d}"


def _address(i: int, j: int) -> str:
    return f"10.{100 + i // 250}.{i % 250}.{j + 1}"


def _endpoints(i: int, *, not_ready: int | None = None) -> list[dict[str, Any]]:
    return [endpoint(_address(i, j), ready=j != not_ready, serving=j != not_ready)
            for j in range(ENDPOINTS)]


def _create(kube: Kube, ns: str, i: int) -> None:
    name = _name(i)
    kube.create(service_path(ns), service(ns, name))
    kube.create(slice_path(ns), endpoint_slice(ns, name, service=name, endpoints=_endpoints(i)))
    # VIPs from 198.18.0.0/15 (RFC 2544: for benchmarks).
    kube.create(vs_path(ns), virtual_server(ns, name, vip=f"198.18.{i // 250}.{i % 250 + 1}",
                                            service=name))


class StatusWatch:
    """A watch on the namespace's VirtualServers in a thread: (time, object) to a queue."""

    def __init__(self, kube: Kube, path: str) -> None:
        self.events: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        rv = kube.get(path)["metadata"]["resourceVersion"]
        self.stream = kube.watch(f"{path}{'&' if '?' in path else '?'}timeoutSeconds=1800", rv)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for event in self.stream:
            assert event["type"] != "ERROR", event
            self.events.put((time.monotonic(), event["object"]))


def _all_ready(vs: dict[str, Any]) -> bool:
    reals = vs.get("status", {}).get("realServers") or []
    return len(reals) == ENDPOINTS and all(r["ready"] for r in reals)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def test_controller_scale(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory):
    install_crd(cluster)
    kube = Kube(cluster)
    ns = f"bench-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", ns)
    log_dir = tmp_path_factory.mktemp("controller")
    lease = f"lvs-bench-{secrets.token_hex(3)}"
    results: dict[str, Any] = {"virtualServers": VIRTUAL_SERVERS, "endpoints": ENDPOINTS}
    replicas: list[Controller] = []
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(CREATORS) as pool:
            list(pool.map(lambda i: _create(kube, ns, i), range(VIRTUAL_SERVERS)))
        results["create_s"] = time.monotonic() - started

        # Cold start: every VirtualServer resolved.
        watch = StatusWatch(kube, vs_path(ns))
        first = Controller(cluster, identity="bench-a", lease=lease, log_dir=log_dir,
                           lease_duration=5.0)
        replicas.append(first)
        started = time.monotonic()
        first.start()
        resolved: dict[str, float] = {}
        deadline = started + RESOLVE_TIMEOUT
        while len(resolved) < VIRTUAL_SERVERS:
            at, vs = watch.events.get(timeout=max(0.1, deadline - time.monotonic()))
            if _all_ready(vs):
                resolved.setdefault(vs["metadata"]["name"], at)
        results["cold_start_all_resolved_s"] = max(resolved.values()) - started
        results["cold_start_first_resolved_s"] = min(resolved.values()) - started

        # Change latency: endpoint 0 of vs-0000 flips between not ready and ready.
        flip_watch = StatusWatch(kube, vs_path(ns) + f"?fieldSelector=metadata.name%3D{_name(0)}")
        latencies = []
        for flip in range(FLIPS):
            ready = flip % 2 == 1
            before = time.monotonic()
            kube.merge(slice_path(ns, _name(0)),
                       {"endpoints": _endpoints(0, not_ready=None if ready else 0)})
            while True:
                at, vs = flip_watch.events.get(timeout=30)
                reals = vs.get("status", {}).get("realServers") or []
                if reals and reals[0]["ip"] == _address(0, 0) and reals[0]["ready"] == ready:
                    latencies.append(at - before)
                    break
        results["flip_p50_ms"] = statistics.median(latencies) * 1000
        results["flip_p99_ms"] = _percentile(latencies, 0.99) * 1000
        results["flip_max_ms"] = max(latencies) * 1000
        results["controller_peak_rss_mib"] = first.peak_rss_mib()

        # Restart with nothing changed: the next controller rewrites no status.
        first.stop()
        second = Controller(cluster, identity="bench-b", lease=lease, log_dir=log_dir,
                            lease_duration=5.0)
        replicas.append(second)
        started = time.monotonic()
        second.start()
        second.wait_leading(timeout=60)
        results["restart_leading_s"] = time.monotonic() - started
        time.sleep(10)  # long enough for its pass over every VirtualServer
        results["restart_status_writes"] = second.log().count("status written")
        results["restart_peak_rss_mib"] = second.peak_rss_mib()
    finally:
        for replica in replicas:
            replica.stop()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        cluster.kubectl("delete", "lease", "-n", "default", lease, "--ignore-not-found",
                        check=False)

    print(f"\ncontroller scale: {VIRTUAL_SERVERS} VirtualServers x {ENDPOINTS} endpoints")
    print(f"  created Services, EndpointSlices, VirtualServers in {results['create_s']:.1f} s")
    print(f"  cold start -> all resolved   {results['cold_start_all_resolved_s']:7.1f} s "
          f"(first after {results['cold_start_first_resolved_s']:.1f} s)")
    print(f"  endpoint flip -> status      p50 {results['flip_p50_ms']:.0f} ms, "
          f"p99 {results['flip_p99_ms']:.0f} ms, max {results['flip_max_ms']:.0f} ms "
          f"({FLIPS} flips)")
    print(f"  restart, nothing changed     leading after {results['restart_leading_s']:.1f} s, "
          f"{results['restart_status_writes']} status writes")
    print(f"  controller peak RSS          {results['controller_peak_rss_mib']:.0f} MiB "
          f"(after restart: {results['restart_peak_rss_mib']:.0f} MiB)")
