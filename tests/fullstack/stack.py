"""The full stack on one machine: control plane and controller on the host, directors and real
servers in the kernel VM. Shared by the full-stack tests (tests/fullstack) and `make demo`
(tests/demo/demo.py): one orchestration, two users.

How the pieces talk::

    host                                          VM (tests/vm/run, LVS_VM_NETWORK=user)
    ----                                          ---------------------------------------
    etcd, kube-apiserver, kcm  127.0.0.1:PORT  <-- 10.0.2.2:PORT (qemu user network)
    lvs-operator controller (admin kubeconfig)        |  uplink0 10.0.2.15/24 (the VM's NIC)
                                                  [dir] lvs-operator agent --interface eth0
                                                      |  eth0 10.200.0.2/24 (+ the VIPs)
                                                  [sw] bridge -- [client] 10.200.0.10
                                                              -- [rs1..3] 10.200.0.11..13
                                                                 (VIPs on lo, silent)

Host half (:class:`HostStack`): starts the cluster tier's control plane
(tests/cluster/controlplane.py) in ``build/fullstack/``, installs the CRD, creates the Node
objects of the directors (there is no kubelet), starts ``lvs-operator controller`` and writes
a *guest kubeconfig*: the admin one with its server rewritten to ``https://10.0.2.2:PORT``
(the apiserver's certificate carries 10.0.2.2). :meth:`HostStack.run_vm` then boots the VM
with the network opt-in and the stack's facts in ``LVS_FULLSTACK_*`` variables.

Guest half (:class:`Site`): namespaces from tests/kernel/netlab.py; the VM's NIC is moved
into the director's namespace (renamed ``uplink0``), so the agent reaches the API server and
nothing else (only the connected 10.0.2.0/24, no default route), while its ``eth0`` is on the
lab's switch with the clients and real servers, as DR needs. Real servers get the VIPs with
``lvs-operator realserver-init --mode dr``. The agent runs as a real process
(``lvs-operator agent``) in the director's namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any, TextIO, TypeVar

from cluster import controlplane
from kernel.netlab import Lab, Lan, Netns, http_get
from lvs_operator.agent import kube
from lvs_operator.ipvs.kernel import KernelIPVS
from lvs_operator.model import Protocol, ServiceKey, VirtualService

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
HOST_FROM_VM = controlplane.HOST_FROM_VM
DIRECTOR_LABEL = "lvs.dev/director"
NAMESPACE = "fullstack"  # where the stack's Services, EndpointSlices and VirtualServers live
VS_API = "/apis/lvs.dev/v1alpha1"
UPLINK = "uplink0"  # the VM's NIC, once moved into the director's namespace
LAN_V4 = "10.200.0.0/24"
DIRECTOR_V4 = "10.200.0.2"
# Under emulation a Python CLI takes seconds to start and a sync a few hundred ms: generous.
TIMEOUT = float(os.environ.get("LVS_FULLSTACK_TIMEOUT", "90"))

_T = TypeVar("_T")


class StackUnavailable(RuntimeError):
    """The full stack cannot start here (no binaries, no kernel, not in the VM...)."""


def say(message: str) -> None:
    """Progress on stderr, prefixed so it stands out among the VM's output."""
    print(f"[stack] {message}", file=sys.stderr, flush=True)


