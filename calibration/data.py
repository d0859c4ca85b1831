"""Calibration data: the model's own runtime preprocessing applied to real inputs.

Sources: an image folder (or any folder of the family's input files), a ``.npy`` array of
already preprocessed inputs (N, ...), an ``.npz`` with one array per input name, or -- only
with ``--allow-synthetic`` -- the family's synthetic sample generator. The set's sha256 is
recorded. Inputs that look like white noise are refused unless explicitly allowed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from batchforge.errors import CalibrationError, InputValidationError
from batchforge.runtime.batching import stack_feeds
from batchforge.runtime.images import list_images
from batchforge.runtime.pipelines.base import Pipeline

MIN_ITEMS = 8
# Neighbouring pixels of natural (and our synthetic) images correlate strongly (> 0.5); i.i.d.
# noise gives ~0. Below this mean lag-1 correlation the set is treated as random data.
NOISE_CORRELATION = 0.2


@dataclass(frozen=True)
class CalibrationData:
    """Preprocessed feeds (one dict per item, no batch dim) and where they came from."""

    feeds: tuple[dict[str, np.ndarray], ...]
    source: str
    sha256: str
    synthetic: bool

    @property
    def count(self) -> int:
        return len(self.feeds)

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Batched feeds, in order; a batch ends early where the next feed's shapes differ
        (a model with dynamic height and width is calibrated on inputs of several sizes)."""
        if batch_size < 1:
            raise CalibrationError(f"batch size must be >= 1, got {batch_size}")
        run: list[dict[str, np.ndarray]] = []
        for feed in self.feeds[:limit] if limit else self.feeds:
            if run and (len(run) == batch_size
                        or any(run[0][name].shape != array.shape for name, array in feed.items())):
                yield stack_feeds(run)
                run = []
            run.append(feed)
        if run:
            yield stack_feeds(run)

    def record(self) -> dict[str, object]:
        return {"source": self.source, "sha256": self.sha256, "items": self.count,
                "synthetic": self.synthetic}


class FeedReader:
    """onnxruntime.quantization CalibrationDataReader: "give me the next feed dict"."""

    def __init__(self, data: CalibrationData, batch_size: int = 8) -> None:
        self._batches = list(data.batches(batch_size))
        self._index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._index >= len(self._batches):
            return None
        self._index += 1
        return self._batches[self._index - 1]

    def rewind(self) -> None:
        self._index = 0


