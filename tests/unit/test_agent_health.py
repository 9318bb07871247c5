"""agent.health: the rise/fall machine, the TCP and HTTP probes against real local sockets,
and the monitor (targets come and go, a flip wakes the loop)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import random
import socket
import threading
import time
from collections.abc import Iterator
from ipaddress import ip_address
from typing import Any, ClassVar

import pytest

from lvs_operator.agent import health
from lvs_operator.api import spec

LOCAL = ip_address("127.0.0.1")


def check(**fields: Any) -> spec.HealthCheck:
    """A HealthCheck; tests use fractions of a second where the spec has whole seconds."""
    return spec.HealthCheck(**{"kind": "tcp", "interval_seconds": 0.02,
                               "timeout_seconds": 0.5, **fields})


def eventually(condition, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {condition}")
        time.sleep(0.005)


# --- the rise/fall machine -------------------------------------------------------------------

@pytest.mark.parametrize(("rise", "fall", "results", "expected"), [
    pytest.param(1, 3, "", [], id="new-target-is-healthy"),
    pytest.param(1, 3, "xx", [True, True], id="below-fall-stays-healthy"),
    pytest.param(1, 3, "xxx", [True, True, False], id="fall-consecutive-failures"),
    pytest.param(1, 3, "xx.xx.", [True] * 6, id="a-success-resets-the-failures"),
    pytest.param(1, 1, "x.", [False, True], id="fall-1-rise-1"),
    pytest.param(2, 2, "xx..", [True, False, False, True], id="rise-2"),
    pytest.param(3, 1, "x..x...", [False, False, False, False, False, False, True],
                 id="a-failure-resets-the-successes"),
    pytest.param(2, 1, "x.xx..x", [False, False, False, False, False, True, False],
                 id="flapping"),
])
def test_rise_and_fall(rise, fall, results, expected):
    state = health.State()
    assert state.healthy
    seen = []
    for result in results:
        state = state.after(result == ".", rise=rise, fall=fall)
        seen.append(state.healthy)
    assert seen == expected


def test_state_counts_runs():
    state = health.State().after(False, rise=1, fall=5).after(False, rise=1, fall=5)
    assert (state.healthy, state.failures, state.successes) == (True, 2, 0)
    state = state.after(True, rise=1, fall=5)
    assert (state.healthy, state.failures, state.successes) == (True, 0, 1)


# --- probes against real sockets -------------------------------------------------------------

@contextlib.contextmanager
def listening(host: str = "127.0.0.1", *, backlog: int = 16) -> Iterator[socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as server:
        server.bind((host, 0))
        server.listen(backlog)
        yield server


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hosts: ClassVar[list[str]] = []

    def do_GET(self):
        Handler.hosts.append(self.headers.get("Host", ""))
        code = int(self.path.strip("/") or 200)
        body = b"hello\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def web() -> Iterator[int]:
    """An HTTP server on 127.0.0.1 answering GET /<code> with that code; its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def run(coroutine):
    return asyncio.run(coroutine)


def test_tcp_open_port():
    with listening() as server:
        port = server.getsockname()[1]
        assert run(health.probe_tcp(LOCAL, port, timeout=1)) == health.Result(True)


def test_tcp_closed_port():
    result = run(health.probe_tcp(LOCAL, closed_port(), timeout=1))
    assert not result.ok
    assert "TCP connect" in result.detail and "refused" in result.detail.lower()


class Web6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True


