"""agent.desired: which VirtualServers a director programs, with which real servers."""

from __future__ import annotations

import copy
from ipaddress import ip_address
from typing import Any

import pytest

import scenarios
from lvs_operator.agent import desired
from lvs_operator.agent.role import Role
from lvs_operator.api import claims, pools, spec
from lvs_operator.model import Forwarding, Protocol, ServiceKey

NODE = "node-a"
LABELS = {"lvs.dev/director": "true", "zone": "a"}
# The tests' open pool: every address, for namespace "shop" (unlabelled).
OPEN = desired.Gate.of([scenarios.open_pool()], {"shop": {}})


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
    result = desired.build([vs(reals=reals)], node=NODE, labels=LABELS,
                           gate=OPEN, default_interface=None)
    assert weights(result) == expected


def test_bad_entry_is_reported_as_a_problem():
    result = desired.build([vs(reals=[real(1), {"ip": "bogus"}])], node=NODE, labels=LABELS,
                           gate=OPEN, default_interface=None)
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
    result = desired.build([document], node=NODE, labels=LABELS,
                           gate=OPEN, default_interface="eth0")
    assert result.programs == {}
    assert why in result.withdrawn["shop/web"]
    assert result.table == {}
    assert result.vips == {}


def test_programmed_despite_other_ready_reasons():
    document = vs(reals=[real(1, ready=False, weight=0)],
                  ready=("False", "NoReadyEndpoints", "none ready"))
    result = desired.build([document], node=NODE, labels=LABELS,
                           gate=OPEN, default_interface="eth0")
    assert set(result.programs) == {"shop/web"}
    assert result.vips == {"eth0": {ip_address("192.0.2.10")}}


def test_not_selected_and_invalid_are_simply_absent():
    documents = [vs("other", selector={"zone": "b"}, reals=[real(1)]),
                 vs("broken", vip="not-an-ip", reals=[real(1)])]
    result = desired.build(documents, node=NODE, labels=LABELS, gate=OPEN, default_interface="eth0")
    assert result.programs == {}
    assert result.withdrawn == {}


def test_program_fields():
    document = vs(reals=[real(1)], ports=({"port": 80}, {"port": 53, "protocol": "UDP"}),
                  drain={"timeoutSeconds": 30}, generation=7)
    result = desired.build([document], node=NODE, labels=LABELS,
                           gate=OPEN, default_interface="eth9")
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
                           labels=LABELS, gate=OPEN, default_interface=default)
    assert set(result.vips) == held
    assert problem in result.programs["shop/web"].problem
    assert set(result.table) == {key()}, "IPVS is programmed either way"


def test_nat_asks_for_forwarding():
    document = vs(reals=[real(1)], forwarding="NAT", ports=({"port": 80, "targetPort": 8080},))
    result = desired.build([document], node=NODE, labels=LABELS, gate=OPEN, default_interface=None)
    assert result.nat
    assert next(iter(result.table[key()].reals.values())).port == 8080


def test_older_virtualserver_wins_a_shared_key():
    older = vs("older", reals=[real(1)], created="2025-01-01T00:00:00Z")
    newer = vs("newer", reals=[real(2)], created="2025-01-02T00:00:00Z")
    for documents in ([older, newer], [newer, older]):
        result = desired.build(documents, node=NODE, labels=LABELS,
                               gate=OPEN, default_interface=None)
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


def test_labels_of():
    assert desired.labels_of({"metadata": {"name": "n", "labels": LABELS}}) == LABELS
    assert desired.labels_of({"metadata": {"name": "n"}}) == {}


# --- director-side health checks ------------------------------------------------------------

