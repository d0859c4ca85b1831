"""libjpeg's warnings about missing or corrupt scan data, caught while OpenCV decodes a JPEG.

libjpeg-turbo, as OpenCV bundles it, reports a cut or corrupt scan ("Corrupt JPEG data: premature
end of data segment") only by printing a warning on the process's stderr (fd 2), and fills what it
could not decode with grey; OpenCV passes on no count and no hook, and its log level does not reach
it. So while any JPEG decodes, fd 2 points at a temporary file, and what else lands there (another
thread's output) is copied on to the real stderr whenever a decode starts or ends.

Decodes run side by side (the read-ahead workers): a warning is charged to a decode only when no
other one ran beside it; otherwise that decode is run again alone (new decodes wait meanwhile) to
find out. So only files with a warning, or beside one, are ever decoded twice.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# jerror.h's JWRN_* texts for scan data libjpeg could not decode (not e.g. "unknown JFIF revision")
DATA_WARNING = re.compile(
    r"(?:Corrupt JPEG data|Premature end of JPEG file|Inconsistent progression sequence|"
    r"Invalid SOS parameters)[^\r\n]*")


class _StderrCapture:
    """fd 2 redirected while at least one decode runs; ``run`` is the only entry point."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._joins = 0  # decodes started so far: tells whether another one ran beside a decode
        self._alone_waiting = 0  # decodes waiting to run alone: new ones wait behind them
        self._alone = False
        self._saved = -1  # the real stderr while redirected
        self._capture = -1  # the file fd 2 points at while redirected
        self._spare = -1
        self._scanned = 0
        self._found: list[str] = []

    def _start(self) -> None:
        if self._active == 0:
            try:
                saved = os.dup(2)
            except OSError:  # no stderr at all: nothing to capture, decodes go unchecked
                saved = -1
            if saved >= 0:
                if self._spare < 0:  # one unlinked file for the process, emptied each time
                    self._spare, path = tempfile.mkstemp(prefix="batchforge-stderr-")
                    os.unlink(path)
                os.ftruncate(self._spare, 0)
                os.lseek(self._spare, 0, os.SEEK_SET)  # the writers' offset: fd 2 shares it
                self._capture, self._saved, self._scanned, self._found = self._spare, saved, 0, []
                os.dup2(self._capture, 2)
        self._active += 1
        self._joins += 1

    def _scan(self, final: bool = False) -> None:
        """New captured text: libjpeg's data warnings kept, the rest (whole lines, or all of it
        when ``final``) written on to the real stderr. pread leaves the writers' offset alone."""
        if self._capture < 0:
            return
        text = os.pread(self._capture, os.fstat(self._capture).st_size - self._scanned, self._scanned)
        end = len(text) if final else max(text.rfind(b"\n"), text.rfind(b"\r")) + 1
        self._scanned += end
        other = []
        for line in text[:end].decode("utf-8", "replace").splitlines(keepends=True):
            found = DATA_WARNING.search(line)
            if found:
                self._found.append(found.group(0).strip())
            else:
                other.append(line)
        if other:
            with contextlib.suppress(OSError):  # a closed stderr loses the text, never a decode
                os.write(self._saved, "".join(other).encode())

    def _stop(self) -> None:
        self._active -= 1
        if self._active == 0 and self._capture >= 0:
            self._scan(final=True)
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._capture, self._saved = -1, -1

    def run(self, decode: Callable[[], T], *, alone: bool = False) -> tuple[T, list[str], bool]:
        """(what ``decode()`` returns, the data warnings written while it ran, whether it ran
        with no other decode beside it)."""
        with self._cond:
            if alone:
                self._alone_waiting += 1
                self._cond.wait_for(lambda: not self._active and not self._alone)
                self._alone_waiting -= 1
                self._alone = True
            else:
                self._cond.wait_for(lambda: not self._alone and not self._alone_waiting)
            self._start()
            self._scan()
            first, joins, was_alone = len(self._found), self._joins, self._active == 1
        try:
            result = decode()
        finally:
            with self._cond:
                self._scan()
                warnings = self._found[first:]
                by_itself = was_alone and self._joins == joins
                self._stop()
                if alone:
                    self._alone = False
                self._cond.notify_all()
        return result, warnings, by_itself


_CAPTURE = _StderrCapture()


def decode_with_warnings(decode: Callable[[], T]) -> tuple[T, list[str]]:
    """Runs ``decode`` (an OpenCV decode of one JPEG); returns its result and the libjpeg data
    warnings it caused (none for a whole file)."""
    result, warnings, by_itself = _CAPTURE.run(decode)
    if warnings and not by_itself:  # maybe another decode's: ask again, alone
        result, warnings, _ = _CAPTURE.run(decode, alone=True)
    return result, warnings
