"""Kernel settings under /proc/sys, for the network namespace of the calling thread.

/proc/sys/net resolves to the namespace of the thread that opens the file, so a thread that
has entered another namespace (setns) reads and writes that namespace's values.

The director's IPVS settings live here (`apply_director_sysctls`). A real server usually
sees /proc/sys read-only; it may still read values (`read_sysctl`), and sets its
per-interface values through netlink instead (`lvs_operator.network.inetconf`).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from lvs_operator.network.errors import SysctlError

# Paths are plain strings here: `ipvs apply` sets sysctls and runs without loading pathlib.
PROC_SYS = "/proc/sys"
Root = str | os.PathLike[str]


def sysctl_path(name: str, *, root: Root = PROC_SYS) -> str:
    """Return the file of the sysctl `name` ("net.ipv4.ip_forward") under `root`.

    Dots separate path components; an interface name containing a dot ("eth0.100") must be
    given with slashes instead ("net/ipv4/conf/eth0.100/rp_filter").
    """
    parts = name.split("/") if "/" in name else name.split(".")
    return os.path.join(root, *parts)


def read_sysctl(name: str, *, root: Root = PROC_SYS) -> str:
    """Return the value of the sysctl `name`, stripped of surrounding whitespace.

    Raises:
        SysctlError: when it does not exist or cannot be read.
    """
    path = sysctl_path(name, root=root)
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        raise SysctlError(name, f"{path} does not exist in this kernel") from None
    except OSError as e:
        raise SysctlError(name, f"cannot read {path}: {e.strerror}") from None


def read_sysctl_int(name: str, *, root: Root = PROC_SYS) -> int:
    """Return the value of the integer sysctl `name`.

    Raises:
        SysctlError: when it does not exist, cannot be read, or is not an integer.
    """
    text = read_sysctl(name, root=root)
    try:
        return int(text)
    except ValueError:
        raise SysctlError(name, f"expected an integer, read {text!r}") from None


def write_sysctl(name: str, value: str, *, root: Root = PROC_SYS) -> None:
    """Write `value` to the sysctl `name` (no read-back; see `ensure_sysctl`).

    Raises:
        SysctlError: when it does not exist, /proc/sys is read-only, or the kernel refuses
            the value.
    """
    path = sysctl_path(name, root=root)
    try:
        # One write() of the whole value: the kernel parses each write separately.
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, f"{value}\n".encode())
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise SysctlError(name, f"{path} does not exist in this kernel") from None
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            hint = (
                "/proc/sys is read-only or not writable here: run this in a privileged "
                "container (or with a writable /proc/sys and CAP_NET_ADMIN in the network "
                "namespace's owning user namespace)"
            )
        else:
            hint = "the kernel refused the value"
        raise SysctlError(name, f"cannot write {value!r} to {path}: {e.strerror}; {hint}") from None


@dataclass(frozen=True, slots=True)
class SysctlChange:
    """One sysctl checked by `ensure_sysctl`: its value before and after."""

    name: str
    before: str
    after: str

    @property
    def changed(self) -> bool:
        """Return True when the value was changed."""
        return self.before != self.after

    def __str__(self) -> str:
        """Render as `name: before -> after` or `name = value (unchanged)`."""
        if self.changed:
            return f"{self.name}: {self.before} -> {self.after}"
        return f"{self.name} = {self.after} (unchanged)"


def ensure_sysctl(name: str, value: str, *, root: Root = PROC_SYS) -> SysctlChange:
    """Set the sysctl `name` to `value` unless it already has it, and read it back.

    Returns:
        the value before and after (equal when nothing had to change).

    Raises:
        SysctlError: when it cannot be read or written, or reads back different.
    """
    before = read_sysctl(name, root=root)
    if before == value:
        return SysctlChange(name, before, before)
    write_sysctl(name, value, root=root)
    after = read_sysctl(name, root=root)
    if after != value:
        raise SysctlError(name, f"wrote {value!r} but it reads back as {after!r}")
    return SysctlChange(name, before, after)


@dataclass(frozen=True, slots=True)
class DirectorSysctls:
    """The IPVS settings of a director's network namespace, with the reason for each default.

    Attributes:
        ip_forward: `net.ipv4.ip_forward`. NAT needs it: the director routes the real
            servers' replies back to the clients. None (the default) leaves it as it is,
            because DR and Tunnel do not need it and a node's forwarding is not ours to
            switch off; the agent passes True when it programs a NAT service.
        conntrack: `net.ipv4.vs.conntrack`. 1 keeps netfilter connection tracking entries
            for IPVS connections, which the SNAT (MASQUERADE) of NAT replies and any
            stateful firewall on the node rely on; kube-proxy's IPVS mode sets it too.
        expire_nodest_conn: `net.ipv4.vs.expire_nodest_conn`. 1 expires a connection
            whose real server was deleted at its next packet, so the client gets an RST
            and reconnects to a live server, instead of its packets being silently dropped
            until the entry times out (15 minutes for TCP): kubernetes #71358.
        expire_quiescent_template: `net.ipv4.vs.expire_quiescent_template`. 1 expires the
            persistence template of a real server whose weight is 0 (draining), so a
            persistent client moves to a live server instead of sticking to a pod that is
            going away for the whole persistence timeout: kubernetes #71809.
        conn_reuse_mode: `net.ipv4.vs.conn_reuse_mode`. 1 (the kernel's default) schedules
            a new connection that reuses a source port of an old one afresh. kube-proxy
            once set 0 (kubernetes #71114) to avoid a 1-second SYN drop with conntrack=1,
            and that made clients that reuse ports keep hitting removed or weight-0 servers
            forever (kubernetes #81775), which would defeat our drain. Linux 5.9 fixed the
            SYN drop (kubernetes #93297), so on supported kernels 1 is right.
    """

    ip_forward: bool | None = None
    conntrack: bool = True
    expire_nodest_conn: bool = True
    expire_quiescent_template: bool = True
    conn_reuse_mode: int = 1

    def values(self) -> list[tuple[str, str]]:
        """Return (sysctl name, value) for every setting to apply, in application order."""
        result: list[tuple[str, str]] = []
        if self.ip_forward is not None:
            result.append(("net.ipv4.ip_forward", str(int(self.ip_forward))))
        result += [
            ("net.ipv4.vs.conntrack", str(int(self.conntrack))),
            ("net.ipv4.vs.expire_nodest_conn", str(int(self.expire_nodest_conn))),
            ("net.ipv4.vs.expire_quiescent_template", str(int(self.expire_quiescent_template))),
            ("net.ipv4.vs.conn_reuse_mode", str(self.conn_reuse_mode)),
        ]
        return result


def apply_director_sysctls(
    settings: DirectorSysctls, *, root: Root = PROC_SYS
) -> list[SysctlChange]:
    """Apply `settings` to the current network namespace, reading every value back.

    Returns:
        one entry per sysctl that had to change (empty when all were already right).

    Raises:
        SysctlError: when /proc/sys/net/ipv4/vs is missing (the ip_vs module is not loaded),
            or a value cannot be written or reads back different.
    """
    vs = sysctl_path("net.ipv4.vs", root=root)
    if not os.path.isdir(vs):
        raise SysctlError(
            "net.ipv4.vs",
            f"{vs} is missing: the ip_vs kernel module is not loaded; load it on the node "
            "(`modprobe ip_vs`, and list it in /etc/modules-load.d/ to survive reboots)",
        )
    changes = [ensure_sysctl(name, value, root=root) for name, value in settings.values()]
    return [c for c in changes if c.changed]
