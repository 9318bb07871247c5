"""`events.k8s.io/v1` Events: the one form both binaries post.

`event` builds one (pure: what it says is the caller's policy: reason, note, action, who
reports it); `post` sends it. Readers of core/v1 Events see the same objects, with
`regarding` as involvedObject, `note` as message, `reportingController` as
reportingComponent and `eventTime` as the first and last timestamps.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from lvs_operator.kube import client, lease

API_VERSION = "events.k8s.io/v1"
PATH = f"/apis/{API_VERSION}"
# The API server's limits: a note of at most 1 KiB (in UTF-8), a reporting controller and
# instance of at most 128 characters.
MAX_NOTE = 1024
MAX_REPORTER = 128
NORMAL = "Normal"
WARNING = "Warning"


def events_path(namespace: str) -> str:
    """Return the path of the Events of `namespace`."""
    return f"{PATH}/namespaces/{namespace}/events"


def reference(obj: Mapping[str, Any]) -> dict[str, str]:
    """Return the object reference (an Event's `regarding`) to `obj`, an object as the API
    server sends it (apiVersion, kind, metadata); the fields `obj` lacks are left out."""
    meta = obj.get("metadata") or {}
    found = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
             "namespace": meta.get("namespace"), "name": meta.get("name"),
             "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")}
    return {key: str(value) for key, value in found.items() if value}


def event(regarding: Mapping[str, str], *, type: str, reason: str, note: str, action: str,
          reporting_controller: str, reporting_instance: str,
          now: datetime) -> dict[str, Any]:
    """Return an Event about the object `regarding` (a `reference`), in its namespace: of
    `type` (NORMAL or WARNING), with `reason` (what happened, UpperCamelCase), `note` (for
    people: cut to MAX_NOTE), `action` (what was being done), posted by
    `reporting_controller` (such as "lvs.dev/agent") instance `reporting_instance` (which
    replica or node), at `now`."""
    name = regarding.get("name") or "event"
    return {
        "apiVersion": API_VERSION,
        "kind": "Event",
        # client-go's naming: the object's name and a nanosecond clock, unique enough (the
        # Events API refuses a generateName that is not itself a valid name, like "web.").
        "metadata": {"name": f"{name[:200]}.{int(now.timestamp() * 1e9):x}",
                     "namespace": regarding.get("namespace") or "default"},
        "regarding": dict(regarding),
        "type": type,
        "reason": reason,
        "note": _cut(note, MAX_NOTE),
        "action": action,
        "eventTime": lease.micro_time(now),
        "reportingController": reporting_controller[:MAX_REPORTER],
        "reportingInstance": reporting_instance[:MAX_REPORTER],
    }


def post(api: client.Requester, event: Mapping[str, Any]) -> Any:
    """Create `event` (from `event`) in its metadata.namespace; return it as stored.

    Raises:
        client.ApiError: on failure (403 when the poster may not create events.k8s.io
            Events there).
    """
    namespace = event["metadata"]["namespace"]
    return api.request("POST", events_path(namespace), body=event)


def _cut(text: str, limit: int) -> str:
    """Return `text`, cut to at most `limit` bytes of UTF-8 and marked "..." if cut."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit - 3].decode(errors="ignore") + "..."
