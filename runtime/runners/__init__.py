"""Runners: one contract (activate / infer / deactivate) for every backend.

Backend modules import their heavy dependency (onnxruntime, tensorrt) only when a runner is
activated or selected, so importing this package costs nothing.
"""

from batchforge.runtime.runners.base import Runner

__all__ = ["Runner"]
