"""The lean runtime: numpy + OpenCV + onnxruntime (or tensorrt); never torch or onnx.

Typical use::

    from batchforge.runtime import load_pipeline, read_image
    with load_pipeline("reid_resnet50", backend="onnxruntime") as pipe:
        results = pipe([read_image("a.jpg"), read_image("b.jpg")])
"""

from batchforge.errors import QueueFullError
from batchforge.runtime.artifacts import ModelArtifacts, Precision
from batchforge.runtime.backends import Backend, resolve_backend
from batchforge.runtime.batcher import DynamicBatcher
from batchforge.runtime.batching import infer_in_chunks
from batchforge.runtime.gallery import Gallery
from batchforge.runtime.images import read_image
from batchforge.runtime.jsonl import JsonlWriter
from batchforge.runtime.loading import load_pipeline, open_runner
from batchforge.runtime.pipelines import Pipeline
from batchforge.runtime.runners.base import Runner
from batchforge.runtime.runners.onnxruntime import OnnxRuntimeRunner, OrtOptions
from batchforge.runtime.spec import ModelSpec, ProfileRange

__all__ = [
    "Backend",
    "DynamicBatcher",
    "Gallery",
    "JsonlWriter",
    "ModelArtifacts",
    "ModelSpec",
    "OnnxRuntimeRunner",
    "OrtOptions",
    "Pipeline",
    "Precision",
    "ProfileRange",
    "QueueFullError",
    "Runner",
    "infer_in_chunks",
    "load_pipeline",
    "open_runner",
    "read_image",
    "resolve_backend",
]
