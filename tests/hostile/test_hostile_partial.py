"""Issue #14 case 7: `run` leaves no partial file on any exit it can see, removes stale ones
of its own target, and writes results with the permissions the umask gives."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from hostile_files import BACKEND, good_images, tiny_artifacts

from batchforge.cli import main
from batchforge.runtime.jsonl import JsonlWriter


def _run_argv(tmp_path):
    return ["run", "tiny", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out" / "r.jsonl"),
            "--output-dir", str(tmp_path / "artifacts"), "--batch-size", "1", *BACKEND]


def test_sigterm_mid_run_leaves_no_partial_file(tmp_path):
    tiny_artifacts(tmp_path / "artifacts")
    good_images(tmp_path / "in", 4)
    # the third input blocks, so the run is surely in the middle when the signal comes
    script = textwrap.dedent(f"""
        import sys, time
        from batchforge.runtime.pipelines.base import Pipeline
        real = Pipeline.load
        def load(self, source):
            if source.endswith("good2.png"):
                time.sleep(60)
            return real(self, source)
        Pipeline.load = load
        from batchforge.cli import main
        sys.exit(main({_run_argv(tmp_path)!r}))
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    out = tmp_path / "out"
    deadline = time.monotonic() + 120  # a safety bound, not a timing check: a loaded CI runner is slow
    while time.monotonic() < deadline:
        partials = list(out.glob(".r.jsonl.*.partial")) if out.is_dir() else []
        if partials and partials[0].read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    else:
        child.kill()
        raise AssertionError("the run never wrote its first records")
    assert partials[0].name == f".r.jsonl.{child.pid}.partial"
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130 and "batchforge run: interrupted" in err and "Traceback" not in err
    assert list(out.iterdir()) == []  # neither the partial file nor a result


def test_stale_partials_of_a_dead_run_are_removed_and_live_ones_kept(tmp_path):
    tiny_artifacts(tmp_path / "artifacts")
    good_images(tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = out / f".r.jsonl.{dead.stdout.strip()}.partial"
    live = out / f".r.jsonl.{os.getppid()}.partial"  # a running process's, not ours to remove
    other = out / f".other.jsonl.{dead.stdout.strip()}.partial"  # another target's
    for path in (stale, live, other):
        path.write_text("{}\n")
    assert main(_run_argv(tmp_path)) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([live.name, other.name, "r.jsonl"])


def test_results_get_the_permissions_the_umask_gives(tmp_path):
    previous = os.umask(0o002)
    try:
        with JsonlWriter(tmp_path / "a.jsonl") as writer:
            writer.write({"x": 1})
        os.umask(0o027)
        with JsonlWriter(tmp_path / "b.jsonl") as writer:
            writer.write({"x": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "a.jsonl").stat().st_mode & 0o777 == 0o664
    assert (tmp_path / "b.jsonl").stat().st_mode & 0o777 == 0o640


def test_atomic_writes_get_the_permissions_the_umask_gives(tmp_path):
    from batchforge.runtime.artifacts import write_json_atomic

    previous = os.umask(0o007)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o660
