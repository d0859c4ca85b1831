"""Issue #29 case 13 (SIGKILL): export, convert/calibrate and bundle stage beside their output,
and the next start of the same command removes the staging folders of processes that no longer
run; a live process's folder is left alone. Each leftover here is made by a real SIGKILL."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from helpers import tiny_embedder_onnx, tiny_spec, write_artifact
from user_models import spec_dict

from batchforge.cli import main
from batchforge.runtime.staging import make_staging, remove_stale_staging

TESTS = Path(__file__).resolve().parents[1]


def killed_during(snippet: str, argv: list[str], **env: str) -> None:
    """Runs ``batchforge argv`` in a child whose ``snippet`` (given ``die()``) SIGKILLs it midway."""
    code = ("import os, signal, sys\n"
            "def die(*args, **kwargs):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
            f"{snippet}\nfrom batchforge.cli import main\nmain({argv!r})\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), **env}
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]


def staged(folder: Path, kind: str) -> list[Path]:
    return sorted(p for p in folder.glob(f".*.{kind}.*") if p.is_dir())


def test_export_removes_a_killed_exports_staging(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(spec_dict()))
    out = tmp_path / "out"
    argv = ["export", "--factory", "user_models:tiny_embedder", "--spec", str(spec), "--output-dir", str(out)]
    killed_during("import batchforge.export.exporter as e\ne.save_weights = die", argv)
    (left,) = staged(out, "export")
    assert (left / "model.fp32.onnx").is_file() and not (out / "user_tiny").exists()
    assert main(argv) == 0
    assert staged(out, "export") == [] and (out / "user_tiny" / "export.json").is_file()


def test_calibrate_removes_a_killed_calibrations_staging(user_tiny_artifacts, tmp_path, capsys):
    src_root, name = user_tiny_artifacts
    root = tmp_path / "artifacts"
    shutil.copytree(src_root, root)
    model_dir = root / name
    before = sorted(p.name for p in model_dir.iterdir())
    argv = ["calibrate", name, "--allow-synthetic", "--samples", "8", "--output-dir", str(root)]
    killed_during("import onnx.shape_inference as si\nreal = si.infer_shapes_path\n"
                  "def infer_then_die(*a, **k):\n    real(*a, **k)\n    die()\n"
                  "si.infer_shapes_path = infer_then_die", argv)
    (left,) = staged(model_dir, "calibrate")
    assert (left / "model.fp32-inferred.onnx").is_file()  # onnxruntime's, staged rather than beside the model
    assert sorted(p.name for p in model_dir.iterdir()) == sorted([*before, left.name])
    assert main(argv) == 0
    assert staged(model_dir, "calibrate") == [] and not (model_dir / "model.fp32-inferred.onnx").exists()


def test_bundle_removes_a_killed_bundles_staging(tmp_path, capsys):
    root = tmp_path / "artifacts"
    write_artifact(root, tiny_embedder_onnx(), tiny_spec("tiny"))
    out = tmp_path / "deploy" / "tiny.tar.gz"
    argv = ["bundle", "tiny", "--out", str(out), "--output-dir", str(root)]
    killed_during("import batchforge.deploy.bundle as b\nb.verify_files = die", argv)
    (left,) = staged(out.parent, "bundle")
    assert (left / "SHA256SUMS").is_file() and not out.exists()
    assert main(argv) == 0
    assert staged(out.parent, "bundle") == [] and out.is_file()


def test_run_bundle_removes_a_killed_runs_extraction(tmp_path, monkeypatch, capsys):
    import tempfile

    from hostile_files import BACKEND, good_images

    root = tmp_path / "artifacts"
    write_artifact(root, tiny_embedder_onnx(), tiny_spec("tiny"))
    assert main(["bundle", "tiny", "--out", str(tmp_path / "tiny.tar.gz"), "--output-dir", str(root)]) == 0
    good_images(tmp_path / "in", 2)
    temp = tmp_path / "temp"
    temp.mkdir()
    argv = ["run", "--bundle", str(tmp_path / "tiny.tar.gz"), "--input", str(tmp_path / "in"),
            "--output", str(tmp_path / "r.jsonl"), *BACKEND]
    killed_during("import batchforge.runtime.bundle as b\nb._verified = die", argv, TMPDIR=str(temp))
    (left,) = staged(temp, "extract")
    assert (left / "SHA256SUMS").is_file()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    assert main(argv) == 0
    assert left not in staged(temp, "extract") and not left.exists()


def test_only_dead_processes_folders_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folders = {kind: tmp_path / f".m.export.{pid}.x" for kind, pid in
               (("dead", dead.stdout.strip()), ("alive", os.getppid()), ("mine", os.getpid()), ("not_a_pid", "abc"))}
    for folder in folders.values():
        folder.mkdir()
    (tmp_path / "target").mkdir()
    (tmp_path / f".m.export.{dead.stdout.strip()}.link").symlink_to(tmp_path / "target")
    other_kind = tmp_path / f".m.bundle.{dead.stdout.strip()}.x"
    other_kind.mkdir()
    assert remove_stale_staging(tmp_path, "m", "export") == [folders["dead"]]
    assert all(f.is_dir() for k, f in folders.items() if k != "dead") and other_kind.is_dir()
    assert (tmp_path / "target").is_dir()  # a link is never followed
    fresh = make_staging(tmp_path, "m", "export")
    assert fresh.name.startswith(f".m.export.{os.getpid()}.")
