"""The model types: dataclasses with every field, `attributes`, and the cached key hash."""

from __future__ import annotations

import dataclasses
import ipaddress
import pickle

import pytest

from lvs_operator import model, plan
from lvs_operator.api import spec
from lvs_operator.model import (
    Forwarding,
    Persistence,
    Protocol,
    RealServer,
    SchedulerFlag,
    ServiceKey,
    Stats,
    VirtualService,
)

A = ipaddress.ip_address("192.0.2.1")
B = ipaddress.ip_address("2001:db8::1")

RECORDS = [ServiceKey, RealServer, VirtualService, Persistence, Stats, spec.Port,
           spec.Endpoint, spec.VirtualServer, plan.AddService, plan.SetService,
           plan.DeleteService, plan.AddReal, plan.SetReal, plan.DeleteReal]


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_record_classes_store_their_fields_with_their_defaults(cls: type) -> None:
    # Fields outside __init__ (the cached hash, sort key and keys) are not given.
    fields = [f for f in dataclasses.fields(cls) if f.init]
    required = [f for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    values = {f.name: object() for f in required}
    if cls is VirtualService:
        values["key"] = ServiceKey.inet(Protocol.TCP, A, 80)
    if cls is spec.VirtualServer:
        values["ports"] = ()  # its keys are built from the ports at construction
    instance = cls(**values)
    for f in fields:
        if f.name in values:
            expected = values[f.name]
        elif f.default is not dataclasses.MISSING:
            expected = f.default
        else:
            assert callable(f.default_factory)
            expected = f.default_factory()
        assert getattr(instance, f.name) == expected, f.name


def test_attributes_keeps_every_field_but_the_real_servers() -> None:
    real = RealServer(A, 80, Forwarding.NAT, weight=2)
    service = VirtualService(key=ServiceKey.inet(Protocol.TCP, A, 80), scheduler="sh",
                             flags=frozenset({SchedulerFlag.PORT}),
                             persistence=Persistence(timeout=60, prefix=24), one_packet=True,
                             reals={real.key: real}, stats=Stats(conns=3))
    bare = service.attributes()
    # `attributes` names the fields itself: a field added to VirtualService must be added there.
    assert bare == dataclasses.replace(service, reals={})
    assert bare.stats == Stats(conns=3) and bare.reals == {}
    assert {f.name for f in dataclasses.fields(VirtualService)} == {
        "key", "scheduler", "flags", "persistence", "one_packet", "reals", "stats"}


def test_service_key_hash_agrees_with_equality_and_survives_pickling() -> None:
    keys = [ServiceKey.inet(Protocol.TCP, A, 80), ServiceKey.inet(Protocol.UDP, A, 80),
            ServiceKey.inet(Protocol.TCP, A, 81), ServiceKey.inet(Protocol.TCP, B, 80),
            ServiceKey.mark(5), ServiceKey.mark(5, family=6)]
    for key in keys:
        twin = dataclasses.replace(key)
        assert twin == key and hash(twin) == hash(key)
        assert hash(key) == hash(key)  # the cached value
        assert pickle.loads(pickle.dumps(key)) == key
        assert hash(pickle.loads(pickle.dumps(key))) == hash(key)
    assert len(set(keys)) == len(keys)
    assert repr(keys[0]) == ("ServiceKey(family=4, protocol=<Protocol.TCP: 6>, "
                             "address=IPv4Address('192.0.2.1'), port=80, fwmark=0)")
    assert model.table(VirtualService(key=k) for k in keys).keys() == set(keys)
