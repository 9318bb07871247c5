"""agent.election: rendezvous assignment, liveness by local observation, settle, handover,
self-fence. Pure: times are plain numbers."""

from __future__ import annotations

import collections

import pytest

from lvs_operator.agent.election import (
    Claim,
    Peer,
    Role,
    Seen,
    Tracker,
    View,
    decide,
    weight,
    winner,
)

ACTIVE, STANDBY = Role.ACTIVE, Role.STANDBY
DURATION, DEADLINE, SETTLE = 0.8, 0.6, 5.0
VIPS = [f"192.0.2.{n}" for n in range(1, 201)]


# --- rendezvous --------------------------------------------------------------------------


def test_weight_is_stable_across_processes():
    # sha256, not hash(): the same in every agent (PYTHONHASHSEED does not matter).
    assert weight("192.0.2.1", "node-a") == 0x2d638e1c00a450a3
    assert weight("192.0.2.1", "node-a") != weight("192.0.2.1", "node-b")
    assert winner("192.0.2.1", []) is None


def test_rendezvous_spreads_vips_over_the_directors():
    nodes = ["node-a", "node-b", "node-c", "node-d"]
    counts = collections.Counter(winner(vip, nodes) for vip in VIPS)
    assert set(counts) == set(nodes)
    assert min(counts.values()) >= len(VIPS) / len(nodes) / 2, counts


def test_rendezvous_moves_only_the_vips_of_a_lost_director():
    nodes = ["node-a", "node-b", "node-c", "node-d"]
    before = {vip: winner(vip, nodes) for vip in VIPS}
    after = {vip: winner(vip, [n for n in nodes if n != "node-c"]) for vip in VIPS}
    moved = {vip for vip in VIPS if before[vip] != after[vip]}
    assert moved == {vip for vip in VIPS if before[vip] == "node-c"}
    # ... and a director that joins takes only VIPs, never moves them between the others.
    joined = {vip: winner(vip, [*nodes, "node-e"]) for vip in VIPS}
    assert all(joined[v] in (before[v], "node-e") for v in VIPS)


def test_winner_does_not_depend_on_the_order_of_the_candidates():
    for vip in VIPS[:20]:
        assert winner(vip, ["a", "b", "c"]) == winner(vip, ["c", "a", "b"])


# --- decide ------------------------------------------------------------------------------

def view(me="a", *, fenced=False, ready=True, fresh=True, settled=True, **peers: Peer) -> View:
    return View(me=me, fenced=fenced, ready=ready, fresh=fresh, settled=settled, peers=peers)


def live(settled=True, **labels: str) -> Peer:
    return Peer(live=True, settled=settled, labels=labels)


DEAD = Peer(live=False, settled=False, labels={})


def vip_won_by(me: str, other: str) -> str:
    """A VIP whose rendezvous winner between `me` and `other` is `me`."""
    return next(v for v in VIPS if winner(v, [me, other]) == me)


A_WINS = vip_won_by("a", "b")
B_WINS = vip_won_by("b", "a")


