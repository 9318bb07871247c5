"""syncer: ownership across runs, dry-run, drain, and VIP holding; against the fake kernel."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

import pytest

from lvs_operator import syncer
from lvs_operator.ipvs.fake import FakeIPVS
from lvs_operator.model import Forwarding, Protocol, RealServer, ServiceKey, VirtualService
from lvs_operator.ownership import OwnershipStore
from lvs_operator.plan import AddReal, AddService, DeleteService, SetReal

VIP = ip_address("192.0.2.10")
KEY = ServiceKey.inet(Protocol.TCP, VIP, 80)
FOREIGN = ServiceKey.inet(Protocol.TCP, ip_address("192.0.2.99"), 80)


def service(key=KEY, *lasts, weight=1):
    reals = [RealServer(ip_address(f"10.0.0.{n}"), key.port, Forwarding.DIRECT_ROUTING, weight)
             for n in lasts]
    return VirtualService(key=key, scheduler="rr").with_reals(reals)


@pytest.fixture
def store(tmp_path):
    return OwnershipStore(tmp_path / "owned.json")


@pytest.fixture
def ipvs():
    return FakeIPVS()


def test_apply_then_noop(ipvs, store):
    first = syncer.sync(ipvs, {KEY: service(KEY, 1, 2)}, store=store)
    assert [type(op) for op in first.operations] == [AddService, AddReal, AddReal]
    assert ipvs.dump() == {KEY: service(KEY, 1, 2)}
    assert syncer.sync(ipvs, {KEY: service(KEY, 1, 2)}, store=store).operations == []
    assert store.load().services == {KEY}


def test_dry_run_changes_nothing(ipvs, store):
    result = syncer.sync(ipvs, {KEY: service(KEY, 1)}, store=store, dry_run=True)
    assert len(result.operations) == 2
    assert ipvs.dump() == {}
    assert not store.path.exists()


def test_withdraws_only_what_it_created(ipvs, store):
    ipvs.apply([AddService(service(FOREIGN))])  # made by somebody else, e.g. ipvsadm
    syncer.sync(ipvs, {KEY: service(KEY, 1)}, store=store)
    syncer.sync(ipvs, {}, store=store)  # a new run: the record, not memory, says what is ours
    assert set(ipvs.dump()) == {FOREIGN}
    assert store.load().services == set()


def test_repairs_external_flush(ipvs, store):
    syncer.sync(ipvs, {KEY: service(KEY, 1)}, store=store)
    ipvs.apply([DeleteService(key) for key in ipvs.dump()])  # ipvsadm -C
    syncer.sync(ipvs, {KEY: service(KEY, 1)}, store=store)
    assert ipvs.dump() == {KEY: service(KEY, 1)}


def test_drain_keeps_busy_service_owned_until_deleted(ipvs, store):
    syncer.sync(ipvs, {KEY: service(KEY, 1)}, store=store)
    ipvs.set_counters(KEY, (ip_address("10.0.0.1"), 80), active=1)
    result = syncer.sync(ipvs, {}, store=store, drain=True)
    assert result.operations == [SetReal(KEY, service(KEY, 1, weight=0).reals[
        (ip_address("10.0.0.1"), 80)])]
    assert store.load().services == {KEY}, "a draining service stays ours"
    ipvs.set_counters(KEY, (ip_address("10.0.0.1"), 80), active=0)
    syncer.sync(ipvs, {}, store=store, drain=True)
    assert ipvs.dump() == {}
    assert store.load().services == set()


def foreign_service():
    """What kube-proxy, keepalived or an admin's ipvsadm made on KEY: another scheduler,
    other real servers, one of them busy."""
    return VirtualService(key=KEY, scheduler="wlc").with_reals(
        [RealServer(ip_address("10.9.9.9"), 80, Forwarding.NAT, 7)])


@pytest.mark.parametrize("drain", [False, True])
def test_foreign_service_on_a_desired_key_is_left_alone(ipvs, store, drain):
    ipvs.apply([AddService(foreign_service()),
                *(AddReal(KEY, r) for r in foreign_service().reals.values())])
    ipvs.set_counters(KEY, (ip_address("10.9.9.9"), 80), active=2)
    before = ipvs.dump()
    other = ServiceKey.inet(Protocol.UDP, VIP, 53)
    result = syncer.sync(ipvs, {KEY: service(KEY, 1), other: service(other, 2)}, store=store,
                         drain=drain)
    assert result.conflicts == {KEY} and result.adopted == frozenset()
    assert [type(op) for op in result.operations] == [AddService, AddReal]  # `other` only
    assert ipvs.dump()[KEY] == before[KEY]
    assert store.load().services == {other}, "a conflict is never recorded as ours"
    # Still so on the next sync, and once the desired entry is gone.
    assert syncer.sync(ipvs, {KEY: service(KEY, 1)}, store=store, drain=drain).conflicts == {KEY}
    result = syncer.sync(ipvs, {}, store=store, drain=drain)
    assert result.conflicts == frozenset()
    assert ipvs.dump() == {KEY: before[KEY]}
    assert store.load().services == set()


def test_a_freed_key_is_then_created_and_ours(ipvs, store):
    ipvs.apply([AddService(foreign_service())])
    assert syncer.sync(ipvs, {KEY: service(KEY, 1)}, store=store).conflicts == {KEY}
    ipvs.apply([DeleteService(KEY)])  # the admin removes the other tool's service
    result = syncer.sync(ipvs, {KEY: service(KEY, 1)}, store=store)
    assert result.conflicts == frozenset()
    assert ipvs.dump() == {KEY: service(KEY, 1)}
    assert store.load().services == {KEY}


def test_restart_with_the_record_converges_what_it_created(ipvs, store):
    syncer.sync(ipvs, {KEY: service(KEY, 1, 2)}, store=store)
    restarted = OwnershipStore(store.path)  # a new agent process, the record on the hostPath
    result = syncer.sync(ipvs, {KEY: service(KEY, 2, 3, weight=4)}, store=restarted)
    assert result.conflicts == frozenset()
    assert ipvs.dump() == {KEY: service(KEY, 2, 3, weight=4)}
    syncer.sync(ipvs, {}, store=OwnershipStore(store.path))
    assert ipvs.dump() == {}


def test_a_lost_record_adopts_and_deletes_nothing(ipvs, store):
    syncer.sync(ipvs, {KEY: service(KEY, 1)}, store=store)
    store.path.unlink()  # the record is gone; the kernel still has what we made
    result = syncer.sync(ipvs, {KEY: service(KEY, 2)}, store=store)
    assert result.conflicts == {KEY} and result.operations == []
    syncer.sync(ipvs, {}, store=store)
    assert ipvs.dump() == {KEY: service(KEY, 1)}


def test_a_corrupt_record_changes_nothing(ipvs, store):
    syncer.sync(ipvs, {KEY: service(KEY, 1)}, store=store)
    store.path.write_text("{not json")
    with pytest.raises(ValueError, match="ownership record"):
        syncer.sync(ipvs, {}, store=store)
    assert ipvs.dump() == {KEY: service(KEY, 1)}


def test_adopt_takes_a_foreign_service_over(ipvs, store):
    ipvs.apply([AddService(foreign_service()),
                *(AddReal(KEY, r) for r in foreign_service().reals.values())])
    dry = syncer.sync(ipvs, {KEY: service(KEY, 1)}, store=store, adopt=True, dry_run=True)
    assert dry.adopted == {KEY} and dry.operations and not store.path.exists()
    result = syncer.sync(ipvs, {KEY: service(KEY, 1)}, store=store, adopt=True)
    assert result.adopted == {KEY} and result.conflicts == frozenset()
    assert ipvs.dump() == {KEY: service(KEY, 1)}
    assert store.load().services == {KEY}
    syncer.sync(ipvs, {}, store=store)  # ours now: withdrawn with its entry
    assert ipvs.dump() == {}


class FakeVips:
    def __init__(self, held=None):
        self.held: dict[str, set[Any]] = held or {}
        self.announced: list[Any] = []

    def list_vips(self, interface):
        return sorted(self.held.get(interface, set()), key=int)

    def add_vip(self, interface, address):
        self.held.setdefault(interface, set()).add(address)
        return True

    def remove_vip(self, interface, address):
        self.held.get(interface, set()).discard(address)
        return True

    def announce(self, interface, addresses):
        self.announced.append((interface, addresses))


def test_vips_held_announced_and_released(store):
    vips = FakeVips()
    result = syncer.sync_vips("eth0", {VIP}, store=store, holder=vips)
    assert result.added == [("eth0", VIP)]
    assert vips.held == {"eth0": {VIP}}
    assert vips.announced == [("eth0", [VIP])]
    assert syncer.sync_vips("eth0", {VIP}, store=store, holder=vips).added == []
    assert syncer.sync_vips("eth1", {VIP}, store=store, holder=vips).removed == [("eth0", VIP)]
    assert vips.held == {"eth0": set(), "eth1": {VIP}}
    syncer.sync_vips(None, {VIP}, store=store, holder=vips)
    assert vips.held == {"eth0": set(), "eth1": set()}


def test_vip_put_there_by_someone_else_is_never_removed(store):
    vips = FakeVips(held={"eth0": {VIP}})
    syncer.sync_vips("eth0", {VIP}, store=store, holder=vips)
    syncer.sync_vips("eth0", set(), store=store, holder=vips)
    assert vips.held == {"eth0": {VIP}}
