"""The chart on a real kubelet + containerd node, with the image built here (`make test-node`).

In order (pytest keeps the file's order): `helm install` of charts/lvs-operator; the
controller pod Running and holding its Lease; the agent DaemonSet pod Running on the director
node, its two containers (agent, keepalived) with only NET_ADMIN and NET_RAW, the keepalived
container's metrics answering; the DR example with ordinary pods as real servers, which the
webhook (served from the controller pod) prepares with the realserver-init init container;
HTTP traffic from the client namespace through the VIP; the Tunnel example the same way
(`realserver-init --mode tunnel`, ipip to the pods); the agent's own status entry and Lease,
written through the chart's admission policies; `lvs-operator ipvs show --stats` by
`kubectl exec` in the agent pod; `helm upgrade` with a changed value rolling the agent pod
while a client sends requests to both VIPs, none failing; the VirtualServers deleted and
`helm uninstall` leaving no IPVS service and no VIP. The scenario functions are
tests/scenarios.py's, shared with the kind suite.
"""

from __future__ import annotations

import json
from typing import Any

import nodelab
import pytest
from nodelab import DR_VIP, NODE, RELEASE, RELEASE_NAMESPACE, TUNNEL_VIP, NodeLab

import scenarios
from conftest import REPORT
from lvs_operator.agent import lease as agent_lease
from scenarios import Site

# Emulated (TCG) VM: Python processes start in seconds, the node's first pods in minutes.
TIMEOUT = 600
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13  # <linux/capability.h>


def _release_pods(lab: NodeLab) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = scenarios.get(
        lab, "pods", "-n", RELEASE_NAMESPACE, "-l",
        f"app.kubernetes.io/instance={RELEASE}")["items"]
    return items


def _component(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["labels"].get("app.kubernetes.io/component"))


def _describe(pod: dict[str, Any]) -> str:
    restarts = {s["name"]: s.get("restartCount", 0)
                for s in pod["status"].get("containerStatuses", [])}
    return (f"{pod['metadata']['name']}: phase {pod['status'].get('phase')}, containers "
            f"{[c['name'] for c in pod['spec']['containers']]}, restarts {restarts}, node "
            f"{pod['spec'].get('nodeName')}")


@pytest.fixture(scope="module")
def installed(lab: NodeLab) -> NodeLab:
    """The director prerequisites on node-1 (the user guide's step 3: an administrator's, the
    agent is not privileged), then `helm install` with the image built here."""
    nodelab.run(["modprobe", "ip_vs"])
    nodelab.run(["modprobe", "ipip"])  # Tunnel real servers' tunl0 (the README's step 3)
    for name, value in scenarios.DIRECTOR_SYSCTLS.items():
        with open(f"/proc/sys/{name.replace('.', '/')}", "w") as f:
            f.write(value)
    repository, tag = lab.config.image_repository, lab.config.image_tag
    scenarios.say(f"helm install {RELEASE} charts/lvs-operator --namespace {RELEASE_NAMESPACE} "
                  f"(image {repository}:{tag}, imported into containerd, never pulled)")
    lab.helm("install", RELEASE, str(scenarios.CHART), "--namespace", RELEASE_NAMESPACE,
             "--create-namespace", "--set", f"image.repository={repository}",
             "--set", f"image.tag={tag}",
             # One controller: the emulated VM's two CPUs run everything of the node.
             "--set", "controller.replicas=1", "--set", "agent.logLevel=debug",
             # The VIPs' pool (deny by default): the two VIPs, for the scenarios' namespace.
             *scenarios.pool_values([DR_VIP, TUNNEL_VIP], lab.interface),
             "--wait", "--timeout", f"{TIMEOUT}s")
    lab.kubectl("create", "namespace", scenarios.NAMESPACE)
    lab.start_client()
    return lab


def test_release_pods_run(installed: NodeLab) -> None:
    pods = _release_pods(installed)
    assert sorted(_component(p) for p in pods) == ["agent", "controller"], \
        [_describe(p) for p in pods]
    for pod in pods:
        REPORT.append(_describe(pod))
        assert pod["status"]["phase"] == "Running", _describe(pod)
        assert scenarios.pod_ready(pod), _describe(pod)
        for status in pod["status"]["containerStatuses"]:
            assert status["restartCount"] == 0, f"{_describe(pod)}: {status}"
    (agent,) = [p for p in pods if _component(p) == "agent"]
    assert agent["spec"]["nodeName"] == NODE
    assert agent["spec"]["hostNetwork"] is True


def test_agent_pod_runs_agent_and_keepalived(installed: NodeLab) -> None:
    """Both containers of the agent pod run, the keepalived container without an error in
    its log and with lvs_keepalived_up 1 (one director: keepalived runs with no instance,
    the agent holds the VIPs itself)."""
    lines = scenarios.agent_containers(installed, NODE)
    REPORT.extend(lines)


