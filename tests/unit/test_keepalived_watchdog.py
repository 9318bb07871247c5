"""keepalived.watchdog: which VIPs keep a lifetime and which are deleted, on a fake clock,
a fake kernel and a fake capture; the BPF program run by a small interpreter; advert
parsing."""

from __future__ import annotations

import os
from ipaddress import IPv4Address, ip_address

import pytest

from lvs_operator import vrrp
from lvs_operator.keepalived import watchdog
from lvs_operator.keepalived.metrics import Metrics
from lvs_operator.model import IPAddress
from lvs_operator.network.errors import InterfaceNotFound

VIP, VIP6, OTHER = ip_address("10.0.0.50"), ip_address("fd00::50"), ip_address("10.0.0.51")
FOREIGN = ip_address("10.0.0.99")  # a /32 on the interface that instances.json never lists
W = watchdog.window(0.1)  # the silence that condemns an instance advertising every 0.1 s


def shared(*, lifetime=2, advert=0.1, interface="eth0") -> vrrp.Shared:
    return vrrp.Shared(interface=interface, advert_seconds=advert,
                       peers=(IPv4Address("10.0.0.2"),), vip_lifetime_seconds=lifetime,
                       instances={"lvs-a": (51, ((VIP, "eth0"), (VIP6, None))),
                                  "lvs-b": (52, ((OTHER, "eth1"),))})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeAddresses:
    """The kernel's host addresses by interface, and what was done to them."""

    def __init__(self, held: dict[str, set[IPAddress]]) -> None:
        self.held = held
        self.lifetimes: list[tuple[str, tuple[IPAddress, ...], int]] = []
        self.removed: list[tuple[str, object]] = []
        self.stamps: dict[IPAddress, int] = {}
        self.resurrect: set[IPAddress] = set()

    def list_vips(self, interface):
        if interface not in self.held:
            raise InterfaceNotFound(interface)
        return sorted(self.held[interface], key=lambda a: (a.version, int(a)))

    def list_created(self, interface):
        return {a: self.stamps.get(a, 1) for a in self.list_vips(interface)}

    def set_lifetime(self, interface, addresses, seconds):
        self.lifetimes.append((interface, tuple(addresses), seconds))
        for address in addresses:
            if address in self.resurrect:
                # keepalived deleted it just before: the replacement made it anew.
                self.stamps[address] = self.stamps.get(address, 1) + 1
                self.held[interface].add(address)

    def remove_vip(self, interface, address):
        self.removed.append((interface, address))
        if address in self.held.get(interface, set()):
            self.held[interface].discard(address)
            return True
        return False


class FakeCapture:
    """A capture whose queued adverts a test puts in `queued`."""

    def __init__(self, interface) -> None:
        self.interface = interface
        self.alive = True
        self.queued: list[int] = []
        self._never, self._unused = os.pipe()  # nothing is ever written: never readable

    def fileno(self) -> int:
        return self._never

    def drain(self) -> list[int]:
        queued, self.queued = self.queued, []
        return queued

    def close(self) -> None:
        self.alive = False
        os.close(self._never)
        os.close(self._unused)


def failing_capture(interface):
    raise OSError(19, "No such device")


def make(held, *, capture=FakeCapture, data=None):
    clock = Clock()
    metrics = Metrics()
    kernel = FakeAddresses(held)
    dog = watchdog.Watchdog(metrics, addresses=kernel, capture=capture, clock=clock)
    dog.update(data or shared())
    return dog, kernel, clock, metrics


def test_window_is_four_adverts_but_never_under_half_a_second():
    assert watchdog.window(0.05) == 1.5
    assert watchdog.window(0.1) == 1.5
    assert watchdog.window(1) == 4


def test_adverts_flowing_refresh_the_lifetime_of_the_listed_vips_held():
    dog, kernel, clock, metrics = make({"eth0": {VIP, VIP6, FOREIGN}, "eth1": set()})
    clock.now += 5  # the start-up grace is over
    dog.advert(51)
    clock.now += 0.3
    verdict = dog.tick()
    assert verdict.delete == []
    assert kernel.lifetimes == [("eth0", (VIP, VIP6), 2)]
    assert kernel.removed == []
    assert metrics.value("lvs_vrrp_vip_lifetime_refreshes_total") == 2
    assert metrics.value("lvs_vrrp_adverts_sent_total", vrid="51") == 1


