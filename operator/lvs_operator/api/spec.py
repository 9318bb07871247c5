"""Parse a VirtualServer document once, at the edge, into frozen `model` types.

`parse` checks everything the CRD checks (same rules, same field paths: a test walks one
table of cases through both) and raises `SpecError` naming the field path, what was wrong
and what to do. Everything after `parse` can trust its input.

`services` turns a parsed VirtualServer plus its real servers into the IPVS virtual
services a director must hold: one per entry of `spec.ports`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from lvs_operator import model
from lvs_operator.api import API_VERSION, KIND
from lvs_operator.model import (
    Forwarding,
    IPAddress,
    Persistence,
    Protocol,
    RealKey,
    RealServer,
    SchedulerFlag,
    ServiceKey,
    Tunnel,
    TunnelChecksum,
    TunnelType,
    VirtualService,
)

_T = TypeVar("_T")


FORWARDING = {
    "DirectRouting": Forwarding.DIRECT_ROUTING,
    "Tunnel": Forwarding.TUNNEL,
    "NAT": Forwarding.NAT,
}
TUNNEL_TYPES = {"ipip": TunnelType.IPIP, "gue": TunnelType.GUE, "gre": TunnelType.GRE}
TUNNEL_CHECKSUMS = {
    "none": TunnelChecksum.NONE,
    "checksum": TunnelChecksum.CHECKSUM,
    "remote": TunnelChecksum.REMOTE,
}
# ipvsadm's -b names; the scheduler prefix says which scheduler may use the flag.
SCHEDULER_FLAGS = {
    "sh-fallback": SchedulerFlag.FALLBACK,
    "sh-port": SchedulerFlag.PORT,
    "mh-fallback": SchedulerFlag.FALLBACK,
    "mh-port": SchedulerFlag.PORT,
}
MAX_PERSISTENCE_SECONDS = 31 * 24 * 3600
MAX_DRAIN_SECONDS = 7 * 24 * 3600
DEFAULT_DRAIN_SECONDS = 300

MAX_PORTS = 64
MAX_ADDRESSES = 256
MAX_NODE_SELECTOR_LABELS = 32
MAX_STATUS_CODES = 16
MAX_HTTP_PATH = 1024
# The dotted IPv4 masks a persistence netmask may be (/1 to /32), as the CRD lists them.
# (Integer arithmetic: building 32 IPv4Network objects was a visible part of the import.)
DOTTED_NETMASKS = {
    socket.inet_ntoa((0xFFFFFFFF << (32 - bits) & 0xFFFFFFFF).to_bytes(4, "big")): bits
    for bits in range(1, 33)
}
PROTOCOLS = {p.name: p for p in Protocol}
# The same patterns as the CRD's (Python's re and the API server's RE2 agree on these).
_SERVICE_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # a DNS-1035 label
_PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a DNS-1123 label
_INTERFACE = re.compile(r"[!-.0-9;-~]{1,15}")  # printable ASCII but '/' and ':'
_SHARING_KEY = _PORT_NAME  # a DNS-1123 label too
_HTTP_PATH = re.compile(r"/[!-~]*")
_LABEL_KEY = re.compile(
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
# The fields each object may have (built once: `_known` runs for every object of a document).
_SPEC_FIELDS = frozenset({
    "vip", "ports", "forwarding", "tunnel", "scheduler", "persistence", "onePacket",
    "backend", "weight", "connectionLimits", "directors", "healthCheck", "drain",
    "sharingKey",
})
_PORT_FIELDS = frozenset({"port", "protocol", "targetPort"})
_TUNNEL_FIELDS = frozenset({"type", "port", "checksum"})
_SCHEDULER_FIELDS = frozenset({"name", "flags"})
_PERSISTENCE_FIELDS = frozenset({"timeoutSeconds", "netmask"})
_BACKEND_FIELDS = frozenset({"service", "addresses"})
_SERVICE_FIELDS = frozenset({"name", "port"})
_ADDRESS_FIELDS = frozenset({"ip", "port", "weight"})  # of spec.backend.addresses[*]
_LIMITS_FIELDS = frozenset({"upper", "lower"})
_DIRECTORS_FIELDS = frozenset({"nodeSelector", "interface"})
_HEALTH_CHECK_FIELDS = frozenset({"tcp", "http", "intervalSeconds", "timeoutSeconds",
                                  "failureThreshold", "successThreshold"})
_HTTP_FIELDS = frozenset({"path", "statusCodes"})
_DRAIN_FIELDS = frozenset({"timeoutSeconds"})
_NO_FIELDS: frozenset[str] = frozenset()
_NO_FLAGS: frozenset[SchedulerFlag] = frozenset()
# The first octets of every IPv4 address `_global_unicast` may refuse (0.0.0.0, loopback,
# link-local, multicast, broadcast): any other is global unicast without further tests.
_SPECIAL_FIRST_OCTETS = frozenset({0, 127, 169, *range(224, 240), 255})


class SpecError(ValueError):
    """A VirtualServer document is invalid.

    Attributes:
        path: the offending field, e.g. `spec.ports[1].port`.
        reason: what was wrong and what to do.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Port:
    """One entry of `spec.ports`: a virtual service on the VIP."""

    port: int
    protocol: Protocol
    target_port: int | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A real server as resolved from the backend (static address or ready endpoint).

    `port` is the real server's port where it may differ from the virtual port (NAT only);
    None means the virtual port. `weight` None means the VirtualServer's default weight.
    """

    address: IPAddress
    port: int | None = None
    weight: int | None = None


@dataclass(frozen=True, slots=True)
class ServiceBackend:
    """`spec.backend.service`: the ready endpoints of a Kubernetes Service."""

    name: str
    port: str | int | None = None


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """`spec.healthCheck`: director-side checks of each real server."""

    kind: str  # "tcp" or "http"
    path: str = "/"
    status_codes: tuple[int, ...] = (200,)
    interval_seconds: int = 2
    timeout_seconds: int = 1
    failure_threshold: int = 3
    success_threshold: int = 1


@dataclass(frozen=True, slots=True)
class Directors:
    """`spec.directors`: which nodes direct this VirtualServer and where they hold the VIP."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    interface: str | None = None


