"""The whole product at once: the controller on the host resolves a selector-less Service's
EndpointSlice into status.realServers; the agent in the VM programs the director's kernel and
holds the VIP; real client traffic goes through IPVS (DR) to real servers in namespaces. And
a `type: LoadBalancer` Service: its VIP allocated from a pool, its VirtualServer generated,
the same traffic through it."""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Iterator

import pytest
import stack


@pytest.fixture
def cleanup(site: stack.Site) -> Iterator[list[str]]:
    """Names of the objects a test made (VirtualServer, Service, EndpointSlice share one)."""
    names: list[str] = []
    yield names
    for name in names:
        site.delete_virtual_server(name)
        site.delete_backend(name)


def test_traffic_reaches_every_real_server(site: stack.Site, vips: dict[str, str],
                                           cleanup: list[str]) -> None:
    vip = vips["traffic"]
    cleanup.append("web")
    site.apply_backend("web", {"rs1": True, "rs2": True, "rs3": True})
    site.apply_virtual_server("web", vip, "web")
    site.wait_reals(vip, {"rs1": 1, "rs2": 1, "rs3": 1})
    vs = site.wait_programmed("web")
    assert len(vs["status"]["realServers"]) == 3
    # A director takes VIPs once it has held its Lease for one duration (LVS_LEASE_*): the
    # agent may have started just now.
    stack.wait_for(f"{vip} on the director", lambda: vip in site.vips(), timeout=10)

    answers = collections.Counter(site.get(vip) for _ in range(30))
    assert set(answers) == {"rs1", "rs2", "rs3"}, answers
    assert min(answers.values()) >= 5, f"rr should spread new connections: {answers}"

    def counted():
        # The kernel refreshes these totals from per-CPU counters every 2 s (its estimator).
        svc = site.service(vip)
        return svc if svc is not None and svc.stats and svc.stats.conns >= 30 else None

    svc = stack.wait_for("the kernel's counters to show the 30 connections", counted, 15)
    assert svc.stats is not None
    assert svc.stats.out_packets == 0, "DR: replies must bypass the director"


def test_removed_endpoint_is_drained_then_deleted(site: stack.Site, vips: dict[str, str],
                                                  cleanup: list[str]) -> None:
    vip, drain = vips["drain"], 15
    cleanup.append("drain")
    site.apply_backend("drain", {"rs1": True, "rs2": True})
    site.apply_virtual_server("drain", vip, "drain", drain_seconds=drain)
    site.wait_reals(vip, {"rs1": 1, "rs2": 1})

    session = site.lab.http_session(site.client, vip)
    held = session.get()
    other = "rs2" if held == "rs1" else "rs1"
    site.apply_slice("drain", {other: True})  # the endpoint of the open connection goes
    site.wait_reals(vip, {held: 0, other: 1})
    # Draining: the established connection is still served where it was...
    assert session.get() == held
    # ... and new connections go elsewhere.
    assert {site.get(vip) for _ in range(6)} == {other}
    session.close()
    # Deleted once idle, or at the latest when drain.timeoutSeconds has passed.
    site.wait_reals(vip, {other: 1}, timeout=drain + stack.TIMEOUT)


def test_deleted_virtual_server_leaves_the_kernel_clean(
        site: stack.Site, vips: dict[str, str], cleanup: list[str]) -> None:
    vip = vips["delete"]
    cleanup.append("gone")
    site.apply_backend("gone", {"rs3": True})
    site.apply_virtual_server("gone", vip, "gone", drain_seconds=5)
    site.wait_reals(vip, {"rs3": 1})
    # The VIP follows the services in the same sync (or, while the agent is not yet ready
    # to take VIPs (LVS_LEASE_*), a moment later).
    stack.wait_for(f"{vip} on the director", lambda: vip in site.vips(), timeout=10)
    assert site.get(vip) == "rs3"

    site.delete_virtual_server("gone")
    stack.wait_for(f"{vip} withdrawn from the kernel and the director's eth0",
                   lambda: site.service(vip) is None and vip not in site.vips(),
                   timeout=5 + stack.TIMEOUT)


