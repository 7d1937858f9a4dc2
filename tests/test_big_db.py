"""A DB that grows for weeks: replay looks requests up in the DB (StoreIndex) and answers exactly as the
in-memory index does; `ls` ends with the DB's size and streams; the ui pages its list; import and export
go a row at a time. What these cost at 100,000 exchanges is measured by bench/bigdb.py, not here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamreplay.cli import main
from streamreplay.replay import ReplayServer
from streamreplay.replay.matching import Index, Miss
from streamreplay.replay.storeindex import CLOSEST_SCAN, StoreIndex, use_store_index
from streamreplay.store import Store
from streamreplay.testing import Script
from streamreplay.ui import LIST_LIMIT, index_html
from tests.helpers import chat, post, record, recorded_body, sha


@pytest.fixture
def grown(tmp_path: Path) -> Path:
    """Six recordings: three prompts, the first recorded three times (its answers differ), one a cutoff."""
    db = tmp_path / "grown.db"
    import asyncio

    asyncio.run(record(db, [Script(text=f"answer {k}") for k in range(5)] + [Script(ending="no_done")],
                       [chat("a"), chat("b"), chat("a"), chat("c"), chat("a"), chat("d")]))
    return db


def lookups(index: Index, prompts: list[str]) -> list[object]:
    """What the index answers to each prompt in turn: an exchange id, or the miss's reason."""
    out: list[object] = []
    for prompt in prompts:
        found = index.lookup(index.request("POST", "/chat/completions", json.dumps(chat(prompt)).encode()))
        out.append(found.reason if isinstance(found, Miss) else found.id)
    return out


@pytest.mark.parametrize("repeat", [True, False])
def test_the_db_index_answers_every_request_as_the_in_memory_index(grown: Path, repeat: bool):
    store = Store(grown)
    assert use_store_index(store, "key", (), ("method", "path", "body"))
    in_db, in_memory = StoreIndex(store, "t", repeat), Index(store.exchanges(tape="t"), repeat=repeat)
    prompts = ["a", "b", "a", "a", "a", "zzz", "d", "b", "a"]
    expected = lookups(in_memory, prompts)
    assert lookups(in_db, prompts) == expected
    # the answers are the recorded order of each prompt's recordings, then the last again (or a miss)
    assert expected[:5] == [1, 2, 3, 5, 5 if repeat else expected[4]]
    assert "closest is exchange" in str(expected[5])
    assert [ex.id for ex in in_db.unused()] == [ex.id for ex in in_memory.unused()] == [4]
    assert in_db.count == in_memory.count == 6


def test_a_miss_names_the_closest_recording_from_the_db(grown: Path):
    index = StoreIndex(Store(grown), "t")
    miss = index.lookup(index.request("POST", "/chat/completions", json.dumps(chat("c", temperature=1)).encode()))
    assert isinstance(miss, Miss) and miss.closest.id == 4
    assert "closest is exchange 4" in miss.reason and "temperature" in miss.reason
    assert CLOSEST_SCAN >= 1000  # the scan is bounded, and still wide enough for any real session


def test_play_serves_a_db_from_the_db_byte_exact(grown: Path):
    import asyncio

    async def run() -> tuple[object, list[bytes]]:
        async with ReplayServer(grown, speed=0) as server:
            got = [await post(server.base_url, chat(p)) for p in ("a", "c", "a")]
            return server.index, [body for _, body, _ in got]

    index, bodies = asyncio.run(run())
    assert isinstance(index, StoreIndex) and index.exchanges  # looked up in place, not held
    assert [sha(b) for b in bodies] == [sha(recorded_body(grown, i)) for i in (1, 4, 3)]


def test_rules_the_stored_key_cannot_answer_fall_back_to_the_memory_index(grown: Path):
    assert type(ReplayServer(grown, ignore_fields=("user",)).index) is Index
    assert type(ReplayServer(grown, match="sequence").index) is Index
    assert type(ReplayServer(grown, match_on=("method", "path")).index) is Index
    assert type(ReplayServer(grown).index) is StoreIndex


def test_ls_ends_with_what_it_showed_of_how_much_and_the_db_size(grown: Path):
    out = CliRunner().invoke(main, ["ls", "--db", str(grown), "--limit", "2"]).output.splitlines()
    assert len(out) == 4 and out[-1].startswith("2 of 6 exchanges, 1 tape, DB ") and out[-1].endswith(" KB")
    everything = CliRunner().invoke(main, ["ls", "--db", str(grown)]).output.splitlines()
    assert len(everything) == 8 and everything[-1].startswith("6 exchanges, 1 tape, DB ")
    assert everything[1:7] == [line.rstrip() for line in everything[1:7]]


def test_the_size_ls_gives_counts_the_write_ahead_log_a_recorder_has_not_checkpointed(grown: Path):
    import sqlite3

    writer = sqlite3.connect(grown)  # a recorder's connection: its writes sit in the -wal until a checkpoint
    try:
        writer.execute("pragma wal_autocheckpoint = 0")
        with writer:
            writer.executemany("insert into chunks (exchange_id, idx, t_ns, data) values (1, ?, 0, ?)",
                               [(1000 + k, b"x" * 4000) for k in range(100)])
        wal = Path(f"{grown}-wal")
        assert wal.stat().st_size > 400_000 > grown.stat().st_size
        size = Store(grown).size_bytes()
        assert size == grown.stat().st_size + wal.stat().st_size
        last = CliRunner().invoke(main, ["ls", "--db", str(grown)]).output.splitlines()[-1]
        assert last == f"6 exchanges, 1 tape, DB {size // 1000} KB"
    finally:
        writer.close()


def test_the_ui_list_is_paged_newest_first(grown: Path):
    store = Store(grown)
    row = dict(next(store.db.query("select * from exchanges where id = 1")))
    with store.db.conn:
        for k in range(LIST_LIMIT):
            store.db["exchanges"].insert({**row, "id": None, "seq": 100 + k})
    first, second = index_html(store), index_html(store, page=1)
    last_id = 6 + LIST_LIMIT
    assert f'href="/exchange/{last_id}"' in first and 'href="/exchange/6"' not in first
    assert f"exchanges 1-{LIST_LIMIT} of {last_id}" in first and "older" in first and "newer" not in first
    assert 'href="/exchange/6"' in second and 'href="/exchange/1"' in second
    assert f"exchanges {LIST_LIMIT + 1}-{last_id} of {last_id}" in second and "newer" in second


def test_export_and_import_of_a_tape_keep_every_exchange_and_chunk(grown: Path, tmp_path: Path):
    runner = CliRunner()
    cassette = tmp_path / "t.jsonl"
    assert runner.invoke(main, ["export", "t", "--db", str(grown), "-o", str(cassette)]).exit_code == 0
    again = tmp_path / "again.db"
    result = runner.invoke(main, ["import", str(cassette), "--db", str(again)])
    assert result.exit_code == 0 and "imported 6 exchanges" in result.output
    before, after = Store(grown), Store(again)
    for a, b in zip(before.exchanges(), after.exchanges(), strict=True):
        # a cassette holds a JSON body as JSON (diff-friendly): the same request, not the same bytes
        assert (json.loads(a.request_body), a.end_cause, a.request_key) == \
            (json.loads(b.request_body), b.end_cause, b.request_key)
        assert [c.data for c in before.chunks(a.id)] == [c.data for c in after.chunks(b.id)]
