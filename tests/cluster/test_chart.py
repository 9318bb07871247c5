"""The Helm chart (charts/lvs-operator) with the real helm and the real API server.

Rendering: `helm lint`; the agent is not privileged and adds only NET_ADMIN and NET_RAW; the
controller adds no capability and runs as non-root on a read-only root; a typo in values is
refused by values.schema.json; the chart's CRD copy equals crds/; the webhook configurations
are the ones `admission.webhook_configuration` and `validation.webhook_configuration` build;
the optional objects appear only when asked for.

Installed (`helm install` into the real API server; no kubelet, so no pod runs): every object
of the release exists and the pods of the controller pass admission. Then the RBAC is proven by
use: `lvs-operator controller`, run with the chart's arguments and a token of the chart's
controller ServiceAccount (not the admin), takes its Lease, generates the webhook Secret, sets
the caBundle of both webhook configurations, answers the VirtualServer webhook (its reads of
the pools, the Namespace and a VIPClaim: an allowed VirtualServer, and one refused for the VIP
it claimed for another namespace) and resolves a VirtualServer; the agent's calls (list and
watch VirtualServers and its Node, its status entry, its Lease, an Event) are made with a
token of the agent's ServiceAccount bound to a Pod on a Node (as the kubelet's projected token
is: the policies of agent-policy.yaml refuse an agent's writes without one), which then
reports the VirtualServer programmed, so it becomes Ready. Finally `helm uninstall` leaves no
workload behind (the CRD stays, as Helm does).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from controller_support import ApiError, Kube, condition, virtual_server, vs_path, wait_for
from controlplane import ControlPlane
from crd_support import CRD_NAME, CRD_NAMES, ROOT, install_crd, module_namespace

from lvs_operator.agent import lease as agent_lease
from lvs_operator.agent import report as agent_report
from lvs_operator.controller import admission, validation
from lvs_operator.kube import client as agent_kube
from lvs_operator.kube import events as kube_events
from lvs_operator.kube import lease as kube_lease

CHART = ROOT / "charts" / "lvs-operator"
VALIDATING = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
CLAIMS = "/apis/lvs.dev/v1alpha1/vipclaims"
IMAGE = "registry.example/lvs-operator:test"
AGENT_CAPABILITIES = ["NET_ADMIN", "NET_RAW"]


# --- helpers ---------------------------------------------------------------------------------

def helm(cluster: ControlPlane, *args: str, check: bool = True,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the Go-built helm with the control plane's environment."""
    result = subprocess.run([str(cluster.bin / "helm"), *args], capture_output=True, text=True,
                            env=cluster.env, timeout=timeout, check=False,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stderr}{result.stdout[-2000:]}")
    return result


