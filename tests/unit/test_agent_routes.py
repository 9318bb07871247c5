"""agent.routes: the default route's interface from /proc/net/route and ipv6_route."""

from __future__ import annotations

import pytest

from lvs_operator.agent import routes

HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"


def v4(iface, destination="00000000", flags="0003", metric=0, mask="00000000"):
    return f"{iface}\t{destination}\t010200C0\t{flags}\t0\t0\t{metric}\t{mask}\t0\t0\t0\n"


def v6(iface, destination="0" * 32, prefix="00", metric="00000400", flags="00000003"):
    return (f"{destination} {prefix} {'0' * 32} 00 fd000000000000000000000000000001 "
            f"{metric} 00000003 00000000 {flags} {iface}\n")


@pytest.mark.parametrize(("text", "expected"), [
    (HEADER, None),
    (HEADER + v4("eth0"), "eth0"),
    (HEADER + v4("eth0", destination="000200C0", mask="00FFFFFF", flags="0001"), None),
    (HEADER + v4("eth0", metric=100) + v4("eth1", metric=10), "eth1"),
    (HEADER + v4("eth0", flags="0000"), None),  # not up
    (HEADER + v4("eth0", flags="0203"), None),  # reject (unreachable default)
])
def test_parse_ipv4(text, expected):
    assert routes.parse_ipv4(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("", None),
    (v6("eth0"), "eth0"),
    (v6("eth0", destination="fd" + "0" * 30, prefix="40"), None),
    (v6("lo", flags="00200201"), None),
    (v6("eth0", metric="00000400") + v6("eth1", metric="00000100"), "eth1"),
])
def test_parse_ipv6(text, expected):
    assert routes.parse_ipv6(text) == expected


def test_default_interface_prefers_ipv4_then_ipv6(tmp_path):
    assert routes.default_interface(tmp_path) is None
    (tmp_path / "ipv6_route").write_text(v6("eth6"))
    assert routes.default_interface(tmp_path) == "eth6"
    (tmp_path / "route").write_text(HEADER + v4("eth4"))
    assert routes.default_interface(tmp_path) == "eth4"
