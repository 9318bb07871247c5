"""Directors on a short leash: what an agent, and a namespace's users, may write (the chart's
agent-policy.yaml and tenant-rbac.yaml), against the real API server.

The chart is installed; Nodes A and B exist, and a Pod of the agent's ServiceAccount is bound
to A (no kubelet runs it). A token bound to that Pod (TokenRequest with a boundObjectRef, as
the kubelet's projected token is) names node A; with it the agent's own writes, made as the
agent makes them (`agent.report`'s merge patch, `agent.lease`'s Lease create, renewal and
delete), succeed, and every write to what is not A's is refused with 403: B's entry in
status.directors, a new entry for another node, status.realServers, status.conditions, B's
Lease, the controller's Lease. RBAC lets the agent patch every status and every Lease of the
namespace (the own writes prove it), so these 403s are the policies'. A token bound to no
Pod names no node: every agent write is refused, its own included (fail closed).

A namespace's users: `edit` (by a RoleBinding) creates VirtualServers but cannot write their
status; `view` reads them only; none of the built-in roles has any right on vippools or
vipclaims.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from controller_support import ApiError, Kube, virtual_server, vs_path, wait_for
from controlplane import ControlPlane
from test_chart import VALIDATING, Release, agent_pod, installed, token_kubeconfig

from lvs_operator.agent import lease as agent_lease
from lvs_operator.agent import report as agent_report
from lvs_operator.kube import client
from lvs_operator.kube import lease as kube_lease

VS = "web"
REAL_SERVERS = [{"ip": "10.0.9.1", "port": 80, "weight": 1, "ready": True}]
CONDITIONS = [{"type": "Ready", "status": "True", "reason": "Programmed", "message": "",
               "lastTransitionTime": "2024-05-01T10:00:00Z"}]


@dataclass(frozen=True)
class Leash:
    """The installed release, its two nodes, and agent clients with node-A and unbound
    tokens."""

    release: Release
    kube: Kube
    node_a: str
    node_b: str
    agent_a: client.Client  # token bound to a Pod on node A
    unbound: client.Client  # token bound to nothing: names no node

    @property
    def namespace(self) -> str:
        return self.release.namespace

    def status(self) -> dict[str, Any]:
        found: dict[str, Any] = self.kube.get(vs_path(self.namespace, VS))["status"]
        return found


@pytest.fixture(scope="module")
def leash(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leash]:
    kube = Kube(cluster)
    folder = tmp_path_factory.mktemp("leash")
    suffix = secrets.token_hex(3)
    node_a, node_b = f"leash-a-{suffix}", f"leash-b-{suffix}"
    with installed(cluster, "leash") as release, agent_pod(kube, release, node_a) as pod:
        ns, agent = release.namespace, f"{release.name}-agent"
        # No controller runs here to answer the VirtualServer webhook (failurePolicy Fail):
        # this module is about what the agents and tenants may write, not about VIPs.
        kube.delete(f"{VALIDATING}/{release.name}-virtualservers")
        kube.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                      "metadata": {"name": node_b}})
        kube.create(vs_path(ns), virtual_server(ns, VS, vip="198.51.100.210",
                                                addresses=[{"ip": "10.0.9.1"}]))
        # What the controller and director B wrote (as admin here).
        kube.merge(vs_path(ns, VS) + "/status", {"status": {
            "observedGeneration": 1, "realServers": REAL_SERVERS, "conditions": CONDITIONS,
            "directors": {node_b: entry("Active")}}})
        for name in (agent_lease.lease_name(node_b), f"{release.name}-controller"):
            kube.create(kube_lease.leases_path(ns), lease(node_b, ns, name))
        agent_a = client.Client.connect(str(token_kubeconfig(cluster, ns, agent, folder,
                                                             pod=pod)))
        unbound = client.Client.connect(str(token_kubeconfig(cluster, ns, agent, folder)))
        try:
            result = Leash(release, kube, node_a, node_b, agent_a, unbound)
            # A policy is enforced a moment after it is created: wait for it (the probe is
            # an empty patch, harmless if it gets through).
            wait_for("the agent policies to be enforced",
                     lambda: refusal(lambda: unbound.patch_status(ns, VS, {"status": {}}))
                     == 403)
            yield result
        finally:
            agent_a.close()
            unbound.close()
            kube.delete(f"/api/v1/nodes/{node_b}")


def entry(role: str, *, generation: int = 1) -> dict[str, Any]:
    """Return a status.directors entry as an agent writes it."""
    return agent_report.entry(agent_report.report(role=role, generation=generation, error="",
                                                  previous=None, term="t"),
                              now=datetime.now(UTC))


def lease(node: str, namespace: str, name: str) -> dict[str, Any]:
    """Return a new Lease `name` as director `node` writes its own."""
    body = agent_lease.body(node, namespace, duration=60, labels={}, term="t",
                            now=datetime.now(UTC))
    body["metadata"]["name"] = name
    return body


def refusal(call: Callable[[], object]) -> int | None:
    """Return the HTTP status `call` (the agent's client or the admin's) was refused with,
    or None when it succeeded."""
    try:
        call()
    except (client.ApiError, ApiError) as e:
        return e.status
    return None


# --- status ----------------------------------------------------------------------------------

def test_an_agent_writes_its_own_entry(leash: Leash) -> None:
    ns = leash.namespace
    before = leash.status()
    mine = entry("Standby")
    leash.agent_a.patch_status(ns, VS, agent_report.patch(leash.node_a, mine))
    after = leash.status()
    assert after["directors"][leash.node_a] == mine
    assert {k: v for k, v in after.items() if k != "directors"} == \
        {k: v for k, v in before.items() if k != "directors"}
    assert after["directors"][leash.node_b] == before["directors"][leash.node_b]
    # Changed, then removed (a director that no longer serves the VirtualServer).
    leash.agent_a.patch_status(ns, VS, agent_report.patch(leash.node_a, entry("Active")))
    assert leash.status()["directors"][leash.node_a]["role"] == "Active"
    leash.agent_a.patch_status(ns, VS, agent_report.patch(leash.node_a, None))
    assert leash.node_a not in leash.status()["directors"]


@pytest.mark.parametrize("what", [
    "another director's entry", "another director's entry removed", "a new node's entry",
    "its own and another's entry", "realServers", "conditions", "observedGeneration",
    "the whole status",
])
def test_an_agent_writes_nothing_else_of_the_status(leash: Leash, what: str) -> None:
    a, b = leash.node_a, leash.node_b
    patches: dict[str, dict[str, Any]] = {
        "another director's entry": agent_report.patch(b, entry("Standby")),
        "another director's entry removed": agent_report.patch(b, None),
        "a new node's entry": agent_report.patch("leash-elsewhere", entry("Active")),
        "its own and another's entry": {"status": {"directors": {
            a: entry("Active"), b: None}}},
        "realServers": {"status": {"realServers": [
            {"ip": "203.0.113.66", "port": 80, "weight": 1, "ready": True}]}},
        "conditions": {"status": {"conditions": [dict(CONDITIONS[0], status="False")]}},
        "observedGeneration": {"status": {"observedGeneration": 7}},
        "the whole status": {"status": None},
    }
    before = leash.status()
    assert refusal(lambda: leash.agent_a.patch_status(leash.namespace, VS,
                                                      patches[what])) == 403
    assert leash.status() == before


def test_a_token_bound_to_no_node_writes_no_status(leash: Leash) -> None:
    for node in (leash.node_a, leash.node_b):
        assert refusal(functools.partial(leash.unbound.patch_status, leash.namespace, VS,
                                         agent_report.patch(node, entry("Active")))) == 403
    assert leash.node_a not in leash.status()["directors"]


# --- Leases ----------------------------------------------------------------------------------

def test_an_agent_creates_renews_and_deletes_its_own_lease(leash: Leash) -> None:
    ns, node = leash.namespace, leash.node_a
    leases = kube_lease.Leases(leash.agent_a)
    owner = agent_lease.owners(leash.kube.get(f"/api/v1/nodes/{node}"))
    created = leases.create(ns, agent_lease.body(node, ns, duration=60, labels={"a": "b"},
                                                 term="t1", now=datetime.now(UTC),
                                                 owned_by=owner))
    assert created is not None and created["spec"]["holderIdentity"] == node
    renewed = leases.patch(ns, agent_lease.lease_name(node), agent_lease.renewal(
        node, duration=60, labels={"a": "c"}, term="t2", now=datetime.now(UTC), begins=True,
        owned_by=owner, address="192.0.2.7"))
    assert renewed["metadata"]["annotations"][agent_lease.TERM_ANNOTATION] == "t2"
    assert leases.delete(ns, agent_lease.lease_name(node)) is True


def lease_writes(leash: Leash, api: client.Client,
                 name: str) -> dict[str, Callable[[], object]]:
    """Return every write an agent could try on Lease `name`: create, update (PUT), merge
    patch, delete."""
    ns, path = leash.namespace, kube_lease.lease_path(leash.namespace, name)
    now = datetime.now(UTC)

    def update() -> object:
        current = leash.kube.get(path)
        current["spec"]["holderIdentity"] = leash.node_a
        return api.request("PUT", path, body=current)

    return {
        "create": lambda: api.request("POST", kube_lease.leases_path(ns),
                                      body=lease(leash.node_a, ns, name)),
        "update": update,
        "patch": lambda: api.request("PATCH", path, content_type=client.MERGE_PATCH,
                                     body=agent_lease.renewal(leash.node_a, duration=60,
                                                              labels={}, term="x", now=now)),
        "delete": lambda: api.request("DELETE", path),
    }


@pytest.mark.parametrize(("whose", "write"), [
    *((whose, write) for whose in ("another director's", "the controller's")
      for write in ("update", "patch", "delete")),
    ("a new node's", "create"),
])
def test_an_agent_writes_no_other_lease(leash: Leash, whose: str, write: str) -> None:
    name = {"another director's": agent_lease.lease_name(leash.node_b),
            "the controller's": f"{leash.release.name}-controller",
            "a new node's": agent_lease.lease_name("leash-elsewhere")}[whose]
    path = kube_lease.lease_path(leash.namespace, name)
    before = leash.kube.get(path) if write != "create" else None
    # update (PUT) is refused by RBAC already (the agent merge-patches); the others by
    # the policy.
    assert refusal(lease_writes(leash, leash.agent_a, name)[write]) == 403
    if before is not None:
        assert leash.kube.get(path)["metadata"]["resourceVersion"] == \
            before["metadata"]["resourceVersion"]
    else:
        assert refusal(lambda: leash.kube.get(path)) == 404


@pytest.mark.parametrize("write", ["create", "patch", "delete"])
def test_a_token_bound_to_no_node_writes_no_lease(leash: Leash, write: str) -> None:
    name = agent_lease.lease_name(leash.node_a)
    if write != "create":  # its "own" Lease exists: written by the agent of node A
        kube_lease.Leases(leash.agent_a).create(leash.namespace, lease(
            leash.node_a, leash.namespace, name))
    try:
        assert refusal(lease_writes(leash, leash.unbound, name)[write]) == 403
    finally:
        leash.kube.delete(kube_lease.lease_path(leash.namespace, name))


# --- a namespace's users ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tenant(cluster: ControlPlane, leash: Leash,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, client.Client]]:
    """A namespace and a client of a user (a ServiceAccount) with the built-in `edit` role in
    it (a RoleBinding), once the release's roles are aggregated into the built-in ones."""
    kube = leash.kube
    ns = f"tenant-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("create", "serviceaccount", "alice", "--namespace", ns)
    cluster.kubectl("create", "rolebinding", "alice-edit", "--clusterrole=edit",
                    "--serviceaccount", f"{ns}:alice", "--namespace", ns)

    def aggregated() -> bool:
        return all(any("virtualservers" in r.get("resources", []) for r in kube.get(
            f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{role}")["rules"])
            for role in ("view", "edit", "admin"))

    wait_for("the VirtualServer rights aggregated into view, edit and admin", aggregated,
             timeout=30)
    api = client.Client.connect(str(token_kubeconfig(
        cluster, ns, "alice", tmp_path_factory.mktemp("tenant"))))
    try:
        yield ns, api
    finally:
        api.close()
        kube.delete(f"/api/v1/namespaces/{ns}")


def can(cluster: ControlPlane, user: str, verb: str, resource: str, namespace: str) -> bool:
    """Return whether `user` may `verb` `resource` ("plural.group[/subresource]") in
    `namespace` (a SubjectAccessReview)."""
    resource, _, subresource = resource.partition("/")
    answer = cluster.kubectl("auth", "can-i", verb, resource, "--as", user,
                             f"--subresource={subresource}", "--namespace", namespace,
                             check=False)
    return answer.stdout.strip() == "yes"


def test_edit_writes_virtual_servers_but_not_their_status(
        tenant: tuple[str, client.Client]) -> None:
    ns, api = tenant
    created = api.request("POST", vs_path(ns), body=virtual_server(
        ns, "shop", vip="198.51.100.211", addresses=[{"ip": "10.0.9.2"}]))
    assert created["metadata"]["name"] == "shop"
    api.request("PATCH", vs_path(ns, "shop"), content_type=client.MERGE_PATCH,
                body={"spec": {"weight": 2}})
    assert refusal(lambda: api.patch_status(ns, "shop", {"status": {
        "realServers": [{"ip": "203.0.113.66", "port": 80, "weight": 1, "ready": True}]}})) \
        == 403
    api.request("DELETE", vs_path(ns, "shop"))


@pytest.mark.parametrize(("role", "verb", "resource", "allowed"), [
    ("view", "list", "virtualservers.lvs.dev", True),
    ("view", "watch", "virtualservers.lvs.dev", True),
    ("view", "create", "virtualservers.lvs.dev", False),
    ("view", "get", "virtualservers.lvs.dev/status", False),
    ("edit", "deletecollection", "virtualservers.lvs.dev", True),
    ("edit", "update", "virtualservers.lvs.dev/status", False),
    ("admin", "patch", "virtualservers.lvs.dev/status", False),
    # Pools and claims are the cluster admin's and the controller's: no tenant role names
    # them.
    ("edit", "create", "vippools.lvs.dev", False),
    ("admin", "get", "vippools.lvs.dev", False),
    ("view", "list", "vippools.lvs.dev", False),
    ("edit", "create", "vipclaims.lvs.dev", False),  # the controller's record of a VIP
])
def test_tenant_roles(cluster: ControlPlane, tenant: tuple[str, client.Client], role: str,
                      verb: str, resource: str, allowed: bool) -> None:
    ns, _ = tenant
    user = f"leash-{role}-user"
    cluster.kubectl("create", "rolebinding", f"{user}-{verb}-{resource.replace('/', '.')}",
                    f"--clusterrole={role}", "--user", user, "--namespace", ns)
    assert can(cluster, user, verb, resource, ns) is allowed, f"{role} {verb} {resource}"


def test_the_chart_aggregates_no_pool_rights(leash: Leash) -> None:
    roles = [o for o in leash.release.manifest if o["kind"] == "ClusterRole"
             and any(k.startswith("rbac.authorization.k8s.io/aggregate-to-")
                     for k in o["metadata"].get("labels", {}))]
    assert sorted(r["metadata"]["name"] for r in roles) == [
        f"{leash.release.name}-edit", f"{leash.release.name}-view"]
    for role in roles:
        assert [r["resources"] for r in role["rules"]] == [["virtualservers"]], role
