"""TensorRT extras pair TensorRT and cuda-python of one CUDA major (pyproject's requirement strings)."""

import re
from pathlib import Path

import pytest
import tomllib

from batchforge.runtime.runners import cuda_util

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _extras():
    return tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]


def _cuda_majors(requirements):
    """{"tensorrt": CUDA major of the TensorRT wheel, "cuda-python": (lowest major, exclusive upper major)}."""
    found = {}
    for req in requirements:
        name, spec = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", req).groups()
        if name.startswith("tensorrt"):
            wheel = re.fullmatch(r"tensorrt-cu(\d+)", name)
            assert wheel, f"{req!r}: name the CUDA build (tensorrt-cuXX), plain tensorrt picks CUDA 13 silently"
            found["tensorrt"] = int(wheel.group(1))
        elif name == "cuda-python":
            low = re.search(r">=\s*(\d+)", spec)
            high = re.search(r"<\s*(\d+)(?:\s*,|$)", spec)
            assert low and high, f"{req!r}: cuda-python needs a lower and an upper major bound"
            found["cuda-python"] = (int(low.group(1)), int(high.group(1)))
    return found


@pytest.mark.parametrize("extra", ["tensorrt-cu12", "tensorrt-cu13", "tensorrt"])
def test_each_tensorrt_extra_pairs_one_cuda_major(extra):
    found = _cuda_majors(_extras()[extra])
    assert set(found) == {"tensorrt", "cuda-python"}
    assert found["cuda-python"] == (found["tensorrt"], found["tensorrt"] + 1)


def test_the_extras_are_the_ones_the_runtime_names():
    extras = _extras()
    for cuda, extra in cuda_util.TENSORRT_EXTRAS.items():
        assert _cuda_majors(extras[extra])["tensorrt"] == cuda
    assert extras["tensorrt"] == extras["tensorrt-cu13"]


@pytest.mark.parametrize(("driver", "supported"), [
    ("13.0", ["tensorrt-cu12", "tensorrt-cu13"]), ("12.9", ["tensorrt-cu12"]), ("11.8", []), ("0.0", []),
    (None, [])])
def test_doctor_pairing_follows_the_driver(driver, supported, monkeypatch):
    monkeypatch.setattr(cuda_util, "installed_cuda_majors", lambda: {"tensorrt": None, "cuda_python": None})
    pairing = cuda_util.tensorrt_pairing(driver)
    assert pairing["supported"] == supported
    assert pairing["recommended"] == (supported[-1] if supported else None)


def test_doctor_names_a_mismatched_installed_pair(monkeypatch):
    monkeypatch.setattr(cuda_util, "installed_cuda_majors", lambda: {"tensorrt": 13, "cuda_python": 12})
    problems = cuda_util.tensorrt_pairing("12.9")["problems"]
    assert any("TensorRT for CUDA 13 with cuda-python 12.x" in p for p in problems)
    assert any("tensorrt is built for CUDA 13, the driver supports CUDA 12.9" in p for p in problems)
