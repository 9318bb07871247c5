"""IFLA_INET_CONF messages, encoded and decoded without a kernel.

The expected bytes are built here with `struct`, independently of pyroute2, so a change in
how pyroute2 marshals our message classes shows up as a failure rather than as a request
the kernel silently acknowledges without applying.
"""

from __future__ import annotations

import os
import re
import socket
import struct
from pathlib import Path

import pytest

from lvs_operator.network.inetconf import (
    IPV4_DEVCONF,
    effective,
    parse_link_conf,
    set_inet_conf,
)

NESTED = 0x8000
NLMSG_ERROR, RTM_NEWLINK, RTM_GETLINK, RTM_SETLINK = 2, 16, 18, 19
IFLA_MTU, IFLA_IFNAME, IFLA_AF_SPEC = 4, 3, 26


def nla(kind: int, payload: bytes) -> bytes:
    pad = b"\0" * (-len(payload) % 4)
    return struct.pack("=HH", 4 + len(payload), kind) + payload + pad


def u32(kind: int, value: int) -> bytes:
    return nla(kind, struct.pack("=I", value))


def message(msg_type: int, flags: int, seq: int, index: int, attrs: bytes) -> bytes:
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), msg_type, flags, seq, 0) + body


def test_devconf_ids_that_realserver_relies_on():
    assert IPV4_DEVCONF["rp_filter"] == 8
    assert IPV4_DEVCONF["arp_announce"] == 18
    assert IPV4_DEVCONF["arp_ignore"] == 19


def test_devconf_table_matches_the_kernel_header_where_installed():
    header = Path("/usr/include/linux/ip.h")
    if not header.exists():
        reason = "linux/ip.h not installed (Debian package linux-libc-dev)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason}: CI must check the table against the header", pytrace=False)
        pytest.skip(reason)
    text = header.read_text()
    body = text[text.index("IPV4_DEVCONF_FORWARDING=1") : text.index("__IPV4_DEVCONF_MAX")]
    names = re.findall(r"IPV4_DEVCONF_(\w+)", body)
    assert len(names) == len(IPV4_DEVCONF)
    # The header's names differ from /proc/sys's in places (ARPFILTER = arp_filter, ...);
    # the numbers, in order, are what matters.
    assert list(IPV4_DEVCONF.values()) == list(range(1, len(names) + 1))
    by_header = dict(zip(names, IPV4_DEVCONF, strict=True))
    assert by_header["RP_FILTER"] == "rp_filter"
    assert by_header["ARP_ANNOUNCE"] == "arp_announce"
    assert by_header["ARP_IGNORE"] == "arp_ignore"
    assert by_header["ARPFILTER"] == "arp_filter"
    assert by_header["NOXFRM"] == "disable_xfrm"
    assert by_header["SRC_VMARK"] == "src_valid_mark"


class Kernel:
    """Stands in for the NETLINK_ROUTE socket: records each request and answers as the kernel
    does, RTM_GETLINK with interface eth0 (index 4) holding `conf`, anything else with an ACK."""

    def __init__(self, conf: list[int]) -> None:
        self.conf = conf
        self.sent: list[bytes] = []

    def socket(self, *args: object) -> Kernel:
        return self

    def bind(self, address: object) -> None:
        pass

    def setsockopt(self, *args: object) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        request = self.sent[-1]
        msg_type, _flags, seq = struct.unpack_from("=HHI", request, 4)
        ack = struct.pack("=IHHIIi", 36, NLMSG_ERROR, 0, seq, 0, 0) + request[:16]
        if msg_type != RTM_GETLINK:
            return ack
        link = reply("eth0", self.conf)
        return link[:8] + struct.pack("=I", seq) + link[12:] + ack

    def setlink(self) -> bytes:
        """The one RTM_SETLINK request sent, its sequence number zeroed."""
        (sent,) = (m for m in self.sent if struct.unpack_from("=H", m, 4)[0] == RTM_SETLINK)
        return sent[:8] + b"\0" * 4 + sent[12:]


