"""controller: what each change queues, the queue's coalescing, reconcile's write-only-a-
difference and conflict retry, and the Lease election -- with fake indexes and a fake API."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Callable, Coroutine
from ipaddress import ip_address
from typing import Any

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from lvs_operator.controller import reconciler as controller
from lvs_operator.controller import report
from lvs_operator.controller.leader import Lease
from lvs_operator.controller.reconciler import Controller, Entry, Parser
from lvs_operator.controller.settings import Settings
from lvs_operator.model import Protocol, ServiceKey

NS = "shop"


def body(name: str, *, vip: str = "192.0.2.10", created: str = "2024-05-01T10:00:00Z",
         uid: str | None = None, generation: int = 1, rv: str = "1",
         backend: dict[str, Any] | None = None, spec: dict[str, Any] | None = None,
         state: dict[str, Any] | None = None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "uid": uid or f"uid-{name}",
                            "generation": generation, "resourceVersion": rv,
                            "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "2024-05-01T11:00:00Z"
    return {"apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualServer", "metadata": meta,
            "spec": spec or {"vip": vip, "ports": [{"port": 80}],
                             "backend": backend or {"addresses": [{"ip": "10.0.0.1"}]}},
            "status": state or {}}


class Informer:
    """What the controller reads of an informer: its items."""

    def __init__(self) -> None:
        self.items: dict[Any, Any] = {}


class Fake(Controller):
    """A Controller over in-memory informers, whose API calls are recorded."""

    def __init__(self, *bodies: dict[str, Any]) -> None:
        super().__init__(Settings(identity="test"))
        self.leading = True
        self.informers = {kind: Informer()  # type: ignore[misc]
                          for kind in ("virtualservers", "services", "endpointslices")}
        self._synced.set()
        self.stored: dict[tuple[str, str], dict[str, Any]] = {}
        self.applied: list[tuple[str, dict[str, Any]]] = []
        self.posted: list[tuple[str, str]] = []
        self.conflicts_to_raise = 0
        self.reconciled: list[tuple[str, str]] = []
        for b in bodies:
            self.store(b)

    def store(self, b: dict[str, Any]) -> Entry:
        """Put `b` in the API server and (as the informer would) in memory."""
        key = (NS, b["metadata"]["name"])
        self.stored[key] = b
        old, new = self._vs.get(key), self.parser.entry(b)
        self._vs[key] = new
        self._index(key, old, new)
        return new

    def remove(self, name: str) -> Entry:
        key = (NS, name)
        del self.stored[key]
        old = self._vs.pop(key)
        self._index(key, old, None)
        return old

    async def _apply(self, entry: Entry, wanted: Any) -> None:
        if self.conflicts_to_raise:
            self.conflicts_to_raise -= 1
            raise ApiException(status=409)
        self.applied.append((entry.name, dict(wanted)))

    async def _fetch(self, key: tuple[str, str]) -> Entry | None:
        return self.parser.entry(self.stored[key])

    async def _post(self, entry: Entry, event: report.Event) -> None:
        self.posted.append((entry.name, event.reason))


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    async def main() -> Any:
        result = await coro
        for _ in range(3):
            await asyncio.sleep(0)  # let the Events posted on the side go out
        return result
    return asyncio.run(main())


def test_parser_caches_by_generation_and_reports_invalid():
    parser = Parser()
    valid = parser.entry(body("web"))
    assert valid.valid is not None and valid.key == (NS, "web")
    assert parser.parse(body("web")) is valid.parsed  # same uid and generation: cached
    bad = body("bad", spec={"vip": "x", "ports": [{"port": 80}], "backend": {}})
    invalid = parser.entry(bad)
    assert invalid.valid is None and str(invalid.parsed).startswith("spec.vip:")
    assert invalid.claimant() is None
    assert parser.entry(body("gone", deleting=True)).claimant() is None


def test_compact_slice_keeps_what_resolve_reads():
    raw = {"metadata": {"name": "s", "managedFields": [{}] * 3}, "addressType": "IPv4",
           "ports": [{"name": "http", "port": 80}],
           "endpoints": [{"addresses": ["10.0.0.1", "10.0.0.9"], "conditions": {"ready": True},
                          "nodeName": "n1", "zone": "a", "hints": {},
                          "targetRef": {"kind": "Pod", "name": "p", "uid": "u"}}]}
    assert controller.compact_slice(raw) == {
        "service": None, "addressType": "IPv4", "ports": [{"name": "http", "port": 80}],
        "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True},
                       "nodeName": "n1", "targetRef": {"kind": "Pod", "name": "p"}}]}
    svc = {"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}], "clusterIP": "x",
                                                 "selector": {"app": "web"}}}
    assert controller.compact_service(svc) == {"spec": {"ports": [{"port": 80}],
                                                        "selector": {"app": "web"}}}


def test_reconcile_writes_a_difference_once_and_posts_the_event():
    fake = Fake(body("web"))

    async def go() -> None:
        await fake.reconcile((NS, "web"))
        _, wanted = fake.applied[0]
        # What was written is now stored: reconciling again writes nothing.
        fake.store(body("web", rv="2", state=wanted))
        await fake.reconcile((NS, "web"))

    run(go())
    assert [name for name, _ in fake.applied] == ["web"]
    assert fake.applied[0][1]["realServers"] == [{"ip": "10.0.0.1", "weight": 1, "ready": True}]
    assert fake.posted == [("web", "NoDirectors")]


def test_reconcile_resolves_a_service_from_the_informers():
    fake = Fake(body("web", backend={"service": {"name": "web", "port": "http"}}))
    fake.informers["services"].items[(NS, "web")] = controller.compact_service(
        {"spec": {"ports": [{"name": "http", "port": 80}]}})
    slice_ = controller.compact_slice({
        "metadata": {"labels": {"kubernetes.io/service-name": "web"}}, "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80}],
        "endpoints": [{"addresses": ["10.0.0.7"], "conditions": {"ready": True}}]})
    fake.informers["endpointslices"].items[(NS, "web-1")] = slice_
    fake._index_slice((NS, "web-1"), None, slice_)
    run(fake.reconcile((NS, "web")))
    assert fake.applied[0][1]["realServers"] == [{"ip": "10.0.0.7", "port": 80, "weight": 1,
                                                  "ready": True}]


def test_reconcile_rereads_after_a_conflict():
    fake = Fake(body("web"))
    fake.conflicts_to_raise = 1
    run(fake.reconcile((NS, "web")))
    assert len(fake.applied) == 1


def test_reconcile_gives_up_when_it_keeps_changing():
    fake = Fake(body("web"))
    fake.conflicts_to_raise = controller.APPLY_ATTEMPTS
    with pytest.raises(RuntimeError, match="changed under each"):
        run(fake.reconcile((NS, "web")))


def test_a_standby_writes_nothing():
    fake = Fake(body("web"))
    fake.leading = False
    run(fake.reconcile((NS, "web")))
    fake.enqueue((NS, "web"))
    assert fake.applied == [] and fake._running == {}


class Recording(Fake):
    """Records which keys get reconciled instead of reconciling them."""

    def __init__(self, *bodies: dict[str, Any], gate: asyncio.Event | None = None) -> None:
        super().__init__(*bodies)
        self.gate = gate

    async def reconcile(self, key: tuple[str, str]) -> None:
        self.reconciled.append(key)
        if self.gate is not None:
            await self.gate.wait()


def queued(fake: Recording, change: Callable[[], None]) -> list[str]:
    async def go() -> list[str]:
        fake.reconciled = []
        change()
        while fake._running:
            await asyncio.sleep(0)
        return sorted(name for _, name in fake.reconciled)
    result: list[str] = asyncio.run(go())
    return result


def test_a_virtual_server_change_queues_it_and_its_rivals():
    fake = Recording(body("new"), body("other", vip="192.0.2.99"))
    old = fake.store(body("old", created="2024-05-01T09:00:00Z"))
    assert queued(fake, lambda: fake.virtualserver_changed((NS, "old"), old, old)) == \
        ["new", "old"]


def test_deleting_the_holder_queues_who_it_kept_out():
    fake = Recording(body("old", created="2024-05-01T09:00:00Z"), body("moved", vip="192.0.2.50"))
    fake.conflicted = {(NS, "moved"): f"{NS}/old", (NS, "x"): f"{NS}/other"}
    old = fake.remove("old")
    assert queued(fake, lambda: fake.virtualserver_changed((NS, "old"), old, None)) == ["moved"]
    # Nothing of "old" stays behind in the claims.
    assert fake.claims == {ServiceKey.inet(Protocol.TCP, ip_address("192.0.2.50"), 80):
                           {(NS, "moved")}}


def test_a_backend_change_queues_its_virtual_servers():
    fake = Recording(body("svc", backend={"service": {"name": "web"}}), body("static"))
    assert queued(fake, lambda: fake.service_changed((NS, "web"), None, {})) == ["svc"]
    assert queued(fake, lambda: fake.service_changed((NS, "unrelated"), None, {})) == []
    slice_ = {"service": "web", "endpoints": []}
    assert queued(fake, lambda: fake.slice_changed((NS, "web-abc"), None, slice_)) == ["svc"]
    assert fake.slices_of == {(NS, "web"): {(NS, "web-abc")}}
    assert queued(fake, lambda: fake.slice_changed((NS, "web-abc"), slice_, None)) == ["svc"]
    assert fake.slices_of == {}
    assert queued(fake, lambda: fake.slice_changed((NS, "x"), None, {"service": None})) == []


def test_nothing_is_queued_before_the_first_lists():
    fake = Recording(body("web"))
    fake._synced.clear()
    assert queued(fake, lambda: fake.enqueue((NS, "web"))) == []


def test_the_queue_coalesces_a_burst():
    async def go() -> list[tuple[str, str]]:
        gate = asyncio.Event()
        fake = Recording(body("web"), gate=gate)
        for _ in range(5):
            fake.enqueue((NS, "web"))
            await asyncio.sleep(0)
        gate.set()
        while fake._running:
            await asyncio.sleep(0)
        return fake.reconciled
    # One run that was in progress, and one more for everything that came meanwhile.
    assert asyncio.run(go()) == [(NS, "web"), (NS, "web")]


def test_conflicts_are_found_through_the_claims_index():
    old = body("old", created="2024-05-01T09:00:00Z")
    new = body("new")
    fake = Fake(old, new)
    run(fake.reconcile((NS, "new")))
    run(fake.reconcile((NS, "old")))
    written = dict(fake.applied)
    assert written["new"]["realServers"] == [] and written["old"]["realServers"] != []
    assert fake.conflicted == {(NS, "new"): f"{NS}/old"}
    assert ("new", "Conflict") in fake.posted


# --- Lease ------------------------------------------------------------------------------------

class FakeLeases:
    """The Lease API of one API server: resourceVersion checks like the real one."""

    def __init__(self) -> None:
        self.lease: client.V1Lease | None = None
        self.version = 0

    async def read_namespaced_lease(self, name: str, namespace: str) -> client.V1Lease:
        if self.lease is None:
            raise ApiException(status=404)
        return copy.deepcopy(self.lease)

    async def create_namespaced_lease(self, namespace: str, body: client.V1Lease) -> None:
        if self.lease is not None:
            raise ApiException(status=409)
        self._store(body)

    async def replace_namespaced_lease(self, name: str, namespace: str,
                                       body: client.V1Lease) -> None:
        assert self.lease is not None and body.metadata is not None
        if body.metadata.resource_version != str(self.version):
            raise ApiException(status=409)
        self._store(body)

    def _store(self, body: client.V1Lease) -> None:
        self.version += 1
        self.lease = copy.deepcopy(body)
        assert self.lease.metadata is not None
        self.lease.metadata.resource_version = str(self.version)

    @property
    def holder(self) -> str | None:
        return self.lease.spec.holder_identity if self.lease and self.lease.spec else None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "monotonic", fake)
    return fake


def settings(identity: str) -> Settings:
    return Settings(identity=identity, lease_duration=15, renew_deadline=10, retry_period=2)


def test_lease_taken_renewed_and_kept_from_others_until_it_expires(clock):
    api = FakeLeases()
    a = Lease(api, settings("a"))  # type: ignore[arg-type]
    b = Lease(api, settings("b"))  # type: ignore[arg-type]

    async def go() -> None:
        assert await a._try_acquire_or_renew() and api.holder == "a"
        assert not await b._try_acquire_or_renew()
        clock.now += 10
        assert await a._try_acquire_or_renew()  # a renews: b's wait starts over
        assert not await b._try_acquire_or_renew()
        clock.now += 14
        assert not await b._try_acquire_or_renew()
        clock.now += 2  # a has been silent for 16 s > 15 s
        assert await b._try_acquire_or_renew() and api.holder == "b"
        assert not await a._try_acquire_or_renew()
        await b.release()
        assert api.holder is None
        assert await a._try_acquire_or_renew() and api.holder == "a"  # free: at once

    run(go())
    assert api.lease is not None and api.lease.spec is not None
    assert api.lease.spec.lease_transitions == 2


def test_settings_refuse_timings_that_allow_two_leaders():
    with pytest.raises(ValueError, match="renew deadline < lease duration"):
        Settings(lease_duration=10, renew_deadline=10, retry_period=2)


# --- Informer ---------------------------------------------------------------------------------

def obj(name: str, value: int, *, namespace: str = NS, rv: str = "1") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": rv},
            "value": value}


class Stream:
    """An open watch answer: JSON lines, then the end of the watch."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.lines = [json.dumps(e).encode() + b"\n" for e in events]

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    @property
    def content(self) -> Any:
        async def lines() -> Any:
            for line in self.lines:
                yield line
        return lines()


