"""`lvs-operator keepalived`: run keepalived on the agent's files and guard against VIPs
outliving it.

    lvs-operator keepalived --dir DIR [--keepalived PATH] [--metrics-address HOST:PORT]

The agent (the other container of the pod) writes instances.json, then keepalived.conf, to
DIR. This program:

1. waits until both exist (saying which it waits for), and until keepalived.conf passes
   `keepalived -t`;
2. installs the VRRP guard (`network.nftables`) for instances.json's interface and peers,
   unless LVS_VRRP_GUARD=false; a guard that cannot be installed is fatal (exit 1, with
   what to do), as running without it would be a silent loss of protection;
3. starts the watchdog (`watchdog`) and keepalived as a child,
   `keepalived -n -l -D --vrrp -f DIR/keepalived.conf -p DIR/keepalived.pid -r DIR/vrrp.pid`
   (in the foreground, logging to our stdout and stderr);
4. every POLL_SECONDS: a keepalived.conf with new content that passes `keepalived -t` is
   loaded with SIGHUP (one that fails is logged and not loaded: keepalived keeps the last
   good one); a new instances.json goes to the watchdog, and to the guard when the
   interface or the peers changed;
5. SIGTERM / SIGINT are passed to keepalived; when it has exited, the VIPs it left are
   deleted, the guard is removed and this program exits with keepalived's status;
6. when keepalived exits on its own, the watchdog stops, the VIPs listed in instances.json
   that are still in the kernel are deleted, and this program exits non-zero (the kubelet
   restarts the container). The guard stays until the restart replaces it.

Settings come from the command line, else the environment: LVS_KEEPALIVED_DIR
(/run/lvs-operator/keepalived), LVS_KEEPALIVED_BINARY (keepalived),
LVS_KEEPALIVED_METRICS_ADDRESS (0.0.0.0:9641; "" for none), LVS_VRRP_GUARD (true).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lvs_operator import vrrp
from lvs_operator.keepalived.metrics import Metrics, serve
from lvs_operator.keepalived.watchdog import Watchdog
from lvs_operator.network.nftables import Guard, GuardError

POLL_SECONDS = 0.2  # how often the files and the child are looked at
CHECK_TIMEOUT = 30.0  # seconds for `keepalived -t` (about 40 ms; generous for emulation)
DEFAULT_METRICS_ADDRESS = "0.0.0.0:9641"
EXIT_OK, EXIT_FAILED = 0, 1

log = logging.getLogger(__name__)


class SettingsError(ValueError):
    """A setting that cannot be used (the message names it and what is allowed)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """How the keepalived container runs.

    Attributes:
        dir: the folder shared with the agent (`vrrp.Paths`).
        binary: the keepalived program.
        metrics: where to serve /metrics and /healthz (host, port); None: nowhere.
        guard: whether to install the nftables VRRP guard (LVS_VRRP_GUARD).
        nft: the nft program.
    """

    dir: Path = vrrp.DEFAULT_DIR
    binary: str = "keepalived"
    metrics: tuple[str, int] | None = None
    guard: bool = True
    nft: str = "nft"


def settings_from(env: Mapping[str, str], *, dir: str | None = None,
                  binary: str | None = None, metrics_address: str | None = None) -> Settings:
    """Return the Settings from the command line's values, else `env`, else the defaults.

    Raises:
        SettingsError: naming the setting that is wrong.
    """
    guard = env.get("LVS_VRRP_GUARD", "true").strip().lower()
    if guard not in ("true", "false"):
        raise SettingsError(f"LVS_VRRP_GUARD={guard!r}: write true or false")
    address = metrics_address if metrics_address is not None else env.get(
        "LVS_KEEPALIVED_METRICS_ADDRESS", DEFAULT_METRICS_ADDRESS)
    return Settings(
        dir=Path(dir or env.get("LVS_KEEPALIVED_DIR") or vrrp.DEFAULT_DIR),
        binary=binary or env.get("LVS_KEEPALIVED_BINARY") or "keepalived",
        metrics=parse_address(address),
        guard=guard == "true",
    )


def parse_address(text: str) -> tuple[str, int] | None:
    """Return (host, port) of `HOST:PORT` (`[::]:9641` for IPv6); None for "".

    Raises:
        SettingsError: when it is not HOST:PORT with a port from 1 to 65535.
    """
    if not text:
        return None
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"metrics address {text!r}: write HOST:PORT, e.g. "
                            f"{DEFAULT_METRICS_ADDRESS}, or '' for none")
    return host, int(port)


def command(binary: str, paths: vrrp.Paths) -> list[str]:
    """Return keepalived's command line: in the foreground (-n), logging to the console
    (-l) in detail (-D), VRRP only (--vrrp: the agent programs IPVS itself), with its
    files in the shared folder."""
    return [binary, "-n", "-l", "-D", "--vrrp", "-f", str(paths.config),
            "-p", str(paths.pid), "-r", str(paths.vrrp_pid)]


