"""The store's writer thread in-process (store/writer.py): exchanges stored byte-exact in order with their seq,
a row marked not stored whole until its end lands, a taken default tape name getting the next suffix, and
storing that fails said loud, exchange by exchange, while the rest goes on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import streamreplay.prune as prune
import streamreplay.store.writer as writer_module
from streamreplay.exchange import exchange_row
from streamreplay.requestkey import request_key
from streamreplay.store import Store
from streamreplay.store.database import StoreError
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


# -- a full DB, --max-db-size, and what is said and kept when storing fails ------------------------------------------

PAGE = 4096
BIG_CHUNK = b"data: " + b"x" * 20_000 + b"\n\n"


def _wait(condition: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll until `condition()` is true, at most `timeout` seconds: whether it got there."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _complete_exchanges(db: Path, count: int, tape: str = "old") -> list[int]:
    """`count` exchanges that ended complete, a 20 KB chunk each (byte_count as the recorder gives it), recorded
    with no size limit into `tape`: what --max-db-size may prune. Returns their ids, oldest first."""
    writer, _, _ = _writer(db, tape)
    try:
        handles = []
        for _ in range(count):
            handle = writer.begin(dict(REQUEST))
            writer.chunk(handle, 0, 1, BIG_CHUNK)
            writer.end(handle, {"end_cause": "complete", "chunk_count": 1, "byte_count": len(BIG_CHUNK), "status": 200})
            handles.append(handle)
        writer.flush()
    finally:
        writer.close()
    return [h.id for h in handles]


def _limit_with_room(db: Path, room: int) -> int:
    """A --max-db-size that leaves about `room` bytes to grow into (whole pages) past what the DB holds now."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        pages = conn.execute("pragma page_count").fetchone()[0]
    return (pages + room // PAGE) * PAGE


def _ids(db: Path) -> list[int]:
    return [ex.id for ex in Store(db).exchanges()]


@contextlib.contextmanager
def _one_batch(writer: StoreWriter, handle: ExchangeHandle) -> Iterator[None]:
    """Whatever is queued inside the block reaches the writer thread as one batch: meanwhile the thread is held
    in an update of `handle` (its `finish`, which runs on the writer thread, waits for the block to end)."""
    entered, release = threading.Event(), threading.Event()

    def hold(updates: dict) -> dict:
        entered.set()
        release.wait(10)
        return updates

    writer.update(handle, {"status": 200}, finish=hold)
    assert entered.wait(10), "the writer never took the update"
    try:
        yield
    finally:
        release.set()


def test_a_batch_the_db_turns_out_too_full_for_makes_room_under_max_db_size_and_is_stored(tmp_path: Path):
    """SQLITE_FULL under --max-db-size is not a failure while something is prunable: the oldest complete exchanges
    go, said once, and the very batch that found the DB full is stored. (The batch's size was misjudged on purpose:
    an update's bytes are not in the estimate, so pruning ahead did not happen and the write itself hit the limit.)"""
    db = tmp_path / "w.db"
    old = _complete_exchanges(db, 45)
    writer, said, _ = _writer(db, max_bytes=_limit_with_room(db, 32 * 1024))
    try:
        handle = writer.begin(dict(REQUEST))
        writer.flush()
        assert said == [] and _ids(db) == [*old, handle.id]  # room enough so far: nothing pruned
        headers = [["x-big", "h" * 50_000]]
        writer.update(handle, exchange_row(response_headers=headers))  # 50 KB: more than the room left
        writer.flush()
        writer.end(handle, {"end_cause": "complete", "chunk_count": 0, "status": 200})
        writer.flush()
    finally:
        writer.close()
    assert writer.losses == [] and handle.lost is None and writer.failure is None
    assert [line for line in said if "STORING FAILED" in line or "not stored whole" in line] == []
    assert said == [f"streamreplay: DB at its --max-db-size ({prune.format_size(writer.max_bytes)}): "
                    "pruning the oldest complete exchanges"]
    ex = Store(db).exchange(handle.id)
    assert ex.response_headers == headers and ex.store_error is None and ex.end_cause == "complete"
    left = _ids(db)
    assert old[0] not in left and old[-1] in left and handle.id in left  # the oldest went, only as many as needed
    assert len(left) > 40


def test_an_end_that_rewrites_a_big_request_s_row_makes_room_until_it_fits_under_max_db_size(tmp_path: Path):
    """An end rewrites its exchange's whole row, request body included, so it may need far more than its
    estimate: while something is prunable the writer prunes on until the end fits ("fails loud only when
    nothing prunable is left"), rather than pruning nothing because the estimate already fits."""
    db = tmp_path / "w.db"
    old = _complete_exchanges(db, 40)
    writer, said, _ = _writer(db, max_bytes=_limit_with_room(db, 8 * 1024))
    try:
        handle = writer.begin(dict(REQUEST, request_body=json.dumps(chat("p" * 100_000)).encode()))
        writer.flush()
        writer.chunk(handle, 0, 1, BODY[0])
        writer.end(handle, {"end_cause": "complete", "chunk_count": 1, "status": 200})
        writer.flush()
    finally:
        writer.close()
    assert writer.losses == [] and handle.lost is None and writer.failure is None
    assert [line for line in said if "STORING FAILED" in line] == []
    ex = Store(db).exchange(handle.id)
    assert (ex.end_cause, ex.store_error, ex.chunk_count) == ("complete", None, 1)
    left = _ids(db)
    assert old[0] not in left and old[-1] in left  # the oldest went, not all of them


def test_a_full_db_with_nothing_to_prune_loses_the_whole_batch_loud_and_keeps_what_was_stored_before(tmp_path: Path):
    """README "When storing fails": one STORING FAILED line naming every exchange the batch held, a line per exchange
    it ended, `failure` set, and nothing partial presented as whole: the open exchange keeps what was stored before
    and says its end was never stored, the one whose row was rolled back is named by its tape, not by a row id it
    never kept. The chunks that will never come are no longer backlog, so the proxy waits for none of it."""
    db = tmp_path / "w.db"
    writer, said, ended = _writer(db, max_bytes=256 * 1024)
    try:
        first = writer.begin(dict(REQUEST))  # open: never prunable
        writer.chunk(first, 0, 1, BODY[0])
        writer.flush()
        assert said == [] and first.ref == "#1"
        with _one_batch(writer, first):
            writer.end(first, {"end_cause": "complete", "chunk_count": 1, "status": 200})
            second = writer.begin(dict(REQUEST))
            writer.chunk(second, 0, 1, b"data: " + b"y" * 300_000 + b"\n\n")  # more than the whole DB may be
            writer.end(second, {"end_cause": "complete", "chunk_count": 1, "status": 200})
        writer.flush()
        full = "sqlite: database or disk is full"
        assert said == [
            f"streamreplay: STORING FAILED ({full}); exchanges not stored whole: #1, (tape t, no row); "
            "forwarding goes on",
            f"streamreplay: exchange #1 (POST /chat/completions) not stored whole: {full}",
            f"streamreplay: exchange (tape t, no row) (POST /chat/completions) not stored whole: {full}",
        ]
        assert writer.losses == [("#1", f"not stored whole: {full}"), ("(tape t, no row)", f"not stored whole: {full}")]
        assert (first.lost, second.lost, second.id, writer.failure) == (full, full, None, full)
        assert writer.backlog == 0 and ended == []
        # a proxy waiting for room never waits on a writer that is failing (nor, below, on one that is gone)
        asyncio.run(asyncio.wait_for(writer.room(below=-1), 2))
        # failing, but with a backlog far under its bound: a chunk is still taken, not dropped
        writer.chunk(first, 1, 2, BODY[1])
        assert first.dropped == 0
    finally:
        writer.close()
    asyncio.run(asyncio.wait_for(writer.room(below=-1), 2))
    (ex,) = Store(db).exchanges()
    assert ex.id == 1 and ex.store_error == UNFINISHED and ex.end_cause is None
    assert ex.text is None  # its end was rolled back: no summary as if it had ended
    assert [c.data for c in Store(db).chunks(ex.id)][:1] == [BODY[0]]


def test_max_db_size_prunes_ahead_only_when_a_batch_would_leave_less_than_2_percent_of_it_free(tmp_path: Path):
    """README "A DB that grows for weeks": near its --max-db-size the recorder prunes the oldest complete exchanges,
    and not before. With about 6% of the limit free past an exchange nothing goes; with about 1%, old exchanges go
    ahead of the batch (said once), enough to leave several percent free, and the exchange is stored whole."""
    for room, prunes in ((62 * 1024, False), (26 * 1024, True)):
        db = tmp_path / f"room-{room}.db"
        old = _complete_exchanges(db, 45)
        writer, said, _ = _writer(db, max_bytes=_limit_with_room(db, room))
        try:
            handle = _record(writer)
            writer.flush()
        finally:
            writer.close()
        left = _ids(db)
        assert writer.losses == [] and Store(db).exchange(handle.id).store_error is None
        assert [c.data for c in Store(db).chunks(handle.id)] == BODY
        if not prunes:
            assert said == [] and left == [*old, handle.id], room
        else:
            assert said == [f"streamreplay: DB at its --max-db-size ({prune.format_size(writer.max_bytes)}): "
                            "pruning the oldest complete exchanges"], room
            assert old[0] not in left and handle.id in left, room
            with contextlib.closing(sqlite3.connect(db)) as conn:
                conn.execute(f"pragma max_page_count = {writer.max_bytes // PAGE}")
                assert prune.room(conn) >= 0.03 * writer.max_bytes  # pruned to leave a margin, not to the byte


def test_pruning_for_max_db_size_keeps_the_row_of_the_tape_being_recorded_even_when_it_empties_it(tmp_path: Path):
    """The tape's own row stays while it is recorded into (`export --tape`, `ls` name it), even when pruning removed
    every exchange it had; and the tape row keeps the source it was recorded with."""
    db = tmp_path / "w.db"
    (old,) = _complete_exchanges(db, 1, tape="t")
    writer, said, _ = _writer(db, "t", max_bytes=_limit_with_room(db, 8 * 1024))
    try:
        handle = _record(writer)
        writer.flush()
    finally:
        writer.close()
    assert len(said) == 1 and "pruning the oldest complete exchanges" in said[0]
    assert _ids(db) == [handle.id]  # the older exchange of the tape went
    assert [(t["name"], t["source"], t["exchanges"]) for t in Store(db).tapes()] == [("t", "test", 1)]


def test_a_burst_bigger_than_the_room_left_prunes_enough_ahead_for_all_of_it(tmp_path: Path):
    """A batch near --max-db-size makes room for all it holds: a long request body, 1,500 small chunks (each costing
    more than its bytes), and the rows begun and ended with them; counting any of it short would leave the DB full
    for the batch, with nothing more pruned (room for the misjudged size seemed made already). The long exchange
    stays open here: its end would rewrite its row, body and all, which the estimate counts as 8 KB (what a
    batch found too full for does then is the test of an end that rewrites a big request's row)."""
    db = tmp_path / "w.db"
    old = _complete_exchanges(db, 25)
    writer, said, _ = _writer(db, max_bytes=_limit_with_room(db, 8 * 1024))
    try:
        first = writer.begin(dict(REQUEST))
        writer.flush()
        long_prompt = json.dumps(chat("p" * 100_000)).encode()
        with _one_batch(writer, first):
            big = writer.begin(dict(REQUEST, request_body=long_prompt))
            for i in range(1500):
                writer.chunk(big, i, i, b"data: %04d " % i + b"z" * 90 + b"\n\n")
            small = _record(writer, [])
        writer.flush()
    finally:
        writer.close()
    assert writer.losses == [] and writer.failure is None
    assert [line for line in said if "--max-db-size" not in line] == []
    assert Store(db).exchange(small.id).store_error is None
    assert Store(db).exchange(big.id).request_body == long_prompt and len(Store(db).chunks(big.id)) == 1500
    assert old[0] not in _ids(db)


def test_a_prune_that_fails_is_said_once_and_the_batch_that_needed_it_fails_loud(tmp_path: Path):
    """Pruning for --max-db-size can fail too (here the DB refuses deletes from chunks): that is said in one line,
    once, whatever the number of batches that try; each batch that needed the room fails loud as a full DB does,
    and nothing is pruned."""
    db = tmp_path / "w.db"
    old = _complete_exchanges(db, 45)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("create trigger refuse before delete on chunks begin select raise(abort, 'pruning refused'); end")
    writer, said, _ = _writer(db, max_bytes=_limit_with_room(db, 32 * 1024))
    try:
        handles = []
        for _ in range(2):
            handles.append(writer.begin(dict(REQUEST)))
            writer.flush()
            writer.update(handles[-1], exchange_row(response_headers=[["x-big", "h" * 50_000]]))  # past the room left
            writer.flush()
        assert writer.failure == "sqlite: database or disk is full"
    finally:
        writer.close()
    full = "sqlite: database or disk is full"
    assert said == ["streamreplay: could not prune for --max-db-size: sqlite: pruning refused",
                    f"streamreplay: STORING FAILED ({full}); exchanges not stored whole: #{handles[0].id}; "
                    "forwarding goes on"]
    assert [h.lost for h in handles] == [full, full]
    assert _ids(db) == [*old, *(h.id for h in handles)]


def test_under_max_db_size_a_db_error_that_is_not_a_full_db_prunes_nothing(tmp_path: Path):
    """Only SQLITE_FULL makes --max-db-size prune and retry: a DB that fails otherwise (here it has lost a table a
    trigger needs, so every chunk insert fails) fails loud at once, and no recording is pruned to make room it
    never lacked."""
    db = tmp_path / "w.db"
    old = _complete_exchanges(db, 45)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("create table aux (x)")
        conn.execute("create trigger needs_aux before insert on chunks begin insert into aux values (1); end")
        conn.execute("drop table aux")
    writer, said, _ = _writer(db, max_bytes=_limit_with_room(db, 62 * 1024))  # 2% free or more: no pruning ahead
    try:
        handle = _record(writer)
        writer.flush()
    finally:
        writer.close()
    assert [line for line in said if "--max-db-size" in line] == []
    assert said[0].startswith("streamreplay: STORING FAILED (sqlite: no such table: main.aux)")
    assert handle.lost == "sqlite: no such table: main.aux"
    assert [ex.id for ex in Store(db).exchanges(tape="old")] == old


def test_under_max_db_size_an_exchange_that_cannot_be_stored_loses_only_itself(tmp_path: Path):
    """A bad row (here its `finish` fails) is not a full DB: under --max-db-size too it loses only itself, once,
    and the exchanges beside it are stored."""
    db = tmp_path / "w.db"
    writer, said, ended = _writer(db, max_bytes=10 * 1024 * 1024)
    try:
        first = writer.begin(dict(REQUEST))
        writer.flush()
        with _one_batch(writer, first):
            bad = writer.begin(dict(REQUEST), finish=_unreadable)
            good = _record(writer)
            writer.end(bad, {"end_cause": "complete"})
        assert _wait(lambda: len(said) >= 2 and ended)
    finally:
        writer.close()
    assert said[0].startswith("streamreplay: STORING FAILED (ValueError: unreadable body)")
    assert writer.losses == [(bad.ref, "not stored whole: ValueError: unreadable body")]
    assert [row["id"] for row in ended] == [good.id] and _ids(db) == [first.id, good.id]


# -- what a row holds, and the writer thread's own rhythm --------------------------------------------------------------

def test_a_request_row_is_stored_as_its_finish_made_it_with_its_request_key_and_this_recorder_s_pid(tmp_path: Path):
    """README "What never reaches disk" and "A DB that grows for weeks": `finish` (the recorder's redaction) runs on
    the row before anything is stored; the request key `play` looks recordings up by is taken from the stored
    method, path and body (an empty body when there is none), unless the recorder gave one; and the row names this
    process as its recorder, so that prune and a later recorder leave it alone while it runs."""
    db = tmp_path / "w.db"
    writer, said, _ = _writer(db)
    secret = json.dumps(chat("my key is sk-SECRET")).encode()

    def redact(row: dict) -> dict:
        return dict(row, request_body=row["request_body"].replace(b"sk-SECRET", b"[REDACTED]"))

    try:
        redacted = writer.begin({"method": "POST", "path": "/chat/completions", "request_body": secret}, finish=redact)
        bodiless = writer.begin({"method": "GET", "path": "/models"})
        keyed = writer.begin(dict(REQUEST, request_key="given-key"))
        writer.flush()
    finally:
        writer.close()
    assert said == []
    stored = secret.replace(b"sk-SECRET", b"[REDACTED]")
    a, b, c = (Store(db).exchange(h.id) for h in (redacted, bodiless, keyed))
    assert a.request_body == stored and a.request_key == request_key("POST", "/chat/completions", stored)
    assert b.request_body == b"" and b.request_key == request_key("GET", "/models", b"")
    assert c.request_body == REQUEST["request_body"] and c.request_key == "given-key"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert {pid for (pid,) in conn.execute("select recorder_pid from exchanges")} == {os.getpid()}
        # a UTF-8 body is stored as text: readable in any SQLite tool
        assert conn.execute("select typeof(request_body) from exchanges where id = ?", [redacted.id]).fetchone() \
            == ("text",)


def test_a_response_head_update_is_completed_by_its_finish_on_the_writer_thread_and_stored(tmp_path: Path):
    """`update` (the response head) is stored with what its `finish` made of it (the recorder adds the redacted
    headers there, off the event loop), and the exchange's end lands after it."""
    db = tmp_path / "w.db"
    writer, said, _ = _writer(db)

    def head(updates: dict) -> dict:
        return {**updates, **exchange_row(response_headers=[["x-request-id", f"req-{updates['status']}"]])}

    try:
        handle = writer.begin(dict(REQUEST))
        writer.update(handle, {"status": 201, "headers_ns": 5}, finish=head)
        writer.chunk(handle, 0, 1, BODY[0])
        writer.end(handle, {"end_cause": "complete", "chunk_count": 1})
        writer.flush()
    finally:
        writer.close()
    assert said == [] and writer.losses == []
    ex = Store(db).exchange(handle.id)
    assert (ex.status, ex.response_headers, ex.end_cause, ex.store_error) == (201, [["x-request-id", "req-201"]],
                                                                             "complete", None)


def test_an_ended_exchange_is_summarized_while_the_writer_is_idle_without_a_flush(tmp_path: Path):
    """Summaries are what the writer does when idle: an ended exchange gets its text without anyone flushing, and
    the writer goes on taking exchanges afterwards."""
    db = tmp_path / "w.db"
    writer, said, _ = _writer(db)
    try:
        first = _record(writer)
        assert _wait(lambda: Store(db).exchanges() and Store(db).exchange(first.id).text == "Hi")
        assert writer.alive
        second = _record(writer)
        writer.flush()
    finally:
        writer.close()
    assert said == [] and _ids(db) == [first.id, second.id]
    assert Store(db).exchange(second.id).text == "Hi"


def test_exchanges_queued_together_are_committed_together(tmp_path: Path):
    """The writer commits what has queued up in one transaction, not a message at a time (a commit per chunk would
    fall behind any real stream): while the writer applies the last message of a burst, nothing of the burst is
    on disk yet for another connection, and once it is done all of it is."""
    db = tmp_path / "w.db"
    writer, said, _ = _writer(db)
    seen: list[object] = []

    def probe(row: dict) -> dict:  # runs on the writer thread, as the burst's last exchange is applied
        with contextlib.closing(sqlite3.connect(db)) as conn:
            seen.append(conn.execute("select count(*) from exchanges where id > ?", [first.id]).fetchone()[0])
        return row

    try:
        first = writer.begin(dict(REQUEST))
        writer.flush()
        with _one_batch(writer, first):
            earlier = _record(writer)
            last = writer.begin(dict(REQUEST), finish=probe)
            writer.chunk(last, 0, 1, BODY[0])
        writer.flush()
    finally:
        writer.close()
    assert said == [] and seen == [0]
    assert _ids(db) == [first.id, earlier.id, last.id] and [c.data for c in Store(db).chunks(earlier.id)] == BODY
    assert [c.data for c in Store(db).chunks(last.id)] == [BODY[0]]


def test_the_proxy_s_wait_for_room_ends_once_the_writer_has_committed_the_backlog(tmp_path: Path):
    """`room` (the proxy's backpressure) waits while the writer works through a backlog, and returns once it is
    committed."""
    db = tmp_path / "w.db"
    writer, _, _ = _writer(db)

    async def wait_for_room(release: Callable[[], None]) -> int:
        waiting = asyncio.ensure_future(writer.room(below=0))
        await asyncio.sleep(0.02)
        assert not waiting.done()  # a backlog and a writer at work: the proxy waits
        release()
        await asyncio.wait_for(waiting, 5)
        return writer.backlog

    try:
        handle = writer.begin(dict(REQUEST))
        writer.flush()
        with contextlib.ExitStack() as stack:
            stack.enter_context(_one_batch(writer, handle))
            writer.chunk(handle, 0, 1, BODY[0])
            assert writer.backlog == len(BODY[0])
            assert asyncio.run(wait_for_room(stack.close)) == 0
    finally:
        writer.close()
    assert [c.data for c in Store(db).chunks(handle.id)] == [BODY[0]]


# -- starting, stopping, and a row that cannot be stored -----------------------------------------------------------

def test_when_every_suffix_of_a_default_tape_name_is_taken_the_start_fails_in_one_line_naming_it(tmp_path: Path):
    db = tmp_path / "w.db"
    writer, _, _ = _writer(db, "rec")
    writer.close()
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.executemany("insert into tapes (name, created_at, source) values (?, '', '')",
                         [(f"rec-{n}",) for n in range(2, 9_999)])
    last = StoreWriter(db, "rec", unique_tape=True)
    last.start()
    last.close()
    assert last.tape == "rec-9999"  # the last suffix is tried too
    with pytest.raises(StoreError) as caught:
        StoreWriter(db, "rec", unique_tape=True).start()
    assert str(caught.value) == f"no free tape name like rec in {db}"


def test_a_db_that_refuses_the_start_s_writes_fails_the_start_in_one_line_naming_it(tmp_path: Path):
    """A DB that opens but cannot be written (locked, or broken as here: a trigger needs a table it lost) stops
    `record` at once, in one line that names the DB and SQLite's reason."""
    db = tmp_path / "w.db"
    writer, _, _ = _writer(db)
    writer.close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("create table aux (x)")
        conn.execute("create trigger needs_aux before insert on tapes begin insert into aux values (1); end")
        conn.execute("drop table aux")
    with pytest.raises(StoreError) as caught:
        StoreWriter(db, "other").start()
    assert str(caught.value) == f"{db} is locked by another process, or unusable: no such table: main.aux"


def test_a_writer_never_started_closes_quietly(tmp_path: Path):
    """The recorder closes its writer when it stops, also when it could not start (its port was taken): that close
    must not hide why it stopped."""
    writer = StoreWriter(tmp_path / "w.db", "t")
    writer.close()
    writer.flush()
    assert not writer.alive


def test_a_chunk_or_an_end_that_cannot_be_stored_leaves_its_row_with_its_reason_and_is_not_reported_as_ended(
        tmp_path: Path):
    """A message that fails alone (a value SQLite cannot hold) loses only its part: the row keeps its id, so its
    end still lands, saying what it lacks; an end that fails leaves the row unfinished, said once, and `on_end`
    never reports it as ended."""
    db = tmp_path / "w.db"
    writer, said, ended = _writer(db)
    try:
        chunk_lost = writer.begin(dict(REQUEST))
        end_lost = writer.begin(dict(REQUEST))
        writer.flush()
        with _one_batch(writer, chunk_lost):
            writer.chunk(chunk_lost, 0, 2**64, BODY[0])  # no SQLite integer holds it
            writer.end(chunk_lost, {"end_cause": "complete", "chunk_count": 1})
            writer.end(end_lost, {"end_cause": "complete", "duration_ns": 2**64})
        writer.flush()
    finally:
        writer.close()
    why = "OverflowError: Python int too large to convert to SQLite INTEGER"
    a, b = Store(db).exchange(chunk_lost.id), Store(db).exchange(end_lost.id)
    assert (a.end_cause, a.store_error) == ("complete", f"not stored whole: {why}") and Store(db).chunks(a.id) == []
    assert (b.end_cause, b.store_error) == (None, UNFINISHED)
    assert sorted(writer.losses) == [(f"#{a.id}", f"not stored whole: {why}"), (f"#{b.id}", f"not stored whole: {why}")]
    assert [row["id"] for row in ended] == [a.id]
    assert said[0] == f"streamreplay: STORING FAILED ({why}); exchanges not stored whole: #{a.id}; forwarding goes on"


def test_a_bug_of_ours_in_the_writer_is_said_in_one_line_and_the_writer_goes_on(tmp_path: Path):
    """README "When storing fails" counts "a bug of ours" among what the writer says: an error no storing path
    expected (here a request body of a type the recorder never hands over, which the --max-db-size estimate cannot
    measure) is one STORING FAILED line naming what its batch held, and the exchanges after it are stored."""
    db = tmp_path / "w.db"
    writer, said, _ = _writer(db, max_bytes=10 * 1024 * 1024)
    try:
        writer.begin({"method": "POST", "path": "/chat/completions", "request_body": 12345})
        writer.flush()
        assert said == ["streamreplay: STORING FAILED (store writer error: TypeError: object of type 'int' has no "
                        "len()); exchanges not stored whole: (tape t, no row); forwarding goes on"]
        handle = _record(writer)
        writer.flush()
    finally:
        writer.close()
    assert len(said) == 1 and _ids(db) == [handle.id] and writer.failure is None
    assert Store(db).exchange(handle.id).store_error is None


def test_an_exchange_whose_chunk_shared_a_batch_with_a_bug_of_ours_is_reported_not_stored_whole(tmp_path: Path):
    """A batch a bug of ours threw away is not lost silently: an exchange that had a chunk in it is said and
    stored as not stored whole at its end ("nothing partial presented as whole"), and the backlog is freed."""
    db = tmp_path / "w.db"
    writer, said, _ = _writer(db, max_bytes=10 * 1024 * 1024)
    try:
        handle = writer.begin(dict(REQUEST))
        writer.flush()
        with _one_batch(writer, handle):
            writer.chunk(handle, 0, 1, BODY[0])
            writer.begin({"method": "POST", "path": "/chat/completions", "request_body": 12345})
        writer.flush()
        writer.chunk(handle, 1, 2, BODY[1])
        writer.end(handle, {"end_cause": "complete", "chunk_count": 2, "status": 200})
        writer.flush()
        assert writer.backlog == 0
    finally:
        writer.close()
    assert [ref for ref, _ in writer.losses] == [handle.ref] and "store writer error" in handle.lost
    assert said[0].startswith("streamreplay: STORING FAILED (store writer error: TypeError") and handle.ref in said[0]
    assert Store(db).exchange(handle.id).store_error.startswith("not stored whole: store writer error")


def test_a_new_writer_takes_chunks_while_its_first_batch_is_still_being_written(tmp_path: Path, monkeypatch):
    """Chunks are dropped only by a writer that is gone, or failing with its backlog full: a new writer still
    writing its first batch is neither, so a chunk handed over meanwhile is queued and stored, not dropped."""
    db = tmp_path / "w.db"
    writer, said, _ = _writer(db)
    entered, release = threading.Event(), threading.Event()

    def hold(row: dict) -> dict:
        entered.set()
        release.wait(10)
        return row

    try:
        handle = writer.begin(dict(REQUEST), finish=hold)  # the first batch: held on the writer thread
        assert entered.wait(10)
        monkeypatch.setattr(writer_module, "STORE_BACKLOG", -1)  # any backlog at all counts as full
        writer.chunk(handle, 0, 1, BODY[0])
        release.set()
        writer.flush()
    finally:
        release.set()
        writer.close()
    assert said == [] and handle.dropped == 0
    assert [c.data for c in Store(db).chunks(handle.id)] == [BODY[0]]


def test_max_db_size_pruning_is_said_once_even_after_a_batch_found_nothing_to_prune(tmp_path: Path):
    """README: near its --max-db-size the recorder "says so once on stderr": a batch in between that found nothing
    prunable (and failed loud) does not make the next prune say it again."""
    db = tmp_path / "w.db"
    _complete_exchanges(db, 1)
    writer, said, _ = _writer(db, max_bytes=_limit_with_room(db, 8 * 1024))
    try:
        lost = writer.begin(dict(REQUEST))
        writer.flush()  # near the limit: the old exchange goes
        writer.chunk(lost, 0, 1, b"data: " + b"y" * 300_000 + b"\n\n")  # nothing prunable left, and too big
        writer.flush()
        assert lost.lost == "sqlite: database or disk is full"
        _record(writer)
        writer.flush()
        _record(writer, [BIG_CHUNK])  # near the limit again: the exchange just recorded goes
        writer.flush()
    finally:
        writer.close()
    # the old exchange went, and so did the next complete one: the open one and the last are left
    first, last = Store(db).exchanges()
    assert first.id == lost.id and first.tape == "t" and [c.data for c in Store(db).chunks(last.id)] == [BIG_CHUNK]
    assert [line for line in said if "--max-db-size" in line] == [
        f"streamreplay: DB at its --max-db-size ({prune.format_size(writer.max_bytes)}): "
        "pruning the oldest complete exchanges"]


def test_an_end_whose_request_failed_in_an_earlier_batch_is_said_once_as_not_stored_whole(tmp_path: Path):
    """An exchange whose row could not be made is said at its end, even when the end comes in a later batch: one
    line naming it and why, one loss, and `on_end` never reports it as ended."""
    writer, said, ended = _writer(tmp_path / "w.db")
    try:
        bad = writer.begin(dict(REQUEST), finish=_unreadable)
        writer.flush()
        assert len(said) == 1 and said[0].startswith("streamreplay: STORING FAILED (ValueError: unreadable body)")
        writer.end(bad, {"end_cause": "complete"})
        good = _record(writer)
        writer.flush()
    finally:
        writer.close()
    why = "not stored whole: ValueError: unreadable body"
    assert writer.losses == [("(tape t, no row)", why)]
    assert said[1:] == [f"streamreplay: exchange (tape t, no row) (POST /chat/completions) {why}"]
    assert [row["id"] for row in ended] == [good.id]


def test_an_exchange_pruned_before_it_was_reported_is_skipped_without_a_word(tmp_path: Path):
    """A row `streamreplay prune` (another process) removed between its end's commit and its report is not
    reported, and that is no error worth a line."""
    db = tmp_path / "w.db"
    writer, said, ended = _writer(db)
    first, second = writer.begin(dict(REQUEST)), writer.begin(dict(REQUEST))
    writer.flush()

    def report_and_prune_the_next(row: dict) -> None:
        ended.append(row)
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("delete from exchanges where id = ?", [second.id])

    writer.on_end = report_and_prune_the_next
    try:
        with _one_batch(writer, first):  # both ends are reported after one commit: the first's report prunes
            writer.end(first, {"end_cause": "complete"})
            writer.end(second, {"end_cause": "complete"})
        writer.flush()
    finally:
        writer.close()
    assert [row["id"] for row in ended] == [first.id] and said == [] and writer.losses == []
    assert _ids(db) == [first.id]


def test_an_on_end_that_fails_is_said_in_one_line_and_the_exchange_stays_stored(tmp_path: Path):
    """The per-exchange log failing (`on_end` raising) never stops the writer: it is said in one line naming the
    exchange and the error, and the exchange is stored as it ended."""
    db = tmp_path / "w.db"
    writer, said, _ = _writer(db)

    def broken_log(row: dict) -> None:
        raise RuntimeError("log gone")

    writer.on_end = broken_log
    try:
        handle = _record(writer)
        writer.flush()
        second = _record(writer)
        writer.flush()
    finally:
        writer.close()
    assert said == [f"streamreplay: could not report exchange #{h.id}: RuntimeError: log gone"
                    for h in (handle, second)]
    assert [(ex.id, ex.end_cause, ex.store_error) for ex in Store(db).exchanges()] == [
        (handle.id, "complete", None), (second.id, "complete", None)]


def test_an_on_failure_that_fails_never_stops_the_writer(tmp_path: Path):
    """A failure line that cannot be said (`on_failure` raising: stderr gone) is dropped: the writer goes on, and
    the exchanges after the failure are stored."""
    db = tmp_path / "w.db"
    writer = StoreWriter(db, "t", "test")

    def broken_stderr(line: str) -> None:
        raise OSError("stderr gone")

    writer.on_failure = broken_stderr
    writer.start()
    try:
        bad = writer.begin(dict(REQUEST), finish=_unreadable)
        writer.end(bad, {"end_cause": "complete"})
        writer.flush()
        good = _record(writer)
        writer.flush()
        assert writer.alive
    finally:
        writer.close()
    assert _ids(db) == [good.id] and [ref for ref, _ in writer.losses] == [bad.ref]


def test_a_summary_that_cannot_be_stored_is_said_in_one_line_and_the_exchange_stays_stored_whole(tmp_path: Path):
    """A summary the DB has no room for under --max-db-size (a big answer's text, written after its chunks) is said
    in one line naming the exchange and why; the exchange itself is stored whole, without its summary."""
    db = tmp_path / "w.db"
    writer, said, _ = _writer(db, max_bytes=1536 * 1024)
    answer = chat_chunk({"content": "x" * 900_000})
    try:
        handle = _record(writer, [answer])
        writer.flush()
    finally:
        writer.close()
    assert said == [f"streamreplay: no summary for exchange #{handle.id}: sqlite: database or disk is full"]
    ex = Store(db).exchange(handle.id)
    assert (ex.end_cause, ex.store_error, ex.text) == ("complete", None, None)
    assert [c.data for c in Store(db).chunks(handle.id)] == [answer] and writer.losses == []


def test_an_open_exchange_names_its_recorder_so_another_process_leaves_it_open(tmp_path: Path):
    """A row the writer opens carries the recording process's pid: a command run in another process while the
    stream is in flight (`ls`, `prune`, another recorder) leaves it open instead of marking it interrupted."""
    db = tmp_path / "w.db"
    writer, said, _ = _writer(db)
    try:
        handle = _record(writer, end=False)
        writer.flush()
        assert Store(db).db.conn.execute("select recorder_pid from exchanges").fetchall() == [(os.getpid(),)]
        elsewhere = subprocess.run(
            [sys.executable, "-c", "import sys; from streamreplay.store import Store; "
             "from streamreplay.store.maintenance import mark_interrupted; "
             "print(mark_interrupted(Store(sys.argv[1]).db.conn))", str(db)],
            capture_output=True, text=True, timeout=60, check=True)
        assert elsewhere.stdout == "[]\n"
        assert Store(db).exchanges()[0].end_cause is None
        writer.end(handle, {"end_cause": "complete", "chunk_count": len(BODY), "status": 200})
    finally:
        writer.close()
    assert said == []


# the writer thread is made to die: that it ends by an exception is the case under test
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_writer_that_died_with_chunks_uncommitted_holds_no_stream_waiting_for_room(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`room()`, which the proxy awaits past the backlog bound, returns at once once the writer thread is gone,
    however many bytes it left uncommitted and though no failure was said."""
    holding = threading.Event()

    def die_after_the_backlog_built_up(self: StoreWriter, conn: sqlite3.Connection, messages: list) -> list:
        holding.wait(5)
        raise SystemExit("the writer thread dies")

    monkeypatch.setattr(StoreWriter, "_write", die_after_the_backlog_built_up)
    writer, _, _ = _writer(tmp_path / "w.db")
    try:
        _record(writer, [b"x" * 1_000] * 3, end=False)
        holding.set()
        deadline = time.monotonic() + 5
        while writer.alive and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not writer.alive and writer.failure is None and writer.backlog == 3_000
        await asyncio.wait_for(writer.room(below=0), 5)
    finally:
        writer.close()
