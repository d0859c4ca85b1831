import json

import pytest
from helpers import tiny_spec

from batchforge.errors import ConfigError
from batchforge.runtime.post.reid import ReidOptions
from batchforge.runtime.spec import (
    EnsembleMember,
    EnsembleSpec,
    ModelSpec,
    Preprocess,
    ProfileRange,
    ResizeMode,
    TensorSpec,
    parse_options,
)


def test_spec_round_trips_through_json():
    spec = tiny_spec()
    spec = ModelSpec(**{**spec.__dict__, "preprocess": Preprocess(8, 8, ResizeMode.LETTERBOX, "BGR")})
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.preprocess.resize is ResizeMode.LETTERBOX


def test_unknown_and_missing_keys_are_named():
    data = tiny_spec().to_dict()
    data["colour"] = "red"
    del data["outputs"]
    with pytest.raises(ConfigError) as info:
        ModelSpec.from_dict(data)
    assert "unknown key 'colour'" in str(info.value)
    assert "missing key 'outputs'" in str(info.value)


@pytest.mark.parametrize("values", [(0, 1, 2), (2, 1, 3), (1, 4, 3), (1.0, 2, 3)])
def test_profile_rejects_bad_ranges(values):
    with pytest.raises(ConfigError, match="profile"):
        ProfileRange(*values)


def test_profile_overrides():
    assert ProfileRange(1, 8, 32).with_overrides(max=16) == ProfileRange(1, 8, 16)


def test_tensor_spec_needs_batch_first_and_known_dtype():
    with pytest.raises(ConfigError, match="first dim"):
        TensorSpec("x", (3, 4))
    with pytest.raises(ConfigError, match="dtype"):
        TensorSpec("x", ("batch", 3), "complex64")


def test_preprocess_validation():
    with pytest.raises(ConfigError, match="channel_order"):
        Preprocess(8, 8, channel_order="RGBA")
    with pytest.raises(ConfigError, match="std"):
        Preprocess(8, 8, std=(1.0, 0.0, 1.0))


def test_parse_options_rejects_unknown_keys():
    assert parse_options(ReidOptions, {"top_k": 3}, "reid").top_k == 3
    with pytest.raises(ConfigError, match="unknown key 'topk'"):
        parse_options(ReidOptions, {"topk": 3}, "reid")


def test_ensemble_weights_must_sum_to_one():
    with pytest.raises(ConfigError, match="summing to 1"):
        EnsembleSpec("e", "reid", (EnsembleMember("a", 0.5), EnsembleMember("b", 0.6)))
    ens = EnsembleSpec("e", "reid", (EnsembleMember("a", 0.4), EnsembleMember("b", 0.6)))
    assert EnsembleSpec.from_dict(ens.to_dict()) == ens
