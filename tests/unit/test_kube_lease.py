"""kube.lease: paths, MicroTime, and the Lease requests' outcomes (404 to a read, 409 to a
create or a stale replace are answers, not failures) against a small API server in memory
that keeps resourceVersions as the real one does."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from lvs_operator.kube import client, lease

NS = "lvs-system"


class FakeLeases:
    """Leases in memory, answering as the API server does: 404 for a missing Lease, 409 for
    a create of an existing one or a PUT at a stale resourceVersion."""

    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 100
        self.requests: list[tuple[str, str, str, tuple[float, float]]] = []
        self.fail: int | None = None  # answer every request with this status

    def request(self, method, path, *, query=(), body=None, content_type="application/json",
                timeout=client.REQUEST_TIMEOUT):
        self.requests.append((method, path, content_type, timeout))
        if self.fail is not None:
            raise client.ApiError(self.fail, f"{method} {path}: {self.fail} (scripted)")
        prefix = f"{lease.PATH}/namespaces/"
        assert path.startswith(prefix), path
        namespace, collection, *rest = path[len(prefix):].split("/")
        assert collection == "leases"
        if method == "POST":
            assert not rest
            key = (namespace, body["metadata"]["name"])
            if key in self.leases:
                raise client.ApiError(409, f"leases {key[1]!r} already exists")
            return self._store(key, copy.deepcopy(body))
        key = (namespace, rest[0])
        if key not in self.leases:
            raise client.ApiError(404, f"leases {key[1]!r} not found")
        stored = self.leases[key]
        if method == "GET":
            return copy.deepcopy(stored)
        if method == "PUT":
            if body["metadata"].get("resourceVersion") != stored["metadata"]["resourceVersion"]:
                raise client.ApiError(409, "the object has been modified")
            return self._store(key, copy.deepcopy(body))
        if method == "PATCH":
            assert content_type == client.MERGE_PATCH
            return self._store(key, _merge(stored, body))
        if method == "DELETE":
            del self.leases[key]
            return {"kind": "Status", "status": "Success"}
        raise AssertionError(method)

    def _store(self, key: tuple[str, str], obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj["metadata"] = {**obj["metadata"], "namespace": key[0],
                           "resourceVersion": str(self.version)}
        self.leases[key] = obj
        return copy.deepcopy(obj)


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def new_lease(name: str, holder: str) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name}, "spec": {"holderIdentity": holder}}


@pytest.fixture
def api() -> FakeLeases:
    return FakeLeases()


def test_paths() -> None:
    assert lease.leases_path(NS) == "/apis/coordination.k8s.io/v1/namespaces/lvs-system/leases"
    assert lease.lease_path(NS, "a") == \
        "/apis/coordination.k8s.io/v1/namespaces/lvs-system/leases/a"


@pytest.mark.parametrize(("now", "expected"), [
    (datetime(2025, 3, 1, 12, 30, 45, 123456, tzinfo=UTC), "2025-03-01T12:30:45.123456Z"),
    (datetime(2025, 3, 1, 12, 30, 45, tzinfo=UTC), "2025-03-01T12:30:45.000000Z"),
    (datetime(2025, 3, 1, 14, 30, 45, 7, tzinfo=timezone(timedelta(hours=2))),
     "2025-03-01T12:30:45.000007Z"),
])
def test_micro_time(now: datetime, expected: str) -> None:
    assert lease.micro_time(now) == expected


def test_get_missing_is_none(api: FakeLeases) -> None:
    assert lease.Leases(api).get(NS, "nobody") is None


def test_create_then_get(api: FakeLeases) -> None:
    leases = lease.Leases(api)
    created = leases.create(NS, new_lease("leader", "pod-a"))
    assert created is not None
    assert created["spec"]["holderIdentity"] == "pod-a"
    assert leases.get(NS, "leader") == created


def test_create_of_an_existing_lease_is_none(api: FakeLeases) -> None:
    leases = lease.Leases(api)
    assert leases.create(NS, new_lease("leader", "pod-a")) is not None
    assert leases.create(NS, new_lease("leader", "pod-b")) is None, "someone was first"
    assert api.leases[(NS, "leader")]["spec"]["holderIdentity"] == "pod-a"


def test_replace_is_conditional_on_the_version_read(api: FakeLeases) -> None:
    leases = lease.Leases(api)
    leases.create(NS, new_lease("leader", "pod-a"))
    seen_by_a = leases.get(NS, "leader")
    seen_by_b = leases.get(NS, "leader")
    assert seen_by_a is not None and seen_by_b is not None
    seen_by_a["spec"]["holderIdentity"] = "pod-a2"
    written = leases.replace(NS, "leader", seen_by_a)
    assert written is not None
    assert written["metadata"]["resourceVersion"] != seen_by_a["metadata"]["resourceVersion"]
    seen_by_b["spec"]["holderIdentity"] = "pod-b"
    assert leases.replace(NS, "leader", seen_by_b) is None, "stale: someone else wrote"
    assert api.leases[(NS, "leader")]["spec"]["holderIdentity"] == "pod-a2"
    assert api.requests[-1][0] == "PUT"


def test_replace_of_a_deleted_lease_fails(api: FakeLeases) -> None:
    with pytest.raises(client.ApiError) as raised:
        lease.Leases(api).replace(NS, "gone", {"metadata": {"name": "gone",
                                                            "resourceVersion": "1"}})
    assert raised.value.status == 404


def test_patch_merges(api: FakeLeases) -> None:
    leases = lease.Leases(api)
    leases.create(NS, {**new_lease("director", "node-a"),
                       "metadata": {"name": "director", "annotations": {"a": "1", "b": "2"}}})
    patched = leases.patch(NS, "director", {"metadata": {"annotations": {"a": None}},
                                            "spec": {"renewTime": "t"}})
    assert patched["metadata"]["annotations"] == {"b": "2"}
    assert patched["spec"] == {"holderIdentity": "node-a", "renewTime": "t"}


def test_patch_of_a_missing_lease_fails_with_404(api: FakeLeases) -> None:
    with pytest.raises(client.ApiError) as raised:
        lease.Leases(api).patch(NS, "director", {"spec": {}})
    assert raised.value.status == 404


def test_delete(api: FakeLeases) -> None:
    leases = lease.Leases(api)
    leases.create(NS, new_lease("director", "node-a"))
    assert leases.delete(NS, "director") is True
    assert leases.delete(NS, "director") is False, "gone already"
    assert leases.get(NS, "director") is None


@pytest.mark.parametrize("call", ["get", "create", "replace", "patch", "delete"])
def test_other_failures_raise(api: FakeLeases, call: str) -> None:
    leases = lease.Leases(api)
    api.fail = 403
    body = new_lease("x", "y")
    calls = {"get": lambda: leases.get(NS, "x"),
             "create": lambda: leases.create(NS, body),
             "replace": lambda: leases.replace(NS, "x", body),
             "patch": lambda: leases.patch(NS, "x", {}),
             "delete": lambda: leases.delete(NS, "x")}
    with pytest.raises(client.ApiError) as raised:
        calls[call]()
    assert raised.value.status == 403


def test_timeout_is_passed_on(api: FakeLeases) -> None:
    lease.Leases(api).get(NS, "x", timeout=(0.5, 0.25))
    assert api.requests[-1][3] == (0.5, 0.25)
