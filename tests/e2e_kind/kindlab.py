"""The kind end-to-end suite's lab: the cluster, the image, the chart, the real servers, a client.

Topology (kind-config.yaml): the two workers are the directors (labelled
lvs.dev/director=true, the agent runs there and the active one holds each VIP on eth0); the
control-plane node hosts every real server; a client container sits on the same Docker network
("kind"), so it reaches the VIPs by ARP, as a machine on the directors' L2 segment would.
The VIPs are free addresses at the top of that network's IPv4 subnet.

How each mode's real servers are reached, and what that asks of the nodes (as in the README):

- DirectRouting: the director rewrites only the destination MAC, so the real server must be on
  its L2 segment. kind's pod network is routed (kindnet), so the real server is a hostNetwork
  pod on the control-plane node, which runs `lvs-operator realserver-init --mode dr` in an init
  container itself: the webhook leaves hostNetwork pods alone, on purpose.
- Tunnel: IP-in-IP to ordinary pods on the control-plane node, prepared by the injected
  realserver-init (the webhook). Their replies (source: the VIP) cross that node's FORWARD
  chain mid-connection: its rp_filter must be loose (the suite sets conf.all.rp_filter=2
  there), and conntrack must leave them alone (a NOTRACK rule), or kube-proxy drops them as
  INVALID and kindnet's masquerade rewrites their source. Needs the ipip module.
- NAT: ordinary pods; replies must come back through the director, so each director SNATs
  (MASQUERADE) the VIP's connections. The agent does not add that rule: the suite does, as a
  node administrator would.

The director sysctls (`net.ipv4.vs.*`) are set on the director nodes too: the chart's agent
is not privileged, so `agent.manageSysctls` is off (see the chart's NOTES).

Everything here shells out to docker, kind, kubectl and helm, as a user would.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

import scenarios
from scenarios import (
    CHART,
    DIRECTOR_LABEL,
    DIRECTOR_SYSCTLS,
    NAMESPACE,
    RELEASE,
    RELEASE_NAMESPACE,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KIND_CONFIG = HERE / "kind-config.yaml"

CLUSTER = os.environ.get("LVS_KIND_CLUSTER", "lvs-e2e")
NODE_IMAGE = os.environ.get("LVS_KIND_NODE_IMAGE", "")  # empty: kind's default
KEEP = os.environ.get("LVS_KIND_KEEP", "") not in ("", "0")
IMAGE_REPOSITORY, IMAGE_TAG = "lvs-operator", "e2e-kind"
IMAGE = f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"
NETWORK = "kind"  # the Docker network kind puts every node on
INTERFACE = "eth0"  # the nodes' interface on it
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
CLIENT = f"{CLUSTER}-client"
MODES = ("dr", "tunnel", "nat")  # the examples crds/examples/{dr,tunnel,nat}.yaml

# `helm install` of the chart with the image built here (`kind load`ed: never pulled).
HELM_VALUES = (
    f"image.repository={IMAGE_REPOSITORY}",
    f"image.tag={IMAGE_TAG}",
    "image.pullPolicy=Never",
    "agent.logLevel=debug",
)

_T = TypeVar("_T")


class LabError(RuntimeError):
    """A command of the lab failed; the message has its output."""


# --- prerequisites ---------------------------------------------------------------------------

def tool(name: str) -> str | None:
    """Return the path of `name`: on PATH, else (kubectl, helm) the binaries that
    tests/cluster/build-k8s caches, else (kind) where `go install` puts it."""
    found = shutil.which(name)
    if found:
        return found
    cache = Path(os.environ.get("LVS_K8S_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lvs-operator")
    places = [Path(os.environ["LVS_K8S_BIN"])] if os.environ.get("LVS_K8S_BIN") else []
    places += [cache / "bin", Path(os.environ.get("GOPATH") or Path.home() / "go") / "bin"]
    for place in places:
        if (place / name).is_file() and os.access(place / name, os.X_OK):
            return str(place / name)
    return None


def missing() -> list[str]:
    """Return why the suite cannot run here (empty: it can)."""
    reasons = []
    docker = tool("docker")
    if docker is None:
        reasons.append("no `docker` on PATH")
    else:
        info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL)
        if info.returncode != 0:
            last = (info.stderr.strip().splitlines() or ["no output"])[-1]
            reasons.append(f"no Docker engine answers (`docker info`: {last})")
    for name in ("kind", "kubectl", "helm"):
        if tool(name) is None:
            reasons.append(f"no `{name}` on PATH")
    if not Path("/sys/module/ip_vs").exists():
        reasons.append("the host kernel has no ip_vs loaded (kind nodes share it): "
                       "`sudo modprobe ip_vs`")
    return reasons


def ipip_missing() -> str | None:
    """Return why Tunnel mode cannot work here, or None."""
    if Path("/sys/module/ipip").exists():
        return None
    return ("the host kernel has no ipip loaded (the real-server pods' tunl0 needs it): "
            "`sudo modprobe ipip`")


# --- running commands ------------------------------------------------------------------------

def run(argv: Sequence[str], *, input: str | None = None, check: bool = True,
        timeout: float = 300, cwd: Path | None = None,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; LabError (with its output) when it fails and `check`."""
    try:
        result = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                                timeout=timeout, check=False, cwd=cwd,
                                env=None if env is None else {**os.environ, **env},
                                stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"{' '.join(argv)}: no answer within {timeout:.0f} s") from e
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(argv)} exited {result.returncode}:\n"
                       f"{result.stderr[-3000:]}{result.stdout[-3000:]}")
    return result


