"""The agent's Prometheus metrics, through `prometheus_client`.

Kernel figures are read at scrape time from a plain `dump()` of the services this director
owns; the labels namespace and name lead to the VirtualServer (empty for a service still
draining after its VirtualServer was deleted). Per virtual service (labels namespace, name,
vip, port, protocol) and per real server (the same plus real = address:port):

    lvs_service_connections_total, lvs_service_{in,out}_{packets,bytes}_total      counters
    lvs_real_server_connections_total, lvs_real_server_{in,out}_{packets,bytes}_total
    lvs_real_server_active_connections, lvs_real_server_inactive_connections,
    lvs_real_server_weight                                                          gauges
    lvs_real_server_healthy   gauge, 1/0: passes this director's health checks (only the
                              real servers of VirtualServers with a spec.healthCheck)

Per health-checked real server (labels namespace, name, real = address:port):

    lvs_real_server_health_checks_total, lvs_real_server_health_check_failures_total

The agent itself: lvs_agent_sync_duration_seconds (histogram), lvs_agent_syncs_total,
lvs_agent_sync_errors_total, lvs_agent_operations_total{operation},
lvs_agent_vips_held, lvs_agent_draining_real_servers, lvs_agent_foreign_services (desired
IPVS services that something else created: left alone, reported in the VirtualServers'
status).

The Grafana dashboard (charts/lvs-operator/dashboards) queries these names and labels: they
are an interface. `kernel_families` and `health_families` are pure (figures in, metric
families out); `KernelCollector` yields them at each scrape; `AgentMetrics` keeps the
agent's own counters in a registry it is given; `serve` answers `/metrics` (the library's
WSGI app) and `/healthz` (a liveness probe) from a thread.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from wsgiref import simple_server

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lvs_operator import exposition
from lvs_operator.agent import health
from lvs_operator.model import ServiceKey, Stats, Table, format_endpoint
from lvs_operator.plan import Operation

# Seconds: a no-op resync of a small table takes milliseconds, 2,000 services about a second
# in the test VM (under emulation); the change-latency target is 300 ms.
SYNC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# The agent's exposition never had `_created` series and the dashboard reads none: with them
# every counter and the histogram would gain a series. The library offers no per-registry
# switch, only this process-wide one (the agent's process serves no other metrics). It is
# not annotated in the library, hence the ignore.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

SERVICE_LABELS = ("namespace", "name", "vip", "port", "protocol")
REAL_LABELS = (*SERVICE_LABELS, "real")
HEALTH_LABELS = ("namespace", "name", "real")
log = logging.getLogger(__name__)

_SERVICE_COUNTERS = (
    ("connections_total", "conns", "Connections scheduled"),
    ("in_packets_total", "in_packets", "Packets from clients"),
    ("out_packets_total", "out_packets", "Packets to clients (none in DR and Tunnel modes)"),
    ("in_bytes_total", "in_bytes", "Bytes from clients"),
    ("out_bytes_total", "out_bytes", "Bytes to clients (none in DR and Tunnel modes)"),
)


def kernel_families(table: Table, owners: Mapping[ServiceKey, str],
                    statuses: Mapping[health.Key, health.Health] | None = None
                    ) -> list[Metric]:
    """Return the per-service and per-real-server families for the services in `owners`
    (namespace/name of each, "" when unknown) as found in `table` (a plain dump); with
    the health checks' `statuses`, whether each checked real server is healthy."""
    statuses = statuses or {}
    svc = {attr: CounterMetricFamily(f"lvs_service_{name}", f"{text} by the virtual service.",
                                     labels=SERVICE_LABELS)
           for name, attr, text in _SERVICE_COUNTERS}
    real = {attr: CounterMetricFamily(f"lvs_real_server_{name}", f"{text} by the real server.",
                                      labels=REAL_LABELS)
            for name, attr, text in _SERVICE_COUNTERS}
    active = GaugeMetricFamily("lvs_real_server_active_connections",
                               "Active connections (TCP established) to the real server.",
                               labels=REAL_LABELS)
    inactive = GaugeMetricFamily("lvs_real_server_inactive_connections",
                                 "Inactive connections (other states, UDP) to the real server.",
                                 labels=REAL_LABELS)
    weight = GaugeMetricFamily("lvs_real_server_weight",
                               "Scheduling weight of the real server (0 while it drains).",
                               labels=REAL_LABELS)
    healthy = GaugeMetricFamily("lvs_real_server_healthy",
                                "Whether the real server passes this director's health checks "
                                "(1) or not (0, weight 0); only for VirtualServers with a "
                                "health check.", labels=REAL_LABELS)
    for key in sorted(owners, key=ServiceKey.sort_key):
        service = table.get(key)
        if service is None:
            continue
        namespace, _, name = owners[key].partition("/")
        labels = [namespace, name, str(key.address) if key.address is not None else "",
                  str(key.port), key.protocol.name if key.protocol else f"FWM{key.fwmark}"]
        _stats(svc, labels, service.stats)
        for r in sorted(service.reals.values(), key=lambda r: r.sort_key()):
            real_labels = [*labels, str(r)]
            _stats(real, real_labels, r.stats)
            active.add_metric(real_labels, r.active_conns)
            inactive.add_metric(real_labels, r.inactive_conns)
            weight.add_metric(real_labels, r.weight)
            status = statuses.get((owners[key], r.address, r.port))
            if status is not None:
                healthy.add_metric(real_labels, int(status.healthy))
    return [*svc.values(), *real.values(), active, inactive, weight, healthy]