@pytest.mark.parametrize(("name", "the_view", "key", "claims", "holding", "role"), [
    ("alone", view(), A_WINS, {}, False, ACTIVE),
    ("alone, holding", view(), A_WINS, {}, True, ACTIVE),
    ("winner among two", view(b=live()), A_WINS, {}, False, ACTIVE),
    ("loser among two", view(b=live()), B_WINS, {}, False, STANDBY),
    ("loser releases what it holds", view(b=live()), B_WINS, {"a": "Active"}, True, STANDBY),
    # Handover: the winner waits while the live holder still says Active.
    ("winner waits for the holder", view(b=live()), A_WINS, {"b": "Active"}, False, STANDBY),
    ("winner takes once released", view(b=live()), A_WINS, {"b": "Standby"}, False, ACTIVE),
    # Failover: a claimant whose Lease expired is ignored.
    ("failover", view(b=DEAD), B_WINS, {"b": "Active"}, False, ACTIVE),
    ("failover, deleted Lease", view(), B_WINS, {"b": "Active"}, False, ACTIVE),
    # Eligibility: a peer its selector does not pick is no candidate.
    ("ineligible peer", view(b=live(zone="x")), B_WINS, {}, False, ACTIVE),
    ("self-fence", view(fenced=True, b=live()), A_WINS, {}, True, STANDBY),
    ("self-fence with a peer whose Lease expired", view(fenced=True, b=DEAD), A_WINS, {},
     True, STANDBY),
    # A lone director (no other Lease this VirtualServer selects) keeps its VIP: nobody
    # else could take it, so dropping it would be an outage, not safety.
    ("fenced but alone keeps", view(fenced=True), A_WINS, {}, True, ACTIVE),
    ("fenced, ineligible peer only", view(fenced=True, b=live(zone="x")), A_WINS, {},
     True, ACTIVE),
    ("fenced takes nothing new", view(fenced=True), A_WINS, {}, False, STANDBY),
    # Starting (or a stuck watch): take nothing, keep what is held unless claimed.
    ("not ready takes nothing", view(ready=False), A_WINS, {}, False, STANDBY),
    ("not ready keeps", view(ready=False), A_WINS, {}, True, ACTIVE),
    ("not ready, claimed", view(ready=False, b=live()), A_WINS, {"b": "Active"}, True,
     STANDBY),
    ("stale watch takes nothing", view(fresh=False), A_WINS, {}, False, STANDBY),
    ("stale watch keeps", view(fresh=False, b=live()), B_WINS, {}, True, ACTIVE),
    # Settle: against a live holder, a director that just came back does not count...
    ("returning, unsettled", view(settled=False, b=live()), A_WINS, {"b": "Active"}, False,
     STANDBY),
    ("holder keeps against unsettled", view(b=live(settled=False)), B_WINS, {"a": "Active"},
     True, ACTIVE),
    # ... once settled it does: the holder hands over.
    ("holder hands over to settled", view(b=live()), B_WINS, {"a": "Active"}, True, STANDBY),
    # Nobody holds: no settle wait.
    ("unsettled, nobody holds", view(settled=False, b=live()), A_WINS, {}, False, ACTIVE),
])
def test_decide(name, the_view, key, claims, holding, role):
    assert decide(the_view, key=key, selector={"zone": "y"} if "ineligible" in name else {},
                  claims=roles(claims), holding=holding) is role, name


def roles(claims: dict[str, str], term: str = "") -> dict[str, Claim]:
    """Claims with these roles, written in `term`."""
    return {node: Claim(role, term) for node, role in claims.items()}


def in_term(term: str, settled: bool = True) -> Peer:
    return Peer(live=True, settled=settled, labels={}, term=term)


@pytest.mark.parametrize(("name", "the_view", "key", "claims", "holding", "role"), [
    # b was Active in term 1, died, a took over; b renews again in term 2, its entry still
    # says Active from term 1: a keeps the VIP (b holds nothing any more)...
    ("holder ignores an old claim", view(b=in_term("2", settled=False)), B_WINS,
     {"a": Claim("Active", "x"), "b": Claim("Active", "1")}, True, ACTIVE),
    ("... even once settled, if it still wins", view(b=in_term("2")), A_WINS,
     {"a": Claim("Active", "x"), "b": Claim("Active", "1")}, True, ACTIVE),
    # ... but a director holding nothing does not take the VIP while an old claim stands
    # (its director may still hold the VIP until its first sync rewrites the claim).
    ("an old claim blocks a taker", view(b=in_term("2")), A_WINS,
     {"b": Claim("Active", "1")}, False, STANDBY),
    ("rewritten, it does not", view(b=in_term("2")), A_WINS,
     {"b": Claim("Standby", "2")}, False, ACTIVE),
    ("a claim of the current term counts", view(b=in_term("2")), A_WINS,
     {"b": Claim("Active", "2")}, False, STANDBY),
    ("a holder yields to a current claim of the winner", view(b=in_term("2")), B_WINS,
     {"a": Claim("Active", "x"), "b": Claim("Active", "2")}, True, STANDBY),
    ("a claim without a term always counts", view(b=in_term("2", settled=False)), B_WINS,
     {"a": Claim("Active", "x"), "b": Claim("Active")}, True, STANDBY),
    ("not ready: an old claim still releases", view(ready=False, b=in_term("2")), A_WINS,
     {"b": Claim("Active", "1")}, True, STANDBY),
])
def test_decide_by_term(name, the_view, key, claims, holding, role):
    assert decide(the_view, key=key, selector={}, claims=claims, holding=holding) is role, name


