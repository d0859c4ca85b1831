"""Staging folders: a command's work in progress, beside where its output goes.

A command stages into ``.NAME.KIND.PID.XXXXXXXX`` inside the folder its output lands in: the same
file system, so the final rename is atomic and a full disk is reported for the disk the output
goes to (not /tmp's). The folder is removed when the command ends, and folders of the same NAME
and KIND left by a process that no longer runs (SIGKILL, a power cut) are removed when the next
one starts, as ``runtime.jsonl`` does for its ``.partial`` files.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from batchforge.runtime.jsonl import _alive as process_alive


def remove_stale_staging(parent: str | os.PathLike[str], name: str, kind: str) -> list[Path]:
    """Removes the ``.NAME.KIND.PID.*`` folders in ``parent`` whose process no longer runs.

    Returns:
        The folders removed.
    """
    parent = Path(parent)
    prefix = f".{name}.{kind}."
    removed = []
    for folder in parent.glob(glob.escape(prefix) + "*"):
        pid = folder.name[len(prefix):].partition(".")[0]
        if (pid.isdigit() and int(pid) != os.getpid() and not folder.is_symlink() and folder.is_dir()
                and not process_alive(int(pid))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def make_staging(parent: str | os.PathLike[str], name: str, kind: str) -> Path:
    """A new, empty staging folder in ``parent`` (made if missing) after removing stale ones."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(parent, name, kind)
    return Path(tempfile.mkdtemp(prefix=f".{name}.{kind}.{os.getpid()}.", dir=parent))


@contextlib.contextmanager
def staging(parent: str | os.PathLike[str], name: str, kind: str) -> Iterator[Path]:
    """``make_staging`` as a context manager: the folder and what is left in it go at the end."""
    folder = make_staging(parent, name, kind)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def temporary_files_in(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Points ``tempfile`` (the process's default temporary folder) at ``folder`` for the block:
    the folders libraries make there (onnxruntime.quantization's augmented models, 90-180 MB a
    zoo model) land in a staging folder, on the output's file system, cleaned with it. Not for
    threads that make temporary files of their own meanwhile."""
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = previous
