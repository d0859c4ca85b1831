"""``parity --data``: an image folder or a .npz of preprocessed arrays instead of the generator;
a warning when it is the calibration data; user data a family's checks cannot use is refused."""

import json

import numpy as np
import pytest
from conftest import coverage_paused
from user_models import SIZE, tensors_spec

from batchforge.cli import main
from batchforge.export.reference import torch_preprocess
from batchforge.export.samples import generate
from batchforge.runtime.spec import Preprocess

TRUSTED = ("--factory", "user_models:tiny_classifier")  # parity imports no factory a record names


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("tensors_data")
    (root / "cls.json").write_text(json.dumps(tensors_spec("cls")))
    with coverage_paused():
        assert main(["export", "--factory", "user_models:tiny_classifier", "--spec", str(root / "cls.json"),
                     "--output-dir", str(root / "artifacts")]) == 0
    for folder, seed in (("calib", 4000), ("held_out", 1000)):
        assert main(["samples", "tensors", "--out", str(root / folder), "--count", "12", "--seed", str(seed)]) == 0
    return root


def parity(root, report, *extra: str) -> tuple[int, dict]:
    code = main(["parity", "cls", "--output-dir", str(root / "artifacts"), "--report", str(report), *TRUSTED, *extra])
    (model,) = json.loads(report.read_text())["reports"]
    return code, model


def detail(model: dict, name: str) -> str:
    return next(c["detail"] for c in model["checks"] if c["name"] == name)


def test_an_image_folder_is_the_evaluation_set(classifier, tmp_path):
    code, model = parity(classifier, tmp_path / "r.json", "--data", str(classifier / "held_out"))
    assert code == 0, model
    assert f"data: {classifier / 'held_out'} (12 items)" in detail(model, "row_cosine_min[logits]")
    assert "12 rows of 10 classes" in detail(model, "argmax_agreement[logits]")
    assert json.loads((tmp_path / "r.json").read_text())["data"] == str(classifier / "held_out")


def test_a_npz_of_preprocessed_arrays_is_the_evaluation_set(classifier, tmp_path):
    pre = Preprocess(SIZE, SIZE)
    images = np.stack([torch_preprocess(img, pre)[0].numpy() for _, img in generate("tensors", 5, 2000)])
    np.savez(tmp_path / "items.npz", image=images)
    code, model = parity(classifier, tmp_path / "r.json", "--data", str(tmp_path / "items.npz"))
    assert code == 0, model
    assert "5 rows of 10 classes" in detail(model, "argmax_agreement[logits]")
    np.savez(tmp_path / "doubles.npz", image=images.astype(np.float64))
    code, model = parity(classifier, tmp_path / "r.json", "--data", str(tmp_path / "doubles.npz"))
    assert code == 2
    assert model["error"].endswith("doubles.npz: array 'image' is float64, the model input is float32 "
                                   "(convert it explicitly; nothing is cast silently)")
    np.savez(tmp_path / "named.npz", images=images)
    code, model = parity(classifier, tmp_path / "r.json", "--data", str(tmp_path / "named.npz"))
    assert code == 2 and "holds arrays ['images'], expected the inputs ['image']" in model["error"]


def test_gating_on_the_calibration_files_is_a_warning(classifier, tmp_path, capsys):
    root = classifier
    assert main(["calibrate", "cls", "--data", str(root / "calib"), "--samples", "8",
                 "--output-dir", str(root / "artifacts")]) == 0
    capsys.readouterr()
    warning = f"warning: cls: parity data {root / 'calib'} is the int8 calibration data (calibration.json sha256 "
    # the same 8 files, and the folder whose first 8 files they are
    for extra in (["--eval-size", "8"], []):
        parity(root, tmp_path / "r.json", "--precision", "int8", "--data", str(root / "calib"), *extra)
        err = capsys.readouterr().err
        assert warning in err and "gate on held-out data" in err, err
    parity(root, tmp_path / "r.json", "--precision", "int8", "--data", str(root / "held_out"))
    assert "warning:" not in capsys.readouterr().err


def test_user_data_is_refused_where_the_checks_need_the_generators_structure(user_tiny_artifacts, classifier,
                                                                              tmp_path, capsys):
    artifacts, name = user_tiny_artifacts  # family reid: retrieval needs queries and a gallery
    code = main(["parity", name, "--output-dir", str(artifacts), "--data", str(classifier / "held_out"),
                 "--factory", "user_models:tiny_embedder"])
    assert code == 2
    lines = [line for line in capsys.readouterr().out.splitlines() if "could not run" in line]
    assert len(lines) == 1
    assert (f"parity --data cannot gate '{name}': it is a reid model and its retrieval checks need queries and "
            "a gallery of known identities") in lines[0]
    assert "(gate it without --data, on the family's own evaluation set)" in lines[0]


@pytest.mark.parametrize("model", ["detector", "anomaly"])
def test_zoo_image_families_take_a_folder_as_raw_images(classifier, tmp_path, model):
    """Each side preprocesses the images as without --data; anomaly's unlabelled set carries no
    labels (its reference-AUROC check, which needs them, is left out)."""
    from batchforge.export.registry import get_model
    from batchforge.parity.gate import family_for
    from batchforge.parity.session import ParitySession
    from batchforge.runtime.images import read_image

    spec = get_model(model).spec
    session = ParitySession(tmp_path, "onnxruntime", data=classifier / "held_out", eval_size=3)
    eval_set = session.eval_set(family_for(spec.family), spec)
    files = sorted((classifier / "held_out").iterdir())[:3]
    assert [item.source for item in eval_set.items] == [str(f) for f in files]
    for item, file in zip(eval_set.items, files):
        np.testing.assert_array_equal(item.data, read_image(file))
    assert eval_set.extra.get("labels") == (None if model == "detector" else ())


def test_zoo_image_families_refuse_preprocessed_arrays(classifier, tmp_path):
    from batchforge.errors import UsageError
    from batchforge.export.registry import get_model
    from batchforge.parity.user_data import read_user_data

    np.savez(tmp_path / "x.npz", images=np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(UsageError, match="'detector' is a detector model, whose checks decode in image "
                                         "coordinates and need the images"):
        read_user_data(tmp_path / "x.npz", get_model("detector").spec, None)
