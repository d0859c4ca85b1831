"""Streaming JSONL: one line per input, written as it goes, complete or absent.

Lines go to a hidden temp file beside the target and are flushed one by one; the temp file is
renamed onto the target when the writer closes cleanly and removed when it closes on an error.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from batchforge.runtime.results import Result, jsonable


class JsonlWriter:
    """Context manager: ``with JsonlWriter(path) as w: w.write(result)``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.count = 0
        self._tmp: Path | None = None
        self._fh: Any = None

    def __enter__(self) -> JsonlWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent)
        self._tmp = Path(tmp)
        self._fh = os.fdopen(fd, "w", encoding="utf-8")
        return self

    def write(self, item: Result | dict[str, Any]) -> None:
        """Appends one record (a Result or a plain dict) and flushes it."""
        record = item.to_record() if isinstance(item, Result) else item
        self._fh.write(json.dumps(jsonable(record), allow_nan=False) + "\n")
        self._fh.flush()
        self.count += 1

    def __exit__(self, exc_type: object, *exc: object) -> None:
        assert self._tmp is not None
        self._fh.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)
