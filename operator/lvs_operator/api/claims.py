"""Who owns a VIP: the controller's record, one `VIPClaim` per address. Pure.

A VIP belongs to the namespace it was first granted to. The controller records the grant in
a cluster-scoped `VIPClaim` named after the address (`name_of`), the way Kubernetes records
Service IPs in `IPAddress` objects: creating an object of a given name is atomic, so two
controllers (or a leader and its successor) can never grant one address twice, and the
record outlives every restart. Tenants cannot read or write claims; cluster admins may
delete one to free an address by hand.

Rules (`settle` decides what to write, `check` what a VirtualServer may have):
- an unclaimed VIP is granted to the namespace of its oldest eligible user: a VirtualServer
  admitted by a pool, and never refused for another namespace's claim on it (a squatter
  stays refused once the owner lets go: it must be deleted and re-created to claim the
  address, so an owner that deletes and re-creates its VirtualServer keeps its address);
- while any VirtualServer of the owning namespace uses the VIP, the claim stays;
- a claim made for a LoadBalancer Service (`service` set: the controller allocated the
  address to it, before any VirtualServer uses it) also stays while that Service, or one
  sharing the address with it, still has the address (`settle`'s `wanted`);
- VirtualServers of another namespace may share the VIP only when both sides opted in with
  the same non-empty `spec.sharingKey` and are held by the same directors (node selector
  and interface, after the pool's are applied): otherwise they are refused with
  `VIP_IN_USE`, whose message names no object of the other namespace;
- when the owning namespace no longer uses it, the claim passes to the oldest eligible
  sharer, or is deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lvs_operator.api import API_VERSION, spec
from lvs_operator.model import IPAddress

KIND = "VIPClaim"
PLURAL = "vipclaims"
VIP_IN_USE = "VIPInUse"  # the Ready reason of a VirtualServer refused another's VIP


def name_of(address: IPAddress) -> str:
    """Return the VIPClaim name of `address`: IPv4 as written, IPv6 compressed with ':'
    as '-' (and a 0 where the text would begin or end with '-'), a valid object name."""
    text = str(address)
    if address.version == 4:
        return text
    if text.startswith("::"):
        text = "0" + text
    if text.endswith("::"):
        text += "0"
    return text.replace(":", "-")


@dataclass(frozen=True)
class Claim:
    """A VIPClaim: `address` belongs to `namespace`.

    Attributes:
        sharing_key: the owner's spec.sharingKey when the claim was made ("" shares with
            no other namespace).
        directors: the directors the VIP is held by (the owner's, after its pool's).
        pool: the VIPPool that admitted the owner.
        resource_version: of the stored object ("" for one not yet written).
        service: the LoadBalancer Service of `namespace` the address was allocated to
            ("" when a VirtualServer asked for it).
    """

    address: IPAddress
    namespace: str
    sharing_key: str = ""
    directors: spec.Directors = field(default_factory=spec.Directors)
    pool: str = ""
    resource_version: str = ""
    service: str = ""

    @property
    def name(self) -> str:
        """Return the object's name."""
        return name_of(self.address)

    def document(self) -> dict[str, Any]:
        """Return the VIPClaim object to create or replace."""
        body: dict[str, Any] = {"address": str(self.address), "namespace": self.namespace,
                                "pool": self.pool}
        if self.sharing_key:
            body["sharingKey"] = self.sharing_key
        if self.service:
            body["service"] = self.service
        directors: dict[str, Any] = {}
        if self.directors.node_selector:
            directors["nodeSelector"] = dict(self.directors.node_selector)
        if self.directors.interface:
            directors["interface"] = self.directors.interface
        if directors:
            body["directors"] = directors
        meta: dict[str, Any] = {"name": self.name,
                                "labels": {"app.kubernetes.io/managed-by": "lvs-operator"}}
        if self.resource_version:
            meta["resourceVersion"] = self.resource_version
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": body}

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Claim:
        """Return the claim a stored VIPClaim object records.

        Raises:
            ValueError: when the object is not a claim this module wrote.
        """
        body = obj.get("spec") or {}
        meta = obj.get("metadata") or {}
        try:
            address = spec.parse_address(body.get("address"), "spec.address")
        except spec.SpecError as error:
            raise ValueError(str(error)) from None
        namespace = body.get("namespace")
        if not isinstance(namespace, str) or not namespace:
            raise ValueError("spec.namespace: missing")
        raw = body.get("directors") or {}
        selector = raw.get("nodeSelector") or {} if isinstance(raw, Mapping) else None
        if not isinstance(raw, Mapping) or not isinstance(selector, Mapping):
            raise ValueError("spec.directors: not an object with a nodeSelector map")
        return cls(address=address, namespace=namespace,
                   sharing_key=str(body.get("sharingKey") or ""),
                   directors=spec.Directors(node_selector=dict(selector),
                                            interface=raw.get("interface") or None),
                   pool=str(body.get("pool") or ""),
                   resource_version=str(meta.get("resourceVersion") or ""),
                   service=str(body.get("service") or ""))


