"""Family pipelines. ``PIPELINES`` maps a spec's family name to its Pipeline class; both maps are
derived from the family declarations (``batchforge.families``)."""

from batchforge.families import FAMILIES
from batchforge.runtime.pipelines.base import Pipeline, Prepared

PIPELINES: dict[str, type[Pipeline]] = {f.name: f.load_pipeline() for f in FAMILIES.values()}

ENSEMBLE_PIPELINES: dict[str, type[Pipeline]] = {
    f.name: f.load_ensemble_pipeline() for f in FAMILIES.values() if f.ensemble_pipeline}

__all__ = ["ENSEMBLE_PIPELINES", "PIPELINES", "Pipeline", "Prepared"]
