"""The one definition of an exchange: rows, columns and cassette lines all derive from `Exchange`."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamreplay.cassette import cassette_lines, read_cassette
from streamreplay.endcause import EndCause
from streamreplay.exchange import (
    BOOKKEEPING,
    EXCHANGE_COLUMNS,
    Chunk,
    Exchange,
    cassette_fields,
    exchange_row,
)
from streamreplay.store import SCHEMA_VERSION, Store

#: the table as every DB so far was created with it: a new field may add a column, never move or change one
SCHEMA_2 = [
    ("id", "INTEGER"), ("tape", "TEXT"), ("seq", "INTEGER"), ("started_at", "TEXT"), ("method", "TEXT"),
    ("path", "TEXT"), ("query", "TEXT"), ("request_headers", "TEXT"), ("request_body", "TEXT"),
    ("request_key", "TEXT"), ("stream", "INTEGER"), ("model", "TEXT"), ("client", "TEXT"), ("upstream", "TEXT"),
    ("status", "INTEGER"), ("response_headers", "TEXT"), ("headers_ns", "INTEGER"), ("ttfb_ns", "INTEGER"),
    ("duration_ns", "INTEGER"), ("chunk_count", "INTEGER"), ("byte_count", "INTEGER"), ("end_cause", "TEXT"),
    ("end_detail", "TEXT"), ("upstream_end", "TEXT"), ("client_left_at_chunk", "INTEGER"),
    ("client_left_ns", "INTEGER"), ("done", "INTEGER"), ("finish_reason", "TEXT"), ("text", "TEXT"),
    ("tool_calls", "TEXT"), ("usage", "TEXT"), ("problems", "TEXT"), ("recorder_pid", "INTEGER"),
    ("store_error", "TEXT"),
]

#: the cassette format is a contract: these keys, per line type, whatever the fields are called
CASSETTE_KEYS = {
    "request": {"type", "seq", "method", "path", "query", "headers", "body", "started_at"},
    "response": {"type", "seq", "status", "headers", "headers_ns"},
    "end": {"type", "seq", "cause", "upstream_end", "detail", "client_left_at_chunk", "client_left_ns", "ttfb_ns",
            "duration_ns", "done", "text", "finish_reason", "store_error"},
}


def full_exchange(**changes: object) -> Exchange:
    """An exchange with every field set to something other than its default."""
    ex = Exchange(
        id=7, tape="t", seq=3, method="POST", path="/chat/completions", query="a=1",
        request_headers=[["User-Agent", "ua/1"], ["X-Odd", "é"]], request_body=b"\xff\xfe not UTF-8",
        request_key="POST /chat/completions abc", stream=True, model="m", client="ua/1", upstream="http://u",
        started_at="2026-01-01T00:00:00.000+00:00", status=200, response_headers=[["Content-Type", "text/plain"]],
        headers_ns=1, ttfb_ns=2, duration_ns=3, chunk_count=4, byte_count=5, end_cause=EndCause.CLIENT_LEFT,
        end_detail="left", upstream_end=EndCause.COMPLETE, client_left_at_chunk=2, client_left_ns=6, done=True,
        finish_reason="stop", text="hi", tool_calls=[{"id": "c1", "function": {"name": "f"}}],
        usage={"total_tokens": 9}, problems=["odd"], store_error="not stored whole: x",
    )
    return dataclasses.replace(ex, **changes)


def test_every_field_has_a_column_and_the_table_is_unchanged():
    names = [f.name for f in dataclasses.fields(Exchange)]
    assert set(EXCHANGE_COLUMNS) == set(names) | set(BOOKKEEPING)
    store = Store(":memory:")
    table = [(row[1], row[2]) for row in store.db.execute("pragma table_info(exchanges)")]
    assert table == SCHEMA_2
    assert [(name, {int: "INTEGER", str: "TEXT"}[kind]) for name, kind in EXCHANGE_COLUMNS.items()] == SCHEMA_2


def test_a_row_round_trips_through_the_db():
    ex = full_exchange()
    store = Store(":memory:")
    store.db["exchanges"].insert(ex.to_row())
    again = store.exchange(7)
    assert again == ex
    assert type(again.end_cause) is EndCause and type(again.upstream_end) is EndCause
    raw = store.db.execute("select request_body, end_cause, done, usage from exchanges").fetchone()
    assert raw == (b"\xff\xfe not UTF-8", "client_left", 1, '{"total_tokens": 9}')  # a blob when not UTF-8
    store.db["exchanges"].insert(full_exchange(id=8, request_body=b'{"a": 1}').to_row())
    assert store.db.execute("select typeof(request_body) from exchanges where id = 8").fetchone() == ("text",)


def test_empty_columns_read_as_the_fields_defaults():
    row = {name: None for name in EXCHANGE_COLUMNS} | {"id": 1, "tape": "t", "method": "GET", "path": "/"}
    ex = Exchange.from_row(row)
    assert ex == Exchange(id=1, tape="t", seq=0, method="GET", path="/")
    assert Exchange.from_row({"id": 1, "tape": "t", "seq": 0, "method": "GET", "path": "/"}) == ex  # an older row


def test_an_end_cause_this_version_does_not_know_is_kept():
    ex = Exchange.from_row(full_exchange(end_cause="from_the_future").to_row())  # type: ignore[arg-type]
    assert ex.end_cause == "from_the_future" and ex.to_row()["end_cause"] == "from_the_future"


texts = st.text(max_size=8)
maybe = st.none() | st.integers(0, 10**12)
headers = st.lists(st.lists(texts, min_size=2, max_size=2), max_size=3)
causes = st.none() | st.sampled_from(list(EndCause))


@settings(max_examples=60, deadline=None)
@given(st.builds(
    Exchange, id=st.integers(1, 10**6), tape=texts, seq=st.integers(0, 99), method=texts, path=texts, query=texts,
    request_headers=headers, request_body=st.binary(max_size=20), request_key=texts, stream=st.booleans(),
    model=st.none() | texts, status=maybe, response_headers=headers, headers_ns=maybe, chunk_count=st.integers(0, 9),
    end_cause=causes, upstream_end=causes, done=st.booleans(), text=st.none() | texts,
    tool_calls=st.lists(st.dictionaries(texts, texts), max_size=2), usage=st.none() | st.dictionaries(texts, maybe),
    problems=st.lists(texts, max_size=2), store_error=st.none() | texts,
))
def test_any_exchange_round_trips_as_a_row(ex: Exchange):
    assert Exchange.from_row(ex.to_row()) == ex


def write_cassette(exchanges: list[Exchange], chunks: dict[int, list[Chunk]], folder: Path,
                   name: str = "c.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(line + "\n" for line in cassette_lines("c", exchanges, lambda e: chunks[e.id])))
    return path


def test_a_cassette_line_round_trip_keeps_every_field_it_carries(tmp_path: Path):
    ex = full_exchange(id=1, seq=0, request_headers=[["Host", "x:1"], ["User-Agent", "ua/1"]],
                       response_headers=[["Date", "today"], ["Content-Type", "text/plain"]])
    chunks = {1: [Chunk(0, 10, b"data: hi\n\n"), Chunk(1, 20, b"\xff")]}
    path = write_cassette([ex], chunks, tmp_path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines[1:]:
        if line["type"] in CASSETTE_KEYS:
            assert set(line) == CASSETTE_KEYS[line["type"]], line["type"]
        else:
            assert set(line) in ({"type", "seq", "i", "t_ns", "text"}, {"type", "seq", "i", "t_ns", "b64"})
    assert lines[-1]["cause"] == "client_left" and lines[-1]["detail"] == "left"

    _, (again,), read_chunks = read_cassette(path)
    assert read_chunks[1] == chunks[1]
    for kind in CASSETTE_KEYS:
        for f, _ in cassette_fields(kind):
            expected = getattr(ex, f.name)
            if f.name == "request_headers":
                expected = [["User-Agent", "ua/1"]]  # the Host header is volatile: never written
            elif f.name == "response_headers":
                expected = [["Content-Type", "text/plain"]]  # so is Date
            assert getattr(again, f.name) == expected, f.name
    assert type(again.end_cause) is EndCause
    # what a cassette does not carry is derived again
    assert (again.client, again.chunk_count, again.byte_count) == ("ua/1", 2, len(b"data: hi\n\n\xff"))


def test_unset_optional_keys_are_left_out_of_a_cassette(tmp_path: Path):
    ex = Exchange(id=1, tape="t", seq=0, method="GET", path="/")
    line = json.loads(write_cassette([ex], {1: []}, tmp_path).read_text().splitlines()[1])
    assert "started_at" not in line
    end = json.loads((tmp_path / "c.jsonl").read_text().splitlines()[-1])
    assert "store_error" not in end and end["cause"] is None


@settings(max_examples=40, deadline=None)
@given(method=texts, path=texts, query=texts, body=st.binary(max_size=30), status=maybe, cause=causes,
       upstream_end=causes, done=st.booleans(), text=st.none() | texts, store_error=st.none() | texts)
def test_writing_what_was_read_gives_the_same_cassette(method, path, query, body, status, cause, upstream_end,
                                                       done, text, store_error):
    ex = Exchange(id=1, tape="c", seq=0, method=method, path=path, query=query, request_body=body, status=status,
                  end_cause=cause, upstream_end=upstream_end, done=done, text=text, store_error=store_error)
    with tempfile.TemporaryDirectory() as folder:
        first = write_cassette([ex], {1: [Chunk(0, 5, body)]}, Path(folder))
        text_once = first.read_text()
        _, exchanges, chunks = read_cassette(first)
        again = write_cassette(exchanges, chunks, Path(folder), "again.jsonl")
        assert again.read_text() == text_once


def test_exchange_row_checks_names_and_encodes_model_values():
    row = exchange_row(end_cause=EndCause.COMPLETE, upstream_end=None, done=True, stream=False,
                       request_headers=[["a", "b"]], request_body=b"\xff", recorder_pid=5)
    assert row == {"end_cause": "complete", "upstream_end": None, "done": 1, "stream": 0,
                   "request_headers": '[["a", "b"]]', "request_body": b"\xff", "recorder_pid": 5}
    assert type(row["end_cause"]) is str
    with pytest.raises(TypeError, match="not a column of exchanges: end_reason"):
        exchange_row(end_reason="complete")


def test_migration_adds_the_columns_an_older_db_lacks(tmp_path: Path):
    db = tmp_path / "old.db"
    older = [(name, kind) for name, kind in SCHEMA_2 if name not in ("upstream_end", "store_error", "request_key")]
    conn = sqlite3.connect(db)
    conn.execute(f"create table exchanges ({', '.join(f'{n} {k}' for n, k in older)}, primary key (id))")
    conn.execute("create table tapes (name text primary key, created_at text, source text)")
    conn.execute("create table chunks (exchange_id integer, idx integer, t_ns integer, data blob, "
                 "primary key (exchange_id, idx))")
    conn.execute("insert into exchanges (id, tape, seq, method, path, end_cause, done) "
                 "values (1, 't', 0, 'POST', '/x', 'complete', 1)")
    conn.execute("pragma user_version = 1")
    conn.commit()
    conn.close()

    store = Store(db)
    columns = {row[1]: row[2] for row in store.db.execute("pragma table_info(exchanges)")}
    assert columns == dict(SCHEMA_2)
    assert store.db.execute("pragma user_version").fetchone()[0] == SCHEMA_VERSION
    ex = store.exchange(1)
    assert (ex.end_cause, ex.done, ex.upstream_end, ex.store_error, ex.request_key) == (
        EndCause.COMPLETE, True, None, None, "")
