"""The node tier's lab: a real kubelet + containerd node inside the kernel VM, joined to a
control plane on the host. Shared by tests/node/host.py (the host half), tests/node/guest.py
(the node, in the VM) and the tests (in the VM).

How the pieces talk::

    host                                            VM (tests/vm/run, LVS_VM_NETWORK=user)
    ----                                            ---------------------------------------
    etcd, kube-apiserver, kcm on 127.0.0.1  <------ 10.0.2.2:PORT (qemu user network): kubelet,
      (tests/cluster/controlplane.py)               kube-proxy, kubectl/helm of the tests, and
                                                    the pods, through the `kubernetes` Service
                                                    (its endpoint is 10.0.2.2:PORT, made here)
    kube-apiserver's egress "cluster" --CONNECT--> 127.0.0.1:FWD == hostfwd ==> 10.0.2.15:3128
      (webhook calls to Services, exec/logs           an HTTP CONNECT relay (guest.py) that
       to the kubelet)                                dials the Service / kubelet in the VM

    node-1 (the VM's root namespace): containerd + runc, kubelet, kube-proxy (iptables), the
    bridge CNI (cni0 10.244.0.1/24, pods from .10), labelled lvs.dev/director=true; a client
    namespace on cni0 (10.244.0.250); the DR VIP 10.244.0.200 and the Tunnel VIP
    10.244.0.201 are held on cni0 by the agent, so the real-server pods are on the
    director's L2 segment, as DR needs (Tunnel would cross a routed network too).

qemu's user network lets nothing into the VM but the hostfwd rule, so the API server reaches
the cluster network the way Kubernetes has for control planes outside it: an egress selector
(``--egress-selector-config-file``, HTTPConnect over TCP, as with konnectivity).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
WORKDIR = REPO / "build" / "node"  # the host writes here before the VM boots; the VM reads it
CONFIG = WORKDIR / "node.json"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

NODE = "node-1"
GUEST_IP = "10.0.2.15"  # the VM's address on qemu's user network (its first NIC)
HOST_FROM_VM = "10.0.2.2"  # the host's 127.0.0.1 as the VM sees it
PROXY_PORT = 3128  # the CONNECT relay in the VM (target of the hostfwd rule)
POD_CIDR = "10.244.0.0/16"  # kube-proxy's clusterCIDR
BRIDGE = "cni0"
BRIDGE_SUBNET = "10.244.0.0/24"
BRIDGE_IP = "10.244.0.1"
CLIENT_IP = "10.244.0.250"  # the client namespace, on cni0 (outside the pods' range)
DR_VIP = "10.244.0.200"
TUNNEL_VIP = "10.244.0.201"
PAUSE_IMAGE = "localhost/lvs-operator/pause:test"
DIRECTOR_LABEL = "lvs.dev/director"
RELEASE, RELEASE_NAMESPACE = "lvs", "lvs-system"

_T = TypeVar("_T")


class NodeUnavailable(RuntimeError):
    """The node tier cannot start here (missing binaries, kernel, engine, not root...)."""


@dataclass(frozen=True)
class NodeConfig:
    """What the host half hands the VM (written as build/node/node.json)."""

    k8s_bin: str  # kubectl, helm (tests/cluster/build-k8s)
    node_bin: str  # kubelet, kube-proxy (tests/node/build-node)
    ca: str
    kubelet_kubeconfig: str
    proxy_kubeconfig: str
    admin_kubeconfig: str  # server https://10.0.2.2:PORT
    containerd_root: str  # containerd's root: the same path on the host and in the VM
    containerd_disk: str  # an ext4 image of that root with the images imported (images.py)
    image_repository: str
    image_tag: str

    def write(self, path: Path = CONFIG) -> None:
        """Write it as JSON to ``path``."""
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path = CONFIG) -> NodeConfig:
        """Return the config in ``path``; raises OSError or ValueError if it is missing or
        not one."""
        return cls(**json.loads(path.read_text()))


def say(message: str) -> None:
    """Progress on stderr, prefixed so it stands out among the VM's output."""
    print(f"[node {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_for(what: str, probe: Callable[[], _T | None], *, timeout: float,
             interval: float = 1.0, diagnose: Callable[[], str] | None = None) -> _T:
    """Return the first truthy ``probe()``; raise AssertionError naming ``what``, the last
    result and the diagnosis after ``timeout`` seconds. CalledProcessError, KeyError and
    IndexError from the probe count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = probe()
        except (subprocess.CalledProcessError, KeyError, IndexError) as e:
            last = e
        else:
            if result:
                return result
            last = result
        if time.monotonic() > deadline:
            detail = f"\n{diagnose()}" if diagnose else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; "
                                 f"last: {last!r}{detail}")
        time.sleep(interval)


def run(argv: Sequence[str], *, input: str | None = None, timeout: float = 300,
        env: Mapping[str, str] | None = None, check: bool = True) -> str:
    """Run a command; return its stdout. Raises subprocess.CalledProcessError (with the
    output in its message) when it fails and ``check``, TimeoutExpired after ``timeout``."""
    result = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                            timeout=timeout, check=False,
                            env=None if env is None else {**os.environ, **env},
                            stdin=None if input is not None else subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, list(argv), result.stdout,
                                            result.stderr)
    return result.stdout


def error_text(e: subprocess.CalledProcessError) -> str:
    """Return a failed command's line, exit code and output tail, for an error message."""
    return (f"{' '.join(map(str, e.cmd))} exited {e.returncode}:\n"
            f"{(e.stderr or '')[-3000:]}{(e.stdout or '')[-2000:]}")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def splice(a_reader: asyncio.StreamReader, a_writer: asyncio.StreamWriter,
                 b_reader: asyncio.StreamReader, b_writer: asyncio.StreamWriter) -> None:
    """Copy bytes both ways between two connections until both ends are closed."""
    await asyncio.gather(_pipe(a_reader, b_writer), _pipe(b_reader, a_writer))


