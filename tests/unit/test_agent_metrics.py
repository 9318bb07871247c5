"""agent.metrics: the exposition text, kernel figures by VirtualServer, the HTTP endpoint."""

from __future__ import annotations

import re
import socket
import threading
import urllib.request
from ipaddress import ip_address

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_agent_loop import NODE, VIP, FakeApi, FakeVips, eventually, virtualserver

from lvs_operator.agent import health, loop, metrics
from lvs_operator.agent.settings import DirectorSettings, Settings
from lvs_operator.ipvs.fake import FakeIPVS
from lvs_operator.model import Forwarding, Protocol, RealServer, ServiceKey, Stats, VirtualService
from lvs_operator.plan import AddReal, AddService, DeleteReal

KEY = ServiceKey.inet(Protocol.TCP, ip_address("192.0.2.10"), 80)
KEY6 = ServiceKey.inet(Protocol.UDP, ip_address("2001:db8::10"), 53)
FOREIGN = ServiceKey.inet(Protocol.TCP, ip_address("192.0.2.99"), 80)


def rs(address, port, *, weight=1, active=0, inactive=0, conns=0) -> RealServer:
    return RealServer(ip_address(address), port, Forwarding.DIRECT_ROUTING, weight,
                      active_conns=active, inactive_conns=inactive,
                      stats=Stats(conns=conns, in_packets=10, out_packets=0, in_bytes=1000))


def table():
    return {
        KEY: VirtualService(key=KEY, stats=Stats(conns=7, in_packets=70, in_bytes=7000))
        .with_reals([rs("10.0.0.1", 80, weight=3, active=2, inactive=1, conns=5)]),
        KEY6: VirtualService(key=KEY6).with_reals([rs("2001:db8::1", 53, weight=0)]),
        FOREIGN: VirtualService(key=FOREIGN, stats=Stats(conns=1)),
    }


def render(*families) -> str:
    """The exposition of `families` (metric families or whole registries) as /metrics
    answers a client that asks for no other format."""
    registry = prometheus_client.CollectorRegistry()
    for family in families:
        registry.register(family if isinstance(family, prometheus_client.CollectorRegistry)
                          else Fixed(family))
    return prometheus_client.generate_latest(registry).decode()


class Fixed:
    """A collector of given families."""

    def __init__(self, families):
        self.families = list(families)

    def collect(self):
        return self.families


def samples(text: str) -> dict[str, float]:
    """name{labels} -> value, the labels sorted by name (the library's order)."""
    return {series(s.name, s.labels): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def series(name: str, labels: dict[str, str]) -> str:
    text = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{text}}}" if text else name


def test_kernel_families_label_owned_services_only():
    owners = {KEY: "shop/web", KEY6: ""}
    text = render(metrics.kernel_families(table(), owners))
    got = samples(text)
    base = 'name="web",namespace="shop",port="80",protocol="TCP"'
    real = base + ',real="10.0.0.1:80",vip="192.0.2.10"'
    base += ',vip="192.0.2.10"'
    assert got[f"lvs_service_connections_total{{{base}}}"] == 7
    assert got[f"lvs_service_in_bytes_total{{{base}}}"] == 7000
    assert got[f"lvs_service_out_packets_total{{{base}}}"] == 0
    assert got[f"lvs_real_server_connections_total{{{real}}}"] == 5
    assert got[f"lvs_real_server_active_connections{{{real}}}"] == 2
    assert got[f"lvs_real_server_inactive_connections{{{real}}}"] == 1
    assert got[f"lvs_real_server_weight{{{real}}}"] == 3
    v6 = 'name="",namespace="",port="53",protocol="UDP",real="[2001:db8::1]:53",vip="2001:db8::10"'
    assert got[f"lvs_real_server_weight{{{v6}}}"] == 0
    assert "192.0.2.99" not in text, "a service this director does not own is not ours"
    assert "# TYPE lvs_real_server_weight gauge" in text
    assert "# TYPE lvs_service_connections_total counter" in text


