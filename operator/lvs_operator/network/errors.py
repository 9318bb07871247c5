"""Errors raised by `lvs_operator.network`.

Every message says what was wrong, where (interface, address, sysctl name) and what to do.
"""

from __future__ import annotations

import errno as _errno
import os


class NetworkError(Exception):
    """A network setting could not be read or changed."""


class InterfaceNotFound(NetworkError):
    """The named network interface does not exist in this network namespace.

    Attributes:
        interface: the name that was asked for.
    """

    def __init__(self, interface: str, present: list[str] | None = None) -> None:
        here = f" (interfaces here: {', '.join(present)})" if present else ""
        super().__init__(
            f"network interface {interface!r} does not exist in this network namespace{here}: "
            "check the interface name (for a director: spec.directors.interface)"
        )
        self.interface = interface


class NetlinkError(NetworkError):
    """The kernel refused a netlink request.

    Attributes:
        errno: the kernel's error number (positive).
        detail: the kernel's extended-ack message, or "".
    """

    def __init__(self, code: int, what: str, detail: str = "", hint: str = "") -> None:
        name = _errno.errorcode.get(code, str(code))
        text = f"{what}: {os.strerror(code)} ({name})"
        if detail:
            text += f": {detail}"
        if hint:
            text += f"; {hint}"
        elif code == _errno.EPERM:
            text += "; the process needs CAP_NET_ADMIN in this network namespace"
        super().__init__(text)
        self.errno = code
        self.detail = detail


class UnsupportedLinkKind(NetlinkError):
    """The kernel has no driver for a link kind (for example the ipip module is missing).

    Attributes:
        kind: the link kind that was asked for ("ipip", "dummy", ...).
    """

    def __init__(self, kind: str, what: str, detail: str = "") -> None:
        super().__init__(
            _errno.EOPNOTSUPP,
            what,
            detail,
            hint=f"this kernel has no {kind!r} link type: load its module on the node "
            f"(`modprobe {kind}`)",
        )
        self.kind = kind


class SysctlError(NetworkError):
    """A /proc/sys value could not be read, written, or did not read back as written.

    Attributes:
        name: the sysctl in dotted form, for example "net.ipv4.vs.conntrack".
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"sysctl {name}: {message}")
        self.name = name
