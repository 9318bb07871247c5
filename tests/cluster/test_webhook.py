"""The real-server Pod webhook against the real API server.

The webhook runs in-process: each `Replica` is a kopf operator (`kopf.operator`, in a thread
with its own event loop and registry) configured only by `webhook.configure`, as the
controller configures it. The API server calls it when pods are created; only the stored
objects are checked (no kubelet: pods never run).

The MutatingWebhookConfiguration uses a `url:` client config (https://127.0.0.1:PORT) with
the CA bundle, not the `service:` config the Helm chart uses: this control plane has no
kube-proxy and no pod network, so a Service's ClusterIP leads nowhere. Everything else (TLS
checked against the caBundle, the admission review, the JSONPatch, objectSelector,
failurePolicy) is the API server's real behaviour. The configuration is cluster-wide: it is
deleted at the end of the module, so that no later test's pod creation calls a dead server.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from controlplane import ControlPlane, free_ports
from crd_support import install_crd, module_namespace

from lvs_operator.controller import admission, webhook

IMAGE = "registry.invalid/lvs-operator:test"
TLS_SECRET = "lvs-webhook-tls"
PEERING_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "clusterkopfpeerings.kopf.dev"},
    "spec": {
        "scope": "Cluster",
        "group": "kopf.dev",
        "names": {"kind": "ClusterKopfPeering", "plural": "clusterkopfpeerings",
                  "singular": "clusterkopfpeering"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
            "openAPIV3Schema": {"type": "object", "properties": {
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}],
    },
}


class LogRecords(logging.Handler):
    """Collects the messages of kopf's loggers (the replicas run in this process)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def wait_for(self, text: str, *, count: int = 1, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while sum(text in m for m in list(self.messages)) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"fewer than {count} log messages with {text!r} in {timeout} s")
            time.sleep(0.1)


