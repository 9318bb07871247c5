"""The agent's periodic no-op resync for 1,000 VirtualServers x 4 real servers vs ipvsadm.

Runs inside the test VM (`make bench`, or
`tests/vm/run .venv/bin/pytest tests/bench/kernel/test_agent_resync.py -s -v`), in-process,
through the agent's own code: a `loop.Agent` with the real `KernelIPVS` and `KernelVipHolder`
in a fresh network namespace (its VIP interface `eth0` one end of a veth pair whose other end
is in the same namespace, so the gratuitous ARPs stay there), fed by an in-memory API server
(a list, a watch, status merge patches echoed back through the watch as the API server
would). Its reflectors list the 1,000 VirtualServers; a first sync programs the services and
VIPs and writes 1,000 status entries; once their echoes are back, every further sync is a
no-op: desired.build over the cache, the director's VIPs listed, the kernel dumped against
the desired table and planned, the status entries compared. Each such sync (what the agent
does every `resync_seconds`) is timed right next to `ipvsadm -S -n` of the same table in the
same namespace, alternated (a shared, emulated machine drifts over minutes); p50 and max of
each, and the ratio of the p50s. The parts of the sync are timed too, for where the time goes.

Every no-op sync must apply zero IPVS operations and write no status; the agent's table must
equal what `ipvsadm -S -n` shows of the workload. Figures are printed and written to
$LVS_VM_OUT/bench_agent_resync.json; nothing is asserted about them.
"""

from __future__ import annotations

import copy
import json
import os
import queue
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest

import scenarios
from kernel.netlab import Lab, Netns
from lvs_operator import syncer
from lvs_operator.agent import desired, loop
from lvs_operator.agent.settings import DirectorSettings, HASettings, Settings, SyncSettings
from lvs_operator.api import API_VERSION
from lvs_operator.cli import AGENT_VERIFY_SECONDS
from lvs_operator.ipvs.kernel import KernelIPVS
from lvs_operator.kube import client, events, watch
from lvs_operator.network.holder import KernelVipHolder
from lvs_operator.plan import Operation, plan

T = TypeVar("T")

VIRTUAL_SERVERS = int(os.environ.get("LVS_BENCH_VIRTUAL_SERVERS", "1000"))
REALS = 4
RESYNCS = int(os.environ.get("LVS_BENCH_RESYNCS", "10"))
NODE = "director-bench"
NAMESPACE = "bench"
INTERFACE = "eth0"
SCHEDULERS = ["rr", "wrr", "wlc", "sh"]

pytestmark = pytest.mark.kernel



# --- the workload ------------------------------------------------------------------------------


def _vip(i: int) -> str:
    return f"198.18.{i // 250}.{i % 250 + 1}"  # RFC 2544: set aside for benchmarks


def _real(i: int, j: int) -> str:
    n = i * REALS + j
    return f"198.19.{n // 250 % 250}.{n % 250 + 1}"


def virtual_server(i: int) -> dict[str, Any]:
    """VirtualServer i as the API server returns it once the controller has resolved it."""
    return {
        "apiVersion": API_VERSION, "kind": "VirtualServer",
        "metadata": {"name": f"vs-{i:04d}", "namespace": NAMESPACE, "generation": 1,
                     "uid": f"uid-{i}", "resourceVersion": str(i + 1),
                     "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"vip": _vip(i), "ports": [{"port": 80, "protocol": "TCP"}],
                 "forwarding": "DirectRouting", "scheduler": {"name": SCHEDULERS[i % 4]},
                 "backend": {"service": {"name": f"svc-{i:04d}", "port": "http"}},
                 "directors": {"interface": INTERFACE}},
        "status": {
            "realServers": [{"ip": _real(i, j), "port": 80, "weight": j + 1, "ready": True}
                            for j in range(REALS)],
            "conditions": [{"type": "Ready", "status": "True", "reason": "Programmed",
                            "message": ""}]},
    }


def ipvsadm_rules() -> list[str]:
    """The same table as `ipvsadm -S -n` prints it (sorted)."""
    rules = []
    for i in range(VIRTUAL_SERVERS):
        rules.append(f"-A -t {_vip(i)}:80 -s {SCHEDULERS[i % 4]}")
        rules += [f"-a -t {_vip(i)}:80 -r {_real(i, j)}:80 -g -w {j + 1}" for j in range(REALS)]
    return sorted(rules)


# --- an API server in memory -------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class _Stream:
    def __init__(self, events: queue.Queue[watch.Object | None]) -> None:
        self.events = events
        self.closed = False

    def __iter__(self) -> Iterator[watch.Object]:
        while not self.closed:
            try:
                event = self.events.get(timeout=0.05)
            except queue.Empty:
                continue
            if event is None:
                return
            yield event

    def close(self) -> None:
        self.closed = True


