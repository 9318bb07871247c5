"""Deny by default at `kubectl apply` (issue 15): the controller's VirtualServer webhook against
the real API server, written to by a tenant.

`lvs-operator controller --webhook` runs as a process and keeps the caBundle of a
ValidatingWebhookConfiguration that `validation.webhook_configuration` builds (failurePolicy
Fail), pointed at it by URL (this control plane has no kube-proxy) and limited to this
module's namespaces, so the other modules' VirtualServers never meet it. The writes come from
a tenant: a ServiceAccount of namespace A bound there (RoleBinding) to a ClusterRole of this
module's own that grants virtualservers create/update/patch/get/list and nothing else (the
chart's aggregated edit/view roles are not used here). Refusals are checked by the HTTP
status the API server answers (403 for the webhook's refusals, 422 for the CRD's schema,
500 when the webhook cannot be called) and by the message: the one `validation.decide`
gives for the same pools, labels and claim, after the API server's "admission webhook ...
denied the request: ".

The namespaces are labelled `lvs.dev/test-closed=true`, so the tests' open pool
(`crd_support.install_crd`) does not serve them; the pools here are this module's
(cluster-scoped: unique names, deleted at the end).
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from controller_support import ApiError, Controller, Kube, virtual_server, vs_path, wait_for
from controlplane import ControlPlane, free_ports
from crd_support import install_crd

import scenarios
from lvs_operator.api import claims, spec
from lvs_operator.controller import admission, validation

IMAGE = "registry.example/lvs-operator:test"
POOLS = "/apis/lvs.dev/v1alpha1/vippools"
CLAIMS = "/apis/lvs.dev/v1alpha1/vipclaims"
VALIDATING = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
DENIED = f'admission webhook "{validation.WEBHOOK_NAME}" denied the request: '
SITE_A = {"lvs.dev/site": "a"}
DIRECTORS: dict[str, Any] = {"nodeSelector": SITE_A, "interface": "eth1"}
SHARED_VIP = "203.0.113.41"  # in the pools of A and B; B owns it
# Static backends no pool of A allows (A's restricted pool allows 10.77.0.0/24 and
# 2001:db8:78::/120): a pod address of another namespace, a node address, and the IPv6
# address of a cloud's instance metadata service (IPv4's, 169.254.169.254, is link-local:
# the CRD refuses it).
POD_ADDRESS, NODE_ADDRESS, METADATA_V6 = "10.244.3.7", "172.18.0.2", "fd00:ec2::254"


@dataclass
class Site:
    """The module's namespaces, pools, tenant and controller."""

    kube: Kube
    tenant: Kube  # a ServiceAccount of `a`, which may write VirtualServers there only
    lonely: Kube  # the same in `c`, which no pool serves
    a: str
    b: str
    c: str
    pools: dict[str, dict[str, Any]]  # by role: restricted, open, b
    controller: Controller
    cluster: ControlPlane

    def expected(self, document: dict[str, Any], namespace: str) -> str:
        """Return the API server's message for `document`, refused in `namespace` as
        `validation.decide` refuses it with the pools, labels and claim stored now."""
        vs = validation.parse(document, namespace=namespace)
        assert isinstance(vs, spec.VirtualServer), vs
        labels = self.kube.get(f"/api/v1/namespaces/{namespace}")["metadata"]["labels"]
        try:
            claim = self.kube.get(f"{CLAIMS}/{claims.name_of(vs.vip)}")
        except ApiError as e:
            assert e.status == 404, e
            claim = None
        decision = validation.decide(vs, pool_documents=self.kube.get(POOLS)["items"],
                                     namespace_labels=labels, claim_document=claim)
        assert not decision.allowed, decision
        return DENIED + decision.message


def refusal(client: Kube, namespace: str, document: dict[str, Any]) -> ApiError:
    """Create `document` in `namespace` as `client`; return the API server's refusal."""
    with pytest.raises(ApiError) as refused:
        client.create(vs_path(namespace), document)
    return refused.value


def vs(namespace: str, name: str, vip: str, **body: Any) -> dict[str, Any]:
    if "addresses" not in body:
        body["service"] = "web"
    return virtual_server(namespace, name, vip=vip, **body)


