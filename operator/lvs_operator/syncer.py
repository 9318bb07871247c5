"""One convergence step: dump the kernel, plan against the desired table, apply.

Used by `lvs-operator ipvs apply` and by the agent. Only services recorded as ours (see
`ownership`) are ever changed; nothing is flushed. A desired service that does not exist
yet is recorded, then created. A desired service that already exists but is not recorded
was created by something else (kube-proxy in IPVS mode, keepalived's virtual_server, an
admin's `ipvsadm`): it is a conflict, left exactly as it is (no attribute, real-server or
drain change, and no delete when it stops being desired) and returned for the caller to
report. `adopt` is the only way to take such a service over.

A lost record (the file gone) is an empty one: nothing is withdrawn, and every desired
service found in the kernel is a conflict, not adopted. An unreadable record stops the sync
(`ValueError`) before anything is changed.

The record is written before the kernel is changed (intent first), so a crash in between
only leaves recorded a service that was about to be created. One window remains: a service
somebody else creates on our key between our dump and our add is adopted, because an add
that finds the service there sets it (`ipvs.idempotence`); the kernel offers no
create-if-absent that could tell.
"""

from __future__ import annotations

import typing
from collections.abc import Collection
from dataclasses import dataclass

from lvs_operator.ipvs import IPVS
from lvs_operator.model import IPAddress, Protocol, ServiceKey, Table, format_endpoint
from lvs_operator.ownership import OwnershipStore
from lvs_operator.plan import DeleteService, Operation, conflicts, iter_plan


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What a sync did: the operations planned (and applied unless dry-run), and the desired
    services it found created by something else: left alone (`conflicts`) or, with
    `adopt`, taken over (`adopted`)."""

    operations: list[Operation]
    dry_run: bool = False
    conflicts: frozenset[ServiceKey] = frozenset()
    adopted: frozenset[ServiceKey] = frozenset()


def sync(
    ipvs: IPVS,
    desired: Table,
    *,
    store: OwnershipStore,
    drain: bool = False,
    dry_run: bool = False,
    adopt: bool = False,
) -> SyncResult:
    """Converge the kernel's IPVS table to `desired`, touching only owned services; with
    `adopt`, desired services that something else created become ours first.

    Returns:
        The operations planned (applied unless `dry_run`) and the conflicts.

    Raises:
        IPVSError: when the kernel table cannot be read.
        ApplyError: when some operations failed (the others were applied, and the record
            still owns everything that may have been created).
        ValueError: when the ownership record is unreadable.
    """
    owned = store.load()
    # `expect`: services already as desired come back as the desired objects, undecoded.
    actual = ipvs.dump(expect=desired)
    foreign = conflicts(desired, actual, owned=owned.services)
    wanted = set(desired) if adopt else set(desired) - foreign
    ours = owned.services | wanted
    planned = iter_plan(desired, actual, owned=ours, drain=drain)
    left, adopted = (frozenset(), frozenset(foreign)) if adopt else (frozenset(foreign),
                                                                      frozenset())
    if dry_run:
        return SyncResult(list(planned), dry_run=True, conflicts=left, adopted=adopted)
    # Record intent first (saved only if it adds something): a crash mid-apply must not
    # orphan what we are creating. The plan is then carried out as it is made: the kernel
    # works on the first operations while the next are planned.
    store.update(services=ours)
    operations = ipvs.apply(planned)
    deleted = {op.key for op in operations if isinstance(op, DeleteService)}
    # Services being drained (withdrawn but not yet deleted) stay ours until they are gone.
    draining = {key for key in owned.services if key in actual and key not in deleted}
    store.update(services=wanted | draining)
    return SyncResult(operations, conflicts=left, adopted=adopted)

def describe_conflicts(keys: Collection[ServiceKey]) -> str:
    """Return what to tell the user about `keys` (`SyncResult.conflicts`): which services
    they are, that they were left as they are, and how to free them."""
    ordered = sorted(keys, key=ServiceKey.sort_key)
    names = ", ".join(str(key) for key in ordered)
    deletes = "; ".join(f"ipvsadm -D {_ipvsadm_service(key)}" for key in ordered)
    verb, it = ("exists", "it") if len(ordered) == 1 else ("exist", "them")
    return (f"{names} {verb} in this node's IPVS table but lvs-operator did not create {it} "
            "(kube-proxy in IPVS mode, a keepalived virtual_server or ipvsadm did): left as "
            f"found, not programmed. Stop the other tool from making {it} (kube-proxy: a "
            "Service has the VIP as its clusterIP, externalIPs or load-balancer IP; keepalived: "
            f"remove its virtual_server), then delete {it} ({deletes})")


def _ipvsadm_service(key: ServiceKey) -> str:
    """Return ipvsadm's options naming the virtual service `key`."""
    if key.protocol is None or key.address is None:
        return f"-f {key.fwmark}" + (" -6" if key.family == 6 else "")
    option = {Protocol.TCP: "-t", Protocol.UDP: "-u", Protocol.SCTP: "--sctp-service"}
    return f"{option[key.protocol]} {format_endpoint(key.address, key.port)}"


