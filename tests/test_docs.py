"""The README shows what the code does: its example test file and its faults table are the real ones."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from streamreplay.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_the_faults_table_in_the_readme_is_the_registry():
    table = CliRunner().invoke(main, ["faults"]).output.rstrip()
    assert f"```\n{table}\n```" in README


def test_every_bundled_tape_is_described():
    for cassette in (ROOT / "streamreplay" / "tapes").glob("*.jsonl"):
        assert f"| `{cassette.stem}` |" in README


def test_the_readme_names_every_cli_command():
    for name in main.commands:
        assert f"streamreplay {name}" in README, name


def test_every_guarantee_names_a_test_that_exists():
    import re

    section = README.split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`(tests/[\w/]+\.py)::(?:(\w+)::)?(\w+)`", section)  # file::test or file::Class::test
    assert len(named) >= 15
    for path, cls, name in named:
        text = (ROOT / path).read_text()
        assert f"def {name}(" in text and (not cls or f"class {cls}" in text), f"{path}::{cls}::{name}"
