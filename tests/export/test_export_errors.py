"""Export errors that say why (issue #27): the TorchScript fallback named with torch.export's
cause and its category, torch's dumps in export.log instead of on the terminal, a baked batch
attributed to the exporter that baked it, and provenance that says what the factory loaded."""

import hashlib
import json

from helpers import export_factory
from user_models import spec_dict

from batchforge.runtime.artifacts import ModelArtifacts, sha256_file

CAUSE = "GuardOnDataDependentSymNode: Could not guard on data-dependent expression"


def export(tmp_path, factory: str, name: str, *extra: str) -> int:
    return export_factory(tmp_path, factory, spec_dict(name), *extra)


def test_the_fallback_is_named_with_its_cause_and_torch_output_goes_to_export_log(tmp_path, capfd):
    assert export(tmp_path, "data_dependent", "dd") == 0
    out, err = capfd.readouterr()  # file-descriptor level: C++ and logging output count too
    assert "\x1b[" not in err and "\x1b[" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # torch's dumps (~300 lines here) are not on the terminal
    (line,) = lines
    log = tmp_path / "artifacts" / "dd" / "export.log"
    assert line.startswith("warning: dd: torch.export failed (data-dependent control flow): " + CAUSE), line
    assert "user_models.py:" in line and "if images.abs().sum() > 0:" in line, line
    assert f"exported with the TorchScript fallback instead (torch's output and the full traceback: {log})" in line
    assert "TorchScript fallback" in out and len(out.strip().splitlines()) == 1, out
    text = log.read_text()
    assert "def forward(self" in text and "torch.ops.aten.conv2d.default" in text  # torch's graph dump
    assert "Traceback (most recent call last)" in text and CAUSE in text
    assert "TracerWarning: Converting a tensor to a Python boolean" in text  # the fallback's warnings
    assert "\x1b[" not in text
    exporter = ModelArtifacts.at(tmp_path / "artifacts", "dd").export_record()["exporter"]
    assert exporter["fallback_category"] == "data-dependent control flow"
    assert exporter["fallback_reason"].startswith(CAUSE) and exporter["log"] == "export.log"


def test_no_fallback_is_one_line_with_category_cause_and_the_log(tmp_path, capfd):
    assert export(tmp_path, "data_dependent", "dd", "--no-fallback") == 2
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "\x1b[" not in err and out == "", err
    log = tmp_path / "artifacts" / "dd" / "export.log"
    assert lines[0].startswith("batchforge export: error: torch.export of 'dd' failed "
                               "(data-dependent control flow): " + CAUSE), lines[0]
    assert "if images.abs().sum() > 0:" in lines[0]
    assert f"torch's output and the full traceback: {log}" in lines[0]
    assert "write the branch with torch.where or torch.cond" in lines[0]
    # the failed export leaves its log, complete, and no model files
    assert sorted(p.name for p in log.parent.iterdir()) == ["export.log"]
    assert "def forward(self" in log.read_text() and CAUSE in log.read_text()


def test_a_batch_baked_by_the_torchscript_trace_is_blamed_on_the_fallback(tmp_path, capsys):
    assert export(tmp_path, "data_dependent_batch_int", "ddint") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "batch size baked into the graph by the TorchScript trace at batch 2, the fallback taken because " \
           "torch.export failed (data-dependent control flow: " + CAUSE in line, line
    assert "Reshape node '/Reshape': constant shape [2, -1] starts with the trace batch 2" in line
    assert "even where the module runs at any batch in PyTorch; fix what torch.export refused" in line
    assert "torch.where or torch.cond" in line and "--trace-batch" in line
    assert "x.shape[0]" not in line  # the module already uses it: that advice would be wrong here
    assert sorted(p.name for p in (tmp_path / "artifacts" / "ddint").iterdir()) == ["export.log"]


