"""kube.events: the events.k8s.io/v1 Event both binaries post, and its request."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from lvs_operator.kube import client, events

NOW = datetime(2025, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)
OBJ = {"apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualServer",
       "metadata": {"name": "web", "namespace": "shop", "uid": "u-1",
                    "resourceVersion": "42", "labels": {"a": "b"}}}


def made(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "type": events.WARNING, "reason": "SyncFailed", "note": "cannot add VIP",
        "action": "Program", "reporting_controller": "lvs.dev/agent",
        "reporting_instance": "node-a", "now": NOW, **overrides}
    return events.event(events.reference(OBJ), **arguments)


def test_reference() -> None:
    assert events.reference(OBJ) == {"apiVersion": "lvs.dev/v1alpha1",
                                     "kind": "VirtualServer", "namespace": "shop",
                                     "name": "web", "uid": "u-1", "resourceVersion": "42"}
    assert events.reference({"metadata": {"name": "n"}}) == {"name": "n"}


def test_event() -> None:
    event = made()
    assert (event["apiVersion"], event["kind"]) == ("events.k8s.io/v1", "Event")
    assert event["metadata"]["namespace"] == "shop"
    assert event["metadata"]["name"] == f"web.{int(NOW.timestamp() * 1e9):x}"
    assert event["regarding"] == events.reference(OBJ)
    assert (event["type"], event["reason"], event["note"], event["action"]) == (
        "Warning", "SyncFailed", "cannot add VIP", "Program")
    assert (event["reportingController"], event["reportingInstance"]) == ("lvs.dev/agent",
                                                                          "node-a")
    assert event["eventTime"] == "2025-03-01T12:30:45.123456Z"


def test_long_notes_and_reporters_are_cut_to_the_api_limits() -> None:
    event = made(note="é" * 1000, reporting_instance="n" * 300)
    assert len(event["note"].encode()) <= events.MAX_NOTE
    assert event["note"].endswith("...")
    assert len(event["reportingInstance"]) == events.MAX_REPORTER
    assert made(note="x" * events.MAX_NOTE)["note"] == "x" * events.MAX_NOTE


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Any]] = []

    def request(self, method, path, *, query=(), body=None, content_type="application/json",
                timeout=client.REQUEST_TIMEOUT):
        self.sent.append((method, path, body))
        return body


def test_post() -> None:
    api = Recorder()
    event = made()
    assert events.post(api, event) == event
    assert api.sent == [("POST", "/apis/events.k8s.io/v1/namespaces/shop/events", event)]
