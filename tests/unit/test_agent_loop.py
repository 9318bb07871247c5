"""agent.loop: the sync loop's timing rules against an in-memory API and the fake kernel:
no sync before the lists, bursts coalesced, drift repaired by the periodic resync, nothing
done while the Node is missing; the VIP pools admit before anything is programmed."""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from ipaddress import ip_address
from typing import Any

import pytest

import scenarios
from lvs_operator.agent import desired, election, loop
from lvs_operator.agent.settings import (
    DirectorSettings,
    HASettings,
    Settings,
    SyncSettings,
    VRRPSettings,
)
from lvs_operator.ipvs import ApplyError, IPVSError
from lvs_operator.ipvs.fake import FakeIPVS
from lvs_operator.kube import client, events
from lvs_operator.kube import lease as kube_lease
from lvs_operator.model import Forwarding, Protocol, RealServer, ServiceKey, VirtualService
from lvs_operator.ownership import OwnershipStore
from lvs_operator.plan import AddReal, AddService, DeleteService

NODE = "node-a"
VIP = "192.0.2.20"
KEY = ServiceKey.inet(Protocol.TCP, ip_address(VIP), 80)
STALE = ServiceKey.inet(Protocol.TCP, ip_address("192.0.2.21"), 80)


def virtualserver(reals) -> dict[str, Any]:
    return {"metadata": {"name": "web", "namespace": "shop", "generation": 1,
                         "creationTimestamp": "2025-01-01T00:00:00Z", "resourceVersion": "1"},
            "spec": {"vip": VIP, "ports": [{"port": 80}], "scheduler": {"name": "rr"},
                     "backend": {"service": {"name": "web"}},
                     "directors": {"interface": "eth0"}},
            "status": {"realServers": [{"ip": f"10.0.0.{n}", "weight": 1, "ready": True}
                                       for n in reals]}}


class Log:
    """One collection's watch events, numbered like resourceVersions: a watch from version
    v sees every event after v (as the API server's watch cache does)."""

    def __init__(self, api: FakeApi):
        self.api = api
        self.events: list[tuple[int, dict[str, Any]]] = []

    def put(self, event: dict[str, Any]) -> None:
        with self.api.changed:
            self.api.version += 1
            self.events.append((self.api.version, event))
            self.api.changed.notify_all()


class Stream:
    def __init__(self, log: Log, version: str):
        self.log = log
        self.cursor = int(version)
        self.closed = False

    def __iter__(self):
        changed = self.log.api.changed
        while not self.closed:
            with changed:
                fresh = [(n, e) for n, e in self.log.events if n > self.cursor]
                if not fresh:
                    changed.wait(0.05)
                    continue
            for number, event in fresh:
                self.cursor = number
                yield event

    def close(self):
        self.closed = True


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