def render(cluster: ControlPlane, *sets: str, release: str = "lvs",
           namespace: str = "lvs-system", set_json: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Return the objects `helm template` renders (CRDs included) with `--set` values and
    `--set-json` ones (helm's --set turns 0.05 into a string; --set-json keeps a number)."""
    args = ["template", release, str(CHART), "--namespace", namespace, "--include-crds",
            "--set", f"image.repository={IMAGE.rsplit(':', 1)[0]}",
            "--set", f"image.tag={IMAGE.rsplit(':', 1)[1]}"]
    for value in sets:
        args += ["--set", value]
    for value in set_json:
        args += ["--set-json", value]
    out = helm(cluster, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """Return the one object of `kind` (and `name`) among `objects`."""
    found = [o for o in objects if o["kind"] == kind
             and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def container(workload: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """Return the workload's container `name`, or its only container."""
    containers = workload["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if name is None or c["name"] == name]
    assert len(found) == 1, f"expected one container {name or ''}, got {len(found)}"
    result: dict[str, Any] = found[0]
    return result


def field_env(spec_container: dict[str, Any]) -> dict[str, str]:
    """Return the container's downward-API variables: name -> fieldPath."""
    return {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
            for e in spec_container.get("env", []) if "valueFrom" in e}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- rendering -------------------------------------------------------------------------------

def test_lint(cluster: ControlPlane) -> None:
    helm(cluster, "lint", "--strict", str(CHART))
    helm(cluster, "lint", "--strict", str(CHART), "--set", "webhook.certManager.enabled=true",
         "--set", "controller.podDisruptionBudget.enabled=true",
         "--set", "agent.metrics.podMonitor.enabled=true")


def test_crd_copy_equals_crds(cluster: ControlPlane) -> None:
    source = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    copy = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert copy == source, "charts/lvs-operator/crds/ must hold exactly the CRDs of crds/"
    for name in source:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/lvs-operator/crds/{name} differs from crds/{name}: "
            f"cp crds/{name} charts/lvs-operator/crds/")
    crds = [o["metadata"]["name"] for o in render(cluster)
            if o["kind"] == "CustomResourceDefinition"]
    assert sorted(crds) == sorted(CRD_NAMES)


def test_agent_is_not_privileged(cluster: ControlPlane) -> None:
    objects = render(cluster)
    daemonset = find(objects, "DaemonSet", "lvs-agent")
    pod = daemonset["spec"]["template"]["spec"]
    agent = container(daemonset, "agent")
    security = agent["securityContext"]
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": AGENT_CAPABILITIES}
    assert (security["runAsUser"], security["readOnlyRootFilesystem"]) == (0, True)
    assert "securityContext" not in pod or "sysctls" not in pod["securityContext"]
    assert (pod["hostNetwork"], pod["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")
    assert not any(pod.get(k) for k in ("hostPID", "hostIPC"))
    assert pod["nodeSelector"] == {"lvs.dev/director": "true"}
    assert pod["serviceAccountName"] == "lvs-agent"
    assert field_env(agent) == {"NODE_NAME": "spec.nodeName",
                                "POD_NAMESPACE": "metadata.namespace"}  # Leases
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["modules"]["readOnly"] is True
    assert volumes["modules"]["hostPath"]["path"] == "/lib/modules"
    assert volumes["state"]["hostPath"]["path"] == "/var/lib/lvs-operator"
    assert mounts["state"]["mountPath"] == "/var/lib/lvs-operator"
    assert agent["ports"] == [{"name": "metrics", "containerPort": 9640, "protocol": "TCP"}]
    assert find(objects, "Service", "lvs-agent-metrics")["spec"]["ports"][0]["port"] == 9640
    # Tolerations are a value; no workload is privileged anywhere in the chart.
    tolerations = [{"key": "dedicated", "operator": "Equal", "value": "lb",
                    "effect": "NoSchedule"}]
    custom = render(cluster, "agent.tolerations[0].key=dedicated",
                    "agent.tolerations[0].operator=Equal", "agent.tolerations[0].value=lb",
                    "agent.tolerations[0].effect=NoSchedule")
    assert find(custom, "DaemonSet")["spec"]["template"]["spec"]["tolerations"] == tolerations


def test_controller_has_no_capabilities(cluster: ControlPlane) -> None:
    objects = render(cluster)
    deployment = find(objects, "Deployment", "lvs-controller")
    pod = deployment["spec"]["template"]["spec"]
    controller = container(deployment)
    security = controller["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "NET_ADMIN" not in json.dumps(deployment)
    assert (security["privileged"], security["allowPrivilegeEscalation"]) == (False, False)
    assert security["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert not pod.get("hostNetwork")
    assert {"name": "tmp", "mountPath": "/tmp"} in controller["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}} in pod["volumes"]
    assert deployment["spec"]["replicas"] == 2
    assert field_env(controller) == {"POD_NAMESPACE": "metadata.namespace",
                                     "POD_NAME": "metadata.name"}
    args = controller["args"]
    assert args[0] == "controller"
    for expected in ("--webhook", "--webhook-secret=lvs-webhook-tls",
                     "--webhook-configuration=lvs-realserver",
                     "--validating-webhook-configuration=lvs-virtualservers",
                     "--webhook-service=lvs-webhook",
                     f"--realserver-image={IMAGE}", "--lease-name=lvs-controller"):
        assert expected in args
    assert controller["image"] == IMAGE
    service = find(objects, "Service", "lvs-webhook")
    assert service["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "webhook",
                                         "protocol": "TCP"}]
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in controller["ports"]
    assert service["spec"]["selector"] == \
        deployment["spec"]["template"]["metadata"]["labels"]


def test_webhook_configuration_is_the_one_admission_builds(cluster: ControlPlane) -> None:
    objects = render(cluster)
    rendered = find(objects, "MutatingWebhookConfiguration", "lvs-realserver")
    expected = admission.webhook_configuration(
        "lvs-realserver", admission.service_client_config("lvs-webhook", "lvs-system"))
    assert rendered["webhooks"] == expected["webhooks"]
    assert rendered["webhooks"][0]["failurePolicy"] == "Ignore"
    assert "caBundle" not in rendered["webhooks"][0]["clientConfig"]
    assert "annotations" not in rendered["metadata"]
    # The VirtualServer webhook: the same Service, its own path; deny by default.
    rendered = find(objects, "ValidatingWebhookConfiguration", "lvs-virtualservers")
    expected = validation.webhook_configuration(
        "lvs-virtualservers", admission.service_client_config(
            "lvs-webhook", "lvs-system", path=validation.WEBHOOK_PATH))
    assert rendered["webhooks"] == expected["webhooks"]
    assert rendered["webhooks"][0]["failurePolicy"] == "Fail"
    assert "caBundle" not in rendered["webhooks"][0]["clientConfig"]
    assert "annotations" not in rendered["metadata"]


@pytest.mark.parametrize(("typo", "key"), [
    ("controller.replica=3", "replica"),
    ("agent.nodeselector.a=b", "nodeselector"),
    ("agent.metrics.prot=9000", "prot"),
    ("webhook.certManager.enable=true", "enable"),
    ("imag.tag=x", "imag"),
])
def test_a_typo_in_values_is_refused(cluster: ControlPlane, typo: str, key: str) -> None:
    result = helm(cluster, "template", "lvs", str(CHART), "--set", typo, check=False)
    assert result.returncode != 0
    assert f"additional properties '{key}' not allowed" in result.stderr, result.stderr


def test_a_wrong_type_is_refused(cluster: ControlPlane) -> None:
    result = helm(cluster, "template", "lvs", str(CHART), "--set",
                  "controller.replicas=two", check=False)
    assert result.returncode != 0 and "replicas" in result.stderr


def test_cert_manager_mode(cluster: ControlPlane) -> None:
    objects = render(cluster, "webhook.certManager.enabled=true")
    certificate = find(objects, "Certificate", "lvs-webhook-tls")
    assert certificate["spec"]["secretName"] == "lvs-webhook-tls"
    assert "lvs-webhook.lvs-system.svc" in certificate["spec"]["dnsNames"]
    assert certificate["spec"]["issuerRef"]["name"] == "lvs-selfsigned"
    assert find(objects, "Issuer", "lvs-selfsigned")["spec"] == {"selfSigned": {}}
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        assert find(objects, kind)["metadata"]["annotations"] == {
            "cert-manager.io/inject-ca-from": "lvs-system/lvs-webhook-tls"}, kind
    deployment = find(objects, "Deployment")
    args = container(deployment)["args"]
    assert "--webhook-cert-dir=/etc/lvs-operator/webhook-tls" in args
    assert not [a for a in args if a.startswith((
        "--webhook-secret", "--webhook-configuration", "--validating-webhook-configuration"))]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "webhook-tls", "secret": {"secretName": "lvs-webhook-tls"}} in volumes
    role = find(objects, "Role", "lvs-controller")
    assert not [r for r in role["rules"] if "secrets" in r["resources"]]
    # A given issuer: no Issuer of the chart.
    objects = render(cluster, "webhook.certManager.enabled=true",
                     "webhook.certManager.issuerRef.name=corp-ca",
                     "webhook.certManager.issuerRef.kind=ClusterIssuer")
    assert not [o for o in objects if o["kind"] == "Issuer"]
    assert find(objects, "Certificate")["spec"]["issuerRef"] == {
        "name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}


def test_optional_objects(cluster: ControlPlane) -> None:
    kinds = {o["kind"] for o in render(cluster)}
    assert not kinds & {"PodDisruptionBudget", "PodMonitor", "Certificate", "Issuer"}
    objects = render(cluster, "controller.podDisruptionBudget.enabled=true",
                     "agent.metrics.podMonitor.enabled=true",
                     "agent.metrics.podMonitor.labels.release=prom")
    assert find(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    monitor = find(objects, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    # The VirtualServer's namespace label must survive the scrape (see the template).
    assert monitor["spec"]["podMetricsEndpoints"][0]["honorLabels"] is True
    without = render(cluster, "agent.metrics.port=0")
    assert "ports" not in container(find(without, "DaemonSet"), "agent")
    assert not [o for o in without if o["metadata"]["name"] == "lvs-agent-metrics"]


# --- installed -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    manifest: list[dict[str, Any]]


@contextlib.contextmanager
def installed(cluster: ControlPlane, prefix: str) -> Iterator[Release]:
    """Install the chart into a fresh namespace `prefix`-...; uninstall it at the end (if a
    test did not)."""
    install_crd(cluster)  # the session may have it already: helm then skips its copy
    name = f"lvs-{secrets.token_hex(3)}"
    with module_namespace(cluster, prefix) as namespace:
        helm(cluster, "install", name, str(CHART), "--namespace", namespace,
             "--set", f"image.repository={IMAGE.rsplit(':', 1)[0]}",
             "--set", f"image.tag={IMAGE.rsplit(':', 1)[1]}")
        manifest = helm(cluster, "get", "manifest", name, "--namespace", namespace).stdout
        try:
            yield Release(name, namespace,
                          [d for d in yaml.safe_load_all(manifest) if d])
        finally:
            helm(cluster, "uninstall", name, "--namespace", namespace, check=False)


@pytest.fixture(scope="module")
def release(cluster: ControlPlane) -> Iterator[Release]:
    """The chart installed into its own namespace."""
    with installed(cluster, "chart") as result:
        yield result


@contextlib.contextmanager
def agent_pod(kube: Kube, release: Release, node: str) -> Iterator[str]:
    """Create Node `node` and a Pod of the release's agent ServiceAccount bound to it (no
    kubelet runs it: a token bound to it names the node, as the agent pod's projected token
    does); yield the Pod's name; delete both at the end."""
    kube.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                  "metadata": {"name": node}})
    name = f"agent-{node}"
    path = f"/api/v1/namespaces/{release.namespace}/pods"
    try:
        kube.create(path, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "serviceAccountName": f"{release.name}-agent",
                     "automountServiceAccountToken": False,
                     "containers": [{"name": "agent", "image": IMAGE}]}})
        yield name
    finally:
        kube.delete(f"{path}/{name}", grace=0)  # no kubelet would ever confirm it
        kube.delete(f"/api/v1/nodes/{node}")


def token_kubeconfig(cluster: ControlPlane, namespace: str, account: str,
                     folder: Path, *, pod: str = "") -> Path:
    """Write a kubeconfig authenticating as ServiceAccount `namespace/account`, with a
    token (TokenRequest) bound to Pod `pod` of `namespace` if given."""
    bound = ["--bound-object-kind", "Pod", "--bound-object-name", pod] if pod else []
    token = cluster.kubectl("create", "token", account, "--namespace", namespace,
                            "--duration", "1h", *bound).stdout.strip()
    path = folder / f"{account}{'-' + pod if pod else ''}.kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": {
            "server": cluster.server,
            "certificate-authority-data": base64.b64encode(
                cluster.ca_cert.read_bytes()).decode()}}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": account}}],
        "current-context": "test",
    }))
    path.chmod(0o600)
    return path


def test_install_creates_every_object(cluster: ControlPlane, release: Release) -> None:
    kinds = sorted({o["kind"] for o in release.manifest})
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "DaemonSet", "Deployment",
                     "MutatingWebhookConfiguration", "Role", "RoleBinding", "Service",
                     "ServiceAccount", "ValidatingAdmissionPolicy",
                     "ValidatingAdmissionPolicyBinding", "ValidatingWebhookConfiguration"]
    for obj in release.manifest:
        where = ["--namespace", release.namespace] if obj["metadata"].get("namespace") else []
        cluster.kubectl("get", obj["kind"], obj["metadata"]["name"], *where)
    cluster.kubectl("get", "crd", CRD_NAME)
    # No kubelet runs the pods, but the ReplicaSet controller creates them: they pass
    # admission (Pod Security, the webhook's failurePolicy Ignore while nobody serves it).
    selector = f"app.kubernetes.io/instance={release.name},app.kubernetes.io/component=controller"

    def pods() -> list[Any] | None:
        found = json.loads(cluster.kubectl("get", "pods", "--namespace", release.namespace,
                                           "-l", selector, "-o", "json").stdout)["items"]
        return found if len(found) == 2 else None

    for pod in wait_for("the controller's 2 pods", pods, timeout=30):
        assert pod["spec"]["serviceAccountName"] == f"{release.name}-controller"


def test_rbac_is_enough_for_controller_and_agent(cluster: ControlPlane, release: Release,
                                                 tmp_path: Path) -> None:
    kube = Kube(cluster)
    ns, name = release.namespace, release.name
    deployment = find(release.manifest, "Deployment")
    args = [a for a in container(deployment)["args"]
            if not a.startswith(("--webhook-port", "--lease-duration"))]
    port = free_port()
    # This API server reaches no Service (no kube-proxy): the VirtualServer webhook's
    # configuration (failurePolicy Fail) is pointed at this controller by URL, before it
    # starts and fills in the caBundle.
    validating = f"{VALIDATING}/{name}-virtualservers"
    configuration = kube.get(validating)
    configuration["webhooks"][0]["clientConfig"] = admission.url_client_config(
        f"https://127.0.0.1:{port}", path=validation.WEBHOOK_PATH)
    kube.request("PUT", validating, configuration)
    controller_config = token_kubeconfig(cluster, ns, f"{name}-controller", tmp_path)
    log_path = tmp_path / "controller.log"
    # The chart's own arguments; the webhook reads with $KUBECONFIG outside a pod.
    env = {**cluster.env, "KUBECONFIG": str(controller_config), "POD_NAMESPACE": ns,
           "POD_NAME": "chart-test"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lvs_operator.cli", *args, "--kubeconfig",
             str(controller_config), "--lease-duration=3", f"--webhook-port={port}",
             "--webhook-extra-san=127.0.0.1"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        def logged() -> str:
            assert proc.poll() is None, f"the controller died:\n{log_path.read_text()[-3000:]}"
            return log_path.read_text(errors="replace")

        wait_for("the controller to lead", lambda: "leading (Lease" in logged(), timeout=30)
        lease = kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/"
                         f"{name}-controller")
        assert lease["spec"]["holderIdentity"].startswith("chart-test_")
        secret = wait_for("the generated webhook Secret", lambda: kube.get(
            f"/api/v1/namespaces/{ns}/secrets/{name}-webhook-tls"))
        assert secret["type"] == "kubernetes.io/tls"
        path = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/" \
               f"{name}-realserver"
        def ca_bundle_set(configuration_path: str) -> bool:
            hooks = kube.get(configuration_path)["webhooks"]
            return bool(hooks[0]["clientConfig"].get("caBundle") == secret["data"]["ca.crt"])

        wait_for("the caBundle of the mutating webhook", lambda: ca_bundle_set(path))
        wait_for("the caBundle of the validating webhook", lambda: ca_bundle_set(validating))

        # Through the VirtualServer webhook: the API server may hold the configuration
        # without its caBundle for a moment (a refusal with 500 then), hence wait_for.
        wait_for("the VirtualServer admitted by the webhook", lambda: kube.create(
            vs_path(ns), virtual_server(
                ns, "web", vip="198.51.100.201",
                addresses=[{"ip": "10.0.9.1"}, {"ip": "10.0.9.2"}],
                directors={"nodeSelector": {"lvs.dev/director": "true"}})), timeout=30)
        # Another namespace's VIP: the controller claims it for its first user (a VIPClaim
        # written with the chart's RBAC), and the webhook, reading that claim, refuses it to
        # this namespace (a failed read would refuse with 500, not 403).
        other = f"{ns}-owner"
        cluster.kubectl("create", "namespace", other)
        try:
            kube.create(vs_path(other), virtual_server(other, "owner", vip="198.51.100.202",
                                                       addresses=[{"ip": "10.0.9.3"}]))
            claim = wait_for("the controller's VIPClaim", lambda: kube.get(
                f"{CLAIMS}/198.51.100.202"), timeout=30)
            assert claim["spec"]["namespace"] == other, claim
            with pytest.raises(ApiError) as squatting:
                kube.create(vs_path(ns), virtual_server(ns, "squatter", vip="198.51.100.202",
                                                        service="web"))
            assert squatting.value.status == validation.FORBIDDEN, squatting.value
        finally:
            cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)
        vs = wait_for("status.realServers", lambda: kube.get(vs_path(ns, "web")).get(
            "status", {}).get("realServers") and kube.get(vs_path(ns, "web")))
        assert [r["ip"] for r in vs["status"]["realServers"]] == ["10.0.9.1", "10.0.9.2"]
        assert condition(vs, "RealServersResolved")["status"] == "True"

        # The agent's calls, as the agent's ServiceAccount with a token bound to a pod on
        # "chart-node" (agent-policy.yaml): then the controller says Ready.
        with agent_pod(kube, release, "chart-node") as pod:
            agent_config = token_kubeconfig(cluster, ns, f"{name}-agent", tmp_path, pod=pod)
            act_as_agent(agent_config, ns, "web", generation=vs["metadata"]["generation"])
        vs = wait_for("Ready=True", lambda: condition(
            kube.get(vs_path(ns, "web")), "Ready")["status"] == "True"
            and kube.get(vs_path(ns, "web")))
        assert vs["status"]["activeDirector"] == "chart-node"
        # The controller watches the whole cluster: other tests' VirtualServers are there
        # too, and an Event posted into a namespace being deleted is refused with 403 as
        # well (not an RBAC matter). Any other refusal is one.
        refused = [line for line in logged().splitlines()
                   if (_HTTP_403.search(line) or "orbidden" in line)
                   and not _event_in_another_namespace(line, ns)]
        assert not refused, "\n".join(refused[-20:])
    finally:
        proc.terminate()
        proc.wait(15)
    assert "released the Lease" in log_path.read_text()