def wait_for(what: str, probe: Callable[[], _T | None], timeout: float = TIMEOUT,
             interval: float = 0.05) -> _T:
    """Call ``probe`` until it returns something truthy; return it, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# ============================================================================================
# Host half
# ============================================================================================

HOW_TO_ENABLE = (
    "the full-stack tier needs the cluster tier's binaries (tests/cluster/build-k8s: Go >= "
    "1.26, or LVS_K8S_BIN), openssl, and the kernel VM (`make venv provision`); "
    "run `make test-fullstack` (or `make demo`)")


def check_host() -> None:
    """Raise :class:`StackUnavailable` (naming what is missing) unless the host can run it."""
    if os.geteuid() != 0:
        raise StackUnavailable("not root (the VM's namespaces and IPVS need root in the guest, "
                               "and tests/vm/run runs qemu as the caller)")
    if shutil.which("openssl") is None:
        raise StackUnavailable("no `openssl` on PATH")
    if not (REPO / ".venv" / "bin" / "vng").exists():
        raise StackUnavailable("no virtme-ng in .venv (make venv)")
    cache = os.environ.get("LVS_KERNEL_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "lvs-operator" / "kernel")
    if not (Path(cache) / "current").exists():
        raise StackUnavailable(f"no cached VM kernel in {cache} (make provision)")


@dataclass
class HostStack:
    """Control plane + CRD + director Nodes + controller on the host; see the module doc."""

    workdir: Path
    nodes: Sequence[str] = ("director-1",)
    cp: controlplane.ControlPlane | None = None
    controller: subprocess.Popen[bytes] | None = None
    guest_kubeconfig: Path = field(default_factory=Path)
    failed: bool = False

    @property
    def controller_log(self) -> Path:
        return self.workdir / "controller.log"

    def start(self) -> None:
        """Start everything; raises :class:`StackUnavailable` if the binaries cannot be had."""
        check_host()
        say("Kubernetes binaries (tests/cluster/build-k8s; cached after the first build)")
        try:
            bin_dir = controlplane.build_binaries(progress=say)
        except controlplane.ControlPlaneError as e:
            raise StackUnavailable(str(e)) from None
        self.workdir.mkdir(parents=True, exist_ok=True)
        say("control plane: etcd, kube-apiserver, kube-controller-manager on 127.0.0.1")
        self.cp = cp = controlplane.start(self.workdir / "cluster", bin=bin_dir, log=say)
        say(f"control plane at {cp.server}; the VM reaches it at https://{HOST_FROM_VM}:{cp.port}")
        crd = REPO / "crds" / "lvs.dev_virtualservers.yaml"
        cp.kubectl("apply", "-f", str(crd))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                   "crd/virtualservers.lvs.dev")
        say("CRD virtualservers.lvs.dev installed")
        cp.kubectl("create", "namespace", NAMESPACE)
        for node in self.nodes:
            # No kubelet: the Node object is only what the agent reads (its labels).
            cp.kubectl("apply", "-f", "-", input=json.dumps({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": node, "labels": {DIRECTOR_LABEL: "true"}}}))
        say(f"Node {', '.join(self.nodes)} labelled {DIRECTOR_LABEL}=true")
        self.guest_kubeconfig = self.workdir / "guest.kubeconfig"
        config = json.loads(cp.kubeconfig.read_text())
        for c in config["clusters"]:
            c["cluster"]["server"] = f"https://{HOST_FROM_VM}:{cp.port}"
        self.guest_kubeconfig.write_text(json.dumps(config, indent=2) + "\n")
        self.guest_kubeconfig.chmod(0o600)
        with self.controller_log.open("ab") as out:
            self.controller = subprocess.Popen(
                [sys.executable, "-m", "lvs_operator.cli", "controller",
                 "--kubeconfig", str(cp.kubeconfig), "--lease-namespace", "default",
                 "--identity", "demo-controller"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=cp.env,
                start_new_session=True)
        wait_for("the controller to lead", self._controller_leads, timeout=120, interval=0.2)
        say(f"lvs-operator controller running on the host (pid {self.controller.pid}, "
            f"log {self.controller_log})")

    def _controller_leads(self) -> bool:
        assert self.controller is not None
        if self.controller.poll() is not None:
            raise RuntimeError(f"the controller exited ({self.controller.returncode}):\n"
                               + self.controller_log.read_text(errors="replace")[-3000:])
        return "leading (Lease" in self.controller_log.read_text(errors="replace")

    def env(self) -> dict[str, str]:
        """What the guest needs to know (tests/vm/run forwards LVS_* variables)."""
        assert self.cp is not None
        return {
            "LVS_VM_NETWORK": "user",
            "LVS_FULLSTACK_KUBECONFIG": str(self.guest_kubeconfig),
            "LVS_FULLSTACK_KUBECTL": str(self.cp.bin / "kubectl"),
            "LVS_FULLSTACK_NODES": ",".join(self.nodes),
        }

    def run_vm(self, argv: Sequence[str]) -> int:
        """Boot the VM with the network opt-in and run ``argv`` in it; return its exit code."""
        env = {**os.environ, **self.env()}
        return subprocess.run([str(REPO / "tests" / "vm" / "run"), *argv], env=env,
                              check=False).returncode

    def stop(self) -> None:
        """Stop the controller, then the control plane; keep the logs if something failed."""
        if self.controller is not None and self.controller.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.controller.pid, signal.SIGTERM)
            try:
                self.controller.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.controller.pid, signal.SIGKILL)
                self.controller.wait()
        if self.cp is not None:
            self.cp.stop(keep_workdir=self.failed)
        if self.failed:
            say(f"logs kept in {self.workdir} (controller.log, cluster/logs/)")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @classmethod
    @contextlib.contextmanager
    def running(cls, name: str, nodes: Sequence[str] = ("director-1",)) -> Iterator[HostStack]:
        stack = cls(REPO / "build" / "fullstack" / f"{name}-{secrets.token_hex(3)}", nodes)
        try:
            stack.start()
            yield stack
        except BaseException:
            stack.failed = True
            raise
        finally:
            stack.stop()


# ============================================================================================
# Guest half
# ============================================================================================


@dataclass(frozen=True)
class GuestConfig:
    """The stack's facts as the host passed them (``LVS_FULLSTACK_*``)."""

    kubeconfig: str
    kubectl: str
    nodes: tuple[str, ...]
    nic: str

    @classmethod
    def from_env(cls) -> GuestConfig:
        """Raise :class:`StackUnavailable` unless this runs in a VM the host stack booted."""
        if os.environ.get("LVS_IN_VM") != "1":
            raise StackUnavailable("not inside the test VM")
        kubeconfig = os.environ.get("LVS_FULLSTACK_KUBECONFIG")
        if not kubeconfig:
            raise StackUnavailable("no control plane (LVS_FULLSTACK_KUBECONFIG unset: the VM "
                                   "was not booted by tests/fullstack/host.py)")
        nic = os.environ.get("LVS_VM_NIC")
        if not nic:
            raise StackUnavailable("the VM has no network (LVS_VM_NETWORK=user not set)")
        return cls(kubeconfig, os.environ.get("LVS_FULLSTACK_KUBECTL", "kubectl"),
                   tuple(os.environ.get("LVS_FULLSTACK_NODES", "director-1").split(",")), nic)


