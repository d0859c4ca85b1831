"""`batchforge bundle` and `run --bundle` / `load_pipeline(bundle=...)`: the bundle replays the local
results exactly, and a tampered, incomplete or unsafe bundle exits 2 naming the file before
anything is deserialised. Tiny ONNX models built with onnx.helper (no torch)."""

import gc
import io
import json
import tarfile
import tempfile

import pytest
from helpers import FAKE_PLAN, fake_plan, random_images, tiny_embedder_onnx, tiny_spec, write_artifact

from batchforge.cli import main
from batchforge.errors import UsageError
from batchforge.runtime.artifacts import ModelArtifacts, write_json_atomic
from batchforge.runtime.images import write_image
from batchforge.runtime.loading import load_pipeline
from batchforge.runtime.spec import EnsembleMember, EnsembleSpec


@pytest.fixture
def local(tmp_path):
    """Artifacts of a tiny reid model and an ensemble of two, six input images."""
    root = tmp_path / "artifacts"
    for name, seed in (("tiny", 0), ("other", 1)):
        write_artifact(root, tiny_embedder_onnx(seed=seed), tiny_spec(name))
    ensemble = EnsembleSpec("pair", "reid", (EnsembleMember("tiny", 0.6), EnsembleMember("other", 0.4)))
    (root / "pair").mkdir()
    write_json_atomic(root / "pair" / "ensemble.json", ensemble.to_dict())
    images = tmp_path / "images"
    images.mkdir()
    for i, image in enumerate(random_images(6, seed=3)):
        write_image(images / f"img{i}.png", image)
    return root, images


def run(argv, tmp_path, name):
    """`batchforge run` on the images; returns (exit code, output path)."""
    out = tmp_path / f"{name}.jsonl"
    return main(["run", *argv, "--input", str(tmp_path / "images"), "--output", str(out),
                 "--backend", "onnxruntime-cpu", "--batch-size", "4"]), out


def bundle(local, out, *extra, model="tiny"):
    return main(["bundle", model, "--out", str(out), "--output-dir", str(local[0]), *extra])


@pytest.mark.parametrize("model", ["tiny", "pair"])
def test_run_bundle_reproduces_the_local_run(local, tmp_path, capsys, model):
    code, expected = run([model, "--output-dir", str(local[0])], tmp_path, "local")
    assert code == 0
    assert bundle(local, tmp_path / "b", model=model) == 0
    assert "every file in SHA256SUMS" in capsys.readouterr().out
    code, got = run(["--bundle", str(tmp_path / "b")], tmp_path, "bundled")
    assert code == 0
    assert got.read_text() == expected.read_text() and len(got.read_text().splitlines()) == 6
    record = json.loads((tmp_path / "b" / "bundle.json").read_text())
    members = ["tiny", "other"] if model == "pair" else ["tiny"]
    assert (record["model"], record["precision"], record["family"], record["members"]) == (model, "fp32", "reid",
                                                                                           members)
    listed = sorted(line.split("  ")[1] for line in (tmp_path / "b" / "SHA256SUMS").read_text().splitlines())
    expected_files = {"bundle.json", "environment.json", "tolerances.json"}
    expected_files |= {f"artifacts/{m}/{f}" for m in members for f in ("export.json", "model.fp32.onnx")}
    expected_files |= {"artifacts/pair/ensemble.json"} if model == "pair" else set()
    assert listed == sorted(expected_files)
    tolerances = json.loads((tmp_path / "b" / "tolerances.json").read_text())["members"]["tiny"]
    assert tolerances["family"] == "reid" and tolerances["limits"]["embedding_cosine"]["kind"] == "min"
    env = json.loads((tmp_path / "b" / "environment.json").read_text())
    assert env["packages"]["onnxruntime"] not in ("", "not installed") and "python" in env


def test_a_tarball_bundle_runs_the_same_and_its_temp_copy_is_removed(local, tmp_path, capsys, monkeypatch):
    code, expected = run(["tiny", "--output-dir", str(local[0])], tmp_path, "local")
    assert bundle(local, tmp_path / "tiny.tar.gz") == 0
    assert "bundle of 6 files" in capsys.readouterr().out
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where the tarball is extracted
    code, got = run(["tiny", "--bundle", str(tmp_path / "tiny.tar.gz")], tmp_path, "bundled")
    assert code == 0 and got.read_text() == expected.read_text()
    with tarfile.open(tmp_path / "tiny.tar.gz") as tar:
        assert all(m.isfile() and m.uid == 0 and m.mtime == 0 for m in tar.getmembers())
    pipeline = load_pipeline(bundle=tmp_path / "tiny.tar.gz", backend="onnxruntime-cpu")
    assert len(list(temp.iterdir())) == 1  # the verified copy the pipeline loads from
    with pipeline:
        assert pipeline.spec.name == "tiny"
    del pipeline
    gc.collect()
    assert list(temp.iterdir()) == []


