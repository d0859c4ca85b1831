"""Ptychography pipeline: diffraction amplitudes -> complex object patches -> stitched object.

Inputs (``batchforge run ptycho --input DIR``):

- ``.npz`` scan file: ``diffraction`` (N, P, P) float amplitudes (DC centred), ``offsets``
  (N, 2) float64 (y, x) top-left corner of each patch in object pixels, optional
  ``object_shape`` (2,) ints. Other keys (e.g. a simulator's ``true_object``) are ignored.
  One record per scan: the patterns run through the engine in chunks and each chunk is
  stitched straight away, so memory stays at the canvas plus one chunk however long the scan.
- ``.npy``: one diffraction amplitude (P, P); one record with the patch's statistics.

Side outputs: with ``save_object`` (default on) the stitched object (complex64 ``.npy``) is
written as ``<stem>.object.npy`` (a single pattern: ``<stem>.patch.npy``) into
``object_dir``; the record carries the path in ``object_file`` / ``patch_file``. ``batchforge
run`` sets it to ``<jsonl stem>.objects/`` beside the JSONL (``place_side_outputs``). Left unset (Python API), it is a
``stitched/`` folder beside each input file: a sub-folder, so a second run over the same input
folder does not pick the outputs up as inputs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batchforge.errors import InputValidationError
from batchforge.runtime.batching import chunk_slices
from batchforge.runtime.pipelines.base import Pipeline, Prepared, input_errors
from batchforge.runtime.post.ptycho import (
    ObjectCanvas,
    PtychoOptions,
    Reassembly,
    check_offsets,
    complex_patches,
    default_object_shape,
    reassemble_patches,
)
from batchforge.runtime.results import ErrorRecord, Result
from batchforge.runtime.runners.base import Runner
from batchforge.runtime.spec import ModelSpec
from batchforge.runtime.validation import load_array_file

SCAN_SUFFIXES = (".npz", ".npy")
DEFAULT_OBJECT_FOLDER = "stitched"  # beside each input file (see the module docstring)


@dataclass(frozen=True)
class Scan:
    """Diffraction amplitudes and (for a scan) where each patch sits in the object."""

    diffraction: np.ndarray  # (N, P, P) float32
    offsets: np.ndarray | None  # (N, 2) float64 (y, x), None for loose patterns
    object_shape: tuple[int, int] | None = None


def _stats(values: np.ndarray) -> dict[str, float]:
    if not values.size:
        return {"min": 0.0, "mean": 0.0, "max": 0.0}
    return {"min": float(values.min()), "mean": float(values.mean()), "max": float(values.max())}


@dataclass(frozen=True)
class PtychoPatchResult(Result):
    """One reconstructed patch (amplitude and phase, (P, P) each)."""

    amplitude: np.ndarray
    phase: np.ndarray
    patch_file: str | None = None

    @property
    def patch(self) -> np.ndarray:
        return complex_patches(self.amplitude, self.phase)

    def to_record(self) -> dict[str, Any]:
        record = super().to_record()
        record.update(patch_shape=list(self.amplitude.shape), amplitude=_stats(self.amplitude),
                      phase=_stats(self.phase), patch_file=self.patch_file)
        return record


@dataclass(frozen=True)
class PtychoScanResult(Result):
    """A stitched object (complex64) from one scan."""

    reassembly: Reassembly
    n_patches: int
    crop_size: int
    subpixel: str
    object_file: str | None = None

    @property
    def object(self) -> np.ndarray:
        return self.reassembly.object

    def to_record(self) -> dict[str, Any]:
        record = super().to_record()
        covered = self.reassembly.covered
        values = self.object[covered]
        record.update(n_patches=self.n_patches, object_shape=list(self.object.shape),
                      stitch_crop_size=self.crop_size, subpixel=self.subpixel,
                      covered_fraction=float(covered.mean()), amplitude=_stats(np.abs(values)),
                      phase=_stats(np.angle(values)), object_file=self.object_file)
        return record


def check_diffraction(data: Any, patch: int, source: str) -> np.ndarray:
    """Validates (P, P) or (N, P, P) real, finite, non-negative amplitudes; returns float32."""
    if not isinstance(data, np.ndarray):
        raise InputValidationError(f"{source}: expected a numpy array of diffraction amplitudes, "
                                   f"got {type(data).__name__}")
    if data.ndim not in (2, 3) or data.shape[-2:] != (patch, patch):
        raise InputValidationError(f"{source}: expected diffraction amplitudes of shape ({patch}, {patch}) "
                                   f"or (N, {patch}, {patch}), got {data.shape}")
    if not np.issubdtype(data.dtype, np.floating):
        raise InputValidationError(f"{source}: expected float32 diffraction amplitudes, got {data.dtype}",
                                   hint="amplitudes are sqrt(intensity); convert counts explicitly")
    if not np.all(np.isfinite(data)) or np.any(data < 0):
        raise InputValidationError(f"{source}: diffraction amplitudes must be finite and >= 0")
    return np.ascontiguousarray(data, dtype=np.float32)


def read_scan(path: str | os.PathLike[str], patch: int) -> Scan:
    """Reads a ``.npz`` scan or a ``.npy`` pattern (see the module docstring)."""
    path = Path(path)
    loaded = load_array_file(path)
    if isinstance(loaded, np.ndarray):
        data = check_diffraction(loaded, patch, str(path))
        if data.ndim == 3:
            raise InputValidationError(f"{path}: a stack of {len(data)} patterns needs scan offsets",
                                       hint="write an .npz with 'diffraction' and 'offsets' (N, 2)")
        return Scan(data[None], None)
    with loaded:
        missing = [k for k in ("diffraction", "offsets") if k not in loaded.files]
        if missing:
            raise InputValidationError(f"{path}: scan file is missing {missing}; it has {loaded.files}")
        data = check_diffraction(loaded["diffraction"], patch, str(path))
        if data.ndim == 2:
            data = data[None]
        offsets = check_offsets(loaded["offsets"], len(data))
        shape = None
        if "object_shape" in loaded.files:
            raw = loaded["object_shape"]
            if raw.shape != (2,) or not np.issubdtype(raw.dtype, np.integer) or raw.min() < 1:
                raise InputValidationError(f"{path}: object_shape must be two positive integers, got {raw}")
            shape = (int(raw[0]), int(raw[1]))
    return Scan(data, offsets, shape)


class PtychoPipeline(Pipeline):
    """Diffraction -> patches (per item) and, for scans, patches -> one stitched object."""

    family = "ptycho"
    overlaps_stages = False  # scans are read, inferred and stitched in order on one thread
    options_type = PtychoOptions
    input_suffixes = SCAN_SUFFIXES

    def __init__(self, spec: ModelSpec, runner: Runner, options: PtychoOptions | None = None,
                 *, object_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        super().__init__(spec, runner, options, **kwargs)
        self.object_dir = Path(object_dir) if object_dir is not None else None

    @property
    def patch_size(self) -> int:
        return int(self.spec.inputs[0].item_shape[-1])

    def load(self, source: str | Path) -> Scan:  # type: ignore[override]
        return read_scan(source, self.patch_size)

    def place_side_outputs(self, results_path: Path) -> Path | None:
        """Stitched objects and patches go to ``<results stem>.objects/`` unless set already."""
        if self.object_dir is None:
            self.object_dir = results_path.parent / f"{results_path.stem}.objects"
        return self.object_dir

    def load_items(self, source: str | Path) -> list[np.ndarray]:
        """Every diffraction pattern of a scan (or the one loose pattern)."""
        return list(self.load(source).diffraction)

    def prepare(self, item: np.ndarray, source: str) -> Prepared:
        """One diffraction amplitude (P, P) -> its feed."""
        data = check_diffraction(item, self.patch_size, source)
        if data.ndim != 2:
            raise InputValidationError(f"{source}: expected one ({self.patch_size}, {self.patch_size}) "
                                       f"pattern per item, got {data.shape}")
        return Prepared(source, {self.spec.inputs[0].name: data})

    def patches(self, outputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Complex64 (N, P, P) patches from the raw amplitude and phase outputs."""
        amplitude, phase = (outputs[name] for name in self.spec.outputs[:2])
        return complex_patches(amplitude, phase)

    def postprocess(self, outputs: Mapping[str, np.ndarray], items: Sequence[Prepared]) -> list[Result]:
        amplitude, phase = (outputs[name] for name in self.spec.outputs[:2])
        if amplitude.shape[0] != len(items) or amplitude.shape != phase.shape:
            raise InputValidationError(f"expected amplitude and phase of shape ({len(items)}, P, P), "
                                       f"got {amplitude.shape} and {phase.shape}")
        return [PtychoPatchResult(item.source, a, p) for item, a, p in zip(items, amplitude, phase)]

    def stitch(self, patches: np.ndarray, offsets: np.ndarray,
               object_shape: Sequence[int] | None = None) -> Reassembly:
        """Reassembles complex patches with this pipeline's options."""
        opts: PtychoOptions = self.options
        return reassemble_patches(patches, offsets, opts.stitch_crop_size, object_shape=object_shape,
                                  batch_size=opts.stitch_batch_size, subpixel=opts.subpixel)

    def reconstruct(self, scan: Scan, source: str = "scan",
                    batch_size: int | None = None) -> PtychoScanResult:
        """Runs a scan through the engine chunk by chunk, stitching each chunk as it comes."""
        if scan.offsets is None:
            raise InputValidationError(f"{source}: a scan needs offsets to be stitched")
        opts: PtychoOptions = self.options
        offsets = check_offsets(scan.offsets, len(scan.diffraction))
        shape = scan.object_shape or default_object_shape(offsets, self.patch_size)
        canvas = ObjectCanvas(shape, self.patch_size, opts.stitch_crop_size,
                              batch_size=opts.stitch_batch_size, subpixel=opts.subpixel)
        chunk = min(batch_size or self.spec.profile.opt, self.max_batch)
        name = self.spec.inputs[0].name
        for part in chunk_slices(len(scan.diffraction), chunk):
            canvas.add(self.patches(self.infer({name: scan.diffraction[part]})), offsets[part])
        return PtychoScanResult(source, canvas.result(), len(offsets), opts.stitch_crop_size, opts.subpixel)

    def run_sources(self, sources: Iterable[str | Path], batch_size: int | None = None, *,
                    workers: int | None = None) -> Iterator[Result]:
        """One record per file in order: scans are stitched, single patterns are batched. Every
        stage runs on the calling thread (``workers`` is accepted for the common signature)."""
        size = batch_size or self.spec.profile.opt
        if size < 1:
            raise InputValidationError(f"batch size must be >= 1, got {size}")
        pending: list[Prepared] = []
        for source in map(str, sources):
            try:
                with input_errors(source):
                    scan = self.load(source)
                if scan.offsets is None:
                    with input_errors(source):
                        prepared = self.prepare(scan.diffraction[0], source)
                    pending.append(prepared)
                    outcome: Result | None = None
                else:
                    yield from self._patch_results(pending)  # earlier files first: order kept
                    pending = []
                    result = self.reconstruct(scan, source, size)
                    outcome = self._saved(result, source, "object", result.object)
            except (InputValidationError, OSError) as exc:
                message = exc.one_line() if isinstance(exc, InputValidationError) else str(exc)
                outcome = ErrorRecord(source, type(exc).__name__, message)
            if outcome is not None or len(pending) >= size:
                yield from self._patch_results(pending)
                pending = []
            if outcome is not None:
                yield outcome
        yield from self._patch_results(pending)

    def _patch_results(self, pending: list[Prepared]) -> Iterator[Result]:
        for result in self.run_guarded(pending):  # an ErrorRecord passes through as it is
            yield self._saved(result, result.source, "patch", result.patch) if isinstance(
                result, PtychoPatchResult) else result

    def _saved(self, result: Any, source: str, kind: str, array: np.ndarray) -> Result:
        if not self.options.save_object:
            return result
        folder = self.object_dir or Path(source).parent / DEFAULT_OBJECT_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{Path(source).stem}.{kind}.npy"
        np.save(path, array.astype(np.complex64), allow_pickle=False)
        field = "object_file" if kind == "object" else "patch_file"
        return dataclasses.replace(result, **{field: str(path)})
