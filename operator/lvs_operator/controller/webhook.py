"""The controller's two admission webhooks: kopf glue around `controller.admission` (the
real-server Pod webhook) and `controller.validation` (the VirtualServer webhook).

`configure(settings, image=..., namespace=...)` registers a kopf mutating handler for pod
creations and a validating handler for VirtualServer writes, and sets
`settings.admission.server` to a TLS server on `host:port` that serves both (paths
`/realserver-init` and `/virtualservers`). Each call of a handler reads what its pure decision
needs and answers with it.

Every replica answers. The controller runs kopf with `standalone=True` (no kopf peering):
which replica leads is decided by the controller's own coordination.k8s.io Lease, and that
gates only status writes and Events, not admission. (Admission is served by kopf's own root
task, which even kopf peering never pauses: a cluster test checks that a frozen replica
answers.) Nothing here is cached or taken from the controller's reflectors: every read is
fresh, with a deadline (`lookup_timeout`), through the controller's client (`kube.client`) in
threads, and namespaced by the admission request's `namespace`, never by the posted object's
`metadata.namespace` (`in_request_namespace`).

- Pods (`failurePolicy: Ignore`): each pod creation reads the VirtualServers of its namespace
  (one LIST, usually empty: the end of it), and only if a DirectRouting or Tunnel
  VirtualServer is there, the Services those reference and the Namespace (its Pod Security
  label), concurrently. If the reads fail, the pod is admitted unchanged with a warning and
  the controller's `admission.pods_lacking_setup` names it later.
- VirtualServers (`failurePolicy: Fail`): each CREATE or UPDATE that changes `spec` reads
  every VIPPool, the Namespace's labels and the VIP's VIPClaim, concurrently (VirtualServer
  writes are rare: no cache is worth it), and refuses what `validation.decide` refuses, with
  its message and HTTP status. If the reads fail, the write is refused too. **This webhook is
  in the path of every VirtualServer write**: while no controller replica answers (or the
  API server cannot reach one), VirtualServers can be neither created nor changed (deleting
  them still works). The data plane never needs it: the agents keep serving what they have.

The controller's RBAC must allow `list` virtualservers, `get` services and namespaces, and
`list` vippools and `get` vipclaims.

TLS, three ways (the API server only calls webhooks over HTTPS and checks the certificate
against the webhook's `caBundle`):

- `cert_dir`: `tls.crt`, `tls.key` and `ca.crt` from a mounted Secret, e.g. the one
  cert-manager writes for a Certificate (its CA injector fills the caBundle). kopf's server
  re-reads the files when they change (renewals).
- `secret_name`: the controller generates a CA and a serving certificate for
  `<service>.<namespace>.svc` once and stores them in that Secret (type kubernetes.io/tls,
  cert-manager's keys); every replica loads the same one (whoever creates it first wins;
  the others read it), so one caBundle fits all replicas. A certificate that no longer covers
  the names or expires within 30 days is replaced at start.
- neither: generated in memory by this process, for one replica (and tests).

With `configuration_name` (the MutatingWebhookConfiguration) and
`validating_configuration_name` (the ValidatingWebhookConfiguration), both created by the Helm
chart with a `service:` client config, every replica writes the CA into the caBundle of each
webhook of those configurations when it differs: the same value from every replica, so they
never fight.

kopf's own self-signed certificates are not used: they need `certbuilder` and `oscrypto`,
whose libcrypto detection fails with OpenSSL 3.0.19 here ("Error detecting the version of
libcrypto"), and they would differ per replica. kopf's managed webhook configuration
(`settings.admission.managed`) is not used either: each replica would rewrite it with its
own client config, it hard-codes `timeoutSeconds: 30` (30 s added to each pod creation while
a replica hangs), and it has no namespace or object selector for opting out.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import logging
import shutil
import tempfile
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lvs_operator.api import API_VERSION, PLURAL, claims, pools
from lvs_operator.controller import admission, validation
from lvs_operator.kube import client

logger = logging.getLogger(__name__)

DEFAULT_PORT = 9443
DEFAULT_SERVICE = "lvs-operator-webhook"
CERT_DAYS = 3650  # replaced at start within RENEW_BEFORE of the end; cert-manager rotates
RENEW_BEFORE = datetime.timedelta(days=30)
LOOKUP_TIMEOUT = 5.0  # seconds for all reads of one admission (the webhook allows 10)
CONFLICT_RETRIES = 5
TLS_CRT, TLS_KEY, CA_CRT = "tls.crt", "tls.key", "ca.crt"


# --- TLS ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TLSMaterial:
    """A serving certificate, its key and the CA that signed it (all PEM)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def names(self) -> set[str]:
        """Return the certificate's DNS and IP subject alternative names."""
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return set()
        return {*sans.get_values_for_type(x509.DNSName),
                *(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))}

    def usable_for(self, names: Sequence[str], *, now: datetime.datetime | None = None) -> bool:
        """Return whether the certificate covers `names` and lasts beyond RENEW_BEFORE.

        A certificate that cannot be read, or whose key does not match it, is not usable.
        """
        now = now or datetime.datetime.now(datetime.UTC)
        try:
            cert = x509.load_pem_x509_certificate(self.cert_pem)
            key = serialization.load_pem_private_key(self.key_pem, password=None)
            x509.load_pem_x509_certificate(self.ca_pem)
        except ValueError:
            return False
        if key.public_key() != cert.public_key():
            return False
        if cert.not_valid_after_utc - RENEW_BEFORE < now:
            return False
        return set(names) <= self.names()

    def write(self, folder: Path) -> None:
        """Write `tls.crt`, `tls.key` (mode 0600) and `ca.crt` into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        key = folder / TLS_KEY
        key.touch(mode=0o600)
        key.write_bytes(self.key_pem)
        (folder / TLS_CRT).write_bytes(self.cert_pem)
        (folder / CA_CRT).write_bytes(self.ca_pem)

    @classmethod
    def read(cls, folder: Path) -> TLSMaterial:
        """Return the material in `folder` (a mounted cert-manager Secret).

        Without `ca.crt` the serving certificate is taken as its own CA (self-signed).

        Raises:
            OSError: when `tls.crt` or `tls.key` cannot be read.
        """
        cert = (folder / TLS_CRT).read_bytes()
        ca_file = folder / CA_CRT
        return cls(ca_pem=ca_file.read_bytes() if ca_file.exists() else cert, cert_pem=cert,
                   key_pem=(folder / TLS_KEY).read_bytes())

    def secret_data(self) -> dict[str, str]:
        """Return the material as a Secret's `data` (base64), with cert-manager's keys."""
        return {key: base64.b64encode(value).decode("ascii") for key, value in (
            (TLS_CRT, self.cert_pem), (TLS_KEY, self.key_pem), (CA_CRT, self.ca_pem))}

    @classmethod
    def from_secret(cls, secret: Mapping[str, Any]) -> TLSMaterial | None:
        """Return the material in a Secret (as the API returns it), or None if incomplete."""
        data = secret.get("data") or {}
        try:
            return cls(ca_pem=base64.b64decode(data[CA_CRT]),
                       cert_pem=base64.b64decode(data[TLS_CRT]),
                       key_pem=base64.b64decode(data[TLS_KEY]))
        except (KeyError, TypeError, ValueError):
            return None


def service_names(service: str, namespace: str) -> list[str]:
    """Return the DNS names under which the API server may reach `service` (for the SANs)."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local"]


