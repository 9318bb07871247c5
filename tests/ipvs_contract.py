"""The IPVS contract: test bodies that every `IPVS` implementation must pass.

Used by tests/unit/test_ipvs_contract_fake.py (FakeIPVS, no root) and
tests/kernel/test_ipvs_contract_kernel.py (KernelIPVS in a fresh network namespace of the test
VM). Each module provides two fixtures: `ipvs`, an empty IPVS table with `lo` up, and
`sync_interface`, the name of an interface with an IPv4 address that a sync daemon may use.

Dump order is not part of the contract (the kernel's service order depends on hashing):
tables are compared as mappings.
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import replace

import pytest

from lvs_operator.ipvs import IPVS, ApplyError, IPVSError
from lvs_operator.model import (
    Forwarding,
    Persistence,
    Protocol,
    RealServer,
    SchedulerFlag,
    ServiceKey,
    Stats,
    SyncDaemon,
    SyncState,
    Timeouts,
    Tunnel,
    TunnelChecksum,
    TunnelType,
    VirtualService,
    table,
)
from lvs_operator.plan import (
    AddReal,
    AddService,
    DeleteReal,
    DeleteService,
    Operation,
    SetReal,
    SetService,
    plan,
)

A = ipaddress.ip_address
V4 = ServiceKey.inet(Protocol.TCP, A("192.0.2.1"), 80)
V6 = ServiceKey.inet(Protocol.UDP, A("2001:db8::1"), 53)
MISSING = ServiceKey.inet(Protocol.TCP, A("192.0.2.99"), 80)


def real(address: str, port: int = 80, **kw: object) -> RealServer:
    return RealServer(A(address), port, **kw)  # type: ignore[arg-type]


def converge(ipvs: IPVS, desired: list[VirtualService]) -> None:
    """Apply the plan from the current table to `desired`; assert the dump then equals it."""
    want = table(desired)
    ipvs.apply(plan(want, ipvs.dump(), owned=lambda key: True))
    assert ipvs.dump() == want


def failures(ipvs: IPVS, operations: list[Operation]) -> list[IPVSError]:
    with pytest.raises(ApplyError) as caught:
        ipvs.apply(operations)
    return caught.value.errors


TABLES = {
    "dr-nat-tunnel-v4": [VirtualService(V4, scheduler="wrr").with_reals([
        real("10.0.0.1", weight=3),
        real("10.0.0.2", 8080, forwarding=Forwarding.NAT, weight=0),
        real("10.0.0.3", forwarding=Forwarding.TUNNEL, tunnel=Tunnel()),
        real("10.0.0.4", forwarding=Forwarding.TUNNEL,
             tunnel=Tunnel(TunnelType.GUE, 6080, TunnelChecksum.CHECKSUM)),
        real("10.0.0.5", forwarding=Forwarding.TUNNEL,
             tunnel=Tunnel(TunnelType.GUE, 6081, TunnelChecksum.REMOTE)),
        real("10.0.0.6", forwarding=Forwarding.TUNNEL,
             tunnel=Tunnel(TunnelType.GRE, 0, TunnelChecksum.CHECKSUM)),
        real("10.0.0.7", forwarding=Forwarding.NAT, upper_threshold=100, lower_threshold=10),
    ])],
    "ipv6-persistent-hashing": [VirtualService(
        V6, scheduler="sh", flags=frozenset({SchedulerFlag.FALLBACK, SchedulerFlag.PORT}),
        persistence=Persistence(timeout=60, prefix=64), one_packet=True,
    ).with_reals([real("2001:db8::10", 53),
                  real("2001:db8::11", 5353, forwarding=Forwarding.NAT)])],
    "mixed-family-tunnel": [
        VirtualService(V4, scheduler="rr").with_reals([
            real("2001:db8::20", forwarding=Forwarding.TUNNEL, tunnel=Tunnel())]),
        VirtualService(V6, scheduler="mh", flags=frozenset({SchedulerFlag.FLAG3})).with_reals([
            real("10.0.0.20", 53, forwarding=Forwarding.TUNNEL, tunnel=Tunnel(TunnelType.GRE))]),
    ],
    "fwmark": [
        VirtualService(ServiceKey.mark(7), scheduler="lc",
                       persistence=Persistence(timeout=1800, prefix=24)).with_reals([
            real("10.0.0.30", 0), real("10.0.0.31", 0, weight=5)]),
        VirtualService(ServiceKey.mark(7, family=6), scheduler="wlc").with_reals([
            real("2001:db8::30", 0)]),
        VirtualService(ServiceKey.mark(0xFFFFFFFF), scheduler="dh"),
    ],
    "every-protocol": [
        VirtualService(ServiceKey.inet(protocol, A("198.51.100.1"), 443), scheduler=scheduler)
        for protocol, scheduler in ((Protocol.TCP, "lblc"), (Protocol.UDP, "lblcr"),
                                    (Protocol.SCTP, "sed"))
    ],
}


def test_new_table_is_empty(ipvs: IPVS) -> None:
    assert ipvs.dump() == {}


@pytest.mark.parametrize("name", TABLES)
def test_every_field_round_trips(ipvs: IPVS, name: str) -> None:
    converge(ipvs, TABLES[name])
    for service in ipvs.dump().values():
        assert service.stats == Stats()
        for dumped in service.reals.values():
            assert dumped.stats == Stats()
            assert dumped.connections == dumped.persistent_conns == 0
            # Equality ignores nothing that matters here, but say it for the tunnel too.
            want = next(s for s in TABLES[name] if s.key == service.key).reals[dumped.key]
            assert dumped.tunnel == want.tunnel


def test_set_service_changes_and_clears_attributes(ipvs: IPVS) -> None:
    full = VirtualService(V4, scheduler="sh", flags=frozenset(SchedulerFlag),
                          persistence=Persistence(300, 16), one_packet=True)
    converge(ipvs, [full.with_reals([real("10.0.0.1")])])
    converge(ipvs, [VirtualService(V4, scheduler="rr").with_reals([real("10.0.0.1")])])
    converge(ipvs, [VirtualService(V4, scheduler="rr", persistence=Persistence(5, 32))
                    .with_reals([real("10.0.0.1")])])


def test_set_real_changes_every_attribute(ipvs: IPVS) -> None:
    service = VirtualService(V4, scheduler="wlc")
    steps = [
        real("10.0.0.1", weight=1),
        real("10.0.0.1", weight=7, upper_threshold=50, lower_threshold=5),
        real("10.0.0.1", forwarding=Forwarding.TUNNEL,
             tunnel=Tunnel(TunnelType.GUE, 7000, TunnelChecksum.REMOTE)),
        real("10.0.0.1", forwarding=Forwarding.TUNNEL, tunnel=Tunnel()),
        real("10.0.0.1", forwarding=Forwarding.NAT, weight=0),
    ]
    for step in steps:
        converge(ipvs, [service.with_reals([step])])


def test_add_of_existing_objects_sets_them(ipvs: IPVS) -> None:
    ipvs.apply([AddService(VirtualService(V4, scheduler="rr")), AddReal(V4, real("10.0.0.1"))])
    changed = VirtualService(V4, scheduler="wrr", one_packet=True)
    moved = real("10.0.0.1", forwarding=Forwarding.NAT, weight=9)
    ipvs.apply([AddService(changed), AddReal(V4, moved)])
    assert ipvs.dump() == {V4: changed.with_reals([moved])}


def test_delete_and_drain_of_missing_objects_are_done(ipvs: IPVS) -> None:
    ipvs.apply([AddService(VirtualService(V4, scheduler="rr"))])
    ipvs.apply([
        DeleteService(MISSING),
        DeleteReal(V4, real("10.0.0.9")),
        DeleteReal(MISSING, real("10.0.0.9")),
        SetReal(V4, real("10.0.0.9", weight=0)),
        SetReal(MISSING, real("10.0.0.9", weight=0)),
    ])
    assert ipvs.dump() == {V4: VirtualService(V4, scheduler="rr")}


def test_delete_service_takes_its_reals(ipvs: IPVS) -> None:
    converge(ipvs, [VirtualService(V4, scheduler="rr").with_reals([real("10.0.0.1")]),
                    VirtualService(V6, scheduler="rr")])
    ipvs.apply([DeleteService(V4)])
    assert ipvs.dump() == {V6: VirtualService(V6, scheduler="rr")}
    ipvs.apply([DeleteService(V4), DeleteService(V6)])
    assert ipvs.dump() == {}


ERRORS: dict[str, tuple[Operation, int]] = {
    "unknown scheduler": (AddService(VirtualService(MISSING, scheduler="nosuch")), errno.ENOENT),
    "set unknown scheduler": (SetService(VirtualService(V4, scheduler="nosuch")), errno.ENOENT),
    "set missing service": (SetService(VirtualService(MISSING, scheduler="rr")), errno.ESRCH),
    "add real to missing service": (AddReal(MISSING, real("10.0.0.1")), errno.ESRCH),
    "set missing real": (SetReal(V4, real("10.0.0.9", weight=2)), errno.ENOENT),
    "negative weight": (AddReal(V4, real("10.0.0.1", weight=-1)), errno.ERANGE),
    "lower above upper threshold": (
        AddReal(V4, real("10.0.0.1", upper_threshold=3, lower_threshold=4)), errno.ERANGE),
    "lower threshold without upper": (
        AddReal(V4, real("10.0.0.1", lower_threshold=4)), errno.ERANGE),
    "gue without port": (AddReal(V4, real("10.0.0.1", forwarding=Forwarding.TUNNEL,
                                          tunnel=Tunnel(TunnelType.GUE))), errno.EINVAL),
    "other family without tunnel": (AddReal(V4, real("2001:db8::1")), errno.EINVAL),
    "multicast real": (AddReal(V4, real("224.0.0.1")), errno.EINVAL),
    "broadcast real": (AddReal(V4, real("255.255.255.255")), errno.EINVAL),
    "link-local ipv6 real": (AddReal(V6, real("fe80::1", 53)), errno.EINVAL),
    "ipv6 prefix 0": (AddService(VirtualService(
        ServiceKey.inet(Protocol.TCP, A("2001:db8::99"), 80), persistence=Persistence(9, 0))),
        errno.EINVAL),
    "threshold above INT_MAX": (AddReal(V4, real("10.0.0.1", upper_threshold=2**31)),
                                errno.EINVAL),
    "firewall mark 0": (AddService(VirtualService(ServiceKey.mark(0))), errno.EINVAL),
    "port too large to encode": (AddReal(V4, real("10.0.0.1", 65536)), errno.EINVAL),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_name_the_operation(ipvs: IPVS, case: str) -> None:
    converge(ipvs, [VirtualService(V4, scheduler="rr"), VirtualService(V6, scheduler="rr")])
    before = ipvs.dump()
    op, code = ERRORS[case]
    (error,) = failures(ipvs, [op])
    assert error.operation == op
    assert error.errno == code
    assert str(op) in str(error)
    assert errno.errorcode[code] in str(error)
    assert ipvs.dump() == before


def test_failed_service_add_is_the_root_cause_of_its_reals(ipvs: IPVS) -> None:
    bad = AddService(VirtualService(MISSING, scheduler="nosuch"))
    ops: list[Operation] = [bad, AddReal(MISSING, real("10.0.0.1")),
                            AddReal(MISSING, real("10.0.0.2")),
                            AddService(VirtualService(V4, scheduler="rr")),
                            AddReal(V4, real("10.0.0.1"))]
    errors = failures(ipvs, ops)
    assert [e.operation for e in errors] == ops[:3]
    assert [e.errno for e in errors] == [errno.ENOENT, errno.ESRCH, errno.ESRCH]
    assert "ip_vs_nosuch" in str(errors[0])
    assert all(str(bad) in str(e) for e in errors[1:])
    assert ipvs.dump() == {V4: VirtualService(V4, scheduler="rr").with_reals([real("10.0.0.1")])}


def test_failures_in_a_large_batch_are_reported_and_the_rest_applied(ipvs: IPVS) -> None:
    # Enough operations for several 64 KiB batches of the kernel class; one failure in the
    # middle of a batch, one at the very end.
    services = []
    for i in range(400):
        key = ServiceKey.inet(Protocol.TCP, A("198.51.100.0") + i // 100, 1000 + i % 100)
        services.append(VirtualService(key, scheduler="rr").with_reals(
            [real(f"10.1.{i % 250}.{j + 1}", 1000 + i % 100) for j in range(4)]))
    ops = plan(table(services), {}, owned=lambda key: True)
    assert len(ops) == 2000
    bad_middle = AddReal(services[150].key, real("10.9.9.9", weight=-5))
    bad_last = SetReal(services[-1].key, real("10.9.9.8", weight=3))
    ops = [*ops[:777], bad_middle, *ops[777:], bad_last]
    errors = failures(ipvs, ops)
    assert [(e.operation, e.errno) for e in errors] == [(bad_middle, errno.ERANGE),
                                                        (bad_last, errno.ENOENT)]
    assert ipvs.dump() == table(services)


def test_timeouts(ipvs: IPVS) -> None:
    assert ipvs.timeouts() == Timeouts(tcp=900, tcp_fin=120, udp=300)
    ipvs.set_timeouts(Timeouts(tcp=3600, udp=30))
    assert ipvs.timeouts() == Timeouts(tcp=3600, tcp_fin=120, udp=30)
    ipvs.set_timeouts(Timeouts(tcp_fin=10))
    assert ipvs.timeouts() == Timeouts(tcp=3600, tcp_fin=10, udp=30)
    ipvs.set_timeouts(Timeouts())
    assert ipvs.timeouts() == Timeouts(tcp=3600, tcp_fin=10, udp=30)
    with pytest.raises(IPVSError) as caught:
        ipvs.set_timeouts(Timeouts(udp=2**31 // 250 + 1))
    assert caught.value.errno == errno.EINVAL
    assert ipvs.timeouts() == Timeouts(tcp=3600, tcp_fin=10, udp=30)


def test_sync_daemons(ipvs: IPVS, sync_interface: str) -> None:
    assert ipvs.daemons() == []
    master = SyncDaemon(SyncState.MASTER, sync_interface, sync_id=3)
    backup = SyncDaemon(SyncState.BACKUP, sync_interface, sync_id=3)
    ipvs.start_daemon(master)
    ipvs.start_daemon(master)
    assert ipvs.daemons() == [master]
    ipvs.start_daemon(backup)
    assert sorted(ipvs.daemons(), key=lambda d: d.state.value) == [master, backup]
    with pytest.raises(IPVSError) as caught:
        ipvs.start_daemon(SyncDaemon(SyncState.MASTER, sync_interface, sync_id=4))
    assert caught.value.errno == errno.EEXIST
    ipvs.stop_daemon(SyncState.MASTER)
    ipvs.stop_daemon(SyncState.MASTER)
    assert ipvs.daemons() == [backup]
    ipvs.stop_daemon(SyncState.BACKUP)
    assert ipvs.daemons() == []


def test_sync_daemon_needs_an_existing_interface(ipvs: IPVS) -> None:
    with pytest.raises(IPVSError) as caught:
        ipvs.start_daemon(SyncDaemon(SyncState.BACKUP, "nosuch0"))
    assert caught.value.errno == errno.ENODEV
    assert "nosuch0" in str(caught.value)
    assert ipvs.daemons() == []


def test_dump_with_expect_returns_matching_services_as_given(ipvs: IPVS) -> None:
    services = [s for name in ("dr-nat-tunnel-v4", "fwmark") for s in TABLES[name]]
    converge(ipvs, services)
    expect = table(services)
    dumped = ipvs.dump(expect=expect)
    assert dumped == expect
    assert all(dumped[key] is expect[key] for key in expect)
    # One changed real server, one changed attribute, one service not expected at all: those
    # come back decoded from the kernel, the rest as given.
    tunnel_service = expect[V4]
    changed_real = tunnel_service.with_reals(
        [*list(tunnel_service.reals.values())[1:],
         real("10.0.0.1", weight=4)])
    mark_key = ServiceKey.mark(7)
    changed_attrs = replace(expect[mark_key], scheduler="rr")
    expect2 = {**expect, V4: changed_real, mark_key: changed_attrs}
    del expect2[ServiceKey.mark(0xFFFFFFFF)]
    dumped2 = ipvs.dump(expect=expect2)
    assert dumped2 == ipvs.dump() == expect
    assert dumped2[V4] is not changed_real and dumped2[V4].reals[(A("10.0.0.1"), 80)].weight == 3
    assert dumped2[mark_key] is not changed_attrs and dumped2[mark_key].scheduler == "lc"
    assert dumped2[ServiceKey.mark(7, family=6)] is expect[ServiceKey.mark(7, family=6)]
    # A real server missing from the kernel, or one too many there, is no match either.
    fewer = tunnel_service.with_reals(list(tunnel_service.reals.values())[1:])
    more = tunnel_service.with_reals([*tunnel_service.reals.values(), real("10.0.0.8")])
    for other in (fewer, more):
        assert ipvs.dump(expect={V4: other})[V4] == tunnel_service
