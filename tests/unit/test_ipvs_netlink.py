"""The IPVS generic netlink codec: round trips, and bytes checked against linux/ip_vs.h.

Expected bytes are written out by hand from the uapi headers (attribute ids, struct
ip_vs_flags, __be16 ports / __be32 IPv4 netmask) for a little-endian host, which is where
netlink's host-order fields are little-endian.
"""

from __future__ import annotations

import errno
import ipaddress
import struct
import sys
from dataclasses import replace

import pytest

from lvs_operator.ipvs import netlink
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
)
from lvs_operator.plan import (
    AddReal,
    AddService,
    DeleteReal,
    DeleteService,
    Operation,
    SetReal,
    SetService,
)

little_endian = pytest.mark.skipif(sys.byteorder != "little", reason="bytes written for x86")

A = ipaddress.ip_address
FAMILY = 0x20
VIP = ServiceKey.inet(Protocol.TCP, A("192.0.2.1"), 80)


def _one(data: bytes) -> tuple[int, int, int, int, int]:
    found = netlink.messages(data)
    assert len(found) == 1
    return found[0]


def _roundtrip_service(service: VirtualService) -> VirtualService:
    data = netlink.request(FAMILY, netlink.CMD_NEW_SERVICE, netlink.encode_service(service),
                           seq=1, flags=0)
    _kind, _flags, _seq, start, end = _one(data)
    return netlink.decode_service(data, start, end)


def _roundtrip_real(real: RealServer) -> RealServer:
    data = netlink.request(FAMILY, netlink.CMD_NEW_DEST,
                           netlink.encode_service_key(VIP) + netlink.encode_dest(real),
                           seq=1, flags=0)
    out: list[RealServer] = []
    assert netlink.decode_dest_dump(data, len(data), seq=1, family=4, out=out,
                                    addresses={}) is None
    (decoded,) = out
    return decoded


SERVICES = [
    VirtualService(VIP, scheduler="rr"),
    VirtualService(ServiceKey.inet(Protocol.UDP, A("2001:db8::1"), 53), scheduler="sh",
                   flags=frozenset({SchedulerFlag.FALLBACK, SchedulerFlag.PORT}),
                   persistence=Persistence(timeout=60, prefix=64)),
    VirtualService(ServiceKey.inet(Protocol.SCTP, A("198.51.100.7"), 3868), scheduler="wlc",
                   persistence=Persistence(timeout=300, prefix=24), one_packet=True),
    VirtualService(ServiceKey.mark(7), scheduler="mh", flags=frozenset({SchedulerFlag.FLAG3})),
    VirtualService(ServiceKey.mark(0xFFFFFFFF, family=6), scheduler="lc",
                   persistence=Persistence(timeout=1, prefix=128)),
]


@pytest.mark.parametrize("service", SERVICES, ids=str)
def test_service_round_trip(service: VirtualService) -> None:
    assert _roundtrip_service(service) == service


REALS = [
    RealServer(A("10.0.0.1"), 80, Forwarding.DIRECT_ROUTING, weight=0),
    RealServer(A("10.0.0.2"), 8080, Forwarding.NAT, weight=65535, upper_threshold=100,
               lower_threshold=10),
    RealServer(A("10.0.0.3"), 80, Forwarding.TUNNEL, tunnel=Tunnel()),
    RealServer(A("2001:db8::7"), 80, Forwarding.TUNNEL,
               tunnel=Tunnel(TunnelType.GUE, 6080, TunnelChecksum.REMOTE)),
    RealServer(A("10.0.0.4"), 80, Forwarding.TUNNEL,
               tunnel=Tunnel(TunnelType.GRE, 0, TunnelChecksum.CHECKSUM)),
]


@pytest.mark.parametrize("real", REALS, ids=str)
def test_real_round_trip(real: RealServer) -> None:
    decoded = _roundtrip_real(real)
    assert decoded == real
    assert decoded.tunnel == real.tunnel


def test_tunnel_is_not_sent_for_other_modes() -> None:
    real = RealServer(A("10.0.0.1"), 80, Forwarding.NAT, tunnel=Tunnel(TunnelType.GUE, 9))
    payload = netlink.encode_dest(real)
    kinds = [kind for kind, _pos, _end in netlink._walk(payload, 4, len(payload))]
    assert netlink.DEST_ATTR_TUN_TYPE not in kinds
    assert _roundtrip_real(real).tunnel is None


