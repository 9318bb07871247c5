"""High availability with two directors, each a namespace with its own uplink to the API
server and its own `lvs-operator agent` (director-1, director-2), on one LAN with the client
and three DR real servers (`stack.site(directors=2)`):

Each director runs its agent and its keepalived container (`lvs-operator keepalived`), as
the chart's agent pod: keepalived's VRRP decides who holds a VIP.

- exactly one director holds a VIP, status.directors shows Active + Standby, both sync
  daemons (master and backup) run on both directors, and the client's ARP request gets
  exactly one answer;
- a real server failing its HTTP health check gets weight 0 on both directors and no new
  connections, and new connections again after it recovers;
- the active director is cut off (lab link down, agent and keepalived SIGKILLed): the client's
  request loop
  (a new connection per request, 0.2 s timeouts) gets answers from the standby; the gap is
  printed; keep-alive connections opened before the failover are still answered by the same
  real server on the same socket (connection sync);
- the old director comes back (its stale VIP expires, link up, keepalived and agent
  restarted): at most one handover (it is first in the VIP's ranking, so it takes the VIP
  back after LVS_VRRP_PREEMPT_DELAY_SECONDS), then stable, and never two MACs answering ARP
  for the VIP at any sampled instant.
"""

from __future__ import annotations

import collections
import functools
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import failover
import pytest
import stack

VIPS = {"roles": "10.200.0.120", "health": "10.200.0.121", "failover": "10.200.0.122"}
RS = {"rs1": True, "rs2": True, "rs3": True}
ALL_ONE = {"rs1": 1, "rs2": 1, "rs3": 1}
# A request's whole budget (connect + GET + answer) in the client's loop.
REQUEST_TIMEOUT = float(os.environ.get("LVS_FAILOVER_REQUEST_TIMEOUT", "0.2"))
# What the test enforces on the failover gap: far above the 1 s target (which the benchmark
# reports, tests/bench/fullstack/test_failover.py): this runs under software emulation on a
# shared machine. A gap above it means something waits for a timeout it should not.
GAP_LIMIT = float(os.environ.get("LVS_FAILOVER_GAP_LIMIT", "3.0"))
# As the agents have it: a director that comes back waits this long before it takes its VIPs
# back from a lower-priority holder.
SETTLE = float(os.environ.get("LVS_VRRP_PREEMPT_DELAY_SECONDS", "5"))
SETTLE_SLACK = 2.0  # keepalived starts shortly after the restart the test times
HANDOVER = 3.0  # time allowed for a handover once the returning director has settled
STABLE = 4.0  # after the last handover, no change for at least this long
LONG_LIVED = 10
STEADY = 2.0  # a role seen twice this far apart is the role


@pytest.fixture(scope="module")
def ha() -> Iterator[stack.Site]:
    with stack.site(list(VIPS.values()), directors=2) as the_site:
        # Both agents up and past the preempt delay, so that the first VirtualServer goes
        # straight to the first director of its ranking.
        for agent in the_site.agents.values():
            stack.wait_for(f"the agent of {agent.node} to sync", functools.partial(
                lambda a: a.syncs() >= 1, agent), interval=0.5)
        time.sleep(SETTLE + 1)
        yield the_site
        print("\n" + the_site.fence_report())


@pytest.fixture
def cleanup(ha: stack.Site) -> Iterator[list[str]]:
    """Names of the objects a test made (VirtualServer, Service, EndpointSlice share one)."""
    names: list[str] = []
    yield names
    for name in names:
        ha.delete_virtual_server(name)
        ha.delete_backend(name)


def roles(ha: stack.Site, name: str) -> dict[str, str]:
    """node -> role in status.directors."""
    return {node: str(entry.get("role", "")) for node, entry in ha.director_status(name).items()}


def wait_one_active(ha: stack.Site, name: str, vip: str,
                    timeout: float = stack.TIMEOUT) -> tuple[str, str]:
    """Wait until one director holds ``vip`` and status says it is Active, the other
    Standby; return (active, standby)."""
    def settled() -> tuple[str, str] | None:
        holders = ha.holders(vip)
        status = roles(ha, name)
        if len(holders) != 1 or len(status) != 2:
            return None
        active = holders[0]
        standby = next(n for n in ha.directors if n != active)
        if status.get(active) != "Active" or status.get(standby) != "Standby":
            return None
        return active, standby
    def steady() -> tuple[str, str] | None:
        # A new VRRP instance starts on both directors at once: both may time out and
        # claim it for an advert or two before the lower priority yields. Wait it out.
        first = settled()
        if first is None:
            return None
        time.sleep(STEADY)
        return first if settled() == first else None
    return stack.wait_for(f"one Active director holding {vip} and one Standby, steady",
                          steady, timeout, interval=0.2)


