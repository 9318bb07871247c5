"""Which director holds each VIP with the lease engine (LVS_HA_ENGINE=lease): liveness from
one Lease per director, then rendezvous. Pure. (With keepalived, the default, VRRP decides:
`vrrp`, `keepalived`; only `View`, the directors and their labels, is used from here.)

Why one Lease per director and not one election per VirtualServer: an election per
VirtualServer costs every candidate a write (or a conflict) per VirtualServer per renew
period, so API-server load would grow with the number of VirtualServers; at the renew
period fast failover needs (0.2 s) a thousand VirtualServers would mean thousands of writes
a second. Here each director renews one Lease (`lease`: about 5 writes a second per
director, flat in the number of VirtualServers), copies its Node's labels into it, and
every director watches all of them. Liveness and eligibility then come from one watch, and
the assignment is computed, not negotiated:

- candidates of a VirtualServer = the live directors its `spec.directors.nodeSelector`
  selects;
- the winner = the candidate with the highest rendezvous weight for the VIP (sha256 of VIP
  and node; highest random weight hashing): every director computes the same winner from
  the same view, VIPs spread evenly over the directors, and losing a director moves only
  the VIPs it held. The key is the VIP, not the VirtualServer: VirtualServers that share a
  VIP (other ports) must be held by the same director.

Liveness is judged as client-go's leader election does: by the local monotonic time at
which a Lease's renewTime was last *seen to change* (`Tracker`), never by comparing the
writer's clock with ours. A Lease not seen to change for its duration has expired; a
deleted Lease (a director that shut down gracefully) is dead at once. A Lease seen for the
first time counts as just renewed, which is why a director that starts takes no VIP before
it has held its own Lease for one duration: by then every Lease that was already dead has
expired in its view, and every other director has seen its Lease.

No two holders (`decide`):
- a director whose own renewals stop for `renew_deadline` (< the duration) is *fenced*: it
  holds nothing until it renews again. The others wait a full duration after they last saw
  its Lease change, which is later than its fence;
- a winner takes a VIP only when no other live director reports itself Active for that
  VirtualServer in status.directors: a planned move (a director joined or came back) is a
  handover (the old holder sees it lost, releases the VIP, reports Standby; then the winner
  takes it). A claimant whose Lease has expired is ignored: failover is immediate;
- a claim counts only from the *term* it was written in: each unbroken run of a director's
  renewals (from its start, or from renewing again after a fence) gets a new term, copied
  into its Lease and into each status.directors entry it writes. A director that died or
  was cut off while Active leaves an Active claim behind; when it renews again its Lease
  shows a new term at once, while its status entries are rewritten only when its role
  changes (its first sync, if another took over meanwhile). The old claim must not make the
  director that took over step down early (it claims a VIP the returning director no longer
  holds), but it still keeps a director that holds nothing from taking the VIP until the
  claim is rewritten (its director may still hold the VIP);
- against a live holder, a director that has just become live counts as a candidate only
  after `settle` seconds, so a director that flaps does not pull VIPs back and forth.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from lvs_operator.api import conditions

ACTIVE = conditions.ACTIVE  # the role the controller reads in status.directors
STANDBY = "Standby"


class Role(enum.Enum):
    """A director's role for one VirtualServer; values are what status.directors shows."""

    ACTIVE = ACTIVE  # holds the VIP and answers ARP / NDP for it
    STANDBY = STANDBY  # programs the services, ready to take the VIP over


