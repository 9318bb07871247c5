"""What a director writes to the API: its entry in `status.directors`, and Events. Pure.

Each agent writes only `status.directors.<its node>`, with a JSON merge patch on the status
subresource: a merge patch changes the keys it names and keeps the others, so directors
writing at the same time cannot clobber each other's entries (a `null` removes the entry).

An entry is written only when role, programmed generation or error change: `syncedAt` is
the time of that change (when this director converged to what the entry says), not of
every resync, so a steady state costs the API server nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lvs_operator import spec, status

REPORTING_CONTROLLER = "lvs.dev/agent"
EVENT_COMPONENT = "lvs-operator-agent"
SYNC_FAILED = "SyncFailed"
MAX_MESSAGE = 1024  # events.k8s.io's limit on a note; status entries stay readable too


@dataclass(frozen=True)
class Report:
    """One director's report on one VirtualServer.

    `generation` is the metadata.generation it has programmed (None: none yet); `error`
    says why it could not program the current one ("" when it did).
    """

    role: str
    generation: int | None
    error: str = ""

    def matches(self, entry: Mapping[str, Any] | None) -> bool:
        """Return whether the stored `entry` already says what this report says."""
        if not isinstance(entry, Mapping):
            return False
        return (entry.get("role"), entry.get("generation"), entry.get("error") or "") == (
            self.role, self.generation, self.error)


def report(*, role: str, generation: int, error: str,
           previous: Mapping[str, Any] | None) -> Report:
    """Return the report of a director that programmed `generation` (or failed to, with
    `error`: then the generation reported stays the one `previous` reported)."""
    if not error:
        return Report(role=role, generation=generation)
    before = previous.get("generation") if isinstance(previous, Mapping) else None
    return Report(role=role, generation=before if isinstance(before, int) else None,
                  error=_truncate(error))


def entry(report: Report, *, now: datetime) -> dict[str, Any]:
    """Return `report` as a `status.directors` entry stamped with `now`."""
    result: dict[str, Any] = {"role": report.role}
    if report.generation is not None:
        result["generation"] = report.generation
    result["syncedAt"] = status.timestamp(now)
    result["error"] = report.error
    return result


def patch(node: str, value: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return the merge patch that sets `status.directors.<node>` to `value` (None: remove
    it) and touches nothing else."""
    return {"status": {"directors": {node: None if value is None else dict(value)}}}


def entry_of(obj: Mapping[str, Any], node: str) -> Mapping[str, Any] | None:
    """Return the `status.directors` entry of `node` in VirtualServer `obj`, or None."""
    found = ((obj.get("status") or {}).get("directors") or {}).get(node)
    return found if isinstance(found, Mapping) else None


def event(obj: Mapping[str, Any], *, node: str, message: str, now: datetime,
          reason: str = SYNC_FAILED, kind: str = "Warning") -> dict[str, Any]:
    """Return a core/v1 Event about VirtualServer `obj`, reported by director `node`."""
    meta = obj.get("metadata") or {}
    stamp = status.timestamp(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        # client-go's naming: the object's name and a nanosecond clock, unique enough.
        "metadata": {"name": f"{meta.get('name')}.{int(now.timestamp() * 1e9):x}",
                     "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": spec.API_VERSION, "kind": spec.KIND,
            "namespace": meta.get("namespace"), "name": meta.get("name"),
            "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion"),
        },
        "type": kind,
        "reason": reason,
        "message": _truncate(f"director {node}: {message}"),
        "source": {"component": EVENT_COMPONENT, "host": node},
        "reportingComponent": REPORTING_CONTROLLER,
        "reportingInstance": node,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."
