"""The IPVS table as plain, frozen values.

These types are the common language of every layer: `spec` produces them from a
VirtualServer document, `plan` compares them, the kernel boundary (`lvs_operator.ipvs`)
reads and writes them. Nothing here imports pyroute2, kopf or kubernetes.

Equality ignores statistics (`stats`, connection counters), so two tables compare equal
when the kernel would behave the same, whatever traffic they have seen.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Protocol(enum.Enum):
    """Layer-4 protocol of a virtual service; values are the kernel's IPPROTO numbers."""

    TCP = 6
    UDP = 17
    SCTP = 132


class Forwarding(enum.Enum):
    """How the director forwards to a real server; values are the kernel's IP_VS_CONN_F_*."""

    NAT = 0  # ipvsadm -m (masquerading)
    TUNNEL = 2  # ipvsadm -i
    DIRECT_ROUTING = 3  # ipvsadm -g (gatewaying)


class TunnelType(enum.Enum):
    """Encapsulation used with Forwarding.TUNNEL; values are IP_VS_CONN_F_TUNNEL_TYPE_*."""

    IPIP = 0
    GUE = 1
    GRE = 2


class TunnelChecksum(enum.Enum):
    """Checksum mode for GUE/GRE tunnels; values are IP_VS_TUNNEL_ENCAP_FLAG_*."""

    NONE = 0
    CHECKSUM = 1
    REMOTE = 2


class SchedulerFlag(enum.Enum):
    """Scheduler flags (ipvsadm -b); values are the kernel's IP_VS_SVC_F_SCHED* bits.

    The sh and mh schedulers read the same two bits: fallback (skip an unavailable server)
    and port (hash the source port too). `flag-3` is unused by current schedulers but kept so
    that a table written by ipvsadm round-trips.
    """

    FALLBACK = 0x08  # sh-fallback / mh-fallback
    PORT = 0x10  # sh-port / mh-port
    FLAG3 = 0x20


# Other IP_VS_SVC_F_* bits that `model` represents as fields of its own.
SVC_F_PERSISTENT = 0x01
SVC_F_ONEPACKET = 0x04

