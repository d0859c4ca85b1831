"""Overlapped stages of ``Pipeline.run_sources``.

With ``workers`` > 0: a thread pool reads, decodes and preprocesses inputs ahead (OpenCV's
decode/resize and NumPy's arithmetic release the GIL, so threads run them in parallel; processes
would have to pickle every preprocessed array back), one inference thread forms the batches in
input order and runs them, and the calling thread post-processes and hands out the results (the
caller writes them) while the next batch is inferred. Memory is bounded by a fixed number of
batches: ``PREFETCH_BATCHES + 1`` batches of prepared inputs ahead of inference and
``PREFETCH_BATCHES`` inferred batches waiting for post-processing.

With ``workers`` = 0 every stage runs on the calling thread. Both paths form the same batches,
so the results are identical; every input gets exactly one result, in order.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batchforge.runtime.batching import BatchBuffers
from batchforge.runtime.profiling import StageProfile
from batchforge.runtime.results import Result

if TYPE_CHECKING:
    from batchforge.runtime.pipelines.base import Inferred, Pipeline, Prepared

PREFETCH_BATCHES = 2


def default_workers() -> int:
    """Prepare threads when none are asked for: half the cores (inference uses the rest), 1 to 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _is_prepared(item: object) -> bool:
    return not isinstance(item, Result)


def _prepared(pending: Sequence[Result | Prepared]) -> list[Prepared]:
    return [p for p in pending if _is_prepared(p)]  # type: ignore[misc]


def _infer(pipeline: Pipeline, pending: Sequence[Result | Prepared], buffers: BatchBuffers,
           profile: StageProfile) -> list[Inferred]:
    items = _prepared(pending)
    if not items:
        return []
    with profile.stage("infer", len(items)):
        return pipeline.infer_guarded(items, buffers)


def _results(pipeline: Pipeline, pending: Sequence[Result | Prepared], chunks: Sequence[Inferred],
             profile: StageProfile) -> list[Result]:
    """Post-processes the inferred chunks and puts their results among the pending error records."""
    done: list[Result] = []
    for chunk in chunks:
        with profile.stage("postprocess", len(chunk.items)):
            done.extend(pipeline.postprocess_guarded(chunk))
    inferred = iter(done)
    return [next(inferred) if _is_prepared(p) else p for p in pending]  # type: ignore[misc]


def _handed_out(results: Iterable[Result], profile: StageProfile, counter: list[int]) -> Iterator[Result]:
    """Yields results, timing the caller's work between them as the write stage."""
    for result in results:
        start = time.perf_counter()
        yield result
        profile.add("write", time.perf_counter() - start)
        counter[0] += 1


def run_overlapped(pipeline: Pipeline, sources: Sequence[str], size: int, workers: int,
                   profile: StageProfile) -> Iterator[Result]:
    """One result per source, in order, in batches of ``size`` prepared inputs."""
    runner = _run_threaded if workers > 0 else _run_inline
    yield from runner(pipeline, sources, size, workers, profile)


def _run_inline(pipeline: Pipeline, sources: Sequence[str], size: int, workers: int,
                profile: StageProfile) -> Iterator[Result]:
    buffers, counter = BatchBuffers(), [0]
    pending: list[Result | Prepared] = []
    for index, source in enumerate(sources):
        pending.append(pipeline.safe_prepare(source))
        if len(_prepared(pending)) >= size or index == len(sources) - 1:
            chunks = _infer(pipeline, pending, buffers, profile)
            yield from _handed_out(_results(pipeline, pending, chunks, profile), profile, counter)
            pending = []
    profile.finish(counter[0])


