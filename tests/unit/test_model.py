"""The model types: what `stored_directly` and the cached key hash must keep as dataclasses do."""

from __future__ import annotations

import dataclasses
import ipaddress
import pickle
from dataclasses import dataclass, field

import pytest

from lvs_operator import model, plan, spec
from lvs_operator.model import (
    Forwarding,
    Persistence,
    Protocol,
    RealServer,
    SchedulerFlag,
    ServiceKey,
    Stats,
    VirtualService,
    stored_directly,
)

A = ipaddress.ip_address("192.0.2.1")
B = ipaddress.ip_address("2001:db8::1")

STORED_DIRECTLY = [ServiceKey, RealServer, VirtualService, spec.Port, spec.Endpoint,
                   spec.VirtualServer, plan.AddService, plan.SetService, plan.DeleteService,
                   plan.AddReal, plan.SetReal, plan.DeleteReal]


@stored_directly
@dataclass(frozen=True)
class _Sample:
    required: int
    default: str = "x"
    items: list[int] = field(default_factory=list)
    hidden: int = field(default=0, compare=False, repr=False)
    seen: list[str] = field(default_factory=list, compare=False)

    def __post_init__(self) -> None:
        self.seen.append(f"post_init {self.required}")


def test_stored_directly_takes_the_same_arguments_as_the_generated_init() -> None:
    assert _Sample(1) == _Sample(required=1, default="x", items=[])
    assert _Sample(1, "y", [2], 3).default == "y"
    assert _Sample(1, items=[5]).items == [5]
    assert _Sample(1).items is not _Sample(1).items  # a fresh default per instance
    assert _Sample(1).seen == ["post_init 1"]
    assert repr(_Sample(1, hidden=4)) == "_Sample(required=1, default='x', items=[], seen=" \
        "['post_init 1'])"
    with pytest.raises(TypeError):
        _Sample()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _Sample(1, unknown=2)  # type: ignore[call-arg]
    with pytest.raises(dataclasses.FrozenInstanceError):
        _Sample(1).required = 2  # type: ignore[misc]
    assert dataclasses.replace(_Sample(1), default="z") == _Sample(1, "z")


@pytest.mark.parametrize("cls", STORED_DIRECTLY, ids=lambda c: c.__name__)
def test_stored_directly_classes_build_like_dataclasses(cls: type) -> None:
    """Each decorated class stores exactly its fields, with their defaults."""
    fields = dataclasses.fields(cls)
    required = [f for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    values = {f.name: object() for f in required}
    if cls is VirtualService:
        values["key"] = ServiceKey.inet(Protocol.TCP, A, 80)
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


def test_stored_directly_refuses_what_it_cannot_build() -> None:
    class Plain:
        pass

    @dataclass
    class Mutable:
        x: int

    @dataclass(frozen=True)
    class KeywordOnly:
        x: int = field(kw_only=True)

    @dataclass(frozen=True, slots=True)
    class Slotted:
        x: int

    for cls in (Plain, Mutable, KeywordOnly, Slotted):
        with pytest.raises(TypeError):
            stored_directly(cls)


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
