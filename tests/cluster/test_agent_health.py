"""Director-side health checks against the real API server: the agent (fake kernel) checks
a real server listening on 127.0.0.1 for real; when it dies, the agent gives it weight 0 and
reports it in status.directors.<node>.unhealthy (which the CRD's status schema keeps) and
an Event; when it is back, its weight and a clean report."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from ipaddress import ip_address
from typing import Any

import prometheus_client
import pytest
import test_agent
from controlplane import ControlPlane
from crd_support import install_crd, module_namespace
from test_agent import TIMEOUT, Director, directors, eventually, path, publish

from lvs_operator.agent.health import Health
from lvs_operator.kube import client
from lvs_operator.kube import events as kube_events


@pytest.fixture(scope="module")
def ns(cluster: ControlPlane) -> Iterator[str]:
    install_crd(cluster)
    with module_namespace(cluster, "health") as name:
        yield name


# test_agent's fixtures: the admin connection, Nodes, a label.
api, nodes, label = test_agent.api, test_agent.nodes, test_agent.label


@pytest.fixture
def node(nodes, label: str) -> str:
    """A new Node with the test's label (no kubelet: just the object)."""
    return str(nodes(**{"lvs.dev/test-director": label}))


def listener(port: int = 0) -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(64)
    return server


def create(api: client.Client, namespace: str, name: str, *, vip: str, label: str,
           target_port: int) -> Any:
    return api.request("POST", path(namespace), body={
        "apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualServer",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"vip": vip, "ports": [{"port": 80, "targetPort": target_port}],
                 "forwarding": "NAT", "scheduler": {"name": "rr"},
                 "backend": {"service": {"name": "web"}},
                 "directors": {"nodeSelector": {"lvs.dev/test-director": label},
                               "interface": "eth0"},
                 "healthCheck": {"tcp": {}, "intervalSeconds": 1, "timeoutSeconds": 1,
                                 "failureThreshold": 1, "successThreshold": 1}}})


def test_status_keeps_the_unhealthy_list(api, ns):
    create(api, ns, "schema", vip="192.0.2.40", label="none", target_port=8080)
    entry = {"role": "Standby", "generation": 1, "syncedAt": "2025-01-01T00:00:00Z",
             "error": "", "unhealthy": ["10.0.0.7:8080", "[2001:db8::7]:8080"]}
    api.patch_status(ns, "schema", {"status": {"directors": {"node-x": entry}}})
    assert directors(api, ns, "schema")["node-x"] == entry, "not pruned"
    api.patch_status(ns, "schema", {"status": {"directors": {"node-x": {"unhealthy": None}}}})
    assert "unhealthy" not in directors(api, ns, "schema")["node-x"]
    # The warning of a service deleted behind the agent's back (agent.loop) is kept too.
    warning = ("TCP 192.0.2.40:80 deleted behind this director's back and restored: kube-proxy "
               "runs in IPVS mode on this node (kube-ipvs0) ...")
    api.patch_status(ns, "schema", {"status": {"directors": {"node-x": {"warning": warning}}}})
    assert directors(api, ns, "schema")["node-x"]["warning"] == warning, "not pruned"


def test_failing_real_server_weight_0_status_and_event(cluster, api, ns, node, label,
                                                        tmp_path):
    director = Director(cluster, node, tmp_path)
    vip = "192.0.2.41"
    server = listener()
    port = server.getsockname()[1]
    create(api, ns, "checked", vip=vip, label=label, target_port=port)

    def weights(agent: Any) -> dict[str, int] | None:
        table = agent.table()
        for service_key, service in table.items():
            if str(service_key.address) == vip:
                return {str(r): r.weight for r in service.reals.values()}
        return None

    real = f"127.0.0.1:{port}"
    try:
        with director.agent() as agent:
            publish(api, ns, "checked", [{"ip": "127.0.0.1", "port": port, "weight": 2,
                                          "ready": True}])
            assert eventually(lambda: weights(agent) == {real: 2})
            checked = (f"{ns}/checked", ip_address("127.0.0.1"), port)
            assert eventually(lambda: agent.health.statuses().get(checked, Health(True))
                              .checks, what="a check")
            assert agent.health.statuses()[checked].healthy
            report = eventually(lambda: directors(api, ns, "checked").get(node))
            assert "unhealthy" not in report

            server.close()  # the real server dies: weight 0, kept (not drained away)
            assert eventually(lambda: weights(agent) == {real: 0}, what="weight 0")
            assert eventually(lambda: directors(api, ns, "checked")[node].get("unhealthy")
                              == [real], what="reported unhealthy")

            def events():
                return [(e["type"], e["reason"]) for e in api.request(
                    "GET", kube_events.events_path(ns))["items"]
                    if e["regarding"].get("name") == "checked"]

            assert eventually(lambda: ("Warning", "RealServerUnhealthy") in events())

            server = listener(port)  # back: its weight again, a clean report
            assert eventually(lambda: weights(agent) == {real: 2}, timeout=TIMEOUT,
                              what="weight back")
            assert eventually(lambda: "unhealthy" not in directors(api, ns, "checked")[node],
                              what="report clean")
            metrics = prometheus_client.generate_latest(agent.registry).decode()
            assert (f'lvs_real_server_healthy{{name="checked",namespace="{ns}",port="80",'
                    f'protocol="TCP",real="{real}",vip="{vip}"}} 1.0\n') in metrics
    finally:
        server.close()
