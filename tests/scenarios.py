"""The end-to-end scenarios of the chart, shared by the kind suite (tests/e2e_kind) and the
node tier (tests/node): one set of scenario functions, two ways to get a cluster.

A scenario talks to the cluster only as a user does, through kubectl, helm and a client that
sends HTTP requests to a VIP, via the :class:`Cluster` protocol that each suite's lab
implements (kindlab.Lab: a kind cluster and a client container; nodelab's NodeLab: a kubelet
node in the kernel VM and a client network namespace).
"""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "crds" / "examples"
CHART = ROOT / "charts" / "lvs-operator"
RELEASE, RELEASE_NAMESPACE = "lvs", "lvs-system"
NAMESPACE = "e2e"  # the VirtualServers and real servers
DIRECTOR_LABEL = "lvs.dev/director"
PORT = 8080  # every real server listens here
REQUESTS = 30
INJECTED_LABEL = "lvs.dev/realserver-init"
INIT_PREFIX = "lvs-realserver-init"

# The VIPPool every test VirtualServer lives in unless the test is about pools (deny by
# default: without a pool no VIP is allowed): every address, every backend, any directors,
# for every namespace but those labelled CLOSED_LABEL (where the pool tests work).
OPEN_POOL_NAME = "lvs-test-open"
CLOSED_LABEL = "lvs.dev/test-closed"


def open_pool() -> dict[str, Any]:
    """Return the VIPPool that lets the tests' namespaces use any address."""
    everything = ["0.0.0.0/0", "::/0"]
    return {
        "apiVersion": "lvs.dev/v1alpha1", "kind": "VIPPool",
        "metadata": {"name": OPEN_POOL_NAME},
        "spec": {"addresses": everything, "backendAddresses": everything,
                 "namespaceSelector": {"matchExpressions": [
                     {"key": CLOSED_LABEL, "operator": "DoesNotExist"}]},
                 "directors": {"allowOverride": True}},
    }


def pool_values(vips: Iterable[str], interface: str) -> list[str]:
    """Return the `helm install` arguments of the chart's default VIPPool for a lab whose
    VirtualServers (`adapt`) use `vips` in NAMESPACE: those addresses, for that namespace
    only, held by the director nodes on `interface` (what an admin would give)."""
    pool = {"addresses": sorted(vips), "namespaces": [NAMESPACE], "namespaceSelector": None,
            "directors": {"nodeSelector": {DIRECTOR_LABEL: "true"}, "interface": interface}}
    return ["--set-json", f"defaultPool={json.dumps(pool)}"]


# The director settings the chart's NOTES ask for on every director node.
DIRECTOR_SYSCTLS = {
    "net.ipv4.vs.conntrack": "1",  # NAT: the MASQUERADE of replies needs conntrack entries
    "net.ipv4.vs.expire_nodest_conn": "1",
    "net.ipv4.vs.expire_quiescent_template": "1",
    "net.ipv4.vs.conn_reuse_mode": "1",
    "net.ipv4.ip_forward": "1",
}

# The real servers: an HTTP server that answers every GET with its pod's name.
SERVER = """
import http.server, os
name = os.environ["POD_NAME"].encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(name)))
        self.end_headers()
        self.wfile.write(name)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), Handler).serve_forever()
"""

# The client: GET url `count` times (0: until its stdin reaches its end), a new connection
# each, `interval` seconds apart; prints JSON
# [[seconds since start, HTTP status or null, body or null, error or null], ...].
CLIENT_SCRIPT = """
import itertools, json, sys, threading, time, urllib.error, urllib.request
url, count, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
closed = threading.Event()
if count == 0:
    threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
start, results = time.monotonic(), []
for _ in range(count) if count else itertools.takewhile(lambda _: not closed.is_set(),
                                                        itertools.count()):
    at = time.monotonic() - start
    try:
        with opener.open(url, timeout=2) as answer:
            results.append([at, answer.status, answer.read().decode(), None])
    except urllib.error.HTTPError as e:
        results.append([at, e.code, None, None])
    except Exception as e:
        results.append([at, None, None, f"{type(e).__name__}: {e}"])
    time.sleep(interval)
print(json.dumps(results))
"""

_T = TypeVar("_T")