def weight(key: str, node: str) -> int:
    """Return the rendezvous weight of director `node` for `key` (a VIP): stable across
    processes and machines (sha256, not `hash`)."""
    digest = hashlib.sha256(f"{key}\0{node}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def winner(key: str, nodes: Iterable[str]) -> str | None:
    """Return the node of `nodes` with the highest weight for `key` (ties by name), or
    None when there is none."""
    return max(nodes, key=lambda node: (weight(key, node), node), default=None)


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Return whether a node with `labels` matches `selector` (every label equal)."""
    return all(labels.get(key) == value for key, value in selector.items())


@dataclass(frozen=True)
class Seen:
    """One director's Lease as it was read: what liveness is judged by.

    Attributes:
        node: the director (holderIdentity).
        marker: what changes on every renewal (renewTime); its change is a sign of life.
        duration: the Lease's duration in seconds.
        labels: the director's Node labels, as it copied them into its Lease.
    """

    node: str
    marker: str
    duration: float
    labels: Mapping[str, str] = field(default_factory=dict)
    term: str = ""
    address: str = ""  # its VRRP address ("" when its Lease says none)


@dataclass(frozen=True)
class Claim:
    """One director's role for a VirtualServer as its status.directors entry says.

    Attributes:
        role: Active or Standby.
        term: the term (run of Lease renewals) the entry was written in; "" when the
            writer did not say (then it counts whatever the director's term is now).
    """

    role: str
    term: str = ""


@dataclass
class _Record:
    seen: Seen
    changed: float  # local monotonic time at which the marker was last seen to change
    live_since: float  # start of the current live period, local time


@dataclass(frozen=True)
class Peer:
    """Another director as this one sees it at one instant.

    Attributes:
        live: its Lease has been seen to change within its duration.
        settled: live for at least the settle time (may then displace a live holder).
        labels: its Node labels.
        term: its current run of renewals, as its Lease says ("" when it does not say).
        address: its VRRP address, as its Lease says ("" when it does not say).
    """

    live: bool
    settled: bool
    labels: Mapping[str, str]
    term: str = ""
    address: str = ""


@dataclass(frozen=True)
class View:
    """What a director knows of the election at one instant (from `Tracker.view`).

    Attributes:
        me: this director's node.
        fenced: its own renewals are overdue: it must hold nothing.
        ready: it has held its own Lease for one duration after the first Lease list: it
            may take VIPs.
        fresh: its watch of the Leases shows its own renewals (a stuck watch would show
            every other Lease expiring): it may take VIPs.
        settled: it has been renewing for at least the settle time.
        peers: the other directors with a Lease, live or not.
        term: its own current term (what its status entries must carry); "" when none.
    """

    me: str
    fenced: bool
    ready: bool
    fresh: bool
    settled: bool
    peers: Mapping[str, Peer]
    term: str = ""

    def others(self, selector: Mapping[str, str]) -> list[str]:
        """Return the other directors (live or not) that `selector` selects."""
        return sorted(n for n, p in self.peers.items() if selects(selector, p.labels))

    def signature(self) -> tuple[object, ...]:
        """Return what decisions depend on (a change of it needs a sync)."""
        return (self.fenced, self.ready, self.fresh, self.settled, self.term,
                tuple(sorted((n, p.live, p.settled, p.term, p.address,
                              tuple(sorted(p.labels.items())))
                             for n, p in self.peers.items())))


def decide(view: View, *, key: str, selector: Mapping[str, str],
           claims: Mapping[str, Claim], holding: bool) -> Role:
    """Return this director's role for a VirtualServer that selects it.

    Args:
        view: the election as this director sees it now.
        key: the VIP (the rendezvous key).
        selector: the VirtualServer's spec.directors.nodeSelector.
        claims: each director's claim in the VirtualServer's status.directors.
        holding: whether this director holds the VIP now.
    """
    if view.fenced:
        # Fencing keeps two directors from holding the VIP; with no other director that
        # could take it (none with a Lease that this VirtualServer selects), dropping it
        # would only turn a slow renewal into an outage.
        return Role.ACTIVE if holding and not view.others(selector) else Role.STANDBY
    me = view.me
    others: set[str] = set()  # live directors holding the VIP by a claim of their term
    stale: set[str] = set()  # live directors with an Active claim of an earlier term
    for n, claim in claims.items():
        peer = view.peers.get(n)
        if n == me or claim.role != ACTIVE or peer is None or not peer.live:
            continue
        current = not claim.term or not peer.term or claim.term == peer.term
        (others if current else stale).add(n)
    if not (view.ready and view.fresh):
        # Starting, or blind: take nothing; keep what is held unless another claims it.
        return Role.ACTIVE if holding and not (others or stale) else Role.STANDBY
    holders = others | ({me} if holding else set())
    candidates = {n for n, p in view.peers.items()
                  if p.live and selects(selector, p.labels)
                  and (not holders or n in holders or p.settled)}
    if not holders or holding or view.settled:
        candidates.add(me)
    if winner(key, candidates) != me:
        return Role.STANDBY
    # The winner waits until the live holder has let go (handover); one that holds nothing
    # also waits for an old claim to be rewritten (its director may still hold the VIP).
    return Role.STANDBY if others or (stale and not holding) else Role.ACTIVE


class Tracker:
    """Liveness of the directors' Leases by local observation (not thread-safe)."""

    def __init__(self, me: str, *, settle: float) -> None:
        self.me = me
        self.settle = settle
        self._records: dict[str, _Record] = {}
        self._listed: float | None = None

    def observe(self, leases: Iterable[Seen], now: float) -> None:
        """Record the Leases as they are now (a complete set: absent ones are deleted)."""
        fresh: dict[str, _Record] = {}
        for seen in leases:
            old = self._records.get(seen.node)
            if old is None:
                fresh[seen.node] = _Record(seen, changed=now, live_since=now)
            elif old.seen.marker != seen.marker:
                alive = now < old.changed + old.seen.duration
                fresh[seen.node] = _Record(seen, changed=now,
                                           live_since=old.live_since if alive else now)
            else:
                fresh[seen.node] = _Record(seen, changed=old.changed,
                                           live_since=old.live_since)
        self._records = fresh
        if self._listed is None:
            self._listed = now

    def view(self, now: float, *, renewed: float | None, held_since: float | None,
             deadline: float, duration: float, term: str = "") -> View:
        """Return the view at `now`.

        Args:
            renewed: when this director's last successful renewal started (None: never).
            held_since: when its current unbroken run of renewals began.
            deadline: its renew deadline (fenced when `renewed` is older).
            duration: its own Lease duration.
            term: its current term (the run of renewals `held_since` began).
        """
        fenced = renewed is None or now >= renewed + deadline
        ready = (not fenced and held_since is not None and self._listed is not None
                 and now >= max(held_since, self._listed) + duration)
        mine = self._records.get(self.me)
        fresh = mine is not None and now < mine.changed + deadline
        peers = {n: Peer(live=now < r.changed + r.seen.duration,
                         settled=now < r.changed + r.seen.duration
                         and now >= r.live_since + self.settle,
                         labels=r.seen.labels, term=r.seen.term, address=r.seen.address)
                 for n, r in self._records.items() if n != self.me}
        settled = not fenced and held_since is not None and now >= held_since + self.settle
        return View(me=self.me, fenced=fenced, ready=ready, fresh=fresh, settled=settled,
                    peers=peers, term=term)

    def next_change(self, now: float, *, renewed: float | None, held_since: float | None,
                    deadline: float, duration: float) -> float | None:
        """Return the earliest time after `now` at which `view` may change by itself (a
        Lease expiring, a director settling, this one fencing or getting ready), or None."""
        times: list[float] = []
        if renewed is not None:
            times.append(renewed + deadline)
        if held_since is not None:
            times.append(held_since + self.settle)
            if self._listed is not None:
                times.append(max(held_since, self._listed) + duration)
        for node, r in self._records.items():
            if node == self.me:
                times.append(r.changed + deadline)
                continue
            times += [r.changed + r.seen.duration, r.live_since + self.settle]
        later = [t for t in times if t > now]
        return min(later) if later else None