def act_as_agent(kubeconfig: Path, namespace: str, name: str, *, generation: int) -> None:
    """Make the agent's API calls (agent.kube, as the agent does) with `kubeconfig`."""
    api = agent_kube.Client.connect(str(kubeconfig))
    try:
        items, version = api.lister(agent_kube.VIRTUALSERVERS)()
        assert [i["metadata"]["name"] for i in items if i["metadata"]["namespace"] == namespace] \
            == [name]
        api.watcher(agent_kube.VIRTUALSERVERS, timeout_seconds=1)(version).close()
        mine = [("fieldSelector", "metadata.name=chart-node")]
        _, node_version = api.lister(agent_kube.NODES, query=mine)()
        api.watcher(agent_kube.NODES, query=mine, timeout_seconds=1)(node_version).close()
        # The VIP pools and the Namespaces' labels (every agent admits by the pools itself).
        for path in (agent_kube.VIPPOOLS, agent_kube.NAMESPACES):
            _, version = api.lister(path)()
            api.watcher(path, timeout_seconds=1)(version).close()
        pools = api.lister(agent_kube.VIPPOOLS)()[0]
        assert pools, "install_crd made the tests' open pool"
        api.request("GET", f"{agent_kube.VIPPOOLS}/{pools[0]['metadata']['name']}")
        api.patch_status(namespace, name, {"status": {"directors": {"chart-node": {
            "role": "Active", "generation": generation, "error": "",
            "syncedAt": "2024-05-01T10:00:00Z"}}}})
        # Its Lease (election): create, renew, watch everyone's, delete at a graceful stop.
        leases = kube_lease.leases_path(namespace)
        body = agent_lease.body("chart-node", namespace, duration=0.8, labels={"a": "b"},
                                term=agent_lease.new_term(), now=datetime.now(UTC))
        api.request("POST", leases, body=body)
        api.request("PATCH", f"{leases}/{agent_lease.lease_name('chart-node')}",
                    content_type=agent_kube.MERGE_PATCH,
                    body=agent_lease.renewal("chart-node", duration=0.8, labels={},
                                             term=agent_lease.new_term(),
                                             now=datetime.now(UTC), begins=True))
        selector = [("labelSelector", f"{agent_lease.LABEL}=true")]
        _, lease_version = api.lister(leases, query=selector)()
        api.watcher(leases, query=selector, timeout_seconds=1)(lease_version).close()
        api.request("DELETE", f"{leases}/{agent_lease.lease_name('chart-node')}")
        obj = {"metadata": {"name": name, "namespace": namespace}}
        kube_events.post(api, agent_report.event(obj, node="chart-node", message="chart test",
                                                 now=datetime.now(UTC)))
    finally:
        api.close()


