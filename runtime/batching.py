"""Batching: split to the engine's max batch, keep order, stack and concatenate."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from batchforge.errors import InputValidationError


def chunk_slices(count: int, max_batch: int) -> Iterator[slice]:
    """Consecutive slices of at most ``max_batch`` items covering ``range(count)``."""
    if max_batch < 1:
        raise InputValidationError(f"batch size must be >= 1, got {max_batch}")
    for start in range(0, count, max_batch):
        yield slice(start, min(start + max_batch, count))


class BatchBuffers:
    """Reusable batch arrays, one per input name, shape and dtype, so a run stacks every batch into
    the same memory instead of allocating (and page-faulting) a fresh array each time.

    Owned by one thread; a buffer is valid until the next ``stack_feeds`` into it, which is safe
    because runners copy their outputs out (they never alias an input).
    """

    MAX_ARRAYS = 8  # full batches, a short last batch and back-off halves of a few inputs

    def __init__(self) -> None:
        self._arrays: dict[tuple[str, tuple[int, ...], str], np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        key = (name, shape, np.dtype(dtype).str)
        array = self._arrays.get(key)
        if array is None:
            if len(self._arrays) >= self.MAX_ARRAYS:
                self._arrays.clear()
            array = self._arrays[key] = np.empty(shape, dtype)
        return array


def _stack(name: str, arrays: list[np.ndarray], buffers: BatchBuffers | None) -> np.ndarray:
    first = arrays[0]
    if buffers is None or any(a.shape != first.shape or a.dtype != first.dtype for a in arrays):
        return np.stack(arrays)
    return np.stack(arrays, out=buffers.get(name, (len(arrays), *first.shape), first.dtype))


def stack_feeds(items: Sequence[Mapping[str, np.ndarray]],
                buffers: BatchBuffers | None = None) -> dict[str, np.ndarray]:
    """Stacks per-item feeds (no batch dim) into one batched feed (into ``buffers`` when given)."""
    if not items:
        raise InputValidationError("cannot stack an empty list of items")
    names = list(items[0])
    for index, item in enumerate(items):
        if list(item) != names:
            raise InputValidationError(
                f"item {index} has inputs {sorted(item)}, expected {sorted(names)}"
            )
    return {name: _stack(name, [item[name] for item in items], buffers) for name in names}


def infer_in_chunks(runner, feed: Mapping[str, np.ndarray], max_batch: int | None = None):
    """Runs ``runner.infer`` over a feed of any batch size, chunked, order kept.

    Args:
        runner: an active Runner.
        feed: input name -> array with a leading batch dim (any size >= 1).
        max_batch: chunk size; defaults to the runner's profile max.
    Returns:
        Output name -> array over the whole batch.
    """
    sizes = {v.shape[0] for v in feed.values()}
    if len(sizes) != 1:
        raise InputValidationError(f"inputs disagree on the batch size: {sorted(sizes)}")
    (count,) = sizes
    if count == 0:
        raise InputValidationError("empty batch: expected at least one item")
    limit = max_batch or (runner.profile.max if runner.profile else count)
    if runner.profile and limit > runner.profile.max:
        raise InputValidationError(
            f"batch size {limit} is above the engine profile max {runner.profile.max}"
        )
    parts: dict[str, list[np.ndarray]] = {}
    for part in chunk_slices(count, limit):
        out = runner.infer({k: v[part] for k, v in feed.items()})
        for key, value in out.items():
            parts.setdefault(key, []).append(value)
    return {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in parts.items()}
