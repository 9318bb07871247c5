"""Run a command on a real Kubernetes node in the kernel VM (the node tier's host half).

Usage: ``.venv/bin/python tests/node/host.py CMD [ARGS...]``, e.g.
``tests/node/host.py .venv/bin/pytest tests/node -v`` (what ``make test-node`` runs).

1. Builds what the node runs, all here, none pulled: kubelet and kube-proxy at the control
   plane's pinned version and the pause program (tests/node/build-node), the product image
   (tests/image/build) and the pause image (tests/node/images.py), as archives.
2. Starts the cluster tier's control plane on 127.0.0.1 with an egress selector (see
   nodelab's docstring), the ``kubernetes`` Service's endpoint at 10.0.2.2, and client
   certificates for the kubelet (system:node:node-1) and kube-proxy (system:kube-proxy).
3. Boots the VM with qemu's user network and a hostfwd rule for the CONNECT relay, and runs
   ``tests/node/guest.py CMD`` there: it starts the node, then CMD.

If the tier cannot start here (not root, no Go, no VM kernel, no container engine) it says
why and exits 0, except under CI (``CI=true``), where it exits 1. Exits with CMD's code.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: cluster

import images
import nodelab
from nodelab import REPO, WORKDIR, NodeConfig, NodeUnavailable, say

from cluster import controlplane

HOW_TO_ENABLE = (
    "the node tier needs root, Go >= 1.26 (kubelet, the control plane), gcc (pause), a "
    "container engine (tests/image/provision installs buildah, runc, containerd and the CNI "
    "plugins) and the kernel VM (`make venv provision`); run `make test-node`")
VM_MEMORY = os.environ.get("LVS_NODE_VM_MEMORY", "6G")


def check_host() -> None:
    """Raise NodeUnavailable, naming what is missing, unless this machine can run the tier."""
    if os.geteuid() != 0:
        raise NodeUnavailable("not root")
    for tool in ("openssl", "gcc", "containerd", "ctr", "runc"):
        if shutil.which(tool) is None:
            raise NodeUnavailable(f"no `{tool}` on PATH")
    if not Path("/usr/lib/cni/bridge").exists():
        raise NodeUnavailable("no CNI plugins in /usr/lib/cni (containernetworking-plugins)")
    if not (REPO / ".venv" / "bin" / "vng").exists():
        raise NodeUnavailable("no virtme-ng in .venv (make venv)")


def _build(argv: list[str], what: str) -> str:
    """Run a build script; return its last stdout line. Raises NodeUnavailable."""
    t0 = time.monotonic()
    result = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise NodeUnavailable(f"{what} failed ({' '.join(argv)} exited {result.returncode})")
    say(f"{what}: {time.monotonic() - t0:.0f} s")
    return result.stdout.strip().splitlines()[-1]


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                   port: int) -> None:
    """One egress connection of the API server: to the VM's relay through hostfwd."""
    try:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        writer.close()
        return
    await nodelab.splice(reader, writer, up_reader, up_writer)


