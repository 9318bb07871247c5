"""The idempotence rules shared by KernelIPVS and FakeIPVS, against a scripted `execute`."""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Iterable

import pytest

from lvs_operator.ipvs import ApplyError, IPVSError, idempotence
from lvs_operator.model import Protocol, RealServer, ServiceKey, VirtualService
from lvs_operator.plan import (
    AddReal,
    AddService,
    DeleteReal,
    DeleteService,
    Operation,
    SetReal,
    SetService,
)

KEY = ServiceKey.inet(Protocol.TCP, ipaddress.ip_address("192.0.2.1"), 80)
OTHER = ServiceKey.inet(Protocol.TCP, ipaddress.ip_address("192.0.2.2"), 80)
SERVICE = VirtualService(KEY, scheduler="rr")
REAL = RealServer(ipaddress.ip_address("10.0.0.1"), 80, weight=2)


class Script:
    """An `execute` that answers each operation (by its string) with a scripted errno."""

    def __init__(self, answers: dict[str, int]) -> None:
        self.answers = answers
        self.calls: list[list[Operation]] = []

    def __call__(self, operations: Iterable[Operation]) -> list[IPVSError | None]:
        ops = list(operations)  # an iterator: read once
        self.calls.append(ops)
        return [idempotence.error(op, self.answers[str(op)]) if self.answers.get(str(op))
                else None for op in ops]


def test_adds_that_exist_are_retried_as_sets() -> None:
    script = Script({str(AddService(SERVICE)): errno.EEXIST, str(AddReal(KEY, REAL)): errno.EEXIST})
    idempotence.apply([AddService(SERVICE), AddReal(KEY, REAL)], script)
    assert script.calls[1] == [SetService(SERVICE), SetReal(KEY, REAL)]


def test_a_failing_retry_is_reported_on_the_add() -> None:
    add = AddReal(KEY, REAL)
    script = Script({str(add): errno.EEXIST, str(SetReal(KEY, REAL)): errno.ERANGE})
    with pytest.raises(ApplyError) as caught:
        idempotence.apply([add], script)
    (error,) = caught.value.errors
    assert (error.operation, error.errno) == (add, errno.ERANGE)
    assert "changing it in place failed" in str(error)


@pytest.mark.parametrize(("op", "code"), [
    (DeleteService(KEY), errno.ESRCH),
    (DeleteReal(KEY, REAL), errno.ENOENT),
    (DeleteReal(KEY, REAL), errno.ESRCH),
    (SetReal(KEY, RealServer(REAL.address, 80, weight=0)), errno.ENOENT),
    (SetReal(KEY, RealServer(REAL.address, 80, weight=0)), errno.ESRCH),
], ids=str)
def test_deletes_and_drains_of_what_is_gone_are_done(op: Operation, code: int) -> None:
    idempotence.apply([op], Script({str(op): code}))


@pytest.mark.parametrize(("op", "code"), [
    (SetReal(KEY, REAL), errno.ENOENT),
    (SetService(SERVICE), errno.ESRCH),
    (DeleteService(KEY), errno.EPERM),
    (AddService(SERVICE), errno.ENOENT),
], ids=str)
def test_other_failures_are_errors(op: Operation, code: int) -> None:
    with pytest.raises(ApplyError) as caught:
        idempotence.apply([op], Script({str(op): code}))
    assert [(e.operation, e.errno) for e in caught.value.errors] == [(op, code)]


def test_reals_of_a_failed_service_add_name_the_root_cause() -> None:
    add = AddService(VirtualService(KEY, scheduler="nosuch"))
    dependent = AddReal(KEY, REAL)
    unrelated = AddReal(OTHER, REAL)
    script = Script({str(add): errno.ENOENT, str(dependent): errno.ESRCH,
                     str(unrelated): errno.ESRCH})
    with pytest.raises(ApplyError) as caught:
        idempotence.apply([add, dependent, unrelated], script)
    root, consequence, other = caught.value.errors
    assert "no scheduler module ip_vs_nosuch" in str(root)
    assert str(consequence) == f"{dependent}: not applied because '{add}' failed"
    assert "no such virtual service" in str(other)
    assert str(caught.value).startswith("3 IPVS operation(s) failed: add service")


def test_eperm_says_what_is_needed() -> None:
    error = idempotence.error(DeleteService(KEY), errno.EPERM)
    assert "CAP_NET_ADMIN" in str(error)
    assert error.errno == errno.EPERM
