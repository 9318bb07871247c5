"""Two director agents against the real API server (Leases, status.directors), each with a
fake kernel (FakeIPVS and a fake VIP holder): exactly one holds the VIP; when the holder
cannot renew its Lease it drops the VIP and the other takes over within about a Lease
duration; when it renews again there is at most one handover back; a graceful stop hands
over at once. A sampler checks every few milliseconds that both never hold the VIP."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import test_agent
from controlplane import ControlPlane
from test_agent import Director, create_vs, directors, eventually, publish, ready

from lvs_operator.agent import lease
from lvs_operator.agent.settings import HASettings, Settings
from lvs_operator.ipvs.fake import FakeIPVS
from lvs_operator.kube import client
from lvs_operator.kube import lease as kube_lease
from lvs_operator.model import SyncDaemon, SyncState

# test_agent's fixtures: the module's namespace, the admin connection, Nodes, a label.
api, ns, nodes, label = test_agent.api, test_agent.ns, test_agent.nodes, test_agent.label

DURATION = 0.8  # the default Lease timings: what users get
SETTLE = 2.0


class CuttableKube(client.Client):
    """A connection whose Lease writes fail while `cut` is set (a director cut off from
    the API server, as far as its Lease goes)."""

    cut = False

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if self.cut and path.startswith(kube_lease.PATH) and method != "GET":
            raise client.ApiError(0, f"{method} {path}: cut off (test)")
        return super().request(method, path, **kwargs)


class HADirector(Director):
    def __init__(self, cluster: ControlPlane, node: str, folder: Path, *,
                 namespace: str) -> None:
        super().__init__(cluster, node, folder, ipvs=FakeIPVS(interfaces=("lo", "eth0")))
        self.namespace = namespace
        self.connection = CuttableKube.connect(str(cluster.kubeconfig))

    def settings(self) -> Settings:
        return replace(super().settings(),
                       ha=HASettings(engine="lease", namespace=self.namespace,
                                     settle_seconds=SETTLE, lease_duration_seconds=0.8,
                                     renew_seconds=0.2, renew_deadline_seconds=0.6))

    def holds(self, vip: str) -> bool:
        return ip_address(vip) in self.vips.snapshot().get("eth0", set())


class Sampler:
    """Records who holds `vip`, every 2 ms, in a thread."""

    def __init__(self, pair: list[HADirector], vip: str) -> None:
        self.pair = pair
        self.vip = vip
        self.both = 0
        self.history: list[tuple[str, ...]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = tuple(d.node for d in self.pair if d.holds(self.vip))
            self.both += len(now) > 1
            if not self.history or self.history[-1] != now:
                self.history.append(now)
            time.sleep(0.002)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def moves(self) -> list[str]:
        result: list[str] = []
        for now in self.history:
            for node in now:
                if not result or result[-1] != node:
                    result.append(node)
        return result


@pytest.fixture
def pair(cluster, ns, nodes, label, tmp_path) -> list[HADirector]:
    return [HADirector(cluster, nodes(**{"lvs.dev/test-director": label}), tmp_path / x,
                       namespace=ns) for x in "ab"]


def one_holder(pair: list[HADirector], vip: str) -> HADirector | None:
    held = [d for d in pair if d.holds(vip)]
    return held[0] if len(held) == 1 else None


def roles(api: client.Client, ns: str, name: str) -> dict[str, str]:
    return {node: entry.get("role") for node, entry in directors(api, ns, name).items()}


def test_one_holder_failover_and_one_handover_back(api, ns, label, pair):
    vip = "192.0.2.41"
    create_vs(api, ns, "ha", vip=vip, label=label)
    publish(api, ns, "ha", [ready(1)])
    a, b = pair
    with Sampler(pair, vip) as sampler, contextlib.ExitStack() as stack:
        for d in pair:
            stack.enter_context(d.agent(api=d.connection))
        first: HADirector = eventually(lambda: one_holder(pair, vip), what="one VIP holder")
        other = b if first is a else a
        eventually(lambda: roles(api, ns, "ha") == {first.node: "Active",
                                                    other.node: "Standby"}, what="roles")
        # Both program the same IPVS table.
        eventually(lambda: a.ipvs.dump() and a.ipvs.dump() == b.ipvs.dump(), what="tables")
        eventually(lambda: first.ipvs.daemons() == [SyncDaemon(SyncState.MASTER, "eth0")])
        eventually(lambda: other.ipvs.daemons() == [SyncDaemon(SyncState.BACKUP, "eth0")])
        leases = api.request("GET", kube_lease.leases_path(ns),
                             query=[("labelSelector", f"{lease.LABEL}=true")])["items"]
        assert {item["spec"]["holderIdentity"] for item in leases} >= {a.node, b.node}

        # The holder can no longer renew: it drops the VIP, then the other takes it.
        first.connection.cut = True
        cut = time.monotonic()
        eventually(lambda: other.holds(vip), timeout=10, what="takeover")
        took = time.monotonic() - cut
        assert not first.holds(vip)
        assert took < DURATION + 1.0, f"takeover after {took:.2f} s"
        eventually(lambda: roles(api, ns, "ha")[other.node] == "Active", what="new role")

        # Renewing again: after settling, at most one handover; then it stays.
        first.connection.cut = False
        time.sleep(SETTLE + 2.0)
        final: HADirector = eventually(lambda: one_holder(pair, vip), what="one holder")
        time.sleep(1.0)
        assert one_holder(pair, vip) is final
        final_roles = roles(api, ns, "ha")
        assert sorted(final_roles.values()) == ["Active", "Standby"], final_roles
        assert final_roles[final.node] == "Active"
    assert sampler.both == 0, sampler.history
    moves = sampler.moves()
    assert moves[:2] == [first.node, other.node], moves
    assert len(moves) <= 3, moves
    print(f"takeover after the holder's Lease writes were cut: {took:.2f} s; "
          f"holders: {' -> '.join(moves)}")


def test_graceful_stop_hands_over_at_once(api, ns, label, pair):
    vip = "192.0.2.42"
    create_vs(api, ns, "bye", vip=vip, label=label)
    publish(api, ns, "bye", [ready(1)])
    stacks = {d.node: contextlib.ExitStack() for d in pair}
    with Sampler(pair, vip) as sampler:
        try:
            for d in pair:
                stacks[d.node].enter_context(d.agent(api=d.connection))
            first: HADirector = eventually(lambda: one_holder(pair, vip),
                                           what="one VIP holder")
            other = next(d for d in pair if d is not first)
            eventually(lambda: roles(api, ns, "bye") == {first.node: "Active",
                                                         other.node: "Standby"})
            stopped = time.monotonic()
            stacks[first.node].close()  # SIGTERM: Agent.stop
            assert not first.holds(vip), "released before its Lease went"
            eventually(lambda: other.holds(vip), timeout=5, what="handover")
            took = time.monotonic() - stopped
            assert took < DURATION, f"handover after {took:.2f} s: no faster than expiry"
            assert roles(api, ns, "bye")[first.node] == "Standby"
            with pytest.raises(client.ApiError) as gone:
                api.request("GET", f"{kube_lease.leases_path(ns)}/{lease.lease_name(first.node)}")
            assert gone.value.status == 404
        finally:
            for stack in stacks.values():
                stack.close()
    assert sampler.both == 0, sampler.history
    # The last one stopping was alone: it keeps the VIP (a restart must not drop traffic).
    assert other.holds(vip)


def test_a_deleted_nodes_lease_goes_with_it(api, ns, pair):
    """A director gone for good (its agent died, then its Node was deleted) leaves no Lease
    behind: its Node owns the Lease, and the garbage collector deletes it with the Node."""
    director = pair[0]
    name = f"{kube_lease.leases_path(ns)}/{lease.lease_name(director.node)}"
    uid = api.request("GET", f"{client.NODES}/{director.node}")["metadata"]["uid"]

    def current() -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = api.request("GET", name)
        except client.ApiError as error:
            if error.status != 404:
                raise
            return None
        return found

    with director.agent(api=director.connection):
        owners = eventually(lambda: ((current() or {}).get("metadata") or {}).get(
            "ownerReferences"), what="the Lease owned by its Node")
        assert owners == [{"apiVersion": "v1", "kind": "Node", "name": director.node,
                           "uid": uid}]
        director.connection.cut = True  # as if it died: its Lease stays behind
    assert (current() or {}).get("spec", {}).get("holderIdentity") == director.node
    api.request("DELETE", f"{client.NODES}/{director.node}")
    eventually(lambda: current() is None, timeout=60,
               what="the garbage collector deleting the Lease")