def check_config(binary: str, path: Path) -> str | None:
    """Return None when keepalived accepts the configuration in `path` (`keepalived -t`),
    else what it said (or why it could not be asked)."""
    try:
        proc = subprocess.run([binary, "-t", "-f", str(path)], capture_output=True, text=True,
                              timeout=CHECK_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run {binary} -t: {e}"
    if proc.returncode == 0:
        return None
    said = (proc.stdout + proc.stderr).strip()
    return f"keepalived -t exited {proc.returncode}: {said}"


class Process(Protocol):
    """What the supervisor needs of its child (`subprocess.Popen` provides it)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...


class Supervisor:
    """Runs keepalived and the watchdog (see the module's docstring); `run` returns the
    exit status; `request_stop` (from a signal handler) ends it.

    Args:
        settings: the Settings.
        metrics: where reloads and keepalived's state are recorded.
        watchdog: the Watchdog (not started yet).
        guard: the VRRP guard, or None when it is off.
        spawn: starts keepalived from its command line.
        check: `check_config` with the binary bound: None when a file is accepted.
    """

    def __init__(self, settings: Settings, *, metrics: Metrics, watchdog: Watchdog,
                 guard: Guard | None, spawn: Callable[[list[str]], Process],
                 check: Callable[[Path], str | None]) -> None:
        self.settings = settings
        self.paths = vrrp.Paths(settings.dir)
        self._metrics = metrics
        self._watchdog = watchdog
        self._guard = guard
        self._spawn = spawn
        self._check = check
        self._wake = threading.Event()
        self._stop_signal: int | None = None
        self._child: Process | None = None
        self._shared_text: str | None = None
        self._shared: vrrp.Shared | None = None
        self._loaded: str | None = None  # the configuration keepalived runs
        self._refused: str | None = None  # the last one `keepalived -t` refused
        self._failed = ""  # why this program must stop although keepalived runs

    def request_stop(self, signum: int) -> None:
        """Pass `signum` to keepalived and end `run` once it has exited (safe to call from
        a signal handler)."""
        self._stop_signal = signum
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signum)
        self._wake.set()

    def run(self) -> int:
        """Wait for the agent's files, run keepalived until it exits, clean up.

        Returns:
            keepalived's exit status after a requested stop (128 + N for a signal N), 1
            when it exited on its own or could not be started.
        """
        if not self._wait_for_files():
            return EXIT_OK
        assert self._shared is not None
        if self._guard is not None:
            try:
                self._guard.apply(self._shared.interface, self._shared.peers)
            except (GuardError, ValueError) as e:
                log.error("%s; exiting", e)
                return EXIT_FAILED
            log.info("VRRP guard installed on %s: VRRP accepted from %s only",
                     self._shared.interface, _peers(self._shared))
        self._watchdog.update(self._shared)
        self._watchdog.start()
        try:
            status = self._supervise()
        finally:
            self._metrics.set_up(False)
            self._watchdog.stop()
            gone = self._watchdog.release()
            if gone:
                log.warning("deleted the VIPs keepalived left behind: %s",
                            ", ".join(f"{a} on {i}" for i, a in gone))
        if self._stop_signal is None or self._failed:
            log.error("%s; exiting so that the container is restarted",
                      self._failed or f"keepalived exited on its own ({_describe(status)})")
            return max(EXIT_FAILED, status)
        if self._guard is not None:
            try:
                self._guard.remove()
            except GuardError as e:
                log.error("%s", e)
        log.info("keepalived stopped (%s)", _describe(status))
        return status

    def _wait_for_files(self) -> bool:
        """Wait for instances.json, and for a keepalived.conf that passes `keepalived -t`.

        Returns:
            False when a stop was requested first.
        """
        said = ""
        while self._stop_signal is None:
            self._read_shared()
            waiting = [str(p) for p, ready in ((self.paths.instances, self._shared),
                                                (self.paths.config, self._config()))
                       if ready is None]
            if not waiting:
                config = self._config()
                assert config is not None
                if self._accepts(config):
                    self._loaded = config
                    return True
                waiting = [f"a keepalived.conf that keepalived -t accepts in {self.paths.root}"]
            if f"{waiting}" != said:
                log.info("waiting for %s (written by the agent)", " and ".join(waiting))
                said = f"{waiting}"
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()
        return False

    def _supervise(self) -> int:
        """Start keepalived and look after it until it exits; return its exit status."""
        # A pid file left by the keepalived of an earlier container run (the folder
        # outlives it) may name a live process of this one: keepalived would then refuse
        # to start ("already running"). Nothing else uses this folder's pid files.
        for stale in (self.paths.pid, self.paths.vrrp_pid):
            stale.unlink(missing_ok=True)
        argv = command(self.settings.binary, self.paths)
        log.info("starting %s", " ".join(argv))
        try:
            child = self._spawn(argv)
        except OSError as e:
            self._failed = f"cannot start {argv[0]}: {e} (is keepalived installed? " \
                "--keepalived or LVS_KEEPALIVED_BINARY names it)"
            return EXIT_FAILED
        self._child = child
        self._metrics.set_up(True)
        if self._stop_signal is not None:  # asked to stop while starting it
            child.send_signal(self._stop_signal)
        while (status := child.poll()) is None:
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()
            if self._stop_signal is None and not self._failed:
                self._follow_files(child)
        return status if status >= 0 else 128 - status

    def _follow_files(self, child: Process) -> None:
        """Reload keepalived for a new configuration; pass a new instances.json on."""
        before = self._shared
        if self._read_shared() and self._shared is not None:
            self._watchdog.update(self._shared)
            if self._guard is not None and before is not None and (
                    before.interface, before.peers) != (self._shared.interface,
                                                        self._shared.peers):
                try:
                    self._guard.apply(self._shared.interface, self._shared.peers)
                    log.info("VRRP guard updated: VRRP accepted on %s from %s only",
                             self._shared.interface, _peers(self._shared))
                except (GuardError, ValueError) as e:
                    # The old table stays, and would drop a new peer's adverts: this
                    # director would take VIPs that peer holds. Stop instead; the restart
                    # tries again.
                    self._failed = f"{e}"
                    child.send_signal(signal.SIGTERM)
                    return
        config = self._config()
        if config is None or config in (self._loaded, self._refused):
            return
        # Right after it starts keepalived's SIGHUP handling may not be in place yet (a
        # SIGHUP would then end it): wait for its pid file. Not for the VRRP child's: with
        # no instance keepalived runs none, and a SIGHUP is what starts it.
        if not self.paths.pid.exists():
            return
        if not self._accepts(config):
            return
        child.send_signal(signal.SIGHUP)
        self._loaded = config
        self._metrics.reloaded()
        log.info("configuration changed: keepalived reloaded (SIGHUP)")

    def _accepts(self, config: str) -> bool:
        """Return whether `keepalived -t` accepts the configuration file (logging why
        not, once per content)."""
        error = self._check(self.paths.config)
        if error is None:
            self._refused = None
            return True
        if config != self._refused:
            log.error("%s is not loaded, keepalived keeps the last good one: %s",
                      self.paths.config, error)
            self._refused = config
        return False

    def _config(self) -> str | None:
        try:
            return self.paths.config.read_text()
        except FileNotFoundError:
            return None
        except OSError as e:
            log.error("reading %s: %s", self.paths.config, e)
            return None

    def _read_shared(self) -> bool:
        """Read instances.json; return whether it changed (and parsed)."""
        try:
            text = self.paths.instances.read_text()
        except FileNotFoundError:
            return False
        except OSError as e:
            log.error("reading %s: %s", self.paths.instances, e)
            return False
        if text == self._shared_text:
            return False
        self._shared_text = text
        try:
            self._shared = vrrp.Shared.from_json(text)
        except vrrp.VRRPError as e:
            log.error("%s (in %s): keeping the previous one", e, self.paths.root)
            return False
        return True


def _peers(shared: vrrp.Shared) -> str:
    return ", ".join(str(p) for p in shared.peers) or "nobody (no peers)"


def _describe(status: int) -> str:
    if status > 128 and status - 128 in signal.valid_signals():
        return f"killed by {signal.Signals(status - 128).name}"
    return f"status {status}"


def run(settings: Settings) -> int:
    """Run the keepalived container's program until keepalived exits; return the exit
    status (see `Supervisor.run`; 1 when the metrics address cannot be served)."""
    guard = Guard(nft=settings.nft) if settings.guard else None
    if guard is None:
        log.warning("LVS_VRRP_GUARD=false: no VRRP guard; forged adverts from non-peers "
                    "reach keepalived")
    metrics = Metrics(rejected=guard.rejected if guard is not None else None)
    try:
        server = serve(*settings.metrics, metrics) if settings.metrics else None
    except OSError as e:
        host, port = settings.metrics or ("", 0)
        log.error("cannot serve metrics at %s:%d: %s (LVS_KEEPALIVED_METRICS_ADDRESS)",
                  host, port, e.strerror)
        return EXIT_FAILED
    supervisor = Supervisor(
        settings, metrics=metrics, watchdog=Watchdog(metrics), guard=guard,
        spawn=subprocess.Popen,
        check=lambda path: check_config(settings.binary, path))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _: supervisor.request_stop(signum))
    try:
        return supervisor.run()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
