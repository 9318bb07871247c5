"""`type: LoadBalancer` Services served by lvs-operator. Pure.

A Service is served when it is of type LoadBalancer and its `spec.loadBalancerClass` is the
controller's class (`lvs.dev/ipvs`), or it has no class and the controller serves class-less
Services too (`served`). For a served Service the controller:

- reads what it asks for (`request`): its IP families, the addresses it requests
  (annotation `lvs.dev/vip`, else the deprecated `spec.loadBalancerIP`), a named pool, a
  sharing key, and the VirtualServer settings of the other `ANNOTATIONS`. A bad value raises
  `AnnotationError`, naming the annotation and the values it may have;
- finds the address it has per family in the VIPClaims (`chosen`: the claims are the
  allocation record, so restarts and leader changes keep the address), or allocates one
  (`sources` and `free` list the candidates; the controller creates the VIPClaim, and a
  claim that already exists means taken: the next candidate is tried);
- keeps one generated VirtualServer per family (`virtual_server`), owned by the Service, and
  publishes the addresses in `status.loadBalancer` (`load_balancer_status`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lvs_operator import model
from lvs_operator.api import API_VERSION, KIND, claims, pools, spec
from lvs_operator.model import IPAddress

DEFAULT_CLASS = "lvs.dev/ipvs"
SERVICE_LABEL = "lvs.dev/service"  # on each generated VirtualServer: its Service's name
PREFIX = "lvs.dev/"  # the annotations the controller reads (and keeps in its cache)

VIP = "lvs.dev/vip"
POOL = "lvs.dev/pool"
SHARING_KEY = "lvs.dev/sharing-key"
FORWARDING = "lvs.dev/forwarding"
SCHEDULER = "lvs.dev/scheduler"
SCHEDULER_FLAGS = "lvs.dev/scheduler-flags"
PERSISTENCE = "lvs.dev/persistence-timeout"
HEALTH_CHECK = "lvs.dev/health-check"
HEALTH_CHECK_PATH = "lvs.dev/health-check-path"
# Every annotation, and what it means (the README's table says the same).
ANNOTATIONS: Mapping[str, str] = {
    VIP: "the address(es) to use, one per IP family, comma-separated; each must lie in a "
         "VIPPool the namespace may use",
    POOL: "the VIPPool to allocate from (it need not have autoAssign)",
    SHARING_KEY: "Services of the namespace with the same key share one VIP (on different "
                 "ports)",
    FORWARDING: f"{', '.join(spec.FORWARDING)} (default DirectRouting)",
    SCHEDULER: f"an IPVS scheduler: {', '.join(sorted(model.SCHEDULERS))} (default wlc)",
    SCHEDULER_FLAGS: f"comma-separated: {', '.join(spec.SCHEDULER_FLAGS)}",
    PERSISTENCE: f"seconds a client sticks to its real server, 1 to "
                 f"{spec.MAX_PERSISTENCE_SECONDS} (default: none)",
    HEALTH_CHECK: "tcp or http: the directors check each real server (default: none, the "
                  "EndpointSlices' readiness only)",
    HEALTH_CHECK_PATH: "the path of the http check (default /)",
}
# Where spec.parse's field paths come from, to name the annotation in its errors.
_SOURCE_OF = {
    "spec.forwarding": FORWARDING, "spec.scheduler.flags": SCHEDULER_FLAGS,
    "spec.scheduler": SCHEDULER, "spec.persistence": PERSISTENCE,
    "spec.healthCheck.http.path": HEALTH_CHECK_PATH, "spec.healthCheck": HEALTH_CHECK,
    "spec.sharingKey": SHARING_KEY, "spec.ports": "spec.ports (of the Service)",
    "spec.vip": VIP,
}
FAMILIES = {"IPv4": 4, "IPv6": 6}
FAMILY_NAMES = {4: "IPv4", 6: "IPv6"}
IP_MODE = "VIP"  # the load balancer delivers packets addressed to the VIP itself
# The protocols of Service ports that IPVS serves (all of Kubernetes'; kept explicit).
PROTOCOLS = frozenset({"TCP", "UDP", "SCTP"})

# Why a Service has no address (the reasons of its Warning Events).
INVALID_ANNOTATION = "InvalidAnnotation"
ADDRESS_NOT_ALLOWED = "AddressNotAllowed"
NO_POOL = "NoPool"
POOL_EXHAUSTED = "PoolExhausted"


class AnnotationError(ValueError):
    """A Service's annotation (or field) has a value the controller cannot serve.

    Attributes:
        annotation: the annotation (or Service field) at fault.
        reason: what was wrong and what to do.
    """

    def __init__(self, annotation: str, reason: str) -> None:
        super().__init__(f"{annotation}: {reason}")
        self.annotation = annotation
        self.reason = reason


class AllocationError(ValueError):
    """No address can be allocated to a Service; `reason` is one of the reasons above."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Request:
    """What a served Service asks for.

    Attributes:
        families: its IP families (4, 6), in `spec.ipFamilies` order.
        addresses: the requested address per family (empty: any).
        requested_by: where `addresses` came from (`lvs.dev/vip` or `spec.loadBalancerIP`).
        pool: the VIPPool named by `lvs.dev/pool` ("": the auto-assign pools).
        sharing_key: `lvs.dev/sharing-key` ("": shares with no other Service).
        spec: the generated VirtualServers' spec but `vip`.
    """

    namespace: str
    name: str
    uid: str
    families: tuple[int, ...]
    addresses: Mapping[int, IPAddress] = field(default_factory=dict)
    requested_by: str = ""
    pool: str = ""
    sharing_key: str = ""
    spec: Mapping[str, Any] = field(default_factory=dict)

    def vs_name(self, family: int) -> str:
        """Return the name of the generated VirtualServer of `family` (a Service name has at
        most 63 characters, so the name is a valid object name)."""
        return f"{self.name}-ipv{family}"


