"""api.claims: who owns a VIP (settle: what the controller writes; check: who may use it)."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

import pytest

from lvs_operator.api import claims, spec

VIP = ip_address("10.0.0.5")


def vs(namespace: str, name: str = "web", **fields: Any) -> spec.VirtualServer:
    body: dict[str, Any] = {"vip": str(VIP), "ports": [{"port": 80}],
                            "backend": {"service": {"name": "web"}}}
    body.update(fields)
    return spec.parse({"metadata": {"name": name, "namespace": namespace}, "spec": body})


def user(namespace: str, created: str, **kw: Any) -> claims.User:
    pool = kw.pop("pool", "p")
    refused = kw.pop("refused", False)
    return claims.User(vs(namespace, **kw), created=created, pool=pool, refused=refused)


@pytest.mark.parametrize(("address", "name"), [
    ("10.0.0.5", "10.0.0.5"), ("2001:db8::5", "2001-db8--5"), ("::a00:1", "0--a00-1"),
    ("2001:db8::", "2001-db8--0")])
def test_names_are_object_names(address: str, name: str):
    assert claims.name_of(ip_address(address)) == name


def test_document_round_trip():
    claim = claims.Claim(VIP, "shop", "k1", spec.Directors({"a": "b"}, "eth1"), "p", "7")
    doc = claim.document()
    assert doc["metadata"]["name"] == "10.0.0.5" and doc["kind"] == "VIPClaim"
    assert claims.Claim.from_object(doc) == claim
    with pytest.raises(ValueError, match=r"spec\.address"):
        claims.Claim.from_object({"spec": {"namespace": "x"}})


def test_the_oldest_eligible_user_gets_an_unclaimed_vip():
    users = [user("b", "2024-05-01T10:00:05Z"), user("a", "2024-05-01T10:00:09Z"),
             user("c", "2024-05-01T10:00:01Z", pool=""),  # no pool admits it
             user("d", "2024-05-01T10:00:00Z", refused=True)]  # a squatter, refused before
    action, claim = claims.settle(VIP, None, users)
    assert action == "create" and claim is not None and claim.namespace == "b"
    assert claims.settle(VIP, None, [users[2], users[3]]) == ("", None)


def test_the_owner_keeps_its_claim_while_it_uses_the_vip():
    claim = claims.Claim(VIP, "b", resource_version="3")
    assert claims.settle(VIP, claim, [user("a", "2024-01-01T00:00:00Z"),
                                      user("b", "2024-06-01T00:00:00Z", pool="")]) == ("", None)
    # Gone: released, even with a squatter waiting (it was refused: it stays so).
    assert claims.settle(VIP, claim, []) == ("delete", claim)
    assert claims.settle(VIP, claim, [user("a", "2024-01-01T00:00:00Z", refused=True)]) == \
        ("delete", claim)


def test_a_sharer_inherits_the_claim():
    claim = claims.Claim(VIP, "a", "k", resource_version="3")
    heir = user("b", "2024-01-01T00:00:00Z", sharingKey="k")
    action, new = claims.settle(VIP, claim, [heir, user("c", "2023-01-01T00:00:00Z")])
    assert action == "replace" and new is not None
    assert (new.namespace, new.sharing_key, new.resource_version) == ("b", "k", "3")


def test_check_sharing_needs_both_keys_and_the_same_directors():
    claim = claims.Claim(VIP, "a", "k", spec.Directors({}, None))
    assert claims.check(vs("a"), claim) == ""
    assert claims.check(vs("b", sharingKey="k"), claim) == ""
    refused = claims.check(vs("b"), claim)
    assert refused.startswith("spec.vip: 10.0.0.5 belongs to another namespace")
    assert "the same spec.sharingKey" in refused and "a/" not in refused
    # The same words for a wrong key and a right key with other directors: no oracle.
    assert claims.check(vs("b", sharingKey="k", directors={"interface": "eth1"}), claim) == \
        claims.check(vs("b", sharingKey="guess"), claim) == refused
    assert claims.check(vs("b", sharingKey="k"), claims.Claim(VIP, "a")) != ""
    # Unclaimed: allowed (the controller grants first), unless refused before.
    assert claims.check(vs("b"), None) == ""
    assert "delete and re-create" in claims.check(vs("b"), None, refused_before=True)


def test_a_load_balancer_claim_round_trips_and_stays_while_its_service_wants_it():
    claim = claims.Claim(VIP, "shop", "k", pool="p", resource_version="4", service="web")
    document = claim.document()
    assert document["spec"]["service"] == "web"
    assert claims.Claim.from_object(document) == claim
    # Made before any VirtualServer uses it: kept while a Service has the address.
    assert claims.settle(VIP, claim, [], wanted=True) == ("", None)
    assert claims.settle(VIP, claim, []) == ("delete", claim)
