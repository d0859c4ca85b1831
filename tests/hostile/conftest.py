"""Every hostile run must end in one line, never a traceback: a test whose captured stdout or
stderr (this process's, and that of any subprocess writing to the inherited descriptors) holds
one fails, whatever it asserts itself (issue #29)."""

from __future__ import annotations

import pytest

TRACEBACK = "Traceback (most recent call last)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    scanned = "pytester" not in getattr(item, "fixturenames", ())  # the scan's own test prints inner runs
    if scanned and report.when == "call" and report.passed and TRACEBACK in report.capstdout + report.capstderr:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid}: a traceback reached the captured output of a hostile run "
                           f"(the command must fail in one line):\n{report.capstderr[-2000:]}")
