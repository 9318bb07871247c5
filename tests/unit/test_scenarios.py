"""The end-to-end scenarios' own helpers (tests/scenarios.py) that need no cluster: the
client's run-until-stdin-ends mode (the helm upgrade scenario's probe) and the log filter."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

import scenarios


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


def _client(url: str, count: int, interval: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", scenarios.CLIENT_SCRIPT, url, str(count),
                             str(interval)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def test_client_sends_count_requests(url: str) -> None:
    out, _ = _client(url, 3, 0).communicate("", timeout=30)
    assert [(status, body, error) for _, status, body, error in json.loads(out)] == [
        (200, "hello", None)] * 3


def test_client_with_count_0_runs_until_its_stdin_ends(url: str) -> None:
    client = _client(url, 0, 0.05)
    time.sleep(1.0)
    assert client.poll() is None, "count 0 runs until stdin ends"
    out, _ = client.communicate("", timeout=30)
    answers = json.loads(out)
    assert client.returncode == 0
    assert len(answers) >= 2
    assert {(status, body, error) for _, status, body, error in answers} == {
        (200, "hello", None)}


def test_problem_lines_are_the_products_errors_and_tracebacks() -> None:
    log = "\n".join([
        "2026-01-02 03:04:05,678 INFO lvs_operator.keepalived.supervisor: starting keepalived",
        "2026-01-02 03:04:05,679 ERROR lvs_operator.keepalived.supervisor: cannot run nft",
        "2026-01-02 03:04:05,680 WARNING x: an ERROR in a message is not a level",
        "2026-01-02 03:04:05,681 CRITICAL x: gone",
        "Traceback (most recent call last):",
        "Sun Jan  1 00:00:00 2026: Starting VRRP child process, pid=7",
        "ERROR",
        "",
    ])
    assert scenarios.problem_lines(log) == [
        "2026-01-02 03:04:05,679 ERROR lvs_operator.keepalived.supervisor: cannot run nft",
        "2026-01-02 03:04:05,681 CRITICAL x: gone",
        "Traceback (most recent call last):",
    ]
