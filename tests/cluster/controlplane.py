"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

The cluster test tier runs against it (``tests/cluster/conftest.py``: the ``cluster`` fixture),
and ``tests/cluster/cluster up|down|status`` runs one by hand. No kubelet, no nodes: objects are
stored, validated, admitted, authorised (RBAC) and reconciled by the real controllers, but no
Pod ever runs.

:func:`start` generates a throw-away PKI with ``openssl`` (a CA, the apiserver's serving
certificate, an admin client certificate in ``system:masters``, one for the controller manager
as ``system:kube-controller-manager``, a service-account key pair), starts the three processes
on free ports of 127.0.0.1 picked at start, writes an admin kubeconfig and returns once
``/readyz`` answers and the ``default`` service account exists (workloads can be created). All
of it lives in the work folder: ``pki/``, ``etcd/``, ``logs/<process>.log``,
``admin.kubeconfig`` and ``state.json`` (what ``cluster status`` / ``down`` read).
:meth:`ControlPlane.stop` stops the processes in reverse order (SIGTERM, then SIGKILL after a
timeout: the apiserver hangs if etcd goes first) and removes the folder.

The binaries come from ``tests/cluster/build-k8s`` (:func:`build_binaries`; ``LVS_K8S_BIN``
names a folder of prebuilt ones instead). Only the standard library is used, so the
``cluster`` script runs it with any Python >= 3.11.

The apiserver's certificate is also valid for ``10.0.2.2`` (how the kernel-test VM reaches the
host: qemu's user-mode network forwards it to the host's loopback) and for ``10.96.0.1`` (the
``kubernetes`` Service of the service range ``10.96.0.0/16``).
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD_K8S = HERE / "build-k8s"

#: The binaries :func:`build_binaries` guarantees in its folder.
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm")
SERVICE_CIDR = "10.96.0.0/16"
# Dual-stack Services (ipFamilyPolicy: RequireDualStack) need a second, IPv6, service range.
SERVICE_CIDR_V6 = "fd00:10:96::/112"
SERVICE_IP = "10.96.0.1"  # the `kubernetes` Service: the first address of SERVICE_CIDR
HOST_FROM_VM = "10.0.2.2"  # the host's loopback as seen from the qemu VM (user-mode network)
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVER_SANS = (
    "IP:127.0.0.1",
    f"IP:{SERVICE_IP}",
    f"IP:{HOST_FROM_VM}",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
    "DNS:localhost",
)

