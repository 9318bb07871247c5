"""`lvs-operator keepalived` with the real keepalived, in the real kernel.

Two director namespaces (d1, d2) and a stranger (x) on one bridge. Each director runs the
keepalived container's program as a real process (`lvs-operator keepalived --dir DIR`) on
files written as the agent writes them: keepalived.conf from `vrrp.render`, instances.json
from `vrrp.shared` (advert interval 0.1 s, VIP lifetime 2 s). Checked:

(a) a master is elected; it holds the VIPs with a finite lifetime that keeps being refreshed;
(b) keepalived's processes SIGKILLed (frozen first, so that neither can clean up: what a
    container kill does): the VIPs leave that namespace within 3 s, the other takes them;
(c) keepalived's processes SIGSTOPped: the same, by the watchdog;
(d) forged VRRPv3 adverts with priority 254 from the stranger: no role change, and the
    guard's counter counts them;
(e) the whole container (supervisor and keepalived) SIGKILLed: the VIPs expire;
(f) a new keepalived.conf: one reload (SIGHUP), no role change;
and the watchdog's capture filter lets nothing but our own outgoing VRRP reach Python.

Addresses are read in-process over netlink (`network.vip.list_lifetimes`) in each
namespace: exact addresses present or absent. Measured times are printed (run with -s).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from netlab import Lab, Lan, Netns

from lvs_operator import vrrp
from lvs_operator.keepalived.watchdog import Capture
from lvs_operator.network.vip import list_lifetimes

pytestmark = pytest.mark.kernel

VIP = ipaddress.ip_address("10.200.0.100")
VIP6 = ipaddress.ip_address("fd00:200::100")
LIFETIME = 2
ADVERT = 0.1
# Under software emulation a Python program and keepalived take seconds to start.
START_TIMEOUT = 120.0
FAILOVER_LIMIT = 3.0  # the VIPs must leave a dead keepalived's namespace within this
TAKEOVER_TIMEOUT = 20.0


@dataclass
class Director:
    name: str
    ns: Netns
    paths: vrrp.Paths
    log: Path
    proc: subprocess.Popen[Any] | None = None

    def vips(self) -> dict[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]:
        """The VIPs held on eth0, with the seconds left of their lifetimes."""
        return self.ns.call(list_lifetimes, "eth0")

    def holds(self) -> bool:
        held = self.vips()
        return VIP in held and VIP6 in held

    def holds_none(self) -> bool:
        held = self.vips()
        return VIP not in held and VIP6 not in held

    def keepalived_pids(self) -> list[int]:
        return [int(p.read_text()) for p in (self.paths.pid, self.paths.vrrp_pid)]

    def metrics(self) -> dict[str, float]:
        """This director's /metrics, as {'name{labels}': value}."""
        def scrape() -> str:
            with urllib.request.urlopen("http://127.0.0.1:9641/metrics", timeout=30) as r:
                return str(r.read().decode())

        samples = {}
        for line in self.ns.call(scrape).splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        return samples

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_until(check: Callable[[], bool], what: str, timeout: float,
               director: Director | None = None) -> float:
    """Wait for `check`; return the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            tail = f"\n--- {director.name}'s log:\n{director.output()[-4000:]}" if director \
                else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{tail}")
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
def site(lab: Lab, tmp_path: Path) -> Iterator[tuple[Lan, Director, Director]]:
    """d1 and d2 running `lvs-operator keepalived`; returns (lan, master, backup) once
    the master holds the VIPs."""
    lan = lab.lan(["d1", "d2", "x"])
    members = {n: vrrp.Member(n, ipaddress.IPv4Address(lan.ip4(n))) for n in ("d1", "d2")}
    wants = [vrrp.Want(VIP, {}, "eth0"), vrrp.Want(VIP6, {}, "eth0")]
    directors = {}
    for name in members:
        instances, alone = vrrp.plan(wants, members, me=name)
        assert not alone and len(instances) == 1
        options = vrrp.Options(interface="eth0", address=ipaddress.IPv4Address(lan.ip4(name)),
                               advert_seconds=ADVERT, preempt_delay_seconds=0)
        folder = tmp_path / name
        folder.mkdir()
        paths = vrrp.Paths(folder)
        vrrp.write_atomically(paths.instances, vrrp.shared(
            instances, members, me=name, options=options,
            vip_lifetime_seconds=LIFETIME).to_json())
        vrrp.write_atomically(paths.config, vrrp.render(instances, members, me=name,
                                                        options=options, paths=paths))
        director = Director(name, lan[name], paths, tmp_path / f"{name}.log")
        with director.log.open("w") as out:
            director.proc = lab.spawn(lan[name], [
                sys.executable, "-m", "lvs_operator.cli", "keepalived", "--dir", str(folder),
                "--metrics-address", "127.0.0.1:9641"], stdout=out, stderr=subprocess.STDOUT)
        directors[name] = director
    first = instances[0].ranking[0]
    master, backup = directors[first], directors["d2" if first == "d1" else "d1"]
    # Both start as BACKUP; whichever times out first is MASTER until the other preempts.
    # The backup's keepalived must run too (its VRRP process wrote its pid), or a failover
    # would measure its start-up.
    took = wait_until(lambda: backup.paths.vrrp_pid.exists() and master.holds()
                      and backup.holds_none(), f"{master.name} alone to hold the VIPs",
                      START_TIMEOUT, master)
    time.sleep(1.0)  # ten adverts: the backup has heard the master
    assert master.holds() and backup.holds_none()
    print(f"\n{master.name} holds the VIPs {took:.1f} s after the lab started them")
    yield lan, master, backup
    for director in directors.values():
        for pid in _pids(director):  # leave nothing frozen behind for the lab's clean-up
            _signal(pid, signal.SIGCONT)
    vm_out = os.environ.get("LVS_VM_OUT")
    if vm_out:  # the logs, for a look after the VM is gone
        folder = Path(vm_out) / "keepalived"
        folder.mkdir(parents=True, exist_ok=True)
        for director in directors.values():
            test = os.environ.get("PYTEST_CURRENT_TEST", "test").split(" ")[0]
            name = f"{test.rsplit('::', 1)[-1]}.{director.name}.log"
            (folder / name).write_text(director.output())


def _pids(director: Director) -> list[int]:
    try:
        return director.keepalived_pids()
    except (OSError, ValueError):
        return []


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def test_the_master_holds_the_vips_with_a_refreshed_lifetime(site):
    _, master, backup = site
    # keepalived adds them "forever"; the watchdog's next pass (every 0.5 s) sets a lifetime.
    wait_until(lambda: None not in master.vips().values(), "a lifetime on the VIPs", 10,
               master)
    for _ in range(3):  # over more than a lifetime: refreshed, never forever, never lapsed
        held = master.vips()
        assert held.keys() >= {VIP, VIP6}
        assert held[VIP] is not None and 0 <= held[VIP] <= LIFETIME
        assert held[VIP6] is not None and 0 <= held[VIP6] <= LIFETIME
        time.sleep(1.0)
    assert backup.holds_none()
    figures = master.metrics()
    vrid = vrrp.Shared.from_json(master.paths.instances.read_text()).instances
    (number, _), = vrid.values()
    assert figures[f'lvs_vrrp_adverts_sent_total{{vrid="{number}"}}'] > 10
    assert figures["lvs_vrrp_vip_lifetime_refreshes_total"] >= 4
    assert figures["lvs_keepalived_up"] == 1
    assert figures["lvs_vrrp_adverts_rejected_total"] == 0
    tables = master.ns.run(["nft", "-j", "list", "tables"]).stdout
    names = [t["table"]["name"] for t in json.loads(tables)["nftables"] if "table" in t]
    assert names == ["lvs_operator_vrrp"]


def _failover(master: Director, backup: Director, pids: list[int], signum: int,
              limit: float = 30.0) -> tuple[float, float]:
    """Freeze `pids` (keepalived's, all at once, as a container's kill or freeze does), then
    for SIGKILL kill them; return the seconds until the VIPs left the master, and until
    the backup held them (each sampled on its own)."""
    start = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    if signum == signal.SIGKILL:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    gone = taken = None
    while gone is None or taken is None:
        now = time.monotonic() - start
        if gone is None and master.holds_none():
            gone = now
        if taken is None and backup.holds():
            taken = now
        if now > max(limit, TAKEOVER_TIMEOUT):
            raise AssertionError(f"after {now:.1f} s: VIPs gone from {master.name} at {gone}, "
                                 f"held by {backup.name} at {taken}\n{master.output()[-3000:]}")
        time.sleep(0.02)
    return gone, taken


def test_keepalived_killed_its_vips_leave_and_the_peer_takes_them(site):
    _, master, backup = site
    gone, taken = _failover(master, backup, master.keepalived_pids(), signal.SIGKILL)
    print(f"SIGKILL: VIPs gone from {master.name} after {gone:.2f} s, held by "
          f"{backup.name} after {taken:.2f} s")
    assert gone < FAILOVER_LIMIT
    assert master.proc is not None
    assert master.proc.wait(timeout=60) == 128 + signal.SIGKILL  # kubelet restarts it
    assert master.holds_none()
    # The new master's watchdog gives its VIPs a lifetime too (at its next pass).
    wait_until(lambda: None not in backup.vips().values(), f"a lifetime on {backup.name}'s "
               "VIPs", 10, backup)


def test_keepalived_frozen_its_vips_leave_and_the_peer_takes_them(site):
    _, master, backup = site
    gone, taken = _failover(master, backup, master.keepalived_pids(), signal.SIGSTOP)
    print(f"SIGSTOP: VIPs gone from {master.name} after {gone:.2f} s, held by "
          f"{backup.name} after {taken:.2f} s")
    assert gone < FAILOVER_LIMIT
    time.sleep(1.0)
    assert master.holds_none(), "a frozen keepalived's VIPs must stay deleted"
    assert master.proc is not None and master.proc.poll() is None
    assert master.metrics()['lvs_vrrp_vips_deleted_total{reason="no_adverts"}'] == 2


def _drain(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def vrrp3_advert(source: str, destination: str, vrid: int, priority: int,
                 vips: list[str]) -> bytes:
    """A VRRPv3 advert (RFC 5798) with its checksum over the IPv4 pseudo-header."""
    addresses = b"".join(ipaddress.IPv4Address(v).packed for v in vips)
    header = struct.pack("!BBBBHH", 0x31, vrid, priority, len(vips), int(ADVERT * 100), 0)
    message = header + addresses
    pseudo = (ipaddress.IPv4Address(source).packed + ipaddress.IPv4Address(destination).packed
              + struct.pack("!BBH", 0, 112, len(message)))
    data = pseudo + message
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return message[:6] + struct.pack("!H", ~total & 0xFFFF) + message[8:]


def test_forged_adverts_from_a_stranger_change_nothing_and_are_counted(site):
    lan, master, backup = site
    shared = vrrp.Shared.from_json(master.paths.instances.read_text())
    (vrid, _), = shared.instances.values()
    stranger = lan["x"]
    # keepalived writes every state change to its FIFO at once (even a 10 ms flap of the
    # backup to MASTER, which sampling would miss): read what it writes during the forging.
    fifos = {d.name: os.open(d.paths.fifo, os.O_RDONLY | os.O_NONBLOCK) for d in site[1:]}
    for fd in fifos.values():
        _drain(fd)
    sock = stranger.socket(socket.AF_INET, socket.SOCK_RAW, 112)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
    sent, changes = 0, []
    end = time.monotonic() + 3.0
    try:
        while time.monotonic() < end:
            for director in (master, backup):
                address = lan.ip4(director.name)
                sock.sendto(vrrp3_advert(lan.ip4("x"), address, vrid, 254, [str(VIP)]),
                            (address, 0))
            sent += 1
            if not master.holds() or not backup.holds_none():
                changes.append(time.monotonic())
            time.sleep(0.05)
    finally:
        sock.close()
    time.sleep(0.5)
    # Any state but its steady one (the master's own MASTER line may arrive late).
    steady = {master.name: vrrp.MASTER, backup.name: vrrp.BACKUP}
    events = {name: [n.state for n in map(vrrp.parse_notification, _drain(fd).splitlines())
                     if n and n.state != steady[name]] for name, fd in fifos.items()}
    for fd in fifos.values():
        os.close(fd)
    assert changes == [], f"the VIPs moved while {sent} forgeries per director were sent"
    assert events == {master.name: [], backup.name: []}
    for director in (master, backup):
        rejected = director.metrics()["lvs_vrrp_adverts_rejected_total"]
        assert rejected >= sent, f"{director.name}'s guard dropped {rejected} of {sent}"
    print(f"forgeries: {sent} per director, all dropped by the guard, no role change")


def test_the_whole_container_killed_its_vips_expire(site):
    _, master, backup = site
    wait_until(lambda: None not in master.vips().values(), "a lifetime on the VIPs", 10,
               master)
    assert master.proc is not None
    # The supervisor (`ip netns exec` execs it: same pid) and keepalived, all at once.
    # Nobody refreshes the VIPs: the kernel deletes them when their lifetime runs out (its
    # lifetime check runs on whole seconds: up to a second more).
    gone, taken = _failover(master, backup, [master.proc.pid, *master.keepalived_pids()],
                            signal.SIGKILL)
    print(f"container SIGKILL: VIPs expired on {master.name} after {gone:.2f} s "
          f"(lifetime {LIFETIME} s), held by {backup.name} after {taken:.2f} s")
    assert gone < LIFETIME + 1.5


def test_the_capture_filter_passes_only_outgoing_vrrp(lab: Lab):
    lan = lab.lan(["a", "b"])
    host = lan["a"]
    capture = host.call(Capture, "eth0")
    udp = host.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw = host.socket(socket.AF_INET, socket.SOCK_RAW, 112)
    try:
        for _ in range(50):
            udp.sendto(b"client traffic", (lan.ip4("b"), 9))
        replies = lan["b"].socket(socket.AF_INET, socket.SOCK_RAW, 112)
        replies.sendto(vrrp3_advert(lan.ip4("b"), lan.ip4("a"), 9, 100, [str(VIP)]),
                       (lan.ip4("a"), 0))  # incoming VRRP: a peer's, not ours
        replies.close()
        time.sleep(0.5)
        readable, _, _ = select.select([capture], [], [], 0)
        assert readable == [], "the kernel filter let something else through"
        raw.sendto(vrrp3_advert(lan.ip4("a"), lan.ip4("b"), 7, 100, [str(VIP)]),
                   (lan.ip4("b"), 0))
        readable, _, _ = select.select([capture], [], [], 10)
        assert readable == [capture]
        assert capture.drain() == [7]
    finally:
        udp.close()
        raw.close()
        capture.close()


def test_a_new_configuration_is_loaded_without_a_flap(site):
    _, master, backup = site
    fifo = os.open(master.paths.fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        _drain(fifo)
        config = master.paths.config.read_text()
        # A new stamp, as the agent writes to make keepalived report its states again.
        vrrp.write_atomically(master.paths.config, config.replace("#\n", "# stamp 2\n", 1))
        start = time.monotonic()
        while master.metrics()["lvs_keepalived_reloads_total"] < 1:
            assert time.monotonic() - start < 30, "no reload within 30 s"
            assert master.holds() and backup.holds_none(), "the VIPs moved on a reload"
            time.sleep(0.05)
        took = time.monotonic() - start
        for _ in range(20):  # keepalived reloads after the SIGHUP: watch it for a second
            assert master.holds() and backup.holds_none(), "the VIPs moved on a reload"
            time.sleep(0.05)
        lines = _drain(fifo)
    finally:
        os.close(fifo)
    # A master that stays master writes nothing on reload (as notes/keepalived Q5 saw).
    assert [n for n in map(vrrp.parse_notification, lines.splitlines()) if n] == []
    assert master.proc is not None and master.proc.poll() is None
    assert master.metrics()["lvs_keepalived_reloads_total"] == 1
    print(f"reload: SIGHUP sent {took:.2f} s after the change, no flap")
