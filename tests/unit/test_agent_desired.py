"""agent.desired: which VirtualServers a director programs, with which real servers."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

import pytest

from lvs_operator.agent import desired
from lvs_operator.agent.role import Role
from lvs_operator.model import Forwarding, Protocol, ServiceKey

NODE = "node-a"
LABELS = {"lvs.dev/director": "true", "zone": "a"}


def vs(name="web", *, vip="192.0.2.10", ports=({"port": 80},), selector=None, reals=None,
       ready=None, created="2025-01-01T00:00:00Z", generation=3, interface="eth0",
       forwarding="DirectRouting", **extra) -> dict[str, Any]:
    """A VirtualServer as the API server returns it."""
    spec: dict[str, Any] = {"vip": vip, "ports": list(ports), "forwarding": forwarding,
                            "scheduler": {"name": "rr"}, "backend": {"service": {"name": "web"}},
                            "directors": {"nodeSelector": selector or {}}, **extra}
    if interface:
        spec["directors"]["interface"] = interface
    status: dict[str, Any] = {}
    if reals is not None:
        status["realServers"] = reals
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": ready[0], "reason": ready[1],
                                 "message": ready[2] if len(ready) > 2 else ""}]
    return {"apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualServer",
            "metadata": {"name": name, "namespace": "shop", "generation": generation,
                         "creationTimestamp": created, "resourceVersion": "1"},
            "spec": spec, "status": status}


def real(last, *, weight=1, ready=True, port=None) -> dict[str, Any]:
    entry: dict[str, Any] = {"ip": f"10.0.0.{last}", "weight": weight, "ready": ready}
    if port is not None:
        entry["port"] = port
    return entry


def key(vip="192.0.2.10", port=80, protocol=Protocol.TCP) -> ServiceKey:
    return ServiceKey.inet(protocol, ip_address(vip), port)


def weights(result: desired.Desired, k: ServiceKey | None = None) -> dict[str, int]:
    service = result.table[k or key()]
    return {str(r.address): r.weight for r in service.reals.values()}


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ({}, {}, True),
    ({}, LABELS, True),
    ({"lvs.dev/director": "true"}, LABELS, True),
    ({"lvs.dev/director": "true", "zone": "a"}, LABELS, True),
    ({"lvs.dev/director": "true", "zone": "b"}, LABELS, False),
    ({"lvs.dev/director": "true"}, {}, False),
    ({"zone": ""}, {"zone": ""}, True),
    ({"zone": ""}, {}, False),
])
def test_selects(selector, labels, expected):
    assert desired.selects(selector, labels) is expected


@pytest.mark.parametrize(("reals", "expected"), [
    pytest.param([real(1), real(2, weight=3)], {"10.0.0.1": 1, "10.0.0.2": 3}, id="ready"),
    pytest.param([real(1), real(2, ready=False, weight=0)], {"10.0.0.1": 1},
                 id="not-ready-left-out-to-drain"),
    pytest.param([real(1, ready=False, weight=2)], {"10.0.0.1": 2},
                 id="controller-fallback-keeps-weight"),
    pytest.param([real(1, ready=False, weight=0)], {}, id="none-ready-empty-service"),
    pytest.param([real(1, weight=0)], {"10.0.0.1": 0}, id="ready-at-weight-0-as-asked"),
    pytest.param([real(1), {"ip": "bogus"}], {"10.0.0.1": 1}, id="bad-entry-skipped"),
])
def test_real_servers_from_status(reals, expected):
    result = desired.build([vs(reals=reals)], node=NODE, labels=LABELS, default_interface=None)
    assert weights(result) == expected


def test_bad_entry_is_reported_as_a_problem():
    result = desired.build([vs(reals=[real(1), {"ip": "bogus"}])], node=NODE, labels=LABELS,
                           default_interface=None)
    assert "status.realServers[1] skipped" in result.programs["shop/web"].problem


@pytest.mark.parametrize(("document", "why"), [
    pytest.param(vs(reals=None), "no real servers", id="not-resolved-yet"),
    pytest.param(vs(reals=[]), "no real servers", id="empty"),
    pytest.param(vs(reals=[real(1)], ready=("False", "Conflict", "192.0.2.10:80 is taken")),
                 "Conflict: 192.0.2.10:80 is taken", id="conflict"),
    pytest.param(vs(reals=[real(1)], ready=("False", "InvalidSpec")), "InvalidSpec",
                 id="invalid-spec"),
])
def test_withdrawn(document, why):
    result = desired.build([document], node=NODE, labels=LABELS, default_interface="eth0")
    assert result.programs == {}
    assert why in result.withdrawn["shop/web"]
    assert result.table == {}
    assert result.vips == {}


def test_programmed_despite_other_ready_reasons():
    document = vs(reals=[real(1, ready=False, weight=0)],
                  ready=("False", "NoReadyEndpoints", "none ready"))
    result = desired.build([document], node=NODE, labels=LABELS, default_interface="eth0")
    assert set(result.programs) == {"shop/web"}
    assert result.vips == {"eth0": {ip_address("192.0.2.10")}}


def test_not_selected_and_invalid_are_simply_absent():
    documents = [vs("other", selector={"zone": "b"}, reals=[real(1)]),
                 vs("broken", vip="not-an-ip", reals=[real(1)])]
    result = desired.build(documents, node=NODE, labels=LABELS, default_interface="eth0")
    assert result.programs == {}
    assert result.withdrawn == {}


def test_program_fields():
    document = vs(reals=[real(1)], ports=({"port": 80}, {"port": 53, "protocol": "UDP"}),
                  drain={"timeoutSeconds": 30}, generation=7)
    result = desired.build([document], node=NODE, labels=LABELS, default_interface="eth9")
    program = result.programs["shop/web"]
    assert (program.generation, program.role, program.interface) == (7, Role.ACTIVE, "eth0")
    assert set(result.table) == {key(), key(port=53, protocol=Protocol.UDP)}
    assert result.owners == dict.fromkeys(result.table, "shop/web")
    assert result.drain_timeouts == dict.fromkeys(result.table, 30)
    assert not result.nat
    real_server = next(iter(result.table[key()].reals.values()))
    assert real_server.forwarding is Forwarding.DIRECT_ROUTING


@pytest.mark.parametrize(("interface", "default", "held", "problem"), [
    ("eth0", "eth9", {"eth0"}, ""),
    (None, "eth9", {"eth9"}, ""),
    (None, None, set(), "no interface to hold the VIP on"),
])
def test_vip_interface(interface, default, held, problem):
    result = desired.build([vs(reals=[real(1)], interface=interface)], node=NODE,
                           labels=LABELS, default_interface=default)
    assert set(result.vips) == held
    assert problem in result.programs["shop/web"].problem
    assert set(result.table) == {key()}, "IPVS is programmed either way"


def test_nat_asks_for_forwarding():
    document = vs(reals=[real(1)], forwarding="NAT", ports=({"port": 80, "targetPort": 8080},))
    result = desired.build([document], node=NODE, labels=LABELS, default_interface=None)
    assert result.nat
    assert next(iter(result.table[key()].reals.values())).port == 8080


def test_older_virtualserver_wins_a_shared_key():
    older = vs("older", reals=[real(1)], created="2025-01-01T00:00:00Z")
    newer = vs("newer", reals=[real(2)], created="2025-01-02T00:00:00Z")
    for documents in ([older, newer], [newer, older]):
        result = desired.build(documents, node=NODE, labels=LABELS, default_interface=None)
        assert set(result.programs) == {"shop/older"}
        assert "shop/older" in result.withdrawn["shop/newer"]
        assert weights(result) == {"10.0.0.1": 1}


def test_relevant_ignores_other_directors_and_bookkeeping():
    base = vs(reals=[real(1)])
    other = {**base, "metadata": {**base["metadata"], "resourceVersion": "2",
                                  "managedFields": [{"manager": "x"}]},
             "status": {**base["status"], "directors": {"node-b": {"role": "Active"}}}}
    assert desired.relevant(base, node=NODE) == desired.relevant(other, node=NODE)
    mine = {**base, "status": {**base["status"], "directors": {NODE: {"role": "Active"}}}}
    assert desired.relevant(base, node=NODE) != desired.relevant(mine, node=NODE)
    changed = {**base, "status": {"realServers": [real(2)]}}
    assert desired.relevant(base, node=NODE) != desired.relevant(changed, node=NODE)


def test_node_labels():
    assert desired.node_labels({"metadata": {"name": "n", "labels": LABELS}}) == LABELS
    assert desired.node_labels({"metadata": {"name": "n"}}) == {}