class FakeInformer(controller.Informer):
    """An Informer whose API answers come from `pages` (lists) and `watches` (streams)."""

    def __init__(self, pages: list[dict[str, Any]], watches: list[list[dict[str, Any]]],
                 paths: tuple[str, ...] = ("/api/v1/things",)) -> None:
        self.changes: list[tuple[Any, Any, Any]] = []
        super().__init__(None, kind="things", paths=paths,  # type: ignore[arg-type]
                         compact=lambda o: o["value"],
                         on_change=lambda k, old, new: self.changes.append((k, old, new)))
        self.pages, self.watches = pages, watches
        self.queries: list[tuple[str, dict[str, Any]]] = []

    async def _get(self, path: str, query: Any) -> Any:
        self.queries.append((path, dict(query)))
        return self.pages.pop(0)

    async def _request(self, path: str, query: Any, *, timeout: float) -> Any:
        self.queries.append((path, dict(query)))
        return Stream(self.watches.pop(0))


def page(*items: dict[str, Any], rv: str = "10", token: str = "") -> dict[str, Any]:
    return {"metadata": {"resourceVersion": rv, "continue": token}, "items": list(items)}


def test_informer_lists_in_pages_then_watches():
    informer = FakeInformer(
        pages=[page(obj("a", 1), token="t1"), page(obj("b", 2), rv="11")],
        watches=[[{"type": "ADDED", "object": obj("c", 3, rv="12")},
                  {"type": "MODIFIED", "object": obj("a", 4, rv="13")},
                  {"type": "DELETED", "object": obj("b", 2, rv="14")},
                  {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}}]])

    async def go() -> str:
        version = await informer._list("/api/v1/things")
        assert informer.synced.is_set() and informer.changes == []  # the first list is quiet
        return await informer._watch("/api/v1/things", version)

    assert run(go()) == "20"
    assert informer.items == {(NS, "a"): 4, (NS, "c"): 3}
    assert informer.changes == [((NS, "c"), None, 3), ((NS, "a"), 1, 4), ((NS, "b"), 2, None)]
    assert [q.get("continue") for _, q in informer.queries[:2]] == [None, "t1"]
    assert informer.queries[2][1]["resourceVersion"] == "11"


