"""`record`: frozen value classes, like `dataclasses.dataclass(frozen=True)`, made cheaply.

The model, plan and spec types are records rather than dataclasses because of what
`dataclasses` costs a short-lived command: importing it loads `inspect` (and with it `ast`,
`dis`, `tokenize`), and each decorated class compiles five or six generated methods. Under
the test VM's emulation that was a tenth of `lvs-operator ipvs apply`'s whole run. A record
compiles one method, `__init__` (which fills the instance dict directly: thousands of real
servers are built per bulk file), and shares the others.

What a record is, for a class body of annotated fields (`from __future__ import annotations`
is fine; `ClassVar` annotations are not fields):

- `__init__` takes the fields in order, positionally or by name, with their defaults
  (`field(default=...)`, `field(default_factory=...)` or a plain class attribute), then calls
  `__post_init__()` if the class has one;
- `__eq__` compares the fields that have `compare=True` (the default), for the same class
  only; `__hash__` hashes them (unless the class defines its own); `__repr__` shows every
  field: `Name(a=1, b=2)`;
- frozen (the default): assigning or deleting an attribute raises `FrozenInstanceError`.
  `record(frozen=False)` makes a mutable, unhashable record, as dataclasses do.

Methods the class defines itself are kept. A record may extend another record (the base's
fields come first). `replace` and `fields` work on records and on dataclasses.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

# `typing` is for the type checker only (TYPE_CHECKING is true for it alone, false at run
# time), here and in the other modules `ipvs apply` loads: importing it cost the command
# about 2% of its time in the test VM. At run time `dataclass_transform` and `overload` have
# no effect anyway (they only mark functions for type checkers).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar, dataclass_transform, overload

    _T = TypeVar("_T")
    _C = TypeVar("_C", bound=type)
else:
    def dataclass_transform(**_kwargs: object) -> Callable[[object], object]:
        return lambda function: function

    def overload(function: object) -> object:
        return function


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
_FIELDS = "__record_fields__"


class FrozenInstanceError(AttributeError):
    """An attribute of a frozen record was assigned or deleted."""


class Field:
    """One field of a record: its name, default or default factory (else MISSING), and
    whether `==` and the hash use it. `field()` makes one without a name; `record` names it.

    A plain class, not a NamedTuple: that one would compile methods too.
    """

    __slots__ = ("compare", "default", "default_factory", "name")

    def __init__(self, name: str, default: Any = MISSING,
                 default_factory: Callable[[], Any] | Any = MISSING, compare: bool = True,
                 ) -> None:
        self.name = name
        self.default = default
        self.default_factory = default_factory
        self.compare = compare

    def __repr__(self) -> str:
        return (f"Field(name={self.name!r}, default={self.default!r}, "
                f"default_factory={self.default_factory!r}, compare={self.compare!r})")


def field(*, default: Any = MISSING, default_factory: Callable[[], Any] | Any = MISSING,
          compare: bool = True) -> Any:
    """Return a field specifier: a default or a default factory, and whether `==` and the
    hash use the field.

    Raises:
        ValueError: when both a default and a default factory are given.
    """
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("a field cannot have both a default and a default factory")
    return Field("", default, default_factory, compare)


# The F811 notes: ruff does not see that `overload` is typing's for the type checker.
@overload
def record(cls: _C, /) -> _C: ...
@overload
def record(*, frozen: bool = True) -> Callable[[_C], _C]: ...  # noqa: F811


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(  # noqa: F811
        cls: _C | None = None, /, *, frozen: bool = True) -> _C | Callable[[_C], _C]:
    """Make `cls` a record (see the module docstring); return it.

    Raises:
        TypeError: when a field without a default follows one with a default.
    """
    def wrap(cls: _C) -> _C:
        return _build(cls, frozen=frozen)

    return wrap if cls is None else wrap(cls)


def fields(obj: Any) -> tuple[Field, ...]:
    """Return the fields of a record (or a record class), in order; also for dataclasses.

    Raises:
        TypeError: when `obj` is neither.
    """
    found: tuple[Field, ...] | None = getattr(obj, _FIELDS, None)
    if found is not None:
        return found
    import dataclasses  # only for dataclasses, which have loaded it already

    return tuple(Field(f.name, f.default, f.default_factory, f.compare)
                 for f in dataclasses.fields(obj))


def replace(obj: _T, /, **changes: Any) -> _T:
    """Return a copy of the record (or dataclass) `obj` with `changes` applied.

    Raises:
        TypeError: when `obj` is neither, or a change names no field.
    """
    found: tuple[Field, ...] | None = getattr(type(obj), _FIELDS, None)
    if found is None:
        import dataclasses

        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    values = obj.__dict__
    for f in found:
        if f.name not in changes:
            changes[f.name] = values[f.name]
    return type(obj)(**changes)


def _build(cls: _C, *, frozen: bool) -> _C:
    own: list[Field] = []
    # Not inspect.get_annotations: importing `inspect` is what records exist to avoid.
    annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
    for name, annotation in annotations.items():
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        if text.startswith(("ClassVar", "typing.ClassVar")):
            continue
        value = cls.__dict__.get(name, MISSING)
        if isinstance(value, Field):
            value.name = name
            own.append(value)
            if value.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, value.default)
        else:
            own.append(Field(name, value))
    inherited: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        for f in base.__dict__.get(_FIELDS, ()):
            inherited[f.name] = f
    every = {**inherited, **{f.name: f for f in own}}
    found = tuple(every.values())
    setattr(cls, _FIELDS, found)
    names = [f.name for f in found]
    compared = tuple(f.name for f in found if f.compare)
    body = cls.__dict__
    if "__init__" not in body:
        cls.__init__ = _init(cls, found)  # type: ignore[misc]
    if "__repr__" not in body:
        cls.__repr__ = _repr(names)  # type: ignore[assignment]
    if "__eq__" not in body:
        cls.__eq__ = _eq(compared)  # type: ignore[assignment]
    # None also when the class body defines __eq__ without __hash__: Python then sets
    # __hash__ = None itself.
    if body.get("__hash__") is None:
        cls.__hash__ = _hash(compared) if frozen else None  # type: ignore[assignment]
    if frozen:
        for name, method in (("__setattr__", _frozen_setattr), ("__delattr__", _frozen_delattr)):
            if name in body:
                raise TypeError(f"{cls.__name__}: a frozen record cannot define {name}")
            setattr(cls, name, method)
    setattr(cls, "__match_args__", tuple(names))  # noqa: B010 (mypy refuses the assignment)
    return cls


def _init(cls: type, found: tuple[Field, ...]) -> Callable[..., None]:
    namespace: dict[str, Any] = {"MISSING": MISSING}
    arguments, stores = ["self"], []
    seen_default = False
    for f in found:
        value = f.name
        if f.default is not MISSING:
            namespace[f"_default_{f.name}"] = f.default
            arguments.append(f"{f.name}=_default_{f.name}")
            seen_default = True
        elif f.default_factory is not MISSING:
            namespace[f"_factory_{f.name}"] = f.default_factory
            arguments.append(f"{f.name}=MISSING")
            value = f"_factory_{f.name}() if {f.name} is MISSING else {f.name}"
            seen_default = True
        elif seen_default:
            raise TypeError(f"{cls.__name__}: field {f.name!r} without a default follows one "
                            "with a default")
        else:
            arguments.append(f.name)
        stores.append(f"    values[{f.name!r}] = {value}")
    if hasattr(cls, "__post_init__"):
        stores.append("    self.__post_init__()")
    source = "\n".join([f"def __init__({', '.join(arguments)}):",
                        "    values = self.__dict__", *stores])
    exec(source, namespace)  # one small compile per class, as dataclasses does (times six)
    init: Callable[..., None] = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    return init


def _values(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    if not names:
        return lambda obj: ()
    if len(names) == 1:
        one = operator.attrgetter(names[0])
        return lambda obj: (one(obj),)
    return operator.attrgetter(*names)


def _repr(names: list[str]) -> Callable[[Any], str]:
    def __repr__(self: Any) -> str:
        values = self.__dict__
        inner = ", ".join(f"{name}={values[name]!r}" for name in names)
        return f"{type(self).__qualname__}({inner})"

    return __repr__


def _eq(names: tuple[str, ...]) -> Callable[[Any, object], bool]:
    values = _values(names)

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is self.__class__:
            return values(self) == values(other)
        return NotImplemented

    return __eq__


def _hash(names: tuple[str, ...]) -> Callable[[Any], int]:
    values = _values(names)

    def __hash__(self: Any) -> int:
        return hash(values(self))

    return __hash__


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")

