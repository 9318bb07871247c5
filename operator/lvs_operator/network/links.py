"""Network interfaces of the current network namespace: list, look up, bring up, create tunnels."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from lvs_operator.network import _netlink as nl
from lvs_operator.network.errors import InterfaceNotFound, NetlinkError, UnsupportedLinkKind


@dataclass(frozen=True)
class Link:
    """A network interface as the kernel reports it.

    Attributes:
        name: the interface name ("eth0").
        index: the interface index.
        flags: the IFF_* flags.
        kind: the driver's link kind ("veth", "ipip", ...) or None for devices without one
            (lo, most physical NICs).
        mac: the link-layer address (6 bytes for Ethernet; empty when there is none).
    """

    name: str
    index: int
    flags: int
    kind: str | None = None
    mac: bytes = b""

    @property
    def up(self) -> bool:
        """Return True when the interface is administratively up."""
        return bool(self.flags & nl.IFF_UP)

    @property
    def loopback(self) -> bool:
        """Return True for the loopback interface."""
        return bool(self.flags & nl.IFF_LOOPBACK)

    @property
    def arp(self) -> bool:
        """Return True when the interface speaks ARP (not loopback, not IFF_NOARP)."""
        return not self.loopback and not self.flags & nl.IFF_NOARP

    @property
    def mac_text(self) -> str:
        """Return the link-layer address as `aa:bb:cc:dd:ee:ff` ("" when there is none)."""
        return ":".join(f"{b:02x}" for b in self.mac)


def _link_from(data: bytes) -> Link:
    index, flags, attrs = nl.link_fields(data)
    info = nl.attributes(attrs[nl.IFLA_LINKINFO], 0) if nl.IFLA_LINKINFO in attrs else {}
    kind = info.get(nl.IFLA_INFO_KIND)
    return Link(
        name=attrs.get(nl.IFLA_IFNAME, b"").rstrip(b"\0").decode(errors="replace"),
        index=index,
        flags=flags,
        kind=kind.rstrip(b"\0").decode(errors="replace") if kind is not None else None,
        mac=attrs.get(nl.IFLA_ADDRESS, b""),
    )


def list_links() -> list[Link]:
    """Return every interface of the current network namespace, by index.

    Raises:
        NetlinkError: when the kernel refuses the dump.
    """
    with nl.RouteSocket() as rt:
        replies = rt.request(
            nl.LinkMsg(), nl.RTM_GETLINK, nl.NLM_F_DUMP, what="listing network interfaces"
        )
    return sorted((_link_from(r) for r in replies), key=lambda link: link.index)


def interface_exists(name: str) -> bool:
    """Return whether this network namespace has an interface called `name`."""
    try:
        socket.if_nametoindex(name)
    except OSError:  # ENODEV; also a name too long to be one
        return False
    return True


def get_link(name: str) -> Link:
    """Return the interface called `name`.

    Raises:
        InterfaceNotFound: when there is no such interface in this network namespace.
        NetlinkError: when the kernel refuses the request for another reason.
    """
    try:
        with nl.RouteSocket() as rt:
            replies = rt.request(nl.link_request(name), nl.RTM_GETLINK, 0,
                                 what=f"reading interface {name!r}")
    except NetlinkError as e:
        if e.errno == errno.ENODEV:
            raise InterfaceNotFound(name, [link.name for link in list_links()]) from None
        raise
    if not replies:
        raise InterfaceNotFound(name, [link.name for link in list_links()])
    return _link_from(replies[0])


def set_up(name: str) -> bool:
    """Bring the interface `name` up.

    Returns:
        True when it was down and has been brought up, False when it already was up.

    Raises:
        InterfaceNotFound: when there is no such interface.
        NetlinkError: when the kernel refuses (EPERM without CAP_NET_ADMIN) or the
            interface still reads back as down.
    """
    link = get_link(name)
    if link.up:
        return False
    msg = nl.LinkMsg()
    msg["index"] = link.index
    msg["flags"] = nl.IFF_UP
    msg["change"] = nl.IFF_UP
    with nl.RouteSocket() as rt:
        rt.request(msg, nl.RTM_SETLINK, 0, what=f"bringing interface {name!r} up")
    if not get_link(name).up:
        raise NetlinkError(
            errno.EIO, f"bringing interface {name!r} up", "it still reads back as down"
        )
    return True


def ensure_link(name: str, kind: str) -> bool:
    """Make sure an interface `name` of link kind `kind` exists (for example tunl0 / ipip).

    Creating the first device of a kind makes the kernel load its module; for tunnel kinds
    the module then creates its fallback device (tunl0 for ipip) in every namespace, and
    our request finds it there. Either way the device ends up existing.

    Returns:
        True when the device did not exist before this call, False when it already existed.

    Raises:
        UnsupportedLinkKind: when the kernel has no driver for `kind` (module missing).
        NetlinkError: when `name` exists with another kind, or the kernel refuses.
    """
    what = f"creating interface {name!r} (kind {kind})"
    try:
        existing: Link | None = get_link(name)
    except InterfaceNotFound:
        existing = None
    created = False
    if existing is None:
        msg = nl.LinkMsg()
        msg["attrs"] = [
            ("IFLA_IFNAME", name),
            ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", kind)]}),
        ]
        try:
            with nl.RouteSocket() as rt:
                rt.request(msg, nl.RTM_NEWLINK, nl.NLM_F_CREATE | nl.NLM_F_EXCL, what=what)
        except NetlinkError as e:
            if e.errno == errno.EOPNOTSUPP:
                raise UnsupportedLinkKind(kind, what, e.detail) from None
            if e.errno != errno.EEXIST:
                raise
            # EEXIST: loading the module (on our request) created the fallback device under
            # this very name. It did not exist before this call either way.
        created = True
        existing = get_link(name)
    if existing.kind != kind:
        raise NetlinkError(
            errno.EEXIST,
            what,
            f"an interface of kind {existing.kind or 'unknown'} already has that name",
            hint=f"rename or delete it so that {name!r} can be the {kind} device",
        )
    return created
