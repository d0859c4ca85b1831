"""INT8 on the CPU backend against ONNX Runtime's own quantizer, side by side in one run.

    python scripts/bench_int8.py MODEL [MODEL ...] --data samples/calib [--output-dir artifacts]
                                 [--batch 8] [--threads 2] [--repeats 7]

For each model: FP32 and INT8 through batchforge's runner (``open_runner``: the artifact ``run``
loads), and ONNX Runtime's default ``quantize_static`` of the same FP32 model (QDQ, per-channel,
uint8 activations, int8 weights, its default op types and MinMax calibration, on the same
calibration items) in a plain ``InferenceSession`` at level "all" with the same thread count.
All three are timed interleaved on the same batch (median of ``--repeats``); printed as ratios
to FP32 with each one's min output cosine against FP32 on that batch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", required=True, help="calibration folder (MODEL/ or FAMILY/ inside it)")
    parser.add_argument("--output-dir", default="artifacts")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rows = [bench_model(name, args) for name in args.models]
    print(f"\nbatch {args.batch}, {args.threads} threads, median of {args.repeats} interleaved runs; "
          "speed over FP32 / min output cosine vs FP32")
    print(f"{'model':24} {'batchforge int8':>18} {'ORT quantize_static':>20}")
    for name, ours, theirs in rows:
        print(f"{name:24} {ours[0]:>8.2f}x / {ours[1]:.4f} {theirs[0]:>9.2f}x / {theirs[1]:.4f}")
    return 0


def bench_model(name: str, args: argparse.Namespace) -> tuple[str, tuple[float, float], tuple[float, float]]:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from batchforge.calibration.data import FeedReader, load_calibration_data
    from batchforge.calibration.int8 import quiet_quantizer
    from batchforge.metrics import rowwise_cosine
    from batchforge.runtime.artifacts import ModelArtifacts, Precision
    from batchforge.runtime.loading import load_pipeline, open_runner

    artifacts = ModelArtifacts.at(args.output_dir, name)
    spec = artifacts.spec()
    pipeline = load_pipeline(name, output_dir=args.output_dir, backend="onnxruntime-cpu")
    data_dir = next((str(p) for p in (Path(args.data) / name, Path(args.data) / spec.family) if p.is_dir()), args.data)
    data = load_calibration_data(pipeline, data_dir, samples=32)
    runners = {p: open_runner(artifacts, precision=p, backend="onnxruntime-cpu", threads=args.threads, spec=spec)
               for p in (Precision.FP32, Precision.INT8)}
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        default = Path(tmp) / "ort_default.onnx"
        with quiet_quantizer():
            quantize_static(str(artifacts.verified_onnx(Precision.FP32)), str(default), FeedReader(data),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.log_severity_level = 3
        theirs = ort.InferenceSession(str(default), options, providers=["CPUExecutionProvider"])
        batch = min(args.batch, spec.profile.max)
        feed = {k: np.concatenate([f[k][None] for f in data.feeds[:batch]]) for k in data.feeds[0]}
        calls = {"fp32": lambda: runners[Precision.FP32].infer(feed),
                 "int8": lambda: runners[Precision.INT8].infer(feed),
                 "ort": lambda: dict(zip([o.name for o in theirs.get_outputs()], theirs.run(None, feed)))}
        for runner in runners.values():
            runner.activate()
        outputs = {k: call() for k, call in calls.items()}  # warm-up, and the outputs compared
        times: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(args.repeats):
            for key, call in calls.items():
                start = time.perf_counter()
                call()
                times[key].append(time.perf_counter() - start)
        for runner in runners.values():
            runner.deactivate()
    base = statistics.median(times["fp32"])

    def summary(key: str) -> tuple[float, float]:
        cos = min(float(np.min(rowwise_cosine(outputs["fp32"][o], outputs[key][o]))) for o in outputs["fp32"])
        return base / statistics.median(times[key]), cos

    print(f"{name}: int8 runner {runners[Precision.INT8].name}", file=sys.stderr)
    return name, summary("int8"), summary("ort")


if __name__ == "__main__":
    sys.exit(main())
