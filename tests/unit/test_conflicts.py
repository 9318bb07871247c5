"""conflicts: the older VirtualServer keeps a VIP:port/protocol; table-driven."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from lvs_operator.api import conflicts, spec
from lvs_operator.api.conflicts import Claimant, Conflict
from lvs_operator.model import Protocol, ServiceKey


def key(port: int = 80, *, vip: str = "192.0.2.10", protocol: Protocol = Protocol.TCP):
    return ServiceKey.inet(protocol, ip_address(vip), port)


def c(ref: str, created: str, *keys: ServiceKey) -> Claimant:
    namespace, name = ref.split("/")
    return Claimant(namespace, name, f"2024-05-01T10:00:{created}Z", frozenset(keys))


CASES = [
    pytest.param([], {}, id="none"),
    pytest.param([c("a/x", "00", key()), c("a/y", "00", key(443))], {}, id="different-ports"),
    pytest.param([c("a/x", "00", key()), c("a/y", "00", key(80, protocol=Protocol.UDP))], {},
                 id="same-port-other-protocol"),
    pytest.param([c("a/x", "00", key()), c("a/y", "00", key(vip="192.0.2.11"))], {},
                 id="different-vip"),
    pytest.param([c("b/new", "05", key()), c("a/old", "01", key())],
                 {"b/new": Conflict(key(), "a/old")}, id="older-wins-across-namespaces"),
    pytest.param([c("b/x", "01", key()), c("a/x", "01", key())],
                 {"b/x": Conflict(key(), "a/x")}, id="same-second-namespace-breaks-tie"),
    pytest.param([c("a/y", "01", key()), c("a/x", "01", key())],
                 {"a/y": Conflict(key(), "a/x")}, id="same-second-name-breaks-tie"),
    pytest.param([c("a/x", "00", key()), c("a/y", "01", key()), c("a/z", "02", key())],
                 {"a/y": Conflict(key(), "a/x"), "a/z": Conflict(key(), "a/x")},
                 id="oldest-is-named"),
    pytest.param([c("a/x", "00", key(443)), c("a/y", "01", key(80), key(443))],
                 {"a/y": Conflict(key(443), "a/x")}, id="one-shared-key-is-enough"),
    pytest.param([c("a/x", "00", key(443)), c("a/w", "00", key(80)),
                  c("a/y", "01", key(80), key(443))],
                 {"a/y": Conflict(key(80), "a/w")}, id="first-key-in-key-order"),
    # Pairwise: y loses to x on 80, and still keeps z out of 443 (it is older than z).
    pytest.param([c("a/x", "00", key(80)), c("a/y", "01", key(80), key(443)),
                  c("a/z", "02", key(443))],
                 {"a/y": Conflict(key(80), "a/x"), "a/z": Conflict(key(443), "a/y")},
                 id="pairwise-chain"),
    pytest.param([c("a/x", "00", key(vip="2001:db8::1")),
                  c("a/y", "01", key(vip="2001:0db8:0::1"))],
                 {"a/y": Conflict(key(vip="2001:db8::1"), "a/x")}, id="ipv6-spellings"),
]


@pytest.mark.parametrize(("claimants", "expected"), CASES)
def test_conflicts(claimants, expected):
    assert conflicts.conflicts(claimants) == expected
    assert conflicts.conflicts(claimants[::-1]) == expected


def test_recovers_when_the_older_goes():
    old, new = c("a/old", "00", key()), c("b/new", "09", key())
    assert conflicts.conflict(new, [old, new]) == Conflict(key(), "a/old")
    assert conflicts.conflict(new, [new]) is None
    assert conflicts.conflict(old, [old, new]) is None


def test_claimant_of_a_parsed_virtual_server_and_message():
    vs = spec.parse({"metadata": {"name": "web", "namespace": "shop"}, "spec": {
        "vip": "192.0.2.10", "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}],
        "backend": {"addresses": [{"ip": "10.0.0.1"}]}}})
    claimant = Claimant.of(vs, created="2024-05-01T10:00:00Z")
    assert claimant.id == "shop/web"
    assert claimant.keys == {key(), key(53, protocol=Protocol.UDP)}
    message = Conflict(key(), "shop/old", "shop").message
    assert message.startswith("TCP 192.0.2.10:80 is already claimed by VirtualServer "
                              "shop/old, which is older")
    # Another namespace's object is not named: its reader may not see that namespace.
    message = Conflict(key(), "other/web", "shop").message
    assert "other/" not in message and "web" not in message
    assert "a VirtualServer of another namespace" in message
