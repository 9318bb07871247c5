"""`FakeIPVS`: the `IPVS` interface in memory, with the kernel's behaviour.

Checked against Linux 6.1 by the contract test (tests/ipvs_contract.py), which runs the same
bodies against this class and against `KernelIPVS` in a fresh network namespace:

- the same errnos, checked in the kernel's order: EEXIST for a duplicate add, ESRCH when the
  virtual service is missing, ENOENT for a missing real server and for an unknown scheduler,
  ERANGE for a negative weight or a lower threshold above the upper one, EINVAL for a
  threshold above INT_MAX, a GUE tunnel without a port, an IPv6 persistence prefix outside
  1..128, a real server of the other address family unless it is tunnelled, a real-server
  address that is not unicast;
- what cannot be encoded for the kernel fails the same way (the codec is consulted);
- the same idempotence (`lvs_operator.ipvs.idempotence`, shared with the kernel class);
- dumps report zero counters unless a test sets them (`set_counters`).

Dump order is not part of the contract: the kernel lists services in hash-table order (which
depends on the namespace) and the real servers of a service newest first. The fake keeps
that second rule and lists services in the order they were added; compare tables as mappings.

Where the kernel looks at the namespace (is an address local or routable, does the sync
interface exist and have an IPv4 address), the fake assumes a namespace with `lo` up and the
interfaces given to it.
"""

from __future__ import annotations

import errno
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace

from lvs_operator.ipvs import IPVSError, idempotence, netlink
from lvs_operator.model import (
    SCHEDULERS,
    Forwarding,
    RealKey,
    RealServer,
    ServiceKey,
    Stats,
    SyncDaemon,
    SyncState,
    Table,
    Timeouts,
    Tunnel,
    TunnelType,
    VirtualService,
)
from lvs_operator.plan import (
    AddReal,
    AddService,
    DeleteReal,
    DeleteService,
    Operation,
    SetReal,
    SetService,
)

# The kernel's defaults for a new network namespace (ip_vs_proto_tcp.c / _udp.c), seconds.
DEFAULT_TIMEOUTS = Timeouts(tcp=900, tcp_fin=120, udp=300)
# Timeouts are kept in jiffies (CONFIG_HZ=250 on Debian): larger values are refused.
HZ = 250
INT_MAX = 2**31 - 1


@dataclass
class _Service:
    attributes: VirtualService
    # Newest first, like the kernel's list of destinations.
    reals: dict[RealKey, RealServer] = field(default_factory=dict)


