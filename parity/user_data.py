"""``parity --data``: the user's inputs as the evaluation set, read as ``calibrate --data`` reads them.

- a folder: the files the model's pipeline takes (images; for ``tensors`` also per-item
  ``.npz``/``.npy``), sorted by name. Images are decoded by the runtime's image loader and stay
  raw: each side preprocesses them as without ``--data`` (the reference with torch, the engine with
  the runtime), so a preprocessing bug still shows.
- a ``.npz`` (one (N, ...) array per input name) or ``.npy`` (a single-input model): already
  preprocessed items, fed as they are to both sides (``tensors`` models only: the image families
  decode in image coordinates and need the images).

The set's sha256 is computed as calibration computes it, so ``same_as_calibration`` can tell when
a model is gated on the very files it was calibrated on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from batchforge.calibration.data import hash_arrays, hash_files, read_arrays
from batchforge.errors import InputValidationError, UsageError
from batchforge.parity.session import EvalItem
from batchforge.runtime.artifacts import ModelArtifacts, Precision, read_json
from batchforge.runtime.images import list_images, read_image
from batchforge.runtime.pipelines import PIPELINES
from batchforge.runtime.pipelines.tensors import ARRAY_SUFFIXES, TensorItem, read_item_file
from batchforge.runtime.spec import ModelSpec

# user data carries inputs only: no identities, labels or scan geometry. Families whose checks
# need those cannot be gated on it (anomaly's labels only select the zoo's reference-AUROC
# check, which is left out on unlabelled data).
REFUSED = {
    "reid": "its retrieval checks need queries and a gallery of known identities, which a folder of "
            "inputs does not have",
    "ptycho": "its stitched-object checks need a scan's patch offsets, which a folder of inputs does not have",
}
EXTRA = {"anomaly": {"labels": ()}}


@dataclass(frozen=True)
class UserData:
    items: tuple[EvalItem, ...]
    source: str
    sha256: str
    prefix_sha256: Callable[[int], str]  # the hash of the first n items, as calibration records it


def read_user_data(path: str | os.PathLike[str], spec: ModelSpec, limit: int | None) -> UserData:
    """The evaluation items of ``path`` for one model (at most ``limit``)."""
    family = spec.family
    if family in REFUSED:
        raise UsageError(f"parity --data cannot gate {spec.name!r}: it is a {family} model and {REFUSED[family]}",
                         hint="gate it without --data, on the family's own evaluation set")
    path = Path(path)
    count = limit or sys.maxsize
    if path.is_dir():
        files = list_images(path, PIPELINES[family].input_suffixes)[:count]
        if not files:
            raise UsageError(f"parity --data {path}: no input files in the folder",
                             hint=f"expected files ending in {', '.join(PIPELINES[family].input_suffixes)}")
        items, bad = [], []
        for file in files:
            try:
                data = read_item_file(file, spec) if file.suffix.lower() in ARRAY_SUFFIXES else read_image(file)
            except InputValidationError as exc:
                bad.append(exc.message)
                continue
            items.append(EvalItem(str(file), data))
        if bad:
            raise InputValidationError(f"{len(bad)} --data file(s) could not be read: " + "; ".join(bad[:3]),
                                       hint="fix or remove them")
        return UserData(tuple(items), str(path), hash_files(files), lambda n: hash_files(files[:n]))
    if path.suffix in (".npz", ".npy") and path.is_file():
        if family != "tensors":
            raise UsageError(f"parity --data {path.name}: {spec.name!r} is a {family} model, whose checks "
                             "decode in image coordinates and need the images, not preprocessed arrays",
                             hint="pass a folder of images")
        data = read_arrays(spec, path, count)
        items = tuple(EvalItem(f"{path.name}[{i}]", TensorItem(None, feed)) for i, feed in enumerate(data.feeds))
        return UserData(items, str(path), data.sha256, lambda n: hash_arrays(data.feeds[:n]))
    raise UsageError(f"parity --data {path}: expected a folder, a .npz or a .npy file",
                     hint="the same sources as calibrate --data")


def same_as_calibration(artifacts: ModelArtifacts, data: UserData) -> list[str]:
    """A warning for each FP16/INT8 model of ``artifacts`` calibrated on this data (or on its
    first items): gating on the calibration files flatters the lower precision."""
    warnings = []
    for precision in (Precision.FP16, Precision.INT8):
        sidecar = artifacts.sidecar(precision)
        if not sidecar.is_file():
            continue
        record = read_json(sidecar, what=f"{precision.value} record of {artifacts.model!r}").get("data") or {}
        recorded, items = record.get("sha256"), record.get("items")
        same = recorded == data.sha256 or (
            isinstance(items, int) and 0 < items < len(data.items) and recorded == data.prefix_sha256(items))
        if recorded and same:
            warnings.append(f"{artifacts.model}: parity data {data.source} is the {precision.value} calibration "
                            f"data ({sidecar.name} sha256 {recorded[:12]}); calibrating and gating on the "
                            "same files flatters it: gate on held-out data")
    return warnings
