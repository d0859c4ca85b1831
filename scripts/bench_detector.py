"""Benchmark: detector (or facepose) pipeline throughput by batch size, split by stage.

    batchforge export detector                       # once: artifacts/detector/
    python scripts/bench_detector.py [--model detector] [--output-dir artifacts] \\
        [--batch-sizes 1,4,8] [--images 32] [--repeats 3] [--threads 2]

Runs the runtime pipeline on deterministic synthetic images of mixed sizes (decoded already,
so file I/O is left out) and times its three stages separately: preprocess (conversion rules +
letterbox + normalisation), infer (the engine, chunked to the profile max), postprocess (decode,
threshold, NMS, letterbox inverse; poses and landmarks for facepose). Prints images/s and each
stage's share of the time, side by side for every batch size (medians of ``--repeats`` runs).
Absolute numbers depend on the machine; compare the ratios. Timings are never asserted in tests.
"""

from __future__ import annotations

import argparse
import statistics
import time

from batchforge.export.samples import SEED_SAMPLES, generate
from batchforge.runtime.batching import chunk_slices, stack_feeds
from batchforge.runtime.loading import load_pipeline


def run_once(pipeline, images, batch: int) -> dict[str, float]:
    """Seconds spent in each stage for all images at one batch size."""
    spent = {"preprocess": 0.0, "infer": 0.0, "postprocess": 0.0}
    for part in chunk_slices(len(images), batch):
        start = time.perf_counter()
        prepared = [pipeline.prepare(image, name) for name, image in images[part]]
        feed = stack_feeds([p.feed for p in prepared])
        mid = time.perf_counter()
        outputs = pipeline.infer(feed)
        end = time.perf_counter()
        pipeline.postprocess(outputs, prepared)
        spent["preprocess"] += mid - start
        spent["infer"] += end - mid
        spent["postprocess"] += time.perf_counter() - end
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="detector")
    parser.add_argument("--output-dir", default="artifacts")
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="onnxruntime")
    args = parser.parse_args(argv)
    pipeline = load_pipeline(args.model, output_dir=args.output_dir, backend=args.backend,
                             threads=args.threads)
    family = pipeline.family
    images = generate(family, args.images, SEED_SAMPLES)
    sizes = sorted({image.shape[:2] for _, image in images})
    print(f"{args.model} ({family}), {len(images)} images of {len(sizes)} sizes, {args.threads} threads, "
          f"{args.backend}, profile max {pipeline.max_batch}")
    print(f"{'batch':>5} {'images/s':>9} {'ms/image':>9} {'preprocess':>11} {'infer':>7} {'postprocess':>12}"
          f" {'detections/image':>17}")
    with pipeline:
        run_once(pipeline, images[:2], 1)  # warm-up
        count = sum(len(r) for r in pipeline([image for _, image in images]))
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            runs = [run_once(pipeline, images, batch) for _ in range(args.repeats)]
            median = {stage: statistics.median(r[stage] for r in runs) for stage in runs[0]}
            total = sum(median.values())
            shares = " ".join(f"{median[s] / total:>{w}.0%}" for s, w in
                              (("preprocess", 11), ("infer", 7), ("postprocess", 12)))
            print(f"{batch:>5} {len(images) / total:>9.1f} {total / len(images) * 1e3:>9.1f} {shares}"
                  f" {count / len(images):>17.1f}")
    print("batches above the profile max are chunked to it; shares are of the pipeline's own time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
