"""Deployment bundles, read side: verify every file before anything is deserialised.

A bundle (written by ``batchforge bundle``) is a folder or a ``.tar.gz`` of one::

    SHA256SUMS                  "<sha256>  <path>" for every other file, and only those
    bundle.json                 model, precision, family, members, what else is inside
    environment.json            versions, GPU/CUDA where the bundle was made
    tolerances.json             the parity limits per member, parity.json the report it passed
    infer_config.json           anomaly: the infer config it was validated with (optional)
    artifacts/<member>/...      an artifacts folder: ONNX/engine files with their records

``open_bundle`` checks, in order: a tarball's members are plain files and folders with relative
paths inside it (absolute paths, ``..``, links and devices are refused, then the ``data`` filter
extracts into a temp folder); ``SHA256SUMS`` lists exactly the files present; each file's sha256.
Every problem is collected and named in one IntegrityError (exit 2). Only then is ``bundle.json``
read; the artifact loaders then run their own checks as for any artifacts folder.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from batchforge.errors import ConfigError, IntegrityError
from batchforge.runtime.artifacts import Precision, read_json, sha256_file
from batchforge.runtime.staging import make_staging

SUMS_FILE = "SHA256SUMS"
BUNDLE_FILE = "bundle.json"
ARTIFACTS_DIR = "artifacts"
INFER_CONFIG_FILE = "infer_config.json"
BUNDLE_SCHEMA = 1
REMAKE_HINT = "make the bundle again with `batchforge bundle MODEL --precision P --out ...` from verified artifacts"
_SUM_LINE = re.compile(r"^([0-9a-f]{64})  (.+)$")


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: ``root`` holds bundle.json; ``temp_dir`` is set when it was extracted."""

    root: Path
    model: str
    precision: Precision
    family: str
    members: tuple[str, ...]
    record: dict[str, Any]
    temp_dir: Path | None = None

    @property
    def output_dir(self) -> Path:
        """The artifacts folder inside the bundle (``load_pipeline(output_dir=...)``)."""
        return self.root / ARTIFACTS_DIR

    @property
    def infer_config(self) -> Path | None:
        """The infer config the bundle was validated with, if it holds one."""
        return self.root / INFER_CONFIG_FILE if self.record.get("infer_config") else None

    def close(self) -> None:
        """Removes the extracted copy of a tarball (a folder bundle is left as it is)."""
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def safe_relative(name: str) -> str | None:
    """Why ``name`` cannot be a path inside a bundle (absolute, ``..``, empty parts), or None."""
    path = PurePosixPath(name)
    if not name or name.startswith("/") or path.is_absolute() or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if any(part in ("..", "") for part in name.split("/")) or "\\" in name:
        return "a path that leaves the bundle"
    return None


