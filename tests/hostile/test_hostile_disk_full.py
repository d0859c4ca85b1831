"""Issue #29 case 12 (disk full): a write that fails is one line naming the file and the errno,
exit 2, and nothing is left behind -- not in the model folder, not in its staging folder."""

import errno
import json
import shutil

import pytest
from user_models import spec_dict

from batchforge.cli import main
from batchforge.runtime.artifacts import ModelArtifacts, Precision

FULL = OSError(errno.ENOSPC, "No space left on device")


def _export(tmp_path, out, capsys) -> tuple[int, str]:
    """``export`` of the tiny user model into ``out``: (exit code, stderr)."""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(spec_dict()))
    code = main(["export", "--factory", "user_models:tiny_embedder", "--spec", str(spec), "--output-dir", str(out)])
    return code, capsys.readouterr().err


def _leftovers(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("failure", ["oserror", "safetensors", "safetensors_debug"])
def test_export_on_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys, failure):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(state, path):
        with open(path, "wb") as fh:  # a partial file, as a real full disk leaves
            fh.write(b"\0" * 100)
        if failure == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device", path)
        if failure == "safetensors":  # what safetensors 0.8 raised on a 2 MB tmpfs filled to the last 20 kB
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "out"
    code, err = _export(tmp_path, out, capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "batchforge export: error: could not write " in err
    assert "/reference.safetensors: No space left on device (errno 28 ENOSPC)" in err
    assert "free space on that file system" in err
    assert _leftovers(out) == []  # no model folder, no staging folder


def test_an_unnamed_oserror_names_the_staging_folder(tmp_path, monkeypatch, capsys):
    import batchforge.export.exporter as exporter

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # a library's writer, no filename

    monkeypatch.setattr(exporter, "export_onnx", full)
    out = tmp_path / "out"
    code, err = _export(tmp_path, out, capsys)
    assert code == 2 and "Traceback" not in err
    assert f"could not write {out}/.user_tiny.export." in err and "(errno 28 ENOSPC)" in err
    assert _leftovers(out) == []


def test_a_full_disk_under_torch_onnx_export_is_not_an_exporter_failure(tmp_path, monkeypatch, capsys):
    """Measured on a full tmpfs: both exporters raised ENOSPC, reported as 'failed with both exporters'."""
    import torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", full)
    out = tmp_path / "out"
    code, err = _export(tmp_path, out, capsys)
    assert code == 2 and "Traceback" not in err and "both exporters" not in err
    assert f"could not write {out}/.user_tiny.export." in err
    assert "/model.fp32.onnx: No space left on device (errno 28 ENOSPC)" in err
    assert _leftovers(out) == []


def test_calibrate_on_a_full_disk_leaves_no_inferred_model(user_tiny_artifacts, tmp_path, monkeypatch, capsys):
    import onnx.shape_inference

    src_root, name = user_tiny_artifacts
    root = tmp_path / "artifacts"
    shutil.copytree(src_root, root)
    before = _leftovers(root)
    written = []

    def full(model_path, output_path, *args, **kwargs):  # what onnxruntime.quantization calls first
        with open(output_path, "wb") as fh:
            fh.write(b"\0" * 100)
        written.append(output_path)
        raise OSError(errno.ENOSPC, "No space left on device", output_path)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes_path", full)
    code = main(["calibrate", name, "--allow-synthetic", "--samples", "8", "--output-dir", str(root)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert written, err
    assert written[0].endswith("model.fp32-inferred.onnx")
    assert f"batchforge calibrate: error: could not write {written[0]}: No space left on device (errno 28 ENOSPC)" \
        in line
    assert _leftovers(root) == before  # no model.fp32-inferred.onnx, no staging folder, no int8 file
    assert not ModelArtifacts.at(root, name).onnx(Precision.INT8).exists()


def test_calibrate_on_a_full_disk_where_onnx_truncates_silently(user_tiny_artifacts, tmp_path, monkeypatch, capsys):
    """What a 2 MB tmpfs filled to its last 8 kB did for real: onnx's shape inference wrote a truncated
    model.fp32-inferred.onnx without an error, and onnxruntime.quantization's parse of it raised a
    protobuf DecodeError. With the disk full, that is the full disk's one line."""
    import collections

    import onnx.shape_inference

    import batchforge.calibration.commands as commands

    src_root, name = user_tiny_artifacts
    root = tmp_path / "artifacts"
    shutil.copytree(src_root, root)
    before = _leftovers(root)

    def truncated(model_path, output_path, *args, **kwargs):
        with open(model_path, "rb") as src, open(output_path, "wb") as out:
            out.write(src.read()[:100])

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes_path", truncated)
    monkeypatch.setattr(commands.shutil, "disk_usage", lambda path: usage(2**21, 2**21 - 4096, 4096))
    code = main(["calibrate", name, "--allow-synthetic", "--samples", "8", "--output-dir", str(root)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert f"batchforge calibrate: error: could not write {root / name}/.{name}.calibrate." in line
    assert ": No space left on device (errno 28 ENOSPC): 4,096 bytes free when DecodeError was raised" in line
    assert _leftovers(root) == before


def test_convert_whose_record_meets_the_full_disk_moves_nothing_into_place(user_tiny_artifacts, tmp_path,
                                                                            monkeypatch, capsys):
    """Measured on a full tmpfs: the FP16 model fitted, its record did not, and model.fp16.onnx was left
    in the model folder without one. The record is now written in the staging folder first."""
    import batchforge.calibration.commands as commands

    src_root, name = user_tiny_artifacts
    root = tmp_path / "artifacts"
    shutil.copytree(src_root, root)
    before = _leftovers(root)

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")  # json.dump's write names no file

    monkeypatch.setattr(commands, "write_json_atomic", full)
    code = main(["convert", name, "--allow-synthetic", "--samples", "8", "--output-dir", str(root)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert f"could not write {root / name}/.{name}.convert." in line
    assert "/convert.fp16.json: No space left on device (errno 28 ENOSPC)" in line
    assert _leftovers(root) == before  # no model.fp16.onnx without its record


def test_bundle_on_a_full_disk_names_the_copy_not_its_source(tmp_path, monkeypatch, capsys):
    """Measured on a full tmpfs: shutil.copyfile's ENOSPC names the source as filename (the line read
    'could not access .../artifacts/tiny/export.json') and the file being written as filename2."""
    from helpers import tiny_embedder_onnx, tiny_spec, write_artifact

    import batchforge.deploy.bundle as bundle

    root = tmp_path / "artifacts"
    write_artifact(root, tiny_embedder_onnx(), tiny_spec("tiny"))

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(src), None, str(dst))

    monkeypatch.setattr(bundle.shutil, "copyfile", full)
    out = tmp_path / "deploy" / "tiny.tar.gz"
    code = main(["bundle", "tiny", "--out", str(out), "--output-dir", str(root)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"batchforge bundle: error: could not write {out.parent}/.tiny.tar.gz.bundle." in err
    assert "No space left on device (errno 28 ENOSPC)" in err and str(root) not in err
    assert _leftovers(out.parent) == []
