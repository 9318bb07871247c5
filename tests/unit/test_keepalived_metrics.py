"""keepalived.metrics: the exposition, the guard's counter read at scrape, /healthz."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client import generate_latest

from lvs_operator.keepalived.metrics import KEEPALIVED_EXITED, NO_ADVERTS, Metrics, serve


def exposition(metrics: Metrics) -> list[str]:
    return [line for line in generate_latest(metrics.registry).decode().splitlines()
            if line and not line.startswith("#")]


def test_the_figures_and_their_names():
    metrics = Metrics(rejected=lambda: 54)
    metrics.advert(51)
    metrics.advert(51)
    metrics.refreshed(3)
    metrics.deleted(NO_ADVERTS, 2)
    metrics.deleted(KEEPALIVED_EXITED)
    metrics.reloaded()
    metrics.set_up(True)
    assert exposition(metrics) == [
        'lvs_vrrp_adverts_sent_total{vrid="51"} 2.0',
        "lvs_vrrp_vip_lifetime_refreshes_total 3.0",
        'lvs_vrrp_vips_deleted_total{reason="no_adverts"} 2.0',
        'lvs_vrrp_vips_deleted_total{reason="keepalived_exited"} 1.0',
        "lvs_keepalived_reloads_total 1.0",
        "lvs_keepalived_up 1.0",
        "lvs_vrrp_adverts_rejected_total 54.0",
    ]


def test_no_guard_no_rejected_metric_and_a_failed_read_leaves_it_out(caplog):
    assert not any("rejected" in line for line in exposition(Metrics()))

    def broken() -> int:
        raise RuntimeError("nft exited 1")

    assert not any("rejected" in line for line in exposition(Metrics(rejected=broken)))
    assert "reading the VRRP guard's counter failed: nft exited 1" in caplog.text


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def served():
    metrics = Metrics()
    server = serve("127.0.0.1", 0, metrics)
    yield metrics, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_healthz_says_whether_keepalived_runs(served):
    metrics, base = served
    assert get(f"{base}/healthz") == (503, "keepalived is not running\n")
    metrics.set_up(True)
    assert get(f"{base}/healthz") == (200, "ok\n")
    status, text = get(f"{base}/metrics")
    assert status == 200 and "lvs_keepalived_up 1.0" in text.splitlines()
    assert get(f"{base}/other") == (404, "not found: try /metrics\n")
