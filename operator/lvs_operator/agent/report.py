"""What a director writes to the API: its entry in `status.directors`, and Events. Pure
(no I/O: the loop sends what these functions return).

Each agent writes only `status.directors.<its node>`, with a JSON merge patch on the status
subresource: a merge patch changes the keys it names and keeps the others, so directors
writing at the same time cannot clobber each other's entries (a `null` removes the entry).

An entry carries the election term it was written in (`term`: the director's current run of
Lease renewals, see `election.Claim`; absent without an election). It is written only when
role, programmed generation, error, the real servers failing this director's health
checks (`unhealthy`, "address:port" sorted; absent when none) or the `warning` (absent when
none: see `agent.loop` for what it warns of) change: `syncedAt` is the
time of that change (when this director converged to what the entry says), not of every
resync, so a steady state costs the API server nothing.

Events are events.k8s.io Events (`kube.events`), reported by controller `lvs.dev/agent`,
instance the node. A real server that fails its health checks, or passes them again, is
also told in an Event (`health_event`), at most one per VirtualServer and director every
`HEALTH_EVENT_SECONDS` (`EventLimiter`): a flapping server must not flood the API server;
the status entry always says the current truth.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from time import monotonic
from typing import Any

from lvs_operator.api import API_VERSION, KIND, conditions
from lvs_operator.kube import events

REPORTING_CONTROLLER = "lvs.dev/agent"
# What the director was doing when an Event's reason happened (an Event's `action`).
PROGRAM = "Program"
HEALTH_CHECK = "HealthCheck"
SYNC_FAILED = "SyncFailed"
REAL_SERVER_UNHEALTHY = "RealServerUnhealthy"
REAL_SERVER_HEALTHY = "RealServerHealthy"
HEALTH_EVENT_SECONDS = 30.0
# Every key an entry may have: a merge patch sets the ones a new entry lacks to null, so the
# stored entry is exactly the new one (a merge patch keeps keys it does not name).
ENTRY_KEYS = ("role", "term", "generation", "syncedAt", "error", "unhealthy", "warning")
MAX_MESSAGE = 1024  # as an Event's note (kube.events): status entries stay readable too
# The CRD's maxItems of `unhealthy`: more real servers failing at once is an outage the first
# thousand describe as well as all; lvs_real_server_healthy has every one of them.
MAX_UNHEALTHY = 1000
# The CRD's maxProperties of status.directors: the API server refuses an entry beyond it.
MAX_DIRECTORS = 128


@dataclass(frozen=True)
class Report:
    """One director's report on one VirtualServer.

    `generation` is the metadata.generation it has programmed (None: none yet); `error`
    says why it could not program the current one ("" when it did); `unhealthy` lists the
    real servers ("address:port", sorted) failing this director's health checks; `term`
    is the election term the role was decided in ("" without an election); `warning`
    says what works but needs the user's attention ("" when nothing does).
    """

    role: str
    generation: int | None
    error: str = ""
    unhealthy: tuple[str, ...] = ()
    term: str = ""
    warning: str = ""

    def matches(self, entry: Mapping[str, Any] | None) -> bool:
        """Return whether the stored `entry` already says what this report says."""
        if not isinstance(entry, Mapping):
            return False
        # A new term alone is no change: an agent restart must cost no status writes. An
        # entry from an earlier term that still says the right role is harmless: the term
        # only tells the others that an Active claim may be stale, and a director that
        # still holds the VIP is right to claim it (see election.Claim).
        return (entry.get("role"), entry.get("generation"), entry.get("error") or "",
                unhealthy_of(entry), entry.get("warning") or "") == (
            self.role, self.generation, self.error, self.unhealthy, self.warning)


def report(*, role: str, generation: int, error: str,
           previous: Mapping[str, Any] | None, unhealthy: Sequence[str] = (),
           term: str = "", warning: str = "") -> Report:
    """Return the report of a director that programmed `generation` (or failed to, with
    `error`: then the generation reported stays the one `previous` reported), with the
    real servers that fail its health checks, in election `term`, with `warning`."""
    failing = tuple(unhealthy)
    if len(failing) > MAX_UNHEALTHY:
        note = (f"{len(failing)} real servers fail this director's health checks; unhealthy "
                f"lists the first {MAX_UNHEALTHY} (the metric lvs_real_server_healthy has all)")
        warning = f"{note}; {warning}" if warning else note
        failing = failing[:MAX_UNHEALTHY]
    warning = _truncate(warning)
    if not error:
        return Report(role=role, generation=generation, unhealthy=failing, term=term,
                      warning=warning)
    before = previous.get("generation") if isinstance(previous, Mapping) else None
    return Report(role=role, generation=before if isinstance(before, int) else None,
                  error=_truncate(error), unhealthy=failing, term=term, warning=warning)


def unhealthy_of(entry: Mapping[str, Any] | None) -> tuple[str, ...]:
    """Return the `unhealthy` list of a stored entry (empty when absent or not a list)."""
    found = entry.get("unhealthy") if isinstance(entry, Mapping) else None
    return tuple(str(x) for x in found) if isinstance(found, list) else ()


def entry(report: Report, *, now: datetime) -> dict[str, Any]:
    """Return `report` as a `status.directors` entry stamped with `now`."""
    result: dict[str, Any] = {"role": report.role}
    if report.term:
        result["term"] = report.term
    if report.generation is not None:
        result["generation"] = report.generation
    result["syncedAt"] = conditions.timestamp(now)
    result["error"] = report.error
    if report.unhealthy:
        result["unhealthy"] = list(report.unhealthy)
    if report.warning:
        result["warning"] = report.warning
    return result


def patch(node: str, value: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return the merge patch that sets `status.directors.<node>` to `value` (None: remove
    it) and touches nothing else. The keys of an entry that `value` lacks are set to null
    (removed), so no stale `unhealthy` list outlives its recovery."""
    if value is None:
        return {"status": {"directors": {node: None}}}
    return {"status": {"directors": {node: {**dict.fromkeys(ENTRY_KEYS), **value}}}}


