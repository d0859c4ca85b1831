"""One Pipeline shape for every family: prepare -> batch -> infer -> postprocess -> results."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from batchforge.errors import (
    AllocationError,
    BatchforgeError,
    EngineUnhealthyError,
    InferenceError,
    InputValidationError,
)
from batchforge.runtime.batching import BatchBuffers, chunk_slices, infer_in_chunks, stack_feeds
from batchforge.runtime.guards import is_allocation_failure, nonfinite_outputs, nonfinite_record, take_items
from batchforge.runtime.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    decode_image,
    read_image_bytes,
    to_rgb_uint8,
)
from batchforge.runtime.overlap import default_workers, run_overlapped
from batchforge.runtime.preprocess import preprocess_image
from batchforge.runtime.profiling import StageProfile
from batchforge.runtime.results import ErrorRecord, Result
from batchforge.runtime.runners.base import Runner
from batchforge.runtime.spec import ModelSpec, parse_options
from batchforge.runtime.typed_options import check_numbers, number_problem

MAX_RUN_BATCH = 65_536  # items per run_sources batch: far above any profile, below a memory blow-up
MAX_WORKERS = 256  # prepare threads; more only contend for the GIL
MAX_PIXELS_LIMIT = 10**12  # the decode guard's ceiling: a terapixel is no image anyone decodes


@contextlib.contextmanager
def input_errors(source: str) -> Iterator[None]:
    """Any failure while reading or preparing one input raised as an InputValidationError
    naming it (cv2.error, zipfile, numpy, MemoryError...), so it becomes that input's error
    record; batchforge's own errors pass through as they are."""
    try:
        yield
    except BatchforgeError:
        raise
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [""])[-1].strip()[:300]
        raise InputValidationError(f"{source}: could not be read ({type(exc).__name__}): {detail}") from None


@dataclass(frozen=True)
class Prepared:
    """One preprocessed item: its feed (no batch dim) and what post-processing needs of it."""

    source: str
    feed: dict[str, np.ndarray]
    meta: Any = None


@dataclass(frozen=True)
class Inferred:
    """One inferred batch: its items and outputs, or (``outputs`` None) why it could not run."""

    items: tuple[Prepared, ...]
    outputs: dict[str, np.ndarray] | None
    error: str | None = None
    error_type: str = AllocationError.__name__


def image_feed(image: np.ndarray, spec: ModelSpec) -> tuple[dict[str, np.ndarray], Any]:
    """(feed, geometry) of one RGB uint8 image for a model with image preprocessing."""
    if spec.preprocess is None:
        raise BatchforgeError(f"model {spec.name!r} has no image preprocessing spec")
    chw, geometry = preprocess_image(image, spec.preprocess)
    return {spec.inputs[0].name: chw}, geometry


