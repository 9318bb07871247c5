"""The idempotence rules of `IPVS.apply`, shared by `KernelIPVS` and `FakeIPVS`.

An implementation supplies `execute`: run operations in order and report, per operation, the
kernel's answer (None for success, else an IPVSError carrying the errno). `apply` then makes
the outcome idempotent the same way for both:

- an add that finds the object there (EEXIST) is retried as a set of the same attributes;
- a delete of a service (ESRCH) or real server (ENOENT, or ESRCH when its service is gone),
  and a drain (set to weight 0) of a real server that is gone, count as done;
- everything else is a failure. A real-server operation that failed only because the add of
  its service failed earlier in the same apply (ESRCH) is reported as a consequence of that
  failure, so that the root cause reads first and once.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Iterator, Sequence

from lvs_operator.ipvs import ApplyError, IPVSError
from lvs_operator.model import ServiceKey
from lvs_operator.plan import (
    AddReal,
    AddService,
    DeleteReal,
    DeleteService,
    Operation,
    SetReal,
    SetService,
)

Execute = Callable[[Iterable[Operation]], Sequence[IPVSError | None]]

# What an errno means for IPVS, where the C library's text misleads ("No such process").
_MEANING = {
    errno.EPERM: "needs root or CAP_NET_ADMIN in this network namespace",
    errno.ESRCH: "no such virtual service",
}


def apply(operations: Iterable[Operation], execute: Execute) -> list[Operation]:
    """Apply `operations` through `execute` with the idempotence rules above.

    `execute` consumes `operations` as it goes (an iterator may still be producing them).
    Retries (add -> set) run in a second `execute` call after the first pass: a plan touches
    each object at most once, so their order relative to the other operations does not matter.

    Returns:
        The operations, as a list.

    Raises:
        ApplyError: naming every operation that failed, in plan order.
    """
    done: list[Operation] = []
    results = list(execute(_recorded(operations, done)))
    operations = done
    retry_at = [i for i, (op, err) in enumerate(zip(operations, results, strict=True))
                if err is not None and err.errno == errno.EEXIST
                and isinstance(op, AddService | AddReal)]
    if retry_at:
        retried = execute([_as_set(operations[i]) for i in retry_at])
        for i, err in zip(retry_at, retried, strict=True):
            results[i] = None if err is None else error(
                operations[i], err.errno, "it exists, and changing it in place failed")
    failed_adds: dict[ServiceKey, Operation] = {}
    errors: list[IPVSError] = []
    for op, err in zip(operations, results, strict=True):
        if err is None or _converged(op, err.errno):
            continue
        key = op.service.key if isinstance(op, AddService | SetService) else (
            op.key if isinstance(op, DeleteService) else op.service)
        root = failed_adds.get(key)
        if root is not None and err.errno == errno.ESRCH:
            err = IPVSError(f"{op}: not applied because '{root}' failed", operation=op,
                            code=err.errno)
        if isinstance(op, AddService):
            failed_adds[key] = op
        errors.append(err)
    if errors:
        raise ApplyError(errors)
    return done


def _recorded(operations: Iterable[Operation], into: list[Operation]) -> Iterator[Operation]:
    for op in operations:
        into.append(op)
        yield op


def error(op: Operation | None, code: int, detail: str = "", *, what: str = "") -> IPVSError:
    """Return the IPVSError for `op` (or the request `what`) failing with `code`.

    The message names the operation and the errno, says what the errno means for IPVS when
    the C library's text would mislead, and adds `detail` (such as the kernel's own message).
    """
    err = IPVSError.from_errno(code, operation=op, what=what)
    notes = [note for note in (_meaning(op, code), detail) if note]
    if not notes:
        return err
    return IPVSError(f"{err}: {'; '.join(notes)}", operation=op, code=code)


def _meaning(op: Operation | None, code: int) -> str:
    if code == errno.ENOENT and isinstance(op, AddService | SetService):
        return f"no scheduler module ip_vs_{op.service.scheduler} in this kernel"
    if code == errno.ENOENT and isinstance(op, SetReal | DeleteReal | AddReal):
        return "no such real server"
    return _MEANING.get(code, "")


def _as_set(op: Operation) -> Operation:
    if isinstance(op, AddService):
        return SetService(op.service)
    assert isinstance(op, AddReal)
    return SetReal(op.service, op.real)


def _converged(op: Operation, code: int) -> bool:
    if isinstance(op, DeleteService):
        return code == errno.ESRCH
    if isinstance(op, DeleteReal) or (isinstance(op, SetReal) and op.real.weight == 0):
        return code in (errno.ESRCH, errno.ENOENT)
    return False
