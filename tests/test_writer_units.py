"""The store's writer thread in-process (store/writer.py): exchanges stored byte-exact in order with their seq,
a row marked not stored whole until its end lands, a taken default tape name getting the next suffix, and
storing that fails said loud, exchange by exchange, while the rest goes on."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

import streamreplay.store.writer as writer_module
from streamreplay.store import Store
from streamreplay.store.writer import UNFINISHED, ExchangeHandle, StoreWriter, describe_failure
from tests.helpers import chat, chat_chunk

REQUEST = {"method": "POST", "path": "/chat/completions", "request_body": json.dumps(chat("a")).encode()}
BODY = [chat_chunk({"content": "Hi"}), chat_chunk({}, finish="stop"), b"data: [DONE]\n\n"]


def _writer(db: Path, tape: str = "t", **kw: object) -> tuple[StoreWriter, list[str], list[dict]]:
    writer = StoreWriter(db, tape, "test", **kw)
    said: list[str] = []
    ended: list[dict] = []
    writer.on_failure, writer.on_end = said.append, ended.append
    writer.start()
    return writer, said, ended


def _record(writer: StoreWriter, body: list[bytes] = BODY, end: bool = True) -> ExchangeHandle:
    handle = writer.begin(dict(REQUEST))
    for i, data in enumerate(body):
        writer.chunk(handle, i, (i + 1) * 1_000, data)
    if end:
        writer.end(handle, {"end_cause": "complete", "chunk_count": len(body), "status": 200})
    return handle


def test_exchanges_are_stored_byte_exact_numbered_in_order_and_summarized(tmp_path: Path):
    db = tmp_path / "w.db"
    writer, said, ended = _writer(db)
    try:
        first, second = _record(writer), _record(writer, [b"data: x\n\n"])
        writer.flush()
    finally:
        writer.close()
    assert said == [] and writer.losses == []
    store = Store(db)
    a, b = store.exchanges()
    assert (a.tape, a.seq, b.seq) == ("t", 0, 1) and (first.id, second.id) == (a.id, b.id)
    assert (first.seq, second.seq, first.ref) == (0, 1, f"#{a.id}")
    assert [c.data for c in store.chunks(a.id)] == BODY
    assert [(c.index, c.t_ns) for c in store.chunks(a.id)] == [(0, 1_000), (1, 2_000), (2, 3_000)]
    assert a.store_error is None and a.end_cause == "complete"
    assert a.text == "Hi" and a.finish_reason == "stop"  # the summary is in by the flush
    assert a.request_key  # derived from the request when the recorder gives none
    assert [row["id"] for row in ended] == [a.id, b.id]
    assert writer.backlog == 0


def test_a_row_whose_end_never_landed_says_it_is_not_stored_whole(tmp_path: Path):
    db = tmp_path / "w.db"
    writer, _, ended = _writer(db)
    try:
        _record(writer, end=False)
        writer.flush()
    finally:
        writer.close()
    (ex,) = Store(db).exchanges()
    assert ex.store_error == UNFINISHED and ex.end_cause is None
    assert [c.data for c in Store(db).chunks(ex.id)] == BODY  # what arrived is on disk
    assert ended == []


def test_a_taken_default_tape_name_gets_the_next_free_suffix_and_a_named_tape_is_shared(tmp_path: Path):
    db = tmp_path / "w.db"
    names = []
    for unique in (False, True, True, False):
        writer, _, _ = _writer(db, "rec", unique_tape=unique)
        names.append(writer.tape)
        _record(writer)
        writer.flush()
        writer.close()
    assert names == ["rec", "rec-2", "rec-3", "rec"]
    tapes = {ex.tape: [] for ex in Store(db).exchanges()}
    for ex in Store(db).exchanges():
        tapes[ex.tape].append(ex.seq)
    assert tapes == {"rec": [0, 1], "rec-2": [0], "rec-3": [0]}


def test_a_writer_that_stopped_drops_chunks_and_says_each_exchange_it_could_not_end(tmp_path: Path):
    writer, said, _ = _writer(tmp_path / "w.db")
    handle = writer.begin(dict(REQUEST))
    writer.flush()
    writer.close()
    assert not writer.alive
    writer.chunk(handle, 0, 1, b"data: lost\n\n")
    writer.chunk(handle, 1, 2, b"data: lost\n\n")
    assert handle.dropped == 2 and writer.backlog == 0
    writer.end(handle, {"end_cause": "complete"})
    why = "not stored whole: the store's writer had stopped; 2 chunks were forwarded but not stored"
    assert writer.losses == [(handle.ref, why)]
    assert said == [f"streamreplay: exchange {handle.ref} (POST /chat/completions) {why}"]


def _unreadable(row: dict) -> dict:
    raise ValueError("unreadable body")


def test_an_exchange_that_cannot_be_stored_loses_only_itself_and_is_said(tmp_path: Path):
    db = tmp_path / "w.db"
    writer, said, ended = _writer(db)
    try:
        bad = writer.begin(dict(REQUEST), finish=_unreadable)  # this row cannot be made
        writer.chunk(bad, 0, 1, b"data: a\n\n")
        good = _record(writer)
        writer.end(bad, {"end_cause": "complete"})
        writer.flush()
    finally:
        writer.close()
    (ex,) = Store(db).exchanges()
    assert ex.id == good.id and ex.store_error is None and [c.data for c in Store(db).chunks(ex.id)] == BODY
    assert bad.id is None and bad.lost == "ValueError: unreadable body"
    assert [ref for ref, _ in writer.losses] == [bad.ref] and bad.ref == "(tape t, no row)"
    assert said[0].startswith(f"streamreplay: STORING FAILED ({bad.lost}); exchanges not stored whole: {bad.ref}")
    assert said[0].endswith("; forwarding goes on")
    assert any(line.startswith(f"streamreplay: exchange {bad.ref} (POST /chat/completions) not stored whole: ")
               for line in said[1:])
    assert [row["id"] for row in ended] == [good.id]
    assert writer.failure is None  # the next batch worked: storing works again


def test_an_unusable_db_fails_the_start_in_one_line(tmp_path: Path):
    bad = tmp_path / "not-a.db"
    bad.write_bytes(b"this is not an SQLite database, not at all" * 100)
    writer = StoreWriter(bad, "t")
    with pytest.raises(Exception) as caught:
        writer.start()
    assert str(bad) in str(caught.value)


def test_a_failure_is_one_line_naming_sqlite_or_the_error_type():
    assert describe_failure(sqlite3.OperationalError("database or disk is full")) == "sqlite: database or disk is full"
    assert describe_failure(ValueError("bad row")) == "ValueError: bad row"
    h = ExchangeHandle("t", "POST /x")
    assert h.ref == "(tape t, no row)"
    h.seq = 4
    assert h.ref == "t:4"
    h.id = 9
    assert h.ref == "#9"


def test_a_seq_is_never_reused_after_older_exchanges_were_pruned(tmp_path: Path):
    """seq is one past the tape's highest, not its row count: a prune that removed the oldest never makes two
    exchanges of a tape share a seq (`TAPE:SEQ` names one exchange)."""
    db = tmp_path / "w.db"
    writer, _, _ = _writer(db)
    try:
        _record(writer), _record(writer)
        writer.flush()
        with sqlite3.connect(db) as conn:  # as prune removes the oldest exchange
            oldest = conn.execute("select min(id) from exchanges").fetchone()[0]
            conn.execute("delete from chunks where exchange_id = ?", [oldest])
            conn.execute("delete from exchanges where id = ?", [oldest])
        third = _record(writer)
        writer.flush()
    finally:
        writer.close()
    assert third.seq == 2
    assert [ex.seq for ex in Store(db).exchanges()] == [1, 2]


def test_chunks_dropped_while_storing_failed_leave_the_exchange_not_stored_whole(tmp_path: Path, monkeypatch):
    db = tmp_path / "w.db"
    writer, said, _ = _writer(db)
    try:
        handle = writer.begin(dict(REQUEST))
        writer.chunk(handle, 0, 1, BODY[0])
        writer.flush()
        writer.failure = "sqlite: database or disk is full"  # failing, with a backlog past the bound
        monkeypatch.setattr(writer_module, "STORE_BACKLOG", -1)
        writer.chunk(handle, 1, 2, BODY[1])
        assert handle.dropped == 1
        writer.failure = None  # storing works again
        writer.end(handle, {"end_cause": "complete"})
        writer.flush()
    finally:
        writer.close()
    (ex,) = Store(db).exchanges()
    assert ex.store_error == "not stored whole: 1 chunks were forwarded but not stored"
    assert writer.losses == [(handle.ref, ex.store_error)]
    assert said == [f"streamreplay: exchange {handle.ref} (POST /chat/completions) {ex.store_error}"]


def test_under_a_max_db_size_the_oldest_complete_exchanges_are_pruned_said_once_and_nothing_is_lost(tmp_path: Path):
    db = tmp_path / "w.db"
    writer, said, _ = _writer(db, max_bytes=400 * 1024)
    try:
        handles = [_record(writer, [b"data: " + b"x" * 30_000 + b"\n\n"])]
        kept_open = writer.begin(dict(REQUEST))  # open all along: never pruned
        writer.chunk(kept_open, 0, 1, b"data: open\n\n")
        for _ in range(30):
            handles.append(_record(writer, [b"data: " + b"x" * 30_000 + b"\n\n", b"data: [DONE]\n\n"]))
            writer.flush()
    finally:
        writer.close()
    assert writer.losses == [] and all(h.lost is None for h in handles)
    left = Store(db).exchanges()
    ids = [ex.id for ex in left]
    assert kept_open.id in ids and handles[-1].id in ids
    assert handles[0].id not in ids  # the oldest complete ones made room
    assert len(left) < 32
    pruning = [line for line in said if "--max-db-size" in line]
    assert pruning == ["streamreplay: DB at its --max-db-size (409.6 KB): pruning the oldest complete exchanges"]
    assert db.stat().st_size <= 400 * 1024