def test_ipv6():
    try:
        server = Web6(("::1", 0), Handler)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        port = server.server_address[1]
        Handler.hosts.clear()
        assert run(health.probe_tcp(ip_address("::1"), port, timeout=1)).ok
        assert run(health.probe_http(ip_address("::1"), port, path="/200", timeout=1)).ok
        assert Handler.hosts == [f"[::1]:{port}"]
        result = run(health.probe_http(ip_address("::1"), port, path="/503", timeout=1))
        assert result == health.Result(False, "HTTP GET /503: status 503")
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("path", "codes", "ok", "detail"), [
    ("/200", (200,), True, ""),
    ("/204", (200, 204), True, ""),
    ("/500", (200,), False, "HTTP GET /500: status 500"),
    ("/301", (200,), False, "HTTP GET /301: status 301"),
    ("/500", (500,), True, ""),
])
def test_http_status_codes(web, path, codes, ok, detail):
    result = run(health.probe_http(LOCAL, web, path=path, status_codes=codes, timeout=1))
    assert result == health.Result(ok, detail)


def test_http_host_header_is_the_address(web):
    Handler.hosts.clear()
    assert run(health.probe_http(LOCAL, web, path="/200", timeout=1)).ok
    assert Handler.hosts == [f"127.0.0.1:{web}"]


def test_http_closed_port():
    result = run(health.probe_http(LOCAL, closed_port(), timeout=1))
    assert not result.ok and result.detail.startswith("HTTP: ")


def test_http_server_that_never_answers_times_out():
    with listening() as server:  # accepted by the kernel, never read nor answered
        started = time.monotonic()
        result = run(health.probe_http(LOCAL, server.getsockname()[1], timeout=0.2))
        elapsed = time.monotonic() - started
    assert result == health.Result(False, "no HTTP answer within 0.2 s")
    assert 0.15 < elapsed < 1.0


def test_http_not_http():
    with listening() as server:
        def answer():
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"SSH-2.0-OpenSSH\r\n")
        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        result = run(health.probe_http(LOCAL, server.getsockname()[1], timeout=1))
        thread.join(1)
    assert not result.ok and "not an HTTP status line" in result.detail


def test_http_closed_without_answer():
    with listening() as server:
        def hang_up():
            conn, _ = server.accept()
            conn.close()
        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        result = run(health.probe_http(LOCAL, server.getsockname()[1], timeout=1))
        thread.join(1)
    assert not result.ok
    assert "without an answer" in result.detail or "reset" in result.detail.lower()


def test_probe_dispatches_on_the_kind(web):
    http = health.Target("shop/web", LOCAL, web, check(kind="http", path="/500"))
    assert run(health.probe(http)) == health.Result(False, "HTTP GET /500: status 500")
    tcp = health.Target("shop/web", LOCAL, web, check())
    assert run(health.probe(tcp)).ok


# --- the monitor ----------------------------------------------------------------------------

class Probes:
    """A probe whose answer per port the test sets; counts the checks per port."""

    def __init__(self) -> None:
        self.ok: dict[int, bool] = {}
        self.calls: dict[int, int] = {}
        self.lock = threading.Lock()

    async def __call__(self, target: health.Target) -> health.Result:
        with self.lock:
            self.calls[target.port] = self.calls.get(target.port, 0) + 1
            ok = self.ok.get(target.port, True)
        return health.Result(ok, "" if ok else "refused")

    def count(self, port: int) -> int:
        with self.lock:
            return self.calls.get(port, 0)


def target(port: int, **fields: Any) -> health.Target:
    return health.Target("shop/web", LOCAL, port, check(**fields))


@pytest.fixture
def monitor() -> Iterator[tuple[health.Monitor, Probes, threading.Event]]:
    probes = Probes()
    woken = threading.Event()
    mon = health.Monitor(on_change=woken.set, probe=probes)
    mon.start()
    yield mon, probes, woken
    mon.stop()


