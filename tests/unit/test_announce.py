"""Gratuitous ARP and unsolicited neighbour advertisement packets, built without a socket."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest

from lvs_operator.network.announce import announce, garp_frame, unsolicited_na

MAC = bytes.fromhex("02005e0001aa")


def test_garp_frame_is_a_broadcast_arp_announcement():
    frame = garp_frame(MAC, IPv4Address("192.0.2.10"))
    expected = bytes.fromhex(
        "ffffffffffff" "02005e0001aa" "0806"  # Ethernet: broadcast, from us, ARP
        "0001" "0800" "06" "04" "0001"  # Ethernet/IPv4, request
        "02005e0001aa" "c000020a"  # sender: our MAC, the VIP
        "000000000000" "c000020a"  # target: zero MAC, the VIP again (gratuitous)
    )
    assert frame == expected
    assert len(frame) == 42


def test_garp_frame_fields():
    frame = garp_frame(MAC, IPv4Address("10.1.2.3"))
    dst, src, ethertype = struct.unpack_from("!6s6sH", frame)
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = struct.unpack_from(
        "!HHBBH6s4s6s4s", frame, 14
    )
    assert (dst, src, ethertype) == (b"\xff" * 6, MAC, 0x0806)
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    assert sha == MAC and tha == b"\0" * 6
    assert spa == tpa == IPv4Address("10.1.2.3").packed


def test_unsolicited_na_sets_override_only_and_carries_our_mac():
    message = unsolicited_na(MAC, IPv6Address("2001:db8::10"))
    expected = bytes.fromhex(
        "88" "00" "0000"  # type 136, code 0, checksum left to the kernel
        "20000000"  # flags: Override set; Router and Solicited clear
        "20010db8000000000000000000000010"  # target address
        "02" "01" "02005e0001aa"  # option: target link-layer address, 8 bytes
    )
    assert message == expected
    assert len(message) == 32


@pytest.mark.parametrize("mac", [b"", b"\x01\x02\x03", b"\x00" * 8])
def test_bad_mac_is_refused(mac):
    with pytest.raises(ValueError, match="6-byte"):
        garp_frame(mac, IPv4Address("192.0.2.1"))
    with pytest.raises(ValueError, match="6-byte"):
        unsolicited_na(mac, IPv6Address("2001:db8::1"))


@pytest.mark.parametrize(("count", "interval"), [(0, 0.1), (-1, 0.1), (1, -0.5)])
def test_announce_checks_its_arguments_before_touching_the_network(count, interval):
    with pytest.raises(ValueError, match="count >= 1"):
        announce("does-not-exist0", IPv4Address("192.0.2.1"), count=count, interval=interval)
