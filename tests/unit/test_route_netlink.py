"""network._netlink's direct (de)coding of the hot rtnetlink messages, checked against
pyroute2's generic coding of the same messages. Pure: no socket."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from lvs_operator.network import _netlink as nl
from lvs_operator.network.links import _link_from


def _with_header(payload: bytes, msg_type: int) -> bytes:
    return nl.encode(payload, msg_type, 0, seq=7)


def test_attribute_pads_to_four_bytes_and_reads_back():
    packed = nl.attribute(nl.IFLA_IFNAME, b"eth0\0")
    assert len(packed) == 12  # 4 header + 5 value + 3 padding
    assert nl.attributes(packed, 0) == {nl.IFLA_IFNAME: b"eth0\0"}
    # The nested flag (0x8000) is not part of the type.
    nested = struct.pack("=HH", 8, nl.IFLA_LINKINFO | 0x8000) + b"abcd"
    assert nl.attributes(nested, 0) == {nl.IFLA_LINKINFO: b"abcd"}


def test_a_truncated_attribute_is_refused():
    with pytest.raises(ValueError, match="malformed netlink attribute at byte 0"):
        nl.attributes(struct.pack("=HH", 40, 1) + b"xx", 0)


def test_requests_match_pyroute2s_encoding():
    msg = nl.LinkMsg()
    msg["attrs"] = [("IFLA_IFNAME", "eth0")]
    assert nl.encode(nl.link_request("eth0"), nl.RTM_GETLINK, 5, 9) == \
        nl.encode(msg, nl.RTM_GETLINK, 5, 9)
    assert nl.encode(nl.addr_dump_request(), nl.RTM_GETADDR, nl.NLM_F_DUMP, 3) == \
        nl.encode(nl.AddrMsg(), nl.RTM_GETADDR, nl.NLM_F_DUMP, 3)


def test_a_link_message_reads_as_pyroute2_reads_it():
    info = nl.attribute(nl.IFLA_INFO_KIND, b"veth\0")
    payload = (struct.pack("=BxHiII", 0, 1, 42, 0x1043, 0)
               + nl.attribute(nl.IFLA_IFNAME, b"veth-a\0")
               + nl.attribute(nl.IFLA_ADDRESS, bytes.fromhex("020000000001"))
               + nl.attribute(nl.IFLA_LINKINFO | 0x8000, info)
               + nl.attribute(99, b"unknown attributes are skipped"))
    link = _link_from(_with_header(payload, nl.RTM_NEWLINK))
    assert (link.name, link.index, link.flags, link.kind, link.mac_text) == \
        ("veth-a", 42, 0x1043, "veth", "02:00:00:00:00:01")
    decoded = nl.decode(nl.LinkMsg, _with_header(payload, nl.RTM_NEWLINK))
    assert (decoded.get_attr("IFLA_IFNAME"), decoded["index"]) == ("veth-a", 42)
    bare = _link_from(_with_header(struct.pack("=BxHiII", 0, 772, 1, 0x49, 0)
                                   + nl.attribute(nl.IFLA_IFNAME, b"lo\0"), nl.RTM_NEWLINK))
    assert (bare.name, bare.kind, bare.mac) == ("lo", None, b"")


def test_an_address_message_reads_as_pyroute2_reads_it():
    vip = ipaddress.ip_address("10.200.0.110")
    payload = (struct.pack("=BBBBI", 2, 32, 0x80, 0, 3)
               + nl.attribute(nl.IFA_ADDRESS, vip.packed)
               + nl.attribute(nl.IFA_LOCAL, vip.packed))
    index, prefixlen, attrs = nl.addr_fields(_with_header(payload, nl.RTM_NEWADDR))
    assert (index, prefixlen, ipaddress.ip_address(attrs[nl.IFA_LOCAL])) == (3, 32, vip)
    decoded = nl.decode(nl.AddrMsg, _with_header(payload, nl.RTM_NEWADDR))
    assert (decoded["index"], decoded["prefixlen"]) == (index, prefixlen)
    assert bytes(decoded.get_attr("IFA_LOCAL")) == attrs[nl.IFA_LOCAL]
