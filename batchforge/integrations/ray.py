"""Ray Data scale-out (``pip install 'batchforge[ray]'``): the same pipeline in Ray actors.

``BatchforgePredictor`` is the callable class for ``Dataset.map_batches``: its constructor loads
(and verifies) the pipeline once per actor, from an artifacts folder or a deployment bundle; each
call takes a batch of encoded image bytes (column ``bytes``, named by a ``source`` or ``path``
column) or of file paths (column ``path``) and returns the result columns ``source``, ``ok`` and
``record`` (the JSONL record as a JSON string; error records included, one per row, in order)::

    ds = ray.data.read_binary_files("s3://bucket/images/", include_paths=True)
    ds = ds.map_batches(BatchforgePredictor, fn_constructor_kwargs={"model": "reid_resnet50",
                        "output_dir": "/shared/artifacts"}, batch_size=8,
                        compute=ray.data.ActorPoolStrategy(size=4))

``batchforge run MODEL --ray`` does this over its ``--input`` files and writes the same JSONL as a
local run, in input order, checking that every input comes back exactly once.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from batchforge.errors import BatchforgeError, UsageError
from batchforge.families import get_family
from batchforge.runtime.backends import Backend
from batchforge.runtime.images import decode_image
from batchforge.runtime.loading import load_pipeline
from batchforge.runtime.pipelines import Pipeline
from batchforge.runtime.results import jsonable

GPU_BACKENDS = {Backend.TENSORRT.value, Backend.ONNXRUNTIME_CUDA.value, Backend.ONNXRUNTIME_TRT.value}


class BatchforgePredictor:
    """A pipeline in a Ray actor. Arguments are ``load_pipeline``'s (``model`` or ``bundle``,
    ``output_dir``, ``precision``, ``backend``, ...), plus ``batch_size`` for inference batches."""

    def __init__(self, model: str | None = None, *, batch_size: int | None = None, **load_kwargs: Any) -> None:
        self.pipeline = load_pipeline(model, **load_kwargs).activate()
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "bytes" in batch:  # read_binary_files(include_paths=True) gives bytes + path
            names = batch.get("source", batch.get("path", [f"item{i}" for i in range(len(batch["bytes"]))]))
            results = self._encoded([str(n) for n in names], list(batch["bytes"]))
        elif "path" in batch:
            results = list(self.pipeline.run_sources([str(p) for p in batch["path"]], self.batch_size))
        else:
            raise UsageError(f"a batch needs a 'path' or a 'bytes' column, got columns {sorted(batch)}")
        records = [r.to_record() for r in results]
        out = {"source": np.array([r["source"] for r in records], dtype=object),
               "ok": np.array([bool(r["ok"]) for r in records]),
               "record": np.array([json.dumps(jsonable(r), allow_nan=False) for r in records], dtype=object)}
        if "index" in batch:
            out["index"] = np.asarray(batch["index"])
        return out

    def _encoded(self, names: list[str], blobs: list[bytes]) -> list[Any]:
        """Results for encoded images: the pipeline's own batching and error records, with each
        image decoded from its bytes (in order) instead of read from a file."""
        if not get_family(self.pipeline.family).image_input:
            raise UsageError(f"a 'bytes' column holds encoded images; {self.pipeline.family} models read files",
                             hint="give a 'path' column instead")
        pending = iter(blobs)
        self.pipeline.load = lambda source: decode_image(bytes(next(pending)), source=source,  # type: ignore[method-assign]
                                                         max_pixels=self.pipeline.max_pixels)
        try:
            return list(self.pipeline.run_sources(names, self.batch_size))
        finally:
            del self.pipeline.load


def ray_records(pipeline: Pipeline, sources: list[Path], load_kwargs: dict[str, Any], *,
                address: str | None = None, concurrency: int | None = None,
                batch_size: int | None = None,
                predictor: type[BatchforgePredictor] = BatchforgePredictor) -> Iterator[dict[str, Any]]:
    """The records of ``sources`` computed by ``concurrency`` Ray actors, in input order.

    Each input comes back exactly once or this raises (a lost or duplicated input is an error,
    never a silently short file). Actors that die are restarted and their batches retried by Ray.
    Starts (and stops) a local Ray unless one is running or ``address`` names a cluster.
    ``predictor`` may be a subclass of BatchforgePredictor.
    """
    import ray
    import ray.data

    if pipeline.place_side_outputs.__func__ is not Pipeline.place_side_outputs:  # type: ignore[attr-defined]
        raise UsageError(f"--ray writes JSONL records only; {pipeline.family} models also write side outputs",
                         hint="run this model without --ray")
    if concurrency is not None and concurrency < 1:
        raise UsageError(f"--concurrency must be >= 1, got {concurrency}")
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        size = batch_size or pipeline.max_batch
        dataset = ray.data.from_items([{"index": i, "path": str(s)} for i, s in enumerate(sources)])
        # Ray Data's actor pools restart a dead actor and retry its batch (max_restarts and
        # max_task_retries default to -1 there); the order and count checks below hold it to that
        dataset = dataset.map_batches(
            predictor, fn_constructor_kwargs={**load_kwargs, "batch_size": size}, batch_size=size,
            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=concurrency or 1),
            num_gpus=1 if load_kwargs.get("backend") in GPU_BACKENDS else 0)
        expected = 0
        for row in dataset.iter_rows():
            index = int(row["index"])
            if index != expected:
                raise BatchforgeError(f"Ray returned input {index} ({sources[index]}) where input {expected} was "
                                      "expected: an input was lost or duplicated; no output was written")
            expected += 1
            yield json.loads(row["record"])
        if expected != len(sources):
            raise BatchforgeError(f"Ray returned {expected} of {len(sources)} inputs; no output was written")
    finally:
        if started:
            ray.shutdown()


def cmd_run_ray(args: argparse.Namespace) -> int:
    """``batchforge run ... --ray``: ``cmd_run`` with Ray actors doing the inference."""
    from batchforge.runtime.commands import cmd_run

    def executor(pipeline: Pipeline, sources: list[Path], load_kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        return ray_records(pipeline, sources, load_kwargs, address=args.ray_address,
                           concurrency=args.concurrency, batch_size=args.batch_size)

    return cmd_run(args, executor=executor)