MARKER = ".lvs-controlplane"  # stop() removes only a folder holding this file
STATE = "state.json"
START_TIMEOUT = 90.0  # seconds per process; the machine may be busy
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
LOG_TAIL = 25  # log lines quoted when a process fails


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or stopped; the message says why."""


class KubectlError(subprocess.CalledProcessError):
    """A ``kubectl`` command failed; ``str()`` gives the command, exit code and stderr."""

    def __str__(self) -> str:
        cmd = shlex.join(str(a) for a in self.cmd)
        err = (self.stderr or "").strip() or "(nothing on stderr)"
        return f"`{cmd}` exited with {self.returncode}: {err}"


def default_workdir() -> Path:
    """Return the folder ``cluster up`` uses by default: ``<cache>/lvs-operator/cluster``.

    ``<cache>`` is ``$LVS_K8S_CACHE`` if set (it then names the lvs-operator folder itself, as
    in build-k8s), else ``${XDG_CACHE_HOME:-~/.cache}/lvs-operator``.
    """
    cache = os.environ.get("LVS_K8S_CACHE")
    if cache:
        return Path(cache) / "cluster"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "lvs-operator" / "cluster"


def build_binaries(*, progress: Callable[[str], None] | None = None) -> Path:
    """Run ``tests/cluster/build-k8s`` (cached: well under a second when warm).

    Returns the folder holding :data:`BINARIES`. Each progress line build-k8s prints on stderr
    goes to ``progress`` (default: this process's stderr) as it comes: a cold build takes a
    while. Raises :class:`ControlPlaneError` with the last lines if it fails.
    """
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL)
    try:
        proc = subprocess.Popen(
            [str(BUILD_K8S)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True,
        )
    except OSError as e:
        raise ControlPlaneError(f"cannot run {BUILD_K8S}: {e}") from e
    assert proc.stderr is not None and proc.stdout is not None
    for line in proc.stderr:
        line = line.rstrip("\n")
        tail.append(line)
        say(line)
    out = proc.stdout.read()
    rc = proc.wait()
    if rc != 0:
        raise ControlPlaneError(
            f"{BUILD_K8S} failed (exit {rc}); its last lines:\n" + "\n".join(tail))
    folder = Path(out.strip().splitlines()[-1]) if out.strip() else None
    if folder is None or not folder.is_dir():
        raise ControlPlaneError(f"{BUILD_K8S} printed no binary folder (stdout: {out!r})")
    missing = [b for b in BINARIES if not os.access(folder / b, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"{folder} lacks {', '.join(missing)}")
    return folder


# --- PKI -------------------------------------------------------------------------------------

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = {sans}
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
"""


def _openssl(*args: str, cwd: Path) -> None:
    """Run ``openssl ARGS`` in ``cwd``; raises :class:`ControlPlaneError` on failure."""
    try:
        r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, check=False)
    except OSError as e:
        raise ControlPlaneError(f"cannot run openssl: {e}") from e
    if r.returncode != 0:
        raise ControlPlaneError(
            f"`openssl {shlex.join(args)}` failed ({r.returncode}): {r.stderr.strip()}")


def make_pki(pki: Path) -> None:
    """Write a fresh CA and the certificates and keys the control plane uses into ``pki``.

    Creates ``ca.{crt,key}``, ``apiserver.{crt,key}`` (serverAuth, SANs :data:`SERVER_SANS`),
    ``admin.{crt,key}`` (CN kubernetes-admin, O system:masters), ``controller-manager.{crt,key}``
    (CN system:kube-controller-manager) and the service-account pair ``sa.key`` / ``sa.pub``.
    All keys are ECDSA P-256 (fast to generate). Raises :class:`ControlPlaneError`.
    """
    pki.mkdir(parents=True, exist_ok=True)
    (pki / "openssl.cnf").write_text(_OPENSSL_CNF.format(sans=",".join(SERVER_SANS)))
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl("req", "-x509", "-config", "openssl.cnf", "-extensions", "ca", *key,
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
             "-subj", "/CN=lvs-operator test CA", cwd=pki)
    for name, subj, ext in (
        ("apiserver", "/CN=kube-apiserver", "server"),
        ("admin", "/O=system:masters/CN=kubernetes-admin", "client"),
        ("controller-manager", "/CN=system:kube-controller-manager", "client"),
    ):
        _openssl("req", "-x509", "-config", "openssl.cnf", "-extensions", ext, *key,
                 "-CA", "ca.crt", "-CAkey", "ca.key", "-keyout", f"{name}.key",
                 "-out", f"{name}.crt", "-days", "365", "-subj", subj, cwd=pki)
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", "sa.key", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for k in pki.glob("*.key"):
        k.chmod(0o600)


def client_certificate(pki: Path, name: str, subject: str) -> tuple[Path, Path]:
    """Issue a client certificate of the CA in ``pki`` (made by :func:`make_pki`) for
    ``subject`` (e.g. ``/O=system:nodes/CN=system:node:node-1``) as ``pki/<name>.{crt,key}``.

    Returns the paths of the certificate and the key. Raises :class:`ControlPlaneError`.
    """
    _openssl("req", "-x509", "-config", "openssl.cnf", "-extensions", "client",
             "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-CA", "ca.crt", "-CAkey", "ca.key", "-keyout", f"{name}.key",
             "-out", f"{name}.crt", "-days", "365", "-subj", subject, cwd=pki)
    (pki / f"{name}.key").chmod(0o600)
    return pki / f"{name}.crt", pki / f"{name}.key"


