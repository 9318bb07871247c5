"""Two VirtualServers claiming the same VIP:port/protocol: the older one keeps it.

Pure. A schema cannot see these conflicts (they span objects and namespaces), so the
controller settles them: "older" is the earlier `metadata.creationTimestamp`, then namespace
and name (timestamps have whole seconds; objects made in the same second still need one
answer). The rule is pairwise: a VirtualServer is in conflict when an older one claims any
of its keys, whether or not that older one is itself in conflict -- so what happens to a
VirtualServer depends only on older objects, and deleting or changing a newer one never
takes a service away from an older one. The newer one publishes no real servers (the
directors withdraw it) and recovers by itself when every older claimant is gone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from lvs_operator.api import spec
from lvs_operator.model import ServiceKey


@dataclass(frozen=True)
class Claimant:
    """A VirtualServer as far as conflicts go: who it is, when it was made, what it claims.

    `created` is `metadata.creationTimestamp` as the API gives it (RFC 3339).
    """

    namespace: str
    name: str
    created: str
    keys: frozenset[ServiceKey] = field(default_factory=frozenset)

    @classmethod
    def of(cls, vs: spec.VirtualServer, *, created: str) -> Claimant:
        """Return the claimant for a parsed VirtualServer."""
        return cls(vs.namespace, vs.name, created, frozenset(vs.keys))

    @property
    def id(self) -> str:
        """Return `namespace/name`."""
        return f"{self.namespace}/{self.name}"

    def age_key(self) -> tuple[datetime, str, str]:
        """Return a tuple that orders claimants oldest first, deterministically.

        Raises:
            ValueError: when `created` is not an RFC 3339 timestamp.
        """
        return (datetime.fromisoformat(self.created), self.namespace, self.name)


@dataclass(frozen=True)
class Conflict:
    """`key`, claimed by a VirtualServer of `namespace`, is held by `holder`
    (namespace/name), older."""

    key: ServiceKey
    holder: str
    namespace: str = field(default="", compare=False)

    @property
    def message(self) -> str:
        """Return what a person reads in the Conflict condition. A holder of another
        namespace is not named: the reader may not be allowed to see it (VIPs shared across
        namespaces with a sharing key)."""
        if self.holder.partition("/")[0] == self.namespace:
            who, fix = f"VirtualServer {self.holder}", "or remove it from the other"
        else:
            who, fix = ("a VirtualServer of another namespace sharing this VIP",
                        "or agree on the ports with the other namespace")
        return (f"{self.key} is already claimed by {who}, which is older: use another VIP "
                f"or port here, {fix}; this one takes over by itself when the other lets go")


def conflict(claimant: Claimant, rivals: Iterable[Claimant]) -> Conflict | None:
    """Return what keeps `claimant` out, or None when it may hold all of its keys.

    `rivals` are other VirtualServers (the claimant itself may be among them: it is
    skipped). When several keys or several older rivals conflict, the answer is the first
    key in key order and its oldest claimant, so it does not change from one call to the
    next.

    Raises:
        ValueError: when a creation timestamp is not RFC 3339.
    """
    mine = claimant.age_key()
    older = [r for r in rivals if r.keys & claimant.keys and r.age_key() < mine]
    for key in sorted(claimant.keys, key=ServiceKey.sort_key):
        holders = [r for r in older if key in r.keys]
        if holders:
            return Conflict(key, min(holders, key=Claimant.age_key).id, claimant.namespace)
    return None


def conflicts(claimants: Iterable[Claimant]) -> dict[str, Conflict]:
    """Return the conflict of every claimant that has one, by `namespace/name`.

    Raises:
        ValueError: when a creation timestamp is not RFC 3339.
    """
    claimants = list(claimants)
    by_key: dict[ServiceKey, list[Claimant]] = defaultdict(list)
    for c in claimants:
        for key in c.keys:
            by_key[key].append(c)
    found = {}
    for c in claimants:
        rivals = {r.id: r for key in c.keys for r in by_key[key]}
        result = conflict(c, rivals.values())
        if result is not None:
            found[c.id] = result
    return found
