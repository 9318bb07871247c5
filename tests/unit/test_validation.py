"""validation: which VirtualServer writes the validating webhook refuses, and its
configuration; the webhook's reads (`Webhooks.validate`) with a fake API."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from lvs_operator.api import claims, pools, spec
from lvs_operator.controller import admission, validation, webhook

NS = "shop"
OTHER = "bank"


def vs(vip: str = "203.0.113.5", *, namespace: str = NS, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"vip": vip, "ports": [{"port": 80}],
                            "backend": {"service": {"name": "web"}}, **extra}
    return {"apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualServer",
            "metadata": {"name": "web", "namespace": namespace}, "spec": body}


def pool(name: str, addresses: list[str], **body: Any) -> dict[str, Any]:
    return {"apiVersion": "lvs.dev/v1alpha1", "kind": "VIPPool", "metadata": {"name": name},
            "spec": {"addresses": addresses, **body}}


SHOP = pool("shop", ["203.0.113.0/28", "2001:db8:5::/120"], namespaces=[NS],
            backendAddresses=["10.77.0.0/24"],
            directors={"nodeSelector": {"site": "a"}, "interface": "eth1"})
LABELLED = pool("labelled", ["198.51.100.0/28"], namespaceSelector={"matchLabels": {"t": "x"}})
BANKS = pool("banks", ["192.0.2.0/24"], namespaces=[OTHER])
BROKEN = pool("broken", ["not-an-address"], namespaces=[NS])
OPEN = pool("open", ["0.0.0.0/0"], namespaces=[NS], backendAddresses=["0.0.0.0/0", "::/0"],
            directors={"allowOverride": True})
POOLS = [SHOP, LABELLED, BANKS, BROKEN]


def claim(vip: str, namespace: str = OTHER, key: str = "", **directors: Any
          ) -> dict[str, Any]:
    address = spec.parse_address(vip, "vip")
    return claims.Claim(address, namespace, key, spec.Directors(
        node_selector=directors.get("node_selector", {"site": "a"}),
        interface=directors.get("interface", "eth1")), pool="shop").document()


@dataclass
class Case:
    name: str
    document: dict[str, Any]
    allowed: bool
    reason: str = ""
    path: str = ""  # the refusal's message starts with it
    documents: list[dict[str, Any]] = field(default_factory=lambda: list(POOLS))
    labels: dict[str, str] | None = field(default_factory=dict)
    claim: dict[str, Any] | None = None
    code: int = validation.FORBIDDEN


CASES = [
    Case("a VIP of the namespace's pool", vs(), True),
    Case("a VIP in no pool of the namespace", vs("192.0.2.7"), False,
         pools.VIP_NOT_ALLOWED, "spec.vip"),
    Case("a pool chosen by namespace label", vs("198.51.100.3"), True, labels={"t": "x"}),
    Case("labels unknown: only pools naming the namespace", vs("198.51.100.3"), False,
         pools.VIP_NOT_ALLOWED, "spec.vip", labels=None),
    Case("no pool at all", vs(), False, pools.VIP_NOT_ALLOWED, "spec.vip", documents=[]),
    Case("an invalid pool grants nothing", vs("192.0.2.7"), False, pools.VIP_NOT_ALLOWED,
         "spec.vip", documents=[BROKEN, pool("bad2", ["192.0.2.0/24"], namespaces=["NOT A NS"])]),
    Case("a static backend in the pool's backend ranges",
         vs(backend={"addresses": [{"ip": "10.77.0.9"}]}), True),
    Case("a static backend outside them (another namespace's pod)",
         vs(backend={"addresses": [{"ip": "10.77.0.9"}, {"ip": "10.244.1.7"}]}), False,
         pools.BACKEND_NOT_ALLOWED, "spec.backend.addresses[1].ip"),
    Case("an IPv6 static backend outside them",
         vs("2001:db8:5::10", backend={"addresses": [{"ip": "fd00:ec2::254"}]}), False,
         pools.BACKEND_NOT_ALLOWED, "spec.backend.addresses[0].ip"),
    Case("another interface than the pool's",
         vs(directors={"interface": "eth9"}), False, pools.DIRECTORS_NOT_ALLOWED,
         "spec.directors.interface"),
    Case("another value of the pool's node label",
         vs(directors={"nodeSelector": {"site": "b"}}), False, pools.DIRECTORS_NOT_ALLOWED,
         "spec.directors.nodeSelector.site"),
    Case("a narrower node selector", vs(directors={"nodeSelector": {"rack": "1"}}), True),
    Case("a pool that allows everything",
         vs("192.0.2.7", backend={"addresses": [{"ip": "10.244.1.7"}]},
            directors={"interface": "eth9"}), True, documents=[OPEN]),
    Case("the namespace's own claim", vs(), True, claim=claim("203.0.113.5", NS)),
    Case("another namespace's VIP", vs(), False, claims.VIP_IN_USE, "spec.vip",
         claim=claim("203.0.113.5", key="k")),
    Case("another namespace's VIP, another key", vs(sharingKey="j"), False,
         claims.VIP_IN_USE, "spec.vip", claim=claim("203.0.113.5", key="k")),
    Case("another namespace's VIP, the same key and directors", vs(sharingKey="k"), True,
         claim=claim("203.0.113.5", key="k")),
    Case("the same key, other directors", vs(sharingKey="k"), False, claims.VIP_IN_USE,
         "spec.vip", claim=claim("203.0.113.5", key="k", interface="eth2")),
    Case("a claim the owner made without a key", vs(sharingKey="k"), False,
         claims.VIP_IN_USE, "spec.vip", claim=claim("203.0.113.5")),
    Case("an unreadable claim", vs(), False, validation.CLAIM_UNREADABLE, "spec.vip",
         claim={"metadata": {"name": "203.0.113.5"}, "spec": {"address": "203.0.113.5"}}),
    Case("a claim of another address under this name", vs(), False,
         validation.CLAIM_UNREADABLE, "spec.vip", claim=claim("203.0.113.6", NS)),
]


def parsed(document: dict[str, Any], namespace: str = NS) -> spec.VirtualServer:
    result = validation.parse(document, namespace=namespace)
    assert isinstance(result, spec.VirtualServer), result
    return result


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_decide(case: Case) -> None:
    decision = validation.decide(parsed(case.document), pool_documents=case.documents,
                                 namespace_labels=case.labels, claim_document=case.claim)
    assert decision.allowed is case.allowed, decision
    if case.allowed:
        assert decision.code == 200 and decision.pool and not decision.message
        return
    assert (decision.code, decision.reason) == (case.code, case.reason), decision
    assert decision.message.startswith(f"{case.path}: "), decision.message
    assert OTHER not in decision.message, "names another namespace"


def test_the_refusal_names_the_pools_the_namespace_may_use() -> None:
    decision = validation.decide(parsed(vs("192.0.2.7")), pool_documents=POOLS,
                                 namespace_labels={"t": "x"}, claim_document=None)
    expected = pools.admit(spec.parse(vs("192.0.2.7")),
                           [pools.parse(p) for p in (SHOP, LABELLED, BANKS)], {"t": "x"})
    assert decision.message == expected.message
    assert "labelled (198.51.100.0/28); shop (203.0.113.0/28, 2001:db8:5::/120)" in \
        decision.message
    assert "banks" not in decision.message
    none = validation.decide(parsed(vs(), "empty"), pool_documents=POOLS, namespace_labels={},
                             claim_document=None)
    assert "namespace empty may use no VIP pool" in none.message


def test_the_request_namespace_decides() -> None:
    """The posted object claims the namespace OTHER: the request's namespace (NS) is used."""
    admitted = parsed(vs(namespace=OTHER))
    assert admitted.namespace == NS
    decision = validation.decide(admitted, pool_documents=POOLS, namespace_labels={},
                                 claim_document=None)
    assert decision.allowed and decision.pool == "shop"


