"""`lvs-operator controller` against the real API server: status.realServers follows
Services and EndpointSlices (written by the test, or by kube-controller-manager for pods),
static addresses, conflicts and their recovery, invalid objects, deletion, restarts without
status churn, and two replicas of which only the Lease holder writes.

The controller runs as a child process (`python -m lvs_operator.cli controller`), one for the
module, cluster-wide, with a short Lease so that failover tests are quick. No agent runs:
where a test needs a director's report it writes `status.directors` itself, as an agent would.
"""

from __future__ import annotations

import copy
import json
import secrets
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from controller_support import (
    ApiError,
    Controller,
    Kube,
    condition,
    endpoint,
    endpoint_slice,
    service,
    service_path,
    slice_path,
    virtual_server,
    vs_path,
    wait_for,
)
from controlplane import ControlPlane
from crd_support import CRD, CRD_NAME, install_crd, module_namespace

import scenarios

LEASE_SECONDS = 3.0


@pytest.fixture(scope="module")
def kube(cluster: ControlPlane) -> Kube:
    install_crd(cluster)
    return Kube(cluster)


@pytest.fixture(scope="module")
def controllers(cluster: ControlPlane, kube: Kube,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Controller]]:
    """The module's controller replicas; the first one leads. Tests may add or stop some."""
    lease = f"lvs-test-{secrets.token_hex(3)}"
    log_dir = tmp_path_factory.mktemp("controller")
    first = Controller(cluster, identity="ctl-a", lease=lease, log_dir=log_dir,
                       lease_duration=LEASE_SECONDS).start()
    replicas = [first]
    try:
        first.wait_leading()
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()
        cluster.kubectl("delete", "lease", "-n", "default", lease, "--ignore-not-found")


def leader(controllers: list[Controller]) -> Controller:
    (found,) = [c for c in controllers if c.alive() and c.holder() == c.identity]
    return found


