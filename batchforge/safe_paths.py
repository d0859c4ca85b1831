"""Names and paths that come from users (specs, the command line, records) and end up as file
system paths: a model name is one plain path component, and every path a command writes must
resolve inside its output folder.

Top-level so every stage (export first) can use it; standard library only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from batchforge.errors import UsageError

# one path component: no separators, no leading dot (so never "." or ".."), nothing a shell or
# a file system treats specially
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
NAME_RULE = "letters, digits, '_', '-' and '.' (not first), at most 128 characters"


def name_problem(name: object, what: str = "model name") -> str | None:
    """Why ``name`` is not a plain name, or None when it is one."""
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name):
        return f"{what} must be a plain name ({NAME_RULE}), got {name!r}"
    return None


def check_name(name: object, what: str = "model name") -> str:
    """Returns ``name`` when it is a plain name; otherwise raises UsageError (exit 2)."""
    problem = name_problem(name, what)
    if problem:
        raise UsageError(problem, hint="names become folder names under --output-dir; rename it")
    return name  # type: ignore[return-value]


def inside(root: str | os.PathLike[str], path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` resolved (links followed) after checking that it sits inside ``root``.

    Raises:
        UsageError naming the path, the folder and the rule.
    """
    base = Path(root).resolve()
    target = Path(path).resolve()
    if target != base and base not in target.parents:
        raise UsageError(
            f"refusing to write {what} {path}: it resolves to {target}, outside the output folder {base}",
            hint="every file a command writes must sit inside its output folder",
        )
    return target
