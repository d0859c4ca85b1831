"""The ``batchforge`` command line. Handlers live in their stage packages and load lazily,
so ``batchforge run`` on a runtime-only install never touches torch.

Exit codes: 0 success; 1 a check failed (parity) or some inputs could not be processed (run);
2 could not run (bad arguments or input, missing artifact or backend, incompatible engine).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence

from batchforge import __version__
from batchforge.errors import EXIT_COULD_NOT_RUN, WRITE_ERRNOS, BatchforgeError, storage_error
from batchforge.families import known as known_families

EPILOG = """examples:
  batchforge models
  batchforge export --all
  batchforge parity --all --backend onnxruntime --precision fp32 --report reports/parity.json
  batchforge run reid_ensemble --input samples/reid --gallery artifacts/gallery.npz --output results.jsonl
  batchforge bench reid_resnet50 --batch-sizes 1,8 --threads 2
  batchforge deploy triton reid_resnet50 --precision fp16 --out model_repository
  batchforge bundle reid_resnet50 --precision int8 --out reid.tar.gz --parity-report reports/parity.json
  batchforge run --bundle reid.tar.gz --input samples/reid --output results.jsonl

exit codes: 0 ok, 1 a check failed / some inputs failed, 2 could not run"""


PRECISIONS = ("fp32", "fp16", "int8")


def int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum`` (bad values exit 2 naming the option)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


POSITIVE = int_at_least(1)
NON_NEGATIVE = int_at_least(0)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default="artifacts", metavar="DIR",
                   help="artifacts root: one folder per model (default: artifacts)")


def _add_backend(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--backend", default=default,
                   help="auto (tensorrt > onnxruntime-cuda > onnxruntime-cpu), tensorrt, onnxruntime, "
                        f"onnxruntime-cpu, onnxruntime-cuda, onnxruntime-trt (default: {default})")
    p.add_argument("--threads", type=NON_NEGATIVE, default=0, metavar="N",
                   help="ONNX Runtime intra-op threads (default: 0 = all cores)")


def _add_calibration_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="PATH",
                   help="calibration inputs: a folder of the model's input files, .npy or .npz; with "
                        "several models PATH/<model> or PATH/<family> is used when it exists")
    p.add_argument("--allow-synthetic", action="store_true",
                   help="without --data, calibrate on the family's synthetic sample generator "
                        "(recorded and reported as synthetic)")
    p.add_argument("--allow-random-data", action="store_true",
                   help="accept inputs that look like white noise (only to test what that does)")
    p.add_argument("--samples", type=POSITIVE, default=32, help="calibration items (default: 32)")


def _add_deployed_model(p: argparse.ArgumentParser, out_metavar: str, out_help: str) -> None:
    p.add_argument("model", metavar="MODEL", help="model or ensemble (an ensemble: every member)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--out", required=True, metavar=out_metavar, help=out_help)
    _add_common(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchforge",
        description="Export PyTorch vision models to ONNX/TensorRT, run them in batches, and gate "
                    "CI on parity with the PyTorch reference.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"batchforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list zoo models: family, inputs, profile, default tolerances")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler="batchforge.export.commands:cmd_models")

    p = sub.add_parser("export", help="PyTorch -> artifacts/MODEL/model.fp32.onnx + export.json",
                       description="Export zoo models (or a user model) to ONNX with a dynamic batch "
                                   "axis, check it, and record export.json.")
    p.add_argument("models", nargs="*", metavar="MODEL", help="zoo model or ensemble names")
    p.add_argument("--all", action="store_true", help="export the whole zoo")
    p.add_argument("--weights", metavar="FILE",
                   help="weights for a single model: .safetensors (preferred) or a state dict "
                        "(loaded with torch.load(weights_only=True)); default: a zoo model's seeded calibrated "
                        "init, or the weights a --factory loads itself")
    p.add_argument("--factory", metavar="MODULE:FUNCTION",
                   help="a user model: a factory returning a torch.nn.Module (needs --spec)")
    p.add_argument("--spec", metavar="FILE", help="the user model's spec (JSON, see README)")
    p.add_argument("--opset", type=POSITIVE, default=18, help="ONNX opset (default: 18)")
    p.add_argument("--trace-batch", type=int_at_least(2), default=2, help="batch used to trace (>= 2; default: 2)")
    p.add_argument("--max-batch", type=POSITIVE, help="override the profile's max batch")
    p.add_argument("--no-fallback", action="store_true",
                   help="fail instead of falling back to the TorchScript exporter")
    _add_common(p)
    p.set_defaults(handler="batchforge.export.commands:cmd_export")

    p = sub.add_parser("convert", help="FP32 ONNX -> model.fp16.onnx (overflow-prone nodes kept FP32)",
                       description="ONNX-level FP16 conversion keeping I/O types; nodes whose calibrated "
                                   "activations could overflow (or that you block) stay in FP32.")
    p.add_argument("models", nargs="*", metavar="MODEL", help="models or ensembles (members are converted)")
    p.add_argument("--all", action="store_true", help="every exported zoo model")
    p.add_argument("--precision", default="fp16", choices=("fp16",))
    _add_calibration_data(p)
    p.add_argument("--block", action="append", default=[], metavar="NODE|OP",
                   help="keep this node name or op type in FP32 (repeatable)")
    _add_common(p)
    p.set_defaults(handler="batchforge.calibration.commands:cmd_convert")

    p = sub.add_parser("calibrate", help="FP32 ONNX -> model.int8.onnx (TensorRT Q/DQ) + model.int8.cpu.onnx "
                                         "(ONNX Runtime CPU) + calibration.json",
                       description="Static INT8 quantization (onnxruntime.quantization) aimed at the parity "
                                   "gate: each range method and weight granularity is tried and judged by "
                                   "the gate's own checks for the model's family (raw cosine and max_rel "
                                   "per output, the worst item, class-score agreement) on the calibration "
                                   "items; when the best one fails, the fewest nodes of a measured "
                                   "sensitivity ranking are kept FP32 that make every check pass "
                                   "(bisection). One calibration writes two artifacts: "
                                   "model.int8.onnx, Q/DQ placed for TensorRT (symmetric int8), and "
                                   "model.int8.cpu.onnx, the form ONNX Runtime's CPU kernels fuse "
                                   "(uint8 activations, QLinearConv/QLinearAdd...), which the CPU "
                                   "backend runs.")
    p.add_argument("models", nargs="*", metavar="MODEL", help="models or ensembles (members are calibrated)")
    p.add_argument("--all", action="store_true", help="every exported zoo model")
    _add_calibration_data(p)
    p.add_argument("--method", default="percentile,minmax", metavar="M[,M...]",
                   help="activation range method(s): percentile (99.999th), minmax, entropy "
                        "(TensorRT-style KL threshold over 2048 histogram bins; slow: its threshold "
                        "search is pure Python, 99 s for ResNet-50 against 13 s for percentile). "
                        "Several, comma-separated, are tried in order until one passes the gate's "
                        "checks (else the closest wins; calibration.json: method_trial). "
                        "Default: percentile,minmax")
    p.add_argument("--weight-scales", dest="weights", default="per-channel",
                   choices=("per-channel", "per-tensor", "both"),
                   help="weight scales of the TensorRT form: per output channel (default), one per "
                        "tensor, or both (per-channel first, per-tensor when that fails the gate's "
                        "checks; per-tensor was worse on every model measured: reid_resnet50 min "
                        "cosine 0.9865 vs 0.9924). The CPU form is per-channel")
    p.add_argument("--target-cosine", type=float, default=0.995,
                   help="besides the gate's checks, the mean output cosine against FP32 on the "
                        "calibration items a candidate must reach: headroom for the checks the gate "
                        "decodes (boxes, keypoints, maps), which cannot run here (default: 0.995)")
    p.add_argument("--exclude", action="append", default=[], metavar="NODE",
                   help="keep this node in FP32 in addition to the measured ones (repeatable)")
    p.add_argument("--max-excluded", type=NON_NEGATIVE, default=None, metavar="N",
                   help="at most N nodes kept in FP32 by the sensitivity pass (default: 16)")
    p.add_argument("--cpu-target", default="auto", choices=("auto", "vnni", "no-vnni"),
                   help="CPUs the CPU artifact is made for: vnni (8-bit weights; AVX512-VNNI or AVX-VNNI "
                        "needed to run it fused), no-vnni (7-bit weights, ONNX Runtime's reduce_range: "
                        "fused without 16-bit saturation on any x86 CPU, slightly less accurate) or "
                        "auto (this CPU's, default)")
    p.add_argument("--cpu-form", default="auto", choices=("auto", "always", "never"),
                   help="whether the CPU backend runs the CPU artifact: auto (default) when its output "
                        "agreement on the calibration items is at least the TensorRT form's (else that "
                        "one runs as written, slower than fp32); always (then `parity` judges it); never")
    _add_common(p)
    p.set_defaults(handler="batchforge.calibration.commands:cmd_calibrate")

    p = sub.add_parser("build", help="engine for a precision: TensorRT plan or ONNX Runtime artifact",
                       description="Build a strongly typed TensorRT engine (or the ONNX Runtime "
                                   "equivalent) from the fp32/fp16/int8 ONNX, with a manifest.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime"))
    p.add_argument("--min-batch", type=POSITIVE, help="override the profile's min batch")
    p.add_argument("--opt-batch", type=POSITIVE, help="override the profile's opt batch")
    p.add_argument("--max-batch", type=POSITIVE, help="override the profile's max batch")
    p.add_argument("--workspace-mib", type=POSITIVE, default=4096, help="TensorRT workspace limit (MiB)")
    p.add_argument("--opt-level", type=int, default=3, choices=range(0, 6), metavar="0-5",
                   help="TensorRT builder optimisation level (default: 3)")
    p.add_argument("--timing-cache", metavar="FILE",
                   help="TensorRT timing cache, reused across builds (default: OUTPUT_DIR/timing.cache)")
    p.add_argument("--hardware-compat", default="none", choices=("none", "ampere_plus", "same_compute_capability"),
                   help="TensorRT hardware compatibility level (default: none)")
    p.add_argument("--no-speed-check", action="store_true",
                   help="ONNX Runtime fp16/int8: skip the short interleaved timing against fp32 at the "
                        "profile's opt batch (printed in one line, recorded in the manifest; a precision "
                        "slower than fp32 on this backend is named)")
    p.add_argument("--version-compatible", action="store_true",
                   help="build a TensorRT version-compatible engine (runs on later TensorRT)")
    _add_common(p)
    p.set_defaults(handler="batchforge.engines.commands:cmd_build")

    p = sub.add_parser("parity", help="compare engines with the PyTorch reference (the CI gate)",
                       description="Run every parity check for the given models and precisions. "
                                   "Exit 0 = all within tolerance, 1 = a check failed, 2 = could not run.")
    p.add_argument("models", nargs="*", metavar="MODEL")
    p.add_argument("--all", action="store_true", help="every zoo model and ensemble")
    p.add_argument("--precision", default="fp32", help="comma list of fp32, fp16, int8 (default: fp32)")
    p.add_argument("--report", metavar="FILE.json",
                   help="write the JSON report here and a Markdown table beside it (FILE.md)")
    p.add_argument("--eval-size", type=POSITIVE, metavar="N",
                   help="evaluation set size: reid queries (gallery ~3x; default 32 + 100), detector 16, "
                        "keypoints/anomaly 32 images (smaller for smoke tests, larger for more coverage)")
    p.add_argument("--data", metavar="DIR|FILE.npz",
                   help="evaluate on your inputs instead of the family's generator: a folder of images "
                        "(each side preprocesses them) or a .npz/.npy of preprocessed arrays, one per input "
                        "name (tensors models); the same sources as calibrate --data. Warns when they are "
                        "the calibration data. Not for reid/ptycho, whose checks need the generator's structure")
    p.add_argument("--allow-known-failures", action="store_true",
                   help="exit 0 when the only failures are zoo runs listed with their measured reason in "
                        "batchforge/tolerances.py KNOWN_FAILURES (they still run and are reported as KNOWN)")
    p.add_argument("--factory", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="a user model's factory to build its PyTorch reference with (repeatable): parity "
                        "imports the factory export.json names only when it is a zoo model's or given here")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a run is UNINFORMATIVE: the FP32 reference gives (nearly) the same output "
                        "for different inputs (sanity_* checks), so agreement with it proves little "
                        "(default: a WARNING on stderr, exit 0)")
    _add_backend(p, default="onnxruntime")
    _add_common(p)
    p.set_defaults(handler="batchforge.parity.commands:cmd_parity")

    p = sub.add_parser("run", help="batched inference over images -> streaming JSONL",
                       description="Run a model or ensemble (or a deployment bundle) over a folder or glob "
                                   "of inputs. One JSON line per input, in order; bad inputs get an error record.")
    p.add_argument("model", metavar="MODEL", nargs="?", help="model or ensemble (optional with --bundle)")
    p.add_argument("--bundle", metavar="DIR|FILE.tar.gz",
                   help="run a bundle from `batchforge bundle` (every file's sha256 verified first) "
                        "instead of --output-dir")
    p.add_argument("--input", required=True, metavar="DIR|GLOB")
    p.add_argument("--output", required=True, metavar="FILE.jsonl")
    p.add_argument("--batch-size", type=POSITIVE, metavar="N", help="items per batch (default: profile opt)")
    p.add_argument("--overlays", metavar="DIR", help="mtcnn, detector, facepose, keypoints: write each image with "
                                                       "its boxes/landmarks/keypoints drawn (PNG) into DIR")
    p.add_argument("--workers", type=NON_NEGATIVE, metavar="N",
                   help="threads that read, decode and preprocess ahead of inference; 0 runs every stage "
                        "on one thread (default: half the cores, 1 to 4); results are the same for any N")
    p.add_argument("--profile", metavar="FILE.json",
                   help="write per-stage times (read, decode, preprocess, infer, postprocess, write), "
                        "queue waits, the bottleneck and items/s; a short table goes to stderr")
    p.add_argument("--precision", choices=PRECISIONS, help="fp32, fp16 or int8 (default: fp32, or the bundle's)")
    p.add_argument("--gallery", metavar="FILE.npz", help="reid: match against this gallery")
    p.add_argument("--include-embedding", action="store_true", help="reid: write embeddings too")
    p.add_argument("--infer-config", metavar="FILE",
                   help="anomaly: an infer_config.json (defects, tiling, image threshold); check it "
                        "first with `batchforge validate-config FILE`")
    p.add_argument("--max-pixels", type=POSITIVE, default=40_000_000,
                   help="refuse larger images (default: 40000000)")
    p.add_argument("--ray", action="store_true",
                   help="run on Ray Data (batchforge[ray]): actors load the pipeline, the JSONL is the same, "
                        "in input order")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="with --ray: a running cluster, e.g. ray://head:10001 or auto (default: a local Ray)")
    p.add_argument("--concurrency", type=POSITIVE, metavar="N", help="with --ray: pipeline actors (default: 1)")
    _add_backend(p)
    _add_common(p)
    p.set_defaults(handler="batchforge.runtime.commands:cmd_run")

    p = sub.add_parser("gallery", help="reid: embed labelled images into a gallery .npz",
                       description="Labels are the file stem, or the parent folder with --label-from parent.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--input", required=True, metavar="DIR|GLOB")
    p.add_argument("--output", required=True, metavar="FILE.npz")
    p.add_argument("--label-from", choices=("stem", "parent"), default="stem")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    _add_backend(p)
    _add_common(p)
    p.set_defaults(handler="batchforge.runtime.commands:cmd_gallery")

    p = sub.add_parser("bench", help="throughput: raw session.run vs runner vs PyTorch eager, or "
                                     "precisions against FP32",
                       description="Images/s per batch size for raw InferenceSession.run, the "
                                   "batchforge runner and PyTorch eager, same threads and inputs. With "
                                   "several precisions (--precision fp32,fp16,int8): each precision's "
                                   "runner (the artifact `run` loads) timed interleaved, as a ratio to "
                                   "FP32, with the fused int8 node counts; a precision slower than FP32 "
                                   "is named.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--batch-sizes", default="1,8", help="comma list (default: 1,8)")
    p.add_argument("--repeats", type=POSITIVE, default=5, help="timed runs per point, median reported")
    p.add_argument("--precision", default="fp32", metavar="P[,P...]",
                   help="fp32, fp16 or int8; a comma list compares them (default: fp32)")
    p.add_argument("--json", metavar="FILE", help="write results as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="write a throughput plot (needs matplotlib)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager column")
    p.add_argument("--factory", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="a user model's factory for the PyTorch eager column (as for parity: a factory "
                        "export.json names is imported only when it is a zoo model's or given here)")
    _add_backend(p, default="onnxruntime")
    _add_common(p)
    p.set_defaults(handler="batchforge.parity.bench:cmd_bench")

    p = sub.add_parser("inspect", help="ONNX or engine: I/O, dynamic dims, manifest, lint")
    p.add_argument("path", metavar="PATH", help="an .onnx file, an engine manifest/plan, or a model folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler="batchforge.export.inspect:cmd_inspect")

    p = sub.add_parser("doctor", help="backends found; GPU/driver/CUDA/TensorRT/ONNX Runtime versions; lock drift",
                       description="Reports Python, package versions, ONNX Runtime providers, CUDA devices and "
                                   "driver, which backends can run, and every installed package that differs "
                                   "from the tested lock (the checkout's constraints.txt). Exit 0 unless "
                                   "--strict-lock finds drift (exit 1).")
    p.add_argument("--json", action="store_true")
    p.add_argument("--lock", metavar="FILE", help="a pip constraints file of name==version pins to compare "
                                                   "against (default: constraints.txt of the checkout)")
    p.add_argument("--strict-lock", action="store_true", help="exit 1 when an installed package differs "
                                                              "from the lock")
    p.set_defaults(handler="batchforge.runtime.commands:cmd_doctor")

    p = sub.add_parser("deploy", help="serving layouts: a Triton model repository",
                       description="Write what a serving system loads, from verified artifacts.")
    targets = p.add_subparsers(dest="target", metavar="TARGET")
    t = targets.add_parser("triton", help="REPO/MODEL/config.pbtxt + REPO/MODEL/1/model.onnx|model.plan",
                           description="A Triton model repository for a model (an ensemble: each member). "
                                       "The config is built with Triton's schema (needs batchforge[triton]).")
    _add_deployed_model(t, "REPO", "the model repository folder (created if missing)")
    t.add_argument("--platform", default="auto", choices=("auto", "onnxruntime_onnx", "tensorrt_plan"),
                   help="auto: tensorrt_plan when `build --backend tensorrt` made a plan, else onnxruntime_onnx")
    t.add_argument("--max-queue-delay-us", type=int, default=100, metavar="US",
                   help="dynamic batching: longest wait to fill a preferred batch (default: 100)")
    t.add_argument("--instances", type=int, default=1, metavar="N", help="model instances (default: 1)")
    t.add_argument("--instance-kind", default="auto", choices=("auto", "cpu", "gpu"),
                   help="where instances run (default: auto; a plan always runs on the GPU)")
    t.set_defaults(handler="batchforge.deploy.commands:cmd_deploy_triton")

    p = sub.add_parser("bundle", help="a verifiable deployment bundle: artifact, records, environment, sha256 list",
                       description="Bundle what was validated: the engine or ONNX (+ external data) with its "
                                   "records, export.json, the calibration record, tolerances, the parity report "
                                   "it passed, the infer config (anomaly), the environment, and SHA256SUMS. "
                                   "`run --bundle` verifies every file first. An ensemble bundles all members.")
    _add_deployed_model(p, "DIR|FILE.tar.gz", "a new folder, or a .tar.gz / .tgz file")
    p.add_argument("--infer-config", metavar="FILE", help="anomaly: the infer_config.json to ship and apply")
    p.add_argument("--parity-report", metavar="FILE.json",
                   help="the `parity --report` it passed (its runs of this model at this precision must be PASSED)")
    p.set_defaults(handler="batchforge.deploy.commands:cmd_bundle")

    p = sub.add_parser("validate-config", help="check an anomaly infer_config.json; print every problem")
    p.add_argument("path", metavar="FILE")
    p.set_defaults(handler="batchforge.runtime.infer_config:cmd_validate_config")

    p = sub.add_parser("samples", help="write deterministic sample inputs for a family",
                       description="Synthetic, seeded inputs used by the main job and for calibration: "
                                   "reid identities in two views (idNNNN_view0/1.png), scenes with objects "
                                   "or faces, textures with planted defects, animals, ptychography "
                                   "diffraction patterns (.npy). Same seed, same files.")
    p.add_argument("family", metavar="FAMILY",
                   help=f"one of: {known_families()}")
    p.add_argument("--count", type=POSITIVE, default=16, help="how many inputs (default: 16)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (created if missing)")
    p.add_argument("--seed", type=int, default=1000,
                   help="1000 = run samples (default), 4000 = the calibration seed the main job uses; "
                        "2000 is the parity evaluation set")
    p.set_defaults(handler="batchforge.export.commands:cmd_samples")
    return parser


EXTRAS = {"torch": "export", "torchvision": "export", "onnx": "export", "onnxscript": "export",
          "safetensors": "export", "onnxruntime": "cpu", "tensorrt": "tensorrt", "cuda": "gpu",
          "matplotlib": "dev", "tritonclient": "triton", "ray": "ray"}


def _missing_dependency(exc: ModuleNotFoundError) -> BatchforgeError:
    missing = (exc.name or "a dependency").split(".")[0]
    extra = EXTRAS.get(missing, "export")
    return BatchforgeError(f"this command needs {missing!r}, which is not installed",
                           hint=f"install it with `pip install 'batchforge[{extra}]'`")


def _load_handler(target: str):
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_COULD_NOT_RUN
    if getattr(args, "ray", False):  # `run --ray`: the runtime never imports ray
        args.handler = "batchforge.integrations.ray:cmd_run_ray"
    try:
        try:
            return int(_load_handler(args.handler)(args) or 0)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in EXTRAS:
                raise
            raise _missing_dependency(exc) from None
    except BatchforgeError as exc:
        print(f"batchforge {args.command}: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"batchforge {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `batchforge inspect ... | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (silence the flush at exit)
        return 0
    except OSError as exc:  # a file that cannot be read or written, a full disk
        if exc.errno in WRITE_ERRNOS:  # the file being written: shutil.copyfile names it filename2
            full = storage_error(OSError(exc.errno, exc.strerror, exc.filename2 or exc.filename))
            print(f"batchforge {args.command}: error: {full.one_line()}", file=sys.stderr)
            return EXIT_COULD_NOT_RUN
        where = f" {exc.filename}" if exc.filename else ""
        code = f" (errno {exc.errno} {errno.errorcode.get(exc.errno, '?')})" if exc.errno else ""
        print(f"batchforge {args.command}: error: could not access{where}: {exc.strerror or exc}{code} "
              "(check the path, its permissions and the free space)", file=sys.stderr)
        return EXIT_COULD_NOT_RUN


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
