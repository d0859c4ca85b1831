"""Shared fixtures. Tests run on CPU, write only under tmp_path, and treat warnings as errors."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

# The zoo models the slow tests share, by fixture. They are exported in one background process
# started with the session (``zoo_exports``), and the modules that use them run last: tracing in
# torch.onnx.export is single-threaded Python, so it overlaps the rest of the suite on the second
# core instead of holding the session up at the first test that needs a model.
ZOO_GROUPS = {"resnet_artifacts": ("zoo", ("reid_resnet50",)),
              "detection_artifacts": ("detection", ("detector", "facepose")),
              "anomaly_artifacts": ("anomaly", ("anomaly",)),
              "dense_artifacts": ("dense", ("keypoints", "ptycho")),
              "mtcnn_artifacts": ("mtcnn", ("mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet"))}
ZOO_USERS = {*ZOO_GROUPS, "resnet_calibrated"}
# CI runs the suite beside the main job, which exports these same models with the same code: with
# this variable set to the main job's --output-dir, the fixtures copy its exports instead of
# exporting them a second time (about 140 s of one core).
EXPORTS_FROM = "BATCHFORGE_TEST_EXPORTS_FROM"
EXPORTS_SINCE = "BATCHFORGE_TEST_EXPORTS_SINCE"  # epoch seconds: older exports are stale (another run's)
EXPORTS_PID = "BATCHFORGE_TEST_EXPORTS_PID"  # the exporting process: waiting ends with it
EXPORTS_WAIT_S = 3600
ZOO_NEEDED = pytest.StashKey[set]()


def pytest_collection_modifyitems(config, items):
    uses_zoo = {item.module for item in items if ZOO_USERS & set(getattr(item, "fixturenames", ()))}
    items.sort(key=lambda item: item.module in uses_zoo)  # stable: modules stay whole and in order
    used = {name for item in items for name in getattr(item, "fixturenames", ())}
    # only the groups the collected tests use: a targeted run does not wait for the whole zoo
    config.stash[ZOO_NEEDED] = {g for g in ZOO_GROUPS if g in used} | (
        {"resnet_artifacts"} if "resnet_calibrated" in used else set())
    gpu_ready, reason = _gpu_ready()
    if gpu_ready:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


TRACEBACK = "Traceback (most recent call last)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Every hostile run (tests/hostile) must end in one line, never a traceback: a test there
    whose captured stdout or stderr (this process's, and that of any subprocess writing to the
    inherited descriptors) holds one fails, whatever it asserts itself (issue #29)."""
    outcome = yield
    report = outcome.get_result()
    hostile = Path(str(item.fspath)).parent.name == "hostile"
    scanned = hostile and "pytester" not in getattr(item, "fixturenames", ())  # the scan's own test prints inner runs
    if scanned and report.when == "call" and report.passed and TRACEBACK in report.capstdout + report.capstderr:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid}: a traceback reached the captured output of a hostile run "
                           f"(the command must fail in one line):\n{report.capstderr[-2000:]}")


def _gpu_ready() -> tuple[bool, str]:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return False, "needs TensorRT and a CUDA GPU: the tensorrt package is not installed here"
    from batchforge.runtime.backends import Backend, probe_backends

    status = {s.backend: s for s in probe_backends()}[Backend.TENSORRT]
    return status.available, f"needs TensorRT and a CUDA GPU: {status.detail}"


@pytest.fixture(scope="session")
def user_tiny_artifacts(tmp_path_factory):
    """The tiny user model (tests/user_models.py) exported once: (output_dir, name)."""
    from user_models import spec_dict

    from batchforge.cli import main

    root = tmp_path_factory.mktemp("user_tiny")
    spec = root / "spec.json"
    spec.write_text(json.dumps(spec_dict()))
    with coverage_paused():
        assert main(["export", "--factory", "user_models:tiny_embedder", "--spec", str(spec),
                     "--output-dir", str(root / "artifacts")]) == 0
    return root / "artifacts", "user_tiny"


@contextlib.contextmanager
def coverage_paused():
    """Coverage measures the runtime; torch.onnx.export runs millions of Python calls of torch's
    own, and tracing them made each zoo export ~60% slower (measured: the five-model fixture
    111 s -> 176 s) while measuring nothing of the runtime."""
    try:
        import coverage
    except ImportError:
        cov = None
    else:
        cov = coverage.Coverage.current()
    if cov is None:
        yield
        return
    cov.stop()
    try:
        yield
    finally:
        cov.start()


