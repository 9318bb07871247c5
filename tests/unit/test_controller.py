"""controller: what each change queues, the queue's coalescing, reconcile's write-only-a-
difference and conflict retry, and the Lease election -- with fake indexes and a fake API."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from collections.abc import Callable, Coroutine
from ipaddress import ip_address
from typing import Any

import pytest

import scenarios
from lvs_operator.api import claims
from lvs_operator.controller import objects, report
from lvs_operator.controller import reconciler as controller
from lvs_operator.controller.leader import Leader
from lvs_operator.controller.objects import Entry, Parser
from lvs_operator.controller.reconciler import Controller
from lvs_operator.controller.settings import Settings
from lvs_operator.kube import client, watch
from lvs_operator.kube.watch import Key
from lvs_operator.model import Protocol, ServiceKey

NS = "shop"


def body(name: str, *, vip: str = "192.0.2.10", created: str = "2024-05-01T10:00:00Z",
         uid: str | None = None, generation: int = 1, rv: str = "1",
         backend: dict[str, Any] | None = None, spec: dict[str, Any] | None = None,
         state: dict[str, Any] | None = None, deleting: bool = False,
         namespace: str = NS) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace,
                            "uid": uid or f"uid-{namespace}-{name}",
                            "generation": generation, "resourceVersion": rv,
                            "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = "2024-05-01T11:00:00Z"
    return {"apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualServer", "metadata": meta,
            "spec": spec or {"vip": vip, "ports": [{"port": 80}],
                             "backend": backend or {"addresses": [{"ip": "10.0.0.1"}]}},
            "status": state or {}}


class Cache:
    """What the controller reads of a reflector: `get`."""

    def __init__(self) -> None:
        self.items: dict[Key, Any] = {}

    def get(self, key: Key) -> Any:
        return self.items.get(key)

    def snapshot(self) -> dict[Key, Any]:
        return dict(self.items)


class Fake(Controller):
    """A Controller over in-memory caches, whose API calls are recorded."""

    def __init__(self, *bodies: dict[str, Any]) -> None:
        super().__init__(Settings(identity="test"))
        self.leading = True
        self.cached = {kind: Cache() for kind in ("services", "endpointslices", "vippools",
                                                  "vipclaims", "namespaces")}
        self.caches = {kind: {"": cache}  # type: ignore[dict-item]
                       for kind, cache in self.cached.items()}
        # Deny by default: the open pool of the tests, as every tier has it.
        self.cached["vippools"].items[Key("", "open")] = objects.compact_pool(
            scenarios.open_pool())
        self.cached["namespaces"].items[Key("", NS)] = {}
        self.claim_writes: list[tuple[str, str, str]] = []  # (action, address, namespace)
        self._synced.set()
        self.stored: dict[Key, dict[str, Any]] = {}
        self.applied: list[tuple[str, dict[str, Any]]] = []
        self.posted: list[tuple[str, str]] = []
        self.conflicts_to_raise = 0
        self.reconciled: list[tuple[str, str]] = []
        for b in bodies:
            self.store(b)

    def store(self, b: dict[str, Any]) -> Entry:
        """Put `b` in the API server and (as the informer would) in memory."""
        key = Key(b["metadata"]["namespace"], b["metadata"]["name"])
        self.stored[key] = b
        old, new = self.virtualservers.get(key), self.parser.entry(b)
        self.virtualservers[key] = new
        self._index(key, old, new)
        return new

    def remove(self, name: str, namespace: str = NS) -> Entry:
        key = Key(namespace, name)
        del self.stored[key]
        old = self.virtualservers.pop(key)
        self._index(key, old, None)
        return old

    async def _apply(self, entry: Entry, wanted: Any) -> None:
        if self.conflicts_to_raise:
            self.conflicts_to_raise -= 1
            raise client.ApiError(409, "conflict")
        self.applied.append((entry.name, dict(wanted)))

    async def _write_claim(self, action: str, claim: claims.Claim) -> claims.Claim | None:
        """The API server's part: a name is created once; a replace or delete needs the
        stored resourceVersion."""
        stored = self.cached["vipclaims"].items
        key = Key("", claim.name)
        self.claim_writes.append((action, str(claim.address), claim.namespace))
        if action == "create":
            if key in stored:
                raise client.ApiError(409, "already exists")
            stored[key] = dataclasses.replace(claim, resource_version=f"c{len(self.claim_writes)}")
            return stored[key]  # type: ignore[no-any-return]
        if key not in stored:
            raise client.ApiError(404, "not found")
        if stored[key].resource_version != claim.resource_version:
            raise client.ApiError(409, "conflict")
        if action == "delete":
            del stored[key]
            return None
        stored[key] = dataclasses.replace(claim, resource_version=f"c{len(self.claim_writes)}")
        return stored[key]  # type: ignore[no-any-return]

    async def _read_claim(self, vip: Any) -> claims.Claim | None:
        return self.cached["vipclaims"].items.get(Key("", claims.name_of(vip)))

    async def _fetch(self, key: Key) -> Entry | None:
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
    assert valid.valid is not None and valid.key == Key(NS, "web")
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
    assert objects.compact_slice(raw) == {
        "service": None, "addressType": "IPv4", "ports": [{"name": "http", "port": 80}],
        "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True},
                       "nodeName": "n1", "targetRef": {"kind": "Pod", "name": "p"}}]}
    svc = {"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}], "clusterIP": "x",
                                                 "selector": {"app": "web"}}}
    assert objects.compact_service(svc) == {"spec": {"ports": [{"port": 80}],
                                                        "selector": {"app": "web"}}}


def test_reconcile_writes_a_difference_once_and_posts_the_event():
    fake = Fake(body("web"))

    async def go() -> None:
        await fake.reconcile(Key(NS, "web"))
        _, wanted = fake.applied[0]
        # What was written is now stored: reconciling again writes nothing.
        fake.store(body("web", rv="2", state=wanted))
        await fake.reconcile(Key(NS, "web"))

    run(go())
    assert [name for name, _ in fake.applied] == ["web"]
    assert fake.applied[0][1]["realServers"] == [{"ip": "10.0.0.1", "weight": 1, "ready": True}]
    assert fake.posted == [("web", "NoDirectors")]


def test_reconcile_resolves_a_service_from_the_informers():
    fake = Fake(body("web", backend={"service": {"name": "web", "port": "http"}}))
    fake.cached["services"].items[Key(NS, "web")] = objects.compact_service(
        {"spec": {"ports": [{"name": "http", "port": 80}]}})
    slice_ = objects.compact_slice({
        "metadata": {"labels": {"kubernetes.io/service-name": "web"}}, "addressType": "IPv4",
        "ports": [{"name": "http", "port": 80}],
        "endpoints": [{"addresses": ["10.0.0.7"], "conditions": {"ready": True}}]})
    fake.cached["endpointslices"].items[Key(NS, "web-1")] = slice_
    fake.slices_of[Key(NS, "web")] = {Key(NS, "web-1")}
    run(fake.reconcile(Key(NS, "web")))
    assert fake.applied[0][1]["realServers"] == [{"ip": "10.0.0.7", "port": 80, "weight": 1,
                                                  "ready": True}]


def test_reconcile_rereads_after_a_conflict():
    fake = Fake(body("web"))
    fake.conflicts_to_raise = 1
    run(fake.reconcile(Key(NS, "web")))
    assert len(fake.applied) == 1


def test_reconcile_gives_up_when_it_keeps_changing():
    fake = Fake(body("web"))
    fake.conflicts_to_raise = controller.APPLY_ATTEMPTS
    with pytest.raises(RuntimeError, match="changed under each"):
        run(fake.reconcile(Key(NS, "web")))


def test_a_standby_writes_nothing():
    fake = Fake(body("web"))
    fake.leading = False
    run(fake.reconcile(Key(NS, "web")))
    fake.enqueue(Key(NS, "web"))
    assert fake.applied == [] and fake._running == {}


class Recording(Fake):
    """Records which keys get reconciled instead of reconciling them."""

    def __init__(self, *bodies: dict[str, Any], gate: asyncio.Event | None = None) -> None:
        super().__init__(*bodies)
        self.gate = gate

    async def reconcile(self, key: Key) -> None:
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
    assert queued(fake, lambda: fake.virtualserver_changed(Key(NS, "old"), old, old)) == \
        ["new", "old"]


def test_deleting_the_holder_queues_who_it_kept_out():
    fake = Recording(body("old", created="2024-05-01T09:00:00Z"), body("moved", vip="192.0.2.50"))
    fake.conflicted = {Key(NS, "moved"): f"{NS}/old", Key(NS, "x"): f"{NS}/other"}
    old = fake.remove("old")
    assert queued(fake, lambda: fake.virtualserver_changed(Key(NS, "old"), old, None)) == ["moved"]
    # Nothing of "old" stays behind in the claims.
    assert fake.claims == {ServiceKey.inet(Protocol.TCP, ip_address("192.0.2.50"), 80):
                           {Key(NS, "moved")}}


def test_a_backend_change_queues_its_virtual_servers():
    fake = Recording(body("svc", backend={"service": {"name": "web"}}), body("static"))
    assert queued(fake, lambda: fake.service_changed(Key(NS, "web"), None, {})) == ["svc"]
    assert queued(fake, lambda: fake.service_changed(Key(NS, "unrelated"), None, {})) == []
    slice_ = {"service": "web", "endpoints": []}
    assert queued(fake, lambda: fake.slice_changed(Key(NS, "web-abc"), None, slice_)) == ["svc"]
    assert fake.slices_of == {Key(NS, "web"): {Key(NS, "web-abc")}}
    assert queued(fake, lambda: fake.slice_changed(Key(NS, "web-abc"), slice_, None)) == ["svc"]
    assert fake.slices_of == {}
    assert queued(fake, lambda: fake.slice_changed(Key(NS, "x"), None, {"service": None})) == []


def test_nothing_is_queued_before_the_first_lists():
    fake = Recording(body("web"))
    fake._synced.clear()
    assert queued(fake, lambda: fake.enqueue(Key(NS, "web"))) == []


def test_the_queue_coalesces_a_burst():
    async def go() -> list[tuple[str, str]]:
        gate = asyncio.Event()
        fake = Recording(body("web"), gate=gate)
        for _ in range(5):
            fake.enqueue(Key(NS, "web"))
            await asyncio.sleep(0)
        gate.set()
        while fake._running:
            await asyncio.sleep(0)
        return fake.reconciled
    # One run that was in progress, and one more for everything that came meanwhile.
    assert asyncio.run(go()) == [Key(NS, "web"), Key(NS, "web")]


def test_conflicts_are_found_through_the_claims_index():
    old = body("old", created="2024-05-01T09:00:00Z")
    new = body("new")
    fake = Fake(old, new)
    run(fake.reconcile(Key(NS, "new")))
    run(fake.reconcile(Key(NS, "old")))
    written = dict(fake.applied)
    assert written["new"]["realServers"] == [] and written["old"]["realServers"] != []
    assert fake.conflicted == {Key(NS, "new"): f"{NS}/old"}
    assert ("new", "Conflict") in fake.posted


# --- Lease ------------------------------------------------------------------------------------

class FakeLeases:
    """The Lease API of one API server: resourceVersion checks like the real one."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0

    def request(self, method: str, path: str, *, query: Any = (), body: Any = None,
                content_type: str = "", timeout: Any = None) -> Any:
        if method == "GET":
            if self.lease is None:
                raise client.ApiError(404, "not found")
            return copy.deepcopy(self.lease)
        if method == "POST":
            if self.lease is not None:
                raise client.ApiError(409, "exists")
        elif method == "PUT":
            assert self.lease is not None
            if body["metadata"].get("resourceVersion") != str(self.version):
                raise client.ApiError(409, "conflict")
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(self.lease)

    @property
    def holder(self) -> str | None:
        holder: str | None = (self.lease or {}).get("spec", {}).get("holderIdentity")
        return holder


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


