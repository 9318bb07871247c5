"""No VIP outlives keepalived: the watchdog of the keepalived container.

keepalived 2.2.7 holds its VIPs with an infinite lifetime, so a keepalived that is SIGKILLed
whole or frozen (SIGSTOP, a deadlock) leaves them in the kernel for ever while its peer takes
over: two holders (measured, notes/keepalived REPORT.md Q2). keepalived cannot set a valid
lifetime itself, but tolerates one set from outside (no event, no flap; measured).

So this thread watches the adverts keepalived itself sends (a master advertises every
advert interval) and, every `PERIOD` and whenever instances.json changes, for each VIP that
instances.json lists and the kernel holds:

- its instance's VRID advertised within `window` (max(1.5 s, 4 adverts)): the VIP's valid
  and preferred lifetimes are set to `vip_lifetime_seconds` again. If this container dies,
  nobody refreshes them and the kernel deletes the VIPs within that lifetime.
- it did not: keepalived holds the VIP but has stopped advertising (frozen or killed), and
  its peer has taken over or will; the VIP is deleted at once.

A VIP that just appeared, a capture that just (re)started and a new instances.json each get
`window` before silence counts: keepalived adds a new master's VIPs just before its first
advert, and the VRIDs of a new instances.json only advertise once keepalived has reloaded.
While the capture cannot run (say the interface is missing) nothing is deleted: without
adverts to see, every VIP would look dead; lifetimes are still refreshed so that the
container's death still takes the VIPs with it.

A refresh that races with keepalived dropping the VIP (it turned BACKUP between our listing
and our request) re-creates it, as rtnetlink replaces by creating: that copy's instance no
longer advertises, so the next pass deletes it (and its lifetime would anyway).

Only addresses listed in instances.json are ever touched. If the agent dies, nothing here
changes. vip_lifetime_seconds 0 turns the watchdog's address work off (adverts are still
counted).

Adverts are seen with an AF_PACKET socket (ETH_P_ALL: outgoing frames are copied to
ETH_P_ALL taps only) on the VRRP interface, with a classic BPF filter that passes only
outgoing IPv4 packets of IP protocol 112: the interface carries all the client traffic,
which must never reach Python.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from lvs_operator import vrrp
from lvs_operator.keepalived.metrics import KEEPALIVED_EXITED, NO_ADVERTS, Metrics
from lvs_operator.model import IPAddress
from lvs_operator.network import vip
from lvs_operator.network.errors import NetworkError

PERIOD = 0.5  # seconds between two passes
# Seconds: never judge keepalived dead on less silence than this. Under load a running
# keepalived's adverts were seen 0.7-1.2 s apart (the emulated VM of the three-director
# full-stack test, another VM beside it); at 0.5 s the watchdog deleted its VIPs about 100
# times in 2 minutes per director and keepalived re-added them: flapping. A frozen master
# is replaced by its peers after about 3 adverts (0.35 s at 0.1 s), so two directors hold
# its VIPs for about 1.2 s at most.
MIN_WINDOW = 1.5
WINDOW_ADVERTS = 4  # ... nor on fewer missed adverts than this

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
IPPROTO_VRRP = 112
SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>; the socket module does not export it
SNAPLEN = 128  # bytes of a matching packet copied to us: IP header (<= 60) + VRRP header

log = logging.getLogger(__name__)

Key = tuple[str, IPAddress]  # (interface, VIP)


# --- which VIPs to refresh, which to delete (pure) -------------------------------------------

def window(advert_seconds: float) -> float:
    """Return how long an instance may stay silent before its VIPs are deleted (seconds)."""
    return max(MIN_WINDOW, WINDOW_ADVERTS * advert_seconds)


def listed(shared: vrrp.Shared) -> dict[Key, tuple[str, int]]:
    """Return every VIP instances.json lists, by (interface, VIP), with its instance's
    name and VRID (a VIP with no interface of its own is on the VRRP interface)."""
    return {(dev or shared.interface, address): (name, vrid)
            for name, (vrid, vips) in shared.instances.items() for address, dev in vips}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one pass does.

    Attributes:
        refresh: interface -> the VIPs whose lifetime to set again.
        delete: (interface, VIP, why) of the VIPs to delete now.
    """

    refresh: dict[str, list[IPAddress]] = field(default_factory=dict)
    delete: list[tuple[str, IPAddress, str]] = field(default_factory=list)