@pytest.mark.parametrize(("account", "verb", "resource"), [
    ("controller", "create", "pods"),
    # It creates, replaces and deletes the VirtualServers of LoadBalancer Services, and
    # writes only their status.loadBalancer of Services.
    ("controller", "patch", "virtualservers.lvs.dev"),
    ("controller", "update", "services"),
    ("controller", "patch", "services"),
    ("controller", "update", "services/status"),
    ("controller", "list", "secrets"),
    ("controller", "get", "secrets/another"),
    ("controller", "update", "mutatingwebhookconfigurations/another"),
    ("controller", "update", "validatingwebhookconfigurations/another"),
    ("controller", "create", "vippools.lvs.dev"),
    ("controller", "update", "vippools.lvs.dev"),
    ("controller", "patch", "vipclaims.lvs.dev"),
    ("controller", "update", "namespaces"),
    ("agent", "create", "vipclaims.lvs.dev"),
    ("controller", "get", "nodes"),
    ("agent", "get", "secrets"),
    ("agent", "update", "virtualservers.lvs.dev"),
    ("agent", "create", "pods"),
    ("agent", "patch", "nodes"),
    ("agent", "create", "leases.coordination.k8s.io/another-namespace"),
    ("agent", "update", "leases.coordination.k8s.io"),  # it merge-patches its Lease
    ("agent", "create", "events"),  # core/v1: it posts events.k8s.io Events
    ("agent", "create", "vippools.lvs.dev"),
    ("agent", "update", "vippools.lvs.dev"),
    ("agent", "get", "vipclaims.lvs.dev"),
    ("agent", "get", "namespaces"),  # list and watch: the labels of all, not one by name
    ("agent", "patch", "namespaces"),
])
def test_rbac_grants_nothing_more(cluster: ControlPlane, release: Release, account: str,
                                  verb: str, resource: str) -> None:
    subject = f"system:serviceaccount:{release.namespace}:{release.name}-{account}"
    namespace = release.namespace
    if resource.endswith("/another-namespace"):  # allowed in the release namespace only
        resource, namespace = resource.rpartition("/")[0], "default"
    answer = cluster.kubectl("auth", "can-i", verb, resource, "--as", subject,
                             "--namespace", namespace, check=False)
    assert answer.stdout.strip() == "no", f"{account} may {verb} {resource}"