def flip_byte(path, offset=200):
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def refused(tmp_path, capsys, bundle_path):
    """`run --bundle` exits 2 with one line on stderr and writes no output; returns that line."""
    capsys.readouterr()
    code, out = run(["--bundle", str(bundle_path)], tmp_path, "refused")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert len(err) == 1, err
    return err[-1]


def test_one_flipped_byte_exits_2_naming_the_file(local, tmp_path, capsys):
    assert bundle(local, tmp_path / "b") == 0
    flip_byte(tmp_path / "b" / "artifacts" / "tiny" / "model.fp32.onnx")
    line = refused(tmp_path, capsys, tmp_path / "b")
    assert "artifacts/tiny/model.fp32.onnx does not match its sha256 in SHA256SUMS" in line


@pytest.mark.parametrize("change, message", [
    (lambda b: (b / "artifacts" / "tiny" / "export.json").unlink(),
     "artifacts/tiny/export.json is listed in SHA256SUMS but missing"),
    (lambda b: (b / "SHA256SUMS").unlink(), "is incomplete: SHA256SUMS is missing"),
    (lambda b: (b / "artifacts" / "tiny" / "extra.onnx").write_bytes(b"x"),
     "artifacts/tiny/extra.onnx is not listed in SHA256SUMS"),
    (lambda b: (b / "artifacts" / "tiny" / "link.json").symlink_to(b / "bundle.json"),
     "artifacts/tiny/link.json is a link or special file"),
])
def test_an_incomplete_or_padded_bundle_exits_2_naming_the_file(local, tmp_path, capsys, change, message):
    assert bundle(local, tmp_path / "b") == 0
    change(tmp_path / "b")
    assert message in refused(tmp_path, capsys, tmp_path / "b")