# What an absent spec.directors means (shared: it is never changed).
_ALL_DIRECTORS = Directors()


@dataclass(frozen=True, slots=True)
class VirtualServer:
    """A parsed, validated VirtualServer."""

    namespace: str
    name: str
    vip: IPAddress
    ports: tuple[Port, ...]
    forwarding: Forwarding
    scheduler: str
    scheduler_flags: frozenset[SchedulerFlag]
    backend: ServiceBackend | tuple[Endpoint, ...]
    tunnel: Tunnel | None = None
    persistence: Persistence | None = None
    one_packet: bool = False
    weight: int = 1
    upper_threshold: int = 0
    lower_threshold: int = 0
    directors: Directors = _ALL_DIRECTORS
    health_check: HealthCheck | None = None
    drain_timeout_seconds: int = DEFAULT_DRAIN_SECONDS
    sharing_key: str = ""
    # The keys of `ports`, built once: a bulk file's keys are claimed, then made into
    # services, and each new key object would compute its hash again.
    _keys: tuple[ServiceKey, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keys", tuple(
            ServiceKey.inet(p.protocol, self.vip, p.port) for p in self.ports))

    @property
    def id(self) -> str:
        """Return `namespace/name`."""
        return f"{self.namespace}/{self.name}"

    @property
    def keys(self) -> list[ServiceKey]:
        """Return the keys of the virtual services this VirtualServer asks for, in the order
        of `ports` (a new list each time)."""
        return list(self._keys)