@little_endian
def test_add_service_bytes() -> None:
    data = netlink.request(FAMILY, netlink.CMD_NEW_SERVICE,
                           netlink.encode_service(VirtualService(VIP, scheduler="rr")),
                           seq=1, flags=netlink.NLM_F_ACK)
    assert data.hex(" ") == " ".join([
        "5c 00 00 00", "20 00", "05 00", "01 00 00 00", "00 00 00 00",  # nlmsghdr: 92 bytes
        "01 01 00 00",  # genlmsghdr: IPVS_CMD_NEW_SERVICE, version 1
        "48 00 01 80",  # IPVS_CMD_ATTR_SERVICE, nested, 72 bytes
        "06 00 01 00 02 00 00 00",  # IPVS_SVC_ATTR_AF = AF_INET (u16 + pad)
        "06 00 02 00 06 00 00 00",  # IPVS_SVC_ATTR_PROTOCOL = IPPROTO_TCP
        "08 00 03 00 c0 00 02 01",  # IPVS_SVC_ATTR_ADDR = 192.0.2.1
        "06 00 04 00 00 50 00 00",  # IPVS_SVC_ATTR_PORT = 80, network order
        "07 00 06 00 72 72 00 00",  # IPVS_SVC_ATTR_SCHED_NAME = "rr\0" + pad
        "0c 00 07 00 00 00 00 00 3d 00 00 00",  # IPVS_SVC_ATTR_FLAGS {flags 0, mask 0x3d}
        "08 00 08 00 00 00 00 00",  # IPVS_SVC_ATTR_TIMEOUT = 0
        "08 00 09 00 ff ff ff ff",  # IPVS_SVC_ATTR_NETMASK = 255.255.255.255
    ])


@little_endian
def test_persistence_netmask_bytes() -> None:
    v4 = netlink.encode_service(VirtualService(VIP, persistence=Persistence(600, 24)))
    assert bytes.fromhex("0c000700 01000000 3d000000") in v4  # PERSISTENT flag
    assert bytes.fromhex("08000800 58020000") in v4  # timeout 600
    assert bytes.fromhex("08000900 ffffff00") in v4  # __be32 255.255.255.0
    v6 = netlink.encode_service(VirtualService(
        ServiceKey.inet(Protocol.TCP, A("2001:db8::1"), 80), persistence=Persistence(600, 64)))
    assert bytes.fromhex("08000900 40000000") in v6  # prefix length 64, host order
    fwmark = netlink.encode_service(VirtualService(ServiceKey.mark(5, family=6)))
    assert bytes.fromhex("06000100 0a000000") in fwmark  # AF_INET6
    assert bytes.fromhex("08000500 05000000") in fwmark  # IPVS_SVC_ATTR_FWMARK = 5
    assert bytes.fromhex("08000900 80000000") in fwmark  # netmask required: 128


@little_endian
def test_add_real_bytes() -> None:
    real = RealServer(A("10.0.0.1"), 8080, Forwarding.TUNNEL, weight=5,
                      tunnel=Tunnel(TunnelType.GUE, 6080, TunnelChecksum.CHECKSUM))
    cmd, payload = netlink.encode_operation(AddReal(VIP, real))
    assert cmd == netlink.CMD_NEW_DEST
    assert payload.hex(" ") == " ".join([
        "24 00 01 80",  # IPVS_CMD_ATTR_SERVICE, nested: the key only
        "06 00 01 00 02 00 00 00", "06 00 02 00 06 00 00 00",
        "08 00 03 00 c0 00 02 01", "06 00 04 00 00 50 00 00",
        "54 00 02 80",  # IPVS_CMD_ATTR_DEST, nested, 84 bytes
        "08 00 01 00 0a 00 00 01",  # IPVS_DEST_ATTR_ADDR = 10.0.0.1
        "06 00 02 00 1f 90 00 00",  # IPVS_DEST_ATTR_PORT = 8080, network order
        "06 00 0b 00 02 00 00 00",  # IPVS_DEST_ATTR_ADDR_FAMILY = AF_INET
        "08 00 03 00 02 00 00 00",  # IPVS_DEST_ATTR_FWD_METHOD = IP_VS_CONN_F_TUNNEL
        "08 00 04 00 05 00 00 00",  # IPVS_DEST_ATTR_WEIGHT = 5
        "08 00 05 00 00 00 00 00",  # IPVS_DEST_ATTR_U_THRESH
        "08 00 06 00 00 00 00 00",  # IPVS_DEST_ATTR_L_THRESH
        "05 00 0d 00 01 00 00 00",  # IPVS_DEST_ATTR_TUN_TYPE = GUE (u8 + pad)
        "06 00 0e 00 17 c0 00 00",  # IPVS_DEST_ATTR_TUN_PORT = 6080, network order
        "06 00 0f 00 01 00 00 00",  # IPVS_DEST_ATTR_TUN_FLAGS = IP_VS_TUNNEL_ENCAP_FLAG_CSUM
    ])


