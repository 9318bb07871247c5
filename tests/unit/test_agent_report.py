"""agent.report: the status.directors entry, its merge patch, and Events."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from lvs_operator.agent import report

NOW = datetime(2025, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)
OBJ = {"metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "resourceVersion": "42",
                    "generation": 3},
       "status": {"directors": {"node-a": {"role": "Active", "generation": 2, "error": ""},
                                "node-b": "garbage"}}}


@pytest.mark.parametrize(("error", "previous", "expected"), [
    ("", None, report.Report("Active", 3)),
    ("", {"generation": 2}, report.Report("Active", 3)),
    ("boom", {"generation": 2}, report.Report("Active", 2, "boom")),
    ("boom", None, report.Report("Active", None, "boom")),
    ("boom", {"generation": "x"}, report.Report("Active", None, "boom")),
])
def test_report(error, previous, expected):
    assert report.report(role="Active", generation=3, error=error, previous=previous) == expected


@pytest.mark.parametrize(("entry", "matches"), [
    (None, False),
    ("garbage", False),
    ({"role": "Active", "generation": 3, "error": "", "syncedAt": "whenever"}, True),
    ({"role": "Active", "generation": 3, "syncedAt": "whenever"}, True),
    ({"role": "Standby", "generation": 3, "error": ""}, False),
    ({"role": "Active", "generation": 2, "error": ""}, False),
    ({"role": "Active", "generation": 3, "error": "old trouble"}, False),
])
def test_matches(entry, matches):
    assert report.Report("Active", 3).matches(entry) is matches


def test_entry_and_patch_touch_only_this_node():
    value = report.entry(report.Report("Active", 3), now=NOW)
    assert value == {"role": "Active", "generation": 3, "syncedAt": "2025-03-01T12:30:45Z",
                     "error": ""}
    assert report.patch("node-a", value) == {"status": {"directors": {"node-a": value}}}
    assert report.patch("node-a", None) == {"status": {"directors": {"node-a": None}}}
    no_generation = report.entry(report.Report("Active", None, "x"), now=NOW)
    assert "generation" not in no_generation


def test_long_errors_are_truncated():
    made = report.report(role="Active", generation=1, error="x" * 5000, previous=None)
    assert len(made.error) == report.MAX_MESSAGE
    assert made.error.endswith("...")


def test_entry_of():
    assert report.entry_of(OBJ, "node-a") == {"role": "Active", "generation": 2, "error": ""}
    assert report.entry_of(OBJ, "node-b") is None
    assert report.entry_of(OBJ, "node-c") is None
    assert report.entry_of({"metadata": {}}, "node-a") is None


def test_event():
    event = report.event(OBJ, node="node-a", message="cannot add VIP", now=NOW)
    assert event["metadata"]["namespace"] == "shop"
    assert event["metadata"]["name"].startswith("web.")
    assert event["involvedObject"] == {"apiVersion": "lvs.dev/v1alpha1",
                                       "kind": "VirtualServer", "namespace": "shop",
                                       "name": "web", "uid": "u-1", "resourceVersion": "42"}
    assert (event["type"], event["reason"]) == ("Warning", "SyncFailed")
    assert event["message"] == "director node-a: cannot add VIP"
    assert event["source"] == {"component": "lvs-operator-agent", "host": "node-a"}
    assert (event["reportingComponent"], event["reportingInstance"]) == ("lvs.dev/agent",
                                                                        "node-a")
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2025-03-01T12:30:45Z"
