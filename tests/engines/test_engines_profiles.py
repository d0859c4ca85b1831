import pytest
from helpers import tiny_spec

from batchforge.engines.profiles import derive_profile, input_profiles
from batchforge.errors import ConfigError
from batchforge.runtime.manifest import InputProfile
from batchforge.runtime.spec import ModelSpec, ProfileRange, TensorSpec

SPEC = tiny_spec(profile=ProfileRange(1, 4, 8))


def test_no_override_keeps_the_spec_profile():
    assert derive_profile(SPEC) == ProfileRange(1, 4, 8)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"max_batch": 16}, ProfileRange(1, 4, 16)),
        ({"max_batch": 2}, ProfileRange(1, 2, 2)),  # opt pulled down to the new max
        ({"min_batch": 6}, ProfileRange(6, 6, 8)),  # opt lifted up to the new min
        ({"opt_batch": 8}, ProfileRange(1, 8, 8)),
        ({"min_batch": 2, "opt_batch": 3, "max_batch": 32}, ProfileRange(2, 3, 32)),
    ],
)
def test_overrides(overrides, expected):
    assert derive_profile(SPEC, **overrides) == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"min_batch": 9}, "--min-batch 9 is above the spec's max batch 8"),
        ({"min_batch": 5, "max_batch": 3}, "--min-batch 5 is above --max-batch 3"),
        ({"opt_batch": 9}, "--opt-batch 9 is above the spec's max batch 8"),
        ({"min_batch": 4, "opt_batch": 2}, "--opt-batch 2 is below --min-batch 4"),
        ({"max_batch": 0}, "--max-batch must be an integer >= 1, got 0"),
        ({"opt_batch": -3, "min_batch": 0}, "--min-batch must be an integer >= 1, got 0"),
    ],
)
def test_bad_overrides_name_the_option(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("'", ".")):
        derive_profile(SPEC, **overrides)


def test_input_profiles_put_the_batch_range_in_front_of_each_item_shape():
    spec = ModelSpec(name="two", family="reid",
                     inputs=(TensorSpec("images", ("batch", 3, 8, 8)),
                             TensorSpec("mask", ("batch", 1, 8, 8), dtype="uint8")),
                     outputs=("y",), profile=ProfileRange(1, 4, 8))
    shapes = input_profiles(spec, ProfileRange(2, 5, 9))
    assert shapes == (
        InputProfile("images", "float32", (2, 3, 8, 8), (5, 3, 8, 8), (9, 3, 8, 8)),
        InputProfile("mask", "uint8", (2, 1, 8, 8), (5, 1, 8, 8), (9, 1, 8, 8)),
    )


def test_symbolic_non_batch_dims_are_refused():
    spec = ModelSpec(name="dyn", family="reid", inputs=(TensorSpec("images", ("batch", 3, "h", "w")),),
                     outputs=("y",), profile=ProfileRange(1, 1, 2))
    with pytest.raises(ConfigError, match=r"symbolic dims \['h', 'w'\]"):
        input_profiles(spec, spec.profile)