def kubeconfig(server: str, ca: Path, cert: Path, key: Path, user: str) -> str:
    """Return a kubeconfig (JSON) for ``server`` with the credentials embedded."""
    return _kubeconfig(server, ca, cert, key, user)


def _kubeconfig(server: str, ca: Path, cert: Path, key: Path, user: str) -> str:
    """Return a kubeconfig (JSON, which is YAML too) with the credentials embedded."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    return json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lvs-test", "cluster": {
            "server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
        "contexts": [{"name": "lvs-test", "context": {"cluster": "lvs-test", "user": user}}],
        "current-context": "lvs-test",
    }, indent=2) + "\n"


# --- processes -------------------------------------------------------------------------------

def free_ports(n: int) -> list[int]:
    """Return ``n`` distinct TCP ports of 127.0.0.1 that were free a moment ago.

    Another program may take one before it is used: :func:`start` retries on a port clash.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: have the kernel SIGKILL the child when the process that started it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class Process:
    """One control-plane process: its name, pid, log file and (if we started it) handle."""

    name: str
    pid: int
    log: Path
    cmdline_mark: str  # a string in its command line: tells it from a reused pid
    popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        """Return whether the process still runs (and is still ours: pids are reused)."""
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        state = stat.rsplit(")", 1)[-1].split()[0]
        return state != "Z" and self.cmdline_mark.encode() in cmdline

    def exit_status(self) -> str:
        """Return how it ended, for messages: ``exit code N``, ``killed by SIGX`` or ``running``."""
        if self.popen is None or self.popen.returncode is None:
            return "running" if self.alive() else "gone"
        rc = self.popen.returncode
        if rc < 0:
            return f"killed by {signal.Signals(-rc).name}"
        return f"exit code {rc}"

    def tail(self, lines: int = LOG_TAIL) -> str:
        """Return the last ``lines`` lines of its log (empty if there is none)."""
        try:
            with self.log.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def send(self, sig: signal.Signals) -> None:
        """Send ``sig`` if the process still runs."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for it to end; returns whether it did."""
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL if it has not ended after ``timeout`` seconds."""
        self.send(signal.SIGTERM)
        if not self.wait(timeout):
            print(f"controlplane: {self.name} ignored SIGTERM for {timeout:.0f} s: SIGKILL",
                  file=sys.stderr)
            self.send(signal.SIGKILL)
            self.wait(timeout)


def _spawn(name: str, argv: Sequence[str], logs: Path, mark: str, *, detach: bool) -> Process:
    """Start ``argv`` with its output in ``logs/<name>.log``; returns its :class:`Process`.

    The child gets its own session (a terminal's Ctrl-C reaches only us, who stop it in
    order). Unless ``detach``, it is killed when this process dies, so a killed test run
    leaves nothing behind.
    """
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        out.write(f"# {shlex.join(argv)}\n".encode())
        out.flush()
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=None if detach else _die_with_parent,
        )
    return Process(name, popen.pid, log, mark, popen)


class _Unready(Exception):
    """A readiness probe did not succeed yet."""


class _ProcessDied(ControlPlaneError):
    def __init__(self, proc: Process, what: str) -> None:
        self.proc = proc
        tail = proc.tail()
        self.port_clash = "address already in use" in tail.lower()
        super().__init__(
            f"{proc.name} ended ({proc.exit_status()}) while waiting for {what}; "
            f"last lines of {proc.log}:\n{tail}")


def _wait_for(what: str, probe: Callable[[], object], watch: Sequence[Process],
              timeout: float = START_TIMEOUT) -> None:
    """Call ``probe`` until it returns without raising; raises :class:`ControlPlaneError`.

    Fails at once if a process in ``watch`` ends (quoting its log), or after ``timeout``
    seconds (quoting the last probe error and the logs).
    """
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        for p in watch:
            if not p.alive():
                raise _ProcessDied(p, what)
        try:
            probe()
            return
        except (OSError, _Unready, ssl.SSLError) as e:
            last = str(e)
        if time.monotonic() > deadline:
            logs = "".join(f"\n--- last lines of {p.log}:\n{p.tail()}" for p in watch)
            raise ControlPlaneError(
                f"timed out after {timeout:.0f} s waiting for {what} (last error: {last}){logs}")
        time.sleep(0.1)


# --- the control plane -----------------------------------------------------------------------

@dataclass
class ControlPlane:
    """A running control plane: where it is, how to reach it, and its processes.

    ``kubeconfig`` is an admin (``system:masters``) kubeconfig with its credentials embedded;
    ``env`` is ``os.environ`` plus ``KUBECONFIG``, ``PATH`` with ``bin`` first, and kubectl's
    and helm's cache/config folders inside ``workdir`` (nothing is written to ``~``).
    """

    workdir: Path
    bin: Path
    server: str
    kubeconfig: Path
    ca_cert: Path
    admin_cert: Path
    admin_key: Path
    etcd_url: str
    processes: list[Process]
    timings: dict[str, float] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.env:
            self.env = dict(os.environ)
            self.env.update({
                "KUBECONFIG": str(self.kubeconfig),
                "PATH": os.pathsep.join([str(self.bin), os.environ.get("PATH", "")]),
                "KUBECACHEDIR": str(self.workdir / "kube-cache"),
                "HELM_CACHE_HOME": str(self.workdir / "helm" / "cache"),
                "HELM_CONFIG_HOME": str(self.workdir / "helm" / "config"),
                "HELM_DATA_HOME": str(self.workdir / "helm" / "data"),
            })

    @property
    def port(self) -> int:
        """The apiserver's secure port on 127.0.0.1."""
        return int(self.server.rsplit(":", 1)[1])

    def summary(self) -> str:
        """Return the one-line start-up report: total and per-step seconds."""
        t = self.timings
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in t.items() if k != "total")
        return f"control plane ready in {t.get('total', 0.0):.1f} s ({parts})"

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl ARGS`` as cluster admin; returns the completed process (text).

        ``input`` goes to its stdin. With ``check`` (the default) a non-zero exit raises
        :class:`KubectlError` (command, exit code and stderr in its message); a command still
        running after ``timeout`` seconds raises :class:`subprocess.TimeoutExpired`.
        """
        argv = [str(self.bin / "kubectl"), *args]
        r = subprocess.run(argv, input=input, capture_output=True, text=True, env=self.env,
                           timeout=timeout, check=False,
                           stdin=None if input is not None else subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise KubectlError(r.returncode, ["kubectl", *args], r.stdout, r.stderr)
        return r

    def get(self, path: str, timeout: float = 5) -> bytes:
        """GET ``path`` from the apiserver as admin; returns the body.

        Raises :class:`urllib.error.HTTPError` on a non-2xx answer, :class:`OSError` if it
        cannot be reached.
        """
        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        ctx.load_cert_chain(str(self.admin_cert), str(self.admin_key))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=ctx))
        with opener.open(self.server + path, timeout=timeout) as resp:
            body: bytes = resp.read()
            return body

    def ready(self) -> bool:
        """Return whether every process runs and ``/readyz`` answers ``ok``."""
        if not all(p.alive() for p in self.processes):
            return False
        try:
            return self.get("/readyz").strip() == b"ok"
        except (OSError, ssl.SSLError):
            return False

    def write_state(self) -> None:
        """Record pids and addresses in ``workdir/state.json`` (for :meth:`load`)."""
        state = {
            "bin": str(self.bin), "server": self.server, "etcd_url": self.etcd_url,
            "kubeconfig": str(self.kubeconfig), "timings": self.timings,
            "processes": [{"name": p.name, "pid": p.pid, "log": str(p.log),
                           "mark": p.cmdline_mark} for p in self.processes],
        }
        tmp = self.workdir / (STATE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.workdir / STATE)

    @classmethod
    def load(cls, workdir: Path) -> ControlPlane:
        """Return the control plane recorded in ``workdir/state.json`` (by ``cluster up``).

        Its processes are tracked by pid. Raises :class:`ControlPlaneError` if there is no
        state file.
        """
        try:
            state = json.loads((workdir / STATE).read_text())
        except (OSError, ValueError) as e:
            raise ControlPlaneError(f"no control plane recorded in {workdir}: {e}") from e
        pki = workdir / "pki"
        return cls(
            workdir=workdir, bin=Path(state["bin"]), server=state["server"],
            kubeconfig=Path(state["kubeconfig"]), ca_cert=pki / "ca.crt",
            admin_cert=pki / "admin.crt", admin_key=pki / "admin.key",
            etcd_url=state["etcd_url"], timings=state.get("timings", {}),
            processes=[Process(p["name"], p["pid"], Path(p["log"]), p["mark"])
                       for p in state["processes"]],
        )

    def stop(self, *, keep_workdir: bool = False, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the processes in reverse start order (kcm, apiserver, etcd), then remove
        ``workdir`` (unless ``keep_workdir``; only a folder :func:`start` marked as its own).

        Each gets SIGTERM, then SIGKILL after ``timeout`` seconds. Never raises for a process
        that is already gone.
        """
        for p in reversed(self.processes):
            p.stop(timeout)
        if not keep_workdir and (self.workdir / MARKER).exists():
            shutil.rmtree(self.workdir, ignore_errors=True)


