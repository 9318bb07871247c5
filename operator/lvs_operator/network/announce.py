"""Tell the neighbours that a VIP moved here: gratuitous ARP (IPv4), unsolicited NA (IPv6).

Building a packet is a pure function (`garp_frame`, `unsolicited_na`); sending is a separate
small function (`send_frame`, `send_icmpv6`); `announce` does both, `count` times.
Sending needs CAP_NET_RAW. The functions block (they sleep between repeats): call them from
a thread, not from an asyncio event loop.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import time

from lvs_operator.model import IPAddress
from lvs_operator.network.errors import InterfaceNotFound, NetworkError
from lvs_operator.network.links import Link, get_link

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARPHRD_ETHER = 1
ARPOP_REQUEST = 1
BROADCAST = b"\xff" * 6

ICMPV6_NEIGHBOUR_ADVERTISEMENT = 136
NA_FLAG_OVERRIDE = 0x20000000
ND_OPT_TARGET_LINKADDR = 2
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ND_HOP_LIMIT = 255  # receivers drop neighbour discovery that crossed a router (RFC 4861)


def _check_mac(mac: bytes) -> None:
    if len(mac) != 6:
        raise ValueError(f"expected a 6-byte Ethernet address, got {len(mac)} bytes")


def garp_frame(mac: bytes, address: ipaddress.IPv4Address) -> bytes:
    """Return a gratuitous ARP Ethernet frame announcing that `address` is at `mac`.

    An ARP request broadcast with sender and target protocol address both `address` and a
    zero target hardware address (an "ARP announcement", RFC 5227): neighbours that have an
    entry for `address` update it to `mac`. 42 bytes; the NIC pads it to the minimum size.

    Raises:
        ValueError: when `mac` is not 6 bytes.
    """
    _check_mac(mac)
    ethernet = BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack(
        "!HHBBH6s4s6s4s",
        ARPHRD_ETHER,
        ETH_P_IP,
        6,
        4,
        ARPOP_REQUEST,
        mac,
        address.packed,
        b"\0" * 6,
        address.packed,
    )
    return ethernet + arp


def unsolicited_na(mac: bytes, address: ipaddress.IPv6Address) -> bytes:
    """Return an unsolicited ICMPv6 neighbour advertisement: `address` is at `mac`.

    Type 136 with the Override flag (so receivers replace a cached link-layer address) and
    neither Router nor Solicited, followed by a target link-layer address option. The
    checksum is left 0: the kernel fills it in for raw ICMPv6 sockets.

    Raises:
        ValueError: when `mac` is not 6 bytes.
    """
    _check_mac(mac)
    return struct.pack(
        "!BBHI16sBB6s",
        ICMPV6_NEIGHBOUR_ADVERTISEMENT,
        0,
        0,
        NA_FLAG_OVERRIDE,
        address.packed,
        ND_OPT_TARGET_LINKADDR,
        1,  # option length in units of 8 bytes
        mac,
    )


def _send_error(interface: str, what: str, e: OSError) -> NetworkError:
    if e.errno == errno.ENODEV:
        return InterfaceNotFound(interface)
    if e.errno in (errno.EPERM, errno.EACCES):
        return NetworkError(f"{what} on interface {interface!r}: the process needs CAP_NET_RAW")
    if e.errno == errno.ENETDOWN:
        return NetworkError(
            f"{what} on interface {interface!r}: the interface is down; bring it up"
        )
    return NetworkError(f"{what} on interface {interface!r}: {e.strerror}")


def send_frame(interface: str, frame: bytes) -> None:
    """Send one raw Ethernet frame (headers included) out of `interface`.

    Raises:
        InterfaceNotFound: when `interface` does not exist.
        NetworkError: without CAP_NET_RAW, when the interface is down, or the send fails.
    """
    try:
        # Protocol 0: this socket only sends; it receives nothing.
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
            sock.bind((interface, 0))
            sock.send(frame)
    except OSError as e:
        raise _send_error(interface, "sending a raw frame", e) from None


def send_icmpv6(
    interface: str, message: bytes, destination: ipaddress.IPv6Address = ALL_NODES
) -> None:
    """Send one ICMPv6 message out of `interface` with hop limit 255 (as ND requires).

    The kernel picks the source address (the interface's link-local one when it has one)
    and computes the checksum.

    Raises:
        InterfaceNotFound: when `interface` does not exist.
        NetworkError: without CAP_NET_RAW, when the interface is down, or the send fails.
    """
    try:
        index = socket.if_nametoindex(interface)
    except OSError:
        raise InterfaceNotFound(interface) from None
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as sock:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ND_HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ND_HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            sock.sendto(message, (str(destination), 0, 0, index))
    except OSError as e:
        raise _send_error(interface, "sending an ICMPv6 message", e) from None


def _ethernet(interface: str, address: IPAddress) -> Link:
    link = get_link(interface)
    if not link.arp or len(link.mac) != 6:
        raise NetworkError(
            f"cannot announce {address} on interface {interface!r}: it has no Ethernet "
            "address (loopback, tunnel or NOARP device); announce on the interface that faces "
            "the clients' network"
        )
    return link


def announce(
    interface: str, address: IPAddress, count: int = 3, interval: float = 0.5
) -> None:
    """Announce that `address` is reachable at `interface`'s MAC address, `count` times.

    IPv4: gratuitous ARP. IPv6: unsolicited neighbour advertisement to all nodes
    (ff02::1). The first announcement goes out at once; repeats, `interval` seconds apart,
    cover a lost packet. Receivers update existing neighbour entries for `address`.

    Raises:
        ValueError: when `count` < 1 or `interval` < 0.
        InterfaceNotFound: when `interface` does not exist.
        NetworkError: when `interface` has no Ethernet address, the process lacks
            CAP_NET_RAW, the interface is down, or a send fails.
    """
    if count < 1 or interval < 0:
        raise ValueError(f"announce needs count >= 1 and interval >= 0, got {count}, {interval}")
    link = _ethernet(interface, address)
    for i in range(count):
        if i:
            time.sleep(interval)
        if isinstance(address, ipaddress.IPv4Address):
            send_frame(interface, garp_frame(link.mac, address))
        else:
            send_icmpv6(interface, unsolicited_na(link.mac, address))
