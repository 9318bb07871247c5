"""Two ways for the controller to receive Service and EndpointSlice changes, side by side
against one real API server (printed, not asserted):

- reflector: `lvs_operator.kube.watch.Reflector`, one thread per kind, caching the compact
  forms (`compact_service`, `compact_slice`);
- kopf: `@kopf.on.event` handlers for both kinds in `kopf.operator(standalone=True,
  clusterwide=True)`, configured as the controller configures kopf (`handlers.
  operator_settings()`: no Events posted; on.event handlers write nothing on objects), with
  kopf's defaults and with the settings that could help (`KOPF_VARIANTS`).

Each observer is a process of its own (this file run as a script), so that its memory and
CPU are its own; its handler stores the compact form by key, as the controller's would, and
reports on stdout (JSON lines, times from CLOCK_MONOTONIC, which all processes share).

With `SERVICES` Services each with one EndpointSlice of 20 ready endpoints in a namespace:
1. initial list: each observer is started alone, in turn, with the previous one quiet; the
   time from its start (imports done) until every Service and EndpointSlice of the namespace
   reached its handler, and the CPU seconds its process used meanwhile (on a shared machine
   the CPU figure is the steadier one);
2. flip -> handler: with all of them running, endpoint 0 of one slice flips ready / not
   ready `FLIPS` times (one write, every observer timed on it), p50 / p99 / max;
3. memory: resident memory after the imports and peak (VmHWM) at the end, per process.

`LVS_BENCH_SERVICES` and `LVS_BENCH_FLIPS` scale it down for a quick try.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import resource
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import pytest
from controller_support import (
    Kube,
    endpoint,
    endpoint_slice,
    service,
    service_path,
    slice_path,
    wait_for,
)
from controlplane import ControlPlane

SERVICES = int(os.environ.get("LVS_BENCH_SERVICES", "1000"))
ENDPOINTS = 20
FLIPS = int(os.environ.get("LVS_BENCH_FLIPS", "100"))
FLIP_SPACING = 0.05  # seconds between one flip seen by every observer and the next write
CREATORS = 8  # client threads creating the objects
SYNC_TIMEOUT = 300.0  # seconds for one observer's initial list
FLIP_TIMEOUT = 30.0  # seconds for one flip to reach one observer
KOPF_IDLE = 5.0  # kopf's default queueing.idle_timeout: its workers are gone after this

# Each kind: (kopf's group, version, plural; the list+watch path; the compact form's name).
KINDS = {
    "services": (("", "v1", "services"), "/api/v1/services", "compact_service"),
    "endpointslices": (("discovery.k8s.io", "v1", "endpointslices"),
                       "/apis/discovery.k8s.io/v1/endpointslices", "compact_slice"),
}

# kopf's settings beside the controller's own (`handlers.operator_settings`), by observer:
# "section.field" of kopf.OperatorSettings, or "logging.<logger>" for a logger's level.
_TUNED: dict[str, Any] = {
    # The controller logs at INFO, and kopf logs one line per handled event ("Handler 'x'
    # succeeded.").
    "logging.kopf.objects": "WARNING",
    # No watch on CRDs and Namespaces (the controller needs neither).
    "scanning.disabled": True,
    # Per-object workers exit soon instead of idling 5 s after their last event (0 livelocks
    # kopf 1.45: the worker times out before its first read of its queue). A worker_limit only
    # slows the list: each worker holds its slot for idle_timeout after its last event.
    "queueing.idle_timeout": 0.5,
}
KOPF_VARIANTS: dict[str, dict[str, Any]] = {
    "kopf": {},
    "kopf tuned": _TUNED,
    # The initial list as a watch (sendInitialEvents): objects arrive one by one instead of as
    # one parsed list.
    "kopf stream": {**_TUNED, "watching.initial_streaming": True},
}
OBSERVERS = ("reflector", *KOPF_VARIANTS)

pytestmark = pytest.mark.cluster


# --- the observers (child processes) ---------------------------------------------------------

class Report:
    """What an observer saw, written as JSON lines on stdout (one writer at a time)."""

    def __init__(self, *, namespace: str, expected: int, flip: str) -> None:
        self.namespace = namespace
        self.expected = expected
        self.flip = flip
        self.seen: dict[tuple[str, str], object] = {}  # (kind, name) -> compact form
        self.synced = False
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        with self._lock:
            sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
            sys.stdout.flush()

    def start(self) -> None:
        self.write("start", cpu=_cpu_seconds(), rss_mib=_memory_mib("VmRSS"))

    def deliver(self, kind: str, namespace: str, name: str, compact: Mapping[str, Any]) -> None:
        """Called by a handler with each object it receives (from any thread)."""
        if namespace != self.namespace:
            return
        with self._lock:
            first = not self.seen
            self.seen[kind, name] = compact
            complete = not self.synced and len(self.seen) == self.expected
            self.synced = self.synced or complete
        if first:
            self.write("first")
        if complete:
            self.write("synced", cpu=_cpu_seconds())
        if kind == "endpointslices" and name == self.flip:
            self.write("flip", ready=compact["endpoints"][0]["conditions"].get("ready"))

    def end(self) -> None:
        self.write("end", hwm_mib=_memory_mib("VmHWM"), cpu=_cpu_seconds())


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _memory_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"no {field} in /proc/self/status")


def _until_stdin_closes(then: Callable[[], None]) -> threading.Thread:
    """Start a thread that calls `then` once the benchmark closes our stdin."""
    def wait() -> None:
        sys.stdin.read()
        then()
    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


def _compacts() -> dict[str, Callable[[Mapping[str, Any]], Mapping[str, Any]]]:
    from lvs_operator.controller import objects

    return {kind: getattr(objects, compact) for kind, (_, _, compact) in KINDS.items()}


def observe_with_reflector(kubeconfig: str, report: Report) -> None:
    from lvs_operator.kube import client, watch

    compacts = _compacts()
    report.start()
    api = client.Client.connect(kubeconfig)
    reflectors = []
    for kind, (_, path, _) in KINDS.items():
        def changed(key: watch.Key, old: object, new: Any, kind: str = kind) -> None:
            if new is not None:
                report.deliver(kind, key.namespace, key.name, new)
        reflectors.append(watch.Reflector(kind, lister=api.lister(path),
                                          watcher=api.watcher(path),
                                          transform=compacts[kind], on_change=changed))
    threads = [threading.Thread(target=r.run, name=r.name, daemon=True) for r in reflectors]
    for thread in threads:
        thread.start()
    _until_stdin_closes(report.end).join()
    for r in reflectors:
        r.stop()
    for thread in threads:
        thread.join(timeout=5)
    api.close()


def observe_with_kopf(kubeconfig: str, report: Report, *, tuning: Mapping[str, Any]) -> None:
    import kopf

    from lvs_operator.controller import credentials, handlers
    from lvs_operator.kube import client

    compacts = _compacts()
    registry = kopf.OperatorRegistry()
    configuration = client.Client.connect(kubeconfig).configuration

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return credentials.connection_info(configuration)

    for kind, ((group, version, plural), _, _) in KINDS.items():
        @kopf.on.event(group, version, plural, id=kind, param=kind, registry=registry)
        async def changed(*, event: kopf.RawEvent, param: Any = None, **_: Any) -> None:
            obj = event["object"]
            if event.get("type") != "DELETED":
                meta = obj["metadata"]
                report.deliver(param, meta.get("namespace", ""), meta["name"],
                               compacts[param](obj))

    settings = handlers.operator_settings()
    for path, value in tuning.items():
        concern, _, field = path.partition(".")
        if concern == "logging":
            logging.getLogger(field).setLevel(value)
        else:
            setattr(getattr(settings, concern), field, value)
    stop = threading.Event()

    def end() -> None:
        report.end()
        stop.set()

    report.start()
    _until_stdin_closes(end)
    asyncio.run(kopf.operator(registry=registry, settings=settings, standalone=True,
                              clusterwide=True, stop_flag=stop))


def main(argv: list[str]) -> None:
    """`test_watch_paths.py OBSERVER KUBECONFIG NAMESPACE EXPECTED FLIP`: observe until stdin
    closes (what the benchmark runs in each child process)."""
    observer, kubeconfig, namespace, expected, flip = argv
    # As the controller does (`lvs-operator controller`, --log-level info); stderr is a file.
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = Report(namespace=namespace, expected=int(expected), flip=flip)
    if observer == "reflector":
        observe_with_reflector(kubeconfig, report)
    else:
        observe_with_kopf(kubeconfig, report, tuning=KOPF_VARIANTS[observer])


# --- the benchmark ---------------------------------------------------------------------------

class Observer:
    """One observer process and the lines it reports, in a queue."""

    def __init__(self, name: str, cluster: ControlPlane, *, namespace: str, expected: int,
                 flip: str, log: Path) -> None:
        self.name = name
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).resolve().parents[2] / "cluster"),
             os.environ.get("PYTHONPATH", "")]))
        self.spawned = time.monotonic()
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, __file__, name, str(cluster.kubeconfig), namespace,
             str(expected), flip],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env)
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stdout: IO[bytes]) -> None:
        for line in stdout:
            self.lines.put(json.loads(line))

    def next(self, event: str, *, timeout: float, after: float = 0.0,
             **match: Any) -> dict[str, Any]:
        """Return the next reported `event` at or after `after` with the fields `match`
        (skipping others); AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{self.name}: no {event} {match} within {timeout:.0f} s "
                                     f"(exit code {self.process.poll()})") from None
            if line["event"] == event and line["t"] >= after \
                    and all(line.get(k) == v for k, v in match.items()):
                return line

    def stop(self) -> dict[str, Any] | None:
        """Close its stdin; return its final report (None if it had ended already)."""
        end = None
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                end = self.next("end", timeout=10)
            finally:
                try:
                    self.process.wait(15)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        self._log.close()
        return end


