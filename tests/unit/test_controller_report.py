"""status: conditions, printer fields, change detection and Events; table-driven."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from typing import Any

import pytest

from lvs_operator.api import conditions as api_conditions
from lvs_operator.api import spec
from lvs_operator.api.conflicts import Conflict
from lvs_operator.api.realservers import RealServerStatus
from lvs_operator.controller import report, resolve
from lvs_operator.model import Protocol, ServiceKey

T0 = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
VS = spec.parse({"metadata": {"name": "web", "namespace": "shop"}, "spec": {
    "vip": "192.0.2.10", "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}],
    "backend": {"service": {"name": "web"}}}})
REALS = (RealServerStatus(ip_address("10.0.0.1"), 80, 1, True, "n1", "web-1"),
         RealServerStatus(ip_address("10.0.0.2"), 80, 0, False, "n2", "web-2"))
OK = resolve.Resolution(REALS, api_conditions.RESOLVED,
                        "1 of 2 endpoints of Service shop/web ready")
EMPTY = resolve.Resolution((), api_conditions.NO_READY_ENDPOINTS,
                           "Service shop/web has no endpoints")
ACTIVE = {"n1": {"role": "Active", "generation": 3, "syncedAt": "2024-05-01T09:00:00Z",
                 "error": ""},
          "n2": {"role": "Standby", "generation": 3, "error": ""}}
CONFLICT = Conflict(ServiceKey.inet(Protocol.TCP, ip_address("192.0.2.10"), 80), "other/web",
                    "other")
INVALID = spec.SpecError("spec.vip", "'x' is not an IPv4 or IPv6 address")


def compute(vs: spec.VirtualServer | spec.SpecError = VS,
            resolution: resolve.Resolution | None = OK, conflict: Conflict | None = None,
            directors: dict[str, Any] | None = None, previous: dict[str, Any] | None = None,
            now: datetime = T0, generation: int = 3) -> dict[str, Any]:
    return report.desired(generation=generation, vs=vs, resolution=resolution,
                          conflict=conflict, directors=ACTIVE if directors is None else directors,
                          previous=previous or {}, now=now)


def conditions(result: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in result["conditions"]}


CONDITION_CASES = [
    pytest.param({}, {"Ready": ("True", "Ready"), "RealServersResolved": ("True", "Resolved"),
                      "Programmed": ("True", "Programmed")}, id="all-good"),
    pytest.param({"resolution": EMPTY},
                 {"Ready": ("False", "NoReadyEndpoints"),
                  "RealServersResolved": ("False", "NoReadyEndpoints"),
                  "Programmed": ("True", "Programmed")}, id="no-endpoints"),
    pytest.param({"directors": {}},
                 {"Ready": ("False", "NoDirectors"), "RealServersResolved": ("True", "Resolved"),
                  "Programmed": ("False", "NoDirectors")}, id="no-directors"),
    pytest.param({"directors": {"n2": {"role": "Standby", "generation": 3}}},
                 {"Ready": ("False", "NoActiveDirector"),
                  "RealServersResolved": ("True", "Resolved"),
                  "Programmed": ("False", "NoActiveDirector")}, id="only-standby"),
    pytest.param({"directors": {"n1": {"role": "Active", "generation": 3, "error": "EPERM"}}},
                 {"Ready": ("False", "DirectorError"),
                  "RealServersResolved": ("True", "Resolved"),
                  "Programmed": ("False", "DirectorError")}, id="director-error"),
    pytest.param({"directors": {"n1": {"role": "Active", "generation": 2}}},
                 {"Ready": ("False", "Programming"),
                  "RealServersResolved": ("True", "Resolved"),
                  "Programmed": ("False", "Programming")}, id="old-generation"),
    pytest.param({"resolution": EMPTY, "directors": {}},
                 {"Ready": ("False", "NoReadyEndpoints"),
                  "RealServersResolved": ("False", "NoReadyEndpoints"),
                  "Programmed": ("False", "NoDirectors")}, id="resolution-reason-first"),
    pytest.param({"conflict": CONFLICT, "resolution": None},
                 {"Ready": ("False", "Conflict"), "RealServersResolved": ("False", "Conflict"),
                  "Programmed": ("False", "Conflict")}, id="conflict"),
    pytest.param({"vs": INVALID, "resolution": None},
                 {"Ready": ("False", "InvalidSpec"),
                  "RealServersResolved": ("False", "InvalidSpec"),
                  "Programmed": ("False", "InvalidSpec")}, id="invalid"),
]


@pytest.mark.parametrize(("kwargs", "expected"), CONDITION_CASES)
def test_conditions(kwargs, expected):
    result = compute(**kwargs)
    assert conditions(result) == expected
    assert [c["type"] for c in result["conditions"]] == ["Ready", "RealServersResolved",
                                                         "Programmed"]
    assert all(c["observedGeneration"] == 3 and c["lastTransitionTime"] == "2024-05-01T10:00:00Z"
               for c in result["conditions"])


def test_printer_fields_and_real_servers():
    result = compute()
    assert result["observedGeneration"] == 3
    assert result["ports"] == "80/TCP,53/UDP"
    assert result["ready"] == "1/2"
    assert result["activeDirector"] == "n1"
    assert result["realServers"] == [r.to_json() for r in REALS]


def test_real_servers_are_cut_at_the_crds_bound_ready_ones_first():
    extra = 10
    reals = tuple(sorted(
        (RealServerStatus(ip_address("10.0.0.0") + n, 80, 1, n >= extra * 2)
         for n in range(report.MAX_REAL_SERVERS + extra)), key=RealServerStatus.sort_key))
    ready = sum(r.ready for r in reals)
    result = compute(resolution=resolve.Resolution(reals, api_conditions.RESOLVED, "many"))
    published = result["realServers"]
    assert len(published) == report.MAX_REAL_SERVERS
    assert published == sorted(published, key=lambda r: int(ip_address(r["ip"])))
    assert result["ready"] == f"{ready}/{report.MAX_REAL_SERVERS}", "every ready one is kept"
    (resolved,) = [c for c in result["conditions"] if c["type"] == "RealServersResolved"]
    assert resolved["message"] == (
        f"many; only {report.MAX_REAL_SERVERS} of the {len(reals)} real servers are published "
        f"(status.realServers holds at most {report.MAX_REAL_SERVERS}; ready ones first)")


def test_condition_messages_are_cut_at_the_crds_bound():
    long = resolve.Resolution(REALS, api_conditions.RESOLVED, "x" * 40000)
    for condition in compute(resolution=long)["conditions"]:
        assert len(condition["message"]) <= report.MAX_CONDITION_MESSAGE
        if condition["type"] == "RealServersResolved":
            assert condition["message"] == "x" * (report.MAX_CONDITION_MESSAGE - 1) + "…"


@pytest.mark.parametrize(("kwargs", "has_ports"), [
    pytest.param({"conflict": CONFLICT, "resolution": None}, True, id="conflict"),
    pytest.param({"vs": INVALID, "resolution": None}, False, id="invalid"),
])
def test_invalid_or_conflicting_publish_nothing(kwargs, has_ports):
    result = compute(**kwargs)
    assert result["realServers"] == [] and result["ready"] == "0/0"
    assert ("ports" in result) == has_ports


def test_messages_name_the_field_and_the_other_object():
    ready = compute(vs=INVALID, resolution=None)["conditions"][0]
    assert ready["message"].startswith("spec.vip: 'x' is not an IPv4 or IPv6 address")
    ready = compute(conflict=CONFLICT, resolution=None)["conditions"][0]
    assert "TCP 192.0.2.10:80 is already claimed by VirtualServer other/web" in ready["message"]


def test_no_active_director_field_without_one():
    assert "activeDirector" not in compute(directors={})


def test_transition_time_kept_while_status_unchanged():
    first = compute(resolution=EMPTY)
    # Same status, new reason and message: the time stays.
    second = compute(resolution=resolve.Resolution((), api_conditions.SERVICE_NOT_FOUND, "gone"),
                     previous=first, now=T1)
    assert [c["lastTransitionTime"] for c in second["conditions"]] == \
        [c["lastTransitionTime"] for c in first["conditions"]]
    # Ready and RealServersResolved flip: their time moves; Programmed's does not.
    third = compute(previous=second, now=T1)
    times = {c["type"]: c["lastTransitionTime"] for c in third["conditions"]}
    assert times == {"Ready": "2024-05-01T10:05:00Z",
                     "RealServersResolved": "2024-05-01T10:05:00Z",
                     "Programmed": "2024-05-01T10:00:00Z"}


def test_unchanged_is_not_a_change():
    first = compute()
    stored = {**first, "directors": ACTIVE,
              "conditions": [*first["conditions"], {"type": "VIPBound", "status": "True"}][::-1]}
    again = compute(previous=stored, now=T1)
    assert not report.changed(stored, again)
    assert report.events(stored, again) == []


@pytest.mark.parametrize("edit", [
    pytest.param(lambda s: s.update(realServers=[]), id="real-servers"),
    pytest.param(lambda s: s.update(observedGeneration=2), id="generation"),
    pytest.param(lambda s: s.update(ready="0/2"), id="ready-column"),
    pytest.param(lambda s: s.pop("activeDirector"), id="active-director"),
    pytest.param(lambda s: s["conditions"][2].update(message="x"), id="condition-message"),
])
def test_any_owned_difference_is_a_change(edit):
    stored = compute()
    edit(stored)
    assert report.changed(stored, compute(previous=stored))


EVENT_CASES = [
    pytest.param({}, compute(), [report.Event("Normal", "Ready",
                                              compute()["conditions"][0]["message"])],
                 id="first-time-ready"),
    pytest.param(compute(), compute(resolution=EMPTY),
                 [report.Event("Warning", "NoReadyEndpoints", EMPTY.message)],
                 id="lost-endpoints"),
    pytest.param(compute(), compute(conflict=CONFLICT, resolution=None),
                 [report.Event("Warning", "Conflict",
                               compute(conflict=CONFLICT, resolution=None)["conditions"][0]
                               ["message"])], id="conflict"),
    pytest.param(compute(resolution=EMPTY),
                 compute(resolution=resolve.Resolution((), api_conditions.NO_READY_ENDPOINTS, "x")),
                 [], id="message-only"),
    pytest.param(compute(resolution=EMPTY), compute(directors={}, resolution=EMPTY), [],
                 id="same-ready-reason"),
]


@pytest.mark.parametrize(("before", "after", "expected"), EVENT_CASES)
def test_events(before, after, expected):
    assert report.events(before, after) == expected


def test_timestamp_is_utc_whole_seconds():
    local = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC).astimezone()
    assert api_conditions.timestamp(local) == "2024-05-01T12:00:00Z"
