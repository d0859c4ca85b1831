"""Streaming JSONL: one line per input, written as it goes, complete or absent.

Lines go to a hidden file beside the target (``.NAME.PID.partial``) and are flushed one by one;
it is renamed onto the target when the writer closes cleanly and removed when it closes on an
error or an interrupt. Partial files of the same target left by a process that no longer runs
(killed with SIGKILL, a power cut) are removed when the next writer starts. The file is
created with mode 0666 less the umask, like any file the user writes.

The partial file's name is predictable, so it is created with ``O_EXCL | O_NOFOLLOW`` relative
to the opened output folder (``dir_fd``), and renamed within that same folder: a link or file
planted at that name (issue #29: links at the next PIDs pointing at a victim file) makes the run
refuse (exit 2) instead of writing through it, and a folder swapped for a link after the check
is not followed either.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from batchforge.errors import NonFiniteOutputError, UsageError
from batchforge.runtime.guards import first_nonfinite
from batchforge.runtime.results import ErrorRecord, Result, jsonable


def check_output_file(path: str | os.PathLike[str], option: str = "--output") -> Path:
    """Checks, before any work, that ``path`` can be written as a file (its folder may be made).

    Raises:
        UsageError naming the option, the path and what is wrong with it.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; expected a file path",
                         hint=f"name a file, e.g. {path / 'results.jsonl'}")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path} exists and is not writable", hint="choose another path")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: {folder} is a file, so no folder can be made there",
                         hint="choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: the folder {folder} is not writable", hint="choose another path")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_partials(path: Path) -> list[Path]:
    """Removes ``.NAME.PID.partial`` files of ``path`` whose process no longer runs."""
    removed = []
    for partial in path.parent.glob(f".{path.name}.*.partial"):
        pid = partial.name[len(path.name) + 2:-len(".partial")]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            partial.unlink(missing_ok=True)
            removed.append(partial)
    return removed


class JsonlWriter:
    """Context manager: ``with JsonlWriter(path) as w: w.write(result)``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.count = 0
        self._tmp: Path | None = None
        self._fh: Any = None
        self._dir_fd: int | None = None

    def __enter__(self) -> JsonlWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(self.path)
        tmp = self.path.parent / f".{self.path.name}.{os.getpid()}.partial"
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd = os.open(tmp.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666,  # the umask decides
                         dir_fd=dir_fd)
        except FileExistsError:
            os.close(dir_fd)
            kind = "a link" if tmp.is_symlink() else "a file"
            raise UsageError(f"refusing to write {self.path}: its partial file {tmp} already exists as {kind} "
                             "that this run did not create; expected no entry at that name",
                             hint="remove it (something else may be writing there) and run again") from None
        except BaseException:
            os.close(dir_fd)
            raise
        self._tmp, self._dir_fd = tmp, dir_fd
        self._fh = os.fdopen(fd, "w", encoding="utf-8")
        return self

    def write(self, item: Result | dict[str, Any]) -> dict[str, Any]:
        """Appends one record (a Result or a plain dict), flushes it and returns what was written.

        JSON stays strictly finite: a record holding NaN or inf is replaced by an error record of
        the same source naming the field, so one bad value never costs the file.
        """
        record = jsonable(item.to_record() if isinstance(item, Result) else item)
        try:
            line = json.dumps(record, allow_nan=False)
        except ValueError:
            field = first_nonfinite(record)
            if field is None:
                raise
            source = record.get("source", "?")
            record = ErrorRecord(str(source), NonFiniteOutputError.__name__,
                                 f"{source}: result field {field!r} is NaN or infinite; no result is "
                                 "written for this input").to_record()
            line = json.dumps(record, allow_nan=False)
        self._fh.write(line + "\n")
        self._fh.flush()
        self.count += 1
        return record

    def __exit__(self, exc_type: object, *exc: object) -> None:
        assert self._tmp is not None and self._dir_fd is not None
        name, dir_fd = self._tmp.name, self._dir_fd
        try:
            self._fh.close()
            if exc_type is None:  # within the folder opened at the start
                os.replace(name, self.path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
            os.close(dir_fd)