def generate_tls(names: Sequence[str], *, days: int = CERT_DAYS,
                 now: datetime.datetime | None = None) -> TLSMaterial:
    """Return a new CA and a serving certificate for `names` (DNS names or IP addresses).

    ECDSA P-256 keys (fast to make, accepted by the API server's TLS); valid from five
    minutes ago (clock skew) for `days`. The CA's key is discarded: a renewal makes a new CA.

    Raises:
        ValueError: when `names` is empty.
    """
    if not names:
        raise ValueError("a serving certificate needs at least one name")
    now = now or datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lvs-operator webhook CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=False, crl_sign=False,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return TLSMaterial(
        ca_pem=ca.public_bytes(pem),
        cert_pem=cert.public_bytes(pem),
        key_pem=key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
    )


# --- reads from the API server ---------------------------------------------------------------

class _API:
    """The few API calls of the webhook, each a blocking call of the controller's client run
    in a thread (with the webhook's deadline for reads)."""

    def __init__(self, api: client.Client, timeout: float) -> None:
        self._api = api
        self._timeout = timeout

    async def _call(self, method: str, path: str, *, body: object = None,
                    missing_ok: bool = False) -> dict[str, Any] | None:
        """Return the JSON answer (None for a 404 when `missing_ok`).

        Raises:
            kube.client.ApiError: on any other failure.
        """
        def call() -> dict[str, Any] | None:
            try:
                answer: dict[str, Any] = self._api.request(
                    method, path, body=body, timeout=(self._timeout, self._timeout))
            except client.ApiError as error:
                if missing_ok and error.status == 404:
                    return None
                raise
            return answer

        return await asyncio.to_thread(call)

    async def virtualservers(self, namespace: str) -> list[dict[str, Any]]:
        """Return the VirtualServers of `namespace` (none if the CRD is not installed)."""
        answer = await self._call(
            "GET", f"/apis/{API_VERSION}/namespaces/{namespace}/{PLURAL}", missing_ok=True)
        return list((answer or {}).get("items") or [])

    async def service(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Return the Service, or None if there is none."""
        return await self._call("GET", f"/api/v1/namespaces/{namespace}/services/{name}",
                                missing_ok=True)

    async def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        """Return the Namespace's labels, or None when they cannot be read (then unknown)."""
        try:
            answer = await self._call("GET", f"/api/v1/namespaces/{namespace}",
                                      missing_ok=True)
        except client.ApiError as error:
            if error.status == 403:
                return None  # no RBAC for namespaces: decide without the Pod Security level
            raise
        return dict(((answer or {}).get("metadata") or {}).get("labels") or {})

    async def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Return the Secret, or None if there is none."""
        return await self._call("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}",
                                missing_ok=True)

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> None:
        """Create a Secret. Raises kube.client.ApiError (409 when it exists)."""
        await self._call("POST", f"/api/v1/namespaces/{namespace}/secrets", body=body)

    async def replace_secret(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        """Replace a Secret (409 when its resourceVersion is stale)."""
        await self._call("PUT", f"/api/v1/namespaces/{namespace}/secrets/{name}", body=body)

    async def vippools(self) -> list[dict[str, Any]]:
        """Return every VIPPool (none if the CRD is not installed: then nothing is allowed)."""
        answer = await self._call("GET", f"/apis/{API_VERSION}/{pools.PLURAL}",
                                  missing_ok=True)
        return list((answer or {}).get("items") or [])

    async def vipclaim(self, name: str) -> dict[str, Any] | None:
        """Return the VIPClaim `name`, or None if there is none."""
        return await self._call("GET", f"/apis/{API_VERSION}/{claims.PLURAL}/{name}",
                                missing_ok=True)

    async def webhook_configuration(self, kind: str, name: str) -> dict[str, Any] | None:
        """Return the webhook configuration of `kind` (`MUTATING`, `VALIDATING`), or None if
        there is none."""
        return await self._call("GET", f"{_CONFIGURATIONS[kind]}/{name}", missing_ok=True)

    async def replace_webhook_configuration(self, kind: str, name: str,
                                            body: dict[str, Any]) -> None:
        """Replace the webhook configuration of `kind` (409 when stale)."""
        await self._call("PUT", f"{_CONFIGURATIONS[kind]}/{name}", body=body)

    def is_conflict(self, error: BaseException) -> bool:
        """Return whether `error` is the API's 409 Conflict / AlreadyExists."""
        return isinstance(error, client.ApiError) and error.status == 409


MUTATING = "MutatingWebhookConfiguration"
VALIDATING = "ValidatingWebhookConfiguration"
_CONFIGURATIONS = {
    MUTATING: "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
    VALIDATING: "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
}


# --- the server ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    """What `configure` was given (see there)."""

    image: str
    namespace: str
    service_name: str = DEFAULT_SERVICE
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    cert_dir: Path | None = None
    secret_name: str | None = None
    configuration_name: str | None = None
    validating_configuration_name: str | None = None
    extra_sans: tuple[str, ...] = ()
    image_pull_policy: str | None = None
    lookup_timeout: float = LOOKUP_TIMEOUT

    @property
    def names(self) -> list[str]:
        """Return the names the serving certificate must cover."""
        return [*service_names(self.service_name, self.namespace), *self.extra_sans]


class Webhooks(kopf.WebhookServer):
    """kopf's HTTPS webhook server, with our TLS material and both webhooks' decisions (the
    Pod webhook's `decide`, the VirtualServer webhook's `validate`).

    `ca_pem` is the CA bundle the API server must trust: known once the server has started
    (at once for generated material without a Secret).
    """

    def __init__(self, options: Options, *, api: client.Client | None = None) -> None:
        super().__init__(addr=options.host, port=options.port)
        self.options = options
        self._client = api
        self._api_instance: _API | None = None
        self._material: TLSMaterial | None = None
        if options.cert_dir is None and options.secret_name is None:
            self._material = generate_tls(options.names)
        self.ca_pem: bytes | None = self._material.ca_pem if self._material else None
        self.started = asyncio.Event()

    @property
    def api(self) -> _API:
        """Return the API reader, creating its client on first use."""
        if self._api_instance is None:
            api = self._client if self._client is not None else client.Client.connect(None)
            self._api_instance = _API(api, self.options.lookup_timeout)
        return self._api_instance

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:  # kopf's WebhookServerProtocol
        """Serve admission requests with `fn` (kopf's), yielding kopf's client configs.

        Resolves the TLS material first (reading or creating the shared Secret), then
        publishes its CA into the webhook configurations that are named.
        """
        workdir: Path | None = None
        try:
            if self.options.cert_dir is not None:
                folder = self.options.cert_dir
                self.ca_pem = TLSMaterial.read(folder).ca_pem
            else:
                material = self._material or await self._shared_material()
                workdir = Path(tempfile.mkdtemp(prefix="lvs-webhook-tls-"))
                material.write(workdir)
                folder, self.ca_pem = workdir, material.ca_pem
            self.certfile, self.pkeyfile = folder / TLS_CRT, folder / TLS_KEY
            self.cafile = folder / CA_CRT if (folder / CA_CRT).exists() else None
            async for client_config in super().__call__(in_request_namespace(fn)):
                if self.options.cert_dir is not None:  # (re)started on renewed files
                    self.ca_pem = TLSMaterial.read(self.options.cert_dir).ca_pem
                logger.info("webhooks serving on %s:%s", self.options.host, self.options.port)
                for kind, name in ((MUTATING, self.options.configuration_name),
                                   (VALIDATING, self.options.validating_configuration_name)):
                    if name is not None:
                        await self._publish_ca_bundle(kind, name)
                self.started.set()
                yield client_config
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)

    async def _shared_material(self) -> TLSMaterial:
        """Return the material in the Secret, creating or renewing it if needed.

        Raises:
            ApiException: when the Secret can be neither read nor written.
        """
        assert self.options.secret_name is not None
        namespace, name = self.options.namespace, self.options.secret_name
        for _ in range(CONFLICT_RETRIES):
            secret = await self.api.secret(namespace, name)
            current = TLSMaterial.from_secret(secret) if secret else None
            if current is not None and current.usable_for(self.options.names):
                return current
            material = generate_tls(self.options.names)
            body: dict[str, Any] = {
                "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": name, "namespace": namespace, "labels": {
                    "app.kubernetes.io/managed-by": "lvs-operator"}},
                "data": material.secret_data(),
            }
            try:
                if secret is None:
                    await self.api.create_secret(namespace, body)
                    logger.info("webhook certificate generated into Secret %s/%s",
                                namespace, name)
                else:
                    body["metadata"]["resourceVersion"] = secret["metadata"]["resourceVersion"]
                    await self.api.replace_secret(namespace, name, body)
                    logger.info("webhook certificate in Secret %s/%s renewed", namespace, name)
            except Exception as error:
                if self.api.is_conflict(error):
                    continue  # another replica was first: use what it wrote
                raise
            return material
        raise RuntimeError(f"Secret {namespace}/{name} kept changing under us: gave up after "
                           f"{CONFLICT_RETRIES} tries")

    async def _publish_ca_bundle(self, kind: str, name: str) -> None:
        """Set our CA as the caBundle of every webhook of the configuration (`kind`: `MUTATING`
        or `VALIDATING`) `name`.

        Logs (does not raise) when it is missing or cannot be written: the server still
        serves, and the log says why the API server cannot call it.
        """
        assert self.ca_pem is not None
        bundle = base64.b64encode(self.ca_pem).decode("ascii")
        try:
            for _ in range(CONFLICT_RETRIES):
                config = await self.api.webhook_configuration(kind, name)
                if config is None:
                    logger.warning("%s %s does not exist: its CA bundle cannot be set", kind,
                                   name)
                    return
                webhooks = config.get("webhooks") or []
                stale = [w for w in webhooks
                         if (w.get("clientConfig") or {}).get("caBundle") != bundle]
                if not stale:
                    return
                for webhook in stale:
                    webhook.setdefault("clientConfig", {})["caBundle"] = bundle
                try:
                    await self.api.replace_webhook_configuration(kind, name, config)
                except Exception as error:
                    if self.api.is_conflict(error):
                        continue
                    raise
                logger.info("CA bundle of %s %s set", kind, name)
                return
        except Exception as error:
            logger.error("cannot set the CA bundle of %s %s: %s", kind, name, error)

    async def decide(self, pod: Mapping[str, Any], namespace: str) -> admission.Decision:
        """Return `admission.decide` for `pod`, reading what it needs from the API server.

        Never raises: when the reads fail or time out the pod is left as it is, with a
        warning saying so.
        """
        try:
            return await asyncio.wait_for(self._decide(pod, namespace),
                                          self.options.lookup_timeout)
        except Exception as error:
            reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            return admission.Decision(reason=f"lookup failed: {reason}", warnings=(
                "lvs-operator could not check whether this pod is a real server of a "
                f"DirectRouting or Tunnel VirtualServer ({reason[:120]}); if it is, it lacks "
                "the real-server setup: re-create it",))

    async def _decide(self, pod: Mapping[str, Any], namespace: str) -> admission.Decision:
        virtualservers = await self.api.virtualservers(namespace)
        names = admission.referenced_services(virtualservers, namespace)
        services: list[dict[str, Any]] = []
        labels: dict[str, str] | None = None
        if names:
            found, labels = await asyncio.gather(
                asyncio.gather(*(self.api.service(namespace, n) for n in names)),
                self.api.namespace_labels(namespace))
            services = [s for s in found if s is not None]
        return admission.decide(pod, virtualservers, services, image=self.options.image,
                                namespace=namespace, namespace_labels=labels,
                                image_pull_policy=self.options.image_pull_policy)


    async def validate(self, operation: str, document: Mapping[str, Any],
                       old: Mapping[str, Any] | None, namespace: str) -> validation.Decision:
        """Return whether this VirtualServer write (`operation` of `document` in `namespace`,
        the request's; `old` the stored object for an UPDATE) may go on.

        Reads, concurrently and within the lookup deadline, every VIPPool, the Namespace's
        labels and the VIP's VIPClaim, and asks `validation.decide`. Never raises: when a read
        fails or times out, the write is refused (`validation.lookup_failed`), as the
        configuration's `failurePolicy: Fail` would do without an answer.
        """
        why = validation.exempt(operation, document, old)
        if why:
            return validation.Decision(True, reason=why)
        vs = validation.parse(document, namespace=namespace)
        if isinstance(vs, validation.Decision):
            return vs
        try:
            pool_documents, labels, claim = await asyncio.wait_for(asyncio.gather(
                self.api.vippools(), self.api.namespace_labels(namespace),
                self.api.vipclaim(claims.name_of(vs.vip))), self.options.lookup_timeout)
        except Exception as error:
            reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            return validation.lookup_failed(reason[:200])
        return validation.decide(vs, pool_documents=pool_documents, namespace_labels=labels,
                                 claim_document=claim)


