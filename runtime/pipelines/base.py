"""One Pipeline shape for every family: prepare -> batch -> infer -> postprocess -> results."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from batchforge.errors import BatchforgeError, InputValidationError
from batchforge.runtime.batching import infer_in_chunks, stack_feeds
from batchforge.runtime.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, read_image, to_rgb_uint8
from batchforge.runtime.preprocess import preprocess_image
from batchforge.runtime.results import ErrorRecord, Result
from batchforge.runtime.runners.base import Runner
from batchforge.runtime.spec import ModelSpec, parse_options


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

    def __init__(self, spec: ModelSpec, runner: Runner, options: Any = None,
                 *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.spec = spec
        self.runner = runner
        self.options = options if options is not None else parse_options(
            self.options_type, spec.postprocess, f"{spec.family} postprocess options"
        )
        self.max_pixels = max_pixels
        self.batch_limit: int | None = None  # caps inference batches below the profile max

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
        """Reads one input file (images by default)."""
        return read_image(source, max_pixels=self.max_pixels)

    def place_side_outputs(self, results_path: Path) -> Path | None:
        """Puts files a run writes besides its results beside ``results_path``; returns the
        folder (or file), or None for families that write none."""
        return None

    def load_items(self, source: str | Path) -> list[np.ndarray]:
        """The model items one input file holds (one image by default; a scan holds many)."""
        return [self.load(source)]

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

    # entry points ----------------------------------------------------------------------
    def run_prepared(self, items: Sequence[Prepared]) -> list[Result]:
        """Runs already prepared items (an empty list returns [])."""
        if not items:
            return []
        outputs = self.infer(stack_feeds([p.feed for p in items]))
        return self.postprocess(outputs, items)

    def __call__(self, items: Sequence[np.ndarray], sources: Sequence[str] | None = None) -> list[Result]:
        """Runs decoded items (e.g. RGB uint8 images); one result per item, order kept.

        Raises InputValidationError on the first bad item; use ``run_sources`` for per-item
        error records.
        """
        if sources is not None and len(sources) != len(items):
            raise InputValidationError(
                f"got {len(items)} items but {len(sources)} source names"
            )
        names = list(sources) if sources is not None else [str(i) for i in range(len(items))]
        return self.run_prepared([self.prepare(x, s) for x, s in zip(items, names)])

    def run_sources(self, sources: Iterable[str | Path], batch_size: int | None = None) -> Iterator[Result]:
        """Streams results for input files in order; a bad file yields an ErrorRecord.

        Args:
            sources: file paths.
            batch_size: items per inference batch (default: the profile's opt).
        """
        size = batch_size or self.spec.profile.opt
        if size < 1:
            raise InputValidationError(f"batch size must be >= 1, got {size}")
        pending: list[Result | Prepared] = []
        for source in sources:
            pending.append(self._safe_prepare(str(source)))
            if sum(isinstance(p, Prepared) for p in pending) >= size:
                yield from self._flush(pending)
                pending = []
        yield from self._flush(pending)

    def _safe_prepare(self, source: str) -> Result | Prepared:
        """One input read and prepared; any failure of that input (a decoder's own errors
        included) becomes its error record, so one bad file never costs the others."""
        try:
            with input_errors(source):
                return self.prepare(self.load(source), source)
        except BatchforgeError as exc:
            return ErrorRecord(source, type(exc).__name__, exc.one_line())

    def _flush(self, pending: list[Result | Prepared]) -> Iterator[Result]:
        prepared = [p for p in pending if isinstance(p, Prepared)]
        results = iter(self.run_prepared(prepared))
        for item in pending:
            yield next(results) if isinstance(item, Prepared) else item