def parse(document: Mapping[str, Any], *, default_namespace: str = "default") -> VirtualServer:
    """Return the VirtualServer described by `document` (a parsed YAML/JSON object).

    Raises:
        SpecError: naming the first invalid field and what to do about it.
    """
    document = _object(document, "")
    if document.get("apiVersion") not in (None, API_VERSION):
        raise SpecError("apiVersion", f"must be {API_VERSION}, got {document.get('apiVersion')!r}")
    if document.get("kind") not in (None, KIND):
        raise SpecError("kind", f"must be {KIND}, got {document.get('kind')!r}")
    meta = _mapping(document, "metadata", "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError("metadata.name", "is required: give the VirtualServer a name")
    namespace = meta.get("namespace") or default_namespace
    spec = _mapping(document, "spec", "spec", required=True)
    return _Parser(spec).parse(namespace=str(namespace), name=name)


def services(vs: VirtualServer, endpoints: Iterable[Endpoint]) -> list[VirtualService]:
    """Return the virtual services of `vs`, each holding a real server per endpoint.

    Endpoints of the other address family are left out unless the mode is Tunnel (the only
    mode in which the kernel forwards between families).

    Raises:
        SpecError: when an endpoint asks for a port remap that the mode cannot do.
    """
    forwarding = vs.forwarding
    if forwarding is Forwarding.TUNNEL:
        endpoints = list(endpoints)
    else:
        version = vs.vip.version
        endpoints = [e for e in endpoints if e.address.version == version]
    nat = forwarding is Forwarding.NAT
    result = []
    keys = vs.keys
    for index, port in enumerate(vs.ports):
        reals: dict[RealKey, RealServer] = {}
        for endpoint in endpoints:
            if nat:
                real_port = port.target_port or endpoint.port or port.port
            elif endpoint.port is None or endpoint.port == port.port:
                real_port = port.port
            else:
                raise SpecError(
                    f"spec.ports[{index}]",
                    f"real server {endpoint.address} listens on port {endpoint.port} but "
                    f"{_mode_name(forwarding)} cannot remap port {port.port}: use NAT, or "
                    "make the real server listen on the virtual port",
                )
            # Positional, in field order: a bulk file has thousands of real servers.
            reals[(endpoint.address, real_port)] = RealServer(
                endpoint.address, real_port, forwarding,
                vs.weight if endpoint.weight is None else endpoint.weight,
                vs.upper_threshold, vs.lower_threshold, vs.tunnel)
        result.append(
            VirtualService(
                key=keys[index],
                scheduler=vs.scheduler,
                flags=vs.scheduler_flags,
                persistence=vs.persistence,
                one_packet=vs.one_packet,
                reals=reals,
            )
        )
    return result


def _mode_name(forwarding: Forwarding) -> str:
    return next(name for name, value in FORWARDING.items() if value is forwarding)


class _Parser:
    """Walks `spec`, keeping the field path for error messages."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = spec

    def parse(self, *, namespace: str, name: str) -> VirtualServer:
        spec = self.spec
        _known(spec, "spec", _SPEC_FIELDS)
        vip = _address(spec.get("vip"), "spec.vip", required=True)
        forwarding = _enum(spec.get("forwarding", "DirectRouting"), "spec.forwarding", FORWARDING)
        ports = self._ports(forwarding)
        scheduler, flags = self._scheduler()
        upper, lower = self._limits()
        vs = VirtualServer(
            namespace=namespace,
            name=name,
            vip=vip,
            ports=ports,
            forwarding=forwarding,
            tunnel=self._tunnel(forwarding),
            scheduler=scheduler,
            scheduler_flags=flags,
            persistence=self._persistence(vip),
            one_packet=self._one_packet(ports),
            backend=self._backend(vip, forwarding, ports),
            weight=_int(spec.get("weight", 1), "spec.weight", 0, model.MAX_WEIGHT),
            upper_threshold=upper,
            lower_threshold=lower,
            directors=self._directors(),
            health_check=self._health_check(),
            drain_timeout_seconds=self._drain(),
            sharing_key=self._sharing_key(),
        )
        return vs

    def _sharing_key(self) -> str:
        raw = self.spec.get("sharingKey")
        if raw is None:
            return ""
        if not isinstance(raw, str) or not _SHARING_KEY.fullmatch(raw):
            raise SpecError("spec.sharingKey", f"{raw!r} is not a sharing key: 1 to 63 "
                            "lower-case letters, digits and '-', starting and ending with a "
                            "letter or digit")
        return raw

    def _ports(self, forwarding: Forwarding) -> tuple[Port, ...]:
        raw = _list(self.spec.get("ports"), "spec.ports", required=True, most=MAX_PORTS)
        ports = []
        seen: dict[tuple[int, str], int] = {}
        # As for addresses: plain values skip the checking calls and the path strings.
        for index, item in enumerate(raw):
            if type(item) is not dict or not item.keys() <= _PORT_FIELDS:
                item = _object(item, _port_path(index))
                _known(item, _port_path(index), _PORT_FIELDS)
            port = item.get("port")
            if type(port) is not int or not 1 <= port <= 65535:
                port = _int(port, f"{_port_path(index)}.port", 1, 65535, required=True)
            name = item.get("protocol", "TCP")
            protocol = PROTOCOLS.get(name) if isinstance(name, str) else None
            if protocol is None:
                protocol = _enum(name, f"{_port_path(index)}.protocol", PROTOCOLS)
            target = item.get("targetPort")
            if target is not None:
                if forwarding is not Forwarding.NAT:
                    raise SpecError(
                        f"{_port_path(index)}.targetPort",
                        f"only NAT can remap ports; {_mode_name(forwarding)} delivers to the "
                        "virtual port: remove targetPort or use forwarding: NAT",
                    )
                if type(target) is not int or not 1 <= target <= 65535:
                    target = _int(target, f"{_port_path(index)}.targetPort", 1, 65535)
            if (port, name) in seen:
                raise SpecError(
                    _port_path(index),
                    f"{protocol.name} port {port} is already listed as spec.ports"
                    f"[{seen[(port, name)]}]: list each port/protocol once",
                )
            seen[(port, name)] = index
            ports.append(Port(port, protocol, target))
        return tuple(ports)

    def _tunnel(self, forwarding: Forwarding) -> Tunnel | None:
        raw = self.spec.get("tunnel")
        if forwarding is not Forwarding.TUNNEL:
            if raw is not None:
                raise SpecError("spec.tunnel", "is only for forwarding: Tunnel: remove it, or set "
                                "forwarding: Tunnel")
            return None
        if raw is None:
            return Tunnel()
        raw = _object(raw, "spec.tunnel")
        _known(raw, "spec.tunnel", _TUNNEL_FIELDS)
        kind = _enum(raw.get("type", "ipip"), "spec.tunnel.type", TUNNEL_TYPES)
        checksum = _enum(raw.get("checksum", "none"), "spec.tunnel.checksum", TUNNEL_CHECKSUMS)
        port = 0
        if kind is TunnelType.GUE:
            if raw.get("port") is None:
                raise SpecError("spec.tunnel.port", "is required for type gue: the UDP port on "
                                "which the real servers decapsulate GUE")
            port = _int(raw.get("port"), "spec.tunnel.port", 1, 65535)
        elif raw.get("port") is not None:
            raise SpecError("spec.tunnel.port", "is only for type gue (its UDP port): remove it")
        if kind is TunnelType.IPIP and checksum is not TunnelChecksum.NONE:
            raise SpecError("spec.tunnel.checksum", "ipip has no checksum: use none, or type gue "
                            "or gre")
        if kind is TunnelType.GRE and checksum is TunnelChecksum.REMOTE:
            raise SpecError("spec.tunnel.checksum", "remote checksum offload is for gue only: use "
                            "none or checksum")
        return Tunnel(type=kind, port=port, checksum=checksum)

    def _scheduler(self) -> tuple[str, frozenset[SchedulerFlag]]:
        raw = _object(self.spec.get("scheduler", {}), "spec.scheduler")
        _known(raw, "spec.scheduler", _SCHEDULER_FIELDS)
        name = raw.get("name", "wlc")
        if not isinstance(name, str) or name not in model.SCHEDULERS:
            raise SpecError(
                "spec.scheduler.name",
                f"unknown scheduler {name!r}: use one of {', '.join(sorted(model.SCHEDULERS))}",
            )
        if "flags" not in raw:
            return str(name), _NO_FLAGS
        flags = set()
        raw_flags = _list(raw["flags"], "spec.scheduler.flags", most=2)
        for index, flag in enumerate(raw_flags):
            path = f"spec.scheduler.flags[{index}]"
            if not isinstance(flag, str) or flag not in SCHEDULER_FLAGS:
                raise SpecError(path, f"unknown flag {flag!r}: use {', '.join(SCHEDULER_FLAGS)}")
            if flag in raw_flags[:index]:
                raise SpecError(path, f"{flag} is listed twice: list it once")
            if not flag.startswith(f"{name}-"):
                raise SpecError(path, f"is not a flag of the {name} scheduler: sh-* flags are "
                                "for sh, mh-* flags for mh; remove it or change the scheduler")
            flags.add(SCHEDULER_FLAGS[flag])
        return str(name), frozenset(flags)

    def _persistence(self, vip: IPAddress) -> Persistence | None:
        raw = self.spec.get("persistence")
        if raw is None:
            return None
        raw = _object(raw, "spec.persistence")
        _known(raw, "spec.persistence", _PERSISTENCE_FIELDS)
        timeout = _int(raw.get("timeoutSeconds", 300), "spec.persistence.timeoutSeconds",
                       1, MAX_PERSISTENCE_SECONDS)
        return Persistence(timeout=timeout, prefix=_netmask(raw.get("netmask"), vip))

    def _one_packet(self, ports: tuple[Port, ...]) -> bool:
        raw = self.spec.get("onePacket", False)
        if not isinstance(raw, bool):
            raise SpecError("spec.onePacket", f"must be true or false, got {raw!r}")
        if raw and any(p.protocol is not Protocol.UDP for p in ports):
            raise SpecError("spec.onePacket", "one-packet scheduling is for UDP ports only: "
                            "remove onePacket or the TCP/SCTP ports")
        return raw

    def _backend(self, vip: IPAddress, forwarding: Forwarding,
                 ports: tuple[Port, ...]) -> ServiceBackend | tuple[Endpoint, ...]:
        raw = self.spec.get("backend")
        raw = _object(raw, "spec.backend")
        _known(raw, "spec.backend", _BACKEND_FIELDS)
        if ("service" in raw) == ("addresses" in raw):
            raise SpecError("spec.backend", "give exactly one of service or addresses")
        if "service" in raw:
            svc = raw["service"]
            svc = _object(svc, "spec.backend.service")
            _known(svc, "spec.backend.service", _SERVICE_FIELDS)
            name = svc.get("name")
            if not isinstance(name, str) or not name:
                raise SpecError("spec.backend.service.name", "is required: the Service's name")
            if len(name) > 63 or not _SERVICE_NAME.fullmatch(name):
                raise SpecError("spec.backend.service.name", f"{name!r} is not a Service name "
                                "(lower case letters, digits and '-', starting with a letter, "
                                "at most 63)")
            port = svc.get("port")
            if isinstance(port, str):
                if not _PORT_NAME.fullmatch(port):
                    raise SpecError("spec.backend.service.port", f"{port!r} is not a Service "
                                    "port name (lower case letters, digits and '-', at most "
                                    "63) or number")
            elif port is not None:
                port = _int(port, "spec.backend.service.port", 1, 65535)
            return ServiceBackend(name=name, port=port)
        addresses = _list(raw["addresses"], "spec.backend.addresses", most=MAX_ADDRESSES)
        if not addresses:
            raise SpecError("spec.backend.addresses", "must not be empty: give at least one "
                            "address, or use backend.service")
        # A bulk file has thousands of addresses: the common case below calls no function of
        # ours and builds no path string (`_address_path` does, for an error); anything
        # unusual goes through the full checks.
        fields = _ADDRESS_FIELDS
        version = vip.version
        mixed = forwarding is Forwarding.TUNNEL
        nat = forwarding is Forwarding.NAT
        # The port every address may name: the virtual port (not NAT), the targetPort (NAT).
        # None when a port per address is refused or a mismatch needs a closer look.
        free_port = ports[0].target_port if nat else ports[0].port
        if len(ports) > 1 and (nat or any(p.port != free_port for p in ports)):
            free_port = None
        endpoints = []
        # Real servers seen, by the text of an IPv4 address (a dotted quad has one spelling:
        # `_ip` takes no other) and by the address object for IPv6 (many spellings): hashing
        # an address object runs Python code.
        seen: set[tuple[str | IPAddress, int | None]] = set()
        for index, item in enumerate(addresses):
            if type(item) is not dict or not fields.issuperset(item):
                item = _object(item, _address_path(index))
                _known(item, _address_path(index), fields)
            ip = item.get("ip")
            try:
                address = _ip(ip, required=True)
            except _Invalid as error:
                raise SpecError(f"{_address_path(index)}.ip", error.reason) from None
            family = address.version
            if family != version and not mixed:
                raise SpecError(f"{_address_path(index)}.ip", f"{address} is not an "
                                f"IPv{version} address like the VIP; only forwarding: Tunnel "
                                "may mix IPv4 and IPv6: use an address of the VIP's family or "
                                "forwarding: Tunnel")
            port = item.get("port")
            if port is not None and (port != free_port or type(port) is not int):
                port = self._address_port(port, _address_path(index), forwarding, ports)
            weight = item.get("weight")
            if weight is not None and (type(weight) is not int
                                       or not 0 <= weight <= model.MAX_WEIGHT):
                weight = _int(weight, f"{_address_path(index)}.weight", 0, model.MAX_WEIGHT)
            real = (ip if family == 4 else address, port)
            if real in seen:
                raise SpecError(f"{_address_path(index)}.ip", f"{address} is listed twice: list "
                                "each real server once")
            seen.add(real)
            endpoints.append(Endpoint(address, port, weight))
        return tuple(endpoints)

    @staticmethod
    def _address_port(raw: object, path: str, forwarding: Forwarding,
                      ports: tuple[Port, ...]) -> int:
        """Return the port of `spec.backend.addresses[i]` (`path`), if the mode allows one."""
        port = _int(raw, f"{path}.port", 1, 65535)
        if forwarding is Forwarding.NAT and len(ports) > 1:
            raise SpecError(f"{path}.port", "with several spec.ports a port per address is "
                            "ambiguous: remove it and give each spec.ports entry its "
                            "targetPort")
        if forwarding is Forwarding.NAT and ports[0].target_port not in (None, port):
            raise SpecError(f"{path}.port", "differs from spec.ports[0].targetPort, which "
                            "already sets the real servers' port: remove one of them")
        if forwarding is not Forwarding.NAT and any(p.port != port for p in ports):
            raise SpecError(f"{path}.port", f"{_mode_name(forwarding)} cannot remap ports: "
                            "the real server must listen on the virtual port; remove port or "
                            "use forwarding: NAT")
        return port

    # Absent optional sections return their defaults at once (most documents have none).

    def _limits(self) -> tuple[int, int]:
        if "connectionLimits" not in self.spec:
            return 0, 0
        raw = _object(self.spec["connectionLimits"], "spec.connectionLimits")
        _known(raw, "spec.connectionLimits", _LIMITS_FIELDS)
        upper = _int(raw.get("upper", 0), "spec.connectionLimits.upper", 0, model.MAX_THRESHOLD)
        lower = _int(raw.get("lower", 0), "spec.connectionLimits.lower", 0, model.MAX_THRESHOLD)
        if lower and (not upper or lower > upper):
            raise SpecError("spec.connectionLimits.lower",
                            "must not exceed upper, and needs an upper limit (a full server "
                            "is let back in below lower): lower it or raise upper")
        return upper, lower

    def _directors(self) -> Directors:
        if "directors" not in self.spec:
            return _ALL_DIRECTORS
        raw = _object(self.spec["directors"], "spec.directors")
        _known(raw, "spec.directors", _DIRECTORS_FIELDS)
        selector = raw.get("nodeSelector", {})
        selector = _object(selector, "spec.directors.nodeSelector")
        if len(selector) > MAX_NODE_SELECTOR_LABELS:
            raise SpecError("spec.directors.nodeSelector", f"has {len(selector)} labels; at "
                            f"most {MAX_NODE_SELECTOR_LABELS} are allowed")
        for key, value in selector.items():
            if not _label_key(key):
                raise SpecError("spec.directors.nodeSelector", f"{key!r} is not a label key: "
                                "use name or prefix/name (name: at most 63 letters, digits, "
                                "'-', '_', '.'; prefix: a DNS subdomain)")
            if not isinstance(value, str) or len(value) > 63 \
                    or not _LABEL_VALUE.fullmatch(value):
                raise SpecError(f"spec.directors.nodeSelector.{key}", f"{value!r} is not a "
                                "label value (at most 63 letters, digits, '-', '_', '.', "
                                "starting and ending with a letter or digit)")
        interface = raw.get("interface")
        if interface is not None and (not isinstance(interface, str) or not
                                      _valid_interface_name(interface)):
            raise SpecError("spec.directors.interface",
                            f"{interface!r} is not a valid interface name (1 to 15 printable "
                            "ASCII characters, no '/', ':' or space)")
        return Directors(node_selector=dict(selector), interface=interface)

    def _health_check(self) -> HealthCheck | None:
        raw = self.spec.get("healthCheck")
        if raw is None:
            return None
        path = "spec.healthCheck"
        raw = _object(raw, path)
        _known(raw, path, _HEALTH_CHECK_FIELDS)
        if ("tcp" in raw) == ("http" in raw):
            raise SpecError(path, "give exactly one of tcp or http")
        interval = _int(raw.get("intervalSeconds", 2), f"{path}.intervalSeconds", 1, 3600)
        timeout = _int(raw.get("timeoutSeconds", 1), f"{path}.timeoutSeconds", 1, 3600)
        if timeout > interval:
            raise SpecError(f"{path}.timeoutSeconds", "must not exceed intervalSeconds; lower "
                            "it or raise intervalSeconds")
        check = HealthCheck(
            kind="tcp",
            interval_seconds=interval,
            timeout_seconds=timeout,
            failure_threshold=_int(raw.get("failureThreshold", 3),
                                   f"{path}.failureThreshold", 1, 100),
            success_threshold=_int(raw.get("successThreshold", 1),
                                   f"{path}.successThreshold", 1, 100),
        )
        if "tcp" in raw:
            _known(_object(raw["tcp"], f"{path}.tcp"), f"{path}.tcp", _NO_FIELDS)
            return check
        http = raw["http"]
        http = _object(http, f"{path}.http")
        _known(http, f"{path}.http", _HTTP_FIELDS)
        url_path = http.get("path", "/")
        if not isinstance(url_path, str) or len(url_path) > MAX_HTTP_PATH \
                or not _HTTP_PATH.fullmatch(url_path):
            raise SpecError(f"{path}.http.path", f"must start with '/' and be printable ASCII "
                            f"without spaces (percent-encode the rest), at most {MAX_HTTP_PATH} "
                            "characters")
        codes: list[int] = []
        raw_codes = _list(http.get("statusCodes", [200]), f"{path}.http.statusCodes",
                          required=True, most=MAX_STATUS_CODES)
        for i, code in enumerate(raw_codes):
            code = _int(code, f"{path}.http.statusCodes[{i}]", 100, 599)
            if code in codes:
                raise SpecError(f"{path}.http.statusCodes[{i}]", f"{code} is listed twice: "
                                "list it once")
            codes.append(code)
        return replace(check, kind="http", path=url_path, status_codes=tuple(codes))

    def _drain(self) -> int:
        if "drain" not in self.spec:
            return DEFAULT_DRAIN_SECONDS
        raw = _object(self.spec["drain"], "spec.drain")
        _known(raw, "spec.drain", _DRAIN_FIELDS)
        return _int(raw.get("timeoutSeconds", DEFAULT_DRAIN_SECONDS), "spec.drain.timeoutSeconds",
                    0, MAX_DRAIN_SECONDS)


def _valid_interface_name(name: str) -> bool:
    return _INTERFACE.fullmatch(name) is not None and name not in (".", "..")


def _label_key(key: object) -> bool:
    if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
        return False
    return "/" not in key or len(key.split("/")[0]) <= 253


def _netmask(raw: object, vip: IPAddress) -> int:
    """Return the persistence netmask as a prefix length (dotted IPv4 mask or a length)."""
    path = "spec.persistence.netmask"
    bits = vip.max_prefixlen
    if raw is None:
        return bits
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return _int(raw, path, 1, bits)
    if isinstance(raw, str) and vip.version == 4 and raw in DOTTED_NETMASKS:
        return DOTTED_NETMASKS[raw]
    hint = "a dotted mask like 255.255.255.0 or a prefix length from 1 to 32" \
        if vip.version == 4 else "a prefix length from 1 to 128 (the VIP is IPv6)"
    raise SpecError(path, f"{raw!r} is not a valid netmask: use {hint}")


def parse_address(raw: object, path: str) -> IPAddress:
    """Return the address `raw` names, as `spec.vip` accepts it.

    Raises:
        SpecError: naming `path` when it is not one.
    """
    return _address(raw, path, required=True)


def _address(raw: object, path: str, *, required: bool = False) -> IPAddress:
    """Return the address `raw` names, accepting what the CRD's CEL `isIP` accepts.

    Like CEL (Go's netip), no zone ("%eth0") and no IPv4-mapped IPv6 ("::ffff:10.0.0.1").
    """
    try:
        return _ip(raw, required=required)
    except _Invalid as error:
        raise SpecError(path, error.reason) from None


class _Invalid(ValueError):
    """A value is invalid; the caller names the field (the path is built only on error)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _ip(raw: object, *, required: bool) -> IPAddress:
    """Return `_address` without the field path: raise `_Invalid` with the reason."""
    if raw is None and required:
        raise _Invalid("is required: give an IPv4 or IPv6 address")
    try:
        if not isinstance(raw, str) or "%" in raw:
            raise ValueError(raw)
        try:
            # inet_pton is C and as strict as ipaddress for IPv4 (dotted quad, no leading
            # zeros); ipaddress parses octet by octet in Python.
            packed = socket.inet_pton(socket.AF_INET, raw)
        except OSError:
            address = ipaddress.ip_address(raw)
        else:
            address = ipaddress.IPv4Address(packed)
            if packed[0] not in _SPECIAL_FIRST_OCTETS:
                return address  # surely global unicast
    except ValueError:
        raise _Invalid(f"{raw!r} is not an IPv4 or IPv6 address (no zone)") from None
    if address.version == 6 and address.ipv4_mapped is not None:
        raise _Invalid(f"{raw} is an IPv4-mapped IPv6 address: write the IPv4 address "
                       f"{address.ipv4_mapped}")
    if not _global_unicast(address):
        raise _Invalid(f"{address} cannot be used: give a unicast address (not loopback, "
                       "link-local, multicast or unspecified)")
    return address


def _address_path(index: int) -> str:
    return f"spec.backend.addresses[{index}]"


def _port_path(index: int) -> str:
    return f"spec.ports[{index}]"


def _global_unicast(address: IPAddress) -> bool:
    """Return the CRD's CEL `ip(x).isGlobalUnicast()` (private ranges included).

    Integer tests rather than the `ipaddress` properties, which build a network object per
    check: a bulk file has thousands of addresses.
    """
    n = int(address)
    if address.version == 4:
        return not (n == 0 or n == 0xFFFFFFFF or n >> 24 == 127 or n >> 28 == 0xE
                    or n >> 16 == 0xA9FE)
    return not (n <= 1 or n >> 120 == 0xFF or n >> 118 == 0x3FA)


def _int(raw: object, path: str, low: int, high: int, *, required: bool = False) -> int:
    if raw is None and required:
        raise SpecError(path, f"is required: give a number from {low} to {high}")
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)  # JSON has one number type: 80.0 is 80 to the API server too
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise SpecError(path, f"must be a whole number from {low} to {high}, got {raw!r}")
    if not low <= raw <= high:
        raise SpecError(path, f"must be from {low} to {high}, got {raw}")
    return raw


def _enum(raw: object, path: str, choices: Mapping[str, _T]) -> _T:
    if not isinstance(raw, str) or raw not in choices:
        raise SpecError(path, f"must be one of {', '.join(choices)}, got {raw!r}")
    return choices[raw]


def _list(raw: object, path: str, *, required: bool = False, most: int = 0) -> Sequence[Any]:
    if raw is None and required:
        raise SpecError(path, "is required: give at least one entry")
    if not isinstance(raw, list):
        raise SpecError(path, f"must be a list, got {type(raw).__name__}")
    if required and not raw:
        raise SpecError(path, "must not be empty: give at least one entry")
    if most and len(raw) > most:
        raise SpecError(path, f"has {len(raw)} entries; at most {most} are allowed")
    return raw


def _mapping(parent: Mapping[str, Any], key: str, path: str,
             *, required: bool = False) -> Mapping[str, Any]:
    raw = parent.get(key)
    if raw is None and not required:
        return {}
    return _object(raw, path)


def _object(raw: object, path: str) -> Mapping[str, Any]:
    """Return `raw` if it is an object (a mapping); raise SpecError naming `path` if not."""
    if type(raw) is dict:
        return raw  # what JSON and YAML give, without the (slower) ABC check below
    if raw is None:
        raise SpecError(path or "document", "is required: give an object")
    if not isinstance(raw, Mapping):
        raise SpecError(path or "document", f"must be an object, got {type(raw).__name__}")
    return raw


def _known(raw: Mapping[str, Any], path: str, allowed: Set[str]) -> None:
    if raw.keys() <= allowed:
        return
    unknown = sorted(set(raw) - allowed)
    if unknown:
        field_path = f"{path}.{unknown[0]}"
        hint = f"known fields: {', '.join(sorted(allowed))}" if allowed else "it takes no fields"
        raise SpecError(field_path, f"unknown field ({hint})")