class Replica:
    """One controller replica serving the webhook: a kopf operator in a thread."""

    def __init__(self, cluster: ControlPlane, *, peering: str | None = None,
                 **options: Any) -> None:
        (self.port,) = free_ports(1)
        self.registry = kopf.OperatorRegistry()
        self.settings = kopf.OperatorSettings()
        self.settings.posting.enabled = False
        self.peering = peering

        @kopf.on.login(registry=self.registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(
                server=cluster.server, ca_path=str(cluster.ca_cert),
                certificate_path=str(cluster.admin_cert),
                private_key_path=str(cluster.admin_key))

        # What a controller replica also does: watch VirtualServers. A frozen replica's
        # watch streams are paused, so this sees nothing until it resumes.
        self.seen: list[str] = []

        @kopf.on.event("lvs.dev", "v1alpha1", "virtualservers", registry=self.registry)
        def seen(name: str, **_: Any) -> None:
            self.seen.append(name)

        self.server = webhook.configure(
            self.settings, registry=self.registry, image=IMAGE, host="127.0.0.1",
            port=self.port, extra_sans=["127.0.0.1"], **options)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"replica-{self.port}")
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _run(self) -> None:
        try:
            kopf.run(registry=self.registry, settings=self.settings, clusterwide=True,
                     standalone=self.peering is None, peering_name=self.peering,
                     stop_flag=self._stop)
        except BaseException as e:  # reported by start()/the test, not lost in the thread
            self.error = e

    def start(self, timeout: float = 60) -> Replica:
        """Start the operator; returns once the webhook accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started.is_set() or not self._listening():
            if self.error is not None or not self._thread.is_alive():
                pytest.fail(f"replica on port {self.port} stopped: {self.error!r}")
            if time.monotonic() > deadline:
                pytest.fail(f"replica on port {self.port} not serving after {timeout} s")
            time.sleep(0.1)
        return self

    def _listening(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port),
                                                                    timeout=1):
            return True
        return False

    def stop(self) -> None:
        self._stop.set()
        if not self._thread.is_alive():
            return
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the kopf operator did not stop within 30 s"


@contextlib.contextmanager
def replica(cluster: ControlPlane, **options: Any) -> Iterator[Replica]:
    r = Replica(cluster, **options).start()
    try:
        yield r
    finally:
        r.stop()


def apply(cluster: ControlPlane, *documents: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": documents}))


def get(cluster: ControlPlane, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cluster.kubectl("get", "-o", "json", *args).stdout)
    return result


def a_pod(name: str, labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}],
                     "automountServiceAccountToken": False, **spec}}


def service(name: str, app: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": app}, "ports": [{"name": "http", "port": 80}]}}


def virtualserver(name: str, vip: str, forwarding: str, backend: str) -> dict[str, Any]:
    return {"apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualServer",
            "metadata": {"name": name},
            "spec": {"vip": vip, "ports": [{"port": 80, "protocol": "TCP"}],
                     "forwarding": forwarding,
                     "backend": {"service": {"name": backend, "port": "http"}}}}


def ours(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in pod["spec"].get("initContainers", [])
            if c["name"].startswith(admission.CONTAINER_PREFIX)]


def wait_until(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def logs() -> Iterator[LogRecords]:
    handler = LogRecords()
    kopf_logger = logging.getLogger("kopf")
    level = kopf_logger.level
    kopf_logger.setLevel(logging.DEBUG)
    kopf_logger.addHandler(handler)
    try:
        yield handler
    finally:
        kopf_logger.removeHandler(handler)
        kopf_logger.setLevel(level)


@pytest.fixture(scope="module")
def ns(cluster: ControlPlane) -> Iterator[str]:
    install_crd(cluster)
    # The replicas' own API reads find the cluster the way a controller outside one would.
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    try:
        with module_namespace(cluster, "webhook") as name:
            # Pods need the namespace's default service account (kube-controller-manager's).
            wait_until("the default service account", lambda: cluster.kubectl(
                "get", "serviceaccount", "default", "-n", name, check=False).returncode == 0)
            apply(cluster, *[dict(d, metadata={**d["metadata"], "namespace": name}) for d in (
                service("web", "web"), virtualserver("web-dr", "192.0.2.10", "DirectRouting",
                                                     "web"),
                service("api", "api"), virtualserver("api-nat", "192.0.2.20", "NAT", "api"),
                service("tun", "tun"), virtualserver("tun", "198.51.100.7", "Tunnel", "tun"),
                virtualserver("tun-dr", "192.0.2.30", "DirectRouting", "tun"),
            )])
            yield name
    finally:
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old


class WebhookConfiguration:
    """The test's MutatingWebhookConfiguration (cluster-wide; deleted at the end)."""

    def __init__(self, cluster: ControlPlane, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.name = f"lvs-test-{secrets.token_hex(3)}"

    def point_at(self, replica: Replica, *, ca: bytes | None = None,
                 twice: bool = False) -> dict[str, Any]:
        """Send this namespace's pod creations to `replica` (caBundle `ca` if given)."""
        config = admission.webhook_configuration(
            self.name, admission.url_client_config(replica.url, ca),
            # Only this test's namespace: other tests' pods never wait for it.
            extra_namespace_expressions=[{"key": "kubernetes.io/metadata.name",
                                          "operator": "In", "values": [self.namespace]}])
        if twice:
            # A second webhook calling the same server, without the objectSelector: the
            # handler itself sees the pod is prepared (as on a reinvocation).
            again = json.loads(json.dumps(config["webhooks"][0]))
            again["name"] = "again.realserver-init.lvs.dev"
            del again["objectSelector"]
            config["webhooks"].append(again)
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                             input=json.dumps(config))
        return config

    def get(self) -> dict[str, Any]:
        return get(self.cluster, "mutatingwebhookconfiguration", self.name)

    def delete(self) -> None:
        self.cluster.kubectl("delete", "mutatingwebhookconfiguration", self.name,
                             "--ignore-not-found", check=False)


@pytest.fixture(scope="module")
def configuration(cluster: ControlPlane, ns: str) -> Iterator[WebhookConfiguration]:
    config = WebhookConfiguration(cluster, ns)
    try:
        yield config
    finally:
        config.delete()


def dry_run(cluster: ControlPlane, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    """Return the pod as admission leaves it, without storing it (admission runs all the same)."""
    out = cluster.kubectl("create", "--dry-run=server", "-o", "json", "-n", namespace,
                          "-f", "-", input=json.dumps(pod)).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def wait_effective(cluster: ControlPlane, namespace: str, timeout: float = 30) -> None:
    """Wait until the API server calls the (re)configured webhook successfully."""
    probe = a_pod("probe", {"app": "web"})
    wait_until("the API server to call the webhook",
               lambda: bool(ours(dry_run(cluster, namespace, probe))), timeout)


def create(cluster: ControlPlane, namespace: str,
           pod: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Create `pod`; return it as stored and kubectl's stderr (the admission warnings)."""
    done = cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod))
    return get(cluster, "pod", "-n", namespace, pod["metadata"]["name"]), done.stderr


