"""Every family comes from one declaration (batchforge/families.py), and a missing part is named."""

from dataclasses import replace

import pytest

from batchforge.errors import UsageError
from batchforge.families import FAMILIES, get_family, problems


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_declared_family_is_complete(name):
    assert problems(FAMILIES[name]) == []


def test_every_registry_derives_from_the_declarations():
    from batchforge.export.registry import ZOO, load_zoo
    from batchforge.export.samples import SAMPLE_GENERATORS
    from batchforge.parity.gate import FAMILIES as CHECKS
    from batchforge.parity.gate import family_for
    from batchforge.runtime.pipelines import ENSEMBLE_PIPELINES, PIPELINES
    from batchforge.tolerances import TOLERANCES

    family_for("reid")  # loads the parity modules
    load_zoo()
    assert set(PIPELINES) == set(SAMPLE_GENERATORS) == set(CHECKS) == set(TOLERANCES) == set(FAMILIES)
    assert set(ENSEMBLE_PIPELINES) == {f.name for f in FAMILIES.values() if f.ensemble_pipeline}
    assert {entry.spec.family for entry in ZOO.values()} == {f.name for f in FAMILIES.values() if f.zoo}


@pytest.mark.parametrize(("part", "value", "named"), [
    ("parity", "batchforge.parity.ptycho", "registers no checks for it"),
    ("parity", "batchforge.parity.no_such_module", "parity 'batchforge.parity.no_such_module' cannot be loaded"),
    ("pipeline", "batchforge.runtime.pipelines.base:Prepared", "is not a Pipeline class"),
    ("samples", "batchforge.export.samples.reid:no_such_generator", "samples"),
    ("zoo", ("batchforge.export.zoo.ptycho",), "register no model of this family"),
], ids=["parity-of-another-family", "parity-missing", "not-a-pipeline", "samples-missing", "zoo-of-another-family"])
def test_a_missing_or_wrong_part_is_named(part, value, named):
    planted = replace(FAMILIES["reid"], **{part: value})
    found = problems(planted)
    assert len(found) == 1 and named in found[0], found


def test_a_family_without_tolerances_is_named():
    planted = replace(FAMILIES["reid"], name="newfamily")
    found = problems(planted)
    assert "newfamily: no tolerances at fp32, fp16, int8 (batchforge/tolerances.py)" in found
    assert "newfamily: parity module 'batchforge.parity.reid' registers no checks for it" in found


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(UsageError, match="unknown family 'classifier'; known families: anomaly, detector"):
        get_family("classifier")
