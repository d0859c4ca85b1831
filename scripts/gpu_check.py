"""The whole GPU check in one call (run it through scripts/gpu_check.sh on a GPU box).

Steps: doctor; export + calibration data + FP16/INT8 for the zoo (when missing); a strongly typed
TensorRT build of every zoo model at each precision (one shared timing cache); the parity gate
on TensorRT; Polygraphy's own comparison (`polygraphy run model.P.onnx --trt --onnxrt`, our
raw tolerances) as an independent cross-check of our TensorRT path; the gpu-marked tests; a
TensorRT vs ONNX Runtime bench; a short table last. Polygraphy lives only in this script, never
in runtime/.
Without TensorRT, cuda-python or a GPU it says what is missing and exits 2 after doctor.

Exit: 0 everything passed, 1 a build, parity check, test or bench failed, 2 could not run.
Timings are ratios within this one run; compare absolute numbers only on the same GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCHFORGE = [sys.executable, "-m", "batchforge"]
CALIBRATION_SAMPLES = 32
SEED_CALIBRATION = 4000
BENCH_REPEATS = 20


def sh(cmd: list[str], log: Path, *, check: bool = False) -> tuple[int, float]:
    """Runs a command with output shown and appended to ``log``; returns (exit code, seconds)."""
    print("$ " + " ".join(cmd[2:] if cmd[:2] == BATCHFORGE[:2] else cmd), flush=True)
    start = time.perf_counter()
    with log.open("a", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        fh.write(proc.stdout)
    sys.stdout.write(proc.stdout)
    if check and proc.returncode:
        raise SystemExit(f"gpu_check: `{' '.join(cmd)}` failed with exit {proc.returncode}")
    return proc.returncode, time.perf_counter() - start


def missing_prerequisites() -> list[str]:
    """What this machine lacks for a GPU check, each with how to get it."""
    missing = []
    if shutil.which("nvidia-smi") is None:
        missing.append("NVIDIA driver: nvidia-smi not found (install the NVIDIA driver)")
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("TensorRT: the tensorrt package is not installed "
                       "(`pip install 'batchforge[tensorrt-cu13]'`, or `[tensorrt-cu12]` on a CUDA 12 "
                       "driver; `batchforge doctor` says which)")
    from batchforge.runtime.runners import cuda_util

    if cuda_util.load_cudart() is None:
        missing.append("cuda-python: not installed (`pip install 'batchforge[tensorrt-cu13]'` or "
                       "`[tensorrt-cu12]`, the pair of the installed TensorRT)")
    else:
        count, why = cuda_util.probe_devices()
        if not count:
            missing.append(f"CUDA GPU: none usable ({why})")
    for package in ("torch", "onnx"):
        if importlib.util.find_spec(package) is None:
            missing.append(f"{package}: needed for export and parity (`pip install 'batchforge[export]'`)")
    return missing


def zoo_models() -> list[dict]:
    out = subprocess.run([*BATCHFORGE, "models", "--json"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    return [row for row in json.loads(out) if "ensemble" not in row]


def prepare(models: list[dict], precisions: list[str], out: list[str], work: Path, log: Path) -> None:
    """Exports and derives whatever ONNX the builds need (skips what is already there)."""
    root = Path(out[1])
    missing = [m["name"] for m in models if not (root / m["name"] / "export.json").is_file()]
    if missing:
        sh([*BATCHFORGE, "export", *missing, *out], log, check=True)
    for family in sorted({m["family"] for m in models}):
        target = work / "calib" / family
        if not target.is_dir():
            sh([*BATCHFORGE, "samples", family, "--out", str(target), "--count", str(CALIBRATION_SAMPLES),
                "--seed", str(SEED_CALIBRATION)], log, check=True)
    derived = {"fp16": ("convert", "model.fp16.onnx"), "int8": ("calibrate", "model.int8.onnx")}
    for precision, (command, filename) in derived.items():
        todo = [m["name"] for m in models if not (root / m["name"] / filename).is_file()]
        if todo and precision in precisions:
            sh([*BATCHFORGE, command, *todo, "--data", str(work / "calib"), *out], log, check=True)


def build_all(models: list[dict], precisions: list[str], out: list[str], work: Path,
              log: Path) -> dict[tuple[str, str], dict]:
    results = {}
    for model in models:
        for precision in precisions:
            code, seconds = sh([*BATCHFORGE, "build", model["name"], "--precision", precision, "--backend",
                                "tensorrt", "--timing-cache", str(work / "timing.cache"), *out], log)
            plan = Path(out[1]) / model["name"] / f"engine.{precision}.plan"
            results[(model["name"], precision)] = {
                "build_rc": code, "build_s": seconds,
                "plan_mb": plan.stat().st_size / 1e6 if code == 0 and plan.is_file() else None}
    return results


def parity(precisions: list[str], out: list[str], work: Path, log: Path) -> tuple[int, dict]:
    report = work / "parity_tensorrt.json"
    code, _ = sh([*BATCHFORGE, "parity", "--all", "--backend", "tensorrt", "--precision",
                  ",".join(precisions), "--report", str(report), *out], log)
    statuses = {}
    if report.is_file():
        for row in json.loads(report.read_text())["reports"]:
            statuses[(row["model"], row["precision"])] = row["status"]
    return code, statuses


def bench(models: list[dict], precisions: list[str], output_dir: str,
          built: dict[tuple[str, str], dict]) -> dict[tuple[str, str], dict]:
    """Images/s of the TensorRT runner and of ONNX Runtime (best provider), same inputs and batches."""
    import numpy as np

    from batchforge.runtime.artifacts import ModelArtifacts
    from batchforge.runtime.loading import open_runner

    rows = {}
    for model in models:
        artifacts = ModelArtifacts.at(output_dir, model["name"])
        for precision in precisions:
            if built.get((model["name"], precision), {}).get("build_rc") != 0:
                continue
            spec = artifacts.spec()
            row = {}
            for label, backend in (("trt", "tensorrt"), ("ort", "onnxruntime")):
                try:
                    with open_runner(artifacts, precision=precision, backend=backend, spec=spec) as runner:
                        for batch in (1, runner.profile.max):
                            feed = {t.name: np.random.default_rng(0).normal(
                                size=(batch, *t.item_shape)).astype(t.dtype) for t in spec.inputs}
                            row[f"{label}_b{'1' if batch == 1 else 'max'}"] = _ips(runner, feed, batch)
                except Exception as exc:  # reported in the table, the others still run
                    row[f"{label}_error"] = str(exc).splitlines()[0][:80]
            rows[(model["name"], precision)] = row
    return rows


def _ips(runner, feed, batch: int) -> float:
    runner.infer(feed)  # warm-up (lazy allocations, autotuning)
    times = []
    for _ in range(BENCH_REPEATS):
        start = time.perf_counter()
        runner.infer(feed)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


# Raw-output limits for the Polygraphy cross-check when the manifest records none (its
# "raw_max_rel" row, batchforge/tolerances.py, is used first): fp32 and fp16 as the parity tiers;
# int8 as the detector/facepose int8 raw_max_rel measured there.
POLYGRAPHY_DEFAULT_TOL = {"fp32": 1e-4, "fp16": 2e-2, "int8": 0.25}


def polygraphy_cross_check(models: list[dict], precisions: list[str], output_dir: str, built: dict,
                           log: Path) -> dict[tuple[str, str], str]:
    """``polygraphy run model.P.onnx --trt --onnxrt`` per built plan, with the plan's profile and tolerances.

    Independent of batchforge's TensorRT code: Polygraphy builds its own strongly typed engine
    from the same ONNX and compares every output with ONNX Runtime (pass = each element within
    atol or rtol). Returns "pass"/"FAIL"/"skipped" per (model, precision).
    """
    if shutil.which("polygraphy") is None and importlib.util.find_spec("polygraphy") is None:
        print("polygraphy cross-check skipped: polygraphy is not installed (`pip install polygraphy`)")
        return {}
    results = {}
    for model in models:
        for precision in precisions:
            key = (model["name"], precision)
            folder = Path(output_dir) / model["name"]
            manifest_path = folder / f"engine.{precision}.json"
            if built.get(key, {}).get("build_rc") or not manifest_path.is_file():
                results[key] = "skipped"
                continue
            manifest = json.loads(manifest_path.read_text())
            row = (manifest.get("tolerances") or {}).get("raw_max_rel") or {}
            tol = float(row.get("value", POLYGRAPHY_DEFAULT_TOL[precision]))
            shapes = {k: [f"{i['name']}:{list(i[k])}".replace(" ", "") for i in manifest["inputs"]]
                      for k in ("min", "opt", "max")}
            cmd = [sys.executable, "-m", "polygraphy", "run", str(folder / manifest["onnx_file"]), "--trt",
                   "--onnxrt", "--strongly-typed", "--atol", str(tol), "--rtol", str(tol),
                   "--trt-min-shapes", *shapes["min"], "--trt-opt-shapes", *shapes["opt"],
                   "--trt-max-shapes", *shapes["max"], "--input-shapes", *shapes["opt"]]
            if shutil.which("polygraphy"):
                cmd[:3] = ["polygraphy"]
            results[key] = "pass" if sh(cmd, log)[0] == 0 else "FAIL"
    return results


def print_table(models, precisions, built, statuses, benched, test_rc, cross=None) -> None:
    def num(value, fmt):
        return format(value, fmt) if isinstance(value, (int, float)) else "-"

    print("\n== GPU check summary ==")
    cross = cross or {}
    print(f"{'model':22} {'prec':5} {'build':>7} {'plan MB':>8} {'parity':>9} {'polygr.':>8} {'TRT b1':>8} "
          f"{'TRT bmax':>9} {'ORT bmax':>9} {'TRT/ORT':>8}")
    for model in models:
        for precision in precisions:
            key = (model["name"], precision)
            b, r = built.get(key, {}), benched.get(key, {})
            build = "FAIL" if b.get("build_rc") else num(b.get("build_s"), ".1f") + "s"
            ratio = (r["trt_bmax"] / r["ort_bmax"]) if "trt_bmax" in r and "ort_bmax" in r else None
            print(f"{model['name']:22} {precision:5} {build:>7} {num(b.get('plan_mb'), '.1f'):>8} "
                  f"{statuses.get(key, '-'):>9} {cross.get(key, '-'):>8} {num(r.get('trt_b1'), '.0f'):>8} "
                  f"{num(r.get('trt_bmax'), '.0f'):>9} {num(r.get('ort_bmax'), '.0f'):>9} "
                  f"{num(ratio, '.2f'):>8}")
    print(f"gpu-marked tests: {'passed' if test_rc == 0 else f'FAILED (exit {test_rc})'}; "
          "throughput in images/s (median of %d), b1 = batch 1, bmax = profile max" % BENCH_REPEATS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="artifacts", help="artifacts root (default: artifacts)")
    parser.add_argument("--work-dir", default="gpu_check",
                        help="logs, reports, timing cache (default: gpu_check)")
    parser.add_argument("--precisions", default="fp32,fp16,int8")
    parser.add_argument("--models", help="comma list (default: the whole zoo)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the gpu-marked tests")
    args = parser.parse_args()
    os.chdir(ROOT)
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "gpu_check.log"
    log.write_text("", encoding="utf-8")
    sh([*BATCHFORGE, "doctor"], log)
    missing = missing_prerequisites()
    if missing:
        print("\ngpu_check: cannot run the GPU check on this machine; missing:")
        for item in missing:
            print(f"  - {item}")
        print("nothing was built; run this script on a machine with an NVIDIA GPU, its driver and TensorRT")
        return 2
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    models = zoo_models()
    if args.models:
        wanted = set(args.models.split(","))
        models = [m for m in models if m["name"] in wanted]
    out = ["--output-dir", str(Path(args.output_dir).resolve())]
    prepare(models, precisions, out, work, log)
    built = build_all(models, precisions, out, work, log)
    parity_rc, statuses = parity(precisions, out, work, log)
    cross = polygraphy_cross_check(models, precisions, out[1], built, log)
    test_rc = 0 if args.skip_tests else sh([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs",
                                            "-p", "no:cacheprovider"], log)[0]
    benched = bench(models, precisions, out[1], built)
    (work / "bench_tensorrt.json").write_text(json.dumps(
        [{"model": m, "precision": p, **row} for (m, p), row in benched.items()], indent=2))
    print_table(models, precisions, built, statuses, benched, test_rc, cross)
    failed = (any(b["build_rc"] for b in built.values()) or parity_rc or test_rc
              or "FAIL" in cross.values())
    print(f"\nlog: {log}; parity report: {work / 'parity_tensorrt.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
