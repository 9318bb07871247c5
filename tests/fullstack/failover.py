"""Client-side instruments for director failover, shared by tests/fullstack/test_ha.py and
tests/bench/fullstack/test_failover.py. They only need the client's namespace (and the
directors' for the connection table): no import of the stack, so both folders can use them.

- :class:`ArpProber`: who answers ARP for the VIP, seen from the client (a raw ``AF_PACKET``
  socket sends a request and collects the replies for a moment: ``arping`` is not installed);
- :class:`HolderSampler`: an ARP probe every ``interval`` seconds in a thread: never two MACs
  at once, how many handovers;
- :class:`RequestLoop`: a new TCP connection and one GET per iteration, short timeouts, in a
  thread; the longest gap between two successful answers is the outage the client saw;
- :class:`LongLived`: HTTP keep-alive connections opened before a failover and used again
  after it (the same real server must answer on the same socket);
- :func:`synced_clients`: the client ports a director's IPVS connection table holds
  (``/proc/net/ip_vs_conn``): on a standby, the connections the sync daemon has replicated.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import select
import socket
import statistics
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kernel.netlab import HttpSession, Netns, http_get

ETH_P_ARP = 0x0806
_BROADCAST = b"\xff" * 6


def format_mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


class ArpProber:
    """ARP requests for an address from a namespace's interface; the MACs that answer.

    One raw socket, made in the namespace once (a socket keeps its namespace), used from any
    thread. Needs CAP_NET_RAW (root in the VM).
    """

    def __init__(self, ns: Netns, source_ip: str, ifname: str = "eth0") -> None:
        self.source_ip = ipaddress.IPv4Address(source_ip)
        self.sock = ns.call(socket.socket, socket.AF_PACKET, socket.SOCK_RAW,
                            socket.htons(ETH_P_ARP))
        try:
            ns.call(self.sock.bind, (ifname, ETH_P_ARP))
            self.mac: bytes = self.sock.getsockname()[4][:6]
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self._lock = threading.Lock()

    def _request(self, target: ipaddress.IPv4Address) -> bytes:
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, self.mac,
                          self.source_ip.packed, b"\0" * 6, target.packed)
        return _BROADCAST + self.mac + struct.pack("!H", ETH_P_ARP) + arp

    def probe(self, target: str, wait: float = 0.2) -> list[str]:
        """Ask who has ``target``; return the distinct MACs that answered within ``wait``
        seconds (in the order they answered)."""
        address = ipaddress.IPv4Address(target)
        with self._lock:
            with contextlib.suppress(BlockingIOError):  # drop what came before
                while self.sock.recv(2048):
                    pass
            self.sock.send(self._request(address))
            answers: list[str] = []
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([self.sock], [], [], left)
                if not ready:
                    break
                with contextlib.suppress(BlockingIOError):
                    frame = self.sock.recv(2048)
                    mac = _arp_reply_from(frame, address)
                    if mac is not None and mac not in answers:
                        answers.append(mac)
            return answers

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ArpProber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _arp_reply_from(frame: bytes, address: ipaddress.IPv4Address) -> str | None:
    """The sender MAC of an ARP reply for ``address`` in an Ethernet frame, else None."""
    if len(frame) < 42 or frame[12:14] != struct.pack("!H", ETH_P_ARP):
        return None
    op, sha, spa = struct.unpack("!6xH6s4s", frame[14:32])
    if op != 2 or spa != address.packed:
        return None
    return format_mac(sha)


@dataclass
class Sample:
    at: float  # time.monotonic()
    macs: tuple[str, ...]


class HolderSampler:
    """Probe ``vip`` by ARP every ``interval`` seconds in a thread, recording who answered."""

    def __init__(self, prober: ArpProber, vip: str, *, interval: float = 0.1,
                 wait: float = 0.15) -> None:
        self.prober, self.vip, self.interval, self.wait = prober, vip, interval, wait
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="arp-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            self.samples.append(Sample(at, tuple(self.prober.probe(self.vip, self.wait))))
            self._stop.wait(self.interval)

    def two_holders(self) -> list[Sample]:
        """The samples where more than one MAC answered."""
        return [s for s in self.samples if len(s.macs) > 1]

    def changes(self) -> list[tuple[float, str | None, str]]:
        """(when, from, to) each time a different single MAC answered than the last one that
        did (samples with no answer are skipped: a lost reply is not a handover)."""
        out: list[tuple[float, str | None, str]] = []
        last: str | None = None
        for s in self.samples:
            if len(s.macs) != 1:
                continue
            if s.macs[0] != last:
                if last is not None:
                    out.append((s.at, last, s.macs[0]))
                last = s.macs[0]
        return out

    def holders(self) -> list[str]:
        """The distinct MACs seen answering, in order of first answer."""
        seen: list[str] = []
        for s in self.samples:
            seen += [m for m in s.macs if m not in seen]
        return seen

    def __enter__(self) -> HolderSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@dataclass
class Attempt:
    start: float
    end: float
    server: str | None  # None: failed
    error: str = ""


@dataclass
class Outage:
    """The longest wait between two answers in a window of a :class:`RequestLoop`."""

    gap: float  # seconds from the last answer before to the first answer after
    last_before: Attempt | None
    first_after: Attempt | None
    failed: int  # attempts that failed in between

    def __str__(self) -> str:
        before = self.last_before.server if self.last_before else "-"
        after = self.first_after.server if self.first_after else "-"
        return (f"{self.gap:.3f} s without an answer ({self.failed} attempts failed; "
                f"last answer before from {before}, first after from {after})")


class RequestLoop:
    """A client loop in a thread: a new TCP connection and one GET per attempt, each with
    ``timeout`` seconds for everything (a lost SYN is not waited for: the kernel would retry
    it only after 1 s; a new attempt starts at once on a new connection)."""

    def __init__(self, client: Netns, vip: str, *, timeout: float = 0.2,
                 interval: float = 0.02) -> None:
        self.client, self.url, self.timeout, self.interval = client, f"http://{vip}/", timeout, \
            interval
        self.attempts: list[Attempt] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="request-loop", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                server: str | None = http_get(self.client, self.url, timeout=self.timeout)
                error = ""
            except Exception as e:  # every failure counts, whatever its kind
                server, error = None, f"{type(e).__name__}: {e}"
            self.attempts.append(Attempt(start, time.monotonic(), server, error))
            self._stop.wait(self.interval)

    def answered(self, since: float = 0.0) -> int:
        return sum(1 for a in self.attempts if a.server is not None and a.start >= since)

    def failures(self, since: float = 0.0) -> list[Attempt]:
        return [a for a in self.attempts if a.server is None and a.start >= since]

    def wait_answers(self, count: int, since: float, timeout: float) -> None:
        """Wait until ``count`` attempts started at or after ``since`` were answered."""
        deadline = time.monotonic() + timeout
        while self.answered(since) < count:
            if time.monotonic() > deadline:
                last = self.failures(since)[-3:]
                raise TimeoutError(f"fewer than {count} answers to {self.url} in {timeout:.0f} "
                                   f"s (last failures: {[a.error for a in last]})")
            time.sleep(0.05)

    def latencies(self, until: float) -> list[float]:
        """How long the answered attempts that ended before ``until`` took (seconds)."""
        return [a.end - a.start for a in self.attempts if a.server is not None and a.end < until]

    def outage(self, since: float) -> Outage:
        """The longest gap between consecutive answers among attempts ending after ``since``
        (with the last answer before ``since`` as the first reference point)."""
        ok = [a for a in self.attempts if a.server is not None]
        before = [a for a in ok if a.end <= since]
        after = [a for a in ok if a.end > since]
        points = before[-1:] + after
        best = Outage(0.0, None, None, 0)
        for prev, nxt in itertools.pairwise(points):
            gap = nxt.end - prev.end
            if gap > best.gap:
                failed = sum(1 for a in self.attempts
                             if a.server is None and prev.end <= a.start < nxt.end)
                best = Outage(gap, prev, nxt, failed)
        return best

    def __enter__(self) -> RequestLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@dataclass
class LongLived:
    """``count`` HTTP keep-alive connections to ``vip``, each used once when opened."""

    client: Netns
    vip: str
    count: int = 10
    timeout: float = 5.0
    sessions: list[HttpSession] = field(default_factory=list)
    servers: list[str] = field(default_factory=list)  # who answered each, when opened

    def open(self) -> LongLived:
        for _ in range(self.count):
            session = HttpSession(self.client, self.vip, timeout=self.timeout)
            self.sessions.append(session)
            self.servers.append(session.get())
        return self

    @property
    def ports(self) -> set[int]:
        return {s.local_address[1] for s in self.sessions}

    def check(self) -> list[str]:
        """GET again on every connection; one problem per line ([] when all still work and
        each is still answered by the real server that answered it first)."""
        problems = []
        for i, (session, first) in enumerate(zip(self.sessions, self.servers, strict=True)):
            try:
                now = session.get()
            except Exception as e:
                problems.append(f"connection {i} (port {session.local_address[1]}, on {first}): "
                                f"{type(e).__name__}: {e}")
                continue
            if now != first:
                problems.append(f"connection {i}: answered by {now}, was {first}")
        return problems

    def close(self) -> None:
        for session in self.sessions:
            with contextlib.suppress(OSError):
                session.close()
        self.sessions.clear()

    def __enter__(self) -> LongLived:
        return self if self.sessions else self.open()  # (already open: closed on exit)

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_conn_table() -> str:
    # /proc/thread-self/net follows the calling thread's network namespace (Netns.call
    # enters it); /proc/net would show the process's.
    with open("/proc/thread-self/net/ip_vs_conn") as f:
        return f.read()


def synced_clients(ns: Netns, vip: str) -> set[int]:
    """The client ports of the TCP connections to ``vip`` in ``ns``'s IPVS connection table."""
    vip_hex = ipaddress.IPv4Address(vip).packed.hex().upper()
    ports: set[int] = set()
    for line in ns.call(_read_conn_table).splitlines()[1:]:
        words = line.split()
        if len(words) >= 8 and words[0] == "TCP" and words[3] == vip_hex:
            ports.add(int(words[2], 16))
    return ports