def judge(shared: vrrp.Shared, held: Mapping[Key, float], adverts: Mapping[int, float], *,
          now: float, since: float | None) -> Verdict:
    """Decide the fate of the listed VIPs the kernel holds.

    Args:
        shared: instances.json.
        held: the listed VIPs present in the kernel, each with when it was first seen.
        adverts: VRID -> when keepalived last sent an advert for it.
        now: the time now (same clock).
        since: since when adverts could have been seen (capture running, instances.json
            unchanged); None while the capture is not running: nothing is deleted then.

    Returns:
        The Verdict: refresh the VIPs whose instance advertised within `window` of now (or
        of the later of `since` and when the VIP appeared), delete the others.
    """
    verdict = Verdict()
    table = listed(shared)
    limit = window(shared.advert_seconds)
    for key, seen in held.items():
        name, vrid = table[key]
        last = adverts.get(vrid)
        alive = max(last if last is not None else float("-inf"), seen,
                    since if since is not None else now)
        if now - alive <= limit:
            verdict.refresh.setdefault(key[0], []).append(key[1])
            continue
        told = "never sent an advert" if last is None \
            else f"sent no advert for {now - last:.2f} s"
        verdict.delete.append((*key, f"keepalived holds it but its instance {name} (VRID "
                               f"{vrid}) has {told} (limit {limit:.2f} s): keepalived is "
                               "frozen or dead"))
    return verdict


# --- seeing keepalived's adverts ---------------------------------------------------------------

# Classic BPF (struct sock_filter: code, jt, jf, k). Loads at SKF_AD_OFF + n read the
# packet's metadata rather than its bytes; on a SOCK_DGRAM packet socket, byte 0 is the
# network header.
_BPF_LD_W_ABS, _BPF_LD_B_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x20, 0x30, 0x15, 0x06
_SKF_AD_OFF = 0xFFFFF000  # -0x1000 as the u32 `k` holds it
_SKF_AD_PROTOCOL, _SKF_AD_PKTTYPE = 0, 4


def advert_filter() -> list[tuple[int, int, int, int]]:
    """Return the BPF program that passes outgoing IPv4 packets of IP protocol 112 (the
    first SNAPLEN bytes) and drops everything else."""
    return [
        (_BPF_LD_W_ABS, 0, 0, _SKF_AD_OFF + _SKF_AD_PKTTYPE),
        (_BPF_JEQ_K, 0, 5, PACKET_OUTGOING),
        (_BPF_LD_W_ABS, 0, 0, _SKF_AD_OFF + _SKF_AD_PROTOCOL),
        (_BPF_JEQ_K, 0, 3, ETH_P_IP),
        (_BPF_LD_B_ABS, 0, 0, 9),  # the IPv4 header's protocol
        (_BPF_JEQ_K, 0, 1, IPPROTO_VRRP),
        (_BPF_RET_K, 0, 0, SNAPLEN),
        (_BPF_RET_K, 0, 0, 0),
    ]


def advert_vrid(packet: bytes) -> int | None:
    """Return the VRID of the VRRP advert in `packet` (an IPv4 packet), None when it is
    not one (VRRP v2 and v3 both put the VRID in the header's second byte)."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != IPPROTO_VRRP:
        return None
    start = (packet[0] & 0x0F) * 4
    if start < 20 or len(packet) < start + 2:
        return None
    return packet[start + 1]


class Capture:
    """A socket that receives keepalived's outgoing adverts on one interface; `close` it.

    It has no thread of its own: the watchdog's thread waits on it (`fileno`) and reads
    what is queued (`drain`) before each judgement, so an advert keepalived sent is never
    missed for want of CPU on our side (under load a separate reader could lag behind the
    judge and make a live keepalived look silent).

    Raises (from the constructor):
        OSError: when the socket cannot be made (EPERM: CAP_NET_RAW is missing; ENODEV:
            no such interface).
    """

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self.alive = True
        # Protocol 0: the socket receives nothing until it is bound, so no unfiltered
        # packet can queue up before the filter is attached.
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 0)
        try:
            program = advert_filter()
            code = b"".join(struct.pack("HBBI", *insn) for insn in program)
            buffer = ctypes.create_string_buffer(code, len(code))
            fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))  # sock_fprog
            self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            self._sock.bind((interface, ETH_P_ALL))
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise

    def fileno(self) -> int:
        """Return the socket's descriptor (readable when adverts are queued)."""
        return self._sock.fileno()

    def drain(self) -> list[int]:
        """Return the VRIDs of the adverts queued since the last call (without waiting).

        A socket error (the interface went away) is logged and ends the capture: `alive`
        turns False.
        """
        vrids: list[int] = []
        while self.alive:
            try:
                packet, address = self._sock.recvfrom(SNAPLEN)
            except BlockingIOError:
                break
            except OSError as e:
                log.error("capturing keepalived's adverts on %s failed: %s", self.interface, e)
                self.alive = False
                break
            vrid = advert_vrid(packet)
            if vrid is not None and address[2] == PACKET_OUTGOING:
                vrids.append(vrid)
        return vrids

    def close(self) -> None:
        """Close the socket."""
        self.alive = False
        self._sock.close()


