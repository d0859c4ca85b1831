"""Test helpers: tiny ONNX graphs built with onnx.helper and artifact folders around them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from batchforge.runtime.artifacts import ModelArtifacts, Precision, file_record, write_json_atomic
from batchforge.runtime.spec import ModelSpec, Preprocess, ProfileRange, TensorSpec

README = Path(__file__).resolve().parents[1] / "README.md"
DOCS = README.parent / "docs"
GENERATED_DOCS = {"cli.md"}  # written by scripts/gen_cli_reference.py: help text, no commands to run


def guide_pages() -> list[Path]:
    """README.md, then the hand-written docs/ pages in name order: where the commands tests run live."""
    return [README, *sorted(p for p in DOCS.glob("*.md") if p.name not in GENERATED_DOCS)]


def readme_blocks(kind: str) -> list[str]:
    """The fenced blocks of one kind (console, python, json) in README.md and then docs/*.md, in order
    (README's first, so the Quick tour is the first console block)."""
    return [block for page in guide_pages()
            for block in re.findall(rf"```{kind}\n(.*?)```", page.read_text(), flags=re.S)]


def quick_tour() -> list[list[str]]:
    """The README Quick tour's ``batchforge`` commands, as argv lists."""
    commands = []
    for line in readme_blocks("console")[0].splitlines():
        if line.startswith("$ batchforge "):
            commands.append(shlex.split(line[len("$ batchforge "):].split("#")[0]))
    return commands


def tour_argv(argv: list[str]) -> list[str]:
    """A tour command as the suite runs it: smaller calibration and evaluation sets than CI's."""
    extra = {"parity": ["--eval-size", "4"], "bench": ["--repeats", "1"],
             "convert": ["--samples", "16"], "calibrate": ["--samples", "16"]}
    return [*argv, *extra.get(argv[0], [])]


def tiny_embedder_onnx(channels: int = 3, size: int = 8, dim: int = 5, seed: int = 0) -> onnx.ModelProto:
    """images (batch, C, H, W) -> embedding (batch, dim): spatial mean, then a linear map."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(channels, dim)).astype(np.float32)
    bias = rng.normal(size=(dim,)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["images", "axes"], ["pooled"], keepdims=0, name="pool"),
        helper.make_node("MatMul", ["pooled", "W"], ["mm"], name="proj"),
        helper.make_node("Add", ["mm", "B"], ["embedding"], name="bias"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", channels, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B"),
                     numpy_helper.from_array(np.array([2, 3], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def tiny_spec(name: str = "tiny", size: int = 8, profile: ProfileRange = ProfileRange(1, 4, 8),
              family: str = "reid") -> ModelSpec:
    return ModelSpec(
        name=name, family=family,
        inputs=(TensorSpec("images", ("batch", 3, size, size)),),
        outputs=("embedding",), profile=profile,
        preprocess=Preprocess(height=size, width=size), postprocess={"top_k": 3},
    )


def write_artifact(root: Path, model: onnx.ModelProto, spec: ModelSpec) -> ModelArtifacts:
    """An artifact folder with model.fp32.onnx and a minimal, valid export.json."""
    artifacts = ModelArtifacts.at(root, spec.name)
    artifacts.dir.mkdir(parents=True, exist_ok=True)
    path = artifacts.onnx(Precision.FP32)
    onnx.save(model, str(path))
    write_json_atomic(artifacts.export_record_path, {
        "schema_version": 1, "model": spec.name, "spec": spec.to_dict(),
        "onnx": file_record(path, artifacts.dir), "factory": "tests:none",
    })
    return artifacts


def random_images(count: int, seed: int = 0, shape: tuple[int, int] = (20, 30)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(count)]


def replant_onnx(artifacts: ModelArtifacts, precision: Precision, mutate) -> None:
    """Applies ``mutate(model)`` to an artifact's ONNX and re-records its hash, as a faulty
    export or calibration would (so only parity, not the integrity check, can catch it)."""
    import json

    path = artifacts.onnx(precision)
    model = onnx.load(str(path))
    mutate(model)
    onnx.save(model, str(path))
    sidecar = artifacts.sidecar(precision)
    record = json.loads(sidecar.read_text())
    record["onnx"] = file_record(path, artifacts.dir)
    write_json_atomic(sidecar, record)


def load_script(name: str):
    """``scripts/NAME.py`` imported as a module (the scripts folder is no package), to test its functions."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export_factory(root: Path, factory: str, spec: dict, *extra: str) -> int:
    """``batchforge export --factory user_models:FACTORY`` of ``spec`` (written as ROOT/NAME.json)
    into ROOT/artifacts, as a user exports their own model; the exit code."""
    import json

    from batchforge.cli import main

    path = root / f"{spec['name']}.json"
    path.write_text(json.dumps(spec))
    return main(["export", "--factory", f"user_models:{factory}", "--spec", str(path),
                 "--output-dir", str(root / "artifacts"), *extra])


def planted_copy(artifacts_dir: Path, tmp_path: Path, name: str, mutate) -> ModelArtifacts:
    """A copy of the artifacts whose FP32 ONNX initialisers ``mutate`` edits ((name, array) -> new
    array, or None to keep it), re-recorded as a faulty export would: only parity can catch it."""
    import shutil

    shutil.copytree(artifacts_dir, tmp_path / "artifacts")
    copy = ModelArtifacts.at(tmp_path / "artifacts", name)

    def edit(model):
        for init in model.graph.initializer:
            array = numpy_helper.to_array(init)
            changed = mutate(init.name, array.copy())
            if changed is not None:
                init.CopyFrom(numpy_helper.from_array(changed.astype(array.dtype), init.name))

    replant_onnx(copy, Precision.FP32, edit)
    return copy


def replant_cpu_int8(artifacts: ModelArtifacts, mutate) -> None:
    """``replant_onnx`` for the CPU INT8 artifact (``model.int8.cpu.onnx``, ``cpu_onnx`` record)."""
    import json

    path = artifacts.cpu_int8_onnx
    model = onnx.load(str(path))
    mutate(model)
    onnx.save(model, str(path))
    sidecar = artifacts.sidecar(Precision.INT8)
    record = json.loads(sidecar.read_text())
    record["cpu_onnx"] = file_record(path, artifacts.dir)
    write_json_atomic(sidecar, record)


def drop_cpu_int8(artifacts: ModelArtifacts) -> None:
    """Makes the CPU backend run the TensorRT Q/DQ model as written (as for a calibration whose
    CPU form was not adopted): the ``cpu_onnx`` record and file go."""
    import json

    sidecar = artifacts.sidecar(Precision.INT8)
    record = json.loads(sidecar.read_text())
    record.pop("cpu_onnx", None)
    write_json_atomic(sidecar, record)
    artifacts.cpu_int8_onnx.unlink(missing_ok=True)
    for built in (artifacts.ort_engine(Precision.INT8), artifacts.ort_manifest(Precision.INT8)):
        built.unlink(missing_ok=True)


def edit_export_spec(artifacts: ModelArtifacts, edit) -> None:
    """Applies ``edit(spec_dict)`` to the spec recorded in export.json (a deployment config)."""
    import json

    record = json.loads(artifacts.export_record_path.read_text())
    edit(record["spec"])
    write_json_atomic(artifacts.export_record_path, record)


FAKE_PLAN = bytes(range(256)) * 16


def fake_plan(artifacts, precision=Precision.FP32):
    """A plan file and manifest as `build --backend tensorrt` writes them (the bytes are a stand-in:
    deploy checks integrity, Triton's TensorRT deserialises)."""
    from batchforge.engines.profiles import input_profiles
    from batchforge.engines.tensorrt_builder import BuildConfig, make_manifest
    from batchforge.runtime.manifest import write_manifest

    config = BuildConfig(precision=precision, profile=ProfileRange(2, 4, 16))
    artifacts.plan(precision).write_bytes(FAKE_PLAN)
    manifest = make_manifest(artifacts, config, artifacts.plan(precision), FAKE_PLAN, artifacts.onnx(precision),
                             input_profiles(artifacts.spec(), config.profile), artifacts.spec().to_dict(),
                             "10.13.0.35", {"gpu_name": "NVIDIA H100", "compute_capability": "9.0",
                                            "cuda_runtime": "12.9", "cuda_driver": "12.9"})
    write_manifest(artifacts.plan_manifest(precision), manifest)


def sqrt_embedder_onnx() -> onnx.ModelProto:
    """The tiny embedder with a Sqrt after the pooling: a dark image (negative normalised mean)
    gives NaN embeddings, a bright one finite ones (a real engine output, not a patched array)."""
    model = tiny_embedder_onnx()
    graph = model.graph
    graph.node[1].input[0] = "rooted"
    graph.node.insert(1, helper.make_node("Sqrt", ["pooled"], ["rooted"], name="root"))
    onnx.checker.check_model(model)
    return model