def in_request_namespace(fn: Any) -> Any:
    """Return kopf's admission function `fn` fed each review with its objects in the
    request's namespace (`admission.in_request_namespace`): kopf gives handlers the posted
    object's `metadata.namespace` as `namespace`. Its answers get a refusal's `reason`
    (`with_reason`)."""

    async def scoped(request: Mapping[str, Any], **kwargs: Any) -> Any:
        return with_reason(await fn(admission.in_request_namespace(request), **kwargs))

    return scoped


# The Status reasons of the refusal codes, as the API server's own errors name them.
_REASONS = {validation.FORBIDDEN: "Forbidden", validation.INVALID: "Invalid",
            validation.LOOKUP_FAILED: "InternalError"}


def with_reason(response: Any) -> Any:
    """Return kopf's AdmissionReview `response`, its refusal's `status` given the `reason`
    of its code (kopf sets only the message and code), so that kubectl says "Error from
    server (Forbidden)" like for the API server's own refusals."""
    if not isinstance(response, dict):
        return response
    status = (response.get("response") or {}).get("status")
    if isinstance(status, dict) and "reason" not in status and status.get("code") in _REASONS:
        status["reason"] = _REASONS[status["code"]]
    return response


# Which webhook each registry's handler asks: a second `configure` replaces the first.
_webhooks: weakref.WeakKeyDictionary[kopf.OperatorRegistry, Webhooks] = (
    weakref.WeakKeyDictionary())