def test_controller_holds_its_lease(installed: NodeLab) -> None:
    (controller,) = [p for p in _release_pods(installed) if _component(p) == "controller"]
    name = controller["metadata"]["name"]

    leases = scenarios.get(installed, "leases", "-n", RELEASE_NAMESPACE)["items"]
    names = [lease["metadata"]["name"] for lease in leases]
    assert any(n.endswith("-controller") for n in names), names
    (lease_name,) = [n for n in names if n.endswith("-controller")]
    # The holder is the pod's name and a suffix of the process (<pod>_<random>).
    holder = scenarios.wait_for(
        f"{name} to hold the Lease {lease_name}",
        lambda: str(scenarios.get(installed, "lease", "-n", RELEASE_NAMESPACE, lease_name)[
            "spec"].get("holderIdentity") or "").startswith(f"{name}_") and name,
        timeout=120, interval=2, diagnose=installed.diagnose)
    REPORT.append(f"controller {holder} holds the Lease {lease_name}")


@pytest.mark.parametrize("container", scenarios.AGENT_CONTAINERS)
def test_agent_has_only_net_admin_and_net_raw(installed: NodeLab, container: str) -> None:
    """Each container's process (its PID 1) has exactly the chart's capabilities."""
    pod = scenarios.agent_pod(installed, NODE)
    assert pod
    status = installed.kubectl("exec", "-n", RELEASE_NAMESPACE, pod, "-c", container, "--",
                               "cat", "/proc/1/status")
    effective = int(next(line.split()[1] for line in status.splitlines()
                         if line.startswith("CapEff:")), 16)
    assert effective == (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW), hex(effective)
    REPORT.append(f"{pod} container {container}: CapEff {effective:#x} (NET_ADMIN, NET_RAW)")


@pytest.fixture(scope="module")
def dr(installed: NodeLab) -> Site:
    """The DR example on the bridge: two ordinary pods as real servers."""
    sites = scenarios.apply_sites(installed, {"dr": DR_VIP}, timeout=TIMEOUT,
                                  replicas={"dr": 2})
    return sites["dr"]


@pytest.fixture(scope="module")
def tunnel(installed: NodeLab, dr: Site) -> Site:
    """The Tunnel example on the bridge: two ordinary pods as real servers, reached by ipip
    (the director encapsulates to the pod IP; the pods answer the client directly)."""
    sites = scenarios.apply_sites(installed, {"tunnel": TUNNEL_VIP}, timeout=TIMEOUT,
                                  replicas={"tunnel": 2})
    return sites["tunnel"]


def test_webhook_prepares_the_real_servers(installed: NodeLab, dr: Site) -> None:
    """Each real-server pod got the injected realserver-init, which ran (exit code 0) and
    left the VIP on the pod's lo."""
    for pod in scenarios.pods(installed, dr):
        name = pod["metadata"]["name"]
        statuses = scenarios.injected_init(pod)
        codes = {s["name"]: s["state"]["terminated"]["exitCode"] for s in statuses}
        restarts = sum(s["restartCount"] for s in pod["status"]["containerStatuses"])
        REPORT.append(f"{name}: phase {pod['status']['phase']}, restarts {restarts}, "
                      f"init {codes}")
        assert restarts == 0
        lo = installed.kubectl("exec", "-n", scenarios.NAMESPACE, name, "-c", "http", "--",
                               "ip", "-4", "-o", "addr", "show", "dev", "lo")
        assert f" {DR_VIP}/32 " in lo, lo


def test_direct_routing_traffic(installed: NodeLab, dr: Site) -> None:
    counts = scenarios.direct_routing(installed, dr)
    REPORT.append(f"DR {dr.vip}:{dr.port}: {scenarios.REQUESTS} requests, HTTP 200 from "
                  f"{counts}")
    assert installed.vips_on_bridge() == {DR_VIP}


def test_tunnel_traffic(installed: NodeLab, tunnel: Site) -> None:
    counts = scenarios.tunnel(installed, tunnel)
    for pod in scenarios.pods(installed, tunnel):
        name = pod["metadata"]["name"]
        codes = {s["name"]: s["state"]["terminated"]["exitCode"]
                 for s in scenarios.injected_init(pod)}
        restarts = sum(s["restartCount"] for s in pod["status"]["containerStatuses"])
        REPORT.append(f"{name}: phase {pod['status']['phase']}, restarts {restarts}, "
                      f"init {codes}")
        assert restarts == 0
        tunl0 = installed.kubectl("exec", "-n", scenarios.NAMESPACE, name, "-c", "http",
                                  "--", "ip", "-4", "-o", "addr", "show", "dev", "tunl0")
        assert f" {TUNNEL_VIP}/32 " in tunl0, tunl0
    REPORT.append(f"Tunnel {tunnel.vip}:{tunnel.port}: {scenarios.REQUESTS} requests, "
                  f"HTTP 200 from {counts}")
    assert installed.vips_on_bridge() == {DR_VIP, TUNNEL_VIP}


