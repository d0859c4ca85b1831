"""Family pipelines. ``PIPELINES`` maps a spec's family name to its Pipeline class."""

from batchforge.runtime.pipelines.base import Pipeline, Prepared
from batchforge.runtime.pipelines.reid import ReidEnsemblePipeline, ReidPipeline

PIPELINES: dict[str, type[Pipeline]] = {
    "reid": ReidPipeline,
}

ENSEMBLE_PIPELINES: dict[str, type[Pipeline]] = {
    "reid": ReidEnsemblePipeline,
}

__all__ = ["ENSEMBLE_PIPELINES", "PIPELINES", "Pipeline", "Prepared"]