def test_an_invalid_spec_is_refused_with_the_field() -> None:
    refusal = validation.parse(vs(ports=[{"port": 0}]), namespace=NS)
    assert isinstance(refusal, validation.Decision)
    assert (refusal.allowed, refusal.code, refusal.reason) == (
        False, validation.INVALID, validation.INVALID_SPEC)
    assert refusal.message.startswith("spec.ports[0].port: ")


@pytest.mark.parametrize(("operation", "old", "exempt"), [
    ("CREATE", None, False),
    ("UPDATE", vs("203.0.113.6"), False),
    ("UPDATE", {**vs(), "metadata": {"name": "web", "labels": {"a": "b"}}}, True),
    ("DELETE", vs(), True),
    ("CONNECT", None, True),
])
def test_exempt(operation: str, old: dict[str, Any] | None, exempt: bool) -> None:
    assert bool(validation.exempt(operation, vs(), old)) is exempt


def test_webhook_configuration() -> None:
    ca = b"-----BEGIN CERTIFICATE-----\n"
    config = validation.webhook_configuration(
        "lvs-virtualservers", admission.service_client_config(
            "lvs-webhook", "lvs-system", ca, path=validation.WEBHOOK_PATH))
    assert config["kind"] == "ValidatingWebhookConfiguration"
    (hook,) = config["webhooks"]
    assert hook["name"] == validation.WEBHOOK_NAME
    assert hook["clientConfig"]["service"] == {
        "name": "lvs-webhook", "namespace": "lvs-system", "path": "/virtualservers",
        "port": 443}
    assert hook["clientConfig"]["caBundle"] == "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="
    assert (hook["failurePolicy"], hook["sideEffects"]) == ("Fail", "None")
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["rules"] == [{"apiGroups": ["lvs.dev"], "apiVersions": ["v1alpha1"],
                              "resources": ["virtualservers"],
                              "operations": ["CREATE", "UPDATE"], "scope": "Namespaced"}]
    assert "namespaceSelector" not in hook
    assert admission.url_client_config("https://127.0.0.1:9443/", path="/virtualservers") == {
        "url": "https://127.0.0.1:9443/virtualservers"}


