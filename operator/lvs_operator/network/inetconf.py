"""Per-interface IPv4 settings (net.ipv4.conf.<interface>.*) through netlink.

A real server's init container has CAP_NET_ADMIN but a read-only /proc/sys, so it cannot
write `net.ipv4.conf.eth0.arp_ignore` the usual way. The kernel also takes these values in
RTM_SETLINK: IFLA_AF_SPEC -> AF_INET -> IFLA_INET_CONF, one u32 attribute per setting,
whose type is the setting's IPV4_DEVCONF_* number. RTM_GETLINK returns them as a flat u32
array in the same place. `conf.all` and `conf.default` have no interface and cannot be set
this way (RTM_NEWNETCONF answers EOPNOTSUPP); they can still be read from /proc/sys.

For arp_ignore, arp_announce and rp_filter the kernel uses the higher of `all` and the
interface's value (IN_DEV_MAXCONF), see `effective`.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Mapping

from pyroute2.netlink import nla, nlmsg

from lvs_operator.network import _netlink as nl
from lvs_operator.network.errors import NetlinkError, NetworkError
from lvs_operator.network.links import get_link
from lvs_operator.network.sysctl import PROC_SYS, Root, read_sysctl_int

# enum IPV4_DEVCONF_* of linux/ip.h (checked against the 6.1 uapi header: FORWARDING = 1,
# RP_FILTER = 8, ARP_ANNOUNCE = 18, ARP_IGNORE = 19); keys are the /proc/sys file names.
IPV4_DEVCONF: dict[str, int] = {
    name: number
    for number, name in enumerate(
        (
            "forwarding",
            "mc_forwarding",
            "proxy_arp",
            "accept_redirects",
            "secure_redirects",
            "send_redirects",
            "shared_media",
            "rp_filter",
            "accept_source_route",
            "bootp_relay",
            "log_martians",
            "tag",
            "arp_filter",
            "medium_id",
            "disable_xfrm",
            "disable_policy",
            "force_igmp_version",
            "arp_announce",
            "arp_ignore",
            "promote_secondaries",
            "arp_accept",
            "arp_notify",
            "accept_local",
            "src_valid_mark",
            "proxy_arp_pvlan",
            "route_localnet",
            "igmpv2_unsolicited_report_interval",
            "igmpv3_unsolicited_report_interval",
            "ignore_routes_with_linkdown",
            "drop_unicast_in_l2_multicast",
            "drop_gratuitous_arp",
            "bc_forwarding",
            "arp_evict_nocarrier",
        ),
        start=1,
    )
}

# Settings whose effective value is max(conf.all, conf.<interface>) in the kernel.
MAX_OF_ALL = frozenset({"arp_ignore", "arp_announce", "rp_filter"})


class InetConfSetMsg(nlmsg):  # type: ignore[misc]
    """RTM_SETLINK carrying IFLA_AF_SPEC -> AF_INET -> IFLA_INET_CONF -> {devconf id: u32}.

    Built on pyroute2's plain `nlmsg`, not its `ifinfmsg`: the latter encodes AF_INET as a
    fixed struct and silently sends an empty block, which the kernel acknowledges as a
    success while changing nothing. Not derived from `LinkMsg` either: pyroute2 caches a
    class's compiled attribute table on the class, and a subclass would inherit its
    parent's (where IFLA_INET_CONF is raw bytes).
    """

    fields = nl.LinkMsg.fields
    nla_map = ((nl.IFLA_AF_SPEC, "IFLA_AF_SPEC", "af_spec"),)

    class af_spec(nla):  # type: ignore[misc]  # pyroute2 finds nested classes by name
        nla_flags = nl.NLA_F_NESTED
        nla_map = ((socket.AF_INET, "AF_INET", "af_inet"),)

        class af_inet(nla):  # type: ignore[misc]
            nla_flags = nl.NLA_F_NESTED
            nla_map = ((nl.IFLA_INET_CONF, "IFLA_INET_CONF", "inet_conf"),)

            class inet_conf(nla):  # type: ignore[misc]
                nla_flags = nl.NLA_F_NESTED
                nla_map = tuple((number, name, "uint32") for name, number in IPV4_DEVCONF.items())


def _check_names(values: Mapping[str, int]) -> None:
    unknown = sorted(set(values) - set(IPV4_DEVCONF))
    if unknown:
        raise ValueError(
            f"unknown IPv4 interface setting(s) {unknown}; known: {sorted(IPV4_DEVCONF)}"
        )
    for name, value in values.items():
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"IPv4 interface setting {name} = {value} is not a u32")


def _set_msg(index: int, values: Mapping[str, int]) -> InetConfSetMsg:
    _check_names(values)
    msg = InetConfSetMsg()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = index
    conf = [(name, values[name]) for name in IPV4_DEVCONF if name in values]
    msg["attrs"] = [
        ("IFLA_AF_SPEC", {"attrs": [("AF_INET", {"attrs": [("IFLA_INET_CONF", {"attrs": conf})]})]})
    ]
    return msg


def parse_link_conf(data: bytes) -> tuple[str, dict[str, int] | None]:
    """Return (interface name, its IPv4 settings) from one RTM_NEWLINK message.

    The settings are None when the message has no AF_INET block (an interface without
    IPv4). Settings this module does not name (from a newer kernel) are left out.

    Raises:
        ValueError: when the IFLA_INET_CONF array is not a whole number of u32.
    """
    msg = nl.decode(nl.LinkMsg, data)
    name: str = msg.get_attr("IFLA_IFNAME") or ""
    raw = msg.get(("IFLA_AF_SPEC", "AF_INET", "IFLA_INET_CONF"))
    if raw is None:
        return name, None
    raw = bytes(raw)
    if len(raw) % 4:
        raise ValueError(f"IFLA_INET_CONF of {name!r} is {len(raw)} bytes, not u32s")
    array = struct.unpack(f"={len(raw) // 4}I", raw)
    return name, {
        setting: array[number - 1]
        for setting, number in IPV4_DEVCONF.items()
        if number <= len(array)
    }


def get_inet_conf(interface: str) -> dict[str, int]:
    """Return the IPv4 settings of `interface` (its own values, not max'ed with `all`).

    Raises:
        InterfaceNotFound: when `interface` does not exist in this network namespace.
        NetworkError: when it has no IPv4 configuration (IPv4 disabled on it).
        NetlinkError: when the kernel refuses the request.
    """
    link = get_link(interface)
    msg = nl.LinkMsg()
    msg["index"] = link.index
    with nl.RouteSocket() as rt:
        replies = rt.request(
            msg, nl.RTM_GETLINK, 0, what=f"reading IPv4 settings of interface {interface!r}"
        )
    conf = parse_link_conf(replies[0])[1] if replies else None
    if conf is None:
        raise NetworkError(
            f"interface {interface!r} has no IPv4 configuration (IPv4 is disabled on it): "
            "its arp_ignore / arp_announce / rp_filter cannot be read or set"
        )
    return conf


def set_inet_conf(interface: str, values: Mapping[str, int]) -> dict[str, int]:
    """Set IPv4 settings of `interface` (net.ipv4.conf.<interface>.<name>) and read them back.

    Needs CAP_NET_ADMIN only; /proc/sys may be read-only.

    Returns:
        every IPv4 setting of the interface as read back after the change.

    Raises:
        ValueError: for an unknown setting name or a value that is not a u32.
        InterfaceNotFound: when `interface` does not exist in this network namespace.
        NetlinkError: when the kernel refuses (EPERM without CAP_NET_ADMIN), or a value
            reads back different from what was set.
    """
    _check_names(values)
    link = get_link(interface)
    settings = ", ".join(f"{k}={v}" for k, v in values.items())
    what = f"setting {settings} on interface {interface!r} (net.ipv4.conf.{interface}.*)"
    with nl.RouteSocket() as rt:
        rt.request(_set_msg(link.index, values), nl.RTM_SETLINK, 0, what=what)
    after = get_inet_conf(interface)
    wrong = {k: after.get(k) for k, v in values.items() if after.get(k) != v}
    if wrong:
        # The kernel acknowledged but did not apply: never trust the ACK alone.
        raise NetlinkError(
            errno.EIO,
            what,
            f"the kernel acknowledged, but it reads back as {wrong}",
        )
    return after


def read_conf_all(name: str, *, root: Root = PROC_SYS) -> int:
    """Return net.ipv4.conf.all.<name> from /proc/sys (readable even when mounted read-only).

    Raises:
        SysctlError: when it cannot be read.
    """
    return read_sysctl_int(f"net/ipv4/conf/all/{name}", root=root)


def effective(name: str, interface_value: int, all_value: int) -> int:
    """Return the value the kernel acts on for the setting `name` of an interface.

    For arp_ignore, arp_announce and rp_filter that is the higher of `all` and the
    interface's value; for other settings this function is not meant to be used.

    Raises:
        ValueError: for a setting whose effective value is not max(all, interface).
    """
    if name not in MAX_OF_ALL:
        raise ValueError(f"{name}: the kernel does not combine it as max(all, interface)")
    return max(interface_value, all_value)
