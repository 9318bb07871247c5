"""The IPVS contract (tests/ipvs_contract.py) against FakeIPVS, and what only the fake offers."""

from __future__ import annotations

import pytest

from ipvs_contract import *  # noqa: F403  (the shared test bodies)
from ipvs_contract import V4, real
from lvs_operator.ipvs.fake import FakeIPVS
from lvs_operator.model import Stats, VirtualService
from lvs_operator.plan import AddReal, AddService

SYNC_INTERFACE = "sync0"


@pytest.fixture
def ipvs() -> FakeIPVS:
    return FakeIPVS(interfaces=[SYNC_INTERFACE])


@pytest.fixture
def sync_interface() -> str:
    return SYNC_INTERFACE


def test_counters_are_zero_unless_set(ipvs: FakeIPVS) -> None:
    ipvs.apply([AddService(VirtualService(V4, scheduler="rr")), AddReal(V4, real("10.0.0.1"))])
    ipvs.set_counters(V4, real("10.0.0.1").key, stats=Stats(conns=5), active=2, inactive=1)
    dumped = ipvs.dump()[V4]
    assert dumped.stats == Stats()
    (only,) = dumped.reals.values()
    assert (only.stats, only.active_conns, only.inactive_conns) == (Stats(conns=5), 2, 1)


def test_reals_are_listed_newest_first_like_the_kernel(ipvs: FakeIPVS) -> None:
    ipvs.apply([AddService(VirtualService(V4, scheduler="rr"))]
               + [AddReal(V4, real(f"10.0.0.{i}")) for i in (1, 2, 3)])
    assert [str(r) for r in ipvs.dump()[V4].reals.values()] == [
        "10.0.0.3:80", "10.0.0.2:80", "10.0.0.1:80"]


def test_unknown_scheduler_module(ipvs: FakeIPVS) -> None:
    fake = FakeIPVS(schedulers={"rr"})
    fake.apply([AddService(VirtualService(V4, scheduler="rr"))])
    assert fake.dump() == {V4: VirtualService(V4, scheduler="rr")}
