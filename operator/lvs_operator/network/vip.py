"""Virtual IP addresses on an interface: add, remove, list; all idempotent.

A VIP is always a host address: /32 for IPv4, /128 for IPv6. IPv6 VIPs are added with
`nodad` so they are usable at once: duplicate address detection would keep a moved VIP
tentative (unusable) for a second or more, and the operator, not DAD, guarantees that one
node holds it.

A VIP may carry a finite lifetime (`set_lifetime`): the kernel itself deletes it when the
lifetime runs out, so a VIP whose keeper dies or freezes leaves the kernel on its own
(the keepalived container's watchdog refreshes it while keepalived is alive).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Iterable, Iterator

from lvs_operator.model import IPAddress
from lvs_operator.network import _netlink as nl
from lvs_operator.network.errors import NetlinkError
from lvs_operator.network.links import get_link


def host_prefix(address: IPAddress) -> int:
    """Return the prefix length of a VIP: 32 for IPv4, 128 for IPv6."""
    return address.max_prefixlen


def _family(address: IPAddress) -> int:
    return socket.AF_INET if address.version == 4 else socket.AF_INET6


def _addr_msg(index: int, address: IPAddress) -> nl.AddrMsg:
    msg = nl.AddrMsg()
    msg["family"] = _family(address)
    msg["prefixlen"] = host_prefix(address)
    msg["index"] = index
    msg["scope"] = 0  # RT_SCOPE_UNIVERSE: a VIP is reachable from anywhere
    packed = address.packed
    msg["attrs"] = [("IFA_LOCAL", packed), ("IFA_ADDRESS", packed)]
    return msg


def add_vip(interface: str, address: IPAddress) -> bool:
    """Add `address` as a host address (/32 or /128) to `interface`.

    Returns:
        True when the address was added, False when it was already there.

    Raises:
        InterfaceNotFound: when `interface` does not exist in this network namespace.
        NetlinkError: when the kernel refuses (EPERM: the process lacks CAP_NET_ADMIN).
    """
    link = get_link(interface)
    prefix = f"{address}/{host_prefix(address)}"
    msg = _addr_msg(link.index, address)
    if address.version == 6:
        msg["flags"] = nl.IFA_F_NODAD
        msg["attrs"].append(("IFA_FLAGS", nl.IFA_F_NODAD))
    try:
        with nl.RouteSocket() as rt:
            rt.request(
                msg,
                nl.RTM_NEWADDR,
                nl.NLM_F_CREATE | nl.NLM_F_EXCL,
                what=f"adding VIP {prefix} to interface {interface!r}",
            )
    except NetlinkError as e:
        if e.errno == errno.EEXIST:
            return False
        raise
    return True


def remove_vip(interface: str, address: IPAddress) -> bool:
    """Remove the host address `address` (/32 or /128) from `interface`.

    Only the host-prefix address is removed: the same address with another prefix length
    (say a node's own 192.0.2.5/24) is not a VIP and is left alone.

    Returns:
        True when the address was removed, False when it was not there.

    Raises:
        InterfaceNotFound: when `interface` does not exist in this network namespace.
        NetlinkError: when the kernel refuses (EPERM: the process lacks CAP_NET_ADMIN).
    """
    link = get_link(interface)
    prefix = f"{address}/{host_prefix(address)}"
    try:
        with nl.RouteSocket() as rt:
            rt.request(
                _addr_msg(link.index, address),
                nl.RTM_DELADDR,
                0,
                what=f"removing VIP {prefix} from interface {interface!r}",
            )
    except NetlinkError as e:
        if e.errno == errno.EADDRNOTAVAIL:
            return False
        raise
    return True


def _dump(interface: str) -> Iterator[tuple[IPAddress, int, dict[int, bytes]]]:
    """Yield (address, prefix length, attributes) of every address of `interface`."""
    link = get_link(interface)
    with nl.RouteSocket() as rt:
        replies = rt.request(
            nl.addr_dump_request(), nl.RTM_GETADDR, nl.NLM_F_DUMP,
            what=f"listing addresses of {interface!r}",
        )
    for data in replies:
        index, prefixlen, attrs = nl.addr_fields(data)
        if index != link.index:
            continue
        # IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on a
        # point-to-point link, and the only one IPv6 sends.
        raw = attrs.get(nl.IFA_LOCAL) or attrs.get(nl.IFA_ADDRESS)
        if raw is not None:
            yield ipaddress.ip_address(raw), prefixlen, attrs


def list_addresses(interface: str) -> list[tuple[IPAddress, int]]:
    """Return every address of `interface` with its prefix length, IPv4 first.

    Raises:
        InterfaceNotFound: when `interface` does not exist in this network namespace.
        NetlinkError: when the kernel refuses the dump.
    """
    result = [(address, prefixlen) for address, prefixlen, _ in _dump(interface)]
    return sorted(result, key=lambda item: (item[0].version, int(item[0]), item[1]))


def list_lifetimes(interface: str) -> dict[IPAddress, int | None]:
    """Return the VIPs held on `interface` (as `list_vips`) with the seconds left of each
    one's valid lifetime (None: forever).

    Raises:
        InterfaceNotFound: when `interface` does not exist in this network namespace.
        NetlinkError: when the kernel refuses the dump.
    """
    found: dict[IPAddress, int | None] = {}
    for address, prefixlen, attrs in _dump(interface):
        if prefixlen != host_prefix(address) or address.is_loopback:
            continue
        info = attrs.get(nl.IFA_CACHEINFO)
        found[address] = nl.lifetimes(info)[0] if info else None
    return found


def list_created(interface: str) -> dict[IPAddress, int]:
    """Return the VIPs held on `interface` (as `list_vips`) with when each was created (the
    kernel's stamp, hundredths of a second since boot): an address deleted and added again
    in between two calls has a new one.

    Raises:
        InterfaceNotFound: when `interface` does not exist in this network namespace.
        NetlinkError: when the kernel refuses the dump.
    """
    found: dict[IPAddress, int] = {}
    for address, prefixlen, attrs in _dump(interface):
        if prefixlen != host_prefix(address) or address.is_loopback:
            continue
        info = attrs.get(nl.IFA_CACHEINFO)
        found[address] = nl.created(info) if info else 0
    return found


def set_lifetime(interface: str, addresses: Iterable[IPAddress], seconds: int) -> None:
    """Make the host addresses `addresses` of `interface` expire `seconds` from now (valid
    and preferred lifetime): unless this is done again before then, the kernel deletes
    them. One request per address, on one socket.

    Only call it for addresses that are there: the kernel answers a replacement of a
    missing address by creating it (rtnetlink has no "replace only"). A caller that checked
    first still races with whoever deletes the address in between; the copy it would then
    create lives `seconds` at most.

    Raises:
        ValueError: when `seconds` is not a positive number of seconds.
        InterfaceNotFound: when `interface` does not exist in this network namespace.
        NetlinkError: when the kernel refuses (EPERM: the process lacks CAP_NET_ADMIN).
    """
    if seconds < 1:
        raise ValueError(f"address lifetime {seconds}: must be 1 second or more")
    link = get_link(interface)
    with nl.RouteSocket() as rt:
        for address in addresses:
            packed = address.packed
            attrs = (nl.attribute(nl.IFA_LOCAL, packed) + nl.attribute(nl.IFA_ADDRESS, packed)
                     + nl.attribute(nl.IFA_CACHEINFO, nl.cacheinfo(seconds, seconds)))
            flags = 0
            if address.version == 6:
                # As add_vip: the replacement sets the address's flags, and an address it
                # happens to create must be usable at once.
                flags = nl.IFA_F_NODAD
                attrs += nl.attribute(nl.IFA_FLAGS, struct.pack("=I", flags))
            rt.request(
                nl.addr_request(_family(address), host_prefix(address), link.index, attrs,
                                flags=flags),
                nl.RTM_NEWADDR,
                nl.NLM_F_REPLACE,
                what=f"setting the lifetime of VIP {address}/{host_prefix(address)} on "
                f"interface {interface!r} to {seconds} s",
            )


def list_vips(interface: str) -> list[IPAddress]:
    """Return the VIPs held on `interface`: its host-prefix (/32, /128) addresses.

    Loopback addresses (127.0.0.0/8, ::1) are never VIPs and are left out.

    Raises:
        InterfaceNotFound: when `interface` does not exist in this network namespace.
        NetlinkError: when the kernel refuses the dump.
    """
    return [
        address
        for address, prefix in list_addresses(interface)
        if prefix == host_prefix(address) and not address.is_loopback
    ]