@dataclass(frozen=True)
class Answer:
    """One request of the client: when (seconds since the first), the HTTP status (None
    when no answer), the body (the pod's name) and the error."""

    at: float
    status: int | None
    pod: str | None
    error: str | None


class Cluster(Protocol):
    """What a scenario needs of a lab."""

    interface: str  # the directors' interface on the clients' L2 segment
    directors: list[str]
    #: DirectRouting real servers: hostNetwork pods that run realserver-init themselves (a
    #: routed pod network, kind) or ordinary pods that the webhook prepares (a bridged one).
    dr_host_network: bool
    #: Where the real servers run: extra fields of their pod spec (nodeSelector, tolerations).
    real_server_placement: Mapping[str, Any]

    @property
    def image(self) -> str:
        """The product image as the pods name it (repository:tag)."""

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> str: ...

    def helm(self, *args: str, timeout: float = 600) -> str: ...

    def client_command(self, vip: str, port: int, *, count: int,
                       interval: float = 0.0) -> list[str]: ...

    def run_client(self, argv: Sequence[str], *, timeout: float) -> str: ...

    def diagnose(self) -> str: ...


# --- small helpers ---------------------------------------------------------------------------

def say(message: str) -> None:
    """Print a progress line (seen with pytest -s)."""
    print(f"==> {message}", flush=True)


def wait_for(what: str, probe: Callable[[], _T | None], *, timeout: float,
             interval: float = 1.0, diagnose: Callable[[], str] | None = None,
             errors: tuple[type[BaseException], ...] = (
                 KeyError, IndexError, RuntimeError, subprocess.CalledProcessError)) -> _T:
    """Return the first truthy ``probe()``; raise AssertionError naming ``what``, the last
    result and the diagnosis after ``timeout`` seconds. ``errors`` raised by the probe count
    as "not yet" (a lab's failed command: kindlab's LabError is a RuntimeError)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = probe()
        except errors as e:
            last = e
        else:
            if result:
                return result
            last = result
        if time.monotonic() > deadline:
            detail = f"\n{diagnose()}" if diagnose else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; "
                                 f"last: {last!r}{detail}")
        time.sleep(interval)


def get(cluster: Cluster, *args: str) -> Any:
    """Return ``kubectl get -o json ARGS`` parsed."""
    return json.loads(cluster.kubectl("get", "-o", "json", *args))


def apply(cluster: Cluster, documents: Iterable[Mapping[str, Any]]) -> None:
    """``kubectl apply`` the documents."""
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(list(documents)))


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Return whether a pod (JSON) has the Ready condition."""
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions", []))


# --- the objects -----------------------------------------------------------------------------

def example(name: str) -> list[dict[str, Any]]:
    """Return the documents of crds/examples/<name>.yaml."""
    return [d for d in yaml.safe_load_all((EXAMPLES / f"{name}.yaml").read_text()) if d]


def adapt(documents: list[dict[str, Any]], *, vip: str, interface: str,
          service: str | None = None) -> list[dict[str, Any]]:
    """Return an example adapted to a lab: its VirtualServer on `vip`, round robin (so two
    real servers both answer), the directors on `interface`, the real servers on PORT, its
    backend the Service `service` if given (port "http"); everything in NAMESPACE. The rest
    (mode, health check, drain) stays the example's."""
    result = []
    for original in documents:
        doc = copy.deepcopy(original)
        doc["metadata"]["namespace"] = NAMESPACE
        if doc["kind"] == "Service":
            (port,) = doc["spec"]["ports"]
            doc["spec"]["ports"] = [{"name": port["name"], "port": PORT, "targetPort": PORT}]
        elif doc["kind"] == "VirtualServer":
            spec = doc["spec"]
            spec["vip"] = vip
            spec["scheduler"] = {"name": "rr"}
            spec["directors"] = {"nodeSelector": {DIRECTOR_LABEL: "true"},
                                 "interface": interface}
            nat = spec["forwarding"] == "NAT"
            # NAT remaps the first virtual port to PORT; DR and Tunnel cannot remap.
            first = spec["ports"][0]
            spec["ports"] = [{"port": first["port"], "protocol": "TCP", "targetPort": PORT}
                             if nat else {"port": PORT, "protocol": "TCP"}]
            if service:
                spec["backend"] = {"service": {"name": service, "port": "http"}}
            if spec["forwarding"] == "Tunnel":
                # ipip, the default: what realserver-init's tunl0 decapsulates.
                spec.pop("tunnel", None)
        result.append(doc)
    return result