@dataclass(frozen=True)
class User:
    """A VirtualServer with a VIP, as `settle` sees it.

    Attributes:
        vs: the VirtualServer as its pool admits it (the pool's directors applied).
        created: its metadata.creationTimestamp (RFC 3339).
        pool: the pool that admits it; "" when no pool does (it is not eligible then, but
            still keeps its namespace's claim: a pool edited by mistake must not free
            addresses for others to take).
        refused: whether it was refused before for another namespace's claim (sticky).
    """

    vs: spec.VirtualServer
    created: str
    pool: str = ""
    refused: bool = False

    @property
    def eligible(self) -> bool:
        """Return whether it may be granted the VIP."""
        return bool(self.pool) and not self.refused

    def age_key(self) -> tuple[datetime, str, str]:
        """Return a key that orders users oldest first, deterministically."""
        try:
            when = datetime.fromisoformat(self.created)
        except ValueError:
            when = datetime.max.replace(tzinfo=None)
        return (when.replace(tzinfo=None), self.vs.namespace, self.vs.name)


def shares(vs: spec.VirtualServer, claim: Claim) -> bool:
    """Return whether `vs` (as its pool admits it) may use `claim`'s VIP."""
    if vs.namespace == claim.namespace:
        return True
    return bool(claim.sharing_key) and vs.sharing_key == claim.sharing_key \
        and _same_directors(vs.directors, claim.directors)


def check(vs: spec.VirtualServer, claim: Claim | None, *, refused_before: bool = False
          ) -> str:
    """Return why `vs` may not use its VIP under `claim` ("" when it may).

    `refused_before` says it was refused for another namespace's claim before: it stays
    refused even when the VIP is free now (see the module docstring).
    """
    if claim is not None and shares(vs, claim):
        return ""
    if claim is None and not refused_before:
        return ""  # not granted yet: the controller grants it first
    if claim is None:
        return (f"spec.vip: {vs.vip} belonged to another namespace when this VirtualServer "
                "was refused it; it is free now, but a refused VirtualServer never takes an "
                "address over: delete and re-create this VirtualServer to claim it")
    # One message whatever the reason: a tenant must not learn whether it guessed the
    # other namespace's sharing key.
    return (f"spec.vip: {vs.vip} belongs to another namespace: use another address, or, "
            "to share it on other ports, both namespaces set the same spec.sharingKey and "
            "use the same directors (node selector and interface)")


def settle(address: IPAddress, claim: Claim | None, users: Iterable[User], *,
           wanted: bool = False) -> tuple[str, Claim | None]:
    """Return what to write so that `address` is claimed as the rules say.

    `users` are every valid VirtualServer with this VIP that is not being deleted; `wanted`
    says a served LoadBalancer Service of the claim's namespace has the address (see
    `Claim.service`): the claim stays even while no VirtualServer uses it yet.

    Returns:
        ("", None) to write nothing; ("create", claim) or ("replace", claim) to write the
        claim (a replacement keeps `claim`'s resourceVersion as its precondition);
        ("delete", claim) to delete the stored claim.
    """
    users = sorted(users, key=User.age_key)
    if claim is None:
        owner = next((u for u in users if u.eligible), None)
        if owner is None:
            return "", None
        return "create", Claim(address, owner.vs.namespace, owner.vs.sharing_key,
                               owner.vs.directors, owner.pool)
    if wanted or any(u.vs.namespace == claim.namespace for u in users):
        return "", None
    heir = next((u for u in users if u.eligible and shares(u.vs, claim)), None)
    if heir is None:
        return "delete", claim
    return "replace", Claim(address, heir.vs.namespace, heir.vs.sharing_key,
                            heir.vs.directors, heir.pool, claim.resource_version)


def _same_directors(a: spec.Directors, b: spec.Directors) -> bool:
    return dict(a.node_selector) == dict(b.node_selector) and a.interface == b.interface
