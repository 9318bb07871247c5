"""A director's desired state: VirtualServer documents + its Node's labels -> IPVS and VIPs.

Pure. The inputs are the objects as the API server returns them (plain dicts); the output
says which VirtualServers this director programs (with their services, role and VIP
interface) and which it withdraws, and why.

A VirtualServer is programmed here when all of these hold:
- it parses (`spec.parse`); an invalid one cannot be trusted, not even its nodeSelector;
- its `spec.directors.nodeSelector` matches the Node's labels (empty: every node);
- its Ready condition does not say Conflict or InvalidSpec (the controller decided), and no
  older VirtualServer selected here claims one of its VIP:port/protocol (the same rule as
  the controller's, `conflicts`, so both agree even before the controller has spoken);
- `status.realServers` is not empty: the controller publishes none for an invalid or
  conflicting VirtualServer, and none before it has resolved the backend.

Its real servers are the `status.realServers` entries that are ready, at their weight, plus
the not-ready ones the controller still gives a weight (its fallback: terminating pods that
still serve when nothing is ready). The others are left out, so the data plane drains them:
weight 0 first, deleted when idle or when `spec.drain.timeoutSeconds` has passed (`drain`).

With `spec.healthCheck`, the director's own checks (`health`) apply on top: a real server
that fails them stays in the table at weight 0 (no new connections; established ones go
on; it is not drained away), and gets its weight back once it passes them again. The
programs say which real servers to check (`Desired.health_targets`) and which failed
(`Program.unhealthy`, for status).

What `build` derives from one VirtualServer alone (parsing it, its endpoints and services,
its withdrawal reason) can be kept in a `Cache` from one sync to the next, so a resync over
unchanged objects does not parse them again.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from lvs_operator.agent import health, role
from lvs_operator.api import conditions, conflicts, realservers, spec
from lvs_operator.model import (
    Forwarding,
    IPAddress,
    ServiceKey,
    VirtualService,
    format_endpoint,
)

# A VirtualServer without a creation time (never from the API server) loses every conflict.
_NEVER = "9999-12-31T23:59:59Z"
# Ready reasons with which the controller tells the directors to keep out.
WITHDRAW_REASONS = frozenset({conditions.CONFLICT, conditions.INVALID_SPEC})


@dataclass(frozen=True)
class Program:
    """A VirtualServer this director programs.

    Attributes:
        vs: the parsed VirtualServer.
        generation: its metadata.generation (what status.directors reports once programmed).
        role: this director's role for it.
        interface: where this director holds its VIP; None when it holds none (Standby, or
            no interface known: then `problem` says so).
        services: its IPVS virtual services with the real servers to program.
        problem: what could not be done as asked, for status; "" when nothing.
        unhealthy: its real servers (address:port, sorted) that fail this director's
            health checks and are held at weight 0.
    """

    vs: spec.VirtualServer
    generation: int
    role: role.Role
    interface: str | None
    services: tuple[VirtualService, ...]
    problem: str = ""
    unhealthy: tuple[str, ...] = ()


@dataclass(frozen=True)
class Desired:
    """This director's desired state.

    Attributes:
        programs: the VirtualServers it programs, by namespace/name.
        withdrawn: VirtualServers that select this node but are not programmed, and why.
    """

    programs: dict[str, Program]
    withdrawn: dict[str, str]

    @property
    def table(self) -> dict[ServiceKey, VirtualService]:
        """Return the IPVS table to converge to (every program's services)."""
        return {s.key: s for p in self.programs.values() for s in p.services}

    @property
    def owners(self) -> dict[ServiceKey, str]:
        """Return the namespace/name of the VirtualServer of each service in `table`."""
        return {s.key: ident for ident, p in self.programs.items() for s in p.services}

    @property
    def vips(self) -> dict[str, set[IPAddress]]:
        """Return the VIPs to hold, by interface."""
        result: dict[str, set[IPAddress]] = {}
        for p in self.programs.values():
            if p.interface:
                result.setdefault(p.interface, set()).add(p.vs.vip)
        return result

    @property
    def nat(self) -> bool:
        """Return whether a NAT VirtualServer is programmed (the node must forward)."""
        return any(p.vs.forwarding is Forwarding.NAT for p in self.programs.values())

    @property
    def drain_timeouts(self) -> dict[ServiceKey, int]:
        """Return each service's spec.drain.timeoutSeconds."""
        return {s.key: p.vs.drain_timeout_seconds
                for p in self.programs.values() for s in p.services}

    @property
    def health_targets(self) -> list[health.Target]:
        """Return the real servers to health-check: each real server (address, port) of
        each program with a spec.healthCheck, once."""
        targets: dict[health.Key, health.Target] = {}
        for ident, p in self.programs.items():
            check = p.vs.health_check
            if check is None:
                continue
            for service in p.services:
                for real in service.reals.values():
                    target = health.Target(ident, real.address, real.port, check)
                    targets.setdefault(target.key, target)
        return list(targets.values())


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Return whether a node with `labels` matches `selector` (every label equal)."""
    return all(labels.get(key) == value for key, value in selector.items())


def build(objects: Iterable[Mapping[str, Any]], *, node: str, labels: Mapping[str, str],
          default_interface: str | None,
          unhealthy: Collection[health.Key] = frozenset(),
          decide: role.Decider | None = None, cache: Cache | None = None) -> Desired:
    """Return the desired state of director `node` (with Node `labels`) for `objects`.

    `default_interface` holds the VIPs of VirtualServers that name no
    spec.directors.interface (None: there is none, which each such program's `problem` says).
    `decide` gives this director's role for each VirtualServer (`role.elected`: the
    election); None makes it Active everywhere.
    `unhealthy` are the (namespace/name, address, port) that fail this director's health
    checks (`health.Monitor.unhealthy`); they get weight 0 in VirtualServers that have a
    spec.healthCheck and are ignored elsewhere.
    `cache` keeps what is derived from each object alone for the next call with the same
    cache (see `Cache`); None derives everything afresh.
    """
    candidates: dict[str, tuple[Program, conflicts.Claimant]] = {}
    withdrawn: dict[str, str] = {}
    pairs = cache.parse(objects) if cache is not None else (
        (obj, _Parsed.of(obj)) for obj in objects)
    for obj, parsed in pairs:
        vs = parsed.vs
        if vs is None:
            continue  # the controller reports it (InvalidSpec); nothing here to trust
        if not selects(vs.directors.node_selector, labels):
            continue
        derived = parsed.derived(obj)
        if derived.withdrawal:
            withdrawn[vs.id] = derived.withdrawal
            continue
        services = derived.services
        failing: tuple[str, ...] = ()
        if vs.health_check is not None and unhealthy:
            services, failing = _health(vs.id, services, unhealthy)
        chosen = decide(vs, obj) if decide else role.decide(vs, node=node)
        problems = list(derived.problems)
        interface = None
        if chosen is role.Role.ACTIVE:
            interface = vs.directors.interface or default_interface
            if interface is None:
                problems.append("no interface to hold the VIP on: this node has no default "
                                "route; set spec.directors.interface (or the agent's "
                                "LVS_INTERFACE)")
        program = Program(vs=vs, generation=derived.generation, role=chosen,
                          interface=interface, services=services, problem="; ".join(problems),
                          unhealthy=failing)
        candidates[vs.id] = (program, derived.claimant)
    claimants = [claimant for _, claimant in candidates.values()]
    lost = cache.conflicts(claimants) if cache is not None else conflicts.conflicts(claimants)
    for ident, conflict in lost.items():
        withdrawn[ident] = conflict.message
    return Desired(
        programs={ident: p for ident, (p, _) in candidates.items() if ident not in lost},
        withdrawn=withdrawn,
    )


@dataclass(frozen=True)
class _Derived:
    """What `build` takes from a parsed, selected VirtualServer object alone.

    Attributes:
        generation: its metadata.generation.
        claimant: it, for `conflicts`.
        withdrawal: why it must not be programmed (`_withdrawal`), or "".
        services: its services with the real servers of status.realServers, before health
            checks; empty when `withdrawal` says why.
        problems: the status.realServers entries skipped.
    """

    generation: int
    claimant: conflicts.Claimant
    withdrawal: str
    services: tuple[VirtualService, ...] = ()
    problems: tuple[str, ...] = ()


@dataclass
class _Parsed:
    """A VirtualServer object parsed, and what else `build` derives from it alone.

    Attributes:
        version: the object's (metadata.uid, metadata.resourceVersion), "" for what it
            lacks; an object without a resourceVersion is never taken from a cache.
        vs: the parsed VirtualServer; None when it does not parse.
    """

    version: tuple[str, str]
    vs: spec.VirtualServer | None
    _derived: _Derived | None = field(default=None, repr=False)

    @classmethod
    def of(cls, obj: Mapping[str, Any], version: tuple[str, str] = ("", "")) -> _Parsed:
        """Return `obj`, of `version`, parsed (vs None when it is invalid)."""
        try:
            vs: spec.VirtualServer | None = spec.parse(obj)
        except spec.SpecError:
            vs = None
        return cls(version, vs)

    def derived(self, obj: Mapping[str, Any]) -> _Derived:
        """Return what `build` takes from `obj` (the object this was parsed from), derived
        the first time it is asked for: objects this node does not select never need it.

        Raises:
            ValueError: when the VirtualServer does not parse.
        """
        if self._derived is None:
            if self.vs is None:
                raise ValueError("an invalid VirtualServer has nothing to derive")
            self._derived = _derive(self.vs, obj)
        return self._derived


def _derive(vs: spec.VirtualServer, obj: Mapping[str, Any]) -> _Derived:
    """Return what `build` takes from parsed `vs` and its object `obj` alone."""
    meta = obj.get("metadata") or {}
    generation = int(meta.get("generation") or 0)
    claimant = conflicts.Claimant.of(vs, created=str(meta.get("creationTimestamp") or _NEVER))
    why = _withdrawal(obj)
    if why:
        return _Derived(generation, claimant, why)
    endpoints, problems = _endpoints(obj)
    try:
        services = tuple(spec.services(vs, endpoints))
    except spec.SpecError as e:
        return _Derived(generation, claimant, f"cannot program its real servers: {e}")
    return _Derived(generation, claimant, "", services, tuple(problems))


class Cache:
    """What `build` derives from each VirtualServer object alone, kept from one `build` to
    the next so that unchanged objects are not parsed again.

    An object is taken as unchanged while its namespace/name, metadata.uid and
    metadata.resourceVersion are: the API server gives every change of an object (spec,
    status, metadata) a new resourceVersion. Objects without one are never taken from the
    cache. What depends on more than the object (the Node's labels, the default interface,
    health results, roles) is not kept; of the conflicts between objects, only the last
    answer is, for as long as the very same claimants ask. Each `build` keeps only the
    objects it was given, so the cache holds no more than the objects present. One `build`
    at a time may use a cache.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], _Parsed] = {}
        self._claimants: list[conflicts.Claimant] = []
        self._lost: dict[str, conflicts.Conflict] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def parse(self, objects: Iterable[Mapping[str, Any]]) -> list[tuple[Mapping[str, Any],
                                                                        _Parsed]]:
        """Return each of `objects` with it parsed: the entry kept for it when its version
        has not changed, else a new one. Keeps these entries, and only these, for the next
        call: objects not given are gone."""
        entries: dict[tuple[str, str], _Parsed] = {}
        result = []
        for obj in objects:
            meta = obj.get("metadata")
            meta = meta if isinstance(meta, Mapping) else {}
            ident = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
            version = (str(meta.get("uid") or ""), str(meta.get("resourceVersion") or ""))
            entry = self._entries.get(ident)
            if entry is None or entry.version != version or not version[1]:
                entry = _Parsed.of(obj, version)
            entries[ident] = entry
            result.append((obj, entry))
        self._entries = entries
        return result

    def conflicts(self, claimants: list[conflicts.Claimant]) -> dict[str, conflicts.Conflict]:
        """Return `conflicts.conflicts(claimants)` (not to be changed): the last answer when
        these are the very claimants of the last call, in the same order."""
        # Claimants are immutable and kept in the entries: the same objects, in the same
        # order, are the same question. Comparing identities costs far less than the answer.
        last = self._claimants
        if len(last) != len(claimants) or any(
                a is not b for a, b in zip(last, claimants, strict=True)):
            self._lost = conflicts.conflicts(claimants)
            self._claimants = claimants
        return self._lost


