"""`type: LoadBalancer` Services served by the controller, against the real API server:
addresses (requested by annotation or spec.loadBalancerIP, a named pool, auto-assign,
dual-stack, an exhausted pool), the generated VirtualServers (owned by the Service, put back
when edited, deleted when the Service goes or is no longer served: kube-controller-manager's
garbage collector runs here), sharing a VIP, bad annotations, status.loadBalancer and
`kubectl get svc`, and two controllers that both lead allocating at once.

The namespaces are labelled `lvs.dev/test-closed`, out of the tests' open pool; each test
creates its own VIPPools (cluster-scoped: unique names and ranges, deleted afterwards).
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from controller_support import ApiError, Controller, Kube, service_path, vs_path, wait_for
from controlplane import ControlPlane
from crd_support import install_crd

import scenarios

CLASS = "lvs.dev/ipvs"
POOLS = "/apis/lvs.dev/v1alpha1/vippools"
CLAIMS = "/apis/lvs.dev/v1alpha1/vipclaims"


@pytest.fixture(scope="module")
def kube(cluster: ControlPlane) -> Kube:
    install_crd(cluster)
    return Kube(cluster)


@pytest.fixture(scope="module")
def controller(cluster: ControlPlane, kube: Kube,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    lease = f"lvs-lb-{secrets.token_hex(3)}"
    ctl = Controller(cluster, identity="lb-a", lease=lease,
                     log_dir=tmp_path_factory.mktemp("controller"), lease_duration=3.0).start()
    try:
        ctl.wait_leading()
        yield ctl
    finally:
        ctl.stop()
        cluster.kubectl("delete", "lease", "-n", "default", lease, "--ignore-not-found")


@pytest.fixture
def namespace(cluster: ControlPlane) -> Iterator[str]:
    name = f"lb-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, f"{scenarios.CLOSED_LABEL}=true")
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@contextlib.contextmanager
def pool(kube: Kube, namespace: str, addresses: list[str], **spec: Any) -> Iterator[str]:
    """A VIPPool of `addresses` for `namespace`, deleted afterwards."""
    name = f"lb-pool-{secrets.token_hex(3)}"
    kube.create(POOLS, {"apiVersion": "lvs.dev/v1alpha1", "kind": "VIPPool",
                        "metadata": {"name": name},
                        "spec": {"addresses": addresses, "namespaces": [namespace], **spec}})
    try:
        yield name
    finally:
        kube.delete(f"{POOLS}/{name}")


def lb_service(namespace: str, name: str, *, ports: list[int] | None = None,
               annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "LoadBalancer", "loadBalancerClass": CLASS, "selector": {"app": name},
        "ports": [{"name": f"p{p}", "port": p, "targetPort": p} for p in ports or [80]],
        **spec}
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": annotations or {}}, "spec": body}


def ingress(kube: Kube, namespace: str, name: str) -> list[str]:
    svc = kube.get(service_path(namespace, name))
    return [i["ip"] for i in svc.get("status", {}).get("loadBalancer", {}).get("ingress", [])]


def wait_ingress(kube: Kube, namespace: str, name: str, count: int = 1,
                 timeout: float = 20.0) -> list[str]:
    def probe() -> list[str] | None:
        found = ingress(kube, namespace, name)
        return found if len(found) == count else None
    return wait_for(f"{namespace}/{name}: {count} address(es) in status.loadBalancer", probe,
                    timeout=timeout)


def service_events(kube: Kube, namespace: str, name: str) -> list[tuple[str, str, str]]:
    items = kube.get(f"/apis/events.k8s.io/v1/namespaces/{namespace}/events")["items"]
    return [(e["type"], e["reason"], e.get("note", "")) for e in items
            if e["regarding"]["name"] == name and e["regarding"]["kind"] == "Service"]


def wait_event(kube: Kube, namespace: str, name: str, reason: str, text: str = ""
               ) -> tuple[str, str, str]:
    return wait_for(f"{namespace}/{name}: Event {reason} {text!r}", lambda: next(
        (e for e in service_events(kube, namespace, name) if e[1] == reason and text in e[2]),
        None))


def claims_of(kube: Kube, namespace: str) -> dict[str, str]:
    """Return address -> Service of the VIPClaims of `namespace`."""
    return {c["spec"]["address"]: c["spec"].get("service", "")
            for c in kube.get(CLAIMS)["items"] if c["spec"]["namespace"] == namespace}


def gone(kube: Kube, path: str) -> bool:
    try:
        kube.get(path)
    except ApiError as error:
        return error.status == 404
    return False


def test_requested_named_pool_and_auto_assign(cluster, kube, controller, namespace):
    with pool(kube, namespace, ["100.70.1.10-100.70.1.12"], autoAssign=True), \
            pool(kube, namespace, ["100.70.2.0/30"]) as named:
        kube.create(service_path(namespace), lb_service(
            namespace, "by-annotation", annotations={"lvs.dev/vip": "100.70.2.2"}))
        kube.create(service_path(namespace), lb_service(
            namespace, "by-field", loadBalancerIP="100.70.1.12"))
        kube.create(service_path(namespace), lb_service(
            namespace, "named", annotations={"lvs.dev/pool": named}))
        kube.create(service_path(namespace), lb_service(namespace, "auto", ports=[80, 443]))
        assert wait_ingress(kube, namespace, "by-annotation") == ["100.70.2.2"]
        assert wait_ingress(kube, namespace, "by-field") == ["100.70.1.12"]
        assert wait_ingress(kube, namespace, "named") == ["100.70.2.0"]
        assert wait_ingress(kube, namespace, "auto") == ["100.70.1.10"]
        svc = kube.get(service_path(namespace, "auto"))
        assert svc["status"]["loadBalancer"]["ingress"] == [{"ip": "100.70.1.10",
                                                            "ipMode": "VIP"}]
        vs = kube.get(vs_path(namespace, "auto-ipv4"))
        assert vs["metadata"]["labels"]["lvs.dev/service"] == "auto"
        (owner,) = vs["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == \
            ("Service", "auto", svc["metadata"]["uid"], True)
        assert vs["spec"] == {"vip": "100.70.1.10", "forwarding": "DirectRouting",
                              "ports": [{"port": 80, "protocol": "TCP"},
                                        {"port": 443, "protocol": "TCP"}],
                              "backend": {"service": {"name": "auto", "port": "p80"}},
                              # the CRD's defaults
                              "scheduler": {"name": "wlc"}, "weight": 1, "onePacket": False}
        assert claims_of(kube, namespace) == {"100.70.2.2": "by-annotation",
                                              "100.70.1.12": "by-field",
                                              "100.70.2.0": "named", "100.70.1.10": "auto"}
        wait_event(kube, namespace, "auto", "AddressAllocated", "100.70.1.10")
        wait_event(kube, namespace, "auto", "VirtualServerCreated", "auto-ipv4")
        shown = cluster.kubectl("get", "svc", "-n", namespace, "auto").stdout
        assert "100.70.1.10" in shown.splitlines()[1].split(), shown  # EXTERNAL-IP
        # A requested address outside the namespace's pools: refused, naming the annotation.
        kube.create(service_path(namespace), lb_service(
            namespace, "outside", annotations={"lvs.dev/vip": "100.70.9.9"}))
        wait_event(kube, namespace, "outside", "AddressNotAllowed", "lvs.dev/vip: 100.70.9.9")
        assert ingress(kube, namespace, "outside") == []
        for name in ("by-annotation", "by-field", "named", "auto", "outside"):
            kube.delete(service_path(namespace, name))
        wait_for("the claims released", lambda: not claims_of(kube, namespace))


def test_dual_stack(kube, controller, namespace):
    with pool(kube, namespace, ["100.70.3.0/30", "fd70::/126"], autoAssign=True):
        kube.create(service_path(namespace), lb_service(
            namespace, "both", ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv6", "IPv4"]))
        assert wait_ingress(kube, namespace, "both", 2) == ["fd70::", "100.70.3.0"]
        assert kube.get(vs_path(namespace, "both-ipv6"))["spec"]["vip"] == "fd70::"
        assert kube.get(vs_path(namespace, "both-ipv4"))["spec"]["vip"] == "100.70.3.0"
        # Down to one family: the other's VirtualServer and claim go.
        kube.merge(service_path(namespace, "both"), {"spec": {
            "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"]}})
        assert wait_ingress(kube, namespace, "both", 1) == ["fd70::"]
        wait_for("the IPv4 VirtualServer deleted",
                 lambda: gone(kube, vs_path(namespace, "both-ipv4")))
        wait_for("the IPv4 claim released",
                 lambda: list(claims_of(kube, namespace)) == ["fd70::"])
        kube.delete(service_path(namespace, "both"))
        wait_for("the claims released", lambda: not claims_of(kube, namespace))


def test_exhausted_pool_then_freed(kube, controller, namespace):
    with pool(kube, namespace, ["100.70.4.1"], autoAssign=True):
        kube.create(service_path(namespace), lb_service(namespace, "first"))
        assert wait_ingress(kube, namespace, "first") == ["100.70.4.1"]
        kube.create(service_path(namespace), lb_service(namespace, "second"))
        wait_event(kube, namespace, "second", "PoolExhausted", "no free IPv4 address")
        assert ingress(kube, namespace, "second") == []
        assert gone(kube, vs_path(namespace, "second-ipv4"))
        # The address comes free: the waiting Service gets it.
        kube.delete(service_path(namespace, "first"))
        assert wait_ingress(kube, namespace, "second") == ["100.70.4.1"]
        kube.delete(service_path(namespace, "second"))
        wait_for("the claims released", lambda: not claims_of(kube, namespace))


def test_sharing_a_vip_and_conflicting_ports(kube, controller, namespace):
    shared = {"lvs.dev/sharing-key": "front"}
    with pool(kube, namespace, ["100.70.5.0/29"], autoAssign=True):
        kube.create(service_path(namespace), lb_service(namespace, "web", ports=[80],
                                                        annotations=shared))
        (vip,) = wait_ingress(kube, namespace, "web")
        kube.create(service_path(namespace), lb_service(namespace, "dns", ports=[53],
                                                        annotations=shared))
        assert wait_ingress(kube, namespace, "dns") == [vip]
        assert kube.get(vs_path(namespace, "dns-ipv4"))["spec"]["sharingKey"] == "front"
        # A third on a port already served on the VIP: refused, with an Event.
        kube.create(service_path(namespace), lb_service(namespace, "web2", ports=[80],
                                                        annotations=shared))
        wait_event(kube, namespace, "web2", "Conflict", "web2-ipv4")
        assert ingress(kube, namespace, "web2") == []
        assert list(claims_of(kube, namespace)) == [vip]
        # The holder of the address goes: the sharers keep it (the claim stays).
        kube.delete(service_path(namespace, "web"))
        assert wait_ingress(kube, namespace, "web2") == [vip]  # port 80 is free now
        assert ingress(kube, namespace, "dns") == [vip]
        assert list(claims_of(kube, namespace)) == [vip]
        for name in ("dns", "web2"):
            kube.delete(service_path(namespace, name))
        wait_for("the claims released", lambda: not claims_of(kube, namespace))


def test_bad_annotations_are_refused_by_name(kube, controller, namespace):
    with pool(kube, namespace, ["100.70.6.0/30"], autoAssign=True):
        kube.create(service_path(namespace), lb_service(
            namespace, "bad", annotations={"lvs.dev/scheduler": "fastest"}))
        wait_event(kube, namespace, "bad", "InvalidAnnotation", "lvs.dev/scheduler: unknown "
                   "scheduler 'fastest'")
        assert ingress(kube, namespace, "bad") == []
        kube.merge(service_path(namespace, "bad"), {"metadata": {"annotations": {
            "lvs.dev/scheduler": "wrr", "lvs.dev/forwarding": "Teleport"}}})
        wait_event(kube, namespace, "bad", "InvalidAnnotation", "lvs.dev/forwarding: must be "
                   "one of DirectRouting, Tunnel, NAT")
        kube.merge(service_path(namespace, "bad"), {"metadata": {"annotations": {
            "lvs.dev/forwarding": "Tunnel", "lvs.dev/persistence-timeout": "600",
            "lvs.dev/health-check": "http", "lvs.dev/health-check-path": "/healthz"}}})
        wait_ingress(kube, namespace, "bad")
        spec = kube.get(vs_path(namespace, "bad-ipv4"))["spec"]
        assert (spec["forwarding"], spec["scheduler"], spec["persistence"]["timeoutSeconds"],
                spec["healthCheck"]["http"]["path"]) == ("Tunnel", {"name": "wrr"}, 600,
                                                         "/healthz")
        kube.delete(service_path(namespace, "bad"))


def test_edited_virtualserver_is_put_back(kube, controller, namespace):
    with pool(kube, namespace, ["100.70.7.0/30"], autoAssign=True):
        kube.create(service_path(namespace), lb_service(namespace, "web"))
        wait_ingress(kube, namespace, "web")
        path = vs_path(namespace, "web-ipv4")
        before = kube.get(path)["spec"]
        kube.merge(path, {"spec": {"scheduler": {"name": "rr"}, "weight": 7}})
        wait_for("the edit put back", lambda: kube.get(path)["spec"] == before)
        wait_event(kube, namespace, "web", "VirtualServerUpdated", "put back")
        kube.delete(service_path(namespace, "web"))


def test_no_longer_served_then_deleted(kube, controller, namespace):
    with pool(kube, namespace, ["100.70.8.0/30"], autoAssign=True):
        kube.create(service_path(namespace), lb_service(namespace, "web"))
        (vip,) = wait_ingress(kube, namespace, "web")
        # The class can change only with the type: out of LoadBalancer, the VirtualServer
        # and the claim go.
        kube.merge(service_path(namespace, "web"), {"spec": {
            "type": "ClusterIP", "loadBalancerClass": None, "allocateLoadBalancerNodePorts": None}})
        wait_for("the VirtualServer deleted", lambda: gone(kube, vs_path(namespace, "web-ipv4")))
        wait_for("the claim released", lambda: not claims_of(kube, namespace))
        # Served again, then deleted: the garbage collector takes the VirtualServer, and the
        # controller the claim.
        kube.merge(service_path(namespace, "web"), {"spec": {
            "type": "LoadBalancer", "loadBalancerClass": CLASS}})
        assert wait_ingress(kube, namespace, "web") == [vip]
        kube.request("DELETE", service_path(namespace, "web"),
                     {"propagationPolicy": "Background"})
        wait_for("the VirtualServer collected",
                 lambda: gone(kube, vs_path(namespace, "web-ipv4")), timeout=40)
        wait_for("the claim released", lambda: not claims_of(kube, namespace))
        # Another class: not ours, nothing is made.
        kube.create(service_path(namespace), {**lb_service(namespace, "other"), "spec": {
            **lb_service(namespace, "other")["spec"], "loadBalancerClass": "example.com/lb"}})
        kube.create(service_path(namespace), {**lb_service(namespace, "plain"), "spec": {
            k: v for k, v in lb_service(namespace, "plain")["spec"].items()
            if k != "loadBalancerClass"}})
        kube.create(service_path(namespace), lb_service(namespace, "marker"))
        wait_ingress(kube, namespace, "marker")  # served after the two above were seen
        for name in ("other", "plain"):
            assert ingress(kube, namespace, name) == []
            assert gone(kube, vs_path(namespace, f"{name}-ipv4"))


def test_two_controllers_racing_never_give_an_address_twice(cluster, kube, controller,
                                                            namespace, tmp_path_factory):
    """Two controllers on different Leases both lead and allocate at once: every Service
    gets one address, and no address is given twice (the VIPClaim's atomic create)."""
    lease = f"lvs-lb-race-{secrets.token_hex(3)}"
    second = Controller(cluster, identity="lb-b", lease=lease,
                        log_dir=tmp_path_factory.mktemp("racer"), lease_duration=3.0).start()
    names = [f"svc-{i:02d}" for i in range(20)]
    try:
        second.wait_leading()
        with pool(kube, namespace, ["100.70.10.0/27"], autoAssign=True):
            with ThreadPoolExecutor(10) as workers:
                list(workers.map(lambda n: kube.create(service_path(namespace),
                                                       lb_service(namespace, n)), names))
            def settled() -> dict[str, str] | None:
                found = {n: ingress(kube, namespace, n) for n in names}
                if not all(len(a) == 1 for a in found.values()):
                    return None
                owners = claims_of(kube, namespace)
                # Settled when every claim is one Service's published address.
                if sorted(owners) != sorted(a[0] for a in found.values()):
                    return None
                return {n: a[0] for n, a in found.items()}
            got = wait_for("20 Services with an address each", settled, timeout=60)
            assert len(set(got.values())) == 20, json.dumps(got, indent=1)
            assert {v: k for k, v in got.items()} == {
                a: s for a, s in claims_of(kube, namespace).items()}
            for name in names:
                kube.delete(service_path(namespace, name))
            wait_for("the claims released", lambda: not claims_of(kube, namespace), timeout=60)
    finally:
        second.stop()
        cluster.kubectl("delete", "lease", "-n", "default", lease, "--ignore-not-found")
    for ctl in (controller, second):
        log = ctl.log()
        assert "Traceback" not in log, log[-4000:]
