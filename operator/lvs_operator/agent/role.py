"""Which role this director plays for a VirtualServer. Pure.

Every director that a VirtualServer selects programs its IPVS services; only the Active one
holds the VIP and announces it. The election (`election`: one Lease per director, rendezvous
hashing of the VIP over the live eligible directors, handover through status.directors)
decides; `elected` turns its view into the `Decider` that `desired.build` asks once per
VirtualServer and sync. With keepalived (`vrrp_states`), VRRP decides: Active while the
VIP's instance is MASTER here. Without either (`decide`), a director is Active: what a lone
director, or a test of the desired state, needs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from lvs_operator import vrrp
from lvs_operator.agent.election import Claim, Role, View
from lvs_operator.agent.election import decide as elect
from lvs_operator.api import spec
from lvs_operator.model import IPAddress

__all__ = ["Decider", "Role", "claims", "decide", "elected", "vrrp_states"]

Decider = Callable[[spec.VirtualServer, Mapping[str, Any]], Role]
"""(parsed VirtualServer, its object as the API server returned it) -> this director's role."""


def decide(vs: spec.VirtualServer, *, node: str) -> Role:
    """Return the role of director `node` for `vs` without an election: Active."""
    del vs, node
    return Role.ACTIVE


def claims(obj: Mapping[str, Any]) -> dict[str, Claim]:
    """Return each director's claim (role and term) as a VirtualServer's status.directors
    reports it."""
    found = (obj.get("status") or {}).get("directors") or {}
    return {str(node): Claim(role=str(entry.get("role")), term=str(entry.get("term") or ""))
            for node, entry in found.items()
            if isinstance(entry, Mapping)} if isinstance(found, Mapping) else {}


def elected(view: View, *, held: Collection[IPAddress]) -> Decider:
    """Return the decider of the election's `view`; `held` are the VIPs this director
    holds now."""
    def decider(vs: spec.VirtualServer, obj: Mapping[str, Any]) -> Role:
        return elect(view, key=str(vs.vip), selector=vs.directors.node_selector,
                     claims=claims(obj), holding=vs.vip in held)
    return decider


def vrrp_states(instance_of: Mapping[IPAddress, str], alone: Collection[IPAddress],
                states: Mapping[str, str]) -> Decider:
    """Return the decider of keepalived's VRRP: Active for a VIP whose instance
    (`instance_of`) is MASTER in `states` (keepalived's notifications), and for a VIP with
    no other candidate director (`alone`: this director holds it itself); else Standby."""
    def decider(vs: spec.VirtualServer, obj: Mapping[str, Any]) -> Role:
        del obj
        if vs.vip in alone:
            return Role.ACTIVE
        name = instance_of.get(vs.vip)
        return Role.ACTIVE if name is not None and vrrp.holds(states.get(name)) \
            else Role.STANDBY
    return decider