def start_scheduler(cp: controlplane.ControlPlane, pki: Path, node_bin: Path,
                    workdir: Path) -> subprocess.Popen[bytes]:
    """Start kube-scheduler (system:kube-scheduler) against the control plane; return it.
    The cluster tier runs no scheduler: it never has a node to place a pod on."""
    cert, key = controlplane.client_certificate(pki, "scheduler", "/CN=system:kube-scheduler")
    kubeconfig = workdir / "scheduler.kubeconfig"
    kubeconfig.write_text(controlplane.kubeconfig(cp.server, pki / "ca.crt", cert, key,
                                                  "system:kube-scheduler"))
    with (cp.workdir / "logs" / "kube-scheduler.log").open("ab") as log:
        return subprocess.Popen(
            [str(node_bin / "kube-scheduler"), f"--kubeconfig={kubeconfig}",
             "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    """In the child: SIGKILL when the parent dies (PR_SET_PDEATHSIG), as the control plane's
    own processes are, so a killed run leaves no scheduler behind."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def prepare(workdir: Path) -> tuple[controlplane.ControlPlane, int]:
    """Build everything, start the control plane (and kube-scheduler, stopped with it),
    write the node's config; return the control plane and the host port of the CONNECT
    relay's hostfwd rule. Raises NodeUnavailable or controlplane.ControlPlaneError."""
    k8s_bin = controlplane.build_binaries(progress=say)
    node_bin = Path(_build([str(REPO / "tests/node/build-node")],
                           "kubelet, kube-proxy, kube-scheduler, pause (tests/node/build-node)"))
    version = next(line.split('"')[1] for line in (REPO / "pyproject.toml").read_text()
                   .splitlines() if line.startswith("version = "))
    repository, tag = "lvs-operator", version
    image_dir = workdir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    product = image_dir / "lvs-operator.tar"
    os.environ["IMAGE"] = f"{repository}:{tag}"
    _build([str(REPO / "tests/image/build"), "--archive", str(product)],
           f"image {repository}:{tag} (tests/image/build)")
    pause = image_dir / "pause.tar"
    images.pause_archive(node_bin / "pause", pause, nodelab.PAUSE_IMAGE)
    containerd_root = workdir / "containerd" / "root"
    containerd_disk = workdir / "containerd.img"
    images.preload([product, pause], containerd_root, containerd_disk, log=say)

    (fwd_port,) = controlplane.free_ports(1)
    egress = workdir / "egress-selector.yaml"
    egress_socket = workdir / "egress.sock"
    # The webhook calls (to Services) and exec/logs (to the kubelet) go into the VM through
    # the CONNECT relay; etcd and the API server's own loopback calls stay direct. The
    # selector's TCP transport insists on TLS with a client certificate, its unix-socket
    # transport does not: a socket here, forwarded to the hostfwd port.
    egress.write_text(
        "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\n"
        "egressSelections:\n- name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n"
        f"    transport:\n      uds:\n        udsName: {egress_socket}\n")
    nodelab.serve_in_thread("egress-forwarder", lambda: asyncio.start_unix_server(
        functools.partial(_forward, port=fwd_port), path=str(egress_socket)))
    cp_dir = workdir / "controlplane"
    pki = cp_dir / "pki"
    say("control plane on 127.0.0.1 (tests/cluster/controlplane.py), egress into the VM")
    cp = controlplane.start(cp_dir, bin=k8s_bin, log=say, apiserver_args=[
        f"--egress-selector-config-file={egress}",
        # How the API server authenticates to the kubelet (exec, logs): a system:masters
        # client; the kubelet checks it against the CA and asks the API server (Webhook).
        f"--kubelet-client-certificate={pki / 'admin.crt'}",
        f"--kubelet-client-key={pki / 'admin.key'}",
        "--kubelet-preferred-address-types=InternalIP",
    ])
    try:
        scheduler = start_scheduler(cp, pki, node_bin, workdir)
        cp.processes.append(controlplane.Process("kube-scheduler", scheduler.pid,
                                                 cp.workdir / "logs" / "kube-scheduler.log",
                                                 str(workdir), scheduler))
        _write_node_config(cp, pki, workdir, k8s_bin, node_bin,
                           (containerd_root, containerd_disk), repository, tag)
    except BaseException:
        cp.stop(keep_workdir=True)
        raise
    return cp, fwd_port


def _write_node_config(cp: controlplane.ControlPlane, pki: Path, workdir: Path,
                       k8s_bin: Path, node_bin: Path, containerd: tuple[Path, Path],
                       repository: str, tag: str) -> None:
    """Credentials, the `kubernetes` endpoint and node.json; raises ControlPlaneError or
    subprocess.CalledProcessError."""
    server = f"https://{nodelab.HOST_FROM_VM}:{cp.port}"

    def kubeconfig(name: str, subject: str, user: str) -> str:
        cert, key = controlplane.client_certificate(pki, name, subject)
        path = workdir / f"{name}.kubeconfig"
        path.write_text(controlplane.kubeconfig(server, pki / "ca.crt", cert, key, user))
        path.chmod(0o600)
        return str(path)

    admin = workdir / "admin.kubeconfig"
    admin.write_text(controlplane.kubeconfig(server, pki / "ca.crt", pki / "admin.crt",
                                             pki / "admin.key", "admin"))
    # The API server runs with --endpoint-reconciler-type=none (its own address is a
    # loopback one): the pods reach it where the VM sees the host.
    cp.kubectl("apply", "-f", "-", input=f"""
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes
  namespace: default
  labels: {{kubernetes.io/service-name: kubernetes}}
addressType: IPv4
endpoints: [{{addresses: ["{nodelab.HOST_FROM_VM}"], conditions: {{ready: true}}}}]
ports: [{{name: https, port: {cp.port}, protocol: TCP}}]
""")
    NodeConfig(
        k8s_bin=str(k8s_bin), node_bin=str(node_bin), ca=str(pki / "ca.crt"),
        kubelet_kubeconfig=kubeconfig("kubelet", f"/O=system:nodes/CN=system:node:{nodelab.NODE}",
                                      f"system:node:{nodelab.NODE}"),
        proxy_kubeconfig=kubeconfig("kube-proxy", "/CN=system:kube-proxy", "system:kube-proxy"),
        admin_kubeconfig=str(admin), containerd_root=str(containerd[0]),
        containerd_disk=str(containerd[1]),
        image_repository=repository, image_tag=tag,
    ).write()


def run_vm(argv: list[str], fwd_port: int, disk: Path) -> int:
    """Boot the VM with the node's network and containerd's disk and run guest.py ARGV;
    return its exit code."""
    env = {**os.environ, "LVS_VM_NETWORK": "user", "LVS_VM_NICS": "1",
           "LVS_VM_DISK": str(disk),
           "LVS_VM_HOSTFWD": f"tcp:127.0.0.1:{fwd_port}-:{nodelab.PROXY_PORT}",
           "LVS_VM_MEMORY": VM_MEMORY}
    python = str(REPO / ".venv" / "bin" / "python")
    return subprocess.run([str(REPO / "tests/vm/run"), python,
                           str(REPO / "tests/node/guest.py"), *argv],
                          env=env, check=False, stdin=subprocess.DEVNULL).returncode


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    t0 = time.monotonic()
    # SIGTERM (CI cancelling, a timeout) unwinds like Ctrl-C, so the finally blocks stop the
    # control plane and tests/vm/run stops the VM.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        check_host()
        if WORKDIR.exists():
            shutil.rmtree(WORKDIR)
        WORKDIR.mkdir(parents=True)
        cp, fwd_port = prepare(WORKDIR)
    except (NodeUnavailable, controlplane.ControlPlaneError) as e:
        if nodelab.IN_CI:
            print(f"node tier cannot start under CI: {e}\n{HOW_TO_ENABLE}", file=sys.stderr)
            return 1
        print(f"node tier SKIPPED: {e}; {HOW_TO_ENABLE}", file=sys.stderr)
        return 0
    say(f"host half ready in {time.monotonic() - t0:.0f} s; booting the node VM")
    try:
        rc = run_vm(argv, fwd_port, WORKDIR / "containerd.img")
    finally:
        cp.stop(keep_workdir=True)
    say(f"node tier: exit {rc} after {time.monotonic() - t0:.0f} s (logs: {WORKDIR})")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