@little_endian
def test_delete_real_carries_only_its_key() -> None:
    cmd, payload = netlink.encode_operation(DeleteReal(VIP, RealServer(A("2001:db8::2"), 443)))
    assert cmd == netlink.CMD_DEL_DEST
    assert payload[36:].hex(" ") == " ".join([
        "28 00 02 80",  # IPVS_CMD_ATTR_DEST, nested, 40 bytes
        "14 00 01 00 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 02",
        "06 00 02 00 01 bb 00 00",
        "06 00 0b 00 0a 00 00 00",  # AF_INET6: a tunnelled real may differ from its service
    ])


def test_operations_map_to_commands() -> None:
    service = VirtualService(VIP)
    real = RealServer(A("10.0.0.1"), 80)
    assert netlink.encode_operation(AddService(service))[0] == netlink.CMD_NEW_SERVICE
    assert netlink.encode_operation(SetService(service))[0] == netlink.CMD_SET_SERVICE
    assert netlink.encode_operation(DeleteService(VIP))[0] == netlink.CMD_DEL_SERVICE
    assert netlink.encode_operation(SetReal(VIP, real))[0] == netlink.CMD_SET_DEST
    keys: dict[ServiceKey, bytes] = {}
    netlink.encode_operation(AddReal(VIP, real), keys)
    assert keys == {VIP: netlink.encode_service_key(VIP)}


@pytest.mark.parametrize("bad", [
    AddReal(VIP, RealServer(A("10.0.0.1"), 70000)),
    AddReal(VIP, RealServer(A("10.0.0.1"), 80, weight=2**31)),
    AddReal(VIP, RealServer(A("10.0.0.1"), 80, upper_threshold=-1)),
    AddService(VirtualService(VIP, persistence=Persistence(300, 33))),
    AddService(VirtualService(VIP, scheduler="x" * 16)),
], ids=str)
def test_values_that_do_not_fit_are_refused(bad: AddReal | AddService) -> None:
    with pytest.raises(ValueError):
        netlink.encode_operation(bad)


_KEYS = [VIP, ServiceKey.inet(Protocol.UDP, A("2001:db8::1"), 53), ServiceKey.mark(7),
         ServiceKey.mark(9, family=6)]
_REQUESTS: list[Operation] = [op for key in _KEYS for real in [
    *REALS, RealServer(A("10.0.0.1"), 80, Forwarding.NAT, tunnel=Tunnel(TunnelType.GUE, 9)),
    RealServer(A("2001:db8::9"), 443, Forwarding.TUNNEL, weight=-1)]
    for op in (AddReal(key, real), SetReal(key, real), DeleteReal(key, real))]
_REQUESTS += [op for service in SERVICES
              for op in (AddService(service), SetService(service), DeleteService(service.key))]


@pytest.mark.parametrize("op", _REQUESTS, ids=str)
def test_encode_request_is_the_general_encoding(op: Operation) -> None:
    """The fast paths (real servers in one struct, services reusing their cached key) send
    exactly what the general path does."""
    keys: dict[ServiceKey, bytes] = {}
    cmd, payload = netlink.encode_operation(op)
    general = netlink.request(FAMILY, cmd, payload, seq=77, flags=0)
    assert netlink.encode_request(op, FAMILY, 77, keys) == general
    assert netlink.encode_request(op, FAMILY, 77, keys) == general  # with the cached key
    acked = netlink.with_ack(general)
    assert acked == netlink.request(FAMILY, cmd, payload, seq=77, flags=netlink.NLM_F_ACK)