def _health(ident: str, services: tuple[VirtualService, ...],
            unhealthy: Collection[health.Key]) -> tuple[tuple[VirtualService, ...],
                                                         tuple[str, ...]]:
    """Return `services` with the unhealthy real servers of VirtualServer `ident` at
    weight 0, and those real servers (address:port, sorted, once each)."""
    result = []
    failing: dict[tuple[IPAddress, int], None] = {}
    for service in services:
        reals = {}
        for key, real in service.reals.items():
            if (ident, real.address, real.port) in unhealthy:
                failing[(real.address, real.port)] = None
                real = replace(real, weight=0)
            reals[key] = real
        result.append(replace(service, reals=reals))
    ordered = sorted(failing, key=lambda r: (r[0].version, int(r[0]), r[1]))
    return tuple(result), tuple(format_endpoint(a, p) for a, p in ordered)


def relevant(obj: Mapping[str, Any], *, node: str) -> tuple[object, ...]:
    """Return what of a VirtualServer the agent acts on; a change elsewhere (another
    director's generation or syncedAt, managedFields) needs no sync, so N directors
    reporting do not make each other resync N times. Other directors' roles do count: a
    handover waits for the old holder to report Standby."""
    meta = obj.get("metadata") or {}
    stat = obj.get("status") or {}
    return (meta.get("generation"), meta.get("creationTimestamp"), obj.get("spec"),
            stat.get("realServers"), _ready(stat), (stat.get("directors") or {}).get(node),
            role.claims(obj))