def test_agent_killed_and_restarted_loses_no_request(site: stack.Site, vips: dict[str, str],
                                                      cleanup: list[str]) -> None:
    vip = vips["restart"]
    cleanup.append("steady")
    site.apply_backend("steady", {"rs1": True, "rs2": True, "rs3": True})
    site.apply_virtual_server("steady", vip, "steady")
    site.wait_reals(vip, {"rs1": 1, "rs2": 1, "rs3": 1})
    site.wait_programmed("steady")
    before = site.service(vip)
    agent = site.agent

    with stack.Traffic(site, vip) as traffic:
        stack.wait_for("traffic", lambda: traffic.total >= 10)
        agent.kill(signal.SIGKILL)
        # The kernel keeps forwarding with no agent at all.
        mark = traffic.total
        stack.wait_for("traffic without an agent", lambda: traffic.total >= mark + 10)
        started = time.monotonic()
        agent.start()
        stack.wait_for("the restarted agent's first sync", lambda: agent.syncs() >= 1)
        restarted = time.monotonic() - started
        mark = traffic.total
        stack.wait_for("traffic after the restart", lambda: traffic.total >= mark + 10)

    assert traffic.failures == [], traffic.failures[:5]
    assert set(traffic.answers) == {"rs1", "rs2", "rs3"}, traffic.answers
    # Earlier tests' withdrawn services may still be draining (and finish now): only this
    # VirtualServer's operations count.
    since_restart = agent.log().rsplit(f"--- start {agent.starts}", 1)[-1]
    touched = [line for line in since_restart.splitlines() if f"{vip}:" in line]
    assert touched == [], "a restart with nothing changed must not touch the kernel"
    assert site.service(vip) == before
    assert vip in site.vips()
    print(f"\n{traffic.total} requests, none failed; the agent was back and synced "
          f"{restarted:.1f} s after its restart")


def test_loadbalancer_service_gets_a_vip_and_traffic(site: stack.Site, vips: dict[str, str],
                                                     cleanup: list[str]) -> None:
    """A `type: LoadBalancer` Service of class lvs.dev/ipvs, DirectRouting, three real
    servers: the controller allocates the VIP from an auto-assign pool, generates the
    VirtualServer, publishes status.loadBalancer; real traffic flows through the VIP; the
    Service deleted -> the VIP and the IPVS service withdrawn."""
    vip = vips["loadbalancer"]
    pool = f"{stack.NAMESPACE}-lb"
    pools_path = "/apis/lvs.dev/v1alpha1/vippools"
    site.request("POST", pools_path, body={
        "apiVersion": "lvs.dev/v1alpha1", "kind": "VIPPool", "metadata": {"name": pool},
        "spec": {"addresses": [vip], "namespaces": [stack.NAMESPACE], "autoAssign": True,
                 "directors": {"nodeSelector": {stack.DIRECTOR_LABEL: "true"},
                               "interface": "eth0"}}})
    services = f"/api/v1/namespaces/{stack.NAMESPACE}/services"
    cleanup.append("shop")
    try:
        site.request("POST", services, body={
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "shop", "annotations": {"lvs.dev/forwarding": "DirectRouting",
                                                         "lvs.dev/scheduler": "rr"}},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "lvs.dev/ipvs",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
        site.apply_slice("shop", {"rs1": True, "rs2": True, "rs3": True})

        def published() -> str | None:
            svc = site.request("GET", f"{services}/shop")
            ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress")
            return ingress[0].get("ip") if ingress else None
        assert stack.wait_for("status.loadBalancer.ingress", published) == vip
        site.wait_reals(vip, {"rs1": 1, "rs2": 1, "rs3": 1})
        stack.wait_for(f"{vip} on the director", lambda: vip in site.vips(), timeout=10)
        answers = collections.Counter(site.get(vip) for _ in range(30))
        assert set(answers) == {"rs1", "rs2", "rs3"}, answers
        print(f"\nLoadBalancer Service shop: EXTERNAL-IP {vip}, answers {dict(answers)}")

        site.request("DELETE", f"{services}/shop")
        stack.wait_for(f"{vip} withdrawn from the kernel and the director's eth0",
                       lambda: site.service(vip) is None and vip not in site.vips(),
                       timeout=30 + stack.TIMEOUT)
    finally:
        site.delete(pools_path, pool)
