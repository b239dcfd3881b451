"""Policies by name. A policy class registers itself by defining `name`; hosts look it up
here and build it from a typed config, so no host keeps an if/elif over policy names."""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from policies.base import Policy, PolicyConfig

_REGISTRY: dict[str, type[Policy]] = {}


class UnknownPolicyError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register(cls: type[Policy]) -> type[Policy]:
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"policy name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def policy_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def policy_class(name: str) -> type[Policy]:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownPolicyError(f"unknown policy {name!r}; known policies: {known}") from None


def make_policy(name: str, options: Mapping[str, Any] | None = None) -> Policy:
    """Build a policy from its name and config options (values may be strings, as given
    on a command line; they are converted to the config field's type)."""
    cls = policy_class(name)
    config = build_config(cls.config_type, options or {})
    return cls(config)


def parse_options(pairs: Iterable[str], where: str = "policy option") -> dict[str, str]:
    """`KEY=VALUE` strings (command-line policy options) as a dict of strings."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{where} {pair!r} is not KEY=VALUE")
        options[key.strip()] = value.strip()
    return options


def parse_policy_label(label: str) -> tuple[str, dict[str, str]]:
    """An experiment's policy entry `NAME[:KEY=VALUE[:KEY=VALUE...]]` as (name, options);
    `;` also separates options (the fgd-inflation experiment's original syntax)."""
    name, _, rest = label.strip().partition(":")
    pairs = [p for p in re.split(r"[:;]", rest) if p.strip()]
    return name.strip(), parse_options(pairs, f"in {label!r}, policy option")


def build_config(config_type: type[PolicyConfig], options: Mapping[str, Any]) -> PolicyConfig:
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    hints = typing.get_type_hints(config_type)
    values: dict[str, Any] = {}
    for key, raw in options.items():
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise ValueError(f"{config_type.__name__} has no option {key!r} (options: {known})")
        values[key] = _coerce(raw, hints[key], key)
    return config_type(**values)


def _coerce(raw: Any, hint: Any, key: str) -> Any:
    if not isinstance(raw, str):
        return raw
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        if raw.lower() in ("none", "null", ""):
            return None
        hint = options[0]
    try:
        if hint is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint in (int, float, str):
            return hint(raw)
        origin = typing.get_origin(hint)
        if origin in (tuple, list, frozenset):
            (inner, *_) = typing.get_args(hint) or (str,)
            return origin(_coerce(part, inner, key) for part in raw.split(",") if part)
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return hint(raw)
    except ValueError:
        raise ValueError(f"option {key}: cannot read {raw!r} as {hint}") from None
    return raw


def config_help(config_type: type[PolicyConfig]) -> list[tuple[str, str, str]]:
    """(option, default, help) for each config field, for `--help` listings."""
    rows = []
    for f in dataclasses.fields(config_type):
        if f.default is not dataclasses.MISSING:
            default: object = f.default
        else:
            default = f.default_factory() if callable(f.default_factory) else None
        rows.append((f.name, repr(default), str(f.metadata.get("help", ""))))
    return rows


def _load_builtin() -> None:
    # Importing the package registers every built-in policy.
    import policies  # noqa: F401
