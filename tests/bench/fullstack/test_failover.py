"""Director failover as a client sees it (printed, not asserted against the targets).

Runs inside the kernel VM booted by tests/fullstack/host.py with two directors (director-1,
director-2: each a namespace with its own uplink to the API server and its own `lvs-operator
agent`), one client and three DR real servers (`make bench`):

    .venv/bin/python tests/fullstack/host.py .venv/bin/pytest tests/bench/fullstack -s -v

`LVS_BENCH_FAILOVERS` runs (default 5), each:
1. LONG_LIVED (10) HTTP keep-alive connections to the VIP, each used once, and waited for on
   the standby's IPVS connection table (the kernel's sync daemon sends them);
2. a client loop: a new connection and one GET per attempt, REQUEST_TIMEOUT (0.2 s) for each
   (a lost SYN is not waited for: the next attempt starts at once);
3. the active director is lost: its LAN cable unplugged, then its agent SIGKILLed;
4. the *failover gap*: the longest time between two answers of the loop (last answer before
   -> first answer after, from the standby), and, from the directors' kernels (polled every
   50 ms), when the standby had the VIP on its interface. Every long-lived connection is then
   used again: it survived if the same real server answers on the same socket;
5. the lost director comes back (agent restarted, then its cable), and, as the VIP's
   rendezvous winner, takes the VIP back after the settle time (a planned handover: its gap
   is reported too), before the next run.

Figures: the median failover gap (target < 1 s; keepalived VRRP takes about 3-4 s, MetalLB L2
and kube-vip "a few seconds") and the share of long-lived connections that survive (target
100%), printed and written to $LVS_VM_OUT/bench_failover.json. Under qemu's software
emulation on a shared 2-CPU machine: a real machine is faster, and another VM or build
running beside it slows everything (agent restarts, requests, Lease renewals) markedly.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Iterator

import pytest

from fullstack import failover, stack

VIP = "10.200.0.111"
NAME = "failover"
RUNS = int(os.environ.get("LVS_BENCH_FAILOVERS", "5"))
LONG_LIVED = 10
REQUEST_TIMEOUT = float(os.environ.get("LVS_FAILOVER_REQUEST_TIMEOUT", "0.2"))
TARGET_GAP = 1.0
SETTLE = float(os.environ.get("LVS_LEASE_SETTLE_SECONDS", "5"))  # the agents' setting
START_TIMEOUT = 900.0  # the agents' first start under emulation on a busy machine


@pytest.fixture(scope="module")
def ha() -> Iterator[stack.Site]:
    with stack.site([VIP], directors=2) as the_site:
        yield the_site


def _roles(ha: stack.Site) -> dict[str, str]:
    return {node: str(entry.get("role", ""))
            for node, entry in ha.director_status(NAME).items()}


def _one_active(ha: stack.Site) -> tuple[str, str] | None:
    holders = ha.holders(VIP)
    roles = _roles(ha)
    if len(holders) != 1 or sorted(roles.values()) != ["Active", "Standby"]:
        return None
    active = holders[0]
    if roles.get(active) != "Active":
        return None
    return active, next(n for n in ha.directors if n != active)


def _steady(ha: stack.Site, timeout: float) -> tuple[str, str]:
    """Wait for one Active holder and one Standby, unchanged for 2 s; (active, standby)."""
    def steady() -> tuple[str, str] | None:
        first = _one_active(ha)
        if first is None:
            return None
        time.sleep(2.0)
        return first if _one_active(ha) == first else None
    return stack.wait_for("one Active director and one Standby, steady", steady, timeout,
                          interval=0.5)


def _synced_connections(ha: stack.Site,
                        run: int) -> tuple[str, str, failover.LongLived, int]:
    """Wait for a steady (active, standby); open the long-lived connections and wait until
    the standby's kernel has them all. The kernel's sync daemon sends a connection once (at
    its 3rd packet) and again only every 50 packets: one whose message was lost -- the
    master's buffer is dropped when the daemon restarts, as it does when a late Lease renewal
    flips the roles under load -- is never sent again. Such a set is replaced (up to twice,
    counted in the results): the failover is measured with every connection on the standby.
    """
    for attempt in range(3):
        # The returning director takes the VIP back after LVS_LEASE_SETTLE_SECONDS.
        active, standby = _steady(ha, timeout=60)
        conns = failover.LongLived(ha.client, VIP, LONG_LIVED).open()
        try:
            failover.wait_synced(ha.directors[standby], VIP, conns.ports, timeout=15)
            return active, standby, conns, attempt
        except TimeoutError as e:
            conns.close()
            print(f"\nrun {run}: {e} (sync message lost?); opening new ones; "
                  f"{ha.fence_report()}", flush=True)
    raise AssertionError(f"run {run}: three sets of long-lived connections did not all reach "
                         f"the standby; {ha.fence_report()}")


def test_failover_gap_and_connection_survival(ha: stack.Site) -> None:
    ha.apply_backend(NAME, {"rs1": True, "rs2": True, "rs3": True})
    ha.apply_virtual_server(NAME, VIP, NAME, drain_seconds=5)
    runs: list[dict[str, object]] = []
    try:
        ha.wait_reals(VIP, {"rs1": 1, "rs2": 1, "rs3": 1}, timeout=START_TIMEOUT)
        ha.wait_programmed(NAME, timeout=START_TIMEOUT)
        for run in range(1, RUNS + 1):
            active, standby, conns, resyncs = _synced_connections(ha, run)
            with failover.RequestLoop(ha.client, VIP, timeout=REQUEST_TIMEOUT) as loop, conns:
                loop.wait_answers(10, since=0.0, timeout=60)
                with stack.HolderTimeline(ha, VIP, interval=0.05) as kernels:
                    cut = time.monotonic()
                    ha.cut_off(active)
                    loop.wait_answers(10, since=cut, timeout=60)
                lost = loop.outage(cut)
                problems = conns.check()
                held = kernels.first_holding(standby, since=cut)
                latency = statistics.median(loop.latencies(until=cut))
                conns.close()
                back_started = time.monotonic()
                ha.bring_back(active, [VIP], timeout=START_TIMEOUT)
                back = time.monotonic()
                # Past the settle time of the returning director (and its handover, if it is
                # the VIP's winner), before the next run picks the active director.
                time.sleep(SETTLE + 1)
                _steady(ha, timeout=60)
                handover = loop.outage(back_started)
            survived = LONG_LIVED - len(problems)
            takeover = None if held is None else round(held - cut, 3)
            runs.append({"run": run, "lost": active, "took_over": standby,
                         "gap_s": round(lost.gap, 3), "failed_attempts": lost.failed,
                         "vip_on_standby_after_s": takeover,
                         "request_median_s": round(latency, 3),
                         "survived": survived, "of": LONG_LIVED, "problems": problems,
                         "agent_restart_s": round(back - back_started, 1),
                         "handover_back_gap_s": round(handover.gap, 3),
                         "connection_sets_not_synced_before": resyncs})
            print(f"\nrun {run}: {active} lost -> {standby} held the VIP {takeover} s after the "
                  f"cut; the client saw {lost}; long-lived connections "
                  f"surviving {survived}/{LONG_LIVED}"
                  + (f" ({problems[0]})" if problems else "")
                  + f"; {active} back (agent restart {back - back_started:.1f} s), "
                  f"longest wait since: {handover.gap:.3f} s", flush=True)
            assert lost.first_after is not None, f"run {run}: no answer after the failover"
    finally:
        ha.delete_virtual_server(NAME)
        ha.delete_backend(NAME)

    gaps = [float(str(r["gap_s"])) for r in runs]
    survived = sum(int(str(r["survived"])) for r in runs)
    total = LONG_LIVED * len(runs)
    handovers = [float(str(r["handover_back_gap_s"])) for r in runs]
    takeovers = [float(str(r["vip_on_standby_after_s"])) for r in runs
                 if r["vip_on_standby_after_s"] is not None]
    latency = statistics.median(float(str(r["request_median_s"])) for r in runs)
    result: dict[str, object] = {
        "runs": runs,
        "median_gap_s": round(statistics.median(gaps), 3),
        "min_gap_s": min(gaps), "max_gap_s": max(gaps),
        "target_gap_s": TARGET_GAP,
        "long_lived_survived": survived, "long_lived_total": total,
        "survival_share": round(survived / total, 4),
        "median_handover_back_gap_s": round(statistics.median(handovers), 3),
        "median_vip_on_standby_after_s": round(statistics.median(takeovers), 3)
        if takeovers else None,
        "request_median_s": latency,
        "request_timeout_s": REQUEST_TIMEOUT,
        "fences": {a.node: a.fences() for a in ha.agents.values()},
    }
    out = os.environ.get("LVS_VM_OUT")
    if out:
        with open(os.path.join(out, "bench_failover.json"), "w") as f:
            json.dump(result, f, indent=2)
    verdict = "meets" if statistics.median(gaps) < TARGET_GAP else "MISSES"
    print(f"\n==> failover, active director lost (LAN cable out + agent SIGKILLed), {len(runs)} "
          f"runs, client requests with {REQUEST_TIMEOUT:g} s timeouts:\n"
          f"    gap seen by the client: median {statistics.median(gaps):.3f} s "
          f"(min {min(gaps):.3f}, max {max(gaps):.3f}; runs {failover.describe(gaps)}); "
          f"target < {TARGET_GAP:g} s: {verdict}\n"
          f"    of which the standby had the VIP on its interface after: median "
          f"{statistics.median(takeovers) if takeovers else float('nan'):.3f} s (polled every "
          f"50 ms); the rest is the client's retry (a lost SYN is abandoned after "
          f"{REQUEST_TIMEOUT:g} s) and one request (median {1000 * latency:.0f} ms)\n"
          f"    long-lived connections surviving: {survived}/{total} "
          f"({100 * survived / total:.0f}%; target 100%)\n"
          f"    planned handover back (the winner returns): median gap "
          f"{statistics.median(handovers):.3f} s\n"
          f"    (under qemu TCG software emulation on a shared 2-CPU machine)\n"
          f"    {ha.fence_report()}", flush=True)
    assert survived == total, [r["problems"] for r in runs]
