"""The controller's in-memory forms of the objects it watches. Pure.

A VirtualServer is kept as an `Entry` (its spec parsed once per generation, by `Parser`);
Services and EndpointSlices as the few fields `resolve` and the webhook read
(`compact_service`, `compact_slice`): a cluster's worth of EndpointSlices stays small;
VIPPools and VIPClaims parsed (`compact_pool`, `compact_claim`); Namespaces as their labels.
Every object given here is fresh from JSON and never changed afterwards, so parts of it are
kept, not copied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lvs_operator.api import claims, conditions, pools, spec
from lvs_operator.api.conflicts import Claimant
from lvs_operator.controller import loadbalancer, resolve
from lvs_operator.kube import watch


@dataclass(frozen=True)
class Entry:
    """A VirtualServer as the controller keeps it in memory."""

    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str
    created: str
    deleting: bool
    parsed: spec.VirtualServer | spec.SpecError
    status: Mapping[str, Any]
    owner: str = ""  # the uid of the Service that controls it ("": none does)

    @property
    def key(self) -> watch.Key:
        return watch.Key(self.namespace, self.name)

    @property
    def valid(self) -> spec.VirtualServer | None:
        """Return the parsed spec, or None if it is invalid."""
        return self.parsed if isinstance(self.parsed, spec.VirtualServer) else None

    def claimant(self) -> Claimant | None:
        """Return what this VirtualServer claims, or None if it claims nothing (invalid, or
        being deleted)."""
        vs = self.valid
        if vs is None or self.deleting:
            return None
        return Claimant.of(vs, created=self.created)

    @property
    def refused_before(self) -> bool:
        """Return whether its stored Ready condition says another namespace owned its VIP
        (sticky: see `claims`)."""
        for condition in self.status.get("conditions") or []:
            if isinstance(condition, Mapping) and condition.get("type") == conditions.READY:
                return condition.get("reason") == claims.VIP_IN_USE
        return False


class Parser:
    """`spec.parse` once per object generation (the spec changes only with it)."""

    def __init__(self) -> None:
        self._parsed: dict[str, tuple[int, spec.VirtualServer | spec.SpecError]] = {}

    def parse(self, body: Mapping[str, Any]) -> spec.VirtualServer | spec.SpecError:
        """Return the parsed spec of a VirtualServer `body`, or why it is invalid."""
        meta = body.get("metadata") or {}
        uid, generation = str(meta.get("uid", "")), int(meta.get("generation") or 0)
        cached = self._parsed.get(uid)
        if cached is not None and cached[0] == generation:
            return cached[1]
        try:
            parsed: spec.VirtualServer | spec.SpecError = spec.parse(
                body, default_namespace=str(meta.get("namespace", "")))
        except spec.SpecError as error:
            parsed = error
        self._parsed[uid] = (generation, parsed)
        return parsed

    def entry(self, body: Mapping[str, Any]) -> Entry:
        """Return the entry the informer keeps for a VirtualServer `body` (fresh from JSON
        and never changed afterwards: parts of it are kept, not copied)."""
        meta = body.get("metadata") or {}
        return Entry(
            namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")), generation=int(meta.get("generation") or 0),
            resource_version=str(meta.get("resourceVersion", "")),
            created=str(meta.get("creationTimestamp", "")),
            deleting=bool(meta.get("deletionTimestamp")),
            parsed=self.parse(body), status=body.get("status") or {},
            owner=next((str(r.get("uid", "")) for r in meta.get("ownerReferences") or []
                        if r.get("controller") and r.get("kind") == "Service"
                        and r.get("apiVersion") == "v1"), ""))

    def forget(self, uid: str) -> None:
        """Drop what is cached for a deleted object."""
        self._parsed.pop(uid, None)


_LOAD_BALANCER_FIELDS = ("loadBalancerClass", "ipFamilies", "loadBalancerIP")


def compact_service(body: Mapping[str, Any]) -> dict[str, Any]:
    """Return what the controller (and the webhook) need of a Service (`body` is fresh from
    JSON and never changed: parts of it are kept, not copied)."""
    svc = body.get("spec") or {}
    compact: dict[str, Any] = {"spec": {k: svc[k] for k in ("type", "ports", "selector")
                                        if k in svc}}
    if svc.get("type") != "LoadBalancer":
        return compact
    # What serving it as a load balancer takes (`loadbalancer`): only for these Services.
    meta = body.get("metadata") or {}
    compact["spec"].update({k: svc[k] for k in _LOAD_BALANCER_FIELDS if k in svc})
    compact["metadata"] = {
        "namespace": meta.get("namespace"), "name": meta.get("name"), "uid": meta.get("uid"),
        "resourceVersion": meta.get("resourceVersion"),
        "annotations": {k: v for k, v in (meta.get("annotations") or {}).items()
                        if k.startswith(loadbalancer.PREFIX)}}
    compact["status"] = {"loadBalancer": (body.get("status") or {}).get("loadBalancer") or {}}
    return compact


def compact_slice(body: Mapping[str, Any]) -> dict[str, Any]:
    """Return what `resolve` needs of an EndpointSlice (a fraction of its size), and the
    name of its Service."""
    endpoints = []
    for endpoint in body.get("endpoints") or []:
        ref = endpoint.get("targetRef") or {}
        endpoints.append({
            "addresses": list(endpoint.get("addresses") or [])[:1],
            "conditions": dict(endpoint.get("conditions") or {}),
            "nodeName": endpoint.get("nodeName"),
            "targetRef": {"kind": ref.get("kind"), "name": ref.get("name")},
        })
    return {"service": resolve.service_of(body), "addressType": body.get("addressType"),
            "ports": body.get("ports") or [], "endpoints": endpoints}


def compact_pool(body: Mapping[str, Any]) -> pools.Pool | spec.SpecError:
    """Return a VIPPool parsed, or why it is invalid (an invalid pool admits nothing)."""
    try:
        return pools.parse(body)
    except spec.SpecError as error:
        return error


def compact_claim(body: Mapping[str, Any]) -> claims.Claim | None:
    """Return a VIPClaim parsed, or None when it is not one the controller can read."""
    try:
        return claims.Claim.from_object(body)
    except ValueError:
        return None


def namespace_labels(body: Mapping[str, Any]) -> dict[str, str]:
    """Return a Namespace's labels."""
    return dict((body.get("metadata") or {}).get("labels") or {})


def update_index(index: dict[Any, set[Any]], at: Any, value: Any, *, add: bool) -> None:
    """Add `value` to, or remove it from, the set `index[at]` (dropping an emptied set)."""
    if add:
        index.setdefault(at, set()).add(value)
    elif at in index:
        index[at].discard(value)
        if not index[at]:
            del index[at]
