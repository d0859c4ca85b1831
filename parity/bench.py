"""``batchforge bench``: images/s of raw ``InferenceSession.run``, the batchforge runner and
PyTorch eager, measured interleaved in one run on the same inputs and thread count; with several
precisions (``--precision fp32,fp16,int8``), each precision's runner (the artifact ``run`` loads)
interleaved, as a ratio to FP32, with how ONNX Runtime ran it (fused int8 node counts).

Ratios are what to compare (runner/raw time, ORT speed-up over eager, int8/fp32); absolute
numbers depend on the machine. PyTorch is optional: without it (a runtime-only install) its
column is skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from batchforge.errors import UsageError
from batchforge.runtime.artifacts import ModelArtifacts, Precision, write_json_atomic
from batchforge.runtime.backends import resolve_backend
from batchforge.runtime.loading import open_runner


def _batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--batch-sizes takes a comma list of integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--batch-sizes needs integers >= 1, got {text!r}")
    return sizes


def _median_seconds(fn: Callable[[], Any], repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench(model: str, *, output_dir: str, batch_sizes: list[int], threads: int, repeats: int,
          precision: Precision, backend: str, with_torch: bool,
          factories: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Measures each batch size; returns one row per size (seconds are medians)."""
    concrete = resolve_backend(backend)
    if not concrete.is_onnxruntime:
        raise UsageError(f"bench compares against raw ONNX Runtime; --backend {concrete.value} is not "
                         "an ONNX Runtime backend")
    artifacts = ModelArtifacts.at(output_dir, model)
    spec = artifacts.spec()
    runner = open_runner(artifacts, precision=precision, backend=concrete, threads=threads, spec=spec)
    runner.activate()
    raw = _raw_session(runner)
    torch_module = _torch_module(artifacts, threads, factories) if with_torch else None
    rows = []
    rng = np.random.default_rng(0)
    try:
        for batch in batch_sizes:
            if batch > spec.profile.max:
                raise UsageError(f"batch {batch} is above {model}'s profile max {spec.profile.max}")
            feed = {t.name: rng.normal(size=(batch, *[int(d) for d in t.item_shape])).astype(t.dtype)
                    for t in spec.inputs}
            runs: dict[str, Callable[[], Any]] = {
                "raw": lambda f=feed: raw.run(None, f),
                "runner": lambda f=feed: runner.infer(f),
            }
            if torch_module is not None:
                runs["torch"] = _torch_call(torch_module, feed, spec.input_names)
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(repeats):  # interleaved so drift hits every column alike
                for key, fn in runs.items():
                    times[key] += _median_seconds(fn, 1)
            row = {"batch": batch, **{f"{k}_s": statistics.median(v) for k, v in times.items()}}
            row.update({f"{k}_ips": batch / row[f"{k}_s"] for k in runs})
            row["runner_over_raw"] = row["runner_s"] / row["raw_s"]
            if "torch_s" in row:
                row["ort_speedup_over_torch"] = row["torch_s"] / row["raw_s"]
            rows.append(row)
    finally:
        runner.deactivate()
    return rows


def compare_precisions(model: str, *, output_dir: str, batch_sizes: list[int], threads: int, repeats: int,
                       precisions: list[Precision], backend: str) -> dict[str, Any]:
    """Each precision's runner, timed interleaved at each batch size (medians), as ratios to the
    first precision (FP32 when given). Returns ``{"baseline", "rows", "artifacts"}``: one row per
    batch size, ``{"batch", P: {"s", "ips", "ratio"}}``; ``artifacts[P]``: the runner's name and,
    for a Q/DQ model on the CPU provider, its fused / FP32 node counts."""
    concrete = resolve_backend(backend)
    artifacts = ModelArtifacts.at(output_dir, model)
    spec = artifacts.spec()
    for batch in batch_sizes:
        if batch > spec.profile.max:
            raise UsageError(f"batch {batch} is above {model}'s profile max {spec.profile.max}")
    runners = {p: open_runner(artifacts, precision=p, backend=concrete, threads=threads, spec=spec)
               for p in precisions}
    about: dict[str, Any] = {}
    for p, runner in runners.items():
        about[p.value] = {"runner": runner.name}
        if p is Precision.INT8 and concrete.value == "onnxruntime-cpu":
            from batchforge.calibration.int8_cpu import fusion_counts

            about[p.value]["fusion"] = fusion_counts(runner.model, level=runner.options.graph_optimization)
    rng = np.random.default_rng(0)
    rows = []
    for runner in runners.values():
        runner.activate()
    try:
        for batch in batch_sizes:
            # named dims (P-Net's height/width) at their opt size
            feed = {t.name: rng.normal(size=(batch, *[int(d) for d in spec.input_shapes(t)[1][1:]])).astype(t.dtype)
                    for t in spec.inputs}
            times: dict[Precision, list[float]] = {p: [] for p in runners}
            for runner in runners.values():  # warm-up
                runner.infer(feed)
            for _ in range(repeats):  # interleaved so drift hits every precision alike
                for p, runner in runners.items():
                    start = time.perf_counter()
                    runner.infer(feed)
                    times[p].append(time.perf_counter() - start)
            medians = {p: statistics.median(v) for p, v in times.items()}
            base = medians[precisions[0]]
            rows.append({"batch": batch, **{p.value: {"s": medians[p], "ips": batch / medians[p],
                                                      "ratio": base / medians[p]} for p in runners}})
    finally:
        for runner in runners.values():
            runner.deactivate()
    return {"baseline": precisions[0].value, "rows": rows, "artifacts": about}


