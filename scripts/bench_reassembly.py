"""Ptycho reassembly: peak memory and time of batched stitching vs a per-patch loop.

Each (method, patch count) runs in a fresh subprocess so its peak RSS (``ru_maxrss``) is its
own. Patches (complex64, P x P) arrive in chunks from a seeded generator, as they do from
the engine in ``PtychoPipeline.reconstruct``; they are placed at uniform float64 offsets on a
fixed object, so the canvas is the same at every count and only the patch count grows.
Only the stitching is timed (generation is excluded for every method).

Methods:
  batched    ObjectCanvas.add per chunk (the runtime path, ``--batch`` patches at a time)
  loop       a straightforward per-patch loop: crop, Fourier shift (fft2/ifft2), add
  unbatched  every patch materialised first, then one reassemble call (what ran out of
             memory at scale); only up to ``--unbatched-max`` patches

    python scripts/bench_reassembly.py [--counts 1000,10000,100000] [--subpixel fourier] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from batchforge.runtime.post.ptycho import ObjectCanvas, reassemble_patches

CHUNK = 1024  # patches per generated chunk (the engine's inference chunks)


def chunks(count: int, args: argparse.Namespace):
    """Seeded (patches, offsets) chunks; offsets keep every crop inside the object."""
    limit = args.object - args.patch - 1
    for start in range(0, count, CHUNK):
        n = min(CHUNK, count - start)
        rng = np.random.default_rng([args.seed, start])
        pairs = rng.standard_normal((n, args.patch, args.patch, 2), dtype=np.float32)
        patches = pairs.view(np.complex64)[..., 0]
        yield patches, rng.uniform(0, limit, (n, 2))


def per_patch_loop(canvas_sum, canvas_weight, patch, offset, args) -> None:
    """The straightforward version: one patch at a time, same placement rule."""
    start = (args.patch - args.crop) // 2
    if args.subpixel == "round":
        y, x = (int(v) for v in np.floor(offset + 0.5))
    else:
        y, x = (int(v) for v in np.floor(offset))
        fy, fx = offset - np.floor(offset)
        if fy or fx:
            freq = np.fft.fftfreq(args.patch)
            ramp = np.exp(-2j * np.pi * (fy * freq[:, None] + fx * freq[None, :]))
            patch = np.fft.ifft2(np.fft.fft2(patch) * ramp)
    y, x = y + start, x + start
    crop = patch[start : start + args.crop, start : start + args.crop]
    canvas_sum[y : y + args.crop, x : x + args.crop] += crop
    canvas_weight[y : y + args.crop, x : x + args.crop] += 1.0


def worker(args: argparse.Namespace) -> dict[str, float]:
    shape = (args.object, args.object)
    seconds = 0.0
    if args.worker == "batched":
        canvas = ObjectCanvas(shape, args.patch, args.crop, batch_size=args.batch, subpixel=args.subpixel)
        for patches, offsets in chunks(args.count, args):
            t0 = time.perf_counter()
            canvas.add(patches, offsets)
            seconds += time.perf_counter() - t0
        obj = canvas.result().object
    elif args.worker == "loop":
        total, weight = np.zeros(shape, np.complex128), np.zeros(shape)
        for patches, offsets in chunks(args.count, args):
            t0 = time.perf_counter()
            for patch, offset in zip(patches, offsets):
                per_patch_loop(total, weight, patch, offset, args)
            seconds += time.perf_counter() - t0
        obj = np.where(weight > 0, total / np.maximum(weight, 1), 0).astype(np.complex64)
    else:
        parts = list(chunks(args.count, args))
        patches = np.concatenate([p for p, _ in parts])
        offsets = np.concatenate([o for _, o in parts])
        t0 = time.perf_counter()
        obj = reassemble_patches(patches, offsets, args.crop, object_shape=shape, batch_size=len(patches),
                                 subpixel=args.subpixel).object
        seconds = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"seconds": seconds, "peak_rss_mib": peak_mib, "checksum": float(np.abs(obj).sum())}


def measure(method: str, count: int, args: argparse.Namespace) -> dict[str, float]:
    """Fastest of ``--repeats`` fresh processes (the machine is shared), and its largest peak RSS."""
    runs = [_measure_once(method, count, args) for _ in range(args.repeats)]
    return {"seconds": min(r["seconds"] for r in runs), "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "checksum": runs[0]["checksum"]}


def _measure_once(method: str, count: int, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--worker", method, "--count", str(count), "--object", str(args.object),
           "--patch", str(args.patch), "--crop", str(args.crop), "--batch", str(args.batch),
           "--subpixel", args.subpixel, "--seed", str(args.seed)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1000,10000,100000")
    parser.add_argument("--object", type=int, default=1024, help="object side in pixels")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256, help="stitch_batch_size")
    parser.add_argument("--subpixel", default="fourier", choices=("fourier", "round"))
    parser.add_argument("--unbatched-max", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="processes per cell; fastest time kept")
    parser.add_argument("--worker", choices=("batched", "loop", "unbatched"), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    counts = [int(c) for c in args.counts.split(",")]
    print(f"object {args.object}x{args.object}, patches {args.patch}x{args.patch} complex64, "
          f"crop {args.crop}, stitch batch {args.batch}, subpixel {args.subpixel}; each cell a fresh process")
    print(f"{'patches':>8} | {'batched s':>9} {'loop s':>8} {'loop/batched':>12} | {'batched RSS':>11} "
          f"{'loop RSS':>9} {'unbatched RSS':>13} (MiB)")
    for count in counts:
        batched, loop = measure("batched", count, args), measure("loop", count, args)
        if abs(batched["checksum"] - loop["checksum"]) > 1e-4 * loop["checksum"]:
            raise SystemExit(f"batched and loop objects differ at {count} patches: {batched} vs {loop}")
        unbatched = (f"{measure('unbatched', count, args)['peak_rss_mib']:13.0f}"
                     if count <= args.unbatched_max else f"{'(skipped)':>13}")
        print(f"{count:8d} | {batched['seconds']:9.2f} {loop['seconds']:8.2f} "
              f"{loop['seconds'] / batched['seconds']:12.2f} | {batched['peak_rss_mib']:11.0f} "
              f"{loop['peak_rss_mib']:9.0f} {unbatched}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
