"""Engines that fail for real (tests/hostile): a Gather lookup whose index input can go out of
range, and a session stand-in whose every run raises as a broken device does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from helpers import write_artifact
from onnx import TensorProto, helper, numpy_helper

from batchforge.runtime import load_pipeline
from batchforge.runtime.artifacts import ModelArtifacts
from batchforge.runtime.spec import ModelSpec, ProfileRange, TensorSpec

TABLE_ROWS = 5
OUT_OF_RANGE = "indices element out of data bounds, idx=9 must be within the inclusive range [-5,4]"
STICKY = ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 700: an illegal memory access "
          "was encountered")


def lookup_onnx() -> onnx.ModelProto:
    """index (batch, 2) int64 -> rows (batch, 2, 4): rows of a 5x4 table (a Gather, as an
    embedding lookup); an index outside [-5, 4] makes ONNX Runtime raise INVALID_ARGUMENT."""
    table = np.arange(TABLE_ROWS * 4, dtype=np.float32).reshape(TABLE_ROWS, 4)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "index"], ["rows"], axis=0, name="gather")], "lookup",
        [helper.make_tensor_value_info("index", TensorProto.INT64, ["batch", 2])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", 2, 4])],
        initializer=[numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def lookup_artifacts(root: Path) -> ModelArtifacts:
    spec = ModelSpec(name="lookup", family="tensors", inputs=(TensorSpec("index", ("batch", 2), "int64"),),
                     outputs=("rows",), profile=ProfileRange(1, 4, 8), preprocess=None, postprocess={})
    return write_artifact(root, lookup_onnx(), spec)


def index_item(i: int, bad: bool = False) -> np.ndarray:
    """One item's index pair; ``bad`` puts 9 (out of the table's 5 rows) in it."""
    return np.array([i % TABLE_ROWS, 9 if bad else 1], np.int64)


def index_files(folder: Path, count: int, bad: set[int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        paths.append(folder / f"item{i}.npy")
        np.save(paths[-1], index_item(i, i in bad))
    return paths


def open_lookup(artifacts: ModelArtifacts):
    return load_pipeline(artifacts.model, output_dir=artifacts.root, backend="onnxruntime-cpu", threads=1)


class BrokenSession:
    """An ONNX Runtime session whose runs all fail once ``broken`` (a device lost mid-run)."""

    def __init__(self, session) -> None:
        self.session = session
        self.broken = False
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, *args, **kwargs):
        self.calls += 1
        if self.broken:
            raise RuntimeError(STICKY)
        return self.session.run(*args, **kwargs)
