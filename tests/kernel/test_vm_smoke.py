"""Proves the VM rig: an IPVS-capable kernel, root, and a namespace lab that carries traffic."""

from __future__ import annotations

import os
import subprocess

import pytest
from netlab import Lab, http_get, udp_query


def test_kernel_has_ipvs(ipvs_module: None) -> None:
    assert os.geteuid() == 0
    assert os.path.exists("/proc/net/ip_vs")


def test_ipvsadm_lists_an_empty_table(ipvs_module: None) -> None:
    out = subprocess.run(["ipvsadm", "-L", "-n"], check=True, capture_output=True,
                         text=True).stdout
    lines = out.strip().splitlines()
    assert lines[0].startswith("IP Virtual Server version")
    # Header lines only: no virtual service in the VM's root namespace.
    assert len(lines) == 3, out


def test_fresh_namespace_has_its_own_empty_ipvs_table(ipvs_module: None, lab: Lab) -> None:
    ns = lab.netns("director")
    out = ns.run(["ipvsadm", "-L", "-n"]).stdout
    assert len(out.strip().splitlines()) == 3, out


def test_sysctl_is_per_namespace(lab: Lab) -> None:
    a, b = lab.netns("a"), lab.netns("b")
    a.sysctl("net.ipv4.ip_forward", 1)
    assert a.sysctl("net.ipv4.ip_forward") == "1"
    assert b.sysctl("net.ipv4.ip_forward") == "0"
    assert a.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_two_hosts_on_a_switch_talk_http_and_udp(lab: Lab, family: str) -> None:
    lan = lab.lan(["client", "server"])
    addr = lan.ip4("server") if family == "ipv4" else lan.ip6("server")
    host = addr if family == "ipv4" else f"[{addr}]"
    http = lab.http_server(lan["server"], port=8080)
    udp = lab.udp_server(lan["server"], port=5353)

    assert http_get(lan["client"], f"http://{host}:8080/") == lan["server"].name
    assert udp_query(lan["client"], addr, 5353) == lan["server"].name
    assert (http.requests, udp.requests) == (1, 1)


def test_long_lived_connection_stays_on_its_server(lab: Lab) -> None:
    lan = lab.lan(["client", "rs1"])
    lab.http_server(lan["rs1"], name="one")
    session = lab.http_session(lan["client"], lan.ip4("rs1"))
    port = session.local_address[1]
    assert [session.get() for _ in range(3)] == ["one"] * 3
    assert session.local_address[1] == port  # one TCP connection for all three


def test_server_answers_for_a_vip_on_loopback(lab: Lab) -> None:
    # What a DR real server does: the VIP on lo, the wildcard listener accepts it, and the
    # UDP answer leaves from the VIP (not the host's own address).
    lan = lab.lan(["client", "rs"])
    rs = lan["rs"]
    rs.add_address("lo", "10.200.1.100/32")
    lan["client"].add_route("10.200.1.100/32", via=lan.ip4("rs"))
    lab.http_server(rs)
    lab.udp_server(rs, port=53)
    assert http_get(lan["client"], "http://10.200.1.100/") == rs.name
    assert udp_query(lan["client"], "10.200.1.100", 53) == rs.name


def test_lab_removes_what_it_made() -> None:
    with Lab() as lab:
        lan = lab.lan(["x"])
        lab.http_server(lan["x"])
        names = [ns.name for ns in lab]
    listed = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True,
                            text=True).stdout
    assert not [n for n in names if n in listed], listed