def test_a_vip_the_refresh_made_again_is_deleted_at_once():
    """keepalived went BACKUP and deleted the VIP between the listing and the refresh: the
    replacement created it anew (rtnetlink has no "replace only"); its new creation stamp
    gives it away, and it goes in the same pass (not 1.5 s later, on silence)."""
    dog, kernel, clock, _ = make({"eth0": {VIP, VIP6}})
    clock.now += 5
    dog.advert(51)
    kernel.resurrect = {VIP}
    dog.tick()
    assert kernel.removed == [("eth0", VIP)]
    assert kernel.held["eth0"] == {VIP6}
    # A refresh that only updates the lifetime (same stamp) deletes nothing.
    kernel.resurrect = set()
    kernel.held["eth0"].add(VIP)
    dog.advert(51)
    dog.tick()
    assert kernel.removed == [("eth0", VIP)]


def test_adverts_stopping_delete_the_vips_at_once_and_only_the_listed_ones():
    dog, kernel, clock, metrics = make({"eth0": {VIP, VIP6, FOREIGN}, "eth1": {OTHER}})
    clock.now += 5
    dog.advert(51)
    dog.advert(52)
    dog.tick()
    kernel.lifetimes.clear()
    clock.now += W - 0.1
    dog.advert(52)  # instance b still advertises, a went silent
    clock.now += 0.2
    verdict = dog.tick()
    assert [(i, a) for i, a, _ in verdict.delete] == [("eth0", VIP), ("eth0", VIP6)]
    assert f"lvs-a (VRID 51) has sent no advert for {W + 0.1:.2f} s" in verdict.delete[0][2]
    assert kernel.removed == [("eth0", VIP), ("eth0", VIP6)]
    assert kernel.held == {"eth0": {FOREIGN}, "eth1": {OTHER}}
    assert kernel.lifetimes == [("eth1", (OTHER,), 2)]
    assert metrics.value("lvs_vrrp_vips_deleted_total", reason="no_adverts") == 2


def test_adverts_queued_while_the_watchdog_was_starved_count_before_it_judges():
    made: list[FakeCapture] = []

    def capture(interface):
        made.append(FakeCapture(interface))
        return made[-1]

    dog, kernel, clock, _ = make({"eth0": {VIP}, "eth1": set()}, capture=capture)
    dog.tick()
    clock.now += 5  # no CPU for us for 5 s; keepalived advertised all along
    made[-1].queued += [51] * 50
    assert dog.tick().delete == []
    assert kernel.removed == []
    clock.now += W + 0.1  # and now it is silent
    assert [a for _, a, _ in dog.tick().delete] == [VIP]


def test_a_vip_that_just_appeared_gets_a_window_before_silence_counts():
    dog, kernel, clock, _ = make({"eth0": set(), "eth1": set()})
    clock.now += 5
    dog.tick()
    kernel.held["eth0"].add(VIP)  # a new master adds its VIPs, then advertises
    dog.tick()
    clock.now += W - 0.1
    dog.tick()
    assert kernel.removed == []
    assert [a for _, a, _ in kernel.lifetimes] == [(VIP,), (VIP,)]
    clock.now += 0.2  # and it never advertised
    assert [a for _, a, _ in dog.tick().delete] == [VIP]


def test_a_new_instances_json_gets_a_window_too():
    dog, _, clock, _ = make({"eth0": {VIP}, "eth1": set()})
    clock.now += 5
    dog.advert(51)
    dog.tick()
    clock.now += 1
    moved = vrrp.Shared(interface="eth0", advert_seconds=0.1, peers=(),
                        vip_lifetime_seconds=2, instances={"lvs-c": (77, ((VIP, None),))})
    dog.update(moved)  # keepalived has not reloaded yet: VRID 77 is silent
    assert dog.tick().delete == []
    clock.now += W + 0.1
    assert [a for _, a, _ in dog.tick().delete] == [VIP]


def test_without_a_capture_nothing_is_deleted_but_lifetimes_are_kept():
    dog, kernel, clock, _ = make({"eth0": {VIP}, "eth1": set()}, capture=failing_capture)
    for _ in range(4):
        clock.now += 5
        assert dog.tick().delete == []
    assert kernel.removed == []
    assert len(kernel.lifetimes) == 4


def test_a_dead_capture_is_restarted_and_given_a_window():
    made: list[FakeCapture] = []

    def capture(interface):
        made.append(FakeCapture(interface))
        return made[-1]

    dog, _, clock, _ = make({"eth0": {VIP}, "eth1": set()}, capture=capture)
    clock.now += 5
    dog.tick()
    made[-1].alive = False
    clock.now += 5
    assert dog.tick().delete == []  # the new capture has seen nothing yet
    assert len(made) == 2
    made[-1].queued.append(51)
    clock.now += 0.3
    assert dog.tick().delete == []


