"""agent.drain: drain deadlines on top of plan's drain, persisted across restarts."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from lvs_operator import syncer
from lvs_operator.agent import drain
from lvs_operator.ipvs.fake import FakeIPVS
from lvs_operator.model import Forwarding, Protocol, RealServer, ServiceKey, VirtualService
from lvs_operator.ownership import OwnershipStore
from lvs_operator.plan import DeleteReal, DeleteService, SetReal

KEY = ServiceKey.inet(Protocol.TCP, ip_address("192.0.2.10"), 80)
OTHER = ServiceKey.inet(Protocol.TCP, ip_address("192.0.2.11"), 80)


def rs(last, *, weight=1, active=0, inactive=0) -> RealServer:
    return RealServer(ip_address(f"10.0.0.{last}"), 80, Forwarding.DIRECT_ROUTING, weight,
                      active_conns=active, inactive_conns=inactive)


def svc(key=KEY, *reals: RealServer) -> VirtualService:
    return VirtualService(key=key, scheduler="rr").with_reals(reals)


def name(last, key=KEY) -> str:
    return drain.timer_id(key, rs(last))


# (actual, desired, owned, timers before, now) -> (reals read as idle, timers after)
CASES = [
    pytest.param({KEY: svc(KEY, rs(1), rs(2, active=3))}, {KEY: svc(KEY, rs(1))}, {KEY}, {},
                 100.0, set(), {name(2): drain.Timer(100.0, 30)}, id="drain-starts-now"),
    pytest.param({KEY: svc(KEY, rs(1), rs(2, active=3))}, {KEY: svc(KEY, rs(1))}, {KEY},
                 {name(2): drain.Timer(80.0, 30)}, 100.0, set(),
                 {name(2): drain.Timer(80.0, 30)}, id="running-keeps-its-start"),
    pytest.param({KEY: svc(KEY, rs(1), rs(2, active=3))}, {KEY: svc(KEY, rs(1))}, {KEY},
                 {name(2): drain.Timer(60.0, 30)}, 100.0, {(KEY, 2)},
                 {name(2): drain.Timer(60.0, 30)}, id="expired-reads-idle"),
    pytest.param({KEY: svc(KEY, rs(1), rs(2, inactive=1))}, {KEY: svc(KEY, rs(1))}, {KEY},
                 {name(2): drain.Timer(70.0, 30)}, 100.0, {(KEY, 2)},
                 {name(2): drain.Timer(70.0, 30)}, id="exactly-at-the-deadline"),
    pytest.param({KEY: svc(KEY, rs(1))}, {KEY: svc(KEY, rs(1))}, {KEY},
                 {name(2): drain.Timer(60.0, 30)}, 100.0, set(), {}, id="gone-timer-dropped"),
    pytest.param({KEY: svc(KEY, rs(1), rs(2, active=1))}, {KEY: svc(KEY, rs(1), rs(2))}, {KEY},
                 {name(2): drain.Timer(60.0, 30)}, 100.0, set(), {}, id="wanted-again"),
    pytest.param({OTHER: svc(OTHER, rs(1, active=1))}, {}, {OTHER}, {}, 100.0, set(),
                 {name(1, OTHER): drain.Timer(100.0, drain.DEFAULT_TIMEOUT)},
                 id="withdrawn-service-default-timeout"),
    pytest.param({OTHER: svc(OTHER, rs(1, active=1))}, {}, set(), {}, 100.0, set(), {},
                 id="not-owned-untouched"),
    pytest.param({KEY: svc(KEY, rs(1), rs(2, active=3))}, {KEY: svc(KEY, rs(1))}, set(), {},
                 100.0, set(), {}, id="desired-but-not-owned-untouched"),
]


@pytest.mark.parametrize(("actual", "wanted", "owned", "timers", "now", "idle", "after"), CASES)
def test_expire(actual, wanted, owned, timers, now, idle, after):
    result, running = drain.expire(actual, wanted, owned=owned, timers=timers,
                                   timeouts={KEY: 30}, now=now)
    assert running == after
    read_idle = {(k, int(str(r.address).rsplit(".", 1)[1]))
                 for k, s in result.items() for r in s.reals.values()
                 if r.connections == 0 and actual[k].reals[r.key].connections}
    assert read_idle == idle


def test_changed_timeout_applies_to_running_drain():
    actual = {KEY: svc(KEY, rs(2, active=1))}
    _, running = drain.expire(actual, {KEY: svc(KEY)}, owned={KEY},
                              timers={name(2): drain.Timer(50.0, 300)}, timeouts={KEY: 10},
                              now=100.0)
    assert running == {name(2): drain.Timer(50.0, 10)}


def test_store_round_trip_and_errors(tmp_path):
    store = drain.DrainStore(tmp_path / "owned.drains.json")
    assert store.load() == {}
    timers = {name(1): drain.Timer(1.5, 30), name(2): drain.Timer(2.0, 0)}
    store.save(timers)
    assert store.load() == timers
    store.path.write_text('{"drains": {"x": [1]}}')
    with pytest.raises(ValueError, match="drain record"):
        store.load()


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def setup(tmp_path):
    ipvs = FakeIPVS()
    owned = OwnershipStore(tmp_path / "owned.json")
    store = drain.DrainStore(tmp_path / "owned.drains.json")
    clock = Clock()

    def sync(table, timeouts=None):
        timed = drain.TimedDrain(ipvs, store=store, owned=lambda: owned.load().services,
                                 drain_timeouts=timeouts or {KEY: 30}, clock=clock)
        return syncer.sync(timed, table, store=owned, drain=True).operations, timed

    return ipvs, store, clock, sync


def test_busy_server_deleted_at_deadline_even_across_restart(setup):
    ipvs, store, clock, sync = setup
    sync({KEY: svc(KEY, rs(1), rs(2))})
    ipvs.set_counters(KEY, rs(2).key, active=5)
    ops, _ = sync({KEY: svc(KEY, rs(1))})
    assert ops == [SetReal(KEY, rs(2, weight=0))]
    assert store.load() == {name(2): drain.Timer(1000.0, 30)}
    clock.now += 29
    ops, _ = sync({KEY: svc(KEY, rs(1))})  # a "restarted" agent: new TimedDrain, same files
    assert ops == []
    clock.now += 1
    ops, timed = sync({KEY: svc(KEY, rs(1))})
    assert [type(op) for op in ops] == [DeleteReal]
    assert set(ipvs.dump()[KEY].reals) == {rs(1).key}
    assert timed.timers == {} == store.load(), "the drain ends with the delete"


def test_idle_server_goes_at_once_and_zero_timeout_does_not_wait(setup):
    ipvs, _, _, sync = setup
    sync({KEY: svc(KEY, rs(1), rs(2))})
    ops, _ = sync({KEY: svc(KEY, rs(1))})
    assert [type(op) for op in ops] == [DeleteReal]
    ipvs.set_counters(KEY, rs(1).key, active=5)
    ops, _ = sync({KEY: svc(KEY)}, timeouts={KEY: 0})
    assert [type(op) for op in ops] == [DeleteReal]


def test_withdrawn_service_drains_then_goes(setup):
    ipvs, _, clock, sync = setup
    sync({KEY: svc(KEY, rs(1))})
    ipvs.set_counters(KEY, rs(1).key, active=1)
    ops, timed = sync({})
    assert ops == [SetReal(KEY, rs(1, weight=0))]
    assert len(timed.timers) == 1
    clock.now += 30
    ops, timed = sync({})
    assert ops == [DeleteService(KEY)]
    assert ipvs.dump() == {}
    assert timed.timers == {}


def test_unchanged_table_makes_no_operations_and_writes_no_timer_file(setup):
    _, store, _, sync = setup
    sync({KEY: svc(KEY, rs(1))})
    ops, _ = sync({KEY: svc(KEY, rs(1))})
    assert ops == []
    assert not store.path.exists()