@pytest.mark.parametrize("bad", [
    AddReal(VIP, RealServer(A("10.0.0.1"), 70000)),
    SetReal(VIP, RealServer(A("10.0.0.1"), -1)),
    AddReal(VIP, RealServer(A("10.0.0.1"), 80, weight=2**31)),
    AddReal(VIP, RealServer(A("10.0.0.1"), 80, upper_threshold=-1)),
    AddReal(VIP, RealServer(A("10.0.0.1"), 80, lower_threshold=2**32)),
    AddReal(VIP, RealServer(A("10.0.0.1"), 80, Forwarding.TUNNEL,
                            tunnel=Tunnel(TunnelType.GUE, 65536))),
    AddService(VirtualService(VIP, persistence=Persistence(300, 33))),
    SetService(VirtualService(VIP, persistence=Persistence(2**32, 24))),
    AddService(VirtualService(VIP, scheduler="x" * 16)),
    AddService(VirtualService(ServiceKey.mark(0))),
], ids=str)
def test_encode_request_refuses_what_does_not_fit_like_the_general_path(bad: Operation) -> None:
    with pytest.raises(ValueError) as general:
        netlink.encode_operation(bad)
    with pytest.raises(ValueError) as fast:
        netlink.encode_request(bad, FAMILY, 1, {})
    assert str(fast.value) == str(general.value)


