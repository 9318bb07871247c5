"""The agent: VirtualServers and the Node in, kernel IPVS and VIPs out, status back.

Threads: one reflector per watched kind fills a cache and wakes the sync loop; the sync
loop (the thread that calls `Agent.run`) is the only writer of the kernel; the metrics
server reads the kernel under the same lock.

The loop is level-based: every sync computes the whole desired state from the caches and
converges to it, so a burst of events is one sync and a missed event is healed by the next
one. It syncs
- only after the first lists are complete (VirtualServers, its Node, the VIP pools, the
  Namespaces' labels, the directors' Leases: an agent that starts never withdraws what it
  has not yet listed, nor programs on a partial view of the pools), and not at all while
  its Node object is missing;
- when a VIP pool or a Namespace's labels change: every VirtualServer is admitted by the
  pools (`desired.Gate`) before anything is programmed for it, whatever its status says
  (deny by default: with no pools at all, nothing is programmed). One this director refuses
  although its status asks for it (a forged or stale status) is withdrawn, logged and told
  in a Warning Event, once per refusal;
- when the election's view changes (`lease`: a director's Lease appears or expires, this
  one fences itself or becomes ready), and when another director's role changes (handover);
- when a cache changed, at most once per `min_interval_seconds`;
- every `resync_seconds` (a full resync: drift repaired, director settings re-applied);
- every `drain_poll_seconds` while real servers drain, `retry_seconds` after a failure.
Stopping the agent changes nothing in the kernel (a restart or an upgrade must not disturb
traffic, and the next agent finds everything as it was: zero kernel operations), except
that VIPs another live director can take are released first and its Lease is deleted, so
they move at once instead of being held twice (`_leave`). A lone director keeps them.

A virtual service this agent had programmed that a later sync finds gone was deleted behind
its back (`ipvsadm -C`, keepalived, or kube-proxy in IPVS mode, which deletes every IPVS
service it does not know unless its `--ipvs-exclude-cidrs` covers the address): the sync puts
it back, and the VirtualServer's status entry carries a `warning` saying so, for
`RESTORED_WARNING_SECONDS` after the last time. When this node has kube-proxy's IPVS
interface (`kube-ipvs0`), the warning names kube-proxy and the CIDR to exclude. A service
that something else made on a wanted key before this agent recorded it is never adopted
(`syncer`): the VirtualServer's status entry carries an error naming it, and the gauge
`lvs_agent_foreign_services` counts it.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

import prometheus_client

from lvs_operator import syncer, vrrp
from lvs_operator.agent import (
    desired,
    drain,
    election,
    health,
    keepalived,
    lease,
    metrics,
    report,
    role,
    routes,
)
from lvs_operator.agent.settings import Settings, split_address
from lvs_operator.ipvs import IPVS, ApplyError, IPVSError
from lvs_operator.kube import client, events, watch
from lvs_operator.model import (
    IPAddress,
    ServiceKey,
    SyncDaemon,
    SyncState,
    Timeouts,
    VirtualService,
)
from lvs_operator.network import links
from lvs_operator.network.errors import NetworkError
from lvs_operator.network.sysctl import DirectorSysctls, SysctlChange
from lvs_operator.network.vip import list_addresses
from lvs_operator.ownership import Owned, OwnershipStore
from lvs_operator.plan import AddService, DeleteService, Operation, SetService

log = logging.getLogger(__name__)

SysctlApplier = Callable[[DirectorSysctls], list[SysctlChange]]
# How long a status entry warns that a service was deleted behind the agent's back and
# restored, after the last time it happened.
RESTORED_WARNING_SECONDS = 600.0
# The dummy interface kube-proxy's IPVS mode binds Service IPs to: it exists on a node
# where kube-proxy runs in IPVS mode.
KUBE_PROXY_IPVS_INTERFACE = "kube-ipvs0"


class Api(lease.Api, Protocol):
    """What the agent asks of the API server (`client.Client` does it; tests may fake it):
    lists, watches and requests (the Lease's, and Events through `kube.events`), and status
    patches."""

    def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> Any:
        """Merge-patch a VirtualServer's status; raise client.ApiError on failure."""
        ...


class Agent:
    """One director's agent. `run` it (it returns after `stop`)."""

    def __init__(self, settings: Settings, *, api: Api, ipvs: IPVS,
                 vips: syncer.VipHolder, sysctls: SysctlApplier,
                 default_interface: Callable[[], str | None] = routes.default_interface,
                 interface_exists: Callable[[str], bool] = links.interface_exists,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        """Prepare an agent talking to the API server through `api`; the kernel boundary
        comes in as `ipvs`, `vips` and `sysctls` (the real ones, or fakes in tests);
        `default_interface` finds the VIP interface when neither the VirtualServer nor the
        settings name one; `interface_exists` tells whether kube-proxy's IPVS interface is
        there."""
        self.settings = settings
        self.api = api
        self.ipvs = ipvs
        self.vips = vips
        # A registry per agent, not the library's global one: tests run several agents in
        # one process. The kernel's figures are read when scraped, the agent's are kept.
        self.registry = prometheus_client.CollectorRegistry()
        self.registry.register(metrics.KernelCollector(self._scrape))
        self.metrics = metrics.AgentMetrics(self.registry)
        self._sysctls = sysctls
        self._default_interface = default_interface
        self._interface_exists = interface_exists
        self._now = now
        # The services the last sync left in the kernel as desired, and when each service
        # found deleted behind this agent's back was last put back (monotonic).
        self._present: set[ServiceKey] = set()
        self._restored: dict[ServiceKey, float] = {}
        # Desired services the last sync found created by something else: left alone.
        self._foreign: frozenset[ServiceKey] = frozenset()
        self._store = OwnershipStore(settings.state_file)
        self._drains = drain.DrainStore(settings.drain_file)
        self._kernel = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        # Director-side health checks (spec.healthCheck), in a thread of their own: a real
        # server turning unhealthy or healthy again wakes the loop.
        self.health = health.Monitor(on_change=self._wake.set)
        self._health_events = report.EventLimiter()
        # Spec drain timeouts of every service seen, so a drain that begins after its
        # VirtualServer was deleted still gets that VirtualServer's timeout.
        self._drain_timeouts: dict[ServiceKey, int] = {}
        self._owners: dict[ServiceKey, str] = {}  # namespace/name per owned service
        # Status writes whose echo has not come back through the watch: namespace/name ->
        # (what was written (None: removed), resourceVersion of the object it was written
        # over). Without it every sync until the echo arrives would write again.
        self._written: dict[str, tuple[report.Report | None, str]] = {}
        self._term = ""  # the election term of the last sync's roles (see election.Claim)
        self._nat = False  # whether ip_forward has been asked for
        self._node_missing = False  # said so in the log already
        # The VIP pools and the Namespaces' labels admit VirtualServers (`desired.Gate`);
        # the gate is made anew when they changed (`_gate_stale`), else kept with its
        # verdicts (in `_parsed`).
        self._gate = desired.Gate()
        self._gate_stale = True
        self._invalid_pools: set[desired.InvalidPool] = set()  # logged already
        self._refused: dict[str, str] = {}  # refusals told already: namespace/name -> why
        watch_settings = settings.watch

        def reflector(name: str, path: str, transform: Callable[[Any], Any],
                      on_change: Callable[[watch.Key, Any, Any], None],
                      query: Sequence[tuple[str, str]] = ()) -> watch.Reflector[Any]:
            return watch.Reflector(
                name, lister=api.lister(path, query=query),
                watcher=api.watcher(path, query=query,
                                    timeout_seconds=watch_settings.timeout_seconds,
                                    read_timeout=watch_settings.read_timeout_seconds),
                transform=transform, on_change=on_change, on_synced=self._wake.set,
                backoff_max=watch_settings.backoff_max_seconds)

        self.virtualservers = reflector(
            "virtualservers", client.VIRTUALSERVERS, watch.keep,
            self._wake_on(partial(desired.relevant, node=settings.node)))
        # kubelet heartbeats change the Node's status, not its labels
        self.node = reflector(
            f"node {settings.node}", client.NODES, watch.keep,
            self._wake_on(desired.labels_of),
            query=[("fieldSelector", f"metadata.name={settings.node}")])
        # The VIP pools (cluster-scoped, few: whole objects) and the Namespaces' labels
        # (pools select namespaces by label; only the labels are kept).
        self.pools = reflector("vippools", client.VIPPOOLS, watch.keep, self._gate_changed)
        self.namespaces = reflector("namespaces", client.NAMESPACES, desired.labels_of,
                                    self._gate_changed)
        # This director's Lease and everyone's: who holds which VIP (`election`); None
        # without HA (a lone director holds every VIP).
        self.leases = lease.Keeper(settings.ha, node=settings.node, api=api,
                                   on_change=self._wake.set, watch_settings=watch_settings) \
            if settings.ha.enabled else None
        # With keepalived: VRRP decides who holds the VIPs (`keepalived`); the Leases only
        # say who the directors are.
        self.keepalived = keepalived.Driver(settings.ha.vrrp, node=settings.node,
                                            on_change=self._wake.set) \
            if settings.ha.keepalived else None
        self._vrrp_problem = ""  # why VRRP cannot run at all (the folder, the FIFO)
        self._managed: set[IPAddress] = set()  # VIPs keepalived holds, not this agent
        self._alone: set[IPAddress] = set()  # VIPs with no other candidate: held here
        self._members: dict[str, vrrp.Member] = {}
        self._fallback: str | None = None
        self._endpoint: tuple[str, ipaddress.IPv4Address | None] | None = None
        self._wanted: desired.Desired | None = None  # of the last sync (for a graceful stop)
        self._parsed = desired.Cache()  # what each VirtualServer alone gives, by version
        self._announced = 0.0  # when the held VIPs were last announced (monotonic)
        self._sync_problem = ""  # the connection-sync daemons' last error, logged already

    # --- running -----------------------------------------------------------------------------

    def run(self) -> None:
        """Watch and converge until `stop` is called.

        Raises:
            OSError: when the metrics address cannot be bound.
        """
        server = None
        if self.settings.metrics_address:
            host, port = split_address(self.settings.metrics_address)
            server = metrics.serve(host, port, self.registry)
        threads = [threading.Thread(target=r.run, name=r.name, daemon=True)
                   for r in self._reflectors()]
        for thread in threads:
            thread.start()
        self.health.start()
        if self.leases is not None:
            self.leases.start()
        if self.keepalived is not None:
            try:
                self.keepalived.start()
            except OSError as e:
                self._vrrp_problem = (f"cannot use the folder shared with keepalived "
                                      f"({self.keepalived.paths.root}): {e}")
                log.error("%s", self._vrrp_problem)
        try:
            with self._kernel:
                for problem in self._apply_director_settings():
                    log.error("director settings: %s", problem)
            if self._wait_for_lists():
                self._loop()
        finally:
            self._leave()
            for reflector in self._reflectors():
                reflector.stop()
            self.health.stop()
            if self.keepalived is not None:
                self.keepalived.stop()
            if server is not None:
                server.shutdown()
                server.server_close()
            for thread in threads:
                thread.join(timeout=5)

    def stop(self) -> None:
        """Make `run` return (from any thread or a signal handler). The kernel is left as
        it is."""
        self._stopping.set()
        self._wake.set()

    def table(self) -> dict[ServiceKey, VirtualService]:
        """Return the kernel's IPVS table (a plain dump, with counters)."""
        with self._kernel:
            return dict(self.ipvs.dump())

    def _scrape(self) -> metrics.Scrape:
        """Return the kernel's table, the owners of its services and the health checks'
        statuses, for a scrape."""
        with self._kernel:
            table = self.ipvs.dump()
        return metrics.Scrape(table, dict(self._owners), self.health.statuses())

    def _reflectors(self) -> tuple[watch.Reflector[Any], ...]:
        return (self.virtualservers, self.node, self.pools, self.namespaces)

    def _wait_for_lists(self) -> bool:
        """Wait until the reflectors have listed; return False when stopped first."""
        while not (all(r.synced.is_set() for r in self._reflectors())
                   and (self.leases is None or self.leases.synced.is_set())):
            if self._stopping.is_set():
                return False
            self._wake.wait(1.0)
            self._wake.clear()  # the first sync follows the lists anyway
        return not self._stopping.is_set()

    def _loop(self) -> None:
        timing = self.settings.sync
        next_full = 0.0
        while not self._stopping.is_set():
            full = time.monotonic() >= next_full
            self._wake.clear()  # changes from here on wake the next round
            soon = self._sync(full=full)
            last = time.monotonic()
            if full:
                next_full = last + timing.resync_seconds
            deadline = next_full if soon is None else min(next_full, last + soon)
            self._wake.wait(max(0.0, deadline - time.monotonic()))
            # Whatever else arrives within the minimum interval joins the next sync.
            self._stopping.wait(max(0.0, last + timing.min_interval_seconds - time.monotonic()))

    # --- one sync ----------------------------------------------------------------------------

    def _wake_on(self, relevant: Callable[[watch.Object], object]) -> Callable[
            [watch.Key, watch.Object | None, watch.Object | None], None]:
        """Return a reflector's change callback that wakes the sync loop when an object
        comes or goes, or `relevant(object)` changes."""
        def changed(key: watch.Key, old: watch.Object | None, new: watch.Object | None) -> None:
            if old is None or new is None or relevant(old) != relevant(new):
                self._wake.set()
        return changed

    def _gate_changed(self, key: watch.Key, old: object, new: object) -> None:
        """A VIP pool or a Namespace's labels changed: admit again at the next sync."""
        self._gate_stale = True
        self._wake.set()

    def _admission(self) -> desired.Gate:
        """Return the gate of the pools and Namespace labels cached now: the last one
        while neither changed. Logs each invalid pool once per resourceVersion."""
        if not self._gate_stale:
            return self._gate
        self._gate_stale = False  # before the snapshots: a change from here on counts
        namespaces = {key.name: labels for key, labels in self.namespaces.snapshot().items()}
        self._gate = desired.Gate.of(self.pools.snapshot().values(), namespaces,
                                     previous=self._gate)
        invalid = set(self._gate.invalid)
        for pool in sorted(invalid - self._invalid_pools, key=lambda p: p.name):
            log.error("VIPPool %s (resourceVersion %s) is invalid and admits nothing: %s",
                      pool.name, pool.version, pool.message)
        self._invalid_pools = invalid
        return self._gate

    def _virtualservers(self) -> dict[str, watch.Object]:
        """Return the cached VirtualServers by `namespace/name` (`str` of their
        `watch.Key`). The agent's programs, health targets and reports are keyed by
        `api.spec.VirtualServer.id` (that string): the api layer's identifier, which its
        conflict rule shares with the controller, and which api/ cannot spell as a
        `watch.Key` (it sits below kube/)."""
        return {str(key): obj for key, obj in self.virtualservers.snapshot().items()}

    def _sync(self, *, full: bool) -> float | None:
        """Converge once; return how soon another sync is needed (None: at the next resync
        or change)."""
        started = time.monotonic()
        objects = self._virtualservers()
        node = self.node.get(watch.Key("", self.settings.node))
        if node is None:
            if not self._node_missing:
                log.warning("Node %s does not exist: changing nothing until it does (a "
                            "missing Node must not withdraw this director's services)",
                            self.settings.node)
            self._node_missing = True
            if self.leases is not None:
                self.leases.set_owner([])  # or the garbage collector deletes its Lease
            return self.settings.sync.retry_seconds
        self._node_missing = False
        labels = desired.labels_of(node)
        gate = self._admission()
        view = decide = None
        fallback = self.settings.interface or self._default_interface()
        plan: keepalived.Plan | None = None
        if self.leases is not None:
            self.leases.set_labels(labels)  # the others learn this director's eligibility
            self.leases.set_owner(lease.owners(node))
            view = self.leases.view()
            if self.keepalived is not None:
                self._fallback = fallback
                plan = self._vrrp_plan(objects, labels, gate, view, fallback, full=full)
                self._alone = set(plan.alone)
                self._assume_states(plan)
                decide = role.vrrp_states(plan.instance_of, plan.alone,
                                          self.keepalived.states())
            else:
                self._term = view.term  # the roles decided now are claims of this term
                held = {vip for vips in self._safe_load().vips.values() for vip in vips}
                decide = role.elected(view, held=held)
        wanted = desired.build(
            objects.values(), node=self.settings.node, labels=labels, gate=gate,
            default_interface=fallback, unhealthy=self.health.unhealthy(), decide=decide,
            cache=self._parsed)
        self._wanted = wanted
        t_built = time.monotonic()
        self.health.update(wanted.health_targets)  # new real servers start healthy
        # What failed now (to retry soon), by VirtualServer; `problem`s of the programs are
        # reported too but wait for a change of their inputs.
        errors: dict[str, list[str]] = {ident: [] for ident in wanted.programs}
        with self._kernel:
            node_errors = self._apply_director_settings(nat=wanted.nat) \
                if full or (wanted.nat and not self._nat) else []
            stray: list[str] = []  # failures that belong to no VirtualServer (withdrawals)
            operations, timers = self._program(wanted, errors, node_errors, stray, full=full)
            t_programmed = time.monotonic()
            announce = None
            if view is not None:
                self._sync_daemons(wanted, view, fallback)
                if plan is None:
                    announce = self._announce(wanted, view)
            owned = self._safe_load()
        if plan is not None:
            self._vrrp_apply(plan, wanted, errors)
        t_daemons = time.monotonic()
        owners = wanted.owners  # a property that builds a dict: once, not once per key
        self._owners = {key: owners.get(key) or self._owners.get(key, "")
                        for key in owned.services}
        failed = bool(node_errors or stray) or any(errors.values())
        for problem in stray:
            log.error("withdrawing: %s", problem)
        for ident, program in wanted.programs.items():
            if program.problem:
                errors[ident].insert(0, program.problem)
        # Not a failure to retry soon: the other tool's service stays until someone acts.
        for ident, keys in _by_owner(self._foreign, wanted).items():
            errors[ident].append(f"{syncer.describe_conflicts(keys)}: this director then "
                                 "creates its own")
        self.metrics.set_foreign(len(self._foreign))
        self.metrics.observe_sync(time.monotonic() - started, operations, failed=failed)
        holding = sum(len(v) for v in owned.vips.values()) if self.keepalived is None else len(
            {p.vs.vip for p in wanted.programs.values() if p.role is role.Role.ACTIVE})
        self.metrics.set_state(vips=holding, draining=timers)
        if operations:
            log.info("applied %d IPVS operations: %s", len(operations),
                     "; ".join(str(op) for op in operations[:10])
                     + (" ..." if len(operations) > 10 else ""))
        for ident, why in sorted(wanted.withdrawn.items()):
            log.debug("%s: withdrawn: %s", ident, why)
        reported = self._report(objects, wanted, errors, node_errors)
        self._tell_refused(objects, wanted)
        t_end = time.monotonic()
        log.debug("sync took %.1f ms: desired state %.1f, kernel and VIPs %.1f, sync daemons "
                  "and announcements %.1f, status %.1f", (t_end - started) * 1e3,
                  (t_built - started) * 1e3, (t_programmed - t_built) * 1e3,
                  (t_daemons - t_programmed) * 1e3, (t_end - t_daemons) * 1e3)
        soon: float | None = None
        if failed or not reported:
            soon = self.settings.sync.retry_seconds
        elif timers:
            soon = self.settings.sync.drain_poll_seconds
        return soon if announce is None else min(announce, soon or announce)

    def _program(self, wanted: desired.Desired, errors: dict[str, list[str]],
                 node_errors: list[str], stray: list[str], *,
                 full: bool = True) -> tuple[list[Operation], int]:
        """Converge IPVS and VIPs; add what failed to `errors` (per VirtualServer),
        `node_errors` (all of them) or `stray` (none of them); `full`: check the VIPs this
        director holds in the kernel even where its record says nothing changed. Return the
        operations applied and the number of drains in progress."""
        self._drain_timeouts.update(wanted.drain_timeouts)
        # Release VIPs that are no longer wanted before their services go (a VIP without a
        # service would be answered by this node's own stack, with resets), and hold new
        # ones only once their services exist.
        own = self._own_vips(wanted)
        self._blame(self._sync_vips(own, release_only=True), wanted, errors, stray)
        timed = drain.TimedDrain(self.ipvs, store=self._drains,
                                 owned=lambda: self._store.load().services,
                                 drain_timeouts=self._drain_timeouts)
        operations: list[Operation] = []
        present, self._present = self._present, set()
        try:
            result = syncer.sync(timed, wanted.table, store=self._store, drain=True)
            operations, self._foreign = result.operations, result.conflicts
        except ApplyError as e:
            owners = wanted.owners
            for failure in e.errors:
                owner = owners.get(_key(failure.operation)) if failure.operation else None
                if owner:
                    errors[owner].append(str(failure))
                else:
                    stray.append(str(failure))
        except (IPVSError, ValueError) as e:
            node_errors.append(str(e))
        else:
            self._present = set(wanted.table) - self._foreign
            self._note_restored(operations, present, wanted)
        self._blame(self._sync_vips(own, release_only=False, verify=full), wanted,
                    errors, stray)
        return operations, len(timed.timers)

    def _note_restored(self, operations: Sequence[Operation], present: set[ServiceKey],
                       wanted: desired.Desired) -> None:
        """Remember the services `operations` added although the previous sync had left
        them `present`: something deleted them behind this agent's back."""
        now = time.monotonic()
        for op in operations:
            if isinstance(op, AddService) and op.service.key in present:
                key = op.service.key
                if key not in self._restored:
                    log.warning("%s (VirtualServer %s) was deleted behind this agent's back: "
                                "restored%s", key, wanted.owners.get(key, "?"),
                                " (kube-proxy runs in IPVS mode on this node)"
                                if self._interface_exists(KUBE_PROXY_IPVS_INTERFACE) else "")
                self._restored[key] = now

    def _warning(self, keys: Sequence[ServiceKey], kube_proxy: bool) -> str:
        """Return the status warning for a VirtualServer whose services `keys` were
        restored lately ("" for none); `kube_proxy`: kube-proxy runs in IPVS mode here."""
        if not keys:
            return ""
        names = ", ".join(str(key) for key in keys)
        text = (f"{names} deleted behind this director's back and restored (within the last "
                f"{RESTORED_WARNING_SECONDS / 60:.0f} minutes)")
        if not kube_proxy:
            return (f"{text}: `ipvsadm -C`, keepalived or another tool changes IPVS on this "
                    "node")
        cidrs = sorted({f"{key.address}/{key.address.max_prefixlen}" for key in keys
                        if key.address is not None})
        return (f"{text}: kube-proxy runs in IPVS mode on this node ({KUBE_PROXY_IPVS_INTERFACE}) "
                "and deletes the IPVS services it does not know: add "
                f"{', '.join(cidrs) or 'the VIP'} to its --ipvs-exclude-cidrs (ipvs.excludeCIDRs "
                "in its configuration)")

    def _sync_vips(self, vips: Mapping[str, set[IPAddress]], *,
                   release_only: bool, verify: bool = True) -> dict[str, str]:
        """Hold `vips` (by interface) and release the other VIPs this director owns;
        with `release_only`, release only; without `verify`, leave alone an interface where
        this director's record already holds exactly what is wanted (the full resync
        checks the kernel). Return the errors by interface."""
        problems: dict[str, str] = {}
        try:
            owned = self._store.load().vips
        except ValueError as e:
            return {name: str(e) for name in vips}
        for name in sorted(set(owned) | set(vips)):
            want = vips.get(name, set())
            mine = owned.get(name, set())
            if release_only:
                if not mine - want:
                    continue
                want = want & mine
            elif not verify and want == mine:
                # Listing an interface's addresses (and finding the link) costs more than
                # the rest of a sync under emulation; an address removed behind this
                # agent's back is put back by the next full resync.
                continue
            try:
                syncer.sync_vips(name, want, store=_InterfaceRecord(self._store, name),
                                 holder=self.vips)
            except (NetworkError, ValueError) as e:
                problems[name] = str(e)
        return problems

    def _blame(self, problems: Mapping[str, str], wanted: desired.Desired,
               errors: dict[str, list[str]], stray: list[str]) -> None:
        """Add interface `problems` to the errors of the VirtualServers held there (to
        `stray` when none is: a release failed)."""
        for name, problem in problems.items():
            owners = [ident for ident, p in wanted.programs.items() if p.interface == name]
            for ident in owners:
                errors[ident].append(problem)
            if not owners:
                stray.append(f"releasing VIPs on {name}: {problem}")

    def _apply_director_settings(self, *, nat: bool = False) -> list[str]:
        """Apply the sysctls (ip_forward too when `nat`) and IPVS timeouts; return what
        failed."""
        problems = []
        director = self.settings.director
        if director.sysctls is not None:
            # ip_forward is turned on for NAT and never off: it is the node's otherwise.
            try:
                for change in self._sysctls(replace(director.sysctls,
                                                    ip_forward=True if nat else None)):
                    log.info("sysctl %s", change)
                self._nat = nat
            except NetworkError as e:
                problems.append(str(e))
        if director.timeouts != Timeouts():
            try:
                have = self.ipvs.timeouts()
                pairs = zip((director.timeouts.tcp, director.timeouts.tcp_fin,
                             director.timeouts.udp), (have.tcp, have.tcp_fin, have.udp),
                            strict=True)
                if any(want and want != value for want, value in pairs):
                    self.ipvs.set_timeouts(director.timeouts)
                    log.info("IPVS timeouts set: %s", director.timeouts)
            except IPVSError as e:
                problems.append(str(e))
        return problems

    # --- VRRP (keepalived) ---------------------------------------------------------------------

    def _vrrp_plan(self, objects: Mapping[str, watch.Object], labels: Mapping[str, str],
                   gate: desired.Gate, view: election.View, fallback: str | None, *,
                   full: bool = True) -> keepalived.Plan:
        """Return the VRRP instances for every VirtualServer of the site that `gate`
        admits, with the directors its pool gives it (every director must compute the same
        table), and every director with a Lease (live or not: a director the API server has
        not heard from lately may only be cut off from the API server; VRRP judges
        liveness); publish this director's VRRP address in its Lease."""
        assert self.keepalived is not None and self.leases is not None
        interface, address = self._vrrp_endpoint(fallback, full=full)
        self.leases.set_address(str(address) if address else "")
        members = {n: vrrp.Member(n, _ipv4(p.address), p.labels)
                   for n, p in view.peers.items()}
        members[self.settings.node] = vrrp.Member(self.settings.node, address, labels)
        wants = []
        for _, parsed in self._parsed.parse(objects.values()):
            vs = parsed.verdict(gate).vs if parsed.vs is not None else None
            if vs is not None:
                wants.append(vrrp.Want(vs.vip, vs.directors.node_selector))
        plan = self.keepalived.plan(wants, members, address=address, interface=interface)
        self._members = members
        return plan

    def _vrrp_apply(self, plan: keepalived.Plan, wanted: desired.Desired,
                    errors: dict[str, list[str]]) -> None:
        """Write keepalived's configuration for the VIPs programmed here; add what is wrong
        to the errors of the VirtualServers VRRP would hold."""
        assert self.keepalived is not None
        vips: dict[IPAddress, str] = {}
        for program in wanted.programs.values():
            interface = program.vs.directors.interface or self._fallback
            if interface and program.vs.vip not in plan.alone:
                vips.setdefault(program.vs.vip, interface)
        problem = self._vrrp_problem or self.keepalived.apply(plan, self._members, vips)
        if problem:
            for ident, program in wanted.programs.items():
                if program.vs.vip not in plan.alone:
                    errors[ident].append(problem)
        self.metrics.set_vrrp(
            instances=sum(1 for i in plan.instances if any(v in vips for v, _ in i.vips)),
            peers=sum(1 for n, m in self._members.items()
                      if n != self.settings.node and m.address is not None),
            transitions=self.keepalived.transitions)

    def _vrrp_endpoint(self, fallback: str | None, *, full: bool = True,
                       ) -> tuple[str | None, ipaddress.IPv4Address | None]:
        """Return this director's VRRP interface and IPv4 address there (None when
        unknown); read from the kernel on a full resync (or while unknown), else as the
        last read found it (listing addresses costs more than a sync under emulation)."""
        settings = self.settings.ha.vrrp
        interface = settings.interface or fallback
        if settings.address:
            return interface, ipaddress.IPv4Address(settings.address)
        if interface is None:
            return None, None
        cached = self._endpoint
        if not full and cached is not None and cached[0] == interface and cached[1]:
            return cached
        self._endpoint = interface, self._first_address(interface)
        return self._endpoint

    def _first_address(self, interface: str) -> ipaddress.IPv4Address | None:
        """Return `interface`'s first IPv4 address that is no VIP (None: it has none)."""
        try:
            found = [a for a, _ in list_addresses(interface) if a.version == 4]
        except NetworkError as e:
            log.warning("VRRP interface %s: %s", interface, e)
            return None
        # The director's own address comes first; VIPs (added later) come after it.
        own = [a for a in found if a not in self._managed and a not in self._held()]
        return own[0] if own else None

    def _assume_states(self, plan: keepalived.Plan) -> None:
        """For the instances keepalived has reported nothing about since this agent
        started, take the kernel's word: MASTER where one of their VIPs is on this
        director, BACKUP elsewhere (read once per instance)."""
        assert self.keepalived is not None
        known = self.keepalived.states()
        unknown = [i for i in plan.instances if i.name not in known]
        if not unknown or plan.options is None:
            return
        interfaces = {self._fallback, self.settings.ha.vrrp.interface} | {
            (obj.get("spec") or {}).get("directors", {}).get("interface")
            for obj in self.virtualservers.snapshot().values()} | {
            p.directors.interface for p in self._gate.pools}
        present: set[IPAddress] = set()
        for name in sorted(i for i in interfaces if isinstance(i, str) and i):
            try:
                present |= {a for a, _ in list_addresses(name)}
            except NetworkError:
                continue
        self.keepalived.assume({
            i.name: vrrp.MASTER if any(v in present for v, _ in i.vips) else vrrp.BACKUP
            for i in unknown})

    def _own_vips(self, wanted: desired.Desired) -> dict[str, set[IPAddress]]:
        """Return the VIPs this agent holds itself, by interface: all of them without
        keepalived; with it, those with no other candidate director."""
        if self.keepalived is None:
            return wanted.vips
        self._managed = {p.vs.vip for p in wanted.programs.values()}
        own = {vip for vip in self._managed if vip in self._alone}
        self._managed -= own
        return {name: vips & own for name, vips in wanted.vips.items() if vips & own}

    def _held(self) -> set[IPAddress]:
        return {vip for vips in self._safe_load().vips.values() for vip in vips}

    # --- failover ------------------------------------------------------------------------------

    def _sync_daemons(self, wanted: desired.Desired, view: election.View,
                      fallback: str | None) -> None:
        """Run the kernel's connection-sync daemons this director's roles ask for: master
        while it is Active for a VirtualServer, backup while Standby for one (both at once
        is fine: a director's multicast does not come back to itself). Only where another
        director could take over: some program has another eligible director with a Lease
        (live or not, so that a peer's short outage does not restart the daemons). An
        unchanged daemon is left running; a daemon is stopped only when this agent manages
        daemons (several directors) or when it is the one this agent would run."""
        ha = self.settings.ha
        programs = list(wanted.programs.values())
        several = any(view.others(p.vs.directors.node_selector) for p in programs)
        interface = ha.sync_interface or next(iter(sorted(
            {i for p in programs if (i := p.vs.directors.interface or fallback)})), None)
        states = set()
        if several and self.keepalived is not None:
            # Both, always: VRRP moves VIPs without asking the agent, and the daemons must
            # already run when it does (a director's own multicast does not come back).
            states = {SyncState.MASTER, SyncState.BACKUP}
        elif several:
            roles = {p.role for p in programs}
            if role.Role.ACTIVE in roles:
                states.add(SyncState.MASTER)
            if role.Role.STANDBY in roles:
                states.add(SyncState.BACKUP)
        problems = []
        try:
            running = {d.state: d for d in self.ipvs.daemons()}
            for state in SyncState:
                have = running.get(state)
                ours = SyncDaemon(state, interface, ha.sync_id) if interface else None
                want = ours if state in states else None
                if have == want:
                    continue
                if state in states and not interface:
                    problems.append("no interface for the connection-sync daemon: set "
                                    "LVS_SYNC_INTERFACE")
                    continue
                if have is not None and (several or have == ours):
                    self.ipvs.stop_daemon(state)
                    log.info("stopped the IPVS sync daemon %s", have)
                if want is not None:
                    self.ipvs.start_daemon(want)
                    log.info("started the IPVS sync daemon %s", want)
        except IPVSError as e:
            problems.append(str(e))
        problem = "; ".join(problems)
        if problem and problem != self._sync_problem:
            # Failover still works without it; established connections would not survive.
            log.error("connection sync: %s", problem)
        self._sync_problem = problem

    def _announce(self, wanted: desired.Desired, view: election.View) -> float | None:
        """Announce the VIPs held again when due, those that other directors could hold
        too (a neighbour may have missed the takeover's announcements); return the seconds
        until the next announcement, None when none is due."""
        period = self.settings.ha.announce_seconds
        shared = {p.vs.vip for p in wanted.programs.values()
                  if p.interface and view.others(p.vs.directors.node_selector)}
        vips = {name: held & shared for name, held in self._safe_load().vips.items()
                if held & shared}
        if period <= 0 or not vips:
            return None
        now = time.monotonic()
        if now < self._announced + period:
            return self._announced + period - now
        for name, held in sorted(vips.items()):
            try:
                self.vips.announce(name, sorted(held, key=lambda a: (a.version, int(a))))
            except NetworkError as e:
                log.warning("announcing VIPs on %s: %s", name, e)
        self._announced = now
        return period

    def _leave(self) -> None:
        """On a graceful stop: release the VIPs that another live director can take, report
        Standby for them, then delete the Lease so that director takes them at once. VIPs
        no other live director can take stay (a restart of a lone director must not drop
        traffic), as does everything else in the kernel."""
        wanted = self._wanted
        if self.leases is None:
            return
        if self.keepalived is not None:
            # keepalived holds the VIPs and lets go of them when its own container stops
            # (a priority-0 advert: the others take over at once). The Lease stays: this
            # director is still a member (a DaemonSet pod comes back); its Node's deletion
            # deletes it.
            self.leases.stop(delete=False)
            return
        if wanted is None:  # never synced: nothing known to hand over
            self.leases.stop(delete=False)
            return
        view = self.leases.view()
        handed = {ident: p for ident, p in wanted.programs.items()
                  if p.interface and any(view.peers[n].live
                                         for n in view.others(p.vs.directors.node_selector))}
        gone = {p.vs.vip for p in handed.values()}
        keep: dict[str, set[IPAddress]] = {}
        for p in wanted.programs.values():
            if p.interface and p.vs.vip not in gone:
                keep.setdefault(p.interface, set()).add(p.vs.vip)
        if handed:
            with self._kernel:
                problems = self._sync_vips(keep, release_only=True)
            if problems:
                for name, problem in problems.items():
                    log.error("stopping: cannot release the VIPs on %s: %s", name, problem)
                self.leases.stop(delete=False)  # the Lease expires instead
                return
            log.info("stopping: released %d VIPs for the other directors to take",
                     len(gone))
            objects = self._virtualservers()
            for ident, p in handed.items():
                obj = objects.get(ident)
                if obj is None:
                    continue
                current = report.entry_of(obj, self.settings.node)
                self._write(obj, report.report(
                    role=role.Role.STANDBY.value, generation=p.generation,
                    error=str((current or {}).get("error") or ""), previous=current,
                    unhealthy=p.unhealthy, term=self._term), previous=current)
        self.leases.stop(delete=True)

    def _safe_load(self) -> Owned:
        try:
            return self._store.load()
        except ValueError:
            return Owned()

    # --- status --------------------------------------------------------------------------------

    def _report(self, objects: Mapping[str, watch.Object], wanted: desired.Desired,
                errors: Mapping[str, list[str]], node_errors: list[str]) -> bool:
        """Write this director's status.directors entry where it changed, and an Event for
        each new error. Return False when a write failed (to retry soon)."""
        node = self.settings.node
        ok = True
        self._written = {k: v for k, v in self._written.items() if k in objects}
        # Restorations older than the warning's lifetime are forgotten here, where the
        # warning is decided (every sync reports).
        now = time.monotonic()
        self._restored = {key: when for key, when in self._restored.items()
                          if now - when < RESTORED_WARNING_SECONDS}
        restored: dict[str, list[ServiceKey]] = {}
        owners = wanted.owners  # a property that builds a dict
        for key in sorted(self._restored, key=ServiceKey.sort_key):
            owner = owners.get(key)
            if owner:
                restored.setdefault(owner, []).append(key)
        kube_proxy = bool(restored) and self._interface_exists(KUBE_PROXY_IPVS_INTERFACE)
        for ident, obj in objects.items():
            current = report.entry_of(obj, node)
            program = wanted.programs.get(ident)
            want: report.Report | None = None
            if program is not None:
                error = "; ".join([*node_errors, *errors.get(ident, [])])
                want = report.report(role=program.role.value, generation=program.generation,
                                     error=error, previous=current,
                                     unhealthy=program.unhealthy, term=self._term,
                                     warning=self._warning(restored.get(ident, []),
                                                           kube_proxy))
                if want.matches(current):
                    continue
            elif current is None:
                continue
            version = str((obj.get("metadata") or {}).get("resourceVersion"))
            if self._written.get(ident) == (want, version):
                continue  # written already; the watch has not brought it back yet
            if not report.room_for(obj, node):
                log.warning("VirtualServer %s: status.directors has %d entries, the most "
                            "it may have: this director does not report there", ident,
                            report.MAX_DIRECTORS)
                continue  # the API server would refuse it: no retry every few seconds
            ok = self._write(obj, want, previous=current) and ok
        return ok

    def _tell_refused(self, objects: Mapping[str, watch.Object],
                      wanted: desired.Desired) -> None:
        """Log, and tell in a Warning Event on the VirtualServer, each refusal of the gate
        that its status contradicts (`Desired.refused`), once per refusal: its reason is
        the verdict's (`pools.REASONS`)."""
        told = {}
        for ident, verdict in sorted(wanted.refused.items()):
            told[ident] = verdict.message
            obj = objects.get(ident)
            if self._refused.get(ident) == verdict.message or obj is None:
                continue
            message = (f"not programmed: {verdict.message} (its status asks the directors "
                       "to program it, but no VIP pool admits it)")
            log.warning("VirtualServer %s: %s", ident, message)
            try:
                events.post(self.api, report.event(obj, node=self.settings.node,
                                                   message=message, now=self._now(),
                                                   reason=verdict.reason))
            except client.ApiError as e:
                log.warning("cannot post an Event on %s: %s", ident, e)
        self._refused = told

    def _write(self, obj: watch.Object, want: report.Report | None, *,
               previous: Mapping[str, object] | None) -> bool:
        meta = obj.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        now = self._now()
        value = None if want is None else report.entry(want, now=now)
        try:
            self.api.patch_status(namespace, name, report.patch(self.settings.node, value))
        except client.ApiError as e:
            if e.status == 404:
                return True  # deleted meanwhile: nothing to report on
            log.warning("cannot write status of VirtualServer %s/%s: %s", namespace, name, e)
            return False
        self._written[f"{namespace}/{name}"] = (want, str(meta.get("resourceVersion")))
        if want is not None and want.error and want.error != (previous or {}).get("error"):
            log.error("VirtualServer %s/%s: %s", namespace, name, want.error)
            try:
                events.post(self.api, report.event(obj, node=self.settings.node,
                                                   message=want.error, now=now))
            except client.ApiError as e:
                log.warning("cannot post an Event on %s/%s: %s", namespace, name, e)
        if want is not None:
            self._health_event(obj, report.unhealthy_of(previous), want.unhealthy, now=now)
        return True

    def _health_event(self, obj: watch.Object, before: Sequence[str], after: Sequence[str],
                      *, now: datetime) -> None:
        """Post an Event when real servers failed health checks or passed them again (at
        most one per VirtualServer every report.HEALTH_EVENT_SECONDS)."""
        event = report.health_event(obj, node=self.settings.node, before=before, after=after,
                                    now=now)
        meta = obj.get("metadata") or {}
        ident = f"{meta.get('namespace')}/{meta.get('name')}"
        if event is None or not self._health_events.allow(ident):
            return
        try:
            events.post(self.api, event)
        except client.ApiError as e:
            log.warning("cannot post an Event on %s: %s", ident, e)


class _InterfaceRecord(OwnershipStore):
    """The ownership record as `syncer.sync_vips` sees it for one interface: that
    interface's VIPs only; what it writes leaves the other interfaces' VIPs alone.
    (`sync_vips` holds the VIPs of one interface and releases ours everywhere else.)"""

    def __init__(self, store: OwnershipStore, interface: str) -> None:
        super().__init__(store.path)
        self._store = store
        self._interface = interface

    def load(self) -> Owned:
        owned = self._store.load()
        return Owned(services=owned.services,
                     vips={k: v for k, v in owned.vips.items() if k == self._interface})

    def update(self, *, services: set[ServiceKey] | None = None,
               vips: dict[str, set[IPAddress]] | None = None) -> None:
        if vips is not None:
            others = {k: v for k, v in self._store.load().vips.items() if k != self._interface}
            vips = {**others, self._interface: vips.get(self._interface, set())}
        self._store.update(services=services, vips=vips)


def _key(operation: Operation) -> ServiceKey:
    """Return the key of the service `operation` acts on."""
    if isinstance(operation, DeleteService):
        return operation.key
    if isinstance(operation, AddService | SetService):
        return operation.service.key
    return operation.service


def _by_owner(keys: frozenset[ServiceKey], wanted: desired.Desired) -> dict[str, list[ServiceKey]]:
    """Return `keys` grouped by the VirtualServer that wants each."""
    owners = wanted.owners
    grouped: dict[str, list[ServiceKey]] = {}
    for key in keys:
        if key in owners:
            grouped.setdefault(owners[key], []).append(key)
    return grouped


def _ipv4(text: str) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address `text` (a Lease's VRRP address), None when it is none."""
    try:
        return ipaddress.IPv4Address(text) if text else None
    except ValueError:
        return None
