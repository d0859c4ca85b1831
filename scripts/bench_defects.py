"""Benchmark of the defects pass (runtime.post.anomaly) on a 1024x1024 anomaly map.

    python scripts/bench_defects.py [--size 1024] [--repeats 50] [--threads 2]

The map is deterministic: smooth low-level background noise plus scratches, blobs and a patch
of high values, so every step has work (about 30 components, several merged, some filtered).
Prints the median time of each step alone (every other step off) and of the full pass with
every step on, each also as a ratio to the smoothing step alone; the issue's target for the
full pass is <= 10 ms on the project's CPU box. Timings are never asserted in tests.
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np

from batchforge.runtime.post.anomaly import DefectsOptions, find_defects

TARGET_MS = 10.0

FULL = DefectsOptions(
    border_ignore_px=8, smoothing="gaussian", smoothing_ksize=5, hysteresis_high=1.3, hysteresis_low=1.0,
    connectivity=8, min_area=16, max_area=200_000, max_aspect_ratio=12.0, min_solidity=0.1,
    merge_distance_px=6.0, max_regions=16,
)
THRESHOLD = {"hysteresis_high": 1.3, "hysteresis_low": 1.0}
STEPS = {
    "threshold + components": DefectsOptions(**THRESHOLD),
    "+ gaussian smoothing 5x5": DefectsOptions(**THRESHOLD, smoothing="gaussian", smoothing_ksize=5),
    "+ median smoothing 5x5": DefectsOptions(**THRESHOLD, smoothing="median", smoothing_ksize=5),
    "+ border ignore": DefectsOptions(**THRESHOLD, border_ignore_px=8),
    "+ shape filters (area, aspect)": DefectsOptions(**THRESHOLD, min_area=16, max_aspect_ratio=12.0),
    "+ solidity filter": DefectsOptions(**THRESHOLD, min_solidity=0.1),
    "+ merge nearby": DefectsOptions(**THRESHOLD, merge_distance_px=6.0),
    "+ max_regions": DefectsOptions(**THRESHOLD, max_regions=16),
    "FULL PASS (every step on)": FULL,
}


def synthetic_map(size: int, seed: int = 0) -> np.ndarray:
    """A deterministic (size, size) float32 map with ~30 defects on a noisy background."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0.0, 1.0, (size, size)).astype(np.float32), (0, 0), 6.0)
    amap = 0.6 + 4.0 * noise
    layer = np.zeros((size, size), np.float32)
    for _ in range(12):
        p0 = tuple(int(v) for v in rng.integers(0, size, 2))
        p1 = tuple(int(v) for v in np.clip(np.array(p0) + rng.integers(-150, 150, 2), 0, size - 1))
        cv2.line(layer, p0, p1, float(rng.uniform(1.5, 3.0)), int(rng.integers(2, 6)))
    for _ in range(16):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        cv2.circle(layer, centre, int(rng.integers(3, 25)), float(rng.uniform(1.4, 3.0)), -1)
    y, x = rng.integers(0, size - 80, 2)
    layer[y : y + 60, x : x + 80] = 2.0
    return np.maximum(amap, cv2.GaussianBlur(layer, (0, 0), 2.0)).astype(np.float32)


def median_ms(amap: np.ndarray, opts: DefectsOptions, repeats: int) -> tuple[float, int]:
    find_defects(amap, opts)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        regions = find_defects(amap, opts)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times), len(regions)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2, help="OpenCV threads (default: 2)")
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    amap = synthetic_map(args.size)
    smoothing_only, _ = median_ms(amap, DefectsOptions(smoothing="gaussian", smoothing_ksize=5), args.repeats)
    print(f"defects pass on a {args.size}x{args.size} float32 map, median of {args.repeats} runs, "
          f"{args.threads} OpenCV threads")
    print(f"{'step':34} {'ms':>8} {'x smoothing':>12} {'regions':>8}")
    print(f"{'gaussian smoothing alone':34} {smoothing_only:8.2f} {1.0:12.2f} {'-':>8}")
    full = 0.0
    for name, opts in STEPS.items():
        ms, count = median_ms(amap, opts, args.repeats)
        print(f"{name:34} {ms:8.2f} {ms / smoothing_only:12.2f} {count:8d}")
        full = ms
    verdict = "within" if full <= TARGET_MS else "ABOVE"
    print(f"full pass: {full:.2f} ms, {verdict} the {TARGET_MS:g} ms target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
