"""README examples really run (the Quick tour's commands and the Python API block), and docs/zoo.md's
per-family block."""

import os
import runpy
import shlex
import shutil
from pathlib import Path

import pytest
from helpers import quick_tour, readme_blocks, tour_argv

from batchforge.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
pytestmark = pytest.mark.slow
blocks = readme_blocks


def test_readme_starts_with_exactly_two_commands():
    first = [line for line in README.read_text().splitlines()[:3] if line.strip()]
    assert first[0].strip().startswith("./scripts/main.sh") and first[1].strip().startswith("./scripts/test.sh")
    assert all(Path(README.parent, line.split()[0]).is_file() for line in first)


def test_quick_tour_and_python_api_run(resnet_calibrated, tmp_path, monkeypatch, capsys):
    """The tour up to ``calibrate`` ran in the ``resnet_calibrated`` fixture (shared with the INT8
    fault tests); the rest runs here on a copy of its folder."""
    shutil.copytree(resnet_calibrated, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    commands = quick_tour()
    names = [c[0] for c in commands]
    assert names[:5] == ["models", "export", "samples", "convert", "calibrate"]
    assert main(commands[0]) == 0
    for argv in commands[5:]:
        assert main(tour_argv(argv)) == 0, argv
    out = capsys.readouterr().out
    assert "parity PASSED" in out and "8/8 inputs processed" in out
    assert len(Path("results.jsonl").read_text().splitlines()) == 8
    (python_block,) = blocks("python")
    exec(compile(python_block, "README.md", "exec"), {})
    lines = [line for line in capsys.readouterr().out.splitlines() if "view0.png" in line]
    assert len(lines) == 4 and lines[0].endswith(" 1.0")
    assert os.path.isfile("reports/parity.md")


def test_per_family_examples_run(detection_artifacts, anomaly_artifacts, dense_artifacts, mtcnn_artifacts,
                                 tmp_path, monkeypatch, capsys):
    """docs/zoo.md's per-family block, line by line, with its infer_config.json example."""
    for root in (detection_artifacts, anomaly_artifacts, dense_artifacts, mtcnn_artifacts):
        shutil.copytree(root, tmp_path / "artifacts", dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    config = next(b for b in blocks("json") if '"schema_version"' in b)
    Path("infer_config.json").write_text(config)
    block = next(b for b in blocks("console") if "run ptycho" in b)
    ran = []
    for line in block.splitlines():
        command = shlex.split(line.split("#")[0].removeprefix("$ "))
        if command[0] == "python":
            script = Path(README.parent, command[1])
            monkeypatch.setattr("sys.argv", [str(script), *command[2:]])
            with pytest.raises(SystemExit) as done:
                runpy.run_path(str(script), run_name="__main__")
            assert done.value.code in (0, None), line
        else:
            assert main(command[1:]) == 0, line
        ran.append(command[1] if command[0] == "batchforge" else "script")
    assert ran.count("run") == 6 and "validate-config" in ran
    assert len(list(Path("overlays").glob("*.png"))) == 4  # one overlay per mtcnn sample
    assert Path("ptycho.objects/demo.object.npy").is_file()
    assert len(Path("animals.jsonl").read_text().splitlines()) == 8
