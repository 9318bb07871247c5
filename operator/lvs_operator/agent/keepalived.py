"""The agent's side of keepalived (LVS_HA_ENGINE=keepalived): the VRRP plan of each sync
written for the keepalived container, and keepalived's state changes read back.

The agent decides *which* VRRP instances exist and what they hold (`vrrp.plan`, from the
VirtualServers and the directors' Leases); keepalived decides *who* holds them, on the
directors' own network, whether or not the API server is there. So:

- `Driver.plan` groups the VIPs into instances (before the roles are decided: a VIP is
  Active here while its instance is MASTER); `Driver.apply` renders keepalived.conf, checks
  it with `keepalived -t` when it changed, and writes instances.json then keepalived.conf
  into the folder shared with the keepalived container (`vrrp.Paths`), which reloads
  keepalived on a change. A configuration that keepalived refuses is not used: the director
  then runs no instance (it takes no VIP: an unchecked configuration could hold anything)
  and every VirtualServer it would have served reports the error.
- A reader thread follows keepalived's notify FIFO (`INSTANCE "lvs-..." MASTER 250`) and
  wakes the sync loop on every change; a VirtualServer is Active here while its VIP's
  instance is MASTER. An agent that restarts writes the same configuration as before (no
  reload: a reload would restart keepalived's preempt delays) and takes the state of the
  instances keepalived has not reported since from the kernel: MASTER where their VIPs are
  on this director's interface, BACKUP otherwise. It learns the roles without touching
  them.
- keepalived not answering (no state for an instance 10 s after the configuration that
  made it was written) is an error in status: the keepalived container is missing, or
  down.

Nothing here adds or removes a VIP: keepalived does, and the keepalived container's
watchdog removes what keepalived left when it died or froze.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import select
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lvs_operator import vrrp
from lvs_operator.agent.settings import VRRPSettings
from lvs_operator.model import IPAddress

log = logging.getLogger(__name__)

# How long keepalived may take to report an instance's state after the configuration that
# made it was written, before the agent says keepalived is not answering.
ANSWER_SECONDS = 10.0
CHECK_TIMEOUT_SECONDS = 10.0
# How often a quiet FIFO is checked for having been replaced (keepalived restarted).
REOPEN_CHECK_SECONDS = 2.0


@dataclass(frozen=True)
class Plan:
    """The VRRP instances of one sync, before they are written (`Driver.plan`).

    Attributes:
        instances: those this director takes part in, with every VIP of theirs.
        instance_of: VIP -> the name of its instance.
        alone: VIPs with no instance (one candidate director only) -> why; the agent holds
            those itself.
        options: this director's VRRP options (None: it has no VRRP address or interface).
        problem: why this director can run no instance ("" when it can).
    """

    instances: tuple[vrrp.Instance, ...] = ()
    instance_of: Mapping[IPAddress, str] = field(default_factory=dict)
    alone: Mapping[IPAddress, str] = field(default_factory=dict)
    options: vrrp.Options | None = None
    problem: str = ""


Checker = Callable[[str], str]
"""(keepalived.conf text) -> "" when keepalived accepts it, else what it said."""


class Driver:
    """Keeps the shared folder's configuration and follows keepalived's notifications.
    `start`; `plan` and `apply` once per sync; `stop`."""

    def __init__(self, settings: VRRPSettings, *, node: str, on_change: Callable[[], None],
                 check: Checker | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.node = node
        self.paths = vrrp.Paths(settings.directory)
        self._on_change = on_change
        self._check = check or self._keepalived_check
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, str] = {}
        self._written_at: float | None = None  # when the configuration last changed
        self._checked: tuple[str, str] | None = None  # (text, verdict) of the last check
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.transitions = 0  # role changes seen (for metrics)
        # When each instance was first planned here (None: not yet read from disk).
        self._first_seen: dict[str, float] | None = None
        self._timer_pending = False

    # --- the notify FIFO ------------------------------------------------------------------

    def start(self) -> None:
        """Create the shared folder and the FIFO if missing; start reading it.

        Raises:
            OSError: when the folder or the FIFO cannot be made.
        """
        self.paths.root.mkdir(parents=True, exist_ok=True)
        fd = self._open_fifo()
        self._thread = threading.Thread(target=self._read_loop, args=(fd,),
                                        name="keepalived notify", daemon=True)
        self._thread.start()

    def _open_fifo(self) -> int:
        """Make the FIFO if it is missing (or not a FIFO) and open it; return the fd.

        Opened read-write: the FIFO then never reports end-of-file while keepalived
        restarts (no writer), and opening never blocks. keepalived uses a FIFO that exists
        and keeps it; one it made itself (it started first) it deletes when it stops, and
        makes anew: `_read_loop` then opens the new one.

        Raises:
            OSError: when it cannot be made or opened.
        """
        fifo = self.paths.fifo
        try:
            if not stat.S_ISFIFO(fifo.stat().st_mode):
                fifo.unlink()
                os.mkfifo(fifo, 0o600)
        except FileNotFoundError:
            os.mkfifo(fifo, 0o600)
        return os.open(fifo, os.O_RDWR | os.O_NONBLOCK)

    def stop(self) -> None:
        """Stop reading (keepalived and its VIPs go on as they are)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def states(self) -> dict[str, str]:
        """Return each instance's last reported (or assumed) state."""
        with self._lock:
            return dict(self._states)

    def assume(self, states: Mapping[str, str]) -> None:
        """Take `states` for instances keepalived has said nothing about (an agent that
        started while keepalived ran: on a reload keepalived reports the backups' states
        again, not the masters'); a report from keepalived wins."""
        with self._lock:
            for name, state in states.items():
                self._states.setdefault(name, state)

    def _read_loop(self, fd: int) -> None:
        buffer = b""
        checked = self._clock()
        try:
            while not self._stopping.is_set():
                ready, _, _ = select.select([fd], [], [], 0.5)
                if not ready:
                    if self._clock() - checked >= REOPEN_CHECK_SECONDS:
                        checked = self._clock()
                        fd = self._same_fifo(fd)
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                changed = False
                for raw in lines:
                    changed = self._note(raw.decode(errors="replace")) or changed
                if changed:
                    self._on_change()
        finally:
            os.close(fd)

    def _same_fifo(self, fd: int) -> int:
        """Return `fd` while it is the FIFO at the shared path, else a new one opened there
        (the old closed)."""
        try:
            if os.stat(self.paths.fifo).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        try:
            new = self._open_fifo()
        except OSError as e:
            log.warning("cannot reopen keepalived's notify FIFO %s: %s", self.paths.fifo, e)
            return fd
        os.close(fd)
        log.info("keepalived's notify FIFO %s was replaced: reading the new one",
                 self.paths.fifo)
        return new

    def _note(self, line: str) -> bool:
        """Record one FIFO line; return whether a held/not-held state changed."""
        note = vrrp.parse_notification(line)
        if note is None:
            return False
        with self._lock:
            before = self._states.get(note.instance)
            self._states[note.instance] = note.state
        if before != note.state:
            log.info("VRRP instance %s: %s (priority %d)%s", note.instance, note.state,
                     note.priority, f", was {before}" if before else "")
        if vrrp.holds(before) != vrrp.holds(note.state):
            self.transitions += 1
            return True
        return before is None

    # --- configuration ----------------------------------------------------------------------

    def plan(self, wants: Iterable[vrrp.Want], members: Mapping[str, vrrp.Member], *,
             address: ipaddress.IPv4Address | None, interface: str | None) -> Plan:
        """Return the instances for `wants` (every VIP of the site) and `members` (every
        director with a Lease, this one included); `address`/`interface`: this
        director's VRRP address and interface (None when unknown: it then runs no
        instance, and the plan says why)."""
        try:
            instances, alone = vrrp.plan(wants, members, me=self.node,
                                         vrids=self.settings.vrids)
        except vrrp.VRRPError as e:
            return Plan(problem=str(e))
        if (address is None or interface is None) and instances:
            return Plan(alone=alone, problem=(
                f"no VRRP address: set LVS_VRRP_ADDRESS, or give the VRRP interface "
                f"{interface} an IPv4 address" if interface else
                "no VRRP interface: set LVS_VRRP_INTERFACE (or LVS_INTERFACE), or give this "
                "node a default route"))
        if address is None or interface is None:
            return Plan(alone=alone)
        options = vrrp.Options(
            interface=interface, address=address,
            advert_seconds=self.settings.advert_seconds,
            preempt_delay_seconds=self.settings.preempt_delay_seconds,
            garp_refresh_seconds=self.settings.garp_refresh_seconds)
        return Plan(instances=tuple(instances),
                    instance_of={vip: i.name for i in instances for vip, _ in i.vips},
                    alone=alone, options=options)

    def apply(self, plan: Plan, members: Mapping[str, vrrp.Member],
              vips: Mapping[IPAddress, str]) -> str:
        """Write the configuration of `plan`, restricted to `vips` (this director's, with
        the interface each goes on: an instance with none of them is not run here); return
        what is wrong ("" when nothing): the plan's problem, keepalived's objection (the
        director then runs no instance: an unchecked configuration could hold anything),
        or keepalived not answering."""
        instances = [i for i in (
            vrrp.Instance(i.name, i.vrid, i.ranking,
                          tuple((vip, vips[vip]) for vip, _ in i.vips if vip in vips))
            for i in plan.instances) if i.vips]
        instances = self._defer_new(instances)
        problem = plan.problem
        # Without options (no VRRP address) the file still says "no instance": keepalived
        # must let go of what an earlier configuration gave it.
        options = plan.options or vrrp.Options(interface="", address=ipaddress.IPv4Address(0))
        text = self._render(instances, members, options)
        if plan.options is not None and instances:
            verdict = self._verdict(text)
            if verdict:
                problem = f"keepalived refuses the configuration: {verdict}"
        if (problem or plan.options is None) and instances:
            instances = []
            text = self._render(instances, members, options)
        self._write(instances, members, options, text)
        if not problem and instances:
            problem = self._silence(instances)
        return problem

    def _defer_new(self, instances: list[vrrp.Instance]) -> list[vrrp.Instance]:
        """Return `instances` without the new ones this director is not first for, until
        they are `preempt_delay_seconds` old here.

        Why: every director adds a new instance (a new VIP's, or after a director joined)
        when its own agent syncs and its keepalived reloads, seconds apart under load. The
        first to run it hears nobody and takes its VIPs, and the first-ranked director
        takes them back when it runs it too: a VIP that moves once, resetting its first
        connections, seconds after it appeared. Deferred, the first-ranked director runs
        it first; if it is down, the second takes the VIPs a little later.

        Instances already in the configuration on disk when this agent started are not
        new (an agent that restarts must not take anything away from keepalived)."""
        now = self._clock()
        if self._first_seen is None:
            self._first_seen = {name: float("-inf") for name in self._on_disk()}
        seen = self._first_seen
        for inst in instances:
            seen.setdefault(inst.name, now)
        wanted = {i.name for i in instances}
        for name in [n for n in seen if n not in wanted]:
            del seen[name]  # gone: if it comes back, it is new again
        delay = self.settings.preempt_delay_seconds
        kept, later = [], []
        for inst in instances:
            if inst.ranking[0] == self.node or now - seen[inst.name] >= delay:
                kept.append(inst)
            else:
                later.append(seen[inst.name] + delay - now)
        if later and not self._timer_pending:
            self._timer_pending = True

            def due() -> None:
                self._timer_pending = False
                self._on_change()
            timer = threading.Timer(min(later) + 0.05, due)
            timer.daemon = True
            timer.start()
        return kept

    def _on_disk(self) -> list[str]:
        """Return the instances of the shared file as it is (an earlier run's)."""
        try:
            return list(vrrp.Shared.from_json(self.paths.instances.read_text()).instances)
        except (OSError, vrrp.VRRPError):
            return []

    def _render(self, instances: list[vrrp.Instance], members: Mapping[str, vrrp.Member],
                options: vrrp.Options) -> str:
        return vrrp.render(instances, members, me=self.node, options=options,
                           paths=self.paths)

    def _verdict(self, text: str) -> str:
        """Return keepalived's objection to `text` ("" when none), checked once per text."""
        if self._checked is None or self._checked[0] != text:
            self._checked = (text, self._check(text))
        return self._checked[1]

    def _write(self, instances: list[vrrp.Instance], members: Mapping[str, vrrp.Member],
               options: vrrp.Options, text: str) -> None:
        """Write instances.json for `instances`, then `text` (their keepalived.conf)."""
        shared = vrrp.shared(instances, members, me=self.node, options=options,
                             vip_lifetime_seconds=self.settings.vip_lifetime_seconds)
        try:
            # instances.json first: the watchdog must know a VIP before keepalived holds it.
            vrrp.write_atomically(self.paths.instances, shared.to_json())
            if vrrp.write_atomically(self.paths.config, text):
                self._written_at = self._clock()
                log.info("keepalived configuration written: %d VRRP instances",
                         len(instances))
        except OSError as e:
            log.error("cannot write keepalived's configuration in %s: %s",
                      self.paths.root, e)

    def _silence(self, instances: list[vrrp.Instance]) -> str:
        """Return why keepalived seems not to run ("" when it answers)."""
        states = self.states()
        if all(i.name in states for i in instances) or self._written_at is None:
            return ""
        waited = self._clock() - self._written_at
        if waited < ANSWER_SECONDS:
            return ""
        return (f"keepalived has reported no state for {waited:.0f} s since its configuration "
                "changed: is the keepalived container (lvs-operator keepalived) running? "
                "This director takes no VIP meanwhile")

    def _keepalived_check(self, text: str) -> str:
        """Run `keepalived -t` on `text`; return "" when it passes, else its complaint."""
        with tempfile.NamedTemporaryFile("w", suffix=".conf", prefix="keepalived-check-",
                                         dir=self._check_dir()) as f:
            f.write(text)
            f.flush()
            try:
                done = subprocess.run([self.settings.binary, "-t", "-l", "-n", "-f", f.name],
                                      capture_output=True, text=True,
                                      timeout=CHECK_TIMEOUT_SECONDS, check=False)
            except FileNotFoundError:
                return (f"{self.settings.binary} not found: the agent checks the "
                        "configuration with it (LVS_KEEPALIVED_BINARY)")
            except subprocess.TimeoutExpired:
                return f"keepalived -t took more than {CHECK_TIMEOUT_SECONDS:g} s"
        if done.returncode == 0:
            return ""
        said = [line.strip() for line in (done.stdout + done.stderr).splitlines()
                if line.strip()]
        said = [line.replace(f.name, "keepalived.conf") for line in said]
        return "; ".join(dict.fromkeys(said[:6])) or f"exit status {done.returncode}"

    def _check_dir(self) -> Path:
        return self.paths.root if self.paths.root.is_dir() else Path(tempfile.gettempdir())