class MemoryApi:
    """VirtualServers, one Node, the tests' open VIP pool and the VirtualServers' namespace;
    status patches are merged and echoed through the watch."""

    def __init__(self, objects: Sequence[dict[str, Any]]) -> None:
        self.objects = {watch.object_key(o): o for o in objects}
        self.node = {"metadata": {"name": NODE, "labels": {"lvs.dev/director": "true"},
                                  "resourceVersion": "1"}}
        self.version = len(objects) + 1
        self.streams: dict[str, queue.Queue[watch.Object | None]] = {
            path: queue.Queue() for path in (client.VIRTUALSERVERS, client.NODES,
                                             client.VIPPOOLS, client.NAMESPACES)}
        self.patches = 0
        self.events = 0
        self._lock = threading.Lock()

    def lister(self, path: str, *, query: Sequence[tuple[str, str]] = ()) -> watch.Lister:
        def list_() -> tuple[list[watch.Object], str]:
            with self._lock:
                if path == client.VIRTUALSERVERS:
                    return [copy.deepcopy(o) for o in self.objects.values()], str(self.version)
                if path == client.VIPPOOLS:
                    return [scenarios.open_pool()], str(self.version)
                if path == client.NAMESPACES:
                    return [{"metadata": {"name": NAMESPACE}}], str(self.version)
                return [copy.deepcopy(self.node)], str(self.version)
        return list_

    def watcher(self, path: str, *, query: Sequence[tuple[str, str]] = (),
                timeout_seconds: int = 300, read_timeout: float = 120.0) -> watch.Watcher:
        return lambda version: _Stream(self.streams[path])

    def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> Any:
        with self._lock:
            key = watch.Key(namespace, name)
            obj = merge_patch(self.objects[key], {"status": patch["status"]})
            self.version += 1
            obj["metadata"] = {**obj["metadata"], "resourceVersion": str(self.version)}
            self.objects[key] = obj
            self.patches += 1
        self.streams[client.VIRTUALSERVERS].put({"type": "MODIFIED", "object": copy.deepcopy(obj)})
        return obj

    def create_event(self, event: Mapping[str, Any]) -> Any:
        self.events += 1
        return event

    def request(self, method: str, path: str, *, query: Sequence[tuple[str, str]] = (),
                body: object = None, content_type: str = "application/json",
                timeout: tuple[float, float] = client.REQUEST_TIMEOUT) -> Any:
        if method == "POST" and path.startswith(events.PATH):
            assert isinstance(body, Mapping)
            return self.create_event(body)
        raise AssertionError(f"unexpected request {method} {path}: one director, no Lease")

    def stop(self) -> None:
        for stream in self.streams.values():
            stream.put(None)


class CountingIPVS(KernelIPVS):
    """KernelIPVS counting the operations applied."""

    operations = 0

    def apply(self, operations: Iterable[Operation]) -> list[Operation]:
        done = super().apply(operations)
        self.operations += len(done)
        return done


# --- measuring ---------------------------------------------------------------------------------


def _timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _ipvsadm_save(ns: Netns) -> tuple[float, list[str]]:
    start = time.perf_counter()
    done = subprocess.run(["ip", "netns", "exec", ns.name, "ipvsadm", "-S", "-n"], check=True,
                          text=True, capture_output=True)
    return time.perf_counter() - start, sorted(done.stdout.splitlines())


