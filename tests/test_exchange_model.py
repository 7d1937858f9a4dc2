"""The one definition of an exchange: rows, columns and cassette lines all derive from `Exchange`."""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamreplay.cassette import cassette_lines, read_cassette
from streamreplay.endcause import EndCause
from streamreplay.exchange import (
    BOOKKEEPING,
    EXCHANGE_COLUMNS,
    PLAIN,
    Chunk,
    Column,
    Exchange,
    _columns,
    _decoder,
    _encoder,
    body_for_db,
    cassette_fields,
    column,
    default,
    end_cause,
    exchange_row,
    field_type,
    json_text,
    now_iso,
    optional,
    readable,
    spec,
    storable,
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


# -- the derivations, made again at test time: the module builds its tables once, at import ------------------

FIELDS = {f.name: f for f in dataclasses.fields(Exchange)}

#: full_exchange() as the exchanges table stores it: JSON as text, bools as ints, causes as their strings, a body
#: that is not UTF-8 as bytes (a blob)
FULL_ROW = {
    "id": 7, "tape": "t", "seq": 3, "method": "POST", "path": "/chat/completions", "query": "a=1",
    "request_headers": '[["User-Agent", "ua/1"], ["X-Odd", "\\u00e9"]]', "request_body": b"\xff\xfe not UTF-8",
    "request_key": "POST /chat/completions abc", "stream": 1, "model": "m", "client": "ua/1", "upstream": "http://u",
    "started_at": "2026-01-01T00:00:00.000+00:00", "status": 200,
    "response_headers": '[["Content-Type", "text/plain"]]',
    "headers_ns": 1, "ttfb_ns": 2, "duration_ns": 3, "chunk_count": 4, "byte_count": 5, "end_cause": "client_left",
    "end_detail": "left", "upstream_end": "complete", "client_left_at_chunk": 2, "client_left_ns": 6, "done": 1,
    "finish_reason": "stop", "text": "hi", "tool_calls": '[{"id": "c1", "function": {"name": "f"}}]',
    "usage": '{"total_tokens": 9}', "problems": '["odd"]', "store_error": "not stored whole: x",
}


def typed(row: dict[str, object]) -> list[tuple[str, object, type]]:
    """A row with each value's type: True == 1 in Python, but the column must get the int."""
    return [(k, v, type(v)) for k, v in row.items()]


def test_each_field_is_encoded_as_its_column_stores_it():
    ex = full_exchange()
    assert typed({name: _encoder(f)(getattr(ex, name)) for name, f in FIELDS.items()}) == typed(FULL_ROW)
    assert typed(ex.to_row()) == typed(FULL_ROW)
    assert _encoder(FIELDS["request_body"])(b'{"a": "\xc3\xa9"}') == '{"a": "\u00e9"}'  # UTF-8: stored as text


def test_an_unset_value_is_stored_null_and_an_unknown_cause_as_its_string():
    for name in ("request_headers", "usage", "stream", "done", "request_body", "end_cause", "upstream_end", "model"):
        assert _encoder(FIELDS[name])(None) is None, name
    assert _encoder(FIELDS["end_cause"])("from_the_future") == "from_the_future"
    assert typed({"done": _encoder(FIELDS["done"])(False)}) == [("done", 0, int)]


def decoded(name: str, value: object) -> object:
    decode = _decoder(FIELDS[name])
    return value if decode is None else decode(value)


@pytest.mark.parametrize(("name", "stored", "value"), [
    # a field that may be None keeps what the column holds, empty or not
    ("model", None, None), ("model", "", ""), ("status", 0, 0), ("text", "hi", "hi"), ("usage", None, None),
    # a field that cannot be None reads an empty column (NULL, 0, '') as its default
    ("id", None, 0), ("seq", None, 0), ("seq", 5, 5), ("method", None, ""), ("query", None, ""),
    ("chunk_count", None, 0), ("request_key", "", ""),
    ("stream", 1, True), ("stream", None, False), ("done", 0, False),
    ("request_body", "\u00e9", b"\xc3\xa9"), ("request_body", b"\xff", b"\xff"), ("request_body", None, b""),
    ("request_headers", '[["a", "b"]]', [["a", "b"]]), ("request_headers", None, []), ("request_headers", "", []),
    ("usage", '{"a": 1}', {"a": 1}), ("usage", "", None), ("problems", '["x"]', ["x"]), ("tool_calls", None, []),
    ("end_cause", "complete", EndCause.COMPLETE), ("end_cause", None, None),
    ("upstream_end", "from_the_future", "from_the_future"),
])
def test_each_column_is_decoded_to_its_fields_value(name: str, stored: object, value: object):
    got = decoded(name, stored)
    assert (got, type(got)) == (value, type(value))


def test_a_column_that_may_hold_the_fields_value_as_is_has_no_decoder():
    """`_decoder` says "the same" with None, so `from_row` leaves those columns alone."""
    assert [name for name, f in FIELDS.items() if _decoder(f) is None] == [
        "model", "client", "upstream", "started_at", "status", "headers_ns", "ttfb_ns", "duration_ns", "end_detail",
        "client_left_at_chunk", "client_left_ns", "finish_reason", "text", "store_error"]


def test_a_default_list_is_a_new_list_each_time():
    decode = _decoder(FIELDS["problems"])
    assert decode is not None
    first, second = decode(None), decode(None)
    assert first == second == [] and first is not second
    assert default(FIELDS["problems"]) == [] and default(FIELDS["problems"]) is not default(FIELDS["problems"])


def test_a_row_without_a_required_column_is_refused():
    row = full_exchange().to_row()
    del row["method"]
    with pytest.raises(KeyError, match="method"):
        Exchange.from_row(row)


def test_the_columns_are_made_from_the_fields_in_the_order_dbs_were_created_with():
    assert [(name, {int: "INTEGER", str: "TEXT"}[kind]) for name, kind in _columns().items()] == SCHEMA_2
    assert _columns() == EXCHANGE_COLUMNS


def test_a_fields_type_is_its_class_without_none_or_parameters():
    types = {name: field_type(f) for name, f in FIELDS.items()}
    assert (types["request_headers"], types["usage"], types["model"], types["status"], types["end_cause"],
            types["request_body"], types["done"], types["seq"]) == (list, dict, str, int, EndCause, bytes, bool, int)
    assert [name for name, f in FIELDS.items() if optional(f)] == [
        "model", "client", "upstream", "started_at", "status", "headers_ns", "ttfb_ns", "duration_ns", "end_cause",
        "end_detail", "upstream_end", "client_left_at_chunk", "client_left_ns", "finish_reason", "text", "usage",
        "store_error"]
    assert [default(FIELDS[n]) for n in ("id", "tape", "query", "stream", "status", "usage")] == [0, "", "", False,
                                                                                                  None, None]


def test_a_columns_spec_is_the_fields_metadata_else_a_plain_column():
    assert spec(FIELDS["end_cause"]) == Column(cassette="end", key="cause", required=True)
    assert spec(FIELDS["request_headers"]) == Column(json=True, cassette="request", key="headers")
    assert spec(FIELDS["started_at"]) == Column(after="seq", cassette="request", when_set=True)
    assert spec(FIELDS["stream"]) is PLAIN and Column() == PLAIN
    made = column("x", cassette="request", key="k")
    assert (made.default, made.default_factory, made.metadata["column"]) == \
        ("x", dataclasses.MISSING, Column(cassette="request", key="k"))
    listed = column(default_factory=list, json=True)
    assert (listed.default, listed.default_factory, listed.metadata["column"]) == \
        (dataclasses.MISSING, list, Column(json=True))


def test_exchange_row_leaves_bytes_for_the_writer_and_names_every_unknown_column():
    row = exchange_row(request_body=b'{"a": 1}', done=False, end_detail="x")
    assert typed(row) == [("request_body", b'{"a": 1}', bytes), ("done", 0, int), ("end_detail", "x", str)]
    with pytest.raises(TypeError, match=r"^not a column of exchanges: end_reason, upstream_cause$"):
        exchange_row(upstream_cause="x", end_reason="y", done=True)


def test_end_cause_keeps_a_cause_this_version_does_not_know():
    assert end_cause("client_left") is EndCause.CLIENT_LEFT
    assert end_cause(None) is None and end_cause("from_the_future") == "from_the_future"


@pytest.mark.parametrize(("body", "stored"), [
    (b'{"a": "\xc3\xa9"}', '{"a": "\u00e9"}'), (b"", ""), (b"\xff\xfe", b"\xff\xfe"),
    (b"\xed\xa0\x80", b"\xed\xa0\x80"),  # a lone surrogate's bytes are not UTF-8: a blob, byte for byte
])
def test_a_body_is_stored_as_text_when_it_is_utf8_else_as_a_blob(body: bytes, stored: str | bytes):
    got = body_for_db(body)
    assert (got, type(got)) == (stored, type(stored))


@pytest.mark.parametrize(("text", "shown"), [
    ("plain \u00e9", "plain \u00e9"),
    ("a\udcffb", "a\\xffb"),  # a byte that was not UTF-8 (surrogateescape)
    ("a\ud800b", "a\\ud800b"),  # another lone surrogate
    ("\udcff\ud800", "\\udcff\\ud800"),
])
def test_readable_text_is_valid_utf8_showing_what_was_not(text: str, shown: str):
    assert readable(text) == shown
    assert readable(text).encode("utf-8")


def test_storable_makes_every_text_readable_and_leaves_the_rest():
    row = {"text": "x\udcff", "status": 200, "request_body": b"\xff", "model": None}
    assert storable(row) == {"text": "x\\xff", "status": 200, "request_body": b"\xff", "model": None}


def test_json_text_is_utf8_and_escapes_only_when_it_holds_a_lone_surrogate():
    assert json_text({"a": "\u00e9"}) == '{"a": "\u00e9"}'
    assert json_text({"a": ["\u00e9"]}, indent=1) == '{\n "a": [\n  "\u00e9"\n ]\n}'
    assert json_text({"a": "\udcff\u00e9"}) == '{"a": "\\udcff\\u00e9"}'
    assert json_text({"b": "\udcff"}, sort_keys=True, indent=1) == '{\n "b": "\\udcff"\n}'
    assert json.loads(json_text({"a": "\udcff"})) == {"a": "\udcff"}


def test_now_iso_is_the_utc_time_to_the_millisecond():
    before = datetime.now(timezone.utc)
    stamp = now_iso()
    after = datetime.now(timezone.utc)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", stamp)
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= datetime.fromisoformat(stamp) <= after


@pytest.mark.parametrize(("body", "parsed"), [
    (b'{"model": "m"}', {"model": "m"}), (b"[1]", [1]), (b"", None), (b"not json", None),
    (b"[" * 100_000, None),  # nested past Python's recursion limit
])
def test_request_json_is_the_body_parsed_or_none(body: bytes, parsed: object):
    assert Exchange(id=1, tape="t", seq=0, method="POST", path="/", request_body=body).request_json() == parsed


def test_a_response_header_is_found_whatever_its_case_the_first_one_winning():
    ex = Exchange(id=1, tape="t", seq=0, method="POST", path="/",
                  response_headers=[["Content-Type", "text/event-stream"], ["content-type", "text/plain"]])
    assert ex.response_header("CONTENT-type") == "text/event-stream"
    assert ex.response_header("x-missing") is None