def entry_of(obj: Mapping[str, Any], node: str) -> Mapping[str, Any] | None:
    """Return the `status.directors` entry of `node` in VirtualServer `obj`, or None."""
    found = ((obj.get("status") or {}).get("directors") or {}).get(node)
    return found if isinstance(found, Mapping) else None


def room_for(obj: Mapping[str, Any], node: str) -> bool:
    """Return whether `node` may write its entry in VirtualServer `obj`: it has one already,
    or `status.directors` has fewer than MAX_DIRECTORS (the API server would refuse it)."""
    directors = (obj.get("status") or {}).get("directors") or {}
    return node in directors or len(directors) < MAX_DIRECTORS


def event(obj: Mapping[str, Any], *, node: str, message: str, now: datetime,
          reason: str = SYNC_FAILED, kind: str = events.WARNING,
          action: str = PROGRAM) -> dict[str, Any]:
    """Return an events.k8s.io Event about VirtualServer `obj`, reported by director
    `node` (the reporting instance): `message` prefixed with the director, of type `kind`,
    with `reason`, while doing `action`."""
    regarding = {**events.reference(obj), "apiVersion": API_VERSION, "kind": KIND}
    return events.event(regarding, type=kind, reason=reason,
                        note=f"director {node}: {message}", action=action,
                        reporting_controller=REPORTING_CONTROLLER, reporting_instance=node,
                        now=now)


def health_event(obj: Mapping[str, Any], *, node: str, before: Sequence[str],
                 after: Sequence[str], now: datetime) -> dict[str, Any] | None:
    """Return the Event telling that real servers failed this director's health checks
    (Warning) or passed them again (Normal), from the `before` and `after` unhealthy lists;
    None when nothing changed."""
    went = [r for r in after if r not in before]
    back = [r for r in before if r not in after]
    if not went and not back:
        return None
    parts = []
    if went:
        parts.append(f"real servers failing health checks (weight 0): {', '.join(went)}")
    if back:
        parts.append(f"real servers healthy again: {', '.join(back)}")
    if went:
        return event(obj, node=node, message="; ".join(parts), now=now,
                     reason=REAL_SERVER_UNHEALTHY, action=HEALTH_CHECK)
    return event(obj, node=node, message=parts[0], now=now, reason=REAL_SERVER_HEALTHY,
                 kind=events.NORMAL, action=HEALTH_CHECK)


@dataclass
class EventLimiter:
    """Allows one Event per key (a VirtualServer) every `seconds`."""

    seconds: float = HEALTH_EVENT_SECONDS
    clock: Callable[[], float] = monotonic
    _last: dict[str, float] = field(default_factory=dict)

    def allow(self, key: str) -> bool:
        """Return whether an Event about `key` may go now (and count it if so)."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.seconds:
            return False
        self._last = {k: t for k, t in self._last.items() if now - t < self.seconds}
        self._last[key] = now
        return True


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."
