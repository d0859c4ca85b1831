"""Prove the reid gate can fail: plant each fault in a copy of exported artifacts, run the real
gate (full evaluation set), and print what caught it. Expects `batchforge export reid_ensemble`
to have been run (uses --output-dir, default artifacts); writes only under a temp folder.

    python scripts/planted_faults.py [--output-dir artifacts] [--eval-size N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import edit_export_spec, replant_onnx  # noqa: E402

from batchforge.cli import main as cli  # noqa: E402
from batchforge.runtime.artifacts import ModelArtifacts, Precision, write_json_atomic  # noqa: E402


def swap_channels(art: ModelArtifacts) -> None:
    edit_export_spec(art, lambda s: s["preprocess"].update(channel_order="BGR"))


def wrong_normalisation(art: ModelArtifacts) -> None:
    edit_export_spec(art, lambda s: s["preprocess"].update(mean=[0.5] * 3, std=[0.5] * 3))


def perturb_weight(art: ModelArtifacts) -> None:
    def mutate(model):
        tensor = next(t for t in model.graph.initializer if len(t.dims) == 4)
        array = numpy_helper.to_array(tensor).copy()
        array.flat[: array.size // 4] *= 1.5
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    replant_onnx(art, Precision.FP32, mutate)


def drop_bias(art: ModelArtifacts) -> None:
    def mutate(model):
        conv = next(n for n in model.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) == 3)
        del conv.input[2]
    replant_onnx(art, Precision.FP32, mutate)


def ensemble_weights(art: ModelArtifacts) -> None:
    path = art.dir / "ensemble.json"
    data = json.loads(path.read_text())
    for member, weight in zip(data["members"], (0.2, 0.4, 0.4)):
        member["weight"] = weight
    write_json_atomic(path, data)


FAULTS: list[tuple[str, str, Callable[[ModelArtifacts], None]]] = [
    ("RGB/BGR swapped in export.json", "reid_resnet50", swap_channels),
    ("wrong mean/std in export.json", "reid_efficientnet_b3", wrong_normalisation),
    ("perturbed weight in the ONNX", "reid_vit_b_16", perturb_weight),
    ("dropped bias in the ONNX", "reid_resnet50", drop_bias),
    ("ensemble weights 0.2/0.4/0.4", "reid_ensemble", ensemble_weights),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="artifacts")
    parser.add_argument("--eval-size", type=int, help="shrink the evaluation set (default: the gate's)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="batchforge-faults-") as tmp:
        for label, model, plant in FAULTS:
            root = Path(tmp) / "artifacts"
            shutil.rmtree(root, ignore_errors=True)
            needed = [model]
            ensemble = Path(args.output_dir) / model / "ensemble.json"
            if ensemble.is_file():
                needed += [m["model"] for m in json.loads(ensemble.read_text())["members"]]
            for name in needed:
                shutil.copytree(Path(args.output_dir) / name, root / name,
                                ignore=shutil.ignore_patterns("*.plan", "engine.*"))
            plant(ModelArtifacts.at(root, model))
            report = Path(tmp) / "report.json"
            argv = ["parity", model, "--output-dir", str(root), "--backend", "onnxruntime",
                    "--report", str(report)] + (["--eval-size", str(args.eval_size)] if args.eval_size else [])
            with contextlib.redirect_stdout(io.StringIO()):
                code = cli(argv)
            failing = [f"{c['name']}={c['value']:.4g}" for r in json.loads(report.read_text())["reports"]
                       for c in r["checks"] if not c["passed"]]
            rows.append((label, model, code, ", ".join(failing[:3])))
            print(f"{label:34} {model:22} exit {code}  {rows[-1][3]}", flush=True)
    caught = sum(code == 1 for _, _, code, _ in rows)
    print(f"\n{caught}/{len(rows)} planted faults made the gate exit 1")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