def start(workdir: Path, *, bin: Path | None = None, detach: bool = False,
          log: Callable[[str], None] | None = None, attempts: int = 3,
          apiserver_args: Sequence[str] = ()) -> ControlPlane:
    """Start etcd, kube-apiserver and kube-controller-manager with their state in ``workdir``.

    ``bin`` is the folder of the binaries (default: :func:`build_binaries`, which builds them
    on a first run). ``workdir`` is created; if it exists it must be empty or hold a stopped
    control plane of ours (whose files are replaced). Unless ``detach``, the processes die with
    this process; with it they outlive it (``cluster up``). ``log`` receives the start-up
    report line (default: stderr). ``apiserver_args`` are added to kube-apiserver's command
    line (the node tier: an egress selector, the kubelet client certificate).

    Returns the :class:`ControlPlane` once ``/readyz`` answers and the ``default`` service
    account exists. Raises :class:`ControlPlaneError` (quoting the failing process's log; the
    workdir is kept for the full logs) if something does not start; a port taken meanwhile by
    another program is retried with new ports up to ``attempts`` times.
    """
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if bin is None:
        bin = build_binaries()
    bin = bin.resolve()
    t0 = time.monotonic()
    workdir = workdir.resolve()
    if workdir.exists() and any(workdir.iterdir()) and not (workdir / MARKER).exists():
        raise ControlPlaneError(f"{workdir} is not empty and not a control plane's folder")
    for sub in ("pki", "etcd", "logs", STATE, "admin.kubeconfig", "controller-manager.kubeconfig"):
        path = workdir / sub
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("a control plane of tests/cluster/controlplane.py\n")

    pki = workdir / "pki"
    make_pki(pki)
    timings = {"certs": time.monotonic() - t0}
    for attempt in range(1, attempts + 1):
        try:
            cp = _start_processes(workdir, bin, pki, timings, detach=detach,
                                  apiserver_args=apiserver_args)
        except _ProcessDied as e:
            if not e.port_clash or attempt == attempts:
                raise
            say(f"controlplane: {e.proc.name}: port taken meanwhile; retrying with new ports")
            continue
        cp.timings["total"] = time.monotonic() - t0
        cp.write_state()
        say(cp.summary())
        return cp
    raise AssertionError("unreachable")


