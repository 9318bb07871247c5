"""The full stack on one machine: control plane and controller on the host, directors and real
servers in the kernel VM. Shared by the full-stack tests (tests/fullstack) and `make demo`
(tests/demo/demo.py): one orchestration, two users.

How the pieces talk::

    host                                          VM (tests/vm/run, LVS_VM_NETWORK=user)
    ----                                          ---------------------------------------
    etcd, kube-apiserver, kcm  127.0.0.1:PORT  <-- 10.0.2.2:PORT (qemu user network, one
    lvs-operator controller (admin kubeconfig)        |  per director: LVS_VM_NICS)
                                                      |  uplink0 10.0.2.15/24 (a VM NIC)
                                                  [dir1] lvs-operator agent --node director-1
                                                      |  eth0 10.200.0.2/24 (+ the VIPs)
                                                  [sw] bridge -- [client] 10.200.0.10
                                                              -- [rs1..3] 10.200.0.11..13
                                                              |  (VIPs on lo, silent)
                                                  [dir2] (with directors=2: the same with
                                                         the VM's second NIC, eth0 10.200.0.3)

Host half (:class:`HostStack`): starts the cluster tier's control plane
(tests/cluster/controlplane.py) in ``build/fullstack/``, installs the CRD, creates the Node
objects of the directors (there is no kubelet), starts ``lvs-operator controller`` and writes
a *guest kubeconfig*: the admin one with its server rewritten to ``https://10.0.2.2:PORT``
(the apiserver's certificate carries 10.0.2.2). :meth:`HostStack.run_vm` then boots the VM
with the network opt-in, one NIC per director Node (each behind a qemu user network of its
own, so each reaches the host at 10.0.2.2), and the stack's facts in ``LVS_FULLSTACK_*``
variables.

Guest half (:class:`Site`, made by :func:`site` with ``directors=N``): namespaces from
tests/kernel/netlab.py; each director namespace gets one of the VM's NICs (renamed
``uplink0``), so its agent reaches the API server and nothing else (only the connected
10.0.2.0/24, no default route), while its ``eth0`` is on the lab's switch with the clients and
real servers, as DR needs. Real servers get the VIPs with ``lvs-operator realserver-init --mode
dr``. Each agent runs as a real process (``lvs-operator agent``) in its director's namespace.
A site with fewer directors than the VM has NICs leaves the other NICs (and Nodes) unused:
one VM boot serves one-director and two-director test modules, one site after the other.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import struct
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

import scenarios
from cluster import controlplane
from kernel.netlab import HttpServer, Lab, Lan, Netns, Port, http_get
from lvs_operator import vrrp
from lvs_operator.ipvs.kernel import KernelIPVS
from lvs_operator.kube import client
from lvs_operator.model import Protocol, ServiceKey, VirtualService
from lvs_operator.network.vip import list_addresses

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
HOST_FROM_VM = controlplane.HOST_FROM_VM
DIRECTOR_LABEL = "lvs.dev/director"
NAMESPACE = "fullstack"  # where the stack's Services, EndpointSlices and VirtualServers live
VS_API = "/apis/lvs.dev/v1alpha1"
LEASE_NAMESPACE = "lvs-system"  # the agents' Leases (lvs-director-<node>)
UPLINK = "uplink0"  # the VM's NIC, once moved into the director's namespace
LAN_V4 = "10.200.0.0/24"
DIRECTOR_V4 = "10.200.0.2"  # the first director's; the n-th (from 0) has .2 + n
#: The Nodes `make test-fullstack` and `make bench` create (tests/fullstack/host.py): a VM
#: NIC and a possible agent each.
# Three: the three-director site of test_static.py; the others use the first one or two.
DIRECTORS = ("director-1", "director-2", "director-3")
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1  # <linux/sockios.h>, <net/if.h>
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
    open_pool: bool = True  # the tests' VIPPool for every address (False: the caller's own)

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
        cp.kubectl("apply", "-f", str(REPO / "crds"))  # the CRDs (not examples/: no -R)
        for crd in ("virtualservers.lvs.dev", "vippools.lvs.dev", "vipclaims.lvs.dev"):
            cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}")
        if self.open_pool:
            # Deny by default: the site's VIPs must lie in a pool (every address, here).
            cp.kubectl("apply", "-f", "-", input=json.dumps(scenarios.open_pool()))
            say("CRDs installed; VIPPool lvs-test-open (every address, every namespace)")
        else:
            say("CRDs installed; no VIPPool yet (deny by default)")
        cp.kubectl("create", "namespace", NAMESPACE)
        # Where the agents keep their Leases (LVS_NAMESPACE's default, as the chart's).
        cp.kubectl("create", "namespace", LEASE_NAMESPACE)
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
            "LVS_VM_NICS": str(len(self.nodes)),  # one uplink per director (tests/vm/run)
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
    def running(cls, name: str, nodes: Sequence[str] = ("director-1",), *,
                open_pool: bool = True) -> Iterator[HostStack]:
        stack = cls(REPO / "build" / "fullstack" / f"{name}-{secrets.token_hex(3)}", nodes,
                    open_pool=open_pool)
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
    nics: tuple[str, ...]  # the VM's NICs (tests/vm/run's LVS_VM_NIC_NAMES), one per node

    @property
    def nic(self) -> str:
        return self.nics[0]

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
        nics = tuple(os.environ.get("LVS_VM_NIC_NAMES", nic).split())
        return cls(kubeconfig, os.environ.get("LVS_FULLSTACK_KUBECTL", "kubectl"),
                   tuple(os.environ.get("LVS_FULLSTACK_NODES", "director-1").split(",")), nics)


def out_dir() -> Path:
    """A folder the host sees too (tests/vm/run's LVS_VM_OUT), for the agents' logs."""
    path = Path(os.environ.get("LVS_VM_OUT", "/tmp")) / "fullstack"
    path.mkdir(parents=True, exist_ok=True)
    return path


def keepalived_dir(lab: Lab, node: str) -> Path:
    """The folder a director's agent and keepalived container share (the pod's emptyDir)."""
    return Path("/run/lvs-fullstack") / lab.id / node / "keepalived"


class Agent:
    """``lvs-operator agent`` as a process in the director's namespace."""

    def __init__(self, lab: Lab, ns: Netns, config: GuestConfig, node: str,
                 env: Mapping[str, str] | None = None) -> None:
        self.lab, self.ns, self.node = lab, ns, node
        self.extra_env = dict(env or {})
        # Per lab: a later site's agent for the same node starts with no record of the
        # services an earlier site's kernel (another namespace, gone) had.
        state = Path("/run/lvs-fullstack") / lab.id / node
        state.mkdir(parents=True, exist_ok=True)
        self.log_path = out_dir() / f"agent-{node}-{lab.id}.log"
        self.argv = [sys.executable, "-m", "lvs_operator.cli", "agent", "--node", node,
                     "--kubeconfig", config.kubeconfig, "--state-file", str(state / "owned.json"),
                     "--interface", "eth0", "--metrics-address", "127.0.0.1:9640",
                     "--keepalived-dir", str(keepalived_dir(lab, node))]
        self.proc: subprocess.Popen[Any] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("a" if self.starts > 1 else "w") as log:
            log.write(f"--- start {self.starts}\n")
            log.flush()
            env = {**os.environ, "LVS_RESYNC_SECONDS": "10", "LVS_DRAIN_POLL_SECONDS": "0.5",
                   "LVS_RETRY_SECONDS": "1", "LVS_NAMESPACE": LEASE_NAMESPACE,
                   **self.extra_env}
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

    def fences(self) -> int:
        """How many times this agent (all its runs) fenced itself: a Lease renewal missed its
        deadline (LVS_LEASE_RENEW_DEADLINE_SECONDS), so it dropped its VIPs until it renewed."""
        return self.log().count("not renewed within")

    def metrics(self) -> dict[str, float]:
        """Its Prometheus samples (``name{labels}`` -> value); {} while it does not answer."""
        return scrape_metrics(self.ns, 9640)

    def stop_pids(self) -> list[int]:
        """The agent's process ids (to SIGSTOP / SIGCONT it as a frozen agent)."""
        return [self.proc.pid] if self.alive() and self.proc is not None else []

    def syncs(self) -> int:
        """How many syncs this run of the agent has completed (0 until it serves metrics)."""
        return int(self.metrics().get("lvs_agent_syncs_total", 0))

    def operations(self) -> int:
        """How many IPVS operations this run of the agent has applied, all kinds."""
        return int(sum(v for k, v in self.metrics().items()
                       if k.startswith("lvs_agent_operations_total")))