class FakeApi:
    """An API server in memory: one VirtualServer collection, one Node, VIP pools (the
    tests' open pool unless told), Namespaces (those of the VirtualServers, unlabelled,
    and `namespaces`) and Leases (which several agents may share: status patches are echoed
    with `echo`)."""

    def __init__(self, objects=(), *, node=True, echo=False, nodes=None, pools=None,
                 namespaces=None):
        self.objects = {f"{o['metadata']['namespace']}/{o['metadata']['name']}": o
                        for o in objects}
        self.node = {"metadata": {"name": NODE, "labels": {}}} if node else None
        self.nodes = nodes  # name -> Node, for several agents (None: just `node`)
        self.gate = threading.Event()
        self.gate.set()
        self.changed = threading.Condition()
        self.pools = {p["metadata"]["name"]: p
                      for p in ([scenarios.open_pool()] if pools is None else pools)}
        self.namespaces = dict(namespaces or {})  # name -> labels
        self.streams: dict[str, Log] = {client.VIRTUALSERVERS: Log(self), client.NODES: Log(self),
                                        "leases": Log(self), client.VIPPOOLS: Log(self),
                                        client.NAMESPACES: Log(self)}
        self.patches: list[Any] = []
        self.leases: dict[str, dict[str, Any]] = {}
        self.lease_writes: list[tuple[str, str]] = []  # (method, lease name)
        self.fail_renewals: set[str] = set()  # holder names whose Lease writes fail
        self.echo = echo
        self.version = 10

    @staticmethod
    def _key(path: str) -> str:
        return "leases" if path.startswith(kube_lease.PATH) else path

    def lister(self, path, *, query=()):
        def list_():
            if path == client.VIRTUALSERVERS:
                assert self.gate.wait(30)
            with self.changed:
                version = str(self.version)
                if path == client.VIRTUALSERVERS:
                    return [copy.deepcopy(o) for o in self.objects.values()], version
                if path.startswith(kube_lease.PATH):
                    return [copy.deepcopy(o) for o in self.leases.values()], version
                if path == client.VIPPOOLS:
                    return [copy.deepcopy(o) for o in self.pools.values()], version
                if path == client.NAMESPACES:
                    names = {o["metadata"]["namespace"] for o in self.objects.values()}
                    labels = {**{name: {} for name in names}, **self.namespaces}
                    return [{"metadata": {"name": n, "labels": dict(v)}}
                            for n, v in sorted(labels.items())], version
                if self.nodes is not None:
                    name = dict(query).get("fieldSelector", "").partition("=")[2]
                    return [copy.deepcopy(self.nodes[name])], version
                return ([self.node] if self.node else []), version
        return list_

    def watcher(self, path, *, query=(), timeout_seconds=300, read_timeout=120.0):
        return lambda version: Stream(self.streams[self._key(path)], version)

    def patch_status(self, namespace, name, patch):
        self.patches.append(patch)
        if not self.echo:
            return {}
        with self.changed:
            key = f"{namespace}/{name}"
            obj = merge(self.objects[key], {"status": patch["status"]})
            obj["metadata"]["resourceVersion"] = str(self.version + 1)
            self.objects[key] = obj
        self.streams[client.VIRTUALSERVERS].put({"type": "MODIFIED", "object": copy.deepcopy(obj)})
        return obj

    def create_event(self, event):
        return event

    def request(self, method, path, *, query=(), body=None, content_type="", timeout=None):
        if path.startswith(events.PATH):
            assert method == "POST", method
            return self.create_event(body)
        assert path.startswith(kube_lease.PATH), path
        name = path.rsplit("/", 1)[-1]
        holder = (body or {}).get("spec", {}).get("holderIdentity") or name
        if method in ("PATCH", "POST") and any(holder.endswith(n) for n in self.fail_renewals):
            raise client.ApiError(0, "connection refused (scripted)")
        with self.changed:
            if method == "POST":
                name = body["metadata"]["name"]
                if name in self.leases:
                    raise client.ApiError(409, "exists")
                kind, obj = "ADDED", copy.deepcopy(body)
            elif method == "PATCH":
                if name not in self.leases:
                    raise client.ApiError(404, "not found")
                kind, obj = "MODIFIED", merge(self.leases[name], body)
            elif method == "DELETE":
                if name not in self.leases:
                    raise client.ApiError(404, "not found")
                kind, obj = "DELETED", self.leases.pop(name)
            else:
                raise AssertionError(method)
            self.lease_writes.append((method, name))
            obj["metadata"]["resourceVersion"] = str(self.version + 1)
            if kind != "DELETED":
                self.leases[name] = obj
        self.streams["leases"].put({"type": kind, "object": copy.deepcopy(obj)})
        return obj

    def modify(self, obj):
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version + 1)
        self.streams[client.VIRTUALSERVERS].put({"type": "MODIFIED", "object": obj})

    def put_pool(self, pool):
        """Create or replace a VIPPool."""
        pool = copy.deepcopy(pool)
        name = pool["metadata"]["name"]
        kind = "MODIFIED" if name in self.pools else "ADDED"
        pool["metadata"]["resourceVersion"] = str(self.version + 1)
        self.pools[name] = pool
        self.streams[client.VIPPOOLS].put({"type": kind, "object": copy.deepcopy(pool)})

    def delete_pool(self, name):
        pool = self.pools.pop(name)
        self.streams[client.VIPPOOLS].put({"type": "DELETED", "object": pool})

    def label_namespace(self, name, labels):
        self.namespaces[name] = dict(labels)
        self.streams[client.NAMESPACES].put({"type": "MODIFIED", "object": {
            "metadata": {"name": name, "labels": dict(labels),
                         "resourceVersion": str(self.version + 1)}}})


