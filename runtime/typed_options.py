"""Typed option dataclasses filled from JSON, with every wrong key, type and value named.

An options dataclass calls ``settle(self)`` in ``__post_init__``: each field is checked against
its annotation (``int``, ``float``, ``bool``, ``str``, an Enum, a nested options dataclass, a
fixed ``tuple[int, int]`` (a JSON list), or ``X | None`` of those), converted (Enum from its
value, nested dataclass from a mapping, int to float), and then the class's own
``value_problems()`` run. All problems are collected and raised once as a ConfigError whose
``problems`` name each field by its dotted path, e.g. ``defects.min_area: expected an integer, got str '5'``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any

from batchforge.errors import ConfigError


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "null"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def convert(value: Any, hint: Any, path: str) -> tuple[Any, list[str]]:
    """Checks and converts one value against a type annotation.

    Returns:
        (converted value, problems); the value is meaningless when there are problems.
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None, []
        value, problems = convert(value, args[0], path)
        return value, [p.replace(", got ", " or null, got ", 1) for p in problems]
    if hint is bool:
        ok = isinstance(value, bool)
        return value, [] if ok else [f"{path}: expected true or false, got {_describe(value)}"]
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return value, [] if ok else [f"{path}: expected an integer, got {_describe(value)}"]
    if hint is float:
        if not _is_number(value):
            return value, [f"{path}: expected a number, got {_describe(value)}"]
        if not math.isfinite(value):
            return value, [f"{path}: expected a finite number, got {value!r}"]
        return float(value), []
    if hint is str:
        return value, [] if isinstance(value, str) else [f"{path}: expected a string, got {_describe(value)}"]
    if origin is tuple:  # a fixed-length tuple of one scalar type, from a JSON list
        args = typing.get_args(hint)
        what = f"a list of {len(args)} {'integers' if args[0] is int else 'numbers'}"
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            return value, [f"{path}: expected {what}, got {_describe(value)}"]
        converted = [convert(v, a, path) for v, a in zip(value, args)]
        if any(found for _, found in converted):
            return value, [f"{path}: expected {what}, got {_describe(value)}"]
        return tuple(v for v, _ in converted), []
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _convert_enum(value, hint, path)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value, []
        if not isinstance(value, Mapping):
            return value, [f"{path}: expected an object, got {_describe(value)}"]
        return build(hint, value, f"{path}.")
    raise TypeError(f"{path}: unsupported option annotation {hint!r}")  # a programming error


def _convert_enum(value: Any, hint: type[enum.Enum], path: str) -> tuple[Any, list[str]]:
    if isinstance(value, hint):
        return value, []
    try:
        return hint(value), []
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in hint)
        return value, [f"{path}: expected one of {allowed}, got {_describe(value)}"]


def build(cls: type, data: Mapping[str, Any], prefix: str = "") -> tuple[Any, list[str]]:
    """Builds ``cls`` from a mapping, collecting every problem instead of stopping at the first.

    Args:
        cls: an options dataclass whose ``__post_init__`` calls ``settle``.
        data: the mapping (e.g. one section of a JSON file).
        prefix: the dotted path of ``data`` in the file, for messages ("defects.").
    Returns:
        (instance or None, problems).
    """
    names = {f.name for f in dataclasses.fields(cls)}
    problems = [f"unknown key '{prefix}{key}'" for key in sorted(map(str, data)) if key not in names]
    try:
        instance = cls(**{k: v for k, v in data.items() if k in names})
    except ConfigError as exc:
        return None, problems + [prefixed(prefix, p) for p in exc.problems]
    return (instance if not problems else None), problems


def prefixed(prefix: str, problem: str) -> str:
    """``problem`` (``"path: ..."`` or ``"unknown key 'path'"``) with ``prefix`` put before its path,
    so a problem found deeper down names its full path: ``tolerances.`` + ``unknown key 'fp16.cos'``
    is ``unknown key 'tolerances.fp16.cos'``."""
    for head in ("unknown key '", "missing key '"):
        if problem.startswith(head):
            return head + prefix + problem[len(head):]
    return prefix + problem


def settle(instance: Any) -> None:
    """Checks and converts every field of a frozen options dataclass in place; see the module doc.

    The class's ``value_problems()`` returns ``(fields involved, problem)`` pairs; it runs even
    when some fields have the wrong type (they are checked at their defaults, and problems
    involving them are dropped), so one pass names every problem.

    Raises:
        ConfigError naming every problem (field paths relative to this dataclass).
    """
    cls = type(instance)
    hints = _hints(cls)
    problems: list[str] = []
    bad: set[str] = set()
    for f in dataclasses.fields(cls):
        value, found = convert(getattr(instance, f.name), hints[f.name], f.name)
        if found:
            problems += found
            bad.add(f.name)
            value = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        object.__setattr__(instance, f.name, value)
    if hasattr(instance, "value_problems"):
        problems += [text for names, text in instance.value_problems() if not bad.intersection(names)]
    if problems:
        raise ConfigError(f"invalid {cls.__name__}", problems=problems)


def to_jsonable(instance: Any) -> dict[str, Any]:
    """An options dataclass as a JSON-ready dict (enums as values, nested dataclasses as dicts)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            value = to_jsonable(value)
        elif isinstance(value, enum.Enum):
            value = value.value
        out[f.name] = value
    return out


def number_problem(name: str, value: Any, low: float, high: float, *, integer: bool = False,
                   above_low: bool = False, unit: str = "") -> str | None:
    """The problem with one numeric argument of the public API, or None when it is fine.

    Args:
        name: the argument's name, for the message.
        value: what the caller gave; bools and non-finite numbers (inf, NaN) never pass.
        low, high: the accepted range, ``high`` included; ``low`` too unless ``above_low``.
        integer: only ints pass.
        unit: appended to the range in the message (" ms").
    """
    kind = "an integer" if integer else "a finite number"
    bound = f"above {_plain(low)} and at most" if above_low else f"from {_plain(low)} to"
    ok = isinstance(value, int) if integer else _is_number(value) and math.isfinite(value)
    if ok and not isinstance(value, bool) and (low < value if above_low else low <= value) and value <= high:
        return None
    return f"{name}: expected {kind} {bound} {_plain(high)}{unit}, got {_describe(value)}"


def _plain(number: float) -> str:
    return f"{int(number):,}" if float(number).is_integer() else f"{number:g}"


def check_numbers(owner: str, problems: list[str | None], hint: str | None = None) -> None:
    """Raises one ConfigError naming every problem ``number_problem`` found (None: fine)."""
    found = [p for p in problems if p is not None]
    if found:
        raise ConfigError(f"invalid {owner} argument{'s' if len(found) > 1 else ''}", problems=found, hint=hint)
