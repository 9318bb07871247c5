"""The keepalived container's Prometheus metrics, through `prometheus_client`.

    lvs_vrrp_adverts_sent_total{vrid}        adverts keepalived sent (seen by the watchdog)
    lvs_vrrp_adverts_rejected_total          VRRP packets from non-peers the guard dropped
                                             (nft's counter, read at scrape; absent when the
                                             guard is off)
    lvs_vrrp_vip_lifetime_refreshes_total    VIP lifetimes refreshed (one per VIP per refresh)
    lvs_vrrp_vips_deleted_total{reason}      VIPs this container deleted: `no_adverts` (the
                                             watchdog: keepalived held it but was silent),
                                             `keepalived_exited` (left behind by keepalived)
    lvs_keepalived_reloads_total             SIGHUPs sent after a configuration change
    lvs_keepalived_up                        1 while the keepalived child runs

`serve` answers `/metrics` (the library's WSGI app) and `/healthz` (200 while keepalived
runs, 503 before it starts and after it died) from a thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from wsgiref import simple_server

import prometheus_client
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from lvs_operator import exposition

# No `_created` series: they would double every counter's series for nothing a dashboard
# reads. The library has only this process-wide switch; this process serves nothing else.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

NO_ADVERTS = "no_adverts"
KEEPALIVED_EXITED = "keepalived_exited"
log = logging.getLogger(__name__)


class _Rejected(Collector):
    """The guard's drop counter, read when Prometheus scrapes."""

    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        try:
            value = self._read()
        except Exception as e:  # a scrape must not fail for one figure: leave it out
            log.warning("reading the VRRP guard's counter failed: %s", e)
            return
        yield CounterMetricFamily("lvs_vrrp_adverts_rejected",
                                  "VRRP packets from non-peers dropped by the guard.",
                                  value=value)


class Metrics:
    """The container's counters and gauge, in a registry of their own.

    Args:
        rejected: reads the guard's drop counter (None: no guard, no such metric).
    """

    def __init__(self, *, rejected: Callable[[], int] | None = None) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        r = self.registry
        self._adverts = prometheus_client.Counter(
            "lvs_vrrp_adverts_sent_total", "VRRP adverts keepalived sent, by VRID.",
            ["vrid"], registry=r)
        self._refreshes = prometheus_client.Counter(
            "lvs_vrrp_vip_lifetime_refreshes_total", "VIP address lifetimes refreshed.",
            registry=r)
        self._deleted = prometheus_client.Counter(
            "lvs_vrrp_vips_deleted_total", "VIPs deleted by the keepalived container.",
            ["reason"], registry=r)
        self._reloads = prometheus_client.Counter(
            "lvs_keepalived_reloads_total", "keepalived reloads (SIGHUP) after a "
            "configuration change.", registry=r)
        self._up = prometheus_client.Gauge(
            "lvs_keepalived_up", "1 while the keepalived process runs.", registry=r)
        if rejected is not None:
            r.register(_Rejected(rejected))

    def advert(self, vrid: int) -> None:
        """Count one advert sent for `vrid`."""
        self._adverts.labels(vrid=str(vrid)).inc()

    def refreshed(self, count: int) -> None:
        """Count `count` lifetime refreshes."""
        self._refreshes.inc(count)

    def deleted(self, reason: str, count: int = 1) -> None:
        """Count `count` VIPs deleted for `reason` (NO_ADVERTS, KEEPALIVED_EXITED)."""
        self._deleted.labels(reason=reason).inc(count)

    def reloaded(self) -> None:
        """Count one reload."""
        self._reloads.inc()

    def set_up(self, up: bool) -> None:
        """Record whether keepalived runs."""
        self._up.set(1 if up else 0)

    @property
    def up(self) -> bool:
        """Return whether keepalived was last recorded running."""
        return self.value("lvs_keepalived_up") == 1

    def value(self, name: str, **labels: str) -> float | None:
        """Return the current value of sample `name` with `labels` (None: no such sample)."""
        return self.registry.get_sample_value(name, labels)


def serve(host: str, port: int, metrics: Metrics) -> simple_server.WSGIServer:
    """Serve `metrics` at http://host:port/metrics and the health at /healthz (503 while
    keepalived does not run), from a thread (`exposition.serve`).

    Returns:
        The running server; `shutdown()` and `server_close()` it to stop.

    Raises:
        OSError: when the address cannot be bound.
    """
    return exposition.serve(host, port, metrics.registry, health=lambda: (
        "" if metrics.up else "keepalived is not running"))
