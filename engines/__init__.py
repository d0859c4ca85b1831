"""Engine builders: strongly typed TensorRT plans and ONNX Runtime artifacts, each with a manifest.

TensorRT is imported only inside a build (``batchforge build --backend tensorrt``); the manifest
types and the checks done before loading live in the runtime (``batchforge.runtime.manifest``).
"""