def _tar(path, entries):
    """A .tar.gz from (TarInfo, bytes or None) pairs."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def test_a_changed_file_inside_a_tarball_is_named(local, tmp_path, capsys):
    assert bundle(local, tmp_path / "b") == 0
    flip_byte(tmp_path / "b" / "artifacts" / "tiny" / "export.json", offset=40)
    with tarfile.open(tmp_path / "t.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "b", arcname=".")
    line = refused(tmp_path, capsys, tmp_path / "t.tar.gz")
    assert "artifacts/tiny/export.json does not match its sha256" in line


def test_a_corrupted_tarball_exits_2_naming_it(local, tmp_path, capsys):
    assert bundle(local, tmp_path / "t.tar.gz") == 0
    flip_byte(tmp_path / "t.tar.gz", offset=(tmp_path / "t.tar.gz").stat().st_size // 2)
    line = refused(tmp_path, capsys, tmp_path / "t.tar.gz")
    assert f"bundle {tmp_path / 't.tar.gz'} is not a readable tar archive" in line, line


@pytest.mark.parametrize("name, kind, message", [
    ("../evil.json", tarfile.REGTYPE, "'../evil.json' is a path that leaves the bundle"),
    ("/tmp/evil.json", tarfile.REGTYPE, "'/tmp/evil.json' is an absolute path"),
    ("bundle.json", tarfile.SYMTYPE, "'bundle.json' is a link"),
    ("dev", tarfile.CHRTYPE, "'dev' is a device or special file"),
])
def test_unsafe_tar_entries_are_refused_before_extraction(tmp_path, capsys, name, kind, message):
    info = tarfile.TarInfo(name)
    info.type = kind
    data = None
    if kind == tarfile.REGTYPE:
        data = b"{}"
        info.size = len(data)
    else:
        info.linkname = "/etc/passwd"
    (tmp_path / "images").mkdir()
    write_image(tmp_path / "images" / "a.png", random_images(1)[0])
    _tar(tmp_path / "evil.tar.gz", [(info, data)])
    line = refused(tmp_path, capsys, tmp_path / "evil.tar.gz")
    assert message in line
    assert not (tmp_path / "evil.json").exists()


def test_load_pipeline_refuses_another_model_or_precision_than_the_bundles(local, tmp_path):
    assert bundle(local, tmp_path / "b") == 0
    with pytest.raises(UsageError, match="holds model 'tiny', not 'other'"):
        load_pipeline("other", bundle=tmp_path / "b")
    with pytest.raises(UsageError, match="holds 'tiny' at fp32, not at int8"):
        load_pipeline(bundle=tmp_path / "b", precision="int8")


def test_parity_report_must_show_the_model_passed(local, tmp_path, capsys):
    from batchforge.parity.report import Check, ModelReport
    from batchforge.tolerances import at_least

    # the runs as parity writes them (a test that wrote "PASSED" by hand hid that real reports say
    # "passed", so a real report never satisfied --parity-report)
    failing = ModelReport("other", "fp32", "onnxruntime", error="engine missing")
    report = {"verdict": "FAILED", "backend": "onnxruntime", "versions": {},
              "reports": [ModelReport("tiny", "fp32", "onnxruntime", checks=[Check("raw_cosine[y]", 1.0, at_least(
                  0.99999, "tier"))]).as_dict(), failing.as_dict()]}
    (tmp_path / "parity.json").write_text(json.dumps(report))
    assert bundle(local, tmp_path / "ok", "--parity-report", str(tmp_path / "parity.json")) == 0
    kept = json.loads((tmp_path / "ok" / "parity.json").read_text())
    assert kept["verdict"] == "PASSED" and [r["model"] for r in kept["reports"]] == ["tiny"]
    assert json.loads((tmp_path / "ok" / "bundle.json").read_text())["parity_report"] is True
    capsys.readouterr()
    assert bundle(local, tmp_path / "bad", "--parity-report", str(tmp_path / "parity.json"), model="other") == 2
    err = capsys.readouterr().err
    assert "shows other (could not run) at fp32, expected passed" in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


def test_bad_bundle_arguments_exit_2_with_one_line(local, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "cfg.json").write_text('{"schema_version": 2}')
    for argv, message in ((["--out", str(tmp_path / "full")], "already exists; expected a new folder"),
                          (["--out", str(tmp_path / "c"), "--infer-config", str(tmp_path / "cfg.json")],
                           "--infer-config applies to anomaly models; 'tiny' is a reid model"),
                          (["--out", str(tmp_path / "p"), "--precision", "int8"], "int8 ONNX for 'tiny' not found")):
        assert main(["bundle", "tiny", "--output-dir", str(local[0]), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts", "cfg.json", "full", "images"]


def test_built_engines_travel_with_their_manifests(local, tmp_path, capsys):
    assert main(["build", "tiny", "--backend", "onnxruntime", "--output-dir", str(local[0])]) == 0
    code, expected = run(["tiny", "--output-dir", str(local[0])], tmp_path, "local")
    fake_plan(ModelArtifacts.at(local[0], "tiny"))
    assert bundle(local, tmp_path / "b") == 0
    files = sorted(p.name for p in (tmp_path / "b" / "artifacts" / "tiny").iterdir())
    assert files == ["engine.fp32.json", "engine.fp32.ort.json", "engine.fp32.ort.onnx", "engine.fp32.plan",
                     "export.json", "model.fp32.onnx"]
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["engines"] == {"tiny": "tensorrt+onnxruntime"}
    assert (tmp_path / "b" / "artifacts" / "tiny" / "engine.fp32.plan").read_bytes() == FAKE_PLAN
    code, got = run(["--bundle", str(tmp_path / "b")], tmp_path, "bundled")  # ONNX Runtime: the built model
    assert code == 0 and got.read_text() == expected.read_text()
    flip_byte(local[0] / "tiny" / "engine.fp32.plan")
    capsys.readouterr()
    assert bundle(local, tmp_path / "c") == 2
    assert "engine.fp32.plan does not match its manifest" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_an_anomaly_bundle_ships_and_applies_its_infer_config(tmp_path, capsys):
    from batchforge.runtime.spec import ModelSpec, Preprocess, ProfileRange, TensorSpec

    spec = ModelSpec(name="inspect", family="anomaly", inputs=(TensorSpec("images", ("batch", 3, 64, 64)),),
                     outputs=("anomaly_map", "score"), profile=ProfileRange(1, 2, 4),
                     preprocess=Preprocess(height=64, width=64))
    write_artifact(tmp_path / "artifacts", tiny_embedder_onnx(size=64), spec)  # loaded lazily: never run here
    config = {"schema_version": 2, "model": "inspect", "defects": {"min_area": 7, "border_ignore_px": 2}}
    (tmp_path / "infer_config.json").write_text(json.dumps(config))
    assert main(["bundle", "inspect", "--out", str(tmp_path / "b"), "--output-dir", str(tmp_path / "artifacts"),
                 "--infer-config", str(tmp_path / "infer_config.json")]) == 0
    assert json.loads((tmp_path / "b" / "infer_config.json").read_text()) == config
    pipeline = load_pipeline(bundle=tmp_path / "b", backend="onnxruntime-cpu")
    assert (pipeline.options.defects.min_area, pipeline.options.defects.border_ignore_px) == (7, 2)
    other = {**config, "model": "elsewhere"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    capsys.readouterr()
    assert main(["bundle", "inspect", "--out", str(tmp_path / "c"), "--output-dir", str(tmp_path / "artifacts"),
                 "--infer-config", str(tmp_path / "other.json")]) == 2
    assert "infer config was written for model 'elsewhere', not 'inspect'" in capsys.readouterr().err
