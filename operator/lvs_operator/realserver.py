"""Real-server setup: make this network namespace accept a VIP's traffic without answering ARP.

`setup` runs inside a real server's network namespace (the `realserver-init` container of a
pod) with CAP_NET_ADMIN only and /proc/sys read-only, so every change goes through netlink.
It is idempotent: a second run changes nothing and says so. Nothing is undone later: the
settings live and die with the pod's network namespace.

What an LVS administrator does by hand, and why:

- DR: the director forwards frames addressed to our MAC with the VIP as the destination IP,
  so the VIP must be local (on `lo`, as a /32 or /128) but never announced: with
  `arp_ignore=1` an interface answers ARP only for addresses configured on itself (not on
  `lo`), and with `arp_announce=2` our own ARP requests never carry the VIP as sender
  address. Both are set on every interface that speaks ARP; `lo` and NOARP devices never
  send or answer ARP, so they need nothing. The kernel acts on max(conf.all, conf.<iface>)
  for both, and conf.all cannot be set from here (netlink cannot, /proc/sys is
  read-only), so a conf.all.arp_ignore that defeats the interface value is reported as a
  failure naming the sysctl.
- Tunnel: the director encapsulates the packet (IP-in-IP) to our own address; the `ipip`
  fallback device `tunl0` decapsulates it, so it must exist and be up, and the VIP goes on
  it. The decapsulated packet comes in on tunl0 from the client's address, which is
  routed out of another interface, so strict reverse-path filtering (rp_filter=1) drops
  it: rp_filter is set to 0 on tunl0 and on every other interface (the outer packet may
  arrive on any of them). Effective rp_filter is max(conf.all, conf.<iface>): conf.all = 1
  defeats us (failure naming net.ipv4.conf.all.rp_filter); conf.all = 2 (loose) works
  while the client is routable from here (a default route) and is reported as a note.
  arp_ignore / arp_announce are set as for DR, since an interface would otherwise answer
  ARP for the VIP held on tunl0.
- IPv6: there is no ARP. A VIP on `lo` is not answered by neighbour discovery on other
  interfaces (Linux answers a solicitation only for addresses of the interface it arrived
  on), so DR needs no more than the address. Tunnel mode for IPv6 VIPs (ip6tnl0 / sit0)
  is not supported yet and is refused before anything is changed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from lvs_operator.model import IPAddress
from lvs_operator.network.errors import NetlinkError, NetworkError, UnsupportedLinkKind
from lvs_operator.network.inetconf import get_inet_conf, read_conf_all, set_inet_conf
from lvs_operator.network.links import Link, ensure_link, get_link, list_links, set_up
from lvs_operator.network.vip import add_vip, host_prefix, list_vips

Mode = Literal["dr", "tunnel"]
MODES: tuple[Mode, ...] = ("dr", "tunnel")

LOOPBACK = "lo"
TUNNEL_DEVICE = "tunl0"
TUNNEL_KIND = "ipip"

ARP_IGNORE = 1  # answer ARP only for addresses configured on the receiving interface
ARP_ANNOUNCE = 2  # always use the best local address of the outgoing interface as ARP source
RP_FILTER = 0  # no reverse-path check: decapsulated packets come from anywhere
# Effective arp_ignore values under which an interface does not answer ARP for an address
# held on another interface: 1, 2 (1 + sender in the same subnet), 8 (never answer).
# 0 answers for any local address; 3 answers for any address that is not scope host.
ARP_IGNORE_SILENT = frozenset({1, 2, 8})
RP_FILTER_LOOSE = 2

_ADMIN_HINT = (
    "this container cannot change conf.all (/proc/sys is read-only and netlink cannot set "
    "it): set it on the node before the pod starts (new pod namespaces copy the node's "
    "conf.all), or for the pod with spec.securityContext.sysctls (the kubelet must allow it "
    "with --allowed-unsafe-sysctls)"
)


class SetupError(NetworkError):
    """Real-server setup could not make the namespace right.

    Attributes:
        problems: one message per thing that could not be fixed, each naming the setting
            and what to do.
        report: what was checked and changed before the failure (may be partial).
    """

    def __init__(self, mode: str, problems: list[str], report: Report | None = None) -> None:
        lines = "\n".join(f"  - {p}" for p in problems)
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        super().__init__(f"real-server setup ({mode}) failed, {count}:\n{lines}")
        self.problems = problems
        self.report = report


@dataclass(frozen=True)
class Check:
    """One thing `setup` made sure of.

    Attributes:
        subject: what was checked ("VIP 192.0.2.10/32 on lo", "eth0 arp_ignore").
        value: its value now, with context ("1 (conf.all 0, effective 1)").
        before: its value before, or None when it was already right.
    """

    subject: str
    value: str
    before: str | None = None

    @property
    def changed(self) -> bool:
        """Return True when `setup` changed this."""
        return self.before is not None

    def __str__(self) -> str:
        """Render as one report line."""
        if self.changed:
            return f"changed  {self.subject}: {self.value} (was {self.before})"
        return f"ok       {self.subject}: {self.value}"


@dataclass(frozen=True)
class Report:
    """What `setup` checked, what it changed, and notes for the reader."""

    mode: Mode
    vips: tuple[IPAddress, ...]
    checks: tuple[Check, ...]
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> list[Check]:
        """Return the checks that `setup` had to change (empty on a second run)."""
        return [c for c in self.checks if c.changed]

    def __str__(self) -> str:
        """Render a human summary: a headline, one line per check, then the notes."""
        kind = "DR" if self.mode == "dr" else "Tunnel"
        vips = ", ".join(str(v) for v in self.vips)
        changed = len(self.changed)
        right = len(self.checks) - changed
        if changed:
            headline = f"{changed} changed, {right} already right"
        else:
            headline = f"nothing changed: all {right} settings were already right"
        lines = [f"{kind} real server for {vips}: {headline}"]
        lines += [f"  {c}" for c in self.checks]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


class _Setup:
    """The state of one `setup` run: checks, notes and problems as they are found."""

    def __init__(self, mode: Mode, vips: tuple[IPAddress, ...]) -> None:
        self.mode = mode
        self.vips = vips
        self.checks: list[Check] = []
        self.notes: list[str] = []
        self.problems: list[str] = []

    def report(self) -> Report:
        return Report(self.mode, self.vips, tuple(self.checks), tuple(self.notes))

    def fail(self, problem: str) -> SetupError:
        return SetupError(self.mode, [problem], self.report())

    def device_up(self, name: str) -> None:
        changed = set_up(name)  # reads the flag back
        self.checks.append(Check(f"{name}", "up", "down" if changed else None))

    def tunnel_device(self) -> None:
        try:
            created = ensure_link(TUNNEL_DEVICE, TUNNEL_KIND)
        except UnsupportedLinkKind:
            raise self.fail(
                f"Tunnel mode needs the {TUNNEL_KIND} kernel module for its {TUNNEL_DEVICE} "
                f"device, and this node's kernel has no {TUNNEL_KIND} link type (the module "
                f"is not loaded and could not be loaded): run `modprobe {TUNNEL_KIND}` on the "
                f"node, and list {TUNNEL_KIND} in /etc/modules-load.d/ to keep it after a "
                "reboot"
            ) from None
        self.checks.append(
            Check(
                f"{TUNNEL_DEVICE} ({TUNNEL_KIND} device)",
                "present",
                "absent" if created else None,
            )
        )

    def vips_on(self, device: str) -> None:
        for vip in self.vips:
            added = add_vip(device, vip)
            self.checks.append(
                Check(f"VIP {vip}/{host_prefix(vip)} on {device}", "present",
                      "absent" if added else None)
            )
        held = set(list_vips(device))
        for vip in self.vips:
            if vip not in held:
                self.problems.append(
                    f"VIP {vip}/{host_prefix(vip)} does not read back on {device} after "
                    "being added (something removed it): run the setup again"
                )

    def interface_conf(
        self, link: Link, wanted: dict[str, int], all_values: dict[str, int]
    ) -> dict[str, int] | None:
        """Give `link` the `wanted` settings where its own value is not acceptable.

        Returns the effective values (max of conf.all and the interface's) after the
        change, or None when the interface has no IPv4 configuration.
        """
        try:
            before = get_inet_conf(link.name)
        except NetlinkError:
            raise  # the kernel refused: a failure, not a missing configuration
        except NetworkError:
            self.notes.append(f"{link.name} has no IPv4 configuration: nothing to set there")
            return None
        # The interface's own value must be right by itself: conf.all is checked apart,
        # and an acceptable stricter value an administrator chose is left alone.
        todo = {name: v for name, v in wanted.items() if not _acceptable(name, before[name])}
        after = set_inet_conf(link.name, todo) if todo else before  # reads back
        result: dict[str, int] = {}
        for name in wanted:
            result[name] = eff = max(after[name], all_values[name])
            value = f"{after[name]} (conf.all {all_values[name]}, effective {eff})"
            was = str(before[name]) if name in todo else None
            self.checks.append(Check(f"{link.name} {name}", value, was))
        return result


def _acceptable(name: str, effective: int) -> bool:
    if name == "arp_ignore":
        return effective in ARP_IGNORE_SILENT
    if name == "arp_announce":
        return effective == ARP_ANNOUNCE
    if name == "rp_filter":
        return effective == RP_FILTER
    raise AssertionError(name)


def _unique(vips: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    seen: dict[IPAddress, None] = {}
    for vip in vips:
        seen.setdefault(ipaddress.ip_address(vip), None)
    return tuple(seen)


def setup(vips: Iterable[IPAddress], mode: Mode) -> Report:
    """Make the current network namespace a DR or Tunnel real server for `vips`.

    Idempotent: values already right are left alone and reported as such. Every value is
    read back after it is set.

    Returns:
        a Report of every check, each marked changed or already right, with notes.

    Raises:
        ValueError: when `mode` is not "dr" or "tunnel", or `vips` is empty.
        SetupError: when something cannot be made right: the ipip module is missing
            (Tunnel), conf.all.arp_ignore or conf.all.rp_filter defeats the per-interface
            value, IPv6 VIPs in Tunnel mode, or the kernel refuses a change (no
            CAP_NET_ADMIN). Its message names each setting and what to do.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    unique = _unique(vips)
    if not unique:
        raise ValueError("real-server setup needs at least one VIP")
    run = _Setup(mode, unique)
    try:
        _setup(run)
    except SetupError:
        raise
    except NetworkError as e:
        raise run.fail(str(e)) from None
    if run.problems:
        raise SetupError(mode, run.problems, run.report())
    return run.report()


def _setup(run: _Setup) -> None:
    v4 = [v for v in run.vips if v.version == 4]
    v6 = [v for v in run.vips if v.version == 6]
    if run.mode == "tunnel" and v6:
        raise run.fail(
            f"IPv6 VIPs ({', '.join(map(str, v6))}) in Tunnel mode are not supported by "
            "realserver-init yet (they need an ip6tnl0 or sit0 device): use DirectRouting "
            "for IPv6 VIPs"
        )

    if run.mode == "dr":
        device = LOOPBACK
    else:
        run.tunnel_device()
        device = TUNNEL_DEVICE
    run.device_up(device)
    run.vips_on(device)

    links = [link for link in list_links() if not link.loopback]
    if v4:
        _silence_arp(run, [link for link in links if link.arp])
    if run.mode == "tunnel":
        tunnel = get_link(TUNNEL_DEVICE)
        others = [link for link in links if link.index != tunnel.index]
        _relax_rp_filter(run, [tunnel, *others])
    if v6:
        run.notes.append(
            "IPv6 VIPs on lo need no ARP-like setting: Linux answers neighbour "
            "solicitations only for addresses of the interface they arrive on"
        )


def _silence_arp(run: _Setup, links: list[Link]) -> None:
    if not links:
        run.notes.append("no interface speaks ARP here: arp_ignore / arp_announce not needed")
        return
    all_values = {name: read_conf_all(name) for name in ("arp_ignore", "arp_announce")}
    defeated: list[str] = []
    for link in links:
        eff = run.interface_conf(
            link, {"arp_ignore": ARP_IGNORE, "arp_announce": ARP_ANNOUNCE}, all_values
        )
        if eff is not None and eff["arp_ignore"] not in ARP_IGNORE_SILENT:
            defeated.append(link.name)
        # arp_announce cannot be defeated: 2 is its highest value.
    if defeated:
        holder = LOOPBACK if run.mode == "dr" else TUNNEL_DEVICE
        run.problems.append(
            f"net.ipv4.conf.all.arp_ignore is {all_values['arp_ignore']}; the kernel uses "
            f"max(all, interface), so {', '.join(defeated)} still answer ARP for the VIPs "
            f"held on {holder}: net.ipv4.conf.all.arp_ignore must be 0, 1, 2 or 8; "
            f"{_ADMIN_HINT}"
        )


def _relax_rp_filter(run: _Setup, links: list[Link]) -> None:
    all_values = {"rp_filter": read_conf_all("rp_filter")}
    loose: list[str] = []
    strict: list[str] = []
    for link in links:
        eff = run.interface_conf(link, {"rp_filter": RP_FILTER}, all_values)
        if eff is None or eff["rp_filter"] == RP_FILTER:
            continue
        (loose if eff["rp_filter"] == RP_FILTER_LOOSE else strict).append(link.name)
    if strict:
        run.problems.append(
            f"net.ipv4.conf.all.rp_filter is {all_values['rp_filter']} (strict); the kernel "
            f"uses max(all, interface), so {', '.join(strict)} still filter strictly and "
            f"packets decapsulated on {TUNNEL_DEVICE} (sent by clients that are routed via "
            "another interface) are dropped: net.ipv4.conf.all.rp_filter must be 0 or 2; "
            f"{_ADMIN_HINT}"
        )
    elif loose:
        run.notes.append(
            "net.ipv4.conf.all.rp_filter is 2 (loose): tunnelled packets are accepted as long "
            "as the clients' addresses are routable from this namespace (a default route)"
        )
