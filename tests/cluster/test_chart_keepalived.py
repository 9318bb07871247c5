"""The agent pod's keepalived container (agent.ha.engine keepalived, the default).

Rendered with the Go-built helm (`helm template`; the binaries come with the cluster tier's
fixture). With keepalived the DaemonSet runs two containers of the one image, `agent` and
`keepalived`, sharing an emptyDir at /run/lvs-operator/keepalived (keepalived.conf and
instances.json from the agent, the notify FIFO back); the keepalived container is not
privileged and adds NET_ADMIN and NET_RAW only. With engine lease there is one container and
no shared folder. The VRRP values reach the environment variables the programs read, and
values.schema.json refuses bad ones naming the field.
"""

from __future__ import annotations

from typing import Any

import pytest
from controlplane import ControlPlane
from test_chart import CHART, IMAGE, container, find, helm, render

FOLDER = "/run/lvs-operator/keepalived"
VRRP_CAPABILITIES = {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}


def agent_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = find(objects, "DaemonSet", "lvs-agent")["spec"]["template"]["spec"]
    return pod


def env(spec_container: dict[str, Any]) -> dict[str, str]:
    """Return the container's plain environment variables: name -> value."""
    return {e["name"]: e["value"] for e in spec_container.get("env", []) if "value" in e}


def test_the_agent_pod_runs_keepalived_beside_the_agent(cluster: ControlPlane) -> None:
    objects = render(cluster)
    daemonset = find(objects, "DaemonSet", "lvs-agent")
    pod = agent_pod(objects)
    assert [c["name"] for c in pod["containers"]] == ["agent", "keepalived"]
    agent, keepalived = container(daemonset, "agent"), container(daemonset, "keepalived")
    assert keepalived["image"] == agent["image"] == IMAGE
    assert keepalived["args"] == ["keepalived"]
    # One emptyDir, mounted at the same place in both, and both told where it is.
    volume = next(v for v in pod["volumes"] if v["name"] == "keepalived")
    assert set(volume) == {"name", "emptyDir"}
    for spec in (agent, keepalived):
        assert {"name": "keepalived", "mountPath": FOLDER} in spec["volumeMounts"]
        assert env(spec)["LVS_KEEPALIVED_DIR"] == FOLDER
    assert [m["name"] for m in keepalived["volumeMounts"]] == ["keepalived"]
    assert env(keepalived) == {"LVS_KEEPALIVED_DIR": FOLDER,
                               "LVS_KEEPALIVED_METRICS_ADDRESS": "0.0.0.0:9641",
                               "LVS_VRRP_GUARD": "true"}
    assert keepalived["ports"] == [{"name": "vrrp-metrics", "containerPort": 9641,
                                    "protocol": "TCP"}]
    assert keepalived["resources"]["limits"]["memory"]
    assert "cpu" not in keepalived["resources"].get("limits", {}), (
        "a CPU limit throttles keepalived: late adverts look like a dead master")
    # The agent's VRRP defaults; the Lease timing is left to the engine's defaults.
    variables = env(agent)
    assert {k: v for k, v in variables.items() if k.startswith(("LVS_VRRP", "LVS_VIP",
                                                                  "LVS_HA"))} == {
        "LVS_HA": "true", "LVS_HA_ENGINE": "keepalived",
        "LVS_VRRP_ADVERT_SECONDS": "0.1", "LVS_VRRP_PREEMPT_DELAY_SECONDS": "5",
        "LVS_VRRP_VRIDS": "1-255", "LVS_VRRP_GARP_REFRESH_SECONDS": "1",
        "LVS_VIP_LIFETIME_SECONDS": "2"}
    assert not {"LVS_LEASE_DURATION_SECONDS", "LVS_LEASE_RENEW_SECONDS",
                "LVS_LEASE_RENEW_DEADLINE_SECONDS"} & variables.keys()
    service = find(objects, "Service", "lvs-agent-metrics")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "metrics": 9640, "vrrp-metrics": 9641}


def test_keepalived_has_no_capability_beyond_net_admin_and_net_raw(
        cluster: ControlPlane) -> None:
    keepalived = container(find(render(cluster), "DaemonSet", "lvs-agent"), "keepalived")
    security = keepalived["securityContext"]
    assert security["capabilities"] == VRRP_CAPABILITIES
    assert (security["privileged"], security["allowPrivilegeEscalation"]) == (False, False)
    # Root uid: Kubernetes gives a non-root process no capabilities.
    assert (security["runAsUser"], security["readOnlyRootFilesystem"]) == (0, True)
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