def _state_dict_sha256(module) -> str:
    """The documented hash, computed here: names in order, dtype, shape, raw bytes."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name]
        digest.update(f"{name}\0{tensor.dtype}\0{','.join(str(d) for d in tensor.shape)}\0".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def test_provenance_names_the_factory_and_the_weights_it_loaded(tmp_path):
    from safetensors.torch import save_file
    from user_models import self_loading_embedder, tiny_embedder

    assert export(tmp_path, "self_loading_embedder", "loaded") == 0
    weights = ModelArtifacts.at(tmp_path / "artifacts", "loaded").export_record()["weights"]
    assert weights["source"] == "factory user_models:self_loading_embedder", weights
    assert weights["state_dict_sha256"] == _state_dict_sha256(self_loading_embedder())
    assert weights["state_dict_sha256"] != _state_dict_sha256(tiny_embedder())
    # --weights FILE: the file and its sha256, never a seeded init
    path = tmp_path / "w.safetensors"
    save_file(tiny_embedder().state_dict(), str(path))
    assert export(tmp_path, "self_loading_embedder", "given", "--weights", str(path)) == 0
    given = ModelArtifacts.at(tmp_path / "artifacts", "given").export_record()["weights"]
    assert given["source"] == str(path) and given["source_sha256"] == sha256_file(path)
    assert "seeded" not in json.dumps([weights, given])


def _wrapped(inner: Exception) -> Exception:
    """``inner`` raised under a wrapper, as torch.onnx wraps torch.export's own error."""
    try:
        try:
            raise inner
        except Exception as exc:
            raise RuntimeError("Failed to export the model. \x1b[96mThis is step 1/3\x1b[0m") from exc
    except RuntimeError as outer:
        return outer


def test_failures_are_classified_from_the_whole_chain_and_named_by_the_root_cause():
    from batchforge.export.onnx_export import ExporterFailure, FailureCategory

    class ConstraintViolationError(Exception):
        pass

    class DispatchError(Exception):
        pass

    cases = [
        (ConstraintViolationError("Constraints violated (batch)! \x1b[1mnot dynamic\x1b[0m"),
         FailureCategory.SHAPE_CONSTRAINT, "ConstraintViolationError: Constraints violated (batch)! not dynamic"),
        (DispatchError("No ONNX function found for <OpOverload(op='aten._linalg_svd')>\nmore"),
         FailureCategory.UNSUPPORTED_OPERATOR, "DispatchError: No ONNX function found for <OpOverload"),
        (ValueError("Could not guard on data-dependent expression u0 > 0"),
         FailureCategory.DATA_DEPENDENT, "ValueError: Could not guard on data-dependent expression u0 > 0"),
        (RuntimeError("Dynamic control flow is not supported at the moment. Please use cond"),
         FailureCategory.DATA_DEPENDENT, "RuntimeError: Dynamic control flow is not supported"),
        (KeyError("weight"), FailureCategory.OTHER, "KeyError: 'weight'"),
    ]
    for inner, category, cause in cases:
        failure = ExporterFailure.of(_wrapped(inner))
        assert failure.category is category, (inner, failure)
        assert failure.cause.startswith(cause) and "\x1b" not in failure.cause, failure.cause
        assert "test_export_errors.py:" in failure.cause  # the innermost frame outside torch


def test_state_dict_hash_takes_a_broadcast_buffer_and_hashes_its_values():
    """PP-OCR's detector through onnx2torch holds a one-element buffer with stride 0 (expanded):
    the hash once raised there (a traceback from `export`); now it equals the plain tensor's."""
    import torch

    from batchforge.export.weights import state_dict_sha256

    expanded, plain = torch.nn.Module(), torch.nn.Module()
    expanded.register_buffer("scale", torch.tensor(2.0).expand(1, 1, 1))
    plain.register_buffer("scale", torch.tensor([[[2.0]]]))
    assert expanded.scale.stride() == (0, 0, 0)
    assert state_dict_sha256(expanded) == state_dict_sha256(plain)
    plain.scale.fill_(3.0)
    assert state_dict_sha256(expanded) != state_dict_sha256(plain)
