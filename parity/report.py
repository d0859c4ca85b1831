"""Parity results and their two renderings: JSON for machines, a Markdown table for people."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from batchforge.tolerances import Limit


@dataclass(frozen=True)
class Check:
    """One measured metric against its limit."""

    name: str
    value: float
    limit: Limit
    detail: str = ""

    @property
    def passed(self) -> bool:
        return not math.isnan(self.value) and self.limit.passes(self.value)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "limit": self.limit.value,
                "kind": self.limit.kind, "passed": self.passed, "detail": self.detail,
                "reason": self.limit.reason}


@dataclass
class ModelReport:
    """All checks of one model at one precision on one backend (or why it could not run)."""

    model: str
    precision: str
    backend: str
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    localisation: dict[str, Any] | None = None
    known_failure: str | None = None  # the listed reason, for a zoo run measured to fail
    artifacts: list[str] = field(default_factory=list)  # the runners that ran (model:precision:backend[:artifact])

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def status(self) -> str:
        if self.error is not None:
            return "could not run"
        if self.passed:
            return "passed"
        return "KNOWN FAILURE" if self.known_failure else "FAILED"

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "precision": self.precision, "backend": self.backend,
                "status": self.status, "error": self.error, "seconds": round(self.seconds, 2),
                "notes": self.notes, "checks": [c.as_dict() for c in self.checks],
                "localisation": self.localisation, "known_failure": self.known_failure,
                "artifacts": self.artifacts}


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if 0.999 <= value < 1:
        return f"{value:.8f}".rstrip("0")
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.6g}"
    return f"{value:.3e}"


def to_markdown(reports: list[ModelReport]) -> str:
    """A Markdown table: one row per check, failures marked, plus a per-model summary."""
    lines = ["| model | precision | backend | check | value | limit | result |",
             "|---|---|---|---|---|---|---|"]
    for r in reports:
        if r.error is not None:
            lines.append(f"| {r.model} | {r.precision} | {r.backend} | - | - | - | could not run: {r.error} |")
            continue
        for c in r.checks:
            mark = "pass" if c.passed else "**FAIL**"
            lines.append(f"| {r.model} | {r.precision} | {r.backend} | {c.name} | {_fmt(c.value)} | "
                         f"{c.limit.symbol} {_fmt(c.limit.value)} | {mark} |")
    notes = [f"- {r.model} {r.precision}: ran {', '.join(r.artifacts)}" for r in reports if r.artifacts]
    notes += [f"- {r.model} {r.precision}: {n}" for r in reports for n in r.notes]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def summary_lines(reports: list[ModelReport]) -> list[str]:
    """One line per model/precision: status, failing checks, time."""
    out = []
    for r in reports:
        failing = [c for c in r.checks if not c.passed]
        detail = r.error or (", ".join(f"{c.name}={_fmt(c.value)} (limit {c.limit.symbol} "
                                       f"{_fmt(c.limit.value)})" for c in failing) or
                             f"{len(r.checks)} checks")
        out.append(f"{r.status:>13}  {r.model} [{r.precision}, {r.backend}] {detail} ({r.seconds:.1f}s)")
    return out
