"""Issue #29 case 5: the predictable ``.NAME.PID.partial`` name is created with O_EXCL |
O_NOFOLLOW in the output folder, so a link planted there never leads `run` to write elsewhere."""

import os

from hostile_files import BACKEND, good_images, tiny_artifacts

from batchforge.cli import main
from batchforge.runtime.pipelines.tensors import SideArrays


def _run(tmp_path, capsys):
    code = main(["run", "tiny", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out" / "r.jsonl"),
                 "--output-dir", str(tmp_path / "artifacts"), *BACKEND])
    return code, capsys.readouterr().err


def test_a_link_planted_at_the_partial_name_is_refused_and_the_victim_untouched(tmp_path, capsys):
    tiny_artifacts(tmp_path / "artifacts")
    good_images(tmp_path / "in", 2)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    link = out / f".r.jsonl.{os.getpid()}.partial"  # main() runs in this process
    link.symlink_to(victim)
    code, err = _run(tmp_path, capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"its partial file {link} already exists as a link that this run did not create" in err
    assert victim.read_text() == "precious\n"
    assert sorted(p.name for p in out.iterdir()) == [link.name] and link.is_symlink()  # no results, no link


def test_a_dangling_link_at_the_partial_name_is_not_created_through(tmp_path, capsys):
    tiny_artifacts(tmp_path / "artifacts")
    good_images(tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "would_be_created.jsonl"
    (out / f".r.jsonl.{os.getpid()}.partial").symlink_to(target)
    code, err = _run(tmp_path, capsys)
    assert code == 2 and "already exists as a link" in err and not target.exists()
    assert not (out / "r.jsonl").exists()


def test_a_clean_run_still_writes_results_and_leaves_no_partial(tmp_path, capsys):
    tiny_artifacts(tmp_path / "artifacts")
    good_images(tmp_path / "in", 2)
    code, err = _run(tmp_path, capsys)
    assert code == 0, err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["r.jsonl"]
    assert not (tmp_path / "out" / "r.jsonl").is_symlink()


def test_side_arrays_write_through_the_descriptor_they_created(tmp_path, monkeypatch):
    """The .npz partial is opened once (mkstemp: O_EXCL | O_NOFOLLOW) and written through that
    descriptor: its name swapped for a link right after creation writes nothing through the link."""
    import tempfile

    import numpy as np

    from batchforge.runtime.pipelines import tensors

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    real = tempfile.mkstemp

    def mkstemp_then_swap(*args, **kwargs):
        fd, name = real(*args, **kwargs)
        os.unlink(name)
        os.symlink(victim, name)
        return fd, name

    monkeypatch.setattr(tensors.tempfile, "mkstemp", mkstemp_then_swap)
    side = SideArrays(tmp_path / "out" / "side.npz")
    side.add("a", np.zeros(3, np.float32))
    side.close(commit=False)
    assert victim.read_text() == "precious\n"
    assert list((tmp_path / "out").iterdir()) == []