# --- the watchdog ------------------------------------------------------------------------------

class Addresses(Protocol):
    """The address operations the watchdog needs (`network.vip` provides them)."""

    def list_created(self, interface: str) -> dict[IPAddress, int]: ...

    def set_lifetime(self, interface: str, addresses: Iterable[IPAddress],
                     seconds: int) -> None: ...

    def remove_vip(self, interface: str, address: IPAddress) -> bool: ...


class CaptureLike(Protocol):
    """What the watchdog needs of a `Capture`."""

    interface: str
    alive: bool

    def fileno(self) -> int: ...

    def drain(self) -> list[int]: ...

    def close(self) -> None: ...


class Watchdog:
    """Refreshes the lifetime of VIPs whose keepalived instance advertises, deletes the
    others (see the module's docstring). `start` runs it in a thread; `tick` is one pass.

    Args:
        metrics: where refreshes, deletions and adverts are counted.
        addresses: the kernel's addresses (the `network.vip` module by default).
        capture: makes the advert capture for an interface.
        clock: monotonic seconds.
    """

    def __init__(self, metrics: Metrics, *, addresses: Addresses = vip,
                 capture: Callable[[str], CaptureLike] = Capture,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._addresses = addresses
        self._make_capture = capture
        self._clock = clock
        self._lock = threading.Lock()
        self._adverts: dict[int, float] = {}
        self._shared: vrrp.Shared | None = None
        self._changed = clock()  # when instances.json last changed
        self._first_seen: dict[Key, float] = {}
        self._stamps: dict[Key, int] = {}  # the kernel's creation stamp of each, as listed
        self._capture: CaptureLike | None = None
        self._capture_since = 0.0
        self._capture_error = ""
        # Written to wake the thread (a new instances.json, stop) out of its select().
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def update(self, shared: vrrp.Shared) -> None:
        """Use a new instances.json from now on (and run a pass soon)."""
        with self._lock:
            self._shared = shared
            self._changed = self._clock()
        self._wake()

    def advert(self, vrid: int) -> None:
        """Record that keepalived sent an advert for `vrid` now."""
        now = self._clock()
        with self._lock:
            self._adverts[vrid] = now
        self._metrics.advert(vrid)

    def _wake(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(BlockingIOError):  # full: it is awake already
            os.write(self._wake_write, b"!")

    def start(self) -> None:
        """Run passes every PERIOD in a thread until `stop`."""
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and the capture; return once they are stopped."""
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join()
        if self._capture is not None:
            self._capture.close()
            self._capture = None
        self._closed = True
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _run(self) -> None:
        due = self._clock()
        while not self._stopping:
            if self._clock() >= due:
                try:
                    self.tick()
                except Exception:  # one failed pass must not end the watchdog
                    log.exception("watchdog pass failed")
                due = self._clock() + PERIOD
            if self._wait(due):
                due = self._clock()

    def _wait(self, due: float) -> bool:
        """Record adverts as they come until `due`; return True when woken before."""
        capture = self._capture
        waiting = [self._wake_read] + ([capture.fileno()] if capture is not None else [])
        ready, _, _ = select.select(waiting, [], [], max(0.0, due - self._clock()))
        if capture is not None and capture.fileno() in ready:
            self._record(capture)
        if self._wake_read not in ready:
            return False
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_read, 4096)
        return True

    def tick(self) -> Verdict:
        """Run one pass: refresh or delete the listed VIPs the kernel holds.

        Returns:
            What it decided (errors acting on it are logged, not raised).
        """
        with self._lock:
            shared = self._shared
        if shared is None:
            return Verdict()
        self._keep_capture(shared.interface)
        if self._capture is not None:
            self._record(self._capture)  # what keepalived sent up to now counts
        with self._lock:
            changed, adverts = self._changed, dict(self._adverts)
        if shared.vip_lifetime_seconds <= 0:
            self._first_seen.clear()
            return Verdict()
        now = self._clock()
        held = self._held(shared, now)
        since = None if self._capture is None else max(changed, self._capture_since)
        verdict = judge(shared, held, adverts, now=now, since=since)
        for interface, addresses in verdict.refresh.items():
            try:
                self._addresses.set_lifetime(interface, addresses, shared.vip_lifetime_seconds)
                self._metrics.refreshed(len(addresses))
            except NetworkError as e:
                log.error("refreshing the lifetime of VIPs %s: %s", _names(addresses), e)
            self._unresurrect(interface, addresses)
        for interface, address, why in verdict.delete:
            log.warning("deleting VIP %s from %s: %s", address, interface, why)
            if self._remove(interface, address):
                self._metrics.deleted(NO_ADVERTS)
                self._first_seen.pop((interface, address), None)
        return verdict

    def _unresurrect(self, interface: str, refreshed: Sequence[IPAddress]) -> None:
        """Delete the refreshed VIPs that the refresh itself made again: rtnetlink has no
        "replace only", so a VIP keepalived deleted between the listing and the refresh
        (it went BACKUP) came back, and two directors would answer for it until the
        watchdog saw keepalived's silence (1.5 s; seen in the full-stack tier). Such a VIP
        has a new creation stamp."""
        try:
            now = self._addresses.list_created(interface)
        except NetworkError as e:
            log.error("listing the VIPs of %s: %s", interface, e)
            return
        for address in refreshed:
            key = (interface, address)
            if address in now and now[address] != self._stamps.get(key, now[address]):
                log.warning("deleting VIP %s from %s: keepalived deleted it while its "
                            "lifetime was being refreshed, which made it again", address,
                            interface)
                if self._remove(interface, address):
                    self._first_seen.pop(key, None)
                    self._stamps.pop(key, None)

    def release(self) -> list[Key]:
        """Delete every listed VIP the kernel still holds (keepalived is gone).

        Returns:
            The VIPs deleted.
        """
        with self._lock:
            shared = self._shared
        if shared is None:
            return []
        gone = [key for key in self._held(shared, self._clock())
                if self._remove(*key)]
        if gone:
            self._metrics.deleted(KEEPALIVED_EXITED, len(gone))
        return gone

    def _held(self, shared: vrrp.Shared, now: float) -> dict[Key, float]:
        """Return the listed VIPs present in the kernel with when each was first seen
        (and forget those that left)."""
        wanted = listed(shared)
        present: set[Key] = set()
        stamps: dict[Key, int] = {}
        for interface in sorted({key[0] for key in wanted}):
            try:
                there = self._addresses.list_created(interface)
            except NetworkError as e:
                log.error("listing the VIPs of %s: %s", interface, e)
                continue
            for key in wanted:
                if key[0] == interface and key[1] in there:
                    present.add(key)
                    stamps[key] = there[key[1]]
        self._stamps = stamps
        # In a stable order (interface, IPv4 first, by address): logs and requests too.
        order = sorted(present, key=lambda key: (key[0], key[1].version, int(key[1])))
        self._first_seen = {key: self._first_seen.get(key, now) for key in order}
        return dict(self._first_seen)

    def _remove(self, interface: str, address: IPAddress) -> bool:
        try:
            return self._addresses.remove_vip(interface, address)
        except NetworkError as e:
            log.error("deleting VIP %s from %s: %s", address, interface, e)
            return False

    def _keep_capture(self, interface: str) -> None:
        """Make sure adverts are captured on `interface` (restart on a change or a
        failure; a failure to start is logged once per cause)."""
        capture = self._capture
        if capture is not None and capture.interface == interface and capture.alive:
            return
        if capture is not None:
            capture.close()
            self._capture = None
        try:
            self._capture = self._make_capture(interface)
        except OSError as e:
            hint = {errno.EPERM: "; the container needs CAP_NET_RAW",
                    errno.ENODEV: "; is the VRRP interface right?"}.get(e.errno or 0, "")
            error = f"cannot capture keepalived's adverts on {interface!r}: {e}{hint}"
            if error != self._capture_error:
                log.error("%s: no VIP is deleted for silence until it works", error)
                self._capture_error = error
            return
        self._capture_since = self._clock()
        if self._capture_error:
            log.info("capturing keepalived's adverts on %r again", interface)
        self._capture_error = ""


    def _record(self, capture: CaptureLike) -> None:
        for vrid in capture.drain():
            self.advert(vrid)


def _names(addresses: Sequence[IPAddress]) -> str:
    return ", ".join(str(a) for a in addresses)
