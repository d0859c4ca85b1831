"""Engine manifests: writing, reading, and every refusal of check_before_load.

The plan here is synthetic bytes: these checks run before TensorRT is ever involved, which is
the point (a bad plan must never reach deserialize_cuda_engine).
"""

import dataclasses
import json
import os

import pytest
from helpers import tiny_embedder_onnx, tiny_spec, write_artifact

from batchforge.engines.profiles import input_profiles
from batchforge.engines.tensorrt_builder import BuildConfig, HardwareCompat, make_manifest
from batchforge.errors import (
    EXIT_COULD_NOT_RUN,
    ArtifactError,
    ConfigError,
    EngineCompatibilityError,
    IntegrityError,
)
from batchforge.runtime.artifacts import Precision, file_record, write_json_atomic
from batchforge.runtime.manifest import (
    EngineEnvironment,
    EngineManifest,
    OrtEngineManifest,
    check_before_load,
    read_manifest,
    read_ort_manifest,
    version_tuple,
    write_manifest,
)
from batchforge.runtime.spec import ProfileRange

PLAN = bytes(range(256)) * 64  # 16 KiB stand-in for a serialized engine
BUILT_ON = {"gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
            "cuda_runtime": "12.9", "cuda_driver": "12.9"}
HERE_SAME = EngineEnvironment("10.13.0.35", "9.0", "NVIDIA H100 80GB HBM3")


@pytest.fixture
def built(tmp_path):
    """An artifact folder with model.fp32.onnx, engine.fp32.plan and its manifest."""
    spec = tiny_spec()
    artifacts = write_artifact(tmp_path, tiny_embedder_onnx(), spec)
    return artifacts, _build(artifacts, Precision.FP32)


def _build(artifacts, precision, **options):
    config = BuildConfig(precision=precision, profile=ProfileRange(1, 4, 8), **options)
    plan_path = artifacts.plan(precision)
    plan_path.write_bytes(PLAN)
    manifest = make_manifest(artifacts, config, plan_path, PLAN, artifacts.onnx(precision),
                             input_profiles(artifacts.spec(), config.profile), artifacts.spec().to_dict(),
                             "10.13.0.35", BUILT_ON)
    write_manifest(artifacts.plan_manifest(precision), manifest)
    return manifest


def _rebuild_cmd(manifest):
    return f"batchforge build tiny --precision {manifest.precision} --backend tensorrt"


# -- writing and reading --------------------------------------------------------------------
def test_manifest_records_the_spec_fields_and_round_trips(built):
    artifacts, manifest = built
    data = json.loads(artifacts.plan_manifest(Precision.FP32).read_text())
    assert next(iter(data)) == "schema_version"
    for key in ("tensorrt_version", "cuda_runtime_version", "cuda_driver_version", "gpu_name",
                "compute_capability", "hardware_compatibility", "version_compatible", "profile",
                "inputs", "precision", "onnx_sha256", "plan_sha256", "calibration_sha256",
                "tolerances", "spec", "builder", "created"):
        assert key in data
    assert data["profile"] == {"min": 1, "opt": 4, "max": 8}
    assert data["inputs"] == [{"name": "images", "dtype": "float32", "min": [1, 3, 8, 8],
                               "opt": [4, 3, 8, 8], "max": [8, 3, 8, 8]}]
    assert data["onnx_sha256"] == file_record(artifacts.onnx(Precision.FP32), artifacts.dir)["sha256"]
    assert data["calibration_sha256"] is None
    assert data["builder"]["strongly_typed"] is True
    assert data["spec"]["preprocess"]["height"] == 8
    assert read_manifest(artifacts.plan_manifest(Precision.FP32)) == manifest
    assert not [p for p in os.listdir(artifacts.dir) if p.endswith(".tmp")]


