"""The chart on a kind cluster, as users run it: DR, Tunnel and NAT traffic, failover, uninstall.

The scenarios are tests/scenarios.py's, shared with the node tier (tests/node). The examples
crds/examples/{dr,tunnel,nat}.yaml are applied, adapted to the lab (kindlab:
VIPs from kind's Docker network, round robin, real servers on the control-plane node); a
client container on that network sends HTTP requests to each VIP, a new connection each.
Each agent pod runs its two containers (agent, keepalived) with the keepalived container's
metrics answering. `helm upgrade` with a changed value rolls the agent pods while the client
sends requests to every VIP: none may fail. Then the agent pod of the director holding the
VIPs is deleted and traffic must continue through the other director; finally
`helm uninstall` removes every workload and keeps the CRD and the VirtualServers. The tests
run in this order (pytest keeps the file's order).
"""

from __future__ import annotations

import functools
import json
import subprocess

import kindlab
import pytest
from kindlab import Lab, say

import scenarios
from scenarios import PORT, RELEASE_NAMESPACE, Answer, Site

READY_TIMEOUT = 240  # seconds: image already loaded; pods start, controller resolves, agents sync
# Failover: the design's target is under 1 s; here the bound is loose (a kind cluster on a
# loaded machine) and the measured gap is printed.
FAILOVER_TIMEOUT = 30
MAX_OUTAGE_SECONDS = 10


@pytest.fixture(scope="module")
def sites(lab: Lab) -> dict[str, Site]:
    """Apply the three examples (Tunnel only where the ipip module is loaded) and their
    real servers (tests/scenarios.py); return them once every VirtualServer is Ready."""
    vips = dict(lab.vip)
    if kindlab.ipip_missing():
        del vips["tunnel"]
    return scenarios.apply_sites(lab, vips, timeout=READY_TIMEOUT)


def test_agents_run_on_both_directors(lab: Lab) -> None:
    for node in lab.directors:
        kindlab.wait_for(f"a ready agent pod on {node}",
                         functools.partial(scenarios.agent_pod, lab, node),
                         timeout=120, diagnose=lab.diagnose)
        for line in scenarios.agent_containers(lab, node):
            say(line)


def test_direct_routing(lab: Lab, sites: dict[str, Site]) -> None:
    scenarios.direct_routing(lab, sites["dr"])


def test_tunnel(lab: Lab, sites: dict[str, Site]) -> None:
    if "tunnel" not in sites:
        pytest.skip(f"Tunnel: {kindlab.ipip_missing()}")
    scenarios.tunnel(lab, sites["tunnel"])


def test_nat(lab: Lab, sites: dict[str, Site]) -> None:
    site = sites["nat"]
    assert site.port != PORT, "the NAT example remaps its port"
    assert set(scenarios.traffic(lab, site)) == {
        p["metadata"]["name"] for p in scenarios.pods(lab, site)}
    service = scenarios.kernel_service(lab, site)
    assert {(r["forwarding"], r["port"]) for r in service["realServers"]} == {("Masq", PORT)}
    assert service["stats"]["outPackets"] > 0, "NAT: replies pass through the director"


def test_helm_upgrade_rolls_the_agents_without_a_failed_request(
        lab: Lab, sites: dict[str, Site]) -> None:
    upgrade = scenarios.upgrade_agents(lab, sites.values(), values=["agent.logLevel=info"],
                                       timeout=READY_TIMEOUT)
    say(f"helm upgrade: agent pods {dict(upgrade.before)} -> {dict(upgrade.after)}")
    for node in lab.directors:
        for line in scenarios.agent_containers(lab, node):
            say(line)


def test_failover(lab: Lab, sites: dict[str, Site]) -> None:
    """Delete the agent pod of the director that holds the DR VIP: every VIP it held moves
    to the other director and traffic continues; the DaemonSet's new pod then rejoins and
    traffic still flows (whichever director holds the VIPs after the handback)."""
    active = scenarios.virtualserver(lab, sites["dr"].name)["status"]["activeDirector"]
    (other,) = [n for n in lab.directors if n != active]
    moving = [s for s in sites.values()
              if scenarios.virtualserver(lab, s.name)["status"]["activeDirector"] == active]
    pod = scenarios.agent_pod(lab, active)
    assert pod, f"no ready agent pod on {active}"
    # Probes: a request to every VIP each 0.1 s, across the failover.
    count = int((FAILOVER_TIMEOUT + 5) / 0.1)
    probes = {s.mode: subprocess.Popen(lab.client_command(s.vip, s.port, count=count,
                                                          interval=0.1),
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
              for s in sites.values()}
    try:
        say(f"delete the agent pod {pod} on {active}, the active director of "
            f"{[s.name for s in moving]}")
        lab.kubectl("delete", "pod", "-n", RELEASE_NAMESPACE, pod, "--wait=false")
        for site in moving:
            kindlab.wait_for(
                f"{other} to become the active director of {site.name}",
                functools.partial(_active_is, lab, site.name, other),
                timeout=FAILOVER_TIMEOUT, interval=0.2, diagnose=lab.diagnose)
    finally:
        # Each request takes at most its 1 s timeout plus the interval.
        results = {mode: _outcome(probe, timeout=count * 1.1 + 30)
                   for mode, probe in probes.items()}
    for mode, outcome in results.items():
        failures = [(a.at, a.status, a.error) for a in outcome if a.status != 200]
        outage = failures[-1][0] - failures[0][0] + 0.1 if failures else 0.0
        say(f"failover, {mode}: {len(failures)} of {len(outcome)} requests failed; "
            f"outage {outage:.1f} s")
        assert outage < MAX_OUTAGE_SECONDS, f"{mode}: traffic stopped for {outage:.1f} s: " \
            f"{failures[:3]} ... {failures[-3:]}"
        tail = outcome[-20:]
        assert all(a.status == 200 for a in tail), f"{mode}: traffic did not resume: {tail}"

    for site in sites.values():
        kindlab.wait_for(f"exactly one director holding {site.vip}",
                         functools.partial(_one_holder, lab, site.vip),
                         timeout=FAILOVER_TIMEOUT, diagnose=lab.diagnose)
    kindlab.wait_for(f"the DaemonSet's new agent pod on {active}",
                     lambda: scenarios.agent_pod(lab, active), timeout=120,
                     diagnose=lab.diagnose)
    for site in sites.values():
        scenarios.traffic(lab, site)
        holders = _holders(lab, site.vip)
        assert len(holders) == 1, f"{site.vip} is held by {holders}"


def test_uninstall_keeps_crd_and_virtualservers(lab: Lab, sites: dict[str, Site]) -> None:
    scenarios.uninstall(lab, sites)


# --- helpers ---------------------------------------------------------------------------------

def _active_is(lab: Lab, name: str, node: str) -> bool:
    return bool(scenarios.virtualserver(lab, name)["status"].get("activeDirector") == node)


def _one_holder(lab: Lab, vip: str) -> bool:
    return len(_holders(lab, vip)) == 1


def _holders(lab: Lab, vip: str) -> list[str]:
    """Return the directors whose eth0 holds `vip`."""
    return [node for node in lab.directors
            if f" {vip}/" in lab.node_exec(node, f"ip -4 -o addr show {kindlab.INTERFACE}")]


def _outcome(probe: subprocess.Popen[str], *, timeout: float) -> list[Answer]:
    out, err = probe.communicate(timeout=timeout)
    assert probe.returncode == 0, f"the client failed: {err}"
    return [Answer(float(at), status, pod, error)
            for at, status, pod, error in json.loads(out)]