def served(service: Mapping[str, Any], *, load_balancer_class: str, default: bool) -> bool:
    """Return whether the controller serves `service` (a Service, or its compact form)."""
    body = service.get("spec") or {}
    if body.get("type") != "LoadBalancer":
        return False
    wanted = body.get("loadBalancerClass")
    return wanted == load_balancer_class if wanted else default


def request(service: Mapping[str, Any]) -> Request:
    """Return what a served `service` (as the API server sends it, or its compact form) asks
    for.

    Raises:
        AnnotationError: naming the annotation or Service field that is invalid.
    """
    meta = service.get("metadata") or {}
    body = service.get("spec") or {}
    notes: Mapping[str, str] = meta.get("annotations") or {}
    namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
    families = tuple(FAMILIES[f] for f in body.get("ipFamilies") or ["IPv4"] if f in FAMILIES)
    addresses, requested_by = _requested(notes, body, families)
    doc: dict[str, Any] = {"ports": _ports(body), "backend": {"service": _backend(name, body)}}
    forwarding = notes.get(FORWARDING, "DirectRouting")
    if forwarding not in spec.FORWARDING:
        raise AnnotationError(FORWARDING, f"must be one of {', '.join(spec.FORWARDING)}, "
                                          f"got {forwarding!r}")
    doc["forwarding"] = forwarding
    if forwarding == "NAT":
        _nat_ports(doc["ports"], body)
    scheduler: dict[str, Any] = {}
    if SCHEDULER in notes:
        if notes[SCHEDULER] not in model.SCHEDULERS:
            raise AnnotationError(SCHEDULER, f"unknown scheduler {notes[SCHEDULER]!r}: use "
                                  f"one of {', '.join(sorted(model.SCHEDULERS))}")
        scheduler["name"] = notes[SCHEDULER]
    if SCHEDULER_FLAGS in notes:
        scheduler["flags"] = [f.strip() for f in notes[SCHEDULER_FLAGS].split(",") if f.strip()]
    if scheduler:
        doc["scheduler"] = scheduler
    if PERSISTENCE in notes:
        doc["persistence"] = {"timeoutSeconds": _seconds(notes[PERSISTENCE])}
    check = notes.get(HEALTH_CHECK)
    if check is not None:
        if check not in ("tcp", "http"):
            raise AnnotationError(HEALTH_CHECK, f"must be tcp or http, got {check!r}")
        doc["healthCheck"] = {check: {"path": notes.get(HEALTH_CHECK_PATH, "/")}
                              if check == "http" else {}}
    elif HEALTH_CHECK_PATH in notes:
        raise AnnotationError(HEALTH_CHECK_PATH, f"needs {HEALTH_CHECK}: http")
    key = notes.get(SHARING_KEY, "")
    if key:
        doc["sharingKey"] = key
    result = Request(namespace=namespace, name=name, uid=str(meta.get("uid", "")),
                     families=families, addresses=addresses, requested_by=requested_by,
                     pool=notes.get(POOL, ""), sharing_key=key, spec=doc)
    # The rest of the rules are the VirtualServer's: check them once, with a stand-in VIP
    # of each family (the real one is of a pool, which spec.parse accepts as well).
    for family in families:
        parse(result, family, ipaddress.ip_address("192.0.2.1" if family == 4 else "2001:db8::1"))
    return result