def test_api_server_calls_the_webhook_and_stores_the_setup(cluster, ns, configuration, logs):
    with replica(cluster, namespace=ns) as r:
        configuration.point_at(r, ca=r.server.ca_pem, twice=True)
        wait_effective(cluster, ns)

        stored, _ = create(cluster, ns, a_pod("web-1", {"app": "web"}))
        (container,) = ours(stored)
        assert container["name"] == "lvs-realserver-init-dr"
        assert container["image"] == IMAGE
        assert container["command"] == ["lvs-operator", "realserver-init", "--mode", "dr",
                                        "--vip", "192.0.2.10"]
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"],
                                                                "add": ["NET_ADMIN"]}
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert stored["metadata"]["labels"] == {"app": "web", admission.LABEL: "injected"}
        annotations = stored["metadata"]["annotations"]
        assert json.loads(annotations[admission.VIPS_ANNOTATION]) == {"dr": ["192.0.2.10"]}
        assert annotations[admission.VIRTUALSERVERS_ANNOTATION] == "web-dr"
        # The second webhook of the configuration was called too, and added nothing.
        logs.wait_for("already prepared")

        # DR and Tunnel VirtualServers on one Service: one init container per mode.
        stored, _ = create(cluster, ns, a_pod("tun-1", {"app": "tun"}))
        assert [(c["name"], c["command"][3:]) for c in ours(stored)] == [
            ("lvs-realserver-init-dr", ["dr", "--vip", "192.0.2.30"]),
            ("lvs-realserver-init-tunnel", ["tunnel", "--vip", "198.51.100.7"])]

        # A NAT VirtualServer's pod is left untouched.
        stored, _ = create(cluster, ns, a_pod("api-1", {"app": "api"}))
        assert "initContainers" not in stored["spec"]
        assert admission.LABEL not in stored["metadata"]["labels"]
        assert admission.VIPS_ANNOTATION not in stored["metadata"].get("annotations", {})

        # A pod that already has our container (a copy without the label) gets no second one.
        copy = a_pod("web-copy", {"app": "web"}, initContainers=[
            admission.init_container("dr", ["192.0.2.10"], image=IMAGE)])
        stored, _ = create(cluster, ns, copy)
        assert len(ours(stored)) == 1
        assert admission.LABEL not in stored["metadata"]["labels"]

        # A hostNetwork pod is left alone, and kubectl shows the creator why.
        stored, stderr = create(cluster, ns, a_pod("web-host", {"app": "web"},
                                                   hostNetwork=True))
        assert "initContainers" not in stored["spec"]
        assert "Warning: lvs-operator: pod uses hostNetwork" in stderr

        # Pods a controller creates (generateName, no name at admission) get it too.
        apply(cluster, {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web", "from": "deploy"}},
                                  "spec": a_pod("x", {})["spec"]}}})

        def deployment_pods() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = get(cluster, "pods", "-n", ns, "-l",
                                              "from=deploy")["items"]
            return items

        wait_until("the Deployment's two pods", lambda: len(deployment_pods()) == 2, 60)
        for stored in deployment_pods():
            assert [c["name"] for c in ours(stored)] == ["lvs-realserver-init-dr"], \
                stored["metadata"]["name"]

        # A pod that existed before its VirtualServer lacks the setup: the controller's
        # function names it (and only it: the copy has our container, the hostNetwork pod
        # cannot be helped by a restart).
        create(cluster, ns, a_pod("late-1", {"app": "web", "tier": "late"}))
        late = service("late", "web")
        late["spec"]["selector"]["tier"] = "late"
        apply(cluster, dict(late, metadata={"name": "late", "namespace": ns}),
              dict(virtualserver("late-dr", "192.0.2.40", "DirectRouting", "late"),
                   metadata={"name": "late-dr", "namespace": ns}))
        vs = get(cluster, "virtualserver", "-n", ns, "late-dr")
        selector = admission.service_selector(get(cluster, "service", "-n", ns, "late"))
        assert selector == {"app": "web", "tier": "late"}
        pods = get(cluster, "pods", "-n", ns, "-l", admission.label_selector(selector))
        assert admission.pods_lacking_setup(vs, late, pods["items"]) == ["late-1"]
        web_pods = get(cluster, "pods", "-n", ns, "-l", "app=web,tier!=late")["items"]
        assert admission.pods_lacking_setup(get(cluster, "virtualserver", "-n", ns, "web-dr"),
                                            service("web", "web"), web_pods) == []

    # The server is gone; the configuration still points at it: pods are still created,
    # at once (failurePolicy Ignore), without the setup.
    started = time.monotonic()
    stored, _ = create(cluster, ns, a_pod("web-down", {"app": "web"}))
    assert time.monotonic() - started < 10
    assert "initContainers" not in stored["spec"]
    cluster.kubectl("delete", "deployment", "web", "-n", ns, "--wait=false")