def get(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = kube.get(vs_path(namespace, name))
    return found


def reals(vs: dict[str, Any]) -> list[tuple[str, int, bool]]:
    return [(r["ip"], r["weight"], r["ready"]) for r in vs["status"]["realServers"]]


def wait_status(kube: Kube, namespace: str, name: str, what: str, check: Any,
                timeout: float = 20.0) -> dict[str, Any]:
    """Wait until `check(vs)` holds for the VirtualServer; return it."""
    def probe() -> dict[str, Any] | None:
        vs = get(kube, namespace, name)
        return vs if check(vs) else None
    return wait_for(f"{namespace}/{name}: {what}", probe, timeout=timeout)


def reason(vs: dict[str, Any], kind: str = "RealServersResolved") -> str:
    return str(condition(vs, kind)["reason"])


def events(kube: Kube, namespace: str, name: str) -> list[tuple[str, str]]:
    items = kube.get(f"/apis/events.k8s.io/v1/namespaces/{namespace}/events")["items"]
    return [(e["type"], e["reason"]) for e in items if e["regarding"]["name"] == name]


def wait_events(kube: Kube, namespace: str, name: str,
                expected: set[tuple[str, str]]) -> None:
    """Wait until the Events on `name` include `expected`: the controller posts them after
    the status write, on the side, so they may come a moment after the status."""
    wait_for(f"{namespace}/{name}: Events {sorted(expected)}",
             lambda: expected <= set(events(kube, namespace, name)))


def report(kube: Kube, namespace: str, name: str, generation: int, *, node: str = "node-a",
           error: str = "") -> None:
    """Write a director's report, as the agent on `node` would."""
    kube.merge(vs_path(namespace, name) + "/status", {"status": {"directors": {node: {
        "role": "Active", "generation": generation, "error": error,
        "syncedAt": "2024-05-01T10:00:00Z"}}}})


def test_static_addresses(cluster, kube, controllers, namespace):
    kube.create(vs_path(namespace), virtual_server(
        namespace, "static", vip="198.51.100.1",
        addresses=[{"ip": "10.0.5.8"}, {"ip": "10.0.5.7", "weight": 3}]))
    vs = wait_status(kube, namespace, "static", "resolved",
                     lambda vs: reason(vs) == "Resolved")
    assert vs["status"]["realServers"] == [{"ip": "10.0.5.7", "weight": 3, "ready": True},
                                           {"ip": "10.0.5.8", "weight": 1, "ready": True}]
    assert (vs["status"]["ports"], vs["status"]["ready"]) == ("80/TCP", "2/2")
    assert vs["status"]["observedGeneration"] == 1
    assert (condition(vs, "Ready")["status"], reason(vs, "Ready")) == ("False", "NoDirectors")
    row = cluster.kubectl("get", "lvs", "-n", namespace, "static", "--no-headers").stdout
    assert row.split()[:6] == ["static", "198.51.100.1", "80/TCP", "DirectRouting", "wlc",
                               "2/2"]

    # The active director reports generation 1: programmed, ready.
    report(kube, namespace, "static", 1)
    vs = wait_status(kube, namespace, "static", "Ready",
                     lambda vs: condition(vs, "Ready")["status"] == "True")
    assert vs["status"]["activeDirector"] == "node-a"
    assert reason(vs, "Programmed") == "Programmed"

    # A spec change: the director has not programmed generation 2 yet.
    kube.merge(vs_path(namespace, "static"), {"spec": {"weight": 2}})
    vs = wait_status(kube, namespace, "static", "generation 2",
                     lambda vs: vs["status"]["observedGeneration"] == 2)
    assert reals(vs) == [("10.0.5.7", 3, True), ("10.0.5.8", 2, True)]
    assert reason(vs, "Ready") == "Programming"
    report(kube, namespace, "static", 2, error="ipvs: no such device")
    vs = wait_status(kube, namespace, "static", "director error",
                     lambda vs: reason(vs, "Ready") == "DirectorError")
    assert "node-a: ipvs: no such device" in condition(vs, "Ready")["message"]
    wait_events(kube, namespace, "static", {("Warning", "NoDirectors"), ("Normal", "Ready"),
                                            ("Warning", "DirectorError")})


def test_real_servers_follow_endpoint_slices(kube, controllers, namespace):
    kube.create(vs_path(namespace), virtual_server(namespace, "web", vip="198.51.100.2",
                                                   service="web"))
    wait_status(kube, namespace, "web", "ServiceNotFound",
                lambda vs: reason(vs) == "ServiceNotFound")
    kube.create(service_path(namespace), service(namespace, "web"))
    vs = wait_status(kube, namespace, "web", "no endpoints",
                     lambda vs: reason(vs) == "NoReadyEndpoints")
    assert condition(vs, "RealServersResolved")["message"] == \
        f"Service {namespace}/web has no endpoints"

    a, b = "10.1.0.1", "10.1.0.2"
    kube.create(slice_path(namespace), endpoint_slice(
        namespace, "web-1", service="web", endpoints=[endpoint(a), endpoint(b, node="node-b")]))
    vs = wait_status(kube, namespace, "web", "two ready",
                     lambda vs: reals(vs) == [(a, 1, True), (b, 1, True)])
    assert vs["status"]["realServers"][1] == {"ip": b, "port": 80, "weight": 1, "ready": True,
                                              "node": "node-b", "pod": "pod-10-1-0-2"}
    steps = [
        ("b not ready", [endpoint(a), endpoint(b, ready=False, serving=False)],
         [(a, 1, True), (b, 0, False)], "Resolved", "1/2"),
        ("b terminating, still serving",
         [endpoint(a), endpoint(b, ready=False, serving=True, terminating=True)],
         [(a, 1, True), (b, 0, False)], "Resolved", "1/2"),
        ("both terminating: they keep serving",
         [endpoint(a, ready=False, serving=True, terminating=True),
          endpoint(b, ready=False, serving=True, terminating=True)],
         [(a, 1, False), (b, 1, False)], "NoReadyEndpoints", "0/2"),
        ("a back, b no longer serving",
         [endpoint(a), endpoint(b, ready=False, serving=False, terminating=True)],
         [(a, 1, True)], "Resolved", "1/1"),
    ]
    for what, endpoints, expected, why, ready in steps:
        kube.merge(slice_path(namespace, "web-1"), {"endpoints": endpoints})
        vs = wait_status(kube, namespace, "web", what, lambda vs, e=expected: reals(vs) == e)
        assert (reason(vs), vs["status"]["ready"]) == (why, ready), what

    kube.delete(slice_path(namespace, "web-1"))
    vs = wait_status(kube, namespace, "web", "endpoints gone",
                     lambda vs: vs["status"]["realServers"] == [])
    assert reason(vs) == "NoReadyEndpoints"
    kube.delete(service_path(namespace, "web"))
    wait_status(kube, namespace, "web", "Service gone",
                lambda vs: reason(vs) == "ServiceNotFound")
    wait_events(kube, namespace, "web", {("Warning", "ServiceNotFound"),
                                         ("Warning", "NoReadyEndpoints"),
                                         ("Warning", "NoDirectors")})


def test_endpoints_of_pods_from_kube_controller_manager(cluster, kube, controllers, namespace):
    """A Service with a selector: kube-controller-manager writes the EndpointSlices from the
    pods (no kubelet runs: the test binds the pods to a Node object and sets their status)."""
    node = f"lvs-node-{secrets.token_hex(3)}"
    kube.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                  "metadata": {"name": node}})
    pods = {"web-0": "10.2.0.1", "web-1": "10.2.0.2"}
    try:
        kube.create(service_path(namespace), service(namespace, "web", selector={"app": "web"}))
        kube.create(vs_path(namespace), virtual_server(namespace, "pods", vip="198.51.100.3",
                                                       service="web"))
        for name, ip in pods.items():
            pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod",
                                   "metadata": {"name": name, "namespace": namespace,
                                                "labels": {"app": "web"}},
                                   "spec": {"nodeName": node,
                                            "automountServiceAccountToken": False,
                                            "containers": [{"name": "web",
                                                            "image": "registry.invalid/web"}]}}
            # The namespace's default service account may not exist yet.
            def create(pod: dict[str, Any] = pod) -> Any:
                return kube.create(f"/api/v1/namespaces/{namespace}/pods", pod)
            wait_for(f"pod {name} created", create)
            kube.merge(f"/api/v1/namespaces/{namespace}/pods/{name}/status", {"status": {
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": "True"}]}})
        vs = wait_status(kube, namespace, "pods", "both pods",
                         lambda vs: reals(vs) == [("10.2.0.1", 1, True), ("10.2.0.2", 1, True)])
        assert [(r["pod"], r["node"]) for r in vs["status"]["realServers"]] == \
            [("web-0", node), ("web-1", node)]

        # Deleting a pod makes it terminating (no kubelet finishes it): weight 0, drained.
        kube.delete(f"/api/v1/namespaces/{namespace}/pods/web-1")
        wait_status(kube, namespace, "pods", "web-1 terminating",
                    lambda vs: reals(vs) == [("10.2.0.1", 1, True), ("10.2.0.2", 0, False)])
        kube.delete(f"/api/v1/namespaces/{namespace}/pods/web-1", grace=0)
        wait_status(kube, namespace, "pods", "web-1 gone",
                    lambda vs: reals(vs) == [("10.2.0.1", 1, True)])
    finally:
        for name in pods:
            kube.delete(f"/api/v1/namespaces/{namespace}/pods/{name}", grace=0)
        kube.delete(f"/api/v1/nodes/{node}")


def test_conflict_and_recovery(cluster, kube, controllers, namespace):
    # Two namespaces that share the VIP (the same sharing key), contesting one port.
    vip = "198.51.100.4"
    with module_namespace(cluster, "t-other") as other:
        kube.create(vs_path(other), virtual_server(other, "first", vip=vip, sharingKey="t",
                                                   addresses=[{"ip": "10.0.6.1"}]))
        wait_status(kube, other, "first", "resolved", lambda vs: reason(vs) == "Resolved")
        time.sleep(1.1)  # creation timestamps have whole seconds: make "first" older
        kube.create(vs_path(namespace), virtual_server(
            namespace, "second", vip=vip, ports=[443, 80], addresses=[{"ip": "10.0.6.2"}],
            sharingKey="t"))
        vs = wait_status(kube, namespace, "second", "conflict",
                         lambda vs: reason(vs, "Ready") == "Conflict")
        assert vs["status"]["realServers"] == []
        assert reason(vs, "Programmed") == "Conflict"
        message = condition(vs, "Ready")["message"]
        # The other namespace's object is not named to this one.
        assert (f"TCP {vip}:80 is already claimed by a VirtualServer of another namespace "
                "sharing this VIP") in message
        assert other not in message and "first" not in message
        assert ("Warning", "Conflict") in wait_for(
            "the Conflict event", lambda: events(kube, namespace, "second"))
        first = get(kube, other, "first")
        assert reals(first) == [("10.0.6.1", 1, True)] and reason(first) == "Resolved"

        # The older one lets go of port 80: the newer one takes over by itself.
        kube.merge(vs_path(other, "first"), {"spec": {"ports": [{"port": 8080}]}})
        vs = wait_status(kube, namespace, "second", "recovered",
                         lambda vs: reason(vs) == "Resolved")
        assert reals(vs) == [("10.0.6.2", 1, True)]
        # ... and gets no conflict back: "first" now claims 8080 only.
        kube.merge(vs_path(other, "first"), {"spec": {"ports": [{"port": 80}]}})
        wait_status(kube, namespace, "second", "conflict again",
                    lambda vs: reason(vs) == "Conflict")
        kube.delete(vs_path(other, "first"))
        wait_status(kube, namespace, "second", "recovered after deletion",
                    lambda vs: reals(vs) == [("10.0.6.2", 1, True)])


def _lax_crd() -> dict[str, Any]:
    """The CRD with no schema for spec: what an older CRD might have let through."""
    crd = yaml.safe_load(CRD.read_text())
    lax = copy.deepcopy(crd)
    schema = lax["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["spec"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                                    "description": "Anything (a test's lax copy)."}
    return dict(lax)


def test_invalid_object_gets_invalid_spec_and_disturbs_nothing(cluster, kube, controllers,
                                                               namespace):
    bad = virtual_server(namespace, "bad", vip="198.51.100.5", addresses=[{"ip": "10.0.7.1"}],
                         forwarding="Bogus")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(_lax_crd()))
    try:
        # The API server takes a moment to serve the new schema.
        wait_for("the lax CRD to accept the invalid object",
                 lambda: kube.create(vs_path(namespace), bad))
    finally:
        cluster.kubectl("apply", "-f", str(CRD))
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}")
    wait_for("the strict CRD back", lambda: cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False,
    ).returncode != 0)
    kube.create(vs_path(namespace), virtual_server(namespace, "good", vip="198.51.100.5",
                                                   addresses=[{"ip": "10.0.7.2"}]))
    vs = wait_status(kube, namespace, "bad", "InvalidSpec",
                     lambda vs: reason(vs, "Ready") == "InvalidSpec")
    message = condition(vs, "Ready")["message"]
    assert message.startswith("spec.forwarding: must be one of DirectRouting, Tunnel, NAT"), \
        message
    assert vs["status"]["realServers"] == [] and "ports" not in vs["status"]
    # The valid one with the same VIP:port is not in conflict with an invalid one.
    good = wait_status(kube, namespace, "good", "resolved",
                       lambda vs: reason(vs) == "Resolved")
    assert reals(good) == [("10.0.7.2", 1, True)]
    wait_events(kube, namespace, "bad", {("Warning", "InvalidSpec")})
    kube.delete(vs_path(namespace, "bad"))


def test_deletion_leaves_nothing_behind(cluster, kube, controllers, namespace):
    kube.create(vs_path(namespace), virtual_server(namespace, "gone", vip="198.51.100.6",
                                                   addresses=[{"ip": "10.0.8.1"}]))
    vs = wait_status(kube, namespace, "gone", "resolved", lambda vs: reason(vs) == "Resolved")
    meta = vs["metadata"]
    assert not meta.get("finalizers"), meta
    assert not [k for k in meta.get("annotations", {}) if "kopf" in k], meta
    started = time.monotonic()
    cluster.kubectl("delete", "lvs", "-n", namespace, "gone", "--wait=true", "--timeout=10s")
    assert time.monotonic() - started < 5
    time.sleep(1)
    assert "Traceback" not in leader(controllers).log()


def test_restart_writes_nothing_when_nothing_changed(cluster, kube, controllers, namespace):
    kube.create(service_path(namespace), service(namespace, "web"))
    kube.create(slice_path(namespace), endpoint_slice(namespace, "web-1", service="web",
                                                      endpoints=[endpoint("10.3.0.1")]))
    kube.create(vs_path(namespace), virtual_server(namespace, "svc", vip="198.51.100.7",
                                                   service="web"))
    kube.create(vs_path(namespace), virtual_server(namespace, "static", vip="198.51.100.8",
                                                   addresses=[{"ip": "10.3.0.9"}]))
    time.sleep(1.1)
    kube.create(vs_path(namespace), virtual_server(namespace, "loser", vip="198.51.100.8",
                                                   addresses=[{"ip": "10.3.0.8"}]))
    names = ("svc", "static", "loser")
    wait_status(kube, namespace, "svc", "resolved", lambda vs: reason(vs) == "Resolved")
    wait_status(kube, namespace, "loser", "conflict", lambda vs: reason(vs) == "Conflict")
    report(kube, namespace, "static", 1)
    wait_status(kube, namespace, "static", "ready",
                lambda vs: condition(vs, "Ready")["status"] == "True")
    time.sleep(1)  # let the last writes' echoes pass
    before = {n: get(kube, namespace, n)["metadata"]["resourceVersion"] for n in names}

    old = leader(controllers)
    old.stop()  # SIGTERM: it releases the Lease
    new = Controller(cluster, identity=f"{old.identity}-restarted", lease=old.lease,
                     log_dir=old.log_path.parent, lease_duration=LEASE_SECONDS).start()
    controllers.append(new)
    new.wait_leading(timeout=15)
    # Proof that it works through the objects: a new one gets its status.
    kube.create(vs_path(namespace), virtual_server(namespace, "after", vip="198.51.100.9",
                                                   addresses=[{"ip": "10.3.0.7"}]))
    wait_status(kube, namespace, "after", "resolved", lambda vs: reason(vs) == "Resolved")
    time.sleep(2)
    after = {n: get(kube, namespace, n)["metadata"]["resourceVersion"] for n in names}
    assert after == before
    assert [new.writes(namespace, n) for n in names] == [0, 0, 0], new.log()[-3000:]


def test_two_replicas_only_the_leader_acts(cluster, kube, controllers, namespace):
    active = leader(controllers)
    standby = Controller(cluster, identity="ctl-standby", lease=active.lease,
                         log_dir=active.log_path.parent, lease_duration=LEASE_SECONDS).start()
    controllers.append(standby)
    wait_for("the standby to start watching", lambda: "Initial authentication has finished"
             in standby.log(), timeout=30)
    time.sleep(2 * LEASE_SECONDS)  # long enough to take the Lease, were it allowed to
    assert active.holder() == active.identity and "leading" not in standby.log()

    kube.create(vs_path(namespace), virtual_server(namespace, "ha", vip="198.51.100.10",
                                                   addresses=[{"ip": "10.4.0.1"}]))
    wait_status(kube, namespace, "ha", "resolved", lambda vs: reason(vs) == "Resolved")
    time.sleep(0.5)
    assert (active.writes(namespace, "ha"), standby.writes(namespace, "ha")) == (1, 0)

    # The leader dies without letting go: the standby takes over when the Lease expires.
    active.stop(signal.SIGKILL)
    killed = time.monotonic()
    standby.wait_leading(timeout=5 * LEASE_SECONDS)
    took = time.monotonic() - killed
    assert took < 3 * LEASE_SECONDS, f"took over after {took:.1f} s"
    kube.merge(vs_path(namespace, "ha"), {"spec": {"backend": {"addresses": [
        {"ip": "10.4.0.1"}, {"ip": "10.4.0.2"}]}}})
    vs = wait_status(kube, namespace, "ha", "updated by the new leader",
                     lambda vs: len(vs["status"]["realServers"]) == 2)
    assert reals(vs) == [("10.4.0.1", 1, True), ("10.4.0.2", 1, True)]
    assert standby.writes(namespace, "ha") == 1


def test_controller_logs_are_clean(controllers):
    # kopf's watch retries (429 while the API server re-initialises the CRD's storage) are
    # expected; a handler or reconcile failure is not.
    for replica in controllers:
        log = replica.log()
        for bad in ("Traceback", "ERROR lvs_operator", "failed with an exception"):
            assert bad not in log, f"{replica.identity} ({replica.log_path}):\n{log[-4000:]}"


def claim_path(vip: str) -> str:
    return f"/apis/lvs.dev/v1alpha1/vipclaims/{vip}"


def test_vip_pools_and_claims(cluster, kube, controllers):
    """Deny by default; the first namespace granted a VIP owns it (a VIPClaim); another
    namespace's VirtualServer on it is refused, and stays refused when the owner deletes
    and re-creates its VirtualServer."""
    vip = "198.51.100.20"
    pool = f"t-pool-{secrets.token_hex(3)}"
    with module_namespace(cluster, "t-own") as own, module_namespace(cluster, "t-sq") as squat:
        for ns in (own, squat):  # out of the tests' open pool
            cluster.kubectl("label", "namespace", ns, f"{scenarios.CLOSED_LABEL}=true")
        kube.create(vs_path(own), virtual_server(own, "web", vip=vip,
                                                 addresses=[{"ip": "10.0.9.1"}]))
        vs = wait_status(kube, own, "web", "VIPNotAllowed",
                         lambda vs: reason(vs, "Ready") == "VIPNotAllowed")
        assert vs["status"]["realServers"] == []
        assert condition(vs, "Ready")["message"].startswith(
            f"spec.vip: namespace {own} may use no VIP pool, so it may have no VIP")
        assert _gone(kube, claim_path(vip))
        try:
            kube.create("/apis/lvs.dev/v1alpha1/vippools", {
                "apiVersion": "lvs.dev/v1alpha1", "kind": "VIPPool",
                "metadata": {"name": pool},
                "spec": {"addresses": ["198.51.100.16/28"], "namespaces": [own, squat],
                         "backendAddresses": ["10.0.9.0/24"]}})
            vs = wait_status(kube, own, "web", "admitted", lambda vs: reason(vs) == "Resolved")
            assert reals(vs) == [("10.0.9.1", 1, True)]
            claim = wait_for("the VIPClaim", lambda: _found(kube, claim_path(vip)))
            assert (claim["spec"]["namespace"], claim["spec"]["pool"]) == (own, pool)

            # A squatter of another namespace, on another port.
            kube.create(vs_path(squat), virtual_server(squat, "grab", vip=vip, ports=[443],
                                                       addresses=[{"ip": "10.0.9.2"}]))
            vs = wait_status(kube, squat, "grab", "VIPInUse",
                             lambda vs: reason(vs, "Ready") == "VIPInUse")
            message = condition(vs, "Ready")["message"]
            assert message.startswith(f"spec.vip: {vip} belongs to another namespace")
            assert own not in message and "web" not in message
            assert vs["status"]["realServers"] == []
            wait_events(kube, squat, "grab", {("Warning", "VIPInUse")})

            # The owner deletes and re-creates its VirtualServer: the squatter gets nothing.
            kube.delete(vs_path(own, "web"))
            wait_for("the claim released", lambda: _gone(kube, claim_path(vip)))
            vs = wait_status(kube, squat, "grab", "still refused",
                             lambda vs: "delete and re-create" in
                             condition(vs, "Ready")["message"])
            assert vs["status"]["realServers"] == []
            kube.create(vs_path(own), virtual_server(own, "web", vip=vip,
                                                     addresses=[{"ip": "10.0.9.1"}]))
            wait_status(kube, own, "web", "back", lambda vs: reason(vs) == "Resolved")
            claim = wait_for("the VIPClaim again", lambda: _found(kube, claim_path(vip)))
            assert claim["spec"]["namespace"] == own
            assert reason(get(kube, squat, "grab"), "Ready") == "VIPInUse"

            # An edit of spec.vip is refused by the API server (immutable).
            with pytest.raises(ApiError) as refused:
                kube.merge(vs_path(own, "web"), {"spec": {"vip": "198.51.100.21"}})
            assert refused.value.status == 422
            assert "spec.vip: Invalid value" in str(refused.value) and "immutable" in str(
                refused.value)
        finally:
            kube.delete(f"/apis/lvs.dev/v1alpha1/vippools/{pool}")


def _found(kube: Kube, path: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = kube.get(path)
    except ApiError as error:
        if error.status == 404:
            return None
        raise
    return found


def _gone(kube: Kube, path: str) -> bool:
    return _found(kube, path) is None
