"""Trained PP-OCR networks (rapidocr-onnxruntime 1.4.4's ONNX files) as torch modules, for
``batchforge export --factory ocr_models:<function> --spec <spec>.json``.

The networks come as ONNX (Paddle -> paddle2onnx); onnx2torch rebuilds them as a
``torch.fx.GraphModule``, so batchforge's reference is a PyTorch module with the trained weights
and its export path (torch.onnx.export, dynamo) runs on it as on any user model.

Needs this folder on ``PYTHONPATH``, and ``rapidocr_onnxruntime`` and ``onnx2torch`` importable
(scripts/setup_venv.sh installs both in the .venv, the first without its dependencies; run.sh
installs them elsewhere with ``pip --target`` when they are missing). ``OCR_MODELS_DIR``
overrides where the ONNX files are looked up.

- ``ppocr_det``: PP-OCRv4 mobile text detector (PPLCNetV3 backbone + DBNet head), input
  (B, 3, H, W) normalised RGB, output (B, 1, H, W) text probability map (sigmoid).
- ``ppocr_cls``: ch_ppocr_mobile_v2.0 text-direction classifier (MobileNetV3-small), input
  (B, 3, 48, 192), output (B, 2) softmax probabilities (0 deg, 180 deg).
- ``ppocr_rec``: PP-OCRv4 mobile recogniser (SVTR-LCNet), input (B, 3, 48, 320), output
  (B, 40, 6625) per-time-step softmax over the character set.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

DET_FILE = "ch_PP-OCRv4_det_infer.onnx"
CLS_FILE = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
REC_FILE = "ch_PP-OCRv4_rec_infer.onnx"


def models_dir() -> Path:
    """The folder of rapidocr's bundled ONNX files (``OCR_MODELS_DIR`` wins)."""
    if os.environ.get("OCR_MODELS_DIR"):
        return Path(os.environ["OCR_MODELS_DIR"])
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("rapidocr_onnxruntime is not importable: put its --target folder on "
                           "PYTHONPATH or set OCR_MODELS_DIR")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def constants_to_initializers(model):
    """Move every ``Constant`` node's tensor into ``graph.initializer``, in place.

    Why: paddle2onnx writes the weights (conv kernels, BN statistics, the learnable-affine
    scales) as ``Constant`` nodes, not initializers. onnx2torch looks a Conv/BN's weight up among
    the initializers only, and fails with ``KeyError: 'conv1_weights'`` (cls) /
    ``KeyError: 'conv2d_0.w_0'`` (det). As initializers they become parameters/buffers of the
    torch modules; the values are bit-identical. Returns the number moved.
    """
    import onnx

    graph = model.graph
    kept, moved = [], 0
    for node in graph.node:
        if (node.op_type == "Constant" and len(node.attribute) == 1
                and node.attribute[0].name == "value"):
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            moved += 1
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return moved