def test_sync_duration_buckets_are_cumulative():
    registry = prometheus_client.CollectorRegistry()
    agent = metrics.AgentMetrics(registry)
    for value in (0.05, 0.1, 0.5, 3.0):
        agent.observe_sync(value, [], failed=False)
    got = {k.removeprefix("lvs_agent_sync_duration_seconds"): v
           for k, v in samples(render(registry)).items()
           if k.startswith("lvs_agent_sync_duration_seconds")}
    bounds = [*metrics.SYNC_BUCKETS, float("inf")]
    assert [float(k[len('_bucket{le="'):-2]) for k in got if k.startswith("_bucket")] == bounds
    assert got['_bucket{le="0.05"}'] == 1
    assert got['_bucket{le="0.1"}'] == 2
    assert got['_bucket{le="1.0"}'] == 3
    assert got['_bucket{le="2.5"}'] == 3
    assert got['_bucket{le="5.0"}'] == 4
    assert got['_bucket{le="+Inf"}'] == 4
    assert got["_sum"] == pytest.approx(3.65)
    assert got["_count"] == 4


def test_agent_metrics():
    registry = prometheus_client.CollectorRegistry()
    agent = metrics.AgentMetrics(registry)
    agent.observe_sync(0.002, [AddService(VirtualService(KEY)), AddReal(KEY, rs("10.0.0.1", 80)),
                               AddReal(KEY, rs("10.0.0.2", 80))], failed=False)
    agent.observe_sync(0.3, [DeleteReal(KEY, rs("10.0.0.2", 80))], failed=True)
    agent.set_state(vips=2, draining=1)
    got = samples(render(registry))
    assert got["lvs_agent_syncs_total"] == 2 == agent.syncs
    assert got["lvs_agent_sync_errors_total"] == 1
    assert got['lvs_agent_operations_total{operation="AddReal"}'] == 2
    assert got['lvs_agent_operations_total{operation="DeleteReal"}'] == 1
    assert got['lvs_agent_sync_duration_seconds_bucket{le="0.0025"}'] == 1
    assert got['lvs_agent_sync_duration_seconds_bucket{le="+Inf"}'] == 2
    assert got["lvs_agent_vips_held"] == 2
    assert got["lvs_agent_draining_real_servers"] == 1


def test_one_registry_per_agent():
    first, second = (metrics.AgentMetrics(prometheus_client.CollectorRegistry())
                     for _ in range(2))
    first.observe_sync(0.01, [], failed=False)
    assert (first.syncs, second.syncs) == (1, 0)
    registry = prometheus_client.CollectorRegistry()
    metrics.AgentMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        metrics.AgentMetrics(registry)


# Today's families exactly (the dashboard and its test depend on them): name, type, label names.
FAMILIES = {
    **{f"lvs_service_{n}_total": ("counter", set(metrics.SERVICE_LABELS))
       for n in ("connections", "in_packets", "out_packets", "in_bytes", "out_bytes")},
    **{f"lvs_real_server_{n}_total": ("counter", set(metrics.REAL_LABELS))
       for n in ("connections", "in_packets", "out_packets", "in_bytes", "out_bytes")},
    **{f"lvs_real_server_{n}": ("gauge", set(metrics.REAL_LABELS))
       for n in ("active_connections", "inactive_connections", "weight", "healthy")},
    "lvs_real_server_health_checks_total": ("counter", {"namespace", "name", "real"}),
    "lvs_real_server_health_check_failures_total": ("counter", {"namespace", "name", "real"}),
    "lvs_agent_sync_duration_seconds": ("histogram", {"le"}),
    "lvs_agent_syncs_total": ("counter", set()),
    "lvs_agent_sync_errors_total": ("counter", set()),
    "lvs_agent_operations_total": ("counter", {"operation"}),
    "lvs_agent_vips_held": ("gauge", set()),
    "lvs_agent_draining_real_servers": ("gauge", set()),
    "lvs_agent_foreign_services": ("gauge", set()),
    "lvs_agent_vrrp_instances": ("gauge", set()),
    "lvs_agent_vrrp_peers": ("gauge", set()),
    "lvs_agent_vrrp_role_changes_total": ("counter", set()),
}


def test_exposition_is_well_formed_and_has_todays_names():
    statuses = {("shop/web", ip_address("10.0.0.1"), 80): health.Health(healthy=True, checks=1)}
    registry = prometheus_client.CollectorRegistry()
    registry.register(metrics.KernelCollector(
        lambda: metrics.Scrape(table(), {KEY: "shop/web"}, statuses)))
    agent = metrics.AgentMetrics(registry)
    agent.observe_sync(0.01, [AddService(VirtualService(KEY))], failed=False)
    text = render(registry)
    sample = re.compile(r'[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? -?[0-9.e+]+')
    for line in text.splitlines():
        assert line.startswith("# ") or sample.fullmatch(line), line
    types = dict(re.findall(r"^# TYPE (\w+) (\w+)$", text, re.MULTILINE))
    assert types == {name: kind for name, (kind, _) in FAMILIES.items()}, \
        "no family renamed, retyped, added (no _created series) or lost"
    for name, (_, labels) in FAMILIES.items():
        series = {s for s in samples(text) if re.match(rf"{name}(_bucket|_sum|_count)?\b", s)}
        assert series, name
        for s in series:
            assert set(re.findall(r'(\w+)="', s)) <= labels, s
            if not s.endswith(("_sum", "_count")):
                assert set(re.findall(r'(\w+)="', s)) == labels, s