# Every scheduler the Linux kernel ships (net/netfilter/ipvs/ip_vs_*.c).
SCHEDULERS = frozenset(
    {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"}
)
# Schedulers that understand SchedulerFlag.FALLBACK / PORT.
HASHING_SCHEDULERS = frozenset({"sh", "mh"})

MAX_WEIGHT = 65535  # ipvsadm refuses more; the kernel takes an int but nobody needs more
MAX_THRESHOLD = 2**31 - 1


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """What identifies a virtual service in the kernel.

    Either `protocol` + `address` + `port` (a VIP:port service) or `fwmark` (a firewall-mark
    service, with `family` saying which address family it serves). Use `ServiceKey.inet` and
    `ServiceKey.mark` to build one.
    """

    family: int
    protocol: Protocol | None = None
    address: IPAddress | None = None
    port: int = 0
    fwmark: int = 0
    # Computed once, in __post_init__: keys are hashed again and again (tables, owned sets,
    # the ownership record) and plans sort thousands of them, while computing either runs
    # Python code (ipaddress, Enum). Set at construction rather than on first use: a slot
    # cannot be filled lazily without an unset state that pickling would trip over, and
    # this is the faster form anyway (timeit, 4,000 keys built, hashed three times and
    # sorted twice: 6.9 ms; 11.8 ms without slots and a lazy cache in the instance dict;
    # 17.5 ms with no cache). Made of integers only, so a copy carried to another process
    # (pickle) still holds the hash that process would compute (str and Enum hashes are per
    # process).
    _sort: tuple[int, int, int, int, int] = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sort = (
            self.family,
            self.fwmark,
            self.protocol.value if self.protocol else 0,
            int(self.address) if self.address is not None else 0,
            self.port,
        )
        object.__setattr__(self, "_sort", sort)
        object.__setattr__(self, "_hash", hash(sort))

    @classmethod
    def inet(cls, protocol: Protocol, address: IPAddress, port: int) -> ServiceKey:
        """Return the key of a VIP:port service."""
        return cls(address.version, protocol, address, port)

    @classmethod
    def mark(cls, fwmark: int, *, family: int = 4) -> ServiceKey:
        """Return the key of a firewall-mark service."""
        return cls(family=family, fwmark=fwmark)

    def __hash__(self) -> int:
        return self._hash

    def sort_key(self) -> tuple[int, int, int, int, int]:
        """Return a tuple that orders keys deterministically (addresses of both families)."""
        return self._sort

    def __str__(self) -> str:
        """Render like `ipvsadm -L -n`: `TCP 192.0.2.1:80` or `FWM 5 IPv4`."""
        if self.protocol is None or self.address is None:
            return f"FWM {self.fwmark} IPv{self.family}"
        return f"{self.protocol.name} {format_endpoint(self.address, self.port)}"


def format_endpoint(address: IPAddress, port: int) -> str:
    """Return `address:port`, with brackets around an IPv6 address."""
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


@dataclass(frozen=True, slots=True)
class Persistence:
    """Client affinity (ipvsadm -p / -M): the same client goes to the same real server.

    `prefix` is the client netmask as a prefix length (32 or 128 means one client address).
    """

    timeout: int = 300
    prefix: int = 32


@dataclass(frozen=True, slots=True)
class Stats:
    """Traffic counters and rates as the kernel reports them."""

    conns: int = 0
    in_packets: int = 0
    out_packets: int = 0
    in_bytes: int = 0
    out_bytes: int = 0
    cps: int = 0
    in_pps: int = 0
    out_pps: int = 0
    in_bps: int = 0
    out_bps: int = 0


@dataclass(frozen=True, slots=True)
class Tunnel:
    """Tunnel encapsulation of a real server in Tunnel mode. `port` is used by GUE only."""

    type: TunnelType = TunnelType.IPIP
    port: int = 0
    checksum: TunnelChecksum = TunnelChecksum.NONE


RealKey = tuple[IPAddress, int]


@dataclass(frozen=True, slots=True)
class RealServer:
    """A destination of a virtual service.

    `active_conns`, `inactive_conns`, `persistent_conns` and `stats` are read from the kernel
    and ignored by equality; everything else is what the kernel is told.
    """

    address: IPAddress
    port: int
    forwarding: Forwarding = Forwarding.DIRECT_ROUTING
    weight: int = 1
    upper_threshold: int = 0
    lower_threshold: int = 0
    tunnel: Tunnel | None = None
    active_conns: int = field(default=0, compare=False)
    inactive_conns: int = field(default=0, compare=False)
    persistent_conns: int = field(default=0, compare=False)
    stats: Stats | None = field(default=None, compare=False)

    @property
    def key(self) -> RealKey:
        """Return what identifies this real server within its virtual service."""
        return (self.address, self.port)

    def sort_key(self) -> tuple[int, int, int]:
        """Return a tuple that orders real servers deterministically."""
        return (self.address.version, int(self.address), self.port)

    @property
    def connections(self) -> int:
        """Return active + inactive connections: zero means a drained server may go."""
        return self.active_conns + self.inactive_conns

    def __str__(self) -> str:
        """Render as `address:port`."""
        return format_endpoint(self.address, self.port)


@dataclass(frozen=True, slots=True)
class VirtualService:
    """A virtual service and its real servers: one `ipvsadm -A` plus its `-a` lines."""

    key: ServiceKey
    scheduler: str = "wlc"
    flags: frozenset[SchedulerFlag] = frozenset()
    persistence: Persistence | None = None
    one_packet: bool = False
    reals: Mapping[RealKey, RealServer] = field(default_factory=dict)
    stats: Stats | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Mappings compare by content but are not hashable; freeze to a plain dict copy so
        # callers cannot mutate a service after building it.
        object.__setattr__(self, "reals", dict(self.reals))

    def __hash__(self) -> int:
        return hash((self.key, self.scheduler, self.flags, self.persistence, self.one_packet))

    def attributes(self) -> VirtualService:
        """Return this service without its real servers (what IPVS_CMD_SET_SERVICE sets)."""
        # Every field but `reals`, spelled out: `replace` costs twice as much, and a plan
        # from an empty table calls this once per service.
        return VirtualService(key=self.key, scheduler=self.scheduler, flags=self.flags,
                              persistence=self.persistence, one_packet=self.one_packet,
                              stats=self.stats)

    def with_reals(self, reals: Iterable[RealServer]) -> VirtualService:
        """Return a copy of this service holding exactly `reals`."""
        return replace(self, reals={r.key: r for r in reals})

    def __str__(self) -> str:
        """Render as the service key."""
        return str(self.key)


Table = Mapping[ServiceKey, VirtualService]


def table(services: Iterable[VirtualService]) -> dict[ServiceKey, VirtualService]:
    """Return a Table keyed by each service's key.

    Raises:
        ValueError: when two services share a key.
    """
    result: dict[ServiceKey, VirtualService] = {}
    for service in services:
        if service.key in result:
            raise ValueError(f"virtual service {service.key} is defined twice")
        result[service.key] = service
    return result


@dataclass(frozen=True, slots=True)
class Timeouts:
    """IPVS connection timeouts in seconds (ipvsadm --set tcp tcpfin udp); 0 = leave as is."""

    tcp: int = 0
    tcp_fin: int = 0
    udp: int = 0


class SyncState(enum.Enum):
    """Role of a connection-sync daemon; values are IP_VS_STATE_*."""

    MASTER = 1
    BACKUP = 2


@dataclass(frozen=True, slots=True)
class SyncDaemon:
    """A kernel IPVS connection-sync daemon (ipvsadm --start-daemon)."""

    state: SyncState
    interface: str
    sync_id: int = 0
