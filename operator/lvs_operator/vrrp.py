"""VRRP for the directors, as keepalived runs it: which instances, their configuration, the
files the agent and the keepalived container share, and keepalived's notifications. Pure:
imports `model` only; no I/O but the file helpers at the bottom (which take a folder).

Why keepalived's VRRP carries the directors' liveness (issue 14): it fails over with no
control plane at all (0.23-0.33 s at advert_int 0.05-0.1, measured), it is the engine the
LVS world trusts, it switches the IPVS sync daemons with its instances, and it reloads
without disturbing instances that did not change. The API server only says who the
directors are (their Leases: membership) and which VIPs exist (VirtualServers).

**Instances.** A VIP's directors are ranked by rendezvous weight (`rank`), as before. VIPs
are grouped into one VRRP instance by *the first two directors of their ranking* and their
set of candidates: every VIP of an instance is held by the same director, and when it dies
they all go to the same second choice, so a dead director's VIPs still spread over the
others (by their second choice). The instance's ranking beyond the second place is the
rendezvous order of the instance itself. N directors make at most N x (N - 1) instances for
one candidate set (3 directors: 6; 10: 90), far below keepalived's limits (255 VRIDs per
segment and family; 100 instances at advert_int 0.1 cost 60 % of an emulated CPU).
A director that joins or leaves (its Lease appears or is deleted) changes only the
instances whose first two places it enters or leaves; a director that dies changes nothing
here: its Lease stays, and VRRP itself moves its VIPs.

**Priorities.** Rank 0 gets 250, rank 1 240, and so on (never below 1; 255 is VRRP's
address owner). keepalived breaks equal priorities by the higher address.

**VRIDs.** Every director must give an instance the same VRID, from the same inputs: the
VRID is a hash of the instance's name into the configured range, and a collision takes the
next free VRID in name order. All directors see the same VirtualServers and Leases, so they
compute the same table; VRIDs change only when a collision appears or goes.

**Addresses.** Adverts go from this director's address on the VRRP interface to its peers'
(unicast: `unicast_src_ip`, `unicast_peer`, `check_unicast_src`), IPv4. IPv6 VIPs ride in
the same instances as `virtual_ipaddress_excluded` (keepalived holds them with the others;
VRRPv3 adverts of one family cannot list the other's addresses).

**The shared folder** (an emptyDir in the agent pod; `Paths`): the agent writes
`instances.json` (what the keepalived container's watchdog and guard need), then
`keepalived.conf`; the keepalived container (`lvs-operator keepalived`) reloads keepalived
when the configuration changes. keepalived writes state changes to `notify.fifo`
(`vrrp_notify_fifo`), which the agent reads (`parse_notification`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lvs_operator.model import IPAddress

FORMAT_VERSION = 1
DEFAULT_DIR = Path("/run/lvs-operator/keepalived")
PRIORITY_TOP = 250
PRIORITY_STEP = 10
INSTANCE_PREFIX = "lvs-"

# keepalived's notification states (vrrp_notify_fifo lines: INSTANCE "name" STATE prio).
MASTER = "MASTER"
BACKUP = "BACKUP"
FAULT = "FAULT"
STOP = "STOP"
MASTER_RX_LOWER_PRI = "MASTER_RX_LOWER_PRI"  # a master that heard a lower priority: master


class VRRPError(ValueError):
    """What the VRRP plan cannot do (out of VRIDs, an address of the wrong kind)."""


@dataclass(frozen=True, slots=True)
class Member:
    """A director as its Lease describes it.

    Attributes:
        node: its node name.
        address: its IPv4 address on the VRRP interface (adverts go to and from it); None
            when its Lease does not say (it has none, or is an older agent): it is then
            nobody's unicast peer.
        labels: its Node's labels (which VirtualServers select it).
    """

    node: str
    address: ipaddress.IPv4Address | None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Want:
    """A VIP to be held by one of the directors: what one VirtualServer (or several that
    share the VIP) asks of VRRP.

    Attributes:
        vip: the address.
        selector: the directors it may be held by (spec.directors.nodeSelector).
        interface: where this director would hold it (None: not this director's VIP, or
            no interface known; it still takes part in the VRID table).
    """

    vip: IPAddress
    selector: Mapping[str, str]
    interface: str | None = None


@dataclass(frozen=True, slots=True)
class Instance:
    """One VRRP instance.

    Attributes:
        name: `lvs-` and a hash of the ranking and candidates: the same on every director.
        vrid: its virtual router id on the segment.
        ranking: the candidate directors, best first (priority by place).
        vips: the VIPs it holds with the interface each goes on (on this director; None
            where unknown).
    """

    name: str
    vrid: int
    ranking: tuple[str, ...]
    vips: tuple[tuple[IPAddress, str | None], ...]

    def priority(self, node: str) -> int:
        """Return `node`'s VRRP priority here (250 for the first, 10 less per place).

        Raises:
            ValueError: when `node` is not a candidate.
        """
        return max(1, PRIORITY_TOP - PRIORITY_STEP * self.ranking.index(node))


def weight(key: str, node: str) -> int:
    """Return the rendezvous weight of director `node` for `key`: stable across processes
    and machines (sha256, not `hash`)."""
    digest = hashlib.sha256(f"{key}\0{node}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def rank(key: str, nodes: Iterable[str]) -> list[str]:
    """Return `nodes` best first for `key` (highest weight; ties by name)."""
    return sorted(nodes, key=lambda node: (weight(key, node), node), reverse=True)


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Return whether a node with `labels` matches `selector` (every label equal)."""
    return all(labels.get(key) == value for key, value in selector.items())


