"""torch's own output during an export, kept in ``export.log`` instead of on the user's terminal.

Both exporters print progress, graph dumps and warnings (a failing ``torch.export`` dumps 260 to
2,950 lines of graphs to stderr, through ``logging`` and from C++), so capture is at the
file-descriptor level: fds 1 and 2, ``sys.stdout``/``sys.stderr``, torch's logging handlers and
Python warnings all go to one temporary file in the export's staging folder while an exporter runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import re
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

from batchforge.runtime.artifacts import atomic_path

EXPORT_LOG = "export.log"
# CSI sequences (colours, cursor moves): torch colours its exporter messages for a terminal
ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
# the loggers whose handlers are pointed at the log while an exporter runs
TORCH_LOGGERS = ("torch", "onnxscript", "onnx_ir", "onnx")


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences."""
    return ANSI_ESCAPE.sub("", text)


class ExportLog:
    """torch's output during one export, in sections, written to ``path`` (complete or absent).

    Args:
        path: where the log ends up (``<model folder>/export.log``); messages name it.
        header: its first line (which export, when: a failed export's log replaces the last one's).
    """

    def __init__(self, path: str | os.PathLike[str], header: str = "") -> None:
        self.path = Path(path)
        self.header = header
        self.sections: list[tuple[str, str]] = []

    def add(self, title: str, text: str) -> None:
        self.sections.append((title, strip_ansi(text).rstrip() + "\n"))

    def add_exception(self, title: str, exc: BaseException) -> None:
        """The full traceback of ``exc``, its causes included."""
        self.add(title, "".join(traceback.format_exception(exc)))

    def text(self) -> str:
        head = f"{self.header}\n\n" if self.header else ""
        return head + "".join(f"===== {title} =====\n{text}\n" for title, text in self.sections)

    def write(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Writes the log (to ``self.path`` unless ``path`` is given) through ``atomic_path``."""
        target = Path(path) if path is not None else self.path
        with atomic_path(target) as tmp:
            tmp.write_text(self.text(), encoding="utf-8")
        return target


@contextlib.contextmanager
def captured(log: ExportLog, title: str, folder: str | os.PathLike[str]) -> Iterator[None]:
    """Sends everything written while the block runs into a section ``title`` of ``log``.

    Args:
        log: the export's log.
        title: the section's title ("torch.export (dynamo)").
        folder: where the temporary capture file lives (the staging folder).
    """
    _flush_all()
    with tempfile.TemporaryFile(dir=folder) as sink, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stream = open(sink.fileno(), "w", encoding="utf-8", errors="replace",  # noqa: SIM115
                      buffering=1, closefd=False)
        saved = {fd: _dup(fd) for fd in (1, 2)}
        saved = {fd: copy for fd, copy in saved.items() if copy is not None}  # a closed fd stays closed
        handlers = _std_stream_handlers()
        try:
            for fd in saved:
                os.dup2(sink.fileno(), fd)
            for handler in handlers:
                handler.setStream(stream)
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield
        finally:
            _flush_all(stream)
            for handler, original in handlers.items():
                handler.setStream(original)
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            stream.close()
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace")
            notes = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
                            for w in caught)
            log.add(title, text + notes)


def _std_stream_handlers() -> dict[logging.StreamHandler, io.TextIOBase]:
    """Logging handlers that write to a terminal stream or belong to torch's loggers (which
    keep the ``sys.stderr`` of the moment torch was imported), with their current streams."""
    std = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) if s is not None}
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    found = {}
    for logger in loggers:
        ours = logger.name.split(".")[0] in TORCH_LOGGERS
        for handler in logger.handlers:
            if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
                continue
            # torch's own handlers that hold a stream: a terminal one, or the stream sys.stderr was
            # when torch was imported (pytest's); a handler without one (LazyTraceHandler) is left
            if id(handler.stream) in std or (ours and handler.stream is not None):
                found[handler] = handler.stream
    return found


def _dup(fd: int) -> int | None:
    try:
        return os.dup(fd)
    except OSError:
        return None


def _flush_all(*streams: io.TextIOBase) -> None:
    for stream in (*streams, sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):  # C stdio buffers (libtorch's printf) before the fds move
        ctypes.CDLL(None).fflush(None)