def make(ha: stack.Site, cleanup: list[str], name: str,
         health_check: Mapping[str, Any] | None = None) -> str:
    vip = VIPS[name]
    cleanup.append(name)
    ha.apply_backend(name, RS)
    ha.apply_virtual_server(name, vip, name, drain_seconds=5, health_check=health_check)
    ha.wait_reals(vip, ALL_ONE)  # on both directors: standbys program IPVS too
    ha.wait_programmed(name)
    wait_one_active(ha, name, vip)  # before any traffic: a new VIP settles on one holder
    return vip


def test_one_active_director_holds_the_vip(ha: stack.Site, cleanup: list[str]) -> None:
    vip = make(ha, cleanup, "roles")
    active, standby = wait_one_active(ha, "roles", vip)
    vs = stack.wait_for("status.activeDirector", lambda: (
        (ha.get_virtual_server("roles") or {}).get("status", {}).get("activeDirector")
        == active and ha.get_virtual_server("roles")), interval=0.2)
    assert vs["status"]["activeDirector"] == active

    # The sync daemons: both on both directors (VRRP moves VIPs without asking the agents:
    # the daemons must run before it does).
    daemons = {node: ns.run(["ipvsadm", "-L", "--daemon"]).stdout
               for node, ns in ha.directors.items()}
    for node in (active, standby):
        assert "master sync daemon" in daemons[node], daemons
        assert "backup sync daemon" in daemons[node], daemons

    # Who answers ARP for the VIP, seen from the client: the active director only.
    with failover.ArpProber(ha.client, ha.ip("client")) as arp:
        answers = [arp.probe(vip) for _ in range(5)]
    assert all(len(a) <= 1 for a in answers), f"two directors answer ARP for {vip}: {answers}"
    assert answers.count([ha.mac(active)]) >= 4, (
        f"ARP for {vip}: {answers}; {active} is {ha.mac(active)}, "
        f"{standby} is {ha.mac(standby)}")

    served = collections.Counter(ha.get(vip) for _ in range(12))
    assert set(served) == {"rs1", "rs2", "rs3"}, served
    print(f"\n{vip}: {active} Active, {standby} Standby (both run both sync daemons); "
          f"ARP answered by {active} only; 12 requests over {dict(served)}")


def test_failing_health_check_gets_weight_zero(ha: stack.Site, cleanup: list[str]) -> None:
    check = {"http": {"path": "/healthz", "statusCodes": [200]}, "intervalSeconds": 1,
             "timeoutSeconds": 1, "failureThreshold": 2, "successThreshold": 1}
    vip = make(ha, cleanup, "health", health_check=check)
    failing = "rs2"
    endpoint = f"{ha.ip(failing)}:80"

    def unhealthy() -> dict[str, list[str]]:
        return {node: list(entry.get("unhealthy") or [])
                for node, entry in ha.director_status("health").items()}

    ha.servers[failing].set_status("/healthz", 500)
    try:
        started = time.monotonic()
        ha.wait_reals(vip, {**ALL_ONE, failing: 0})
        took = time.monotonic() - started
        stack.wait_for(f"both directors to report {endpoint} unhealthy", lambda: unhealthy() == {
            node: [endpoint] for node in ha.directors}, interval=0.2)
        served = collections.Counter(ha.get(vip) for _ in range(20))
        assert failing not in served, f"weight 0 must get no new connections: {served}"
        assert set(served) == {"rs1", "rs3"}, served
    finally:
        ha.servers[failing].set_status("/healthz", None)
    started = time.monotonic()
    ha.wait_reals(vip, ALL_ONE)
    back = time.monotonic() - started
    stack.wait_for("no director to report an unhealthy server", lambda: unhealthy() == {
        node: [] for node in ha.directors}, interval=0.2)
    again = collections.Counter(ha.get(vip) for _ in range(12))
    assert set(again) == {"rs1", "rs2", "rs3"}, again
    print(f"\n{failing} /healthz 500 -> weight 0 on both directors after {took:.1f} s "
          f"(interval 1 s, failureThreshold 2); 20 new connections: {dict(served)}; "
          f"healthy again -> weight 1 after {back:.1f} s; 12 new connections: {dict(again)}")