class FakeVips:
    def list_vips(self, interface):
        return []

    def add_vip(self, interface, address):
        return True

    def remove_vip(self, interface, address):
        return True

    def announce(self, interface, addresses):
        pass


@contextlib.contextmanager
def running(api, ipvs, tmp_path, *, interface_exists=lambda name: False, **sync):
    settings = Settings(node=NODE, state_file=tmp_path / "owned.json", metrics_address="",
                        sync=SyncSettings(**{"resync_seconds": 30.0, "min_interval_seconds":
                                             0.0, "retry_seconds": 0.1, **sync}),
                        director=DirectorSettings(sysctls=None),
                        ha=HASettings(vrrp=VRRPSettings(directory=tmp_path / "keepalived")))
    agent = loop.Agent(settings, api=api, ipvs=ipvs, vips=FakeVips(), sysctls=lambda s: [],
                       default_interface=lambda: None, interface_exists=interface_exists)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        yield agent
    finally:
        agent.stop()
        thread.join(10)
        assert not thread.is_alive()


def eventually(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out: {check}")
        time.sleep(0.01)


def reals(agent):
    service = agent.table().get(KEY)
    return None if service is None else {str(r.address) for r in service.reals.values()}


@pytest.fixture
def stale_kernel(tmp_path):
    """A kernel holding a service an earlier agent made for a VirtualServer now gone."""
    ipvs = FakeIPVS()
    ipvs.apply([AddService(VirtualService(STALE, scheduler="rr"))])
    OwnershipStore(tmp_path / "owned.json").update(services={STALE})
    return ipvs


def test_nothing_is_withdrawn_before_the_first_list(tmp_path, stale_kernel):
    api = FakeApi()
    api.gate.clear()
    with running(api, stale_kernel, tmp_path, resync_seconds=0.05) as agent:
        time.sleep(0.5)  # ten resync periods
        assert agent.metrics.syncs == 0
        assert set(stale_kernel.dump()) == {STALE}
        api.gate.set()
        eventually(lambda: agent.table() == {})
    assert stale_kernel.applied[-1] == DeleteService(STALE)


def test_nothing_changes_while_the_node_is_missing(tmp_path, stale_kernel):
    api = FakeApi(node=False)
    with running(api, stale_kernel, tmp_path) as agent:
        time.sleep(0.5)
        assert set(agent.table()) == {STALE}
        assert agent.metrics.syncs == 0, "no sync runs without the Node"
        api.node = {"metadata": {"name": NODE, "labels": {}}}
        api.streams[client.NODES].put({"type": "ADDED", "object": api.node})
        eventually(lambda: agent.table() == {})


def test_a_burst_of_events_is_one_or_two_syncs(tmp_path):
    obj = virtualserver([1])
    api = FakeApi([obj])
    ipvs = FakeIPVS()
    with running(api, ipvs, tmp_path, min_interval_seconds=0.3) as agent:
        eventually(lambda: reals(agent) == {"10.0.0.1"})
        before = agent.metrics.syncs
        for n in range(2, 102):
            api.modify(virtualserver([1, n]))
        eventually(lambda: reals(agent) == {"10.0.0.1", "10.0.0.101"})
        time.sleep(0.4)
        assert agent.metrics.syncs - before <= 3, "100 events, a few syncs"


def role(api):
    """Return the `role` of this node's status entry in the last status patch, or None."""
    if not api.patches:
        return None
    return api.patches[-1]["status"]["directors"][NODE].get("role")


def warning(api):
    """Return the `warning` of this node's status entry in the last status patch."""
    if not api.patches:
        return None
    return api.patches[-1]["status"]["directors"][NODE].get("warning")


def test_periodic_resync_repairs_drift(tmp_path):
    api = FakeApi([virtualserver([1])])
    ipvs = FakeIPVS()
    with running(api, ipvs, tmp_path, resync_seconds=0.2) as agent:
        eventually(lambda: reals(agent) == {"10.0.0.1"})
        # Settled: a director may report Standby first (its election has not settled yet).
        eventually(lambda: role(api) == "Active")
        assert warning(api) is None
        with agent._kernel:  # somebody runs `ipvsadm -C` behind the agent's back
            ipvs.apply([DeleteService(KEY)])
        eventually(lambda: reals(agent) == {"10.0.0.1"})
        # The status says so, once; this node has no kube-ipvs0: kube-proxy is not named.
        eventually(lambda: warning(api))
        assert warning(api).startswith(f"{KEY} deleted behind this director's back and "
                                       "restored"), warning(api)
        assert "kube-proxy" not in warning(api)
        patches = len(api.patches)
        time.sleep(0.5)
        assert len(api.patches) == patches, "resyncs write no status when nothing changed"


def test_kube_proxy_deleting_a_service_is_named_with_the_cidr_to_exclude(tmp_path):
    api = FakeApi([virtualserver([1])])
    ipvs = FakeIPVS()
    with running(api, ipvs, tmp_path, resync_seconds=0.2,
                 interface_exists=lambda name: name == "kube-ipvs0") as agent:
        eventually(lambda: reals(agent) == {"10.0.0.1"})
        eventually(lambda: role(api) == "Active")
        assert warning(api) is None, "kube-ipvs0 alone is no reason to warn"
        with agent._kernel:  # kube-proxy's cleanup of services it does not know
            ipvs.apply([DeleteService(KEY)])
        eventually(lambda: warning(api))
        assert "kube-proxy runs in IPVS mode on this node (kube-ipvs0)" in warning(api)
        assert f"add {VIP}/32 to its --ipvs-exclude-cidrs" in warning(api)


def test_a_service_the_agent_failed_to_add_is_not_taken_for_a_deletion(tmp_path):
    class Refusing(FakeIPVS):
        refuse = True

        def apply(self, operations):
            operations = list(operations)
            if self.refuse and any(isinstance(op, AddService) for op in operations):
                raise ApplyError([IPVSError("refused (scripted)", operation=op)
                                  for op in operations if isinstance(op, AddService)])
            return super().apply(operations)

    api = FakeApi([virtualserver([1])])
    ipvs = Refusing()
    with running(api, ipvs, tmp_path, resync_seconds=0.2) as agent:
        eventually(lambda: api.patches and "refused" in
                   api.patches[-1]["status"]["directors"][NODE]["error"])
        ipvs.refuse = False
        eventually(lambda: reals(agent) == {"10.0.0.1"})
        time.sleep(0.3)
        assert warning(api) is None, "added late, not restored"


def test_a_service_something_else_made_on_our_key_is_reported_and_left_alone(tmp_path):
    posted: list[dict[str, Any]] = []

    class Recording(FakeApi):
        def create_event(self, event):
            posted.append(event)
            return event

    obj = virtualserver([1])
    api = Recording([obj], echo=True)
    ipvs = FakeIPVS()
    # kube-proxy, keepalived or an admin's `ipvsadm -A -t 192.0.2.20:80 -s wlc` came first
    foreign = VirtualService(KEY, scheduler="wlc").with_reals(
        [RealServer(ip_address("10.9.9.9"), 80, Forwarding.NAT, 5)])
    ipvs.apply([AddService(foreign), *(AddReal(KEY, r) for r in foreign.reals.values())])
    before = ipvs.dump()
    with running(api, ipvs, tmp_path, resync_seconds=0.1) as agent:
        eventually(lambda: "lvs-operator did not create it" in (api.objects["shop/web"].get(
            "status", {}).get("directors", {}).get(NODE, {}).get("error") or ""))
        error = api.objects["shop/web"]["status"]["directors"][NODE]["error"]
        assert error.startswith(f"{KEY} exists in this node's IPVS table but lvs-operator did "
                                "not create it (kube-proxy in IPVS mode, a keepalived "
                                "virtual_server or ipvsadm did): left as found"), error
        assert f"ipvsadm -D -t {VIP}:80" in error
        eventually(lambda: any(error in e["note"] for e in posted))
        assert agent.registry.get_sample_value("lvs_agent_foreign_services") == 1
        time.sleep(0.3)  # several resyncs
        assert agent.table() == before
        # The VirtualServer goes: the other tool's service stays.
        del api.objects["shop/web"]
        api.streams[client.VIRTUALSERVERS].put({"type": "DELETED", "object": obj})
        eventually(lambda: agent.registry.get_sample_value("lvs_agent_foreign_services") == 0)
        time.sleep(0.3)
        assert agent.table() == before
    assert OwnershipStore(tmp_path / "owned.json").load().services == set()


def test_a_freed_key_is_programmed_without_a_restored_warning(tmp_path):
    api = FakeApi([virtualserver([1])], echo=True)
    ipvs = FakeIPVS()
    ipvs.apply([AddService(VirtualService(KEY, scheduler="wlc"))])
    with running(api, ipvs, tmp_path, resync_seconds=0.1) as agent:
        eventually(lambda: agent.registry.get_sample_value("lvs_agent_foreign_services") == 1)
        with agent._kernel:  # the admin deletes the other tool's service
            ipvs.apply([DeleteService(KEY)])
        eventually(lambda: reals(agent) == {"10.0.0.1"})
        eventually(lambda: not api.objects["shop/web"]["status"]["directors"][NODE]["error"])
        assert not api.objects["shop/web"]["status"]["directors"][NODE].get("warning")


# --- the VIP pools: every agent admits by them before it programs anything ---------------------


class RecordingApi(FakeApi):
    """FakeApi recording the Events posted, whose VIPPool list waits for `pools_listed`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.events: list[dict[str, Any]] = []
        self.pools_listed = threading.Event()
        self.pools_listed.set()

    def create_event(self, event):
        self.events.append(event)
        return event

    def lister(self, path, *, query=()):
        inner = super().lister(path, query=query)
        if path != client.VIPPOOLS:
            return inner

        def gated():
            assert self.pools_listed.wait(30)
            return inner()
        return gated


def shop_pool(**fields):
    return {"apiVersion": "lvs.dev/v1alpha1", "kind": "VIPPool", "metadata": {"name": "shop"},
            "spec": {"addresses": [f"{VIP}/32"], "namespaces": ["shop"],
                     "directors": {"allowOverride": True}, **fields}}


def test_deny_by_default_then_a_pool_admits_and_its_deletion_withdraws(tmp_path, stale_kernel,
                                                                       caplog):
    # A forged (or stale) status: real servers published, Ready. No pool: nothing programmed.
    obj = virtualserver([1])
    obj["status"]["conditions"] = [{"type": "Ready", "status": "True", "reason": "Ready"}]
    api = RecordingApi([obj], pools=[])
    api.pools_listed.clear()
    with running(api, stale_kernel, tmp_path) as agent:
        time.sleep(0.3)
        assert agent.metrics.syncs == 0, "no sync before the pools are listed"
        assert set(stale_kernel.dump()) == {STALE}
        api.pools_listed.set()
        eventually(lambda: api.events)  # told after the sync has changed the kernel
        assert agent.table() == {}
        (event,) = api.events
        assert event["reason"] == "VIPNotAllowed" and event["type"] == "Warning"
        assert event["regarding"]["name"] == "web"
        assert "namespace shop may use no VIP pool" in event["note"]
        assert api.patches == [], "no status entry for what it does not program"
        # A pool that admits it: programmed.
        api.put_pool(shop_pool())
        eventually(lambda: reals(agent) == {"10.0.0.1"})
        # Another pool's change is no change for it, and nothing is told twice.
        api.put_pool({**shop_pool(), "metadata": {"name": "other"},
                      "spec": {"addresses": ["198.51.100.0/24"], "namespaces": ["x"]}})
        # An invalid change of its pool: an invalid pool admits nothing.
        api.put_pool(shop_pool(addresses=[f"{VIP}/24"]))
        eventually(lambda: agent.table() == {})
        # Another pool changes meanwhile: the gate is made again, the invalid pool is not
        # logged again (once per resourceVersion).
        api.put_pool({**shop_pool(), "metadata": {"name": "other"},
                      "spec": {"addresses": ["198.51.100.0/25"], "namespaces": ["x"]}})
        eventually(lambda: [str(r) for p in agent._gate.pools for r in p.addresses]
                   == ["198.51.100.0/25"])
        invalid = [r for r in caplog.records if "is invalid and admits nothing" in r.message]
        assert len(invalid) == 1 and "spec.addresses[0]" in invalid[0].message
        api.put_pool(shop_pool())
        eventually(lambda: reals(agent) == {"10.0.0.1"})
        api.delete_pool("shop")
        eventually(lambda: agent.table() == {} and len(api.events) == 3)
        time.sleep(0.2)
        assert len(api.events) == 3, [e["note"] for e in api.events]


def test_a_namespace_label_change_admits_again(tmp_path):
    api = FakeApi([virtualserver([1])])
    with running(api, FakeIPVS(), tmp_path) as agent:
        eventually(lambda: reals(agent) == {"10.0.0.1"})
        # The tests' open pool serves every namespace not labelled closed.
        api.label_namespace("shop", {scenarios.CLOSED_LABEL: "true"})
        eventually(lambda: agent.table() == {})
        api.label_namespace("shop", {"team": "web"})
        eventually(lambda: reals(agent) == {"10.0.0.1"})


def test_the_pools_directors_hold_the_vip_and_narrow_the_vrrp_table(tmp_path):
    api = FakeApi()
    settings = Settings(node=NODE, state_file=tmp_path / "owned.json", metrics_address="",
                        director=DirectorSettings(sysctls=None),
                        ha=HASettings(vrrp=VRRPSettings(directory=tmp_path / "keepalived",
                                                        address="10.1.0.1")))
    agent = loop.Agent(settings, api=api, ipvs=FakeIPVS(), vips=FakeVips(),
                       sysctls=lambda s: [], default_interface=lambda: "eth0")
    objects = {"shop/web": virtualserver([1]),
               "shop/out": {**virtualserver([2]), "metadata": {
                   "name": "out", "namespace": "shop", "resourceVersion": "1"},
                   "spec": {**virtualserver([2])["spec"], "vip": "198.51.100.9"}}}
    for obj in objects.values():
        obj["spec"]["directors"] = {}  # the pool's directors apply
    pool = shop_pool(directors={"nodeSelector": {"rack": "r1"}, "interface": "bond0"})
    gate = desired.Gate.of([pool], {"shop": {}})
    peers = {name: election.Peer(live=True, settled=True, labels=labels, address=address)
             for name, labels, address in (("node-b", {"rack": "r1"}, "10.1.0.2"),
                                           ("node-c", {"rack": "r2"}, "10.1.0.3"))}
    view = election.View(me=NODE, fenced=False, ready=True, fresh=True, settled=True,
                         peers=peers)
    plan = agent._vrrp_plan(objects, {"rack": "r1"}, gate, view, "eth0")
    # Only the admitted VIP, held by the directors of the pool's racks: node-c is no candidate.
    (instance,) = plan.instances
    assert [str(vip) for vip, _ in instance.vips] == [VIP]
    assert sorted(instance.ranking) == [NODE, "node-b"]
    assert plan.alone == {}
    wanted = desired.build(objects.values(), node=NODE, labels={"rack": "r1"}, gate=gate,
                           default_interface="eth0")
    assert set(wanted.programs) == {"shop/web"}
    assert wanted.programs["shop/web"].interface == "bond0"
    assert set(wanted.withdrawn) == {"shop/out"}
