"""Kubernetes Events (events.k8s.io/v1): built the same way by both binaries, and posted."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from lvs_operator.kube import lease

NOTE_LIMIT = 1024  # the API server refuses longer notes


def event(*, regarding: Mapping[str, str], type: str, reason: str, note: str, action: str,
          reporting_controller: str, reporting_instance: str, now: datetime) -> dict[str, Any]:
    """Return an Event about `regarding` (apiVersion, kind, namespace, name, uid), in its
    namespace; `type` is Normal or Warning."""
    name = regarding["name"]
    return {
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        # Named as client-go's recorder names them (the API refuses a generateName that is
        # not itself a valid name, such as "web.").
        "metadata": {"name": f"{name[:200]}.{time.time_ns():x}",
                     "namespace": regarding["namespace"]},
        "regarding": dict(regarding), "type": type, "reason": reason,
        "note": note[:NOTE_LIMIT], "action": action, "eventTime": lease.micro_time(now),
        "reportingController": reporting_controller,
        "reportingInstance": reporting_instance[:128],
    }


def post(api: lease.Api, body: Mapping[str, Any]) -> None:
    """Create the Event `body` (from `event`).

    Raises:
        client.ApiError: when the API server refuses it or does not answer.
    """
    namespace = body["metadata"]["namespace"]
    api.request("POST", f"/apis/events.k8s.io/v1/namespaces/{namespace}/events", body=body)
