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
    ({"role": "Active", "generation": 3, "error": "", "warning": "deleted"}, False),
])
def test_matches(entry, matches):
    assert report.Report("Active", 3).matches(entry) is matches


def test_a_warning_is_written_and_compared() -> None:
    warned = report.report(role="Active", generation=3, error="", previous=None,
                           warning="TCP 192.0.2.1:80 deleted")
    value = report.entry(warned, now=NOW)
    assert value["warning"] == "TCP 192.0.2.1:80 deleted"
    assert warned.matches(value)
    assert not report.Report("Active", 3).matches(value)
    failing = report.report(role="Active", generation=4, error="boom",
                            previous={"generation": 3}, warning="w" * 2000)
    assert failing.generation == 3 and len(failing.warning) == report.MAX_MESSAGE


def test_entry_and_patch_touch_only_this_node():
    value = report.entry(report.Report("Active", 3), now=NOW)
    assert value == {"role": "Active", "generation": 3, "syncedAt": "2025-03-01T12:30:45Z",
                     "error": ""}
    # The keys the entry lacks are removed (a merge patch would keep them otherwise).
    assert report.patch("node-a", value) == {"status": {"directors": {"node-a": {
        **value, "term": None, "unhealthy": None, "warning": None}}}}
    assert report.patch("node-a", None) == {"status": {"directors": {"node-a": None}}}
    no_generation = report.entry(report.Report("Active", None, "x"), now=NOW)
    assert "generation" not in no_generation
    # With an election, the entry carries the term its role was decided in; a new term
    # alone is no change to write (an agent restart writes nothing).
    termed = report.Report("Active", 3, term="t2")
    assert report.entry(termed, now=NOW)["term"] == "t2"
    assert termed.matches({**value, "term": "t1"})
    assert not report.Report("Standby", 3, term="t2").matches({**value, "term": "t1"})


def test_long_errors_are_truncated():
    made = report.report(role="Active", generation=1, error="x" * 5000, previous=None)
    assert len(made.error) == report.MAX_MESSAGE
    assert made.error.endswith("...")


def test_a_long_unhealthy_list_is_cut_at_the_crds_bound_with_a_note():
    failing = [f"10.0.{n // 256}.{n % 256}:80" for n in range(report.MAX_UNHEALTHY + 5)]
    made = report.report(role="Active", generation=1, error="", previous=None,
                         unhealthy=failing, warning="restored")
    assert made.unhealthy == tuple(failing[:report.MAX_UNHEALTHY])
    assert made.warning == (f"{report.MAX_UNHEALTHY + 5} real servers fail this director's "
                            f"health checks; unhealthy lists the first {report.MAX_UNHEALTHY} "
                            "(the metric lvs_real_server_healthy has all); restored")
    assert made.matches(report.entry(made, now=NOW)), "a cut list is no change to write again"
    exact = report.report(role="Active", generation=1, error="", previous=None,
                          unhealthy=failing[:report.MAX_UNHEALTHY])
    assert len(exact.unhealthy) == report.MAX_UNHEALTHY and exact.warning == ""


def test_room_for_an_entry_under_the_crds_bound():
    entries: dict[str, object] = {f"n{i}": {} for i in range(report.MAX_DIRECTORS)}
    full = {"status": {"directors": entries}}
    assert report.room_for(full, "n0"), "its own entry can always be rewritten"
    assert not report.room_for(full, "node-new")
    assert report.room_for({"status": {"directors": {"n1": {}}}}, "node-new")
    assert report.room_for({"metadata": {}}, "node-new")


def test_entry_of():
    assert report.entry_of(OBJ, "node-a") == {"role": "Active", "generation": 2, "error": ""}
    assert report.entry_of(OBJ, "node-b") is None
    assert report.entry_of(OBJ, "node-c") is None
    assert report.entry_of({"metadata": {}}, "node-a") is None