def wait_for(what: str, probe: Callable[[], _T | None], *, timeout: float,
             interval: float = 1.0, diagnose: Callable[[], str] | None = None) -> _T:
    """Return the first truthy `probe()`; AssertionError naming `what`, the last result and
    the diagnosis after `timeout` seconds. LabError and KeyError count as not yet."""
    return scenarios.wait_for(what, probe, timeout=timeout, interval=interval,
                              diagnose=diagnose, errors=(LabError, KeyError, IndexError))


def say(message: str) -> None:
    """Print a progress line (seen with pytest -s, as `make e2e-kind` runs it)."""
    print(f"==> {message}", flush=True)


# --- the lab ---------------------------------------------------------------------------------

@dataclass
class Lab:
    """A kind cluster with the chart installed, its directors, and a client container (the
    shared scenarios' scenarios.Cluster)."""

    workdir: Path
    kubeconfig: Path = field(init=False)
    directors: list[str] = field(default_factory=list)
    real_server_node: str = ""
    vip: dict[str, str] = field(default_factory=dict)  # mode (dr, tunnel, nat) -> VIP
    image = IMAGE
    interface = INTERFACE
    # kindnet routes the pods: DR real servers are hostNetwork pods on the control-plane
    # node, which run realserver-init themselves (the webhook leaves hostNetwork pods alone).
    dr_host_network = True
    real_server_placement: Mapping[str, Any] = field(default_factory=lambda: {
        "nodeSelector": {CONTROL_PLANE_LABEL: ""},
        "tolerations": [{"key": CONTROL_PLANE_LABEL, "operator": "Exists",
                         "effect": "NoSchedule"}]})

    def __post_init__(self) -> None:
        self.kubeconfig = self.workdir / "kubeconfig"

    # commands

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> str:
        return run([_need("kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
                   input=input, check=check, timeout=timeout).stdout

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", "-o", "json", *args))

    def helm(self, *args: str, timeout: float = 600) -> str:
        return run([_need("helm"), "--kubeconfig", str(self.kubeconfig), *args],
                   timeout=timeout).stdout

    def apply(self, documents: Iterable[Mapping[str, Any]]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(list(documents)))

    def node_exec(self, node: str, script: str) -> str:
        """Run a shell script as root in a node's own network namespace (the node container)."""
        return run([_need("docker"), "exec", node, "sh", "-ec", script]).stdout

    # the cluster

    def create_cluster(self) -> None:
        kind = _need("kind")
        if CLUSTER in run([kind, "get", "clusters"]).stdout.split():
            say(f"deleting the kind cluster {CLUSTER} a previous run left behind")
            run([kind, "delete", "cluster", "--name", CLUSTER], timeout=300)
        say(f"kind create cluster --name {CLUSTER} (1 control plane, 2 workers)")
        image = ["--image", NODE_IMAGE] if NODE_IMAGE else []
        run([kind, "create", "cluster", "--name", CLUSTER, "--config", str(KIND_CONFIG),
             "--kubeconfig", str(self.kubeconfig), "--wait", "300s", *image], timeout=900)
        nodes = self.get("nodes")["items"]
        self.directors = sorted(n["metadata"]["name"] for n in nodes
                                if CONTROL_PLANE_LABEL not in n["metadata"]["labels"])
        (self.real_server_node,) = [n["metadata"]["name"] for n in nodes
                                    if CONTROL_PLANE_LABEL in n["metadata"]["labels"]]
        assert len(self.directors) == 2, f"expected 2 workers, got {self.directors}"
        subnet = kind_subnet()
        self.vip = dict(zip(MODES, vips(subnet, len(MODES)), strict=True))
        say(f"VIPs from the {NETWORK} network's {subnet}: {self.vip}")

    def delete_cluster(self) -> None:
        run([_need("docker"), "rm", "-f", CLIENT], check=False)
        if KEEP:
            say(f"LVS_KIND_KEEP=1: the cluster stays: export KUBECONFIG={self.kubeconfig}; "
                f"delete it with `kind delete cluster --name {CLUSTER}`")
            return
        say(f"kind delete cluster --name {CLUSTER}")
        run([_need("kind"), "delete", "cluster", "--name", CLUSTER], check=False, timeout=300)

    def build_and_load_image(self) -> None:
        log = self.workdir / "image-build.log"
        say(f"make image IMAGE={IMAGE} (docker build -f operator/Dockerfile; log: {log})")
        with log.open("w") as out:
            built = subprocess.run(["make", "--no-print-directory", "image", f"IMAGE={IMAGE}"],
                                   cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False,
                                   stdin=subprocess.DEVNULL, timeout=1800)
        if built.returncode != 0:
            raise LabError(f"make image failed:\n{log.read_text()[-3000:]}")
        say(f"kind load docker-image {IMAGE}")
        run([_need("kind"), "load", "docker-image", IMAGE, "--name", CLUSTER], timeout=600)

    def prepare_nodes(self) -> None:
        """What an administrator does on the nodes (see the module's docstring)."""
        sysctls = "\n".join(f"echo {value} > /proc/sys/{name.replace('.', '/')}"
                            for name, value in DIRECTOR_SYSCTLS.items())
        # NAT: the pods answer the director (their source after SNAT), which rewrites the
        # replies back to the VIP. Matched on the connection's original destination, the VIP
        # (IPVS rewrites the packet's, and conntrack keeps the original: vs.conntrack=1).
        masquerade = (f"iptables -t nat -A POSTROUTING -p tcp -m conntrack "
                      f"--ctorigdst {self.vip['nat']}/32 -j MASQUERADE")
        for node in self.directors:
            say(f"{node}: director sysctls, MASQUERADE of the NAT VIP's connections; "
                f"label {DIRECTOR_LABEL}=true")
            self.node_exec(node, f"{sysctls}\n{masquerade}")
            self.kubectl("label", "node", node, f"{DIRECTOR_LABEL}=true", "--overwrite")
        # Tunnel replies leave the pods with the VIP as source and this node forwards them
        # mid-connection (the requests came in IP-in-IP): untracked, conntrack neither calls
        # them INVALID (kube-proxy drops INVALID forwarded packets) nor lets kindnet's
        # masquerade rewrite their source; loose reverse-path filtering lets a source
        # address that this node routes out of eth0 come in from a pod's interface.
        say(f"{self.real_server_node}: no conntrack for replies from the Tunnel VIP; loose "
            "rp_filter")
        self.node_exec(self.real_server_node,
                       f"iptables -t raw -A PREROUTING -s {self.vip['tunnel']}/32 -j NOTRACK\n"
                       "echo 2 > /proc/sys/net/ipv4/conf/all/rp_filter")

    def install_chart(self) -> None:
        say(f"helm install {RELEASE} charts/lvs-operator --namespace {RELEASE_NAMESPACE}")
        sets = [arg for value in HELM_VALUES for arg in ("--set", value)]
        self.helm("install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
                  "--create-namespace", *sets,
                  *scenarios.pool_values(self.vip.values(), self.interface),
                  "--wait", "--timeout", "5m")
        self.kubectl("create", "namespace", NAMESPACE)

    def start_client(self) -> None:
        docker = _need("docker")
        run([docker, "rm", "-f", CLIENT], check=False)
        run([docker, "run", "-d", "--name", CLIENT, "--network", NETWORK, "--entrypoint",
             "sleep", IMAGE, "infinity"])

    # traffic

    def client_command(self, vip: str, port: int, *, count: int,
                       interval: float = 0.0) -> list[str]:
        # -i: a client asked to run until its stdin ends (count 0) sees ours end.
        return [_need("docker"), "exec", "-i", CLIENT, "python", "-c", scenarios.CLIENT_SCRIPT,
                f"http://{vip}:{port}/", str(count), str(interval)]

    def run_client(self, argv: Sequence[str], *, timeout: float) -> str:
        return run(argv, timeout=timeout).stdout

    def diagnose(self) -> str:
        """Return what to look at when something did not happen: the VirtualServers, pods,
        events and the agents' and controller's last log lines."""
        parts = []
        for title, args in (
            ("VirtualServers", ["get", "virtualservers", "-A", "-o", "yaml"]),
            ("pods", ["get", "pods", "-A", "-o", "wide"]),
            ("events", ["get", "events", "-A", "--sort-by=.lastTimestamp"]),
            ("agent logs", ["logs", "-n", RELEASE_NAMESPACE, "--prefix", "--tail=40", "-l",
                            "app.kubernetes.io/component=agent"]),
            ("controller logs", ["logs", "-n", RELEASE_NAMESPACE, "--prefix", "--tail=40",
                                 "-l", "app.kubernetes.io/component=controller"]),
        ):
            out = self.kubectl(*args, check=False, timeout=30)
            parts.append(f"--- {title}\n{out[-6000:]}")
        for node in self.directors:
            addresses = run([_need("docker"), "exec", node, "ip", "-4", "addr", "show",
                             INTERFACE], check=False).stdout
            pod = scenarios.agent_pod(self, node, ready_only=False)
            table = self.kubectl("exec", "-n", RELEASE_NAMESPACE, pod, "--", "lvs-operator",
                                 "ipvs", "show", "--stats", check=False, timeout=30) \
                if pod else "(no agent pod)"
            parts.append(f"--- {node}\n{addresses}{table}")
        return "\n".join(parts)


def kind_subnet() -> ipaddress.IPv4Network:
    """Return the IPv4 subnet of kind's Docker network (it may also have an IPv6 one)."""
    out = run([_need("docker"), "network", "inspect", NETWORK, "--format",
               "{{json .IPAM.Config}}"]).stdout
    for entry in json.loads(out) or []:
        subnet = ipaddress.ip_network(entry.get("Subnet", ""), strict=False)
        if isinstance(subnet, ipaddress.IPv4Network):
            return subnet
    raise LabError(f"the Docker network {NETWORK!r} has no IPv4 subnet: {out}")


def vips(subnet: ipaddress.IPv4Network, count: int) -> list[str]:
    """Return `count` addresses near the top of `subnet`: Docker hands out addresses from
    the bottom, so these stay free."""
    top = int(subnet.broadcast_address)
    return [str(ipaddress.IPv4Address(top - 10 - i)) for i in range(count)]


def _need(name: str) -> str:
    path = tool(name)
    if path is None:
        raise LabError(f"no `{name}` on PATH")
    return path


