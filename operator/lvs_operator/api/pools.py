"""VIP pools: which addresses a namespace may use, and on what terms. Pure.

A `VIPPool` (cluster-scoped, `lvs.dev/v1alpha1`, written by cluster admins only) lists
address ranges and the namespaces that may take VIPs from them, and may pin what the
VirtualServers using it get:

- `spec.addresses`: CIDRs (`10.0.0.0/24`, `2001:db8::/64`) or inclusive ranges
  (`10.0.0.10-10.0.0.20`); IPv4 and IPv6 may mix;
- `spec.namespaces` (names) and/or `spec.namespaceSelector` (a label selector over
  Namespaces; `{}` selects every namespace): who may use the pool. Neither: nobody.
- `spec.directors`: the `nodeSelector` and `interface` its VIPs are held with. What the
  pool sets, a VirtualServer in it inherits and may not change (it may add labels to the
  node selector: fewer nodes), unless `spec.directors.allowOverride` is true; what the pool
  leaves out, the VirtualServer chooses. An admin who wants the VIPs (and the IPVS sync
  daemons that follow them) on one segment sets `interface`;
- `spec.forwarding`: the forwarding modes allowed (default: all three);
- `spec.backendAddresses`: the ranges static `spec.backend.addresses` (and so the
  directors' health checks of them) may point at. Absent: no static addresses at all (a
  Service backend's endpoints are its namespace's own pods, resolved by the controller).
- `spec.autoAssign`: whether LoadBalancer Services may get addresses from it unasked.

**Deny by default**: a VirtualServer whose VIP lies in no pool its namespace may use is
refused (`admit`), at admission, by the controller and by every agent, with the same
function and the same message. When the VIP lies in several such pools, they are tried in
name order and the first that allows everything else decides.

`parse` checks a pool document as the CRD does and raises `spec.SpecError` naming the field.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from lvs_operator.api import spec
from lvs_operator.model import Forwarding, IPAddress

KIND = "VIPPool"
PLURAL = "vippools"

MAX_ADDRESSES = 64  # entries of spec.addresses and of spec.backendAddresses
MAX_NAMESPACES = 256
MAX_EXPRESSIONS = 16
MAX_VALUES = 64

# Reasons (the Ready condition's, the admission refusal's): why a VirtualServer may not
# have what it asks for.
VIP_NOT_ALLOWED = "VIPNotAllowed"
FORWARDING_NOT_ALLOWED = "ForwardingNotAllowed"
DIRECTORS_NOT_ALLOWED = "DirectorsNotAllowed"
BACKEND_NOT_ALLOWED = "BackendNotAllowed"
REASONS = (VIP_NOT_ALLOWED, FORWARDING_NOT_ALLOWED, DIRECTORS_NOT_ALLOWED, BACKEND_NOT_ALLOWED)

MODE_NAMES = {v: k for k, v in spec.FORWARDING.items()}
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_POOL_FIELDS = frozenset({"addresses", "namespaces", "namespaceSelector", "directors",
                          "forwarding", "backendAddresses", "autoAssign"})
_SELECTOR_FIELDS = frozenset({"matchLabels", "matchExpressions"})
_EXPRESSION_FIELDS = frozenset({"key", "operator", "values"})
_DIRECTORS_FIELDS = frozenset({"nodeSelector", "interface", "allowOverride"})


@dataclass(frozen=True, slots=True)
class Range:
    """An inclusive range of addresses of one family."""

    first: IPAddress
    last: IPAddress

    def __contains__(self, address: object) -> bool:
        return (isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address))
                and address.version == self.first.version
                and int(self.first) <= int(address) <= int(self.last))

    def __str__(self) -> str:
        if self.first == self.last:
            return str(self.first)
        for net in ipaddress.summarize_address_range(self.first, self.last):
            if net.network_address == self.first and net.broadcast_address == self.last:
                return str(net)
        return f"{self.first}-{self.last}"


@dataclass(frozen=True, slots=True)
class Requirement:
    """One `matchExpressions` entry of a label selector."""

    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Return whether `labels` meet this requirement."""
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        return labels.get(self.key) not in self.values  # NotIn: absent matches too


