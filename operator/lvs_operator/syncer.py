"""One convergence step: dump the kernel, plan against the desired table, apply.

Used by `lvs-operator ipvs apply` and by the agent. Only services recorded as ours (see
`ownership`) or present in the desired table are ever changed; nothing is flushed.
"""

from __future__ import annotations

from dataclasses import dataclass

from lvs_operator.ipvs import IPVS
from lvs_operator.model import Table
from lvs_operator.ownership import Owned, OwnershipStore
from lvs_operator.plan import DeleteService, Operation, plan


@dataclass(frozen=True)
class SyncResult:
    """What a sync did: the operations planned (and applied unless dry-run)."""

    operations: list[Operation]
    dry_run: bool = False


def sync(
    ipvs: IPVS,
    desired: Table,
    *,
    store: OwnershipStore,
    drain: bool = False,
    dry_run: bool = False,
) -> SyncResult:
    """Converge the kernel's IPVS table to `desired`, touching only owned services.

    Returns:
        The operations planned; they have been applied unless `dry_run`.

    Raises:
        IPVSError: when the kernel table cannot be read.
        ApplyError: when some operations failed (the others were applied, and the record
            still owns everything that may have been created).
        ValueError: when the ownership record is unreadable.
    """
    owned = store.load()
    actual = ipvs.dump()
    operations = plan(desired, actual, owned=owned.services | set(desired), drain=drain)
    if dry_run:
        return SyncResult(operations, dry_run=True)
    if operations:
        # Record intent first: a crash mid-apply must not orphan what we are creating.
        intent = owned.union(Owned(services=set(desired)))
        if intent.services != owned.services:
            store.save(intent)
        ipvs.apply(operations)
    deleted = {op.key for op in operations if isinstance(op, DeleteService)}
    # Services being drained (withdrawn but not yet deleted) stay ours until they are gone.
    draining = {key for key in owned.services if key in actual and key not in deleted}
    now_owned = set(desired) | draining
    if now_owned != owned.services:
        store.save(Owned(services=now_owned, vips=owned.vips))
    return SyncResult(operations)