def serve_in_thread(name: str,
                    start: Callable[[], Coroutine[Any, Any, asyncio.AbstractServer]]) -> None:
    """Run the asyncio server that ``start()`` makes in a daemon thread of its own; return
    once it listens. Raises OSError when it cannot (e.g. its address is taken)."""
    outcome: list[BaseException | None] = []
    started = threading.Event()

    def serve() -> None:
        async def main() -> None:
            try:
                server = await start()
            except OSError as e:
                outcome.append(e)
                started.set()
                return
            outcome.append(None)
            started.set()
            async with server:
                await server.serve_forever()
        asyncio.run(main())

    threading.Thread(target=serve, name=name, daemon=True).start()
    started.wait(30)
    if not outcome:
        raise OSError(f"{name}: did not start listening within 30 s")
    if outcome[0] is not None:
        raise outcome[0]


def any_dict(value: Any) -> dict[str, Any]:
    """Return ``value`` if it is a dict, else an empty one (JSON from kubectl)."""
    return value if isinstance(value, dict) else {}


# ============================================================================================
# In the VM: the lab the tests drive (scenarios.Cluster)
# ============================================================================================

CLIENT_NETNS = "lvs-client"


@dataclass
class NodeLab:
    """node-1 with its client namespace, as the shared scenarios (tests/scenarios.py) use a
    cluster: kubectl, helm and HTTP requests from the client."""

    config: NodeConfig
    interface: str = BRIDGE
    dr_host_network: bool = False  # the pods are on the director's bridge: ordinary DR pods
    real_server_placement: Mapping[str, Any] = field(default_factory=dict)  # one node
    directors: list[str] = field(default_factory=lambda: [NODE])

    @property
    def image(self) -> str:
        return f"{self.config.image_repository}:{self.config.image_tag}"

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> str:
        return run([str(Path(self.config.k8s_bin) / "kubectl"), "--kubeconfig",
                    self.config.admin_kubeconfig, *args], input=input, check=check,
                   timeout=timeout)

    def helm(self, *args: str, timeout: float = 900) -> str:
        return run([str(Path(self.config.k8s_bin) / "helm"), "--kubeconfig",
                    self.config.admin_kubeconfig, *args], timeout=timeout,
                   env={"HELM_CACHE_HOME": "/tmp/helm/cache", "HELM_CONFIG_HOME": "/tmp/helm",
                        "HELM_DATA_HOME": "/tmp/helm/data"})

    def client_command(self, vip: str, port: int, *, count: int,
                       interval: float = 0.0) -> list[str]:
        import scenarios  # tests/ is on sys.path under pytest (tests/conftest.py)

        return ["ip", "netns", "exec", CLIENT_NETNS, sys.executable, "-c",
                scenarios.CLIENT_SCRIPT, f"http://{vip}:{port}/", str(count), str(interval)]

    def run_client(self, argv: Sequence[str], *, timeout: float) -> str:
        return run(argv, timeout=timeout)

    def start_client(self) -> None:
        """The client: a network namespace (guest.py made it) with a veth on cni0 (the pods'
        bridge, which the CNI creates with the first pod), as a machine on the directors'
        L2 segment."""
        run(["ip", "link", "add", "lvs-client0", "type", "veth", "peer", "name", "eth0",
             "netns", CLIENT_NETNS])
        run(["ip", "link", "set", "lvs-client0", "master", BRIDGE, "up"])
        for argv in (["ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0"],
                     ["ip", "link", "set", "eth0", "up"], ["ip", "link", "set", "lo", "up"]):
            run(["ip", "netns", "exec", CLIENT_NETNS, *argv])

    def vips_on_bridge(self) -> set[str]:
        """Return the IPv4 addresses on cni0 other than its own."""
        out = run(["ip", "-4", "-o", "addr", "show", "dev", BRIDGE])
        return {line.split()[3].split("/")[0] for line in out.splitlines()} - {BRIDGE_IP}

    def kernel_services(self) -> str:
        """Return the node's IPVS table (`ipvsadm -Ln`), read in the VM itself."""
        return run(["ipvsadm", "-L", "-n"])

    def diagnose(self) -> str:
        """Return what to look at when something did not happen."""
        parts = []
        for title, args in (
            ("VirtualServers", ["get", "virtualservers", "-A", "-o", "yaml"]),
            ("pods", ["get", "pods", "-A", "-o", "wide"]),
            ("events", ["get", "events", "-A", "--sort-by=.lastTimestamp"]),
            ("agent logs", ["logs", "-n", RELEASE_NAMESPACE, "--prefix", "--tail=40", "-l",
                            "app.kubernetes.io/component=agent"]),
            ("controller logs", ["logs", "-n", RELEASE_NAMESPACE, "--prefix", "--tail=60",
                                 "-l", "app.kubernetes.io/component=controller"]),
        ):
            parts.append(f"--- {title}\n{self.kubectl(*args, check=False, timeout=60)[-6000:]}")
        parts.append(f"--- {BRIDGE}\n{run(['ip', 'addr', 'show', BRIDGE], check=False)}")
        parts.append(f"--- ipvsadm -Ln\n{run(['ipvsadm', '-L', '-n'], check=False)}")
        return "\n".join(parts)