def test_int8_manifest_records_the_calibration_set_hash(tmp_path):
    artifacts = write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec())
    int8 = artifacts.onnx(Precision.INT8)
    int8.write_bytes(artifacts.onnx(Precision.FP32).read_bytes())
    write_json_atomic(artifacts.sidecar(Precision.INT8), {
        "onnx": file_record(int8, artifacts.dir), "data": {"sha256": "c" * 64, "items": 32}})
    assert _build(artifacts, Precision.INT8).calibration_sha256 == "c" * 64


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(surprise=1), "unknown key 'surprise'"),
        (lambda d: d.pop("plan_sha256"), "missing key 'plan_sha256'"),
        (lambda d: d["inputs"][0].update(extra=True), "unknown key 'extra'"),
        (lambda d: d.update(hardware_compatibility="turing_plus"), "hardware_compatibility must be one of"),
        (lambda d: d.update(schema_version=99), "schema_version 99 is not supported"),
        (lambda d: d.update(profile={"min": 4, "opt": 2, "max": 8}), "1 <= min <= opt <= max"),
    ],
)
def test_malformed_manifests_are_refused_by_name(built, edit, message):
    artifacts, _ = built
    path = artifacts.plan_manifest(Precision.FP32)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message) as info:
        read_manifest(path)
    assert info.value.exit_code == EXIT_COULD_NOT_RUN


def test_missing_manifest_names_the_build_command(tmp_path):
    with pytest.raises(ArtifactError, match="engine manifest not found") as info:
        read_manifest(tmp_path / "engine.fp16.json", hint="build it with `batchforge build m`")
    assert "batchforge build m" in info.value.one_line()


def test_ort_manifest_round_trips_and_rejects_unknown_keys(tmp_path):
    manifest = OrtEngineManifest(
        model="m", precision="fp32", onnxruntime_version="1.31.1", providers=("CPUExecutionProvider",),
        provider_options=({},), graph_optimization="extended", source_file="model.fp32.onnx",
        source_sha256="a" * 64, engine_file="engine.fp32.ort.onnx", engine_sha256="b" * 64,
        calibration_sha256=None, spec={"name": "m"}, created="2025-01-01T00:00:00+00:00")
    write_manifest(tmp_path / "engine.fp32.ort.json", manifest)
    assert read_ort_manifest(tmp_path / "engine.fp32.ort.json") == manifest
    data = json.loads((tmp_path / "engine.fp32.ort.json").read_text())
    data["gpu"] = "x"
    (tmp_path / "engine.fp32.ort.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unknown key 'gpu'"):
        read_ort_manifest(tmp_path / "engine.fp32.ort.json")


# -- integrity refusals ---------------------------------------------------------------------
def test_matching_plan_and_machine_pass_and_return_the_verified_bytes(built):
    artifacts, manifest = built
    plan = check_before_load(manifest, artifacts.plan(Precision.FP32), HERE_SAME,
                             onnx_path=artifacts.onnx(Precision.FP32))
    assert plan == PLAN


def test_truncated_plan_is_refused_before_deserialisation(built):
    artifacts, manifest = built
    artifacts.plan(Precision.FP32).write_bytes(PLAN[:-100])
    message = "16284 bytes, its manifest records 16384: the plan is truncated"
    with pytest.raises(IntegrityError, match=message) as info:
        check_before_load(manifest, artifacts.plan(Precision.FP32), HERE_SAME)
    assert info.value.exit_code == EXIT_COULD_NOT_RUN
    assert _rebuild_cmd(manifest) in info.value.one_line()


@pytest.mark.parametrize("offset", [0, 1234, len(PLAN) - 1])
def test_bit_flipped_plan_is_refused_before_deserialisation(built, offset):
    artifacts, manifest = built
    flipped = bytearray(PLAN)
    flipped[offset] ^= 0x01
    artifacts.plan(Precision.FP32).write_bytes(bytes(flipped))
    with pytest.raises(IntegrityError, match="does not match its manifest: sha256 expected") as info:
        check_before_load(manifest, artifacts.plan(Precision.FP32), HERE_SAME)
    assert "refusing to deserialise" in str(info.value)


def test_missing_plan_is_refused(built):
    artifacts, manifest = built
    artifacts.plan(Precision.FP32).unlink()
    with pytest.raises(ArtifactError, match="TensorRT plan not found"):
        check_before_load(manifest, artifacts.plan(Precision.FP32), HERE_SAME)


def test_plan_built_from_an_older_onnx_is_refused(built):
    artifacts, manifest = built
    import onnx

    onnx.save(tiny_embedder_onnx(seed=1), str(artifacts.onnx(Precision.FP32)))
    with pytest.raises(IntegrityError, match="the plan is stale") as info:
        check_before_load(manifest, artifacts.plan(Precision.FP32), HERE_SAME,
                          onnx_path=artifacts.onnx(Precision.FP32))
    assert _rebuild_cmd(manifest) in info.value.one_line()


