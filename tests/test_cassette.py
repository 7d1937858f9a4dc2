"""Cassettes: export, import and replay are byte-identical to what the upstream sent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamreplay.bundled import bundled_dir
from streamreplay.cassette import CassetteError, export_tape, import_cassette, read_cassette
from streamreplay.cli import main
from streamreplay.prune import prune
from streamreplay.replay import ReplayServer
from streamreplay.replay.source import CassetteSource
from streamreplay.store import Store
from streamreplay.testing import Script
from tests.helpers import SECRET, chat, post, record, sha

NOT_UTF8 = [b'data: {"bad": "\xff\xfe"}\n\n', b"data: [DONE]\n\n"]


@pytest.fixture
async def recorded(db_path: Path) -> list[bytes]:
    scripts = [
        Script(gap=0.01, split_events=True),
        Script(ending="reset", gap=0.01),
        Script(raw=NOT_UTF8, gap=0.01),
        Script(status=429),
    ]
    payloads = [chat("one"), chat("two"), chat("three"), chat("four")]
    return await record(db_path, scripts, payloads, tape="mixed")


async def test_export_import_replay_are_byte_identical(db_path: Path, tmp_path: Path, recorded: list[bytes]):
    cassette = tmp_path / "mixed.jsonl"
    assert export_tape(db_path, "mixed", cassette) == 4
    text = cassette.read_text()
    assert SECRET not in text and '"b64"' in text and '"host"' not in text.lower()
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["format"] == "streamreplay-cassette" and lines[0]["tape"] == "mixed"
    assert all(list(line) == sorted(line) for line in lines)

    source = CassetteSource(cassette)
    assert [sha(b"".join(c.data for c in source.chunks(ex))) for ex in source.exchanges()] == [sha(b) for b in recorded]
    original = Store(db_path).exchanges()
    for ex, again in zip(original, source.exchanges(), strict=True):
        assert [(c.index, c.t_ns) for c in Store(db_path).chunks(ex.id)] == [
            (c.index, c.t_ns) for c in source.chunks(again)
        ]
        assert (again.end_cause, again.upstream_end, again.status) == (ex.end_cause, ex.upstream_end, ex.status)

    copy_db = tmp_path / "copy.db"
    assert import_cassette(cassette, copy_db) == ("mixed", 4)
    imported = Store(copy_db).exchanges()
    assert [e.text for e in imported] == [e.text for e in original]
    assert [e.end_cause for e in imported] == ["complete", "upstream_reset", "complete", "http_error"]
    export_tape(copy_db, "mixed", tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_text() == text  # stable: nothing volatile

    for source_path in (cassette, copy_db):
        async with ReplayServer(source_path, speed=0) as srv:
            got = [await post(srv.base_url, chat(word)) for word in ("one", "two", "three", "four")]
        assert [sha(body) for _, body, _ in got] == [sha(b) for b in recorded]
        assert [error for _, _, error in got] == [None, "ReadError", None, None]


def test_tape_names_that_would_leave_the_directory_are_refused(db_path: Path, tmp_path: Path):
    for bad in ("../evil", "a/b", "..", ".hidden", ""):
        with pytest.raises(CassetteError, match="cannot be a file name"):
            export_tape(db_path, bad, tmp_path / "x.jsonl")


async def test_cli_export_and_import(db_path: Path, tmp_path: Path, recorded: list[bytes], monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    out = runner.invoke(main, ["export", "mixed", "--db", str(db_path)])
    assert out.exit_code == 0, out.output
    assert out.output.strip() == "exported 4 exchanges of tape mixed to recordings/mixed.jsonl"
    again = runner.invoke(main, ["import", "recordings/mixed.jsonl", "--db", "other.db", "--tape", "copy"])
    assert again.output.strip() == "imported 4 exchanges into other.db as tape copy"
    copied = Store(tmp_path / "other.db")
    assert [(ex.tape, ex.seq) for ex in copied.exchanges()] == [("copy", seq) for seq in range(4)]
    assert [t["name"] for t in copied.db["tapes"].rows] == ["copy"]
    twice = runner.invoke(main, ["import", "recordings/mixed.jsonl", "--db", "other.db", "--tape", "copy"])
    assert twice.exit_code == 1 and "already exists" in twice.output
    missing = runner.invoke(main, ["export", "nope", "--db", str(db_path)])
    assert missing.exit_code == 1 and "no tape 'nope'" in missing.output and "mixed" in missing.output


def test_a_broken_cassette_names_its_line(tmp_path: Path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"format":"streamreplay-cassette","tape":"b","version":1}\n{"type":"chunk","seq":0}\n')
    with pytest.raises(CassetteError, match=r"broken.jsonl:2"):
        CassetteSource(path)


RECORDINGS = bundled_dir()


@pytest.mark.parametrize("cassette", sorted(RECORDINGS.glob("*.jsonl")), ids=lambda p: p.stem)
def test_a_bundled_cassette_imported_and_exported_is_the_same_file(cassette: Path, tmp_path: Path):
    tape, _ = import_cassette(cassette, tmp_path / "db.db")
    export_tape(tmp_path / "db.db", tape, tmp_path / cassette.name)
    assert (tmp_path / cassette.name).read_bytes() == cassette.read_bytes()


def test_an_end_cause_from_a_newer_version_survives_import_and_export(tmp_path: Path):
    lines = (RECORDINGS / "consumer-break.jsonl").read_text().splitlines()
    end = json.loads(lines[-1])
    lines[-1] = lines[-1].replace(f'"cause":"{end["cause"]}"', '"cause":"a_new_cause"')
    newer = tmp_path / "newer.jsonl"
    newer.write_text("\n".join(lines) + "\n")
    assert CassetteSource(newer).exchanges()[0].end_cause == "a_new_cause"
    tape, _ = import_cassette(newer, tmp_path / "db.db")
    assert Store(tmp_path / "db.db").exchanges()[0].end_cause == "a_new_cause"
    export_tape(tmp_path / "db.db", tape, tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_text() == newer.read_text()


def test_a_cassette_is_utf_8_whatever_the_locale_says(tmp_path: Path):
    """A container with no locale (LC_ALL=C, UTF-8 mode off) makes Python's default encoding ASCII: export and
    import still write and read the cassette as UTF-8, and a non-ASCII answer comes back byte for byte."""
    db = tmp_path / "a.db"
    tape, _ = import_cassette(RECORDINGS / "openai-happy-path.jsonl", db)
    text = "café ✓ — ünïcode".encode()
    Store(db).db.execute("UPDATE chunks SET data = ? WHERE idx = 1", [b'data: {"x": "' + text + b'"}\n\n'])
    Store(db).db.conn.commit()
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    cassette, copy = tmp_path / "t.jsonl", tmp_path / "b.db"
    for args in (["export", tape, "--db", str(db), "-o", str(cassette)], ["import", str(cassette), "--db", str(copy)]):
        run = subprocess.run([sys.executable, "-m", "streamreplay.cli", *args], env=env, capture_output=True)
        assert run.returncode == 0, run.stderr.decode(errors="replace")
    assert text in cassette.read_bytes()  # the text itself, readable in a diff, not escaped
    assert [c.data for c in Store(copy).chunks(1)] == [c.data for c in Store(db).chunks(1)]


async def test_a_recording_exported_has_no_row_id_host_port_or_date_and_numbers_its_exchanges_from_0(
        db_path: Path, tmp_path: Path) -> None:
    """Recorded through the proxy into a DB that already holds another tape (so row ids are not the tape's order),
    the cassette numbers its exchanges 0, 1 and carries no row id, no `Host` (its port) and no `Date`."""
    import_cassette(bundled_dir() / "openai-happy-path.jsonl", db_path)
    await record(db_path, [Script(gap=0.01), Script(gap=0.01)], [chat("one"), chat("two")], tape="two")
    assert [ex.id for ex in Store(db_path).exchanges(tape="two")] == [2, 3]
    cassette = tmp_path / "two.jsonl"
    export_tape(db_path, "two", cassette)
    lines = [json.loads(line) for line in cassette.read_text().splitlines()]
    assert [(line["type"], line["seq"]) for line in lines[1:] if line["type"] != "chunk"] == [
        ("request", 0), ("response", 0), ("end", 0), ("request", 1), ("response", 1), ("end", 1)]
    assert {line["seq"] for line in lines[1:] if line["type"] == "chunk"} == {0, 1}
    assert not any("id" in line or "exchange_id" in line for line in lines)
    headers = {name.lower() for line in lines for name, _ in line.get("headers", [])}
    assert headers and not headers & {"host", "date", "content-length"}, headers


async def test_a_tape_whose_oldest_exchange_was_pruned_exports_each_exchange_with_its_own_chunks_numbered_from_0(
        db_path: Path, tmp_path: Path):
    """After its oldest exchange was pruned a tape's seqs start at 1 in the DB: its cassette numbers them from 0,
    each exchange with its own chunks."""
    await record(db_path, [Script(text="first answer")], [chat("one")], tape="t")
    await record(db_path, [Script(text="second answer"), Script(text="third answer")], [chat("two"), chat("three")],
                 tape="t")
    oldest, second, _ = Store(db_path).exchanges(tape="t")
    # ages count from the second exchange's start: the first alone is older than a millisecond then
    report = prune(db_path, older_than=0.0005, tape="t", now=datetime.fromisoformat(second.started_at))
    assert [p.id for p in report.pruned] == [oldest.id]
    store = Store(db_path)
    kept = store.exchanges(tape="t")
    assert [ex.seq for ex in kept] == [1, 2]
    cassette = tmp_path / "t.jsonl"
    export_tape(db_path, "t", cassette)
    _, exchanges, chunks = read_cassette(cassette)
    assert [ex.seq for ex in exchanges] == [0, 1]
    assert [[c.data for c in chunks[ex.id]] for ex in exchanges] == [
        [c.data for c in store.chunks(ex.id)] for ex in kept]
