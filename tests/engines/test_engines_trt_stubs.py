"""The product's TensorRT calls, checked statically against TensorRT 10.13's published Python API.

The API is the ``.pyi`` of ``tensorrt-stubs==10.13.0.35.1`` (pybind11-stubgen output of the real
10.13.0.35 bindings) that scripts/setup_venv.sh puts in ``.venv/tensorrt-stubs`` (a side folder, never
on sys.path; ``BATCHFORGE_TRT_STUBS`` may point elsewhere). tests/trt_api_check.py parses it and the
product's TensorRT files with ``ast`` -- no TensorRT and no GPU needed. A missing stub FAILS these
tests: it must never silently switch the check off. What this does not check: argument types and
counts, return values, behaviour (tests/engines/test_engines_trt_mapping.py and the gpu tests do).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trt_api_check as check

from batchforge.engines.tensorrt_builder import HardwareCompat

# Names the product uses that TensorRT 10.13 does not publish, because they are newer (looked up
# with a getattr fallback for 11+): "Class.member" / "tensorrt.name" as the checker reports them,
# each with its reason. None today: every name the product uses exists in 10.13.
ALLOWED_NEWER: dict[str, str] = {}

# getattr/hasattr on TensorRT objects with a computed name, keyed "file: expression", each with
# where the names it can take are checked instead.
DYNAMIC_LOOKUPS: dict[str, str] = {
    "engines/tensorrt_builder.py: getattr(trt.HardwareCompatibilityLevel, config.hardware_compat.trt_name)":
        "HardwareCompat member names: test_hardware_compat_levels_are_in_10_13",
}

# Checked names that must keep showing up: if one vanishes, the checker lost track of a variable
# (update NAME_MAP/ATTR_MAP in tests/trt_api_check.py) rather than the product dropping the call.
CORE_NAMES = {"tensorrt.Builder", "Builder.create_network", "Builder.build_serialized_network",
              "IBuilderConfig.set_memory_pool_limit", "OnnxParser.parse_from_file",
              "Runtime.deserialize_cuda_engine", "ICudaEngine.create_execution_context",
              "IExecutionContext.execute_async_v3", "IExecutionContext.set_tensor_address",
              "ILogger.log (override)"}


def stub_api() -> check.StubAPI:
    path = check.stub_path()
    if not path.is_file():
        pytest.fail(f"TensorRT API stub {path} is missing: run scripts/setup_venv.sh (it installs "
                    f"{check.STUB_PIN} into .venv/tensorrt-stubs)", pytrace=False)
    api = check.load_stub(path)
    for name in ("Builder", "IBuilderConfig", "ICudaEngine", "ILogger.Severity"):
        assert name in api.classes, f"{path} is not TensorRT's API stub (no class {name})"
    return api


def test_product_tensorrt_calls_are_in_the_10_13_api() -> None:
    api = stub_api()
    report = check.check_product(api, allowed=ALLOWED_NEWER)
    problems = [str(use) for use in report.missing]
    problems += [f"{d} (list it in DYNAMIC_LOOKUPS with where its names are checked)"
                 for d in report.dynamic if d.key not in DYNAMIC_LOOKUPS]
    stale = sorted(set(DYNAMIC_LOOKUPS) - {d.key for d in report.dynamic})
    problems += [f"DYNAMIC_LOOKUPS entry no longer found: {key}" for key in stale]
    lost = sorted(CORE_NAMES - report.checked_names)
    problems += [f"the checker no longer sees {name} (tests/trt_api_check.py NAME_MAP/ATTR_MAP)" for name in lost]
    assert not problems, f"{len(problems)} TensorRT API problem(s):\n" + "\n".join(problems)


def test_hardware_compat_levels_are_in_10_13() -> None:
    api = stub_api()
    missing = [level.trt_name for level in HardwareCompat
               if api.member("HardwareCompatibilityLevel", level.trt_name) is None]
    assert not missing, f"HardwareCompatibilityLevel.{missing} — {check.NOT_PUBLISHED}"


def test_allow_listed_names_really_are_absent_from_10_13() -> None:
    api = stub_api()
    present = []
    for name in ALLOWED_NEWER:
        owner, _, member = name.partition(" ")[0].rpartition(".")
        if (owner == "tensorrt" and member in api.module_names) or (
                owner in api.classes and api.member(owner, member.split("(")[0]) is not None):
            present.append(name)
    assert not present, f"ALLOWED_NEWER names that TensorRT 10.13 does publish (drop them): {present}"


PLANTED = '''\
import tensorrt as tensorrt_module


def build(trt, logger, onnx_path):
    builder = trt.Builder(logger)
    network = builder.create_netwrok(0)
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.INT9)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, pool_size=1 << 30)
    config.set_memory_pool_limit(pool=trt.MemoryPoolType.WORKSPACE, size=1 << 30)
    fp32 = getattr(trt.BuilderFlag, "FP32", None)
    parser = trt.OnnxParser(network, logger)
    parser.parse_from_file(str(onnx_path))
    plan = builder.build_serialized_network(network, config, timing=True)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    context.execute_async_v4(0)
    return fp32, tensorrt_module.Bulider, getattr(trt.DataType, str(onnx_path))


def make_logger(trt):
    class Forwarding(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def lg(self, severity, msg):
            print(severity, msg)

    return Forwarding()
'''
PLANTED_WRONG = ["Builder.create_netwrok", "BuilderFlag.INT9", "IBuilderConfig.set_memory_pool_limit(size=)",
                 "BuilderFlag.FP32", "Builder.build_serialized_network(timing=)", "IExecutionContext.execute_async_v4",
                 "tensorrt.Bulider", "ILogger.lg (override)"]


def test_planted_wrong_calls_are_reported_exactly() -> None:
    api = stub_api()
    report = check.check_source(PLANTED, "planted.py", api)
    assert sorted(u.name for u in report.missing) == sorted(PLANTED_WRONG)
    assert str(report.missing[0]).startswith("planted.py:")
    assert str(report.missing[0]).endswith(f" — {check.NOT_PUBLISHED}")
    right = {"IBuilderConfig.set_memory_pool_limit", "MemoryPoolType.WORKSPACE", "tensorrt.MemoryPoolType",
             "IBuilderConfig.set_memory_pool_limit(pool_size=)", "IBuilderConfig.set_memory_pool_limit(pool=)",
             "OnnxParser.parse_from_file",
             "Runtime.deserialize_cuda_engine", "ICudaEngine.create_execution_context", "ILogger.__init__"}
    assert right <= {u.name for u in report.uses if u.ok}
    assert [d.expr for d in report.dynamic] == ["getattr(trt.DataType, str(onnx_path))"]
    allowed = check.check_source(PLANTED, "planted.py", api, allowed={"BuilderFlag.INT9", "BuilderFlag.FP32"})
    assert sorted(u.name for u in allowed.missing) == sorted(set(PLANTED_WRONG) - {"BuilderFlag.INT9",
                                                                                   "BuilderFlag.FP32"})


def test_unparsable_stub_signatures_are_repaired() -> None:
    # pybind11-stubgen writes these two in tensorrt.pyi (add_scale_nd, IPluginV3 get_workspace_size)
    tree = check.parse_stub_source("class C:\n    def f(self, in: int, a: int = None, b: int) -> None:\n"
                                   "        ...\n", "x.pyi")
    signature = check._signature(tree.body[0].body[0], bound=True)
    assert signature.params == {"in", "a", "b"}


def test_a_missing_stub_fails_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(check.STUB_ENV, str(tmp_path / "nowhere" / "tensorrt.pyi"))
    with pytest.raises(pytest.fail.Exception) as failed:
        stub_api()
    message = str(failed.value)
    assert "scripts/setup_venv.sh" in message
    assert "\n" not in message
    monkeypatch.setenv(check.STUB_ENV, str(tmp_path))  # a folder: its tensorrt_bindings/tensorrt.pyi
    assert check.stub_path() == tmp_path / "tensorrt_bindings" / "tensorrt.pyi"
