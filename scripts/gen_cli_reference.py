"""Write docs/cli.md, the CLI reference, from the argparse parser (`batchforge.cli.build_parser`).

Run after changing any command, option or help text:

    PYTHONPATH=$PWD .venv/bin/python scripts/gen_cli_reference.py

`tests/cli/test_cli_reference.py` regenerates the page in memory and fails when docs/cli.md differs.
"""

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "cli.md"
COMMAND = "PYTHONPATH=$PWD .venv/bin/python scripts/gen_cli_reference.py"
# argparse wraps help to the terminal width (shutil.get_terminal_size reads COLUMNS first): a fixed
# width makes the page the same on every machine and terminal.
COLUMNS = "100"


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every subcommand parser below ``parser``, depth first, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield child
                yield from _subcommands(child)


def render() -> str:
    """The whole docs/cli.md text: the top-level help, then each subcommand's ``--help``."""
    from batchforge.cli import build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = COLUMNS
    try:
        parser = build_parser()
        sections = [(parser.prog, parser.format_help())]
        sections += [(child.prog, child.format_help()) for child in _subcommands(parser)]
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    lines = ["# CLI reference", "",
             "Every `batchforge` command's `--help`, generated from the parser by "
             "`scripts/gen_cli_reference.py` (do not edit by hand).", "",
             "Regenerate after changing a command, an option or a help text:", "",
             "```", COMMAND, "```", ""]
    for prog, text in sections:
        lines += [f"## `{prog}`", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(lines)


def main() -> int:
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(render())
    print(f"wrote {REFERENCE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
