"""The chart's monitoring objects: the ServiceMonitor and the Grafana dashboard.

Rendered with the Go-built helm (`helm template`; no API server needed, but the binaries come
with the cluster tier's fixture): both are off by default and appear when asked for; the
ServiceMonitor selects the agents' metrics Service and keeps the agent's own `namespace`
label; a ServiceMonitor without that Service is refused with the reason. The dashboard is
valid JSON, shipped unchanged in its ConfigMap, and every PromQL query names only metrics
and labels the agent really exports: the agent's own metrics code renders a sample of each
family (`lvs_operator.agent.metrics`), and the queries are checked against it.
"""

from __future__ import annotations

import json
import re
from ipaddress import ip_address
from typing import Any

import prometheus_client
from controlplane import ControlPlane
from test_chart import CHART, find, helm, render

from lvs_operator.agent import health, metrics
from lvs_operator.model import Forwarding, Protocol, RealServer, ServiceKey, VirtualService
from lvs_operator.plan import AddService

DASHBOARD = CHART / "dashboards" / "lvs-operator.json"
METRICS = "agent.metrics"
# Labels Prometheus adds to every target's series (job, instance) and the histogram's `le`.
TARGET_LABELS = {"job", "instance"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


# --- the ServiceMonitor ----------------------------------------------------------------------

def test_monitoring_objects_are_off_by_default(cluster: ControlPlane) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in render(cluster)}
    assert not {k for k, _ in kinds} & {"ServiceMonitor", "PodMonitor"}
    assert ("ConfigMap", "lvs-dashboard") not in kinds


def test_service_monitor_scrapes_the_metrics_service(cluster: ControlPlane) -> None:
    objects = render(cluster, f"{METRICS}.serviceMonitor.enabled=true",
                     f"{METRICS}.serviceMonitor.labels.release=kube-prometheus-stack",
                     f"{METRICS}.serviceMonitor.interval=15s")
    monitor = find(objects, "ServiceMonitor", "lvs-agent")
    service = find(objects, "Service", "lvs-agent-metrics")
    assert monitor["metadata"]["namespace"] == "lvs-system"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items(), (
        "the ServiceMonitor must select the agents' metrics Service")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["lvs-system"]}
    # The agent's metrics and the keepalived container's (agent.ha.engine keepalived).
    endpoints = {e["port"]: e for e in monitor["spec"]["endpoints"]}
    assert endpoints.keys() == {p["name"] for p in service["spec"]["ports"]} \
        == {"metrics", "vrrp-metrics"}
    assert {(e["path"], e["interval"]) for e in endpoints.values()} == {("/metrics", "15s")}
    assert endpoints["metrics"]["honorLabels"] is True, (
        "the agent's `namespace` label (the VirtualServer's) must not become exported_namespace")


def test_service_monitor_without_its_service_is_refused(cluster: ControlPlane) -> None:
    result = helm(cluster, "template", "lvs", str(CHART),
                  "--set", f"{METRICS}.serviceMonitor.enabled=true",
                  "--set", f"{METRICS}.service.enabled=false", check=False)
    assert result.returncode != 0
    assert "agent.metrics.service.enabled" in result.stderr


def test_monitoring_values_typo_is_refused(cluster: ControlPlane) -> None:
    for typo in (f"{METRICS}.serviceMonitor.enable=true",
                 f"{METRICS}.grafanaDashboard.label.x=y"):
        result = helm(cluster, "template", "lvs", str(CHART), "--set", typo, check=False)
        assert result.returncode != 0, f"--set {typo} was accepted"
        wrong_key = typo.split("=")[0].split(".")[3]
        assert wrong_key in result.stderr, f"the error does not name {wrong_key!r}: " \
            f"{result.stderr}"


def test_lint_with_monitoring(cluster: ControlPlane) -> None:
    helm(cluster, "lint", "--strict", str(CHART),
         "--set", f"{METRICS}.serviceMonitor.enabled=true",
         "--set", f"{METRICS}.grafanaDashboard.enabled=true")


