"""The ownership record survives restarts and refuses garbage clearly."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from lvs_operator.model import Protocol, ServiceKey
from lvs_operator.ownership import Owned, OwnershipStore


def test_missing_file_is_empty(tmp_path):
    assert OwnershipStore(tmp_path / "none.json").load() == Owned()


def test_round_trip(tmp_path):
    store = OwnershipStore(tmp_path / "sub" / "owned.json")
    owned = Owned(
        services={ServiceKey.inet(Protocol.TCP, ip_address("192.0.2.1"), 80),
                  ServiceKey.inet(Protocol.SCTP, ip_address("2001:db8::1"), 9),
                  ServiceKey.mark(7, family=6)},
        vips={"eth0": {ip_address("192.0.2.1"), ip_address("2001:db8::1")}},
    )
    store.save(owned)
    assert store.load() == owned
    assert not list((tmp_path / "sub").glob(".owned.*")), "temporary file left behind"


def test_union():
    a = Owned(services={ServiceKey.mark(1)}, vips={"eth0": {ip_address("192.0.2.1")}})
    b = Owned(services={ServiceKey.mark(2)}, vips={"eth0": {ip_address("192.0.2.2")},
                                                   "eth1": {ip_address("192.0.2.3")}})
    u = a.union(b)
    assert u.services == {ServiceKey.mark(1), ServiceKey.mark(2)}
    assert u.vips == {"eth0": {ip_address("192.0.2.1"), ip_address("192.0.2.2")},
                      "eth1": {ip_address("192.0.2.3")}}
    assert a.vips == {"eth0": {ip_address("192.0.2.1")}}, "union must not mutate"


@pytest.mark.parametrize("content", ["not json", '{"services": [["TCP", "x", 80]]}', "{}"])
def test_garbage_is_a_clear_error(tmp_path, content):
    path = tmp_path / "owned.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=str(path)):
        OwnershipStore(path).load()


def test_loads_are_copies_and_see_other_writers(tmp_path):
    path = tmp_path / "owned.json"
    mine, other = OwnershipStore(path), OwnershipStore(path)
    mine.save(Owned(services={ServiceKey.mark(1)}))
    first = mine.load()
    first.services.add(ServiceKey.mark(9))  # a caller changing its copy changes no record
    assert mine.load() == Owned(services={ServiceKey.mark(1)})
    other.save(Owned(services={ServiceKey.mark(2)}))  # same size, another file (rename)
    assert mine.load() == Owned(services={ServiceKey.mark(2)})
    path.unlink()
    assert mine.load() == Owned()
