"""Production guards around inference: allocation failures and non-finite outputs.

- An allocation failure (ONNX Runtime's "Failed to allocate memory", ``std::bad_alloc``, CUDA or
  TensorRT out of memory, Python's MemoryError) is recognised so the pipeline can halve the batch
  and retry, down to one item.
- Non-finite values (NaN, inf) in an engine output are found per item, so only that item gets an
  error record naming the output; the JSON written stays strictly finite.
- Non-finite values in an input are described by item and index (``describe_nonfinite``).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from batchforge.errors import NonFiniteOutputError
from batchforge.runtime.results import ErrorRecord

ALLOCATION_FAILURE = re.compile(
    r"failed to allocate|bad_alloc|bad allocation|out of memory|CUDA_ERROR_OUT_OF_MEMORY|"
    r"cudaErrorMemoryAllocation|ALLOC_FAILED|OUT_OF_MEMORY|BFCArena.*(?:allocat|extend)",
    re.IGNORECASE,
)


def is_allocation_failure(exc: BaseException) -> bool:
    """True for the errors a smaller batch can avoid (memory allocation on host or device)."""
    if isinstance(exc, MemoryError):
        return True
    return bool(ALLOCATION_FAILURE.search(f"{type(exc).__name__}: {exc}"))


def nonfinite_outputs(outputs: Mapping[str, np.ndarray], rows: Sequence[int]) -> list[list[str]]:
    """Per item, the names of the outputs with a NaN or inf in its rows.

    Args:
        outputs: batched outputs; item ``i`` owns ``rows[i]`` consecutive leading rows (one
            unless its input was tiled). A floating output whose leading dim is not the batch
            is charged to every item when it holds a non-finite value.
        rows: rows per item.
    Returns:
        One list of output names per item (empty when all its values are finite).
    """
    total = sum(rows)
    bounds = np.cumsum([0, *rows])
    bad: list[list[str]] = [[] for _ in rows]
    for name, value in outputs.items():
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fc":
            continue
        if value.ndim == 0 or value.shape[0] != total:
            if not np.isfinite(value).all():
                for names in bad:
                    names.append(name)
            continue
        finite_rows = np.isfinite(value.reshape(total, -1)).all(axis=1)
        if finite_rows.all():
            continue
        for index, (start, end) in enumerate(itertools.pairwise(bounds)):
            if not finite_rows[start:end].all():
                bad[index].append(name)
    return bad


def take_items(outputs: Mapping[str, np.ndarray], rows: Sequence[int], keep: Sequence[int]) -> dict[str, np.ndarray]:
    """The outputs of the items ``keep`` (indices, in order) out of a batch with ``rows`` per item."""
    total = sum(rows)
    bounds = np.cumsum([0, *rows])
    index = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in keep])
    return {name: value[index] if value.ndim and value.shape[0] == total else value
            for name, value in outputs.items()}


def first_nonfinite(value: Any, path: str = "") -> str | None:
    """The path (``matches[0].similarity``) of the first non-finite float in a JSON-able record."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path or "value"
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, (list, tuple)):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for key, item in items:
        where = first_nonfinite(item, f"{path}{key}" if str(key).startswith("[") else
                                f"{path}.{key}" if path else str(key))
        if where is not None:
            return where
    return None


def describe_nonfinite(value: np.ndarray, shown: int = 8) -> str:
    """Where a batched input holds NaN or inf: the count, then the items (leading index) and, per
    item, how many and the index of the first, for the first ``shown`` such items.

    Example: ``3 NaN/Inf element(s) in 2 of 4 items: item 0 (2, first at (1, 4, 4)), item 2 (1,
    first at (0, 0, 1))``.
    """
    bad = ~np.isfinite(value)
    total = int(np.count_nonzero(bad))
    if value.ndim == 0:
        return f"{total} NaN/Inf element(s) in a 0-d array"
    per_item = bad.reshape(len(value), -1)
    items = np.flatnonzero(per_item.any(axis=1))
    parts = [f"item {i}" if value.ndim == 1 else
             f"item {i} ({int(np.count_nonzero(per_item[i]))}, first at "
             f"{tuple(int(x) for x in np.unravel_index(int(np.argmax(per_item[i])), value.shape[1:]))})"
             for i in items[:shown]]
    more = f", and {len(items) - shown} more items" if len(items) > shown else ""
    return f"{total} NaN/Inf element(s) in {len(items)} of {len(value)} items: {', '.join(parts)}{more}"


def nonfinite_record(source: str, names: Sequence[str]) -> ErrorRecord:
    """The error record of an input whose outputs ``names`` hold NaN or infinite values."""
    return ErrorRecord(source, NonFiniteOutputError.__name__,
                       f"{source}: output(s) {', '.join(map(repr, names))} hold NaN or infinite values; "
                       "no result is written for this input (check it and the engine with `batchforge parity`)")