@pytest.fixture(scope="session", autouse=True)
def zoo_exports(request, tmp_path_factory):
    """One background ``batchforge export`` per group of ZOO_GROUPS, run one after another (one
    torch thread: the suite keeps the other core), started before the first test when any
    collected test needs them; with ``EXPORTS_FROM`` set, none: the exports are copied."""
    needed = request.config.stash.get(ZOO_NEEDED, set())
    if not needed:
        yield {}
        return
    if os.environ.get(EXPORTS_FROM):
        yield {"from": Path(os.environ[EXPORTS_FROM]), "since": float(os.environ.get(EXPORTS_SINCE, time.time())),
               "pid": int(os.environ.get(EXPORTS_PID, 0)),
               "root": tmp_path_factory.mktemp("zoo_exports")}
        return
    import shlex
    import signal

    root = tmp_path_factory.mktemp("zoo_exports")
    jobs = {fixture: root / folder for fixture, (folder, _) in ZOO_GROUPS.items() if fixture in needed}
    script = "; ".join(
        f"{shlex.quote(sys.executable)} -m batchforge export {' '.join(models)} --output-dir "
        f"{shlex.quote(str(root / folder / 'artifacts'))} > {shlex.quote(str(root / folder))}.log 2>&1; "
        f"echo $? > {shlex.quote(str(root / folder))}.rc"
        for fixture, (folder, models) in ZOO_GROUPS.items() if fixture in needed)
    process = subprocess.Popen(["bash", "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"},
                               cwd=Path(__file__).resolve().parents[1], start_new_session=True)
    jobs["process"] = process
    try:
        yield jobs
    finally:
        if process.poll() is None:  # a session that ended early: stop the exports still running
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _export_zoo(jobs, fixture: str) -> Path:
    """Waits for the background export of ``fixture``'s group; its log on failure."""
    if "from" in jobs:
        return _copy_exports(jobs, fixture)
    folder = jobs[fixture]
    rc = folder.parent / f"{folder.name}.rc"
    while not rc.is_file() or not rc.read_text().strip():
        # a background process that died without writing the status would otherwise hang the session
        assert jobs["process"].poll() is None or rc.is_file(), f"background export of {folder.name} died"
        time.sleep(0.5)
    log = (folder.parent / f"{folder.name}.log").read_text()
    assert rc.read_text().strip() == "0", f"background export of {folder.name} failed:\n{log[-3000:]}"
    return folder / "artifacts"


def _copy_exports(jobs, fixture: str) -> Path:
    """``fixture``'s models as the main job beside the suite exported them (``EXPORTS_FROM``):
    waits for each one's export.json (written last, after the files it vouches for) made since
    ``EXPORTS_SINCE`` (default: now), then copies the exported files into the session's tmp folder;
    likewise the record of an ensemble made of them (mtcnn), written after its members."""
    from batchforge.export.registry import ENSEMBLES, load_zoo

    folder, models = ZOO_GROUPS[fixture]
    out = jobs["root"] / folder / "artifacts"
    for model in models:
        source = jobs["from"] / model
        exported = json.loads(_wait_for_fresh(source / "export.json", jobs).read_text())
        names = ["export.json", exported["onnx"]["file"], *exported["onnx"].get("external_data", {}),
                 *([exported["weights"]["file"]] if exported.get("weights", {}).get("file") else [])]
        (out / model).mkdir(parents=True)
        for name in names:
            shutil.copy2(source / name, out / model / name)
    load_zoo()
    for name, ensemble in ENSEMBLES.items():
        if set(ensemble.member_names) <= set(models):
            record = _wait_for_fresh(jobs["from"] / name / "ensemble.json", jobs)
            (out / name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(record, out / name / record.name)
    return out


def _wait_for_fresh(record: Path, jobs) -> Path:
    deadline = time.monotonic() + EXPORTS_WAIT_S
    while not _fresh(record, jobs["since"]):
        assert time.monotonic() < deadline, f"{EXPORTS_FROM}: no fresh {record} after {EXPORTS_WAIT_S} s"
        if not _alive(jobs["pid"]):
            assert _fresh(record, jobs["since"]), f"{EXPORTS_FROM}: the exporter ended without a fresh {record}"
        time.sleep(1.0)
    return record


def _fresh(record: Path, since: float) -> bool:
    return record.is_file() and record.stat().st_mtime >= since


def _alive(pid: int) -> bool:
    if not pid:
        return True  # not told: the deadline alone ends the wait
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session")
def resnet_artifacts(zoo_exports):
    """reid_resnet50 from the zoo, exported once for the slow parity tests."""
    return _export_zoo(zoo_exports, "resnet_artifacts")


@pytest.fixture(scope="session")
def resnet_calibrated(resnet_artifacts, tmp_path_factory):
    """A folder where the README Quick tour ran up to ``calibrate`` (export: ``resnet_artifacts``):
    reid_resnet50 with its FP16 and INT8 models, calibrated on the tour's samples."""
    from helpers import quick_tour, tour_argv

    from batchforge.cli import main

    root = tmp_path_factory.mktemp("tour")
    shutil.copytree(resnet_artifacts, root / "artifacts")
    tour = quick_tour()
    names = [c[0] for c in tour]
    here = os.getcwd()
    os.chdir(root)  # the tour's paths are relative
    try:
        for argv in tour[names.index("export") + 1: names.index("calibrate") + 1]:
            assert main(tour_argv(argv)) == 0, argv
    finally:
        os.chdir(here)
    return root


@pytest.fixture(scope="session")
def detection_artifacts(zoo_exports):
    """The detector and facepose zoo models, exported once (shared by export and parity tests)."""
    return _export_zoo(zoo_exports, "detection_artifacts")


@pytest.fixture(scope="session")
def anomaly_artifacts(zoo_exports):
    """The anomaly zoo model, exported once."""
    return _export_zoo(zoo_exports, "anomaly_artifacts")


@pytest.fixture(scope="session")
def dense_artifacts(zoo_exports):
    """keypoints and ptycho exported once."""
    return _export_zoo(zoo_exports, "dense_artifacts")


@pytest.fixture(scope="session")
def mtcnn_artifacts(zoo_exports):
    """The three MTCNN networks with facenet-pytorch's weights (and the ``mtcnn`` ensemble record)."""
    return _export_zoo(zoo_exports, "mtcnn_artifacts")
