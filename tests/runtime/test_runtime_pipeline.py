import json
import warnings

import numpy as np
import pytest
from helpers import random_images, tiny_embedder_onnx, tiny_spec, write_artifact

from batchforge.errors import ArtifactError, ConfigError, InputValidationError, IntegrityError
from batchforge.runtime import Gallery, load_pipeline
from batchforge.runtime.artifacts import ModelArtifacts, Precision, sha256_file, write_json_atomic
from batchforge.runtime.images import write_image
from batchforge.runtime.jsonl import JsonlWriter
from batchforge.runtime.loading import ENSEMBLE_FILE
from batchforge.runtime.results import ErrorRecord
from batchforge.runtime.spec import EnsembleMember, EnsembleSpec


@pytest.fixture
def artifacts(tmp_path):
    return write_artifact(tmp_path / "artifacts", tiny_embedder_onnx(), tiny_spec())


def open_tiny(artifacts, **kw):
    return load_pipeline("tiny", output_dir=artifacts.root, backend="onnxruntime-cpu", threads=1, **kw)


def test_batched_equals_sequential_and_order_is_kept(artifacts):
    images = random_images(11, shape=(13, 17))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_tiny(artifacts) as pipe:
            batched = pipe(images)
            sequential = [pipe([img])[0] for img in images]
    assert [r.source for r in batched] == [str(i) for i in range(11)]
    for a, b in zip(batched, sequential):
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-6)
        assert abs(np.linalg.norm(a.embedding) - 1) < 1e-5


def test_empty_batch_returns_empty_list(artifacts):
    with open_tiny(artifacts) as pipe:
        assert pipe([]) == []
        assert list(pipe.run_sources([])) == []


def test_bad_files_get_error_records_and_the_rest_is_processed(artifacts, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, img in enumerate(random_images(5)):
        write_image(folder / f"img{i}.png", img)
    (folder / "img2.png").write_bytes(b"not an image at all")
    (folder / "img4.png").write_bytes(b"")
    with open_tiny(artifacts) as pipe:
        results = list(pipe.run_sources(sorted(folder.iterdir()), batch_size=2))
    assert [type(r).__name__ for r in results] == ["ReidResult", "ReidResult", "ErrorRecord",
                                                    "ReidResult", "ErrorRecord"]
    assert results[2].source.endswith("img2.png") and "not a decodable image" in results[2].message
    assert "empty file" in results[4].message


def test_gallery_matching_finds_the_same_image(artifacts, tmp_path):
    images = random_images(6, seed=4)
    with open_tiny(artifacts) as pipe:
        emb = np.stack([r.embedding for r in pipe(images)])
    gallery = Gallery.from_embeddings(emb, [f"g{i}" for i in range(6)], "tiny")
    gallery.save(tmp_path / "g.npz")
    with open_tiny(artifacts, gallery=tmp_path / "g.npz") as pipe:
        results = pipe(images[::-1])
    assert [r.matches[0].label for r in results] == [f"g{i}" for i in range(5, -1, -1)]
    assert len(results[0].matches) == 3  # spec top_k
    assert results[0].to_record()["matches"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)


def test_gallery_from_another_model_is_refused(artifacts, tmp_path):
    Gallery.from_embeddings(np.ones((2, 5), np.float32), ["a", "b"], "other").save(tmp_path / "g.npz")
    with pytest.raises(InputValidationError, match="made by 'other', expected 'tiny'"):
        open_tiny(artifacts, gallery=tmp_path / "g.npz")
    with pytest.raises(ArtifactError, match="gallery not found"):
        open_tiny(artifacts, gallery=tmp_path / "none.npz")


def test_include_embedding_override_and_unknown_option(artifacts):
    with open_tiny(artifacts, overrides={"include_embedding": True}) as pipe:
        record = pipe(random_images(1))[0].to_record()
    assert len(record["embedding"]) == 5
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        open_tiny(artifacts, overrides={"colour": 1})


def test_modified_onnx_is_refused_by_its_hash(artifacts):
    path = artifacts.onnx(Precision.FP32)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="does not match its record"):
        open_tiny(artifacts)


def test_missing_artifacts_name_the_command(tmp_path):
    with pytest.raises(ArtifactError) as info:
        load_pipeline("nothing", output_dir=tmp_path, backend="onnxruntime-cpu")
    assert "batchforge export nothing" in info.value.one_line()
    artifacts = write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec())
    with pytest.raises(ArtifactError) as info:
        load_pipeline("tiny", output_dir=tmp_path, backend="onnxruntime-cpu", precision="int8")
    assert "batchforge calibrate tiny" in info.value.one_line()
    assert artifacts.dir.is_dir()


def test_stale_lower_precision_is_refused(artifacts):
    fp16 = artifacts.onnx(Precision.FP16)
    fp16.write_bytes(artifacts.onnx(Precision.FP32).read_bytes())
    write_json_atomic(artifacts.sidecar(Precision.FP16), {
        "onnx": {"file": fp16.name, "sha256": sha256_file(fp16)}, "source_sha256": "0" * 64})
    with pytest.raises(IntegrityError, match="no longer the current one"):
        artifacts.verified_onnx(Precision.FP16)


def test_external_data_outside_the_folder_is_refused(artifacts):
    record = json.loads(artifacts.export_record_path.read_text())
    record["onnx"]["external_data"] = {"../evil.bin": "0" * 64}
    write_json_atomic(artifacts.export_record_path, record)
    with pytest.raises(IntegrityError, match="outside the model folder"):
        artifacts.verified_onnx(Precision.FP32)


def test_ensemble_pipeline_fuses_members(tmp_path):
    root = tmp_path / "artifacts"
    write_artifact(root, tiny_embedder_onnx(seed=1), tiny_spec("m1"))
    write_artifact(root, tiny_embedder_onnx(dim=7, seed=2, size=6), tiny_spec("m2", size=6))
    ens = EnsembleSpec("ens", "reid", (EnsembleMember("m1", 0.25), EnsembleMember("m2", 0.75)))
    (root / "ens").mkdir()
    write_json_atomic(root / "ens" / ENSEMBLE_FILE, ens.to_dict())
    images = random_images(5)
    with load_pipeline("ens", output_dir=root, backend="onnxruntime-cpu") as pipe:
        fused = np.stack([r.embedding for r in pipe(images)])
    with load_pipeline("m1", output_dir=root, backend="onnxruntime-cpu") as p1, \
            load_pipeline("m2", output_dir=root, backend="onnxruntime-cpu") as p2:
        e1 = np.stack([r.embedding for r in p1(images)])
        e2 = np.stack([r.embedding for r in p2(images)])
    assert fused.shape == (5, 12)
    np.testing.assert_allclose(fused, np.concatenate([0.5 * e1, np.sqrt(0.75) * e2], 1), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-5)


def test_jsonl_is_complete_or_absent(tmp_path):
    target = tmp_path / "out" / "r.jsonl"
    with JsonlWriter(target) as w:
        w.write(ErrorRecord("a.png", "InputValidationError", "bad"))
        w.write({"source": "b", "ok": True, "value": np.float32(1.5)})
    lines = [json.loads(x) for x in target.read_text().splitlines()]
    assert lines[0]["error"]["type"] == "InputValidationError" and lines[1]["value"] == 1.5
    failed = tmp_path / "failed.jsonl"
    with pytest.raises(RuntimeError), JsonlWriter(failed) as w:
        w.write({"source": "x"})
        raise RuntimeError("boom")
    assert not failed.exists() and list(tmp_path.glob(".failed*")) == []
    assert ModelArtifacts.at(tmp_path, "x").dir == tmp_path / "x"