def test_serve():
    calls = []

    class Flaky:
        def collect(self):
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("kernel gone")
            yield prometheus_client.core.GaugeMetricFamily("x", "X.", value=1)

    registry = prometheus_client.CollectorRegistry()
    registry.register(Flaky())
    server = metrics.serve("127.0.0.1", 0, registry)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{base}/metrics", timeout=5) as answer:
            assert answer.read() == b"# HELP x X.\n# TYPE x gauge\nx 1.0\n"
            assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        with opener.open(f"{base}/healthz", timeout=5) as answer:
            assert answer.read() == b"ok\n"
        with pytest.raises(urllib.error.HTTPError) as failed:
            opener.open(f"{base}/metrics", timeout=5)
        assert failed.value.code == 500
        assert b"kernel gone" in failed.value.read()
        with pytest.raises(urllib.error.HTTPError) as failed:
            opener.open(f"{base}/", timeout=5)
        assert failed.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_health_of_checked_real_servers():
    statuses = {
        ("shop/web", ip_address("10.0.0.1"), 80): health.Health(healthy=False, checks=9,
                                                               failures=4, detail="refused"),
        ("shop/dns", ip_address("2001:db8::1"), 53): health.Health(healthy=True, checks=2),
    }
    owners = {KEY: "shop/web", KEY6: "shop/dns"}
    got = samples(render(metrics.kernel_families(table(), owners, statuses),
                         metrics.health_families(statuses)))
    real = ('name="web",namespace="shop",port="80",protocol="TCP",real="10.0.0.1:80",'
            'vip="192.0.2.10"')
    real6 = ('name="dns",namespace="shop",port="53",protocol="UDP",real="[2001:db8::1]:53",'
             'vip="2001:db8::10"')
    assert got[f"lvs_real_server_healthy{{{real}}}"] == 0
    assert got[f"lvs_real_server_healthy{{{real6}}}"] == 1
    assert got['lvs_real_server_health_checks_total{name="web",namespace="shop",'
               'real="10.0.0.1:80"}'] == 9
    assert got['lvs_real_server_health_check_failures_total{name="web",namespace="shop",'
               'real="10.0.0.1:80"}'] == 4
    assert got['lvs_real_server_health_check_failures_total{name="dns",namespace="shop",'
               'real="[2001:db8::1]:53"}'] == 0


def test_no_health_samples_without_checks():
    text = render(metrics.kernel_families(table(), {KEY: "shop/web"}),
                  metrics.health_families({}))
    assert "# TYPE lvs_real_server_healthy gauge" in text
    assert not [k for k in samples(text) if "health" in k]


def test_agent_serves_its_metrics_at_its_address_until_stopped(tmp_path):
    with socket.socket() as probe:  # a free port (the settings take no port 0)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(node=NODE, state_file=tmp_path / "owned.json",
                        metrics_address=f"127.0.0.1:{port}",
                        director=DirectorSettings(sysctls=None))
    agent = loop.Agent(settings, api=FakeApi([virtualserver([1])]), ipvs=FakeIPVS(),
                       vips=FakeVips(), sysctls=lambda s: [], default_interface=lambda: None)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        eventually(lambda: agent.metrics.syncs >= 1)
        with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            got = samples(answer.read().decode())
        labels = {"namespace": "shop", "name": "web", "vip": VIP, "port": "80",
                  "protocol": "TCP", "real": "10.0.0.1:80"}
        assert got[series("lvs_real_server_weight", labels)] == 1
        assert got["lvs_agent_syncs_total"] >= 1
        with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            assert answer.read() == b"ok\n"
    finally:
        agent.stop()
        thread.join(10)
    assert not thread.is_alive()
    with pytest.raises(OSError):
        opener.open(f"http://127.0.0.1:{port}/healthz", timeout=5)