def _address(i: int, j: int) -> str:
    return f"10.{100 + i // 250}.{i % 250}.{j + 1}"


def _endpoints(i: int, *, not_ready: int | None = None) -> list[dict[str, Any]]:
    return [endpoint(_address(i, j), ready=j != not_ready, serving=j != not_ready)
            for j in range(ENDPOINTS)]


def _create(kube: Kube, ns: str, i: int) -> None:
    name = f"svc-{i:04d}"
    kube.create(service_path(ns), service(ns, name))
    kube.create(slice_path(ns), endpoint_slice(ns, name, service=name, endpoints=_endpoints(i)))


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _none_terminating(kube: Kube) -> bool:
    namespaces = kube.get("/api/v1/namespaces")["items"]
    return not any(ns.get("status", {}).get("phase") == "Terminating" for ns in namespaces)


def test_watch_paths(cluster: ControlPlane, tmp_path: Path):
    kube = Kube(cluster)
    # The observers list the whole cluster: an earlier benchmark's namespace still being
    # deleted (thousands of objects) would weigh on their lists.
    wait_for("the namespaces being deleted to be gone", lambda: _none_terminating(kube),
             timeout=SYNC_TIMEOUT, interval=1.0)
    ns = f"bench-{secrets.token_hex(3)}"
    flip = "svc-0000"
    cluster.kubectl("create", "namespace", ns)
    observers: dict[str, Observer] = {}
    figures: dict[str, dict[str, float]] = {name: {} for name in OBSERVERS}
    latencies: dict[str, list[float]] = {name: [] for name in OBSERVERS}
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(CREATORS) as pool:
            list(pool.map(lambda i: _create(kube, ns, i), range(SERVICES)))
        create_s = time.monotonic() - started
        for _, path, _ in KINDS.values():
            kube.get(path)  # the API server's first list of each kind is no observer's

        # 1. Initial list, one observer at a time (no competition for the two cores).
        for name in OBSERVERS:
            observer = Observer(name, cluster, namespace=ns, expected=2 * SERVICES, flip=flip,
                                log=tmp_path / f"{name.replace(' ', '-')}.log")
            observers[name] = observer
            start = observer.next("start", timeout=60)
            first = observer.next("first", timeout=SYNC_TIMEOUT)
            synced = observer.next("synced", timeout=SYNC_TIMEOUT)
            figures[name].update(
                list_s=synced["t"] - start["t"], first_s=first["t"] - start["t"],
                list_cpu_s=synced["cpu"] - start["cpu"],
                spawn_to_list_s=synced["t"] - observer.spawned, imports_rss_mib=start["rss_mib"])
            # Quiet before the next one starts (and before the flips): kopf's per-object
            # workers have exited, its log lines are written.
            time.sleep(KOPF_IDLE + 1)

        # 2. Flip -> handler, every observer on the same writes.
        for n in range(FLIPS):
            ready = n % 2 == 1
            before = time.monotonic()
            kube.merge(slice_path(ns, flip), {"endpoints": _endpoints(0, not_ready=None if ready
                                                                      else 0)})
            for name, observer in observers.items():
                seen = observer.next("flip", timeout=FLIP_TIMEOUT, after=before, ready=ready)
                latencies[name].append(seen["t"] - before)
            time.sleep(FLIP_SPACING)
    finally:
        for name, observer in observers.items():
            end = observer.stop()
            if end is not None:
                figures[name]["peak_rss_mib"] = end["hwm_mib"]
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)

    for name in OBSERVERS:
        ms = [s * 1000 for s in latencies[name]]
        figures[name].update(flip_p50_ms=statistics.median(ms), flip_p99_ms=_percentile(ms, 0.99),
                             flip_max_ms=max(ms))
        figures[name]["added_rss_mib"] = (figures[name]["peak_rss_mib"]
                                          - figures[name]["imports_rss_mib"])
    _print_table(figures, create_s)
    assert all(len(latencies[name]) == FLIPS for name in OBSERVERS)


