"""Director-side health checks of real servers, as keepalived does.

Each director checks every real server of every VirtualServer it programs that has a
`spec.healthCheck`, from its own network namespace (the one the agent runs in, which is the
one that forwards to the real servers), independently of the other directors: a standby
keeps its table ready for a takeover, health included.

A target is one (VirtualServer namespace/name, real-server address, real-server port): the
same pod behind two ports of a VirtualServer is two targets, as two `real_server` blocks
are in keepalived. Its state is a rise/fall machine (`State`):

- a new target starts healthy (keepalived's default, without `alpha`): a server the
  controller calls ready keeps its traffic until the checks prove otherwise, and an agent
  restart does not take every server out at once;
- `failureThreshold` consecutive failed checks make it unhealthy (the director gives it
  weight 0: no new connections, established ones go on; it is not deleted);
- `successThreshold` consecutive good checks make it healthy again (its weight back).

A check is a TCP connect, or an HTTP/1.1 GET of `path` (Host: the address, Connection:
close) whose status code must be one of `statusCodes`; each is bounded by
`timeoutSeconds`. Checks start every `intervalSeconds` (with +-10% jitter, the first
within a second of the target appearing, spread at random so thousands of targets do not
fire together).

`Monitor` runs them all in one thread with its own asyncio loop (thousands of concurrent
checks without thousands of threads, at most `max_concurrent` sockets open at once). The
sync loop hands it the current targets (`update`), reads the unhealthy set when it builds
the desired table (`unhealthy`), and is woken (`on_change`) when a target flips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace

from lvs_operator.api import spec
from lvs_operator.model import IPAddress, format_endpoint

log = logging.getLogger(__name__)

# (VirtualServer namespace/name, real-server address, real-server port)
Key = tuple[str, IPAddress, int]

USER_AGENT = "lvs-operator-health-check"
MAX_STATUS_LINE = 8192
JITTER = 0.1  # each interval is stretched or shrunk by up to this share, at random
FIRST_SPREAD = 1.0  # seconds over which the first checks of new targets are spread
MAX_CONCURRENT = 1024  # checks in flight at once (each holds a socket)


@dataclass(frozen=True)
class Target:
    """One real server of one VirtualServer to check, and how."""

    vs: str  # namespace/name
    address: IPAddress
    port: int
    check: spec.HealthCheck

    @property
    def key(self) -> Key:
        """Return (namespace/name, address, port)."""
        return (self.vs, self.address, self.port)

    def __str__(self) -> str:
        return f"{self.vs} {format_endpoint(self.address, self.port)}"


@dataclass(frozen=True)
class State:
    """The rise/fall machine of one target: healthy or not, and the current run of
    consecutive good (`successes`) or failed (`failures`) checks."""

    healthy: bool = True
    successes: int = 0
    failures: int = 0

    def after(self, ok: bool, *, rise: int, fall: int) -> State:
        """Return the state after a check that succeeded (`ok`) or failed: unhealthy after
        `fall` failures in a row, healthy again after `rise` successes in a row."""
        if ok:
            successes = self.successes + 1
            return State(healthy=self.healthy or successes >= rise, successes=successes)
        failures = self.failures + 1
        return State(healthy=self.healthy and failures < fall, failures=failures)


@dataclass(frozen=True)
class Result:
    """What one check found: `ok`, or why not (`detail`)."""

    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Health:
    """A target's health as the rest of the agent sees it (for status and metrics)."""

    healthy: bool
    checks: int = 0  # checks done
    failures: int = 0  # checks that failed
    detail: str = ""  # why the last failed check failed


Probe = Callable[[Target], Awaitable[Result]]


# --- probes ----------------------------------------------------------------------------------

async def probe_tcp(address: IPAddress, port: int, *, timeout: float) -> Result:
    """Return whether a TCP connection to address:port opens within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(str(address), port)
    except TimeoutError:
        return Result(False, f"no TCP connection within {_seconds(timeout)}")
    except OSError as e:
        return Result(False, f"TCP connect: {_why(e)}")
    await _close(writer)
    return Result(True)


async def probe_http(address: IPAddress, port: int, *, path: str = "/",
                     status_codes: Iterable[int] = (200,), timeout: float) -> Result:
    """Return whether an HTTP GET of `path` on address:port answers, within `timeout`
    seconds, with one of `status_codes` (only the status line is read)."""
    host = format_endpoint(address, port) if port != 80 else (
        f"[{address}]" if address.version == 6 else str(address))
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
               "Accept: */*\r\nConnection: close\r\n\r\n").encode("ascii")
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(str(address), port)
            writer.write(request)
            await writer.drain()
            line = await reader.readline()
    except TimeoutError:
        return Result(False, f"no HTTP answer within {_seconds(timeout)}")
    except ValueError:  # longer than the stream's limit (64 KiB) without a newline
        return Result(False, "HTTP: status line too long")
    except OSError as e:
        return Result(False, f"HTTP: {_why(e)}")
    finally:
        if writer is not None:
            await _close(writer)
    parts = line[:MAX_STATUS_LINE].decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit() \
            or len(parts[1]) != 3:
        shown = line[:80].decode("latin-1").strip()
        return Result(False, f"HTTP: not an HTTP status line: {shown!r}" if shown
                      else "HTTP: connection closed without an answer")
    code = int(parts[1])
    if code not in set(status_codes):
        return Result(False, f"HTTP GET {path}: status {code}")
    return Result(True)


async def probe(target: Target) -> Result:
    """Run `target`'s check once."""
    check = target.check
    if check.kind == "http":
        return await probe_http(target.address, target.port, path=check.path,
                                status_codes=check.status_codes,
                                timeout=check.timeout_seconds)
    return await probe_tcp(target.address, target.port, timeout=check.timeout_seconds)