def nat_service(name: str, app: str) -> dict[str, Any]:
    """The NAT example has static addresses; in the cluster its backend is pods."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"selector": {"app": app},
                     "ports": [{"name": "http", "port": PORT, "targetPort": PORT}]}}


def real_servers(cluster: Cluster, app: str, *, replicas: int,
                 host_network_dr_vip: str | None = None) -> dict[str, Any]:
    """A Deployment of HTTP servers answering their pod's name, placed as the lab says.

    `host_network_dr_vip`: a hostNetwork real server, which sets itself up with
    `lvs-operator realserver-init --mode dr` (the webhook skips hostNetwork pods: the setup
    changes the node's network).
    """
    container: dict[str, Any] = {
        "name": "http", "image": cluster.image, "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-c", SERVER],
        "env": [{"name": "PORT", "value": str(PORT)},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 2},
    }
    pod: dict[str, Any] = {**copy.deepcopy(dict(cluster.real_server_placement)),
                           "containers": [container], "terminationGracePeriodSeconds": 1}
    if host_network_dr_vip:
        pod["hostNetwork"] = True
        pod["initContainers"] = [{
            "name": "realserver-init", "image": cluster.image,
            "imagePullPolicy": "IfNotPresent",
            "args": ["realserver-init", "--vip", host_network_dr_vip, "--mode", "dr"],
            "securityContext": {"runAsUser": 0, "runAsNonRoot": False,
                                "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}},
        }]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": app, "namespace": NAMESPACE},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app}},
                 "strategy": {"type": "Recreate"},
                 "template": {"metadata": {"labels": {"app": app}}, "spec": pod}},
    }


def kinds(documents: Iterable[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Return the documents of one kind."""
    return [dict(d) for d in documents if d["kind"] == kind]


# --- the scenarios ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Site:
    """One applied example: its VirtualServer, VIP and port, and its real servers' app."""

    mode: str
    name: str
    vip: str
    port: int
    app: str
    replicas: int


def apply_sites(cluster: Cluster, vips: Mapping[str, str], *, timeout: float,
                replicas: Mapping[str, int] | None = None) -> dict[str, Site]:
    """Apply the examples named by ``vips`` (mode -> VIP; modes dr, tunnel, nat) and their
    real servers; return them once every VirtualServer is Ready with an active director.
    Raises AssertionError (with the lab's diagnosis) when that does not happen in time."""
    replicas = replicas or {}
    documents = {}
    for mode, vip in vips.items():
        if mode == "nat":
            documents[mode] = [nat_service("shop", "shop"),
                               *adapt(example("nat"), vip=vip, interface=cluster.interface,
                                      service="shop")]
        else:
            documents[mode] = adapt(example(mode), vip=vip, interface=cluster.interface)
    result = {}
    for mode, docs in documents.items():
        (vs,) = kinds(docs, "VirtualServer")
        (service,) = kinds(docs, "Service")
        result[mode] = Site(mode=mode, name=vs["metadata"]["name"], vip=vs["spec"]["vip"],
                            port=vs["spec"]["ports"][0]["port"],
                            app=service["spec"]["selector"]["app"],
                            replicas=replicas.get(mode, 1 if mode == "dr" else 2))
    say(f"apply the examples {sorted(result)} (Services and VirtualServers) in {NAMESPACE}")
    apply(cluster, (d for docs in documents.values() for d in docs))
    for mode, site in result.items():
        if mode == "tunnel" or (mode == "dr" and not cluster.dr_host_network):
            wait_for_webhook(cluster, site, timeout=timeout)
    say("real servers: " + ", ".join(f"{s.app} x{s.replicas}" for s in result.values()))
    apply(cluster, (real_servers(cluster, site.app, replicas=site.replicas,
                                 host_network_dr_vip=site.vip
                                 if mode == "dr" and cluster.dr_host_network else None)
                    for mode, site in result.items()))
    for site in result.values():
        cluster.kubectl("rollout", "status", "-n", NAMESPACE, f"deployment/{site.app}",
                        f"--timeout={timeout:.0f}s", timeout=timeout + 30)
    for site in result.values():
        wait_for(f"VirtualServer {site.name} Ready with an active director",
                 functools.partial(ready, cluster, site.name), timeout=timeout, interval=2,
                 diagnose=cluster.diagnose)
    return result


def virtualserver(cluster: Cluster, name: str) -> dict[str, Any]:
    """Return the VirtualServer `name` of NAMESPACE (JSON)."""
    result: dict[str, Any] = get(cluster, "virtualserver", "-n", NAMESPACE, name)
    return result


def ready(cluster: Cluster, name: str) -> bool:
    """Return whether VirtualServer `name` is Ready and has an active director."""
    status = virtualserver(cluster, name).get("status") or {}
    is_ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in status.get("conditions") or [])
    return is_ready and bool(status.get("activeDirector"))