def _wait(what: str, check: Callable[[], bool], timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as the_lab:
        yield the_lab


def test_agent_noop_resync(lab: Lab, tmp_path: Path) -> None:
    subprocess.run(["modprobe", "ip_vs"], check=True)
    ns = lab.netns("resync")
    ns.ip_batch([["link", "add", INTERFACE, "type", "veth", "peer", "name", "peer0"],
                 ["link", "set", INTERFACE, "up"], ["link", "set", "peer0", "up"]])
    objects = [virtual_server(i) for i in range(VIRTUAL_SERVERS)]
    api = MemoryApi(objects)
    settings = Settings(node=NODE, state_file=tmp_path / "owned.json", metrics_address="",
                        sync=SyncSettings(resync_seconds=3600.0),
                        director=DirectorSettings(sysctls=None),
                        ha=HASettings(enabled=False))  # one director: no election
    # Everything the agent opens (netlink, packet sockets) is opened in this namespace.
    # As `lvs-operator agent` makes it: resyncs within AGENT_VERIFY_SECONDS of a thorough
    # dump that found the table as desired are confirmed from /proc/net/ip_vs.
    ipvs = CountingIPVS(verify_seconds=AGENT_VERIFY_SECONDS)
    ns.call(ipvs.connect)
    holder = KernelVipHolder(rounds=1)
    agent = loop.Agent(settings, api=api, ipvs=ipvs, vips=holder, sysctls=lambda s: [],
                       default_interface=lambda: None)
    reflectors = (agent.virtualservers, agent.node, agent.pools, agent.namespaces)
    threads = [threading.Thread(target=r.run, name=r.name, daemon=True) for r in reflectors]
    figures: dict[str, list[float]] = {k: [] for k in (
        "agent_resync", "ipvsadm_save", "build", "kernel_sync", "list_vips", "dump_plain")}
    try:
        for thread in threads:
            thread.start()
        _wait("the agent's first lists", lambda: all(r.synced.is_set() for r in reflectors))

        # The first sync programs everything and reports it.
        first, _ = _timed(lambda: ns.call(agent._sync, full=True))
        programmed = ipvs.operations
        assert programmed == VIRTUAL_SERVERS * (1 + REALS), programmed
        assert api.patches == VIRTUAL_SERVERS, api.patches
        assert len(ns.call(holder.list_vips, INTERFACE)) == VIRTUAL_SERVERS

        def echoed() -> bool:
            snapshot = agent.virtualservers.snapshot()
            return all(((o.get("status") or {}).get("directors") or {}).get(NODE)
                       for o in snapshot.values())
        _wait("the status echoes in the agent's cache", echoed)
        seconds, table = _ipvsadm_save(ns)
        services = [line for line in table if line.startswith("-A ")]
        assert (len(services), len(table)) == (VIRTUAL_SERVERS, VIRTUAL_SERVERS * (1 + REALS))
        if table != ipvsadm_rules():
            print("note: `ipvsadm -S -n` differs from the expected rules, e.g.",
                  sorted(set(table) - set(ipvsadm_rules()))[:3])

        # No-op resyncs, each next to an `ipvsadm -S -n`, then the parts, for where it goes.
        gate = agent._admission()  # the agent's: its verdicts are in its cache
        wanted = desired.build(agent.virtualservers.snapshot().values(), node=NODE,
                               labels=desired.labels_of(api.node), gate=gate,
                               default_interface=None)
        for _ in range(RESYNCS):
            seconds, _ = _timed(lambda: ns.call(agent._sync, full=True))
            figures["agent_resync"].append(seconds)
            figures["ipvsadm_save"].append(_ipvsadm_save(ns)[0])
            # With the agent's own cache, as its syncs build (unchanged objects: not parsed).
            figures["build"].append(_timed(partial(
                desired.build, agent.virtualservers.snapshot().values(), node=NODE,
                labels=desired.labels_of(api.node), gate=gate, default_interface=None,
                cache=agent._parsed))[0])
            seconds, result = _timed(lambda: syncer.sync(ipvs, wanted.table,
                                                         store=agent._store, drain=True))
            assert result.operations == []
            figures["kernel_sync"].append(seconds)
            figures["list_vips"].append(_timed(lambda: ns.call(holder.list_vips,
                                                               INTERFACE))[0])
            figures["dump_plain"].append(_timed(ipvs.dump)[0])
        assert ipvs.operations == programmed, "a no-op resync applied IPVS operations"
        assert api.patches == VIRTUAL_SERVERS, "a no-op resync wrote status"
        assert plan(wanted.table, ipvs.dump(), owned=set(wanted.table)) == []
        assert _ipvsadm_save(ns)[1] == table
    finally:
        agent.stop()
        for reflector in reflectors:
            reflector.stop()
        api.stop()
        for thread in threads:
            thread.join(10)
        ipvs.close()

    def stats(values: list[float]) -> dict[str, float]:
        return {"p50_s": statistics.median(values), "max_s": max(values),
                "min_s": min(values)}

    summary = {name: stats(values) for name, values in figures.items()}
    ratio = summary["agent_resync"]["p50_s"] / summary["ipvsadm_save"]["p50_s"]
    labels = {
        "agent_resync": "agent no-op resync (Agent._sync, full)",
        "ipvsadm_save": "ipvsadm -S -n (a process)",
        "build": "  part: desired.build over the cache (parses, pool verdicts warm)",
        "kernel_sync": "  part: syncer.sync (dump vs desired + plan)",
        "list_vips": "  part: list the VIPs held on eth0",
        "dump_plain": "  (KernelIPVS.dump, no expect: for reference)",
    }
    print(f"\nno-op resync, {VIRTUAL_SERVERS} VirtualServers x {REALS} real servers, "
          f"{VIRTUAL_SERVERS} VIPs held; {RESYNCS} rounds (software-emulated VM, seconds):")
    print(f"  first sync (programs {programmed} operations, {VIRTUAL_SERVERS} VIPs, "
          f"{VIRTUAL_SERVERS} status writes): {first:.2f}")
    for name, label in labels.items():
        s = summary[name]
        print(f"  {label:46} p50 {s['p50_s']:6.3f}   max {s['max_s']:6.3f}")
    print(f"  agent no-op resync / ipvsadm -S -n (p50s): {ratio:.2f}")
    results = {"virtualServers": VIRTUAL_SERVERS, "reals": REALS, "rounds": RESYNCS,
               "first_sync_s": first, "figures": figures, "summary": summary,
               "ratio_resync_p50_over_ipvsadm_save_p50": ratio}
    out_dir = os.environ.get("LVS_VM_OUT")
    if out_dir:
        Path(out_dir, "bench_agent_resync.json").write_text(json.dumps(results, indent=2))