def set_on_eth0(monkeypatch, values: dict[str, int]) -> bytes:
    """Return the RTM_SETLINK request set_inet_conf sends for `values` (read back as set)."""
    conf = [0] * len(IPV4_DEVCONF)
    for name, value in values.items():
        conf[IPV4_DEVCONF[name] - 1] = value
    kernel = Kernel(conf)
    with monkeypatch.context() as patch:
        patch.setattr(socket, "socket", kernel.socket)
        assert {k: v for k, v in set_inet_conf("eth0", values).items() if k in values} == values
    return kernel.setlink()


def test_set_inet_conf_bytes(monkeypatch):
    encoded = set_on_eth0(monkeypatch, {"arp_ignore": 1, "arp_announce": 2, "rp_filter": 0})
    conf = u32(8, 0) + u32(18, 2) + u32(19, 1)  # in IPV4_DEVCONF order
    attrs = nla(IFLA_AF_SPEC | NESTED, nla(socket.AF_INET | NESTED, nla(1 | NESTED, conf)))
    assert encoded == message(RTM_SETLINK, 0x1 | 0x4, 0, 4, attrs)


def test_set_inet_conf_orders_attributes_by_id_whatever_the_mapping_order(monkeypatch):
    a = set_on_eth0(monkeypatch, {"rp_filter": 0, "arp_ignore": 1})
    b = set_on_eth0(monkeypatch, {"arp_ignore": 1, "rp_filter": 0})
    assert a == b


def test_set_inet_conf_of_one_setting_is_not_empty(monkeypatch):
    # The trap this guards against: an AF_INET block with nothing in it is acknowledged by
    # the kernel as a success.
    encoded = set_on_eth0(monkeypatch, {"arp_ignore": 1})
    assert encoded.endswith(u32(19, 1))


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"arp_ignor": 1}, "unknown IPv4 interface setting"),
        ({"arp_ignore": -1}, "not a u32"),
        ({"rp_filter": 2**32}, "not a u32"),
    ],
)
def test_set_inet_conf_refuses_bad_input(values, match):
    with pytest.raises(ValueError, match=match):
        set_inet_conf("eth0", values)  # before any request


def reply(name: str, conf: list[int] | None, *, extra_af: bool = True) -> bytes:
    attrs = nla(IFLA_IFNAME, name.encode() + b"\0") + u32(IFLA_MTU, 1500)
    af = b""
    if conf is not None:
        array = struct.pack(f"={len(conf)}I", *conf)
        af += nla(socket.AF_INET | NESTED, nla(1, array))
    if extra_af:
        af += nla(socket.AF_INET6 | NESTED, u32(1, 0x80000000))  # IFLA_INET6_FLAGS
    attrs += nla(IFLA_AF_SPEC | NESTED, af)
    return message(RTM_NEWLINK, 0, 1, 4, attrs)


def test_parse_link_conf_reads_the_u32_array():
    conf = [0] * 33
    conf[8 - 1] = 2  # rp_filter
    conf[18 - 1] = 2  # arp_announce
    conf[19 - 1] = 1  # arp_ignore
    name, values = parse_link_conf(reply("eth0", conf))
    assert name == "eth0"
    assert values is not None
    assert (values["rp_filter"], values["arp_announce"], values["arp_ignore"]) == (2, 2, 1)
    assert len(values) == len(IPV4_DEVCONF)


def test_parse_link_conf_of_an_older_kernel_leaves_newer_settings_out():
    _, values = parse_link_conf(reply("eth1", [1] * 20))
    assert values is not None
    assert values["arp_ignore"] == 1
    assert "arp_evict_nocarrier" not in values


def test_parse_link_conf_without_ipv4():
    assert parse_link_conf(reply("wg0", None)) == ("wg0", None)
    assert parse_link_conf(reply("wg0", None, extra_af=False)) == ("wg0", None)


def test_effective_is_the_higher_of_all_and_interface():
    assert effective("arp_ignore", 1, 0) == 1
    assert effective("arp_ignore", 1, 3) == 3
    assert effective("rp_filter", 0, 2) == 2
    with pytest.raises(ValueError, match="forwarding"):
        effective("forwarding", 1, 0)
