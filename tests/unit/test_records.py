"""`records.record` against `dataclasses.dataclass`: the same behaviour, class by class."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any, ClassVar

import pytest

from lvs_operator import records
from lvs_operator.records import FrozenInstanceError, field, record, replace


@record
class Sample:
    required: int
    default: str = "x"
    items: list[int] = field(default_factory=list)
    hidden: int = field(default=0, compare=False)
    seen: list[str] = field(default_factory=list, compare=False)
    LIMIT: ClassVar[int] = 3

    def __post_init__(self) -> None:
        self.seen.append(f"post_init {self.required}")


@dataclasses.dataclass(frozen=True)
class Twin:
    required: int
    default: str = "x"
    items: list[int] = dataclasses.field(default_factory=list)
    hidden: int = dataclasses.field(default=0, compare=False)
    seen: list[str] = dataclasses.field(default_factory=list, compare=False)
    LIMIT: ClassVar[int] = 3

    def __post_init__(self) -> None:
        self.seen.append(f"post_init {self.required}")


CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((1,), {}), ((1, "y", [2], 3), {}), ((1,), {"items": [5]}), ((), {"required": 1}),
    ((1,), {"hidden": 4, "seen": ["given"]}),
]


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_a_record_builds_compares_and_prints_like_a_frozen_dataclass(
        args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    ours, theirs = Sample(*args, **kwargs), Twin(*args, **kwargs)
    assert vars(ours) == vars(theirs)
    assert repr(ours).replace("Sample", "Twin") == repr(theirs)
    assert ours == Sample(*args, **kwargs)
    for unhashable in (ours, theirs):  # a list field, compared: no hash, as dataclasses do
        with pytest.raises(TypeError):
            hash(unhashable)
    assert ours.__match_args__ == theirs.__match_args__


def test_fields_defaults_and_equality() -> None:
    assert [f.name for f in records.fields(Sample)] == [
        f.name for f in dataclasses.fields(Twin)]
    assert records.fields(Sample(1)) == records.fields(Sample)
    assert Sample(1).items is not Sample(1).items  # a fresh default per instance
    assert Sample(1, hidden=1) == Sample(1, hidden=2)  # compare=False
    twin: object = Twin(1)
    assert Sample(1) != Sample(2) and Sample(1) != twin
    assert Sample.LIMIT == 3 and "LIMIT" not in {f.name for f in records.fields(Sample)}
    with pytest.raises(TypeError):
        Sample()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Sample(1, unknown=2)  # type: ignore[call-arg]


def test_frozen_and_replace() -> None:
    sample = Sample(1)
    with pytest.raises(FrozenInstanceError):
        sample.required = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del sample.default
    changed = replace(sample, default="z")
    assert changed == Sample(1, "z") and sample.default == "x"
    with pytest.raises(TypeError):
        replace(sample, unknown=1)
    # replace also takes a dataclass, as dataclasses.replace does
    assert replace(Twin(1), default="z") == Twin(1, "z")
    assert [f.name for f in records.fields(Twin)] == [f.name for f in records.fields(Sample)]
    assert pickle.loads(pickle.dumps(sample)) == sample


def test_hash_kept_when_defined_mutable_records_and_inheritance() -> None:
    @record
    class OwnHash:
        x: int

        def __hash__(self) -> int:
            return 7

    @record(frozen=False)
    class Mutable:
        x: int
        ys: set[int] = field(default_factory=set)

    @record
    class Base:
        a: int
        b: int = 2

    @record
    class Derived(Base):
        c: int = 3

    assert hash(OwnHash(1)) == 7
    mutable = Mutable(1)
    mutable.x = 2
    assert mutable == Mutable(2) and Mutable.__hash__ is None
    assert hash(Derived(1)) == hash(Derived(1, 2, 3)) != hash(Derived(1, 2, 4))
    assert Derived(1) == Derived(1, 2, 3)
    # the qualified name, as dataclasses do
    assert repr(Derived(1, c=4)).endswith("<locals>.Derived(a=1, b=2, c=4)")
    assert Derived(1) != Base(1)


def test_what_a_record_refuses() -> None:
    with pytest.raises(TypeError, match="follows"):
        @record
        class Misordered:
            a: int = 1
            b: int  # type: ignore[misc]

    with pytest.raises(TypeError, match="__setattr__"):
        @record
        class Settable:
            a: int

            def __setattr__(self, name: str, value: object) -> None:
                pass

    with pytest.raises(ValueError, match="both"):
        field(default=1, default_factory=list)
