"""Generic netlink codec for kernel IPVS: model types <-> bytes, no sockets.

Numbers come from the kernel's uapi headers (linux/netlink.h, linux/genetlink.h,
linux/ip_vs.h). Netlink headers and plain integer attributes are in host byte order; the
kernel declares ports, the IPv4 persistence netmask and the GUE tunnel port `__be16` /
`__be32`, so those are in network byte order. For an IPv6 service the "netmask" is a prefix
length (1..128) in host byte order: the kernel reads the raw 32 bits without conversion.

Encoding builds whole messages with `struct` so that a bulk apply can join thousands of them
into a few `sendmsg` calls. Decoding works on offsets into the received buffer with
`struct.unpack_from` and builds model values directly: a dump of 10,000 real servers must not
create an object per attribute.

A decode function takes the buffer and the offsets of one netlink message's payload (what
follows the 16-byte `nlmsghdr`, see `messages`) and raises ValueError when the kernel reports
something the model cannot represent (an unknown protocol or forwarding method).
"""

from __future__ import annotations

import functools
import ipaddress
import operator
import socket
import struct
from collections.abc import Iterable
from typing import ClassVar

from lvs_operator.model import (
    SVC_F_ONEPACKET,
    SVC_F_PERSISTENT,
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

Buffer = bytes | bytearray | memoryview

# --- linux/netlink.h -------------------------------------------------------------------------
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_CAPPED = 0x100  # on NLMSG_ERROR: the failed request is echoed without its payload
NLM_F_ACK_TLVS = 0x200  # on NLMSG_ERROR: extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF  # ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)
NETLINK_GENERIC = 16  # the protocol of socket(AF_NETLINK, SOCK_RAW, ...)
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

# --- linux/genetlink.h -----------------------------------------------------------------------
GENL_ID_CTRL = 0x10
CTRL_CMD_NEWFAMILY = 1
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

# --- linux/ip_vs.h ---------------------------------------------------------------------------
IPVS_GENL_NAME = "IPVS"
IPVS_GENL_VERSION = 0x1

CMD_NEW_SERVICE = 1
CMD_SET_SERVICE = 2
CMD_DEL_SERVICE = 3
CMD_GET_SERVICE = 4
CMD_NEW_DEST = 5
CMD_SET_DEST = 6
CMD_DEL_DEST = 7
CMD_GET_DEST = 8
CMD_NEW_DAEMON = 9
CMD_DEL_DAEMON = 10
CMD_GET_DAEMON = 11
CMD_SET_CONFIG = 12
CMD_GET_CONFIG = 13

CMD_ATTR_SERVICE = 1
CMD_ATTR_DEST = 2
CMD_ATTR_DAEMON = 3
CMD_ATTR_TIMEOUT_TCP = 4
CMD_ATTR_TIMEOUT_TCP_FIN = 5
CMD_ATTR_TIMEOUT_UDP = 6

SVC_ATTR_AF = 1
SVC_ATTR_PROTOCOL = 2
SVC_ATTR_ADDR = 3
SVC_ATTR_PORT = 4
SVC_ATTR_FWMARK = 5
SVC_ATTR_SCHED_NAME = 6
SVC_ATTR_FLAGS = 7
SVC_ATTR_TIMEOUT = 8
SVC_ATTR_NETMASK = 9
SVC_ATTR_STATS = 10
SVC_ATTR_PE_NAME = 11
SVC_ATTR_STATS64 = 12

DEST_ATTR_ADDR = 1
DEST_ATTR_PORT = 2
DEST_ATTR_FWD_METHOD = 3
DEST_ATTR_WEIGHT = 4
DEST_ATTR_U_THRESH = 5
DEST_ATTR_L_THRESH = 6
DEST_ATTR_ACTIVE_CONNS = 7
DEST_ATTR_INACT_CONNS = 8
DEST_ATTR_PERSIST_CONNS = 9
DEST_ATTR_STATS = 10
DEST_ATTR_ADDR_FAMILY = 11
DEST_ATTR_STATS64 = 12
DEST_ATTR_TUN_TYPE = 13
DEST_ATTR_TUN_PORT = 14
DEST_ATTR_TUN_FLAGS = 15
_DEST_ATTR_SLOTS = 16

DAEMON_ATTR_STATE = 1
DAEMON_ATTR_MCAST_IFN = 2
DAEMON_ATTR_SYNC_ID = 3

STATS_ATTR_CONNS = 1
STATS_ATTR_OUTBPS = 10

SVC_F_HASHED = 0x0002  # kernel-internal: set on every hashed service, never ours to change
# Every service flag userland owns. SET_SERVICE sends this as the mask so that a flag the model
# no longer wants is cleared, while kernel-internal bits (HASHED) are left alone.
SVC_FLAGS_MASK = SVC_F_PERSISTENT | SVC_F_ONEPACKET | sum(f.value for f in SchedulerFlag)

AF_INET = 2
AF_INET6 = 10
_AF_OF_VERSION = {4: AF_INET, 6: AF_INET6}
_VERSION_OF_AF = {AF_INET: 4, AF_INET6: 6}

IP_VS_IFNAME_MAXLEN = 16
IP_VS_SCHEDNAME_MAXLEN = 16

# nlmsghdr (len, type, flags, seq, pid) followed by genlmsghdr (cmd, version, reserved).
NLMSG_HDR = struct.Struct("=IHHII")
GENL_HDR = struct.Struct("=BBH")
_HDR = struct.Struct("=IHHIIBBH")
_NLA = struct.Struct("=HH")
_U8 = struct.Struct("=HHB3x")
_U16 = struct.Struct("=HHH2x")
_U32 = struct.Struct("=HHI")
_I32 = struct.Struct("=HHi")
_BE16 = struct.Struct("=HH2s2x")
_FLAGS = struct.Struct("=HHII")
_U16_AT = struct.Struct("=H")
_U32_AT = struct.Struct("=I")
_I32_AT = struct.Struct("=i")
_U64_AT = struct.Struct("=Q")
_BE16_AT = struct.Struct("!H")
_BE32_AT = struct.Struct("!I")
_ERR = struct.Struct("=i")

_FORWARDING = {f.value: f for f in Forwarding}
_PROTOCOLS = {p.value: p for p in Protocol}
_TUNNEL_TYPES = {t.value: t for t in TunnelType}
_TUNNEL_CHECKSUMS = {c.value: c for c in TunnelChecksum}
_SCHED_FLAGS = tuple(SchedulerFlag)
# The scheduler flags of each IPVS flags word seen (a few at most): building the frozenset of
# enum members again for every service of a dump costs more than decoding the service.
_FLAG_SETS: dict[int, frozenset[SchedulerFlag]] = {}

HEADER_SIZE = _HDR.size  # nlmsghdr + genlmsghdr


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return _NLA.pack(size, kind) + payload + b"\0" * (_align(size) - size)


def _nest(kind: int, payload: bytes) -> bytes:
    # NLA_F_NESTED is what current kernels put on nests; IPVS parses its nests liberally and
    # accepts it either way.
    return _NLA.pack(4 + len(payload), kind | NLA_F_NESTED) + payload


def _string(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _be16(kind: int, value: int) -> bytes:
    return _BE16.pack(6, kind, value.to_bytes(2, "big"))


# --- messages --------------------------------------------------------------------------------


def request(family: int, cmd: int, payload: bytes, *, seq: int, flags: int) -> bytes:
    """Return one generic netlink request: headers for `family`/`cmd`, then `payload`.

    `payload` is the already encoded attributes (from the `encode_*` functions). The port id
    is 0: the kernel routes replies to the sending socket.
    """
    return _HDR.pack(HEADER_SIZE + len(payload), family, NLM_F_REQUEST | flags, seq, 0, cmd,
                     IPVS_GENL_VERSION, 0) + payload


def get_family_request(name: str = IPVS_GENL_NAME, *, seq: int) -> bytes:
    """Return the CTRL_CMD_GETFAMILY request that resolves generic netlink family `name`.

    It asks for no ACK: the kernel answers with either the family or an error.
    """
    return request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, _string(CTRL_ATTR_FAMILY_NAME, name),
                   seq=seq, flags=0)


def messages(buf: Buffer, size: int | None = None) -> list[tuple[int, int, int, int, int]]:
    """Split received netlink data into messages.

    Returns:
        One (type, flags, seq, payload_start, end) tuple per message, where the payload is
        what follows the nlmsghdr (for a generic netlink message: genlmsghdr, then attributes).

    Raises:
        ValueError: when a message length runs past the data (a truncated read).
    """
    size = len(buf) if size is None else size
    out = []
    off = 0
    unpack = NLMSG_HDR.unpack_from
    while off + 16 <= size:
        length, kind, flags, seq, _pid = unpack(buf, off)
        if length < 16 or off + length > size:
            raise ValueError(f"truncated netlink message at offset {off}: length {length}")
        out.append((kind, flags, seq, off + 16, off + length))
        off += _align(length)
    return out


def decode_error(buf: Buffer, start: int, end: int, flags: int = 0) -> tuple[int, str]:
    """Decode an NLMSG_ERROR payload.

    Returns:
        (errno, message): errno is positive, 0 for an ACK; message is the kernel's extended-ack
        text when it sent one (NLM_F_ACK_TLVS in `flags`), else "".
    """
    (code,) = _ERR.unpack_from(buf, start)
    text = ""
    if flags & NLM_F_ACK_TLVS:
        # The error echoes the failed request: only its header when NLM_F_CAPPED says so
        # (NETLINK_CAP_ACK), else the whole request, whose length its header gives.
        (orig_len,) = _U32_AT.unpack_from(buf, start + 4)
        off = start + 4 + (16 if flags & NLM_F_CAPPED else _align(orig_len))
        for kind, pos, stop in _walk(buf, off, end):
            if kind == NLMSGERR_ATTR_MSG:
                text = bytes(buf[pos:stop]).split(b"\0", 1)[0].decode(errors="replace")
    return -code, text


def decode_family_id(buf: Buffer, start: int, end: int) -> int:
    """Return the family id in a CTRL_CMD_NEWFAMILY reply.

    Raises:
        ValueError: when the reply has no CTRL_ATTR_FAMILY_ID.
    """
    for kind, pos, _stop in _walk(buf, start + 4, end):
        if kind == CTRL_ATTR_FAMILY_ID:
            return int(_U16_AT.unpack_from(buf, pos)[0])
    raise ValueError("generic netlink family reply without a family id")


def _walk(buf: Buffer, off: int, end: int) -> Iterable[tuple[int, int, int]]:
    """Yield (type, payload_start, payload_end) of each attribute in buf[off:end]."""
    unpack = _NLA.unpack_from
    while off + 4 <= end:
        length, kind = unpack(buf, off)
        if length < 4:
            raise ValueError(f"malformed netlink attribute at offset {off}")
        yield kind & NLA_TYPE_MASK, off + 4, off + length
        off += (length + 3) & ~3


# --- services --------------------------------------------------------------------------------


def encode_service_key(key: ServiceKey) -> bytes:
    """Return IPVS_CMD_ATTR_SERVICE holding only what identifies `key` (for deletes, dests).

    Raises:
        ValueError: when the key has neither a firewall mark nor protocol + address, or a
            field does not fit its netlink type.
    """
    return _nest(CMD_ATTR_SERVICE, _key_attrs(key))


def _key_attrs(key: ServiceKey) -> bytes:
    af = _AF_OF_VERSION.get(key.family)
    if af is None:
        raise ValueError(f"{key}: unknown address family IPv{key.family}")
    head = _U16.pack(6, SVC_ATTR_AF, af)
    if key.protocol is None or key.address is None:
        # A firewall-mark service (IPVS_SVC_ATTR_FWMARK makes the kernel ignore
        # protocol/address/port). Mark 0 is not one: the kernel would take it for the
        # service TCP 0.0.0.0:0.
        if key.fwmark == 0:
            raise ValueError("a service needs a non-zero firewall mark or protocol + address")
        return head + _U32.pack(8, SVC_ATTR_FWMARK, _u32(key.fwmark, "fwmark"))
    if key.address.version != key.family:
        raise ValueError(f"{key}: address {key.address} is not IPv{key.family}")
    return (head + _U16.pack(6, SVC_ATTR_PROTOCOL, key.protocol.value)
            + _attr(SVC_ATTR_ADDR, key.address.packed)
            + _be16(SVC_ATTR_PORT, _port(key.port, "port")))


def encode_service(service: VirtualService) -> bytes:
    """Return IPVS_CMD_ATTR_SERVICE with every attribute NEW/SET_SERVICE needs.

    The kernel requires scheduler, flags, timeout and netmask on both commands (it answers
    EINVAL otherwise, also for fwmark and IPv6 services). Flags go with `SVC_FLAGS_MASK`, so
    a SET clears what the service no longer has. Without persistence the timeout is 0 and the
    netmask the all-ones / 128 default that ipvsadm also sends.

    Raises:
        ValueError: when a field does not fit its netlink type.
    """
    return _nest(CMD_ATTR_SERVICE, _key_attrs(service.key) + _attributes_of(service))


def _attributes_of(service: VirtualService) -> bytes:
    """Return the attributes of `encode_service` that follow the service key.

    Raises:
        ValueError: when a field does not fit its netlink type.
    """
    key = service.key
    try:
        return _service_attributes(key.family, service.scheduler, service.flags,
                                   service.persistence, service.one_packet)
    except ValueError as error:
        raise ValueError(f"{key}: {error}") from None


# A table's services share a handful of scheduler/flags/persistence combinations: a bulk
# apply encodes each combination once.
@functools.lru_cache(maxsize=256)
def _service_attributes(family: int, scheduler: str, service_flags: frozenset[SchedulerFlag],
                        persistence: Persistence | None, one_packet: bool) -> bytes:
    flags = 0
    for flag in service_flags:
        flags |= flag.value
    if one_packet:
        flags |= SVC_F_ONEPACKET
    if persistence is not None:
        flags |= SVC_F_PERSISTENT
        timeout, prefix = persistence.timeout, persistence.prefix
    else:
        timeout, prefix = 0, 128 if family == 6 else 32
    if family == 6:
        # A prefix length in host order; the kernel refuses 0 and >128 itself (EINVAL).
        netmask = _U32.pack(8, SVC_ATTR_NETMASK, _u32(prefix, "persistence prefix"))
    else:
        if not 0 <= prefix <= 32:
            raise ValueError(f"IPv4 persistence prefix {prefix} is not 0..32")
        mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
        netmask = _attr(SVC_ATTR_NETMASK, mask.to_bytes(4, "big"))
    name = scheduler.encode()
    if len(name) >= IP_VS_SCHEDNAME_MAXLEN:
        raise ValueError(f"scheduler name {scheduler!r} is too long")
    return (_attr(SVC_ATTR_SCHED_NAME, name + b"\0")
            + _FLAGS.pack(12, SVC_ATTR_FLAGS, flags, SVC_FLAGS_MASK)
            + _U32.pack(8, SVC_ATTR_TIMEOUT, _u32(timeout, "persistence timeout"))
            + netmask)


def decode_service(buf: Buffer, start: int, end: int, *, stats: bool = True) -> VirtualService:
    """Decode a NEW_SERVICE message (a dump entry or a request) into a VirtualService.

    Returns:
        The service without real servers; `stats` from IPVS_SVC_ATTR_STATS64, else from
        IPVS_SVC_ATTR_STATS, else None (a request carries no stats, and none are read
        without `stats`).

    Raises:
        ValueError: when the message has no service, or one the model cannot represent.
    """
    for kind, pos, stop in _walk(buf, start + 4, end):
        if kind == CMD_ATTR_SERVICE:
            return _service(buf, pos, stop, with_stats=stats)
    raise ValueError("IPVS message without a service attribute")


def _service(buf: Buffer, off: int, end: int, *, with_stats: bool) -> VirtualService:
    af = protocol = port = fwmark = timeout = flags = 0
    has_fwmark = False
    addr = sched = b""
    netmask_pos = stats_pos = stats64_pos = -1
    stats_end = stats64_end = 0
    unpack = _NLA.unpack_from
    while off + 4 <= end:
        length, kind = unpack(buf, off)
        pos = off + 4
        kind &= NLA_TYPE_MASK
        if kind == SVC_ATTR_AF:
            af = _U16_AT.unpack_from(buf, pos)[0]
        elif kind == SVC_ATTR_PROTOCOL:
            protocol = _U16_AT.unpack_from(buf, pos)[0]
        elif kind == SVC_ATTR_ADDR:
            addr = bytes(buf[pos:off + length])
        elif kind == SVC_ATTR_PORT:
            port = _BE16_AT.unpack_from(buf, pos)[0]
        elif kind == SVC_ATTR_FWMARK:
            fwmark = _U32_AT.unpack_from(buf, pos)[0]
            has_fwmark = True
        elif kind == SVC_ATTR_SCHED_NAME:
            sched = bytes(buf[pos:off + length])
        elif kind == SVC_ATTR_FLAGS:
            flags = _U32_AT.unpack_from(buf, pos)[0]
        elif kind == SVC_ATTR_TIMEOUT:
            timeout = _U32_AT.unpack_from(buf, pos)[0]
        elif kind == SVC_ATTR_NETMASK:
            netmask_pos = pos
        elif kind == SVC_ATTR_STATS:
            stats_pos, stats_end = pos, off + length
        elif kind == SVC_ATTR_STATS64:
            stats64_pos, stats64_end = pos, off + length
        off += (length + 3) & ~3
    version = _VERSION_OF_AF.get(af)
    if version is None:
        raise ValueError(f"IPVS service with unknown address family {af}")
    if has_fwmark:
        key = ServiceKey.mark(fwmark, family=version)
    else:
        proto = _PROTOCOLS.get(protocol)
        if proto is None:
            raise ValueError(f"IPVS service with protocol {protocol}, which lvs-operator "
                             "does not handle (TCP, UDP and SCTP only)")
        key = ServiceKey.inet(proto, _address(version, addr), port)
    persistence = None
    if flags & SVC_F_PERSISTENT:
        prefix = 32 if version == 4 else 128
        if netmask_pos >= 0:
            if version == 4:
                prefix = bin(_BE32_AT.unpack_from(buf, netmask_pos)[0]).count("1")
            else:
                prefix = _U32_AT.unpack_from(buf, netmask_pos)[0]
        persistence = Persistence(timeout=timeout, prefix=prefix)
    if not with_stats:
        stats: Stats | None = None
    elif stats64_pos >= 0:
        stats = _stats(buf, stats64_pos, stats64_end)
    elif stats_pos >= 0:
        stats = _stats(buf, stats_pos, stats_end)
    else:
        stats = None
    flag_set = _FLAG_SETS.get(flags)
    if flag_set is None:
        flag_set = _FLAG_SETS[flags] = frozenset(f for f in _SCHED_FLAGS if flags & f.value)
    return VirtualService(
        key=key,
        scheduler=sched.split(b"\0", 1)[0].decode(),
        flags=flag_set,
        persistence=persistence,
        one_packet=bool(flags & SVC_F_ONEPACKET),
        stats=stats,
    )


def _stats(buf: Buffer, off: int, end: int) -> Stats:
    # STATS mixes u32 and u64 attributes, STATS64 is all u64: the size tells which.
    values = [0] * 11
    unpack = _NLA.unpack_from
    while off + 4 <= end:
        length, kind = unpack(buf, off)
        if STATS_ATTR_CONNS <= kind <= STATS_ATTR_OUTBPS:
            if length == 12:
                values[kind] = _U64_AT.unpack_from(buf, off + 4)[0]
            elif length == 8:
                values[kind] = _U32_AT.unpack_from(buf, off + 4)[0]
        off += (length + 3) & ~3
    numbers = tuple(values[1:])
    return ZERO_STATS if numbers == _ZERO_NUMBERS else Stats(*numbers)


def _address(version: int, raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # The kernel always sends a 16-byte union nf_inet_addr; a request may carry just 4 bytes.
    if version == 4:
        if len(raw) < 4:
            raise ValueError("IPVS message with a short IPv4 address")
        return ipaddress.IPv4Address(raw[:4])
    if len(raw) < 16:
        raise ValueError("IPVS message with a short IPv6 address")
    return ipaddress.IPv6Address(raw[:16])


# --- real servers ----------------------------------------------------------------------------


def encode_dest(real: RealServer, *, full: bool = True) -> bytes:
    """Return IPVS_CMD_ATTR_DEST for `real`.

    With `full` (NEW/SET_DEST) it carries forwarding, weight and thresholds (the kernel
    requires all four) and, for Tunnel forwarding, the tunnel type, port (network order) and
    checksum flags; without it only what identifies the real server (DEL_DEST). The address
    family always goes along: a Tunnel real server may be of the other family than its service.

    Raises:
        ValueError: when a field does not fit its netlink type.
    """
    address = real.address
    head = (_attr(DEST_ATTR_ADDR, address.packed) + _be16(DEST_ATTR_PORT, _port(real.port, "port"))
            + _U16.pack(6, DEST_ATTR_ADDR_FAMILY, _AF_OF_VERSION[address.version]))
    if not full:
        return _nest(CMD_ATTR_DEST, head)
    body = (head + _U32.pack(8, DEST_ATTR_FWD_METHOD, real.forwarding.value)
            # The kernel keeps the weight in an int and refuses a negative one with ERANGE:
            # send it signed so that the kernel, not the codec, says so.
            + _I32.pack(8, DEST_ATTR_WEIGHT, _i32(real.weight, "weight"))
            + _U32.pack(8, DEST_ATTR_U_THRESH, _u32(real.upper_threshold, "upper threshold"))
            + _U32.pack(8, DEST_ATTR_L_THRESH, _u32(real.lower_threshold, "lower threshold")))
    tunnel = real.tunnel
    if real.forwarding is Forwarding.TUNNEL and tunnel is not None:
        body += (_U8.pack(5, DEST_ATTR_TUN_TYPE, tunnel.type.value)
                 + _be16(DEST_ATTR_TUN_PORT, _port(tunnel.port, "tunnel port"))
                 + _U16.pack(6, DEST_ATTR_TUN_FLAGS, tunnel.checksum.value))
    return _nest(CMD_ATTR_DEST, body)


def decode_dest_dump(buf: Buffer, size: int, *, seq: int, family: int, out: list[RealServer],
                     addresses: dict[bytes, ipaddress.IPv4Address | ipaddress.IPv6Address],
                     ) -> int | None:
    """Decode one received part of a GET_DEST dump, appending its real servers to `out`.

    Only messages with sequence number `seq` count. `addresses` caches address objects by
    their bytes across calls: a dump sees the same pod addresses in many services, and
    building an address object costs more than looking it up.

    Returns:
        None while the dump goes on; 0 at its end (NLMSG_DONE); the errno of an error reply.

    Raises:
        ValueError: for a truncated message, or a real server the model cannot represent.
    """
    # A kernel sends every real server as the same attributes in the same order, so a part
    # made of such messages only is decoded with one precompiled format (see _DestLayout).
    if size >= 16:
        layout = _DEST_LAYOUTS.get(_U32_AT.unpack_from(buf, 0)[0])
        if layout is not None and size % layout.size == 0:
            decoded = layout.decode(buf, size, seq, addresses)
            if decoded is not None:
                out += decoded
                return None
    off = 0
    header = NLMSG_HDR.unpack_from
    status = None
    while off + 16 <= size:
        length, kind, flags, msg_seq, _pid = header(buf, off)
        if length < 16 or off + length > size:
            raise ValueError(f"truncated netlink message at offset {off}: length {length}")
        if msg_seq == seq:
            if kind == NLMSG_DONE:
                status = 0
            elif kind == NLMSG_ERROR:
                status = decode_error(buf, off + 16, off + length, flags)[0]
            elif kind >= 0x10 and buf[off + 16] == CMD_NEW_DEST:
                out.append(_dest_message(buf, off, off + length, family, addresses))
        off += (length + 3) & ~3
    return status


def _dest_message(buf: Buffer, off: int, end: int, family: int,
                  addresses: dict[bytes, ipaddress.IPv4Address | ipaddress.IPv6Address],
                  ) -> RealServer:
    """Decode the NEW_DEST message buf[off:end] (from its nlmsghdr); learn its layout."""
    if len(_DEST_LAYOUTS) < _MAX_LAYOUTS:
        layout = _DestLayout.compile(buf, off, end)
        if layout is not None:
            _DEST_LAYOUTS.setdefault(layout.size, layout)
    for kind, pos, stop in _walk(buf, off + 20, end):
        if kind == CMD_ATTR_DEST:
            return _dest_by_walking(buf, pos, stop, family, addresses)
    raise ValueError("IPVS message without a destination attribute")


class _DestLayout:
    """The byte layout of a whole NEW_DEST dump message, as one struct format.

    Built from a message decoded attribute by attribute. Every header of a message read with
    it (netlink, generic netlink and attribute headers) is compared with the compiled ones
    before its values are trusted; a part with any other message is decoded the slow way.
    """

    # Attributes the fast path reads, in the order `decode` unpacks them; all are required.
    FIELDS = (DEST_ATTR_ADDR, DEST_ATTR_PORT, DEST_ATTR_FWD_METHOD, DEST_ATTR_WEIGHT,
              DEST_ATTR_U_THRESH, DEST_ATTR_L_THRESH, DEST_ATTR_ACTIVE_CONNS,
              DEST_ATTR_INACT_CONNS, DEST_ATTR_PERSIST_CONNS, DEST_ATTR_ADDR_FAMILY,
              DEST_ATTR_TUN_TYPE, DEST_ATTR_TUN_PORT, DEST_ATTR_TUN_FLAGS)
    # Payload formats by attribute (default u32); a port is two bytes in network order.
    FORMATS: ClassVar[dict[int, str]] = {
        DEST_ATTR_PORT: "BB", DEST_ATTR_TUN_PORT: "BB", DEST_ATTR_WEIGHT: "i",
        DEST_ATTR_ADDR_FAMILY: "H", DEST_ATTR_TUN_FLAGS: "H", DEST_ATTR_TUN_TYPE: "B"}
    _SEQ = 3  # index of nlmsg_seq among the unpacked values

    def __init__(self, fmt: str, checked: list[int], expected: list[int], fields: list[int],
                 stats: list[int]) -> None:
        self.format = struct.Struct(fmt)
        self.size = self.format.size
        self.checked = operator.itemgetter(*checked)
        seq_at = checked.index(self._SEQ)
        self.before_seq, self.after_seq = tuple(expected[:seq_at]), tuple(expected[seq_at + 1:])
        self.fields = operator.itemgetter(*fields)
        # What `signatures` reads: every field but the three connection counters.
        self.config = operator.itemgetter(*fields[:7], *fields[10:])
        self.stats = operator.itemgetter(*stats) if stats else None

    @classmethod
    def compile(cls, buf: Buffer, off: int, end: int) -> _DestLayout | None:
        """Return the layout of the message buf[off:end], or None if it lacks a field."""
        length, kind, flags, seq, _pid = NLMSG_HDR.unpack_from(buf, off)
        cmd, version, _reserved = GENL_HDR.unpack_from(buf, off + 16)
        nest_length, nest_kind = _NLA.unpack_from(buf, off + 20)
        if nest_kind & NLA_TYPE_MASK != CMD_ATTR_DEST or off + 24 + nest_length - 4 != end:
            return None
        fmt = ["=IHHIIBBHHH"]
        checked = [0, 1, 2, 3, 5, 6, 8, 9]  # all headers but nlmsg_pid and genl reserved
        expected = [length, kind, flags, seq, cmd, version, nest_length, nest_kind]
        count = 10  # values the format yields so far
        at: dict[int, int] = {}
        stats: dict[int, list[int]] = {}
        for start, stop, depth in _attribute_spans(buf, off + 24, end):
            length, kind = _NLA.unpack_from(buf, start)
            fmt.append("HH")
            checked += [count, count + 1]
            expected += [length, kind]
            count += 2
            size, padded = stop - start - 4, _align(stop - start) - 4
            kind &= NLA_TYPE_MASK
            if depth == 0 and kind in (DEST_ATTR_STATS, DEST_ATTR_STATS64):
                stats[kind] = []
                continue  # its attributes follow as spans of their own
            if depth == 1 and STATS_ATTR_CONNS <= kind <= STATS_ATTR_OUTBPS and size in (4, 8):
                fmt.append("I" if size == 4 else "Q")
                stats[max(stats)].append(count)
                count += 1
                continue
            code = "" if depth else f"{size}s" if kind == DEST_ATTR_ADDR else cls.FORMATS.get(
                kind, "I")
            if code and struct.calcsize("=" + code) == size:
                at[kind] = count
                fmt.append(code + "x" * (padded - size))
                count += len(code) if code == "BB" else 1
            else:
                fmt.append(f"{padded}x")
        fmt.append("x" * (_align(end - off) - (end - off)))
        if any(kind not in at for kind in cls.FIELDS):
            return None
        fields = []
        for kind in cls.FIELDS:
            fields += [at[kind], at[kind] + 1] if cls.FORMATS.get(kind) == "BB" else [at[kind]]
        chosen = stats.get(DEST_ATTR_STATS64) or stats.get(DEST_ATTR_STATS) or []
        if (chosen and len(chosen) != STATS_ATTR_OUTBPS) or (
                struct.calcsize("".join(fmt)) != _align(end - off)):
            return None
        return cls("".join(fmt), checked, expected, fields, chosen)

    def decode(self, buf: Buffer, size: int, seq: int,
               addresses: dict[bytes, ipaddress.IPv4Address | ipaddress.IPv6Address],
               ) -> list[RealServer] | None:
        """Return the real servers of buf[:size], or None if a message is not of this layout.

        Raises:
            ValueError: for a family, forwarding method or tunnel the model does not know.
        """
        expected = (*self.before_seq, seq, *self.after_seq)
        checked, fields, stats = self.checked, self.fields, self.stats
        out = []
        for values in self.format.iter_unpack(memoryview(buf)[:size]):
            if checked(values) != expected:
                return None
            (raw, port_hi, port_lo, fwd, weight, upper, lower, active, inactive, persistent,
             af, tun_type, tun_hi, tun_lo, tun_flags) = fields(values)
            if af == AF_INET:
                raw = raw[:4]
            address = addresses.get(raw)
            if address is None:
                version = _VERSION_OF_AF.get(af)
                if version is None:
                    raise ValueError(f"IPVS destination with unknown address family {af}")
                address = addresses[raw] = _address(version, raw)
            forwarding = _FORWARDING.get(fwd)
            if forwarding is None:
                raise ValueError(_unknown_forwarding(address, port_hi << 8 | port_lo, fwd))
            tunnel = None
            if forwarding is Forwarding.TUNNEL:
                tunnel = _tunnel(tun_type, tun_hi << 8 | tun_lo, tun_flags, address)
            if stats is None:
                counters = None
            else:
                numbers = stats(values)
                counters = ZERO_STATS if numbers == _ZERO_NUMBERS else Stats(*numbers)
            out.append(RealServer(address, port_hi << 8 | port_lo, forwarding, weight, upper,
                                  lower, tunnel, active, inactive, persistent, counters))
        return out


    def signatures(self, buf: Buffer, size: int, seq: int) -> list[DestSignature] | None:
        """Return the `dest_signature` of each real server in buf[:size], building no objects.

        Returns None if a message is not of this layout (decode the part the slow way).
        """
        expected = (*self.before_seq, seq, *self.after_seq)
        checked, config = self.checked, self.config
        out = []
        for values in self.format.iter_unpack(memoryview(buf)[:size]):
            if checked(values) != expected:
                return None
            (raw, port_hi, port_lo, fwd, weight, upper, lower, af, tun_type, tun_hi, tun_lo,
             tun_flags) = config(values)
            tunnel = (tun_type, tun_hi << 8 | tun_lo, tun_flags) if fwd == _TUNNEL_FWD else None
            out.append((raw[:4] if af == AF_INET else raw, port_hi << 8 | port_lo, fwd, weight,
                        upper, lower, tunnel))
        return out


# A real server's configuration as a dump reports it, in plain values (see dest_signature).
DestSignature = tuple[bytes, int, int, int, int, int, tuple[int, int, int] | None]
_TUNNEL_FWD = Forwarding.TUNNEL.value


def dest_signature(real: RealServer) -> DestSignature:
    """Return what a GET_DEST dump of `real` would say about its configuration.

    Two real servers have equal signatures exactly when they are equal as RealServers (the
    counters and stats are not part of either): a dump can be checked against what is expected
    without decoding it into objects (`dest_signatures`).
    """
    tunnel = real.tunnel
    # `_value_`, not `.value`: the property is a Python-level descriptor call, and this runs
    # for every real server of every resync.
    return (real.address.packed, real.port, real.forwarding._value_, real.weight,
            real.upper_threshold, real.lower_threshold,
            None if tunnel is None else (tunnel.type._value_, tunnel.port,
                                         tunnel.checksum._value_))


def dest_signatures(buf: Buffer, size: int, *, seq: int) -> list[DestSignature] | None:
    """Return the signatures of the real servers in one received part of a GET_DEST dump.

    Returns:
        One `dest_signature` per real server, or None when the part is not made only of
        NEW_DEST messages of a known layout (then decode it with `decode_dest_dump`).
    """
    if size < 16:
        return None
    layout = _DEST_LAYOUTS.get(_U32_AT.unpack_from(buf, 0)[0])
    if layout is None or size % layout.size:
        return None
    return layout.signatures(buf, size, seq)


# Layouts by message size: one per kind of kernel (a few at most).
_DEST_LAYOUTS: dict[int, _DestLayout] = {}
_MAX_LAYOUTS = 8
ZERO_STATS = Stats()  # shared: an idle real server's counters (Stats is immutable)
_ZERO_NUMBERS = (0,) * STATS_ATTR_OUTBPS


def _unknown_forwarding(address: object, port: int, fwd: int) -> str:
    return (f"real server {address} port {port} uses IPVS forwarding method {fwd}, which "
            "lvs-operator does not handle (NAT, Tunnel and DR only)")


def _tunnel(kind: int, port: int, flags: int, address: object) -> Tunnel:
    """Return the (shared, immutable) Tunnel for these kernel values.

    Raises:
        ValueError: for a tunnel type or checksum mode the model does not know.
    """
    tunnel = _TUNNELS.get((kind, port, flags))
    if tunnel is None:
        tun_type, checksum = _TUNNEL_TYPES.get(kind), _TUNNEL_CHECKSUMS.get(flags)
        if tun_type is None or checksum is None:
            raise ValueError(f"real server {address} uses tunnel type {kind} / flags {flags}, "
                             "which lvs-operator does not know")
        tunnel = _TUNNELS[(kind, port, flags)] = Tunnel(type=tun_type, port=port,
                                                         checksum=checksum)
    return tunnel


_TUNNELS: dict[tuple[int, int, int], Tunnel] = {}


def _attribute_spans(buf: Buffer, off: int, end: int) -> list[tuple[int, int, int]]:
    """Return (start, end, depth) of each attribute of a destination block, in byte order.

    Stats nests (depth 0) are followed by their own attributes (depth 1).

    Raises:
        ValueError: for an attribute running past the block.
    """
    spans = []
    while off + 4 <= end:
        length, kind = _NLA.unpack_from(buf, off)
        if length < 4 or off + length > end:
            raise ValueError(f"malformed netlink attribute at offset {off}")
        spans.append((off, off + length, 0))
        if kind & NLA_TYPE_MASK in (DEST_ATTR_STATS, DEST_ATTR_STATS64):
            inner = off + 4
            while inner + 4 <= off + length:
                size = _NLA.unpack_from(buf, inner)[0]
                if size < 4 or inner + size > off + length:
                    raise ValueError(f"malformed netlink attribute at offset {inner}")
                spans.append((inner, inner + size, 1))
                inner += _align(size)
        off += _align(length)
    return spans


def _dest_by_walking(buf: Buffer, off: int, end: int, family: int,
                     addresses: dict[bytes, ipaddress.IPv4Address | ipaddress.IPv6Address],
                     ) -> RealServer:
    # One pass records where each attribute's payload starts (index = attribute type); the
    # values are then read directly. A dump has 10,000s of these: no per-attribute objects.
    at = [-1] * _DEST_ATTR_SLOTS
    addr_size = stats_end = stats64_end = 0
    unpack = _NLA.unpack_from
    while off + 4 <= end:
        length, kind = unpack(buf, off)
        kind &= NLA_TYPE_MASK
        if kind < _DEST_ATTR_SLOTS:
            at[kind] = off + 4
            if kind == DEST_ATTR_ADDR:
                addr_size = length - 4
            elif kind == DEST_ATTR_STATS:
                stats_end = off + length
            elif kind == DEST_ATTR_STATS64:
                stats64_end = off + length
        off += (length + 3) & ~3
    pos = at[DEST_ATTR_ADDR_FAMILY]
    version = _VERSION_OF_AF.get(_U16_AT.unpack_from(buf, pos)[0], 0) if pos >= 0 else family
    pos = at[DEST_ATTR_ADDR]
    if pos < 0 or at[DEST_ATTR_PORT] < 0 or version == 0:
        raise ValueError("IPVS destination without address, port or a known family")
    raw = bytes(buf[pos:pos + min(addr_size, 4 if version == 4 else 16)])
    address = addresses.get(raw)
    if address is None:
        address = addresses[raw] = _address(version, raw)
    port = _BE16_AT.unpack_from(buf, at[DEST_ATTR_PORT])[0]
    u32 = _U32_AT.unpack_from
    fwd = u32(buf, at[DEST_ATTR_FWD_METHOD])[0] if at[DEST_ATTR_FWD_METHOD] >= 0 else 0
    forwarding = _FORWARDING.get(fwd)
    if forwarding is None:
        raise ValueError(_unknown_forwarding(address, port, fwd))
    tunnel = None
    if forwarding is Forwarding.TUNNEL:
        pos = at[DEST_ATTR_TUN_TYPE]
        tun_type = int(buf[pos]) if pos >= 0 else 0
        pos = at[DEST_ATTR_TUN_FLAGS]
        tun_flags = _U16_AT.unpack_from(buf, pos)[0] if pos >= 0 else 0
        pos = at[DEST_ATTR_TUN_PORT]
        tun_port = _BE16_AT.unpack_from(buf, pos)[0] if pos >= 0 else 0
        tunnel = _tunnel(tun_type, tun_port, tun_flags, address)
    weight = at[DEST_ATTR_WEIGHT]
    upper = at[DEST_ATTR_U_THRESH]
    lower = at[DEST_ATTR_L_THRESH]
    active = at[DEST_ATTR_ACTIVE_CONNS]
    inactive = at[DEST_ATTR_INACT_CONNS]
    persistent = at[DEST_ATTR_PERSIST_CONNS]
    if at[DEST_ATTR_STATS64] >= 0:
        stats: Stats | None = _stats(buf, at[DEST_ATTR_STATS64], stats64_end)
    elif at[DEST_ATTR_STATS] >= 0:
        stats = _stats(buf, at[DEST_ATTR_STATS], stats_end)
    else:
        stats = None
    return RealServer(
        address=address,
        port=port,
        forwarding=forwarding,
        weight=_I32_AT.unpack_from(buf, weight)[0] if weight >= 0 else 0,
        upper_threshold=u32(buf, upper)[0] if upper >= 0 else 0,
        lower_threshold=u32(buf, lower)[0] if lower >= 0 else 0,
        tunnel=tunnel,
        active_conns=u32(buf, active)[0] if active >= 0 else 0,
        inactive_conns=u32(buf, inactive)[0] if inactive >= 0 else 0,
        persistent_conns=u32(buf, persistent)[0] if persistent >= 0 else 0,
        stats=stats,
    )


# --- operations ------------------------------------------------------------------------------


def encode_operation(op: Operation, keys: dict[ServiceKey, bytes] | None = None,
                     ) -> tuple[int, bytes]:
    """Return (IPVS command, attributes) that carry out one plan operation.

    `keys` caches encoded service keys across calls (a bulk apply has many real-server
    operations per service).

    Raises:
        ValueError: when a field of the operation does not fit its netlink type.
    """
    if isinstance(op, AddReal | SetReal | DeleteReal):
        key = (keys.get(op.service) if keys is not None else None) or _key_into(
            op.service, keys)
        if isinstance(op, AddReal):
            return CMD_NEW_DEST, key + encode_dest(op.real)
        if isinstance(op, SetReal):
            return CMD_SET_DEST, key + encode_dest(op.real)
        return CMD_DEL_DEST, key + encode_dest(op.real, full=False)
    if isinstance(op, AddService):
        return CMD_NEW_SERVICE, encode_service(op.service)
    if isinstance(op, SetService):
        return CMD_SET_SERVICE, encode_service(op.service)
    if isinstance(op, DeleteService):
        return CMD_DEL_SERVICE, encode_service_key(op.key)
    raise TypeError(f"not an IPVS operation: {op!r}")


def _key_into(key: ServiceKey, keys: dict[ServiceKey, bytes] | None) -> bytes:
    """Return `encode_service_key(key)`, kept in the cache `keys` (if any) for the next
    operation on the same service: what the encoders call when the cache has no entry."""
    encoded = encode_service_key(key)
    if keys is not None:
        keys[key] = encoded
    return encoded


def encode_request(op: Operation, family: int, seq: int,
                   keys: dict[ServiceKey, bytes]) -> bytes:
    """Return the whole request message (headers included, no ACK asked) for one operation.

    The same bytes as `request(family, *encode_operation(op, keys), seq=seq, flags=0)`. Adding
    or changing a real server, nearly every message of a bulk apply, is packed in a single
    `struct` call here: building it attribute by attribute cost more than the kernel's work
    on it. Adding or changing a service reuses its encoded key, which its real servers'
    messages need too. `keys` caches encoded service keys.

    Raises:
        ValueError: when a field of the operation does not fit its netlink type.
    """
    if isinstance(op, AddReal | SetReal):
        real = op.real
        key = keys.get(op.service) or _key_into(op.service, keys)
        address = real.address.packed
        tunnel = real.tunnel if real.forwarding is Forwarding.TUNNEL else None
        shape = (len(key), len(address), tunnel is not None)
        layout = _REAL_REQUESTS.get(shape)
        if layout is None:
            layout = _REAL_REQUESTS[shape] = _real_request(*shape)
        # `_value_`: the plain attribute behind an enum member's `value` property.
        head = (layout.size, family, NLM_F_REQUEST, seq, 0,
                CMD_NEW_DEST if isinstance(op, AddReal) else CMD_SET_DEST, IPVS_GENL_VERSION, 0,
                key, layout.size - HEADER_SIZE - len(key), CMD_ATTR_DEST | NLA_F_NESTED,
                4 + len(address), DEST_ATTR_ADDR, address)
        try:
            tail = () if tunnel is None else (
                5, DEST_ATTR_TUN_TYPE, tunnel.type._value_,
                6, DEST_ATTR_TUN_PORT, _htons(tunnel.port),
                6, DEST_ATTR_TUN_FLAGS, tunnel.checksum._value_)
            return layout.pack(
                *head, 6, DEST_ATTR_PORT, _htons(real.port),
                6, DEST_ATTR_ADDR_FAMILY, AF_INET if len(address) == 4 else AF_INET6,
                8, DEST_ATTR_FWD_METHOD, real.forwarding._value_,
                8, DEST_ATTR_WEIGHT, real.weight,
                8, DEST_ATTR_U_THRESH, real.upper_threshold,
                8, DEST_ATTR_L_THRESH, real.lower_threshold, *tail)
        except (struct.error, OverflowError):
            pass  # out of range: the general path below says which field
    elif isinstance(op, AddService | SetService):
        # The service key nest that its real servers' messages reuse, widened to hold the
        # service's other attributes.
        service = op.service
        key = keys.get(service.key) or _key_into(service.key, keys)
        rest = _attributes_of(service)
        return request(family, CMD_NEW_SERVICE if isinstance(op, AddService) else CMD_SET_SERVICE,
                       _NLA.pack(len(key) + len(rest), CMD_ATTR_SERVICE | NLA_F_NESTED)
                       + key[4:] + rest, seq=seq, flags=0)
    cmd, payload = encode_operation(op, keys)
    return request(family, cmd, payload, seq=seq, flags=0)


def with_ack(message: bytes) -> bytes:
    """Return `message` (one request from `encode_request`) asking for an ACK."""
    (flags,) = _U16_AT.unpack_from(message, 6)
    return message[:6] + _U16_AT.pack(flags | NLM_F_ACK) + message[8:]


def _real_request(key_size: int, address_size: int, tunnel: bool) -> struct.Struct:
    # nlmsghdr + genlmsghdr, the service key nest as encoded, then the dest nest: address,
    # port (network order: `_htons`), family, forwarding, weight (signed), thresholds, and
    # for a tunnel its type, port (network order) and checksum flags.
    pad = (4 - address_size % 4) % 4
    return struct.Struct(f"=IHHIIBBH{key_size}sHH HH{address_size}s{pad}x HHH2x HHH2x "
                         "HHI HHi HHI HHI" + (" HHB3x HHH2x HHH2x" if tunnel else ""))


_REAL_REQUESTS: dict[tuple[int, int, bool], struct.Struct] = {}
_htons = socket.htons


# --- configuration and sync daemons ----------------------------------------------------------


def encode_timeouts(timeouts: Timeouts) -> bytes:
    """Return the SET_CONFIG attributes for the non-zero fields of `timeouts`.

    Raises:
        ValueError: when a timeout is negative or does not fit 32 bits.
    """
    out = b""
    for kind, value, name in ((CMD_ATTR_TIMEOUT_TCP, timeouts.tcp, "tcp"),
                              (CMD_ATTR_TIMEOUT_TCP_FIN, timeouts.tcp_fin, "tcpfin"),
                              (CMD_ATTR_TIMEOUT_UDP, timeouts.udp, "udp")):
        if value:
            out += _U32.pack(8, kind, _u32(value, f"{name} timeout"))
    return out


def decode_timeouts(buf: Buffer, start: int, end: int) -> Timeouts:
    """Return the timeouts of a GET_CONFIG reply (or a SET_CONFIG request); absent = 0."""
    values = {CMD_ATTR_TIMEOUT_TCP: 0, CMD_ATTR_TIMEOUT_TCP_FIN: 0, CMD_ATTR_TIMEOUT_UDP: 0}
    for kind, pos, _stop in _walk(buf, start + 4, end):
        if kind in values:
            values[kind] = _U32_AT.unpack_from(buf, pos)[0]
    return Timeouts(tcp=values[CMD_ATTR_TIMEOUT_TCP], tcp_fin=values[CMD_ATTR_TIMEOUT_TCP_FIN],
                    udp=values[CMD_ATTR_TIMEOUT_UDP])


def encode_daemon(daemon: SyncDaemon) -> bytes:
    """Return IPVS_CMD_ATTR_DAEMON for NEW_DAEMON: state, interface and sync id.

    Raises:
        ValueError: when the interface name is empty or too long, or the sync id is not
            0..255 (the kernel keeps it in 8 bits and would silently truncate it).
    """
    name = daemon.interface.encode()
    if not name or len(name) >= IP_VS_IFNAME_MAXLEN:
        raise ValueError(f"sync daemon interface name {daemon.interface!r} is not 1..15 bytes")
    if not 0 <= daemon.sync_id <= 255:
        raise ValueError(f"sync id {daemon.sync_id} is not 0..255")
    return _nest(CMD_ATTR_DAEMON, _U32.pack(8, DAEMON_ATTR_STATE, daemon.state.value)
                 + _attr(DAEMON_ATTR_MCAST_IFN, name + b"\0")
                 + _U32.pack(8, DAEMON_ATTR_SYNC_ID, daemon.sync_id))


def encode_daemon_state(state: SyncState) -> bytes:
    """Return IPVS_CMD_ATTR_DAEMON for DEL_DAEMON: just the state to stop."""
    return _nest(CMD_ATTR_DAEMON, _U32.pack(8, DAEMON_ATTR_STATE, state.value))


def decode_daemon(buf: Buffer, start: int, end: int) -> SyncDaemon:
    """Decode a NEW_DAEMON message (a GET_DAEMON dump entry or a request).

    Raises:
        ValueError: when the message has no daemon or an unknown state.
    """
    for kind, pos, stop in _walk(buf, start + 4, end):
        if kind != CMD_ATTR_DAEMON:
            continue
        state = interface = sync_id = None
        for inner, ipos, istop in _walk(buf, pos, stop):
            if inner == DAEMON_ATTR_STATE:
                state = _U32_AT.unpack_from(buf, ipos)[0]
            elif inner == DAEMON_ATTR_MCAST_IFN:
                interface = bytes(buf[ipos:istop]).split(b"\0", 1)[0].decode()
            elif inner == DAEMON_ATTR_SYNC_ID:
                sync_id = _U32_AT.unpack_from(buf, ipos)[0]
        if state not in (1, 2) or interface is None:
            raise ValueError(f"IPVS sync daemon with unknown state {state}")
        return SyncDaemon(state=SyncState(state), interface=interface, sync_id=sync_id or 0)
    raise ValueError("IPVS message without a daemon attribute")


# --- range checks ----------------------------------------------------------------------------


def _u32(value: int, what: str) -> int:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{what} {value} does not fit 32 bits")
    return value


def _i32(value: int, what: str) -> int:
    if not -(2**31) <= value < 2**31:
        raise ValueError(f"{what} {value} does not fit a signed 32-bit integer")
    return value


def _port(value: int, what: str) -> int:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{what} {value} is not 0..65535")
    return value