def configure(
    settings: kopf.OperatorSettings,
    *,
    image: str,
    namespace: str,
    service_name: str = DEFAULT_SERVICE,
    host: str = "0.0.0.0",
    port: int = DEFAULT_PORT,
    cert_dir: str | Path | None = None,
    secret_name: str | None = None,
    configuration_name: str | None = None,
    validating_configuration_name: str | None = None,
    extra_sans: Sequence[str] = (),
    image_pull_policy: str | None = None,
    lookup_timeout: float = LOOKUP_TIMEOUT,
    registry: kopf.OperatorRegistry | None = None,
    api: client.Client | None = None,
) -> Webhooks:
    """Serve the real-server Pod webhook and the VirtualServer validating webhook from this
    kopf operator; return their server.

    Call it before the operator starts or from a `@kopf.on.startup` handler (with that
    handler's `settings`). It registers the mutating handler (id `realserver-init`, path
    `/realserver-init`) and the validating one (id `virtualservers`, path `/virtualservers`)
    in `registry` (default: kopf's) and sets `settings.admission.server`; it does not set
    `settings.admission.managed` (the chart owns the configurations).

    Args:
        image: the image of the injected init containers (this project's image).
        namespace: the controller's namespace (its Service and Secret live there).
        service_name: the Service in front of the webhook (for the certificate's names).
        host, port: where to listen (all interfaces, 9443 by default).
        cert_dir: a mounted Secret with tls.crt, tls.key, ca.crt (e.g. cert-manager's).
        secret_name: else, the Secret in `namespace` in which the generated certificate is
            shared by all replicas (created if missing). Neither: generated per process.
        configuration_name: the MutatingWebhookConfiguration whose caBundle to keep set to
            our CA (None: someone else does, e.g. cert-manager's CA injector).
        validating_configuration_name: the same for the ValidatingWebhookConfiguration of
            VirtualServers.
        extra_sans: more names or IPs for a generated certificate (e.g. 127.0.0.1 in tests).
        image_pull_policy: for the init containers (None: the cluster's default).
        lookup_timeout: seconds for the reads of one admission.
        api: the client for the reads and writes (default: `kube.client.Client.connect(None)`:
            in-cluster, else $KUBECONFIG; on first use).

    Raises:
        ValueError: when both `cert_dir` and `secret_name` are given, or `image` is empty.
    """
    if cert_dir is not None and secret_name is not None:
        raise ValueError("give cert_dir (a mounted Secret) or secret_name (a generated one), "
                         "not both")
    if not image:
        raise ValueError("the init containers need an image")
    options = Options(
        image=image, namespace=namespace, service_name=service_name, host=host, port=port,
        cert_dir=Path(cert_dir) if cert_dir is not None else None, secret_name=secret_name,
        configuration_name=configuration_name,
        validating_configuration_name=validating_configuration_name, extra_sans=tuple(extra_sans),
        image_pull_policy=image_pull_policy, lookup_timeout=lookup_timeout)
    server = Webhooks(options, api=api)
    registry = registry if registry is not None else kopf.get_default_registry()
    if registry not in _webhooks:
        _register(registry)
    _webhooks[registry] = server
    settings.admission.server = server
    return server


