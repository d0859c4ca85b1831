"""Progress bars on a terminal (tqdm when installed), silence elsewhere (CI logs, pipes)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], *, desc: str, total: int | None = None,
             enabled: bool = True) -> Iterator[T]:
    """Wraps ``items`` in a tqdm bar on stderr when it is a TTY and tqdm is installed."""
    if enabled and sys.stderr.isatty():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            yield from tqdm(items, desc=desc, total=total, leave=False, file=sys.stderr)
            return
    yield from items