def health_families(statuses: Mapping[health.Key, health.Health]) -> list[Metric]:
    """Return the health-check counters of each checked real server."""
    checks = CounterMetricFamily("lvs_real_server_health_checks_total",
                                 "Health checks of the real server run by this director.",
                                 labels=HEALTH_LABELS)
    failures = CounterMetricFamily("lvs_real_server_health_check_failures_total",
                                   "Health checks of the real server that failed (refused, "
                                   "timed out, wrong HTTP status).", labels=HEALTH_LABELS)
    for key in sorted(statuses, key=lambda k: (k[0], k[1].version, int(k[1]), k[2])):
        ident, address, port = key
        namespace, _, name = ident.partition("/")
        labels = [namespace, name, format_endpoint(address, port)]
        checks.add_metric(labels, statuses[key].checks)
        failures.add_metric(labels, statuses[key].failures)
    return [checks, failures]


def _stats(families: Mapping[str, CounterMetricFamily], labels: Sequence[str],
           stats: Stats | None) -> None:
    stats = stats or Stats()
    for attr, family in families.items():
        family.add_metric(labels, getattr(stats, attr))


@dataclass(frozen=True)
class Scrape:
    """What the kernel families are made of, read once per scrape."""

    table: Table
    owners: Mapping[ServiceKey, str]  # namespace/name of each owned service
    statuses: Mapping[health.Key, health.Health]


class KernelCollector(Collector):
    """The figures read at scrape time: the kernel's per-service and per-real-server
    counters and gauges, and the health checks' counters."""

    def __init__(self, read: Callable[[], Scrape]) -> None:
        """Collect what `read()` returns at each scrape (it may raise: the scrape fails)."""
        self._read = read

    def collect(self) -> Iterator[Metric]:
        """Yield `kernel_families` and `health_families` of a fresh `read()`."""
        scrape = self._read()
        yield from kernel_families(scrape.table, scrape.owners, scrape.statuses)
        yield from health_families(scrape.statuses)


class AgentMetrics:
    """The agent's own counters, kept in the registry given; updated by the sync thread,
    read by the metrics thread (the library's metrics are thread-safe)."""

    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        """Create the agent's metrics in `registry`.

        Raises:
            ValueError: when `registry` has them already (one registry per agent).
        """
        self._durations = prometheus_client.Histogram(
            "lvs_agent_sync_duration_seconds",
            "Time to converge the kernel: dump, plan, apply, VIPs.",
            buckets=SYNC_BUCKETS, registry=registry)
        self._syncs = prometheus_client.Counter("lvs_agent_syncs_total", "Syncs run.",
                                                registry=registry)
        self._errors = prometheus_client.Counter("lvs_agent_sync_errors_total",
                                                 "Syncs that failed in part or whole.",
                                                 registry=registry)
        self._operations = prometheus_client.Counter("lvs_agent_operations_total",
                                                     "IPVS operations applied, by kind.",
                                                     ["operation"], registry=registry)
        self._vips = prometheus_client.Gauge("lvs_agent_vips_held",
                                             "VIPs this director holds.", registry=registry)
        self._draining = prometheus_client.Gauge(
            "lvs_agent_draining_real_servers",
            "Real servers at weight 0 waiting for their connections to end.",
            registry=registry)
        self._foreign = prometheus_client.Gauge(
            "lvs_agent_foreign_services",
            "Desired IPVS services that something else created (kube-proxy, keepalived, "
            "ipvsadm): left as they are, not programmed.", registry=registry)
        self._vrrp_instances = prometheus_client.Gauge(
            "lvs_agent_vrrp_instances", "VRRP instances this director runs (keepalived).",
            registry=registry)
        self._vrrp_peers = prometheus_client.Gauge(
            "lvs_agent_vrrp_peers", "Other directors with a VRRP address in their Lease.",
            registry=registry)
        self._vrrp_changes = prometheus_client.Counter(
            "lvs_agent_vrrp_role_changes_total",
            "VRRP instances that began or stopped holding their VIPs here, as keepalived "
            "reported.", registry=registry)
        self._vrrp_seen = 0

    def observe_sync(self, seconds: float, operations: Sequence[Operation], *,
                     failed: bool) -> None:
        """Count one sync: how long it took, what it applied, whether it failed."""
        self._durations.observe(seconds)
        self._syncs.inc()
        if failed:
            self._errors.inc()
        # One increment per kind, not per operation: a bulk sync applies thousands.
        for kind, count in collections.Counter(type(op).__name__ for op in operations).items():
            self._operations.labels(operation=kind).inc(count)

    def set_state(self, *, vips: int, draining: int) -> None:
        """Record the VIPs held and the real servers draining after a sync."""
        self._vips.set(vips)
        self._draining.set(draining)

    def set_foreign(self, count: int) -> None:
        """Record the desired services the last sync found created by something else."""
        self._foreign.set(count)

    def set_vrrp(self, *, instances: int, peers: int, transitions: int) -> None:
        """Record the VRRP instances run, the peers known, and the role changes so far
        (`transitions`: a running total; the counter gains what is new)."""
        self._vrrp_instances.set(instances)
        self._vrrp_peers.set(peers)
        if transitions > self._vrrp_seen:
            self._vrrp_changes.inc(transitions - self._vrrp_seen)
        self._vrrp_seen = transitions

    @property
    def syncs(self) -> int:
        """Return the number of syncs so far."""
        (family,) = self._syncs.collect()
        return int(next(s.value for s in family.samples if s.name == "lvs_agent_syncs_total"))


def serve(host: str, port: int, registry: prometheus_client.CollectorRegistry
          ) -> simple_server.WSGIServer:
    """Serve `registry` at http://host:port/metrics (and `ok` at /healthz) from a thread
    (`exposition.serve`).

    Returns:
        The running server; `shutdown()` and `server_close()` it to stop.

    Raises:
        OSError: when the address cannot be bound.
    """
    return exposition.serve(host, port, registry)
