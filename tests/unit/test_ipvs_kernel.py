"""KernelIPVS without a kernel: batching and error mapping against a scripted netlink socket.

The real kernel runs the same class in tests/kernel/test_ipvs_contract_kernel.py; here the
socket is a stand-in that answers like the kernel does to a batch (an error reply for each
failing message, an ACK only where one was asked for), so the host can check how requests
are batched and how replies are mapped back to operations.
"""

from __future__ import annotations

import errno
import ipaddress
import random
import struct
import time
from collections.abc import Iterator

import pytest

from lvs_operator.ipvs import ApplyError, IPVSError, netlink
from lvs_operator.ipvs.kernel import NO_IPVS, KernelIPVS
from lvs_operator.model import Protocol, RealServer, ServiceKey, VirtualService
from lvs_operator.plan import AddReal, AddService, Operation

FAMILY = 0x24
KEY = ServiceKey.inet(Protocol.TCP, ipaddress.ip_address("192.0.2.1"), 80)


class ScriptedSocket:
    """Answers requests like the kernel: `fail` maps a request's index to an errno."""

    def __init__(self, fail: dict[int, int]) -> None:
        self.fail = fail
        self.sent: list[list[tuple[int, int, int]]] = []  # per send: (cmd, flags, seq)
        self.sizes: list[int] = []
        self.count = 0
        self.replies: list[bytes] = []

    def send(self, data: bytes) -> int:
        batch = []
        for kind, flags, seq, start, _end in netlink.messages(data):
            assert kind == FAMILY
            batch.append((data[start], flags, seq))
            code = self.fail.get(self.count, 0)
            self.count += 1
            if code or flags & netlink.NLM_F_ACK:
                self.replies.append(struct.pack("=IHHIIi", 36, netlink.NLMSG_ERROR,
                                                netlink.NLM_F_CAPPED, seq, 0, -code)
                                    + data[start - 16:start])
        self.sent.append(batch)
        self.sizes.append(len(data))
        return len(data)

    def recv_into(self, buf: bytearray, size: int, flags: int = 0) -> int:
        reply = self.replies.pop(0)
        buf[:len(reply)] = reply
        return len(reply)

    def close(self) -> None:
        pass


def kernel_with(sock: ScriptedSocket, *, batch_bytes: int = 4096) -> KernelIPVS:
    kernel = KernelIPVS(batch_bytes=batch_bytes)
    kernel._sock = sock  # type: ignore[assignment]
    kernel._family = FAMILY
    kernel._max_batch_messages = 1000
    return kernel


def operations(count: int) -> list[Operation]:
    ops: list[Operation] = [AddService(VirtualService(KEY, scheduler="rr"))]
    ops += [AddReal(KEY, RealServer(ipaddress.ip_address("10.0.0.0") + i + 1, 80))
            for i in range(count - 1)]
    return ops


def test_batches_ask_for_one_ack_each() -> None:
    sock = ScriptedSocket({})
    kernel_with(sock).apply(operations(100))
    assert len(sock.sent) > 1
    assert sum(len(batch) for batch in sock.sent) == 100
    for batch in sock.sent:
        flags = [f & netlink.NLM_F_ACK for _cmd, f, _seq in batch]
        assert flags == [0] * (len(batch) - 1) + [netlink.NLM_F_ACK]
        seqs = [seq for _cmd, _f, seq in batch]
        assert seqs == list(range(seqs[0], seqs[0] + len(batch)))
    assert max(sock.sizes) <= 4096 < sock.sizes[0] + 200  # full batches, none too large


def test_errors_map_back_to_their_operations_and_adds_retry_as_sets() -> None:
    ops = operations(100)
    # Index 10: an add that exists (retried as a set, which succeeds); 40 fails outright;
    # 99 is the last of the last batch, which also carries the ACK request.
    sock = ScriptedSocket({10: errno.EEXIST, 40: errno.ERANGE, 99: errno.EINVAL})
    with pytest.raises(ApplyError) as caught:
        kernel_with(sock).apply(ops)
    assert [(e.operation, e.errno) for e in caught.value.errors] == [
        (ops[40], errno.ERANGE), (ops[99], errno.EINVAL)]
    retry = sock.sent[-1]
    assert [cmd for cmd, _f, _s in retry] == [netlink.CMD_SET_DEST]