def fold_constant_reshapes(model):
    """Replace ``Reshape(initializer, initializer)`` by the reshaped initializer, in place.

    Why: the classifier reshapes each conv bias to (1, C, 1, 1) at run time (19 such nodes).
    onnx2torch's Reshape module branches on ``torch.any(shape == 0)``; under
    ``torch.export`` the shape is a lifted buffer, so that branch is a data-dependent guard.
    Folded, nothing in the graph depends on a tensor's value. Returns the number folded."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    kept, folded = [], 0
    for node in model.graph.node:
        if node.op_type == "Reshape" and all(i in inits for i in node.input[:2]):
            data = numpy_helper.to_array(inits[node.input[0]])
            shape = [data.shape[i] if d == 0 else int(d)
                     for i, d in enumerate(numpy_helper.to_array(inits[node.input[1]]))]
            model.graph.initializer.append(numpy_helper.from_array(data.reshape(shape), node.output[0]))
            folded += 1
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return folded


def shape_flatten_to_flatten(model):
    """Replace ``Reshape(x, Concat(Cast(Slice(Shape(x), 0, 1)), [C]))`` by ``Flatten(x, axis=1)``.

    Why: that chain is Paddle's ``flatten`` before the classifier's FC layer (x is (B, C, 1, 1)).
    onnx2torch turns ``Shape`` into ``torch.tensor(x.shape)``: a new tensor whose values
    torch.export cannot see through, so the Reshape's target becomes an unbacked value
    (``Unable to find user code corresponding to {u0}``) and batchforge's dynamo export falls
    back to the TorchScript exporter, which bakes the trace batch into a Reshape
    (``batch size baked into the graph: Reshape node '/net/Softmax@0/Reshape': constant shape
    [2, 2] starts with the trace batch 2``). ``Flatten`` keeps the batch symbolic. The shape
    nodes left without a consumer are removed. Returns the number replaced."""
    from onnx import helper

    producers = {o: n for n in model.graph.node for o in n.output}

    def chain_root(name, ops):
        """Walks producers through ``ops``; returns the tensor ``Shape`` reads, or None."""
        node = producers.get(name)
        while node is not None and node.op_type in ops:
            if node.op_type == "Shape":
                return node.input[0]
            node = producers.get(node.input[0])
        return None

    replaced = 0
    for index, node in enumerate(list(model.graph.node)):
        if node.op_type != "Reshape" or node.input[1] not in producers:
            continue
        concat = producers[node.input[1]]
        if concat.op_type != "Concat" or chain_root(concat.input[0], ("Cast", "Slice", "Shape")) != node.input[0]:
            continue
        flatten = helper.make_node("Flatten", [node.input[0]], list(node.output), name=node.name + "_flatten", axis=1)
        model.graph.node.remove(node)
        model.graph.node.insert(index, flatten)
        replaced += 1
    # drop nodes whose outputs nothing reads any more (the Shape/Cast/Slice/Concat chain)
    graph_outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | graph_outputs
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    used = {i for n in model.graph.node for i in n.input}
    unused = [t for t in model.graph.initializer if t.name not in used]
    for t in unused:
        model.graph.initializer.remove(t)
    return replaced


class _ConstantResize(nn.Module):
    """``interpolate`` with its scale factors as Python numbers (see constant_resize_scales)."""

    def __init__(self, scale_factor: tuple[float, ...], mode: str, align_corners: bool | None) -> None:
        super().__init__()
        self.scale_factor = scale_factor
        self.mode = mode
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, scale_factor=self.scale_factor, mode=self.mode,
                                         align_corners=self.align_corners)


def constant_resize_scales(graph_module) -> int:
    """Give each converted ``Resize`` its constant scales as numbers, in place.

    Why: the detector's FPN upsamples with ONNX ``Resize(x, roi=[], scales=[1, 1, 2, 2])``
    (nearest, asymmetric, floor: torch's 'nearest' exactly, for these integer factors).
    onnx2torch's ``OnnxResize`` keeps ``scales`` as a buffer and calls ``scales.tolist()`` in
    forward: a data-dependent value under torch.export, so batchforge's dynamo export fails
    (``TorchExportError: Failed to export the model with torch.export``) and falls back to
    the TorchScript exporter. With the scales read once here the dynamo export goes through.
    Returns the number replaced."""
    from onnx2torch.node_converters.resize import OnnxResize, _onnx_mode_to_torch_mode

    replaced = 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module":
            continue
        module = graph_module.get_submodule(node.target)
        if not isinstance(module, OnnxResize) or len(node.args) != 3 or node.kwargs:
            continue
        x, roi, scales = node.args
        if getattr(scales, "op", None) != "get_attr" or getattr(roi, "op", None) != "get_attr":
            continue
        roi_value = _attr(graph_module, roi.target)
        scale_value = _attr(graph_module, scales.target).tolist()
        if roi_value.numel() != 0 or len(scale_value) != 4 or scale_value[:2] != [1.0, 1.0]:
            continue
        name = node.target.replace("/", "_") + "_const"
        graph_module.add_submodule(name, _ConstantResize(
            tuple(float(v) for v in scale_value[2:]), _onnx_mode_to_torch_mode(module.onnx_mode, 2),
            module.align_corners))
        node.target = name
        node.args = (x,)
        replaced += 1
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()
    return replaced


def _attr(root: nn.Module, dotted: str) -> torch.Tensor:
    value = root
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


class _Named(nn.Module):
    """The converted GraphModule behind a plain forward with named arguments (batchforge maps
    the spec's input names onto the forward's parameters; the fx module's is ``input_1``)."""

    def __init__(self, graph_module: nn.Module) -> None:
        super().__init__()
        self.net = graph_module

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


def _convert(filename: str) -> nn.Module:
    import onnx
    import onnx2torch

    model = onnx.load(str(models_dir() / filename))
    constants_to_initializers(model)
    fold_constant_reshapes(model)
    shape_flatten_to_flatten(model)
    graph_module = onnx2torch.convert(model)
    constant_resize_scales(graph_module)
    module = _Named(graph_module)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def ppocr_det() -> nn.Module:
    return _convert(DET_FILE)


def ppocr_cls() -> nn.Module:
    return _convert(CLS_FILE)


def ppocr_rec() -> nn.Module:
    return _convert(REC_FILE)
