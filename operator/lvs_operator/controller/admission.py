"""Which pods are DR or Tunnel real servers, and the init container that prepares them.

A pod is a real server of a VirtualServer when the VirtualServer forwards in DirectRouting or
Tunnel mode, its backend is a Service of the pod's namespace, and that Service's selector
matches the pod's labels. Such a pod must run `lvs-operator realserver-init` in its own
network namespace before its containers start (VIP on `lo` or `tunl0`, ARP and rp_filter per
interface), or it drops the director's packets. NAT real servers need nothing.

The Pod mutating webhook (`lvs_operator.webhook`) calls `decide` for every pod created and
sends back its JSONPatch; the controller calls `pods_lacking_setup` for pods that existed
before their VirtualServer. Everything here is pure: API objects come in as plain dicts
(as the API server sends them), nothing imports kopf or kubernetes.

The injected init container (one per mode: `realserver-init` takes one mode, and DR and Tunnel
setups of the same pod do not conflict: DR VIPs go on `lo`, Tunnel VIPs on `tunl0`, and both
set the same ARP values) asks for the least that works:

- `capabilities: {drop: [ALL], add: [NET_ADMIN]}`: every change goes through netlink in the
  pod's own network namespace (addresses, links, per-interface devconf); no NET_RAW, no
  SYS_ADMIN, no writable /proc/sys.
- `runAsUser: 0` (and `runAsNonRoot: false`, which a pod-level `runAsNonRoot: true` would
  otherwise contradict): Kubernetes sets no ambient capabilities, so a non-root process
  loses an added capability at exec unless the binary carries file capabilities, which a
  Python entry point cannot. Root here is root of the container only; with
  `hostUsers: false` it is not even root on the node.
- `allowPrivilegeEscalation: false`, `privileged: false`, `readOnlyRootFilesystem: true`,
  `seccompProfile: RuntimeDefault`: nothing else is needed.

A pod the webhook does not prepare, with a warning for whoever creates it: hostNetwork pods
(the setup would change the node's own network: put the VIP on the node instead), Windows
pods (the setup is Linux's; its securityContext would make the pod invalid), pods in a
namespace whose Pod Security level forbids NET_ADMIN (`baseline`, `restricted`: the pod
would be refused), and Tunnel VIPs that realserver-init cannot set up (IPv6).
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from lvs_operator.api import spec
from lvs_operator.model import Forwarding, IPAddress, TunnelType

Mode = Literal["dr", "tunnel"]
MODES: tuple[Mode, ...] = ("dr", "tunnel")  # the choices of `realserver-init --mode`
MODE_OF: Mapping[Forwarding, Mode] = {
    Forwarding.DIRECT_ROUTING: "dr",
    Forwarding.TUNNEL: "tunnel",
}

# The marker of a prepared pod: the label (also what the webhook's objectSelector skips) and
# the annotations that say for which VIPs (JSON: {"dr": [...], "tunnel": [...]}) and for
# which VirtualServers. Any other value of the label opts a pod out.
LABEL = "lvs.dev/realserver-init"
INJECTED = "injected"
VIPS_ANNOTATION = "lvs.dev/realserver-vips"
VIRTUALSERVERS_ANNOTATION = "lvs.dev/realserver-virtualservers"
CONTAINER_PREFIX = "lvs-realserver-init"  # + "-dr" / "-tunnel"
COMMAND = ("lvs-operator", "realserver-init")
CAPABILITY = "NET_ADMIN"
SECURITY_CONTEXT: Mapping[str, Any] = {
    "capabilities": {"drop": ["ALL"], "add": [CAPABILITY]},
    "runAsUser": 0,
    "runAsNonRoot": False,
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "readOnlyRootFilesystem": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
# A Python process with pyroute2 loaded, for a second: small requests keep quotas that demand
# requests satisfied without weighing on scheduling.
RESOURCES: Mapping[str, Any] = {
    "requests": {"cpu": "10m", "memory": "32Mi"},
    "limits": {"memory": "128Mi"},
}

# The webhook: the kopf handler id is the last path segment kopf routes on.
HANDLER_ID = "realserver-init"
WEBHOOK_PATH = f"/{HANDLER_ID}"
WEBHOOK_NAME = "realserver-init.lvs.dev"  # webhook names need three dot-separated segments
# Namespaces labelled `lvs.dev/realserver-webhook: disabled` are never sent to the webhook.
NAMESPACE_OPT_OUT_LABEL = "lvs.dev/realserver-webhook"
NAMESPACE_OPT_OUT_VALUE = "disabled"
PSA_ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
PSA_FORBIDDING_NET_ADMIN = frozenset({"baseline", "restricted"})


JSONPatch = tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class Decision:
    """What the webhook does with one pod.

    Attributes:
        patch: JSONPatch operations (RFC 6902, `add` only) adding the setup; empty leaves the
            pod as it is.
        vips: the VIPs per mode that the added init containers set up (empty if none).
        virtualservers: names of the DirectRouting/Tunnel VirtualServers whose Service
            selects the pod (even when nothing is added, e.g. for a hostNetwork pod).
        warnings: for the pod's creator (admission warnings; kubectl prints them).
        reason: one line for the log: why the pod was or was not changed.
    """

    patch: JSONPatch = ()
    vips: Mapping[Mode, tuple[str, ...]] = field(default_factory=dict)
    virtualservers: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    reason: str = ""

    @property
    def mutates(self) -> bool:
        """Return whether the pod is changed."""
        return bool(self.patch)


@dataclass(frozen=True)
class _Selection:
    """A DR/Tunnel VirtualServer of the pod's namespace whose Service selects the pod."""

    vs: spec.VirtualServer
    mode: Mode


