"""The main job behind scripts/main.sh (and the CI gate): every stage through the CLI, as a user
would run it, then one summary table. Exit status is the parity gate's (0 / 1 / 2).

    python scripts/main_job.py [--backend auto] [--precisions fp32,fp16,int8] [--skip-build] [--jobs 2]

The per-model stages (export, samples, fp16 convert, int8 calibrate, build) run as ``--jobs``
concurrent commands, each over its own lane of models (export: the ensemble in one lane, as its
record is written by `export reid_ensemble`; convert and calibrate: lanes balanced by the seconds
each model took in the sequential CI): much of export (dynamo tracing) and of
calibration (quantize_static's graph rewriting, histograms) is single-threaded Python, so a
second command fills the second core. Every command still runs at its default thread count, so
the numbers are the ones a sequential run gives (the zoo's seeded init runs forward passes whose
last bits follow torch's thread count: with OMP_NUM_THREADS=1 keypoints and facepose export other
weights). Concurrent commands get OMP_WAIT_POLICY=PASSIVE (unless it is set): idle OpenMP threads,
and ONNX Runtime's intra-op threads (batchforge turns ORT's spinning off under that setting), sleep
instead of spinning on the core the other command needs; it changes no result. Measured on
2 cores, four small models: export 126 s sequential, 140 s as two commands with spinning threads,
103 s with passive ones; int8 calibration of keypoints + facepose 171 s vs 128 s.
The parity gate runs once over the whole zoo. Then a trained network from outside the zoo goes
through the same stages as a user's model would (``export --factory`` with a ``tensors`` spec,
calibrated and gated on real photographs, no known failures allowed): PP-OCR's text-direction
classifier from the rapidocr-onnxruntime 1.4.4 wheel, rebuilt in PyTorch by onnx2torch
(scripts/trained_int8/). The job's exit status is the worse of the two gates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCHFORGE = [sys.executable, "-m", "batchforge"]
RUN_SAMPLES = 16
CALIBRATION_SAMPLES = 32
SEED_CALIBRATION = 4000


PEAK_RSS: dict[str, float] = {}  # GB resident, the largest process of each command name


class ResidentSampler:
    """The peak of the summed resident sets of this job's running commands (concurrent ones
    add up), sampled from /proc every half second; None where /proc is not there."""

    def __init__(self) -> None:
        self.pids: set[int] = set()
        self.peak: float | None = 0.0 if Path("/proc/self/status").is_file() else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        if self.peak is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            total = 0
            for pid in list(self.pids):
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:  # finished between the listing and the read
                    continue
                total += next((int(line.split()[1]) for line in status.splitlines()
                               if line.startswith("VmRSS:")), 0)
            self.peak = max(self.peak or 0.0, total / 2**20)  # KiB -> GiB


SAMPLER = ResidentSampler()


def sh(*args: str, check: bool = True) -> tuple[int, float]:
    return sh_parallel([list(args)], check=check)


def sh_parallel(commands: list[list[str]], *, check: bool = True) -> tuple[int, float]:
    """Runs batchforge commands, all at once; returns (first non-zero exit code or 0, seconds).
    Their output lines interleave; every line names its model."""
    start = time.perf_counter()
    processes = {}
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ} if len(commands) > 1 else None
    for args in commands:
        print(f"\n$ batchforge {' '.join(args)}" + ("  &" if len(commands) > 1 else ""), flush=True)
        process = subprocess.Popen([*BATCHFORGE, *args], cwd=ROOT, env=env)
        processes[process.pid] = (process, args)
        SAMPLER.pids.add(process.pid)
    codes = []
    while processes:
        pid, status, usage = os.wait4(-1, 0)  # the child's own rusage: its peak resident set
        if pid not in processes:
            continue
        process, args = processes.pop(pid)
        SAMPLER.pids.discard(pid)
        process.returncode = code = os.waitstatus_to_exitcode(status)
        PEAK_RSS[args[0]] = max(PEAK_RSS.get(args[0], 0.0), usage.ru_maxrss / 2**20)  # KiB -> GiB
        codes.append(code)
        if code != 0:
            print(f"main job: `batchforge {' '.join(args)}` failed with exit code {code}", file=sys.stderr)
    code = next((c for c in codes if c != 0), 0)
    if check and code != 0:
        sys.exit(code)
    return code, time.perf_counter() - start


def lanes(models: list[dict], ensembles: list[dict], jobs: int) -> list[list[str]]:
    """The zoo in at most ``jobs`` lanes for the per-model stages. An ensemble is one command by
    name (its members, and the ensemble record) and gets a lane of its own: the reid trio costs
    about what the other models cost together (measured: export 166 s vs 107 s, int8 calibration
    257 s vs 236 s, sequential on 2 cores); the other models are dealt out to the other lanes."""
    members = {m for e in ensembles for m in e["ensemble"]}
    rest = [m["name"] for m in models if m["name"] not in members]
    # the costliest ensemble gets the lane of its own (an unmeasured one counts as the most costly)
    names = sorted((e["name"] for e in ensembles), key=lambda n: -ENSEMBLE_EXPORT_SECONDS.get(n, float("inf")))
    if jobs <= 1:
        return [names + rest]
    own = [[name] for name in names[: jobs - 1]]
    shared: list[list[str]] = [[] for _ in range(jobs - len(own))]
    for i, name in enumerate(names[jobs - 1:] + rest):
        shared[i % len(shared)].append(name)
    return own + [lane for lane in shared if lane]


# Export seconds of the ensembles' members together (one command by name each): reid from the
# sequential CI above; mtcnn measured in a worktree on the shared 2 cores (P-Net 30.3 s, of which
# most is the export check at 1280x1280, R-Net 9.3 s, O-Net 12.8 s).
ENSEMBLE_EXPORT_SECONDS = {"reid_ensemble": 166.0, "mtcnn": 52.4}

# Seconds per model measured in the sequential CI (fresh clone, 2 cores, 4e57f9e): what the lanes of
# the stages that take member names directly (convert, calibrate) are balanced by.
MEASURED_SECONDS = {
    "convert": {"reid_vit_b_16": 32.1, "detector": 9.6, "reid_efficientnet_b3": 8.0, "reid_resnet50": 5.8,
                "facepose": 4.9, "keypoints": 2.5, "anomaly": 1.8, "ptycho": 0.3,
                # mtcnn: measured in a worktree on the shared 2 cores, not in the CI
                "mtcnn_pnet": 2.9, "mtcnn_onet": 1.3, "mtcnn_rnet": 0.7},
    # effnet, detector, facepose, keypoints: the 4e57f9e seconds less the sensitivity pass's saving,
    # estimated from its measured share of detector's calibration (56%) and the side-by-side
    # speed-ups of the segmented pass (0.21x, 0.21x, 0.27x, 0.45x); the other models run no such pass
    "calibrate": {"reid_efficientnet_b3": 90.0, "detector": 78.0, "reid_vit_b_16": 75.0, "facepose": 29.0,
                  "keypoints": 25.0, "reid_resnet50": 22.3, "anomaly": 7.5, "ptycho": 2.4,
                  "mtcnn_pnet": 8.8, "mtcnn_onet": 2.1, "mtcnn_rnet": 1.3},
}


def balanced(models: list[dict], stage: str, jobs: int) -> list[list[str]]:
    """Models (ensemble members by name) in at most ``jobs`` lanes of about equal measured cost:
    the costliest first, each to the lane with the least so far. A model without a measurement
    counts as the median of those with one."""
    costs = MEASURED_SECONDS[stage]
    median = sorted(costs.values())[len(costs) // 2]
    out: list[list[str]] = [[] for _ in range(max(1, jobs))]
    totals = [0.0] * len(out)
    for name in sorted((m["name"] for m in models), key=lambda n: -costs.get(n, median)):
        lane = totals.index(min(totals))
        out[lane].append(name)
        totals[lane] += costs.get(name, median)
    return [lane for lane in out if lane]


def pooled(commands: list[list[str]], jobs: int) -> None:
    """Short commands, ``jobs`` at a time."""
    for i in range(0, len(commands), max(1, jobs)):
        sh_parallel(commands[i:i + max(1, jobs)])


def zoo() -> tuple[list[dict], list[dict]]:
    out = subprocess.run([*BATCHFORGE, "models", "--json"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    rows = json.loads(out)
    return [r for r in rows if "ensemble" not in r], [r for r in rows if "ensemble" in r]


def resolve_backend(requested: str) -> str:
    """``auto`` decided once for every stage, and said once (each `build --backend auto` would say
    it again: 46 times on a fresh clone without TensorRT)."""
    if requested != "auto":
        return requested
    from batchforge.runtime.backends import Backend, probe_backends

    status = next(s for s in probe_backends() if s.backend is Backend.TENSORRT)
    if status.available:
        return Backend.TENSORRT.value
    print(f"main job: backend auto -> onnxruntime: TensorRT is not usable here ({status.detail}); every "
          "stage builds and runs the ONNX Runtime artifacts", file=sys.stderr, flush=True)
    return Backend.ONNXRUNTIME.value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="auto", help="backend for build, parity and run (default: auto)")
    parser.add_argument("--precisions", default="fp32,fp16,int8")
    parser.add_argument("--output-dir", default="artifacts")
    parser.add_argument("--reports", default="reports")
    parser.add_argument("--skip-build", action="store_true", help="no engine build step")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="concurrent commands in the per-model stages (default: 2, or 1 on one core)")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    os.chdir(ROOT)
    args.backend = resolve_backend(args.backend)
    models, ensembles = zoo()
    SAMPLER.start()
    families = sorted({m["family"] for m in models})
    timings: dict[str, float] = {}
    out = ["--output-dir", args.output_dir]

    sh("doctor")
    timings["export"] = sh_parallel([["export", *lane, *out] for lane in lanes(models, ensembles, args.jobs)])[1]
    start = time.perf_counter()
    pooled([command for family in families for command in (
        ["samples", family, "--out", f"samples/run/{family}", "--count", str(RUN_SAMPLES)],
        ["samples", family, "--out", f"samples/calib/{family}", "--count", str(CALIBRATION_SAMPLES),
         "--seed", str(SEED_CALIBRATION)])], args.jobs)
    timings["samples"] = time.perf_counter() - start
    precisions = args.precisions.split(",")
    if "fp16" in precisions:
        timings["convert fp16"] = sh_parallel([["convert", *lane, "--data", "samples/calib", *out]
                                               for lane in balanced(models, "convert", args.jobs)])[1]
    if "int8" in precisions:
        timings["calibrate int8"] = sh_parallel([["calibrate", *lane, "--data", "samples/calib", *out]
                                                 for lane in balanced(models, "calibrate", args.jobs)])[1]
    if not args.skip_build:
        start = time.perf_counter()
        pooled([["build", model["name"], "--precision", precision, "--backend", args.backend, *out]
                for model in models for precision in precisions], args.jobs)
        timings["build"] = time.perf_counter() - start
    speeds = {}
    if len(precisions) > 1 and "fp32" in precisions:
        start = time.perf_counter()
        speeds = bench_precisions(models, precisions, args, out)
        timings["bench"] = time.perf_counter() - start
    report = Path(args.reports) / "parity.json"
    parity_code, timings["parity"] = sh("parity", "--all", "--backend", args.backend, "--precision",
                                        args.precisions, "--report", str(report), "--allow-known-failures", *out,
                                        check=False)
    runs = run_samples(models, ensembles, args, out)
    start = time.perf_counter()
    trained_reports, trained_code = trained_lane(precisions, args, out, speeds)
    timings["trained"] = time.perf_counter() - start
    SAMPLER.stop()
    print_summary([report, *trained_reports], runs, timings, speeds, Path(args.output_dir))
    return worst_exit(parity_code, trained_code)


TRAINED = ROOT / "scripts" / "trained_int8"
TRAINED_MODELS = {"ppocr_cls": "cls"}  # model -> its data set in make_data.py


def trained_lane(precisions: list[str], args: argparse.Namespace, out: list[str],
                 speeds: dict[str, dict[str, float]]) -> tuple[list[Path], int]:
    """The trained networks from outside the zoo, each as a user brings one: its factory module on
    PYTHONPATH, ``export --factory --spec``, convert/calibrate on its calibration photographs, build,
    bench and the gate on held-out photographs (no known failures allowed).
    Returns (one parity report per model, the worst gate exit)."""
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TRAINED), os.environ.get("PYTHONPATH")]))
    data = Path("samples/trained")
    start = time.perf_counter()
    subprocess.run([sys.executable, str(TRAINED / "make_data.py"), str(data), "--seed", "0"], cwd=ROOT, check=True)
    print(f"trained-model photographs with rendered words -> {data} ({time.perf_counter() - start:.1f}s)", flush=True)
    reports, codes = [], []
    for model, kind in TRAINED_MODELS.items():
        factory = ("--factory", f"ocr_models:{model}")
        sh("export", *factory, "--spec", str(TRAINED / f"{model}.json"), *out)
        calib = str(data / f"{kind}_calib")
        if "fp16" in precisions:
            sh("convert", model, "--data", calib, *out)
        if "int8" in precisions:
            sh("calibrate", model, "--data", calib, *out)
        if not args.skip_build:
            for precision in precisions:
                sh("build", model, "--precision", precision, "--backend", args.backend, *out)
        if len(precisions) > 1 and "fp32" in precisions:
            profile = json.loads((TRAINED / f"{model}.json").read_text())["profile"]
            speeds.update(bench_precisions([{"name": model, "profile": [profile["min"], profile["opt"]]}],
                                           precisions, args, out))
        reports.append(Path(args.reports) / f"trained.{model}.parity.json")
        codes.append(sh("parity", model, "--backend", args.backend, "--precision", ",".join(precisions),
                        "--data", str(data / f"{kind}_eval"), "--report", str(reports[-1]), *factory, *out,
                        check=False)[0])
    return reports, worst_exit(*codes)


def worst_exit(*codes: int) -> int:
    """2 (could not run) over 1 (a check failed) over 0."""
    return 2 if 2 in codes else max(codes)


BENCH_REPEATS = 3


def bench_precisions(models: list[dict], precisions: list[str], args: argparse.Namespace,
                     out: list[str]) -> dict[str, dict[str, float]]:
    """Each model's precisions timed interleaved through the runner `run` uses, one command at a
    time (nothing of the job's beside it), at the profile's opt batch: {model: {precision: x fp32}}."""
    speeds = {}
    bench_dir = Path(args.reports) / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    for model in models:
        target = bench_dir / f"{model['name']}.json"
        code, _ = sh("bench", model["name"], "--precision", ",".join(precisions), "--batch-sizes",
                     str(model["profile"][1]), "--repeats", str(BENCH_REPEATS), "--backend", args.backend,
                     "--json", str(target), *out, check=False)
        if code == 0 and target.is_file():
            row = json.loads(target.read_text())["rows"][0]
            speeds[model["name"]] = {p: row[p]["ratio"] for p in precisions if p in row}
    return speeds


def run_samples(models: list[dict], ensembles: list[dict], args: argparse.Namespace, out: list[str]) -> dict:
    runs = {}
    run_dir = Path(args.reports) / "run"
    for ensemble in ensembles:  # reid: gallery from first views, queries are second views
        name = ensemble["name"]
        if ensemble["family"] == "mtcnn":  # the face detector, with its overlays for a person to check
            runs[name] = _run(name, "samples/run/mtcnn", run_dir, args, out, "--overlays",
                              str(run_dir / f"{name}.overlays"))
            continue
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


SHIP_MARGIN = 1.10
HIGHER_FIRST = ("fp32", "fp16", "int8")


def ships(name: str, runs: dict[str, dict], speeds: dict[str, float], artifacts: Path | None) -> str:
    """What to deploy for one model: the fastest precision whose gate run passed, a lower one only
    when it is at least SHIP_MARGIN x the higher one's speed; with its speed, checks and (int8) the
    nodes kept FP32, and why the others were not chosen."""
    def checks(run: dict) -> str:
        judged = [c for c in run["checks"] if c.get("role", "agreement") != "shown"]
        return f"{sum(c['passed'] for c in judged)}/{len(judged)} checks"

    nodes, quantized = int8_fp32_nodes(artifacts / name) if artifacts is not None else ("", True)
    passed = [p for p in HIGHER_FIRST if runs.get(p, {}).get("status") == "passed" and p in speeds
              and (p != "int8" or quantized)]
    if "fp32" not in passed:
        return "nothing: fp32 did not pass the gate (" + (runs.get("fp32", {}).get("status") or "not run") + ")"
    chosen = "fp32"
    for precision in passed[1:]:
        if speeds[precision] >= SHIP_MARGIN * speeds[chosen]:
            chosen = precision
    said = f"{chosen}: {speeds[chosen]:.2f}x fp32, {checks(runs[chosen])}"
    if chosen == "int8" and nodes:
        said += f", {nodes}"
    others = []
    for precision in HIGHER_FIRST:
        if precision == chosen or precision not in runs:
            continue
        status = runs[precision]["status"]
        if status != "passed":
            others.append(f"{precision} {status.lower()}")
        elif precision == "int8" and not quantized:
            others.append(f"int8 passed at {speeds.get('int8', float('nan')):.2f}x but quantizes nothing "
                          "(every node FP32: fp32 arithmetic)")
        elif precision in speeds:
            others.append(f"{precision} passed at {speeds[precision]:.2f}x")
    return said + (f" (others: {', '.join(others)})" if others else "")


def int8_fp32_nodes(folder: Path) -> tuple[str, bool]:
    """How many nodes the int8 artifact the CPU backend ships keeps in FP32 (calibration.json), and
    whether it quantizes anything at all (an int8 artifact with every node FP32 is FP32 arithmetic)."""
    try:
        record = json.loads((folder / "calibration.json").read_text())
    except (OSError, ValueError):
        return "FP32 nodes unknown (no calibration.json)", True
    quantized = record.get("effect", {}).get("quantize_nodes", 1) > 0
    cpu = record.get("cpu", {})
    if cpu.get("adopted"):
        kept = len(cpu.get("excluded", [])) + len(cpu.get("excluded_for_cpu", []))
        return f"{kept} node(s) FP32, the fused CPU form", quantized
    return f"{len(record.get('excluded_by_sensitivity', []))} node(s) FP32, the Q/DQ form as written", quantized


def print_summary(reports: list[Path], runs: dict, timings: dict[str, float],
                  speeds: dict[str, dict[str, float]] | None = None, artifacts: Path | None = None) -> None:
    """``reports``: the zoo's parity report first, then the trained models' (a missing one is
    reported as such); ``artifacts``: the output folder (for the int8 artifacts' FP32 node counts)."""
    print("\n" + "=" * 78 + "\nbatchforge main job summary\n" + "=" * 78)
    gates = {report: (json.loads(report.read_text()) if report.is_file() else {"reports": [], "verdict": "missing"})
             for report in reports}
    by_model: dict[str, dict[str, str]] = {}
    statuses: dict[str, dict[str, dict]] = {}  # model -> precision -> its run
    details = []  # failing checks, listed under the table so the columns stay aligned
    for r in (r for parity in gates.values() for r in parity["reports"]):
        statuses.setdefault(r["model"], {})[r["precision"]] = r
        failing = [c["name"] for c in r["checks"] if not c["passed"]]
        cell = "pass" if r["status"] == "passed" else ("known" if r["status"] == "KNOWN FAILURE" else "FAIL")
        by_model.setdefault(r["model"], {})[r["precision"]] = cell
        if cell != "pass":
            details.append(f"  {cell:5} {r['model']} [{r['precision']}]: "
                           + (", ".join(failing) or r["status"]))
    precisions = list(dict.fromkeys(r["precision"] for parity in gates.values() for r in parity["reports"]))
    width = max([24, *(len(n) for n in set(by_model) | set(runs))])
    speeds = speeds or {}
    faster = [p for p in precisions if p != "fp32"] if speeds else []
    print(f"{'model':{width}} " + " ".join(f"{p:>6}" for p in precisions)
          + "".join(f" {p + '/fp32':>10}" for p in faster) + f" {'run items':>10} {'errors':>7}  note")
    for name in sorted(set(by_model) | set(runs)):
        run = runs.get(name, {})
        cells = " ".join(f"{by_model.get(name, {}).get(p, '-'):>6}" for p in precisions)
        ratios = "".join(f" {_ratio(speeds.get(name, {}).get(p)):>10}" for p in faster)
        print(f"{name:{width}} {cells}{ratios} {run.get('items', '-'):>10} {run.get('errors', '-'):>7}  "
              f"{run.get('note', '')}")
    slower = [f"{name} {p} {v:.2f}x" for name, row in sorted(speeds.items()) for p, v in row.items()
              if p != "fp32" and v < 1.0]
    if speeds:
        print(f"\nspeed: throughput over fp32 through the runner `run` uses, at each model's opt batch, "
              f"median of {BENCH_REPEATS} interleaved runs (reports/bench/MODEL.json)")
    if slower:
        print("slower than fp32 on this backend: " + ", ".join(slower))
    decisions = [(name, ships(name, statuses.get(name, {}), speeds.get(name, {}), artifacts))
                 for name in sorted(speeds)]
    if decisions:
        print(f"\nwhat ships on this backend: the fastest precision that passed every check; a lower one only "
              f"when it is at least {SHIP_MARGIN:.2f}x faster than the higher one (near-ties go to the higher "
              "precision: 3 interleaved repeats vary by about that much)")
        for name, decision in decisions:
            print(f"  {name:{width}} {decision}")
    if details:
        print("\nnot passed (known = a measured failure of the stand-in weights, listed in "
              "batchforge/tolerances.py):\n" + "\n".join(details))
    print("\nstage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    print("peak resident memory (GiB, largest process of each command): "
          + ", ".join(f"{k} {v:.2f}" for k, v in sorted(PEAK_RSS.items(), key=lambda kv: -kv[1])))
    if SAMPLER.peak is not None:
        print(f"peak resident memory of all concurrent commands together: {SAMPLER.peak:.2f} GiB")
    for report, parity in gates.items():
        print(f"parity verdict: {parity.get('verdict')} (report: {report}, {report.with_suffix('.md')})")


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


if __name__ == "__main__":
    sys.exit(main())
