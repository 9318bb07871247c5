"""Which VirtualServer writes the API server refuses: the validating webhook's decision. Pure.

Deny by default (issue 15), at `kubectl apply`: a VirtualServer is refused when its VIP lies in
no VIPPool its namespace may use, or the pool does not allow its forwarding mode, its static
backend addresses or its directors (`pools.admit`), or when another namespace owns the VIP
and did not consent to share it (`claims.check` against the VIP's VIPClaim). The message
names the field and what to do (for a VIP, the pools the namespace may use); it never names
another namespace's objects. The same rules run again in the controller and the agents, so
an object that got past this (written while no webhook was configured, or a pool edited
since) is still never served.

The Pod webhook's decisions are in `admission` (which pods get the real-server setup); this
module holds the VirtualServer webhook's, and its ValidatingWebhookConfiguration. `webhook`
serves both and reads what `decide` needs from the API server per request.

What is checked:
- CREATE and UPDATE of `virtualservers` (not the status subresource: the configuration
  does not send it). DELETE is never refused. An UPDATE that leaves `spec` as it was
  (labels, annotations, finalizers) is admitted unchecked: an object that predates a pool
  change can still be relabelled and finalized; the controller's `Ready=False` says why it
  is not served.
- The namespace is the admission request's (`admission.in_request_namespace`), never what
  the posted object claims.
- An invalid spec is the CRD schema's to refuse (it names the field first); one that reaches
  this anyway is refused with the `spec.SpecError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lvs_operator.api import GROUP, PLURAL, VERSION, claims, pools, spec

# The webhook: the kopf handler id is the last path segment kopf routes on.
HANDLER_ID = "virtualservers"
WEBHOOK_PATH = f"/{HANDLER_ID}"
WEBHOOK_NAME = "virtualservers.lvs.dev"  # webhook names need three dot-separated segments
OPERATIONS: tuple[Literal["CREATE", "UPDATE"], ...] = ("CREATE", "UPDATE")

# HTTP status codes of a refusal: the API server answers the client with them.
FORBIDDEN = 403  # a valid VirtualServer the namespace may not have (pools, claims)
INVALID = 422  # an invalid spec (as the schema would have answered)
LOOKUP_FAILED = 500  # the pools, the Namespace or the claim could not be read: try again

INVALID_SPEC = "InvalidSpec"
CLAIM_UNREADABLE = "VIPClaimInvalid"
LOOKUP_FAILURE = "LookupFailed"


@dataclass(frozen=True)
class Decision:
    """What the webhook answers for one VirtualServer write.

    Attributes:
        allowed: whether the write may go on.
        code: the HTTP status of a refusal (`FORBIDDEN`, `INVALID`, `LOOKUP_FAILED`); 200
            when allowed.
        reason: a refusal's reason (`pools.REASONS`, `claims.VIP_IN_USE`, `INVALID_SPEC`,
            ...), or why the write was allowed, for the log.
        message: a refusal's message for the client: names the field and what to do.
        pool: the VIPPool that admitted it ("" when none did or none was asked).
    """

    allowed: bool
    code: int = 200
    reason: str = ""
    message: str = ""
    pool: str = ""


def exempt(operation: str, document: Mapping[str, Any],
           old: Mapping[str, Any] | None) -> str:
    """Return why this write is admitted without a check ("" when it must be checked).

    `operation` is the admission request's, `document` the object written and `old` the
    stored one (UPDATE only).
    """
    if operation not in OPERATIONS:
        return f"{operation} is never refused"
    if operation == "UPDATE" and old is not None and old.get("spec") == document.get("spec"):
        return "spec unchanged"
    return ""


def parse(document: Mapping[str, Any], *, namespace: str) -> spec.VirtualServer | Decision:
    """Return the VirtualServer `document` describes in `namespace` (the request's), or the
    refusal (`INVALID`) naming the invalid field."""
    meta = document.get("metadata")
    scoped = {**document, "metadata": {**(meta if isinstance(meta, Mapping) else {}),
                                       "namespace": namespace}}
    try:
        return spec.parse(scoped, default_namespace=namespace)
    except spec.SpecError as error:
        return Decision(False, INVALID, INVALID_SPEC, str(error))


def usable_pools(documents: Iterable[Mapping[str, Any]]) -> list[pools.Pool]:
    """Return the valid VIPPools among `documents` (as the API returns them); an invalid one
    is left out: it grants nothing (the CRD's schema refuses most such pools)."""
    result = []
    for document in documents:
        try:
            result.append(pools.parse(document))
        except spec.SpecError:
            continue
    return result


def decide(vs: spec.VirtualServer, *, pool_documents: Iterable[Mapping[str, Any]],
           namespace_labels: Mapping[str, str] | None,
           claim_document: Mapping[str, Any] | None) -> Decision:
    """Return whether `vs` (from `parse`) may be written.

    Args:
        pool_documents: every VIPPool, as the API returns them (invalid ones are ignored).
        namespace_labels: the labels of `vs.namespace` (None: unknown, so only the pools that
            name the namespace serve it).
        claim_document: the VIPClaim named `claims.name_of(vs.vip)`, None when there is none.

    Refusals (`FORBIDDEN`): `pools.admit`'s (the VIP, forwarding mode, static backends and
    directors against the pools of the namespace), then `claims.check`'s on the VirtualServer
    as its pool admits it (another namespace's VIP without a matching sharing key and the
    same directors). A claim that cannot be read refuses the VIP (deny by default) and asks
    for an admin, naming only the claim (named after the address).
    """
    verdict = pools.admit(vs, usable_pools(pool_documents), namespace_labels)
    if verdict.vs is None:
        return Decision(False, FORBIDDEN, verdict.reason, verdict.message)
    claim = None
    if claim_document is not None:
        try:
            claim = claims.Claim.from_object(claim_document)
        except ValueError as error:
            return _unreadable_claim(vs, str(error))
        if claim.address != vs.vip:
            return _unreadable_claim(vs, f"spec.address: {claim.address}, not {vs.vip}")
    refusal = claims.check(verdict.vs, claim)
    if refusal:
        return Decision(False, FORBIDDEN, claims.VIP_IN_USE, refusal, verdict.pool)
    return Decision(True, reason=f"admitted by VIP pool {verdict.pool}", pool=verdict.pool)


def lookup_failed(what: str) -> Decision:
    """Return the refusal when the pools, the Namespace or the claim could not be read
    (`what` says why): deny by default, and say that retrying is the fix."""
    return Decision(False, LOOKUP_FAILED, LOOKUP_FAILURE,
                    f"lvs-operator could not check this VirtualServer against the VIP pools "
                    f"({what}): try again; if this persists, the controller cannot reach the "
                    "API server (see its log)")


def _unreadable_claim(vs: spec.VirtualServer, why: str) -> Decision:
    return Decision(False, FORBIDDEN, CLAIM_UNREADABLE,
                    f"spec.vip: the record of who owns {vs.vip} (VIPClaim "
                    f"{claims.name_of(vs.vip)}) is not valid ({why}): ask a cluster admin to "
                    "fix or delete it")


def webhook_configuration(
    name: str,
    client_config: Mapping[str, Any],
    *,
    timeout_seconds: int = 10,
    webhook_name: str = WEBHOOK_NAME,
    extra_namespace_expressions: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Return the ValidatingWebhookConfiguration that sends VirtualServer writes to the webhook.

    `client_config` is from `admission.service_client_config` or `url_client_config` with
    `path=WEBHOOK_PATH`. `failurePolicy: Fail`: while no controller answers, VirtualServers
    can be neither created nor changed (deny by default; the data plane does not need the
    controller). Every namespace is sent, unless `extra_namespace_expressions` (tests) narrow
    it.
    """
    webhook: dict[str, Any] = {
        "name": webhook_name,
        "clientConfig": dict(client_config),
        "rules": [{
            "apiGroups": [GROUP],
            "apiVersions": [VERSION],
            "resources": [PLURAL],
            "operations": list(OPERATIONS),
            "scope": "Namespaced",
        }],
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "timeoutSeconds": timeout_seconds,
        "admissionReviewVersions": ["v1"],
    }
    if extra_namespace_expressions:
        webhook["namespaceSelector"] = {
            "matchExpressions": [dict(e) for e in extra_namespace_expressions]}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "lvs-operator"}},
        "webhooks": [webhook],
    }
