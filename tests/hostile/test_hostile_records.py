"""Issue #29 case 10: a record is data. The factory export.json names is imported only when it is
a zoo model's or given on the command line (``--factory``), and the report says which."""

import json
import shutil

from hostile_files import BACKEND

from batchforge.cli import main
from batchforge.runtime.artifacts import ModelArtifacts, write_json_atomic


def _planted_factory(tmp_path, monkeypatch, user_tiny_artifacts) -> tuple:
    """A copy of the tiny user model whose export.json names ``evil:make``, a module that leaves a
    marker file when it is merely imported."""
    src_root, name = user_tiny_artifacts
    root = tmp_path / "artifacts"
    shutil.copytree(src_root, root)
    marker = tmp_path / "imported"
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n\ndef make():\n    raise SystemExit('called')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    artifacts = ModelArtifacts.at(root, name)
    record = json.loads(artifacts.export_record_path.read_text())
    record["factory"] = "evil:make"
    write_json_atomic(artifacts.export_record_path, record)
    return root, name, marker, artifacts


def test_parity_refuses_a_factory_a_record_names(user_tiny_artifacts, tmp_path, monkeypatch, capsys):
    root, name, marker, artifacts = _planted_factory(tmp_path, monkeypatch, user_tiny_artifacts)
    report = tmp_path / "r.json"
    code = main(["parity", name, "--eval-size", "2", "--output-dir", str(root), "--report", str(report), *BACKEND])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (run,) = json.loads(report.read_text())["reports"]
    assert run["error"] == (f"{artifacts.export_record_path} names factory 'evil:make', which is no zoo model's "
                            "and was not given with --factory: code a record names is not imported "
                            "(if you trust it, pass --factory evil:make)")
    assert not marker.exists()  # not even imported


def test_parity_refuses_it_when_another_factory_is_given(user_tiny_artifacts, tmp_path, monkeypatch, capsys):
    root, name, marker, _ = _planted_factory(tmp_path, monkeypatch, user_tiny_artifacts)
    code = main(["parity", name, "--eval-size", "2", "--output-dir", str(root),
                 "--factory", "user_models:tiny_embedder", *BACKEND])
    out = capsys.readouterr().out
    assert code == 2 and "--factory given: user_models:tiny_embedder" in out and not marker.exists()


def test_a_factory_given_on_the_command_line_is_used_and_named(user_tiny_artifacts, tmp_path, capsys):
    src_root, name = user_tiny_artifacts
    report = tmp_path / "r.json"
    code = main(["parity", name, "--eval-size", "2", "--output-dir", str(src_root), "--report", str(report),
                 "--factory", "user_models:tiny_embedder", *BACKEND])
    assert code == 0, capsys.readouterr()
    (run,) = json.loads(report.read_text())["reports"]
    assert run["notes"][0].startswith(
        "user model: reference built by factory 'user_models:tiny_embedder' (given with --factory)")


def test_bench_leaves_out_the_eager_column_of_an_untrusted_factory(user_tiny_artifacts, tmp_path, monkeypatch,
                                                                 capsys):
    root, name, marker, _ = _planted_factory(tmp_path, monkeypatch, user_tiny_artifacts)
    code = main(["bench", name, "--batch-sizes", "1", "--repeats", "1", "--output-dir", str(root), *BACKEND])
    err = capsys.readouterr().err
    assert code == 0 and "bench: PyTorch eager not timed:" in err and "names factory 'evil:make'" in err
    assert not marker.exists()


def test_bench_times_eager_pytorch_with_a_factory_given(user_tiny_artifacts, tmp_path, capsys):
    src_root, name = user_tiny_artifacts
    code = main(["bench", name, "--batch-sizes", "1", "--repeats", "1", "--output-dir", str(src_root),
                 "--factory", "user_models:tiny_embedder", "--json", str(tmp_path / "b.json"), *BACKEND])
    assert code == 0 and "not timed" not in capsys.readouterr().err
    assert "torch_s" in json.loads((tmp_path / "b.json").read_text())["rows"][0]