@dataclass(frozen=True, slots=True)
class VipResult:
    """What a VIP sync did (or would do, with dry-run)."""

    added: list[tuple[str, IPAddress]]
    removed: list[tuple[str, IPAddress]]


def sync_vips(
    interface: str | None,
    wanted: set[IPAddress],
    *,
    store: OwnershipStore,
    holder: VipHolder,
    dry_run: bool = False,
) -> VipResult:
    """Hold exactly `wanted` on `interface` among the VIPs this director owns.

    VIPs recorded as ours on another interface (the interface changed) or no longer wanted
    are released; VIPs someone else put on an interface are never removed. Newly added
    VIPs are announced (gratuitous ARP / unsolicited NA) so neighbours update their caches.

    Returns:
        The VIPs added and removed, as (interface, address) pairs.

    Raises:
        NetworkError: when an interface does not exist or the kernel refuses.
        ValueError: when the ownership record is unreadable.
    """
    owned = store.load().vips
    here = interface or ""
    wanted = wanted if interface else set()
    held = set(holder.list_vips(here)) if wanted else set()
    added = [(here, address) for address in sorted(wanted - held, key=_address_order)]
    # A VIP somebody else put on the interface is used but never becomes ours to remove.
    ours = {address for _, address in added} | (wanted & owned.get(here, set()))
    removed = [
        (name, address)
        for name in sorted(owned)
        for address in sorted(owned[name], key=_address_order)
        if name != here or address not in wanted
    ]
    if dry_run:
        return VipResult(added=added, removed=removed)
    if added:
        # Record intent first, as for services.
        store.update(vips={**owned, here: owned.get(here, set()) | ours})
    for name, address in removed:
        holder.remove_vip(name, address)
    for name, address in added:
        holder.add_vip(name, address)
    if added:
        holder.announce(here, [address for _, address in added])
    store.update(vips={here: ours})
    return VipResult(added=added, removed=removed)


class VipHolder(typing.Protocol):
    """The network operations `sync_vips` needs (`lvs_operator.network` implements them)."""

    def list_vips(self, interface: str) -> list[IPAddress]:
        """Return the host addresses held on `interface`."""
        ...

    def add_vip(self, interface: str, address: IPAddress) -> bool:
        """Add `address` to `interface`; return False when it was already there."""
        ...

    def remove_vip(self, interface: str, address: IPAddress) -> bool:
        """Remove `address` from `interface`; return False when it was not there."""
        ...

    def announce(self, interface: str, addresses: list[IPAddress]) -> None:
        """Tell the neighbours that `addresses` now live at `interface`."""
        ...


def _address_order(address: IPAddress) -> tuple[int, int]:
    return (address.version, int(address))