class FakeIPVS:
    """In-memory IPVS for tests of code that programs IPVS (not thread-safe)."""

    def __init__(self, *, schedulers: Collection[str] = SCHEDULERS,
                 interfaces: Collection[str] = ("lo",)) -> None:
        """Start with an empty table.

        Args:
            schedulers: the scheduler modules this "kernel" has.
            interfaces: interfaces a sync daemon may use (each with an IPv4 address).
        """
        self._schedulers = frozenset(schedulers)
        self._interfaces = frozenset(interfaces)
        self._services: dict[ServiceKey, _Service] = {}
        self._timeouts = DEFAULT_TIMEOUTS
        self._daemons: dict[SyncState, SyncDaemon] = {}
        self._counters: dict[tuple[ServiceKey, RealKey | None], tuple[Stats, tuple[int, ...]]] = {}
        self.applied: list[Operation] = []
        """Every operation the fake executed successfully, retries included, in order."""

    # --- the IPVS interface ------------------------------------------------------------------

    def dump(self, *, expect: Table | None = None) -> dict[ServiceKey, VirtualService]:
        """Return every virtual service with its real servers (zero counters unless set).

        A service equal to `expect[key]` is returned as that object, as `KernelIPVS.dump`
        does.
        """
        out = {}
        for key, service in self._services.items():
            want = expect.get(key) if expect else None
            if want is not None and want == service.attributes.with_reals(
                    service.reals.values()):
                out[key] = want
                continue
            reals = []
            for real_key, real in service.reals.items():
                stats, conns = self._counters.get((key, real_key), (Stats(), (0, 0, 0)))
                reals.append(replace(real, stats=stats, active_conns=conns[0],
                                     inactive_conns=conns[1], persistent_conns=conns[2]))
            stats = self._counters.get((key, None), (Stats(), ()))[0]
            out[key] = replace(service.attributes, stats=stats).with_reals(reals)
        return out

    def apply(self, operations: Iterable[Operation]) -> list[Operation]:
        """Apply `operations` in order, idempotently, like `KernelIPVS.apply`; return them.

        Raises:
            ApplyError: naming every operation that failed; the others have been applied.
        """
        return idempotence.apply(operations, self._execute)

    def timeouts(self) -> Timeouts:
        """Return the current tcp / tcpfin / udp timeouts."""
        return self._timeouts

    def set_timeouts(self, timeouts: Timeouts) -> None:
        """Set the non-zero fields of `timeouts`.

        Raises:
            IPVSError: EINVAL for a negative value or one too large for the kernel's jiffies.
        """
        what = f"set IPVS timeouts tcp {timeouts.tcp} tcpfin {timeouts.tcp_fin} udp {timeouts.udp}"
        values = (timeouts.tcp, timeouts.tcp_fin, timeouts.udp)
        try:
            netlink.encode_timeouts(timeouts)
        except ValueError as exc:
            raise IPVSError(f"{what}: {exc}", code=errno.EINVAL) from exc
        if any(value > INT_MAX // HZ for value in values):
            raise idempotence.error(None, errno.EINVAL, what=what)
        current = self._timeouts
        self._timeouts = Timeouts(tcp=timeouts.tcp or current.tcp,
                                  tcp_fin=timeouts.tcp_fin or current.tcp_fin,
                                  udp=timeouts.udp or current.udp)

    def daemons(self) -> list[SyncDaemon]:
        """Return the running sync daemons, master first."""
        return [self._daemons[s] for s in SyncState if s in self._daemons]

    def start_daemon(self, daemon: SyncDaemon) -> None:
        """Start a sync daemon; one already running exactly as asked is a no-op.

        Raises:
            IPVSError: ENODEV for an interface the fake was not given, EEXIST when a daemon of
                the same state runs differently, EINVAL for what the codec cannot encode.
        """
        what = (f"start IPVS sync daemon {daemon.state.name.lower()} on {daemon.interface} "
                f"syncid {daemon.sync_id}")
        try:
            netlink.encode_daemon(daemon)
        except ValueError as exc:
            raise IPVSError(f"{what}: {exc}", code=errno.EINVAL) from exc
        running = self._daemons.get(daemon.state)
        if running == daemon:
            return
        if running is not None:
            raise IPVSError(f"{what}: one already runs on {running.interface} syncid "
                            f"{running.sync_id}: stop it first", code=errno.EEXIST)
        if daemon.interface not in self._interfaces:
            raise idempotence.error(None, errno.ENODEV, what=what)
        self._daemons[daemon.state] = daemon

    def stop_daemon(self, state: SyncState) -> None:
        """Stop the daemon of `state`; stopping one that does not run is a no-op."""
        self._daemons.pop(state, None)

    # --- test helpers ------------------------------------------------------------------------

    def set_counters(self, key: ServiceKey, real: RealKey | None = None, *,
                     stats: Stats | None = None, active: int = 0, inactive: int = 0,
                     persistent: int = 0) -> None:
        """Make dumps report these counters for a service (`real` None) or a real server."""
        self._counters[(key, real)] = (stats or Stats(), (active, inactive, persistent))

    # --- the "kernel" ------------------------------------------------------------------------

    def _execute(self, operations: Iterable[Operation]) -> list[IPVSError | None]:
        results: list[IPVSError | None] = []
        for op in operations:
            try:
                netlink.encode_operation(op)
            except ValueError as exc:
                results.append(idempotence.error(op, errno.EINVAL, str(exc)))
                continue
            code = self._run(op)
            if code:
                results.append(idempotence.error(op, code))
            else:
                self.applied.append(op)
                results.append(None)
        return results

    def _run(self, op: Operation) -> int:
        """Carry out one operation like net/netfilter/ipvs/ip_vs_ctl.c; return 0 or an errno."""
        if isinstance(op, AddService):
            if op.service.key in self._services:
                return errno.EEXIST
            code = self._check_service(op.service)
            if not code:
                self._services[op.service.key] = _Service(op.service.attributes())
            return code
        key = op.key if isinstance(op, DeleteService) else (
            op.service.key if isinstance(op, SetService) else op.service)
        service = self._services.get(key)
        if service is None:
            return errno.ESRCH
        if isinstance(op, SetService):
            code = self._check_service(op.service)
            if not code:
                service.attributes = op.service.attributes()
            return code
        if isinstance(op, DeleteService):
            del self._services[key]
            return 0
        return self._run_real(op, service)

    def _run_real(self, op: AddReal | SetReal | DeleteReal, service: _Service) -> int:
        real = op.real
        if not isinstance(op, DeleteReal):
            if real.address.version != service.attributes.key.family and (
                    real.forwarding is not Forwarding.TUNNEL):
                return errno.EINVAL
            code = _check_real(real)
            if code:
                return code
        present = real.key in service.reals
        if isinstance(op, AddReal):
            if present:
                return errno.EEXIST
            if not _unicast(real):
                return errno.EINVAL
            service.reals = {real.key: _configured(real), **service.reals}
            return 0
        if not present:
            return errno.ENOENT
        if isinstance(op, SetReal):
            service.reals[real.key] = _configured(real)
        else:
            del service.reals[real.key]
        return 0

    def _check_service(self, service: VirtualService) -> int:
        if service.scheduler != "none" and service.scheduler not in self._schedulers:
            return errno.ENOENT
        if service.key.family == 6 and service.persistence is not None and not (
                1 <= service.persistence.prefix <= 128):
            return errno.EINVAL
        return 0


def _check_real(real: RealServer) -> int:
    """Return the errno of the kernel's checks of a real server's attributes, or 0."""
    if real.upper_threshold > INT_MAX or real.lower_threshold > INT_MAX:
        return errno.EINVAL  # the netlink policy caps thresholds at INT_MAX
    if real.weight < 0:
        return errno.ERANGE
    if real.lower_threshold > real.upper_threshold:
        return errno.ERANGE
    tunnel = real.tunnel
    if (real.forwarding is Forwarding.TUNNEL and tunnel is not None
            and tunnel.type is TunnelType.GUE and tunnel.port == 0):
        return errno.EINVAL
    return 0


def _unicast(real: RealServer) -> bool:
    address = real.address
    if address.version == 4:
        return not (address.is_multicast or int(address) == 0 or int(address) == 0xFFFFFFFF)
    return not (address.is_multicast or address.is_link_local or address.is_unspecified)


def _configured(real: RealServer) -> RealServer:
    """Return `real` as a dump shows it: no counters, and a tunnel only for Tunnel mode."""
    tunnel = real.tunnel if real.forwarding is Forwarding.TUNNEL else None
    if real.forwarding is Forwarding.TUNNEL and tunnel is None:
        tunnel = Tunnel()
    return replace(real, tunnel=tunnel, active_conns=0, inactive_conns=0, persistent_conns=0,
                   stats=None)