def test_an_operation_that_cannot_be_encoded_is_reported_and_not_sent() -> None:
    ops = operations(3)
    bad = AddReal(KEY, RealServer(ipaddress.ip_address("10.9.9.9"), 70000))
    sock = ScriptedSocket({})
    with pytest.raises(ApplyError) as caught:
        kernel_with(sock).apply([*ops, bad])
    (error,) = caught.value.errors
    assert (error.operation, error.errno) == (bad, errno.EINVAL)
    assert "70000" in str(error)
    assert sock.count == 3


def test_operations_from_an_iterator_are_sent_as_they_come() -> None:
    """`plan.iter_plan` feeds apply lazily: errors still map back, and apply returns the list."""
    ops = operations(100)
    produced: list[int] = []

    def lazily() -> Iterator[Operation]:
        for index, op in enumerate(ops):
            produced.append(index)
            yield op

    sock = ScriptedSocket({57: errno.ERANGE})
    with pytest.raises(ApplyError) as caught:
        kernel_with(sock).apply(lazily())
    assert [(e.operation, e.errno) for e in caught.value.errors] == [(ops[57], errno.ERANGE)]
    assert produced == list(range(100)) and sock.count == 100
    assert kernel_with(ScriptedSocket({})).apply(iter(ops)) == ops


def test_many_small_batches_go_out_in_order_with_a_slow_kernel() -> None:
    """The hand-over between the encoding and the sending thread loses and reorders
    nothing, whichever of the two is ahead."""

    class Slow(ScriptedSocket):
        def send(self, data: bytes) -> int:
            time.sleep(random.choice((0, 0, 0.0005)))
            return super().send(data)

    for _ in range(5):
        sock = Slow({})
        ops = operations(1500)
        assert kernel_with(sock, batch_bytes=600).apply(ops) == ops
        seqs = [seq for batch in sock.sent for _cmd, _f, seq in batch]
        assert len(sock.sent) > 100 and len(seqs) == 1500 and seqs == sorted(seqs)


def test_only_an_apply_with_operations_forgets_the_verified_table() -> None:
    """An empty (lazy) plan, which every quiet resync hands to apply, must keep the /proc
    confirmation of the last thorough dump; anything applied must drop it."""
    kernel = kernel_with(ScriptedSocket({}))
    verified = object()
    kernel._verified = verified  # type: ignore[assignment]
    assert kernel.apply(iter([])) == []
    assert kernel._verified is verified
    kernel.apply(operations(1))
    assert kernel._verified is None


def test_a_socket_failure_while_batches_are_sent_ends_the_apply() -> None:
    """Past the first batch a second thread sends: its failure reaches the caller, and
    nothing more is sent after it."""

    class Failing(ScriptedSocket):
        def send(self, data: bytes) -> int:
            if len(self.sent) == 2:
                self.sent.append([])
                raise OSError(errno.EPERM, "Operation not permitted")
            return super().send(data)

    sock = Failing({})
    with pytest.raises(IPVSError) as caught:
        kernel_with(sock).apply(operations(300))
    assert caught.value.errno == errno.EPERM
    assert "Operation not permitted" in str(caught.value)
    assert len(sock.sent) == 3  # two batches, the failed send, then nothing


def test_a_kernel_without_ipvs_says_what_to_do() -> None:
    kernel = KernelIPVS()
    try:
        kernel.connect()
    except IPVSError as error:
        assert str(error) == NO_IPVS
        assert "modprobe ip_vs" in str(error)
        assert error.errno == errno.ENOENT
    else:
        pytest.skip("this kernel has IPVS (the kernel tier covers it)")
    finally:
        kernel.close()