def referenced_services(virtualservers: Iterable[Mapping[str, Any]],
                        namespace: str | None = None) -> list[str]:
    """Return the names of the Services that valid DR/Tunnel VirtualServers use as backend.

    These are the only Services `decide` needs: the webhook reads just these (none at all in
    the usual namespace without such a VirtualServer). `namespace` is the default for
    documents that lack `metadata.namespace`. Invalid and deleting VirtualServers are skipped.
    """
    names = {
        vs.backend.name
        for vs in _realserver_virtualservers(virtualservers, namespace)
        if isinstance(vs.backend, spec.ServiceBackend)
    }
    return sorted(names)


def decide(
    pod: Mapping[str, Any],
    virtualservers: Iterable[Mapping[str, Any]],
    services: Iterable[Mapping[str, Any]],
    *,
    image: str,
    namespace: str | None = None,
    namespace_labels: Mapping[str, str] | None = None,
    image_pull_policy: str | None = None,
) -> Decision:
    """Return what to do with `pod` (a Pod being created).

    `virtualservers` are the VirtualServers of the pod's namespace and `services` the Services
    they reference (`referenced_services`), as API objects; invalid or deleting VirtualServers
    and missing Services are skipped (the controller reports those). `namespace` is the
    admission request's namespace: the pod's, whatever its `metadata.namespace` claims (used
    only without it); `namespace_labels` are its
    Namespace's labels (None when unknown). `image` and `image_pull_policy` are those of the
    init containers.

    The pod is left alone when nothing selects it, when it carries the marker label (already
    prepared, or opted out with any other value) or an init container of ours already: a
    second admission never injects twice.
    """
    meta = _mapping(pod.get("metadata"))
    pod_spec = _mapping(pod.get("spec"))
    labels = _str_mapping(meta.get("labels"))
    namespace = str(namespace or meta.get("namespace") or "default")

    marker = labels.get(LABEL)
    if marker == INJECTED:
        return Decision(reason=f"already prepared (label {LABEL}={INJECTED})")
    if marker is not None:
        return Decision(reason=f"opted out (label {LABEL}={marker})")
    ours = [c.get("name") for c in _containers(pod_spec, "initContainers")
            if str(c.get("name", "")).startswith(CONTAINER_PREFIX)]
    if ours:
        return Decision(reason=f"already has init container {ours[0]}")

    by_name = {_name(s): s for s in services}
    selections: list[_Selection] = []
    for vs in _realserver_virtualservers(virtualservers, namespace):
        if vs.namespace != namespace or not isinstance(vs.backend, spec.ServiceBackend):
            continue
        selector = service_selector(by_name.get(vs.backend.name))
        if selector is not None and selects(selector, labels):
            selections.append(_Selection(vs, MODE_OF[vs.forwarding]))
    if not selections:
        return Decision(reason="no DirectRouting or Tunnel VirtualServer's Service selects it")

    names = tuple(sorted({s.vs.name for s in selections}))
    listed = ", ".join(names)
    if pod_spec.get("hostNetwork") is True:
        return Decision(virtualservers=names, reason="hostNetwork pod: left alone", warnings=(
            f"lvs-operator: pod uses hostNetwork, so the real-server setup for VirtualServer "
            f"{listed} is not added (it would change the node's own network): run "
            "`lvs-operator realserver-init` on the node instead",))
    if _mapping(pod_spec.get("os")).get("name") == "windows":
        return Decision(virtualservers=names, reason="Windows pod: left alone", warnings=(
            f"lvs-operator: Windows pod: the real-server setup for VirtualServer {listed} is "
            "for Linux and is not added",))
    level = (namespace_labels or {}).get(PSA_ENFORCE_LABEL)
    if level in PSA_FORBIDDING_NET_ADMIN:
        return Decision(virtualservers=names, reason=f"Pod Security {level}: left alone",
                        warnings=(
            f"lvs-operator: namespace {namespace} enforces Pod Security {level!r}, which "
            f"forbids the {CAPABILITY} the real-server setup for VirtualServer {listed} needs: "
            "not added; label the namespace "
            f"{PSA_ENFORCE_LABEL}=privileged and re-create the pod",))

    vips: dict[Mode, set[IPAddress]] = {mode: set() for mode in MODES}
    warnings: list[str] = []
    for selection in selections:
        vs = selection.vs
        if selection.mode == "tunnel" and vs.vip.version == 6:
            warnings.append(
                f"lvs-operator: VirtualServer {vs.name}: Tunnel mode for IPv6 VIP {vs.vip} "
                "cannot be set up in the pod yet (realserver-init handles IPv4 tunnels): "
                "not added")
            continue
        if selection.mode == "tunnel" and vs.tunnel is not None \
                and vs.tunnel.type is not TunnelType.IPIP:
            warnings.append(
                f"lvs-operator: VirtualServer {vs.name}: realserver-init sets up the VIP on "
                f"tunl0 (ipip) only; {vs.tunnel.type.name.lower()} decapsulation must be "
                "set up in the pod by other means")
        vips[selection.mode].add(vs.vip)
    chosen = {mode: tuple(str(v) for v in sorted(found, key=_address_order))
              for mode, found in vips.items() if found}
    if not chosen:
        return Decision(virtualservers=names, warnings=tuple(warnings),
                        reason="no VIP that realserver-init can set up")

    containers = [init_container(mode, list(addresses), image=image,
                                 image_pull_policy=image_pull_policy)
                  for mode, addresses in chosen.items()]
    annotations = {
        VIPS_ANNOTATION: json.dumps(chosen, separators=(",", ":")),
        VIRTUALSERVERS_ANNOTATION: ",".join(names),
    }
    ops = [*_insert_list(pod_spec, "/spec", "initContainers", containers),
           *_add_entries(meta, "/metadata", "labels", {LABEL: INJECTED}),
           *_add_entries(meta, "/metadata", "annotations", annotations)]
    summary = "; ".join(f"{mode} {', '.join(a)}" for mode, a in chosen.items())
    return Decision(patch=tuple(ops), vips=chosen, virtualservers=names,
                    warnings=tuple(warnings), reason=f"added realserver-init ({summary})")


