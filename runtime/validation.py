"""Input validation shared by every runner: names, rank, dtype, fixed dims, batch, finiteness.

Nothing is cast silently: a float64 array for a float32 input is an error, not a conversion.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchforge.errors import InputValidationError
from batchforge.runtime.guards import describe_nonfinite
from batchforge.runtime.spec import ProfileRange


@dataclass(frozen=True)
class IOMeta:
    """What a runner expects of one input: shape (None/str for dynamic dims) and dtype."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype


def _is_torch_tensor(value: object) -> bool:
    torch = sys.modules.get("torch")  # never import torch just to find out
    return torch is not None and isinstance(value, torch.Tensor)


def validate_feed(
    feed: Mapping[str, object],
    expected: Mapping[str, IOMeta],
    profile: ProfileRange | None,
    dim_ranges: Mapping[str, Mapping[int, tuple[str, ProfileRange]]] | None = None,
) -> int:
    """Checks a feed dict against the runner's inputs and profile.

    Args:
        feed: input name -> array (leading dim is the batch).
        expected: input name -> IOMeta.
        profile: the batch range the runner serves, or None for any batch >= 1.
        dim_ranges: input name -> axis -> (dim name, range) of the named dims the engine serves
            (``ModelSpec.dim_ranges``); sizes outside are refused.
    Returns:
        The batch size.
    Raises:
        InputValidationError naming the input, what was expected and what was given.
    """
    if not isinstance(feed, Mapping):
        raise InputValidationError(
            f"infer() takes a dict of input name -> numpy array, got {type(feed).__name__}"
        )
    missing = [n for n in expected if n not in feed]
    unexpected = [n for n in feed if n not in expected]
    if missing or unexpected:
        raise InputValidationError(
            f"input names do not match: expected {sorted(expected)}, got {sorted(feed)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {unexpected})" if unexpected else "")
        )
    batch = None
    for name, meta in expected.items():
        value = feed[name]
        if _is_torch_tensor(value):
            raise InputValidationError(
                f"input {name!r}: expected a numpy array, got a torch.Tensor",
                hint="pass tensor.cpu().numpy(); the runtime does not depend on torch",
            )
        if not isinstance(value, np.ndarray):
            raise InputValidationError(
                f"input {name!r}: expected a numpy array, got {type(value).__name__}"
            )
        if value.ndim != len(meta.shape):
            raise InputValidationError(
                f"input {name!r}: expected rank {len(meta.shape)} with shape "
                f"{_fmt_shape(meta.shape)}, got rank {value.ndim} with shape {value.shape}"
            )
        if value.dtype != meta.dtype:
            raise InputValidationError(
                f"input {name!r}: expected dtype {meta.dtype}, got {value.dtype}",
                hint=f"convert explicitly, e.g. array.astype(np.{meta.dtype})",
            )
        for axis, (want, got) in enumerate(zip(meta.shape, value.shape)):
            if axis > 0 and isinstance(want, int) and want != got:
                raise InputValidationError(
                    f"input {name!r}: dim {axis} expected {want}, got {got} "
                    f"(expected shape {_fmt_shape(meta.shape)}, got {value.shape})"
                )
        for axis, (dim, allowed) in (dim_ranges or {}).get(name, {}).items():
            if not allowed.min <= value.shape[axis] <= allowed.max:
                raise InputValidationError(
                    f"input {name!r}: {dim} (dim {axis}) expected {allowed.min}..{allowed.max}, got "
                    f"{value.shape[axis]} (shape {value.shape})",
                    hint=f"resize the input into the {dim} range the engine was exported and built for")
        if batch is None:
            batch = value.shape[0]
        elif value.shape[0] != batch:
            raise InputValidationError(
                f"input {name!r}: batch {value.shape[0]} differs from the other inputs' {batch}"
            )
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise InputValidationError(f"input {name!r}: expected finite values, got {describe_nonfinite(value)}")
    assert batch is not None
    if batch == 0:
        raise InputValidationError("empty batch: expected at least one item (pipelines return [])")
    if profile is not None and not profile.min <= batch <= profile.max:
        raise InputValidationError(
            f"batch {batch} is outside the engine profile [{profile.min}, {profile.max}]",
            hint="use batchforge.runtime.infer_in_chunks() or a Pipeline, which chunk to the max",
        )
    return int(batch)


def _fmt_shape(shape: tuple[int | str | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def load_array_file(path: str | os.PathLike[str]) -> Any:
    """A ``.npy`` (an ndarray) or ``.npz`` (an NpzFile, one array per name) without pickles; an
    unreadable file is an InputValidationError naming it."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputValidationError(f"{path}: not a readable .npy/.npz file: {exc}") from None
