"""Issue #29 case 12 (specs): deeply nested JSON, huge integers, non-UTF-8 text, NaN/Infinity and
sizes past 32 bits are refused in one line naming the file, exit 2, before anything is exported;
preprocessing values are checked finite wherever a spec comes from (a file, a record, the API)."""

import json
import math

import pytest
from helpers import edit_export_spec
from hostile_files import BACKEND, good_images, tiny_artifacts
from user_models import spec_dict

from batchforge.cli import main
from batchforge.errors import ConfigError
from batchforge.runtime.spec import Preprocess


def _spec_text(**preprocess) -> str:
    spec = spec_dict()
    spec["preprocess"].update(preprocess)
    return json.dumps(spec)


HOSTILE = {
    "deep_array": ("[" * 100_000 + "]" * 100_000, "nests 100,000 levels deep; expected at most 64"),
    "deep_object": (_spec_text()[:-1] + ', "postprocess": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + "}",
                    "nests 5,001 levels deep; expected at most 64"),
    "huge_integer": (_spec_text().replace('"max": 8', '"max": ' + "9" * 5000),
                     "is not valid JSON: it holds an integer of more than 4,300 digits"),
    "latin1": (_spec_text().replace("user_tiny", "user_t\u00efny").encode("latin-1"),
               "is not UTF-8 text: byte 0xef at offset 16 (save it as UTF-8)"),
    "nan_mean": (_spec_text().replace('"width": 32', '"width": 32, "mean": [NaN, 0.5, 0.5]'),
                 "is not valid JSON: NaN is not a JSON number (JSON numbers are finite)"),
    "infinite_std": (_spec_text().replace('"width": 32', '"width": 32, "std": [Infinity, 1, 1]'),
                     "is not valid JSON: Infinity is not a JSON number"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_spec_file_is_one_line_and_exit_2(tmp_path, capsys, case):
    content, message = HOSTILE[case]
    path = tmp_path / "spec.json"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    code = main(["export", "--factory", "user_models:tiny_embedder", "--spec", str(path),
                 "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"batchforge export: error: spec file {path} {message}" in err
    assert not (tmp_path / "out").exists()


def test_a_sparse_10gb_spec_is_refused_without_reading_it(tmp_path, capsys):
    path = tmp_path / "spec.json"
    with open(path, "wb") as fh:
        fh.truncate(10 * 2**30)  # sparse: no disk used
    code = main(["export", "--factory", "user_models:tiny_embedder", "--spec", str(path),
                 "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"spec file {path} is larger than 16,777,216 bytes; expected a JSON file of a few kB" in err


@pytest.mark.parametrize(("where", "value", "message"), [
    ("profile", {"min": 1, "opt": 4, "max": 10**30}, "spec.profile: profile sizes must be at most 2,147,483,647, "
                                                     "got 10000000...(31 digits)"),
    ("preprocess", {"height": 2**31, "width": 32}, "spec.preprocess: height and width must be at most "
                                                   "2,147,483,647, got 2147483648"),
    ("inputs", [{"name": "images", "shape": ["batch", 3, 32, 10**20]}],
     "spec.inputs[0]: input 'images' sizes must be at most 2,147,483,647, got 100000000000000000000"),
])
def test_sizes_past_32_bits_are_named(tmp_path, capsys, where, value, message):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**spec_dict(), where: value}))
    code = main(["export", "--factory", "user_models:tiny_embedder", "--spec", str(path),
                 "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and f"{path}: {message}" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("values", "message"), [
    ({"mean": (math.nan, 0.5, 0.5)}, "mean and std must be finite numbers, got mean=[nan, 0.5, 0.5]"),
    ({"std": (math.inf, 1.0, 1.0)}, "mean and std must be finite numbers"),
    ({"std": (1e39, 1.0, 1.0)}, "mean and std must be finite numbers"),  # inf in float32
    ({"mean": (10**400, 0.5, 0.5)}, "mean and std must be finite numbers"),
    ({"pad_value": math.nan}, "pad_value must be a finite number, got nan"),
])
def test_preprocessing_values_must_be_finite_from_the_api(values, message):
    with pytest.raises(ConfigError, match="must be") as info:
        Preprocess(height=8, width=8, **values)
    assert message in info.value.one_line()


def test_a_record_whose_std_is_infinite_is_refused_by_run(tmp_path, capsys):
    """A record written elsewhere (json.dumps writes Infinity): one line, exit 2, no output file."""
    artifacts = tiny_artifacts(tmp_path / "artifacts")
    edit_export_spec(artifacts, lambda spec: spec["preprocess"].update(std=[math.inf, 1.0, 1.0]))
    good_images(tmp_path / "in", 2)
    out = tmp_path / "r.jsonl"
    code = main(["run", "tiny", "--input", str(tmp_path / "in"), "--output", str(out),
                 "--output-dir", str(tmp_path / "artifacts"), *BACKEND])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "mean and std must be finite numbers, got mean=[0.485, 0.456, 0.406] std=[inf, 1.0, 1.0]" in err
    assert not out.exists()