async def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
        async with asyncio.timeout(1.0):
            await writer.wait_closed()


def _why(error: OSError) -> str:
    """Return what went wrong, without asyncio's "Connect call failed (address)"."""
    return os.strerror(error.errno) if error.errno else str(error) or type(error).__name__


def _seconds(value: float) -> str:
    return f"{value:g} s"


# --- the monitor -----------------------------------------------------------------------------

class Monitor:
    """Runs the checks of the current targets in a thread of its own (`start`, `stop`).

    Thread-safe: `update`, `unhealthy`, `healthy` and `statuses` may be called from any
    thread; `on_change` is called from the monitor's thread whenever a target turns
    unhealthy or healthy again.
    """

    def __init__(self, on_change: Callable[[], None] = lambda: None, *,
                 probe: Probe = probe, max_concurrent: int = MAX_CONCURRENT,
                 rng: random.Random | None = None) -> None:
        self._on_change = on_change
        self._probe = probe
        self._max_concurrent = max_concurrent
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._targets: dict[Key, Target] = {}
        self._states: dict[Key, State] = {}
        self._statuses: dict[Key, Health] = {}
        self._unhealthy: frozenset[Key] = frozenset()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._semaphore = asyncio.Semaphore(max_concurrent)
        # Only the monitor's thread touches these: each target's running task, and the
        # check it was started with (a changed check restarts it on the new interval).
        self._tasks: dict[Key, tuple[spec.HealthCheck, asyncio.Task[None]]] = {}

    # --- the sync loop's side --------------------------------------------------------------

    def update(self, targets: Iterable[Target]) -> None:
        """Check exactly `targets` from now on: new ones start (healthy), gone ones stop
        and are forgotten (one that comes back starts healthy again)."""
        wanted = {t.key: t for t in targets}
        with self._lock:
            if wanted == self._targets:
                return
            for key in self._targets.keys() - wanted.keys():
                self._states.pop(key, None)
                self._statuses.pop(key, None)
            for key in wanted.keys() - self._targets.keys():
                self._states[key] = State()
                self._statuses[key] = Health(healthy=True)
            self._targets = wanted
            self._unhealthy = frozenset(k for k, s in self._states.items() if not s.healthy)
            loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # closed: stopping
                loop.call_soon_threadsafe(self._reconcile)

    def unhealthy(self) -> frozenset[Key]:
        """Return the targets that are unhealthy now."""
        with self._lock:
            return self._unhealthy

    def healthy(self, vs: str, address: IPAddress, port: int) -> bool:
        """Return whether a target is healthy (True for one not checked)."""
        return (vs, address, port) not in self.unhealthy()

    def statuses(self) -> dict[Key, Health]:
        """Return every target's status."""
        with self._lock:
            return dict(self._statuses)

    def targets(self) -> dict[Key, Target]:
        """Return the targets being checked."""
        with self._lock:
            return dict(self._targets)

    # --- running ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start checking (in a daemon thread); returns once the thread runs."""
        if self._thread is not None:
            return
        self._started.clear()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),),
                                        name="health-checks", daemon=True)
        self._thread.start()
        self._started.wait(5)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every check and the thread (the states are kept)."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        self._thread = None

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._semaphore = asyncio.Semaphore(self._max_concurrent)
        self._loop = asyncio.get_running_loop()
        self._started.set()
        try:
            self._reconcile()
            await self._stop.wait()
        finally:
            self._loop = None
            tasks = [task for _, task in self._tasks.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.clear()

    def _reconcile(self) -> None:
        """Start and stop tasks to match the targets (in the monitor's thread)."""
        targets = self.targets()
        for key, (check, task) in list(self._tasks.items()):
            target = targets.get(key)
            if target is None or target.check != check:
                task.cancel()
                del self._tasks[key]
        for key, target in targets.items():
            if key not in self._tasks:
                first = self._rng.uniform(0, min(FIRST_SPREAD, target.check.interval_seconds))
                task = asyncio.create_task(self._run(key, first), name=f"check {target}")
                self._tasks[key] = (target.check, task)

    async def _run(self, key: Key, delay: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(delay)
        while True:
            target = self.targets().get(key)
            if target is None:
                return
            started = loop.time()
            async with self._semaphore:
                try:
                    result = await self._probe(target)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # a broken probe is a failed check, not a dead task
                    log.exception("health check of %s", target)
                    result = Result(False, f"check failed: {e}")
            self._record(target, result)
            interval = target.check.interval_seconds * self._rng.uniform(1 - JITTER, 1 + JITTER)
            await asyncio.sleep(max(0.0, started + interval - loop.time()))

    def _record(self, target: Target, result: Result) -> None:
        check = target.check
        with self._lock:
            if self._targets.get(target.key) != target:
                return  # removed or changed meanwhile
            before = self._states[target.key]
            after = before.after(result.ok, rise=check.success_threshold,
                                 fall=check.failure_threshold)
            self._states[target.key] = after
            status = self._statuses[target.key]
            self._statuses[target.key] = replace(
                status, healthy=after.healthy, checks=status.checks + 1,
                failures=status.failures + (not result.ok),
                detail=status.detail if result.ok else result.detail)
            flipped = after.healthy != before.healthy
            if flipped:
                self._unhealthy = frozenset(k for k, s in self._states.items()
                                            if not s.healthy)
        if not flipped:
            return
        if after.healthy:
            log.info("real server %s is healthy again", target)
        else:
            log.warning("real server %s is unhealthy: %s", target, result.detail)
        try:
            self._on_change()
        except Exception:
            log.exception("health change callback")