def test_a_director_back_after_dying_active_does_not_pull_the_vip_early():
    """The failure seen in the full-stack tier: a, Active, killed; b took over; a's agent
    restarts and renews (a new term) while its old entry still says Active."""
    claims = {"a": Claim("Active", "t1"), "b": Claim("Active", "u1")}
    a = view("a", settled=False, ready=False, b=in_term("u1"))
    b = view("b", a=in_term("t2", settled=False))
    assert decide(b, key=A_WINS, selector={}, claims=claims, holding=True) is ACTIVE
    assert decide(a, key=A_WINS, selector={}, claims=claims, holding=True) is STANDBY
    # a's first sync rewrites its entry (Standby, term t2); after the settle time it wins.
    claims = {"a": Claim("Standby", "t2"), "b": Claim("Active", "u1")}
    b = view("b", a=in_term("t2"))
    assert decide(b, key=A_WINS, selector={}, claims=claims, holding=True) is STANDBY


def test_a_returning_winner_moves_the_vip_once():
    """b holds A_WINS while a was away; a comes back: one handover, never two holders."""
    claims = roles({"b": "Active"})
    # a, back but unsettled, and b, holding: b keeps, a waits.
    a = view("a", settled=False, b=live())
    b = view("b", a=live(settled=False))
    assert decide(a, key=A_WINS, selector={}, claims=claims, holding=False) is STANDBY
    assert decide(b, key=A_WINS, selector={}, claims=claims, holding=True) is ACTIVE
    # a settled: b lets go first; a still waits while b's report says Active.
    a = view("a", b=live())
    b = view("b", a=live())
    assert decide(b, key=A_WINS, selector={}, claims=claims, holding=True) is STANDBY
    assert decide(a, key=A_WINS, selector={}, claims=claims, holding=False) is STANDBY
    # b reports Standby: a takes it, and b does not take it back.
    claims = roles({"b": "Standby"})
    assert decide(a, key=A_WINS, selector={}, claims=claims, holding=False) is ACTIVE
    claims = roles({"a": "Active", "b": "Standby"})
    assert decide(b, key=A_WINS, selector={}, claims=claims, holding=False) is STANDBY


# --- Tracker: liveness by local observation ----------------------------------------------

def seen(node: str, marker: str, duration: float = DURATION, **labels: str) -> Seen:
    return Seen(node=node, marker=marker, duration=duration, labels=labels)


RECENTLY = -1.0


def look(tracker: Tracker, now: float, *, renewed: float | None = RECENTLY,
         held_since: float | None = 0.0) -> View:
    return tracker.view(now, renewed=now - 0.1 if renewed == RECENTLY else renewed,
                        held_since=held_since, deadline=DEADLINE, duration=DURATION)


def test_a_lease_lives_while_it_is_seen_to_change():
    tracker = Tracker("a", settle=SETTLE)
    tracker.observe([seen("b", "t1")], now=0.0)
    assert look(tracker, 0.7).peers["b"].live
    assert not look(tracker, 0.8).peers["b"].live, "not seen to change for its duration"
    tracker.observe([seen("b", "t1")], now=0.7)  # the same renewTime again: no sign of life
    assert not look(tracker, 0.85).peers["b"].live
    tracker.observe([seen("b", "t2")], now=0.9)
    assert look(tracker, 1.6).peers["b"].live
    assert not look(tracker, 1.75).peers["b"].live


def test_the_writers_clock_does_not_matter():
    # renewTime years in the past (a skewed clock): it changes, so the director is live.
    tracker = Tracker("a", settle=SETTLE)
    tracker.observe([seen("b", "1999-01-01T00:00:00.000001Z")], now=0.0)
    tracker.observe([seen("b", "1999-01-01T00:00:00.200001Z")], now=0.2)
    assert look(tracker, 0.9).peers["b"].live