# --- the webhook's reads ---------------------------------------------------------------------

class FakeAPI:
    """The reads `Webhooks.validate` makes, from memory (or hanging, or failing)."""

    def __init__(self, *, pools: list[dict[str, Any]], labels: dict[str, str] | None,
                 claims: dict[str, dict[str, Any]] | None = None, hang: bool = False,
                 fail: bool = False) -> None:
        self.pools, self.labels, self.claims = pools, labels, claims or {}
        self.hang, self.fail = hang, fail
        self.asked: list[str] = []

    async def _read(self, what: str) -> None:
        self.asked.append(what)
        if self.hang:
            await asyncio.sleep(60)
        if self.fail:
            raise OSError("connection refused")

    async def vippools(self) -> list[dict[str, Any]]:
        await self._read("vippools")
        return self.pools

    async def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        await self._read(f"namespace {namespace}")
        return self.labels

    async def vipclaim(self, name: str) -> dict[str, Any] | None:
        await self._read(f"vipclaim {name}")
        return self.claims.get(name)


def validate(api: FakeAPI, operation: str, document: dict[str, Any],
             old: dict[str, Any] | None = None) -> validation.Decision:
    server = webhook.Webhooks(webhook.Options(image="x", namespace="lvs",
                                              lookup_timeout=0.2))
    server._api_instance = api  # type: ignore[assignment]
    return asyncio.run(server.validate(operation, document, old, NS))


def test_the_webhook_reads_pools_namespace_and_claim() -> None:
    api = FakeAPI(pools=POOLS, labels={}, claims={"203.0.113.5": claim("203.0.113.5")})
    decision = validate(api, "CREATE", vs())
    assert (decision.allowed, decision.reason) == (False, claims.VIP_IN_USE)
    assert sorted(api.asked) == ["namespace shop", "vipclaim 203.0.113.5", "vippools"]
    v6 = validate(FakeAPI(pools=POOLS, labels={}), "CREATE", vs("2001:db8:5::10"))
    assert v6.allowed


@pytest.mark.parametrize("trouble", ["hang", "fail"])
def test_the_webhook_refuses_when_it_cannot_read(trouble: str) -> None:
    api = FakeAPI(pools=POOLS, labels={}, hang=trouble == "hang", fail=trouble == "fail")
    decision = validate(api, "CREATE", vs())
    assert (decision.allowed, decision.code, decision.reason) == (
        False, validation.LOOKUP_FAILED, validation.LOOKUP_FAILURE)
    assert "try again" in decision.message


def test_the_webhook_reads_nothing_for_what_it_does_not_check() -> None:
    api = FakeAPI(pools=[], labels={}, fail=True)
    assert validate(api, "UPDATE", vs(), old=vs()).allowed
    assert validate(api, "DELETE", vs()).allowed
    refusal = validate(api, "CREATE", vs(ports=[]))
    assert (refusal.allowed, refusal.code) == (False, validation.INVALID)
    assert api.asked == []


def test_a_refusal_is_not_logged_as_an_error() -> None:
    import logging

    refusal = webhook._RefusalIsNoError()
    record = logging.LogRecord("kopf.objects", logging.ERROR, "", 0,
                               "Webhook 'virtualservers' failed permanently: spec.vip: ...",
                               None, None)
    assert not refusal.filter(record)
    other = logging.LogRecord("kopf.objects", logging.ERROR, "", 0,
                              "Webhook 'realserver-init' failed permanently: boom", None, None)
    assert refusal.filter(other)


def test_a_refusal_has_the_reason_of_its_code() -> None:
    refused = {"response": {"allowed": False, "status": {"message": "m", "code": 403}}}
    assert webhook.with_reason(refused)["response"]["status"] == {
        "message": "m", "code": 403, "reason": "Forbidden"}
    allowed = {"response": {"allowed": True}}
    assert webhook.with_reason(allowed) == {"response": {"allowed": True}}