def out_dir() -> Path:
    """A folder the host sees too (tests/vm/run's LVS_VM_OUT), for the agents' logs."""
    path = Path(os.environ.get("LVS_VM_OUT", "/tmp")) / "fullstack"
    path.mkdir(parents=True, exist_ok=True)
    return path


class Agent:
    """``lvs-operator agent`` as a process in the director's namespace."""

    def __init__(self, lab: Lab, ns: Netns, config: GuestConfig, node: str) -> None:
        self.lab, self.ns, self.node = lab, ns, node
        state = Path("/run/lvs-fullstack") / node
        state.mkdir(parents=True, exist_ok=True)
        self.log_path = out_dir() / f"agent-{node}.log"
        self.argv = [sys.executable, "-m", "lvs_operator.cli", "agent", "--node", node,
                     "--kubeconfig", config.kubeconfig, "--state-file", str(state / "owned.json"),
                     "--interface", "eth0", "--metrics-address", "127.0.0.1:9640"]
        self.proc: subprocess.Popen[Any] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("a" if self.starts > 1 else "w") as log:
            log.write(f"--- start {self.starts}\n")
            log.flush()
            env = {**os.environ, "LVS_RESYNC_SECONDS": "10", "LVS_DRAIN_POLL_SECONDS": "0.5",
                   "LVS_RETRY_SECONDS": "1"}
            self.proc = self.lab.spawn(self.ns, self.argv, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=env)

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Kill it (SIGKILL by default: no goodbye, as a crashed or OOM-killed agent)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(30)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> dict[str, float]:
        """Its Prometheus samples (``name{labels}`` -> value); {} while it does not answer."""
        def scrape() -> str:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                    "http://127.0.0.1:9640/metrics", timeout=5) as resp:
                return str(resp.read().decode())
        try:
            text = self.ns.call(scrape)
        except OSError:
            return {}
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples

    def syncs(self) -> int:
        """How many syncs this run of the agent has completed (0 until it serves metrics)."""
        return int(self.metrics().get("lvs_agent_syncs_total", 0))

    def operations(self) -> int:
        """How many IPVS operations this run of the agent has applied, all kinds."""
        return int(sum(v for k, v in self.metrics().items()
                       if k.startswith("lvs_agent_operations_total")))