def test_a_deleted_lease_is_dead_at_once():
    tracker = Tracker("a", settle=SETTLE)
    tracker.observe([seen("b", "t1")], now=0.0)
    tracker.observe([], now=0.1)
    assert "b" not in look(tracker, 0.1).peers


def test_the_leases_own_duration_counts():
    tracker = Tracker("a", settle=SETTLE)
    tracker.observe([seen("b", "t1", duration=3.0)], now=0.0)
    assert look(tracker, 2.9).peers["b"].live


def test_settle_counts_from_the_return():
    tracker = Tracker("a", settle=SETTLE)
    tracker.observe([seen("b", "t1")], now=0.0)
    for step in range(1, 30):  # renews every 0.2 s for 5.8 s
        tracker.observe([seen("b", f"t{step + 1}")], now=step * 0.2)
    assert look(tracker, 5.8).peers["b"].settled
    # Gone for longer than its duration, then back: settles again from the return.
    tracker.observe([seen("b", "back")], now=10.0)
    assert look(tracker, 10.1).peers["b"].live
    assert not look(tracker, 10.1).peers["b"].settled
    for step in range(1, 30):
        tracker.observe([seen("b", f"back{step}")], now=10.0 + step * 0.2)
    assert look(tracker, 15.1).peers["b"].settled


def test_self_fence_ready_fresh_and_settled():
    tracker = Tracker("a", settle=SETTLE)
    assert look(tracker, 0.0, renewed=None, held_since=None).fenced, "never renewed"
    tracker.observe([seen("a", "m1")], now=0.1)
    v = look(tracker, 0.5, renewed=0.0, held_since=0.0)
    assert (v.fenced, v.ready, v.fresh) == (False, False, True)
    # Ready one duration after both the first list and the first renewal.
    assert not look(tracker, 0.85, renewed=0.6).ready
    tracker.observe([seen("a", "m2")], now=0.85)
    assert look(tracker, 0.95, renewed=0.8).ready
    # The renewal that started at 0.8 is the last to succeed: fenced from 1.4 on.
    assert not look(tracker, 1.39, renewed=0.8).fenced
    fenced = look(tracker, 1.4, renewed=0.8)
    assert fenced.fenced and not fenced.ready
    # Our own renewals not seen through the watch for the deadline: not fresh.
    assert not look(tracker, 1.5, renewed=1.4).fresh
    assert look(tracker, 5.0, renewed=4.9, held_since=0.0).settled


def test_a_first_seen_lease_counts_as_just_renewed():
    """An agent that starts sees a Lease whose director died long ago as live for one
    duration, which is why it takes nothing before it has held its own Lease that long."""
    tracker = Tracker("a", settle=SETTLE)
    tracker.observe([seen("b", "old"), seen("a", "m")], now=0.0)
    assert look(tracker, 0.5, renewed=0.4, held_since=0.0).peers["b"].live
    tracker.observe([seen("b", "old"), seen("a", "m2")], now=0.7)
    v = look(tracker, 0.8, renewed=0.6, held_since=0.0)
    assert v.ready and not v.peers["b"].live, "ready exactly when the dead Lease expired"


def test_next_change_is_the_earliest_expiry_fence_or_settle():
    tracker = Tracker("a", settle=SETTLE)
    tracker.observe([seen("b", "t1"), seen("a", "m")], now=0.0)
    later = tracker.next_change(0.1, renewed=0.05, held_since=0.05, deadline=DEADLINE,
                                duration=DURATION)
    assert later == pytest.approx(0.6)  # our own Lease not seen again: not fresh at 0.6
    tracker.observe([seen("b", "t1"), seen("a", "m2")], now=0.5)
    later = tracker.next_change(0.55, renewed=0.5, held_since=0.05, deadline=DEADLINE,
                                duration=DURATION)
    assert later == pytest.approx(0.8)  # b expires (and we get ready) at 0.8


def test_the_controller_names_the_active_one_of_several_directors():
    from lvs_operator.controller import report

    reports = {"node-a": {"role": "Standby", "generation": 3},
               "node-b": {"role": "Active", "generation": 3},
               "node-c": {"role": "Standby", "generation": 2}}
    assert report.active_director(reports) == "node-b"
    assert report.active_director({n: {"role": "Standby"} for n in reports}) is None
