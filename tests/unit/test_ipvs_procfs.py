"""`/proc/net/ip_vs` signatures (lvs_operator.ipvs.procfs), against text as the kernel prints it.

The text below follows `ip_vs_info_seq_show` (net/netfilter/ipvs/ip_vs_ctl.c), spacing
included; the kernel tier checks the same against a real kernel's file.
"""

from __future__ import annotations

import ipaddress

from lvs_operator.ipvs import procfs
from lvs_operator.model import (
    Forwarding,
    Persistence,
    Protocol,
    RealServer,
    ServiceKey,
    VirtualService,
)

A = ipaddress.ip_address
HEADER = ("IP Virtual Server version 1.2.1 (size=4096)\n"
          "Prot LocalAddress:Port Scheduler Flags\n"
          "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n")
SERVICES = [
    VirtualService(ServiceKey.inet(Protocol.TCP, A("192.0.2.1"), 80), scheduler="wrr").with_reals([
        RealServer(A("10.0.0.1"), 80, weight=3),
        RealServer(A("10.0.0.2"), 8080, forwarding=Forwarding.NAT, weight=0)]),
    VirtualService(ServiceKey.inet(Protocol.UDP, A("192.0.2.2"), 53), scheduler="rr",
                   persistence=Persistence(300, 24), one_packet=True),
    VirtualService(ServiceKey.inet(Protocol.TCP, A("2001:db8::1"), 443), scheduler="sh",
                   persistence=Persistence(60, 128), one_packet=True).with_reals([
        RealServer(A("2001:db8::10"), 443, forwarding=Forwarding.TUNNEL)]),
    VirtualService(ServiceKey.mark(7), scheduler="lc"),
]
TEXT = HEADER + (
    "TCP  C0000201:0050 wrr  \n"
    "  -> 0A000002:1F90      Masq    0      0          2         \n"
    "  -> 0A000001:0050      Route   3      17         4         \n"
    "UDP  C0000202:0035 rr ops persistent 75000 FFFFFF00\n"
    "TCP  [2001:0db8:0000:0000:0000:0000:0000:0001]:01BB sh persistent 15000 80000000\n"
    "  -> [2001:0db8:0000:0000:0000:0000:0000:0010]:01BB      Tunnel  1      0          0"
    "         \n"
    "FWM  00000007 lc \n")


def test_signature_of_the_model_equals_the_kernels_text() -> None:
    assert procfs.parse(TEXT) == procfs.signature(SERVICES)


def test_counters_do_not_matter_but_weights_do() -> None:
    busier = TEXT.replace("Route   3      17         4", "Route   3      0          0")
    assert procfs.parse(busier) == procfs.signature(SERVICES)
    heavier = TEXT.replace("Route   3 ", "Route   4 ")
    assert procfs.parse(heavier) != procfs.signature(SERVICES)


def test_missing_or_extra_lines_differ() -> None:
    sign = procfs.signature(SERVICES)
    assert procfs.parse(TEXT.replace("FWM  00000007 lc \n", "")) != sign
    assert procfs.parse(TEXT + "FWM  00000008 lc \n") != sign
    assert procfs.parse(HEADER) == {}


def test_unknown_text_is_no_signature() -> None:
    assert procfs.parse("something else\n") is None
    assert procfs.parse(HEADER + "  -> 0A000001:0050 Route 1 0 0\n") is None  # no service


def test_fwmark_services_of_both_families_cannot_be_told_apart() -> None:
    both = [VirtualService(ServiceKey.mark(7)), VirtualService(ServiceKey.mark(7, family=6))]
    assert procfs.signature(both) is None
