"""What the controller reports on a VirtualServer: the status fields it owns, and its Events.

Pure. `desired` computes the status fields the controller owns from what it knows (the
parsed spec or why it failed, the resolution, a conflict, the directors' reports); `changed`
says whether they differ from the stored status, so an unchanged object is never rewritten;
`events` names the transitions a person wants to see.

Conditions follow the Kubernetes convention (metav1.Condition): `lastTransitionTime` changes
only when `status` does, `observedGeneration` is the generation the condition was computed
for. The controller owns three of them:
- RealServersResolved: there is at least one ready real server to send traffic to;
- Programmed: the active director reports the current generation without error (the agents
  write their reports to `status.directors`);
- Ready: both, i.e. clients of the VIP are served; otherwise the reason of the first that is
  not (InvalidSpec, then a refusal by the VIP pools or the VIP's owner -- VIPNotAllowed,
  ForwardingNotAllowed, DirectorsNotAllowed, BackendNotAllowed, VIPInUse -- then Conflict
  come before everything else).
Other conditions in `status.conditions` (the agents' VIPBound) are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lvs_operator.api import realservers, spec
from lvs_operator.api.conditions import (
    ACTIVE,
    CONFLICT,
    DIRECTOR_ERROR,
    INVALID_SPEC,
    NO_ACTIVE_DIRECTOR,
    NO_DIRECTORS,
    PROGRAMMED,
    PROGRAMMING,
    READY,
    REAL_SERVERS_RESOLVED,
    TYPES,
    timestamp,
)
from lvs_operator.api.conflicts import Conflict
from lvs_operator.controller import resolve

# The top-level status fields the controller owns (status.directors is the agents').
OWNED = ("observedGeneration", "ports", "ready", "activeDirector", "conditions", "realServers")
# Bounds of what the controller writes, as the CRD declares them (the API server refuses
# more). status.realServers: ~100 bytes of JSON each, so 5,000 keep the object well inside
# etcd's 1.5 MiB per object; an IPVS service with more real servers is rare, and the ready
# ones are kept first. A condition's message: metav1.Condition's own bound.
MAX_REAL_SERVERS = 5000
MAX_CONDITION_MESSAGE = 32768


@dataclass(frozen=True)
class Condition:
    """A condition before it is stamped with a generation and a transition time."""

    type: str
    status: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the VirtualServer: `type` is Normal or Warning."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Refusal:
    """The VirtualServer may not have its VIP (or its terms): `reason` is one of
    `pools.REASONS` or `claims.VIP_IN_USE`; `message` names the field and what to do."""

    reason: str
    message: str


def desired(*, generation: int, vs: spec.VirtualServer | spec.SpecError,
            resolution: resolve.Resolution | None, conflict: Conflict | None,
            directors: Mapping[str, Any], previous: Mapping[str, Any],
            now: datetime, refusal: Refusal | None = None) -> dict[str, Any]:
    """Return the status fields the controller owns (`OWNED`), as they should be now.

    `vs` is the parsed spec or the error that parsing raised; `refusal` says why its pools
    or the VIP's owner refuse it; `resolution` is required when `vs` parsed and there is no
    `refusal` or `conflict`, and ignored otherwise. `directors` is `status.directors`;
    `previous` is the stored status, whose transition times are kept for conditions that
    did not change. An invalid, refused or conflicting VirtualServer publishes an empty
    `realServers`: the directors withdraw it.
    """
    reals: Sequence[realservers.RealServerStatus] = ()
    if refusal is not None and not isinstance(vs, spec.SpecError):
        resolved = Condition(REAL_SERVERS_RESOLVED, False, refusal.reason,
                             f"{refusal.message}; no real servers are published meanwhile")
        programmed = Condition(PROGRAMMED, False, refusal.reason,
                               "directors do not program a VirtualServer its VIP pools or "
                               "the VIP's owner refuse")
    elif isinstance(vs, spec.SpecError):
        why = (f"{vs} (the object predates the CRD's validation or bypassed it: fix the "
               "field)")
        resolved = Condition(REAL_SERVERS_RESOLVED, False, INVALID_SPEC, why)
        programmed = Condition(PROGRAMMED, False, INVALID_SPEC,
                               "directors do not program an invalid VirtualServer")
    elif conflict is not None:
        resolved = Condition(REAL_SERVERS_RESOLVED, False, CONFLICT,
                             f"{conflict.message}; no real servers are published meanwhile")
        programmed = Condition(PROGRAMMED, False, CONFLICT,
                               "directors do not program a VirtualServer in conflict")
    else:
        assert resolution is not None, "a valid VirtualServer without conflict is resolved"
        reals, cut = _bounded(resolution.real_servers)
        resolved = Condition(REAL_SERVERS_RESOLVED, resolution.resolved, resolution.reason,
                             resolution.message + cut)
        programmed = _programmed(directors, generation)
    ready = next((Condition(READY, False, c.reason, c.message)
                  for c in (resolved, programmed) if not c.status),
                 Condition(READY, True, READY, f"{resolved.message}; {programmed.message}"))
    old = {c.get("type"): c for c in previous.get("conditions") or []
           if isinstance(c, Mapping)}
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "ready": f"{sum(r.ready for r in reals)}/{len(reals)}",
        "conditions": [_stamp(c, old.get(c.type), generation, now)
                       for c in (ready, resolved, programmed)],
        "realServers": realservers.to_json(reals),
    }
    if not isinstance(vs, spec.SpecError):
        status["ports"] = ",".join(f"{p.port}/{p.protocol.name}" for p in vs.ports)
    active = active_director(directors)
    if active:
        status["activeDirector"] = active
    return status


def owned(status: Mapping[str, Any]) -> dict[str, Any]:
    """Return the part of `status` the controller owns, in a form fit for comparing
    (conditions keyed by type; other controllers' conditions left out)."""
    result = {k: status[k] for k in OWNED if k in status and k != "conditions"}
    result["conditions"] = {c.get("type"): dict(c) for c in status.get("conditions") or []
                            if isinstance(c, Mapping) and c.get("type") in TYPES}
    return result


def changed(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Return whether writing `wanted` (from `desired`) would change the stored `current`."""
    return owned(current) != owned(wanted)


def events(previous: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[Event]:
    """Return the Events that going from status `previous` to `wanted` deserves.

    One Event when the Ready condition changes status or reason (became ready, lost its
    endpoints, got into or out of a conflict, ...): Normal when ready, Warning when not.
    Message-only changes (a count of endpoints) post nothing.
    """
    before = owned(previous)["conditions"].get(READY) or {}
    after = owned(wanted)["conditions"].get(READY) or {}
    if (before.get("status"), before.get("reason")) == (after.get("status"),
                                                         after.get("reason")):
        return []
    if after.get("status") == "True":
        return [Event("Normal", READY, str(after.get("message", "")))]
    return [Event("Warning", str(after.get("reason", "")), str(after.get("message", "")))]


def active_director(directors: Mapping[str, Any]) -> str | None:
    """Return the node whose director reports the Active role (the first by name if, in a
    split brain, several do), or None."""
    active = sorted(node for node, report in directors.items()
                    if isinstance(report, Mapping) and report.get("role") == ACTIVE)
    return active[0] if active else None


def _programmed(directors: Mapping[str, Any], generation: int) -> Condition:
    reports = {node: r for node, r in directors.items() if isinstance(r, Mapping)}
    if not reports:
        return Condition(PROGRAMMED, False, NO_DIRECTORS,
                         "no director has reported yet: the agents run on the nodes that "
                         "match spec.directors.nodeSelector")
    node = active_director(reports)
    if node is None:
        return Condition(PROGRAMMED, False, NO_ACTIVE_DIRECTOR,
                         f"{_nodes(reports)} report, none holds the VIP")
    report = reports[node]
    if report.get("error"):
        return Condition(PROGRAMMED, False, DIRECTOR_ERROR,
                         f"active director {node}: {report['error']}")
    if report.get("generation") != generation:
        return Condition(PROGRAMMED, False, PROGRAMMING,
                         f"active director {node} has programmed generation "
                         f"{report.get('generation')}, not yet {generation}")
    standby = len(reports) - 1
    return Condition(PROGRAMMED, True, PROGRAMMED, f"programmed by active director {node}"
                     + (f" and {standby} standby" if standby else ""))


def _bounded(reals: Sequence[realservers.RealServerStatus]
             ) -> tuple[Sequence[realservers.RealServerStatus], str]:
    """Return at most MAX_REAL_SERVERS of `reals` (ready ones first, then in their order),
    and a note for the condition's message when some were left out ("" when none)."""
    if len(reals) <= MAX_REAL_SERVERS:
        return reals, ""
    kept = sorted(sorted(reals, key=lambda r: not r.ready)[:MAX_REAL_SERVERS],
                  key=realservers.RealServerStatus.sort_key)
    return kept, (f"; only {MAX_REAL_SERVERS} of the {len(reals)} real servers are published "
                  f"(status.realServers holds at most {MAX_REAL_SERVERS}; ready ones first)")


def _nodes(reports: Iterable[str]) -> str:
    names = sorted(reports)
    return f"director {names[0]}" if len(names) == 1 else f"{len(names)} directors"


def _stamp(condition: Condition, previous: Mapping[str, Any] | None, generation: int,
           now: datetime) -> dict[str, Any]:
    """Return the condition as stored; the transition time is the previous one unless the
    status changed."""
    value = "True" if condition.status else "False"
    since = previous.get("lastTransitionTime") if previous else None
    if not since or previous is None or previous.get("status") != value:
        since = timestamp(now)
    message = condition.message
    if len(message) > MAX_CONDITION_MESSAGE:
        message = message[:MAX_CONDITION_MESSAGE - 1] + "…"
    return {"type": condition.type, "status": value, "reason": condition.reason,
            "message": message, "observedGeneration": generation,
            "lastTransitionTime": since}
