"""Family pipelines. ``PIPELINES`` maps a spec's family name to its Pipeline class."""

from batchforge.runtime.pipelines.anomaly import AnomalyPipeline
from batchforge.runtime.pipelines.base import Pipeline, Prepared
from batchforge.runtime.pipelines.detection import DetectorPipeline, FacePosePipeline
from batchforge.runtime.pipelines.keypoints import KeypointsPipeline
from batchforge.runtime.pipelines.ptycho import PtychoPipeline
from batchforge.runtime.pipelines.reid import ReidEnsemblePipeline, ReidPipeline

PIPELINES: dict[str, type[Pipeline]] = {
    "reid": ReidPipeline,
    "anomaly": AnomalyPipeline,
    "detector": DetectorPipeline,
    "facepose": FacePosePipeline,
    "keypoints": KeypointsPipeline,
    "ptycho": PtychoPipeline,
}

ENSEMBLE_PIPELINES: dict[str, type[Pipeline]] = {
    "reid": ReidEnsemblePipeline,
}

__all__ = ["ENSEMBLE_PIPELINES", "PIPELINES", "Pipeline", "Prepared"]
