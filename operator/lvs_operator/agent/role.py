"""Which role this director plays for a VirtualServer: the seam for the election.

Every director that a VirtualServer selects programs its IPVS services; only the Active one
holds the VIP and announces it. With one director per VirtualServer (this issue) that
director is always Active. The election (a `coordination.k8s.io` Lease per VirtualServer)
replaces `decide` and nothing else: the agent asks it once per VirtualServer and sync.
"""

from __future__ import annotations

import enum

from lvs_operator import spec


class Role(enum.Enum):
    """A director's role for one VirtualServer; values are what status.directors shows."""

    ACTIVE = "Active"  # holds the VIP and answers ARP / NDP for it
    STANDBY = "Standby"  # programs the services, ready to take the VIP over


def decide(vs: spec.VirtualServer, *, node: str) -> Role:
    """Return the role of director `node` for `vs`: Active (a single director for now)."""
    del vs, node  # the election will need both
    return Role.ACTIVE