def test_the_agent_writes_its_own_report_and_lease(installed: NodeLab, dr: Site) -> None:
    """The agent's writes pass the chart's admission policies (agent-policy.yaml) with the
    kubelet's pod-bound token: the DR VirtualServer's status.directors holds node-1's
    entry for its generation, node-1 holds the Lease lvs-director-node-1, and the agent
    logged no refused status or Lease write."""
    vs = scenarios.virtualserver(installed, dr.name)
    entry = vs["status"]["directors"][NODE]
    assert (entry["role"], entry["generation"], entry["error"]) == (
        "Active", vs["metadata"]["generation"], ""), entry
    name = agent_lease.lease_name(NODE)
    lease = scenarios.get(installed, "lease", "-n", RELEASE_NAMESPACE, name)
    assert lease["spec"]["holderIdentity"] == NODE, lease
    pod = scenarios.agent_pod(installed, NODE)
    assert pod, f"no ready agent pod on {NODE}"
    refused = [line for line in scenarios.container_log(installed, pod, "agent").splitlines()
               if "cannot write status" in line or "cannot renew Lease" in line]
    assert not refused, "\n".join(refused[-10:])
    REPORT.append(f"agent on {NODE}: status.directors.{NODE} role {entry['role']} "
                  f"generation {entry['generation']}; Lease {name} renewed at "
                  f"{lease['spec'].get('renewTime')}")


def test_ipvs_show_stats_in_the_agent_pod(installed: NodeLab, dr: Site) -> None:
    text = scenarios.ipvs_show(installed, NODE, "--stats")
    print(text)
    table = json.loads(scenarios.ipvs_show(installed, NODE, "-o", "json"))
    (service,) = [s for s in table if s["address"] == DR_VIP]
    REPORT.append(f"ipvs show: {DR_VIP}:{dr.port} conns {service['stats']['conns']}, "
                  f"outPackets {service['stats']['outPackets']}")
    assert f"{DR_VIP}:{dr.port}" in text


def test_helm_upgrade_rolls_the_agent_without_a_failed_request(
        installed: NodeLab, dr: Site, tunnel: Site) -> None:
    """A changed value (agent.logLevel) replaces the agent pod; one director holds the VIPs
    itself, so the old agent leaves them and IPVS in the kernel and the new one adopts
    them: not one request of the client fails meanwhile."""
    upgrade = scenarios.upgrade_agents(installed, [dr, tunnel],
                                       values=["agent.logLevel=info"], timeout=TIMEOUT)
    for mode, answers in upgrade.answers.items():
        failed = sum(a.status != 200 for a in answers)
        REPORT.append(f"helm upgrade ({upgrade.before[NODE]} -> {upgrade.after[NODE]}): "
                      f"{mode} {len(answers)} requests, {failed} failed")
    REPORT.extend(scenarios.agent_containers(installed, NODE))
    assert installed.vips_on_bridge() == {DR_VIP, TUNNEL_VIP}


def test_uninstall_leaves_no_ipvs_service_or_vip(installed: NodeLab, dr: Site,
                                                 tunnel: Site) -> None:
    names = [dr.name, tunnel.name]
    scenarios.say(f"delete the VirtualServers {names}, then helm uninstall {RELEASE}")
    installed.kubectl("delete", "virtualserver", "-n", scenarios.NAMESPACE, *names,
                      "--wait=true", timeout=TIMEOUT)
    scenarios.wait_for("the agent to remove the IPVS services and the VIPs",
                       lambda: not {DR_VIP, TUNNEL_VIP} & _ipvs_addresses(installed)
                       and not installed.vips_on_bridge(), timeout=120, interval=2,
                       diagnose=installed.diagnose)
    scenarios.uninstall(installed, {}, timeout=TIMEOUT)
    assert not {DR_VIP, TUNNEL_VIP} & _ipvs_addresses(installed)
    assert not installed.vips_on_bridge()


def _ipvs_addresses(lab: NodeLab) -> set[str]:
    """Return the addresses of the node's IPVS services (`ipvsadm -Ln`: "TCP  VIP:PORT rr")."""
    return {line.split()[1].rsplit(":", 1)[0] for line in lab.kernel_services().splitlines()
            if line.split()[:1] in (["TCP"], ["UDP"], ["SCTP"])}