@pytest.mark.parametrize(("verb", "resource"), [
    ("watch", "vippools.lvs.dev"),
    ("list", "vippools.lvs.dev"),
    ("get", "vipclaims.lvs.dev"),
    ("create", "vipclaims.lvs.dev"),
    ("update", "vipclaims.lvs.dev"),
    ("delete", "vipclaims.lvs.dev"),
    ("watch", "namespaces"),
    ("update", "validatingwebhookconfigurations/{release}-virtualservers"),
    ("update", "mutatingwebhookconfigurations/{release}-realserver"),
])
def test_rbac_grants_what_pools_and_webhooks_need(cluster: ControlPlane, release: Release,
                                                   verb: str, resource: str) -> None:
    subject = f"system:serviceaccount:{release.namespace}:{release.name}-controller"
    answer = cluster.kubectl("auth", "can-i", verb, resource.format(release=release.name),
                             "--as", subject, check=False)
    assert answer.stdout.strip() == "yes", f"the controller may not {verb} {resource}"


def test_uninstall_leaves_no_workload(cluster: ControlPlane, release: Release) -> None:
    helm(cluster, "uninstall", release.name, "--namespace", release.namespace, "--wait",
         "--timeout", "60s")
    selector = f"app.kubernetes.io/instance={release.name}"

    def gone() -> bool:
        left = cluster.kubectl(
            "get", "deployments,daemonsets,replicasets,pods,services,serviceaccounts,roles,"
            "rolebindings", "--namespace", release.namespace, "-l", selector,
            "-o", "name").stdout.split()
        left += cluster.kubectl(
            "get", "clusterroles,clusterrolebindings,mutatingwebhookconfigurations,"
            "validatingadmissionpolicies,validatingadmissionpolicybindings,"
            "validatingwebhookconfigurations",
            "-l", selector, "-o", "name").stdout.split()
        pods = cluster.kubectl("get", "pods", "--namespace", release.namespace,
                               "-o", "name").stdout.split()
        return not left and not pods

    wait_for("the release's objects and pods to go", gone, timeout=30)
    cluster.kubectl("get", "crd", CRD_NAME)  # kept, with the VirtualServers


