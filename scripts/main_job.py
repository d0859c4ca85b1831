"""The main job behind scripts/main.sh (and the CI gate): every stage through the CLI, as a user
would run it, then one summary table. Exit status is the parity gate's (0 / 1 / 2).

    python scripts/main_job.py [--backend auto] [--precisions fp32,fp16,int8] [--skip-build]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCHFORGE = [sys.executable, "-m", "batchforge"]
RUN_SAMPLES = 16
CALIBRATION_SAMPLES = 32
SEED_CALIBRATION = 4000


PEAK_RSS: dict[str, float] = {}  # GB resident, the largest process of each command name


def sh(*args: str, check: bool = True) -> tuple[int, float]:
    print(f"\n$ batchforge {' '.join(args)}", flush=True)
    start = time.perf_counter()
    process = subprocess.Popen([*BATCHFORGE, *args], cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)  # this child's own rusage: its peak resident set
    process.returncode = code = os.waitstatus_to_exitcode(status)
    PEAK_RSS[args[0]] = max(PEAK_RSS.get(args[0], 0.0), usage.ru_maxrss / 2**20)  # KiB -> GiB
    if check and code != 0:
        print(f"main job: `batchforge {args[0]}` failed with exit code {code}", file=sys.stderr)
        sys.exit(code)
    return code, time.perf_counter() - start


def zoo() -> tuple[list[dict], list[dict]]:
    out = subprocess.run([*BATCHFORGE, "models", "--json"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    rows = json.loads(out)
    return [r for r in rows if "ensemble" not in r], [r for r in rows if "ensemble" in r]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="auto", help="backend for build, parity and run (default: auto)")
    parser.add_argument("--precisions", default="fp32,fp16,int8")
    parser.add_argument("--output-dir", default="artifacts")
    parser.add_argument("--reports", default="reports")
    parser.add_argument("--skip-build", action="store_true", help="no engine build step")
    args = parser.parse_args()
    os.chdir(ROOT)
    models, ensembles = zoo()
    families = sorted({m["family"] for m in models})
    timings: dict[str, float] = {}
    out = ["--output-dir", args.output_dir]

    sh("doctor")
    timings["export"] = sh("export", "--all", *out)[1]
    for family in families:
        sh("samples", family, "--out", f"samples/run/{family}", "--count", str(RUN_SAMPLES))
        sh("samples", family, "--out", f"samples/calib/{family}", "--count", str(CALIBRATION_SAMPLES),
           "--seed", str(SEED_CALIBRATION))
    precisions = args.precisions.split(",")
    if "fp16" in precisions:
        timings["convert fp16"] = sh("convert", "--all", "--data", "samples/calib", *out)[1]
    if "int8" in precisions:
        timings["calibrate int8"] = sh("calibrate", "--all", "--data", "samples/calib", *out)[1]
    if not args.skip_build:
        start = time.perf_counter()
        build_backend = "tensorrt" if args.backend == "tensorrt" else "auto"
        for model in models:
            for precision in precisions:
                sh("build", model["name"], "--precision", precision, "--backend", build_backend, *out)
        timings["build"] = time.perf_counter() - start
    report = Path(args.reports) / "parity.json"
    parity_code, timings["parity"] = sh("parity", "--all", "--backend", args.backend, "--precision",
                                        args.precisions, "--report", str(report), "--allow-known-failures", *out,
                                        check=False)
    runs = run_samples(models, ensembles, args, out)
    print_summary(report, runs, timings)
    return parity_code


def run_samples(models: list[dict], ensembles: list[dict], args: argparse.Namespace, out: list[str]) -> dict:
    runs = {}
    run_dir = Path(args.reports) / "run"
    for ensemble in ensembles:  # reid: gallery from first views, queries are second views
        name = ensemble["name"]
        gallery = run_dir / f"{name}.gallery.npz"
        run_dir.mkdir(parents=True, exist_ok=True)
        sh("gallery", name, "--input", f"samples/run/{ensemble['family']}/*_view0.png", "--output",
           str(gallery), "--backend", args.backend, *out)
        runs[name] = _run(name, f"samples/run/{ensemble['family']}/*_view1.png", run_dir, args, out,
                          "--gallery", str(gallery))
    for model in models:
        runs[model["name"]] = _run(model["name"], f"samples/run/{model['family']}", run_dir, args, out)
    return runs


def _run(name: str, inputs: str, run_dir: Path, args: argparse.Namespace, out: list[str], *extra: str) -> dict:
    target = run_dir / f"{name}.jsonl"
    code, seconds = sh("run", name, "--input", inputs, "--output", str(target), "--backend", args.backend,
                       *out, *extra, check=False)
    records = [json.loads(line) for line in target.read_text().splitlines()] if target.is_file() else []
    info = {"exit": code, "items": len(records), "errors": sum(not r.get("ok") for r in records),
            "seconds": seconds}
    if name.startswith("reid") and records and records[0].get("matches"):
        hits = [Path(r["source"]).stem.split("_view")[0] == r["matches"][0]["label"].split("_view")[0]
                for r in records]
        info["note"] = f"top-1 identity match {sum(hits)}/{len(hits)}"
    return info


def print_summary(report: Path, runs: dict, timings: dict[str, float]) -> None:
    print("\n" + "=" * 78 + "\nbatchforge main job summary\n" + "=" * 78)
    parity = json.loads(report.read_text()) if report.is_file() else {"reports": [], "verdict": "missing"}
    by_model: dict[str, dict[str, str]] = {}
    details = []  # failing checks, listed under the table so the columns stay aligned
    for r in parity["reports"]:
        failing = [c["name"] for c in r["checks"] if not c["passed"]]
        cell = "pass" if r["status"] == "passed" else ("known" if r["status"] == "KNOWN FAILURE" else "FAIL")
        by_model.setdefault(r["model"], {})[r["precision"]] = cell
        if cell != "pass":
            details.append(f"  {cell:5} {r['model']} [{r['precision']}]: "
                           + (", ".join(failing) or r["status"]))
    precisions = list(dict.fromkeys(r["precision"] for r in parity["reports"]))
    width = max([24, *(len(n) for n in set(by_model) | set(runs))])
    print(f"{'model':{width}} " + " ".join(f"{p:>6}" for p in precisions)
          + f" {'run items':>10} {'errors':>7}  note")
    for name in sorted(set(by_model) | set(runs)):
        run = runs.get(name, {})
        cells = " ".join(f"{by_model.get(name, {}).get(p, '-'):>6}" for p in precisions)
        print(f"{name:{width}} {cells} {run.get('items', '-'):>10} {run.get('errors', '-'):>7}  {run.get('note', '')}")
    if details:
        print("\nnot passed (known = a measured failure of the stand-in weights, listed in "
              "batchforge/tolerances.py):\n" + "\n".join(details))
    print("\nstage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    print("peak resident memory (GiB, largest process of each command): "
          + ", ".join(f"{k} {v:.2f}" for k, v in sorted(PEAK_RSS.items(), key=lambda kv: -kv[1])))
    print(f"parity verdict: {parity.get('verdict')} (report: {report}, {report.with_suffix('.md')})")


if __name__ == "__main__":
    sys.exit(main())
