"""Parity results and their two renderings: JSON for machines, a Markdown table for people."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from batchforge.tolerances import Limit

AGREEMENT, SANITY, SHOWN = "agreement", "sanity", "shown"


def source_name(source: str) -> str:
    """An evaluation item as a user finds it: the file name (``05_moon.png``), the ``.npz`` key
    (``inputs.npz[3]``) or the generated sample's name; never a bare index."""
    return os.path.basename(source) or source


@dataclass(frozen=True)
class Check:
    """One measured metric against its limit.

    ``role``: ``agreement`` (engine against reference: a failure fails the run), ``sanity`` (the
    reference alone: a failure makes the run UNINFORMATIVE, see ModelReport.status) or ``shown``
    (a value reported beside a check that decides, e.g. plain argmax agreement beside the
    tie-aware one: never judged, its limit is the deciding check's, for comparison).
    """

    name: str
    value: float
    limit: Limit
    detail: str = ""
    role: str = AGREEMENT

    @property
    def passed(self) -> bool:
        if self.role == SHOWN:
            return True
        return not math.isnan(self.value) and self.limit.passes(self.value)

    @property
    def result(self) -> str:
        """The report's word for it: pass, FAIL, UNINFORMATIVE, or shown (not judged)."""
        if self.role == SHOWN:
            return "shown (not judged)"
        if self.passed:
            return "pass"
        return "UNINFORMATIVE" if self.role == SANITY else "FAIL"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "limit": self.limit.value,
                "kind": self.limit.kind, "passed": self.passed, "result": self.result, "role": self.role,
                "detail": self.detail, "reason": self.limit.reason}


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
    def agrees(self) -> bool:
        """Every agreement check passed (sanity checks aside)."""
        return self.error is None and bool(self.checks) and all(c.passed for c in self.checks if c.role != SANITY)

    @property
    def uninformative(self) -> list[Check]:
        """The failed sanity checks: the reference does not respond to its input there."""
        return [c for c in self.checks if c.role == SANITY and not c.passed]

    @property
    def passed(self) -> bool:
        return self.agrees and not self.uninformative

    @property
    def status(self) -> str:
        if self.error is not None:
            return "could not run"
        if self.passed:
            return "passed"
        if self.agrees:
            return "UNINFORMATIVE"
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


def room_used(check: Check) -> float:
    """How much of its limit's room a check's value uses: 0 = ideal, 1.0 = at the limit, above 1
    = failed. For a maximum, value / limit; for a minimum below 1 (cosines, agreement shares),
    (1 - value) / (1 - limit); for a minimum of 1 or more, limit / value."""
    value, limit = check.value, check.limit.value
    if math.isnan(value):
        return math.inf
    if check.limit.kind == "max":
        return value / limit if limit > 0 else (0.0 if value <= 0 else math.inf)
    if limit < 1:
        return max(0.0, 1 - value) / (1 - limit)
    return limit / value if value > 0 else math.inf


def worst_check(report: ModelReport) -> Check | None:
    """The agreement check nearest its limit (or furthest past it); None without checks."""
    judged = [c for c in report.checks if c.role == AGREEMENT]
    return max(judged, key=room_used, default=None)


def summary_table(reports: list[ModelReport]) -> list[str]:
    """One row per model and precision, before the detail: status, checks passed, and the
    agreement check nearest its limit (the failing one furthest past it) with its share of the room."""
    lines = ["| model | precision | status | checks passed | worst check (share of its limit's room) |",
             "|---|---|---|---|---|"]
    for r in reports:
        judged = [c for c in r.checks if c.role != SHOWN]
        worst = worst_check(r)
        if r.error is not None:
            detail = f"could not run: {r.error}"
        elif worst is None:
            detail = "-"
        else:
            detail = (f"{worst.name} = {_fmt(worst.value)} (limit {worst.limit.symbol} {_fmt(worst.limit.value)}, "
                      f"{room_used(worst):.0%})")
        lines.append(f"| {r.model} | {r.precision} | {r.status} | {sum(c.passed for c in judged)}/{len(judged)} "
                     f"| {detail} |")
    return lines


def to_markdown(reports: list[ModelReport]) -> str:
    """The summary table (one row per model and precision), then one row per check, failures
    marked, then warnings and notes."""
    lines = ["## Summary", "", *summary_table(reports), "", "## Every check", "",
             "| model | precision | backend | check | value | limit | result |",
             "|---|---|---|---|---|---|---|"]
    for r in reports:
        if r.error is not None:
            lines.append(f"| {r.model} | {r.precision} | {r.backend} | - | - | - | could not run: {r.error} |")
            continue
        for c in r.checks:
            mark = c.result if c.passed else f"**{c.result}**"
            lines.append(f"| {r.model} | {r.precision} | {r.backend} | {c.name} | {_fmt(c.value)} | "
                         f"{c.limit.symbol} {_fmt(c.limit.value)} | {mark} |")
    warned = [f"- **UNINFORMATIVE** {r.model} {r.precision}: {uninformative_line(r)}"
              for r in reports if r.error is None and r.uninformative]
    if warned:
        lines += ["", "Warnings:", *warned]
    notes = [f"- {r.model} {r.precision}: ran {', '.join(r.artifacts)}" for r in reports if r.artifacts]
    notes += [f"- {r.model} {r.precision}: {n}" for r in reports for n in r.notes]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def uninformative_line(report: ModelReport) -> str:
    """Why a run's agreement proves little: its failed sanity checks, with what to do."""
    found = "; ".join(f"{c.name} = {_fmt(c.value)} (needs {c.limit.symbol} {_fmt(c.limit.value)}: {c.detail})"
                      for c in report.uninformative)
    verdict = ("the engine agrees with it, but agreement with a reference that does not respond to its "
               "input proves little" if report.agrees else "and the engine does not agree with it")
    return (f"the FP32 reference gives (nearly) the same output for different inputs: {found}; {verdict}. "
            "Check that the factory loads trained weights and that the inputs differ "
            "(parity --strict makes this exit 1)")


def summary_lines(reports: list[ModelReport]) -> list[str]:
    """One line per model/precision: status, failing checks, time."""
    out = []
    for r in reports:
        failing = [c for c in r.checks if not c.passed and (c.role != SANITY or r.agrees)]
        detail = r.error or (", ".join(f"{c.name}={_fmt(c.value)} (limit {c.limit.symbol} "
                                       f"{_fmt(c.limit.value)})" for c in failing) or
                             f"{len(r.checks)} checks")
        out.append(f"{r.status:>13}  {r.model} [{r.precision}, {r.backend}] {detail} ({r.seconds:.1f}s)")
    return out