def _start_processes(workdir: Path, bin: Path, pki: Path, timings: dict[str, float], *,
                     detach: bool, apiserver_args: Sequence[str] = ()) -> ControlPlane:
    """Start the three processes once; stops what it started if one fails (and re-raises)."""
    etcd_client, etcd_peer, api_port = free_ports(3)
    logs = workdir / "logs"
    data = workdir / "etcd"
    for d in (logs, data):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    data.chmod(0o700)
    mark = str(workdir)  # every process's command line names a file in workdir
    server = f"https://127.0.0.1:{api_port}"
    etcd_url = f"http://127.0.0.1:{etcd_client}"
    peer_url = f"http://127.0.0.1:{etcd_peer}"
    kubeconfig = workdir / "admin.kubeconfig"
    kubeconfig.write_text(_kubeconfig(server, pki / "ca.crt", pki / "admin.crt",
                                      pki / "admin.key", "admin"))
    kcm_kubeconfig = workdir / "controller-manager.kubeconfig"
    kcm_kubeconfig.write_text(_kubeconfig(server, pki / "ca.crt", pki / "controller-manager.crt",
                                          pki / "controller-manager.key",
                                          "system:kube-controller-manager"))
    for k in (kubeconfig, kcm_kubeconfig):
        k.chmod(0o600)
    cp = ControlPlane(
        workdir=workdir, bin=bin, server=server, kubeconfig=kubeconfig,
        ca_cert=pki / "ca.crt", admin_cert=pki / "admin.crt", admin_key=pki / "admin.key",
        etcd_url=etcd_url, processes=[], timings=dict(timings),
    )
    try:
        t = time.monotonic()
        etcd = _spawn("etcd", [
            str(bin / "etcd"), "--name", "test", "--data-dir", str(data),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"test={peer_url}", "--unsafe-no-fsync",
        ], logs, mark, detach=detach)
        cp.processes.append(etcd)

        def etcd_healthy() -> None:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                    etcd_url + "/health", timeout=2) as resp:
                if json.load(resp).get("health") != "true":
                    raise _Unready("etcd /health is not true")

        _wait_for("etcd /health", etcd_healthy, [etcd])
        cp.timings["etcd"] = time.monotonic() - t

        t = time.monotonic()
        apiserver = _spawn("kube-apiserver", [
            str(bin / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR},{SERVICE_CIDR_V6}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            # No peer apiservers to proxy to; the gate's default on would want their identity.
            "--feature-gates=UnknownVersionInteroperabilityProxy=false",
            # The `kubernetes` endpoints cannot hold a loopback address: do not reconcile them.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            *apiserver_args,
        ], logs, mark, detach=detach)
        cp.processes.append(apiserver)

        def apiserver_ready() -> None:
            try:
                body = cp.get("/readyz", timeout=3)
            except urllib.error.HTTPError as e:
                raise _Unready(f"/readyz: HTTP {e.code}") from e
            if body.strip() != b"ok":
                raise _Unready(f"/readyz: {body[:200]!r}")

        _wait_for("kube-apiserver /readyz", apiserver_ready, [etcd, apiserver])
        cp.timings["apiserver"] = time.monotonic() - t

        t = time.monotonic()
        kcm = _spawn("kube-controller-manager", [
            str(bin / "kube-controller-manager"),
            f"--kubeconfig={kcm_kubeconfig}",
            "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--use-service-account-credentials=true",
            "--controllers=*",
            # Client rate limits (default 20 qps, burst 30): at start-up it makes a service
            # account and requests a token for each of its ~40 controllers, which the
            # defaults stretch over ~5 s. A test control plane has no other clients to spare.
            "--kube-api-qps=200", "--kube-api-burst=400",
            "--profiling=false",
        ], logs, mark, detach=detach)
        cp.processes.append(kcm)

        def default_service_account() -> None:
            try:
                cp.get("/api/v1/namespaces/default/serviceaccounts/default", timeout=3)
            except urllib.error.HTTPError as e:
                raise _Unready(f"default service account: HTTP {e.code}") from e

        _wait_for("the default service account (made by kube-controller-manager)",
                  default_service_account, [etcd, apiserver, kcm])
        cp.timings["kcm"] = time.monotonic() - t
    except BaseException:
        cp.stop(keep_workdir=True, timeout=5)
        raise
    return cp


