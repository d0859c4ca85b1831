"""The hostile suite's traceback scan (tests/conftest.py) fails a test that lets one through."""

from pathlib import Path

pytest_plugins = ["pytester"]


def test_a_traceback_in_the_captured_output_fails_the_test(pytester):
    pytester.makeconftest((Path(__file__).parents[1] / "conftest.py").read_text())
    pytester.mkdir("hostile")
    (pytester.path / "hostile" / "test_planted.py").write_text('''
import subprocess, sys, traceback

def test_quiet():
    print("one line: expected X, got Y", file=sys.stderr)

def test_in_process():
    try:
        raise ValueError("planted")
    except ValueError:
        traceback.print_exc()

def test_in_a_subprocess():
    subprocess.run([sys.executable, "-c", "raise SystemExit(int('x'))"])
''')
    (pytester.path / "test_elsewhere.py").write_text(
        "import traceback\ndef test_outside_hostile():\n    traceback.print_stack()\n"
        "    print('Traceback (most recent call last)')\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=2)  # outside tests/hostile: not scanned
    result.stdout.fnmatch_lines(["*test_in_process: a traceback reached*", "*test_in_a_subprocess: a traceback*"])
