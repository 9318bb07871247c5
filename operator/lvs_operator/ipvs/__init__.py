"""The kernel IPVS boundary: the only place that talks to the kernel's IPVS tables.

`IPVS` is the interface; `lvs_operator.ipvs.kernel.KernelIPVS` implements it over generic
netlink, `lvs_operator.ipvs.fake.FakeIPVS` in memory with the kernel's behaviour (same
errors, same ordering). Both take and return the plain types of `lvs_operator.model`.
"""

from __future__ import annotations

import errno
import os
import typing
from collections.abc import Iterable, Sequence

from lvs_operator.model import (
    ServiceKey,
    SyncDaemon,
    SyncState,
    Table,
    Timeouts,
    VirtualService,
)
from lvs_operator.plan import Operation


class IPVSError(Exception):
    """A kernel IPVS request failed.

    Attributes:
        operation: the operation that failed, or None for a read or configuration request.
        errno: the kernel's error number.
    """

    def __init__(self, message: str, *, operation: Operation | None = None, code: int = 0) -> None:
        super().__init__(message)
        self.operation = operation
        self.errno = code

    @classmethod
    def from_errno(
        cls, code: int, *, operation: Operation | None = None, what: str = ""
    ) -> IPVSError:
        """Return an error whose message names the operation (or `what`) and the errno."""
        target = str(operation) if operation is not None else what
        return cls(f"{target}: {os.strerror(code)} ({errno.errorcode.get(code, code)})",
                   operation=operation, code=code)


class ApplyError(IPVSError):
    """One or more operations of an `apply` failed; the others were applied.

    Attributes:
        errors: one IPVSError per failed operation, in plan order.
    """

    def __init__(self, errors: Sequence[IPVSError]) -> None:
        lines = "; ".join(str(e) for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{len(errors)} IPVS operation(s) failed: {lines}{more}",
                         operation=errors[0].operation, code=errors[0].errno)
        self.errors = list(errors)


class IPVS(typing.Protocol):
    """What the rest of the code may ask of kernel IPVS (in the current network namespace)."""

    def dump(self, *, expect: Table | None = None) -> dict[ServiceKey, VirtualService]:
        """Return every virtual service with its real servers, counters and stats.

        With `expect`, a service found exactly as `expect` has it (attributes and real
        servers; counters and stats do not count) is returned as the `expect` object itself,
        without counters or stats: a resync that only compares configuration (`plan` of
        wanted services) need not have it decoded. Service stats may then be None for the
        others too; real servers' connection counters are always there.

        Raises:
            IPVSError: when the table cannot be read (no IPVS in this kernel, no permission).
        """
        ...

    def apply(self, operations: Iterable[Operation]) -> list[Operation]:
        """Apply `operations` in order, idempotently; return them as a list.

        An add that finds the object already there is turned into a set of the same
        attributes; a delete or drain of something already gone counts as done. An iterator
        (`plan.iter_plan`) is consumed as the operations go out: the kernel may be working
        on earlier ones while later ones are still being planned.

        Raises:
            ApplyError: naming every operation that failed for another reason; the
                operations that did not fail have been applied.
        """
        ...

    def timeouts(self) -> Timeouts:
        """Return the current tcp / tcpfin / udp timeouts."""
        ...

    def set_timeouts(self, timeouts: Timeouts) -> None:
        """Set the non-zero fields of `timeouts`; zero fields keep their current value."""
        ...

    def daemons(self) -> list[SyncDaemon]:
        """Return the running connection-sync daemons (at most one master, one backup)."""
        ...

    def start_daemon(self, daemon: SyncDaemon) -> None:
        """Start a connection-sync daemon; starting one that already runs as asked is a no-op.

        Raises:
            IPVSError: when the kernel refuses (for example the interface does not exist).
        """
        ...

    def stop_daemon(self, state: SyncState) -> None:
        """Stop the daemon of `state`; stopping one that does not run is a no-op."""
        ...
