"""The TensorRT probe on a package named tensorrt that is not TensorRT (a stubs-only folder)."""

import importlib.util
import sys

from batchforge.runtime import backends


def test_a_tensorrt_folder_without_tensorrt_is_not_available(tmp_path, monkeypatch):
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("def Builder(logger): ...\n")  # what stub wheels ship
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "cuda" else real(name, *a))
    monkeypatch.setitem(sys.modules, "batchforge.runtime.runners.cuda_util", type(sys)("cuda_util_stand_in"))
    sys.modules["batchforge.runtime.runners.cuda_util"].device_count = lambda: 1
    ok, detail = backends._tensorrt_status()
    assert ok is False and "is not TensorRT (no __version__)" in detail, detail