def test_monitor_flips_and_wakes(monitor):
    mon, probes, woken = monitor
    probes.ok[81] = False
    mon.update([target(80), target(81, failure_threshold=2, success_threshold=2)])
    assert mon.healthy("shop/web", LOCAL, 81), "a new target starts healthy"
    eventually(lambda: ("shop/web", LOCAL, 81) in mon.unhealthy())
    assert woken.is_set()
    assert mon.unhealthy() == {("shop/web", LOCAL, 81)}
    status = mon.statuses()[("shop/web", LOCAL, 81)]
    assert not status.healthy and status.failures >= 2 and status.detail == "refused"
    assert mon.statuses()[("shop/web", LOCAL, 80)].failures == 0

    woken.clear()
    probes.ok[81] = True
    eventually(lambda: not mon.unhealthy())
    assert woken.is_set()
    assert mon.statuses()[("shop/web", LOCAL, 81)].healthy


def test_monitor_no_wake_without_a_flip(monitor):
    mon, probes, woken = monitor
    mon.update([target(80)])
    eventually(lambda: probes.count(80) >= 3)
    assert not woken.is_set()


def test_monitor_update_adds_and_removes(monitor):
    mon, probes, _ = monitor
    probes.ok[81] = False
    mon.update([target(80), target(81, failure_threshold=1)])
    eventually(lambda: probes.count(80) >= 2 and bool(mon.unhealthy()))
    mon.update([target(80)])
    assert not mon.unhealthy(), "a removed target is forgotten"
    assert set(mon.statuses()) == {("shop/web", LOCAL, 80)}
    time.sleep(0.03)
    stopped_at = probes.count(81)
    time.sleep(0.08)
    assert probes.count(81) == stopped_at, "its checks stopped"
    assert probes.count(80) > 2

    # It comes back: healthy until proven otherwise, checked again.
    probes.ok[81] = True
    mon.update([target(80), target(81, failure_threshold=1)])
    assert mon.healthy("shop/web", LOCAL, 81)
    eventually(lambda: probes.count(81) > stopped_at)
    mon.update([])
    assert mon.statuses() == {} and mon.targets() == {}


class Early(random.Random):
    """Jitter that always picks the earliest time."""

    def uniform(self, a, b):
        return a


def test_monitor_changed_check_takes_effect():
    probes = Probes()
    mon = health.Monitor(probe=probes, rng=Early())
    mon.start()
    try:
        mon.update([target(80, interval_seconds=3600)])
        eventually(lambda: probes.count(80) == 1)  # the first check comes at once here
        time.sleep(0.05)
        assert probes.count(80) == 1, "the next one in an hour"
        mon.update([target(80, interval_seconds=0.02)])
        eventually(lambda: probes.count(80) >= 3)
    finally:
        mon.stop()


def test_monitor_a_broken_probe_is_a_failed_check():
    async def broken(target):
        raise RuntimeError("boom")

    woken = threading.Event()
    mon = health.Monitor(on_change=woken.set, probe=broken)
    mon.update([target(80, failure_threshold=1)])  # before start: begins at start
    mon.start()
    try:
        eventually(woken.is_set)
        assert mon.statuses()[("shop/web", LOCAL, 80)].detail == "check failed: boom"
    finally:
        mon.stop()


def test_monitor_with_real_probes():
    with listening() as server:
        port = server.getsockname()[1]
        woken = threading.Event()
        mon = health.Monitor(on_change=woken.set)
        mon.update([target(port, failure_threshold=1, timeout_seconds=0.2)])
        mon.start()
        try:
            eventually(lambda: mon.statuses()[("shop/web", LOCAL, port)].checks >= 1)
            assert not mon.unhealthy()
            server.close()  # the real server dies
            eventually(lambda: bool(mon.unhealthy()))
            assert woken.is_set()
        finally:
            mon.stop()


def test_monitor_stop_is_idempotent_and_restartable():
    probes = Probes()
    mon = health.Monitor(probe=probes)
    mon.stop()  # never started
    mon.update([target(80)])
    mon.start()
    eventually(lambda: probes.count(80) >= 1)
    mon.stop()
    mon.stop()
    count = probes.count(80)
    time.sleep(0.05)
    assert probes.count(80) == count
    mon.start()
    eventually(lambda: probes.count(80) > count)
    mon.stop()
