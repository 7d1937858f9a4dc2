"""Naming exchanges the same way in every DB, reading cassettes directly, and the small words a new user reads."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamreplay.bundled import bundled_dir
from streamreplay.cli import main
from streamreplay.clients import describe
from streamreplay.store import Store
from streamreplay.testing import Script
from tests.helpers import chat, record

RECORDINGS = bundled_dir()
BREAK = RECORDINGS / "consumer-break.jsonl"
TIMEOUT = RECORDINGS / "client-timeout.jsonl"
HAPPY = RECORDINGS / "openai-happy-path.jsonl"


def run(*args: str) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, (args, result.output)
    return result.output


def fail(*args: str) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 1, (args, result.output)
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1, result.output
    return result.output


def without_ids(text: str, db: Path) -> str:
    return re.sub(r"\(id \d+\)", "(id N)", text.replace(str(db), "DB"))


@pytest.mark.parametrize("ref", ["consumer-break", "consumer-break:0"])
def test_a_tape_or_tape_seq_names_the_same_exchange_whatever_the_import_order(tmp_path: Path, ref: str):
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    for db, order in ((one, (BREAK, TIMEOUT)), (two, (TIMEOUT, BREAK))):
        for cassette in order:
            run("import", cassette, "--db", db)
    assert Store(one).resolve(ref) != Store(two).resolve(ref)  # the ids differ...
    for command in (["diagnose"], ["show"]):
        # ...and what the commands say does not
        assert without_ids(run(*command, ref, "--db", one), one) == without_ids(run(*command, ref, "--db", two), two)
    assert "exchange consumer-break:0 (id " in run("diagnose", ref, "--db", one)
    assert "streamreplay repro consumer-break:0 --db" in run("diagnose", ref, "--db", one)


def test_a_tape_alone_names_its_last_exchange_and_tape_seq_each_one(tmp_path: Path):
    db = tmp_path / "multi.db"
    run("import", RECORDINGS / "agent-multi-turn.jsonl", "--db", db)
    store = Store(db)
    by_seq = {ex.seq: ex.id for ex in store.exchanges(tape="agent-multi-turn")}
    assert sorted(by_seq) == [0, 1, 2]
    assert store.resolve("agent-multi-turn") == by_seq[2]
    assert [store.resolve(f"agent-multi-turn:{seq}") for seq in (0, 1, 2)] == [by_seq[0], by_seq[1], by_seq[2]]
    assert run("show", "agent-multi-turn", "--db", db).startswith("exchange agent-multi-turn:2 ")


def test_every_command_that_reads_takes_a_cassette_file(tmp_path: Path):
    assert "consumer-break" in run("ls", "--db", BREAK)
    assert "consumer_stopped_reading" in run("diagnose", "consumer-break", "--db", BREAK)
    assert "[DONE]" in run("show", "consumer-break:0", "--db", BREAK)
    assert "stops after 2 chunks" in run("bisect", "consumer-break", "--db", BREAK, "--by", "client")
    out = tmp_path / "repro"
    assert "repro.py" in run("repro", "consumer-break", "--db", BREAK, "-o", out)
    assert (out / "cassette.jsonl").exists()


def test_ls_cause_lists_only_the_exchanges_that_ended_that_way(tmp_path: Path):
    db = tmp_path / "causes.db"
    run("import", BREAK, "--db", db)
    run("import", HAPPY, "--db", db)

    def listed(cause: str) -> list[tuple[str, str]]:
        out = run("ls", "--cause", cause, "--json", "--db", db)
        return [(row["tape"], row["end_cause"]) for row in map(json.loads, out.splitlines())]

    assert listed("client_left") == [("consumer-break", "client_left")]
    assert listed("complete") == [("openai-happy-path", "complete")]
    # an exchange whose end is not stored yet (its recorder still streaming, or killed) is what ls prints
    # as `open`, and what `--cause open` lists
    run("import", BREAK, "--db", db, "--tape", "in-flight")
    with sqlite3.connect(db) as conn:
        conn.execute("update exchanges set end_cause = null where tape = 'in-flight'")
    assert listed("open") == [("in-flight", None)]
    header, row = run("ls", "--tape", "in-flight", "--db", db).splitlines()[:2]
    assert row.split()[header.split().index("end")] == "open"
    assert listed("client_left") == [("consumer-break", "client_left")]


def test_a_reference_that_names_nothing_says_what_there_is(tmp_path: Path):
    db = tmp_path / "r.db"
    run("import", BREAK, "--db", db)
    assert "no tape 'nope'" in fail("diagnose", "nope", "--db", db) and "(tapes: consumer-break)" in fail(
        "show", "nope", "--db", db)
    assert "no exchange 7 in tape 'consumer-break'" in fail("show", "consumer-break:7", "--db", db)
    assert "no exchange 99" in fail("show", "99", "--db", db)
    assert "no tape 'nope'" in fail("ls", "--tape", "nope", "--db", db)


def test_ls_tape_lists_that_tape_of_several_and_a_missing_one_names_them_all(tmp_path: Path):
    db = tmp_path / "r.db"
    run("import", BREAK, "--db", db)
    run("import", HAPPY, "--db", db)
    for tape in ("consumer-break", "openai-happy-path"):
        rows = [json.loads(line) for line in run("ls", "--tape", tape, "--json", "--db", db).splitlines()]
        assert [row["tape"] for row in rows] == [tape]
    assert "no tape 'nope'" in (said := fail("ls", "--tape", "nope", "--db", db))
    assert "(tapes: consumer-break, openai-happy-path)" in said


def test_the_small_words(tmp_path: Path):
    db = tmp_path / "w.db"
    assert "imported 1 exchange into" in run("import", BREAK, "--db", db)
    assert "exported 1 exchange of tape" in run("export", "consumer-break", "--db", db, "-o", tmp_path / "x.jsonl")
    helptext = run("ls", "--help")
    assert "[default: recordings/streamreplay.db]" in helptext.replace("\n", " ").replace("  ", " ") or \
        "default: recordings/streamreplay.db" in " ".join(helptext.split())
    assert "(recordings/streamreplay.db)" not in helptext
    assert describe(asyncio.TimeoutError()) == "builtins.TimeoutError: (no message: a deadline ran out)"


async def test_an_imported_cassette_keeps_the_recorded_time(tmp_path: Path):
    db = tmp_path / "rec.db"
    await record(db, [Script()], [chat()], tape="when")
    recorded = Store(db).exchanges()[0].started_at
    assert recorded
    cassette = tmp_path / "when.jsonl"
    run("export", "when", "--db", db, "-o", cassette)
    other = tmp_path / "other.db"
    await asyncio.sleep(1.1)  # a second later: an import time would differ in the listing's seconds
    run("import", cassette, "--db", other)
    assert Store(other).exchanges()[0].started_at == recorded
    assert recorded[11:19] in run("ls", "--db", other)


def test_a_bad_fault_by_header_is_logged_as_a_bad_fault():
    import httpx

    from streamreplay.replay import ReplayServer

    with ReplayServer(str(BREAK), speed=0) as srv:
        response = httpx.post(f"{srv.base_url}/chat/completions", json={"model": "m"},
                              headers={"X-Streamreplay-Fault": "cut:chnk=3"})
        line = srv.requests[-1].line()
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_fault_spec"
    assert "-> refused 400: bad fault spec: cut: unknown parameter 'chnk'" in line and "no match" not in line


def test_ls_cause_with_tape_lists_the_exchanges_of_that_tape_that_ended_that_way(tmp_path: Path):
    """`ls --cause C --tape T` lists exactly the exchanges of T that ended C: both must hold, not either."""
    db = tmp_path / "both.db"
    run("import", BREAK, "--db", db, "--tape", "first")
    run("import", BREAK, "--db", db, "--tape", "second")
    run("import", HAPPY, "--db", db)
    out = run("ls", "--cause", "client_left", "--tape", "second", "--json", "--db", db)
    assert [(row["tape"], row["end_cause"]) for row in map(json.loads, out.splitlines())] == [
        ("second", "client_left")]
    assert run("ls", "--cause", "complete", "--tape", "second", "--json", "--db", db) == ""