# HTTP status 403 as the code logs it: "GET /path: 403 ..." (kube.client's ApiError, both
# binaries), "(403)" (the kubernetes client's ApiException, as kopf's errors may quote it). Not
# any "403": the webhook's random port can hold one ("webhook serving on 0.0.0.0:40311").
_HTTP_403 = re.compile(r"\(403\)|\b[A-Z]+ /\S*: 403\b")


def _event_in_another_namespace(line: str, namespace: str) -> bool:
    """Whether `line` is the controller's warning that an Event for a VirtualServer outside
    `namespace` could not be posted."""
    match = re.search(r"VirtualServer ([^/ ]+)/\S+: cannot post Event", line)
    return match is not None and match.group(1) != namespace


def test_a_default_pool_only_when_its_addresses_are_given(cluster: ControlPlane) -> None:
    """No pool, no VIPs (deny by default): the chart makes the VIPPool `default` only from
    `defaultPool.addresses`; the API server takes what it renders."""
    assert not [o for o in render(cluster) if o["kind"] == "VIPPool"]
    objects = render(cluster, set_json=['defaultPool={"addresses": ["192.0.2.0/28", '
                                        '"2001:db8::/124"], "namespaces": ["shop"], '
                                        '"namespaceSelector": null, "backendAddresses": '
                                        '["10.20.0.0/16"], "autoAssign": true}'])
    pool = find(objects, "VIPPool", "default")
    assert pool["spec"] == {"addresses": ["192.0.2.0/28", "2001:db8::/124"],
                            "namespaces": ["shop"], "backendAddresses": ["10.20.0.0/16"],
                            "autoAssign": True}
    everyone = find(render(cluster, "defaultPool.addresses={192.0.2.0/28}"), "VIPPool")
    assert everyone["spec"]["namespaceSelector"] == {}  # the default: every namespace
    install_crd(cluster)
    pool["metadata"]["name"] = f"chart-default-{secrets.token_hex(3)}"
    cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pool))
