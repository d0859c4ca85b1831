"""batchforge: PyTorch vision models to ONNX/TensorRT, a lean batched runtime, parity gates.

Stage packages (mapped from the repository's stage folders):
``batchforge.export`` (torch side), ``batchforge.calibration``, ``batchforge.engines``,
``batchforge.runtime`` (numpy + onnxruntime/tensorrt only) and ``batchforge.parity``.
Importing this package loads nothing heavy.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
