"""docs/cli.md is the parser's own help, regenerated in memory here: a stale page fails the suite."""

import pytest
from helpers import load_script


@pytest.fixture(scope="module")
def generator():
    return load_script("gen_cli_reference")


def test_cli_reference_is_current(generator):
    written = generator.REFERENCE.read_text() if generator.REFERENCE.is_file() else ""
    if written != generator.render():
        pytest.fail(f"docs/cli.md is stale (the CLI's parser changed): run `{generator.COMMAND}`", pytrace=False)


def test_cli_reference_has_every_subcommand_at_a_fixed_width(generator, monkeypatch):
    from batchforge.cli import build_parser

    monkeypatch.setenv("COLUMNS", "40")  # the terminal's width must not reach the page
    text = generator.render()
    assert text == generator.REFERENCE.read_text()
    commands = [c for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict)
                for c in a.choices]
    assert len(commands) == 15 and "validate-config" in commands
    for command in [*commands, "deploy triton"]:
        assert f"## `batchforge {command}`\n\n```text\nusage: batchforge {command} " in text, command
    assert max(len(line) for line in text.splitlines() if line.startswith("  --")) <= 100