# -- compatibility refusals -----------------------------------------------------------------
def test_other_tensorrt_and_gpu_gives_the_full_actionable_line(built):
    artifacts, manifest = built
    with pytest.raises(EngineCompatibilityError) as info:
        check_before_load(manifest, artifacts.plan(Precision.FP32), _here("10.9.0.34", "8.6"))
    line = info.value.one_line()
    assert "built for sm_90 with TensorRT 10.13, this is sm_86 with 10.9" in line
    assert "rebuild with `batchforge build tiny --precision fp32 --backend tensorrt`" in line
    assert info.value.exit_code == EXIT_COULD_NOT_RUN


def test_tensorrt_patch_mismatch_is_refused_with_full_versions(built):
    artifacts, manifest = built
    with pytest.raises(EngineCompatibilityError, match=r"TensorRT version mismatch.*TensorRT 10\.13\.0\.35, "
                                                       r"this is sm_90 with 10\.13\.1\.2"):
        check_before_load(manifest, artifacts.plan(Precision.FP32), _here("10.13.1.2", "9.0"))


def test_compute_capability_mismatch_is_refused(built):
    artifacts, manifest = built
    with pytest.raises(EngineCompatibilityError, match=r"compute capability mismatch.*level none.*"
                                                       r"built for sm_90 .* this is sm_89"):
        check_before_load(manifest, artifacts.plan(Precision.FP32), _here("10.13.0.35", "8.9"))


def _here(version="10.13.0.35", sm="9.0", gpu=BUILT_ON["gpu_name"]):
    return EngineEnvironment(version, sm, gpu)


def _one_line_says_what_to_rebuild(info, manifest, *expected_given):
    line = info.value.one_line()
    assert "\n" not in line
    for text in expected_given:
        assert text in line
    assert f"rebuild with `{_rebuild_cmd(manifest)}`" in line
    return line


def test_level_none_refuses_another_gpu_model_with_the_same_compute_capability(built):
    """kNONE promises only the GPU model the plan was built on (TensorRT itself merely warns)."""
    artifacts, manifest = built
    plan = artifacts.plan(Precision.FP32)
    check_before_load(manifest, plan, _here())
    for other in ("NVIDIA H200", "", "unknown"):
        with pytest.raises(EngineCompatibilityError, match=r"level none .* holds only on the GPU model") as info:
            check_before_load(manifest, plan, _here(gpu=other))
        _one_line_says_what_to_rebuild(info, manifest, "built on NVIDIA H100 80GB HBM3", "both sm_90",
                                       "--hardware-compat same_compute_capability")


def test_level_none_refuses_a_manifest_without_the_build_gpu(tmp_path):
    artifacts = write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec())
    manifest = dataclasses.replace(_build(artifacts, Precision.FP32), gpu_name="unknown")
    with pytest.raises(EngineCompatibilityError, match="built on an unrecorded GPU, this is NVIDIA H100"):
        check_before_load(manifest, artifacts.plan(Precision.FP32), _here())


def test_same_compute_capability_level_accepts_other_models_of_that_sm_only(tmp_path):
    artifacts = write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec())
    manifest = _build(artifacts, Precision.FP32, hardware_compat=HardwareCompat.SAME_COMPUTE_CAPABILITY)
    plan = artifacts.plan(Precision.FP32)
    for gpu in ("NVIDIA H200", "NVIDIA GH200 480GB", ""):
        check_before_load(manifest, plan, _here(gpu=gpu))
    with pytest.raises(EngineCompatibilityError, match="level same_compute_capability") as info:
        check_before_load(manifest, plan, _here(sm="8.0", gpu="NVIDIA A100"))
    _one_line_says_what_to_rebuild(info, manifest, "built for sm_90", "this is sm_80")