def test_the_capture_follows_the_interface():
    made: list[FakeCapture] = []

    def capture(interface):
        made.append(FakeCapture(interface))
        return made[-1]

    dog, _, _, _ = make({"eth0": set(), "eth1": set()}, capture=capture)
    dog.tick()
    dog.tick()
    dog.update(shared(interface="bond0"))
    dog.tick()
    assert [(c.interface, c.alive) for c in made] == [("eth0", False), ("bond0", True)]


def test_lifetime_zero_turns_the_address_work_off():
    dog, kernel, clock, _ = make({"eth0": {VIP}, "eth1": set()}, data=shared(lifetime=0))
    clock.now += 60
    assert dog.tick() == watchdog.Verdict()
    assert kernel.lifetimes == [] and kernel.removed == []


def test_release_deletes_the_listed_vips_left_in_the_kernel():
    dog, kernel, _, metrics = make({"eth0": {VIP, FOREIGN}, "eth1": {OTHER}})
    assert sorted(dog.release(), key=str) == [("eth0", VIP), ("eth1", OTHER)]
    assert kernel.held == {"eth0": {FOREIGN}, "eth1": set()}
    assert metrics.value("lvs_vrrp_vips_deleted_total", reason="keepalived_exited") == 2


def test_a_missing_interface_is_logged_and_the_others_served(caplog):
    dog, kernel, clock, _ = make({"eth0": {VIP}})
    clock.now += 5
    dog.advert(51)
    dog.tick()
    assert kernel.lifetimes == [("eth0", (VIP,), 2)]
    assert "listing the VIPs of eth1" in caplog.text


# --- the capture's filter and parser -------------------------------------------------------

def run_bpf(program: list[tuple[int, int, int, int]], packet: bytes, *, pkttype: int,
            protocol: int) -> int:
    """A classic-BPF interpreter for the instructions the filter uses."""
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = program[pc]
        if code in (0x20, 0x30):  # ld / ldb absolute (with SKF_AD_OFF extensions)
            if k >= watchdog._SKF_AD_OFF:
                acc = {watchdog._SKF_AD_PKTTYPE: pkttype,
                       watchdog._SKF_AD_PROTOCOL: protocol}[k - watchdog._SKF_AD_OFF]
            elif code == 0x30:
                if k >= len(packet):
                    return 0
                acc = packet[k]
            else:
                acc = int.from_bytes(packet[k:k + 4], "big")
            pc += 1
        elif code == 0x15:  # jeq #k
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x06:  # ret #k
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def ipv4(proto: int, payload: bytes, *, ihl: int = 5) -> bytes:
    header = bytes([0x40 | ihl, 0, 0, 20 + len(payload), 0, 0, 0, 0, 255, proto, 0, 0,
                    10, 0, 0, 1, 10, 0, 0, 2]) + bytes(4 * ihl - 20)
    return header + payload


ADVERT = bytes([0x31, 51, 150, 1, 0, 10, 0, 0]) + bytes([10, 0, 0, 50])


@pytest.mark.parametrize(("packet", "pkttype", "protocol", "passes"), [
    (ipv4(112, ADVERT), watchdog.PACKET_OUTGOING, watchdog.ETH_P_IP, True),
    (ipv4(112, ADVERT), 0, watchdog.ETH_P_IP, False),  # an advert received: a peer's
    (ipv4(6, b"x" * 20), watchdog.PACKET_OUTGOING, watchdog.ETH_P_IP, False),  # TCP
    (bytes(40), watchdog.PACKET_OUTGOING, 0x86DD, False),  # IPv6
], ids=["own-advert", "received", "tcp", "ipv6"])
def test_the_filter_passes_only_outgoing_ipv4_vrrp(packet, pkttype, protocol, passes):
    verdict = run_bpf(watchdog.advert_filter(), packet, pkttype=pkttype, protocol=protocol)
    assert verdict == (watchdog.SNAPLEN if passes else 0)


def test_the_vrid_is_the_second_byte_after_the_ip_header():
    assert watchdog.advert_vrid(ipv4(112, ADVERT)) == 51
    assert watchdog.advert_vrid(ipv4(112, ADVERT, ihl=6)) == 51  # with IP options
    assert watchdog.advert_vrid(ipv4(6, ADVERT)) is None
    assert watchdog.advert_vrid(ipv4(112, b"\x31")) is None  # truncated
    assert watchdog.advert_vrid(b"\x60" + bytes(39)) is None  # IPv6