def hash_arrays(feeds: Sequence[dict[str, np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(feed[name]).tobytes())
    return digest.hexdigest()


def hash_files(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def load_calibration_data(pipeline: Pipeline, data: str | os.PathLike[str] | None, *,
                          samples: int, allow_synthetic: bool = False,
                          allow_random: bool = False) -> CalibrationData:
    """Reads and preprocesses calibration inputs for the pipeline's model.

    Args:
        pipeline: the FP32 pipeline (its ``load``/``prepare`` define the preprocessing).
        data: folder, ``.npy`` or ``.npz``; None means synthetic (needs ``allow_synthetic``).
        samples: how many items to use (the first ones, sorted by name).
        allow_synthetic: calibrate on the family's generator when no data is given.
        allow_random: accept inputs that look like white noise.
    """
    if samples < MIN_ITEMS:
        raise CalibrationError(f"calibration needs at least {MIN_ITEMS} items, got --samples {samples}")
    spec = pipeline.spec
    if data is None:
        if not allow_synthetic:
            raise CalibrationError(
                "no calibration data given: expected --data PATH (a folder of inputs, .npy or .npz)",
                hint=f"e.g. `batchforge samples {spec.family} --out samples/calib/{spec.family}` then "
                     f"--data samples/calib/{spec.family}; or --allow-synthetic to calibrate on "
                     "generated samples (the report will say so)")
        from batchforge.export.samples import SEED_CALIBRATION, generate

        items = generate(spec.family, samples, SEED_CALIBRATION)
        feeds = [feed for name, item in items for feed in pipeline.calibration_feeds(item, name)]
        result = CalibrationData(tuple(feeds), f"synthetic:{spec.family}(seed={SEED_CALIBRATION})",
                                 hash_arrays(feeds), synthetic=True)
    else:
        result = _from_path(pipeline, Path(data), samples)
    if len(result.feeds) < MIN_ITEMS:
        raise CalibrationError(
            f"calibration needs at least {MIN_ITEMS} items, {result.source} gave {len(result.feeds)}")
    if spec.preprocess is not None and not allow_random:
        correlation = neighbour_correlation(result.feeds, spec.inputs[0].name)
        if correlation < NOISE_CORRELATION:
            raise CalibrationError(
                f"calibration inputs from {result.source} look like random noise (mean neighbouring-"
                f"pixel correlation {correlation:.3f}; real images give > 0.5)",
                hint="calibrate on real samples; pass --allow-random-data only to test what that does")
    return result


def _from_path(pipeline: Pipeline, path: Path, samples: int) -> CalibrationData:
    spec = pipeline.spec
    if path.suffix in (".npy", ".npz") and path.is_file():
        return read_arrays(spec, path, samples)
    elif path.is_dir():
        files = list_images(path, pipeline.input_suffixes)[:samples]
        items: list[list[dict[str, np.ndarray]]] = []  # the feeds of each item
        bad = []
        for file in files:
            try:
                items.extend(pipeline.calibration_feeds(item, str(file)) for item in pipeline.load_items(file))
            except InputValidationError as exc:
                bad.append((file.name, exc.message.replace(str(file), file.name), exc.hint))
        if bad:
            hint = f"{bad[0][2]}; nothing was written" if bad[0][2] else "fix or remove them; nothing was written"
            reasons = {message.replace(name, "<file>") for name, message, _ in bad}
            if len(reasons) == 1:  # one cause (e.g. a two-input model fed images): said once
                raise CalibrationError(f"{len(bad)} of {len(files)} calibration file(s) could not be read, "
                                       f"each for the same reason: {bad[0][1]}", hint=hint)
            raise CalibrationError(f"{len(bad)} calibration file(s) could not be read: "
                                   + "; ".join(f"{name}: {message}" for name, message, _ in bad[:5]), hint=hint)
        feeds = tuple(feed for item in items[:samples] for feed in item)
        return CalibrationData(feeds, str(path), hash_files(files), synthetic=False)
    else:
        raise CalibrationError(f"calibration data {path} is not a folder, .npy or .npz file")


def read_arrays(spec, path: Path, samples: int) -> CalibrationData:
    """Preprocessed items from a ``.npy`` (N, ...) of a single-input model or an ``.npz`` with one
    (N, ...) array per input name, checked against the spec's inputs (names, dtype, item shape);
    the first ``samples`` items. Shared by ``calibrate --data`` and ``parity --data``."""
    if path.suffix == ".npy":
        if len(spec.inputs) != 1:
            raise CalibrationError(f"a .npy file feeds one input; {spec.name} has {len(spec.inputs)}: use .npz")
        arrays = {spec.inputs[0].name: np.load(path, allow_pickle=False)}
    else:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    return _from_arrays(spec, arrays, path, samples)


def _from_arrays(spec, arrays: dict[str, np.ndarray], path: Path, samples: int) -> CalibrationData:
    expected = {t.name: t for t in spec.inputs}
    if set(arrays) != set(expected):
        raise CalibrationError(f"{path} holds arrays {sorted(arrays)}, expected the inputs {sorted(expected)}",
                               hint="save one (N, ...) array per input name, e.g. np.savez(path, "
                                    + ", ".join(f"{n}=..." for n in expected) + ")")
    for name, array in arrays.items():
        want = expected[name]
        if array.dtype != np.dtype(want.dtype):
            raise CalibrationError(f"{path}: array {name!r} is {array.dtype}, the model input is {want.dtype}",
                                   hint="convert it explicitly; nothing is cast silently")
        if tuple(array.shape[1:]) != tuple(int(d) for d in want.item_shape):
            raise CalibrationError(
                f"{path}: array {name!r} has items of shape {array.shape[1:]}, expected {want.item_shape}")
    count = min(samples, *(a.shape[0] for a in arrays.values()))
    feeds = [{n: a[i] for n, a in arrays.items()} for i in range(count)]
    return CalibrationData(tuple(feeds), str(path), hash_arrays(feeds), synthetic=False)


def neighbour_correlation(feeds: Sequence[dict[str, np.ndarray]], name: str) -> float:
    """Mean correlation of horizontally neighbouring pixels over the items (images only)."""
    values = []
    for feed in feeds[:16]:
        x = feed[name].astype(np.float64)
        left, right = x[..., :, :-1].ravel(), x[..., :, 1:].ravel()
        if left.std() > 0 and right.std() > 0:
            values.append(float(np.corrcoef(left, right)[0, 1]))
    return float(np.mean(values)) if values else 1.0
