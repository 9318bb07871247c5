"""plan(desired, actual, owned): table-driven cases."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address

import pytest

from lvs_operator.model import (
    Forwarding,
    Persistence,
    Protocol,
    RealServer,
    ServiceKey,
    VirtualService,
    table,
)
from lvs_operator.plan import (
    AddReal,
    AddService,
    DeleteReal,
    DeleteService,
    SetReal,
    SetService,
    conflicts,
    plan,
)

KEY = ServiceKey.inet(Protocol.TCP, ip_address("192.0.2.10"), 80)
OTHER = ServiceKey.inet(Protocol.TCP, ip_address("192.0.2.11"), 80)
V6 = ServiceKey.inet(Protocol.UDP, ip_address("2001:db8::10"), 53)


def real(last: int, *, weight: int = 1, active: int = 0, inactive: int = 0) -> RealServer:
    return RealServer(ip_address(f"10.0.0.{last}"), 80, Forwarding.DIRECT_ROUTING, weight,
                      active_conns=active, inactive_conns=inactive)


def svc(key: ServiceKey = KEY, *reals: RealServer, scheduler: str = "rr") -> VirtualService:
    return VirtualService(key=key, scheduler=scheduler).with_reals(reals)


CASES = [
    pytest.param([], [], [], id="empty"),
    pytest.param(
        [svc(KEY, real(1), real(2))], [], [
            AddService(svc(KEY)), AddReal(KEY, real(1)), AddReal(KEY, real(2))],
        id="create-from-empty"),
    pytest.param([svc(KEY, real(1))], [svc(KEY, real(1))], [], id="converged"),
    pytest.param(
        [svc(KEY, real(1))], [svc(KEY, real(1, active=5, inactive=3))], [],
        id="counters-do-not-matter"),
    pytest.param(
        [svc(KEY, real(1), scheduler="wrr")], [svc(KEY, real(1))],
        [SetService(svc(KEY, scheduler="wrr"))], id="scheduler-change-is-set"),
    pytest.param(
        [replace(svc(KEY, real(1)), persistence=Persistence(600, 24))], [svc(KEY, real(1))],
        [SetService(replace(svc(KEY), persistence=Persistence(600, 24)))],
        id="persistence-change-is-set"),
    pytest.param(
        [svc(KEY, real(1, weight=3))], [svc(KEY, real(1))],
        [SetReal(KEY, real(1, weight=3))], id="weight-change-is-set"),
    pytest.param(
        [svc(KEY, replace(real(1), forwarding=Forwarding.NAT))], [svc(KEY, real(1))],
        [SetReal(KEY, replace(real(1), forwarding=Forwarding.NAT))], id="mode-change-is-set"),
    pytest.param(
        [svc(KEY, real(2))], [svc(KEY, real(1))],
        [DeleteReal(KEY, real(1)), AddReal(KEY, real(2))], id="swap-real"),
    pytest.param(
        [], [svc(KEY, real(1))], [DeleteService(KEY)], id="withdraw-owned"),
    pytest.param(
        [svc(OTHER)], [svc(KEY, real(1)), svc(OTHER)], [DeleteService(KEY)],
        id="withdraw-one-of-two"),
    pytest.param(
        [svc(V6), svc(KEY)], [], [AddService(svc(KEY)), AddService(svc(V6))],
        id="ipv4-before-ipv6-deterministic"),
]


@pytest.mark.parametrize(("desired", "actual", "expected"), CASES)
def test_plan(desired, actual, expected):
    owned = {s.key for s in desired} | {s.key for s in actual}
    assert plan(table(desired), table(actual), owned=owned) == expected


def test_never_touches_unowned_service():
    foreign = svc(OTHER, real(9))
    assert plan({}, table([foreign]), owned=set()) == []
    # ... even when it is "wrong": not ours to fix.
    assert plan({}, table([foreign]), owned=lambda key: key != OTHER) == []


def test_desired_key_not_owned_is_a_conflict_left_alone():
    """A desired key somebody else created (kube-proxy, keepalived, ipvsadm) is not adopted:
    no set, no real-server change, no drain; only a missing desired service is added."""
    desired = table([svc(KEY, real(1), scheduler="wlc"), svc(OTHER, real(2))])
    actual = table([svc(KEY, real(9, active=3))])
    added = [AddService(svc(OTHER)), AddReal(OTHER, real(2))]
    assert conflicts(desired, actual, owned=set()) == {KEY}
    assert plan(desired, actual, owned=set()) == added
    assert plan(desired, actual, owned=lambda key: False, drain=True) == added
    # The same tables once the key is recorded as ours: converged like any other.
    assert conflicts(desired, actual, owned={KEY}) == set()
    assert plan(desired, actual, owned={KEY}, drain=True) == [
        SetService(svc(KEY, scheduler="wlc")), SetReal(KEY, real(9, active=3, weight=0)),
        AddReal(KEY, real(1)), *added]


DRAIN_CASES = [
    pytest.param([svc(KEY, real(1), real(2))], [svc(KEY, real(1), real(2, active=2))],
                 [], id="nothing-to-drain"),
    pytest.param([svc(KEY, real(1))], [svc(KEY, real(1), real(2, active=2))],
                 [SetReal(KEY, real(2, weight=0))], id="busy-real-weight-0"),
    pytest.param([svc(KEY, real(1))], [svc(KEY, real(1), real(2, weight=0, inactive=1))],
                 [], id="draining-real-waits"),
    pytest.param([svc(KEY, real(1))], [svc(KEY, real(1), real(2, weight=0))],
                 [DeleteReal(KEY, real(2, weight=0))], id="idle-real-deleted"),
    pytest.param([], [svc(KEY, real(1, active=1), real(2))],
                 [SetReal(KEY, real(1, weight=0)), DeleteReal(KEY, real(2))],
                 id="withdrawn-service-drains-its-reals"),
    pytest.param([], [svc(KEY, real(1, weight=0))], [DeleteService(KEY)],
                 id="withdrawn-idle-service-deleted"),
]


@pytest.mark.parametrize(("desired", "actual", "expected"), DRAIN_CASES)
def test_plan_drain(desired, actual, expected):
    owned = {KEY}
    assert plan(table(desired), table(actual), owned=owned, drain=True) == expected


def test_drained_real_comes_back_with_its_weight():
    ops = plan(table([svc(KEY, real(2, weight=5))]), table([svc(KEY, real(2, weight=0, active=3))]),
               owned={KEY}, drain=True)
    assert ops == [SetReal(KEY, real(2, weight=5))]


def test_order_deletes_before_adds_and_is_stable():
    desired = table([svc(OTHER, real(3)), svc(KEY, real(2), real(1, weight=2))])
    actual = table([svc(KEY, real(1), real(4)), svc(ServiceKey.mark(7), real(5))])
    owned = set(desired) | set(actual)
    ops = plan(desired, actual, owned=owned)
    assert ops == [
        DeleteService(ServiceKey.mark(7)),
        DeleteReal(KEY, real(4)),
        SetReal(KEY, real(1, weight=2)),
        AddReal(KEY, real(2)),
        AddService(svc(OTHER)),
        AddReal(OTHER, real(3)),
    ]
    assert plan(desired, actual, owned=owned) == ops
