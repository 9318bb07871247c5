"""The director agent in the full stack (printed, not asserted).

- change latency: one endpoint of a selector-less Service flips ready / not ready
  (`LVS_BENCH_FLIPS`, default 100); time from the EndpointSlice write (in the VM) until the
  director's kernel shows the real server's new weight (polled in-process every ms or so):
  API server -> controller on the host -> status.realServers -> agent watch -> IPVS. p50, p99
  (target p99 < 300 ms on a local control plane; this is under qemu's software emulation);
- the agent's peak resident memory (VmHWM) after it.
"""

from __future__ import annotations

import os
import statistics
import time
from ipaddress import ip_address
from pathlib import Path

from fullstack import stack

VIP = "10.200.0.110"  # the conftest's site has the real servers answer for it

FLIPS = int(os.environ.get("LVS_BENCH_FLIPS", "100"))


def _weight(site: stack.Site, role: str) -> int | None:
    svc = site.service(VIP)
    if svc is None:
        return None
    for real in svc.reals.values():
        if real.address == ip_address(site.ip(role)):
            return real.weight
    return None


def _peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def test_endpoint_flip_latency_and_agent_memory(site: stack.Site) -> None:
    site.apply_backend("flip", {"rs1": True, "rs2": True, "rs3": True})
    site.apply_virtual_server("flip", VIP, "flip")
    try:
        site.wait_reals(VIP, {"rs1": 1, "rs2": 1, "rs3": 1})
        latencies: list[float] = []
        for i in range(FLIPS):
            ready = i % 2 == 1  # first not ready (weight 0), then ready again (weight 1)
            start = time.monotonic()
            site.apply_slice("flip", {"rs1": True, "rs2": True, "rs3": ready})
            want = int(ready)
            stack.wait_for(f"flip {i}", lambda: _weight(site, "rs3") == want,  # noqa: B023
                           timeout=30, interval=0.001)
            latencies.append(time.monotonic() - start)
        ms = sorted(x * 1000 for x in latencies)
        p50 = statistics.median(ms)
        p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
        assert site.agent.proc is not None
        peak = _peak_kib(site.agent.proc.pid)
        report = (f"endpoint flip -> director kernel, {FLIPS} flips (under TCG): "
                  f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {ms[-1]:.0f} ms "
                  f"(target p99 < 300 ms)\n"
                  f"agent peak memory (VmHWM): {peak / 1024:.1f} MiB")
        print("\n" + report)
        out = Path(os.environ.get("LVS_VM_OUT", "/tmp")) / "bench-fullstack.txt"
        out.write_text(report + "\n")
    finally:
        site.delete_virtual_server("flip")
        site.delete_backend("flip")
