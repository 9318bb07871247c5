"""network.vip's address lifetimes: the RTM_NEWADDR replacement set_lifetime sends (read
back with pyroute2's own decoder) and the lifetimes list_lifetimes reads. No socket: a
fake RouteSocket records requests and answers dumps."""

from __future__ import annotations

import socket
import struct
from ipaddress import ip_address
from typing import ClassVar

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from lvs_operator.network import _netlink as nl
from lvs_operator.network import vip
from lvs_operator.network.links import Link


class FakeRouteSocket:
    sent: ClassVar[list[tuple[bytes, int, int]]] = []
    replies: ClassVar[list[bytes]] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def request(self, msg, msg_type, flags, *, what):
        FakeRouteSocket.sent.append((nl.encode(msg, msg_type, flags, 1), msg_type, flags))
        return FakeRouteSocket.replies


@pytest.fixture(autouse=True)
def fake_kernel(monkeypatch):
    FakeRouteSocket.sent, FakeRouteSocket.replies = [], []
    monkeypatch.setattr(nl, "RouteSocket", FakeRouteSocket)
    monkeypatch.setattr(vip, "get_link", lambda name: Link(name=name, index=3, flags=0x1043))


def test_set_lifetime_replaces_each_address_with_a_cacheinfo():
    vip.set_lifetime("eth0", [ip_address("10.0.0.50"), ip_address("fd00::50")], 2)
    (v4, type4, flags4), (v6, _, _) = FakeRouteSocket.sent
    assert (type4, flags4) == (nl.RTM_NEWADDR, nl.NLM_F_REPLACE)  # never NLM_F_CREATE
    msg = ifaddrmsg(v4)
    msg.decode()
    assert (msg["family"], msg["prefixlen"], msg["index"]) == (socket.AF_INET, 32, 3)
    assert msg.get_attr("IFA_LOCAL") == "10.0.0.50"
    info = msg.get_attr("IFA_CACHEINFO")
    assert (info["ifa_valid"], info["ifa_preferred"]) == (2, 2)
    msg6 = ifaddrmsg(v6)
    msg6.decode()
    assert (msg6["family"], msg6["prefixlen"]) == (socket.AF_INET6, 128)
    assert msg6.get_attr("IFA_FLAGS") == nl.IFA_F_NODAD
    assert msg6.get_attr("IFA_CACHEINFO")["ifa_valid"] == 2


def test_a_lifetime_under_a_second_is_refused():
    with pytest.raises(ValueError, match="address lifetime 0: must be 1 second or more"):
        vip.set_lifetime("eth0", [ip_address("10.0.0.50")], 0)
    assert FakeRouteSocket.sent == []


def addr_reply(address: str, prefixlen: int, *, valid: int, index: int = 3) -> bytes:
    packed = ip_address(address).packed
    family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    payload = (struct.pack("=BBBBI", family, prefixlen, 0, 0, index)
               + nl.attribute(nl.IFA_ADDRESS, packed)
               + nl.attribute(nl.IFA_CACHEINFO, struct.pack("=IIII", valid, valid, 1, 2)))
    return nl.encode(payload, nl.RTM_NEWADDR, 0, 1)


def test_list_lifetimes_reads_the_vips_seconds_left():
    FakeRouteSocket.replies = [
        addr_reply("10.0.0.1", 24, valid=nl.INFINITY_LIFE_TIME),  # not a VIP
        addr_reply("10.0.0.50", 32, valid=2),
        addr_reply("fd00::50", 128, valid=nl.INFINITY_LIFE_TIME),
        addr_reply("10.0.0.60", 32, valid=5, index=4),  # another interface
    ]
    assert vip.list_lifetimes("eth0") == {ip_address("10.0.0.50"): 2,
                                          ip_address("fd00::50"): None}