def node_labels(node: Mapping[str, Any]) -> dict[str, str]:
    """Return a Node's labels."""
    return dict((node.get("metadata") or {}).get("labels") or {})


def _withdrawal(obj: Mapping[str, Any]) -> str:
    """Return why a selected VirtualServer must not be programmed, or ""."""
    stat = obj.get("status") or {}
    ready = _ready(stat)
    if ready and ready[0] == "False" and ready[1] in WITHDRAW_REASONS:
        return f"{ready[1]}: {ready[2]}" if ready[2] else str(ready[1])
    if not stat.get("realServers"):
        return "no real servers published (yet) in status.realServers"
    return ""


def _ready(stat: Mapping[str, Any]) -> tuple[str, str, str] | None:
    for condition in stat.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == conditions.READY:
            return (str(condition.get("status", "")), str(condition.get("reason", "")),
                    str(condition.get("message", "")))
    return None


def _endpoints(obj: Mapping[str, Any]) -> tuple[list[spec.Endpoint], list[str]]:
    """Return the endpoints to program from status.realServers, and the entries skipped."""
    endpoints: list[spec.Endpoint] = []
    problems: list[str] = []
    for index, raw in enumerate((obj.get("status") or {}).get("realServers") or []):
        try:
            if not isinstance(raw, Mapping):
                raise ValueError("not an object")
            entry = realservers.RealServerStatus.from_json(raw)
        except ValueError as e:
            problems.append(f"status.realServers[{index}] skipped: {e}")
            continue
        if entry.ready or entry.weight > 0:
            endpoints.append(entry.endpoint())
    return endpoints, problems
