"""Issue #14 case 1: names from specs and the command line never lead outside --output-dir."""

import json

import pytest
from hostile_files import BACKEND, good_images, tiny_artifacts
from user_models import spec_dict

from batchforge.cli import main
from batchforge.errors import UsageError
from batchforge.runtime.artifacts import ModelArtifacts
from batchforge.safe_paths import inside


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", ["./../../esc", "../../esc", "/tmp/esc", "a/b", ".hidden"])
def test_export_refuses_a_spec_name_that_is_not_a_plain_name(tmp_path, capsys, name):
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({**spec_dict(), "name": name}))
    out = tmp_path / "work" / "out" / "inner"
    code = main(["export", "--factory", "user_models:tiny_embedder", "--spec", str(spec),
                 "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "spec.name" in err and "plain name" in err and "Traceback" not in err
    assert _files(tmp_path) == ["s.json"]  # nothing written anywhere, inside or out


@pytest.mark.parametrize("model", ["../tiny", "/abs/tiny", "tiny/../../x"])
def test_run_refuses_a_model_argument_that_is_a_path(tmp_path, capsys, model):
    tiny_artifacts(tmp_path / "artifacts")
    good_images(tmp_path / "in", 1)
    code = main(["run", model, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "r.jsonl"),
                 "--output-dir", str(tmp_path / "artifacts"), *BACKEND])
    err = capsys.readouterr().err
    assert code == 2 and "model name must be a plain name" in err and repr(model) in err
    assert not (tmp_path / "r.jsonl").exists()


def test_an_ensemble_record_naming_a_member_outside_is_refused(tmp_path, capsys):
    root = tmp_path / "artifacts"
    tiny_artifacts(root)
    (root / "ens").mkdir()
    (root / "ens" / "ensemble.json").write_text(json.dumps(
        {"name": "ens", "family": "reid", "members": [{"model": "../../tiny", "weight": 1.0}]}))
    good_images(tmp_path / "in", 1)
    code = main(["run", "ens", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "r.jsonl"),
                 "--output-dir", str(root), *BACKEND])
    assert code == 2 and "'../../tiny'" in capsys.readouterr().err


def test_model_artifacts_refuse_path_names(tmp_path):
    with pytest.raises(UsageError, match="plain name"):
        ModelArtifacts.at(tmp_path, "..")


def test_a_linked_model_folder_resolves_outside_and_is_refused(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "m").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UsageError, match="outside the output folder") as info:
        inside(out, out / "m", "model folder")
    assert "every file a command writes must sit inside its output folder" in info.value.one_line()
    assert inside(out, out / "x" / "y") == (out / "x" / "y").resolve()


def test_build_into_a_model_folder_linked_elsewhere_is_refused(tmp_path, capsys):
    elsewhere = tiny_artifacts(tmp_path / "elsewhere")
    before = _files(elsewhere.dir)
    out = tmp_path / "out"
    out.mkdir()
    (out / "tiny").symlink_to(elsewhere.dir, target_is_directory=True)
    code = main(["build", "tiny", "--backend", "onnxruntime", "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "refusing to write into the model folder" in err
    assert f"outside the output folder {out.resolve()}" in err
    assert _files(elsewhere.dir) == before  # no engine written through the link
