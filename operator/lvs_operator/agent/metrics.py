"""The agent's Prometheus metrics, in the text exposition format (0.0.4), by hand.

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
lvs_agent_vips_held, lvs_agent_draining_real_servers.

`render` and `kernel_families` are pure; `AgentMetrics` counts (thread-safe); `serve` runs
the HTTP endpoint (`/metrics`, and `/healthz` for a liveness probe) in a thread.
"""

from __future__ import annotations

import collections
import http.server
import logging
import math
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from lvs_operator.agent import health
from lvs_operator.model import ServiceKey, Stats, Table, format_endpoint
from lvs_operator.plan import Operation

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a no-op resync of a small table takes milliseconds, 2,000 services about a second
# in the test VM (under emulation); the change-latency target is 300 ms.
SYNC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Labels = Mapping[str, str]
log = logging.getLogger(__name__)


@dataclass
class Family:
    """One metric family: its samples are (name suffix, labels, value)."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, labels: Labels, value: float, *, suffix: str = "") -> None:
        """Add a sample (`suffix` is e.g. `_bucket` for a histogram's series)."""
        self.samples.append((suffix, labels, value))


def render(families: Iterable[Family]) -> str:
    """Return `families` in the Prometheus text exposition format."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for suffix, labels, value in family.samples:
            text = ",".join(f'{key}="{_escape_label(val)}"' for key, val in labels.items())
            lines.append(f"{family.name}{suffix}{{{text}}} {_number(value)}" if text
                         else f"{family.name}{suffix} {_number(value)}")
    return "\n".join(lines) + "\n"


_SERVICE_COUNTERS = (
    ("connections_total", "conns", "Connections scheduled"),
    ("in_packets_total", "in_packets", "Packets from clients"),
    ("out_packets_total", "out_packets", "Packets to clients (none in DR and Tunnel modes)"),
    ("in_bytes_total", "in_bytes", "Bytes from clients"),
    ("out_bytes_total", "out_bytes", "Bytes to clients (none in DR and Tunnel modes)"),
)


def kernel_families(table: Table, owners: Mapping[ServiceKey, str],
                    statuses: Mapping[health.Key, health.Health] | None = None) -> list[Family]:
    """Return the per-service and per-real-server families for the services in `owners`
    (namespace/name of each, "" when unknown) as found in `table` (a plain dump); with
    the health checks' `statuses`, whether each checked real server is healthy."""
    statuses = statuses or {}
    svc = {attr: Family(f"lvs_service_{name}", "counter", f"{text} by the virtual service.")
           for name, attr, text in _SERVICE_COUNTERS}
    real = {attr: Family(f"lvs_real_server_{name}", "counter", f"{text} by the real server.")
            for name, attr, text in _SERVICE_COUNTERS}
    active = Family("lvs_real_server_active_connections", "gauge",
                    "Active connections (TCP established) to the real server.")
    inactive = Family("lvs_real_server_inactive_connections", "gauge",
                      "Inactive connections (other states, UDP) to the real server.")
    weight = Family("lvs_real_server_weight", "gauge",
                    "Scheduling weight of the real server (0 while it drains).")
    healthy = Family("lvs_real_server_healthy", "gauge",
                     "Whether the real server passes this director's health checks (1) or "
                     "not (0, weight 0); only for VirtualServers with a health check.")
    for key in sorted(owners, key=ServiceKey.sort_key):
        service = table.get(key)
        if service is None:
            continue
        namespace, _, name = owners[key].partition("/")
        labels = {"namespace": namespace, "name": name,
                  "vip": str(key.address) if key.address is not None else "",
                  "port": str(key.port),
                  "protocol": key.protocol.name if key.protocol else f"FWM{key.fwmark}"}
        _stats(svc, labels, service.stats)
        for r in sorted(service.reals.values(), key=lambda r: r.sort_key()):
            real_labels = {**labels, "real": str(r)}
            _stats(real, real_labels, r.stats)
            active.add(real_labels, r.active_conns)
            inactive.add(real_labels, r.inactive_conns)
            weight.add(real_labels, r.weight)
            status = statuses.get((owners[key], r.address, r.port))
            if status is not None:
                healthy.add(real_labels, int(status.healthy))
    return [*svc.values(), *real.values(), active, inactive, weight, healthy]


def health_families(statuses: Mapping[health.Key, health.Health]) -> list[Family]:
    """Return the health-check counters of each checked real server."""
    checks = Family("lvs_real_server_health_checks_total", "counter",
                    "Health checks of the real server run by this director.")
    failures = Family("lvs_real_server_health_check_failures_total", "counter",
                      "Health checks of the real server that failed (refused, timed out, "
                      "wrong HTTP status).")
    for key in sorted(statuses, key=lambda k: (k[0], k[1].version, int(k[1]), k[2])):
        ident, address, port = key
        namespace, _, name = ident.partition("/")
        labels = {"namespace": namespace, "name": name, "real": format_endpoint(address, port)}
        checks.add(labels, statuses[key].checks)
        failures.add(labels, statuses[key].failures)
    return [checks, failures]


def _stats(families: Mapping[str, Family], labels: Labels, stats: Stats | None) -> None:
    stats = stats or Stats()
    for attr, family in families.items():
        family.add(labels, getattr(stats, attr))


@dataclass
class Histogram:
    """Cumulative-bucket histogram of observations (seconds)."""

    buckets: Sequence[float] = SYNC_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        """Count `value` in every bucket whose bound is at least `value`."""
        if not self.counts:
            self.counts = [0] * len(self.buckets)
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1
        self.total += value
        self.count += 1

    def family(self, name: str, help: str) -> Family:
        """Return the histogram as a family (`_bucket`, `_sum`, `_count` series)."""
        result = Family(name, "histogram", help)
        counts = self.counts or [0] * len(self.buckets)
        for bound, n in zip(self.buckets, counts, strict=True):
            result.add({"le": _number(bound)}, n, suffix="_bucket")
        result.add({"le": "+Inf"}, self.count, suffix="_bucket")
        result.add({}, self.total, suffix="_sum")
        result.add({}, self.count, suffix="_count")
        return result


class AgentMetrics:
    """The agent's own counters; updated by the sync thread, read by the metrics thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._durations = Histogram()
        self._errors = 0
        self._operations: collections.Counter[str] = collections.Counter()
        self._vips = 0
        self._draining = 0

    def observe_sync(self, seconds: float, operations: Sequence[Operation], *,
                     failed: bool) -> None:
        """Count one sync: how long it took, what it applied, whether it failed."""
        with self._lock:
            self._durations.observe(seconds)
            self._operations.update(type(op).__name__ for op in operations)
            self._errors += failed

    def set_state(self, *, vips: int, draining: int) -> None:
        """Record the VIPs held and the real servers draining after a sync."""
        with self._lock:
            self._vips = vips
            self._draining = draining

    @property
    def syncs(self) -> int:
        """Return the number of syncs so far."""
        with self._lock:
            return self._durations.count

    def families(self) -> list[Family]:
        """Return the agent's families as they are now."""
        with self._lock:
            duration = self._durations.family(
                "lvs_agent_sync_duration_seconds",
                "Time to converge the kernel: dump, plan, apply, VIPs.")
            syncs = Family("lvs_agent_syncs_total", "counter", "Syncs run.")
            syncs.add({}, self._durations.count)
            errors = Family("lvs_agent_sync_errors_total", "counter",
                            "Syncs that failed in part or whole.")
            errors.add({}, self._errors)
            ops = Family("lvs_agent_operations_total", "counter",
                         "IPVS operations applied, by kind.")
            for kind in sorted(self._operations):
                ops.add({"operation": kind}, self._operations[kind])
            vips = Family("lvs_agent_vips_held", "gauge", "VIPs this director holds.")
            vips.add({}, self._vips)
            draining = Family("lvs_agent_draining_real_servers", "gauge",
                              "Real servers at weight 0 waiting for their connections to end.")
            draining.add({}, self._draining)
        return [duration, syncs, errors, ops, vips, draining]


def serve(host: str, port: int, collect: Callable[[], str]) -> http.server.ThreadingHTTPServer:
    """Serve `collect()` at http://host:port/metrics (and `ok` at /healthz) from a thread.

    Returns:
        The running server; `shutdown()` and `server_close()` it to stop.

    Raises:
        OSError: when the address cannot be bound.
    """

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/metrics":
                try:
                    body, code, kind = collect().encode(), 200, CONTENT_TYPE
                except Exception as e:  # a scrape must not kill the thread; say why instead
                    log.exception("metrics collection failed")
                    body, code, kind = f"collecting metrics failed: {e}\n".encode(), 500, \
                        "text/plain"
            elif self.path == "/healthz":
                body, code, kind = b"ok\n", 200, "text/plain"
            else:
                body, code, kind = b"not found: try /metrics\n", 404, "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("metrics: " + format, *args)

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    server = Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def _number(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)
                                  and abs(value) < 2**53):
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