@dataclass
class Site:
    """The VM's side: the LAN (client, real servers), the director(s) and their agents."""

    config: GuestConfig
    lab: Lab
    lan: Lan
    directors: dict[str, Netns]
    agents: dict[str, Agent]
    api: kube.Kube
    real_servers: list[str]  # roles: rs1, rs2, ...

    @property
    def client(self) -> Netns:
        return self.lan["client"]

    @property
    def director(self) -> Netns:
        return next(iter(self.directors.values()))

    @property
    def agent(self) -> Agent:
        return next(iter(self.agents.values()))

    def ip(self, role: str) -> str:
        return self.lan.ip4(role)

    # -- kernel ---------------------------------------------------------------------------

    def table(self, ns: Netns | None = None) -> dict[ServiceKey, VirtualService]:
        """The director's IPVS table, read in-process in its namespace."""
        def dump() -> dict[ServiceKey, VirtualService]:
            with KernelIPVS() as ipvs:
                return ipvs.dump()
        return (ns or self.director).call(dump)

    def service(self, vip: str, port: int = 80) -> VirtualService | None:
        return self.table().get(ServiceKey.inet(Protocol.TCP, ip_address(vip), port))

    def vips(self, ns: Netns | None = None) -> set[str]:
        """Addresses on the director's eth0 other than its own."""
        out = (ns or self.director).ip("-4", "-o", "addr", "show", "dev", "eth0")
        held = {line.split()[3].split("/")[0] for line in out.splitlines()}
        return held - {DIRECTOR_V4}

    # -- cluster ---------------------------------------------------------------------------
    # Only the director's namespace reaches the API server (it holds the VM's NIC): requests
    # and kubectl run there. A connection made there stays there, whichever thread reuses it.

    def request(self, method: str, path: str, body: object = None) -> Any:
        """One API request as cluster admin, from the director's namespace."""
        return self.director.call(self.api.request, method, path, body=body)

    def kubectl(self, *args: str) -> str:
        return self.director.run([self.config.kubectl, "--kubeconfig", self.config.kubeconfig,
                                  *args], timeout=120).stdout

    def apply_backend(self, name: str, ready: Mapping[str, bool], port: int = 80) -> None:
        """A selector-less Service ``name`` and its EndpointSlice: real server role -> ready.

        Created or replaced (the EndpointSlice's endpoints are exactly ``ready``'s keys).
        """
        svc_path = f"/api/v1/namespaces/{NAMESPACE}/services"
        with contextlib.suppress(kube.ApiError):  # already there
            self.request("POST", svc_path, body={
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                "spec": {"ports": [{"name": "http", "port": port, "protocol": "TCP"}]}})
        self.apply_slice(name, ready, port)

    def apply_slice(self, name: str, ready: Mapping[str, bool], port: int = 80) -> None:
        path = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
        body = {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-1", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [self.ip(role)], "conditions": {"ready": ok}}
                          for role, ok in ready.items()],
        }
        try:
            self.request("PUT", f"{path}/{name}-1", body=body)
        except kube.ApiError as e:
            if e.status != 404:
                raise
            self.request("POST", path, body=body)

    def apply_virtual_server(self, name: str, vip: str, service: str, *,
                             scheduler: str = "rr", drain_seconds: int = 30) -> None:
        body = {
            "apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualServer",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "vip": vip, "ports": [{"port": 80, "protocol": "TCP"}],
                "forwarding": "DirectRouting", "scheduler": {"name": scheduler},
                "backend": {"service": {"name": service, "port": "http"}},
                "directors": {"nodeSelector": {DIRECTOR_LABEL: "true"}, "interface": "eth0"},
                "drain": {"timeoutSeconds": drain_seconds},
            },
        }
        self.request("POST", f"{VS_API}/namespaces/{NAMESPACE}/virtualservers", body=body)

    def get_virtual_server(self, name: str) -> dict[str, Any] | None:
        try:
            vs: dict[str, Any] = self.request(
                "GET", f"{VS_API}/namespaces/{NAMESPACE}/virtualservers/{name}")
        except kube.ApiError as e:
            if e.status == 404:
                return None
            raise
        return vs

    def delete(self, kind_path: str, name: str) -> None:
        with contextlib.suppress(kube.ApiError):
            self.request("DELETE", f"{kind_path}/{name}")

    def delete_virtual_server(self, name: str) -> None:
        self.delete(f"{VS_API}/namespaces/{NAMESPACE}/virtualservers", name)

    def delete_backend(self, name: str) -> None:
        self.delete(f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices",
                    f"{name}-1")
        self.delete(f"/api/v1/namespaces/{NAMESPACE}/services", name)

    # -- waits -----------------------------------------------------------------------------

    def wait_reals(self, vip: str, weights: Mapping[str, int], timeout: float = TIMEOUT) -> None:
        """Wait until the director's service for vip:80 has exactly these reals (role -> weight)."""
        want = {ip_address(self.ip(role)): w for role, w in weights.items()}

        def matches() -> bool:
            svc = self.service(vip)
            have = {} if svc is None else {r.address: r.weight for r in svc.reals.values()}
            return have == want
        wait_for(f"{vip}:80 on the director to have reals {dict(weights)}", matches, timeout)

    def wait_programmed(self, name: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Wait until every director reports the VirtualServer's generation, error-free."""
        def reported() -> dict[str, Any] | None:
            vs = self.get_virtual_server(name)
            if vs is None:
                return None
            generation = vs["metadata"].get("generation")
            directors = (vs.get("status") or {}).get("directors") or {}
            for node in self.directors:
                entry = directors.get(node) or {}
                if entry.get("generation") != generation or entry.get("error"):
                    return None
            return vs
        return wait_for(f"every director to report VirtualServer {name} programmed", reported,
                        timeout)

    def get(self, vip: str, timeout: float = 10.0) -> str:
        """One GET from the client to the VIP on a new connection; the answering server."""
        return http_get(self.client, f"http://{vip}/", timeout=timeout)


def _move_nic_in(nic: str, ns: Netns) -> None:
    """Give the VM's NIC to the director: renamed (its eth0 is the LAN's), readdressed."""
    subprocess.run(["ip", "link", "set", nic, "down"], check=True)
    subprocess.run(["ip", "link", "set", nic, "name", UPLINK], check=True)
    subprocess.run(["ip", "link", "set", UPLINK, "netns", ns.name], check=True)
    # Only the connected 10.0.2.0/24 (the host is 10.0.2.2): no default route, so the
    # director can reach the API server and nothing else outside the VM.
    ns.ip_batch([["address", "add", "10.0.2.15/24", "dev", UPLINK],
                 ["link", "set", UPLINK, "up"]])
    ns.wait_running(UPLINK)


def _move_nic_out(nic: str, ns: Netns) -> None:
    """Give the NIC back to the VM's root namespace as it was (tests/vm/run's set-up)."""
    ns.ip("link", "set", UPLINK, "down")
    ns.ip("link", "set", UPLINK, "netns", "1")  # pid 1 lives in the root namespace
    for argv in (["ip", "link", "set", UPLINK, "name", nic],
                 ["ip", "address", "add", "10.0.2.15/24", "dev", nic],
                 ["ip", "link", "set", nic, "up"],
                 ["ip", "route", "add", "default", "via", HOST_FROM_VM, "dev", nic]):
        subprocess.run(argv, check=False, capture_output=True)


@contextlib.contextmanager
def site(vips: Sequence[str], real_servers: int = 3, *,
         start_agents: bool = True) -> Iterator[Site]:
    """Build the VM side: LAN, real servers with ``vips`` (DR), director(s), agent(s).

    Everything is removed afterwards (the NIC goes back to the root namespace first).
    """
    config = GuestConfig.from_env()
    subprocess.run(["modprobe", "ip_vs"], check=True)
    roles = [f"rs{i}" for i in range(1, real_servers + 1)]
    with Lab() as lab:
        lan = lab.lan(["client", *roles], v4_net=LAN_V4)
        if len(config.nodes) != 1:
            raise StackUnavailable("one director per VM for now: the VM has one NIC")
        node = config.nodes[0]
        director = lab.netns("dir")
        lan.switch.connect(director, "eth0", [f"{DIRECTOR_V4}/24"])
        say(f"namespaces: client {lan.ip4('client')}, "
            + ", ".join(f"{r} {lan.ip4(r)}" for r in roles)
            + f", director {DIRECTOR_V4} on one bridge")
        for role in roles:
            lab.http_server(lan[role], 80, name=role)
        # The real product's real-server set-up (what the webhook injects into DR pods).
        vip_args = [a for vip in vips for a in ("--vip", vip)]
        procs = [lan[role].popen([sys.executable, "-m", "lvs_operator.cli", "realserver-init",
                                  *vip_args, "--mode", "dr"], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for role in roles]
        for role, proc in zip(roles, procs, strict=True):
            out, _ = proc.communicate(timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"realserver-init in {role} failed: {out}")
        say(f"real servers {', '.join(roles)}: HTTP on :80, "
            f"`lvs-operator realserver-init --mode dr` for {', '.join(vips)}")
        _move_nic_in(config.nic, director)
        api: kube.Kube | None = None
        agent: Agent | None = None
        try:
            say(f"director {node}: the VM's NIC is its {UPLINK} (10.0.2.15 -> API server "
                f"at {HOST_FROM_VM}), eth0 on the LAN")
            api = kube.Kube.connect(config.kubeconfig)
            agent = Agent(lab, director, config, node)
            if start_agents:
                agent.start()
                say(f"lvs-operator agent --node {node} started in the director's "
                    f"namespace (log {agent.log_path})")
            yield Site(config, lab, lan, {node: director}, {node: agent}, api, roles)
        finally:
            if agent is not None:
                agent.kill(signal.SIGTERM)
            if api is not None:
                api.close()
            _move_nic_out(config.nic, director)


class Traffic:
    """A client loop in a thread: one GET per new connection, counting answers and failures."""

    def __init__(self, the_site: Site, vip: str, interval: float = 0.02) -> None:
        self.site, self.vip, self.interval = the_site, vip, interval
        self.answers: dict[str, int] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                name = self.site.get(self.vip, timeout=5.0)
                self.answers[name] = self.answers.get(name, 0) + 1
            except Exception as e:  # every failure counts, whatever its kind
                self.failures.append(f"{type(e).__name__}: {e}")
            self._stop.wait(self.interval)

    @property
    def total(self) -> int:
        return sum(self.answers.values())

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def print_table(the_site: Site, out: TextIO = sys.stdout) -> None:
    """Print ``lvs-operator ipvs show --stats`` run in the director's namespace."""
    r = the_site.director.run([sys.executable, "-m", "lvs_operator.cli", "ipvs", "show",
                               "--stats"])
    out.write(r.stdout)
    out.flush()
