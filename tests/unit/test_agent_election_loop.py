"""agent.loop with the election: two agents share an in-memory API server (Leases, and
status.directors echoed to both); each has its own fake kernel. Exactly one holds the VIP;
a director that cannot renew drops it and the other takes over; a graceful stop hands it
over at once; connection-sync daemons follow the roles. A sampler thread checks that the
two never hold the VIP at the same instant."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from test_agent_loop import VIP, FakeApi, eventually, virtualserver

from lvs_operator.agent import loop
from lvs_operator.agent.settings import DirectorSettings, HASettings, Settings, SyncSettings
from lvs_operator.ipvs.fake import FakeIPVS
from lvs_operator.model import SyncDaemon, SyncState

HA = HASettings(engine="lease", namespace="lvs-system", lease_duration_seconds=0.4,
                renew_seconds=0.05,
                renew_deadline_seconds=0.25, settle_seconds=1.0, announce_seconds=0.3)
NODES = ("node-a", "node-b")


class Vips:
    """A fake VIP holder that remembers what it holds."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: set[Any] = set()
        self.announced = 0

    def list_vips(self, interface):
        with self.lock:
            return sorted(self.held, key=int)

    def add_vip(self, interface, address):
        with self.lock:
            self.held.add(address)
        return True

    def remove_vip(self, interface, address):
        with self.lock:
            self.held.discard(address)
        return True

    def announce(self, interface, addresses):
        with self.lock:
            self.announced += 1

    def holds(self) -> bool:
        with self.lock:
            return ip_address(VIP) in self.held


class Director:
    def __init__(self, api: FakeApi, node: str, folder: Path) -> None:
        self.api = api
        self.node = node
        self.folder = folder
        self.ipvs = FakeIPVS(interfaces=("lo", "eth0"))
        self.vips = Vips()
        self.agent: loop.Agent | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        settings = Settings(node=self.node, state_file=self.folder / self.node / "owned.json",
                            metrics_address="",
                            sync=SyncSettings(resync_seconds=30.0, min_interval_seconds=0.0,
                                              retry_seconds=0.1),
                            director=DirectorSettings(sysctls=None), ha=HA)
        self.agent = loop.Agent(settings, api=self.api, ipvs=self.ipvs, vips=self.vips,
                                sysctls=lambda s: [], default_interface=lambda: None)
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        assert self.agent is not None and self.thread is not None
        self.agent.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()

    def role(self) -> str | None:
        entry = ((self.api.objects["shop/web"].get("status") or {}).get("directors")
                 or {}).get(self.node) or {}
        return entry.get("role")


class Sampler:
    """Samples who holds the VIP every few milliseconds, in a thread."""

    def __init__(self, directors: list[Director]) -> None:
        self.directors = directors
        self.both = 0
        self.holders: list[tuple[str, ...]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = tuple(d.node for d in self.directors if d.vips.holds())
            if len(now) > 1:
                self.both += 1
            if not self.holders or self.holders[-1] != now:
                self.holders.append(now)
            time.sleep(0.002)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def moves(self) -> list[str]:
        """Return the successive holders, gaps left out."""
        result: list[str] = []
        for holders in self.holders:
            for node in holders:
                if not result or result[-1] != node:
                    result.append(node)
        return result


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[FakeApi, list[Director]]]:
    api = FakeApi([virtualserver([1])], echo=True,
                  nodes={n: {"metadata": {"name": n, "labels": {}}} for n in NODES})
    directors = [Director(api, node, tmp_path) for node in NODES]
    yield api, directors
    for d in directors:
        if d.thread is not None and d.thread.is_alive():
            d.stop()


def holder(directors: list[Director]) -> Director | None:
    held = [d for d in directors if d.vips.holds()]
    return held[0] if len(held) == 1 else None


def test_one_holder_then_failover_then_one_handover_back(pair):
    api, directors = pair
    with Sampler(directors) as sampler:
        for d in directors:
            d.start()
        eventually(lambda: holder(directors) is not None
                   and {d.role() for d in directors} == {"Active", "Standby"})
        first = holder(directors)
        assert first is not None
        other = next(d for d in directors if d is not first)
        assert first.role() == "Active" and other.role() == "Standby"
        # Connection sync follows the roles.
        eventually(lambda: first.ipvs.daemons() == [SyncDaemon(SyncState.MASTER, "eth0")])
        eventually(lambda: other.ipvs.daemons() == [SyncDaemon(SyncState.BACKUP, "eth0")])
        time.sleep(1.2)  # longer than settle: nothing moves in a steady state
        assert holder(directors) is first
        assert first.vips.announced >= 3, "announced at takeover, then periodically"

        # The holder cannot renew: it drops the VIP (self-fence), the other takes over.
        api.fail_renewals.add(first.node)
        cut = time.monotonic()
        eventually(lambda: other.vips.holds(), timeout=5)
        took = time.monotonic() - cut
        assert not first.vips.holds()
        assert took < HA.lease_duration_seconds + 0.5, took
        eventually(lambda: other.role() == "Active" and first.role() == "Standby")
        eventually(lambda: other.ipvs.daemons() == [SyncDaemon(SyncState.MASTER, "eth0")])

        # It renews again: after settling, at most one handover (back to the rendezvous
        # winner), and no flapping after that.
        api.fail_renewals.clear()
        time.sleep(HA.settle_seconds + 1.5)
        final = holder(directors)
        assert final is not None
        time.sleep(1.0)
        assert holder(directors) is final
    assert sampler.both == 0, sampler.holders
    moves = sampler.moves()
    assert moves[:2] == [first.node, other.node], moves
    assert len(moves) <= 3, moves


def test_a_graceful_stop_hands_over_at_once(pair):
    api, directors = pair
    with Sampler(directors) as sampler:
        for d in directors:
            d.start()
        eventually(lambda: holder(directors) is not None
                   and {d.role() for d in directors} == {"Active", "Standby"})
        first = holder(directors)
        assert first is not None
        other = next(d for d in directors if d is not first)
        stopped = time.monotonic()
        first.stop()
        assert not first.vips.holds(), "released before the Lease goes"
        assert first.role() == "Standby"
        eventually(lambda: other.vips.holds(), timeout=5)
        assert time.monotonic() - stopped < HA.lease_duration_seconds, "faster than expiry"
        assert f"lvs-director-{first.node}" not in api.leases
    assert sampler.both == 0


def test_a_lone_director_keeps_its_vip_across_a_restart(tmp_path):
    api = FakeApi([virtualserver([1])], echo=True,
                  nodes={"node-a": {"metadata": {"name": "node-a", "labels": {}}}})
    director = Director(api, "node-a", tmp_path)
    director.start()
    eventually(lambda: director.vips.holds() and director.role() == "Active")
    time.sleep(2 * HA.announce_seconds)
    director.stop()
    assert director.vips.holds(), "no other director: the VIP stays through a restart"
    assert director.ipvs.daemons() == [], "no connection sync without another director"
    assert director.vips.announced == 1, "announced at takeover, not periodically"
    director.start()
    time.sleep(1.0)
    assert director.vips.holds() and director.role() == "Active"
    director.stop()
