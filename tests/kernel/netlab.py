"""A small network lab made of Linux network namespaces, for real-traffic kernel tests.

Runs as root inside the test VM (``tests/vm/run``). Everything a :class:`Lab` creates --
namespaces, the bridges and veth pairs inside them, servers, sessions, spawned processes -- is
removed by :meth:`Lab.close` (the ``lab`` fixture calls it, also when a test fails).

Topology vocabulary:

* a *host* is a network namespace (:class:`Netns`) standing for one machine: a client, a
  director, a real server;
* a *switch* (:class:`Switch`) is a Linux bridge living in a namespace of its own; each
  :meth:`Switch.connect` plugs a host in with a veth pair (the host side is named as asked,
  ``eth0`` by default), so hosts share one L2 segment as DR needs;
* servers (:class:`HttpServer`, :class:`UdpEchoServer`) run as threads of the test process on
  sockets created inside the host's namespace, answer with their *name* (by default the host's
  namespace name) so a test can tell which real server answered, and listen on the wildcard
  address (``::`` / ``0.0.0.0``) so they also accept traffic for a VIP held on ``lo``;
* clients (:func:`http_get`, :func:`udp_query`, :class:`HttpSession`) make their sockets
  inside the client's namespace the same way.

Code runs "inside" a namespace without a new process: :meth:`Netns.call` runs a callable in a
short-lived thread that first ``setns()``-es into the namespace (a network namespace is a
per-thread attribute; a socket keeps the namespace it was created in for its whole life, so
it can be used from any thread afterwards). Commands run with ``ip -n`` / ``ip netns exec``.
Under software emulation starting a process costs a large fraction of a second, so the lab
itself starts as few as it can: namespaces are created and deleted in-process (the same bind
mount under /run/netns that ``ip netns add`` makes, so ``ip netns exec`` works on them),
sysctls and ``link up`` are done in-process, and the ``ip`` commands of a switch or host are
batched. Links are waited for until they carry traffic (:meth:`Netns.wait_running`).

Example::

    lan = lab.lan(["client", "rs1"])
    srv = lab.http_server(lan["rs1"])
    assert http_get(lan["client"], f"http://{lan.ip4('rs1')}/") == srv.name
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import http.client
import ipaddress
import itertools
import os
import secrets
import selectors
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

__all__ = [
    "HttpError",
    "HttpServer",
    "HttpSession",
    "Lab",
    "Lan",
    "Netns",
    "Port",
    "Switch",
    "UdpEchoServer",
    "http_get",
    "udp_query",
]

P = ParamSpec("P")
T = TypeVar("T")

_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MNT_DETACH = 2
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP, _IFF_RUNNING = 0x8913, 0x8914, 0x1, 0x40
_IP_PKTINFO = 8  # <linux/in.h>; socket.IP_PKTINFO only exists from Python 3.12 on
NETNS_DIR = "/run/netns"  # where `ip netns` keeps named namespaces

# os.setns()/os.unshare() only exist from Python 3.12 on; mount(2) never did.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

#: Default timeout (seconds) of helpers that wait for the network, and of commands run in a
#: namespace. Generous: the kernel tier runs under software emulation, where everything is
#: 10-50x slower than native, and a Python CLI with its imports took over a minute to start
#: on a loaded machine. Both can be raised from the environment (tests/vm/run forwards LVS_*).
DEFAULT_TIMEOUT = float(os.environ.get("LVS_LAB_NET_TIMEOUT", "20"))
COMMAND_TIMEOUT = float(os.environ.get("LVS_LAB_COMMAND_TIMEOUT", "300"))


class HttpError(Exception):
    """An HTTP answer that was not ``200 OK``."""


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _setns(path: str) -> None:
    """Move the *calling thread* into the network namespace mounted at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, _CLONE_NEWNET), f"setns({path})")
    finally:
        os.close(fd)


