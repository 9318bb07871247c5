"""A director's desired state: VirtualServer documents + its Node's labels -> IPVS and VIPs.

Pure. The inputs are the objects as the API server returns them (plain dicts); the output
says which VirtualServers this director programs (with their services, role and VIP
interface) and which it withdraws, and why.

A VirtualServer is programmed here when all of these hold:
- it parses (`spec.parse`); an invalid one cannot be trusted, not even its nodeSelector;
- a VIP pool its namespace may use admits it (`pools.admit`, under the `Gate`: the pools
  and the namespaces' labels this director has listed; deny by default: no pool, no VIP),
  whatever its status says: a forged or stale status cannot make a director hold an
  address outside the pools. From here on it is the VirtualServer as its pool admits it
  (`Verdict.vs`: the pool's `spec.directors` filled in), for this director and for the
  VRRP table every director computes alike;
- its `spec.directors.nodeSelector` (after its pool's) matches the Node's labels (empty:
  every node);
- its Ready condition does not say Conflict or InvalidSpec (the controller decided), and no
  older VirtualServer selected here claims one of its VIP:port/protocol (the same rule as
  the controller's, `conflicts`, so both agree even before the controller has spoken);
- `status.realServers` is not empty: the controller publishes none for an invalid,
  refused or conflicting VirtualServer, and none before it has resolved the backend.

A refused VirtualServer that selects this node is withdrawn with the refusal's reason and
message; when its status would have had it programmed (the controller did not refuse it),
`Desired.refused` says so too, for the agent to report: a forged or stale status.

The status.realServers entries are checked against the spec as far as the director can:
with static `spec.backend.addresses` (which the pool admitted), an entry whose address is
not among them is skipped (a problem says so); with a Service backend, entries of the
other address family are left out unless the mode is Tunnel (`spec.services`: the kernel
forwards between families in Tunnel mode only), but which addresses the Service's
endpoints have is not checked: the agent does not see EndpointSlices (the controller
resolves them, from the VirtualServer's own namespace).

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
unchanged objects does not parse them again; so can each one's verdict, for as long as the
gate's pools and its namespace's labels are unchanged.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lvs_operator.agent import health, role
from lvs_operator.api import claims, conditions, conflicts, pools, realservers, spec
from lvs_operator.model import (
    Forwarding,
    IPAddress,
    ServiceKey,
    VirtualService,
    format_endpoint,
)

# A VirtualServer without a creation time (never from the API server) loses every conflict.
_NEVER = "9999-12-31T23:59:59Z"
# Ready reasons with which the controller tells the directors to keep out: a conflict, an
# invalid spec, a refusal by the VIP pools or another namespace's claim on the VIP.
WITHDRAW_REASONS = frozenset({conditions.CONFLICT, conditions.INVALID_SPEC, *pools.REASONS,
                              claims.VIP_IN_USE})


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
        refused: those of `withdrawn` that the gate refused (the verdict) although their
            status would have had them programmed: the controller has not refused them
            (a forged or stale status, or a pool changed since it last looked).
    """

    programs: dict[str, Program]
    withdrawn: dict[str, str]
    refused: dict[str, pools.Verdict] = field(default_factory=dict)

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
          gate: Gate, default_interface: str | None,
          unhealthy: Collection[health.Key] = frozenset(),
          decide: role.Decider | None = None, cache: Cache | None = None) -> Desired:
    """Return the desired state of director `node` (with Node `labels`) for `objects`.

    `gate` admits each VirtualServer (or refuses it: withdrawn) and gives it the directors
    of its pool; a gate with no pools admits nothing.
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
    refused: dict[str, pools.Verdict] = {}
    pairs = cache.parse(objects) if cache is not None else (
        (obj, _Parsed.of(obj)) for obj in objects)
    for obj, parsed in pairs:
        if parsed.vs is None:
            continue  # the controller reports it (InvalidSpec); nothing here to trust
        verdict = parsed.verdict(gate)
        vs = verdict.vs
        if vs is None:
            if selects(parsed.vs.directors.node_selector, labels):
                withdrawn[parsed.vs.id] = f"{verdict.reason}: {verdict.message}"
                if not parsed.derived(obj).withdrawal:
                    refused[parsed.vs.id] = verdict
            continue
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
        withdrawn=withdrawn, refused=refused,
    )


@dataclass(frozen=True)
class InvalidPool:
    """A VIPPool document that does not parse: it admits nothing.

    Attributes:
        name: its metadata.name.
        version: its metadata.resourceVersion.
        message: what is wrong with it (`pools.parse`'s error, naming the field).
    """

    name: str
    version: str
    message: str


class Gate:
    """The VIP pools, and the labels of the namespaces, under which this director admits
    VirtualServers (`pools.admit`): deny by default, so a gate without pools admits nothing.

    A gate is made anew (`of`) when a pool or a namespace's labels change, from the previous
    one: the values that did not change stay the very same objects. A `Cache` keeps each
    VirtualServer's verdict for as long as the gate's `pools` and its namespace's labels are
    the objects it was admitted under, so a new gate re-admits only the VirtualServers that
    its change concerns (all of them when a pool changed; those of one namespace when that
    namespace's labels did), and an unchanged one re-admits nothing.

    Attributes:
        pools: the valid pools, by name.
        invalid: the pool documents that do not parse (they admit nothing).
    """

    def __init__(self, pool_list: Sequence[pools.Pool] = (),
                 namespaces: Mapping[str, Mapping[str, str]] | None = None, *,
                 invalid: Sequence[InvalidPool] = ()) -> None:
        """Make a gate of `pool_list` and the `namespaces`' labels (by name: a namespace
        not among them has unknown labels, so only the pools that name it serve it)."""
        self.pools = tuple(sorted(pool_list, key=lambda p: p.name))
        self.invalid = tuple(invalid)
        self._namespaces: dict[str, Mapping[str, str]] = dict(namespaces or {})

    @classmethod
    def of(cls, documents: Iterable[Mapping[str, Any]],
           namespaces: Mapping[str, Mapping[str, str]], *,
           previous: Gate | None = None) -> Gate:
        """Return the gate of the VIPPool `documents` and the `namespaces`' labels, keeping
        `previous`'s pools and labels objects where they are equal to the new ones."""
        valid: list[pools.Pool] = []
        invalid: list[InvalidPool] = []
        for document in documents:
            try:
                valid.append(pools.parse(document))
            except spec.SpecError as e:
                meta = document.get("metadata") or {}
                invalid.append(InvalidPool(str(meta.get("name") or "?"),
                                           str(meta.get("resourceVersion") or ""), str(e)))
        gate = cls(valid, namespaces, invalid=invalid)
        if previous is not None:
            if gate.pools == previous.pools:
                gate.pools = previous.pools
            for name, labels in gate._namespaces.items():
                before = previous._namespaces.get(name)
                if before is not None and before == labels:
                    gate._namespaces[name] = before
        return gate

    def labels(self, namespace: str) -> Mapping[str, str] | None:
        """Return the labels of `namespace`, None when it is not known."""
        return self._namespaces.get(namespace)

    def admit(self, vs: spec.VirtualServer) -> pools.Verdict:
        """Return whether the pools admit `vs` (`pools.admit`), with its effective
        directors."""
        return pools.admit(vs, self.pools, self.labels(vs.namespace))


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
        vs: the parsed VirtualServer, as written (before its pool's directors); None when
            it does not parse.
    """

    version: tuple[str, str]
    vs: spec.VirtualServer | None
    _derived: _Derived | None = field(default=None, repr=False)
    # (the gate's pools, the namespace's labels) it was admitted under, and the verdict.
    _verdict: tuple[tuple[pools.Pool, ...], Mapping[str, str] | None, pools.Verdict] | None = \
        field(default=None, repr=False)

    @classmethod
    def of(cls, obj: Mapping[str, Any], version: tuple[str, str] = ("", "")) -> _Parsed:
        """Return `obj`, of `version`, parsed (vs None when it is invalid)."""
        try:
            vs: spec.VirtualServer | None = spec.parse(obj)
        except spec.SpecError:
            vs = None
        return cls(version, vs)

    def verdict(self, gate: Gate) -> pools.Verdict:
        """Return whether `gate` admits the VirtualServer (`Gate.admit`); the last verdict
        while the gate's pools and the namespace's labels are the objects it was made with.

        Raises:
            ValueError: when the VirtualServer does not parse.
        """
        if self.vs is None:
            raise ValueError("an invalid VirtualServer cannot be admitted")
        labels = gate.labels(self.vs.namespace)
        kept = self._verdict
        if kept is None or kept[0] is not gate.pools or kept[1] is not labels:
            kept = self._verdict = (gate.pools, labels, gate.admit(self.vs))
        return kept[2]

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
    endpoints, problems = _endpoints(vs, obj)
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
    cache. Each object's verdict (`Gate`) is kept with it, for as long as the gate's pools
    and its namespace's labels are the objects it was admitted under. What depends on more
    than the object (the Node's labels, the default interface, health results, roles) is
    not kept; of the conflicts between objects, only the last answer is, for as long as the
    very same claimants ask. Each `build` keeps only the
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


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    """Return an object's labels (a Node's, a Namespace's)."""
    return dict((obj.get("metadata") or {}).get("labels") or {})


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


def _endpoints(vs: spec.VirtualServer,
               obj: Mapping[str, Any]) -> tuple[list[spec.Endpoint], list[str]]:
    """Return the endpoints to program from status.realServers of `obj` (parsed: `vs`),
    and the entries skipped: those that do not parse, and, when `vs` has static
    spec.backend.addresses, those whose address is not among them."""
    endpoints: list[spec.Endpoint] = []
    problems: list[str] = []
    static = ({e.address for e in vs.backend} if isinstance(vs.backend, tuple) else None)
    for index, raw in enumerate((obj.get("status") or {}).get("realServers") or []):
        try:
            if not isinstance(raw, Mapping):
                raise ValueError("not an object")
            entry = realservers.RealServerStatus.from_json(raw)
        except ValueError as e:
            problems.append(f"status.realServers[{index}] skipped: {e}")
            continue
        if static is not None and entry.ip not in static:
            problems.append(f"status.realServers[{index}] skipped: {entry.ip} is not among "
                            "spec.backend.addresses (the controller publishes only those)")
            continue
        if entry.ready or entry.weight > 0:
            endpoints.append(entry.endpoint())
    return endpoints, problems
