"""An in-process dynamic batcher: many caller threads, one inference thread, batched requests.

``submit`` preprocesses on the caller's thread (so callers preprocess in parallel) and queues the
request; one thread takes the oldest request, waits up to ``max_delay_ms`` from its arrival for
more, and runs up to ``max_batch`` of them as one batch through the pipeline's guards (allocation
back-off, non-finite outputs -> ErrorRecord). A full queue refuses at once (``QueueFullError``:
back-pressure), a request still queued at its deadline fails with ``TimeoutError`` then (a
second thread watches the deadlines, so a long batch in inference does not delay it), and
``close()`` runs what is queued and stops.

A batch the engine fails on is run again request by request (``Pipeline.infer_guarded``), so
only a request the engine refuses alone gets an ErrorRecord. A sticky engine error (nothing runs
alone, a probe included) makes the batcher unhealthy: the batch's and every queued request fail
with EngineUnhealthyError, ``submit`` refuses new ones with it, and ``health`` / ``stats()``
say why.

Usage::

    with pipeline, DynamicBatcher(pipeline, max_batch=8, max_delay_ms=5) as batcher:
        result = batcher.submit(image, source="cam0/42").result()
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from batchforge.errors import BatcherClosedError, BatchforgeError, EngineUnhealthyError, QueueFullError, UsageError
from batchforge.runtime.pipelines.base import input_errors
from batchforge.runtime.results import Result
from batchforge.runtime.typed_options import check_numbers, number_problem

if TYPE_CHECKING:
    from batchforge.runtime.pipelines.base import Pipeline, Prepared

WAIT_SAMPLES = 100_000  # queue waits kept for the percentiles (the most recent ones)
MAX_DELAY_MS = 60_000.0  # a minute: longer defeats a latency batcher (and threading's wait has a ceiling)
MAX_TIMEOUT_MS = 86_400_000.0  # a day; None means no timeout
MAX_QUEUE = 10_000_000  # requests; the queue holds preprocessed inputs in memory


@dataclass(frozen=True)
class _Request:
    prepared: Prepared
    future: Future[Result]
    enqueued: float
    deadline: float | None


class DynamicBatcher:
    """Coalesces concurrent ``submit`` calls into batches of at most ``max_batch``.

    Args:
        pipeline: an active pipeline (``with pipeline:``); only the batcher's thread runs it.
        max_batch: largest batch (default: the profile's opt, at most the pipeline's max batch).
        max_delay_ms: longest time the oldest queued request waits for others to join it.
        max_queue: requests queued at most; ``submit`` raises QueueFullError beyond.
        timeout_ms: default per-request timeout (None: no timeout).
    Raises:
        ConfigError naming each argument that is not a finite number in its range (one line).
    """

    def __init__(self, pipeline: Pipeline, *, max_batch: int | None = None, max_delay_ms: float = 5.0,
                 max_queue: int = 256, timeout_ms: float | None = None) -> None:
        limit = pipeline.max_batch
        max_batch = min(pipeline.spec.profile.opt, limit) if max_batch is None else max_batch
        batch_problem = number_problem("max_batch", max_batch, 1, limit, integer=True)
        check_numbers("DynamicBatcher", [
            batch_problem,
            number_problem("max_delay_ms", max_delay_ms, 0, MAX_DELAY_MS, unit=" ms"),
            number_problem("max_queue", max_queue, 1, MAX_QUEUE, integer=True),
            _timeout_problem(timeout_ms)],
            hint=f"max_batch is at most the pipeline's max batch {limit}" if batch_problem else None)
        inactive = [r.name for r in pipeline.runners if not r.is_active]
        if inactive:
            raise UsageError(f"the pipeline's runner(s) {inactive} are not active",
                             hint="create the batcher inside `with pipeline:`")
        self.pipeline, self.max_batch, self.max_queue = pipeline, max_batch, max_queue
        self.max_delay = max_delay_ms / 1000.0
        self.timeout_ms = timeout_ms
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._names = itertools.count()
        self._sizes: Counter[int] = Counter()
        self._waits: deque[float] = deque(maxlen=WAIT_SAMPLES)
        self._counts = Counter[str]()
        self._unhealthy: EngineUnhealthyError | None = None
        self._thread = threading.Thread(target=self._serve, name="batchforge-batcher", daemon=True)
        self._thread.start()
        self._reaper = threading.Thread(target=self._expire, name="batchforge-batcher-timeouts", daemon=True)
        self._reaper.start()

    # callers ---------------------------------------------------------------------------
    def submit(self, item: Any, source: str | None = None, *, timeout_ms: float | None = None) -> Future[Result]:
        """Queues one item (e.g. an RGB uint8 image); safe from any number of threads.

        Returns:
            A Future of the item's Result: an ErrorRecord when it could not allocate even alone,
            the engine refuses it alone (its batch-mates still run) or its output is not finite;
            the exception InputValidationError for a bad item, TimeoutError when it waited longer
            than its timeout, EngineUnhealthyError when the engine failed for good meanwhile.
        Raises:
            QueueFullError when ``max_queue`` requests are waiting; BatcherClosedError after close();
            EngineUnhealthyError once the engine is unhealthy; ConfigError for a bad ``timeout_ms``.
        """
        check_numbers("DynamicBatcher.submit", [_timeout_problem(timeout_ms)])
        name = source if source is not None else f"request{next(self._names)}"
        self._check_room()
        future: Future[Result] = Future()
        try:
            with input_errors(name):
                prepared = self.pipeline.prepare(item, name)
        except BatchforgeError as exc:
            future.set_exception(exc)
            return future
        timeout = self.timeout_ms if timeout_ms is None else timeout_ms
        now = time.perf_counter()
        with self._cond:
            self._check_room()
            self._queue.append(_Request(prepared, future, now, None if timeout is None else now + timeout / 1000))
            self._cond.notify_all()  # the batcher's thread and the deadline watcher
        return future

    def _check_room(self) -> None:
        with self._cond:
            if self._unhealthy is not None:
                self._counts["rejected"] += 1  # a new exception each time: re-raising one grows its traceback
                raise EngineUnhealthyError(self._unhealthy.message, hint=self._unhealthy.hint)
            if self._closed:
                raise BatcherClosedError("the batcher is closed; submit() needs an open one",
                                         hint="create a new DynamicBatcher")
            if len(self._queue) >= self.max_queue:
                self._counts["rejected"] += 1
                raise QueueFullError(f"the batcher's queue is full ({self.max_queue} requests waiting)",
                                     hint="retry later, or raise max_queue")

    def close(self, timeout: float | None = None) -> None:
        """Stops taking requests, runs every queued one, and stops the thread (idempotent).

        Args:
            timeout: seconds to wait for each thread (None: until done).
        """
        check_numbers("DynamicBatcher.close", [
            None if timeout is None else number_problem("timeout", timeout, 0, MAX_TIMEOUT_MS / 1000, unit=" s")])
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
        self._reaper.join(timeout)

    def __enter__(self) -> DynamicBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def health(self) -> str | None:
        """None while the engine is healthy; else why the batcher refuses work (a sticky engine error)."""
        with self._cond:
            return None if self._unhealthy is None else self._unhealthy.one_line()

    def stats(self) -> dict[str, Any]:
        """Requests served, the batch-size histogram, queue-wait p50/p99 (ms), timeouts, rejections,
        and ``health`` (None, or why the batcher refuses work)."""
        health = self.health
        with self._cond:
            waits = np.asarray(self._waits, dtype=np.float64) * 1000
            sizes = dict(sorted(self._sizes.items()))
            counts = dict(self._counts)
            queued = len(self._queue)
        batches = sum(sizes.values())
        return {
            "requests": counts.get("served", 0),
            "batches": batches,
            "batch_sizes": sizes,
            "mean_batch": round(counts.get("served", 0) / batches, 3) if batches else None,
            "queue_wait_ms": {"p50": float(np.percentile(waits, 50)) if waits.size else None,
                              "p99": float(np.percentile(waits, 99)) if waits.size else None},
            "timeouts": counts.get("timeouts", 0),
            "rejected": counts.get("rejected", 0),
            "queued": queued,
            "health": health,
        }

    # the batcher's thread --------------------------------------------------------------
    def _serve(self) -> None:
        for batch in self._batches():
            self._run(batch)

    def _batches(self) -> Iterator[list[_Request]]:
        """The next batch: the oldest request and those that arrive within its max delay."""
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return  # closed and drained
                deadline = self._queue[0].enqueued + self.max_delay
                while len(self._queue) < self.max_batch and not self._closed:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
                self._cond.notify_all()  # the deadline watcher stops once closed and drained
            yield batch

    def _expire(self) -> None:
        """The deadline watcher: fails each queued request at its deadline, while the batcher's
        thread may be busy with a batch; ends once the batcher is closed and its queue drained."""
        while True:
            with self._cond:
                if self._closed and not self._queue:
                    return
                now = time.perf_counter()
                expired = [r for r in self._queue if r.deadline is not None and r.deadline <= now]
                if expired:
                    self._queue = deque(r for r in self._queue if r.deadline is None or r.deadline > now)
                else:
                    deadlines = [r.deadline for r in self._queue if r.deadline is not None]
                    self._cond.wait(min(deadlines) - now if deadlines else None)
                    continue
            for request in expired:  # outside the lock: a future's callbacks run here
                if request.future.set_running_or_notify_cancel():
                    self._time_out(request, now)

    def _time_out(self, request: _Request, now: float) -> None:
        waited = 1000 * (now - request.enqueued)
        request.future.set_exception(TimeoutError(
            f"{request.prepared.source}: waited {waited:.1f} ms in the batcher's queue, past its "
            f"timeout of {1000 * (request.deadline - request.enqueued):.1f} ms"))  # type: ignore[operator]
        self._count("timeouts")

    def _run(self, batch: list[_Request]) -> None:
        now = time.perf_counter()
        live = []
        for request in batch:
            if not request.future.set_running_or_notify_cancel():
                continue  # the caller cancelled it
            if request.deadline is not None and now > request.deadline:  # expired since it was taken
                self._time_out(request, now)
                continue
            live.append(request)
        if not live:
            return
        with self._cond:
            self._sizes[len(live)] += 1
            self._waits.extend(now - r.enqueued for r in live)
        try:
            results = self.pipeline.run_guarded([r.prepared for r in live])
        except EngineUnhealthyError as exc:  # sticky: this batch, the queue and later submits fail
            self._become_unhealthy(exc, live)
            return
        except BaseException as exc:  # the batch's callers get it; the batcher keeps serving
            for request in live:
                request.future.set_exception(exc)
            return
        for request, result in zip(live, results):
            request.future.set_result(result)
        self._count("served", len(live))

    def _become_unhealthy(self, exc: EngineUnhealthyError, live: list[_Request]) -> None:
        with self._cond:
            self._unhealthy = exc
            queued, self._queue = list(self._queue), deque()
            self._cond.notify_all()
        for request in live:
            request.future.set_exception(exc)
        for request in queued:  # outside the lock: a future's callbacks run here
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(exc)

    def _count(self, what: str, n: int = 1) -> None:
        with self._cond:
            self._counts[what] += n


def _timeout_problem(timeout_ms: float | None) -> str | None:
    if timeout_ms is None:
        return None
    problem = number_problem("timeout_ms", timeout_ms, 0, MAX_TIMEOUT_MS, above_low=True, unit=" ms")
    return None if problem is None else problem + " (None: no timeout)"
