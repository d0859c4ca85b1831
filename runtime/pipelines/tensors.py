"""The generic ``tensors`` family: any named inputs in, every output back as arrays.

Items (``batchforge run MODEL --input DIR``):

- an image file: decoded by the runtime's image rules and put through the spec's ``preprocess``
  into the FIRST input (exactly as the image families do). A model with more inputs cannot be
  fed by an image alone: its items are ``.npz`` files.
- a ``.npz`` file: one array per input name, each one item (no batch dim), already preprocessed,
  of the input's dtype (nothing is cast: a float64 array for a float32 input is refused).
- a ``.npy`` file: one item of a single-input model.

Results carry every output of the item. ``run`` writes an output of at most ``inline_max_values``
values (default 64) into the JSON line; larger ones (and any with NaN/Inf) go into
``<jsonl stem>.outputs.npz`` beside the JSONL under the key ``line<NNNNNN>/<output>`` (the record's
0-based line in the JSONL), and the record names file and key.

Options (the spec's ``postprocess``): ``batchforge/runtime/post/tensors.py``.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from batchforge.errors import ConfigError, InputValidationError
from batchforge.runtime.images import IMAGE_SUFFIXES, read_image, to_rgb_uint8
from batchforge.runtime.pipelines.base import Pipeline, Prepared, image_feed
from batchforge.runtime.post.common import top_k
from batchforge.runtime.post.tensors import OutputKind, TensorsOptions, goes_inline
from batchforge.runtime.results import Result
from batchforge.runtime.runners.base import Runner
from batchforge.runtime.spec import ModelSpec
from batchforge.runtime.validation import load_array_file

ARRAY_SUFFIXES = (".npz", ".npy")
SIDE_FILE_SUFFIX = ".outputs.npz"


@dataclass(frozen=True)
class TensorItem:
    """One model item: an RGB uint8 ``image`` for the first input (through the spec's
    preprocessing) and/or already preprocessed ``arrays`` by input name (no batch dim)."""

    image: np.ndarray | None = None
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)


def as_tensor_item(item: Any, spec: ModelSpec) -> TensorItem:
    """A TensorItem from what callers pass: a TensorItem, a feed dict, or an array (an image for
    a model with image preprocessing, else the one input of a single-input model)."""
    if isinstance(item, TensorItem):
        return item
    if isinstance(item, Mapping):
        return TensorItem(None, dict(item))
    if spec.preprocess is not None:
        return TensorItem(item, {})
    return TensorItem(None, {spec.inputs[0].name: item})


def check_item_feed(feed: Mapping[str, np.ndarray], spec: ModelSpec, source: str, *,
                    from_image: bool = False) -> None:
    """Names, dtype and item shape of one item's feed against the spec; nothing is cast.

    Args:
        from_image: the first input came from an image (for the message).
    """
    expected = list(spec.input_names)
    if sorted(feed) != sorted(expected):
        missing = [n for n in expected if n not in feed]
        unexpected = sorted(n for n in feed if n not in expected)
        arrays = sorted(n for n in feed if not (from_image and n == expected[0]))
        given = " and ".join(([f"an image for {expected[0]!r}"] if from_image else [])
                             + ([f"arrays {arrays}"] if arrays or not from_image else []))
        raise InputValidationError(
            f"{source}: model {spec.name!r} takes inputs {expected}, this item gives {given}"
            + (f" (missing {missing})" if missing else "") + (f" (unexpected {unexpected})" if unexpected else ""),
            hint="an image feeds only the first input; give one .npz per item with one array per "
                 "input name (no batch dim)")
    for tensor in spec.inputs:
        value = feed[tensor.name]
        if not isinstance(value, np.ndarray):
            raise InputValidationError(f"{source}: input {tensor.name!r}: expected a numpy array, "
                                       f"got {type(value).__name__}")
        if value.dtype != np.dtype(tensor.dtype):
            raise InputValidationError(
                f"{source}: input {tensor.name!r} is {tensor.dtype}, the item's array is {value.dtype}",
                hint=f"convert it explicitly (array.astype(np.{tensor.dtype})); nothing is cast silently")
        want = tensor.item_shape
        fits = value.ndim == len(want) and all(not isinstance(d, int) or d == g for d, g in zip(want, value.shape))
        if not fits:
            batched = value.ndim == len(want) + 1 and value.shape[0] == 1
            raise InputValidationError(
                f"{source}: input {tensor.name!r} expects one item of shape {tuple(want)}, the item's "
                f"array has shape {value.shape}",
                hint="items carry no batch dim: drop the leading 1" if batched else
                     "check which array belongs to which input")
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            bad = np.argwhere(~np.isfinite(value))
            raise InputValidationError(
                f"{source}: input {tensor.name!r} holds {len(bad)} NaN/Inf value(s), first at "
                f"{tuple(int(i) for i in bad[0])}", hint="fix or drop this item; the others are processed")


def read_item_file(path: str | os.PathLike[str], spec: ModelSpec) -> TensorItem:
    """One item from a ``.npz`` (one array per input name) or a ``.npy`` (single-input model)."""
    path = Path(path)
    loaded = load_array_file(path)
    if isinstance(loaded, np.ndarray):
        if len(spec.inputs) != 1:
            raise InputValidationError(
                f"{path}: a .npy item feeds one input; model {spec.name!r} takes {list(spec.input_names)}",
                hint="give one .npz per item with one array per input name")
        return TensorItem(None, {spec.inputs[0].name: loaded})
    with loaded:
        return TensorItem(None, {name: loaded[name] for name in loaded.files})


@dataclass(frozen=True)
class TensorsResult(Result):
    """Every output of one item (no batch dim), by output name."""

    outputs: Mapping[str, np.ndarray]
    kinds: Mapping[str, OutputKind]
    top_k: int = 5
    inline_max_values: int = 64
    side_file: str | None = None
    side_keys: Mapping[str, str] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        record = super().to_record()
        entries = {}
        for name, value in self.outputs.items():
            entry: dict[str, Any] = {"shape": list(value.shape), "dtype": str(value.dtype)}
            if name in self.side_keys:
                entry.update(npz=self.side_file, key=self.side_keys[name])
            elif goes_inline(value, self.inline_max_values):
                entry["values"] = value
            else:
                entry["npz"] = None  # too large for the line and no side file (Python API)
            if self.kinds.get(name, OutputKind.VALUES).is_scores and value.ndim == 1 and value.size:
                index, scores = top_k(value[None], self.top_k)
                entry["top"] = [{"index": int(i), "score": float(s)} for i, s in zip(index[0], scores[0])
                                if np.isfinite(s)]
            entries[name] = entry
        record["outputs"] = entries
        return record


class SideArrays:
    """A ``.npz`` written one array at a time (a zip of ``.npy`` members) to a hidden temp file,
    renamed onto the target by ``close(commit=True)``; nothing is left when nothing was written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._tmp: Path | None = None
        self._zip: zipfile.ZipFile | None = None
        self._fh: Any = None

    def add(self, key: str, array: np.ndarray) -> None:
        if self._zip is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # mkstemp opens O_EXCL | O_NOFOLLOW; the zip writes through that descriptor, never the name again
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent)
            self._tmp = Path(tmp)
            self._fh = os.fdopen(fd, "w+b")
            self._zip = zipfile.ZipFile(self._fh, "w", allowZip64=True)
        with self._zip.open(f"{key}.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
        self.count += 1

    def close(self, commit: bool) -> None:
        if self._zip is not None:
            self._zip.close()
            self._fh.close()  # a ZipFile leaves a file object it was given open
        if self._tmp is not None:
            if commit:
                os.replace(self._tmp, self.path)
            else:
                self._tmp.unlink(missing_ok=True)
        elif commit:
            self.path.unlink(missing_ok=True)  # no large outputs this run: no stale file from an earlier one


class TensorsPipeline(Pipeline):
    """Any inputs -> every raw output per item (see the module docstring)."""

    family = "tensors"
    options_type = TensorsOptions
    input_suffixes = IMAGE_SUFFIXES + ARRAY_SUFFIXES

    def __init__(self, spec: ModelSpec, runner: Runner, options: TensorsOptions | None = None,
                 *, side_file: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        super().__init__(spec, runner, options, **kwargs)
        unknown = sorted(set(self.options.outputs) - set(spec.outputs))
        if unknown:
            raise ConfigError(f"tensors postprocess options name outputs {unknown} that model {spec.name!r} "
                              f"does not have; its outputs: {list(spec.outputs)}")
        self.side_file = Path(side_file) if side_file is not None else None

    def place_side_outputs(self, results_path: Path) -> Path | None:
        """Large outputs go to ``<results stem>.outputs.npz`` beside the JSONL unless set already."""
        if self.side_file is None:
            self.side_file = results_path.parent / f"{results_path.stem}{SIDE_FILE_SUFFIX}"
        return self.side_file

    def load(self, source: str | Path) -> TensorItem:  # type: ignore[override]
        if Path(source).suffix.lower() in ARRAY_SUFFIXES:
            return read_item_file(source, self.spec)
        return TensorItem(read_image(source, max_pixels=self.max_pixels), {})

    def prepare(self, item: Any, source: str) -> Prepared:
        """One item (TensorItem, feed dict, image or array) -> its checked feed."""
        item = as_tensor_item(item, self.spec)
        feed: dict[str, np.ndarray] = {}
        geometry = None
        if item.image is not None:
            if self.spec.preprocess is None:
                raise InputValidationError(
                    f"{source}: model {self.spec.name!r} has no image preprocessing in its spec, so "
                    "images cannot feed it", hint="give .npz/.npy items of preprocessed arrays")
            image = to_rgb_uint8(item.image, source=source, max_pixels=self.max_pixels)
            feed, geometry = image_feed(image, self.spec)
            clash = sorted(set(feed) & set(item.arrays))
            if clash:
                raise InputValidationError(f"{source}: input {clash[0]!r} is given both as an image and an array")
        feed.update(item.arrays)
        check_item_feed(feed, self.spec, source, from_image=item.image is not None)
        return Prepared(source, feed, geometry)

    def postprocess(self, outputs: Mapping[str, np.ndarray], items: Sequence[Prepared]) -> list[Result]:
        opts: TensorsOptions = self.options
        kinds = {name: opts.output(name).kind for name in self.spec.outputs}
        for name in self.spec.outputs:
            if outputs[name].shape[:1] != (len(items),):
                raise InputValidationError(f"output {name!r}: expected {len(items)} items, got shape "
                                           f"{outputs[name].shape}")
        return [TensorsResult(item.source, {name: outputs[name][i] for name in self.spec.outputs}, kinds,
                              opts.top_k, opts.inline_max_values)
                for i, item in enumerate(items)]

    def run_sources(self, sources: Iterable[str | Path], batch_size: int | None = None, *,
                    workers: int | None = None) -> Iterator[Result]:
        """As the base, with large outputs written to the side file (when placed) as they come."""
        side = SideArrays(self.side_file) if self.side_file is not None else None
        done = False
        try:
            for line, result in enumerate(super().run_sources(sources, batch_size, workers=workers)):
                if side is not None and isinstance(result, TensorsResult):
                    result = self._placed(result, line, side)
                yield result
            done = True
        finally:
            if side is not None:
                side.close(commit=done)

    def _placed(self, result: TensorsResult, line: int, side: SideArrays) -> TensorsResult:
        keys = {}
        for name, value in result.outputs.items():
            if not goes_inline(value, result.inline_max_values):
                keys[name] = f"line{line:06d}/{name}"
                side.add(keys[name], value)
        if not keys:
            return result
        assert side.path is not None
        return TensorsResult(result.source, result.outputs, result.kinds, result.top_k,
                             result.inline_max_values, side.path.name, keys)