def test_active_director_lost_then_back(ha: stack.Site, cleanup: list[str]) -> None:
    vip = make(ha, cleanup, "failover")
    active, standby = wait_one_active(ha, "failover", vip)
    macs = {node: ha.mac(node) for node in ha.directors}
    by_mac = {mac: node for node, mac in macs.items()}
    cut_off = False
    try:
        with failover.RequestLoop(ha.client, vip, timeout=REQUEST_TIMEOUT) as loop:
            loop.wait_answers(20, since=0.0, timeout=stack.TIMEOUT)
            with failover.LongLived(ha.client, vip, LONG_LIVED) as conns:
                # Each connection has had 3 packets through the director (SYN, ACK, the
                # GET): the sync daemon sends it to the standby (it flushes every ~2 s).
                try:
                    failover.wait_synced(ha.directors[standby], vip, conns.ports)
                except TimeoutError as e:
                    raise AssertionError(f"{e}; {ha.fence_report()}") from None
                # The director is lost: off the LAN, its agent and keepalived dead (no
                # goodbye). The link first, so the gap the client sees includes VRRP's whole
                # master-down interval.
                cut = time.monotonic()
                cut_off = True
                ha.cut_off(active)
                loop.wait_answers(20, since=cut, timeout=stack.TIMEOUT)
                lost = loop.outage(cut)
                problems = conns.check()
                servers = collections.Counter(conns.servers)
            wait_active(ha, vip, standby)
            print(f"\nfailover {active} -> {standby}: the client saw {lost}; "
                  f"{LONG_LIVED - len(problems)}/{LONG_LIVED} long-lived connections "
                  f"({dict(servers)}) still answered by their real server")
            assert not problems, problems
            assert lost.gap < GAP_LIMIT, f"failover took {lost}"

            # The old active director comes back: its stale VIP expires, its link comes
            # up, its keepalived and agent start (see Site.bring_back).
            prober = failover.ArpProber(ha.client, ha.ip("client"))
            with prober, failover.HolderSampler(prober, vip) as sampler, \
                    stack.HolderTimeline(ha, vip) as kernels:
                restart = time.monotonic()
                ha.bring_back(active, [vip])
                back = time.monotonic()
                cut_off = False
                # It is first in the VIP's ranking: it takes the VIP back after the preempt
                # delay (LVS_VRRP_PREEMPT_DELAY_SECONDS after its keepalived started, so
                # before back + SETTLE): one handover. Then nothing may change for STABLE s.
                while time.monotonic() < back + SETTLE + HANDOVER + STABLE:
                    time.sleep(0.2)
                end = time.monotonic()
            returned = loop.outage(restart)
        final, _ = wait_one_active(ha, "failover", vip, timeout=10)
        changes = [c for c in sampler.changes() if c[0] >= back]
        moves = [(round(t - back, 2), by_mac.get(a or ""), by_mac.get(b)) for t, a, b in changes]
        dropped, retaken = kernels.dropped_retaken(active, since=restart)
        assert dropped is not None  # bring_back waited for it
        print(f"{active} back (its stale VIP expired, its link and its pod back after "
              f"{back - restart:.1f} s): "
              f"ARP sampled {len(sampler.samples)} times over "
              f"{end - sampler.samples[0].at:.1f} s; handovers {moves} (s after it came "
              f"back); {final} Active"
              + (f", {active} took the VIP back {retaken - dropped:.1f} s after it was first "
                 f"seen without it ({dropped - restart:.1f} s after the restart began)"
                 if retaken is not None else "")
              + f"; the client's longest wait since the restart: {returned}")
        assert sampler.two_holders() == [], (
            f"two MACs answered ARP for {vip}: {sampler.two_holders()[:5]}; {macs}")
        assert kernels.several(back) == [], (
            f"{vip} on two directors' eth0 at once: {kernels.several(back)[:5]}")
        # A director that comes back takes its VIPs back only after the preempt delay.
        assert retaken is None or retaken - dropped >= SETTLE - SETTLE_SLACK, (
            f"{active} took {vip} back {retaken - dropped:.1f} s after its stale VIP "
            f"expired, before the preempt delay ({SETTLE:g} s)")
        assert len(changes) <= 1, f"flapping: {changes}"
        stable_since = changes[-1][0] if changes else back
        assert end - stable_since >= STABLE, f"still changing {end - stable_since:.1f} s " \
            "before the end"
        last = [s.macs for s in sampler.samples[-5:]]
        assert last.count((macs[final],)) >= 3, f"last ARP answers {last}; {macs}"
        assert returned.gap < GAP_LIMIT, f"handover took {returned}"
    finally:
        if cut_off:  # leave the site as it was for what follows
            ha.bring_back(active, [vip])


def wait_active(ha: stack.Site, vip: str, node: str) -> None:
    """Wait until ``node`` holds ``vip`` and reports Active (its peer is cut off)."""
    stack.wait_for(f"{node} to hold {vip} and report Active",
                   lambda: vip in ha.vips(ha.directors[node])
                   and roles(ha, "failover").get(node) == "Active", interval=0.2)