def wait_for_webhook(cluster: Cluster, site: Site, *, timeout: float) -> None:
    """Wait until the webhook prepares a pod of `site` (a server-side dry run): the
    controller must serve it and know the VirtualServer, or the pods come up unprepared."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"generateName": "probe-", "namespace": NAMESPACE,
                        "labels": {"app": site.app}},
           "spec": {"containers": [{"name": "c", "image": cluster.image}]}}

    def injected() -> bool:
        out = cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                              input=json.dumps(pod))
        init = json.loads(out)["spec"].get("initContainers") or []
        return any(c["name"].startswith(INIT_PREFIX) for c in init)

    wait_for(f"the webhook to inject realserver-init for {site.name}", injected,
             timeout=timeout, interval=2, diagnose=cluster.diagnose)


def pods(cluster: Cluster, site: Site) -> list[dict[str, Any]]:
    """Return the site's live pods (JSON), sorted by name; asserts there are `replicas`."""
    found = [p for p in get(cluster, "pods", "-n", NAMESPACE, "-l", f"app={site.app}")["items"]
             if not p["metadata"].get("deletionTimestamp")]
    found.sort(key=lambda p: p["metadata"]["name"])
    names = [p["metadata"]["name"] for p in found]
    assert len(names) == site.replicas, f"{site.app}: pods {names}"
    return found