def in_request_namespace(review: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return the AdmissionReview `review` with its objects' `metadata.namespace` set to the
    request's `namespace` (a copy; `review` itself when the request names none, as for a
    cluster-scoped object).

    The API server authorized the request for `request.namespace`; what the posted object
    says is the client's claim, and deciding on it would look up another namespace's
    VirtualServers and Services for this pod.
    """
    request = review.get("request")
    namespace = request.get("namespace") if isinstance(request, Mapping) else None
    if not namespace or not isinstance(request, Mapping):
        return review
    scoped = dict(request)
    for key in ("object", "oldObject"):
        obj = request.get(key)
        if isinstance(obj, Mapping):
            scoped[key] = {**obj, "metadata": {**_mapping(obj.get("metadata")),
                                               "namespace": namespace}}
    return {**review, "request": scoped}


def init_container(mode: Mode, vips: Sequence[str], *, image: str,
                   image_pull_policy: str | None = None) -> dict[str, Any]:
    """Return the init container running `lvs-operator realserver-init` for `vips`.

    Raises:
        ValueError: for a mode realserver-init does not know, or no VIPs.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not vips:
        raise ValueError("realserver-init needs at least one VIP")
    command = [*COMMAND, "--mode", mode]
    for vip in vips:
        command += ["--vip", vip]
    container: dict[str, Any] = {
        "name": f"{CONTAINER_PREFIX}-{mode}",
        "image": image,
        "command": command,
        "securityContext": copy.deepcopy(dict(SECURITY_CONTEXT)),
        "resources": copy.deepcopy(dict(RESOURCES)),
        # realserver-init's failure message names the setting: show it in the pod's status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if image_pull_policy:
        container["imagePullPolicy"] = image_pull_policy
    return container


def service_selector(service: Mapping[str, Any] | None) -> dict[str, str] | None:
    """Return the label selector of a Service, or None if it selects no pods.

    A Service without a selector (endpoints managed by hand) or of type ExternalName selects
    nothing.
    """
    if service is None:
        return None
    service_spec = _mapping(service.get("spec"))
    if service_spec.get("type") == "ExternalName":
        return None
    selector = _str_mapping(service_spec.get("selector"))
    return selector or None


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Return whether a Service's (equality-based) selector matches `labels`."""
    return all(labels.get(key) == value for key, value in selector.items())


def label_selector(selector: Mapping[str, str]) -> str:
    """Return `selector` as a `labelSelector` query string (`a=b,c=d`) for listing pods."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


def prepared_vips(pod: Mapping[str, Any]) -> dict[Mode, frozenset[str]]:
    """Return the VIPs per mode that `pod`'s init containers of ours set up (empty if none).

    Read from the containers' commands (`--mode M --vip V ...`), not from the annotation:
    init containers cannot change after creation, annotations and labels can.
    """
    result: dict[Mode, set[str]] = {}
    for container in _containers(_mapping(pod.get("spec")), "initContainers"):
        if not str(container.get("name", "")).startswith(CONTAINER_PREFIX):
            continue
        command = [str(a) for a in [*(container.get("command") or []),
                                    *(container.get("args") or [])]]
        pairs = list(itertools.pairwise(command))
        modes = [value for flag, value in pairs if flag == "--mode"]
        vips = [value for flag, value in pairs if flag == "--vip"]
        if len(modes) == 1 and modes[0] in MODES:
            mode: Mode = "dr" if modes[0] == "dr" else "tunnel"
            result.setdefault(mode, set()).update(_canonical(v) for v in vips)
    return {mode: frozenset(vips) for mode, vips in result.items()}


def pods_lacking_setup(
    virtualserver: Mapping[str, Any],
    service: Mapping[str, Any] | None,
    pods: Iterable[Mapping[str, Any]],
) -> list[str]:
    """Return the names of pods that a restart would give the setup they lack (sorted).

    `virtualserver` is a VirtualServer, `service` its backend Service (None if missing) and
    `pods` the pods of its namespace (or only those the Service selects: list them with
    `label_selector(service_selector(service))`). A pod lacks the setup when the Service
    selects it and the webhook did not set up this VirtualServer's VIP in its mode: created
    before the VirtualServer, while the webhook was down, or before the VIP or mode changed.
    Not listed: pods that are deleting or finished, hostNetwork pods and opted-out pods (a
    restart would not change them), and every pod of an invalid or NAT VirtualServer or one
    whose VIP the webhook never sets up (IPv6 in Tunnel mode). What a pod has is read from
    its init containers (`prepared_vips`).
    """
    try:
        vs = spec.parse(virtualserver)
    except spec.SpecError:
        return []
    return pods_lacking(vs, service, pods)


def pods_lacking(vs: spec.VirtualServer, service: Mapping[str, Any] | None,
                 pods: Iterable[Mapping[str, Any]]) -> list[str]:
    """Return `pods_lacking_setup` for an already parsed VirtualServer `vs`."""
    mode = MODE_OF.get(vs.forwarding)
    if mode is None or not isinstance(vs.backend, spec.ServiceBackend):
        return []
    if mode == "tunnel" and vs.vip.version == 6:
        return []
    selector = service_selector(service)
    if selector is None:
        return []
    vip = str(vs.vip)
    lacking = []
    for pod in pods:
        meta = _mapping(pod.get("metadata"))
        pod_spec = _mapping(pod.get("spec"))
        labels = _str_mapping(meta.get("labels"))
        if meta.get("deletionTimestamp") or pod_spec.get("hostNetwork") is True:
            continue
        if _mapping(pod.get("status")).get("phase") in ("Succeeded", "Failed"):
            continue
        if not selects(selector, labels):
            continue
        marker = labels.get(LABEL)
        if marker is not None and marker != INJECTED:
            continue
        if vip not in prepared_vips(pod).get(mode, frozenset()):
            lacking.append(str(meta.get("name", "")))
    return sorted(lacking)


def restart_message(virtualserver: str, service: str, pods: Sequence[str],
                    *, most: int = 5) -> str:
    """Return the Event/condition message naming `pods` that lack the setup.

    At most `most` names are listed, then how many more.
    """
    shown = ", ".join(pods[:most])
    if len(pods) > most:
        shown += f" and {len(pods) - most} more"
    count = f"{len(pods)} pod" + ("s" if len(pods) != 1 else "")
    return (f"{count} of Service {service} lack the real-server setup for VirtualServer "
            f"{virtualserver} (created before it, while the webhook was down, or before its "
            f"VIP or mode changed): {shown}; restart them (e.g. kubectl rollout restart) so "
            "that the webhook adds it")


def webhook_configuration(
    name: str,
    client_config: Mapping[str, Any],
    *,
    failure_policy: str = "Ignore",
    timeout_seconds: int = 10,
    webhook_name: str = WEBHOOK_NAME,
    extra_namespace_expressions: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """Return a MutatingWebhookConfiguration sending pod creations to the webhook.

    `client_config` is from `service_client_config` (in a cluster) or `url_client_config`.
    `failurePolicy: Ignore` by default: a controller that is down never blocks pod creation
    (such pods are found later by `pods_lacking_setup`). Pods that carry the marker label and
    namespaces labelled `lvs.dev/realserver-webhook: disabled` are not sent at all.
    `reinvocationPolicy: IfNeeded`: a later webhook may add labels that make a Service
    select the pod; being re-asked is harmless since `decide` never injects twice.
    """
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "lvs-operator"}},
        "webhooks": [{
            "name": webhook_name,
            "clientConfig": dict(client_config),
            "rules": [{
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "operations": ["CREATE"],
                "scope": "Namespaced",
            }],
            "objectSelector": {"matchExpressions": [
                {"key": LABEL, "operator": "DoesNotExist"}]},
            "namespaceSelector": {"matchExpressions": [
                {"key": NAMESPACE_OPT_OUT_LABEL, "operator": "NotIn",
                 "values": [NAMESPACE_OPT_OUT_VALUE]},
                *[dict(e) for e in extra_namespace_expressions]]},
            "failurePolicy": failure_policy,
            "matchPolicy": "Equivalent",
            "sideEffects": "None",
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": timeout_seconds,
            "admissionReviewVersions": ["v1"],
        }],
    }


def service_client_config(service: str, namespace: str, ca_pem: bytes | None = None,
                          *, port: int = 443, path: str = WEBHOOK_PATH) -> dict[str, Any]:
    """Return a webhook `clientConfig` reaching the webhook through a Service (in a cluster).

    The API server connects to `<service>.<namespace>.svc:<port><path>` and checks the
    serving certificate against `ca_pem` (PEM; None leaves caBundle to be filled in later,
    e.g. by cert-manager's CA injector or by the controller). `path` picks the webhook: this
    module's Pod webhook by default, `validation.WEBHOOK_PATH` for VirtualServers.
    """
    config: dict[str, Any] = {"service": {"name": service, "namespace": namespace,
                                          "path": path, "port": port}}
    if ca_pem is not None:
        config["caBundle"] = base64.b64encode(ca_pem).decode("ascii")
    return config


def url_client_config(base_url: str, ca_pem: bytes | None = None, *,
                      path: str = WEBHOOK_PATH) -> dict[str, Any]:
    """Return a webhook `clientConfig` with a URL (`https://host:port`, no path; `path` is
    added as in `service_client_config`).

    Only for an API server that cannot reach Services (a local test control plane without
    kube-proxy); in a cluster use `service_client_config`.
    """
    config: dict[str, Any] = {"url": base_url.rstrip("/") + path}
    if ca_pem is not None:
        config["caBundle"] = base64.b64encode(ca_pem).decode("ascii")
    return config


def apply_patch(document: Mapping[str, Any], patch: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Return a copy of `document` with the JSONPatch `add` operations of `patch` applied.

    Raises:
        ValueError: for an operation other than `add`, or a path that does not exist.
    """
    result: dict[str, Any] = copy.deepcopy(dict(document))
    for op in patch:
        if op.get("op") != "add":
            raise ValueError(f"only add operations are supported, got {op.get('op')!r}")
        path = str(op.get("path", ""))
        if not path.startswith("/"):
            raise ValueError(f"a JSON pointer starts with '/': {path!r}")
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]
        target: Any = result
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target.get(part)
            if target is None:
                raise ValueError(f"{path}: {part} does not exist")
        value = copy.deepcopy(op.get("value"))
        if isinstance(target, list):
            target.insert(len(target) if last == "-" else int(last), value)
        elif isinstance(target, dict):
            target[last] = value
        else:
            raise ValueError(f"{path}: cannot add into a {type(target).__name__}")
    return result


def _realserver_virtualservers(virtualservers: Iterable[Mapping[str, Any]],
                               namespace: str | None) -> list[spec.VirtualServer]:
    """Return the valid, not deleting DR/Tunnel VirtualServers among the documents."""
    result = []
    for document in virtualservers:
        if _mapping(document.get("metadata")).get("deletionTimestamp"):
            continue
        try:
            vs = spec.parse(document, default_namespace=namespace or "default")
        except spec.SpecError:
            continue  # the controller reports it (Ready=False, InvalidSpec)
        if vs.forwarding in MODE_OF:
            result.append(vs)
    return result


def _insert_list(parent: Mapping[str, Any], path: str, key: str,
                 items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Return ops putting `items` first in the list `parent[key]` (creating it if absent).

    First, because the pod's own init containers may already want the VIP.
    """
    if not isinstance(parent.get(key), list):
        return [{"op": "add", "path": f"{path}/{key}", "value": [dict(i) for i in items]}]
    return [{"op": "add", "path": f"{path}/{key}/{index}", "value": dict(item)}
            for index, item in enumerate(items)]


def _add_entries(parent: Mapping[str, Any], path: str, key: str,
                 entries: Mapping[str, str]) -> list[dict[str, Any]]:
    """Return ops adding `entries` to the map `parent[key]` (creating it if absent)."""
    if not isinstance(parent.get(key), Mapping):
        return [{"op": "add", "path": f"{path}/{key}", "value": dict(entries)}]
    return [{"op": "add", "path": f"{path}/{key}/{_escape(name)}", "value": value}
            for name, value in entries.items()]


def _escape(token: str) -> str:
    """Return `token` escaped for a JSON pointer (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def _containers(pod_spec: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    raw = pod_spec.get(key)
    return [c for c in raw if isinstance(c, Mapping)] if isinstance(raw, list) else []


def _name(document: Mapping[str, Any]) -> str:
    return str(_mapping(document.get("metadata")).get("name", ""))


def _mapping(raw: object) -> Mapping[str, Any]:
    return raw if isinstance(raw, Mapping) else {}


def _str_mapping(raw: object) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): str(v) for k, v in raw.items() if v is not None}


def _address_order(address: IPAddress) -> tuple[int, int]:
    return (address.version, int(address))


def _canonical(raw: str) -> str:
    """Return an address in its canonical text form (as str(ip_address) writes it)."""
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return raw
