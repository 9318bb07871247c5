"""api.pools: parsing VIPPools, and `admit`: which VIPs, modes, directors and static backends a
namespace may have (deny by default)."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import yaml

from lvs_operator.api import pools, spec


def pool(name: str = "p", **fields: Any) -> pools.Pool:
    body: dict[str, Any] = {"addresses": ["10.0.0.0/24"], "namespaces": ["shop"]}
    body.update(fields)
    return pools.parse({"metadata": {"name": name}, "spec": body})


def vs(namespace: str = "shop", vip: str = "10.0.0.5", **fields: Any) -> spec.VirtualServer:
    body: dict[str, Any] = {"vip": vip, "ports": [{"port": 80}],
                            "backend": {"service": {"name": "web"}}}
    body.update(fields)
    return spec.parse({"metadata": {"name": "web", "namespace": namespace}, "spec": body})


def test_ranges_in_every_form():
    p = pool(addresses=["10.0.0.0/30", "10.1.0.5-10.1.0.9", "2001:db8::7", "2001:db8:1::/64"])
    assert [str(r) for r in p.addresses] == ["10.0.0.0/30", "10.1.0.5-10.1.0.9",
                                            "2001:db8::7", "2001:db8:1::/64"]
    assert ip_address("10.0.0.3") in p and ip_address("10.0.0.4") not in p
    assert ip_address("10.1.0.9") in p and ip_address("10.1.0.10") not in p
    assert ip_address("2001:db8:1::ffff") in p and ip_address("2001:db8::8") not in p
    # An IPv4 address is never in an IPv6 range of the same integer values.
    assert ip_address("0.0.0.7") not in pool(addresses=["::/120"])
    assert pools.parse_range("10.0.0.0-10.0.0.255").__str__() == "10.0.0.0/24"


@pytest.mark.parametrize(("field", "value", "path", "words"), [
    ("addresses", [], "spec.addresses", "must not be empty"),
    ("addresses", ["10.0.0.1/24"], "spec.addresses[0]", "host bits set: write its network "
     "address (10.0.0.0/24)"),
    ("addresses", ["10.0.0.9-10.0.0.1"], "spec.addresses[0]", "ends before it starts"),
    ("addresses", ["10.0.0.1-2001:db8::1"], "spec.addresses[0]", "mixes IPv4 and IPv6"),
    ("addresses", ["eth0"], "spec.addresses[0]", "is not an address range"),
    ("namespaces", ["Shop"], "spec.namespaces[0]", "not a namespace name"),
    ("forwarding", ["DSR"], "spec.forwarding[0]", "must be one of"),
    ("forwarding", [], "spec.forwarding", "must not be empty"),
    ("namespaceSelector", {"matchExpressions": [{"key": "a", "operator": "In"}]},
     "spec.namespaceSelector.matchExpressions[0].values", "must not be empty with In"),
    ("directors", {"interface": "eth0/1"}, "spec.directors.interface", "not a valid interface"),
    ("directors", {"allowOverride": "yes"}, "spec.directors.allowOverride", "true or false"),
    ("backendAddresses", ["x"], "spec.backendAddresses[0]", "is not an address range"),
    ("color", "blue", "spec.color", "unknown field"),
])
def test_bad_pools_name_the_field(field: str, value: Any, path: str, words: str):
    with pytest.raises(spec.SpecError) as caught:
        pool(**{field: value})
    assert caught.value.path == path
    assert words in caught.value.reason


def test_deny_by_default():
    verdict = pools.admit(vs(), [], {})
    assert not verdict.allowed and verdict.reason == pools.VIP_NOT_ALLOWED
    assert verdict.field == "spec.vip"
    assert "namespace shop may use no VIP pool" in verdict.message
    # A pool of another namespace does not count; neither does one naming nobody.
    assert not pools.admit(vs(), [pool(namespaces=["bank"]), pool("q", namespaces=[])],
                           {}).allowed


def test_a_vip_outside_the_namespaces_pools_names_them():
    verdict = pools.admit(vs(vip="192.0.2.1"), [pool("a"), pool("b", addresses=["10.9.0.0/16"]),
                                                pool("c", namespaces=["bank"])], {})
    assert verdict.reason == pools.VIP_NOT_ALLOWED
    assert verdict.message == (
        "spec.vip: 192.0.2.1 is in no VIP pool namespace shop may use (it may use: "
        "a (10.0.0.0/24); b (10.9.0.0/16)): pick an address from these")
    assert "bank" not in verdict.message and "c (" not in verdict.message


def test_namespaces_by_label():
    p = pool(namespaces=[], namespaceSelector={
        "matchLabels": {"team": "web"},
        "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["dev"]}]})
    assert pools.admit(vs(), [p], {"team": "web"}).allowed
    assert not pools.admit(vs(), [p], {"team": "web", "tier": "dev"}).allowed
    assert not pools.admit(vs(), [p], {"team": "db"}).allowed
    assert not pools.admit(vs(), [p], None).allowed  # labels unknown: only names serve
    everyone = pool(namespaces=[], namespaceSelector={})
    assert pools.admit(vs(namespace="any"), [everyone], {}).allowed


def test_forwarding_modes():
    p = pool(forwarding=["DirectRouting"])
    assert pools.admit(vs(), [p], {}).allowed
    verdict = pools.admit(vs(forwarding="NAT", backend={"service": {"name": "web"}}), [p], {})
    assert verdict.reason == pools.FORWARDING_NOT_ALLOWED
    assert verdict.message.startswith("spec.forwarding: VIP pool p allows DirectRouting, not NAT")


@pytest.mark.parametrize("address", ["10.244.1.7", "192.168.1.10", "10.0.0.5"])
def test_static_backends_only_in_the_pools_backend_ranges(address: str):
    static = {"addresses": [{"ip": "10.1.2.3"}, {"ip": address}]}
    assert not pools.admit(vs(backend=static), [pool()], {}).allowed  # none by default
    verdict = pools.admit(vs(backend=static), [pool(backendAddresses=["10.1.2.0/24"])], {})
    assert verdict.reason == pools.BACKEND_NOT_ALLOWED
    assert verdict.field == "spec.backend.addresses[1].ip"
    assert f"{address} is not a backend VIP pool p allows (it allows only 10.1.2.0/24)" \
        in verdict.message
    assert pools.admit(vs(backend=static), [pool(backendAddresses=["10.1.2.3", address])],
                       {}).allowed


def test_ipv6_metadata_address_refused_as_backend():
    static = {"addresses": [{"ip": "fd00:ec2::254"}]}
    v6 = vs(vip="2001:db8::5", backend=static)
    verdict = pools.admit(v6, [pool(addresses=["2001:db8::/64"],
                                    backendAddresses=["fd00:1::/64"])], {})
    assert verdict.reason == pools.BACKEND_NOT_ALLOWED


def test_pool_directors_are_inherited_and_may_be_narrowed_only():
    p = pool(directors={"nodeSelector": {"lvs.dev/director": "edge"}, "interface": "eth1"})
    admitted = pools.admit(vs(), [p], {})
    assert admitted.vs is not None and admitted.pool == "p"
    assert admitted.vs.directors == spec.Directors({"lvs.dev/director": "edge"}, "eth1")
    narrowed = pools.admit(vs(directors={"nodeSelector": {"zone": "a"}}), [p], {})
    assert narrowed.vs is not None
    assert narrowed.vs.directors.node_selector == {"zone": "a", "lvs.dev/director": "edge"}
    other = pools.admit(vs(directors={"nodeSelector": {"lvs.dev/director": "core"}}), [p], {})
    assert other.reason == pools.DIRECTORS_NOT_ALLOWED
    assert other.field == "spec.directors.nodeSelector.lvs.dev/director"
    iface = pools.admit(vs(directors={"interface": "eth0"}), [p], {})
    assert iface.reason == pools.DIRECTORS_NOT_ALLOWED and iface.field == \
        "spec.directors.interface"
    # What the pool leaves out, the VirtualServer chooses.
    chosen = pools.admit(vs(directors={"interface": "eth0"}), [pool()], {})
    assert chosen.vs is not None and chosen.vs.directors.interface == "eth0"
    labels_only = pool(directors={"nodeSelector": {"lvs.dev/director": "edge"}})
    mixed = pools.admit(vs(directors={"interface": "eth0"}), [labels_only], {})
    assert mixed.vs is not None
    assert mixed.vs.directors == spec.Directors({"lvs.dev/director": "edge"}, "eth0")
    free = pool(directors={"allowOverride": True})
    assert pools.admit(vs(directors={"interface": "eth0"}), [free], {}).allowed
    # With allowOverride the pool's directors are defaults.
    defaults = pool(directors={"nodeSelector": {"lvs.dev/director": "edge"},
                               "interface": "eth1", "allowOverride": True})
    taken = pools.admit(vs(), [defaults], {}).vs
    assert taken is not None
    assert taken.directors == spec.Directors({"lvs.dev/director": "edge"}, "eth1")
    picked = pools.admit(vs(directors={"nodeSelector": {"lvs.dev/director": "core"},
                                       "interface": "eth0"}), [defaults], {}).vs
    assert picked is not None
    assert picked.directors == spec.Directors({"lvs.dev/director": "core"}, "eth0")


def test_the_first_pool_that_allows_everything_decides():
    strict = pool("a", forwarding=["Tunnel"])
    lenient = pool("b")
    verdict = pools.admit(vs(), [lenient, strict], {})
    assert verdict.allowed and verdict.pool == "b"
    refused = pools.admit(vs(), [strict], {})
    assert refused.reason == pools.FORWARDING_NOT_ALLOWED


def test_the_example_pool_admits_every_example_in_shop():
    root = Path(__file__).resolve().parents[2] / "crds" / "examples"
    example = pools.parse(yaml.safe_load((root / "pool.yaml").read_text()))
    for path in sorted(root.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "VirtualServer":
                verdict = pools.admit(spec.parse(doc, default_namespace="shop"), [example], {})
                assert verdict.allowed, f"{path.name}: {verdict.message}"
                assert not pools.admit(spec.parse(doc, default_namespace="bank"), [example],
                                       {}).allowed