# --- command line (tests/cluster/cluster) ----------------------------------------------------

def _cli_up(workdir: Path) -> int:
    if (workdir / STATE).exists():
        old = ControlPlane.load(workdir)
        if old.ready():
            print(f"a control plane already runs in {workdir} ({old.server})", file=sys.stderr)
            _print_use(old)
            return 0
        print(f"stopping what is left of an earlier control plane in {workdir}",
              file=sys.stderr)
        old.stop(keep_workdir=True)
    cp = start(workdir, detach=True)
    _print_use(cp)
    return 0


def _print_use(cp: ControlPlane) -> None:
    logs = ", ".join(str(p.log) for p in cp.processes)
    where = ""
    if cp.workdir != default_workdir().resolve():
        where = f" {shlex.quote(str(cp.workdir))}"
    print(f"server      {cp.server}\n"
          f"kubeconfig  {cp.kubeconfig}\n"
          f"binaries    {cp.bin} (kubectl, helm)\n"
          f"logs        {logs}\n"
          f"stop it:    tests/cluster/cluster down{where}\n"
          f"use it:     eval \"$(tests/cluster/cluster env{where})\"  or:", file=sys.stderr)
    print(f"export KUBECONFIG={shlex.quote(str(cp.kubeconfig))} "
          f"PATH={shlex.quote(str(cp.bin))}:\"$PATH\"")


