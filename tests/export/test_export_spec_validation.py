"""export validates the whole spec before the (slow) export: every problem parity and run would
meet is one stderr line naming its spec path, the command exits 2, and nothing is written."""

import json
import subprocess
import sys
from dataclasses import dataclass, field, replace

import pytest
from user_models import spec_dict, tensors_spec

from batchforge.cli import main
from batchforge.errors import ConfigError
from batchforge.families import FAMILIES, problems
from batchforge.runtime.spec import ModelSpec
from batchforge.runtime.typed_options import build, settle


def export(tmp_path, spec: dict, capsys) -> tuple[int, list[str]]:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    code = main(["export", "--factory", "user_models:tiny_embedder", "--spec", str(path),
                 "--output-dir", str(tmp_path / "artifacts")])
    assert not (tmp_path / "artifacts").exists()
    lines = capsys.readouterr().err.strip().splitlines()
    prefix = f"{path}: "
    assert all(line.startswith(prefix) for line in lines[:-1]), lines
    return code, [line.removeprefix(prefix) for line in lines]


def test_every_structural_problem_is_one_line_with_its_path(tmp_path, capsys):
    spec = {**spec_dict("bad"), "colour": "red",
            "inputs": [{"name": "", "shape": ["batch", 3, 32, 32]}, {"name": "mask", "shape": [1, 32, 32]}],
            "outputs": ["embedding", "embedding"], "profile": {"min": 4, "opt": 2, "max": 8}}
    code, lines = export(tmp_path, spec, capsys)
    assert code == 2
    assert lines[:-1] == [
        "unknown key 'spec.colour' (known: name, family, inputs, outputs, profile, preprocess, postprocess, "
        "description, dims)",
        "spec.inputs[0].name: expected a non-empty string, got ''",
        "spec.inputs[1]: input 'mask' must have 'batch' as its first dim, got (1, 32, 32)",
        "spec.outputs: output names must be unique, 'embedding' is given 2 times",
        "spec.profile: profile must satisfy 1 <= min <= opt <= max, got min=4 opt=2 max=8",
    ]
    assert lines[-1].startswith("batchforge export: error: spec file ") and "has 5 problems" in lines[-1]
    assert "nothing was exported" in lines[-1]


def test_preprocess_and_missing_keys_are_named(tmp_path, capsys):
    spec = {**spec_dict("bad"), "preprocess": {"height": "32", "width": 32}}
    del spec["outputs"]
    code, lines = export(tmp_path, spec, capsys)
    assert code == 2
    assert lines[:-1] == ["missing key 'spec.outputs'",
                          "spec.preprocess: height and width must be integers, got ('32', 32)"]


def test_the_family_fixes_outputs_preprocess_and_its_options(tmp_path, capsys):
    """reid reads one output (its embedding), feeds images, and parses ReidOptions."""
    spec = {**spec_dict("bad"), "outputs": ["boxes", "landmarks", "scores"], "postprocess": {"topk": 3}}
    del spec["preprocess"]
    code, lines = export(tmp_path, spec, capsys)
    assert code == 2
    assert lines[:-1] == [
        "spec.outputs: family 'reid' reads 1 output(s), the spec names 3 (boxes, landmarks, scores); a model "
        "with other outputs is family 'tensors'",
        "spec.preprocess: family 'reid' feeds images, so the spec needs a preprocess, e.g. "
        '{"height": 224, "width": 224}; got none',
        "unknown key 'spec.postprocess.topk' (known: top_k, include_embedding)",
    ]


def test_tensors_options_are_parsed_by_the_pipeline_options_type(tmp_path, capsys):
    spec = tensors_spec("bad", postprocess={
        "top_k": 0, "outputs": {"logits": {"kind": "scores", "tolerances": {"fp16": {"cos": 0.9}}}}})
    code, lines = export(tmp_path, spec, capsys)
    assert code == 2
    assert lines[:-1] == [
        "spec.postprocess.top_k: expected an integer >= 1, got 0",
        "spec.postprocess.outputs.logits.kind: expected one of 'values', 'logits', 'probabilities', "
        "'probability_map', 'boxes_scores', got str 'scores'",
        "unknown key 'spec.postprocess.outputs.logits.tolerances.fp16.cos'",
    ]


