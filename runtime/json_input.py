"""JSON that a user or another machine wrote, read as data: ``strict_json`` parses a file's
bytes (UTF-8, finite numbers, bounded size and depth), ``type_problems`` names the fields whose
JSON type does not fit a dataclass's annotations. Both say what was expected and what was given.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import sys
from collections.abc import Mapping
from typing import Any

from batchforge.errors import ConfigError

# a spec is a few kB, five levels deep: far more is a hostile file (json recurses per level)
MAX_JSON_BYTES = 16 * 2**20
MAX_JSON_DEPTH = 64


def strict_json(raw: bytes, what: str) -> Any:
    """Parses JSON that a user or another machine wrote: UTF-8, finite numbers only, at most
    ``MAX_JSON_DEPTH`` levels, integers within Python's digit limit.

    Args:
        raw: the file's bytes (at most ``MAX_JSON_BYTES``).
        what: names the file in messages ("spec file s.json").
    Raises:
        ConfigError naming what is wrong and where.
    """
    if len(raw) > MAX_JSON_BYTES:
        raise ConfigError(f"{what} is larger than {MAX_JSON_BYTES:,} bytes; expected a JSON file of a few kB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start}",
                          hint="save it as UTF-8") from None
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # brackets inside strings do not nest
    depth = max(itertools.accumulate(1 if c in "[{" else -1 for c in unquoted if c in "[]{}"), default=0)
    if depth > MAX_JSON_DEPTH:
        raise ConfigError(f"{what} nests {depth:,} levels deep; expected at most {MAX_JSON_DEPTH}")

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not a JSON number (JSON numbers are finite)")

    try:
        return json.loads(text, parse_constant=refuse)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} is not valid JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:  # NaN/Infinity, an integer past Python's digit limit
        if "integer string conversion" in str(exc):
            exc = ValueError(f"it holds an integer of more than {sys.get_int_max_str_digits():,} digits")
        raise ConfigError(f"{what} is not valid JSON: {exc}") from None


# JSON types per annotation name, for ``type_problems`` (other annotations are not checked there)
_JSON_KINDS: dict[str, tuple[tuple[type, ...], str, str]] = {
    "str": ((str,), "a string", "strings"), "int": ((int,), "an integer", "integers"),
    "float": ((int, float), "a number", "numbers"), "bool": ((bool,), "true or false", "booleans"),
    "None": ((type(None),), "null", "nulls"), "Any": ((object,), "anything", "values"),
    "Mapping": ((Mapping,), "an object", "objects"), "dict": ((Mapping,), "an object", "objects"),
    "tuple": ((list, tuple), "a list", "lists"), "list": ((list, tuple), "a list", "lists"),
}


def _fits(value: Any, annotation: str) -> tuple[bool, str]:
    """Whether a JSON value fits an annotation string such as ``str | None`` or ``tuple[int, ...]``,
    and what was expected; annotations outside ``_JSON_KINDS`` always fit (checked elsewhere)."""
    types: tuple[type, ...] = ()
    expected = []
    for part in (p.strip() for p in annotation.split("|")):
        base, _, args = part.partition("[")
        if base not in _JSON_KINDS:
            return True, ""
        kind_types, singular, _ = _JSON_KINDS[base]
        types += kind_types
        element = args[:-len(", ...]")] if base == "tuple" and args.endswith(", ...]") else None
        if element is not None and element.partition("[")[0] in _JSON_KINDS:
            singular = f"a list of {_JSON_KINDS[element.partition('[')[0]][2]}"
            if isinstance(value, (list, tuple)) and not all(_fits(item, element)[0] for item in value):
                return False, singular
        expected.append(singular)
    fits = isinstance(value, types) and (not isinstance(value, bool) or bool in types or object in types)
    return fits, " or ".join(expected)


def type_problems(path: str, data: Mapping[str, Any], cls: type) -> list[str]:
    """The fields of ``data`` whose JSON type does not fit dataclass ``cls``'s annotations (strings,
    numbers, booleans, null, objects and lists of those), each named under ``path``: a record from
    elsewhere is checked before a wrong-typed value reaches code that assumes its type."""
    problems = []
    for f in dataclasses.fields(cls):
        if f.name in data:
            fits, expected = _fits(data[f.name], str(f.type))
            if not fits:
                given = repr(data[f.name])
                problems.append(f"'{path}{f.name}': expected {expected}, got {type(data[f.name]).__name__} "
                                f"{given if len(given) <= 40 else given[:37] + '...'}")
    return problems
