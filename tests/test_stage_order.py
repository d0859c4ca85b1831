"""Stage folders import only earlier stages (SPEC §1): export -> calibration -> engines -> parity -> deploy.

The runtime is the base every stage may use (its own boundary is tests/runtime/test_runtime_import_boundary.py);
shared numeric pieces (metrics, tolerances) live in the top-level ``batchforge`` package so that
the build stages can use them without importing the gate.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("export", "calibration", "engines", "parity", "deploy")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every ``batchforge.*`` module a file imports, top level or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("batchforge.")]


def later_stage_imports(folder: str) -> list[str]:
    later = ORDER[ORDER.index(folder) + 1:]
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for line, name in imported_modules(path):
            stage = name.split(".")[1]
            if stage in later:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("folder", ORDER[:-1])
def test_a_stage_never_imports_a_later_one(folder):
    assert later_stage_imports(folder) == []


def test_the_check_sees_a_planted_import(tmp_path, monkeypatch):
    planted = tmp_path / "export"
    planted.mkdir()
    (planted / "bad.py").write_text("def f():\n    from batchforge.parity.gate import check_model\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert later_stage_imports("export") == ["export/bad.py:2 imports batchforge.parity.gate",
                                             "export/bad.py:2 imports batchforge.parity.gate.check_model"]


def test_integrations_use_the_runtime_only():
    """batchforge.integrations (Ray) runs pipelines: it may import the runtime, never a build stage."""
    bad = [f"{path.relative_to(ROOT)}:{line} imports {name}"
           for path in sorted((ROOT / "batchforge" / "integrations").rglob("*.py"))
           for line, name in imported_modules(path) if name.split(".")[1] in ORDER]
    assert bad == []