# --- the dashboard ---------------------------------------------------------------------------

def test_dashboard_configmap_ships_the_file(cluster: ControlPlane) -> None:
    objects = render(cluster, f"{METRICS}.grafanaDashboard.enabled=true")
    configmap = find(objects, "ConfigMap", "lvs-dashboard")
    assert configmap["metadata"]["namespace"] == "lvs-system"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (key,) = configmap["data"]
    assert key.endswith(".json")
    assert json.loads(configmap["data"][key]) == json.loads(DASHBOARD.read_text())

    moved = render(cluster, f"{METRICS}.grafanaDashboard.enabled=true",
                   f"{METRICS}.grafanaDashboard.namespace=monitoring")
    assert find(moved, "ConfigMap", "lvs-dashboard")["metadata"]["namespace"] == "monitoring"


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    panels = list(_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            # Every $variable a query uses is defined (Grafana's own are $__...).
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert used <= variables, f"{panel['title']!r}: undefined {used - variables}"


def test_dashboard_queries_name_exported_metrics() -> None:
    exported = _exported_labels()
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used_metrics: set[str] = set()
    for query in queries:
        names = set(re.findall(r"\blvs_\w+", query))
        assert names, f"a query that reads no lvs_ metric: {query}"
        unknown = names - exported.keys()
        assert not unknown, (f"{query}\nnames {sorted(unknown)}, which the agent does not "
                             f"export; it exports {sorted(exported)}")
        used_metrics |= names
        available = set().union(*(exported[n] for n in names)) | TARGET_LABELS
        for labels in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", query):
            grouped = {label.strip() for label in labels.split(",") if label.strip()}
            assert grouped <= available, f"{query}\ngroups by {grouped - available}"
        for selector in re.findall(r"\{([^}]*)\}", query):
            matched = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
            assert matched <= available, f"{query}\nmatches on {matched - available}"
    families = {n.removesuffix(s) for n in used_metrics for s in HISTOGRAM_SUFFIXES
                if n.endswith(s)} | used_metrics
    for wanted in ("lvs_service_connections_total", "lvs_real_server_active_connections",
                   "lvs_real_server_healthy", "lvs_agent_sync_duration_seconds"):
        assert wanted in families, f"the dashboard shows no {wanted}"


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Return every panel, those inside collapsed rows included."""
    result = []
    for panel in dashboard["panels"]:
        result.append(panel)
        result += panel.get("panels", [])
    return result


def _exported_labels() -> dict[str, set[str]]:
    """Return each series name the agent exports with its label names, from a sample of
    every family rendered by the agent's own metrics code (as its /metrics serves them)."""
    key = ServiceKey.inet(Protocol.TCP, ip_address("192.0.2.10"), 80)
    real = RealServer(ip_address("10.0.0.1"), 80, Forwarding.DIRECT_ROUTING, 1)
    table = {key: VirtualService(key=key).with_reals([real])}
    statuses = {("shop/web", ip_address("10.0.0.1"), 80): health.Health(healthy=True, checks=1)}
    registry = prometheus_client.CollectorRegistry()
    registry.register(metrics.KernelCollector(
        lambda: metrics.Scrape(table, {key: "shop/web"}, statuses)))
    agent = metrics.AgentMetrics(registry)
    agent.observe_sync(0.01, [AddService(VirtualService(key))], failed=False)
    agent.set_state(vips=1, draining=0)
    text = prometheus_client.generate_latest(registry).decode()
    exported: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("#"):  # HELP and TYPE
            exported.setdefault(line.split()[2], set())
            continue
        match = re.match(r"(\w+)(?:\{(.*)\})? ", line)
        assert match, line
        exported.setdefault(match[1], set()).update(re.findall(r'(\w+)="', match[2] or ""))
    return exported