def injected_init(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return the statuses of a pod's injected realserver-init containers; asserts the
    webhook marked the pod and each of them terminated with exit code 0."""
    name = pod["metadata"]["name"]
    assert pod["metadata"].get("labels", {}).get(INJECTED_LABEL) == "injected", (
        f"the webhook did not prepare {name}")
    statuses = [s for s in pod["status"].get("initContainerStatuses") or []
                if s["name"].startswith(INIT_PREFIX)]
    assert statuses, f"{name} has no {INIT_PREFIX} container status"
    for status in statuses:
        terminated = status.get("state", {}).get("terminated") or {}
        assert terminated.get("exitCode") == 0, f"{name}: {status['name']}: {status}"
    return statuses


def requests(cluster: Cluster, vip: str, port: int, *, count: int = REQUESTS,
             interval: float = 0.0) -> list[Answer]:
    """GET the VIP from the lab's client `count` times, a new connection each."""
    out = cluster.run_client(cluster.client_command(vip, port, count=count, interval=interval),
                             timeout=count * (interval + 3) + 30)
    return [Answer(float(at), status, pod, error) for at, status, pod, error in json.loads(out)]


def traffic(cluster: Cluster, site: Site, *, count: int = REQUESTS) -> dict[str, int]:
    """Send `count` requests to the site's VIP; return how many each pod answered. Every
    request must be answered with HTTP 200."""
    answers = requests(cluster, site.vip, site.port, count=count)
    failed = [a for a in answers if a.status != 200]
    if failed:
        raise AssertionError(f"{site.mode}: {len(failed)} of {count} requests to "
                             f"{site.vip}:{site.port} got no 200, e.g. {failed[0]}\n"
                             f"{cluster.diagnose()}")
    counts: dict[str, int] = {}
    for answer in answers:
        assert answer.pod is not None
        counts[answer.pod] = counts.get(answer.pod, 0) + 1
    say(f"{site.mode}: {count} requests to {site.vip}:{site.port}: HTTP 200 from {counts}")
    return counts


def agent_pod(cluster: Cluster, node: str, *, ready_only: bool = True) -> str | None:
    """Return the name of the agent pod on `node` (a ready one, unless `ready_only` is
    False), or None."""
    found = get(cluster, "pods", "-n", RELEASE_NAMESPACE, "-l",
                f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=agent",
                "--field-selector", f"spec.nodeName={node}")["items"]
    names = [p["metadata"]["name"] for p in found
             if not p["metadata"].get("deletionTimestamp") and (pod_ready(p) or not ready_only)]
    return names[0] if names else None


def ipvs_show(cluster: Cluster, node: str, *args: str) -> str:
    """Return the output of `lvs-operator ipvs show ARGS` run in the agent pod of `node`
    (the README's command)."""
    pod = agent_pod(cluster, node)
    assert pod, f"no ready agent pod on {node}"
    return cluster.kubectl("exec", "-n", RELEASE_NAMESPACE, pod, "--", "lvs-operator", "ipvs",
                           "show", *args)


def kernel_service(cluster: Cluster, site: Site) -> dict[str, Any]:
    """Return the VIP's service as `lvs-operator ipvs show -o json` sees it in the active
    director's agent pod."""
    active = virtualserver(cluster, site.name)["status"]["activeDirector"]
    table = json.loads(ipvs_show(cluster, active, "-o", "json"))
    found = [s for s in table if s.get("address") == site.vip and s.get("port") == site.port]
    assert len(found) == 1, f"{site.vip}:{site.port} not in the kernel of {active}: {table}"
    service: dict[str, Any] = found[0]
    return service


def direct_routing(cluster: Cluster, site: Site) -> dict[str, int]:
    """DR: every real server answers (round robin), the kernel forwards by Route, and the
    director sends nothing back (replies go straight to the client). Returns the answers."""
    return _direct_return(cluster, site, forwarding="Route")


def tunnel(cluster: Cluster, site: Site) -> dict[str, int]:
    """Tunnel: every real server was prepared by the injected `realserver-init --mode
    tunnel` for the site's VIP (exit code 0), answers (round robin), the kernel forwards by
    Tunnel (ipip), and the director sends nothing back. Returns the answers."""
    for pod in pods(cluster, site):
        injected_init(pod)
        commands = [c.get("command") for c in pod["spec"]["initContainers"]
                    if c["name"].startswith(INIT_PREFIX)]
        assert commands == [["lvs-operator", "realserver-init", "--mode", "tunnel",
                             "--vip", site.vip]], f"{pod['metadata']['name']}: {commands}"
    return _direct_return(cluster, site, forwarding="Tunnel")


def _direct_return(cluster: Cluster, site: Site, *, forwarding: str) -> dict[str, int]:
    """The checks of DR and Tunnel: every pod answers, every real server is forwarded to by
    `forwarding` ("Route" or "Tunnel"), and the director sent no packet back."""
    counts = traffic(cluster, site)
    assert set(counts) == {p["metadata"]["name"] for p in pods(cluster, site)}, counts
    service = kernel_service(cluster, site)
    assert [r["forwarding"] for r in service["realServers"]] == [forwarding] * site.replicas
    assert service["stats"]["conns"] >= REQUESTS
    assert service["stats"]["outPackets"] == 0, \
        f"{site.mode}: the real server answers the client directly"
    return counts


# --- the agent pod's keepalived container ----------------------------------------------------

KEEPALIVED_CONTAINER = "keepalived"
KEEPALIVED_METRICS_PORT = 9641  # the chart's agent.keepalived.metricsPort
PROBLEM_LEVELS = ("ERROR", "CRITICAL")


def problem_lines(log: str) -> list[str]:
    """Return the lines of a container's log that the product wrote at level ERROR or
    CRITICAL (its format: "DATE TIME LEVEL logger: message") and the first lines of Python
    tracebacks."""
    return [line for line in log.splitlines()
            if [*line.split(" ", 3), "", "", ""][2] in PROBLEM_LEVELS
            or line == "Traceback (most recent call last):"]


def container_log(cluster: Cluster, pod: str, container: str) -> str:
    """Return the log of `container` of the release's pod `pod`."""
    return cluster.kubectl("logs", "-n", RELEASE_NAMESPACE, pod, "-c", container)


AGENT_CONTAINERS = ["agent", KEEPALIVED_CONTAINER]


def agent_containers(cluster: Cluster, node: str) -> list[str]:
    """Check the agent pod of `node`: exactly the containers agent and keepalived, each
    Running and ready with 0 restarts; no ERROR, CRITICAL or traceback in the keepalived
    container's log; its metrics answering with lvs_keepalived_up 1 (keepalived runs, with
    or without VRRP instances). Returns a line per container and the metric, to print."""
    pod = agent_pod(cluster, node)
    assert pod, f"no ready agent pod on {node}"
    spec = get(cluster, "pod", "-n", RELEASE_NAMESPACE, pod)
    statuses = {s["name"]: s for s in spec["status"].get("containerStatuses") or []}
    assert [c["name"] for c in spec["spec"]["containers"]] == AGENT_CONTAINERS, spec["spec"]
    lines = []
    for name in AGENT_CONTAINERS:
        status = statuses[name]
        lines.append(f"{pod} container {name}: {', '.join(status['state'])}, ready "
                     f"{status['ready']}, restarts {status['restartCount']}")
        assert list(status["state"]) == ["running"], f"{pod} {name}: {status}"
        assert status["ready"] is True and status["restartCount"] == 0, f"{pod} {name}: {status}"
    log = container_log(cluster, pod, KEEPALIVED_CONTAINER)
    assert problem_lines(log) == [], f"{pod} {KEEPALIVED_CONTAINER}:\n{log}"
    up = keepalived_metrics(cluster, node).get("lvs_keepalived_up")
    lines.append(f"{pod} container {KEEPALIVED_CONTAINER}: lvs_keepalived_up {up}, "
                 f"{len(log.splitlines())} log lines, none at ERROR or CRITICAL")
    assert up == 1.0, f"{pod}: lvs_keepalived_up is {up}:\n{log}"
    return lines


def keepalived_metrics(cluster: Cluster, node: str) -> dict[str, float]:
    """Return the samples (name{labels} -> value) of the keepalived container's /metrics on
    `node`, fetched inside that container (hostNetwork: the node's loopback)."""
    from prometheus_client.parser import text_string_to_metric_families

    pod = agent_pod(cluster, node)
    assert pod, f"no ready agent pod on {node}"
    text = cluster.kubectl(
        "exec", "-n", RELEASE_NAMESPACE, pod, "-c", KEEPALIVED_CONTAINER, "--", "python", "-c",
        "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
        f"'http://127.0.0.1:{KEEPALIVED_METRICS_PORT}/metrics', timeout=10).read().decode())")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


# --- helm upgrade ----------------------------------------------------------------------------

AGENT_SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=agent"
LEASE_PREFIX, TERM_ANNOTATION = "lvs-director-", "lvs.dev/term"
UPGRADE_PROBE_INTERVAL = 0.2  # seconds between the client's requests during an upgrade
# Traffic goes on this long after every new agent has renewed its Lease in a new term: its
# first syncs (where a new agent that touched the kernel state would show it) are inside.
UPGRADE_SETTLE_SECONDS = 20.0


@dataclass(frozen=True)
class Upgrade:
    """What `upgrade_agents` saw: the agent pods before and after (node -> pod name) and,
    per site, every answer of the client that ran throughout."""

    before: Mapping[str, str]
    after: Mapping[str, str]
    answers: Mapping[str, list[Answer]]


def director_term(cluster: Cluster, node: str) -> str:
    """Return the term of `node`'s director Lease ("" while it has none)."""
    lease = get(cluster, "lease", "-n", RELEASE_NAMESPACE, f"{LEASE_PREFIX}{node}")
    return str((lease["metadata"].get("annotations") or {}).get(TERM_ANNOTATION, ""))


def upgrade_agents(cluster: Cluster, sites: Iterable[Site], *, values: Sequence[str],
                   timeout: float) -> Upgrade:
    """`helm upgrade --reuse-values --set VALUES` (a change to the agent's pod template) with
    a client sending a request to each site's VIP every UPGRADE_PROBE_INTERVAL seconds from
    before the upgrade until UPGRADE_SETTLE_SECONDS after every director runs a new agent
    pod whose agent renewed its Lease in a new term. Asserts that every agent pod was
    replaced and that no request failed (an agent that stops leaves the kernel as it is; a
    new one adopts it). Returns what it saw."""
    sites = list(sites)
    before: dict[str, str] = {}
    for node in cluster.directors:
        pod = agent_pod(cluster, node)
        assert pod, f"no ready agent pod on {node} before the upgrade"
        before[node] = pod
    terms = {node: director_term(cluster, node) for node in cluster.directors}
    probes = {site.mode: subprocess.Popen(
        cluster.client_command(site.vip, site.port, count=0, interval=UPGRADE_PROBE_INTERVAL),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for site in sites}
    after: dict[str, str] = {}
    try:
        time.sleep(2)  # the client's first requests go before the upgrade
        say(f"helm upgrade {RELEASE} --reuse-values --set {' --set '.join(values)}, with "
            f"requests to {', '.join(f'{s.vip}:{s.port}' for s in sites)} every "
            f"{UPGRADE_PROBE_INTERVAL} s throughout")
        cluster.helm("upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
                     "--reuse-values", *(a for v in values for a in ("--set", v)),
                     "--wait", "--timeout", f"{timeout:.0f}s", timeout=timeout + 60)
        for node in cluster.directors:
            after[node] = wait_for(
                f"a new ready agent pod on {node} (the old one: {before[node]})",
                functools.partial(_new_agent_pod, cluster, node, old=before[node]),
                timeout=timeout, interval=2, diagnose=cluster.diagnose)
            wait_for(f"the new agent on {node} to renew its Lease in a new term",
                     functools.partial(_new_term, cluster, node, old=terms[node]),
                     timeout=timeout, interval=2, diagnose=cluster.diagnose)
        time.sleep(UPGRADE_SETTLE_SECONDS)
    finally:
        # The clients stop when their stdin ends; what they answered is read below.
        outputs = {mode: probe.communicate("", timeout=120) for mode, probe in probes.items()}
    answers = {}
    for site in sites:
        out, err = outputs[site.mode]
        assert probes[site.mode].returncode == 0, f"the client of {site.mode} failed: {err}"
        outcome = [Answer(float(at), status, pod, error)
                   for at, status, pod, error in json.loads(out)]
        failed = [a for a in outcome if a.status != 200]
        say(f"helm upgrade, {site.mode} {site.vip}:{site.port}: {len(outcome)} requests "
            f"over {outcome[-1].at:.0f} s, {len(failed)} failed")
        assert not failed, (f"{site.mode}: {len(failed)} of {len(outcome)} requests failed "
                            f"during the upgrade: {failed[:3]} ... {failed[-3:]}")
        answers[site.mode] = outcome
    return Upgrade(before=before, after=after, answers=answers)


def _new_agent_pod(cluster: Cluster, node: str, *, old: str) -> str | None:
    """Return the ready agent pod of `node` if it is not `old`, else None."""
    pod = agent_pod(cluster, node)
    return pod if pod != old else None


def _new_term(cluster: Cluster, node: str, *, old: str) -> bool:
    """Return whether `node`'s director Lease is in a term other than `old` (and any)."""
    return director_term(cluster, node) not in ("", old)


def uninstall(cluster: Cluster, sites: Mapping[str, Site], *, timeout: float = 180) -> None:
    """`helm uninstall` removes every workload of the release, its pods gone within
    `timeout` seconds, and keeps the CRD and the VirtualServers (as Helm keeps a chart's
    crds/)."""
    say(f"helm uninstall {RELEASE}")
    cluster.helm("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait")
    selector = f"app.kubernetes.io/instance={RELEASE}"
    for kind in ("deployments", "daemonsets", "services", "serviceaccounts"):
        left = get(cluster, kind, "-n", RELEASE_NAMESPACE, "-l", selector)["items"]
        assert not left, f"helm uninstall left {kind}: {[o['metadata']['name'] for o in left]}"
    wait_for("the release's pods to go",
             lambda: not get(cluster, "pods", "-n", RELEASE_NAMESPACE, "-l",
                             selector)["items"], timeout=timeout, interval=2)
    get(cluster, "crd", "virtualservers.lvs.dev")
    kept = {o["metadata"]["name"]
            for o in get(cluster, "virtualservers", "-n", NAMESPACE)["items"]}
    assert kept == {s.name for s in sites.values()}