def _in_thread(fn: Callable[[], T], name: str) -> T:
    """Run ``fn`` in a new thread (which may change its namespaces freely) and return."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _link_flags(s: socket.socket, ifname: str) -> int:
    req = struct.pack("16sH14x", ifname.encode(), 0)
    flags: int = struct.unpack("16sH", fcntl.ioctl(s, _SIOCGIFFLAGS, req)[:18])[1]
    return flags


def _set_link_up(ifname: str) -> None:
    """``ip link set IFNAME up`` for the calling thread's namespace, without a process."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = _link_flags(s, ifname)
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", ifname.encode(), flags | _IFF_UP))


def _wait_running(ifnames: Sequence[str], timeout: float) -> None:
    """Wait until every link is operationally up (IFF_RUNNING) in the calling thread's ns.

    Until the kernel's link watcher has seen a new veth's carrier, the device has no queue
    and drops what is sent: the first SYN or ARP of a test would be lost and retried a
    second later (or the test would fail). Polled: a short wait, far below that second.
    """
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for ifname in ifnames:
            while not _link_flags(s, ifname) & _IFF_RUNNING:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"link {ifname} not running after {timeout}s")
                time.sleep(0.002)


def _write_sysctl(key: str, value: str | int) -> None:
    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(f"{value}\n")