@dataclass(frozen=True, slots=True)
class Selector:
    """A metav1.LabelSelector: every label and every expression must match ({} matches all)."""

    labels: Mapping[str, str] = field(default_factory=dict)
    expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Return whether an object with `labels` is selected."""
        return (all(labels.get(k) == v for k, v in self.labels.items())
                and all(r.matches(labels) for r in self.expressions))


@dataclass(frozen=True, slots=True)
class Pool:
    """A parsed VIPPool (see the module docstring for what each field means)."""

    name: str
    addresses: tuple[Range, ...]
    namespaces: frozenset[str] = frozenset()
    namespace_selector: Selector | None = None
    directors: spec.Directors = field(default_factory=spec.Directors)
    allow_override: bool = False
    forwarding: frozenset[Forwarding] = frozenset(Forwarding)
    backends: tuple[Range, ...] = ()
    auto_assign: bool = False

    def serves(self, namespace: str, labels: Mapping[str, str] | None) -> bool:
        """Return whether `namespace` (with `labels`; None: not known) may use this pool."""
        if namespace in self.namespaces:
            return True
        return (self.namespace_selector is not None and labels is not None
                and self.namespace_selector.matches(labels))

    def __contains__(self, address: object) -> bool:
        return any(address in r for r in self.addresses)

    def describe(self) -> str:
        """Return the pool for a message: `name (10.0.0.0/24, 2001:db8::/64)`."""
        return f"{self.name} ({', '.join(str(r) for r in self.addresses)})"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `admit` decided.

    Attributes:
        vs: the VirtualServer as the directors must serve it (with the pool's directors
            filled in), or None when refused.
        pool: the pool it was admitted by ("" when refused).
        reason: "" when admitted, else one of `REASONS`.
        field: the field the refusal is about (`spec.vip`, ...), "" when admitted.
        message: why it was refused, naming the field and what to do; "" when admitted.
    """

    vs: spec.VirtualServer | None
    pool: str = ""
    reason: str = ""
    field: str = ""
    message: str = ""

    @property
    def allowed(self) -> bool:
        """Return whether the VirtualServer was admitted."""
        return self.vs is not None


def admit(vs: spec.VirtualServer, pools: Iterable[Pool],
          namespace_labels: Mapping[str, str] | None) -> Verdict:
    """Return whether `vs` may have what it asks for, under `pools`.

    `namespace_labels` are the labels of `vs.namespace` (None: not known, so only the pools
    that name the namespace serve it). The pools its namespace may use whose addresses hold
    `vs.vip` are tried in name order; the first that also allows its forwarding mode, its
    directors and its static backend addresses admits it. When none does, the refusal is
    the first such pool's, or `VIP_NOT_ALLOWED` when none holds the VIP.
    """
    usable = serving(pools, vs.namespace, namespace_labels)
    holding = [p for p in usable if vs.vip in p]
    if not holding:
        if usable:
            names = "; ".join(p.describe() for p in usable)
            message = (f"spec.vip: {vs.vip} is in no VIP pool namespace {vs.namespace} may "
                       f"use (it may use: {names}): pick an address from these")
        else:
            message = (f"spec.vip: namespace {vs.namespace} may use no VIP pool, so it may "
                       f"have no VIP ({vs.vip} refused): ask a cluster admin for a VIPPool "
                       "that lists this namespace")
        return Verdict(None, reason=VIP_NOT_ALLOWED, field="spec.vip", message=message)
    first: Verdict | None = None
    for pool in holding:
        verdict = _terms(vs, pool)
        if verdict.allowed:
            return verdict
        first = first or verdict
    assert first is not None
    return first


def _terms(vs: spec.VirtualServer, pool: Pool) -> Verdict:
    """Return whether `pool`, which holds `vs.vip` and serves its namespace, admits `vs`."""
    if vs.forwarding not in pool.forwarding:
        allowed = ", ".join(sorted(MODE_NAMES[f] for f in pool.forwarding)) or "none"
        return Verdict(None, reason=FORWARDING_NOT_ALLOWED, field="spec.forwarding",
                       message=f"spec.forwarding: VIP pool {pool.name} allows {allowed}, not "
                               f"{MODE_NAMES[vs.forwarding]}: use one of these")
    if isinstance(vs.backend, tuple):
        for index, endpoint in enumerate(vs.backend):
            if not any(endpoint.address in r for r in pool.backends):
                ranges = ", ".join(str(r) for r in pool.backends)
                allowed = f"only {ranges}" if ranges else "no static address"
                return Verdict(None, reason=BACKEND_NOT_ALLOWED,
                               field=f"spec.backend.addresses[{index}].ip",
                               message=f"spec.backend.addresses[{index}].ip: "
                                       f"{endpoint.address} is not a backend VIP pool "
                                       f"{pool.name} allows (it allows {allowed}): use a "
                                       "Service backend, or ask a cluster admin to add the "
                                       "range to the pool's spec.backendAddresses")
    directors = pool.directors
    mine = vs.directors
    if pool.allow_override:  # the pool's directors are only defaults
        effective = spec.Directors(
            node_selector={**directors.node_selector, **mine.node_selector},
            interface=mine.interface or directors.interface)
        return Verdict(vs if effective == mine else replace(vs, directors=effective),
                       pool=pool.name)
    for key, value in directors.node_selector.items():
        if key in mine.node_selector and mine.node_selector[key] != value:
            return Verdict(None, reason=DIRECTORS_NOT_ALLOWED,
                           field=f"spec.directors.nodeSelector.{key}",
                           message=f"spec.directors.nodeSelector.{key}: VIP pool {pool.name} "
                                   f"holds its VIPs on nodes with {key}={value}: leave the "
                                   "label out (the pool's is used) or give the same value")
    if (mine.interface is not None and directors.interface is not None
            and mine.interface != directors.interface):
        return Verdict(None, reason=DIRECTORS_NOT_ALLOWED, field="spec.directors.interface",
                       message=f"spec.directors.interface: VIP pool {pool.name} holds its "
                               f"VIPs on {directors.interface}, not {mine.interface}: leave "
                               "the field out")
    effective = spec.Directors(node_selector={**mine.node_selector, **directors.node_selector},
                               interface=directors.interface or mine.interface)
    if effective == mine:
        return Verdict(vs, pool=pool.name)
    return Verdict(replace(vs, directors=effective), pool=pool.name)


