"""lease.Keeper: the director's Lease is owned by its Node (so the garbage collector deletes
it with the Node), carries the Node's labels, and says whom it is owned by only when that
changes or a run of renewals begins."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from test_agent_loop import FakeApi, eventually

from lvs_operator.agent import lease
from lvs_operator.agent.settings import HASettings

HA = HASettings(engine="lease", namespace="lvs-system", lease_duration_seconds=0.4,
                renew_seconds=0.05,
                renew_deadline_seconds=0.25, settle_seconds=1.0, announce_seconds=0.3)
NODE = {"metadata": {"name": "node-a", "uid": "6f1d-uid", "labels": {"zone": "a"}}}
OWNER = [{"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": "6f1d-uid"}]


class RecordingApi(FakeApi):
    """FakeApi that keeps the body of every Lease write."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[tuple[str, Any]] = []

    def request(self, method, path, *, query=(), body=None, content_type="", timeout=None):
        with self.changed:
            self.bodies.append((method, copy.deepcopy(body)))
        return super().request(method, path, query=query, body=body,
                               content_type=content_type, timeout=timeout)

    def lease(self) -> dict[str, Any]:
        with self.changed:
            return copy.deepcopy(self.leases.get(lease.lease_name("node-a"), {}))

    def writes(self) -> list[tuple[str, Any]]:
        with self.changed:
            return list(self.bodies)


@pytest.fixture
def keeper() -> Iterator[tuple[lease.Keeper, RecordingApi]]:
    api = RecordingApi()
    keeper = lease.Keeper(HA, node="node-a", api=api, on_change=lambda: None)
    keeper.start()
    yield keeper, api
    keeper.stop(delete=False)


def set_node(keeper: lease.Keeper, node: dict[str, Any]) -> None:
    """What the agent loop does with its Node: its labels and its ownership."""
    keeper.set_labels(node["metadata"]["labels"])
    keeper.set_owner(lease.owners(node))


def owned_by(obj: dict[str, Any]) -> Any:
    return obj.get("metadata", {}).get("ownerReferences")


def test_owners_of_a_node() -> None:
    assert lease.owners(NODE) == OWNER
    assert lease.owners({"metadata": {"name": "node-a"}}) == []  # no uid: not yet stored


def test_lease_is_owned_by_the_node_and_says_so_once(keeper) -> None:
    keeper_, api = keeper
    time.sleep(0.2)
    assert api.lease() == {}  # nothing is published before the labels are known
    keeper_.set_labels(NODE["metadata"]["labels"])
    eventually(lambda: api.lease())  # created before the Node's uid is known: no owner
    assert owned_by(api.lease()) is None
    set_node(keeper_, NODE)
    eventually(lambda: owned_by(api.lease()) == OWNER)
    assert api.lease()["metadata"]["annotations"][lease.LABELS_ANNOTATION] == '{"zone":"a"}'
    # Later renewals leave ownerReferences alone (the patch does not carry them).
    sent = len(api.writes())
    eventually(lambda: len(api.writes()) >= sent + 3)
    later = api.writes()[sent + 1:]
    assert all("ownerReferences" not in body["metadata"] for _, body in later), later
    assert owned_by(api.lease()) == OWNER


def test_lease_loses_its_owner_while_the_node_is_missing(keeper) -> None:
    keeper_, api = keeper
    set_node(keeper_, NODE)
    eventually(lambda: owned_by(api.lease()) == OWNER)
    keeper_.set_owner([])  # the Node is gone: the garbage collector would delete the Lease
    eventually(lambda: owned_by(api.lease()) is None)
    # The labels it had stay in the Lease.
    assert api.lease()["metadata"]["annotations"][lease.LABELS_ANNOTATION] == '{"zone":"a"}'
    # Recreated (as after the collector deleted it): no owner.
    with api.changed:
        api.leases.clear()
    eventually(lambda: api.lease())
    assert owned_by(api.lease()) is None


def test_renewal_and_body_carry_owners_only_when_asked() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    plain = lease.renewal("node-a", duration=0.8, labels={}, term="t", now=now)
    assert "ownerReferences" not in plain["metadata"]
    owned = lease.renewal("node-a", duration=0.8, labels={}, term="t", now=now, owned_by=OWNER)
    assert owned["metadata"]["ownerReferences"] == OWNER
    cleared = lease.renewal("node-a", duration=0.8, labels={}, term="t", now=now, owned_by=[])
    assert cleared["metadata"]["ownerReferences"] is None  # merge patch: remove
    new = lease.body("node-a", "ns", duration=0.8, labels={}, term="t", now=now, owned_by=[])
    assert "ownerReferences" not in new["metadata"]
    new = lease.body("node-a", "ns", duration=0.8, labels={}, term="t", now=now,
                     owned_by=OWNER)
    assert new["metadata"]["ownerReferences"] == OWNER
