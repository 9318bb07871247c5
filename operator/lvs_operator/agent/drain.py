"""Graceful drain with a deadline, on top of `plan`'s drain.

`plan(drain=True)` gives a real server that is no longer wanted weight 0 (no new
connections; established ones go on) and deletes it once it has no connections; it has no
clock, so a client that never closes would keep a weight-0 server forever. This module adds
the clock: a real server being drained gets `spec.drain.timeoutSeconds` from the moment its
drain began, after which `expire` reads its connection counters as zero, and `plan` deletes
it. `TimedDrain` applies that to the dumps `syncer.sync` makes, so neither `plan` nor
`syncer` needs to know.

The start times are wall-clock times, kept in a file beside the ownership record
(`DrainStore`), so a restarted agent neither forgets a drain nor restarts its clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from lvs_operator.files import replace_file
from lvs_operator.ipvs import IPVS
from lvs_operator.model import (
    RealKey,
    RealServer,
    ServiceKey,
    SyncDaemon,
    SyncState,
    Table,
    Timeouts,
    VirtualService,
)
from lvs_operator.plan import DeleteReal, DeleteService, Operation

# spec.drain.timeoutSeconds' default, for a service whose VirtualServer is gone and whose
# drain began only after an agent restart (its timeout died with the object).
DEFAULT_TIMEOUT = 300


@dataclass(frozen=True)
class Timer:
    """A drain in progress: began at `started` (seconds since the epoch), lasts `timeout`."""

    started: float
    timeout: int

    def expired(self, now: float) -> bool:
        """Return whether the drain's time is up at `now`."""
        return now - self.started >= self.timeout


def draining(actual: Table, desired: Table,
             owned: Collection[ServiceKey]) -> Iterator[tuple[ServiceKey, RealServer]]:
    """Yield (service key, real server) for every real server being withdrawn: in an owned
    service of `actual` but not wanted there by `desired`. A desired service that is not
    owned was created by something else (`plan.conflicts`): its real servers are not ours to
    drain."""
    for key, service in actual.items():
        want = desired.get(key)
        if want is service or key not in owned:
            continue  # exactly as desired (dump with `expect`), or not ours to drain
        for real in service.reals.values():
            if want is None or real.key not in want.reals:
                yield key, real


def timer_id(key: ServiceKey, real: RealServer) -> str:
    """Return the name a drain is kept under: `TCP 192.0.2.1:80 10.0.0.5:80`."""
    return f"{key} {real}"


def expire(actual: Table, desired: Table, *, owned: Collection[ServiceKey],
           timers: Mapping[str, Timer], timeouts: Mapping[ServiceKey, int],
           now: float) -> tuple[dict[ServiceKey, VirtualService], dict[str, Timer]]:
    """Return `actual` with the real servers whose drain timed out read as idle, and the
    timers of every drain in progress.

    A drain found without a timer starts now, with its service's timeout from `timeouts`
    (or `DEFAULT_TIMEOUT`); a timer whose server is no longer draining is dropped; a
    changed `spec.drain.timeoutSeconds` applies to drains already running.
    """
    result = dict(actual)
    running: dict[str, Timer] = {}
    expired: dict[ServiceKey, set[RealKey]] = {}
    for key, real in draining(actual, desired, owned):
        name = timer_id(key, real)
        old = timers.get(name)
        timeout = timeouts.get(key, old.timeout if old else DEFAULT_TIMEOUT)
        timer = Timer(started=old.started if old else now, timeout=timeout)
        running[name] = timer
        if real.connections and timer.expired(now):
            expired.setdefault(key, set()).add(real.key)
    for key, gone in expired.items():
        service = actual[key]
        result[key] = service.with_reals(
            replace(r, active_conns=0, inactive_conns=0) if r.key in gone else r
            for r in service.reals.values())
    return result, running


class DrainStore:
    """The drains in progress, as JSON at `path` (beside the ownership record)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Timer]:
        """Return the saved timers; none when the file does not exist.

        Raises:
            ValueError: when the file exists but is not what `save` writes.
        """
        try:
            raw = json.loads(self.path.read_text())
            return {name: Timer(float(started), int(timeout))
                    for name, (started, timeout) in raw["drains"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"the drain record {self.path} is unreadable ({e}): fix or "
                             "remove it (removing it restarts the drains in progress)") from None

    def save(self, timers: Mapping[str, Timer]) -> None:
        """Write `timers` atomically (a temporary file renamed over the old one)."""
        data = {"drains": {name: [t.started, t.timeout] for name, t in sorted(timers.items())}}
        replace_file(self.path, json.dumps(data, indent=1))


class TimedDrain:
    """An `IPVS` whose dumps show real servers drained past their deadline as idle.

    Everything else goes to `inner` unchanged. Made for `syncer.sync(..., drain=True)`, which
    dumps with `expect` = the desired table: that is how this class knows what is wanted.
    After a dump, `timers` holds the drains in progress (also saved to `store` when they
    changed).
    """

    def __init__(self, inner: IPVS, *, store: DrainStore, owned: Callable[[], set[ServiceKey]],
                 drain_timeouts: Mapping[ServiceKey, int],
                 clock: Callable[[], float] = time.time) -> None:
        """Wrap `inner`; `owned` returns the services this director owns (the record),
        `drain_timeouts` each desired service's spec.drain.timeoutSeconds."""
        self.inner = inner
        self.store = store
        self.owned = owned
        self.drain_timeouts = drain_timeouts
        self.clock = clock
        self.timers: dict[str, Timer] = {}

    def dump(self, *, expect: Table | None = None) -> dict[ServiceKey, VirtualService]:
        """Return the inner dump, drained-out real servers read as idle.

        Raises:
            IPVSError: when the table cannot be read.
            ValueError: when the drain or ownership record is unreadable.
        """
        desired = expect or {}
        actual = self.inner.dump(expect=expect)
        saved = self.store.load()
        result, self.timers = expire(actual, desired, owned=self.owned(), timers=saved,
                                     timeouts=self.drain_timeouts, now=self.clock())
        if self.timers != saved:
            self.store.save(self.timers)
        return result

    def apply(self, operations: Iterable[Operation]) -> list[Operation]:
        """Apply `operations` with the inner IPVS (see `IPVS.apply`); the drains they end
        are forgotten. Returns the operations as a list.

        Raises:
            ApplyError: as the inner IPVS (the timers are then kept until the next dump).
        """
        done = self.inner.apply(operations)
        ended = {timer_id(op.service, op.real) for op in done if isinstance(op, DeleteReal)}
        deleted = {f"{op.key} " for op in done if isinstance(op, DeleteService)}
        left = {name: timer for name, timer in self.timers.items()
                if name not in ended and not any(name.startswith(k) for k in deleted)}
        if left != self.timers:
            self.timers = left
            self.store.save(left)
        return done

    def timeouts(self) -> Timeouts:
        """Return the inner IPVS's timeouts."""
        return self.inner.timeouts()

    def set_timeouts(self, timeouts: Timeouts) -> None:
        """Set the inner IPVS's timeouts."""
        self.inner.set_timeouts(timeouts)

    def daemons(self) -> list[SyncDaemon]:
        """Return the inner IPVS's sync daemons."""
        return self.inner.daemons()

    def start_daemon(self, daemon: SyncDaemon) -> None:
        """Start a sync daemon in the inner IPVS."""
        self.inner.start_daemon(daemon)

    def stop_daemon(self, state: SyncState) -> None:
        """Stop a sync daemon in the inner IPVS."""
        self.inner.stop_daemon(state)
