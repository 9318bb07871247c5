"""admission: which pods get the real-server setup, the patch that adds it, and the pods
that lack it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from lvs_operator import realserver
from lvs_operator.controller import admission

NS = "shop"
IMAGE = "example.org/lvs-operator:1.0"


def vs(name: str = "web-dr", vip: str = "192.0.2.10", forwarding: str = "DirectRouting",
       service: str | None = "web", namespace: str = NS, **extra: Any) -> dict[str, Any]:
    backend: dict[str, Any] = ({"service": {"name": service}} if service is not None
                               else {"addresses": [{"ip": "10.0.0.1"}]})
    spec: dict[str, Any] = {"vip": vip, "ports": [{"port": 80}], "forwarding": forwarding,
                            "backend": backend, **extra}
    return {"apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualServer",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def svc(name: str = "web", selector: dict[str, str] | None = None,
        **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"port": 80}], **extra}
    if selector is not None:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


WEB = svc(selector={"app": "web"})


def pod(labels: dict[str, str] | None = None, *, name: str = "web-1", namespace: str | None = NS,
        annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels is not None:
        meta["labels"] = labels
    if annotations is not None:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "app", "image": "web"}], **spec}}


def deleting(document: dict[str, Any]) -> dict[str, Any]:
    document["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return document


@dataclass
class Case:
    id: str
    virtualservers: list[dict[str, Any]]
    pod: dict[str, Any] = field(default_factory=lambda: pod({"app": "web"}))
    services: list[dict[str, Any]] = field(default_factory=lambda: [WEB])
    vips: dict[str, tuple[str, ...]] = field(default_factory=dict)  # expected; {} = untouched
    warning: str | None = None  # a substring of the only warning
    namespace_labels: dict[str, str] | None = None


CASES = [
    Case("dr", [vs()], vips={"dr": ("192.0.2.10",)}),
    Case("tunnel", [vs(forwarding="Tunnel")], vips={"tunnel": ("192.0.2.10",)}),
    Case("nat-untouched", [vs(forwarding="NAT")]),
    Case("dr-and-nat", [vs(), vs("web-nat", "192.0.2.99", "NAT")],
         vips={"dr": ("192.0.2.10",)}),
    Case("two-dr-vips-sorted", [vs("b", "192.0.2.20"), vs("a", "192.0.2.3")],
         vips={"dr": ("192.0.2.3", "192.0.2.20")}),
    Case("same-vip-twice-once", [vs("dns-udp", "192.0.2.53"), vs("dns-tcp", "192.0.2.53")],
         vips={"dr": ("192.0.2.53",)}),
    Case("dr-and-tunnel-two-containers", [vs("t", "198.51.100.7", "Tunnel"), vs()],
         vips={"dr": ("192.0.2.10",), "tunnel": ("198.51.100.7",)}),
    Case("ipv4-before-ipv6", [vs("v6", "2001:db8::10"), vs()],
         vips={"dr": ("192.0.2.10", "2001:db8::10")}),
    Case("ipv6-tunnel-refused", [vs(vip="2001:db8::10", forwarding="Tunnel")],
         warning="IPv6"),
    Case("ipv6-tunnel-refused-dr-kept",
         [vs("t6", "2001:db8::10", "Tunnel"), vs()], vips={"dr": ("192.0.2.10",)},
         warning="IPv6"),
    Case("tunnel-gre-warned", [vs(forwarding="Tunnel", tunnel={"type": "gre"})],
         vips={"tunnel": ("192.0.2.10",)}, warning="gre decapsulation"),
    Case("selector-not-matching", [vs()], pod=pod({"app": "api"})),
    Case("selector-needs-every-label", [vs()], services=[svc(selector={"app": "web",
                                                                       "tier": "x"})]),
    Case("pod-without-labels", [vs()], pod=pod(None)),
    Case("service-without-selector", [vs()], services=[svc()]),
    Case("service-external-name", [vs()],
         services=[svc(selector={"app": "web"}, type="ExternalName")]),
    Case("service-missing", [vs()], services=[]),
    Case("other-service", [vs(service="api")]),
    Case("static-addresses", [vs(service=None)]),
    Case("invalid-virtualserver-skipped", [vs(vip="not-an-ip"), vs("ok", "192.0.2.11")],
         vips={"dr": ("192.0.2.11",)}),
    Case("deleting-virtualserver-skipped", [deleting(vs())]),
    Case("other-namespace-skipped", [vs(namespace="elsewhere")]),
    Case("host-network", [vs()], pod=pod({"app": "web"}, hostNetwork=True),
         warning="hostNetwork"),
    Case("windows", [vs()], pod=pod({"app": "web"}, os={"name": "windows"}),
         warning="Windows"),
    Case("already-injected", [vs()], pod=pod({"app": "web", admission.LABEL: "injected"})),
    Case("opted-out", [vs()], pod=pod({"app": "web", admission.LABEL: "disabled"})),
    Case("our-container-without-label", [vs()],
         pod=pod({"app": "web"}, initContainers=[{"name": "lvs-realserver-init-dr",
                                                  "image": IMAGE}])),
    Case("pod-security-baseline", [vs()], namespace_labels={
        admission.PSA_ENFORCE_LABEL: "baseline"}, warning="Pod Security 'baseline'"),
    Case("pod-security-restricted", [vs()], namespace_labels={
        admission.PSA_ENFORCE_LABEL: "restricted"}, warning="NET_ADMIN"),
    Case("pod-security-privileged", [vs()], namespace_labels={
        admission.PSA_ENFORCE_LABEL: "privileged"}, vips={"dr": ("192.0.2.10",)}),
    Case("namespace-from-request", [vs()], pod=pod({"app": "web"}, namespace=None),
         vips={"dr": ("192.0.2.10",)}),
    # The posted pod claims another namespace: the request's (NS) is the pod's.
    Case("request-namespace-over-the-objects", [vs()],
         pod=pod({"app": "web"}, namespace="elsewhere"), vips={"dr": ("192.0.2.10",)}),
    Case("claimed-namespace-ignored", [vs(namespace="elsewhere")],
         pod=pod({"app": "web"}, namespace="elsewhere")),
]


def review(namespace: str | None, pod_namespace: str | None) -> dict[str, Any]:
    request: dict[str, Any] = {"uid": "u-1", "operation": "CREATE",
                               "object": pod({"app": "web"}, namespace=pod_namespace)}
    if namespace is not None:
        request["namespace"] = namespace
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def test_the_request_namespace_replaces_the_objects():
    sent = review(NS, "elsewhere")
    scoped = admission.in_request_namespace(sent)
    assert scoped["request"]["object"]["metadata"] == {"name": "web-1", "namespace": NS,
                                                       "labels": {"app": "web"}}
    assert scoped["request"]["uid"] == "u-1"
    assert sent["request"]["object"]["metadata"]["namespace"] == "elsewhere", "not mutated"
    assert admission.in_request_namespace(review(NS, None))["request"]["object"][
        "metadata"]["namespace"] == NS
    cluster_scoped = review(None, None)
    assert admission.in_request_namespace(cluster_scoped) is cluster_scoped


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_decide(case: Case):
    decision = admission.decide(case.pod, case.virtualservers, case.services, image=IMAGE,
                                namespace=NS, namespace_labels=case.namespace_labels)
    assert dict(decision.vips) == case.vips
    assert decision.mutates == bool(case.vips)
    if case.warning is None:
        assert decision.warnings == ()
    else:
        (warning,) = decision.warnings
        assert case.warning in warning
        assert len(warning) <= 400  # the API server may cut long admission warnings
    if not case.vips:
        return
    mutated = admission.apply_patch(case.pod, decision.patch)
    ours = [c for c in mutated["spec"]["initContainers"]
            if c["name"].startswith(admission.CONTAINER_PREFIX)]
    assert [c["name"] for c in ours] == [f"lvs-realserver-init-{m}" for m in case.vips]
    for container, (mode, vips) in zip(ours, case.vips.items(), strict=True):
        expected = ["lvs-operator", "realserver-init", "--mode", mode]
        for vip in vips:
            expected += ["--vip", vip]
        assert container["command"] == expected
    labels, annotations = mutated["metadata"]["labels"], mutated["metadata"]["annotations"]
    assert labels[admission.LABEL] == "injected"
    assert json.loads(annotations[admission.VIPS_ANNOTATION]) == \
        {m: list(v) for m, v in case.vips.items()}
    assert annotations[admission.VIRTUALSERVERS_ANNOTATION] == ",".join(
        decision.virtualservers)
    # Never twice: a second admission of the result (reinvocation, a re-created copy).
    again = admission.decide(mutated, case.virtualservers, case.services, image=IMAGE,
                             namespace=NS, namespace_labels=case.namespace_labels)
    assert not again.mutates and again.warnings == ()


def test_patch_keeps_what_the_pod_has_and_goes_first():
    original = pod({"app": "web", "team": "a"}, annotations={"note": "x"},
                   initContainers=[{"name": "migrate", "image": "db"}])
    decision = admission.decide(original, [vs(), vs("t", "198.51.100.7", "Tunnel")], [WEB],
                                image=IMAGE, namespace=NS)
    assert [op["path"] for op in decision.patch] == [
        "/spec/initContainers/0", "/spec/initContainers/1",
        "/metadata/labels/lvs.dev~1realserver-init",
        "/metadata/annotations/lvs.dev~1realserver-vips",
        "/metadata/annotations/lvs.dev~1realserver-virtualservers",
    ]
    mutated = admission.apply_patch(original, decision.patch)
    assert [c["name"] for c in mutated["spec"]["initContainers"]] == [
        "lvs-realserver-init-dr", "lvs-realserver-init-tunnel", "migrate"]
    assert mutated["metadata"]["labels"] == {"app": "web", "team": "a",
                                             admission.LABEL: "injected"}
    assert mutated["metadata"]["annotations"]["note"] == "x"
    assert mutated["spec"]["containers"] == original["spec"]["containers"]
    assert original["spec"]["initContainers"] == [{"name": "migrate", "image": "db"}]


def test_patch_creates_missing_maps_and_lists():
    decision = admission.decide(pod({"app": "web"}), [vs()], [WEB], image=IMAGE, namespace=NS)
    assert [(op["op"], op["path"]) for op in decision.patch] == [
        ("add", "/spec/initContainers"), ("add", "/metadata/labels/lvs.dev~1realserver-init"),
        ("add", "/metadata/annotations")]


def test_init_container_least_privilege():
    container = admission.init_container("dr", ["192.0.2.10"], image=IMAGE,
                                         image_pull_policy="IfNotPresent")
    assert container == {
        "name": "lvs-realserver-init-dr",
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["lvs-operator", "realserver-init", "--mode", "dr", "--vip", "192.0.2.10"],
        "securityContext": {
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                      "limits": {"memory": "128Mi"}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    # Each container gets its own copy: mutating one does not change the next.
    container["securityContext"]["capabilities"]["add"].append("SYS_ADMIN")
    assert admission.init_container("dr", ["192.0.2.10"], image=IMAGE)[
        "securityContext"]["capabilities"]["add"] == ["NET_ADMIN"]


@pytest.mark.parametrize("mode, vips", [("nat", ["192.0.2.1"]), ("dr", [])])
def test_init_container_refuses(mode, vips):
    with pytest.raises(ValueError):
        admission.init_container(mode, vips, image=IMAGE)


def test_modes_are_realserver_init_modes():
    assert admission.MODES == realserver.MODES


def test_referenced_services_only_dr_and_tunnel_with_service_backends():
    documents = [vs(service="a"), vs("t", forwarding="Tunnel", service="b"),
                 vs("n", forwarding="NAT", service="c"), vs("s", service=None),
                 vs("bad", vip="x", service="d"), deleting(vs("gone", service="e"))]
    assert admission.referenced_services(documents, NS) == ["a", "b"]
    assert admission.referenced_services([], NS) == []


@pytest.mark.parametrize("ops, error", [
    ([{"op": "replace", "path": "/a", "value": 1}], "only add"),
    ([{"op": "add", "path": "a", "value": 1}], "JSON pointer"),
    ([{"op": "add", "path": "/missing/x", "value": 1}], "does not exist"),
])
def test_apply_patch_refuses(ops, error):
    with pytest.raises(ValueError, match=error):
        admission.apply_patch({"a": 0}, ops)


def test_apply_patch_pointer_escapes_and_append():
    doc = {"m": {}, "l": [1]}
    out = admission.apply_patch(doc, [{"op": "add", "path": "/m/a~1b~0c", "value": 1},
                                      {"op": "add", "path": "/l/-", "value": 2}])
    assert out == {"m": {"a/b~c": 1}, "l": [1, 2]}
    assert doc == {"m": {}, "l": [1]}


def prepared(labels: dict[str, str], vips: dict[str, list[str]], *, name: str,
             **spec: Any) -> dict[str, Any]:
    """A pod with our init containers for `vips` (and the marker label)."""
    containers = [admission.init_container("dr" if mode == "dr" else "tunnel", v, image=IMAGE)
                  for mode, v in vips.items()]
    return pod({**labels, admission.LABEL: "injected"}, name=name, initContainers=containers,
               **spec)


APP = {"app": "web"}


@dataclass
class LackCase:
    id: str
    pod: dict[str, Any]
    lacking: bool
    virtualserver: dict[str, Any] = field(default_factory=vs)


LACK_CASES = [
    LackCase("created-before", pod(APP), True),
    LackCase("prepared", prepared(APP, {"dr": ["192.0.2.10"]}, name="p"), False),
    LackCase("prepared-other-vip", prepared(APP, {"dr": ["192.0.2.99"]}, name="p"), True),
    LackCase("prepared-other-mode", prepared(APP, {"tunnel": ["192.0.2.10"]}, name="p"), True),
    LackCase("label-without-containers", pod({**APP, admission.LABEL: "injected"}), True),
    LackCase("copied-container-without-label",
             pod(APP, initContainers=[admission.init_container("dr", ["192.0.2.10"],
                                                               image=IMAGE)]), False),
    LackCase("foreign-init-container", pod(APP, initContainers=[{"name": "x", "command": [
        "--mode", "dr", "--vip", "192.0.2.10"]}]), True),
    LackCase("ipv6-canonical", prepared(APP, {"dr": ["2001:DB8:0::10"]}, name="p"), False,
             vs(vip="2001:db8::10")),
    LackCase("opted-out", pod({**APP, admission.LABEL: "disabled"}), False),
    LackCase("host-network", pod(APP, hostNetwork=True), False),
    LackCase("deleting", deleting(pod(APP)), False),
    LackCase("finished", {**pod(APP), "status": {"phase": "Succeeded"}}, False),
    LackCase("not-selected", pod({"app": "api"}), False),
    LackCase("nat", pod(APP), False, vs(forwarding="NAT")),
    LackCase("invalid", pod(APP), False, vs(vip="x")),
    LackCase("static", pod(APP), False, vs(service=None)),
    LackCase("ipv6-tunnel-never-set-up", pod(APP), False,
             vs(vip="2001:db8::10", forwarding="Tunnel")),
]


@pytest.mark.parametrize("case", LACK_CASES, ids=lambda c: c.id)
def test_pods_lacking_setup(case: LackCase):
    lacking = admission.pods_lacking_setup(case.virtualserver, WEB, [case.pod])
    assert lacking == ([case.pod["metadata"]["name"]] if case.lacking else [])


def test_pods_lacking_setup_of_what_the_webhook_made():
    """A pod the webhook prepared does not lack the setup; one made before does."""
    documents = [vs(), vs("t", "198.51.100.7", "Tunnel")]
    made = admission.decide(pod(APP, name="new"), documents, [WEB], image=IMAGE, namespace=NS)
    new = admission.apply_patch(pod(APP, name="new"), made.patch)
    old = [pod(APP, name="old-b"), pod(APP, name="old-a")]
    for document in documents:
        assert admission.pods_lacking_setup(document, WEB, [new, *old]) == ["old-a", "old-b"]
    assert admission.pods_lacking_setup(vs(), None, old) == []


def test_prepared_vips_reads_the_init_containers():
    made = admission.decide(pod(APP), [vs(), vs("t", "198.51.100.7", "Tunnel"),
                                       vs("v6", "2001:db8::10")], [WEB], image=IMAGE,
                            namespace=NS)
    assert admission.prepared_vips(admission.apply_patch(pod(APP), made.patch)) == {
        "dr": frozenset({"192.0.2.10", "2001:db8::10"}), "tunnel": frozenset({"198.51.100.7"})}
    assert admission.prepared_vips(pod(APP)) == {}
    odd = pod(APP, initContainers=[{"name": "lvs-realserver-init-x", "args": ["--mode", "nat",
                                                                            "--vip", "1.2.3.4"]}])
    assert admission.prepared_vips(odd) == {}


def test_restart_message_names_pods():
    message = admission.restart_message("web-dr", "web", [f"web-{i}" for i in range(7)])
    assert message.startswith("7 pods of Service web lack the real-server setup for "
                              "VirtualServer web-dr")
    assert "web-0, web-1, web-2, web-3, web-4 and 2 more" in message
    assert "restart them" in message
    assert admission.restart_message("v", "s", ["p"]).startswith("1 pod of Service s ")


def test_label_selector():
    assert admission.label_selector({"tier": "x", "app": "web"}) == "app=web,tier=x"
    assert admission.service_selector(WEB) == {"app": "web"}
    assert admission.service_selector(svc()) is None


def test_webhook_configuration():
    ca = b"-----BEGIN CERTIFICATE-----\n"
    config = admission.webhook_configuration(
        "lvs-operator", admission.service_client_config("lvs-webhook", "lvs-system", ca))
    (webhook,) = config["webhooks"]
    assert webhook["clientConfig"]["service"] == {
        "name": "lvs-webhook", "namespace": "lvs-system", "path": "/realserver-init",
        "port": 443}
    assert webhook["clientConfig"]["caBundle"] == "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["sideEffects"] == "None"
    assert webhook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"],
                                 "resources": ["pods"], "operations": ["CREATE"],
                                 "scope": "Namespaced"}]
    assert webhook["objectSelector"] == {"matchExpressions": [
        {"key": admission.LABEL, "operator": "DoesNotExist"}]}
    assert admission.url_client_config("https://127.0.0.1:9443/") == {
        "url": "https://127.0.0.1:9443/realserver-init"}


def test_the_webhook_hands_kopf_the_request_namespace():
    """kopf passes handlers the posted object's metadata.namespace as `namespace`: the
    webhook's server feeds kopf the review already scoped to the request's namespace."""
    import asyncio

    from lvs_operator.controller import webhook

    seen: list[tuple[Any, dict[str, Any]]] = []

    async def kopf_fn(request, **kwargs):
        seen.append((request, kwargs))
        return {"response": {}}

    answer = asyncio.run(webhook.in_request_namespace(kopf_fn)(review(NS, "elsewhere"),
                                                               webhook="realserver-init"))
    assert answer == {"response": {}}
    ((request, kwargs),) = seen
    assert request["request"]["object"]["metadata"]["namespace"] == NS
    assert kwargs == {"webhook": "realserver-init"}
