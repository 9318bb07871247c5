"""agent.loop: the sync loop's timing rules against an in-memory API and the fake kernel:
no sync before the lists, bursts coalesced, drift repaired by the periodic resync, nothing
done while the Node is missing."""

from __future__ import annotations

import contextlib
import copy
import queue
import threading
import time
from ipaddress import ip_address
from typing import Any

import pytest

from lvs_operator.agent import kube, loop
from lvs_operator.agent.settings import DirectorSettings, Settings, SyncSettings
from lvs_operator.ipvs.fake import FakeIPVS
from lvs_operator.model import Protocol, ServiceKey, VirtualService
from lvs_operator.ownership import OwnershipStore
from lvs_operator.plan import AddService, DeleteService

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


class Stream:
    def __init__(self, events: queue.Queue[dict[str, Any] | None]):
        self.events = events
        self.closed = False

    def __iter__(self):
        while not self.closed:
            try:
                event = self.events.get(timeout=0.05)
            except queue.Empty:
                continue
            if event is None:
                return
            yield event

    def close(self):
        self.closed = True


class FakeApi:
    """An API server in memory: one VirtualServer collection and one Node."""

    def __init__(self, objects=(), *, node=True):
        self.objects = {f"{o['metadata']['namespace']}/{o['metadata']['name']}": o
                        for o in objects}
        self.node = {"metadata": {"name": NODE, "labels": {}}} if node else None
        self.gate = threading.Event()
        self.gate.set()
        self.streams: dict[str, queue.Queue[dict[str, Any] | None]] = {
            kube.VIRTUALSERVERS: queue.Queue(), kube.NODES: queue.Queue()}
        self.patches: list[Any] = []
        self.version = 10

    def lister(self, path, *, query=()):
        def list_():
            if path == kube.VIRTUALSERVERS:
                assert self.gate.wait(30)
                return [copy.deepcopy(o) for o in self.objects.values()], str(self.version)
            return ([self.node] if self.node else []), str(self.version)
        return list_

    def watcher(self, path, *, query=(), timeout_seconds=300, read_timeout=120.0):
        return lambda version: Stream(self.streams[path])

    def patch_status(self, namespace, name, patch):
        self.patches.append(patch)
        return {}

    def create_event(self, event):
        return event

    def modify(self, obj):
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.streams[kube.VIRTUALSERVERS].put({"type": "MODIFIED", "object": obj})


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
def running(api, ipvs, tmp_path, **sync):
    settings = Settings(node=NODE, state_file=tmp_path / "owned.json", metrics_address="",
                        sync=SyncSettings(**{"resync_seconds": 30.0, "min_interval_seconds":
                                             0.0, "retry_seconds": 0.1, **sync}),
                        director=DirectorSettings(sysctls=None))
    agent = loop.Agent(settings, api=api, ipvs=ipvs, vips=FakeVips(), sysctls=lambda s: [],
                       default_interface=lambda: None)
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
        api.streams[kube.NODES].put({"type": "ADDED", "object": api.node})
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


def test_periodic_resync_repairs_drift(tmp_path):
    api = FakeApi([virtualserver([1])])
    ipvs = FakeIPVS()
    with running(api, ipvs, tmp_path, resync_seconds=0.2) as agent:
        eventually(lambda: reals(agent) == {"10.0.0.1"})
        with agent._kernel:  # somebody runs `ipvsadm -C` behind the agent's back
            ipvs.apply([DeleteService(KEY)])
        eventually(lambda: reals(agent) == {"10.0.0.1"})
        assert api.patches, "the first sync reported"
        patches = len(api.patches)
        time.sleep(0.5)
        assert len(api.patches) == patches, "resyncs write no status when nothing changed"
