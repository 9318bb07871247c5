"""The director agent against the real API server, with the fake kernel (FakeIPVS and a fake
VIP holder) injected: the host kernel has no IPVS.

The tests play the controller: they write status.realServers (and conditions) through the
status subresource themselves. They create Node objects (there is no kubelet) with a label
unique to the test, which their VirtualServers select, and use VIPs of their own.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from controlplane import ControlPlane
from crd_support import install_crd, module_namespace

import scenarios
from lvs_operator.agent import loop
from lvs_operator.agent.settings import (
    DirectorSettings,
    HASettings,
    Settings,
    SyncSettings,
    WatchSettings,
)
from lvs_operator.ipvs.fake import FakeIPVS
from lvs_operator.kube import client
from lvs_operator.kube import events as kube_events
from lvs_operator.model import (
    Forwarding,
    Protocol,
    RealServer,
    ServiceKey,
    Timeouts,
    VirtualService,
)
from lvs_operator.network.sysctl import DirectorSysctls
from lvs_operator.plan import AddService

TIMEOUT = 15.0  # seconds for anything to show up; the machine may be busy
FOREIGN = ServiceKey.inet(Protocol.TCP, ip_address("198.51.100.1"), 80)  # "made by ipvsadm"


@pytest.fixture(scope="module")
def ns(cluster: ControlPlane) -> Iterator[str]:
    install_crd(cluster)
    with module_namespace(cluster, "agent") as name:
        yield name


@pytest.fixture(scope="module")
def api(cluster: ControlPlane) -> Iterator[client.Client]:
    """The test's own admin connection (playing the controller and the kubelet)."""
    connection = client.Client.connect(str(cluster.kubeconfig))
    yield connection
    connection.close()


@pytest.fixture
def label() -> str:
    """A node label value that only this test's Nodes and VirtualServers use."""
    return secrets.token_hex(4)


