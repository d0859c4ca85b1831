"""The tested lock (constraints.txt): which installed packages differ from it.

The lock lists ``name==version`` lines, the exact set the suite and the main job last passed
with. ``doctor`` compares the installed distributions against it so that a hand-changed package
or a venv that was not set up from the lock is named before it turns into a parity mystery.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

from batchforge.errors import UsageError

LOCK_NAME = "constraints.txt"
_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)\s*(?:#.*)?$")


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name (``Jinja2`` -> ``jinja2``, ``ml_dtypes`` -> ``ml-dtypes``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Drift:
    """One locked package whose installed version is not the locked one."""

    name: str
    locked: str
    installed: str | None  # None: not installed

    def describe(self) -> str:
        got = "not installed" if self.installed is None else self.installed
        return f"{self.name} {got} (lock {self.locked})"


def default_lock() -> Path | None:
    """The repository's lock when batchforge runs from a checkout (editable install), else None."""
    candidate = Path(__file__).resolve().parents[1] / LOCK_NAME
    return candidate if candidate.is_file() else None


def read_lock(path: Path) -> dict[str, str]:
    """{canonical name: version} from a pip constraints file of exact pins."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read the lock {path}: {exc.strerror}",
                         hint="pass --lock FILE with a pip constraints file of name==version lines") from None
    pins: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise UsageError(f"{path}:{number}: expected `name==version`, got {line!r}",
                             hint="regenerate it with scripts/update_lock.sh")
        pins[canonical(match.group(1))] = match.group(2)
    return pins


def installed_versions() -> dict[str, str]:
    """{canonical name: version} of every distribution importlib.metadata can see."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), dist.version)
    return found


def drift(pins: dict[str, str], installed: dict[str, str] | None = None) -> list[Drift]:
    """Locked packages that are missing or at another version, sorted by name."""
    have = installed_versions() if installed is None else installed
    return [Drift(name, version, have.get(name)) for name, version in sorted(pins.items())
            if have.get(name) != version]