async def inline(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def test_lease_taken_renewed_and_kept_from_others_until_it_expires(clock):
    api = FakeLeases()
    a = Leader(api, settings("a"), call=inline)
    b = Leader(api, settings("b"), call=inline)
    assert a.try_acquire_or_renew() and api.holder == "a"
    assert not b.try_acquire_or_renew()
    clock.now += 10
    assert a.try_acquire_or_renew()  # a renews: b's wait starts over
    assert not b.try_acquire_or_renew()
    clock.now += 14
    assert not b.try_acquire_or_renew()
    clock.now += 2  # a has been silent for 16 s > 15 s
    assert b.try_acquire_or_renew() and api.holder == "b"
    assert not a.try_acquire_or_renew()
    run(b.release())
    assert api.holder is None
    assert a.try_acquire_or_renew() and api.holder == "a"  # free: at once
    assert api.lease is not None
    assert api.lease["spec"]["leaseTransitions"] == 2


def test_settings_refuse_timings_that_allow_two_leaders():
    with pytest.raises(ValueError, match="renew deadline < lease duration"):
        Settings(lease_duration=10, renew_deadline=10, retry_period=2)


# --- VirtualServers from kopf's events --------------------------------------------------------

def test_kopf_events_update_the_cache_and_queue():
    fake = Recording()
    assert queued(fake, lambda: fake.virtualserver_event(None, body("web"))) == ["web"]
    assert fake.virtualservers[Key(NS, "web")].resource_version == "1"
    # The same version again (kopf's relist, or the controller's own list): nothing to do.
    assert queued(fake, lambda: fake.virtualserver_event("MODIFIED", body("web"))) == []
    assert queued(fake, lambda: fake.virtualserver_event("MODIFIED", body("web", rv="2"))) \
        == ["web"]
    assert queued(fake, lambda: fake.virtualserver_event("DELETED", body("web", rv="3"))) == []
    assert fake.virtualservers == {} and fake.claims == {}


def test_a_deletion_seen_before_the_first_list_is_not_undone_by_it():
    fake = Recording()
    fake._synced.clear()
    fake._touched.clear()  # the list begins
    fake.virtualserver_event(None, body("web"))
    fake.virtualserver_event("DELETED", body("web"))
    fake._listed = False
    # Synced by this list: everything listed is reconciled.
    assert queued(fake, lambda: fake._take_list([body("web"), body("other",
                                                                   vip="192.0.2.20")])) \
        == ["other"]
    assert sorted(k.name for k in fake.virtualservers) == ["other"]
    assert fake._synced.is_set(), "every reflector had listed (none here) and so has this"


def test_a_relist_removes_what_kopf_never_reported_deleted():
    fake = Recording(body("ghost"), body("kept", vip="192.0.2.30"))
    fake._touched.clear()  # a relist begins
    assert queued(fake, lambda: fake.virtualserver_event(None, body("new", vip="192.0.2.40"))) \
        == ["new"]  # kopf, meanwhile
    assert queued(fake, lambda: fake._take_list([body("kept", vip="192.0.2.30")])) == []
    assert sorted(k.name for k in fake.virtualservers) == ["kept", "new"]
    assert fake.claims.keys() == {ServiceKey.inet(Protocol.TCP, ip_address(ip), 80)
                                  for ip in ("192.0.2.30", "192.0.2.40")}


def test_forgetting_a_virtual_server_forgets_its_pod_check():
    fake = Fake(body("web"))
    fake._pods_checked[Key(NS, "web")] = 1
    old = fake.remove("web")

    async def go() -> None:
        fake.virtualserver_changed(Key(NS, "web"), old, None)
    run(go())
    assert fake._pods_checked == {}


def test_watch_paths_cover_the_namespaces_or_the_cluster():
    assert controller.watch_paths("/api/v1", "things", ["x", "y"]) == {
        "x": "/api/v1/namespaces/x/things", "y": "/api/v1/namespaces/y/things"}
    assert controller.watch_paths("/api/v1", "things", []) == {"": "/api/v1/things"}
    assert watch.Key(NS, "a") == (NS, "a")


# --- VIP pools and claims ---------------------------------------------------------------------

def ready_of(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


def test_a_vip_in_no_pool_is_refused_and_publishes_nothing():
    fake = Fake(body("web"))
    fake.cached["namespaces"].items[Key("", NS)] = {scenarios.CLOSED_LABEL: "true"}
    run(fake.reconcile(Key(NS, "web")))
    status = fake.applied[-1][1]
    assert ready_of(status)["reason"] == "VIPNotAllowed" and status["realServers"] == []
    assert ready_of(status)["message"].startswith(
        "spec.vip: namespace shop may use no VIP pool")
    assert fake.claim_writes == []
    assert fake.posted == [("web", "VIPNotAllowed")]


def test_the_vip_goes_to_the_first_namespace_and_a_squatter_never_captures_it():
    fake = Fake(body("web", created="2024-05-01T10:00:00Z"))
    fake.cached["namespaces"].items[Key("", "bank")] = {}
    run(fake.reconcile(Key(NS, "web")))
    assert fake.claim_writes == [("create", "192.0.2.10", NS)]
    assert ready_of(fake.applied[-1][1])["reason"] != "VIPInUse"
    # A VirtualServer of another namespace (older even) on the same VIP, another port.
    squatter = body("grab", namespace="bank", created="2024-04-01T10:00:00Z",
                    spec={"vip": "192.0.2.10", "ports": [{"port": 80}],
                          "backend": {"addresses": [{"ip": "10.0.0.9"}]}})
    fake.store(squatter)
    run(fake.reconcile(Key("bank", "grab")))
    refused = fake.applied[-1][1]
    assert fake.applied[-1][0] == "grab" and refused["realServers"] == []
    assert ready_of(refused)["reason"] == "VIPInUse"
    assert NS not in ready_of(refused)["message"] and "web" not in ready_of(refused)["message"]
    fake.store({**squatter, "status": refused})  # its status as the API server keeps it
    # The owner lets go and comes back: the squatter, older, still takes nothing.
    old = fake.remove("web")

    async def delete_and_settle() -> None:
        fake.virtualserver_changed(Key(NS, "web"), old, None)
        await asyncio.gather(*fake._background)
    run(delete_and_settle())
    assert fake.claim_writes[-1] == ("delete", "192.0.2.10", NS)
    run(fake.reconcile(Key("bank", "grab")))
    assert "delete and re-create" in ready_of(fake.applied[-1][1])["message"]
    fake.store(body("web", created="2024-05-02T10:00:00Z", uid="uid-new"))
    run(fake.reconcile(Key(NS, "web")))
    assert fake.claim_writes[-1] == ("create", "192.0.2.10", NS)
    back = fake.applied[-1][1]
    assert fake.applied[-1][0] == "web"
    assert ready_of(back)["reason"] not in ("VIPInUse", "Conflict")
    assert back["realServers"] == [{"ip": "10.0.0.1", "weight": 1, "ready": True}]


def test_namespaces_share_a_vip_with_one_sharing_key():
    fake = Fake(body("web", spec={"vip": "192.0.2.10", "ports": [{"port": 80}],
                                  "sharingKey": "edge",
                                  "backend": {"addresses": [{"ip": "10.0.0.1"}]}}))
    fake.cached["namespaces"].items[Key("", "bank")] = {}
    run(fake.reconcile(Key(NS, "web")))
    fake.store(body("dns", namespace="bank", spec={
        "vip": "192.0.2.10", "ports": [{"port": 53, "protocol": "UDP"}], "sharingKey": "edge",
        "backend": {"addresses": [{"ip": "10.0.0.9"}]}}))
    run(fake.reconcile(Key("bank", "dns")))
    shared = fake.applied[-1][1]
    assert fake.applied[-1][0] == "dns" and shared["realServers"] != []
    # The owner goes: the sharer inherits the claim.
    old = fake.remove("web")

    async def delete_and_settle() -> None:
        fake.virtualserver_changed(Key(NS, "web"), old, None)
        await asyncio.gather(*fake._background)
    run(delete_and_settle())
    assert fake.claim_writes[-1] == ("replace", "192.0.2.10", "bank")
