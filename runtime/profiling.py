"""Stage profiling of a pipeline run: where the time goes, which stage limits throughput.

Every stage (read, decode, preprocess, infer, postprocess, write) adds its busy seconds and item
count from whichever thread it runs on; waits between stages are counted apart. The bottleneck
is the stage with the most busy seconds per lane: read, decode and preprocess share ``workers``
lanes (one when they run inline), every other stage has one.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

STAGES = ("read", "decode", "preprocess", "infer", "postprocess", "write")
WORKER_STAGES = ("read", "decode", "preprocess")
# waits: the inference thread waiting for prepared inputs, post-processing waiting for inference,
# and inference waiting because post-processing/writing is a full queue behind
WAITS = ("infer_waits_for_input", "postprocess_waits_for_infer", "infer_waits_for_queue_space")


class StageProfile:
    """Thread-safe per-stage totals of one run."""

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers
        self._lock = threading.Lock()
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.items = dict.fromkeys(STAGES, 0)
        self.waits = dict.fromkeys(WAITS, 0.0)
        self.results = 0
        self._start = time.perf_counter()
        self._end: float | None = None

    def add(self, stage: str, seconds: float, items: int = 1) -> None:
        with self._lock:
            self.seconds[stage] += seconds
            self.items[stage] += items

    def wait(self, kind: str, seconds: float) -> None:
        with self._lock:
            self.waits[kind] += seconds

    @contextlib.contextmanager
    def stage(self, stage: str, items: int = 1) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start, items)

    def finish(self, results: int) -> None:
        """Marks the end of the run (``results`` records produced)."""
        self.results = results
        self._end = time.perf_counter()

    def summary(self) -> dict[str, Any]:
        """Per stage: total seconds, items, ms per item; waits; wall seconds, items/s, bottleneck."""
        wall = (self._end or time.perf_counter()) - self._start
        lanes = {s: max(1, self.workers) if s in WORKER_STAGES else 1 for s in STAGES}
        worker_load = sum(self.seconds[s] for s in WORKER_STAGES) / max(1, self.workers)
        loads = {"read+decode+preprocess": worker_load,
                 **{s: self.seconds[s] / lanes[s] for s in STAGES if s not in WORKER_STAGES}}
        bottleneck = max(loads, key=loads.__getitem__)
        if bottleneck == "read+decode+preprocess":
            bottleneck = max(WORKER_STAGES, key=self.seconds.__getitem__)
        return {
            "workers": self.workers,
            "wall_s": round(wall, 6),
            "results": self.results,
            "items_per_s": round(self.results / wall, 3) if wall > 0 else None,
            "stages": {s: {"total_s": round(self.seconds[s], 6), "items": self.items[s],
                           "per_item_ms": round(1000 * self.seconds[s] / self.items[s], 3) if self.items[s] else None}
                       for s in STAGES},
            "waits_s": {k: round(v, 6) for k, v in self.waits.items()},
            "bottleneck": bottleneck,
        }


def format_table(summary: dict[str, Any]) -> str:
    """A short text table of a ``StageProfile.summary()`` (for stderr)."""
    lines = [f"{'stage':12} {'total s':>9} {'items':>6} {'ms/item':>9}"]
    for stage, row in summary["stages"].items():
        per_item = "-" if row["per_item_ms"] is None else f"{row['per_item_ms']:.2f}"
        lines.append(f"{stage:12} {row['total_s']:9.3f} {row['items']:6d} {per_item:>9}")
    waits = ", ".join(f"{k} {v:.3f} s" for k, v in summary["waits_s"].items())
    lines.append(f"waits: {waits}")
    lines.append(f"{summary['results']} results in {summary['wall_s']:.3f} s = {summary['items_per_s']} items/s "
                 f"with {summary['workers']} worker(s); bottleneck: {summary['bottleneck']}")
    return "\n".join(lines)
