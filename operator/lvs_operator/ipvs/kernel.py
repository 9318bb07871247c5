"""`KernelIPVS`: the `IPVS` interface over a plain generic netlink socket.

Speed is the point of this module (a director may carry thousands of services and the agent
re-reads the whole table on every resync), hence a raw socket and `lvs_operator.ipvs.netlink`
rather than a general netlink library:

- apply: messages are joined into batches of about 64 KiB, one `sendmsg` each. Only the last
  message of a batch asks for an ACK; the kernel processes a batch synchronously inside
  `sendmsg` and still answers every failing message with an NLMSG_ERROR, which is mapped back
  to its operation by sequence number. NETLINK_CAP_ACK keeps those errors small and a large
  receive buffer keeps them from being dropped.
- dump: one GET_SERVICE dump, then one GET_DEST dump per service, decoded straight from a
  reused receive buffer.
- verify (opt-in, `verify_seconds`): once a thorough `dump(expect=...)` has found the table
  exactly as expected, later dumps with the same expectation read `/proc/net/ip_vs` instead
  (one read for the whole table, `lvs_operator.ipvs.procfs`) until `verify_seconds` have
  passed or anything was applied. What that text does not show (scheduler flags, connection
  thresholds, tunnel encapsulation) is then checked only by the next thorough dump: an
  expectation that changes in those attributes is never confirmed this way, because it no
  longer equals what was verified. For the agent's periodic resync, whose drift is hand edits.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TypeVar

from lvs_operator.ipvs import IPVSError, idempotence, netlink, procfs
from lvs_operator.model import (
    IPAddress,
    RealServer,
    ServiceKey,
    SyncDaemon,
    SyncState,
    Table,
    Timeouts,
    VirtualService,
)
from lvs_operator.plan import Operation

_T = TypeVar("_T")

# Found = what netlink.messages returns for one received chunk.
Found = list[tuple[int, int, int, int, int]]
# One request of an apply's batch: the operation's index in the apply, the operation, and
# its encoded message.
_Request = tuple[int, Operation, bytes]

BATCH_BYTES = 64 * 1024
# Each failing message of a batch queues its own error reply (~1 KiB of receive-buffer
# accounting with skb overhead): cap a batch's messages so that every error fits.
_ERROR_TRUESIZE = 1024
_SOCKET_BUFFER = 8 * 1024 * 1024
_RECV_BYTES = 64 * 1024  # a dump part is at most 32 KiB (the kernel caps it)
# Opened beside the socket, in the same thread: the thread's namespace, not the process's.
PROC_TABLE = "/proc/thread-self/net/ip_vs"
_PROC_READ = 1024 * 1024
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

NO_IPVS = ("this kernel has no IPVS (generic netlink family 'IPVS' not found): load the ip_vs "
           "module on this node (modprobe ip_vs) or use a kernel built with CONFIG_IP_VS")


class KernelIPVS:
    """Kernel IPVS in the network namespace where this object first talks to the kernel.

    The socket opens on first use and is kept (one socket = one namespace); `close` it, or use
    the object as a context manager. Not thread-safe: threads that share one must take turns
    (the agent's sync loop and metrics server share one behind a lock).
    """

    def __init__(self, *, batch_bytes: int = BATCH_BYTES,
                 verify_seconds: float | None = None) -> None:
        """Prepare a client that sends at most `batch_bytes` of requests per sendmsg.

        With `verify_seconds`, a `dump(expect=...)` may confirm a table found exactly as
        expected less than that long ago from `/proc/net/ip_vs` (see the module docstring);
        None: every dump reads everything through netlink.
        """
        self._batch_bytes = batch_bytes
        self._verify_seconds = verify_seconds
        # The last thorough dump that found exactly its expectation: that table, its /proc
        # signature, and when (monotonic). Cleared by every apply.
        self._verified: tuple[Table, procfs.Signature, float] | None = None
        self._proc: int | None = None  # fd of PROC_TABLE, opened with the socket
        self._sock: socket.socket | None = None
        self._family = 0
        self._max_batch_messages = 0
        self._seq = 0  # the last sequence number used
        self._buf = bytearray(_RECV_BYTES)

    def __enter__(self) -> KernelIPVS:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def connect(self) -> KernelIPVS:
        """Open the socket now, in the calling thread's network namespace; return self.

        Raises:
            IPVSError: when the kernel has no IPVS or the socket cannot be set up.
        """
        self._family_id()
        return self

    def close(self) -> None:
        """Close the socket; the next call opens a new one (in the then current namespace)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            os.close(self._proc)
            self._proc = None
        self._verified = None

    # --- the IPVS interface ------------------------------------------------------------------

    def dump(self, *, expect: Table | None = None) -> dict[ServiceKey, VirtualService]:
        """Return every virtual service with its real servers, counters and stats.

        With `expect` (what the caller wants the table to be, as for `plan`): a service found
        exactly as expected (attributes and real servers, counters and stats aside) is
        returned as the `expect` object itself, without counters or stats. Its real servers
        are then checked in their wire form and never decoded, which is most of a no-op
        resync's work; the others come back decoded, with their real servers' counters but
        without service stats (None).

        Raises:
            IPVSError: when the table cannot be read (no IPVS, no permission) or holds a
                service the model cannot represent.
        """
        if expect and self._verified is not None:
            confirmed = self._confirm(expect)
            if confirmed is not None:
                return confirmed
        # With `expect` the caller compares configuration: service counters are not read.
        stats = not expect
        wanted: list[VirtualService | None] = []
        # Decoding allocates tens of thousands of objects and no reference cycles: the cyclic
        # collector would only re-scan the caller's whole heap again and again meanwhile.
        with _collector_paused():
            services = self._read(
                netlink.CMD_GET_SERVICE, netlink.CMD_NEW_SERVICE,
                lambda buf, start, end: netlink.decode_service(buf, start, end, stats=stats),
                what="dump IPVS services", dump=True)
            if expect:
                for s in services:
                    want = expect.get(s.key)
                    wanted.append(want if want is not None and _same_attributes(s, want)
                                  else None)
            reals = self._dump_reals([s.key for s in services], wanted)
        # The constructor, not `with_reals`: `replace` costs more than the decoding.
        table = {s.key: r if isinstance(r, VirtualService) else VirtualService(
                     key=s.key, scheduler=s.scheduler, flags=s.flags,
                     persistence=s.persistence, one_packet=s.one_packet,
                     reals={real.key: real for real in r}, stats=s.stats)
                 for s, r in zip(services, reals, strict=True)}
        if expect and self._verify_seconds is not None:
            self._remember(expect, table)
        return table

    def apply(self, operations: Iterable[Operation]) -> list[Operation]:
        """Apply `operations` in order, idempotently (see `lvs_operator.ipvs.idempotence`);
        return them as a list. An iterator is consumed while earlier batches are sent.

        Raises:
            ApplyError: naming every operation that failed; the others have been applied.
            IPVSError: when IPVS cannot be reached at all, or replies were lost (then the
                outcome is unknown: dump again).
        """
        return idempotence.apply(operations, self._execute)

    def timeouts(self) -> Timeouts:
        """Return the current tcp / tcpfin / udp timeouts in seconds.

        Raises:
            IPVSError: when the kernel refuses.
        """
        found = self._read(netlink.CMD_GET_CONFIG, netlink.CMD_SET_CONFIG,
                           netlink.decode_timeouts, what="read IPVS timeouts")
        if not found:
            raise IPVSError("read IPVS timeouts: the kernel sent no configuration")
        return found[0]

    def set_timeouts(self, timeouts: Timeouts) -> None:
        """Set the non-zero fields of `timeouts`; zero fields keep their current value.

        Raises:
            IPVSError: when the kernel refuses (EINVAL for a value it cannot hold).
        """
        what = f"set IPVS timeouts tcp {timeouts.tcp} tcpfin {timeouts.tcp_fin} udp {timeouts.udp}"
        try:
            payload = netlink.encode_timeouts(timeouts)
        except ValueError as exc:
            raise IPVSError(f"{what}: {exc}", code=errno.EINVAL) from exc
        if payload:
            self._transact(netlink.CMD_SET_CONFIG, payload, what=what)

    def daemons(self) -> list[SyncDaemon]:
        """Return the running connection-sync daemons (at most one master, one backup).

        Raises:
            IPVSError: when the kernel refuses.
        """
        return self._read(netlink.CMD_GET_DAEMON, netlink.CMD_NEW_DAEMON, netlink.decode_daemon,
                          what="list IPVS sync daemons", dump=True)

    def start_daemon(self, daemon: SyncDaemon) -> None:
        """Start a connection-sync daemon; one already running exactly as asked is a no-op.

        Raises:
            IPVSError: when the kernel refuses (ENODEV: no such interface; EADDRNOTAVAIL: a
                master's interface has no IPv4 address), or when a daemon of the same state
                runs with another interface or sync id (EEXIST: stop it first).
        """
        what = (f"start IPVS sync daemon {daemon.state.name.lower()} on {daemon.interface} "
                f"syncid {daemon.sync_id}")
        try:
            payload = netlink.encode_daemon(daemon)
        except ValueError as exc:
            raise IPVSError(f"{what}: {exc}", code=errno.EINVAL) from exc
        try:
            self._transact(netlink.CMD_NEW_DAEMON, payload, what=what)
        except IPVSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            running = [d for d in self.daemons() if d.state is daemon.state]
            if running == [daemon]:
                return
            other = ", ".join(f"on {d.interface} syncid {d.sync_id}" for d in running)
            raise IPVSError(f"{what}: one already runs {other}: stop it first",
                            code=errno.EEXIST) from exc

    def stop_daemon(self, state: SyncState) -> None:
        """Stop the daemon of `state`; stopping one that does not run is a no-op.

        Raises:
            IPVSError: when the kernel refuses.
        """
        try:
            self._transact(netlink.CMD_DEL_DAEMON, netlink.encode_daemon_state(state),
                           what=f"stop IPVS sync daemon {state.name.lower()}")
        except IPVSError as exc:
            if exc.errno != errno.ESRCH:
                raise

    # --- verify ------------------------------------------------------------------------------

    @property
    def verified(self) -> bool:
        """Return whether a thorough dump found its expectation and nothing was applied since
        (the next `dump` of that expectation may then be confirmed from /proc)."""
        return self._verified is not None

    def _remember(self, expect: Table, table: Table) -> None:
        """After a thorough dump: keep `expect` as verified if `table` is exactly it."""
        self._verified = None
        # Mostly the very objects of `expect`; a service that came back decoded (as after a
        # stray reply) may still be equal.
        if len(table) != len(expect) or any(
                (want := expect.get(k)) is not v and want != v for k, v in table.items()):
            return
        sign = procfs.signature(expect.values())
        if sign is not None and self._proc is not None:
            self._verified = (expect, sign, time.monotonic())

    def _confirm(self, expect: Table) -> dict[ServiceKey, VirtualService] | None:
        """Return `expect` as the table if /proc shows the verified table and `expect` is
        still what was verified; None when a thorough dump is needed."""
        assert self._verified is not None and self._proc is not None
        verified, sign, when = self._verified
        if self._verify_seconds is None or time.monotonic() - when >= self._verify_seconds:
            return None
        if verified is not expect and (len(verified) != len(expect) or any(
                verified.get(k) != v for k, v in expect.items())):
            return None
        try:
            os.lseek(self._proc, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(self._proc, _PROC_READ):
                chunks.append(chunk)
        except OSError:
            return None
        # Parsing makes ~10 objects per line and no cycles: as for the netlink dump, keep
        # the cyclic collector from re-scanning the caller's whole heap meanwhile.
        with _collector_paused():
            found = procfs.parse(b"".join(chunks).decode("ascii", "replace"))
        if found != sign:
            return None
        if verified is not expect:  # the same table, built anew: confirm the new objects
            self._verified = (expect, sign, when)
        return dict(expect)

    # --- apply -------------------------------------------------------------------------------

    def _execute(self, operations: Iterable[Operation]) -> list[IPVSError | None]:
        """Send `operations` in batches; return None or the error of each, in order.

        When the operations fill more than one batch, a second thread sends them while this
        one encodes (and, from an iterator, plans) the next: the kernel carries out a batch
        inside `sendmsg`, which releases the GIL, so its work and Python's overlap instead of
        adding up.

        Raises:
            IPVSError: when the socket fails (see `_send_batch`).
        """
        family = self._family_id()
        self._socket()  # opened here, in the caller's namespace, before any other thread
        # Grows as operations come; the sending thread only touches entries of batches
        # already queued.
        results: list[IPVSError | None] = []
        keys: dict[ServiceKey, bytes] = {}
        most = self._max_batch_messages
        limit = self._batch_bytes
        sender: _Sender | None = None
        batch: list[_Request] = []
        first = self._next_seq(most)
        size = 0
        encode = netlink.encode_request
        try:
            for index, op in enumerate(operations):
                try:
                    message = encode(op, family, first + len(batch), keys)
                except ValueError as exc:
                    results.append(idempotence.error(op, errno.EINVAL, str(exc)))
                    continue
                results.append(None)
                if batch and (size + len(message) > limit or len(batch) >= most):
                    if sender is None:
                        sender = _Sender(self, results)
                    sender.send(first, batch)
                    first = self._next_seq(most)
                    # The sequence number changes with the batch: encode this one again.
                    message = encode(op, family, first, keys)
                    batch, size = [], 0
                batch.append((index, op, message))
                size += len(message)
            if sender is None:
                if batch:
                    self._send_batch(first, batch, results)
            elif batch:
                sender.send(first, batch)
        finally:
            if sender is not None:
                sender.finish()  # also when this thread failed: never leave it waiting
        return results

    def _send_batch(self, first: int, batch: list[_Request],
                    results: list[IPVSError | None]) -> None:
        """Send one batch (requests numbered from `first`, the last one asking for an ACK) and
        record the error reply of each failing operation in `results`.

        Raises:
            IPVSError: when the socket fails; ENOBUFS when replies were dropped.
        """
        # Whatever the outcome, the next dump looks at everything. Here, where requests go
        # out: an apply of an empty plan (a resync that found nothing to do) keeps what the
        # last thorough dump verified.
        self._verified = None
        last = first + len(batch) - 1
        data = b"".join([message for _index, _op, message in batch[:-1]]
                        + [netlink.with_ack(batch[-1][2])])
        sock = self._socket()
        try:
            sock.send(data)
        except OSError as exc:
            raise IPVSError(f"send {len(batch)} IPVS requests: {exc}", code=exc.errno or 0) from exc
        while True:
            buf, found = self._recv("apply IPVS operations")
            for kind, flags, seq, start, end in found:
                if kind != netlink.NLMSG_ERROR or not first <= seq <= last:
                    continue
                code, text = netlink.decode_error(buf, start, end, flags)
                if code:
                    index, op, _message = batch[seq - first]
                    results[index] = idempotence.error(op, code, text)
                if seq == last:
                    return

    # --- dumps -------------------------------------------------------------------------------

    def _dump_reals(self, keys: list[ServiceKey], wanted: Sequence[VirtualService | None],
                    ) -> list[list[RealServer] | VirtualService]:
        """Return the real servers of each service in `keys`: one GET_DEST dump each.

        Where `wanted` (if not empty) holds a service for a key, its real servers are first
        compared in wire form (`netlink.dest_signatures`); if they are exactly the wanted
        ones, that service itself stands in for the list.

        The dumps run one after the other: a socket holds one dump at a time, and a dump is
        still running after its first part (its NLMSG_DONE comes with the next read), so a
        second request in the same sendmsg would only be refused with EBUSY.
        """
        family = self._family_id()
        sock = self._socket()
        buf = self._buf
        size = len(buf)
        reals: list[list[RealServer] | VirtualService] = []
        addresses: dict[bytes, IPAddress] = {}
        request, encode_key = netlink.request, netlink.encode_service_key
        decode, signatures = netlink.decode_dest_dump, netlink.dest_signatures
        for index, key in enumerate(keys):
            want = wanted[index] if wanted else None
            seq = self._next_seq(1)
            found: list[RealServer] = []
            # While `want` may still match: the signatures seen, and the parts they came
            # from (to decode after all if it does not).
            seen: list[netlink.DestSignature] = []
            parts: list[bytes] = []
            try:
                sock.send(request(family, netlink.CMD_GET_DEST, encode_key(key), seq=seq,
                                  flags=netlink.NLM_F_DUMP))
                status = None
                while status is None:
                    got = sock.recv_into(buf, size, socket.MSG_TRUNC)
                    if got > size:
                        raise ValueError(f"a reply of {got} bytes did not fit the buffer")
                    if want is None:
                        status = decode(buf, got, seq=seq, family=key.family, out=found,
                                        addresses=addresses)
                        continue
                    part = signatures(buf, got, seq=seq)
                    if part is not None:
                        seen += part
                        parts.append(bytes(buf[:got]))
                        continue
                    # The end of the dump, an error, or messages of another layout.
                    tail: list[RealServer] = []
                    status = decode(buf, got, seq=seq, family=key.family, out=tail,
                                    addresses=addresses)
                    if tail:
                        want = self._unmatched(parts, seq, key, found, addresses)
                        found += tail
                if status:
                    raise idempotence.error(None, status, what=f"dump real servers of {key}")
                if want is not None:
                    if len(seen) == len(want.reals) and set(seen) == _signatures(want):
                        reals.append(want)
                        continue
                    self._unmatched(parts, seq, key, found, addresses)
            except OSError as exc:
                raise IPVSError(f"dump real servers of {key}: {exc}",
                                code=exc.errno or 0) from exc
            except ValueError as exc:
                raise IPVSError(f"dump real servers of {key}: {exc}") from exc
            reals.append(found)
        return reals

    @staticmethod
    def _unmatched(parts: list[bytes], seq: int, key: ServiceKey, out: list[RealServer],
                   addresses: dict[bytes, IPAddress]) -> None:
        """Decode the parts kept for a signature check that failed into `out`; return None.

        Raises:
            ValueError: for a real server the model cannot represent.
        """
        for part in parts:
            netlink.decode_dest_dump(part, len(part), seq=seq, family=key.family, out=out,
                                     addresses=addresses)
        parts.clear()
        return None

    # --- one request -------------------------------------------------------------------------

    def _read(self, cmd: int, reply: int, decode: Callable[[bytearray, int, int], _T], *,
              what: str, dump: bool = False) -> list[_T]:
        """Send request `cmd` and return every `reply` message it gets, decoded.

        Raises:
            IPVSError: for an error reply, or a reply that does not decode.
        """
        found: list[_T] = []

        def collect(buf: bytearray, msgs: Found) -> None:
            for kind, _flags, _seq, start, end in msgs:
                if kind >= 0x10 and buf[start] == reply:
                    found.append(decode(buf, start, end))

        self._transact(cmd, b"", what=what, dump=dump, on_reply=collect)
        return found

    def _transact(self, cmd: int, payload: bytes, *, what: str, dump: bool = False,
                  on_reply: Callable[[bytearray, Found], None] | None = None) -> None:
        """Send one request and pass its replies to `on_reply` until DONE or the ACK.

        Raises:
            IPVSError: for an error reply, or a reply that does not decode.
        """
        family = self._family_id()
        seq = self._next_seq(1)
        flags = netlink.NLM_F_DUMP if dump else netlink.NLM_F_ACK
        sock = self._socket()
        try:
            sock.send(netlink.request(family, cmd, payload, seq=seq, flags=flags))
        except OSError as exc:
            raise IPVSError(f"{what}: {exc}", code=exc.errno or 0) from exc
        while True:
            buf, found = self._recv(what)
            mine = [m for m in found if m[2] == seq]
            if on_reply is not None and mine:
                try:
                    on_reply(buf, mine)
                except ValueError as exc:
                    raise IPVSError(f"{what}: {exc}") from exc
            for kind, msg_flags, _seq, start, end in mine:
                if kind == netlink.NLMSG_ERROR:
                    code, text = netlink.decode_error(buf, start, end, msg_flags)
                    if code:
                        raise idempotence.error(None, code, text, what=what)
                    return
                if kind == netlink.NLMSG_DONE:
                    return

    def _recv(self, what: str) -> tuple[bytearray, Found]:
        """Receive one chunk into the reusable buffer; return it and its messages.

        The buffer is overwritten by the next call: decode before receiving again.

        Raises:
            IPVSError: when the socket fails, notably ENOBUFS (replies were dropped, so the
                outcome of a batch is unknown).
        """
        sock = self._socket()
        try:
            size = sock.recv_into(self._buf, len(self._buf), socket.MSG_TRUNC)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise IPVSError(f"{what}: the kernel dropped netlink replies (ENOBUFS); the "
                                "outcome is unknown: read the table again",
                                code=errno.ENOBUFS) from exc
            raise IPVSError(f"{what}: {exc}", code=exc.errno or 0) from exc
        if size > len(self._buf):
            raise IPVSError(f"{what}: a netlink reply of {size} bytes did not fit the buffer")
        try:
            return self._buf, netlink.messages(self._buf, size)
        except ValueError as exc:
            raise IPVSError(f"{what}: {exc}") from exc

    def _next_seq(self, count: int) -> int:
        """Reserve `count` consecutive sequence numbers; return the first."""
        if self._seq + count >= 2**32:
            self._seq = 0
        first = self._seq + 1
        self._seq += count
        return first

    # --- the socket --------------------------------------------------------------------------

    def _socket(self) -> socket.socket:
        if self._sock is None:
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_GENERIC)
            except OSError as exc:
                raise IPVSError(f"open a generic netlink socket: {exc}",
                                code=exc.errno or 0) from exc
            try:
                sock.bind((0, 0))
                # Errors then echo only the failed request's header, not all of it.
                sock.setsockopt(netlink.SOL_NETLINK, netlink.NETLINK_CAP_ACK, 1)
                sock.setsockopt(netlink.SOL_NETLINK, netlink.NETLINK_EXT_ACK, 1)
                _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF)
                received = _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF)
            except OSError as exc:
                sock.close()
                raise IPVSError(f"set up a generic netlink socket: {exc}",
                                code=exc.errno or 0) from exc
            self._max_batch_messages = max(1, received // 2 // _ERROR_TRUESIZE)
            self._sock = sock
            if self._verify_seconds is not None and self._proc is None:
                try:
                    self._proc = os.open(PROC_TABLE, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    self._proc = None  # no /proc here: every dump is thorough
        return self._sock

    def _family_id(self) -> int:
        """Return the IPVS generic netlink family id, resolving it on first use.

        Raises:
            IPVSError: when the kernel has no IPVS (with what to do about it).
        """
        if self._family:
            return self._family
        sock = self._socket()
        seq = self._next_seq(1)
        try:
            sock.send(netlink.get_family_request(seq=seq))
        except OSError as exc:
            raise IPVSError(f"resolve the IPVS netlink family: {exc}", code=exc.errno or 0) from exc
        while not self._family:
            buf, found = self._recv("resolve the IPVS netlink family")
            for kind, flags, msg_seq, start, end in found:
                if msg_seq != seq:
                    continue
                if kind == netlink.NLMSG_ERROR:
                    code, _text = netlink.decode_error(buf, start, end, flags)
                    if code == errno.ENOENT:
                        raise IPVSError(NO_IPVS, code=code)
                    if code:
                        raise idempotence.error(None, code, what="resolve the IPVS netlink family")
                elif kind == netlink.GENL_ID_CTRL:
                    try:
                        self._family = netlink.decode_family_id(buf, start, end)
                    except ValueError as exc:
                        raise IPVSError(f"resolve the IPVS netlink family: {exc}") from exc
        return self._family


def _same_attributes(a: VirtualService, b: VirtualService) -> bool:
    """Return whether two services with the same key have equal attributes (reals aside)."""
    return (a.scheduler == b.scheduler and a.flags == b.flags
            and a.persistence == b.persistence and a.one_packet == b.one_packet)


def _signatures(service: VirtualService) -> set[netlink.DestSignature]:
    """Return the dump signatures of `service`'s real servers."""
    return {netlink.dest_signature(real) for real in service.reals.values()}


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (if it runs) for the duration."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _set_buffer(sock: socket.socket, force: int, plain: int) -> int:
    """Grow a socket buffer (beyond the sysctl limit when privileged); return its size."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, _SOCKET_BUFFER)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, _SOCKET_BUFFER)
    # The kernel doubles the value it was given and reports the doubled size.
    return int(sock.getsockopt(socket.SOL_SOCKET, plain)) // 2


class _Sender:
    """The thread that sends an apply's batches, in order, while the caller encodes more.

    Only this thread uses the socket until `finish` returns. After a failure it sends
    nothing more; `finish` raises that failure.
    """

    def __init__(self, ipvs: KernelIPVS, results: list[IPVSError | None]) -> None:
        self._ipvs = ipvs
        self._results = results
        # Batches in the order they are to go out; None ends the thread.
        self._batches: queue.SimpleQueue[tuple[int, list[_Request]] | None] = (
            queue.SimpleQueue())
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ipvs-apply-sender")
        self._thread.start()

    def send(self, first: int, batch: list[_Request]) -> None:
        """Queue one batch (see `KernelIPVS._send_batch`)."""
        self._batches.put((first, batch))

    def finish(self) -> None:
        """Wait until every queued batch is sent and answered.

        Raises:
            IPVSError: the sending thread's failure, if any.
        """
        self._batches.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (item := self._batches.get()) is not None:
            if self._error is None:  # after a failure, nothing more is sent
                self._send(*item)

    def _send(self, first: int, batch: list[_Request]) -> None:
        try:
            self._ipvs._send_batch(first, batch, self._results)
        except BaseException as exc:  # handed to the caller by finish()
            self._error = exc