def test_informer_relist_reports_what_changed_unwatched_and_410_means_relist():
    informer = FakeInformer(pages=[page(obj("a", 1), obj("b", 2)),
                                   page(obj("a", 1), obj("c", 3))],
                            watches=[[{"type": "ERROR", "object": {"code": 410}}]])

    async def go() -> None:
        version = await informer._list("/api/v1/things")
        with pytest.raises(controller._Gone):
            await informer._watch("/api/v1/things", version)
        await informer._list("/api/v1/things")

    run(go())
    assert informer.items == {(NS, "a"): 1, (NS, "c"): 3}
    assert sorted(informer.changes) == [((NS, "b"), 2, None), ((NS, "c"), None, 3)]


def test_informer_per_namespace_relist_touches_only_its_namespace():
    paths = tuple(controller.collections("/api/v1", "things", ["x", "y"]))
    assert paths == ("/api/v1/namespaces/x/things", "/api/v1/namespaces/y/things")
    informer = FakeInformer(pages=[page(obj("a", 1, namespace="x")),
                                   page(obj("a", 2, namespace="y")),
                                   page()], watches=[], paths=paths)

    async def go() -> None:
        await informer._list(paths[0])
        assert not informer.synced.is_set()  # y is not listed yet
        await informer._list(paths[1])
        assert informer.synced.is_set()
        await informer._list(paths[0])  # x emptied while nobody watched

    run(go())
    assert informer.items == {("y", "a"): 2}
    assert informer.changes == [(("x", "a"), 1, None)]