class Keepalived:
    """The agent pod's keepalived container: ``lvs-operator keepalived`` (keepalived, its
    reloads, the VIP watchdog, the VRRP guard) as a process group in the director's
    namespace, sharing :func:`keepalived_dir` with the agent."""

    def __init__(self, lab: Lab, ns: Netns, node: str,
                 env: Mapping[str, str] | None = None) -> None:
        self.lab, self.ns, self.node = lab, ns, node
        self.extra_env = dict(env or {})
        self.dir = keepalived_dir(lab, node)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = out_dir() / f"keepalived-{node}-{lab.id}.log"
        self.argv = [sys.executable, "-m", "lvs_operator.cli", "keepalived", "--dir",
                     str(self.dir), "--metrics-address", "127.0.0.1:9641"]
        self.proc: subprocess.Popen[Any] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("a" if self.starts > 1 else "w") as log:
            log.write(f"--- start {self.starts}\n")
            log.flush()
            self.proc = self.lab.spawn(self.ns, self.argv, stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env={**os.environ, **self.extra_env})

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal the whole container (supervisor and keepalived); wait for it to end
        unless the signal only stops it."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            if sig not in (signal.SIGSTOP, signal.SIGCONT):
                self.proc.wait(30)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def keepalived_pids(self) -> list[int]:
        """keepalived's own processes (its parent and VRRP child), not the supervisor's."""
        pids = []
        for name in ("keepalived.pid", "vrrp.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int((self.dir / name).read_text().split()[0]))
        return pids

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> dict[str, float]:
        """Its Prometheus samples (``name{labels}`` -> value); {} while it does not answer."""
        return scrape_metrics(self.ns, 9641)


def scrape_metrics(ns: Netns, port: int) -> dict[str, float]:
    """The Prometheus samples at 127.0.0.1:``port`` in ``ns`` (``name{labels}`` -> value);
    {} while nothing answers there."""
    def scrape() -> str:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())
    try:
        text = ns.call(scrape)
    except OSError:
        return {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


@dataclass
class Site:
    """The VM's side: the LAN (client, real servers), the director(s) and their agents.

    ``directors``, ``agents``, ``ports`` and ``addresses`` are keyed by node name, in the
    order of the Nodes (director-1 first). The single-director helpers (``director``,
    ``agent``) mean the first.
    """

    config: GuestConfig
    lab: Lab
    lan: Lan
    directors: dict[str, Netns]
    agents: dict[str, Agent]
    api: client.Client
    real_servers: list[str]  # roles: rs1, rs2, ...
    ports: dict[str, Port] = field(default_factory=dict)  # node -> its cable to the switch
    addresses: dict[str, str] = field(default_factory=dict)  # node -> its eth0 address
    servers: dict[str, HttpServer] = field(default_factory=dict)  # real server role -> :80
    keepaliveds: dict[str, Keepalived] = field(default_factory=dict)  # node -> its container
    engine: str = "keepalived"  # the agents' LVS_HA_ENGINE

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

    def node_of(self, ns: Netns) -> str:
        return next(node for node, d in self.directors.items() if d is ns)

    # -- kernel ---------------------------------------------------------------------------

    def table(self, ns: Netns | None = None) -> dict[ServiceKey, VirtualService]:
        """A director's IPVS table (the first's by default), read in-process in its namespace."""
        def dump() -> dict[ServiceKey, VirtualService]:
            with KernelIPVS() as ipvs:
                return ipvs.dump()
        return (ns or self.director).call(dump)

    def service(self, vip: str, port: int = 80,
                ns: Netns | None = None) -> VirtualService | None:
        return self.table(ns).get(ServiceKey.inet(Protocol.TCP, ip_address(vip), port))

    def vips(self, ns: Netns | None = None) -> set[str]:
        """Addresses on a director's eth0 (the first's by default) other than its own."""
        ns = ns or self.director
        # In-process netlink, not `ip`: tests poll this, and every process started under
        # emulation takes CPU time from the agents (whose Lease renewals have deadlines).
        held = {str(a) for a, _ in ns.call(list_addresses, "eth0") if a.version == 4}
        return held - {self.addresses.get(self.node_of(ns), DIRECTOR_V4)}

    def holders(self, vip: str) -> list[str]:
        """The nodes whose eth0 holds ``vip`` now."""
        return [node for node, ns in self.directors.items() if vip in self.vips(ns)]

    def mac(self, node: str) -> str:
        """The director's eth0 MAC address (aa:bb:...)."""
        out = self.directors[node].ip("-o", "link", "show", "dev", "eth0")
        words = out.split()
        return words[words.index("link/ether") + 1]

    def cut_off(self, node: str) -> None:
        """Lose a director: its cable to the LAN unplugged first, then its agent and its
        keepalived container SIGKILLed (no goodbye: no priority-0 advert, its Lease just stops
        being renewed). Its kernel keeps what it had, VIPs too (until their lifetime ends).

        The cable goes in-process (the switch side's link down, within a millisecond: no `ip`
        process, which takes a good part of a second under emulation), so that a time taken
        just before this call is when the director was lost. :meth:`bring_back` undoes it."""
        port = self.ports[node]
        port.switch.ns.call(_set_link_down, port.switch_ifname)
        self.agents[node].kill()
        if node in self.keepaliveds:
            self.keepaliveds[node].kill()

    def bring_back(self, node: str, vips: Sequence[str], timeout: float = TIMEOUT) -> None:
        """Undo :meth:`cut_off`. With the lease engine: the agent first, and once it has
        dropped the VIPs it still had from before (another director holds them now), the
        cable. In the other order the
        stale VIPs would answer ARP beside the new holder's until the agent starts: with the
        agent dead nothing can prevent that, as with keepalived killed by SIGKILL."""
        agent = self.agents[node]
        ka = self.keepaliveds.get(node)
        if ka is not None:
            # With keepalived the VIPs left from before go by themselves: the watchdog had
            # given them a lifetime (LVS_VIP_LIFETIME_SECONDS) that nobody refreshes. Then
            # the cable, then the pod: it hears the holder at once, and takes its VIPs back
            # after the preempt delay (as a rebooted node would).
            wait_for(f"the VIPs {node} held before to expire in its kernel",
                     lambda: not self.vips(self.directors[node]) & set(vips), timeout,
                     interval=0.1)
            self.ports[node].plug()
            if not ka.alive():
                ka.start()
            if not agent.alive():
                agent.start()
            # Back means keepalived runs again (its preempt delay counts from there); under
            # emulation the container takes seconds to get there.
            # (Its metrics, not its pid file: a SIGKILLed keepalived leaves that behind.)
            wait_for(f"keepalived to run again on {node}",
                     lambda: ka.metrics().get("lvs_keepalived_up") == 1, timeout,
                     interval=0.2)
            return
        if not agent.alive():
            agent.start()
        wait_for(f"the restarted agent on {node} to drop the VIPs it held before",
                 lambda: not self.vips(self.directors[node]) & set(vips), timeout,
                 interval=0.1)
        self.ports[node].plug()

    @contextlib.contextmanager
    def api_away(self, nodes: Sequence[str] | None = None) -> Iterator[None]:
        """The API server unreachable from the directors (all, or ``nodes``): a blackhole
        route to it in their namespaces (what a control-plane outage or a partition looks
        like to them: packets vanish, no reset). Site.request cannot be used meanwhile."""
        chosen = list(self.directors) if nodes is None else list(nodes)
        for node in chosen:
            self.directors[node].ip("route", "add", "blackhole", f"{HOST_FROM_VM}/32")
        try:
            yield
        finally:
            for node in chosen:
                self.directors[node].ip("route", "del", "blackhole", f"{HOST_FROM_VM}/32")

    def vrrp_instance(self, node: str, vip: str) -> tuple[str, int] | None:
        """The VRRP instance (name, VRID) that holds ``vip`` on ``node``, from the file its
        agent shares with its keepalived container; None when there is none."""
        try:
            shared = vrrp.Shared.from_json((keepalived_dir(self.lab, node)
                                            / "instances.json").read_text())
        except (OSError, vrrp.VRRPError):
            return None
        for name, (vrid, vips) in shared.instances.items():
            if any(str(address) == vip for address, _ in vips):
                return name, vrid
        return None

    def fence_report(self) -> str:
        """How often each agent fenced itself (a Lease renewal late: its VIPs dropped, its
        sync daemon switched to backup until it renewed): the first thing to look at when
        roles flap or the sync daemon misses connections under load."""
        return "Lease renewals that missed their deadline (the agent fenced itself): " + \
            ", ".join(f"{a.node} {a.fences()}" for a in self.agents.values())

    # -- cluster ---------------------------------------------------------------------------
    # Only the directors' namespaces reach the API server (each holds one of the VM's NICs):
    # requests and kubectl run in the first's. A connection made there stays there, whichever
    # thread reuses it. Cutting a director off the LAN (``ports[node].unplug()``) leaves its
    # uplink, and so these requests, alone.

    def request(self, method: str, path: str, body: object = None) -> Any:
        """One API request as cluster admin, from the first director's namespace."""
        return self.director.call(self.api.request, method, path, body=body)

    def kubectl(self, *args: str) -> str:
        return self.director.run([self.config.kubectl, "--kubeconfig", self.config.kubeconfig,
                                  *args], timeout=120).stdout

    def apply_backend(self, name: str, ready: Mapping[str, bool], port: int = 80) -> None:
        """A selector-less Service ``name`` and its EndpointSlice: real server role -> ready.

        Created or replaced (the EndpointSlice's endpoints are exactly ``ready``'s keys).
        """
        svc_path = f"/api/v1/namespaces/{NAMESPACE}/services"
        with contextlib.suppress(client.ApiError):  # already there
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
        except client.ApiError as e:
            if e.status != 404:
                raise
            self.request("POST", path, body=body)

    def apply_virtual_server(self, name: str, vip: str, service: str, *,
                             scheduler: str = "rr", drain_seconds: int = 30,
                             health_check: Mapping[str, Any] | None = None) -> None:
        spec: dict[str, Any] = {
            "vip": vip, "ports": [{"port": 80, "protocol": "TCP"}],
            "forwarding": "DirectRouting", "scheduler": {"name": scheduler},
            "backend": {"service": {"name": service, "port": "http"}},
            "directors": {"nodeSelector": {DIRECTOR_LABEL: "true"}, "interface": "eth0"},
            "drain": {"timeoutSeconds": drain_seconds},
        }
        if health_check is not None:
            spec["healthCheck"] = dict(health_check)
        body = {"apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualServer",
                "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}
        self.request("POST", f"{VS_API}/namespaces/{NAMESPACE}/virtualservers", body=body)

    def get_virtual_server(self, name: str) -> dict[str, Any] | None:
        try:
            vs: dict[str, Any] = self.request(
                "GET", f"{VS_API}/namespaces/{NAMESPACE}/virtualservers/{name}")
        except client.ApiError as e:
            if e.status == 404:
                return None
            raise
        return vs

    def director_status(self, name: str) -> dict[str, dict[str, Any]]:
        """status.directors of a VirtualServer ({} while it has none)."""
        vs = self.get_virtual_server(name) or {}
        directors: dict[str, dict[str, Any]] = (vs.get("status") or {}).get("directors") or {}
        return directors

    def delete(self, kind_path: str, name: str) -> None:
        with contextlib.suppress(client.ApiError):
            self.request("DELETE", f"{kind_path}/{name}")

    def delete_virtual_server(self, name: str) -> None:
        self.delete(f"{VS_API}/namespaces/{NAMESPACE}/virtualservers", name)

    def delete_backend(self, name: str) -> None:
        self.delete(f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices",
                    f"{name}-1")
        self.delete(f"/api/v1/namespaces/{NAMESPACE}/services", name)

    # -- waits -----------------------------------------------------------------------------

    def wait_reals(self, vip: str, weights: Mapping[str, int], timeout: float = TIMEOUT,
                   on: Sequence[str] | None = None) -> None:
        """Wait until the service for vip:80 has exactly these reals (role -> weight) on every
        director (or on the nodes ``on``)."""
        want = {ip_address(self.ip(role)): w for role, w in weights.items()}
        nodes = list(self.directors) if on is None else list(on)

        def matches() -> bool:
            for node in nodes:
                svc = self.service(vip, ns=self.directors[node])
                have = {} if svc is None else {r.address: r.weight for r in svc.reals.values()}
                if have != want:
                    return False
            return True
        wait_for(f"{vip}:80 on {', '.join(nodes)} to have reals {dict(weights)}", matches,
                 timeout)

    def wait_programmed(self, name: str, timeout: float = TIMEOUT,
                        on: Sequence[str] | None = None) -> dict[str, Any]:
        """Wait until every director (or the nodes ``on``) reports the VirtualServer's
        generation, error-free."""
        nodes = list(self.directors) if on is None else list(on)

        def reported() -> dict[str, Any] | None:
            vs = self.get_virtual_server(name)
            if vs is None:
                return None
            generation = vs["metadata"].get("generation")
            directors = (vs.get("status") or {}).get("directors") or {}
            for node in nodes:
                entry = directors.get(node) or {}
                if entry.get("generation") != generation or entry.get("error"):
                    return None
            return vs
        return wait_for(f"{', '.join(nodes)} to report VirtualServer {name} programmed",
                        reported, timeout)

    def get(self, vip: str, timeout: float = 10.0) -> str:
        """One GET from the client to the VIP on a new connection; the answering server."""
        return http_get(self.client, f"http://{vip}/", timeout=timeout)


def _set_link_down(ifname: str) -> None:
    """``ip link set IFNAME down`` for the calling thread's namespace, without a process."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", ifname.encode(), 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, _SIOCGIFFLAGS, req)[:18])[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", ifname.encode(), flags & ~_IFF_UP))


def _move_nic_in(nic: str, ns: Netns) -> None:
    """Give one of the VM's NICs to a director: renamed (its eth0 is the LAN's), readdressed."""
    subprocess.run(["ip", "link", "set", nic, "down"], check=True)
    subprocess.run(["ip", "link", "set", nic, "name", UPLINK], check=True)
    subprocess.run(["ip", "link", "set", UPLINK, "netns", ns.name], check=True)
    # Only the connected 10.0.2.0/24 (the host is 10.0.2.2): no default route, so the
    # director can reach the API server and nothing else outside the VM. Every NIC has a
    # user network of its own, so every director can be 10.0.2.15 there.
    ns.ip_batch([["address", "add", "10.0.2.15/24", "dev", UPLINK],
                 ["link", "set", UPLINK, "up"]])
    ns.wait_running(UPLINK)


def _move_nic_out(nic: str, ns: Netns, *, first: bool) -> None:
    """Give a NIC back to the VM's root namespace as it was (tests/vm/run's set-up: only the
    first NIC is addressed, with the default route)."""
    ns.ip("link", "set", UPLINK, "down")
    ns.ip("link", "set", UPLINK, "netns", "1")  # pid 1 lives in the root namespace
    argvs = [["ip", "link", "set", UPLINK, "name", nic], ["ip", "link", "set", nic, "up"]]
    if first:
        argvs[1:1] = [["ip", "address", "add", "10.0.2.15/24", "dev", nic]]
        argvs.append(["ip", "route", "add", "default", "via", HOST_FROM_VM, "dev", nic])
    for argv in argvs:
        subprocess.run(argv, check=False, capture_output=True)


def director_address(index: int) -> str:
    """The LAN address of the index-th director (from 0): 10.200.0.2, .3, ..."""
    return str(ip_address(DIRECTOR_V4) + index)


@contextlib.contextmanager
def site(vips: Sequence[str], real_servers: int = 3, *, directors: int = 1,
         start_agents: bool = True,
         agent_env: Mapping[str, str] | None = None) -> Iterator[Site]:
    """Build the VM side: LAN, real servers with ``vips`` (DR), ``directors`` director
    namespaces (the first Nodes, one VM NIC each) and their agents (``agent_env``: extra
    environment for them) each with its keepalived container (as the chart's agent pod;
    not with LVS_HA_ENGINE=lease or LVS_HA=false in ``agent_env``).

    Everything is removed afterwards (the NICs go back to the root namespace first).
    """
    config = GuestConfig.from_env()
    if directors > min(len(config.nodes), len(config.nics)):
        raise StackUnavailable(
            f"{directors} directors wanted, but the stack has {len(config.nodes)} director "
            f"Node(s) and the VM {len(config.nics)} NIC(s) ({' '.join(config.nics)}): run "
            f"it with tests/fullstack/host.py (LVS_FULLSTACK_DIRECTORS >= {directors})")
    subprocess.run(["modprobe", "ip_vs"], check=True)
    roles = [f"rs{i}" for i in range(1, real_servers + 1)]
    nodes = config.nodes[:directors]
    with Lab() as lab:
        lan = lab.lan(["client", *roles], v4_net=LAN_V4)
        namespaces: dict[str, Netns] = {}
        ports: dict[str, Port] = {}
        addresses: dict[str, str] = {}
        for i, node in enumerate(nodes):
            ns = lab.netns(f"dir{i + 1}")
            addresses[node] = director_address(i)
            ports[node] = lan.switch.connect(ns, "eth0", [f"{addresses[node]}/24"])
            namespaces[node] = ns
        say(f"namespaces: client {lan.ip4('client')}, "
            + ", ".join(f"{r} {lan.ip4(r)}" for r in roles) + ", "
            + ", ".join(f"director {node} {addr}" for node, addr in addresses.items())
            + " on one bridge")
        servers = {role: lab.http_server(lan[role], 80, name=role) for role in roles}
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
        moved: list[tuple[str, Netns]] = []
        api: client.Client | None = None
        agents: dict[str, Agent] = {}
        keepaliveds: dict[str, Keepalived] = {}
        try:
            for nic, (node, ns) in zip(config.nics, namespaces.items(), strict=False):
                _move_nic_in(nic, ns)
                moved.append((nic, ns))
                say(f"director {node}: the VM's {nic} is its {UPLINK} (10.0.2.15 -> API "
                    f"server at {HOST_FROM_VM}), eth0 {addresses[node]} on the LAN")
            api = client.Client.connect(config.kubeconfig)
            env = dict(agent_env or {})
            vrrp = env.get("LVS_HA_ENGINE", "keepalived") == "keepalived" and \
                env.get("LVS_HA", "true") != "false"
            for node, ns in namespaces.items():
                agents[node] = Agent(lab, ns, config, node, agent_env)
                if vrrp:
                    keepaliveds[node] = Keepalived(lab, ns, node)
            if start_agents:
                for node, agent in agents.items():
                    if node in keepaliveds:
                        keepaliveds[node].start()
                    agent.start()
                    say(f"lvs-operator agent --node {agent.node} started in its namespace "
                        f"(log {agent.log_path})"
                        + (f", lvs-operator keepalived beside it (log "
                           f"{keepaliveds[node].log_path})" if node in keepaliveds else ""))
            yield Site(config, lab, lan, namespaces, agents, api, roles, ports, addresses,
                       servers, keepaliveds=keepaliveds,
                       engine=env.get("LVS_HA_ENGINE", "keepalived"))
        finally:
            for agent in agents.values():
                agent.kill(signal.SIGTERM)
            for ka in keepaliveds.values():
                ka.kill(signal.SIGCONT)  # a test may have left it stopped
                ka.kill(signal.SIGTERM)
            if api is not None:
                api.close()
            for i, (nic, ns) in enumerate(moved):
                _move_nic_out(nic, ns, first=i == 0)


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


class HolderTimeline:
    """Which directors hold a VIP on their eth0, read from their kernels every ``interval``
    seconds in a thread (in-process netlink): the directors' side of what the client's ARP
    sees (a cut-off director's stale VIP shows here, not there)."""

    def __init__(self, the_site: Site, vip: str, interval: float = 0.1) -> None:
        self.site, self.vip, self.interval = the_site, vip, interval
        self.samples: list[tuple[float, tuple[str, ...]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="holders", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a namespace read racing a teardown
                self.samples.append((time.monotonic(), tuple(self.site.holders(self.vip))))
            self._stop.wait(self.interval)

    def several(self, since: float) -> list[tuple[float, tuple[str, ...]]]:
        """Samples from ``since`` on where more than one director held the VIP."""
        return [(t, h) for t, h in self.samples if t >= since and len(h) > 1]

    def first_holding(self, node: str, since: float) -> float | None:
        """When ``node`` was first seen holding the VIP from ``since`` on (None: never)."""
        return next((t for t, holders in self.samples if t >= since and node in holders), None)

    def dropped_retaken(self, node: str, since: float) -> tuple[float | None, float | None]:
        """From ``since`` on: when ``node`` was first seen without the VIP, and when it was
        next seen with it again (None: not seen)."""
        dropped: float | None = None
        for t, holders in self.samples:
            if t < since:
                continue
            if node not in holders:
                dropped = dropped if dropped is not None else t
            elif dropped is not None:
                return dropped, t
        return dropped, None

    def __enter__(self) -> HolderTimeline:
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