TCP_CHECK = {"tcp": {}, "intervalSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 3}


def test_health_targets_are_the_real_servers_of_checked_virtualservers():
    checked = vs(reals=[real(1), real(2, weight=0)], healthCheck=TCP_CHECK,
                 ports=({"port": 80}, {"port": 443}))
    unchecked = vs("plain", vip="192.0.2.11", reals=[real(3)])
    result = desired.build([checked, unchecked], node=NODE, labels=LABELS,
                           gate=OPEN, default_interface=None)
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
    result = desired.build([document], node=NODE, labels=LABELS, gate=OPEN, default_interface=None)
    (target,) = result.health_targets
    assert (str(target.address), target.port, target.check.path) == ("10.0.0.1", 8080,
                                                                     "/healthz")


def test_unhealthy_real_server_gets_weight_0_and_is_kept():
    document = vs(reals=[real(1, weight=3), real(2), real(3, ready=False, weight=0)],
                  healthCheck=TCP_CHECK)
    failing = {("shop/web", ip_address("10.0.0.1"), 80)}
    result = desired.build([document], node=NODE, labels=LABELS, gate=OPEN, default_interface=None,
                           unhealthy=failing)
    assert weights(result) == {"10.0.0.1": 0, "10.0.0.2": 1}, "kept at weight 0, not drained"
    assert result.programs["shop/web"].unhealthy == ("10.0.0.1:80",)

    recovered = desired.build([document], node=NODE, labels=LABELS,
                              gate=OPEN, default_interface=None,
                              unhealthy=set())
    assert weights(recovered) == {"10.0.0.1": 3, "10.0.0.2": 1}, "its weight back"
    assert recovered.programs["shop/web"].unhealthy == ()


def test_readiness_still_applies_on_top_of_health():
    # Not ready (weight 0 from the controller): left out to drain whatever the checks say.
    document = vs(reals=[real(1, ready=False, weight=0), real(2)], healthCheck=TCP_CHECK)
    result = desired.build([document], node=NODE, labels=LABELS, gate=OPEN, default_interface=None,
                           unhealthy=set())
    assert weights(result) == {"10.0.0.2": 1}


def test_unhealthy_sorted_over_ports_and_families():
    document = vs(forwarding="Tunnel", ports=({"port": 443}, {"port": 80}),
                  reals=[{"ip": "2001:db8::7", "weight": 1, "ready": True}, real(9), real(10)],
                  healthCheck=TCP_CHECK)
    failing = {("shop/web", ip_address(a), p) for a, p in
               [("2001:db8::7", 80), ("10.0.0.10", 443), ("10.0.0.9", 80), ("10.0.0.10", 80)]}
    result = desired.build([document], node=NODE, labels=LABELS, gate=OPEN, default_interface=None,
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
    result = desired.build([document], node=NODE, labels=LABELS, gate=OPEN, default_interface=None,
                           unhealthy=failing)
    assert weights(result) == {"10.0.0.1": 1, "10.0.0.2": 1}
    assert result.programs["shop/web"].unhealthy == ()
    assert result.health_targets == []
    checked = desired.build([vs(reals=[real(1), real(2)], healthCheck=TCP_CHECK)], node=NODE,
                            labels=LABELS, gate=OPEN, default_interface=None, unhealthy=failing)
    assert weights(checked) == {"10.0.0.1": 0, "10.0.0.2": 1}, "another VirtualServer's " \
        "result does not count"


# --- the cache of what each VirtualServer alone gives -----------------------------------------


def at(document: dict[str, Any], version: str, *, uid: str = "uid-1", **changes) -> dict[str, Any]:
    """`document` as the API server returns it at resourceVersion `version`, with `changes`
    to its top-level fields (spec, status)."""
    return {**document, **changes,
            "metadata": {**document["metadata"], "resourceVersion": version, "uid": uid}}


@pytest.fixture
def parses(monkeypatch) -> list[str]:
    """The namespace/name of every VirtualServer `spec.parse` is asked for, in order."""
    calls: list[str] = []
    parse = spec.parse

    def counting(document, **kwargs):
        calls.append(f"{document['metadata'].get('namespace')}/{document['metadata']['name']}")
        return parse(document, **kwargs)

    monkeypatch.setattr(spec, "parse", counting)
    return calls


def build(documents, cache, **kwargs) -> desired.Desired:
    """Return `desired.build` of `documents` with `cache`, after checking it against a build
    without one (the cache must never change the answer)."""
    kwargs = {"node": NODE, "labels": LABELS, "gate": OPEN, "default_interface": None,
              **kwargs}
    uncached = desired.build(documents, **kwargs)
    result = desired.build(documents, cache=cache, **kwargs)
    assert result == uncached
    return result


def test_cache_does_not_parse_unchanged_virtualservers_again(parses):
    documents = [at(vs(f"web{i}", vip=f"192.0.2.{10 + i}", reals=[real(i)]), "1", uid=f"u{i}")
                 for i in range(3)]
    cache = desired.Cache()
    first = desired.build(documents, node=NODE, labels=LABELS, gate=OPEN, default_interface=None,
                          cache=cache)
    assert sorted(parses) == ["shop/web0", "shop/web1", "shop/web2"]
    parses.clear()
    again = desired.build(documents, node=NODE, labels=LABELS, gate=OPEN, default_interface=None,
                          cache=cache)
    assert parses == []
    assert again == first and len(again.programs) == 3
    # The same objects as a new list brings (a relist): the same versions, still no parse.
    relisted = [copy.deepcopy(d) for d in documents]
    assert desired.build(relisted, node=NODE, labels=LABELS, gate=OPEN, default_interface=None,
                         cache=cache) == first
    assert parses == []


def test_cache_parses_a_new_resource_version(parses):
    cache = desired.Cache()
    before = at(vs(reals=[real(1)]), "1")
    assert weights(build([before], cache)) == {"10.0.0.1": 1}
    parses.clear()
    # A status change (the controller resolved new real servers) is a new resourceVersion.
    after = at(before, "2", status={"realServers": [real(1), real(2, weight=5)]})
    assert weights(build([after], cache)) == {"10.0.0.1": 1, "10.0.0.2": 5}
    assert parses == ["shop/web"] * 2  # once without the cache, once with it
    parses.clear()
    # A spec change (a new port) too, and the generation goes with it.
    new_spec = {**after["spec"], "ports": [{"port": 80}, {"port": 443}]}
    changed = at({**after, "metadata": {**after["metadata"], "generation": 4}}, "3", spec=new_spec)
    result = build([changed], cache)
    assert set(result.table) == {key(), key(port=443)}
    assert result.programs["shop/web"].generation == 4
    assert parses == ["shop/web"] * 2


def test_cache_parses_a_recreated_virtualserver(parses):
    cache = desired.Cache()
    build([at(vs(reals=[real(1)]), "7", uid="old")], cache)
    parses.clear()
    # Deleted and made again under the same name: another uid (whatever its version says).
    recreated = at(vs(vip="192.0.2.99", reals=[real(2)]), "7", uid="new")
    result = build([recreated], cache)
    assert parses == ["shop/web"] * 2
    assert weights(result, key(vip="192.0.2.99")) == {"10.0.0.2": 1}


def test_cache_without_resource_version_parses_every_time(parses):
    document = vs(reals=[real(1)])
    del document["metadata"]["resourceVersion"]
    cache = desired.Cache()
    build([document], cache)
    build([{**document, "status": {"realServers": [real(3)]}}], cache)
    assert parses == ["shop/web"] * 4


def test_cache_forgets_deleted_virtualservers(parses):
    web = at(vs(reals=[real(1)]), "1", uid="u1")
    api = at(vs("api", vip="192.0.2.11", reals=[real(2)]), "2", uid="u2")
    cache = desired.Cache()
    assert set(build([web, api], cache).programs) == {"shop/web", "shop/api"}
    assert len(cache) == 2
    assert set(build([web], cache).programs) == {"shop/web"}
    assert len(cache) == 1, "kept what is gone"
    assert set(build([], cache).programs) == set()
    assert len(cache) == 0
    parses.clear()
    # Back at the same version (a watch replayed): parsed again, since it was forgotten.
    desired.build([web], node=NODE, labels=LABELS, gate=OPEN, default_interface=None, cache=cache)
    assert parses == ["shop/web"]


def test_cache_keeps_invalid_virtualservers_invalid(parses):
    invalid = at(vs(vip="not-an-address", reals=[real(1)]), "1")
    cache = desired.Cache()
    for _ in range(2):
        result = desired.build([invalid], node=NODE, labels=LABELS,
                               gate=OPEN, default_interface=None,
                               cache=cache)
        assert result.programs == {} and result.withdrawn == {}
    assert parses == ["shop/web"], "the error is kept too"
    fixed = at(vs(reals=[real(1)]), "2")
    assert set(build([fixed], cache).programs) == {"shop/web"}


def test_cache_keeps_what_cannot_be_programmed(parses):
    # DirectRouting cannot remap port 80 to the real server's 8080: withdrawn, every time.
    document = at(vs(reals=[real(1, port=8080)]), "1")
    cache = desired.Cache()
    for _ in range(2):
        result = desired.build([document], node=NODE, labels=LABELS,
                               gate=OPEN, default_interface=None,
                               cache=cache)
        assert result.programs == {}
        assert result.withdrawn["shop/web"].startswith("cannot program its real servers")
    assert parses == ["shop/web"]
    fixed = at(document, "2", status={"realServers": [real(1, port=80)]})
    assert weights(build([fixed], cache)) == {"10.0.0.1": 1}


def test_cache_follows_what_is_not_the_virtualserver(parses):
    # The same object throughout; what changes is the node, the interface, the health
    # results, the roles: none of it may be taken from the cache.
    document = at(vs(reals=[real(1), real(2)], interface="", healthCheck=TCP_CHECK,
                     selector={"zone": "a"}), "1")
    cache = desired.Cache()
    assert build([document], cache).programs["shop/web"].interface is None
    assert build([document], cache, default_interface="eth1").programs["shop/web"].interface \
        == "eth1"
    assert "no interface" in build([document], cache).programs["shop/web"].problem
    assert build([document], cache, labels={"zone": "b"}).programs == {}
    failing = {("shop/web", ip_address("10.0.0.1"), 80)}
    assert weights(build([document], cache, unhealthy=failing)) == {"10.0.0.1": 0,
                                                                   "10.0.0.2": 1}
    assert weights(build([document], cache)) == {"10.0.0.1": 1, "10.0.0.2": 1}
    standby = build([document], cache, decide=lambda vs, obj: Role.STANDBY)
    assert standby.programs["shop/web"].role is Role.STANDBY
    assert standby.programs["shop/web"].problem == "", "a Standby holds no VIP"
    assert build([document], cache).programs["shop/web"].role is Role.ACTIVE
    # Its withdrawal by the controller is a status change: a new version.
    conflict = at(document, "2", status={**document["status"], "conditions": [
        {"type": "Ready", "status": "False", "reason": "Conflict", "message": "taken"}]})
    assert build([conflict], cache).withdrawn == {"shop/web": "Conflict: taken"}
    # Every build above parsed once without the cache; the cache parsed each version once.
    assert len(parses) == 9 + 2


def test_cache_follows_conflicts_between_virtualservers():
    older = at(vs("older", reals=[real(1)], created="2025-01-01T00:00:00Z"), "1", uid="u1")
    newer = at(vs("newer", reals=[real(2)], created="2025-01-02T00:00:00Z"), "2", uid="u2")
    cache = desired.Cache()
    assert set(build([newer], cache).programs) == {"shop/newer"}
    assert set(build([newer], cache).programs) == {"shop/newer"}
    assert set(build([older, newer], cache).programs) == {"shop/older"}
    assert "shop/older" in build([older, newer], cache).withdrawn["shop/newer"]
    assert set(build([newer], cache).programs) == {"shop/newer"}, "takes over once it is gone"
    # The older one moves to another VIP: no conflict left.
    moved = at(older, "3", spec={**older["spec"], "vip": "192.0.2.50"})
    assert set(build([moved, newer], cache).programs) == {"shop/older", "shop/newer"}
    # ...or is no longer selected here: its claim counts only where it is programmed.
    away = at(older, "4", spec={**older["spec"], "directors": {"nodeSelector": {"zone": "b"}}})
    assert set(build([away, newer], cache).programs) == {"shop/newer"}


# --- the VIP pools (the gate): deny by default, the pool's directors --------------------------


def pool(name="shop-pool", addresses=("192.0.2.0/24",), *, version="1",
         **fields) -> dict[str, Any]:
    """A VIPPool for namespace "shop" (unless `fields` say otherwise)."""
    return {"apiVersion": "lvs.dev/v1alpha1", "kind": "VIPPool",
            "metadata": {"name": name, "resourceVersion": version},
            "spec": {"addresses": list(addresses), "namespaces": ["shop"], **fields}}


def in_namespace(document: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {**document, "metadata": {**document["metadata"], "namespace": namespace}}


def gated(documents, gate, **kwargs) -> desired.Desired:
    return desired.build(documents, **{"node": NODE, "labels": LABELS, "gate": gate,
                                       "default_interface": None, **kwargs})


@pytest.fixture
def admits(monkeypatch) -> list[str]:
    """The namespace/name of every VirtualServer `pools.admit` is asked about, in order."""
    calls: list[str] = []
    admit = pools.admit

    def counting(vs, *args, **kwargs):
        calls.append(vs.id)
        return admit(vs, *args, **kwargs)

    monkeypatch.setattr(pools, "admit", counting)
    return calls


@pytest.mark.parametrize("gate", [
    pytest.param(desired.Gate(), id="no-pool-at-all"),
    pytest.param(desired.Gate.of([pool(addresses=["198.51.100.0/24"])], {"shop": {}}),
                 id="vip-outside-the-pool"),
    pytest.param(desired.Gate.of([pool(namespaces=["other"])], {"shop": {}}),
                 id="pool-of-another-namespace"),
    pytest.param(desired.Gate.of([scenarios.open_pool()], {}), id="namespace-labels-unknown"),
    pytest.param(desired.Gate.of([scenarios.open_pool()],
                                 {"shop": {scenarios.CLOSED_LABEL: "true"}}),
                 id="namespace-not-selected"),
])
def test_a_vip_in_no_pool_is_withdrawn_whatever_its_status_says(gate):
    # The status says Ready with real servers (forged, or stale): the pools decide.
    document = vs(reals=[real(1)], ready=("True", "Ready", ""))
    result = gated([document], gate, default_interface="eth0")
    assert result.programs == {} and result.table == {} and result.vips == {}
    verdict = pools.admit(spec.parse(document), gate.pools, gate.labels("shop"))
    assert result.withdrawn == {"shop/web": f"VIPNotAllowed: {verdict.message}"}
    assert result.refused == {"shop/web": verdict}, "its status contradicts the refusal"


@pytest.mark.parametrize(("fields", "reason"), [
    ({"forwarding": ["NAT"]}, pools.FORWARDING_NOT_ALLOWED),
    ({"directors": {"interface": "bond0"}}, pools.DIRECTORS_NOT_ALLOWED),  # vs() names eth0
])
def test_a_pool_that_does_not_allow_the_rest_refuses(fields, reason):
    result = gated([vs(reals=[real(1)])], desired.Gate.of([pool(**fields)], {"shop": {}}))
    assert result.programs == {}
    assert result.withdrawn["shop/web"].startswith(f"{reason}: ")


def test_a_refusal_the_controller_made_too_is_no_contradiction():
    # What the controller writes for it: Ready=False with the pool's reason, no real servers.
    document = vs(ready=("False", pools.VIP_NOT_ALLOWED, "spec.vip: not in a pool"))
    result = gated([document], desired.Gate())
    assert "shop/web" in result.withdrawn and result.refused == {}


def test_a_refused_virtualserver_that_selects_another_node_is_not_reported_here():
    document = vs(reals=[real(1)], selector={"zone": "b"})
    result = gated([document], desired.Gate())
    assert result.withdrawn == {} and result.refused == {}


@pytest.mark.parametrize("reason", [*pools.REASONS, claims.VIP_IN_USE])
def test_the_controllers_refusals_withdraw(reason):
    # Even with real servers still published (a stale status): the controller said no.
    result = gated([vs(reals=[real(1)], ready=("False", reason, "no"))], OPEN)
    assert result.withdrawn == {"shop/web": f"{reason}: no"}
    assert result.refused == {}, "the pools (open here) admit it: the controller refused"


def test_the_pools_directors_are_inherited():
    gate = desired.Gate.of([pool(directors={"nodeSelector": {"zone": "a"},
                                            "interface": "bond0"})], {"shop": {}})
    document = vs(reals=[real(1)], interface=None)  # no directors of its own
    result = gated([document], gate, default_interface="eth9")
    program = result.programs["shop/web"]
    assert program.interface == "bond0", "the pool's interface holds the VIP"
    assert program.vs.directors == spec.Directors(node_selector={"zone": "a"},
                                                  interface="bond0")
    assert result.vips == {"bond0": {ip_address("192.0.2.10")}}
    # The pool's node selector narrows the directors: a node in zone b serves nothing.
    assert gated([document], gate, labels={"zone": "b"}) == desired.Desired({}, {})
    # A VirtualServer may narrow it further (add labels), not change it.
    narrowed = vs(reals=[real(1)], interface=None, selector={"lvs.dev/director": "true"})
    assert set(gated([narrowed], gate).programs) == {"shop/web"}
    assert gated([narrowed], gate, labels={"zone": "a"}).programs == {}
    changed = vs(reals=[real(1)], interface=None, selector={"zone": "b"})
    refused = gated([changed], gate, labels={"zone": "b"})
    assert refused.withdrawn["shop/web"].startswith(pools.DIRECTORS_NOT_ALLOWED)


def test_an_invalid_pool_admits_nothing():
    gate = desired.Gate.of([pool(addresses=["192.0.2.1/24"], version="7")], {"shop": {}})
    assert gate.pools == ()
    (invalid,) = gate.invalid
    assert (invalid.name, invalid.version) == ("shop-pool", "7")
    assert "spec.addresses[0]" in invalid.message
    assert gated([vs(reals=[real(1)])], gate).withdrawn["shop/web"].startswith(
        pools.VIP_NOT_ALLOWED)


def test_a_new_gate_keeps_what_did_not_change():
    labels = {"team": "a"}
    first = desired.Gate.of([pool()], {"shop": labels, "other": {}})
    same = desired.Gate.of([pool(version="2")], {"shop": dict(labels), "other": {"x": "y"}},
                           previous=first)
    assert same.pools is first.pools, "equal pools: the same object"
    assert same.labels("shop") is first.labels("shop")
    assert same.labels("other") == {"x": "y"}
    assert same.labels("gone") is None
    moved = desired.Gate.of([pool(addresses=["198.51.100.0/24"])], {}, previous=same)
    assert moved.pools is not same.pools


def test_verdicts_are_kept_until_the_pools_or_the_namespace_labels_change(parses, admits):
    shop = at(vs(reals=[real(1)]), "1", uid="u1")
    other = at(in_namespace(vs("api", vip="192.0.2.11", reals=[real(2)]), "other"), "1",
               uid="u2")
    documents = [shop, other]
    open_pool = scenarios.open_pool()
    # The gates, one after the other (parsing a pool parses a VirtualServer: not counted).
    gate = desired.Gate.of([open_pool], {"shop": {}, "other": {}})
    again = desired.Gate.of([copy.deepcopy(open_pool)], {"shop": {}, "other": {}},
                            previous=gate)
    closed = desired.Gate.of([open_pool], {"shop": {}, "other": {scenarios.CLOSED_LABEL: "1"}},
                             previous=again)
    narrow = desired.Gate.of([pool(addresses=["192.0.2.11/32"], namespaces=["shop", "other"],
                                   directors={"allowOverride": True})],
                             {"shop": {}, "other": {}}, previous=closed)
    parses.clear()
    cache = desired.Cache()
    assert set(gated(documents, gate, cache=cache).programs) == {"shop/web", "other/api"}
    assert sorted(admits) == ["other/api", "shop/web"]
    admits.clear()
    parses.clear()
    # Nothing changed (a resync): nothing parsed or admitted again, also under a gate made
    # anew from equal pools and labels.
    assert set(gated(documents, gate, cache=cache).programs) == {"shop/web", "other/api"}
    assert set(gated(documents, again, cache=cache).programs) == {"shop/web", "other/api"}
    assert admits == [] and parses == []
    # Namespace "other" is closed: only its VirtualServer is admitted again, and refused.
    result = gated(documents, closed, cache=cache)
    assert set(result.programs) == {"shop/web"} and set(result.withdrawn) == {"other/api"}
    assert admits == ["other/api"] and parses == []
    admits.clear()
    # The pools change: everything is admitted again; the cache never changes the answer.
    result = gated(documents, narrow, cache=cache)
    assert result == gated(documents, narrow)
    assert set(result.programs) == {"other/api"} and set(result.withdrawn) == {"shop/web"}
    assert sorted(admits) == ["other/api", "other/api", "shop/web", "shop/web"]
    assert parses == ["shop/web", "other/api"], "only the build without a cache parsed"


def test_real_servers_outside_the_static_addresses_are_skipped():
    backend = {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}]}
    document = vs(reals=[real(1), real(9), real(2)], backend=backend, interface=None)
    gate = desired.Gate.of([pool(backendAddresses=["10.0.0.0/24"])], {"shop": {}})
    result = gated([document], gate, default_interface="eth0")
    assert weights(result) == {"10.0.0.1": 1, "10.0.0.2": 1}
    assert result.programs["shop/web"].problem == (
        "status.realServers[1] skipped: 10.0.0.9 is not among spec.backend.addresses (the "
        "controller publishes only those)")
    # A Service backend's endpoints are the controller's to resolve: not checked here.
    assert weights(gated([vs(reals=[real(9)], interface=None)], gate)) == {"10.0.0.9": 1}
