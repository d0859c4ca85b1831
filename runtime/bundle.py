"""Deployment bundles, read side: verify every file before anything is deserialised.

A bundle (written by ``batchforge bundle``) is a folder or a ``.tar.gz`` of one::

    SHA256SUMS                  "<sha256>  <path>" for every other file, and only those
    bundle.json                 model, precision, family, members, what else is inside
    environment.json            versions, GPU/CUDA where the bundle was made
    tolerances.json             the parity limits per member, parity.json the report it passed
    infer_config.json           anomaly: the infer config it was validated with (optional)
    artifacts/<member>/...      an artifacts folder: ONNX/engine files with their records

``open_bundle`` checks, in order: ``SHA256SUMS`` lists exactly the files present; ``bundle.json``
matches its sha256 and every other file has the size it records (``sizes``; bundles made before it
skip this); each file's sha256. Every problem is collected and named in one IntegrityError (exit 2),
many of a kind as a count and the first few names. Only then is ``bundle.json`` read as a record;
the artifact loaders then run their own checks as for any artifacts folder.

A tarball is checked before anything is written (issue #29: an unlisted 4 GiB zero member was
extracted before refusal, a 10 KiB GNU-sparse member cost 20 GiB of hashing): every header is read
first (relative paths inside it, plain files and folders only: absolute paths, ``..``, links,
devices, sparse members, duplicates and more than ``MAX_MEMBERS`` entries are refused), then
``SHA256SUMS`` and ``bundle.json`` (each at most ``MAX_RECORD_BYTES``) from the archive, and the
member list and sizes against them; only then is each listed file streamed through its hash into
a private temp folder (a mismatch is removed at once), so the temporary disk is at most the
listed sizes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterable
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
MAX_MEMBERS = 10_000  # a bundle holds a few dozen files
MAX_RECORD_BYTES = 1 << 20  # SHA256SUMS and bundle.json are a few KiB
SHOWN = 5  # names shown per kind of problem; the rest are counted


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
        _extract(path, temp)  # every file already streamed through its hash, in a 0700 folder
        return _verified(temp, path, temp, hashed=True)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def summary(names: Iterable[str], what: str) -> list[str]:
    """One problem per name for a few names, then a count: ``["a is X", "b is X", "and 3 more are X"]``."""
    names = sorted(names)
    shown = [f"{name} {what.replace('are ', 'is ', 1)}" for name in names[:SHOWN]]
    rest = len(names) - SHOWN
    return shown + ([f"{rest:,} more {what}"] if rest > 0 else [])


def _refuse(where: Path, problems: list[str], text: str = "failed verification") -> None:
    if problems:
        raise IntegrityError(f"bundle {where} {text}: " + "; ".join(problems), hint=REMAKE_HINT)


def _entry_problem(member: tarfile.TarInfo, name: str) -> str | None:
    """Why a tar member cannot be part of a bundle (not a plain file or folder inside it), or None."""
    why = safe_relative(name)
    if why:
        return f"{member.name!r} is {why}"
    if member.issym() or member.islnk():
        return f"{member.name!r} is a link"
    if member.issparse():
        return f"{member.name!r} is a sparse file ({member.size:,} bytes, mostly not stored)"
    if not (member.isfile() or member.isdir()):
        return f"{member.name!r} is a device or special file"
    return None


def _read_small(tar: tarfile.TarFile, member: tarfile.TarInfo, tar_path: Path) -> bytes:
    if member.size > MAX_RECORD_BYTES:
        _refuse(tar_path, [f"{member.name} is {member.size:,} bytes, expected at most {MAX_RECORD_BYTES:,}"])
    fh = tar.extractfile(member)  # at the stream's current position: nothing is re-read
    assert fh is not None  # a regular file
    return fh.read()


def _checked_headers(tar: tarfile.TarFile, tar_path: Path) -> tuple[dict[str, tarfile.TarInfo], dict[str, str]]:
    """One pass over the headers, extracting nothing: {path: member} of the listed files and the
    list, once names, kinds, listing and sizes are checked. SHA256SUMS and bundle.json are read as
    they come; `batchforge bundle` writes them first, so there an unlisted or oversized member is
    refused at its header, before its data is decompressed."""
    files: dict[str, tarfile.TarInfo] = {}
    folders: set[str] = set()
    unsafe: list[str] = []  # entries no bundle holds
    wrong: list[str] = []  # plain files that are not listed or have another size than recorded
    listed: dict[str, str] | None = None
    record = None
    for count, member in enumerate(iter(tar.next, None)):
        if count >= MAX_MEMBERS:
            unsafe.append(f"it has more than {MAX_MEMBERS:,} entries (a bundle holds a few dozen files)")
            break
        name = member.name.removeprefix("./")
        why = _entry_problem(member, name) or (f"{member.name!r} appears twice" if name in files else None)
        if why:
            unsafe.append(why)
        elif member.isdir():
            folders.add(name.rstrip("/"))
        else:
            files[name] = member
            if name == SUMS_FILE:
                listed = parse_sums(_read_small(tar, member, tar_path).decode("utf-8", errors="replace"), tar_path)
            elif name == BUNDLE_FILE:
                record = _read_small(tar, member, tar_path)
            elif listed is not None:
                found = ([f"{name} is not listed in {SUMS_FILE}"] if name not in listed
                         else size_problems({name: member.size}, listed, record))
                wrong += found
                if found and member.size > MAX_RECORD_BYTES:
                    break  # its data is not worth decompressing to find more
        if len(unsafe) + len(wrong) > SHOWN:
            break
    parents = {str(PurePosixPath(n).parent) for n in files} | folders
    unsafe += [f"{n!r} is both a file and a folder" for n in sorted(set(files) & parents)]
    if unsafe:
        _refuse(tar_path, unsafe + wrong, "holds entries that are not plain files inside it")
    _refuse(tar_path, wrong)
    # tarfile stops at the first bad header after the first one as if the archive ended there;
    # reading the stream to its end makes gzip check its CRC and length before anything is written
    while tar.fileobj is not None and tar.fileobj.read(1 << 20):
        pass
    if listed is None:
        _refuse(tar_path, [f"{SUMS_FILE} is missing"], "is incomplete")
    assert listed is not None
    del files[SUMS_FILE]
    problems = summary(set(files) - set(listed), f"are not listed in {SUMS_FILE}")
    problems += summary(set(listed) - set(files), f"are listed in {SUMS_FILE} but missing")
    _refuse(tar_path, problems)
    _refuse(tar_path, size_problems({n: m.size for n, m in files.items()}, listed, record))
    return files, listed


def size_problems(sizes: dict[str, int], listed: dict[str, str], record: bytes | None) -> list[str]:
    """Files whose size differs from the one ``bundle.json`` records (once its own sha256 matched)."""
    if record is None or hashlib.sha256(record).hexdigest() != listed.get(BUNDLE_FILE):
        return []  # missing or changed: the hash check names it
    try:
        recorded = json.loads(record).get("sizes") or {}
    except (ValueError, AttributeError):
        return []  # the record check names it
    wrong = [n for n in sorted(sizes) if n in recorded and sizes[n] != recorded[n]]
    problems = [f"{n} is {sizes[n]:,} bytes, {BUNDLE_FILE} records {recorded[n]:,}" for n in wrong[:SHOWN]]
    return problems + ([f"{len(wrong) - SHOWN:,} more files have another size than recorded"]
                       if len(wrong) > SHOWN else [])


def _stream(tar: tarfile.TarFile, files: dict[str, tarfile.TarInfo], listed: dict[str, str], dest: Path,
            tar_path: Path) -> None:
    """Each listed file written through its sha256 (a mismatch removed at once); all problems named."""
    problems = []
    for name in sorted(files, key=lambda n: files[n].offset_data):  # archive order: no rewinds
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(files[name])
        assert source is not None
        digest = hashlib.sha256()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out:
            while block := source.read(1 << 20):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != listed[name]:
            target.unlink()
            problems.append(f"{name} does not match its sha256 in {SUMS_FILE} (expected {listed[name][:12]}..., "
                            f"got {digest.hexdigest()[:12]}...)")
    _refuse(tar_path, problems)


def _extract(tar_path: Path, dest: Path) -> None:
    """Checks every header, the list and the sizes, then streams the listed files through their
    hashes into ``dest`` (see the module docstring)."""
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            files, listed = _checked_headers(tar, tar_path)
            _stream(tar, files, listed, dest, tar_path)
            (dest / SUMS_FILE).write_text("".join(f"{h}  {n}\n" for n, h in sorted(listed.items())),
                                          encoding="utf-8")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        reason = " ".join(str(exc).split())  # one line
        raise IntegrityError(f"bundle {tar_path} is not a readable tar archive: {reason}", hint=REMAKE_HINT) from None


def listed_files(root: Path, where: Path) -> dict[str, str]:
    """``SHA256SUMS`` as {relative path: sha256}; a missing or malformed list is an IntegrityError."""
    sums = root / SUMS_FILE
    if not sums.is_file():
        raise IntegrityError(f"bundle {where} is incomplete: {SUMS_FILE} is missing", hint=REMAKE_HINT)
    if sums.stat().st_size > MAX_RECORD_BYTES:
        _refuse(where, [f"{SUMS_FILE} is {sums.stat().st_size:,} bytes, expected at most {MAX_RECORD_BYTES:,}"])
    return parse_sums(sums.read_text(encoding="utf-8", errors="replace"), where)


def parse_sums(text: str, where: Path) -> dict[str, str]:
    """``SHA256SUMS`` text as {relative path: sha256}; a malformed line is an IntegrityError."""
    listed: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
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
    problems = summary(odd, "are a link or special file")
    problems += summary(set(listed) - present, f"are listed in {SUMS_FILE} but missing")
    problems += summary(present - set(listed), f"are not listed in {SUMS_FILE}")
    _refuse(where, problems)
    record = root / BUNDLE_FILE
    small = record.is_file() and record.stat().st_size <= MAX_RECORD_BYTES
    _refuse(where, size_problems({n: (root / n).stat().st_size for n in present}, listed,
                                 record.read_bytes() if small else None))
    for name in sorted(set(listed) & present):
        actual = sha256_file(root / name)
        if actual != listed[name]:
            problems.append(f"{name} does not match its sha256 in {SUMS_FILE} (expected {listed[name][:12]}..., "
                            f"got {actual[:12]}...)")
    if problems:
        raise IntegrityError(f"bundle {where} failed verification: " + "; ".join(problems), hint=REMAKE_HINT)


def _verified(root: Path, where: Path, temp: Path | None, *, hashed: bool = False) -> Bundle:
    if not hashed:
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