def _cli_status(workdir: Path) -> int:
    try:
        cp = ControlPlane.load(workdir)
    except ControlPlaneError:
        print(f"no control plane in {workdir}")
        return 1
    for p in cp.processes:
        print(f"{p.name:24} pid {p.pid:<8} {'running' if p.alive() else 'NOT RUNNING'}")
    ready = cp.ready()
    print(f"{'kube-apiserver /readyz':24} {cp.server}: {'ok' if ready else 'NOT READY'}")
    print(f"{'kubeconfig':24} {cp.kubeconfig}")
    return 0 if ready else 1


def _cli_down(workdir: Path) -> int:
    try:
        cp = ControlPlane.load(workdir)
    except ControlPlaneError:
        print(f"no control plane in {workdir}", file=sys.stderr)
        return 0
    cp.stop()
    print(f"stopped the control plane in {workdir} and removed the folder", file=sys.stderr)
    return 0


def _cli_env(workdir: Path) -> int:
    cp = ControlPlane.load(workdir)
    print(f"export KUBECONFIG={shlex.quote(str(cp.kubeconfig))} "
          f"PATH={shlex.quote(str(cp.bin))}:\"$PATH\"")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``cluster up|down|status|env [DIR]``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="tests/cluster/cluster",
        description="Run the cluster tier's control plane (etcd, kube-apiserver, "
                    "kube-controller-manager on 127.0.0.1) by hand, in the background.",
        epilog="Binaries: tests/cluster/build-k8s (or LVS_K8S_BIN). "
               f"DIR defaults to {default_workdir()}.")
    parser.add_argument("command", choices=["up", "down", "status", "env"],
                        help="up: start it (prints `export KUBECONFIG=...` on stdout); "
                             "down: stop it and remove DIR; status: is it running and ready; "
                             "env: print the export line again")
    parser.add_argument("dir", nargs="?", type=Path, default=None,
                        help="its folder (default: %(default)s)")
    args = parser.parse_args(argv)
    workdir = (args.dir or default_workdir()).expanduser().resolve()
    commands: dict[str, Callable[[Path], int]] = {
        "up": _cli_up, "down": _cli_down, "status": _cli_status, "env": _cli_env}
    try:
        return commands[args.command](workdir)
    except ControlPlaneError as e:
        print(f"cluster {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
