"""Known failures: still run and reported; they block the gate unless explicitly allowed."""

import json
import shutil

import numpy as np
from helpers import replant_onnx
from onnx import numpy_helper

from batchforge import tolerances
from batchforge.cli import main
from batchforge.runtime.artifacts import ModelArtifacts, Precision


def scale_first_weight(model):
    init = next(i for i in model.graph.initializer if numpy_helper.to_array(i).ndim == 4)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.5), init.name))


def test_listed_failure_counts_unless_allowed_and_a_listed_pass_says_so(user_tiny_artifacts, tmp_path,
                                                                       monkeypatch, capsys):
    src_root, name = user_tiny_artifacts
    root = tmp_path / "artifacts"
    shutil.copytree(src_root, root)
    report = tmp_path / "parity.json"
    args = ["parity", name, "--eval-size", "4", "--output-dir", str(root), "--report", str(report),
            "--factory", "user_models:tiny_embedder"]
    monkeypatch.setitem(tolerances.KNOWN_FAILURES, (name, Precision.FP32), "listed by this test")

    assert main(args) == 0  # clean: passes, and the stale entry is pointed out
    assert "remove the entry" in json.loads(report.read_text())["reports"][0]["notes"][-1]

    replant_onnx(ModelArtifacts.at(root, name), Precision.FP32, scale_first_weight)
    capsys.readouterr()
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "FAIL user_tiny [fp32] raw_cosine" in out and "KNOWN user_tiny [fp32]: listed by this test" in out
    assert main([*args, "--allow-known-failures"]) == 0
    record = json.loads(report.read_text())
    assert record["reports"][0]["status"] == "KNOWN FAILURE"
    assert record["reports"][0]["known_failure"] == "listed by this test"

    monkeypatch.delitem(tolerances.KNOWN_FAILURES, (name, Precision.FP32))
    assert main([*args, "--allow-known-failures"]) == 1  # unlisted failures are never allowed


def test_tolerance_table_and_known_failures_are_well_formed():
    from batchforge.export.registry import known_names

    for family, table in tolerances.TOLERANCES.items():
        assert set(table) == set(Precision), family
        for precision, limits in table.items():
            for name, limit in limits.items():
                assert limit.reason.strip() and limit.kind in ("min", "max"), (family, precision, name)
    zoo = set(known_names())
    for (model, precision), reason in tolerances.KNOWN_FAILURES.items():
        assert model in zoo and precision is not Precision.FP32 and len(reason) > 40, model


def test_ensembles_are_looked_up_in_known_failures_too(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from batchforge.parity import gate
    from batchforge.parity.report import Check
    from batchforge.tolerances import at_least

    failing = Check("fused_embedding_cosine", 0.5, at_least(0.98, "test"))
    family = SimpleNamespace(ensemble_checks=lambda session, ensemble, precision: ([failing], []))
    monkeypatch.setattr(gate, "ensemble_spec", lambda output_dir, name: SimpleNamespace(family="reid"))
    monkeypatch.setattr(gate, "family_for", lambda name: family)
    session = SimpleNamespace(output_dir=tmp_path, backend="onnxruntime", release=lambda name, precision: None)
    monkeypatch.setitem(tolerances.KNOWN_FAILURES, ("my_ensemble", Precision.INT8), "listed by this test")
    report = gate.check_model(session, "my_ensemble", Precision.INT8)
    assert report.status == "KNOWN FAILURE" and report.known_failure == "listed by this test"
    assert gate.exit_code([report]) == 1 and gate.exit_code([report], allow_known_failures=True) == 0
