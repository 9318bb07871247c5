"""`lvs-operator controller --webhook`: the controller process serves the real-server Pod
webhook and keeps the webhook configuration's caBundle, and warns about pods that were created
before their VirtualServer (the webhook only ever sees new pods).

The webhook's decisions are tested in tests/unit/test_admission.py and tests/cluster/
test_webhook.py; this module checks the wiring of the command line, the webhook server, the
caBundle upkeep and the controller's Event. The local API server has no kube-proxy, so the
configuration reaches the controller by URL on 127.0.0.1, not through a Service.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from controller_support import (
    Controller,
    Kube,
    service,
    service_path,
    virtual_server,
    vs_path,
    wait_for,
)
from controlplane import ControlPlane
from crd_support import install_crd

from lvs_operator.controller import admission

IMAGE = "registry.example/lvs-operator:test"
CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pod(namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "nginx"}]}}


def _webhook_controller(cluster: ControlPlane, identity: str, configuration: str, port: int,
                        log_dir: Any) -> Controller:
    """Start a controller that serves the Pod webhook on `port` and keeps `configuration`'s
    caBundle."""
    return Controller(cluster, identity=identity, lease=f"lvs-test-{secrets.token_hex(3)}",
                      log_dir=log_dir, extra=(
                          "--webhook", "--webhook-port", str(port),
                          "--webhook-configuration", configuration,
                          "--webhook-extra-san", "127.0.0.1",
                          "--realserver-image", IMAGE)).start()


@pytest.fixture
def configuration(cluster: ControlPlane, namespace: str) -> Iterator[tuple[str, int]]:
    """A webhook configuration for pods of `namespace` only, pointing at a free port, with
    no caBundle yet (the controller fills it in); deleted afterwards, since it is cluster-wide.
    """
    kube = Kube(cluster)
    name, port = f"lvs-test-{secrets.token_hex(3)}", _free_port()
    kube.create(CONFIGURATIONS, admission.webhook_configuration(
        name, admission.url_client_config(f"https://127.0.0.1:{port}"),
        extra_namespace_expressions=[{"key": "kubernetes.io/metadata.name",
                                      "operator": "In", "values": [namespace]}]))
    try:
        yield name, port
    finally:
        kube.delete(f"{CONFIGURATIONS}/{name}")


def test_controller_serves_the_webhook_and_names_pods_that_lack_the_setup(
        cluster, namespace, configuration, tmp_path):
    install_crd(cluster)
    kube = Kube(cluster)
    name, port = configuration
    kube.create(service_path(namespace), service(namespace, "web", selector={"app": "web"}))
    # Before any webhook serves: failurePolicy Ignore lets the pod in, without the setup.
    kube.create(f"/api/v1/namespaces/{namespace}/pods", _pod(namespace, "early"))
    kube.create(vs_path(namespace), virtual_server(namespace, "web", vip="192.0.2.80",
                                                   service="web"))
    controller = _webhook_controller(cluster, "ctl-hook", name, port, tmp_path)
    try:
        controller.wait_leading()

        def ca_bundle() -> str | None:
            hooks = kube.get(f"{CONFIGURATIONS}/{name}")["webhooks"]
            return hooks[0]["clientConfig"].get("caBundle") or None
        wait_for("the controller to set the caBundle", ca_bundle, timeout=30)

        def injected_pod() -> dict[str, Any] | None:
            # The API server may still hold the configuration without the caBundle for a
            # moment (its informer): such a pod is admitted unchanged, so retry.
            pod_name = f"late-{secrets.token_hex(2)}"
            pod = kube.create(f"/api/v1/namespaces/{namespace}/pods", _pod(namespace, pod_name))
            return pod if pod["spec"].get("initContainers") else None
        pod = wait_for("a pod created with the init container", injected_pod, timeout=30)
        (init,) = pod["spec"]["initContainers"]
        assert init["image"] == IMAGE
        command = init["command"]
        assert command[command.index("--vip") + 1] == "192.0.2.80", command
        assert command[command.index("--mode") + 1] == "dr", command
        assert pod["metadata"]["labels"][admission.LABEL] == admission.INJECTED

        def warning() -> str | None:
            items = kube.get(f"/apis/events.k8s.io/v1/namespaces/{namespace}/events")["items"]
            notes = [e.get("note", "") for e in items
                     if e["reason"] == "RealServerSetupMissing" and e["type"] == "Warning"]
            return notes[0] if notes else None
        note = wait_for("the Event naming the pod that lacks the setup", warning, timeout=30)
        assert "early" in note and "restart" in note
    finally:
        controller.stop()
        cluster.kubectl("delete", "lease", "-n", "default", controller.lease,
                        "--ignore-not-found")


def test_pods_behind_a_loadbalancer_service_get_the_setup(cluster, namespace, configuration,
                                                          tmp_path):
    """The VirtualServer generated for a Tunnel LoadBalancer Service is a VirtualServer like
    any: the Service's new pods get realserver-init for its address."""
    install_crd(cluster)
    kube = Kube(cluster)
    name, port = configuration
    vip = "192.0.2.81"
    lb = service(namespace, "shop", selector={"app": "shop"})
    lb["metadata"]["annotations"] = {"lvs.dev/forwarding": "Tunnel", "lvs.dev/vip": vip}
    lb["spec"].update({"type": "LoadBalancer", "loadBalancerClass": "lvs.dev/ipvs",
                       "allocateLoadBalancerNodePorts": False})
    kube.create(service_path(namespace), lb)
    controller = _webhook_controller(cluster, "ctl-lb-hook", name, port, tmp_path)
    try:
        controller.wait_leading()
        wait_for("the generated VirtualServer",
                 lambda: kube.get(vs_path(namespace))["items"] or None, timeout=30)

        def injected_pod() -> dict[str, Any] | None:
            pod = _pod(namespace, f"shop-{secrets.token_hex(2)}")
            pod["metadata"]["labels"] = {"app": "shop"}
            created: dict[str, Any] = kube.create(f"/api/v1/namespaces/{namespace}/pods", pod)
            return created if created["spec"].get("initContainers") else None
        pod = wait_for("a pod of the Service created with the init container", injected_pod,
                       timeout=30)
        (init,) = pod["spec"]["initContainers"]
        command = init["command"]
        assert command[command.index("--vip") + 1] == vip, command
        assert command[command.index("--mode") + 1] == "tunnel", command
    finally:
        controller.stop()
        cluster.kubectl("delete", "lease", "-n", "default", controller.lease,
                        "--ignore-not-found")