def parse_vrids(text: str) -> tuple[int, int]:
    """Return the VRID range `text` ("1-255", "100-199", "7") names.

    Raises:
        VRRPError: when it is not one or two numbers from 1 to 255, low first.
    """
    low, _, high = text.strip().partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise VRRPError(f"VRID range {text!r}: write LOW-HIGH, e.g. 1-255") from None
    if not 1 <= first <= last <= 255:
        raise VRRPError(f"VRID range {text!r}: VRIDs are 1 to 255, low first")
    return first, last


def plan(wants: Iterable[Want], members: Mapping[str, Member], *, me: str,
         vrids: tuple[int, int] = (1, 255)) -> tuple[list[Instance], dict[IPAddress, str]]:
    """Group the VIPs into instances.

    Args:
        wants: every VIP of the site (all VirtualServers, not only this director's: the
            VRID table must be the same everywhere); the first want of a VIP decides.
        members: the directors by node name, this one included.
        me: this director.
        vrids: the VRID range (`parse_vrids`).

    Returns:
        (the instances this director takes part in, by name; for each VIP that can have
        no instance, why). A VIP with one candidate only has no instance (its director
        holds it alone). A candidate without an address keeps its place in the ranking
        (every director must compute the same instances) but is nobody's peer.

    Raises:
        VRRPError: when the site needs more instances than the range has VRIDs.
    """
    groups: dict[str, tuple[tuple[str, ...], list[tuple[IPAddress, str | None]]]] = {}
    alone: dict[IPAddress, str] = {}
    seen: set[IPAddress] = set()
    for want in wants:
        if want.vip in seen:
            continue
        seen.add(want.vip)
        candidates = sorted(n for n, m in members.items() if selects(want.selector, m.labels))
        if len(candidates) < 2:
            alone[want.vip] = "one director only"
            continue
        first = rank(str(want.vip), candidates)[:2]
        key = "\0".join([*first, "|", *candidates])
        name = INSTANCE_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:10]
        if name not in groups:
            rest = rank(name, (n for n in candidates if n not in first))
            groups[name] = (tuple(first + rest), [])
        groups[name][1].append((want.vip, want.interface))
    table = assign_vrids(sorted(groups), vrids)
    instances = [Instance(name=name, vrid=table[name], ranking=ranking,
                          vips=tuple(sorted(vips, key=lambda v: (v[0].version, int(v[0])))))
                 for name, (ranking, vips) in sorted(groups.items()) if me in ranking]
    return instances, alone


