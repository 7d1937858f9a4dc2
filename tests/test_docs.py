"""The README shows what the code does: its example test file and its faults table are the real ones."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from click.testing import CliRunner

from streamreplay.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
GUARANTEES = README.split("## Guarantees", 1)[1].split("\n## ", 1)[0]
#: the tests the Guarantees rows name, as `tests/FILE.py::name` or `tests/FILE.py::Class::name`
NAMED = set(re.findall(r"`(tests/[\w/]+\.py::(?:\w+::)?\w+)`", GUARANTEES))


#: tests named by no Guarantees row, because none is a promise to a user; each group says what they check
NO_PROMISE = {
    # the README agrees with the code
    "tests/test_docs.py::test_every_bundled_tape_is_described",
    "tests/test_docs.py::test_every_guarantee_names_a_test_that_exists",
    "tests/test_docs.py::test_every_test_is_named_by_a_guarantee_or_listed_as_no_promise",
    "tests/test_docs.py::test_the_faults_table_in_the_readme_is_the_registry",
    "tests/test_docs.py::test_the_readme_names_every_cli_command",
    "tests/test_endcause.py::test_the_readme_table_says_what_the_code_says",
    # the source's own rules (no import cycle, one definition, no literal end causes)
    "tests/test_architecture.py::test_no_import_cycle_in_the_package",
    "tests/test_architecture.py::test_the_graph_sees_relative_function_level_and_type_checking_imports",
    "tests/test_endcause.py::test_stored_end_causes_are_compared_with_members_not_literals",
    "tests/test_options.py::test_the_largest_body_is_defined_once",
    # a helper's or a base class's own edge, which no promise reaches alone
    "tests/test_dialect_azure.py::test_the_scripted_upstream_speaks_azures_stream",
    "tests/test_dialect_units.py::test_the_base_dialect_leaves_the_wire_specific_answers_to_each_dialect",
    "tests/test_endings_units.py::test_without_a_connection_to_watch_nothing_is_done",
    "tests/test_exchange_model.py::test_a_response_header_is_found_whatever_its_case_the_first_one_winning",
    "tests/test_exchange_model.py::test_now_iso_is_the_utc_time_to_the_millisecond",
    "tests/test_guard_units.py::test_an_unknown_dialect_has_no_check",
    "tests/test_guard_units.py::test_the_base_check_leaves_each_dialect_to_say_what_whole_is",
    "tests/test_matching_units.py::test_fields_ignored_are_not_masked",
    "tests/test_matching_units.py::test_json_object_is_the_body_only_when_it_is_a_json_object",
    "tests/test_matching_units.py::test_the_request_body_is_parsed_once_however_much_is_read",
    "tests/test_public_api.py::test_an_unknown_name_is_an_attribute_error",
    "tests/test_replay_units.py::test_a_miss_without_its_http_request_is_not_forwarded",
    "tests/test_replay_units.py::test_a_policy_object_is_used_as_given",
    "tests/test_replay_units.py::test_a_record_starts_empty",
    "tests/test_replay_units.py::test_a_request_is_parsed_once_however_much_of_it_is_read",
    "tests/test_replay_units.py::test_an_empty_store_is_a_source_with_no_exchanges",
    "tests/test_replay_units.py::test_same_file_compares_resolved_paths",
    "tests/test_replay_units.py::test_the_base_policy_does_nothing_and_answers_nothing",
    "tests/test_replay_units.py::test_the_key_is_the_rules_key_of_this_request_asked_once",
    "tests/test_summary_units.py::test_an_empty_body_has_nothing_to_say",
}


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
    assert len(NAMED) >= 15
    assert sorted(NAMED - _every_test()) == []  # each a test function, or a test method of the class named


def _every_test() -> set[str]:
    """Each test function and test method of the suite, as `tests/FILE.py::name` or `...::Class::name`."""
    found = set()
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        where = f"tests/{path.name}"
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"):
                found.add(f"{where}::{node.name}")
            elif isinstance(node, ast.ClassDef):
                found.update(f"{where}::{node.name}::{m.name}" for m in node.body
                             if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef) and m.name.startswith("test_"))
    return found


def test_every_test_is_named_by_a_guarantee_or_listed_as_no_promise():
    """A test shows a promise, and the row of that promise names it: so a test that fails says which promise
    broke, and a promise's row lists every test aimed at it (a new test goes in its row, or in NO_PROMISE)."""
    tests = _every_test()
    assert len(tests) > 1000
    assert sorted(tests - NAMED - NO_PROMISE) == []
    assert sorted(NO_PROMISE & NAMED) == []  # a row names it: it is a promise's test after all
    assert sorted(NO_PROMISE - tests) == []  # gone or renamed
