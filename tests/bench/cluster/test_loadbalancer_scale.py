"""LoadBalancer Services at scale, against the real API server (printed, not asserted).

With `lvs-operator controller` running and leading, side by side in one run:
- 1,000 `type: LoadBalancer` Services of class lvs.dev/ipvs (no address asked for) are
  created by 8 client threads; time from the first create until every Service shows its
  EXTERNAL-IP (`status.loadBalancer.ingress`, seen through a watch), each address allocated
  from an auto-assign VIPPool (a VIPClaim each) with its VirtualServer generated;
- the same number of hand-written VirtualServers (static backends): time until every one
  has its `status.realServers` (the path the Services' VirtualServers go through as well);
- a restart with nothing changed: how many Service statuses the next controller rewrites
  (none expected) and whether any address moved.

`LVS_BENCH_SERVICES` scales it down for a quick try.
"""

from __future__ import annotations

import os
import queue
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from controller_support import Controller, Kube, service_path, virtual_server, vs_path
from controlplane import ControlPlane
from crd_support import install_crd

import scenarios

SERVICES = int(os.environ.get("LVS_BENCH_SERVICES", "1000"))
CREATORS = 8  # client threads creating the objects
TIMEOUT = 900.0

pytestmark = pytest.mark.cluster


class Watch:
    """A watch on a collection in a thread: (time, object) to a queue."""

    def __init__(self, kube: Kube, path: str) -> None:
        self.events: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        rv = kube.get(path)["metadata"]["resourceVersion"]
        self.stream = kube.watch(f"{path}?timeoutSeconds=1800", rv)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        for event in self.stream:
            assert event["type"] != "ERROR", event
            self.events.put((time.monotonic(), event["object"]))

    def until(self, done: dict[str, Any], want: int, probe: Any) -> None:
        """Fill `done` (name -> (time, value)) from the events until it has `want` names."""
        deadline = time.monotonic() + TIMEOUT
        while len(done) < want:
            at, obj = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            value = probe(obj)
            if value:
                done.setdefault(obj["metadata"]["name"], (at, value))


def _load_balancer(ns: str, i: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"lb-{i:04d}", "namespace": ns},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "lvs.dev/ipvs",
                     "allocateLoadBalancerNodePorts": False,
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}


def _external_ip(svc: dict[str, Any]) -> str | None:
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return ingress[0].get("ip") if ingress else None


def _resolved(vs: dict[str, Any]) -> bool:
    return bool((vs.get("status") or {}).get("realServers"))


def test_loadbalancer_scale(cluster: ControlPlane,
                            tmp_path_factory: pytest.TempPathFactory) -> None:
    install_crd(cluster)
    kube = Kube(cluster)
    ns = f"bench-lb-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("label", "namespace", ns, f"{scenarios.CLOSED_LABEL}=true")
    pool = f"bench-{secrets.token_hex(3)}"
    kube.create("/apis/lvs.dev/v1alpha1/vippools", {
        "apiVersion": "lvs.dev/v1alpha1", "kind": "VIPPool", "metadata": {"name": pool},
        # RFC 2544's benchmark range: 4,096 addresses for the Services, the rest for the
        # hand-written VirtualServers.
        "spec": {"addresses": ["198.18.0.0/20", "198.19.0.0/20"], "namespaces": [ns],
                 "autoAssign": True, "backendAddresses": ["10.100.0.0/16"]}})
    log_dir = tmp_path_factory.mktemp("controller")
    lease = f"lvs-bench-{secrets.token_hex(3)}"
    replicas: list[Controller] = []
    results: dict[str, float] = {}
    try:
        first = Controller(cluster, identity="bench-a", lease=lease, log_dir=log_dir,
                           lease_duration=5.0).start()
        replicas.append(first)
        first.wait_leading(timeout=60)

        # Hand-written VirtualServers first: their VIPs are then taken when the Services
        # come, and the allocator skips them (as it would in a cluster in use).
        watch = Watch(kube, vs_path(ns))
        started = time.monotonic()
        with ThreadPoolExecutor(CREATORS) as workers:
            list(workers.map(lambda i: kube.create(vs_path(ns), virtual_server(
                ns, f"vs-{i:04d}", vip=f"198.19.{i // 250}.{i % 250 + 1}",
                addresses=[{"ip": f"10.100.{i // 250}.{i % 250 + 1}"}])), range(SERVICES)))
        created = time.monotonic() - started
        resolved: dict[str, Any] = {}
        watch.until(resolved, SERVICES, _resolved)
        results["vs_created_s"] = created
        results["vs_all_resolved_s"] = max(at for at, _ in resolved.values()) - started

        watch = Watch(kube, service_path(ns))
        started = time.monotonic()
        with ThreadPoolExecutor(CREATORS) as workers:
            list(workers.map(lambda i: kube.create(service_path(ns), _load_balancer(ns, i)),
                             range(SERVICES)))
        results["svc_created_s"] = time.monotonic() - started
        published: dict[str, Any] = {}
        watch.until(published, SERVICES, _external_ip)
        results["svc_all_published_s"] = max(at for at, _ in published.values()) - started
        results["svc_first_published_s"] = min(at for at, _ in published.values()) - started
        addresses = [ip for _, ip in published.values()]
        claims = [c for c in kube.get("/apis/lvs.dev/v1alpha1/vipclaims")["items"]
                  if c["spec"]["namespace"] == ns and c["spec"].get("service")]
        results["duplicates"] = len(addresses) - len(set(addresses))
        results["claims"] = len(claims)
        results["peak_rss_mib"] = first.peak_rss_mib()

        # A restart with nothing changed: no Service status rewritten, no address moved.
        first.stop()
        second = Controller(cluster, identity="bench-b", lease=lease, log_dir=log_dir,
                            lease_duration=5.0).start()
        replicas.append(second)
        second.wait_leading(timeout=60)
        time.sleep(15)
        after = {s["metadata"]["name"]: _external_ip(s)
                 for s in kube.get(service_path(ns))["items"]}
        results["moved"] = sum(after[name] != ip for name, (_, ip) in published.items())
        results["restart_status_writes"] = second.log().count("status.loadBalancer")
    finally:
        for replica in replicas:
            replica.stop()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        cluster.kubectl("delete", "vippool", pool, "--ignore-not-found", check=False)

    ratio = results["svc_all_published_s"] / results["vs_all_resolved_s"]
    print(f"\nLoadBalancer scale: {SERVICES} Services and {SERVICES} VirtualServers, side by "
          "side")
    print(f"  VirtualServers created in {results['vs_created_s']:.1f} s; all real servers "
          f"published after {results['vs_all_resolved_s']:.1f} s")
    print(f"  Services created in {results['svc_created_s']:.1f} s; all EXTERNAL-IPs after "
          f"{results['svc_all_published_s']:.1f} s (first after "
          f"{results['svc_first_published_s']:.1f} s): "
          f"{SERVICES / results['svc_all_published_s']:.0f} Services/s")
    print(f"  Services / VirtualServers time ratio: {ratio:.2f}x (an address to allocate "
          "and a VirtualServer to generate per Service)")
    print(f"  addresses given twice: {results['duplicates']:.0f}; VIPClaims of Services: "
          f"{results['claims']:.0f}; controller peak RSS {results['peak_rss_mib']:.0f} MiB")
    print(f"  restart, nothing changed: {results['moved']:.0f} addresses moved, "
          f"{results['restart_status_writes']:.0f} log lines about status.loadBalancer")