def wait_synced(ns: Netns, vip: str, ports: set[int], timeout: float = 30.0) -> float:
    """Wait until ``ns``'s connection table has the connections from these client ports
    (on a standby: the sync daemon has sent them; the master flushes about every 2 s);
    return how long it took."""
    start = time.monotonic()
    while not ports <= (have := synced_clients(ns, vip)):
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"after {timeout:.0f} s the connection table of {ns} has "
                               f"{len(ports & have)} of the {len(ports)} connections to {vip}")
        time.sleep(0.1)
    return time.monotonic() - start


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def describe(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def vrrp_advert(source: str, destination: str, vrid: int, priority: int,
                addresses: Sequence[str], interval_cs: int = 10) -> bytes:
    """A VRRPv3 advertisement (RFC 5798 section 5.1) from ``source`` to ``destination``,
    checksummed over the IPv4 pseudo-header as the RFC asks: what keepalived accepts from a
    peer."""
    body = struct.pack("!BBBBH", 0x31, vrid, priority, len(addresses), interval_cs & 0x0FFF)
    packed = b"".join(ipaddress.IPv4Address(a).packed for a in addresses)
    pseudo = (ipaddress.IPv4Address(source).packed + ipaddress.IPv4Address(destination).packed
              + struct.pack("!BBH", 0, VRRP_PROTOCOL, len(body) + 2 + len(packed)))
    checksum = _checksum(pseudo + body + b"\0\0" + packed)
    return body + struct.pack("!H", checksum) + packed


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def forge_adverts(ns: Netns, source: str, targets: Sequence[str], vrid: int,
                  addresses: Sequence[str], *, priority: int = 254, seconds: float = 3.0,
                  rate: float = 20.0) -> int:
    """Send forged VRRPv3 adverts from ``ns`` (its own address ``source``: a sender that is
    no configured peer) to each of ``targets`` (unicast, as the directors' adverts go) and to
    VRRP's multicast group, ``rate`` a second for ``seconds``; return how many were sent."""
    def send() -> int:
        sent = 0
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, VRRP_PROTOCOL) as s:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)  # VRRP drops any other TTL
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
            # The client has no default route: say where the multicast goes out.
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(source))
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                for target in [*targets, VRRP_GROUP]:
                    s.sendto(vrrp_advert(source, target, vrid, priority, addresses),
                             (target, 0))
                    sent += 1
                time.sleep(1 / rate)
        return sent
    return ns.call(send)


VRRP_PROTOCOL = 112
VRRP_GROUP = "224.0.0.18"
