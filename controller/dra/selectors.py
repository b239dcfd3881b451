"""CEL device selectors, evaluated with `cel-python` (celpy), a kept CEL library.

Kubernetes evaluates each selector on one device, with `device.driver`,
`device.attributes["<domain>"].<name>`, `device.capacity["<domain>"].<name>` (a
Quantity) and `device.allowMultipleAllocations`. celpy ships neither the Kubernetes
quantity library nor semver, so both are supplied here as small value types with the
methods selectors call (`quantity("40Gi").compareTo(...)`, `isGreaterThan`, `semver`,
`.major()` ...); celpy dispatches `a.f(b)` as `f(a, b)`. An unknown domain reads as an
empty map, as in Kubernetes; an unknown attribute name is an error, as there.

Gaps (celpy's, documented in docs/dra.md): `cel.bind` is not available, and there is no
runtime cost limit (an expression is still capped at 10 Ki characters when decoded).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

import celpy
import celpy.celtypes as ct

from controller.dra.objects import Device, Version
from controller.kube.objects import parse_quantity

_SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


class SelectorError(ValueError):
    """A selector that does not compile, or fails on a device."""


class Quantity(ct.DoubleType):
    """A Kubernetes quantity as a number (so `80Gi` equals `81920Mi`), with the exact
    decimal kept for `asInteger`."""

    exact: Decimal

    def __new__(cls, exact: Decimal) -> Quantity:
        made = cast(Quantity, super().__new__(cls, float(exact)))
        made.exact = exact
        return made


class Semver(ct.StringType):
    parts: tuple[int, int, int]
    prerelease: str

    def __new__(cls, text: str) -> Semver:
        match = _SEMVER.match(text)
        if match is None:
            raise SelectorError(f"{text!r} is not a semantic version")
        made = cast(Semver, super().__new__(cls, text))
        made.parts = (int(match[1]), int(match[2]), int(match[3]))
        made.prerelease = match[4] or ""
        return made

    def order(self) -> tuple[tuple[int, int, int], int, str]:
        # A prerelease sorts before its release.
        return (self.parts, 0 if self.prerelease else 1, self.prerelease)


class _Domains(ct.MapType):
    """`device.attributes` / `device.capacity`: an unknown domain is an empty map."""

    def __getitem__(self, key: Any) -> Any:
        if dict.__contains__(self, key):
            return super().__getitem__(key)
        return ct.MapType({})


def _compare(a: Any, b: Any) -> ct.IntType:
    if isinstance(a, Semver) and isinstance(b, Semver):
        left, right = a.order(), b.order()
    elif isinstance(a, Quantity) and isinstance(b, Quantity):
        left, right = a.exact, b.exact  # type: ignore[assignment]
    else:
        raise TypeError(f"cannot compare {type(a).__name__} with {type(b).__name__}")
    return ct.IntType((left > right) - (left < right))


def _quantity(text: Any) -> Quantity:
    return Quantity(parse_quantity(str(text)))


def _is_quantity(text: Any) -> ct.BoolType:
    try:
        parse_quantity(str(text))
    except ValueError:
        return ct.BoolType(False)
    return ct.BoolType(True)


def _is_semver(text: Any) -> ct.BoolType:
    return ct.BoolType(_SEMVER.match(str(text)) is not None)


def _exact(value: Any) -> Decimal:
    if not isinstance(value, Quantity):
        raise TypeError(f"{type(value).__name__} is not a quantity")
    return value.exact


def _as_integer(value: Any) -> ct.IntType:
    exact = _exact(value)
    if exact != exact.to_integral_value():
        raise ValueError(f"{exact} is not a whole number")
    return ct.IntType(int(exact))


FUNCTIONS: Mapping[str, Callable[..., Any]] = {
    "quantity": _quantity,
    "isQuantity": _is_quantity,
    "semver": Semver,
    "isSemver": _is_semver,
    "compareTo": _compare,
    "isGreaterThan": lambda a, b: ct.BoolType(_compare(a, b) > 0),
    "isLessThan": lambda a, b: ct.BoolType(_compare(a, b) < 0),
    "add": lambda a, b: Quantity(_exact(a) + (_exact(b) if isinstance(b, Quantity) else b)),
    "sub": lambda a, b: Quantity(_exact(a) - (_exact(b) if isinstance(b, Quantity) else b)),
    "asInteger": _as_integer,
    "isInteger": lambda a: ct.BoolType(_exact(a) == _exact(a).to_integral_value()),
    "asApproximateFloat": lambda a: ct.DoubleType(float(_exact(a))),
    "sign": lambda a: ct.IntType((_exact(a) > 0) - (_exact(a) < 0)),
    "major": lambda v: ct.IntType(v.parts[0]),
    "minor": lambda v: ct.IntType(v.parts[1]),
    "patch": lambda v: ct.IntType(v.parts[2]),
}

_ENVIRONMENT = celpy.Environment()


@functools.lru_cache(maxsize=1024)
def compile_tree(expression: str) -> Any:
    try:
        return _ENVIRONMENT.compile(expression)
    except celpy.CELParseError as err:
        raise SelectorError(f"does not parse: {' '.join(str(err).split())}") from None


@functools.lru_cache(maxsize=1024)
def compile_selector(expression: str) -> Any:
    """A runnable program for `expression` (cached: a few distinct selectors are
    evaluated on thousands of devices)."""
    return _ENVIRONMENT.program(compile_tree(expression), functions=dict(FUNCTIONS))


def _value(value: object) -> Any:
    if isinstance(value, bool):
        return ct.BoolType(value)
    if isinstance(value, int):
        return ct.IntType(value)
    if isinstance(value, Version):
        return Semver(value)
    return ct.StringType(str(value))


Named = tuple[tuple[str, tuple[tuple[str, str, Any], ...]], ...]
"""Per domain, the (name, type, value) entries a selector may read."""


@dataclass(frozen=True)
class DeviceView:
    """What of a device one selector can see: its driver, whether it is shareable, and
    the attributes and capacities whose names the expression mentions (every domain is
    kept, so membership tests on domains still see them). Devices of one product differ
    only in what a selector does not read (UUID, PCI address), so they share one view,
    and the result is evaluated once per view, not once per device: celpy interprets an
    expression in about a millisecond, a 1,000-node cluster has 8,000 GPUs."""

    driver: str
    shareable: bool
    attributes: Named
    capacity: Named


def _view(device: Device, reads: frozenset[str] | None) -> DeviceView:
    def named(values: Mapping[str, Mapping[str, Any]]) -> Named:
        return tuple(
            sorted(
                (
                    domain,
                    tuple(
                        sorted(
                            (n, type(v).__name__, v)
                            for n, v in entries.items()
                            if reads is None or n in reads
                        )
                    ),
                )
                for domain, entries in values.items()
            )
        )

    capacity = {d: {n: c.value for n, c in e.items()} for d, e in device.capacity.items()}
    return DeviceView(device.driver, device.shareable, named(device.attributes), named(capacity))


def _activation(view: DeviceView) -> dict[str, Any]:
    def domains(values: Named, convert: Callable[[Any], Any]) -> Any:
        return _Domains(
            {
                ct.StringType(domain): ct.MapType(
                    {ct.StringType(n): convert(v) for n, _, v in entries}
                )
                for domain, entries in values
            }
        )

    return {
        "device": ct.MapType(
            {
                ct.StringType("driver"): ct.StringType(view.driver),
                ct.StringType("attributes"): domains(view.attributes, _value),
                ct.StringType("capacity"): domains(view.capacity, Quantity),
                ct.StringType("allowMultipleAllocations"): ct.BoolType(view.shareable),
            }
        )
    }


ENUMERATING = frozenset({"exists", "all", "exists_one", "map", "filter", "size"})
"""Macros and functions that can see a map's every key: with them, a selector may read
attributes it does not name."""


@functools.lru_cache(maxsize=1024)
def _reads(expression: str) -> frozenset[str] | None:
    """Every identifier and string the expression mentions (an attribute or capacity it
    reads is among them; lark's tokens are strings), or None when it may enumerate a
    map."""
    words = set()
    for token in compile_tree(expression).scan_values(lambda v: isinstance(v, str)):
        words.add(str(token).lstrip("rRbB").strip("'\""))
    return None if words & ENUMERATING else frozenset(words)


def matches(expression: str, device: Device) -> bool:
    """Whether `device` satisfies `expression`; `SelectorError` if it cannot be told."""
    try:
        return _decide(expression, _view(device, _reads(expression)))
    except SelectorError as err:
        raise SelectorError(f"fails on device {device.name}: {err}") from None


@functools.lru_cache(maxsize=65536)
def _decide(expression: str, view: DeviceView) -> bool:
    program = compile_selector(expression)
    try:
        result = program.evaluate(_activation(view))
    except celpy.CELEvalError as err:
        raise SelectorError(_reason(err)) from None
    except (TypeError, ValueError, ArithmeticError) as err:
        raise SelectorError(str(err)) from None
    if isinstance(result, celpy.CELEvalError):
        raise SelectorError(_reason(result))
    if not isinstance(result, ct.BoolType):
        raise SelectorError(f"gives {type(result).__name__}, not a bool")
    return bool(result)


def _reason(err: Exception) -> str:
    return str(err.args[0]) if err.args else repr(err)
