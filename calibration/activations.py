"""Every intermediate tensor of an ONNX graph, exposed as extra outputs on ONNX Runtime.

Used two ways: FP16 conversion measures activation magnitudes, and parity localises a
lower-precision failure to the first tensor (in graph order) whose error against the FP32 graph
is past tolerance. ``session`` also serves INT8 calibration.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx

from batchforge.runtime.runners.onnxruntime import follow_wait_policy

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Loads an ONNX model with its external data (which stays inside its folder)."""
    return onnx.load(str(path), load_external_data=True)


def float_tensors(model: onnx.ModelProto) -> list[str]:
    """Names of float node outputs in graph (topological) order, graph outputs included."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    names = []
    for node in model.graph.node:
        for out in node.output:
            if out and types.get(out) in FLOAT_TYPES:
                names.append(out)
    return names


def with_intermediate_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs every tensor in ``names``."""
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output}
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for name in names:
        if name in existing:
            continue
        info = inferred.get(name)
        elem = info.type.tensor_type.elem_type if info is not None else onnx.TensorProto.FLOAT
        augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    return augmented


def session(model: onnx.ModelProto, threads: int = 0, *, optimized: bool = False):
    """A CPU InferenceSession on an in-memory model. Graph optimisations are off so that every
    named tensor is computed as written; ``optimized`` (when only the graph outputs are read)
    turns on the basic level, which folds constants but never fuses Q/DQ into int8 kernels (see
    ``runtime.loading.cpu_graph_optimization`` for why)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if optimized
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = False  # every tensor is an output here: nothing to reuse
    if threads:
        options.intra_op_num_threads = threads
    follow_wait_policy(options)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def stream_activations(model: onnx.ModelProto, names: list[str],
                       batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Runs ``batches`` through ``model`` and yields ``{tensor name: value}`` per batch."""
    sess = session(with_intermediate_outputs(model, names))
    for feed in batches:
        values = sess.run(names, feed)
        yield dict(zip(names, values))


@dataclass
class TensorError:
    """Relative L2 error of one tensor of a lower-precision graph against the FP32 graph."""

    name: str
    relative_error: float


def compare_graphs(reference: onnx.ModelProto, candidate: onnx.ModelProto,
                   batches: list[dict[str, np.ndarray]]) -> list[TensorError]:
    """Per-tensor relative L2 error (accumulated over batches) for tensors both graphs name.

    Returns:
        Errors in the reference graph's topological order.
    """
    in_candidate = set(float_tensors(candidate))
    shared = [n for n in float_tensors(reference) if n in in_candidate]
    squared_diff = dict.fromkeys(shared, 0.0)
    squared_ref = dict.fromkeys(shared, 0.0)
    for ref_out, cand_out in zip(stream_activations(reference, shared, batches),
                                 stream_activations(candidate, shared, batches)):
        for name in shared:
            a = ref_out[name].astype(np.float64)
            b = cand_out[name].astype(np.float64)
            if a.shape != b.shape:
                continue
            squared_diff[name] += float(np.sum((a - b) ** 2))
            squared_ref[name] += float(np.sum(a ** 2))
    return [TensorError(n, float(np.sqrt(squared_diff[n] / squared_ref[n])) if squared_ref[n] > 0 else 0.0)
            for n in shared]