def test_event():
    event = report.event(OBJ, node="node-a", message="cannot add VIP", now=NOW)
    assert event["metadata"]["namespace"] == "shop"
    assert event["metadata"]["name"].startswith("web.")
    assert event["apiVersion"] == "events.k8s.io/v1"
    assert event["regarding"] == {"apiVersion": "lvs.dev/v1alpha1",
                                  "kind": "VirtualServer", "namespace": "shop",
                                  "name": "web", "uid": "u-1", "resourceVersion": "42"}
    assert (event["type"], event["reason"], event["action"]) == ("Warning", "SyncFailed",
                                                                 "Program")
    assert event["note"] == "director node-a: cannot add VIP"
    assert (event["reportingController"], event["reportingInstance"]) == ("lvs.dev/agent",
                                                                          "node-a")
    assert event["eventTime"] == "2025-03-01T12:30:45.123456Z"


def test_unhealthy_in_the_report_and_entry():
    made = report.report(role="Active", generation=3, error="", previous=None,
                         unhealthy=["10.0.0.7:80", "10.0.0.9:80"])
    assert made == report.Report("Active", 3, "", ("10.0.0.7:80", "10.0.0.9:80"))
    value = report.entry(made, now=NOW)
    assert value["unhealthy"] == ["10.0.0.7:80", "10.0.0.9:80"]
    assert made.matches(value)
    assert not report.Report("Active", 3).matches(value), "a recovery is a change"
    assert not made.matches({**value, "unhealthy": ["10.0.0.7:80"]})
    assert report.Report("Active", 3).matches({**value, "unhealthy": []})
    failed = report.report(role="Active", generation=3, error="boom",
                           previous={"generation": 2}, unhealthy=["10.0.0.7:80"])
    assert failed == report.Report("Active", 2, "boom", ("10.0.0.7:80",))


def test_recovery_removes_the_unhealthy_list():
    value = report.entry(report.Report("Standby", 3), now=NOW)
    assert "unhealthy" not in value
    entry = report.patch("node-a", value)["status"]["directors"]["node-a"]
    assert entry["unhealthy"] is None
    assert (entry["role"], entry["generation"], entry["error"]) == ("Standby", 3, "")


@pytest.mark.parametrize(("entry", "expected"), [
    (None, ()),
    ({}, ()),
    ({"unhealthy": ["10.0.0.7:80"]}, ("10.0.0.7:80",)),
    ({"unhealthy": "garbage"}, ()),
])
def test_unhealthy_of(entry, expected):
    assert report.unhealthy_of(entry) == expected


@pytest.mark.parametrize(("before", "after", "reason", "kind", "message"), [
    ([], [], None, None, None),
    (["10.0.0.7:80"], ["10.0.0.7:80"], None, None, None),
    ([], ["10.0.0.7:80"], "RealServerUnhealthy", "Warning",
     "director node-a: real servers failing health checks (weight 0): 10.0.0.7:80"),
    (["10.0.0.7:80"], [], "RealServerHealthy", "Normal",
     "director node-a: real servers healthy again: 10.0.0.7:80"),
    (["10.0.0.7:80"], ["10.0.0.8:80"], "RealServerUnhealthy", "Warning",
     "director node-a: real servers failing health checks (weight 0): 10.0.0.8:80; "
     "real servers healthy again: 10.0.0.7:80"),
])
def test_health_event(before, after, reason, kind, message):
    event = report.health_event(OBJ, node="node-a", before=before, after=after, now=NOW)
    if reason is None:
        assert event is None
        return
    assert event is not None
    assert (event["reason"], event["type"], event["note"]) == (reason, kind, message)
    assert event["regarding"]["name"] == "web"


def test_event_limiter():
    clock = [100.0]
    limiter = report.EventLimiter(seconds=30, clock=lambda: clock[0])
    assert limiter.allow("shop/web")
    assert not limiter.allow("shop/web")
    assert limiter.allow("shop/api"), "per VirtualServer"
    clock[0] += 29
    assert not limiter.allow("shop/web")
    clock[0] += 2
    assert limiter.allow("shop/web")
