"""agent.metrics: the exposition text, kernel figures by VirtualServer, the HTTP endpoint."""

from __future__ import annotations

import re
import urllib.request
from ipaddress import ip_address

import pytest

from lvs_operator.agent import health, metrics
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


def samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


@pytest.mark.parametrize(("family", "expected"), [
    (metrics.Family("a_total", "counter", "Things.", [("", {}, 3)]),
     "# HELP a_total Things.\n# TYPE a_total counter\na_total 3\n"),
    (metrics.Family("g", "gauge", "Line\\two\nthree", [("", {"x": 'q"b\\n\n'}, 1.5)]),
     '# HELP g Line\\\\two\\nthree\n# TYPE g gauge\ng{x="q\\"b\\\\n\\n"} 1.5\n'),
    (metrics.Family("e", "gauge", "Empty.", []), "# HELP e Empty.\n# TYPE e gauge\n"),
])
def test_render(family, expected):
    assert metrics.render([family]) == expected


def test_kernel_families_label_owned_services_only():
    owners = {KEY: "shop/web", KEY6: ""}
    text = metrics.render(metrics.kernel_families(table(), owners))
    got = samples(text)
    base = 'namespace="shop",name="web",vip="192.0.2.10",port="80",protocol="TCP"'
    real = base + ',real="10.0.0.1:80"'
    assert got[f"lvs_service_connections_total{{{base}}}"] == 7
    assert got[f"lvs_service_in_bytes_total{{{base}}}"] == 7000
    assert got[f"lvs_service_out_packets_total{{{base}}}"] == 0
    assert got[f"lvs_real_server_connections_total{{{real}}}"] == 5
    assert got[f"lvs_real_server_active_connections{{{real}}}"] == 2
    assert got[f"lvs_real_server_inactive_connections{{{real}}}"] == 1
    assert got[f"lvs_real_server_weight{{{real}}}"] == 3
    v6 = ('namespace="",name="",vip="2001:db8::10",port="53",protocol="UDP",'
          'real="[2001:db8::1]:53"')
    assert got[f"lvs_real_server_weight{{{v6}}}"] == 0
    assert "192.0.2.99" not in text, "a service this director does not own is not ours"
    assert "# TYPE lvs_real_server_weight gauge" in text
    assert "# TYPE lvs_service_connections_total counter" in text


def test_histogram_buckets_are_cumulative():
    histogram = metrics.Histogram(buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value)
    got = samples(metrics.render([histogram.family("d_seconds", "D.")]))
    assert got == {'d_seconds_bucket{le="0.1"}': 2, 'd_seconds_bucket{le="1"}': 3,
                   'd_seconds_bucket{le="+Inf"}': 4, "d_seconds_sum": 3.65,
                   "d_seconds_count": 4}


def test_agent_metrics():
    agent = metrics.AgentMetrics()
    agent.observe_sync(0.002, [AddService(VirtualService(KEY)), AddReal(KEY, rs("10.0.0.1", 80)),
                               AddReal(KEY, rs("10.0.0.2", 80))], failed=False)
    agent.observe_sync(0.3, [DeleteReal(KEY, rs("10.0.0.2", 80))], failed=True)
    agent.set_state(vips=2, draining=1)
    got = samples(metrics.render(agent.families()))
    assert got["lvs_agent_syncs_total"] == 2 == agent.syncs
    assert got["lvs_agent_sync_errors_total"] == 1
    assert got['lvs_agent_operations_total{operation="AddReal"}'] == 2
    assert got['lvs_agent_operations_total{operation="DeleteReal"}'] == 1
    assert got['lvs_agent_sync_duration_seconds_bucket{le="0.0025"}'] == 1
    assert got['lvs_agent_sync_duration_seconds_bucket{le="+Inf"}'] == 2
    assert got["lvs_agent_vips_held"] == 2
    assert got["lvs_agent_draining_real_servers"] == 1


def test_exposition_is_well_formed():
    agent = metrics.AgentMetrics()
    agent.observe_sync(0.01, [], failed=False)
    text = metrics.render([*metrics.kernel_families(table(), {KEY: "shop/web"}),
                           *agent.families()])
    sample = re.compile(r'[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? -?[0-9.e+]+')
    for line in text.splitlines():
        assert line.startswith("# ") or sample.fullmatch(line), line


def test_serve():
    calls = []

    def collect():
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("kernel gone")
        return "x 1\n"

    server = metrics.serve("127.0.0.1", 0, collect)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{base}/metrics", timeout=5) as answer:
            assert answer.read() == b"x 1\n"
            assert answer.headers["Content-Type"] == metrics.CONTENT_TYPE
        with opener.open(f"{base}/healthz", timeout=5) as answer:
            assert answer.read() == b"ok\n"
        with pytest.raises(urllib.error.HTTPError) as failed:
            opener.open(f"{base}/metrics", timeout=5)
        assert failed.value.code == 500
        assert b"kernel gone" in failed.value.read()
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
    got = samples(metrics.render([*metrics.kernel_families(table(), owners, statuses),
                                  *metrics.health_families(statuses)]))
    real = ('namespace="shop",name="web",vip="192.0.2.10",port="80",protocol="TCP",'
            'real="10.0.0.1:80"')
    real6 = ('namespace="shop",name="dns",vip="2001:db8::10",port="53",protocol="UDP",'
             'real="[2001:db8::1]:53"')
    assert got[f"lvs_real_server_healthy{{{real}}}"] == 0
    assert got[f"lvs_real_server_healthy{{{real6}}}"] == 1
    assert got['lvs_real_server_health_checks_total{namespace="shop",name="web",'
               'real="10.0.0.1:80"}'] == 9
    assert got['lvs_real_server_health_check_failures_total{namespace="shop",name="web",'
               'real="10.0.0.1:80"}'] == 4
    assert got['lvs_real_server_health_check_failures_total{namespace="shop",name="dns",'
               'real="[2001:db8::1]:53"}'] == 0


def test_no_health_samples_without_checks():
    text = metrics.render([*metrics.kernel_families(table(), {KEY: "shop/web"}),
                           *metrics.health_families({})])
    assert "# TYPE lvs_real_server_healthy gauge" in text
    assert not [k for k in samples(text) if "health" in k]