# --- replies built the way the kernel builds them (ip_vs_genl_fill_*) --------------------------


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _nest(kind: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return struct.pack("=HH", 4 + len(body), kind | 0x8000) + body


def _message(cmd: int, body: bytes, *, seq: int = 9, kind: int = FAMILY, flags: int = 2) -> bytes:
    return struct.pack("=IHHIIBBH", 20 + len(body), kind, flags, seq, 0, cmd, 1, 0) + body


def _stats(values: list[int], *, wide: bool) -> list[bytes]:
    # STATS: u32 except in/out bytes (u64); STATS64: all u64.
    out = []
    for kind, value in enumerate(values, start=1):
        fmt = "=Q" if wide or kind in (4, 5) else "=I"
        out.append(_attr(kind, struct.pack(fmt, value)))
    return out


def test_decode_kernel_service_prefers_stats64() -> None:
    body = _nest(1,
                 _attr(1, struct.pack("=H", 2)), _attr(2, struct.pack("=H", 17)),
                 _attr(3, A("192.0.2.9").packed + b"\0" * 12), _attr(4, struct.pack("!H", 53)),
                 _attr(6, b"wrr\0"), _attr(7, struct.pack("=II", 0x1 | 0x2 | 0x10, 0xFFFFFFFF)),
                 _attr(8, struct.pack("=I", 120)), _attr(9, bytes([255, 255, 0, 0])),
                 _nest(10, *_stats([1] * 10, wide=False)),
                 _nest(12, *_stats([2**40 + i for i in range(10)], wide=True)))
    data = _message(netlink.CMD_NEW_SERVICE, body)
    _kind, _flags, _seq, start, end = _one(data)
    service = netlink.decode_service(data, start, end)
    assert service == VirtualService(ServiceKey.inet(Protocol.UDP, A("192.0.2.9"), 53),
                                     scheduler="wrr", flags=frozenset({SchedulerFlag.PORT}),
                                     persistence=Persistence(120, 16))
    assert service.stats == Stats(*[2**40 + i for i in range(10)])


def _kernel_dest(address: str, port: int, *, fwd: int = 2, weight: int = 7,
                 tun: tuple[int, int, int] = (2, 0, 1), conns: tuple[int, int, int] = (3, 4, 5),
                 stats: list[int] | None = None) -> bytes:
    """A NEW_DEST body laid out as Linux 6.1's ip_vs_genl_fill_dest lays it out."""
    ip = A(address)
    numbers = stats if stats is not None else list(range(10, 20))
    return _nest(2,
                 _attr(1, ip.packed + b"\0" * (16 - len(ip.packed))),
                 _attr(2, struct.pack("!H", port)), _attr(3, struct.pack("=I", fwd)),
                 _attr(4, struct.pack("=i", weight)), _attr(13, bytes([tun[0]])),
                 _attr(14, struct.pack("!H", tun[1])), _attr(15, struct.pack("=H", tun[2])),
                 _attr(5, struct.pack("=I", 50)), _attr(6, struct.pack("=I", 20)),
                 *(_attr(7 + i, struct.pack("=I", n)) for i, n in enumerate(conns)),
                 _attr(11, struct.pack("=H", 10 if ip.version == 6 else 2)),
                 _nest(10, *_stats(numbers, wide=False)), _nest(12, *_stats(numbers, wide=True)))


def _dump_part(*bodies: bytes, seq: int = 9) -> bytes:
    return b"".join(_message(netlink.CMD_NEW_DEST, body, seq=seq) for body in bodies)


def test_decode_kernel_dest_with_counters() -> None:
    part = _dump_part(_kernel_dest("2001:db8::9", 443))
    out: list[RealServer] = []
    assert netlink.decode_dest_dump(part, len(part), seq=9, family=4, out=out,
                                    addresses={}) is None
    (real,) = out
    assert real == RealServer(A("2001:db8::9"), 443, Forwarding.TUNNEL, weight=7,
                              upper_threshold=50, lower_threshold=20,
                              tunnel=Tunnel(TunnelType.GRE, 0, TunnelChecksum.CHECKSUM))
    assert (real.active_conns, real.inactive_conns, real.persistent_conns) == (3, 4, 5)
    assert real.stats == Stats(*range(10, 20))


def _decode_part(part: bytes, seq: int = 9) -> tuple[int | None, list[RealServer]]:
    out: list[RealServer] = []
    status = netlink.decode_dest_dump(part, len(part), seq=seq, family=4, out=out,
                                      addresses={})
    return status, out


def test_dest_dump_fast_path_agrees_with_attribute_walk() -> None:
    netlink._DEST_LAYOUTS.clear()
    bodies = [_kernel_dest("10.0.0.1", 80, fwd=3, tun=(0, 0, 0), stats=[0] * 10),
              _kernel_dest("10.0.0.2", 80, fwd=0, weight=-1, conns=(0, 0, 0)),
              _kernel_dest("10.0.0.3", 80, fwd=2, tun=(1, 6080, 2))]
    part = _dump_part(*bodies)
    slow = _decode_part(part)  # decodes attribute by attribute and learns the layout
    assert netlink._DEST_LAYOUTS
    fast = _decode_part(part)
    assert slow == fast == (None, [_decode_part(_dump_part(b))[1][0] for b in bodies])
    for a, b in zip(slow[1], fast[1], strict=True):
        assert (a.tunnel, a.stats, a.connections) == (b.tunnel, b.stats, b.connections)
    assert fast[1][0].stats is netlink.ZERO_STATS


def test_dest_dump_fast_path_trusts_no_other_message() -> None:
    netlink._DEST_LAYOUTS.clear()
    body = _kernel_dest("10.0.0.1", 80)
    _decode_part(_dump_part(body))
    # Same size, other sequence number: not ours.
    mixed = _dump_part(body) + _dump_part(body, seq=8)
    assert len(_decode_part(mixed)[1]) == 1
    # Same size, another attribute order: decoded by walking, still right.
    a, b = _attr(5, struct.pack("=I", 50)), _attr(6, struct.pack("=I", 20))
    swapped = body.replace(a + b, b + a)
    assert swapped != body
    assert _decode_part(_dump_part(swapped)) == _decode_part(_dump_part(body))
    done = struct.pack("=IHHIIi", 20, netlink.NLMSG_DONE, 2, 9, 0, 0)
    assert _decode_part(done) == (0, [])
    error = struct.pack("=IHHIIi", 36, netlink.NLMSG_ERROR, 0x100, 9, 0, -errno.EPERM)
    assert _decode_part(error + b"\0" * 16)[0] == errno.EPERM


def test_decode_dest_refuses_unknown_forwarding() -> None:
    body = _nest(2, _attr(1, A("10.0.0.1").packed), _attr(2, struct.pack("!H", 80)),
                 _attr(3, struct.pack("=I", 1)), _attr(11, struct.pack("=H", 2)))
    with pytest.raises(ValueError, match="forwarding method 1"):
        _decode_part(_dump_part(body))


def test_decode_error_with_extended_ack() -> None:
    orig = struct.pack("=IHHII", 120, FAMILY, 5, 77, 0)
    payload = struct.pack("=i", -errno.EEXIST) + orig + _attr(1, b"already there\0")
    data = struct.pack("=IHHII", 16 + len(payload), netlink.NLMSG_ERROR, 0x300, 77, 0) + payload
    kind, flags, seq, start, end = _one(data)
    assert (kind, seq) == (netlink.NLMSG_ERROR, 77)
    assert netlink.decode_error(data, start, end, flags) == (errno.EEXIST, "already there")
    ack = struct.pack("=IHHII", 36, netlink.NLMSG_ERROR, 0x100, 78, 0) + struct.pack("=i", 0) + orig
    assert netlink.decode_error(ack, 16, 36, 0x100) == (0, "")


def test_messages_split_and_reject_truncation() -> None:
    one = _message(netlink.CMD_NEW_DAEMON, b"", seq=1)
    two = struct.pack("=IHHII", 20, netlink.NLMSG_DONE, 2, 1, 0) + b"\0" * 4
    assert [m[:3] for m in netlink.messages(one + two)] == [(FAMILY, 2, 1),
                                                            (netlink.NLMSG_DONE, 2, 1)]
    with pytest.raises(ValueError):
        netlink.messages((one + two)[:-2])


def test_family_request_and_reply() -> None:
    data = netlink.get_family_request(seq=3)
    kind, flags, seq, start, end = _one(data)
    assert (kind, flags, seq) == (netlink.GENL_ID_CTRL, netlink.NLM_F_REQUEST, 3)
    assert data[start] == netlink.CTRL_CMD_GETFAMILY
    assert data[start + 4:end] == _attr(2, b"IPVS\0")
    reply = _message(1, _attr(2, b"IPVS\0") + _attr(1, struct.pack("=H", 0x23)),
                     kind=netlink.GENL_ID_CTRL)
    _kind, _flags, _seq, start, end = _one(reply)
    assert netlink.decode_family_id(reply, start, end) == 0x23


def test_timeouts_round_trip_and_zero_means_unchanged() -> None:
    payload = netlink.encode_timeouts(Timeouts(tcp=900, tcp_fin=0, udp=30))
    assert [k for k, _p, _e in netlink._walk(payload, 0, len(payload))] == [4, 6]
    data = _message(netlink.CMD_SET_CONFIG, payload)
    _kind, _flags, _seq, start, end = _one(data)
    assert netlink.decode_timeouts(data, start, end) == Timeouts(tcp=900, udp=30)


def test_daemon_round_trip() -> None:
    daemon = SyncDaemon(SyncState.BACKUP, "eth1", sync_id=9)
    data = _message(netlink.CMD_NEW_DAEMON, netlink.encode_daemon(daemon))
    _kind, _flags, _seq, start, end = _one(data)
    assert netlink.decode_daemon(data, start, end) == daemon
    with pytest.raises(ValueError):
        netlink.encode_daemon(SyncDaemon(SyncState.MASTER, "eth1", sync_id=256))
    assert netlink.encode_daemon_state(SyncState.MASTER) == _nest(3, _attr(1, b"\1\0\0\0"))


def test_dest_signatures_equal_exactly_when_real_servers_do() -> None:
    """A dump checked in wire form agrees with decoding it and comparing RealServers."""
    netlink._DEST_LAYOUTS.clear()
    bodies = [_kernel_dest("10.0.0.1", 80, fwd=3, tun=(0, 0, 0)),  # DR: tunnel fields ignored
              _kernel_dest("10.0.0.2", 8080, fwd=0, weight=0, tun=(1, 6080, 2)),  # NAT
              _kernel_dest("10.0.0.3", 80, fwd=2, tun=(1, 6080, 2)),  # Tunnel, GUE
              _kernel_dest("2001:db8::9", 443, fwd=2, tun=(0, 0, 0))]  # other family, ipip
    part = _dump_part(*bodies)
    assert netlink.dest_signatures(part, len(part), seq=9) is None  # no layout learned yet
    decoded = _decode_part(part)[1]
    signatures = netlink.dest_signatures(part, len(part), seq=9)
    assert signatures == [netlink.dest_signature(real) for real in decoded]
    assert netlink.dest_signatures(part, len(part), seq=8) is None  # not our dump
    done = struct.pack("=IHHIIi", 20, netlink.NLMSG_DONE, 2, 9, 0, 0)
    assert netlink.dest_signatures(done, len(done), seq=9) is None
    # Every field a RealServer compares changes the signature; the counters do not.
    base = decoded[2]
    variants = [replace(base, address=A("10.0.0.4")), replace(base, port=81),
                replace(base, weight=8), replace(base, upper_threshold=51),
                replace(base, lower_threshold=21), replace(base, forwarding=Forwarding.NAT),
                replace(base, tunnel=Tunnel(TunnelType.GUE, 6081, TunnelChecksum.REMOTE)),
                replace(base, tunnel=None)]
    for variant in variants:
        assert variant != base
        assert netlink.dest_signature(variant) != netlink.dest_signature(base)
    counted = replace(base, active_conns=9, stats=Stats(*range(10)))
    assert netlink.dest_signature(counted) == netlink.dest_signature(base)