ROWS = (
    ("initial list -> all delivered", "list_s", "s", 2),
    ("  of which until the first one", "first_s", "s", 2),
    ("  from process spawn (imports incl.)", "spawn_to_list_s", "s", 2),
    ("CPU during the initial list", "list_cpu_s", "s", 2),
    ("flip -> handler p50", "flip_p50_ms", "ms", 1),
    ("flip -> handler p99", "flip_p99_ms", "ms", 1),
    ("flip -> handler max", "flip_max_ms", "ms", 1),
    ("RSS after imports", "imports_rss_mib", "MiB", 0),
    ("peak RSS (VmHWM)", "peak_rss_mib", "MiB", 0),
    ("peak RSS added by the watch", "added_rss_mib", "MiB", 0),
)


def _print_table(figures: dict[str, dict[str, float]], create_s: float) -> None:
    base = figures["reflector"]
    kopfs = list(KOPF_VARIANTS)
    print(f"\nwatch paths: {SERVICES} Services + {SERVICES} EndpointSlices x {ENDPOINTS} "
          f"endpoints (created in {create_s:.1f} s), {FLIPS} flips {FLIP_SPACING * 1000:.0f} ms "
          "apart, one API server")
    print(f"  {'':40}" + "".join(f"{name:>12}" for name in OBSERVERS)
          + "".join(f"{name + '/refl':>17}" for name in kopfs))
    for label, key, unit, digits in ROWS:
        values = "".join(f"{figures[name][key]:>12.{digits}f}" for name in OBSERVERS)
        ratios = "".join(f"{figures[name][key] / base[key] if base[key] else float('nan'):>16.1f}x"
                         for name in kopfs)
        print(f"  {label + ' (' + unit + ')':40}{values}{ratios}")
    print("  kopf: the controller's settings (handlers.operator_settings(): no Events posted), "
          "logging at INFO, otherwise kopf's defaults")
    for name in kopfs[1:]:
        print(f"  {name}: " + ", ".join(f"{k} = {v}" for k, v in KOPF_VARIANTS[name].items()))


if __name__ == "__main__":
    main(sys.argv[1:])