@pytest.fixture
def nodes(api: client.Client) -> Iterator[Callable[..., str]]:
    """make(labels) -> the name of a new Node; all deleted afterwards."""
    made: list[str] = []

    def make(**labels: str) -> str:
        name = f"director-{secrets.token_hex(4)}"
        api.request("POST", client.NODES, body={
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
        made.append(name)
        return name

    yield make
    for name in made:
        with contextlib.suppress(client.ApiError):
            api.request("DELETE", f"{client.NODES}/{name}")


class FakeVips:
    """The VIP holder's fake: held addresses per interface, and every call made."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: dict[str, set[Any]] = {}
        self.calls: list[tuple[str, str, Any]] = []

    def list_vips(self, interface):
        with self.lock:
            return sorted(self.held.get(interface, set()), key=int)

    def add_vip(self, interface, address):
        with self.lock:
            self.calls.append(("add", interface, address))
            self.held.setdefault(interface, set()).add(address)
        return True

    def remove_vip(self, interface, address):
        with self.lock:
            self.calls.append(("remove", interface, address))
            self.held.get(interface, set()).discard(address)
        return True

    def announce(self, interface, addresses):
        with self.lock:
            self.calls.append(("announce", interface, list(addresses)))

    def snapshot(self) -> dict[str, set[Any]]:
        with self.lock:
            return {k: set(v) for k, v in self.held.items() if v}


class Sysctls:
    def __init__(self) -> None:
        self.applied: list[DirectorSysctls] = []

    def __call__(self, settings: DirectorSysctls) -> list[Any]:
        self.applied.append(settings)
        return []


class Director:
    """One node's kernel (fakes) and state folder, which survive agent restarts."""

    def __init__(self, cluster: ControlPlane, node: str, folder: Path, *,
                 ipvs: FakeIPVS | None = None) -> None:
        self.cluster = cluster
        self.node = node
        self.folder = folder
        self.ipvs = ipvs or FakeIPVS()
        self.vips = FakeVips()
        self.sysctls = Sysctls()

    def settings(self) -> Settings:
        return Settings(
            node=self.node, kubeconfig=str(self.cluster.kubeconfig),
            state_file=self.folder / "owned.json", metrics_address="",
            sync=SyncSettings(resync_seconds=2.0, min_interval_seconds=0.02,
                              drain_poll_seconds=0.2, retry_seconds=0.5),
            watch=WatchSettings(timeout_seconds=30, read_timeout_seconds=20,
                                backoff_max_seconds=1.0),
            director=DirectorSettings(timeouts=Timeouts(tcp=600)),
            # the Leases: in a namespace that exists
            ha=HASettings(engine="lease", namespace="default", lease_duration_seconds=0.8,
                          renew_seconds=0.2, renew_deadline_seconds=0.6))

    @contextlib.contextmanager
    def agent(self, api: client.Client | None = None) -> Iterator[loop.Agent]:
        """Run an agent for this director in a thread; stop it afterwards."""
        connection = api or client.Client.connect(str(self.cluster.kubeconfig))
        agent = loop.Agent(self.settings(), api=connection, ipvs=self.ipvs, vips=self.vips,
                           sysctls=self.sysctls, default_interface=lambda: "eth9")
        thread = threading.Thread(target=agent.run, name=f"agent {self.node}", daemon=True)
        thread.start()
        try:
            yield agent
        finally:
            agent.stop()
            thread.join(10)
            connection.close()
            assert not thread.is_alive(), "Agent.run must return after stop()"


def eventually(check: Callable[[], Any], *, timeout: float = TIMEOUT, what: str = "") -> Any:
    """Return check()'s first truthy value, polling; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or check}; last value {value!r}")
        time.sleep(0.05)


def path(namespace: str, name: str = "") -> str:
    return f"/apis/lvs.dev/v1alpha1/namespaces/{namespace}/virtualservers" + (
        f"/{name}" if name else "")


def create_vs(api: client.Client, namespace: str, name: str, *, vip: str, label: str,
              drain: int = 300, forwarding: str = "DirectRouting",
              interface: str | None = "eth0") -> Any:
    directors: dict[str, Any] = {"nodeSelector": {"lvs.dev/test-director": label}}
    if interface:
        directors["interface"] = interface
    return api.request("POST", path(namespace), body={
        "apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualServer",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"vip": vip, "ports": [{"port": 80}], "forwarding": forwarding,
                 "scheduler": {"name": "rr"}, "backend": {"service": {"name": "web"}},
                 "directors": directors,
                 "drain": {"timeoutSeconds": drain}}})


def publish(api: client.Client, namespace: str, name: str, reals: list[dict[str, Any]],
            **status: Any) -> Any:
    """Write status.realServers (and other status fields) as the controller would."""
    return api.patch_status(namespace, name, {"status": {"realServers": reals, **status}})


def ready(last: int, *, ok: bool = True, weight: int = 1) -> dict[str, Any]:
    return {"ip": f"10.0.0.{last}", "port": 80, "weight": weight if ok else 0, "ready": ok}


def get(api: client.Client, namespace: str, name: str) -> Any:
    return api.request("GET", path(namespace, name))


def directors(api: client.Client, namespace: str, name: str) -> dict[str, Any]:
    return (get(api, namespace, name).get("status") or {}).get("directors") or {}


def key(vip: str) -> ServiceKey:
    return ServiceKey.inet(Protocol.TCP, ip_address(vip), 80)


def reals(agent: loop.Agent, vip: str) -> dict[str, int] | None:
    """Return the real servers of vip:80 in the agent's kernel as {address: weight}."""
    service = agent.table().get(key(vip))
    if service is None:
        return None
    return {str(r.address): r.weight for r in service.reals.values()}


def real_key(last: int) -> tuple[Any, int]:
    return (ip_address(f"10.0.0.{last}"), 80)


def test_programs_drains_and_withdraws(cluster, api, ns, nodes, label, tmp_path):
    node = nodes(**{"lvs.dev/test-director": label})
    director = Director(cluster, node, tmp_path)
    vip = "192.0.2.11"
    create_vs(api, ns, "web", vip=vip, label=label, drain=2)
    with director.agent() as agent:
        publish(api, ns, "web", [ready(1), ready(2, weight=3)])
        assert eventually(lambda: reals(agent, vip) == {"10.0.0.1": 1, "10.0.0.2": 3})
        assert eventually(lambda: director.vips.snapshot() == {"eth0": {ip_address(vip)}})
        assert eventually(lambda: ("announce", "eth0", [ip_address(vip)]) in director.vips.calls,
                          what="VIP announced")
        # The status entry follows the kernel: an early sync may have reported Standby
        # before this director's own Lease was seen.
        report = eventually(lambda: (r := directors(api, ns, "web").get(node))
                            and r["role"] == "Active" and r, what="the Active report")
        assert (report["role"], report["generation"], report["error"]) == ("Active", 1, "")
        assert report["syncedAt"].endswith("Z")
        assert director.sysctls.applied, "director sysctls applied at start"
        assert director.ipvs.timeouts().tcp == 600, "IPVS timeouts from the settings"

        metrics = prometheus_client.generate_latest(agent.registry).decode()
        assert (f'lvs_real_server_weight{{name="web",namespace="{ns}",port="80",protocol="TCP",'
                f'real="10.0.0.2:80",vip="{vip}"}} 3.0\n') in metrics

        # 10.0.0.2 becomes not ready while it has connections: weight 0, then deleted once
        # the drain timeout (2 s) has passed although its connections never ended.
        director.ipvs.set_counters(key(vip), real_key(2), active=4)
        publish(api, ns, "web", [ready(1), ready(2, ok=False)])
        assert eventually(lambda: reals(agent, vip) == {"10.0.0.1": 1, "10.0.0.2": 0})
        drained_at = time.monotonic()
        assert eventually(lambda: reals(agent, vip) == {"10.0.0.1": 1}, timeout=10)
        assert time.monotonic() - drained_at > 1.0, "deleted only after spec.drain"

        # An idle server that goes away is deleted at once.
        publish(api, ns, "web", [ready(1), ready(3)])
        assert eventually(lambda: reals(agent, vip) == {"10.0.0.1": 1, "10.0.0.3": 1})
        publish(api, ns, "web", [ready(3)])
        assert eventually(lambda: reals(agent, vip) == {"10.0.0.3": 1})

        api.request("DELETE", path(ns, "web"))
        assert eventually(lambda: reals(agent, vip) is None, what="service withdrawn")
        assert eventually(lambda: director.vips.snapshot() == {}, what="VIP released")
        assert eventually(lambda: agent.table() == {}, what="nothing left behind")


def test_conflict_and_node_deselection_withdraw(cluster, api, ns, nodes, label, tmp_path):
    node = nodes(**{"lvs.dev/test-director": label})
    director = Director(cluster, node, tmp_path)
    vip = "192.0.2.12"
    create_vs(api, ns, "shop", vip=vip, label=label)
    with director.agent() as agent:
        publish(api, ns, "shop", [ready(1)])
        assert eventually(lambda: reals(agent, vip) == {"10.0.0.1": 1})
        assert eventually(lambda: node in directors(api, ns, "shop"))

        # The controller says Conflict: withdrawn, and the report goes.
        conflict = {"type": "Ready", "status": "False", "reason": "Conflict",
                    "message": "claimed by an older one", "lastTransitionTime":
                    "2025-01-01T00:00:00Z"}
        publish(api, ns, "shop", [ready(1)], conditions=[conflict])
        assert eventually(lambda: reals(agent, vip) is None, what="withdrawn on Conflict")
        assert eventually(lambda: node not in directors(api, ns, "shop"))
        assert eventually(lambda: director.vips.snapshot() == {}, what="VIP released")
        publish(api, ns, "shop", [ready(1)], conditions=[{**conflict, "status": "True",
                                                          "reason": "Ready"}])
        assert eventually(lambda: reals(agent, vip) == {"10.0.0.1": 1})

        # The Node loses the label: this director lets go.
        api.request("PATCH", f"{client.NODES}/{node}", content_type=client.MERGE_PATCH,
                    body={"metadata": {"labels": {"lvs.dev/test-director": None}}})
        assert eventually(lambda: reals(agent, vip) is None, what="withdrawn on deselection")
        assert eventually(lambda: director.vips.snapshot() == {})
        assert eventually(lambda: node not in directors(api, ns, "shop"))

        # ... and takes it back when the label returns.
        api.request("PATCH", f"{client.NODES}/{node}", content_type=client.MERGE_PATCH,
                    body={"metadata": {"labels": {"lvs.dev/test-director": label}}})
        assert eventually(lambda: reals(agent, vip) == {"10.0.0.1": 1})
        assert eventually(lambda: director.vips.snapshot() == {"eth0": {ip_address(vip)}})


class GatedKube(client.Client):
    """A connection whose VirtualServer list waits for `gate`: an API server slow to list."""

    gate: threading.Event

    def lister(self, path: str, *, query=()):
        inner = super().lister(path, query=query)
        if path != client.VIRTUALSERVERS:
            return inner

        def gated():
            assert self.gate.wait(30)
            return inner()
        return gated


def test_restart_changes_nothing_and_nothing_is_pruned_before_the_list(
        cluster, api, ns, nodes, label, tmp_path):
    node = nodes(**{"lvs.dev/test-director": label})
    director = Director(cluster, node, tmp_path)
    director.ipvs.apply([AddService(VirtualService(FOREIGN, scheduler="wlc"))])
    vip = "192.0.2.13"
    create_vs(api, ns, "stay", vip=vip, label=label)
    publish(api, ns, "stay", [ready(1), ready(2)])
    with director.agent() as agent:
        assert eventually(lambda: reals(agent, vip) == {"10.0.0.1": 1, "10.0.0.2": 1})
        # A fresh agent takes its VIPs after one Lease duration (`election`).
        assert eventually(lambda: director.vips.snapshot() == {"eth0": {ip_address(vip)}})
        assert eventually(lambda: directors(api, ns, "stay").get(node, {}).get("role")
                          == "Active")
        # A drain in progress survives the restart too.
        director.ipvs.set_counters(key(vip), real_key(2), active=1)
        publish(api, ns, "stay", [ready(1)])
        assert eventually(lambda: reals(agent, vip) == {"10.0.0.1": 1, "10.0.0.2": 0})
    drains = (tmp_path / "owned.drains.json").read_text()
    applied, calls = len(director.ipvs.applied), len(director.vips.calls)
    version = get(api, ns, "stay")["metadata"]["resourceVersion"]

    gated = GatedKube.connect(str(cluster.kubeconfig))
    gated.gate = threading.Event()
    with director.agent(api=gated) as agent:
        time.sleep(3.0)  # longer than the resync period: the loop must not run unlisted
        assert agent.metrics.syncs == 0
        assert len(director.ipvs.applied) == applied
        gated.gate.set()
        eventually(lambda: agent.metrics.syncs >= 2, what="two syncs after the list")
        assert len(director.ipvs.applied) == applied, "a restart makes no kernel operations"
        assert len(director.vips.calls) == calls, "nor VIP changes"
        assert (tmp_path / "owned.drains.json").read_text() == drains, "nor restarts drains"
        assert reals(agent, vip) == {"10.0.0.1": 1, "10.0.0.2": 0}
        assert get(api, ns, "stay")["metadata"]["resourceVersion"] == version, \
            "nor status writes"

    # Deleted while no agent ran (and its last connection ended): the next agent withdraws
    # it once it has listed, and leaves the service it never created alone.
    api.request("DELETE", path(ns, "stay"))
    director.ipvs.set_counters(key(vip), real_key(2), active=0)
    with director.agent() as agent:
        assert eventually(lambda: set(agent.table()) == {FOREIGN})
    assert director.vips.snapshot() == {}


def test_two_directors_keep_their_own_reports(cluster, api, ns, nodes, label, tmp_path):
    node_a = nodes(**{"lvs.dev/test-director": label})
    node_b = nodes(**{"lvs.dev/test-director": label})
    a = Director(cluster, node_a, tmp_path / "a")
    # Director b's kernel lacks the rr scheduler: its sync fails, and it says so.
    b = Director(cluster, node_b, tmp_path / "b", ipvs=FakeIPVS(schedulers={"wlc"}))
    vip = "192.0.2.14"
    create_vs(api, ns, "pair", vip=vip, label=label)
    publish(api, ns, "pair", [ready(1)])
    with a.agent() as agent_a, b.agent():
        assert eventually(lambda: reals(agent_a, vip) == {"10.0.0.1": 1})
        both = eventually(lambda: (lambda d: d if {node_a, node_b} <= set(d) else None)(
            directors(api, ns, "pair")), what="both reports")
        assert both[node_a]["error"] == ""
        assert both[node_a]["generation"] == 1
        error = eventually(lambda: directors(api, ns, "pair")[node_b]["error"])
        assert "rr" in error or "No such file" in error, error
        assert "generation" not in directors(api, ns, "pair")[node_b]

        def events():
            return [e for e in api.request("GET", kube_events.events_path(ns))["items"]
                    if e["regarding"].get("name") == "pair"]

        posted = eventually(events, what="an Event")
        assert [(e["type"], e["reason"], e["reportingInstance"], e["reportingController"])
                for e in posted] == [("Warning", "SyncFailed", node_b, "lvs.dev/agent")]
        time.sleep(2.5)  # longer than a resync: the same error is not posted again
        assert len(events()) == 1

        # The controller's own status writes do not disturb the reports either.
        publish(api, ns, "pair", [ready(1), ready(2)])
        assert eventually(lambda: reals(agent_a, vip) == {"10.0.0.1": 1, "10.0.0.2": 1})
        assert set(directors(api, ns, "pair")) == {node_a, node_b}
        assert directors(api, ns, "pair")[node_a]["error"] == ""


def test_nat_turns_forwarding_on(cluster, api, ns, nodes, label, tmp_path):
    node = nodes(**{"lvs.dev/test-director": label})
    director = Director(cluster, node, tmp_path)
    vip = "192.0.2.15"
    create_vs(api, ns, "nat", vip=vip, label=label, forwarding="NAT")
    with director.agent() as agent:
        publish(api, ns, "nat", [{"ip": "10.0.0.1", "port": 8080, "weight": 1, "ready": True}])
        assert eventually(lambda: agent.table().get(key(vip)))
        assert eventually(lambda: any(s.ip_forward for s in director.sysctls.applied))
        real = next(iter(agent.table()[key(vip)].reals.values()))
        assert real == RealServer(ip_address("10.0.0.1"), 8080, Forwarding.NAT, 1)


def test_vips_on_several_interfaces(cluster, api, ns, nodes, label, tmp_path):
    node = nodes(**{"lvs.dev/test-director": label})
    director = Director(cluster, node, tmp_path)
    one, two = "192.0.2.16", "192.0.2.17"
    create_vs(api, ns, "one", vip=one, label=label)
    create_vs(api, ns, "two", vip=two, label=label, interface=None)  # the default route's
    publish(api, ns, "one", [ready(1)])
    publish(api, ns, "two", [ready(2)])
    with director.agent() as agent:
        assert eventually(lambda: director.vips.snapshot() == {
            "eth0": {ip_address(one)}, "eth9": {ip_address(two)}})
        # Moving one VIP to the other interface releases it where it was, and only there.
        api.request("PATCH", path(ns, "one"), content_type=client.MERGE_PATCH,
                    body={"spec": {"directors": {"interface": "eth9"}}})
        assert eventually(lambda: director.vips.snapshot() == {
            "eth9": {ip_address(one), ip_address(two)}})
        assert ("remove", "eth9", ip_address(two)) not in director.vips.calls
        report = eventually(lambda: (lambda r: r if r and r.get("generation") == 2 else None)(
            directors(api, ns, "one").get(node)), what="generation 2 reported")
        assert report["error"] == ""
        assert set(agent.table()) == {key(one), key(two)}


@pytest.fixture
def closed_ns(cluster: ControlPlane, api: client.Client) -> Iterator[str]:
    """A namespace the tests' open pool does not serve: deny by default applies there."""
    install_crd(cluster)
    with module_namespace(cluster, "closed") as name:
        api.request("PATCH", f"{client.NAMESPACES}/{name}", content_type=client.MERGE_PATCH,
                    body={"metadata": {"labels": {scenarios.CLOSED_LABEL: "true"}}})
        yield name


@pytest.fixture
def pools(api: client.Client) -> Iterator[Callable[..., str]]:
    """make(**spec) -> the name of a new VIPPool (cluster-scoped); all deleted afterwards."""
    made: list[str] = []

    def make(**spec: Any) -> str:
        name = f"agent-test-{secrets.token_hex(4)}"
        api.request("POST", client.VIPPOOLS, body={
            "apiVersion": "lvs.dev/v1alpha1", "kind": "VIPPool", "metadata": {"name": name},
            "spec": spec})
        made.append(name)
        return name

    yield make
    for name in made:
        with contextlib.suppress(client.ApiError):
            api.request("DELETE", f"{client.VIPPOOLS}/{name}")


def test_a_forged_status_cannot_make_a_director_hold_a_vip_outside_the_pools(
        cluster, api, closed_ns, nodes, pools, label, tmp_path):
    node = nodes(**{"lvs.dev/test-director": label})
    director = Director(cluster, node, tmp_path)
    vip = "192.0.2.18"
    ns = closed_ns
    create_vs(api, ns, "forged", vip=vip, label=label)
    # A cluster admin (or a compromised controller) writes Ready with real servers although
    # namespace `ns` may use no pool.
    publish(api, ns, "forged", [ready(1)], conditions=[{
        "type": "Ready", "status": "True", "reason": "Ready", "message": "",
        "lastTransitionTime": "2025-01-01T00:00:00Z"}])

    def told() -> list[Any]:
        return [e for e in api.request("GET", kube_events.events_path(ns))["items"]
                if e.get("regarding", {}).get("name") == "forged"
                and e.get("reportingInstance") == node]

    with director.agent() as agent:
        event = eventually(lambda: told(), what="the refusal told in an Event")[0]
        assert (event["type"], event["reason"]) == ("Warning", "VIPNotAllowed")
        assert f"namespace {ns} may use no VIP pool" in event["note"]
        assert agent.metrics.syncs >= 1
        assert agent.table() == {} and director.vips.snapshot() == {}
        assert node not in directors(api, ns, "forged"), "no report for what it refuses"

        # A pool that admits it (its own directors are allowed): programmed, VIP held.
        name = pools(addresses=[f"{vip}/32"], namespaces=[ns],
                     directors={"allowOverride": True})
        assert eventually(lambda: reals(agent, vip) == {"10.0.0.1": 1}, what="programmed")
        assert eventually(lambda: director.vips.snapshot() == {"eth0": {ip_address(vip)}})
        assert eventually(lambda: directors(api, ns, "forged").get(node, {}).get("role")
                          == "Active")

        # The pool goes: withdrawn, VIP released, the report removed, and told again.
        api.request("DELETE", f"{client.VIPPOOLS}/{name}")
        assert eventually(lambda: reals(agent, vip) is None, what="withdrawn")
        assert eventually(lambda: director.vips.snapshot() == {}, what="VIP released")
        assert eventually(lambda: node not in directors(api, ns, "forged"))
        assert eventually(lambda: len(told()) == 2, what="the second refusal told")
