"""Typed results. Every result knows its source and turns itself into one JSON record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """numpy scalars/arrays -> Python numbers/lists (recursively)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class Result:
    """Base of every family's result: ``source`` is the input's path or index."""

    source: str

    def to_record(self) -> dict[str, Any]:
        """The JSON record written to JSONL (subclasses add their fields)."""
        return {"source": self.source, "ok": True}


@dataclass(frozen=True)
class ErrorRecord(Result):
    """An input that could not be processed; the others are processed regardless."""

    error_type: str
    message: str

    def to_record(self) -> dict[str, Any]:
        return {"source": self.source, "ok": False,
                "error": {"type": self.error_type, "message": self.message}}
