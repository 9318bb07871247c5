"""Desired vs actual IPVS table -> the minimal, ordered list of kernel operations.

Pure: no I/O. The kernel boundary (`lvs_operator.ipvs`) executes the operations in order.

Rules, the same ones kube-proxy's IPVS proxier and keepalived follow:
- only services in `owned` are ever changed or deleted; others are not even looked at. That
  holds for desired keys too: a desired service that already exists but is not owned was
  created by something else (kube-proxy in IPVS mode, keepalived's virtual_server, an admin's
  `ipvsadm`); it is a conflict (`conflicts`), left exactly as it is, and only a desired
  service that does not exist yet is added;
- an attribute change is a `set`, never delete + add (delete would drop every connection);
- with `drain`, a real server that is no longer wanted first gets weight 0 (no new
  connections, established ones keep going) and is deleted once it has no connections;
  a service that is no longer wanted is drained the same way and deleted when all of its
  real servers are gone;
- operations come in a fixed order (deletes of services, then per service in key order:
  set/add the service, delete, set, add its real servers), so two runs give equal plans.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, replace

from lvs_operator.model import RealServer, ServiceKey, Table, VirtualService


@dataclass(frozen=True, slots=True)
class AddService:
    """Create a virtual service (its attributes only; real servers are separate ops)."""

    service: VirtualService

    def __str__(self) -> str:
        return f"add service {self.service.key} scheduler {self.service.scheduler}"


@dataclass(frozen=True, slots=True)
class SetService:
    """Change a virtual service's attributes in place."""

    service: VirtualService

    def __str__(self) -> str:
        return f"set service {self.service.key} scheduler {self.service.scheduler}"


@dataclass(frozen=True, slots=True)
class DeleteService:
    """Delete a virtual service together with its real servers."""

    key: ServiceKey

    def __str__(self) -> str:
        return f"delete service {self.key}"


@dataclass(frozen=True, slots=True)
class AddReal:
    """Add a real server to a virtual service."""

    service: ServiceKey
    real: RealServer

    def __str__(self) -> str:
        return f"add real {self.real} to {self.service} weight {self.real.weight}"


@dataclass(frozen=True, slots=True)
class SetReal:
    """Change a real server's forwarding, weight, thresholds or tunnel in place."""

    service: ServiceKey
    real: RealServer

    def __str__(self) -> str:
        return f"set real {self.real} in {self.service} weight {self.real.weight}"


@dataclass(frozen=True, slots=True)
class DeleteReal:
    """Remove a real server from a virtual service."""

    service: ServiceKey
    real: RealServer

    def __str__(self) -> str:
        return f"delete real {self.real} from {self.service}"


Operation = AddService | SetService | DeleteService | AddReal | SetReal | DeleteReal
Owned = Collection[ServiceKey] | Callable[[ServiceKey], bool]


def plan(
    desired: Table,
    actual: Table,
    *,
    owned: Owned,
    drain: bool = False,
) -> list[Operation]:
    """Return the operations that turn `actual` into `desired`.

    Args:
        desired: the table this director should have.
        actual: the kernel's table as dumped (with connection counters if `drain`).
        owned: keys (or a predicate on keys) of services this caller may change or delete;
            a desired key that is in `actual` but not owned is left alone (`conflicts`),
            one that is not in `actual` is added (the caller records it as owned first).
        drain: drain unwanted real servers (weight 0, delete when idle) instead of deleting.

    Returns:
        The operations in the order they must be applied; empty when converged.
    """
    return list(iter_plan(desired, actual, owned=owned, drain=drain))


def iter_plan(
    desired: Table,
    actual: Table,
    *,
    owned: Owned,
    drain: bool = False,
) -> Iterator[Operation]:
    """Yield the operations of `plan(...)` one service at a time, in the same order.

    For `IPVS.apply`, which sends earlier operations while later ones are being planned.
    The tables must not change while the iterator is in use.
    """
    is_owned = _predicate(owned)
    for key in _sorted(actual):
        if key not in desired and is_owned(key):
            yield from _withdraw(actual[key], drain=drain)
    for key in _sorted(desired):
        want = desired[key]
        have = actual.get(key)
        if have is want:
            continue  # a dump with `expect` found it exactly as desired
        if have is None:
            yield AddService(want.attributes())
            yield from [AddReal(key, real) for real in _sorted_reals(want.reals.values())]
            continue
        if not is_owned(key):
            continue  # somebody else's service on our key: a conflict, never adopted
        if _attributes(want) != _attributes(have):
            yield SetService(want.attributes())
        yield from _reals(key, want, have, drain=drain)


def conflicts(desired: Table, actual: Table, *, owned: Collection[ServiceKey]) -> set[ServiceKey]:
    """Return the desired keys that exist in `actual` but are not `owned`: services that
    something else created (`plan` leaves them alone)."""
    return {key for key in desired.keys() & actual.keys() if key not in owned}


def _withdraw(have: VirtualService, *, drain: bool) -> list[Operation]:
    if not drain or all(real.connections == 0 for real in have.reals.values()):
        return [DeleteService(have.key)]
    ops: list[Operation] = []
    for real in _sorted_reals(have.reals.values()):
        ops.extend(_drain_real(have.key, real))
    return ops


def _reals(
    key: ServiceKey, want: VirtualService, have: VirtualService, *, drain: bool
) -> list[Operation]:
    deletes: list[Operation] = []
    sets: list[Operation] = []
    adds: list[Operation] = []
    for real in _sorted_reals(have.reals.values()):
        if real.key not in want.reals:
            deletes.extend(_drain_real(key, real) if drain else [DeleteReal(key, real)])
    for real in _sorted_reals(want.reals.values()):
        current = have.reals.get(real.key)
        if current is None:
            adds.append(AddReal(key, real))
        elif current != real:
            sets.append(SetReal(key, real))
    return deletes + sets + adds


def _drain_real(key: ServiceKey, real: RealServer) -> list[Operation]:
    """Return the next drain step for an unwanted real server: weight 0, or delete when idle."""
    if real.connections == 0:
        return [DeleteReal(key, real)]
    if real.weight != 0:
        return [SetReal(key, replace(real, weight=0))]
    return []


def _attributes(service: VirtualService) -> tuple[object, ...]:
    """Return what SET_SERVICE sets, cheaper to compare than `attributes()` copies."""
    return (service.key, service.scheduler, service.flags, service.persistence,
            service.one_packet)


def _predicate(owned: Owned) -> Callable[[ServiceKey], bool]:
    if callable(owned):
        return owned
    return owned.__contains__


def _sorted(services: Table) -> list[ServiceKey]:
    return sorted(services, key=ServiceKey.sort_key)


def _sorted_reals(reals: Iterable[RealServer]) -> list[RealServer]:
    return sorted(reals, key=RealServer.sort_key)