def parse(document: Mapping[str, Any]) -> Pool:
    """Return the pool a VIPPool document describes.

    Raises:
        spec.SpecError: naming the first invalid field and what to do.
    """
    if not isinstance(document, Mapping):
        raise spec.SpecError("document", "must be an object")
    meta = document.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not name:
        raise spec.SpecError("metadata.name", "is required: give the VIPPool a name")
    raw = document.get("spec")
    if not isinstance(raw, Mapping):
        raise spec.SpecError("spec", "is required: give at least spec.addresses")
    _known(raw, "spec", _POOL_FIELDS)
    addresses = _ranges(raw.get("addresses"), "spec.addresses", required=True)
    namespaces = _strings(raw.get("namespaces"), "spec.namespaces", MAX_NAMESPACES)
    for index, ns in enumerate(namespaces):
        if not _NAMESPACE.fullmatch(ns):
            raise spec.SpecError(f"spec.namespaces[{index}]",
                                 f"{ns!r} is not a namespace name (a DNS-1123 label)")
    selector = None
    if raw.get("namespaceSelector") is not None:
        selector = _selector(raw["namespaceSelector"], "spec.namespaceSelector")
    directors, override = _directors(raw.get("directors"))
    forwarding: frozenset[Forwarding] = frozenset(Forwarding)
    if raw.get("forwarding") is not None:
        modes = _strings(raw["forwarding"], "spec.forwarding", len(spec.FORWARDING))
        if not modes:
            raise spec.SpecError("spec.forwarding", "must not be empty: leave it out to "
                                 "allow every mode")
        for index, mode in enumerate(modes):
            if mode not in spec.FORWARDING:
                raise spec.SpecError(f"spec.forwarding[{index}]", f"must be one of "
                                     f"{', '.join(spec.FORWARDING)}, got {mode!r}")
        forwarding = frozenset(spec.FORWARDING[m] for m in modes)
    backends = _ranges(raw.get("backendAddresses"), "spec.backendAddresses")
    auto = raw.get("autoAssign", False)
    if not isinstance(auto, bool):
        raise spec.SpecError("spec.autoAssign", f"must be true or false, got {auto!r}")
    return Pool(name=name, addresses=addresses, namespaces=frozenset(namespaces),
                namespace_selector=selector, directors=directors, allow_override=override,
                forwarding=forwarding, backends=backends, auto_assign=auto)


def parse_range(raw: object) -> Range:
    """Return the range `raw` names: a CIDR, `first-last`, or one address.

    Raises:
        ValueError: saying what is wrong with it.
    """
    if not isinstance(raw, str) or not raw:
        raise ValueError(f"{raw!r} is not an address range: write a CIDR like 10.0.0.0/24 "
                         "or a range like 10.0.0.10-10.0.0.20")
    text = raw.strip()
    try:
        if "/" in text:
            net = ipaddress.ip_network(text, strict=True)
            return Range(net.network_address, net.broadcast_address)
        if "-" in text:
            low, high = (ipaddress.ip_address(p.strip()) for p in text.split("-", 1))
            if low.version != high.version:
                raise ValueError(f"{raw!r} mixes IPv4 and IPv6")
            if int(high) < int(low):
                raise ValueError(f"{raw!r} ends before it starts")
            return Range(low, high)
        address = ipaddress.ip_address(text)
        return Range(address, address)
    except ValueError as error:
        if "host bits" in str(error):
            raise ValueError(f"{raw!r} has host bits set: write its network address "
                             f"({ipaddress.ip_network(text, strict=False)})") from None
        raise ValueError(f"{raw!r} is not an address range ({error}): write a CIDR like "
                         "10.0.0.0/24 or a range like 10.0.0.10-10.0.0.20") from None


