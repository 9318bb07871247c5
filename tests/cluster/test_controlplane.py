"""Smoke tests proving the cluster tier is real: a serving apiserver enforcing RBAC, and a
controller manager whose controllers reconcile (deployments, endpoint slices, garbage
collection)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
from controlplane import ControlPlane, KubectlError

T = TypeVar("T")


def eventually(what: str, probe: Callable[[], T | None], timeout: float = 30) -> T:
    """Return ``probe()``'s first truthy result, polling for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.3)


def items(cluster: ControlPlane, *args: str) -> list[dict[str, object]]:
    """``kubectl get ARGS -o json``'s items."""
    out = cluster.kubectl("get", *args, "-o", "json").stdout
    found: list[dict[str, object]] = json.loads(out)["items"]
    return found


def test_apiserver_ready_and_versioned(cluster: ControlPlane):
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    # build-k8s sets the version ldflags: without them helm's kubeVersion checks see v0.0.0.
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    assert version["clientVersion"]["gitVersion"] == version["serverVersion"]["gitVersion"]
    assert cluster.server.startswith("https://127.0.0.1:")


def test_kubectl_error_names_command_and_stderr(cluster: ControlPlane):
    with pytest.raises(KubectlError) as err:
        cluster.kubectl("get", "configmap", "no-such-configmap", "-n", "default")
    message = str(err.value)
    assert "kubectl get configmap no-such-configmap" in message
    assert "exited with 1" in message
    assert "NotFound" in message or "not found" in message


def test_rbac_is_enforced(cluster: ControlPlane):
    nobody = "system:serviceaccount:default:nobody"
    r = cluster.kubectl("auth", "can-i", "list", "secrets", "-n", "default", "--as", nobody,
                        check=False)
    assert (r.returncode, r.stdout.strip()) == (1, "no")
    denied = cluster.kubectl("get", "secrets", "-n", "default", "--as", nobody, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr
    # ... while the admin credentials (system:masters) may do anything.
    assert cluster.kubectl("auth", "can-i", "*", "*").stdout.strip() == "yes"


def test_controller_manager_reconciles_and_collects_garbage(cluster: ControlPlane,
                                                            namespace: str):
    cluster.kubectl("create", "deployment", "web", "--image=registry.invalid/web:1",
                    "--replicas=2", "-n", namespace)
    deployment_uid = cluster.kubectl("get", "deployment", "web", "-n", namespace,
                                     "-o", "jsonpath={.metadata.uid}").stdout

    def replicasets() -> list[dict[str, object]]:
        return items(cluster, "replicasets", "-n", namespace)

    # The deployment controller makes a ReplicaSet owned by the Deployment; the replicaset
    # controller makes its Pods (they stay Pending: there are no nodes).
    (rs,) = eventually("a ReplicaSet of the Deployment", replicasets)
    meta = rs["metadata"]
    assert isinstance(meta, dict)
    assert [o["uid"] for o in meta["ownerReferences"]] == [deployment_uid]
    eventually("2 Pods of the ReplicaSet",
               lambda: len(items(cluster, "pods", "-n", namespace)) == 2)

    # Garbage collection: deleting the owner (orphans not asked for) removes what it owns.
    cluster.kubectl("delete", "deployment", "web", "-n", namespace, "--wait=false")
    eventually("the ReplicaSet and its Pods to be collected",
               lambda: not replicasets() and not items(cluster, "pods", "-n", namespace))


def test_endpointslice_controller_serves_a_service(cluster: ControlPlane, namespace: str):
    cluster.kubectl("create", "service", "clusterip", "web", "--tcp=80:8080", "-n", namespace)
    slices = eventually(
        "an EndpointSlice for the Service",
        lambda: items(cluster, "endpointslices", "-n", namespace,
                      "-l", "kubernetes.io/service-name=web"))
    assert len(slices) == 1
    ip = cluster.kubectl("get", "service", "web", "-n", namespace,
                         "-o", "jsonpath={.spec.clusterIP}").stdout
    assert ip.startswith("10.96.")
