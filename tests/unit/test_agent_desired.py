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


def test_relevant_ignores_other_directors_bookkeeping_but_not_their_roles():
    def directors(**entries):
        return {**base, "metadata": {**base["metadata"], "resourceVersion": "2",
                                     "managedFields": [{"manager": "x"}]},
                "status": {**base["status"], "directors": entries}}

    base = vs(reals=[real(1)])
    active = directors(**{"node-b": {"role": "Active", "generation": 1, "syncedAt": "a"}})
    later = directors(**{"node-b": {"role": "Active", "generation": 2, "syncedAt": "b"}})
    assert desired.relevant(active, node=NODE) == desired.relevant(later, node=NODE)
    # Another director's role is what a handover waits for.
    standby = directors(**{"node-b": {"role": "Standby", "generation": 2}})
    assert desired.relevant(active, node=NODE) != desired.relevant(standby, node=NODE)
    mine = {**base, "status": {**base["status"], "directors": {NODE: {"role": "Active"}}}}
    assert desired.relevant(base, node=NODE) != desired.relevant(mine, node=NODE)
    changed = {**base, "status": {"realServers": [real(2)]}}
    assert desired.relevant(base, node=NODE) != desired.relevant(changed, node=NODE)


def test_node_labels():
    assert desired.node_labels({"metadata": {"name": "n", "labels": LABELS}}) == LABELS
    assert desired.node_labels({"metadata": {"name": "n"}}) == {}


# --- director-side health checks ------------------------------------------------------------

TCP_CHECK = {"tcp": {}, "intervalSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 3}


def test_health_targets_are_the_real_servers_of_checked_virtualservers():
    checked = vs(reals=[real(1), real(2, weight=0)], healthCheck=TCP_CHECK,
                 ports=({"port": 80}, {"port": 443}))
    unchecked = vs("plain", vip="192.0.2.11", reals=[real(3)])
    result = desired.build([checked, unchecked], node=NODE, labels=LABELS,
                           default_interface=None)
    targets = result.health_targets
    assert sorted((t.vs, str(t.address), t.port) for t in targets) == [
        ("shop/web", "10.0.0.1", 80), ("shop/web", "10.0.0.1", 443),
        ("shop/web", "10.0.0.2", 80), ("shop/web", "10.0.0.2", 443)]
    assert {t.check.kind for t in targets} == {"tcp"}
    assert {t.check.failure_threshold for t in targets} == {3}


def test_health_targets_once_per_real_server_port():
    # NAT: two virtual ports onto the same targetPort are one real server to check.
    document = vs(forwarding="NAT", ports=({"port": 80, "targetPort": 8080},
                                           {"port": 81, "targetPort": 8080}),
                  reals=[real(1)], healthCheck={"http": {"path": "/healthz"}})
    result = desired.build([document], node=NODE, labels=LABELS, default_interface=None)
    (target,) = result.health_targets
    assert (str(target.address), target.port, target.check.path) == ("10.0.0.1", 8080,
                                                                     "/healthz")


def test_unhealthy_real_server_gets_weight_0_and_is_kept():
    document = vs(reals=[real(1, weight=3), real(2), real(3, ready=False, weight=0)],
                  healthCheck=TCP_CHECK)
    failing = {("shop/web", ip_address("10.0.0.1"), 80)}
    result = desired.build([document], node=NODE, labels=LABELS, default_interface=None,
                           unhealthy=failing)
    assert weights(result) == {"10.0.0.1": 0, "10.0.0.2": 1}, "kept at weight 0, not drained"
    assert result.programs["shop/web"].unhealthy == ("10.0.0.1:80",)

    recovered = desired.build([document], node=NODE, labels=LABELS, default_interface=None,
                              unhealthy=set())
    assert weights(recovered) == {"10.0.0.1": 3, "10.0.0.2": 1}, "its weight back"
    assert recovered.programs["shop/web"].unhealthy == ()


def test_readiness_still_applies_on_top_of_health():
    # Not ready (weight 0 from the controller): left out to drain whatever the checks say.
    document = vs(reals=[real(1, ready=False, weight=0), real(2)], healthCheck=TCP_CHECK)
    result = desired.build([document], node=NODE, labels=LABELS, default_interface=None,
                           unhealthy=set())
    assert weights(result) == {"10.0.0.2": 1}


def test_unhealthy_sorted_over_ports_and_families():
    document = vs(forwarding="Tunnel", ports=({"port": 443}, {"port": 80}),
                  reals=[{"ip": "2001:db8::7", "weight": 1, "ready": True}, real(9), real(10)],
                  healthCheck=TCP_CHECK)
    failing = {("shop/web", ip_address(a), p) for a, p in
               [("2001:db8::7", 80), ("10.0.0.10", 443), ("10.0.0.9", 80), ("10.0.0.10", 80)]}
    result = desired.build([document], node=NODE, labels=LABELS, default_interface=None,
                           unhealthy=failing)
    assert result.programs["shop/web"].unhealthy == (
        "10.0.0.9:80", "10.0.0.10:80", "10.0.0.10:443", "[2001:db8::7]:80")
    assert weights(result, key(port=443)) == {"10.0.0.9": 1, "10.0.0.10": 0, "2001:db8::7": 1}
    assert weights(result, key(port=80)) == {"10.0.0.9": 0, "10.0.0.10": 0, "2001:db8::7": 0}


def test_without_health_check_unaffected():
    document = vs(reals=[real(1), real(2)])
    # A stale result for a VirtualServer without checks, or one of another VirtualServer.
    failing = {("shop/web", ip_address("10.0.0.1"), 80),
               ("shop/other", ip_address("10.0.0.2"), 80)}
    result = desired.build([document], node=NODE, labels=LABELS, default_interface=None,
                           unhealthy=failing)
    assert weights(result) == {"10.0.0.1": 1, "10.0.0.2": 1}
    assert result.programs["shop/web"].unhealthy == ()
    assert result.health_targets == []
    checked = desired.build([vs(reals=[real(1), real(2)], healthCheck=TCP_CHECK)], node=NODE,
                            labels=LABELS, default_interface=None, unhealthy=failing)
    assert weights(checked) == {"10.0.0.1": 0, "10.0.0.2": 1}, "another VirtualServer's " \
        "result does not count"
