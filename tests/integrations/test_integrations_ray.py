"""`run --ray` and BatchforgePredictor on a local Ray with 2 CPUs: the JSONL equals the local run's,
in input order, also when an actor dies mid-run (Ray restarts it and retries its batch)."""

import json
import os
import sys

import pytest
from helpers import random_images, tiny_embedder_onnx, tiny_spec, write_artifact

ray = pytest.importorskip("ray", reason="needs ray[data]: pip install 'batchforge[ray]'")

from batchforge.cli import main  # noqa: E402
from batchforge.errors import IntegrityError, UsageError  # noqa: E402
from batchforge.integrations.ray import BatchforgePredictor, ray_records  # noqa: E402
from batchforge.runtime.images import write_image  # noqa: E402
from batchforge.runtime.loading import load_pipeline  # noqa: E402
from batchforge.runtime.results import jsonable  # noqa: E402

# Ray Data's own DataContext() sets the fields it deprecates (use_push_based_shuffle, use_polars)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray (2 CPUs) for the module; its session files stay under the test temp folder."""
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_AUTH_MODE", "disabled")  # no token written to ~/.ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()
    patch.undo()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny reid model and 24 images, the 6th truncated (an error record in every run)."""
    root = tmp_path_factory.mktemp("ray_inputs")
    write_artifact(root / "artifacts", tiny_embedder_onnx(), tiny_spec("tiny"))
    (root / "images").mkdir()
    for i, image in enumerate(random_images(24, seed=5)):
        write_image(root / "images" / f"img{i:02d}.png", image)
    broken = root / "images" / "img05.png"
    broken.write_bytes(broken.read_bytes()[:-20])
    return root


def run(inputs, out, *extra):
    return main(["run", "tiny", "--input", str(inputs / "images"), "--output", str(out), "--output-dir",
                 str(inputs / "artifacts"), "--backend", "onnxruntime-cpu", "--batch-size", "4", *extra])


def test_run_ray_writes_the_local_jsonl_in_input_order(local_ray, inputs, tmp_path, capsys):
    assert run(inputs, tmp_path / "local.jsonl") == 1  # the truncated image
    assert run(inputs, tmp_path / "ray.jsonl", "--ray", "--concurrency", "2") == 1
    assert (tmp_path / "ray.jsonl").read_text() == (tmp_path / "local.jsonl").read_text()
    lines = (tmp_path / "ray.jsonl").read_text().splitlines()
    assert len(lines) == 24 and '"ok": false' in lines[5]
    assert "23/24 inputs processed, 1 error record(s)" in capsys.readouterr().out


class DiesOnce(BatchforgePredictor):
    """Kills its actor process on its second batch, once per run (a marker file remembers)."""

    marker: str = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        if self.calls == 2 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return super().__call__(batch)


def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(local_ray, inputs, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors unpickle DiesOnce
    dying = type("DiesHere", (DiesOnce,), {"marker": str(tmp_path / "died")})
    kwargs = {"model": "tiny", "output_dir": str(inputs / "artifacts"), "backend": "onnxruntime-cpu"}
    sources = sorted((inputs / "images").iterdir())
    with load_pipeline(**kwargs) as pipeline:
        expected = [r.to_record() for r in pipeline.run_sources(sources, 4)]
    got = list(ray_records(pipeline, sources, kwargs, concurrency=2, batch_size=4, predictor=dying))
    assert (tmp_path / "died").exists()  # an actor did die
    assert [r["source"] for r in got] == [str(s) for s in sources]
    assert got == [json.loads(json.dumps(jsonable(r))) for r in expected]


def test_the_predictor_takes_encoded_bytes_and_names_bad_ones(inputs):
    sources = sorted((inputs / "images").iterdir())[:6]
    predictor = BatchforgePredictor("tiny", output_dir=inputs / "artifacts", backend="onnxruntime-cpu", batch_size=4)
    by_path = predictor({"path": [str(s) for s in sources]})
    by_bytes = predictor({"bytes": [s.read_bytes() for s in sources], "source": [str(s) for s in sources]})
    assert list(by_bytes["record"]) == list(by_path["record"])
    assert list(by_bytes["ok"]) == [True] * 5 + [False]
    assert "truncated image" in by_bytes["record"][5]


def test_the_predictor_verifies_a_bundle_before_loading(inputs, tmp_path):
    assert main(["bundle", "tiny", "--out", str(tmp_path / "b"), "--output-dir", str(inputs / "artifacts")]) == 0
    onnx_file = tmp_path / "b" / "artifacts" / "tiny" / "model.fp32.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF  # same size (bundle.json's sizes pass), other bytes: the sha256 refuses it
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"artifacts/tiny/model\.fp32\.onnx does not match its sha256"):
        BatchforgePredictor(bundle=tmp_path / "b", backend="onnxruntime-cpu")


def test_ray_options_without_ray_exit_2(inputs, tmp_path, capsys):
    assert run(inputs, tmp_path / "x.jsonl", "--concurrency", "2") == 2
    assert "--ray-address and --concurrency apply with --ray only" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_encoded_bytes_are_refused_for_a_model_that_reads_files(tmp_path):
    write_artifact(tmp_path, tiny_embedder_onnx(), tiny_spec("arrays", family="tensors"))
    predictor = BatchforgePredictor("arrays", output_dir=tmp_path, backend="onnxruntime-cpu")
    with pytest.raises(UsageError, match="tensors models read files"):
        predictor({"bytes": [b"x"]})