def _ranges(raw: object, path: str, *, required: bool = False) -> tuple[Range, ...]:
    if raw is None and not required:
        return ()
    items = _strings(raw, path, MAX_ADDRESSES)
    if required and not items:
        raise spec.SpecError(path, "must not be empty: give at least one CIDR or range")
    result = []
    for index, item in enumerate(items):
        try:
            result.append(parse_range(item))
        except ValueError as error:
            raise spec.SpecError(f"{path}[{index}]", str(error)) from None
    return tuple(result)


def _strings(raw: object, path: str, most: int) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise spec.SpecError(path, f"must be a list, got {type(raw).__name__}")
    if len(raw) > most:
        raise spec.SpecError(path, f"has {len(raw)} entries; at most {most} are allowed")
    for index, item in enumerate(raw):
        if not isinstance(item, str):
            raise spec.SpecError(f"{path}[{index}]", f"must be a string, got {item!r}")
    return list(raw)


def _selector(raw: object, path: str) -> Selector:
    if not isinstance(raw, Mapping):
        raise spec.SpecError(path, "must be a label selector (matchLabels, matchExpressions)")
    _known(raw, path, _SELECTOR_FIELDS)
    labels = raw.get("matchLabels") or {}
    if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise spec.SpecError(f"{path}.matchLabels", "must map label keys to string values")
    expressions = []
    raw_expressions = raw.get("matchExpressions") or []
    if not isinstance(raw_expressions, list) or len(raw_expressions) > MAX_EXPRESSIONS:
        raise spec.SpecError(f"{path}.matchExpressions",
                             f"must be a list of at most {MAX_EXPRESSIONS} requirements")
    for index, item in enumerate(raw_expressions):
        where = f"{path}.matchExpressions[{index}]"
        if not isinstance(item, Mapping):
            raise spec.SpecError(where, "must be an object (key, operator, values)")
        _known(item, where, _EXPRESSION_FIELDS)
        key, operator = item.get("key"), item.get("operator")
        if not isinstance(key, str) or not key:
            raise spec.SpecError(f"{where}.key", "is required: give a label key")
        if operator not in _OPERATORS:
            raise spec.SpecError(f"{where}.operator",
                                 f"must be one of {', '.join(_OPERATORS)}, got {operator!r}")
        values = _strings(item.get("values"), f"{where}.values", MAX_VALUES)
        if operator in ("In", "NotIn") and not values:
            raise spec.SpecError(f"{where}.values", f"must not be empty with {operator}")
        if operator in ("Exists", "DoesNotExist") and values:
            raise spec.SpecError(f"{where}.values", f"must be empty with {operator}")
        expressions.append(Requirement(key, str(operator), frozenset(values)))
    return Selector(dict(labels), tuple(expressions))


def _directors(raw: object) -> tuple[spec.Directors, bool]:
    if raw is None:
        return spec.Directors(), False
    path = "spec.directors"
    if not isinstance(raw, Mapping):
        raise spec.SpecError(path, "must be an object (nodeSelector, interface, allowOverride)")
    _known(raw, path, _DIRECTORS_FIELDS)
    override = raw.get("allowOverride", False)
    if not isinstance(override, bool):
        raise spec.SpecError(f"{path}.allowOverride", f"must be true or false, got {override!r}")
    # The same rules as a VirtualServer's spec.directors: parse them with its parser.
    body = {k: raw[k] for k in ("nodeSelector", "interface") if k in raw}
    try:
        parsed = spec.parse({"metadata": {"name": "pool"}, "spec": {
            "vip": "192.0.2.1", "ports": [{"port": 1}], "backend": {"service": {"name": "x"}},
            "directors": body}})
    except spec.SpecError as error:
        raise spec.SpecError(error.path, error.reason) from None
    return parsed.directors, override


def _known(raw: Mapping[str, Any], path: str, allowed: frozenset[str]) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise spec.SpecError(f"{path}.{unknown[0]}",
                             f"unknown field (known fields: {', '.join(sorted(allowed))})")


def serving(pools: Iterable[Pool], namespace: str,
            labels: Mapping[str, str] | None) -> list[Pool]:
    """Return the pools `namespace` (with `labels`) may use, by name."""
    return sorted((p for p in pools if p.serves(namespace, labels)), key=lambda p: p.name)
