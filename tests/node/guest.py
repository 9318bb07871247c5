"""Make the kernel VM a Kubernetes node, then run a command (the node tier's guest half).

Usage (by tests/node/host.py, inside tests/vm/run): ``python tests/node/guest.py CMD...``

Starts, in the VM's root network namespace: containerd (runc, overlayfs snapshots on a tmpfs:
the VM's /var is itself an overlay, which cannot hold overlay snapshots) on the ext4 disk the
host preloaded with the product and pause images (built there, never pulled), the bridge CNI,
kube-proxy (iptables mode), the kubelet (cgroup v2, cgroupfs driver: no systemd in the VM)
registering node-1 with
the director label, and the HTTP CONNECT relay the API server's egress selector dials. Waits for
the node to be Ready, runs CMD with KUBECONFIG set, and returns its exit code. The daemons'
logs go to $LVS_VM_OUT/node/ (the same folder on the host).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nodelab
from nodelab import NodeConfig, say

STATE = Path("/var/lib/lvs-node")  # configs the daemons read
LOGS = Path(os.environ.get("LVS_VM_OUT", "/tmp")) / "node"
CONTAINERD_SOCK = "/run/containerd/containerd.sock"
START_TIMEOUT = float(os.environ.get("LVS_NODE_START_TIMEOUT", "300"))  # TCG is slow

CONTAINERD_TOML = """version = 2
root = "{root}"
state = "/run/containerd"
[grpc]
  address = "{sock}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  enable_unprivileged_ports = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
"""

# The pods' network: one bridge, the node routes and masquerades what leaves it (the API
# server at 10.0.2.2). hairpinMode off and no br_netfilter: a DR real server's replies to the
# client cross the bridge without the node's conntrack (kube-proxy drops INVALID ones).
CNI_CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "lvs-node",
    "plugins": [
        {"type": "bridge", "bridge": nodelab.BRIDGE, "isGateway": True, "ipMasq": True,
         "ipam": {"type": "host-local",
                  "ranges": [[{"subnet": nodelab.BRIDGE_SUBNET, "gateway": nodelab.BRIDGE_IP,
                               "rangeStart": "10.244.0.10", "rangeEnd": "10.244.0.199"}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


def kubelet_config(config: NodeConfig) -> str:
    """Return the KubeletConfiguration (JSON) of node-1; pure."""
    return json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": config.ca}},
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCK}",
        "failSwapOn": False,
        # Harmless on the VM's cgroup v2; what a kubelet >= 1.35 needs on a v1 host.
        "failCgroupV1": False,
        "resolvConf": str(STATE / "resolv.conf"),
        "clusterDomain": "cluster.local",
        # Images are imported, never pulled, and the node's disk is a tmpfs: no image GC and
        # no disk-pressure eviction of what the test needs.
        "imageGCHighThresholdPercent": 100,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "0%",
                         "imagefs.available": "0%"},
        "serializeImagePulls": False,
        "registerNode": True,
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
    }, indent=2)


def proxy_config(config: NodeConfig) -> str:
    """Return the KubeProxyConfiguration (JSON) of node-1; pure."""
    return json.dumps({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": config.proxy_kubeconfig},
        "mode": "iptables",
        "clusterCIDR": nodelab.POD_CIDR,
        "hostnameOverride": nodelab.NODE,
        # Leave nf_conntrack's sysctls as the kernel has them.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s"},
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
    }, indent=2)


class Daemons:
    """The node's long-running processes, their logs in LOGS; stopped in reverse order."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, argv: list[str]) -> None:
        log = (LOGS / f"{name}.log").open("wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append((name, proc, log))
        say(f"started {name} (pid {proc.pid}; log {LOGS / (name + '.log')})")

    def check(self) -> None:
        """Raise RuntimeError naming a daemon that exited, with its log's tail."""
        for name, proc, _ in self.procs:
            if proc.poll() is not None:
                tail = (LOGS / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for _, proc, log in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.close()


# --- the CONNECT relay -----------------------------------------------------------------------

async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One HTTP CONNECT from the API server's egress dialer: dial host:port, answer 200,
    then copy bytes both ways (the API server speaks TLS through it)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        host, _, port = target.rpartition(":")
        if method != "CONNECT":
            raise ValueError(f"not a CONNECT: {method}")
        up_reader, up_writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]"), int(port)), timeout=10)
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            TimeoutError) as e:
        with contextlib.suppress(Exception):
            writer.write(f"HTTP/1.1 502 Bad Gateway\r\n\r\n{e}".encode())
            await writer.drain()
            writer.close()
        return
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await writer.drain()
    await nodelab.splice(reader, writer, up_reader, up_writer)


# --- the node --------------------------------------------------------------------------------

def sh(*argv: str, timeout: float = 120) -> str:
    """Run a command; return its stdout; raise CalledProcessError (output attached)."""
    return nodelab.run(argv, timeout=timeout)