def test_the_pipeline_own_checks_of_the_spec_run_too(tmp_path, capsys):
    """Options naming an output the model does not have: the tensors pipeline refuses it at `run`."""
    spec = tensors_spec("bad", postprocess={"outputs": {"logit": {"kind": "logits"}}})
    code, lines = export(tmp_path, spec, capsys)
    assert code == 2
    assert lines[:-1] == ["spec: tensors postprocess options name outputs ['logit'] that model 'bad' does not "
                          "have; its outputs: ['logits']"]


def test_a_detector_spec_needs_the_outputs_its_pipeline_names(tmp_path, capsys):
    spec = {**spec_dict("bad"), "family": "detector", "outputs": ["boxes", "classes"], "postprocess": {}}
    code, lines = export(tmp_path, spec, capsys)
    assert code == 2
    assert lines[:-1] == ["spec: detector model 'bad' must have an output named 'scores', has ['boxes', 'classes']"]


def test_a_valid_spec_of_each_kind_has_no_problems():
    assert FAMILIES["reid"].spec_problems(ModelSpec.from_dict(spec_dict())) == []
    two_inputs = ModelSpec.from_dict(tensors_spec("two", ("logits", "heatmap"), mask=True))
    assert FAMILIES["tensors"].spec_problems(two_inputs) == []


def test_a_bad_spec_fails_before_torch_is_imported(tmp_path):
    """The check runs before the exporter is imported, so a bad spec costs well under a second."""
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(tensors_spec("bad", postprocess={"top_k": "3"})))
    code = ("import sys\nfrom batchforge.cli import main\n"
            f"code = main(['export', '--factory', 'x:y', '--spec', {str(path)!r}, '--output-dir', "
            f"{str(tmp_path / 'out')!r}])\nprint(code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["2", "False"], done.stderr
    assert "spec.postprocess.top_k" in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_declaration_that_does_not_fit_its_zoo_is_named():
    found = problems(replace(FAMILIES["anomaly"], outputs=1))
    assert found == ["anomaly: zoo model 'anomaly': spec.outputs: family 'anomaly' reads 1 output(s), the spec "
                     "names 2 (anomaly_map, score); a model with other outputs is family 'tensors'"]


# --- typed_options.build names problems found two levels down by their full path ---------------
@dataclass(frozen=True)
class Inner:
    limit: float = 1.0

    def __post_init__(self) -> None:
        settle(self)


@dataclass(frozen=True)
class Middle:
    fp16: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        settle(self)


@dataclass(frozen=True)
class Outer:
    tolerances: Middle = field(default_factory=Middle)

    def __post_init__(self) -> None:
        settle(self)


def test_nested_problems_carry_their_whole_path():
    built, found = build(Outer, {"tolerances": {"fp16": {"cos": 1, "limit": "x"}}}, "outputs.a.")
    assert built is None
    assert found == ["unknown key 'outputs.a.tolerances.fp16.cos'",
                     "outputs.a.tolerances.fp16.limit: expected a number, got str 'x'"]
    with pytest.raises(ConfigError) as info:
        Outer(tolerances={"fp16": {"cos": 1}})
    assert info.value.problems == ["unknown key 'tolerances.fp16.cos'"]


def test_reid_option_values_are_checked_not_only_their_keys(tmp_path, capsys):
    spec = {**spec_dict("bad"), "postprocess": {"top_k": "3"}}
    code, lines = export(tmp_path, spec, capsys)
    assert code == 2
    assert any("reid top_k must be an integer >= 1, got '3'" in line for line in lines), lines