def test_ampere_plus_level_runs_on_any_ampere_but_not_on_turing(tmp_path):
    artifacts = write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec())
    manifest = _build(artifacts, Precision.FP32, hardware_compat=HardwareCompat.AMPERE_PLUS)
    plan = artifacts.plan(Precision.FP32)
    for sm in ("8.0", "8.6", "8.9", "9.0", "12.0"):
        check_before_load(manifest, plan, _here(sm=sm, gpu="any GPU"))
    with pytest.raises(EngineCompatibilityError, match=r"ampere_plus .* needs an Ampere or newer GPU.*sm_75") as info:
        check_before_load(manifest, plan, _here(sm="7.5", gpu="Tesla T4"))
    _one_line_says_what_to_rebuild(info, manifest, "sm_80+")


def test_version_compatible_plan_runs_on_the_same_or_later_release_only(tmp_path):
    artifacts = write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec())
    manifest = _build(artifacts, Precision.FP32, version_compatible=True)
    plan = artifacts.plan(Precision.FP32)
    for later in ("10.13.0.35", "10.13.0.40", "10.13.3.9", "10.14.1.1", "11.0.0.1", "11.4.0.106"):
        check_before_load(manifest, plan, _here(version=later))
    for older in ("10.9.0.34", "10.12.9.9"):
        with pytest.raises(EngineCompatibilityError, match=r"version-compatible .* needs TensorRT >= 10\.13\.0"):
            check_before_load(manifest, plan, _here(version=older))


def test_version_compatible_plan_refuses_an_older_patch_release(tmp_path):
    artifacts = write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec())
    config = BuildConfig(precision=Precision.FP32, profile=ProfileRange(1, 4, 8), version_compatible=True)
    manifest = dataclasses.replace(_build(artifacts, Precision.FP32, version_compatible=True),
                                   tensorrt_version="10.13.2.6", builder=config.record())
    with pytest.raises(EngineCompatibilityError) as info:
        check_before_load(manifest, artifacts.plan(Precision.FP32), _here(version="10.13.0.35"))
    _one_line_says_what_to_rebuild(info, manifest, "needs TensorRT >= 10.13.2 (the same or a later release), "
                                                   "this is 10.13.0.35", "upgrade TensorRT to 10.13.2 or later")


@pytest.mark.parametrize(("built_with", "runtime"), [("10.13.0.35", "12.0.0.1"), ("11.0.0.1", "12.1.0.1"),
                                                     ("8.6.1.6", "11.0.0.1"), ("8.6.1.6", "9.3.0.1")])
def test_version_compatible_plan_refuses_a_major_transition_tensorrt_does_not_support(tmp_path, built_with,
                                                                                     runtime):
    artifacts = write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec())
    manifest = dataclasses.replace(_build(artifacts, Precision.FP32, version_compatible=True),
                                   tensorrt_version=built_with)
    with pytest.raises(EngineCompatibilityError, match="runs only on TensorRT") as info:
        check_before_load(manifest, artifacts.plan(Precision.FP32), _here(version=runtime))
    _one_line_says_what_to_rebuild(info, manifest, f"this is {runtime}", "no other major-version transition")


def test_version_compatible_tensorrt_8_plan_loads_on_10(tmp_path):
    """The other cross-major combination the TensorRT 11.4.1 support matrix lists."""
    artifacts = write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec())
    manifest = dataclasses.replace(_build(artifacts, Precision.FP32, version_compatible=True),
                                   tensorrt_version="8.6.1.6")
    check_before_load(manifest, artifacts.plan(Precision.FP32), _here(version="10.0.1.6"))


def test_integrity_is_checked_before_compatibility(built):
    """A corrupted plan on the wrong machine reports the corruption (the more basic fault)."""
    artifacts, manifest = built
    artifacts.plan(Precision.FP32).write_bytes(PLAN[:10])
    with pytest.raises(IntegrityError):
        check_before_load(manifest, artifacts.plan(Precision.FP32), EngineEnvironment("9.0", "7.0"))


def test_version_tuple():
    assert version_tuple("10.13.0.35") == (10, 13, 0, 35)
    assert version_tuple("11.0.0b1") == (11, 0)
    assert dataclasses.replace(HERE_SAME, compute_capability="12.0").sm == "sm_120"


def test_manifest_constructor_validates_precision(built):
    _, manifest = built
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        dataclasses.replace(manifest, precision="fp8")
    assert isinstance(manifest, EngineManifest)