def _print_precisions(model: str, result: dict[str, Any], backend: str, threads: int, repeats: int) -> None:
    from batchforge.calibration.int8_cpu import fusion_summary

    names = [k for k in result["rows"][0] if k != "batch"]
    print(f"{model} on {backend}, threads={threads or 'default'}, median of {repeats}, interleaved; "
          f"speed as a ratio to {result['baseline']}")
    print(f"{'batch':>5} " + " ".join(f"{n + ' img/s':>11} {n + '/' + result['baseline']:>10}" for n in names))
    for r in result["rows"]:
        print(f"{r['batch']:>5} " + " ".join(f"{r[n]['ips']:>11.2f} {r[n]['ratio']:>9.2f}x" for n in names))
    for n, info in result["artifacts"].items():
        print(f"  {n}: {info['runner']}" + (f"; {fusion_summary(info['fusion'])}" if "fusion" in info else ""))
    for n in names:
        slower = [r["batch"] for r in result["rows"] if r[n]["ratio"] < 1.0]
        if n != result["baseline"] and slower:
            print(f"note: {n} is slower than {result['baseline']} on {backend} at batch "
                  f"{', '.join(map(str, slower))}")


def _raw_session(runner: Any) -> Any:
    import onnxruntime as ort

    from batchforge.runtime.runners.onnxruntime import inference_session

    return inference_session(ort, runner.model, runner.options)


def _torch_module(artifacts: ModelArtifacts, threads: int, factories: tuple[str, ...]) -> Any:
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    from batchforge.errors import ArtifactError
    from batchforge.export.reference import load_reference, trusted_factory

    try:  # a user model's factory is not imported from a record: its column is left out
        trusted_factory(artifacts, artifacts.export_record(), factories)
    except ArtifactError as exc:
        print(f"bench: PyTorch eager not timed: {exc.one_line()}", file=sys.stderr)
        return None
    if threads:
        torch.set_num_threads(threads)
    return load_reference(artifacts, factories=factories)


def _torch_call(module: Any, feed: dict[str, np.ndarray], names: tuple[str, ...]) -> Callable[[], Any]:
    import torch

    tensors = [torch.from_numpy(feed[n]) for n in names]

    def call() -> Any:
        with torch.inference_mode():
            return module(*tensors)

    return call


def cmd_bench(args: argparse.Namespace) -> int:
    precisions = Precision.parse_list(args.precision)
    if len(precisions) > 1:
        if Precision.FP32 in precisions:  # the baseline first
            precisions = [Precision.FP32, *(p for p in precisions if p is not Precision.FP32)]
        result = compare_precisions(args.model, output_dir=args.output_dir, batch_sizes=_batch_sizes(args.batch_sizes),
                                    threads=args.threads, repeats=args.repeats, precisions=precisions,
                                    backend=args.backend)
        backend = resolve_backend(args.backend).value
        _print_precisions(args.model, result, backend, args.threads, args.repeats)
        if args.json:
            write_json_atomic(args.json, {"model": args.model, "backend": backend, "threads": args.threads,
                                          "repeats": args.repeats, **result})
            print(f"wrote {args.json}")
        return 0
    rows = bench(args.model, output_dir=args.output_dir, batch_sizes=_batch_sizes(args.batch_sizes),
                 threads=args.threads, repeats=args.repeats, precision=precisions[0],
                 backend=args.backend, with_torch=not args.no_torch, factories=tuple(args.factory))
    has_torch = "torch_s" in rows[0]
    print(f"{args.model} [{args.precision}] on {resolve_backend(args.backend).value}, "
          f"threads={args.threads or 'default'}, median of {args.repeats}")
    header = f"{'batch':>5} {'raw img/s':>10} {'runner img/s':>13}"
    header += f" {'torch img/s':>12}" if has_torch else ""
    header += f" {'runner/raw':>11}" + (f" {'ORT/torch':>10}" if has_torch else "")
    print(header)
    for r in rows:
        line = f"{r['batch']:>5} {r['raw_ips']:>10.2f} {r['runner_ips']:>13.2f}"
        line += f" {r['torch_ips']:>12.2f}" if has_torch else ""
        line += f" {r['runner_over_raw']:>11.3f}" + (f" {r['ort_speedup_over_torch']:>9.2f}x" if has_torch else "")
        print(line)
    if args.json:
        write_json_atomic(args.json, {"model": args.model, "precision": args.precision,
                                      "backend": resolve_backend(args.backend).value,
                                      "threads": args.threads, "repeats": args.repeats, "rows": rows})
        print(f"wrote {args.json}")
    if args.plot:
        _plot(rows, args.plot, args.model)
        print(f"wrote {args.plot}")
    return 0


def _plot(rows: list[dict[str, Any]], path: str, model: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib", hint="pip install 'batchforge[dev]'") from None
    fig, ax = plt.subplots(figsize=(6, 4))
    batches = [r["batch"] for r in rows]
    for key, label in (("raw_ips", "raw session.run"), ("runner_ips", "batchforge runner"),
                       ("torch_ips", "PyTorch eager")):
        if key in rows[0]:
            ax.plot(batches, [r[key] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    ax.set_title(f"{model} throughput")
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
