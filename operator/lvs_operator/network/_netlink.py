"""A small rtnetlink client: our own message classes over a plain netlink socket.

pyroute2 is used only to marshal messages (classes derived from its `nlmsg` / `nla`).
The transport is a standard-library socket rather than pyroute2's `IPRoute` because
`IPRoute` runs its own asyncio loop and fails inside a running one (kopf's), and because
we want every reply checked here: ACKs, errors with the kernel's extended-ack text, dumps.

Nothing outside `lvs_operator.network` imports this module; its message types never leave
the package.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
from types import TracebackType
from typing import Any

from pyroute2.netlink import nla, nlmsg

from lvs_operator.network.errors import NetlinkError

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11

# struct nlmsghdr flags (linux/netlink.h)
NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
# flags of an NLMSG_ERROR / NLMSG_DONE reply
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1

NLMSG_ERROR = 2
NLMSG_DONE = 3

# message types (linux/rtnetlink.h)
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_SETLINK = 19
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22

# attribute ids
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
IFLA_AF_SPEC = 26
IFLA_INET_CONF = 1
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_CACHEINFO = 6
IFA_FLAGS = 8
NLA_F_NESTED = 0x8000

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_NOARP = 0x80
IFA_F_NODAD = 0x02

_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_RECV_SIZE = 1 << 18
_DUMP_ATTEMPTS = 5


class LinkMsg(nlmsg):  # type: ignore[misc]
    """struct ifinfomsg with the attributes we read or send (others decode as UNKNOWN).

    IFLA_INET_CONF is read as raw bytes: in an RTM_NEWLINK reply it is a flat array of u32
    (index i holds IPV4_DEVCONF id i + 1). Setting it needs the other shape, see
    `lvs_operator.network.inetconf.InetConfSetMsg`.
    """

    fields = (
        ("family", "B"),
        ("__pad", "x"),
        ("ifi_type", "H"),
        ("index", "i"),
        ("flags", "I"),
        ("change", "I"),
    )
    nla_map: tuple[tuple[int, str, str], ...] = (
        (IFLA_ADDRESS, "IFLA_ADDRESS", "cdata"),
        (IFLA_IFNAME, "IFLA_IFNAME", "asciiz"),
        (IFLA_LINKINFO, "IFLA_LINKINFO", "linkinfo"),
        (IFLA_AF_SPEC, "IFLA_AF_SPEC", "af_spec"),
    )

    class linkinfo(nla):  # type: ignore[misc]  # pyroute2 finds nested classes by name
        nla_flags = NLA_F_NESTED
        nla_map = ((IFLA_INFO_KIND, "IFLA_INFO_KIND", "asciiz"),)

    class af_spec(nla):  # type: ignore[misc]
        nla_flags = NLA_F_NESTED
        nla_map = ((socket.AF_INET, "AF_INET", "af_inet"),)

        class af_inet(nla):  # type: ignore[misc]
            nla_flags = NLA_F_NESTED
            nla_map = ((IFLA_INET_CONF, "IFLA_INET_CONF", "cdata"),)


class AddrMsg(nlmsg):  # type: ignore[misc]
    """struct ifaddrmsg with the attributes we use; addresses are raw packed bytes."""

    fields = (
        ("family", "B"),
        ("prefixlen", "B"),
        ("flags", "B"),
        ("scope", "B"),
        ("index", "I"),
    )
    nla_map = (
        (IFA_ADDRESS, "IFA_ADDRESS", "cdata"),
        (IFA_LOCAL, "IFA_LOCAL", "cdata"),
        (IFA_FLAGS, "IFA_FLAGS", "uint32"),
    )


def encode(msg: nlmsg | bytes, msg_type: int, flags: int, seq: int = 0) -> bytes:
    """Return the wire form of `msg` with its netlink header filled in (port id 0); `msg`
    is a message object, or the bytes after the netlink header (as `link_request` and
    `addr_dump_request` return)."""
    if isinstance(msg, bytes):
        return _HEADER.pack(_HEADER.size + len(msg), msg_type, flags, seq, 0) + msg
    msg["header"]["type"] = msg_type
    msg["header"]["flags"] = flags
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = 0
    msg.reset()
    msg.encode()
    return bytes(msg.data)


# The hot paths (an agent's sync reads a link and its addresses) build and read their few
# fields directly: pyroute2's generic (de)coding of a whole link message (statistics, every
# per-family setting) costs tens of milliseconds under emulation, for a name and an index.
_RTATTR = struct.Struct("=HH")
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_IFA_CACHEINFO = struct.Struct("=IIII")  # preferred, valid, created, updated
INFINITY_LIFE_TIME = 0xFFFFFFFF  # a lifetime of "forever" in struct ifa_cacheinfo
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER


def attribute(kind: int, value: bytes) -> bytes:
    """Return one netlink attribute (struct rtattr + `value`), padded to 4 bytes."""
    length = _RTATTR.size + len(value)
    return _RTATTR.pack(length, kind) + value + bytes(-length % 4)


def attributes(data: bytes, start: int, end: int | None = None) -> dict[int, bytes]:
    """Return the attributes in `data[start:end]` by type (the last one of a type wins).

    Raises:
        ValueError: when an attribute runs past the end (a malformed message).
    """
    end = len(data) if end is None else end
    found: dict[int, bytes] = {}
    offset = start
    while offset + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size or offset + length > end:
            raise ValueError(f"malformed netlink attribute at byte {offset}")
        found[kind & NLA_TYPE_MASK] = data[offset + _RTATTR.size : offset + length]
        offset += (length + 3) & ~3
    return found


def link_request(name: str) -> bytes:
    """Return the payload of an RTM_GETLINK request for the interface called `name`."""
    return _IFINFOMSG.pack(0, 0, 0, 0, 0) + attribute(IFLA_IFNAME, name.encode() + b"\0")


def addr_dump_request() -> bytes:
    """Return the payload of an RTM_GETADDR dump request (every family)."""
    return _IFADDRMSG.pack(0, 0, 0, 0, 0)


def addr_request(family: int, prefixlen: int, index: int, attrs: bytes, *,
                 flags: int = 0, scope: int = 0) -> bytes:
    """Return the payload of an RTM_NEWADDR / RTM_DELADDR request: struct ifaddrmsg and
    `attrs` (already packed with `attribute`)."""
    return _IFADDRMSG.pack(family, prefixlen, flags, scope, index) + attrs


def cacheinfo(valid: int, preferred: int) -> bytes:
    """Return an IFA_CACHEINFO attribute value asking for these lifetimes (seconds)."""
    return _IFA_CACHEINFO.pack(preferred, valid, 0, 0)


def lifetimes(value: bytes) -> tuple[int | None, int | None]:
    """Return (valid, preferred) seconds left from an IFA_CACHEINFO value (None: forever).

    Raises:
        struct.error: when the value is too short.
    """
    preferred, valid, _, _ = _IFA_CACHEINFO.unpack_from(value)
    return (None if valid == INFINITY_LIFE_TIME else valid,
            None if preferred == INFINITY_LIFE_TIME else preferred)


def created(value: bytes) -> int:
    """Return when an address was created, from its IFA_CACHEINFO value (the kernel's
    stamp: hundredths of a second since boot; it never changes while the address lives).

    Raises:
        struct.error: when the value is too short.
    """
    return int(_IFA_CACHEINFO.unpack_from(value)[2])


def link_fields(data: bytes) -> tuple[int, int, dict[int, bytes]]:
    """Return (index, flags, attributes) of one RTM_NEWLINK message (header included)."""
    _, _, index, flags, _ = _IFINFOMSG.unpack_from(data, _HEADER.size)
    return index, flags, attributes(data, _HEADER.size + _IFINFOMSG.size)


def addr_fields(data: bytes) -> tuple[int, int, dict[int, bytes]]:
    """Return (index, prefix length, attributes) of one RTM_NEWADDR message (header
    included)."""
    _, prefixlen, _, _, index = _IFADDRMSG.unpack_from(data, _HEADER.size)
    return index, prefixlen, attributes(data, _HEADER.size + _IFADDRMSG.size)


def decode(cls: type[nlmsg], data: bytes) -> Any:
    """Return `data` (one whole netlink message) decoded as `cls`."""
    msg = cls(bytearray(data))
    msg.decode()
    return msg


def _ext_ack_message(data: bytes, offset: int, length: int, flags: int) -> str:
    # struct nlmsgerr = int error + the request's nlmsghdr (+ its payload unless capped);
    # the extended-ack TLVs follow.
    if not flags & NLM_F_ACK_TLVS:
        return ""
    pos = offset + _HEADER.size + 4
    if pos + _HEADER.size > offset + length:
        return ""
    inner_len = _HEADER.unpack_from(data, pos)[0]
    pos += _HEADER.size if flags & NLM_F_CAPPED else (inner_len + 3) & ~3
    end = offset + length
    while pos + 4 <= end:
        tlv_len, tlv_type = struct.unpack_from("=HH", data, pos)
        if tlv_len < 4:
            break
        if tlv_type & 0x3FFF == NLMSGERR_ATTR_MSG:
            return data[pos + 4 : pos + tlv_len].split(b"\0", 1)[0].decode(errors="replace")
        pos += (tlv_len + 3) & ~3
    return ""


class RouteSocket:
    """One NETLINK_ROUTE socket in the current network namespace; use it as a context manager.

    Not thread-safe: give each thread its own (they are cheap).
    """

    _seq_lock = threading.Lock()
    _next_seq = 1

    def __init__(self) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE
        )
        try:
            self._sock.bind((0, 0))
            # Ask for the kernel's explanation with errors ("Unknown device type", ...).
            self._sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        except OSError:
            self._sock.close()
            raise

    def __enter__(self) -> RouteSocket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()

    @classmethod
    def _sequence(cls) -> int:
        with cls._seq_lock:
            seq = cls._next_seq
            cls._next_seq = seq % 0x7FFFFFFF + 1
            return seq

    def request(self, msg: nlmsg | bytes, msg_type: int, flags: int, *,
                what: str) -> list[bytes]:
        """Send one request (a message object, or the bytes after the netlink header) and
        collect its replies.

        NLM_F_REQUEST is added to `flags`; a request without NLM_F_DUMP also gets NLM_F_ACK,
        so that every request ends with the kernel's verdict. A dump that the kernel marks
        inconsistent (the table changed while it was being dumped) is asked for again.

        Returns:
            each reply message (header included) other than the final ACK or NLMSG_DONE.

        Raises:
            NetlinkError: the kernel answered with an error, or a dump stayed inconsistent;
                its message starts with `what`.
        """
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        flags |= NLM_F_REQUEST
        if not dump:
            flags |= NLM_F_ACK
        for _ in range(_DUMP_ATTEMPTS):
            replies, interrupted = self._exchange(msg, msg_type, flags, what)
            if not interrupted:
                return replies
        raise NetlinkError(errno.EAGAIN, what, "the dump kept changing while it was read")

    def _exchange(
        self, msg: nlmsg | bytes, msg_type: int, flags: int, what: str
    ) -> tuple[list[bytes], bool]:
        seq = self._sequence()
        self._sock.send(encode(msg, msg_type, flags, seq))
        replies: list[bytes] = []
        interrupted = False
        while True:
            data = self._sock.recv(_RECV_SIZE)
            if not data:
                raise NetlinkError(errno.EPIPE, what, "netlink socket closed")
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, mtype, mflags, mseq, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    break
                if mseq != seq:
                    # A stale reply of an earlier, interrupted request: not ours.
                    offset += (length + 3) & ~3
                    continue
                interrupted = interrupted or bool(mflags & NLM_F_DUMP_INTR)
                if mtype == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                    if code == 0:
                        return replies, interrupted
                    detail = _ext_ack_message(data, offset, length, mflags)
                    raise NetlinkError(-code, what, detail)
                if mtype == NLMSG_DONE:
                    if length >= _HEADER.size + 4:
                        (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                        if code < 0:
                            raise NetlinkError(-code, what)
                    return replies, interrupted
                replies.append(data[offset : offset + length])
                offset += (length + 3) & ~3