def test_replicas_share_the_secret_and_a_frozen_replica_answers(cluster, ns, configuration,
                                                                logs):
    # A peer of a higher priority, alive: both replicas freeze (as non-leaders would).
    peering = f"lvs-test-{secrets.token_hex(3)}"
    now = datetime.datetime.now(datetime.UTC).isoformat()
    apply(cluster, PEERING_CRD)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/clusterkopfpeerings.kopf.dev")
    apply(cluster, {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
                    "metadata": {"name": peering},
                    "status": {"the-leader": {"priority": 100, "lifetime": 600,
                                              "lastseen": now}}})
    cluster.kubectl("delete", "secret", TLS_SECRET, "-n", ns, "--ignore-not-found")
    options = {"namespace": ns, "service_name": "lvs-webhook", "secret_name": TLS_SECRET,
               "configuration_name": configuration.name, "peering": peering}
    first, second = Replica(cluster, **options), Replica(cluster, **options)
    configuration.point_at(first)  # no caBundle: the replicas set it when they start
    try:
        first.start()
        second.start()
        # Mandatory peering starts paused; the peer of a higher priority keeps it so.
        logs.wait_for(f"Pausing the watch-stream for virtualservers.v1alpha1.lvs.dev "
                      f"cluster-wide (blockers: {peering}", count=2)

        # One CA for both, kept in the Secret, published as the caBundle.
        assert first.server.ca_pem is not None
        assert first.server.ca_pem == second.server.ca_pem
        secret = get(cluster, "secret", "-n", ns, TLS_SECRET)
        assert secret["type"] == "kubernetes.io/tls"
        assert base64.b64decode(secret["data"]["ca.crt"]) == first.server.ca_pem
        material = webhook.TLSMaterial.from_secret(secret)
        assert material is not None
        assert {f"lvs-webhook.{ns}.svc", "127.0.0.1"} <= material.names()
        (published,) = configuration.get()["webhooks"]
        assert base64.b64decode(published["clientConfig"]["caBundle"]) == first.server.ca_pem

        # The frozen first replica answers.
        wait_effective(cluster, ns)
        stored, _ = create(cluster, ns, a_pod("frozen-1", {"app": "web"}))
        assert [c["name"] for c in ours(stored)] == ["lvs-realserver-init-dr"]

        # So does the second, with the same CA (the first is gone: only it can answer).
        first.stop()
        configuration.point_at(second, ca=first.server.ca_pem)
        wait_effective(cluster, ns)
        stored, _ = create(cluster, ns, a_pod("frozen-2", {"app": "web"}))
        assert [c["name"] for c in ours(stored)] == ["lvs-realserver-init-dr"]

        # Frozen all along: neither replica's watch handler saw a VirtualServer. Once the
        # leader is gone, the remaining replica resumes and sees them (so the check above
        # is not vacuous).
        assert first.seen == second.seen == []
        cluster.kubectl("patch", "clusterkopfpeering", peering, "--type=merge",
                        "-p", json.dumps({"status": {"the-leader": None}}))
        wait_until("the last replica to resume and see the VirtualServers",
                   lambda: "web-dr" in second.seen)
    finally:
        for r in (first, second):
            r.stop()
        cluster.kubectl("delete", "clusterkopfpeering", peering, "--ignore-not-found",
                        check=False)


def test_certificate_from_a_mounted_secret(cluster, ns, configuration, tmp_path: Path):
    """cert-manager's layout (tls.crt, tls.key, ca.crt in a folder) is served as it is."""
    material = webhook.generate_tls(["127.0.0.1"])
    material.write(tmp_path)
    with replica(cluster, namespace=ns, cert_dir=tmp_path) as r:
        assert r.server.ca_pem == material.ca_pem
        configuration.point_at(r, ca=material.ca_pem)
        wait_effective(cluster, ns)
    configuration.delete()


def test_tls_material_checks():
    names = webhook.service_names("lvs-webhook", "lvs-system")
    assert names[2] == "lvs-webhook.lvs-system.svc"
    material = webhook.generate_tls(names)
    assert material.usable_for(names)
    assert not material.usable_for([*names, "other.example"])
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3650 - 29)
    assert not material.usable_for(names, now=later)  # renewed within 30 days of the end
    other = webhook.generate_tls(names)
    mismatched = webhook.TLSMaterial(material.ca_pem, material.cert_pem, other.key_pem)
    assert not mismatched.usable_for(names)
    secret = {"data": material.secret_data()}
    assert webhook.TLSMaterial.from_secret(secret) == material
    assert webhook.TLSMaterial.from_secret({"data": {"tls.crt": "x"}}) is None
    with pytest.raises(ValueError):
        webhook.generate_tls([])