class _PreparePool:
    """Daemon threads running ``fn(source)``: unlike ThreadPoolExecutor's, a worker stuck in a slow
    read never holds up the end of the process after an interrupt."""

    def __init__(self, workers: int, fn: Callable[[str], Result | Prepared]) -> None:
        self.fn = fn
        self.jobs: queue.SimpleQueue[tuple[Future[Result | Prepared], str] | None] = queue.SimpleQueue()
        self.threads = [threading.Thread(target=self._work, name=f"batchforge-prepare-{i}", daemon=True)
                        for i in range(workers)]
        for thread in self.threads:
            thread.start()

    def submit(self, source: str) -> Future[Result | Prepared]:
        future: Future[Result | Prepared] = Future()
        self.jobs.put((future, source))
        return future

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            future, source = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self.fn(source))
            except BaseException as exc:  # safe_prepare makes records of input errors; anything else is raised
                future.set_exception(exc)

    def shutdown(self, wait_s: float = 2.0) -> None:
        """Ends every worker after its current job (queued jobs are dropped), waiting at most
        ``wait_s`` in all: a worker stuck longer (a hung network read) is left to end as a daemon."""
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in self.threads:
            self.jobs.put(None)
        deadline = time.monotonic() + wait_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


@dataclass(frozen=True)
class _Failure:
    error: BaseException


_DONE = object()


class _Producer(threading.Thread):
    """The inference thread: takes prepared inputs in order from the pool, forms batches, infers
    them and queues (pending, inferred chunks) for the calling thread."""

    def __init__(self, pipeline: Pipeline, sources: Sequence[str], size: int, pool: _PreparePool,
                 profile: StageProfile) -> None:
        super().__init__(name="batchforge-infer", daemon=True)
        self.pipeline, self.sources, self.size, self.pool, self.profile = pipeline, sources, size, pool, profile
        self.out: queue.Queue[object] = queue.Queue(maxsize=PREFETCH_BATCHES)
        self.stop = threading.Event()

    def put(self, message: object) -> None:
        start = time.perf_counter()
        while not self.stop.is_set():
            try:
                self.out.put(message, timeout=0.05)
                break
            except queue.Full:
                continue
        self.profile.wait("infer_waits_for_queue_space", time.perf_counter() - start)

    def run(self) -> None:
        try:
            self._run()
            self.put(_DONE)
        except BaseException as exc:  # handed to the calling thread, which raises it
            self.put(_Failure(exc))

    def _run(self) -> None:
        ahead = self.size * (PREFETCH_BATCHES + 1)
        window: deque[Future[Result | Prepared]] = deque()
        sources = iter(self.sources)
        buffers = BatchBuffers()
        pending: list[Result | Prepared] = []
        while not self.stop.is_set():
            for source in sources:
                window.append(self.pool.submit(source))
                if len(window) >= ahead:
                    break
            if not window:
                return
            start = time.perf_counter()
            future = window.popleft()
            while not self.stop.is_set():
                with contextlib.suppress(TimeoutError):
                    pending.append(future.result(timeout=0.05))
                    break
            self.profile.wait("infer_waits_for_input", time.perf_counter() - start)
            if self.stop.is_set():
                return
            if len(_prepared(pending)) >= self.size or not window:
                self.put((pending, _infer(self.pipeline, pending, buffers, self.profile)))
                pending = []


def _run_threaded(pipeline: Pipeline, sources: Sequence[str], size: int, workers: int,
                  profile: StageProfile) -> Iterator[Result]:
    pool = _PreparePool(workers, pipeline.safe_prepare)
    producer = _Producer(pipeline, sources, size, pool, profile)
    producer.start()
    counter = [0]
    try:
        while True:
            start = time.perf_counter()
            message = producer.out.get()
            profile.wait("postprocess_waits_for_infer", time.perf_counter() - start)
            if message is _DONE:
                break
            if isinstance(message, _Failure):
                raise message.error
            pending, chunks = message  # type: ignore[misc]
            yield from _handed_out(_results(pipeline, pending, chunks, profile), profile, counter)
        profile.finish(counter[0])
    finally:  # also when the caller stops early or is interrupted: no thread is left running
        producer.stop.set()
        while producer.is_alive():
            try:
                producer.out.get_nowait()
            except queue.Empty:
                producer.join(0.05)
        pool.shutdown()
