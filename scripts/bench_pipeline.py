#!/usr/bin/env python
"""End-to-end runtime vs engine-only throughput, host-only throughput, the DynamicBatcher against
offline batching, and peak RSS of an ensemble run: ratios measured side by side in one run.

Sections (``--sections``, default all):
- ``e2e``: per model, the same JPEG inputs (reid_resnet50 at 640x480, detector at 1280x720) through
  ``Pipeline.run_sources`` + ``JsonlWriter`` (what `run` does) at each ``--workers`` value, against
  engine-only: the runner on the same inputs preprocessed beforehand, same batches. Variants are
  interleaved and repeated; medians are reported, with the stage profile of the last e2e run.
- ``host``: the same end-to-end run with a zero-cost stub engine (it replays real outputs), at
  workers 0, 1 and 2: what the host side can feed.
- ``batcher``: 8 client threads x N requests through ``DynamicBatcher`` against offline batching of
  the same images at the same max batch (both preprocess): throughput ratio, latency p50/p99 and
  the acceptance limit max_delay + 2 x one batch's time.
- ``rss``: peak RSS of `batchforge run reid_ensemble --batch-size 16` in a child process (needs
  the three ensemble members exported).

Usage: python scripts/bench_pipeline.py --output-dir /tmp/art [--backend onnxruntime-cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from batchforge.runtime import DynamicBatcher, load_pipeline
from batchforge.runtime.batching import chunk_slices, stack_feeds
from batchforge.runtime.images import read_image
from batchforge.runtime.jsonl import JsonlWriter
from batchforge.runtime.profiling import format_table
from batchforge.runtime.runners.base import Runner

SIZES = {"reid_resnet50": (480, 640), "detector": (720, 1280)}  # (height, width) of the JPEGs


def make_jpegs(folder: Path, count: int, height: int, width: int, seed: int = 0) -> list[Path]:
    """Photo-like JPEGs (smooth gradients, shapes and noise, quality 90) so decode costs what it would."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for i in range(count):
        base = np.stack([(xx / width) * rng.uniform(80, 255), (yy / height) * rng.uniform(80, 255),
                         np.full_like(xx, rng.uniform(0, 255))], axis=2)
        image = (base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        for _ in range(6):
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.circle(image, centre, int(rng.integers(10, height // 4)), rng.integers(0, 255, 3).tolist(), -1)
        path = folder / f"img{i:03d}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(variants: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median seconds of each variant, run in turn ``repeats`` times after one warm-up round."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for key, fn in variants.items():
            times[key].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def end_to_end(pipeline: Any, sources: list[Path], batch: int, workers: int, out: Path) -> None:
    with JsonlWriter(out) as writer:
        for result in pipeline.run_sources(sources, batch, workers=workers):
            writer.write(result)


def engine_only(pipeline: Any, sources: list[Path], batch: int) -> Any:
    """A callable running the pipeline's inference on the inputs preprocessed beforehand."""
    prepared = [pipeline.prepare(read_image(s), str(s)) for s in sources]
    feeds = [stack_feeds([p.feed for p in prepared[part]]) for part in chunk_slices(len(prepared), batch)]
    return lambda: [pipeline.infer(feed) for feed in feeds]


class ReplayRunner(Runner):
    """A zero-cost engine: returns outputs recorded from the real one (sliced to the batch)."""

    backend = "replay"

    def __init__(self, real: Runner, outputs: dict[str, np.ndarray]) -> None:
        super().__init__(name=f"replay:{real.name}", profile=real.profile)
        self.real, self.outputs = real, outputs

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.outputs)

    def activate_impl(self) -> None: ...

    def deactivate_impl(self) -> None: ...

    def input_metadata_impl(self) -> Any:
        return self.real.input_metadata()

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(next(iter(feed.values())))
        return {k: v[:count] for k, v in self.outputs.items()}


def bench_e2e(args: argparse.Namespace, model: str, work: Path) -> dict[str, Any]:
    sources = make_jpegs(work / model, args.count, *SIZES[model])
    workers = [int(w) for w in args.workers.split(",")]
    with load_pipeline(model, output_dir=args.output_dir, backend=args.backend, threads=args.threads) as pipe:
        variants = {"engine": engine_only(pipe, sources, args.batch_size)}
        for w in workers:
            variants[f"workers={w}"] = lambda w=w: end_to_end(pipe, sources, args.batch_size, w, work / "out.jsonl")
        seconds = interleaved(variants, args.repeats)
        end_to_end(pipe, sources, args.batch_size, max(workers), work / "out.jsonl")
        profile = pipe.stats()
        row: dict[str, Any] = {"model": model, "inputs": len(sources), "image": "x".join(map(str, SIZES[model][::-1])),
                               "engine_ips": len(sources) / seconds["engine"]}
        for w in workers:
            row[f"workers_{w}_ips"] = len(sources) / seconds[f"workers={w}"]
            row[f"workers_{w}_over_engine"] = seconds["engine"] / seconds[f"workers={w}"]
        row["profile"] = profile
        if "host" in args.sections:
            row["host"] = bench_host(args, pipe, sources, work)
    return row


def bench_host(args: argparse.Namespace, pipe: Any, sources: list[Path], work: Path) -> dict[str, Any]:
    prepared = [pipe.prepare(read_image(s), str(s)) for s in sources[: args.batch_size]]
    outputs = pipe.runner.infer(stack_feeds([p.feed for p in prepared]))
    real = pipe.runner
    pipe.runner = ReplayRunner(real, outputs).activate()
    try:
        seconds = interleaved({f"workers={w}": lambda w=w: end_to_end(pipe, sources, args.batch_size, w,
                                                                          work / "host.jsonl")
                               for w in (0, 1, 2)}, args.repeats)
    finally:
        pipe.runner = real
    row = {f"workers_{w}_ips": len(sources) / seconds[f"workers={w}"] for w in (0, 1, 2)}
    row["workers_2_over_1"] = seconds["workers=1"] / seconds["workers=2"]
    return row


def bench_batcher(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model, clients, per_client, batch = "reid_resnet50", 8, args.requests, args.batch_size
    sources = make_jpegs(work / "batcher", 16, *SIZES[model], seed=1)
    decoded = [read_image(s) for s in sources]
    images = [decoded[i % len(decoded)] for i in range(clients * per_client)]
    with load_pipeline(model, output_dir=args.output_dir, backend=args.backend, threads=args.threads) as pipe:
        def offline() -> list[Any]:
            return [r for part in chunk_slices(len(images), batch) for r in pipe(images[part])]

        expected = offline()  # also the warm-up
        offline_s = statistics.median(timed(offline) for _ in range(max(1, args.repeats // 2)))
        batch_s = offline_s / len(range(0, len(images), batch))
        latencies: list[float] = []
        lock = threading.Lock()

        def client(index: int) -> list[Any]:
            results = []
            for i in range(index * per_client, (index + 1) * per_client):
                start = time.perf_counter()
                results.append(batcher.submit(images[i], str(i)).result(timeout=600))
                with lock:
                    latencies.append(time.perf_counter() - start)
            return results

        with DynamicBatcher(pipe, max_batch=batch, max_delay_ms=args.max_delay_ms, max_queue=clients * per_client) \
                as batcher, ThreadPoolExecutor(clients) as pool:
            start = time.perf_counter()
            served = [r for part in pool.map(client, range(clients)) for r in part]
            batcher_s = time.perf_counter() - start
            stats = batcher.stats()
    order = sorted(range(len(served)), key=lambda k: int(served[k].source))
    worst = max(float(np.abs(served[k].embedding - expected[int(served[k].source)].embedding).max()) for k in order)
    p50, p99 = np.percentile(np.asarray(latencies) * 1000, [50, 99])
    limit = args.max_delay_ms + 2 * 1000 * batch_s
    return {"clients": clients, "requests": len(images), "max_batch": batch, "max_delay_ms": args.max_delay_ms,
            "offline_ips": len(images) / offline_s, "batcher_ips": len(images) / batcher_s,
            "batcher_over_offline": offline_s / batcher_s, "latency_ms_p50": float(p50), "latency_ms_p99": float(p99),
            "one_batch_ms": 1000 * batch_s, "p99_limit_ms": limit, "p99_within_limit": bool(p99 <= limit),
            "max_abs_diff_vs_offline": worst, "batch_sizes": stats["batch_sizes"],
            "queue_wait_ms": stats["queue_wait_ms"]}


def bench_rss(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    members = ("reid_resnet50", "reid_efficientnet_b3", "reid_vit_b_16")
    missing = [m for m in members if not (Path(args.output_dir) / m / "model.fp32.onnx").is_file()]
    if missing:
        return {"skipped": f"ensemble members not exported: {missing}"}
    sources = make_jpegs(work / "rss", 32, 480, 640, seed=2)
    command = [sys.executable, "-m", "batchforge", "run", "reid_ensemble", "--input", str(sources[0].parent),
               "--output", str(work / "rss.jsonl"), "--output-dir", args.output_dir, "--backend", args.backend,
               "--batch-size", "16", "--threads", str(args.threads)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(command, capture_output=True, text=True)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"exit": proc.returncode, "peak_rss_mib": peak_kib / 1024,
            "note": "ru_maxrss of the children so far" if before else "ru_maxrss of the child",
            "stderr_tail": proc.stderr.strip().splitlines()[-1:] if proc.returncode else []}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="artifacts", help="where the zoo artifacts are")
    parser.add_argument("--models", default="reid_resnet50,detector")
    parser.add_argument("--backend", default="onnxruntime-cpu")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default: 2)")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--count", type=int, default=64, help="JPEG inputs per model (default: 64)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=50, help="batcher: requests per client (default: 50)")
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    parser.add_argument("--sections", default="e2e,host,batcher,rss")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    args.sections = set(args.sections.split(","))
    report: dict[str, Any] = {"backend": args.backend, "threads": args.threads, "batch_size": args.batch_size,
                              "repeats": args.repeats, "e2e": []}
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        work = Path(tmp)
        if args.sections & {"e2e", "host"}:
            for model in args.models.split(","):
                row = bench_e2e(args, model, work)
                report["e2e"].append(row)
                ratios = ", ".join(f"workers {k.split('_')[1]}: {v:.2f}" for k, v in row.items()
                                   if k.endswith("_over_engine"))
                print(f"{model} {row['image']} JPEG: engine {row['engine_ips']:.1f} items/s; end-to-end / engine "
                      f"{ratios}", flush=True)
                if "host" in row:
                    host = row["host"]
                    print(f"  host only (stub engine): workers 0/1/2 {host['workers_0_ips']:.1f} / "
                          f"{host['workers_1_ips']:.1f} / {host['workers_2_ips']:.1f} items/s "
                          f"(2 over 1: {host['workers_2_over_1']:.2f})", flush=True)
                print("  " + format_table(row["profile"]).replace("\n", "\n  "), flush=True)
        if "batcher" in args.sections:
            b = report["batcher"] = bench_batcher(args, work)
            print(f"batcher {b['clients']} clients x {b['requests'] // b['clients']}: {b['batcher_ips']:.1f} vs "
                  f"offline "
                  f"{b['offline_ips']:.1f} items/s ({b['batcher_over_offline']:.2f}); latency p50 "
                  f"{b['latency_ms_p50']:.0f} ms, p99 {b['latency_ms_p99']:.0f} ms (limit {b['p99_limit_ms']:.0f} ms); "
                  f"batch sizes {b['batch_sizes']}; max |diff| vs offline {b['max_abs_diff_vs_offline']:.1e}",
                  flush=True)
        if "rss" in args.sections:
            r = report["rss"] = bench_rss(args, work)
            print("run reid_ensemble --batch-size 16: " + (r["skipped"] if "skipped" in r else
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB (exit {r['exit']})"), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