def prepare_filesystems() -> None:
    """tmpfs where containerd and the kubelet keep state, the cgroup v2 controllers for the
    kubelet's pods hierarchy, the node's sysctls and files."""
    for path in ("/var/lib/kubelet", "/var/log/pods",
                 "/var/log/containers", "/etc/cni/net.d", str(STATE)):
        Path(path).mkdir(parents=True, exist_ok=True)
        sh("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", path)
    # cgroup v2: the root's controllers must be enabled for children (the kubelet's kubepods);
    # the VM's init does not (no systemd).
    controllers = Path("/sys/fs/cgroup/cgroup.controllers").read_text().split()
    Path("/sys/fs/cgroup/cgroup.subtree_control").write_text(
        " ".join(f"+{c}" for c in controllers))
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
    # What a node's distribution loads at boot for kube-proxy (the VM's init loads nothing).
    sh("modprobe", "nf_conntrack")
    # The client's namespace is made before containerd makes any pod's: `ip netns add` turns
    # /run/netns into a shared bind mount of itself, which would cover the pods' namespace
    # mounts made before it, and containerd then fails to remove them ("unlinkat
    # /var/run/netns/cni-...: device or resource busy": a pod stuck Terminating, seen).
    sh("ip", "netns", "add", nodelab.CLIENT_NETNS)
    (STATE / "resolv.conf").write_text("nameserver 127.0.0.1\n")  # no DNS in the VM
    if not Path("/etc/machine-id").exists() or not Path("/etc/machine-id").read_text().strip():
        Path("/etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")


def start_node(config: NodeConfig, daemons: Daemons) -> None:
    """Start containerd on its preloaded disk, kube-proxy and the kubelet; raises
    RuntimeError or CalledProcessError when one fails."""
    root = Path(config.containerd_root)
    root.mkdir(parents=True, exist_ok=True)
    # The host's preloaded root, as the VM's only disk (tests/vm/run LVS_VM_DISK): the
    # minimal udev rules load no drivers, so virtio_blk is loaded here.
    sh("modprobe", "virtio_blk")
    nodelab.wait_for("the containerd disk /dev/vda", lambda: Path("/dev/vda").exists(),
                     timeout=60, interval=0.2)
    sh("mount", "-t", "ext4", "/dev/vda", str(root))
    (STATE / "containerd.toml").write_text(CONTAINERD_TOML.format(
        root=root, sock=CONTAINERD_SOCK, pause=nodelab.PAUSE_IMAGE))
    Path("/etc/cni/net.d/10-lvs-node.conflist").write_text(json.dumps(CNI_CONFLIST))
    daemons.start("containerd", ["containerd", "--config", str(STATE / "containerd.toml")])
    nodelab.wait_for("containerd's socket", lambda: Path(CONTAINERD_SOCK).exists() and
                     subprocess.run(["ctr", "--address", CONTAINERD_SOCK, "version"],
                                    capture_output=True, check=False).returncode == 0,
                     timeout=START_TIMEOUT)
    say(sh("ctr", "--address", CONTAINERD_SOCK, "-n", "k8s.io", "images", "ls", "-q").strip())
    node_bin = Path(config.node_bin)
    (STATE / "kube-proxy.json").write_text(proxy_config(config))
    daemons.start("kube-proxy", [str(node_bin / "kube-proxy"),
                                 f"--config={STATE / 'kube-proxy.json'}"])
    (STATE / "kubelet.json").write_text(kubelet_config(config))
    daemons.start("kubelet", [
        str(node_bin / "kubelet"), f"--config={STATE / 'kubelet.json'}",
        f"--kubeconfig={config.kubelet_kubeconfig}", f"--hostname-override={nodelab.NODE}",
        f"--node-ip={nodelab.GUEST_IP}", f"--node-labels={nodelab.DIRECTOR_LABEL}=true",
        "--cert-dir=/var/lib/kubelet/pki", "--v=1",
    ])


def node_ready(config: NodeConfig, daemons: Daemons) -> bool:
    """Return whether node-1 reports Ready; raises RuntimeError if a daemon died."""
    daemons.check()
    out = nodelab.run([str(Path(config.k8s_bin) / "kubectl"), "--kubeconfig",
                       config.admin_kubeconfig, "get", "node", nodelab.NODE, "-o", "json"],
                      check=False, timeout=60)
    if not out:
        return False
    conditions = json.loads(out).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


@contextlib.contextmanager
def node() -> Iterator[NodeConfig]:
    """The running node; its daemons are stopped at the end."""
    config = NodeConfig.read()
    LOGS.mkdir(parents=True, exist_ok=True)
    daemons = Daemons()
    t0 = time.monotonic()
    try:
        prepare_filesystems()
        nodelab.serve_in_thread("connect-relay", lambda: asyncio.start_server(
            _relay, "0.0.0.0", nodelab.PROXY_PORT))
        start_node(config, daemons)
        nodelab.wait_for(f"{nodelab.NODE} Ready", lambda: node_ready(config, daemons),
                         timeout=START_TIMEOUT, interval=3)
        say(f"{nodelab.NODE} Ready after {time.monotonic() - t0:.0f} s")
        yield config
    finally:
        daemons.stop()


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        with node() as config:
            env = {**os.environ, "KUBECONFIG": config.admin_kubeconfig,
                   "PATH": f"{config.k8s_bin}:{os.environ.get('PATH', '')}"}
            return subprocess.run(argv, env=env, check=False,
                                  stdin=subprocess.DEVNULL).returncode
    except (RuntimeError, AssertionError, OSError, subprocess.CalledProcessError) as e:
        detail = nodelab.error_text(e) if isinstance(e, subprocess.CalledProcessError) else e
        print(f"[node] the node did not start: {detail}", file=sys.stderr)
        for name in ("kubelet", "containerd", "kube-proxy"):
            log = LOGS / f"{name}.log"
            if log.exists():
                print(f"--- {name} (last lines)\n"
                      f"{log.read_text(errors='replace')[-2500:]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