def _requested(notes: Mapping[str, str], body: Mapping[str, Any], families: tuple[int, ...]
               ) -> tuple[dict[int, IPAddress], str]:
    raw, source = notes.get(VIP), VIP
    if raw is None:
        raw, source = body.get("loadBalancerIP") or "", "spec.loadBalancerIP"
    found: dict[int, IPAddress] = {}
    for text in (t.strip() for t in raw.split(",") if t.strip()):
        try:
            address = spec.parse_address(text, source)
        except spec.SpecError as error:
            raise AnnotationError(source, error.reason) from None
        if address.version not in families:
            raise AnnotationError(source, f"{address} is {FAMILY_NAMES[address.version]}, "
                                  "but the Service's spec.ipFamilies are "
                                  f"{', '.join(FAMILY_NAMES[f] for f in families)}")
        if address.version in found:
            raise AnnotationError(source, f"gives two {FAMILY_NAMES[address.version]} "
                                  "addresses: give at most one per IP family")
        found[address.version] = address
    return found, source if found else ""


def _ports(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    ports = []
    for index, port in enumerate(body.get("ports") or []):
        protocol = port.get("protocol", "TCP")
        if protocol not in PROTOCOLS:
            raise AnnotationError(f"spec.ports[{index}].protocol",
                                  f"IPVS serves {', '.join(sorted(PROTOCOLS))}, not {protocol}")
        ports.append({"port": port.get("port"), "protocol": protocol})
    if not ports:
        raise AnnotationError("spec.ports", "a LoadBalancer Service needs at least one port")
    return ports


def _backend(name: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """Return spec.backend.service: this Service, by its first port (the pods are the same
    behind every port; DirectRouting and Tunnel deliver each virtual port to itself)."""
    first = (body.get("ports") or [{}])[0]
    return {"name": name, "port": first.get("name") or first.get("port")}


def _nat_ports(ports: list[dict[str, Any]], body: Mapping[str, Any]) -> None:
    """Give NAT ports their Service targetPort: a number is written on the port; a named one
    is resolved from the EndpointSlices, which works for one port only."""
    raw = body.get("ports") or []
    for port, service_port in zip(ports, raw, strict=True):
        target = service_port.get("targetPort", port["port"])
        if isinstance(target, int):
            if target != port["port"]:
                port["targetPort"] = target
        elif len(raw) > 1:
            raise AnnotationError(FORWARDING, f"NAT with several ports needs numeric "
                                  f"targetPorts (port {port['port']} targets {target!r}): "
                                  "use numbers, or one port per Service")


def _seconds(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= spec.MAX_PERSISTENCE_SECONDS:
        raise AnnotationError(PERSISTENCE, f"must be a number of seconds from 1 to "
                              f"{spec.MAX_PERSISTENCE_SECONDS}, got {raw!r}")
    return value


def virtual_server(req: Request, family: int, vip: IPAddress) -> dict[str, Any]:
    """Return the VirtualServer the controller keeps for `req`'s Service and `family`:
    owned by the Service (the garbage collector deletes it with the Service)."""
    return {
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": {
            "name": req.vs_name(family), "namespace": req.namespace,
            "labels": {SERVICE_LABEL: req.name, "app.kubernetes.io/managed-by": "lvs-operator"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": req.name,
                                 "uid": req.uid, "controller": True}],
        },
        "spec": {"vip": str(vip), **req.spec},
    }


def parse(req: Request, family: int, vip: IPAddress) -> spec.VirtualServer:
    """Return the generated VirtualServer of `family` on `vip`, parsed.

    Raises:
        AnnotationError: naming the annotation behind the invalid field.
    """
    try:
        return spec.parse(virtual_server(req, family, vip))
    except spec.SpecError as error:
        source = next((a for p, a in _SOURCE_OF.items() if error.path.startswith(p)),
                      error.path)
        raise AnnotationError(source, f"{error.reason} (as {error.path} of the generated "
                              "VirtualServer)") from None


def owns(req: Request, claim: claims.Claim) -> bool:
    """Return whether `claim` is an allocation of `req`'s Service: made for it, or for a
    Service of its namespace with its sharing key."""
    return claim.namespace == req.namespace and (
        claim.service == req.name
        or (bool(req.sharing_key) and claim.sharing_key == req.sharing_key))


def refusal(req: Request, claim: claims.Claim) -> str:
    """Return why `req`'s Service may not use the address of `claim`, which it requested
    ("" when it may: its own allocation, a sharer's, or a VirtualServer's of its namespace,
    with which a VIP is shared on different ports as between VirtualServers)."""
    if owns(req, claim):
        return ""
    if claim.namespace != req.namespace:
        return (f"{req.requested_by}: {claim.address} belongs to another namespace: request "
                "another address")
    if not claim.service:
        return ""
    return (f"{req.requested_by}: {claim.address} is Service {claim.service}'s: give both "
            f"Services the same {SHARING_KEY} to share it on different ports")


def chosen(req: Request, family: int, found: Iterable[claims.Claim]) -> IPAddress | None:
    """Return the address `req`'s Service has for `family` among the claims `found` (its
    own, its sharers', and the claim of the address it requests), or None.

    Deterministic, so every replica agrees: the requested address if it may have it, else
    the lowest address of its own (two allocators racing may each have made one; the other
    is released).
    """
    if family not in req.families:
        return None
    wanted = req.addresses.get(family)
    mine = []
    for claim in found:
        if claim.address.version != family:
            continue
        if wanted is not None:
            if claim.address == wanted and not refusal(req, claim):
                return wanted
        elif owns(req, claim) and (not req.pool or claim.pool == req.pool):
            mine.append(claim.address)
    return min(mine, key=int, default=None)


def sources(req: Request, family: int, all_pools: Sequence[pools.Pool],
            labels: Mapping[str, str] | None) -> list[pools.Pool]:
    """Return the pools to allocate `req`'s address of `family` from, in order: the named
    pool, else the auto-assign pools the namespace may use; those that allow the Service's
    forwarding mode and hold addresses of `family`.

    Raises:
        AllocationError: NO_POOL, saying what to ask a cluster admin for.
    """
    usable = pools.serving(all_pools, req.namespace, labels)
    mode = spec.FORWARDING[req.spec["forwarding"]]
    family_name = FAMILY_NAMES[family]
    if req.pool:
        named = [p for p in usable if p.name == req.pool]
        if not named:
            names = ", ".join(p.name for p in usable) or "none"
            raise AllocationError(NO_POOL, f"{POOL}: namespace {req.namespace} may not use a "
                                  f"VIPPool {req.pool!r} (it may use: {names})")
        candidates = named
    else:
        candidates = [p for p in usable if p.auto_assign]
        if not candidates:
            raise AllocationError(NO_POOL, f"namespace {req.namespace} may use no VIPPool "
                                  f"with autoAssign: true: name one with {POOL}, request an "
                                  f"address with {VIP}, or ask a cluster admin for a pool")
    found = [p for p in candidates if mode in p.forwarding
             and any(r.first.version == family for r in p.addresses)]
    if not found:
        raise AllocationError(NO_POOL, f"no VIPPool of {', '.join(p.name for p in candidates)} "
                              f"has {family_name} addresses for {req.spec['forwarding']}")
    return found


def free(source: Sequence[pools.Pool], family: int, taken: Container[IPAddress]
         ) -> Iterator[tuple[IPAddress, pools.Pool]]:
    """Yield the addresses of `family` in `source` that are not `taken`, in order, with
    their pool (lazily: a pool may be an IPv6 /64). Addresses a VirtualServer may not have
    (such as an IPv4 range's 255.255.255.255) are skipped."""
    for pool in source:
        for span in pool.addresses:
            if span.first.version != family:
                continue
            start = int(span.first)
            cls = type(span.first)
            for n in range(start, int(span.last) + 1):
                address = cls(n)
                if address in taken:
                    continue
                try:
                    spec.parse_address(str(address), "spec.vip")
                except spec.SpecError:
                    continue
                yield address, pool


def load_balancer_status(families: Sequence[int], addresses: Mapping[int, IPAddress]
                         ) -> dict[str, Any]:
    """Return `status.loadBalancer` for the `addresses` a Service has, in family order."""
    ingress = [{"ip": str(addresses[f]), "ipMode": IP_MODE} for f in families if f in addresses]
    return {"ingress": ingress} if ingress else {}
