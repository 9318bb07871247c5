"""`make demo`: lvs-operator end to end on one machine, no cluster needed (run as root).

On the host: a local control plane (etcd, kube-apiserver, kube-controller-manager on
127.0.0.1), the CRDs, a Node for the director, and `lvs-operator controller`.
In the kernel VM (qemu, a Debian kernel with IPVS): three real servers (small HTTP servers,
each in a network namespace, set up with `lvs-operator realserver-init --mode dr`), a client
namespace, and a director namespace where `lvs-operator agent` runs, reaching the host's API
server through qemu's user network at 10.0.2.2. The demo applies a VIPPool (as a cluster
admin would), a Direct Routing VirtualServer backed by a selector-less Service and its
EndpointSlice, and a `type: LoadBalancer` Service that gets its VIP from the pool, sends
traffic through both, shows
`kubectl get lvs` and the director's live IPVS table, and tears everything down.

The orchestration is the full-stack tier's (tests/fullstack/stack.py). Usage:
``.venv/bin/python tests/demo/demo.py`` (host); it re-runs itself with ``--guest`` in the VM.
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: fullstack, cluster, kernel

from fullstack import stack  # after the path above

VIP = "10.200.0.100"
LB_VIP = "10.200.0.101"  # the LoadBalancer Service's, allocated by the controller
POOL = "demo"
NAME = "web"
LB_NAME = "shop"
REQUESTS = 60


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def guest() -> int:
    """The VM's half: namespaces, agent, VirtualServer, traffic, tables."""
    t0 = time.monotonic()
    with stack.site([VIP, LB_VIP]) as site:
        step(f"apply (cluster admin): VIPPool {POOL}: {VIP}-{LB_VIP} for namespace "
             f"{stack.NAMESPACE}, auto-assign, held by the director nodes on eth0 (no pool, "
             "no VIP: deny by default)")
        site.request("POST", "/apis/lvs.dev/v1alpha1/vippools", body={
            "apiVersion": "lvs.dev/v1alpha1", "kind": "VIPPool", "metadata": {"name": POOL},
            "spec": {"addresses": [f"{VIP}-{LB_VIP}"], "namespaces": [stack.NAMESPACE],
                     "autoAssign": True,
                     "directors": {"nodeSelector": {stack.DIRECTOR_LABEL: "true"},
                                   "interface": "eth0"}}})

        step(f"apply: Service {NAME} (no selector) + EndpointSlice [rs1 rs2 rs3] + "
             f"VirtualServer {NAME} (vip {VIP}, DirectRouting, rr)")
        site.apply_backend(NAME, {"rs1": True, "rs2": True, "rs3": True})
        site.apply_virtual_server(NAME, VIP, NAME, drain_seconds=5)
        site.wait_reals(VIP, {"rs1": 1, "rs2": 1, "rs3": 1})
        site.wait_programmed(NAME)
        print(f"the controller resolved 3 real servers; the agent programmed the kernel and "
              f"holds {VIP} on the director's eth0", flush=True)

        step(f"traffic: {REQUESTS} HTTP GETs from the client namespace to http://{VIP}/ "
             "(a new connection each)")
        answers = collections.Counter(site.get(VIP) for _ in range(REQUESTS))
        print("answered by: " + ", ".join(f"{k} {v}" for k, v in sorted(answers.items())),
              flush=True)

        step(f"kubectl get lvs -n {stack.NAMESPACE}; kubectl get vippools,vipclaims")
        print(site.kubectl("get", "lvs", "-n", stack.NAMESPACE), end="", flush=True)
        print(site.kubectl("get", "vippools,vipclaims"), end="", flush=True)

        step("lvs-operator ipvs show --stats   (in the director's namespace; like "
             "ipvsadm -L -n --stats)")
        stack.print_table(site)
        print("(OutPkts 0: in DR mode the real servers answer the client directly)",
              flush=True)

        loadbalancer(site)

        step("remove rs3 from the EndpointSlice: drained (weight 0), then deleted")
        site.apply_slice(NAME, {"rs1": True, "rs2": True})
        site.wait_reals(VIP, {"rs1": 1, "rs2": 1}, timeout=5 + stack.TIMEOUT)
        print(f"kernel: {VIP}:80 -> rs1, rs2", flush=True)

        step("tear down: delete the VirtualServer; the agent withdraws it")
        site.delete_virtual_server(NAME)
        stack.wait_for("the VIP withdrawn",
                       lambda: site.service(VIP) is None and VIP not in site.vips(),
                       timeout=5 + stack.TIMEOUT)
        print("kernel: no virtual service left; VIP released", flush=True)
        site.delete_backend(NAME)
    print(f"(VM part: {time.monotonic() - t0:.0f} s)", flush=True)
    return 0


