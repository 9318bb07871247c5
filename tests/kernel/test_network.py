"""lvs_operator.network against the real kernel: VIPs, announcements, sysctls, interface settings.

Runs as root inside the test VM, each test in fresh namespaces of the `lab` fixture
(tests/kernel/netlab.py). The code under test runs in a thread that has entered the
namespace (`Netns.call`); the results are read back with independent tools (`ip -j`,
/proc/sys) rather than with the code under test.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from ipaddress import ip_address
from typing import Any

import pytest

from lvs_operator.network.announce import announce
from lvs_operator.network.errors import (
    InterfaceNotFound,
    NetlinkError,
    NetworkError,
    UnsupportedLinkKind,
)
from lvs_operator.network.inetconf import get_inet_conf, set_inet_conf
from lvs_operator.network.links import ensure_link, get_link, interface_exists, set_up
from lvs_operator.network.sysctl import DirectorSysctls, apply_director_sysctls
from lvs_operator.network.vip import (
    add_vip,
    list_created,
    list_lifetimes,
    list_vips,
    remove_vip,
    set_lifetime,
)

pytestmark = pytest.mark.kernel


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def addresses(ns, ifname: str) -> dict[str, dict[str, Any]]:
    """`ip -j address show` of one interface, keyed by address."""
    info = json.loads(ns.ip("-j", "address", "show", "dev", ifname))[0]["addr_info"]
    return {a["local"]: a for a in info}


def neighbour_mac(ns, address: str, ifname: str = "eth0") -> str | None:
    entries = json.loads(ns.ip("-j", "neigh", "show", address, "dev", ifname))
    return entries[0].get("lladdr") if entries else None


# -- VIPs ----------------------------------------------------------------------------------


def test_vip_add_and_remove_are_idempotent(lab):
    host = lab.lan(["host"])["host"]
    # DAD on, so that an address added without nodad would be visibly tentative.
    host.sysctl("net.ipv6.conf.eth0.accept_dad", 1)
    node_address = "10.200.0.10"  # the lan's own /24 address: not a VIP
    v4, v6 = ip_address("192.0.2.10"), ip_address("2001:db8::10")

    assert host.call(add_vip, "eth0", v4) is True
    assert host.call(add_vip, "eth0", v4) is False
    assert host.call(add_vip, "eth0", v6) is True
    assert host.call(add_vip, "eth0", v6) is False

    shown = addresses(host, "eth0")
    assert shown["192.0.2.10"]["prefixlen"] == 32
    assert shown["2001:db8::10"]["prefixlen"] == 128
    assert shown["2001:db8::10"].get("nodad") is True
    assert "tentative" not in shown["2001:db8::10"], "an IPv6 VIP must be usable at once"
    assert host.call(list_vips, "eth0") == [v4, v6]

    assert host.call(remove_vip, "eth0", v4) is True
    assert host.call(remove_vip, "eth0", v4) is False
    assert host.call(remove_vip, "eth0", v6) is True
    assert host.call(remove_vip, "eth0", v6) is False
    # The node's own /24 address shares no prefix with a VIP: never removed as one.
    assert host.call(remove_vip, "eth0", ip_address(node_address)) is False
    shown = addresses(host, "eth0")
    assert node_address in shown
    assert "192.0.2.10" not in shown and "2001:db8::10" not in shown
    assert host.call(list_vips, "eth0") == []


def test_a_vip_lifetime_is_set_refreshed_and_expires(lab):
    host = lab.lan(["host"])["host"]
    v4, v6 = ip_address("192.0.2.30"), ip_address("2001:db8::30")
    host.call(add_vip, "eth0", v4)
    host.call(add_vip, "eth0", v6)
    assert host.call(list_lifetimes, "eth0") == {v4: None, v6: None}  # forever

    host.call(set_lifetime, "eth0", [v4, v6], 30)
    shown = addresses(host, "eth0")
    for vip in ("192.0.2.30", "2001:db8::30"):
        assert 28 <= shown[vip]["valid_life_time"] <= 30
        assert 28 <= shown[vip]["preferred_life_time"] <= 30
    assert shown["2001:db8::30"].get("nodad") is True
    assert shown["10.200.0.10"]["valid_life_time"] == 2**32 - 1  # the node's own: untouched
    lifetimes = host.call(list_lifetimes, "eth0")
    assert lifetimes.keys() == {v4, v6} and all(28 <= s <= 30 for s in lifetimes.values() if s)

    host.call(set_lifetime, "eth0", [v4, v6], 1)  # not refreshed again: the kernel deletes
    wait_until(lambda: host.call(list_vips, "eth0") == [], "the VIPs to expire", timeout=10)
    assert host.call(list_lifetimes, "eth0") == {}


def test_a_vips_creation_stamp_survives_a_refresh_not_a_new_address(lab):
    """What the keepalived watchdog relies on to catch a VIP its refresh made again."""
    host = lab.lan(["host"])["host"]
    v4, v6 = ip_address("192.0.2.31"), ip_address("2001:db8::31")
    for vip in (v4, v6):
        host.call(add_vip, "eth0", vip)
    first = host.call(list_created, "eth0")
    assert first.keys() == {v4, v6} and all(first.values())
    time.sleep(0.05)
    host.call(set_lifetime, "eth0", [v4, v6], 30)
    assert host.call(list_created, "eth0") == first  # a refresh keeps the stamp
    host.call(remove_vip, "eth0", v4)
    time.sleep(0.05)  # the stamp counts hundredths of a second
    host.call(set_lifetime, "eth0", [v4], 30)  # rtnetlink: a replacement creates it again
    again = host.call(list_created, "eth0")
    assert again[v6] == first[v6] and again[v4] > first[v4]


def test_vips_on_lo_leave_the_loopback_addresses_out(lab):
    ns = lab.netns("lo")
    vip = ip_address("192.0.2.20")
    ns.call(add_vip, "lo", vip)
    assert ns.call(list_vips, "lo") == [vip]


def test_missing_interface_is_named(lab):
    ns = lab.netns("none")
    with pytest.raises(InterfaceNotFound, match=r"'eth9' does not exist.*interfaces here: lo"):
        ns.call(add_vip, "eth9", ip_address("192.0.2.1"))
    with pytest.raises(InterfaceNotFound, match="'eth9'"):
        ns.call(remove_vip, "eth9", ip_address("192.0.2.1"))


# -- announcements -------------------------------------------------------------------------


def test_gratuitous_arp_moves_a_neighbours_entry(lab):
    lan = lab.lan(["director", "neighbour"])
    director, neighbour = lan["director"], lan["neighbour"]
    vip = "10.200.0.100"
    # The neighbour still believes the VIP is at the old director's MAC (a failover).
    neighbour.ip("neigh", "replace", vip, "lladdr", "02:00:00:00:00:99", "dev", "eth0",
                 "nud", "stale")
    director.call(add_vip, "eth0", ip_address(vip))
    mac = director.call(get_link, "eth0").mac_text

    director.call(announce, "eth0", ip_address(vip), count=1)

    wait_until(lambda: neighbour_mac(neighbour, vip) == mac, f"{vip} -> {mac} at the neighbour")


def test_unsolicited_neighbour_advertisement_moves_a_neighbours_entry(lab):
    lan = lab.lan(["director", "neighbour"])
    director, neighbour = lan["director"], lan["neighbour"]
    vip = "fd00:200::100"
    neighbour.ip("-6", "neigh", "replace", vip, "lladdr", "02:00:00:00:00:99", "dev", "eth0",
                 "nud", "stale")
    director.call(add_vip, "eth0", ip_address(vip))
    mac = director.call(get_link, "eth0").mac_text

    director.call(announce, "eth0", ip_address(vip), count=1)

    wait_until(lambda: neighbour_mac(neighbour, vip) == mac, f"{vip} -> {mac} at the neighbour")


def test_announce_on_a_device_without_ethernet_address_is_refused(lab):
    ns = lab.netns("noeth")
    with pytest.raises(NetworkError, match=r"cannot announce 192.0.2.1 on interface 'lo'"):
        ns.call(announce, "lo", ip_address("192.0.2.1"))


# -- sysctls -------------------------------------------------------------------------------


def test_director_sysctls_are_applied_read_back_and_idempotent(ipvs_module, lab):
    director, other = lab.netns("dir"), lab.netns("other")
    for ns in (director, other):
        for name in ("conntrack", "expire_nodest_conn", "expire_quiescent_template",
                     "conn_reuse_mode"):
            ns.sysctl(f"net.ipv4.vs.{name}", 0)
        ns.sysctl("net.ipv4.ip_forward", 0)
    settings = DirectorSysctls(ip_forward=True)

    changes = director.call(apply_director_sysctls, settings)

    assert [str(c) for c in changes] == [
        "net.ipv4.ip_forward: 0 -> 1",
        "net.ipv4.vs.conntrack: 0 -> 1",
        "net.ipv4.vs.expire_nodest_conn: 0 -> 1",
        "net.ipv4.vs.expire_quiescent_template: 0 -> 1",
        "net.ipv4.vs.conn_reuse_mode: 0 -> 1",
    ]
    for name, value in settings.values():
        assert director.sysctl(name) == value, name
        assert other.sysctl(name) == "0", f"{name} leaked into another namespace"
    assert director.call(apply_director_sysctls, settings) == []


# -- per-interface IPv4 settings through netlink ---------------------------------------------


def test_inet_conf_reads_what_proc_sys_shows(lab):
    host = lab.lan(["host"])["host"]
    host.sysctl("net.ipv4.conf.eth0.arp_ignore", 2)
    host.sysctl("net.ipv4.conf.eth0.rp_filter", 1)
    conf = host.call(get_inet_conf, "eth0")
    compared = 0
    for name, value in conf.items():
        try:
            shown = host.sysctl(f"/proc/sys/net/ipv4/conf/eth0/{name}")
        except FileNotFoundError:
            continue  # not every setting has a /proc/sys file
        assert int(shown) == value, name
        compared += 1
    assert compared >= 30
    assert (conf["arp_ignore"], conf["rp_filter"]) == (2, 1)


def test_inet_conf_set_through_netlink_shows_in_proc_sys(lab):
    host = lab.lan(["host"])["host"]
    host.sysctl("net.ipv4.conf.eth0.rp_filter", 1)
    wanted = {"arp_ignore": 1, "arp_announce": 2, "rp_filter": 0, "log_martians": 1}

    after = host.call(set_inet_conf, "eth0", wanted)

    for name, value in wanted.items():
        assert after[name] == value
        assert host.sysctl(f"/proc/sys/net/ipv4/conf/eth0/{name}") == str(value), name
    # Other interfaces are untouched.
    assert host.sysctl("net.ipv4.conf.lo.arp_announce") == "0"


def test_inet_conf_on_missing_interface_is_named(lab):
    ns = lab.netns("none")
    with pytest.raises(InterfaceNotFound, match="'eth7'"):
        ns.call(set_inet_conf, "eth7", {"arp_ignore": 1})


# -- links ---------------------------------------------------------------------------------


def test_ensure_link_and_set_up(lab):
    ns = lab.netns("links")
    assert ns.call(ensure_link, "dummy7", "dummy") is True
    assert ns.call(ensure_link, "dummy7", "dummy") is False
    assert ns.call(set_up, "dummy7") is True
    assert ns.call(set_up, "dummy7") is False
    info = json.loads(ns.ip("-j", "-d", "link", "show", "dummy7"))[0]
    assert info["linkinfo"]["info_kind"] == "dummy"
    assert "UP" in info["flags"]
    with pytest.raises(NetlinkError, match=r"an interface of kind dummy already has that name"):
        ns.call(ensure_link, "dummy7", "ipip")


def test_interface_exists_in_this_namespace_only(lab):
    # How the agent tells that kube-proxy runs in IPVS mode on its node (kube-ipvs0).
    ns, other = lab.netns("kubeproxy"), lab.netns("plain")
    assert ns.call(interface_exists, "kube-ipvs0") is False
    ns.ip("link", "add", "kube-ipvs0", "type", "dummy")
    assert ns.call(interface_exists, "kube-ipvs0") is True
    assert other.call(interface_exists, "kube-ipvs0") is False
    assert ns.call(interface_exists, "lo") is True


def test_unknown_link_kind_says_which_module_to_load(lab):
    ns = lab.netns("kind")
    with pytest.raises(UnsupportedLinkKind, match=r"modprobe nosuchkind"):
        ns.call(ensure_link, "x0", "nosuchkind")
