"""Giving memory back between the models of one long command (``export --all``, ``calibrate
--all``, ``parity --all``)."""

from __future__ import annotations

import contextlib
import ctypes
import gc


def release_memory() -> None:
    """Collects garbage, then hands freed heap pages back to the OS: glibc keeps them otherwise,
    so a command's resident size only grows with every model it loads. A no-op off glibc."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