def loadbalancer(site: stack.Site) -> None:
    """The other way in: a `type: LoadBalancer` Service of class lvs.dev/ipvs."""
    services = f"/api/v1/namespaces/{stack.NAMESPACE}/services"
    step(f"apply: Service {LB_NAME} (type LoadBalancer, loadBalancerClass lvs.dev/ipvs, "
         "annotations lvs.dev/forwarding: DirectRouting, lvs.dev/scheduler: rr; no "
         f"selector) + EndpointSlice [rs1 rs2 rs3]; no address asked for")
    site.request("POST", services, body={
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": LB_NAME, "annotations": {"lvs.dev/forwarding": "DirectRouting",
                                                      "lvs.dev/scheduler": "rr",
                                                      "lvs.dev/drain-timeout": "5"}},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "lvs.dev/ipvs",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
    site.apply_slice(LB_NAME, {"rs1": True, "rs2": True, "rs3": True})

    def published() -> str | None:
        svc = site.request("GET", f"{services}/{LB_NAME}")
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress")
        return ingress[0].get("ip") if ingress else None
    vip = stack.wait_for("the Service's EXTERNAL-IP", published)
    site.wait_reals(vip, {"rs1": 1, "rs2": 1, "rs3": 1})
    stack.wait_for(f"{vip} on the director", lambda: vip in site.vips())
    print(f"the controller allocated {vip} from pool {POOL} (a VIPClaim), generated "
          f"VirtualServer {LB_NAME}-ipv4, and published status.loadBalancer", flush=True)
    step(f"kubectl get svc,lvs -n {stack.NAMESPACE}")
    print(site.kubectl("get", "svc,lvs", "-n", stack.NAMESPACE), end="", flush=True)
    step(f"traffic: {REQUESTS} HTTP GETs to http://{vip}/ (the Service's EXTERNAL-IP)")
    answers = collections.Counter(site.get(vip) for _ in range(REQUESTS))
    print("answered by: " + ", ".join(f"{k} {v}" for k, v in sorted(answers.items())),
          flush=True)
    step(f"delete Service {LB_NAME}: its VirtualServer goes with it (ownerReference), the "
         "VIP is released")
    site.delete_backend(LB_NAME)
    stack.wait_for("the VIP withdrawn",
                   lambda: site.service(vip) is None and vip not in site.vips(),
                   timeout=30 + stack.TIMEOUT)
    print(f"kernel: {vip} withdrawn", flush=True)


def host() -> int:
    """The host's half: the control plane and the controller around one VM run."""
    t0 = time.monotonic()
    step("host: control plane + CRD + Node + controller (tests/fullstack/stack.py)")
    try:
        with stack.HostStack.running("demo", open_pool=False) as host_stack:
            step("VM: boot a Debian kernel with IPVS under qemu (TCG: slow but real)")
            rc = host_stack.run_vm([sys.executable, str(Path(__file__).resolve()), "--guest"])
            if rc != 0:
                host_stack.failed = True
    except stack.StackUnavailable as e:
        print(f"make demo: cannot run here: {e}\n{stack.HOW_TO_ENABLE}", file=sys.stderr)
        return 1
    step(f"demo {'finished' if rc == 0 else 'FAILED'} in {time.monotonic() - t0:.0f} s; "
         "control plane, controller and VM stopped")
    return rc


if __name__ == "__main__":
    sys.exit(guest() if sys.argv[1:] == ["--guest"] else host())