def test_engine_lease_has_one_container_and_no_shared_folder(cluster: ControlPlane) -> None:
    objects = render(cluster, "agent.ha.engine=lease", "agent.metrics.podMonitor.enabled=true",
                     set_json=["agent.ha.leaseDurationSeconds=0.8",
                               "agent.ha.renewSeconds=0.2",
                               "agent.ha.renewDeadlineSeconds=0.6"])
    pod = agent_pod(objects)
    (agent,) = pod["containers"]
    assert agent["name"] == "agent"
    assert "keepalived" not in {v["name"] for v in pod["volumes"]}
    assert "keepalived" not in {m["name"] for m in agent["volumeMounts"]}
    variables = env(agent)
    assert not [k for k in variables if k.startswith(("LVS_VRRP", "LVS_VIP", "LVS_KEEPALIVED"))]
    assert (variables["LVS_HA_ENGINE"], variables["LVS_LEASE_DURATION_SECONDS"],
            variables["LVS_LEASE_RENEW_SECONDS"],
            variables["LVS_LEASE_RENEW_DEADLINE_SECONDS"]) == ("lease", "0.8", "0.2", "0.6")
    assert [p["name"] for p in find(objects, "Service", "lvs-agent-metrics")["spec"]["ports"]] \
        == ["metrics"]
    assert [e["port"] for e in find(objects, "PodMonitor")["spec"]["podMetricsEndpoints"]] \
        == ["metrics"]


def test_vrrp_values_reach_the_environment(cluster: ControlPlane) -> None:
    objects = render(cluster, "agent.vrrp.interface=bond0", "agent.vrrp.address=192.0.2.7",
                     "agent.vrrp.preemptDelaySeconds=30", "agent.vrrp.vrids=200-209",
                     "agent.vrrp.garpRefreshSeconds=0", "agent.vrrp.vipLifetimeSeconds=0",
                     "agent.vrrp.guard=false", "agent.keepalived.metricsPort=0",
                     set_json=["agent.vrrp.advertSeconds=0.05"])
    daemonset = find(objects, "DaemonSet", "lvs-agent")
    variables = env(container(daemonset, "agent"))
    assert {k: variables[k] for k in variables if k.startswith(("LVS_VRRP", "LVS_VIP"))} == {
        "LVS_VRRP_INTERFACE": "bond0", "LVS_VRRP_ADDRESS": "192.0.2.7",
        "LVS_VRRP_ADVERT_SECONDS": "0.05", "LVS_VRRP_PREEMPT_DELAY_SECONDS": "30",
        "LVS_VRRP_VRIDS": "200-209", "LVS_VRRP_GARP_REFRESH_SECONDS": "0",
        "LVS_VIP_LIFETIME_SECONDS": "0"}
    keepalived = container(daemonset, "keepalived")
    assert env(keepalived)["LVS_VRRP_GUARD"] == "false"
    # No metrics port: none served, none in the Service.
    assert env(keepalived)["LVS_KEEPALIVED_METRICS_ADDRESS"] == ""
    assert "ports" not in keepalived
    assert [p["name"] for p in find(objects, "Service", "lvs-agent-metrics")["spec"]["ports"]] \
        == ["metrics"]


@pytest.mark.parametrize(("option", "value", "field"), [
    ("--set-json", "agent.vrrp.advertSeconds=0.001", "/agent/vrrp/advertSeconds"),
    ("--set-json", "agent.vrrp.advertSeconds=41", "/agent/vrrp/advertSeconds"),
    ("--set", "agent.ha.engine=foo", "/agent/ha/engine"),
    ("--set", "agent.vrrp.vrids=0-255", "/agent/vrrp/vrids"),
    ("--set", "agent.vrrp.vrids=1-256", "/agent/vrrp/vrids"),
    ("--set", "agent.vrrp.address=192.0.2.256", "/agent/vrrp/address"),
    ("--set", "agent.vrrp.preemptDelaySeconds=1001", "/agent/vrrp/preemptDelaySeconds"),
    ("--set-json", "agent.vrrp.garpRefreshSeconds=0.5", "/agent/vrrp/garpRefreshSeconds"),
    ("--set", "agent.vrrp.vipLifetimeSeconds=-1", "/agent/vrrp/vipLifetimeSeconds"),
    ("--set", "agent.vrrp.guard=maybe", "/agent/vrrp/guard"),
    ("--set", "agent.ha.renewSeconds=0", "/agent/ha/renewSeconds"),
    ("--set", "agent.keepalived.metricsPort=65536", "/agent/keepalived/metricsPort"),
    ("--set", "agent.keepalived.resources.limit.memory=1Gi", "/agent/keepalived/resources"),
])
def test_the_schema_refuses_bad_vrrp_values(cluster: ControlPlane, option: str, value: str,
                                            field: str) -> None:
    result = helm(cluster, "template", "lvs", str(CHART), option, value, check=False)
    assert result.returncode != 0, f"{option} {value} was accepted"
    assert f"at '{field}'" in result.stderr, result.stderr


def test_lint_with_each_engine(cluster: ControlPlane) -> None:
    for engine in ("keepalived", "lease"):
        helm(cluster, "lint", "--strict", str(CHART), "--set", f"agent.ha.engine={engine}",
             "--set", "agent.metrics.serviceMonitor.enabled=true")