def tenant(cluster: ControlPlane, namespace: str, role: str) -> Kube:
    """Return a client acting as a new ServiceAccount of `namespace`, bound there to `role`."""
    cluster.kubectl("create", "serviceaccount", "tenant", "-n", namespace)
    cluster.kubectl("create", "rolebinding", "tenant", "-n", namespace, f"--clusterrole={role}",
                    f"--serviceaccount={namespace}:tenant")
    token = cluster.kubectl("create", "token", "tenant", "-n", namespace,
                            "--duration", "1h").stdout.strip()
    return Kube(cluster, token=token)


@pytest.fixture(scope="module")
def site(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    install_crd(cluster)
    kube = Kube(cluster)
    suffix = secrets.token_hex(3)
    a, b, c = (f"vip-{x}-{suffix}" for x in "abc")
    role, configuration = f"lvs-test-tenant-{suffix}", f"lvs-test-vs-{suffix}"
    pools = {
        "restricted": pool(f"lvs-test-{suffix}-a", [a], ["203.0.113.32/28", "2001:db8:77::/120"],
                           backendAddresses=["10.77.0.0/24", "2001:db8:78::/120"],
                           directors=DIRECTORS),
        "open": pool(f"lvs-test-{suffix}-a-open", [a], ["198.18.7.0/24"],
                     backendAddresses=["0.0.0.0/0", "::/0"], directors={"allowOverride": True}),
        "b": pool(f"lvs-test-{suffix}-b", [b], ["203.0.113.32/28"], directors=DIRECTORS),
    }
    (port,) = free_ports(1)
    with contextlib.ExitStack() as cleanup:
        for namespace in (a, b, c):
            cluster.kubectl("create", "namespace", namespace)
            cleanup.callback(cluster.kubectl, "delete", "namespace", namespace, "--wait=false",
                             check=False)
            cluster.kubectl("label", "namespace", namespace, f"{scenarios.CLOSED_LABEL}=true")
        cluster.kubectl("create", "clusterrole", role, "--resource=virtualservers.lvs.dev",
                        "--verb=create,update,patch,get,list")
        cleanup.callback(cluster.kubectl, "delete", "clusterrole", role, check=False)
        # The VIPClaims a controller made for this module's VirtualServers (the last test
        # stops it before it could let them go).
        cleanup.callback(delete_claims, kube, (a, b, c))
        for document in pools.values():
            kube.create(POOLS, document)
            cleanup.callback(kube.delete, f"{POOLS}/{document['metadata']['name']}")
        kube.create(VALIDATING, validation.webhook_configuration(
            configuration, admission.url_client_config(f"https://127.0.0.1:{port}",
                                                       path=validation.WEBHOOK_PATH),
            extra_namespace_expressions=[{"key": "kubernetes.io/metadata.name",
                                          "operator": "In", "values": [a, b, c]}]))
        cleanup.callback(kube.delete, f"{VALIDATING}/{configuration}")
        controller = Controller(
            cluster, identity="ctl-vip", lease=f"lvs-test-{suffix}",
            log_dir=tmp_path_factory.mktemp("vip-admission"), extra=(
                "--webhook", "--webhook-port", str(port),
                "--validating-webhook-configuration", configuration,
                "--webhook-extra-san", "127.0.0.1", "--realserver-image", IMAGE)).start()
        cleanup.callback(cluster.kubectl, "delete", "lease", "-n", "default", controller.lease,
                         "--ignore-not-found")
        cleanup.callback(controller.stop)
        site = Site(kube, tenant(cluster, a, role), tenant(cluster, c, role), a, b, c, pools,
                    controller, cluster)
        wait_for_the_webhook(site)
        yield site


def delete_claims(kube: Kube, namespaces: tuple[str, ...]) -> None:
    for item in kube.get(CLAIMS)["items"]:
        if item["spec"].get("namespace") in namespaces:
            kube.delete(f"{CLAIMS}/{item['metadata']['name']}")


def pool(name: str, namespaces: list[str], addresses: list[str], **body: Any
         ) -> dict[str, Any]:
    return {"apiVersion": "lvs.dev/v1alpha1", "kind": "VIPPool", "metadata": {"name": name},
            "spec": {"addresses": addresses, "namespaces": namespaces, **body}}


def wait_for_the_webhook(site: Site) -> None:
    """Wait until the controller set the caBundle and the API server uses it: a server-side
    dry run of a refused VirtualServer is refused by the webhook (403), not for want of a
    trusted certificate (500)."""
    def refused() -> bool:
        assert site.controller.alive(), site.controller.log()[-3000:]
        try:
            site.tenant.request("POST", f"{vs_path(site.a)}?dryRun=All",
                                vs(site.a, "probe", "192.0.2.1"))
        except ApiError as e:
            return e.status == validation.FORBIDDEN
        raise AssertionError("a VIP in no pool of the namespace was admitted")
    wait_for("the VirtualServer webhook to answer", refused, timeout=30)


def test_a_vip_in_no_pool_of_the_namespace_is_refused_naming_its_pools(site: Site) -> None:
    document = vs(site.a, "outside", "192.0.2.77")
    refused = refusal(site.tenant, site.a, document)
    assert refused.status == 403, refused
    assert refused.message == site.expected(document, site.a)
    for role in ("restricted", "open"):
        assert pool_description(site.pools[role]) in refused.message
    assert site.pools["b"]["metadata"]["name"] not in refused.message  # B's: not A's concern
    assert json.loads(refused.body)["reason"] == "Forbidden"
    # kubectl apply says so too (as the cluster admin here: the pools bind everyone).
    applied = site.cluster.kubectl("apply", "-f", "-", input=json.dumps(document), check=False)
    assert applied.returncode != 0
    assert f"Error from server (Forbidden): error when creating \"STDIN\": " \
           f"{refused.message}" in applied.stderr, applied.stderr
    # A namespace that no pool serves may have no VIP at all.
    document = vs(site.c, "anything", "203.0.113.33")
    refused = refusal(site.lonely, site.c, document)
    assert refused.status == 403, refused
    assert refused.message == site.expected(document, site.c)
    assert f"namespace {site.c} may use no VIP pool" in refused.message


def pool_description(document: dict[str, Any]) -> str:
    return f"{document['metadata']['name']} ({', '.join(document['spec']['addresses'])})"


@pytest.mark.parametrize(("vip", "backend"), [
    ("203.0.113.34", POD_ADDRESS),
    ("203.0.113.34", NODE_ADDRESS),
    ("2001:db8:77::10", METADATA_V6),
])
def test_a_static_backend_outside_the_pool_is_refused(site: Site, vip: str,
                                                      backend: str) -> None:
    document = vs(site.a, "static", vip, addresses=[{"ip": backend}])
    refused = refusal(site.tenant, site.a, document)
    assert refused.status == 403, refused
    assert refused.message == site.expected(document, site.a)
    assert refused.message.startswith(f"{DENIED}spec.backend.addresses[0].ip: {backend} ")


def test_the_metadata_address_is_refused_by_the_schema(site: Site) -> None:
    refused = refusal(site.tenant, site.a, vs(site.a, "metadata", "203.0.113.34",
                                              addresses=[{"ip": "169.254.169.254"}]))
    assert refused.status == 422, refused
    assert "spec.backend.addresses[0].ip" in refused.fields, refused


@pytest.mark.parametrize(("directors", "path"), [
    ({"interface": "eth9"}, "spec.directors.interface"),
    ({"nodeSelector": {"lvs.dev/site": "b"}}, "spec.directors.nodeSelector.lvs.dev/site"),
])
def test_directors_outside_the_pool_are_refused(site: Site, directors: dict[str, Any],
                                                path: str) -> None:
    document = vs(site.a, "directors", "203.0.113.35", directors=directors)
    refused = refusal(site.tenant, site.a, document)
    assert refused.status == 403, refused
    assert refused.message == site.expected(document, site.a)
    assert refused.message.startswith(f"{DENIED}{path}: ")


def test_another_namespaces_vip_is_shared_only_by_consent(site: Site) -> None:
    # B uses the VIP and owns it: the claim is what the controller records (made here by the
    # cluster admin, as the controller would; kept if the controller was first).
    site.kube.create(vs_path(site.b), vs(site.b, "owner", SHARED_VIP, sharingKey="shop"))
    owned = claims.Claim(spec.parse_address(SHARED_VIP, "vip"), site.b, "shop",
                         spec.Directors(node_selector=SITE_A, interface="eth1"),
                         pool=site.pools["b"]["metadata"]["name"])
    try:
        site.kube.create(CLAIMS, owned.document())
    except ApiError as e:
        assert e.status == 409, e
    try:
        for key in (None, "other"):
            extra = {"sharingKey": key} if key else {}
            document = vs(site.a, "sharer", SHARED_VIP, ports=[8080], **extra)
            refused = refusal(site.tenant, site.a, document)
            assert refused.status == 403, refused
            assert refused.message == site.expected(document, site.a)
            assert refused.message.startswith(
                f"{DENIED}spec.vip: {SHARED_VIP} belongs to another namespace"), refused
            assert site.b not in refused.message and "owner" not in refused.message
        site.tenant.create(vs_path(site.a), vs(site.a, "sharer", SHARED_VIP, ports=[8080],
                                               sharingKey="shop"))
    finally:
        site.kube.delete(vs_path(site.a, "sharer"))
        site.kube.delete(vs_path(site.b, "owner"))
        site.kube.delete(f"{CLAIMS}/{owned.name}")


def test_an_old_virtualserver_keeps_its_vip_and_its_pools_terms(site: Site) -> None:
    site.tenant.create(vs_path(site.a), vs(site.a, "old", "203.0.113.36"))
    path = vs_path(site.a, "old")
    # spec.vip is immutable (the CRD's rule, before any webhook is asked).
    with pytest.raises(ApiError) as refused:
        site.tenant.merge(path, {"spec": {"vip": "203.0.113.37"}})
    assert refused.value.status == 422, refused.value
    assert "spec.vip" in refused.value.fields and "immutable" in refused.value.message
    # An UPDATE is checked as a CREATE is.
    with pytest.raises(ApiError) as refused:
        site.tenant.merge(path, {"spec": {"directors": {"interface": "eth9"}}})
    assert refused.value.status == 403, refused.value
    assert refused.value.message.startswith(f"{DENIED}spec.directors.interface: ")
    # Labels (spec unchanged) and allowed changes pass.
    site.tenant.merge(path, {"metadata": {"labels": {"team": "web"}}})
    changed = site.tenant.merge(path, {"spec": {"directors": {"interface": "eth1"}}})
    assert changed["spec"]["directors"] == {"interface": "eth1"}


def test_a_pool_that_allows_everything_admits_it(site: Site) -> None:
    created = site.tenant.create(vs_path(site.a), vs(
        site.a, "anything", "198.18.7.10", forwarding="Tunnel",
        addresses=[{"ip": POD_ADDRESS}, {"ip": NODE_ADDRESS}],
        directors={"interface": "eth9", "nodeSelector": {"rack": "r1"}}))
    assert created["metadata"]["name"] == "anything"
    # The tenant may not create pools or claims (the pools are the admins' grant).
    for path, document in ((POOLS, pool("lvs-test-mine", [site.a], ["192.0.2.0/24"])),
                           (CLAIMS, claims.Claim(spec.parse_address("192.0.2.9", "vip"),
                                                 site.a).document())):
        with pytest.raises(ApiError) as refused:
            site.tenant.create(path, document)
        assert refused.value.status == 403, refused.value


def test_without_a_controller_no_virtualserver_is_written(site: Site) -> None:
    """failurePolicy Fail: the webhook is in the path of every VirtualServer write, so none
    is created or changed while it cannot be called (deleting still works)."""
    site.tenant.create(vs_path(site.a), vs(site.a, "before", "203.0.113.38"))
    site.controller.stop()
    with pytest.raises(ApiError) as refused:
        site.tenant.create(vs_path(site.a), vs(site.a, "after", "203.0.113.39"))
    assert refused.value.status == 500, refused.value
    assert "failed calling webhook" in refused.value.message
    with pytest.raises(ApiError) as refused:
        site.tenant.merge(vs_path(site.a, "before"), {"spec": {"weight": 2}})
    assert refused.value.status == 500, refused.value
    site.kube.delete(vs_path(site.a, "before"), missing_ok=False)


def test_the_controller_logged_the_refusals(site: Site) -> None:
    log = site.controller.log()
    assert f"VirtualServer {site.a}/outside: CREATE refused (VIPNotAllowed)" in log
    # Up to its stop (the test before stops it): kopf's shutdown may log asyncio's
    # "error occurred during closing of asynchronous generator" for its watch stream.
    running = log.split("Signal SIGTERM is received", 1)[0]
    assert "Traceback" not in running, running[-3000:]