def assign_vrids(names: Sequence[str], vrids: tuple[int, int]) -> dict[str, int]:
    """Return a VRID for each instance name: its hash into the range, the next free one (in
    name order) on a collision.

    Raises:
        VRRPError: when there are more names than VRIDs.
    """
    first, last = vrids
    size = last - first + 1
    if len(names) > size:
        raise VRRPError(f"{len(names)} VRRP instances needed but the VRID range "
                        f"{first}-{last} has {size}: widen LVS_VRRP_VRIDS")
    taken: dict[int, str] = {}
    table: dict[str, int] = {}
    for name in sorted(names):
        slot = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % size
        while first + slot in taken:
            slot = (slot + 1) % size
        taken[first + slot] = name
        table[name] = first + slot
    return table


# --- keepalived's configuration -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Options:
    """How this director runs VRRP (the agent's VRRP settings).

    Attributes:
        interface: where adverts go out and come in.
        address: this director's IPv4 address there (unicast_src_ip).
        advert_seconds: advert interval (VRRPv3: centiseconds, >= 0.01); a master is
            declared dead after about 3 of them.
        preempt_delay_seconds: how long a director that comes back waits before it takes
            its VIPs back (keepalived's preempt_delay; 0 = at once).
        garp_refresh_seconds: gratuitous ARP / NA repeated by the master this often (whole
            seconds; keepalived's vrrp_garp_master_refresh): clients left on the old MAC
            after a partition heals come back within it, not after 15-40 s.
    """

    interface: str
    address: ipaddress.IPv4Address
    advert_seconds: float = 0.1
    preempt_delay_seconds: float = 5.0
    garp_refresh_seconds: int = 1


@dataclass(frozen=True, slots=True)
class Paths:
    """The files the agent and the keepalived container share, in one folder."""

    root: Path = DEFAULT_DIR

    @property
    def config(self) -> Path:
        return self.root / "keepalived.conf"

    @property
    def instances(self) -> Path:
        return self.root / "instances.json"

    @property
    def fifo(self) -> Path:
        return self.root / "notify.fifo"

    @property
    def pid(self) -> Path:
        return self.root / "keepalived.pid"

    @property
    def vrrp_pid(self) -> Path:
        return self.root / "vrrp.pid"


def render(instances: Sequence[Instance], members: Mapping[str, Member], *, me: str,
           options: Options, paths: Paths, stamp: str = "") -> str:
    """Return keepalived.conf for this director.

    `stamp` goes into a comment: a new one makes the keepalived container reload, after
    which keepalived writes the state of its backup instances to the FIFO again (not of
    its masters: an agent that starts takes those from the kernel)."""
    advert = _seconds(options.advert_seconds)
    lines = [
        "# Written by lvs-operator's agent: changes are overwritten.",
        f"# stamp {stamp}" if stamp else "#",
        "global_defs {",
        f"    router_id {_quote(me)}",
        f"    vrrp_notify_fifo {paths.fifo}",
        "    fifo_write_vrrp_states_on_reload",
        f"    vrrp_garp_master_refresh {max(0, int(options.garp_refresh_seconds))}",
        "    vrrp_check_unicast_src",
        "}",
    ]
    for inst in instances:
        peers = [members[n].address for n in inst.ranking if n != me and members[n].address]
        v4 = [(vip, dev) for vip, dev in inst.vips if vip.version == 4]
        v6 = [(vip, dev) for vip, dev in inst.vips if vip.version == 6]
        lines += [
            "",
            f"# ranking: {', '.join(inst.ranking)}",
            f"vrrp_instance {inst.name} {{",
            "    state BACKUP",
            f"    interface {options.interface}",
            f"    virtual_router_id {inst.vrid}",
            f"    priority {inst.priority(me)}",
            f"    advert_int {advert}",
            "    version 3",
            f"    preempt_delay {_seconds(options.preempt_delay_seconds)}",
            f"    unicast_src_ip {options.address}",
            "    check_unicast_src",
            "    unicast_peer {",
            *(f"        {peer}" for peer in peers),
            "    }",
            "    virtual_ipaddress {",
            *(f"        {_address(vip, dev)}" for vip, dev in v4),
            "    }",
        ]
        if v6:
            lines += ["    virtual_ipaddress_excluded {",
                      *(f"        {_address(vip, dev)}" for vip, dev in v6),
                      "    }"]
        lines.append("}")
    return "\n".join(lines) + "\n"