class Pipeline(abc.ABC):
    """Base class of the family pipelines.

    Subclasses set ``family`` and ``options_type`` and implement ``postprocess``; image
    families inherit ``prepare`` (decode rules + the spec's preprocessing).
    """

    family: ClassVar[str]
    options_type: ClassVar[type]
    input_suffixes: ClassVar[tuple[str, ...]] = IMAGE_SUFFIXES  # what `run --input DIR` picks up
    overlaps_stages: ClassVar[bool] = True  # run_sources reads ahead on ``workers`` threads

    def __init__(self, spec: ModelSpec, runner: Runner, options: Any = None,
                 *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        check_numbers(type(self).__name__,
                      [number_problem("max_pixels", max_pixels, 1, MAX_PIXELS_LIMIT, integer=True)])
        self.spec = spec
        self.runner = runner
        self.options = options if options is not None else parse_options(
            self.options_type, spec.postprocess, f"{spec.family} postprocess options"
        )
        self.max_pixels = max_pixels
        self.batch_limit: int | None = None  # caps inference batches below the profile max
        self.allocation_limit: int | None = None  # set when a batch failed to allocate (back-off)
        self.stage_profile: StageProfile | None = None  # of the last run_sources (not the batch ProfileRange)
        self.known_good: Prepared | None = None  # the last item that ran: failure isolation's probe

    # lifecycle -------------------------------------------------------------------------
    @property
    def runners(self) -> list[Runner]:
        return [self.runner]

    def activate(self) -> Pipeline:
        for runner in self.runners:
            runner.activate()
        return self

    def deactivate(self) -> None:
        for runner in self.runners:
            runner.deactivate()

    @property
    def health(self) -> str | None:
        """None while the engine is healthy; else why it is not (see ``infer_guarded``)."""
        return next((r.unhealthy for r in self.runners if r.unhealthy is not None), None)

    def check_healthy(self) -> None:
        """Raises EngineUnhealthyError when a runner was marked unhealthy."""
        for runner in self.runners:
            runner.check_healthy()

    def __enter__(self) -> Pipeline:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    @property
    def max_batch(self) -> int:
        """The largest batch one inference call takes: the smallest profile max, or less when
        ``batch_limit`` is set."""
        profile_max = min(r.profile.max if r.profile else self.spec.profile.max for r in self.runners)
        return min(profile_max, self.batch_limit) if self.batch_limit else profile_max

    # stages ----------------------------------------------------------------------------
    def load(self, source: str | Path) -> np.ndarray:
        """Reads and decodes one input file (images by default), timing both stages."""
        profile = self.stage_profile or StageProfile()
        with profile.stage("read"):
            data = read_image_bytes(source, max_pixels=self.max_pixels)
        with profile.stage("decode"):
            return decode_image(data, source=str(source), max_pixels=self.max_pixels)

    def place_side_outputs(self, results_path: Path) -> Path | None:
        """Puts files a run writes besides its results beside ``results_path``; returns the
        folder (or file), or None for families that write none."""
        return None

    def load_items(self, source: str | Path) -> list[np.ndarray]:
        """The model items one input file holds (one image by default; a scan holds many)."""
        return [self.load(source)]

    def calibration_feeds(self, item: np.ndarray, source: str) -> list[dict[str, np.ndarray]]:
        """The model inputs one decoded item gives in real use, for INT8/FP16 calibration: its one
        prepared feed by default (a detector cascade's first stage sees every pyramid level)."""
        return [self.prepare(item, source).feed]

    def prepare(self, item: np.ndarray, source: str) -> Prepared:
        """Preprocesses one decoded item (an image by default)."""
        image = to_rgb_uint8(item, source=source, max_pixels=self.max_pixels)
        return Prepared(source, *image_feed(image, self.spec))

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the batched feed through the runner, chunked to the profile max."""
        return infer_in_chunks(self.runner, feed, self.max_batch)

    @abc.abstractmethod
    def postprocess(self, outputs: Mapping[str, np.ndarray], items: Sequence[Prepared]) -> list[Result]:
        """Turns batched raw outputs into one typed result per item, in order."""

    def batch_feed(self, items: Sequence[Prepared], buffers: BatchBuffers | None = None) -> dict[str, np.ndarray]:
        """The batched feed of prepared items (stacked into ``buffers`` when given)."""
        return stack_feeds([p.feed for p in items], buffers)

    def rows_per_item(self, items: Sequence[Prepared]) -> list[int]:
        """Leading output rows each item owns in ``infer(batch_feed(items))`` (one by default)."""
        return [1] * len(items)

    # entry points ----------------------------------------------------------------------
    def run_prepared(self, items: Sequence[Prepared]) -> list[Result]:
        """Runs already prepared items (an empty list returns []); errors raise."""
        if not items:
            return []
        return self.postprocess(self.infer(self.batch_feed(items)), items)

    def infer_guarded(self, items: Sequence[Prepared], buffers: BatchBuffers | None = None) -> list[Inferred]:
        """Infers items in batches, isolating the failures.

        Allocation: a batch that fails to allocate is halved and retried down to one item, which
        then gets an error. Once a size has worked, the rest of the batch and later batches go at
        that size (``allocation_limit``), so the failing size is not tried again, and one item too
        large even alone does not shrink the others.

        Any other engine error: the batch is run again item by item. An item that fails alone is
        its own (an InferenceError record) when anything else still runs: one of its batch-mates,
        or else a probe of one item (the last item that ran on this pipeline, or before any has,
        the failing item's feed with every value zero). When nothing runs, the probe included,
        the error is the engine's (sticky): the runners are marked unhealthy (``health``) and
        EngineUnhealthyError raises, now and on every later call until the pipeline is activated
        again.
        """
        if not items:
            return []
        self.check_healthy()
        limit = self.allocation_limit or len(items)
        worked: list[int] = []
        chunks = [chunk for part in chunk_slices(len(items), limit)
                  for chunk in self._infer_halving(items[part], buffers, worked)]
        if len(chunks) > len(range(0, len(items), limit)) and worked:  # a batch was halved
            self.allocation_limit = min(limit, max(worked))
        return chunks

    def _infer_halving(self, items: Sequence[Prepared], buffers: BatchBuffers | None,
                       worked: list[int]) -> list[Inferred]:
        if worked and len(items) > max(worked):
            size = max(worked)
            return [chunk for part in chunk_slices(len(items), size)
                    for chunk in self._infer_halving(items[part], buffers, worked)]
        try:
            outputs = self.infer(self.batch_feed(items, buffers))
        except EngineUnhealthyError:
            raise
        except Exception as exc:
            if not is_allocation_failure(exc):
                return self._isolated(items, buffers, exc)
            if len(items) == 1:
                return [_unallocated(items[0], exc)]
            half = (len(items) + 1) // 2
            first = self._infer_halving(items[:half], buffers, worked)
            return first + self._infer_halving(items[half:], buffers, worked)
        worked.append(len(items))
        self.known_good = items[0]
        return [Inferred(tuple(items), outputs)]

    def _isolated(self, items: Sequence[Prepared], buffers: BatchBuffers | None,
                  batch_error: Exception) -> list[Inferred]:
        """Each item of a batch that failed with ``batch_error`` run alone (see ``infer_guarded``)."""
        chunks = []
        for item in items:
            outputs, error = (None, batch_error) if len(items) == 1 else self._attempt(self.batch_feed([item], buffers))
            if error is None:
                self.known_good = item
                chunks.append(Inferred((item,), outputs))
            elif is_allocation_failure(error):
                chunks.append(_unallocated(item, error))
            else:
                chunks.append(Inferred((item,), None, f"the engine could not run this input even alone "
                                       f"({_describe(error)}); check its values against what the model "
                                       "accepts (e.g. index ranges); the other inputs are not affected",
                                       InferenceError.__name__))
        if all(chunk.outputs is None for chunk in chunks):
            probe = self.known_good
            feed = self.batch_feed([probe]) if probe is not None else {
                k: np.zeros_like(v) for k, v in self.batch_feed([items[0]]).items()}
            _, probe_error = self._attempt(feed)
            if probe_error is not None:
                what = f"the last input that ran ({probe.source})" if probe is not None else "an all-zero input"
                for runner in self.runners:
                    runner.mark_unhealthy(f"{len(items)} input(s) failed alone and {what} fails too "
                                          f"({_describe(probe_error)})")
                self.check_healthy()
        return chunks

    def _attempt(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray] | None, Exception | None]:
        """(outputs, None) when ``feed`` runs, else (None, its error); an unhealthy runner raises."""
        try:
            return self.infer(feed), None
        except EngineUnhealthyError:
            raise
        except Exception as exc:
            return None, exc

    def postprocess_guarded(self, inferred: Inferred) -> list[Result]:
        """Results of one inferred batch in order: an error record for each item that failed to
        allocate, that the engine refused alone, or that has a non-finite output (naming it),
        ``postprocess`` for the others."""
        items = inferred.items
        if inferred.outputs is None:
            return [ErrorRecord(p.source, inferred.error_type, f"{p.source}: {inferred.error}") for p in items]
        rows = self.rows_per_item(items)
        bad = nonfinite_outputs(inferred.outputs, rows)
        keep = [i for i, names in enumerate(bad) if not names]
        if len(keep) == len(items):
            return self.postprocess(inferred.outputs, items)
        good = iter(self.postprocess(take_items(inferred.outputs, rows, keep), [items[i] for i in keep])
                    if keep else [])
        return [next(good) if not names else nonfinite_record(item.source, names) for item, names in zip(items, bad)]

    def run_guarded(self, items: Sequence[Prepared]) -> list[Result]:
        """``run_prepared`` with the guards: one result or error record per item, in order."""
        return [r for chunk in self.infer_guarded(items) for r in self.postprocess_guarded(chunk)]

    def __call__(self, items: Sequence[np.ndarray], sources: Sequence[str] | None = None) -> list[Result]:
        """Runs decoded items (e.g. RGB uint8 images); one result per item, order kept.

        Inference is guarded as in ``run_sources``: an item whose output is not finite, that
        cannot allocate even alone, or that the engine refuses alone gets an ErrorRecord.
        Raises InputValidationError on the first bad item (use ``run_sources`` for per-item
        records of unreadable inputs) and EngineUnhealthyError on a sticky engine error.
        """
        if sources is not None and len(sources) != len(items):
            raise InputValidationError(
                f"got {len(items)} items but {len(sources)} source names"
            )
        names = list(sources) if sources is not None else [str(i) for i in range(len(items))]
        return self.run_guarded([self.prepare(x, s) for x, s in zip(items, names)])

    def run_sources(self, sources: Iterable[str | Path], batch_size: int | None = None, *,
                    workers: int | None = None) -> Iterator[Result]:
        """Streams results for input files in order; a bad file, a batch that cannot allocate
        even one item, or a non-finite output yields an ErrorRecord for that input.

        Args:
            sources: file paths.
            batch_size: items per inference batch (default: the profile's opt).
            workers: threads that read, decode and preprocess ahead of inference (0: all on the
                calling thread; default: ``default_workers()``). Results are the same for any value.
        """
        check_numbers("run_sources", [
            None if batch_size is None else number_problem("batch_size", batch_size, 1, MAX_RUN_BATCH, integer=True),
            None if workers is None else number_problem("workers", workers, 0, MAX_WORKERS, integer=True)])
        size = self.spec.profile.opt if batch_size is None else batch_size
        workers = default_workers() if workers is None else workers
        self.stage_profile = StageProfile(workers)
        yield from run_overlapped(self, [str(s) for s in sources], size, workers, self.stage_profile)

    def stats(self) -> dict[str, Any]:
        """Stage profile of the last (or current) ``run_sources``: see ``runtime.profiling``."""
        if self.stage_profile is None:
            raise InputValidationError("no run to report yet: stats() describes the last run_sources()")
        return self.stage_profile.summary()

    def safe_prepare(self, source: str) -> Result | Prepared:
        """One input read and prepared, each step timed; any failure of that input (a decoder's
        own errors included) becomes its error record, so one bad file never costs the others."""
        profile = self.stage_profile or StageProfile()
        try:
            with input_errors(source):
                if type(self).load is Pipeline.load:  # it times read and decode itself
                    item = self.load(source)
                else:  # a family's own loader reads and decodes in one step
                    with profile.stage("read"):
                        item = self.load(source)
                with profile.stage("preprocess"):
                    return self.prepare(item, source)
        except BatchforgeError as exc:
            return ErrorRecord(source, type(exc).__name__, exc.one_line())


def _describe(exc: BaseException) -> str:
    """``Type: first line`` of an engine's error, short enough for one record."""
    detail = (str(exc).strip().splitlines() or [""])[0].strip()
    return f"{type(exc).__name__}: {detail[:300]}" if detail else type(exc).__name__


def _unallocated(item: Prepared, exc: BaseException) -> Inferred:
    return Inferred((item,), None, f"inference could not allocate memory even at batch size 1 ({_describe(exc)})")