def _create_netns(name: str, sysctls: dict[str, str | int]) -> None:
    """What ``ip netns add NAME`` does, in-process (a process per namespace is slow in TCG):
    a thread unshares a new network namespace and bind-mounts it at /run/netns/NAME, then
    raises ``lo`` and applies ``sysctls`` while it is inside."""
    os.makedirs(NETNS_DIR, exist_ok=True)
    path = f"{NETNS_DIR}/{name}"
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))

    def make() -> None:
        _check(_libc.unshare(_CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        _check(_libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", _MS_BIND,
                           None), f"bind mount of a new netns on {path}")
        _set_link_up("lo")
        for key, value in sysctls.items():
            _write_sysctl(key, value)

    try:
        _in_thread(make, f"netns-add:{name}")
    except BaseException:
        _delete_netns(name)
        raise


def _delete_netns(name: str) -> None:
    """What ``ip netns delete NAME`` does: unmount and remove the name. The kernel frees the
    namespace once no process, socket or mount uses it any more."""
    path = f"{NETNS_DIR}/{name}"
    _libc.umount2(path.encode(), _MNT_DETACH)  # fails harmlessly if never mounted
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def _run(argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT, check: bool = True,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing output; on failure raise with its stderr in the message."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          input=input, check=False)
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(
            proc.returncode, proc.args, proc.stdout,
            f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


# --------------------------------------------------------------------------------------------
# Namespaces
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Netns:
    """A named network namespace (``/run/netns/<name>``); create it with :meth:`Lab.netns`."""

    name: str

    @property
    def path(self) -> str:
        return f"{NETNS_DIR}/{self.name}"

    def __str__(self) -> str:
        return self.name

    def ip(self, *args: str) -> str:
        """Run ``ip -n <name> ARGS...``; return its stdout, raise with stderr on failure."""
        return _run(["ip", "-n", self.name, *args]).stdout

    def ip_batch(self, commands: Iterable[Sequence[str]]) -> None:
        """Run several ``ip`` commands in one process (``ip -n <name> -batch -``).

        Each command is the argument list after ``ip``, e.g. ``["link", "set", "x", "up"]``;
        no argument may contain whitespace. Stops at, and raises for, the first failure.
        """
        lines = []
        for argv in commands:
            if any(not a or any(c.isspace() for c in a) for a in argv):
                raise ValueError(f"ip batch arguments must be non-empty words: {argv!r}")
            lines.append(" ".join(argv) + "\n")
        if lines:
            _run(["ip", "-n", self.name, "-batch", "-"], input="".join(lines))

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command to completion inside the namespace (``ip netns exec``)."""
        return _run(["ip", "netns", "exec", self.name, *argv], check=check, timeout=timeout,
                    input=input)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command inside the namespace, untracked; prefer :meth:`Lab.spawn`."""
        return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kwargs)

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` in a thread that has entered this namespace.

        Sockets ``fn`` creates belong to the namespace for their whole life, and
        ``/proc/sys/net`` opened there shows the namespace's sysctls. (``/sys`` and
        ``/proc/self/net`` still show the process's namespace: use :meth:`run` for tools
        that read them.) Exceptions propagate to the caller.
        """
        def enter_and_call() -> T:
            _setns(self.path)
            return fn(*args, **kwargs)

        return _in_thread(enter_and_call, f"netns:{self.name}")

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
               proto: int = 0) -> socket.socket:
        """A new socket living in this namespace (usable from any thread)."""
        return self.call(socket.socket, family, type, proto)

    def sysctl(self, key: str, value: str | int | None = None) -> str:
        """Read, or write then read back, a sysctl in this namespace.

        ``key`` is dotted (``net.ipv4.ip_forward``) or a path under ``/proc/sys``.
        """
        path = key if key.startswith("/") else "/proc/sys/" + key.replace(".", "/")

        def access() -> str:
            if value is not None:
                with open(path, "w") as f:
                    f.write(f"{value}\n")
            with open(path) as f:
                return f.read().strip()

        return self.call(access)

    def add_address(self, ifname: str, cidr: str) -> None:
        """Add an address (``10.200.0.1/24``, ``fd00:200::1/64``); IPv6 without DAD."""
        extra = ["nodad"] if ":" in cidr else []
        self.ip("address", "add", cidr, "dev", ifname, *extra)

    def add_route(self, dst: str, *, via: str | None = None, dev: str | None = None) -> None:
        """Add a route (``dst`` may be ``default``), through a gateway and/or a device."""
        args = ["route", "add", dst]
        if via is not None:
            args += ["via", via]
        if dev is not None:
            args += ["dev", dev]
        if ":" in dst or (via is not None and ":" in via):
            args.insert(0, "-6")
        self.ip(*args)

    def link_up(self, ifname: str) -> None:
        """Set a link up (in-process, no ``ip`` run)."""
        self.call(_set_link_up, ifname)

    def wait_running(self, *ifnames: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until the links are operationally up (carrier seen, queue attached).

        :meth:`Switch.connect` and :meth:`Lab.lan` already do this; call it after raising
        links of your own (veth, tunnels) before sending the first packet through them.
        """
        self.call(_wait_running, ifnames, timeout)


@dataclass(eq=False)
class Port:
    """One cable between a :class:`Switch` and a host."""

    switch: Switch
    host: Netns
    ifname: str  # name in the host
    switch_ifname: str  # name in the switch namespace

    def unplug(self) -> None:
        """Take the switch side down: the host loses its link (e.g. to kill a director)."""
        self.switch.ns.ip("link", "set", self.switch_ifname, "down")

    def plug(self) -> None:
        """Bring the switch side back up; returns once the link carries traffic again."""
        self.switch.ns.ip("link", "set", self.switch_ifname, "up")
        self.switch.ns.wait_running(self.switch_ifname)
        self.host.wait_running(self.ifname)


@dataclass(eq=False)
class Switch:
    """A bridge ``br0`` in a namespace of its own; see :meth:`Lab.switch`."""

    ns: Netns
    bridge: str = "br0"
    ports: list[Port] = field(default_factory=list)

    def connect(self, host: Netns, ifname: str = "eth0",
                addresses: Iterable[str] = ()) -> Port:
        """Plug ``host`` in: a veth pair, host side named ``ifname``, up, with ``addresses``."""
        port, switch_side = self._plug(host, ifname)
        self.ns.ip_batch(switch_side)
        host.ip_batch(_host_side(ifname, addresses))
        host.wait_running(ifname)
        self.ns.wait_running(port.switch_ifname)
        return port

    def _plug(self, host: Netns, ifname: str) -> tuple[Port, list[list[str]]]:
        """Register a port; return it and the ``ip`` commands the switch side needs."""
        sw_if = f"p{len(self.ports) + 1}"
        port = Port(self, host, ifname, sw_if)
        self.ports.append(port)
        # Create the pair inside the switch namespace with its peer born directly in the
        # host: no name can clash with anything in the VM's root namespace.
        return port, [
            ["link", "add", sw_if, "type", "veth", "peer", "name", ifname, "netns", host.name],
            ["link", "set", sw_if, "master", self.bridge],
            ["link", "set", sw_if, "up"],
        ]


def _host_side(ifname: str, addresses: Iterable[str]) -> list[list[str]]:
    """The ``ip`` commands that address a host's interface (IPv6 without DAD) and raise it."""
    cmds = [["address", "add", cidr, "dev", ifname, *(["nodad"] if ":" in cidr else [])]
            for cidr in addresses]
    return [*cmds, ["link", "set", ifname, "up"]]


@dataclass(eq=False)
class Lan:
    """Hosts on one switch, made by :meth:`Lab.lan`; ``lan["rs1"]`` is a host's namespace."""

    switch: Switch
    hosts: dict[str, Netns]
    v4: dict[str, str]  # role -> IPv4 address (no prefix length)
    v6: dict[str, str]  # role -> IPv6 address (no prefix length)
    ports: dict[str, Port]

    def __getitem__(self, role: str) -> Netns:
        return self.hosts[role]

    def ip4(self, role: str) -> str:
        return self.v4[role]

    def ip6(self, role: str) -> str:
        return self.v6[role]


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


class _NameHandler(BaseHTTPRequestHandler):
    """Answers every GET with the server's name; HTTP/1.1 keep-alive for long sessions."""

    protocol_version = "HTTP/1.1"
    server: _NamedHTTPServer

    def do_GET(self) -> None:
        body = self.server.lab_name.encode()
        status = self.server.statuses.get(self.path, 200)
        if status == 200:
            self.server.count_request()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per request would drown the test's output


class _NamedHTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str, port: int) -> None:
        self.lab_name = name
        self.requests = 0
        self.statuses: dict[str, int] = {}  # path -> status other than 200 (HttpServer.set_status)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        super().__init__(("::", port), _NameHandler, bind_and_activate=False)
        try:
            # Dual stack: one socket on :: also takes IPv4 (any local address, VIPs too).
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    def server_bind(self) -> None:
        # Skip HTTPServer.server_bind: it calls getfqdn(), a DNS lookup.
        socketserver.TCPServer.server_bind(self)
        self.server_name = self.lab_name
        self.server_port = self.server_address[1]

    def count_request(self) -> None:
        with self._lock:
            self.requests += 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a short timeout, a failover test) is not the server's
        # error: no traceback for it.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        with self._lock:
            self._conns.add(conn)
        return conn, addr

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):  # already reset by the peer
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


class HttpServer:
    """An HTTP server in a namespace answering ``GET`` with its name (:meth:`Lab.http_server`)."""

    def __init__(self, ns: Netns, port: int = 80, name: str | None = None) -> None:
        self.ns = ns
        self.name = name if name is not None else ns.name
        self._server = ns.call(_NamedHTTPServer, self.name, port)
        self._server.timeout = 0.0  # handle_request() is only called when a client waits
        self.port: int = self._server.server_address[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, name=f"http:{self.name}",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        # Not serve_forever(): its shutdown() waits for a 0.5 s poll; this loop wakes at once.
        sel = selectors.DefaultSelector()
        sel.register(self._server.socket, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        with sel:
            while True:
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    self._server.handle_request()  # accept; a thread serves the connection

    @property
    def requests(self) -> int:
        """How many GETs this server has answered with 200."""
        return self._server.requests

    def set_status(self, path: str, status: int | None) -> None:
        """Answer GETs of exactly ``path`` with ``status`` from now on (the body is still the
        name); None: 200 again. E.g. ``set_status("/healthz", 500)`` fails a health check."""
        if status is None or status == 200:
            self._server.statuses.pop(path, None)
        else:
            self._server.statuses[path] = status

    def stop(self) -> None:
        """Stop listening and close every open connection (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._wake_w.send(b"x")
        self._thread.join(timeout=DEFAULT_TIMEOUT)
        self._server.close_connections()
        self._server.server_close()
        self._wake_r.close()
        self._wake_w.close()


def _pktinfo_sockets(port: int) -> tuple[socket.socket, socket.socket]:
    """UDP sockets on 0.0.0.0 and :: that report each datagram's destination address."""
    s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        s4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s4.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        s4.bind(("0.0.0.0", port))
        port = s4.getsockname()[1]
        s6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        s6.bind(("::", port))
    except BaseException:
        s4.close()
        s6.close()
        raise
    return s4, s6


class UdpEchoServer:
    """A UDP server in a namespace answering every datagram with its name.

    The reply leaves *from the address the datagram was sent to* (IP_PKTINFO), so a client
    that queried a VIP gets its answer from the VIP, as a real DR/TUN real server must do.
    """

    def __init__(self, ns: Netns, port: int = 5353, name: str | None = None) -> None:
        self.ns = ns
        self.name = name if name is not None else ns.name
        self.requests = 0
        self._s4, self._s6 = ns.call(_pktinfo_sockets, port)
        self.port: int = self._s4.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, name=f"udp:{self.name}",
                                        daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._s4, selectors.EVENT_READ)
        sel.register(self._s6, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        reply = self.name.encode()
        with sel:
            while True:
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    # e.g. an ICMP error queued by an earlier reply: keep serving
                    with contextlib.suppress(OSError):
                        self._answer(sock, reply)

    def _answer(self, sock: socket.socket, reply: bytes) -> None:
        _, anc, _, peer = sock.recvmsg(65535, socket.CMSG_SPACE(64))
        cmsgs: list[tuple[int, int, bytes]] = []
        for level, kind, data in anc:
            if level == socket.IPPROTO_IP and kind == _IP_PKTINFO:
                _, _, dst = struct.unpack("=i4s4s", data[:12])
                cmsgs = [(level, kind, struct.pack("=i4s4s", 0, dst, bytes(4)))]
            elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                dst6, ifindex = struct.unpack("=16sI", data[:20])
                # The interface only matters for link-local destinations.
                scoped = ipaddress.IPv6Address(dst6).is_link_local
                cmsgs = [(level, kind, struct.pack("=16sI", dst6, ifindex if scoped else 0))]
        self.requests += 1
        sock.sendmsg([reply], cmsgs, 0, peer)

    def stop(self) -> None:
        """Stop answering and close the sockets (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._wake_w.send(b"x")
        self._thread.join(timeout=DEFAULT_TIMEOUT)
        for s in (self._s4, self._s6, self._wake_r, self._wake_w):
            s.close()


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------


def _split_url(url: str) -> tuple[str, int, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"only http://host[:port]/path URLs are supported: {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or 80, path


class HttpSession:
    """One long-lived TCP connection from a namespace, for many HTTP/1.1 requests.

    For drain and failover tests: open it, change the IPVS table, then :meth:`get` again on
    the same connection and see which real server still answers it (or that it broke).
    It never reconnects by itself: a broken connection raises.
    """

    def __init__(self, ns: Netns, host: str, port: int = 80,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.ns = ns
        self.host = host
        self.port = port
        sock = ns.socket(_family(host), socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self._conn.sock = sock
        # Never let http.client open a replacement connection: it would do so in the
        # *caller's* namespace, not in ``ns``.
        self._conn.auto_open = 0

    @property
    def local_address(self) -> tuple[str, int]:
        name = self.sock.getsockname()
        return name[0], name[1]

    def get(self, path: str = "/") -> str:
        """Send one GET on this connection; return the body (the answering server's name)."""
        self._conn.request("GET", path)
        resp = self._conn.getresponse()
        body = resp.read().decode()
        if resp.status != 200:
            raise HttpError(f"GET {path} on {self.host}:{self.port}: {resp.status} {body!r}")
        return body

    def close(self) -> None:
        self._conn.close()
        self.sock.close()

    def __enter__(self) -> HttpSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def http_get(ns: Netns, url: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """GET ``url`` from inside ``ns`` on a new TCP connection; return the body.

    ``url`` is ``http://10.200.0.10/`` or ``http://[fd00:200::10]:8080/``. Raises
    :class:`HttpError` for a non-200 answer, ``OSError``/``TimeoutError`` on network errors.
    """
    host, port, path = _split_url(url)
    with HttpSession(ns, host, port, timeout) as session:
        session._conn.request("GET", path, headers={"Connection": "close"})
        resp = session._conn.getresponse()
        body = resp.read().decode()
    if resp.status != 200:
        raise HttpError(f"GET {url}: {resp.status} {body!r}")
    return body


def udp_query(ns: Netns, addr: str, port: int, payload: bytes = b"?",
              timeout: float = 5.0, attempts: int = 3) -> str:
    """Send a datagram from inside ``ns`` to ``addr:port``; return the answer as text.

    The socket is connected, so only an answer *from* ``addr:port`` counts. UDP may drop a
    datagram (e.g. while a neighbour is being resolved): it is sent up to ``attempts`` times,
    waiting ``timeout`` seconds for each; ``TimeoutError`` if none is answered.
    """
    with ns.socket(_family(addr), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((addr, port))
        for _ in range(attempts):
            sock.send(payload)
            try:
                return sock.recv(65535).decode()
            except TimeoutError:
                continue
    raise TimeoutError(f"no UDP answer from {addr}:{port} after {attempts} x {timeout}s")


# --------------------------------------------------------------------------------------------
# The lab
# --------------------------------------------------------------------------------------------


_lab_ids = itertools.count(1)


class Lab:
    """Creates namespaces, switches, servers and processes, and removes them all on close.

    Names are unique per lab (``<role>-<lab id>``, e.g. ``rs1-a3f01``), so labs never collide,
    even with leftovers of a crashed test. Use as a context manager or through the ``lab``
    fixture.
    """

    def __init__(self) -> None:
        self.id = f"{secrets.token_hex(2)}{next(_lab_ids)}"
        self.namespaces: list[Netns] = []
        self._servers: list[HttpServer | UdpEchoServer] = []
        self._sessions: list[HttpSession] = []
        self._procs: list[subprocess.Popen[Any]] = []

    # -- topology ------------------------------------------------------------------------

    def netns(self, role: str) -> Netns:
        """A new namespace for one host: ``lo`` up, IPv6 duplicate address detection off."""
        # DAD would hold every new IPv6 address "tentative" (unusable) for a second or more;
        # "default" covers interfaces created later, "all" the ones that exist.
        return self._netns(role, {"net.ipv6.conf.all.accept_dad": 0,
                                  "net.ipv6.conf.default.accept_dad": 0})

    def _netns(self, role: str, sysctls: dict[str, str | int]) -> Netns:
        ns = Netns(f"{role}-{self.id}")
        _create_netns(ns.name, sysctls)
        self.namespaces.append(ns)
        return ns

    def switch(self, role: str = "sw") -> Switch:
        """A bridge in its own namespace: no STP, no forwarding delay, no IGMP/MLD snooping."""
        sw = self._new_switch(role)
        sw.ns.ip_batch(self._bridge_commands(sw))
        return sw

    def _new_switch(self, role: str) -> Switch:
        # The switch takes no part in IP: no link-local addresses, router solicitations...
        ns = self._netns(role, {"net.ipv6.conf.all.disable_ipv6": 1,
                                "net.ipv6.conf.default.disable_ipv6": 1})
        return Switch(ns)

    @staticmethod
    def _bridge_commands(sw: Switch) -> list[list[str]]:
        return [["link", "add", sw.bridge, "type", "bridge", "stp_state", "0",
                 "forward_delay", "0", "mcast_snooping", "0"],
                ["link", "set", sw.bridge, "up"]]

    def lan(self, roles: Sequence[str], *, v4_net: str = "10.200.0.0/24",
            v6_net: str = "fd00:200::/64", first_host: int = 10) -> Lan:
        """One switch and a host per role, addressed ``first_host``, ``first_host+1``, ...

        ``lab.lan(["client", "dir", "rs1"])`` gives client 10.200.0.10 / fd00:200::a,
        dir .11, rs1 .12, each on its ``eth0``.
        """
        net4, net6 = ipaddress.IPv4Network(v4_net), ipaddress.IPv6Network(v6_net)
        sw = self._new_switch("sw")
        switch_cmds = self._bridge_commands(sw)
        lan = Lan(sw, {}, {}, {}, {})
        host_cmds: list[tuple[Netns, list[list[str]]]] = []
        for i, role in enumerate(roles):
            ns = self.netns(role)
            a4, a6 = net4[first_host + i], net6[first_host + i]
            port, cmds = sw._plug(ns, "eth0")
            switch_cmds += cmds
            host_cmds.append((ns, _host_side("eth0", [f"{a4}/{net4.prefixlen}",
                                                      f"{a6}/{net6.prefixlen}"])))
            lan.hosts[role], lan.ports[role] = ns, port
            lan.v4[role], lan.v6[role] = str(a4), str(a6)
        # One `ip` process for the whole switch, one per host: process start-up is the
        # dominant cost of building a lab under emulation.
        sw.ns.ip_batch(switch_cmds)
        for ns, cmds in host_cmds:
            ns.ip_batch(cmds)
        for ns, _ in host_cmds:
            ns.wait_running("eth0")
        sw.ns.wait_running(*(port.switch_ifname for port in sw.ports))
        return lan

    # -- traffic -----------------------------------------------------------------------------

    def http_server(self, ns: Netns, port: int = 80, name: str | None = None) -> HttpServer:
        """Start an :class:`HttpServer` in ``ns`` (stopped on close); ready on return."""
        server = HttpServer(ns, port, name)
        self._servers.append(server)
        return server

    def udp_server(self, ns: Netns, port: int = 5353, name: str | None = None) -> UdpEchoServer:
        """Start a :class:`UdpEchoServer` in ``ns`` (stopped on close); ready on return."""
        server = UdpEchoServer(ns, port, name)
        self._servers.append(server)
        return server

    def http_session(self, ns: Netns, host: str, port: int = 80,
                     timeout: float = DEFAULT_TIMEOUT) -> HttpSession:
        """Open an :class:`HttpSession` (closed on close)."""
        session = HttpSession(ns, host, port, timeout)
        self._sessions.append(session)
        return session

    def spawn(self, ns: Netns, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a long-running process in ``ns``; it and its children are killed on close."""
        proc = ns.popen(argv, start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc

    # -- teardown ----------------------------------------------------------------------------

    def close(self) -> None:
        """Remove everything, in dependency order; raise the first error after trying all."""
        errors: list[BaseException] = []

        def attempt(fn: Callable[[], object]) -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        for session in self._sessions:
            attempt(session.close)
        for server in self._servers:
            attempt(server.stop)
        for proc in self._procs:
            attempt(functools.partial(_kill, proc))
        # Deleting the name drops the last reference the lab holds; the kernel frees the
        # namespace (and its IPVS table, addresses, veths) once nothing else uses it.
        # Processes a test started itself with `ip netns exec` would keep it alive: use spawn.
        for ns in reversed(self.namespaces):
            attempt(functools.partial(_delete_netns, ns.name))
        self._sessions.clear()
        self._servers.clear()
        self._procs.clear()
        self.namespaces.clear()
        if errors:
            raise errors[0]

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __iter__(self) -> Iterator[Netns]:
        return iter(self.namespaces)


def _kill(proc: subprocess.Popen[Any], grace: float = 3.0) -> None:
    """SIGTERM the process group, SIGKILL it if it is still there after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()