def _address(vip: IPAddress, dev: str | None) -> str:
    bits = 32 if vip.version == 4 else 128
    return f"{vip}/{bits}" + (f" dev {dev}" if dev else "")


def _seconds(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") or "0"


def _quote(text: str) -> str:
    return text if text.replace("-", "").replace(".", "").replace("_", "").isalnum() \
        else json.dumps(text)


# --- instances.json: what the keepalived container reads ------------------------------------

@dataclass(frozen=True, slots=True)
class Shared:
    """The contents of instances.json.

    Attributes:
        interface: the VRRP interface.
        advert_seconds: the advert interval.
        peers: the peers' addresses (the guard lets VRRP in from these only).
        vip_lifetime_seconds: the lifetime the watchdog keeps on held VIPs (0: no watchdog).
        instances: name -> (VRID, [(VIP, interface)]).
    """

    interface: str
    advert_seconds: float
    peers: tuple[ipaddress.IPv4Address, ...]
    vip_lifetime_seconds: int
    instances: Mapping[str, tuple[int, tuple[tuple[IPAddress, str | None], ...]]]

    def to_json(self) -> str:
        """Return the JSON text (stable: sorted)."""
        return json.dumps({
            "version": FORMAT_VERSION,
            "interface": self.interface,
            "advertSeconds": self.advert_seconds,
            "peers": sorted(str(p) for p in self.peers),
            "vipLifetimeSeconds": self.vip_lifetime_seconds,
            "instances": {name: {"vrid": vrid,
                                 "vips": [{"address": str(a), "interface": dev}
                                          for a, dev in vips]}
                          for name, (vrid, vips) in sorted(self.instances.items())},
        }, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Shared:
        """Parse instances.json.

        Raises:
            VRRPError: naming what is wrong.
        """
        try:
            doc = json.loads(text)
            if doc.get("version") != FORMAT_VERSION:
                raise VRRPError(f"instances.json: version {doc.get('version')!r}, "
                                f"expected {FORMAT_VERSION}")
            return cls(
                interface=str(doc["interface"]),
                advert_seconds=float(doc["advertSeconds"]),
                peers=tuple(ipaddress.IPv4Address(p) for p in doc["peers"]),
                vip_lifetime_seconds=int(doc["vipLifetimeSeconds"]),
                instances={str(name): (int(i["vrid"]), tuple(
                    (ipaddress.ip_address(v["address"]), v.get("interface"))
                    for v in i["vips"])) for name, i in doc["instances"].items()})
        except VRRPError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise VRRPError(f"instances.json: {e}") from None


def shared(instances: Sequence[Instance], members: Mapping[str, Member], *, me: str,
           options: Options, vip_lifetime_seconds: int) -> Shared:
    """Return instances.json's contents for `instances`."""
    peers = {members[n].address for inst in instances for n in inst.ranking
             if n != me and members[n].address is not None}
    return Shared(interface=options.interface, advert_seconds=options.advert_seconds,
                  peers=tuple(sorted(a for a in peers if a is not None)),
                  vip_lifetime_seconds=vip_lifetime_seconds,
                  instances={i.name: (i.vrid, i.vips) for i in instances})


def write_atomically(path: Path, text: str) -> bool:
    """Write `text` to `path` by rename (readers see the old or the new file, never half);
    return False when it held `text` already (nothing written).

    Raises:
        OSError: when the folder cannot be written.
    """
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


# --- notifications ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Notification:
    """One line of keepalived's notify FIFO about an instance."""

    instance: str
    state: str
    priority: int


def parse_notification(line: str) -> Notification | None:
    """Return the instance notification `line` holds (`INSTANCE "lvs-x" MASTER 250`), None
    for any other line (groups, checker lines, garbage)."""
    parts = line.strip().split(" ")
    if len(parts) != 4 or parts[0] != "INSTANCE":
        return None
    name = parts[1]
    if len(name) < 2 or name[0] != '"' or name[-1] != '"':
        return None
    try:
        priority = int(parts[3])
    except ValueError:
        return None
    return Notification(name[1:-1], parts[2], priority)


def holds(state: str | None) -> bool:
    """Return whether an instance in `state` holds its VIPs."""
    return state in (MASTER, MASTER_RX_LOWER_PRI)