class _RefusalIsNoError(logging.Filter):
    """Drops kopf's ERROR "Webhook 'virtualservers' failed permanently: ..." for a refusal:
    refusing is the webhook's job, not a failure, and the handler logs it (INFO) already."""

    PREFIX = f"Webhook {validation.HANDLER_ID!r} failed permanently: "

    def filter(self, record: logging.LogRecord) -> bool:
        """Return False for that record (dropped), True for every other."""
        return not (isinstance(record.msg, str) and record.msg.startswith(self.PREFIX))


def _register(registry: kopf.OperatorRegistry) -> None:
    """Register both handlers in `registry`; they ask `_webhooks[registry]`."""
    registry_ref = weakref.ref(registry)
    objects_logger = logging.getLogger("kopf.objects")
    if not any(isinstance(f, _RefusalIsNoError) for f in objects_logger.filters):
        objects_logger.addFilter(_RefusalIsNoError())

    @kopf.on.mutate("v1", "pods", id=admission.HANDLER_ID, operations=["CREATE"],
                    persistent=True, ignore_failures=True, registry=registry)
    async def realserver_init(body: kopf.Body, patch: kopf.Patch, warnings: list[str],
                              namespace: str | None, logger: kopf.Logger,
                              **_: Any) -> None:
        """Add the real-server setup to a pod that a DR/Tunnel VirtualServer selects."""
        current = registry_ref()
        server = _webhooks.get(current) if current is not None else None
        if server is None:
            return
        pod = dict(body)
        meta = pod.get("metadata") or {}
        pod_namespace = namespace or meta.get("namespace") or "default"
        decision = await server.decide(pod, pod_namespace)
        warnings.extend(decision.warnings)
        name = meta.get("name") or f"{meta.get('generateName', '')}*"
        if decision.mutates:
            ops = decision.patch

            def add_setup(raw: Any) -> None:
                mutated = admission.apply_patch(raw, ops)
                raw.clear()
                raw.update(mutated)

            patch.fns.append(add_setup)
            logger.info(f"pod {pod_namespace}/{name}: {decision.reason} for VirtualServer "
                        f"{', '.join(decision.virtualservers)}")
        elif decision.virtualservers or decision.warnings:
            logger.warning(f"pod {pod_namespace}/{name}: {decision.reason}")
        else:
            logger.debug(f"pod {pod_namespace}/{name}: {decision.reason}")

    @kopf.on.validate(API_VERSION, PLURAL, id=validation.HANDLER_ID,
                      operations=list(validation.OPERATIONS), persistent=True,
                      registry=registry)
    async def virtualservers(body: kopf.Body, namespace: str | None, logger: kopf.Logger,
                             **kwargs: Any) -> None:
        """Refuse a VirtualServer write that its namespace's pools or a VIP's owner forbid.

        kopf passes `operation` and `old` (the stored object of an UPDATE) among `kwargs`.

        Raises:
            kopf.AdmissionError: with the refusal's message and HTTP status.
        """
        operation = str(kwargs.get("operation") or "")
        old = kwargs.get("old")
        current = registry_ref()
        server = _webhooks.get(current) if current is not None else None
        if server is None:
            raise kopf.AdmissionError("lvs-operator's webhook is not configured: try again",
                                      code=validation.LOOKUP_FAILED)
        document = dict(body)
        meta = document.get("metadata") or {}
        vs_namespace = namespace or meta.get("namespace") or "default"
        decision = await server.validate(operation, document, dict(old) if old else None,
                                         vs_namespace)
        where = f"VirtualServer {vs_namespace}/{meta.get('name', '')}"
        if not decision.allowed:
            log = logger.warning if decision.code == validation.LOOKUP_FAILED else logger.info
            log(f"{where}: {operation} refused ({decision.reason}): {decision.message}")
            raise kopf.AdmissionError(decision.message, code=decision.code)
        logger.debug(f"{where}: {operation} allowed: {decision.reason}")