def open_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Verifies a bundle folder or tarball and returns it (``close()`` it when done).

    Raises:
        IntegrityError naming every file that is missing, unlisted, changed, or not a plain file;
        ArtifactError/ConfigError for a missing path or an unreadable bundle.json.
    """
    path = Path(path)
    if path.is_dir():
        return _verified(path, path, None)
    if not path.is_file():
        raise IntegrityError(f"bundle not found: {path} (expected a bundle folder or .tar.gz)",
                             hint=REMAKE_HINT)
    temp = make_staging(tempfile.gettempdir(), "batchforge-bundle", "extract")  # a killed run's goes next time
    try:
        _extract(path, temp)
        return _verified(temp, path, temp)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _extract(tar_path: Path, dest: Path) -> None:
    """Checks every member, then extracts with tarfile's ``data`` filter (which refuses the same
    things again, and strips modes that could make a file executable or set-uid)."""
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            members = tar.getmembers()
            problems = []
            for member in members:
                why = safe_relative(member.name.removeprefix("./"))
                if why:
                    problems.append(f"{member.name!r} is {why}")
                elif not (member.isfile() or member.isdir()):
                    kind = "a link" if member.issym() or member.islnk() else "a device or special file"
                    problems.append(f"{member.name!r} is {kind}")
            if problems:
                raise IntegrityError(f"bundle {tar_path} holds entries that are not plain files inside it: "
                                     + "; ".join(problems), hint=REMAKE_HINT)
            # the filter exists from Python 3.10.12 / 3.11.4; the checks above refuse the same entries
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=members, **safe)
            # tarfile stops at the first bad header after the first one as if the archive ended
            # there; reading the stream to its end makes gzip check its CRC and length
            while tar.fileobj is not None and tar.fileobj.read(1 << 20):
                pass
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        reason = " ".join(str(exc).split())  # one line
        raise IntegrityError(f"bundle {tar_path} is not a readable tar archive: {reason}", hint=REMAKE_HINT) from None


def listed_files(root: Path, where: Path) -> dict[str, str]:
    """``SHA256SUMS`` as {relative path: sha256}; a missing or malformed list is an IntegrityError."""
    sums = root / SUMS_FILE
    if not sums.is_file():
        raise IntegrityError(f"bundle {where} is incomplete: {SUMS_FILE} is missing", hint=REMAKE_HINT)
    listed: dict[str, str] = {}
    for number, line in enumerate(sums.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        match = _SUM_LINE.match(line)
        why = safe_relative(match.group(2)) if match else "not '<sha256>  <path>'"
        if why:
            raise IntegrityError(f"bundle {where}: {SUMS_FILE} line {number} is {why}: {line[:120]!r}",
                                 hint=REMAKE_HINT)
        assert match is not None
        listed[match.group(2)] = match.group(1)
    return listed


def present_files(root: Path) -> tuple[set[str], list[str]]:
    """Every plain file under ``root`` (relative, '/'-separated) but SHA256SUMS, and the entries that
    are not plain files or folders (links, devices), which a bundle never holds."""
    files, odd = set(), []
    for folder, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            full = Path(folder, name)
            rel = full.relative_to(root).as_posix()
            mode = os.lstat(full).st_mode
            if stat.S_ISREG(mode):
                files.add(rel)
            elif not stat.S_ISDIR(mode):
                odd.append(rel)
    files.discard(SUMS_FILE)
    return files, odd


def verify_files(root: Path, where: Path) -> None:
    """The file list and every sha256; all problems named in one IntegrityError."""
    listed = listed_files(root, where)
    present, odd = present_files(root)
    problems = [f"{name} is a link or special file" for name in sorted(odd)]
    problems += [f"{name} is listed in {SUMS_FILE} but missing" for name in sorted(set(listed) - present)]
    problems += [f"{name} is not listed in {SUMS_FILE}" for name in sorted(present - set(listed))]
    for name in sorted(set(listed) & present):
        actual = sha256_file(root / name)
        if actual != listed[name]:
            problems.append(f"{name} does not match its sha256 in {SUMS_FILE} (expected {listed[name][:12]}..., "
                            f"got {actual[:12]}...)")
    if problems:
        raise IntegrityError(f"bundle {where} failed verification: " + "; ".join(problems), hint=REMAKE_HINT)


def _verified(root: Path, where: Path, temp: Path | None) -> Bundle:
    verify_files(root, where)
    record = read_json(root / BUNDLE_FILE, what=f"bundle record of {where}", hint=REMAKE_HINT)
    try:
        if record.get("schema_version") != BUNDLE_SCHEMA:
            raise ConfigError(f"bundle {where} has schema_version {record.get('schema_version')!r}, this "
                              f"batchforge reads {BUNDLE_SCHEMA}", hint="use the batchforge that made it")
        return Bundle(root=root, model=str(record["model"]), precision=Precision(record["precision"]),
                      family=str(record["family"]), members=tuple(record["members"]), record=record,
                      temp_dir=temp)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"bundle record {root / BUNDLE_FILE} of {where} is invalid: {exc!r}",
                          hint=REMAKE_HINT) from None
