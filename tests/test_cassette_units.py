"""Cassettes line by line: what is written, what is read back and derived again, what a broken file says.
Hand-written exchanges and cassettes, stores on disk in a temporary folder; no proxy, no server."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import pytest

from streamreplay.cassette import (
    CassetteError,
    cassette_lines,
    cassette_store,
    check_tape_name,
    export_tape,
    import_cassette,
    iter_cassette,
    read_cassette,
)
from streamreplay.endcause import EndCause
from streamreplay.exchange import Chunk, Exchange
from streamreplay.requestkey import request_key
from streamreplay.store import Store

HEADER = {"format": "streamreplay-cassette", "source": "", "tape": "t", "version": 1}
BODY = {"messages": [{"content": "Hi", "role": "user"}], "model": "gpt-4o-mini", "stream": True}
EVENTS = [b'data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hello"},'
          b'"finish_reason":"stop"}]}\n\n', b"data: [DONE]\n\n"]


def exchange(n: int = 0, body: bytes = json.dumps(BODY).encode(), **fields) -> Exchange:
    base = {"id": n + 1, "tape": "t", "seq": n, "method": "POST", "path": "/v1/chat/completions", "query": "",
            "request_headers": [["Host", "localhost:8080"], ["Content-Length", "99"], ["User-Agent", "AsyncOpenAI/2"]],
            "request_body": body, "status": 200, "headers_ns": 1000,
            "response_headers": [["Content-Type", "text/event-stream"], ["DATE", "Mon"]],
            "end_cause": EndCause.COMPLETE, "done": True, "finish_reason": "stop", "text": "Hello", "duration_ns": 5000}
    return Exchange(**{**base, **fields})


def chunks_of(ex: Exchange) -> list[Chunk]:
    return [Chunk(i, 2000 + i, data) for i, data in enumerate(EVENTS)]


def write(path: Path, *lines: dict) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def cassette(tmp_path: Path, exchanges: list[Exchange], name: str = "t.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in cassette_lines("t", exchanges, chunks_of)))
    return path


def test_a_cassette_holds_no_volatile_header_and_bodies_as_json_text_or_nothing():
    exchanges = [exchange(0), exchange(1, b"a=1&b=2"), exchange(2, b"\xff\xfe"), exchange(3, b"")]
    lines = [json.loads(line) for line in cassette_lines("t", exchanges, chunks_of)]
    assert lines[0] == HEADER  # no source given: an empty one
    requests = [line for line in lines if line.get("type") == "request"]
    assert [r["headers"] for r in requests] == [[["User-Agent", "AsyncOpenAI/2"]]] * 4  # no Host, no Content-Length
    assert [r["body"] for r in requests] == [{"json": BODY}, {"text": "a=1&b=2"}, {"b64": "//4="}, {}]
    responses = [line for line in lines if line.get("type") == "response"]
    assert responses[0]["headers"] == [["Content-Type", "text/event-stream"]]  # no Date, however spelled
    ends = [line for line in lines if line.get("type") == "end"]
    assert ends[0]["cause"] == "complete" and "store_error" not in ends[0] and "started_at" not in requests[0]


def test_read_back_an_exchange_is_what_was_written_and_what_a_cassette_does_not_carry_is_derived(tmp_path: Path):
    written = [exchange(0), exchange(1, b"a=1&b=2"), exchange(2, b"\xff\xfe"), exchange(3, b"")]
    header, exchanges, chunks = read_cassette(cassette(tmp_path, written))
    assert header == HEADER
    for ex, was in zip(exchanges, written, strict=True):
        assert (ex.id, ex.tape, ex.seq, ex.method, ex.path, ex.request_body) == (
            was.id, "t", was.seq, "POST", "/v1/chat/completions", was.request_body)
        assert ex.request_headers == [["User-Agent", "AsyncOpenAI/2"]] and ex.client == "AsyncOpenAI/2"
        assert ex.request_key == request_key("POST", "/v1/chat/completions", was.request_body)
        assert ex.end_cause is EndCause.COMPLETE and ex.done is True and ex.finish_reason == "stop"
        assert (ex.chunk_count, ex.byte_count) == (2, sum(map(len, EVENTS)))
        assert chunks[ex.id] == chunks_of(ex)
    assert [(ex.stream, ex.model) for ex in exchanges] == [(True, "gpt-4o-mini")] + [(False, None)] * 3


@pytest.mark.parametrize(("body", "stream", "model"), [
    ({"json": {"model": "m", "stream": False}}, False, "m"),
    ({"json": {"model": 5, "stream": 1}}, True, None),  # a model that is no string is no model
    ({"json": [1, 2]}, False, None),  # JSON, but no object
])
def test_the_stream_flag_and_model_come_from_the_request_body(tmp_path: Path, body: dict, stream: bool, model):
    path = write(tmp_path / "c.jsonl", HEADER, {"type": "request", "seq": 0, "method": "POST", "path": "/x",
                                                "body": body})
    [ex] = read_cassette(path)[1]
    assert (ex.stream, ex.model) == (stream, model)


def test_a_field_a_line_leaves_out_is_its_default_and_the_fields_after_it_are_read(tmp_path: Path):
    path = write(tmp_path / "c.jsonl", HEADER,
                 {"type": "request", "seq": 0, "method": "GET", "path": "/v1/models"},  # no query, headers, body
                 {"type": "response", "seq": 0, "status": 200, "headers": [["X-A", "1"]]},
                 {"type": "end", "seq": 0, "cause": "complete", "finish_reason": "stop"})
    [ex] = read_cassette(path)[1]
    assert (ex.query, ex.request_headers, ex.request_body, ex.client) == ("", [], b"", None)
    assert (ex.headers_ns, ex.response_headers, ex.ttfb_ns, ex.done) == (None, [["X-A", "1"]], None, False)
    assert (ex.end_cause, ex.finish_reason) == (EndCause.COMPLETE, "stop")


def test_exchanges_come_as_their_end_line_is_read_and_unfinished_ones_at_the_end(tmp_path: Path):
    first, second = exchange(0), exchange(1)
    lines = [json.loads(line) for line in cassette_lines("t", [first, second], chunks_of)]
    end_of_first = next(i for i, line in enumerate(lines) if line.get("type") == "end")
    # the second exchange has no end line (the recording stopped), and a broken line follows the first's end
    path = write(tmp_path / "c.jsonl", *lines[: end_of_first + 1], *lines[end_of_first + 1: -1])
    header, each = iter_cassette(path)
    got = list(each)
    assert [(ex.seq, ex.end_cause, len(chunks)) for ex, chunks in got] == [(0, EndCause.COMPLETE, 2), (1, None, 2)]
    broken = write(tmp_path / "broken.jsonl", *lines[: end_of_first + 1], {"type": "chunk", "seq": 5})
    _, each = iter_cassette(broken)
    assert next(each)[0].seq == 0  # given before the line that breaks is read
    with pytest.raises(CassetteError, match=r"broken.jsonl:\d+: 5"):
        next(each)


def test_blank_lines_are_skipped(tmp_path: Path):
    path = cassette(tmp_path, [exchange(0)])
    path.write_text(path.read_text().replace("\n", "\n\n   \n"))
    assert len(read_cassette(path)[1]) == 1


@pytest.mark.parametrize(("text", "message"), [
    ("", "{path}: empty"),
    ("\n\n", "{path}: empty"),
    ('{"format": "other"}\n', "{path}:1: not a streamreplay cassette"),
    (json.dumps(HEADER) + "\n\n{not json\n", "{path}:3: Expecting property name enclosed in double quotes: "
                                             "line 1 column 2 (char 1)"),
    (json.dumps(HEADER) + "\n[1, 2]\n", "{path}:2: a line must be a JSON object"),
    (json.dumps(HEADER) + '\n{"type": "request", "seq": 0, "method": "GET", "path": "/"}\n'
                          '{"type": "bogus", "seq": 0}\n', "{path}:3: unknown line type 'bogus'"),
])
def test_a_broken_cassette_says_where_and_what(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(CassetteError) as caught:
        read_cassette(path)
    assert str(caught.value) == message.format(path=path)


@pytest.mark.parametrize(("kind", "key"), [("request", "method"), ("request", "path"), ("response", "status"),
                                           ("response", "headers"), ("end", "cause")])
def test_a_line_without_a_key_it_must_carry_is_refused_naming_the_line_and_the_key(
        tmp_path: Path, kind: str, key: str):
    lines = [json.loads(line) for line in cassette_lines("t", [exchange(0)], chunks_of)]
    number = next(i for i, line in enumerate(lines) if line.get("type") == kind)
    del lines[number][key]
    path = write(tmp_path / "c.jsonl", *lines)
    with pytest.raises(CassetteError) as caught:
        read_cassette(path)
    assert str(caught.value) == f"{path}:{number + 1}: a {kind} line needs {key!r}"


def test_a_missing_cassette_is_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError) as caught:
        read_cassette(tmp_path / "none.jsonl")
    assert str(caught.value) == f"no cassette at {tmp_path / 'none.jsonl'}"


def test_import_summarises_the_chunks_and_export_gives_back_the_same_file(tmp_path: Path):
    path = cassette(tmp_path, [exchange(0), exchange(1, b"a=1&b=2"), exchange(2, b"")])
    db = tmp_path / "db.db"
    assert import_cassette(path, db) == ("t", 3)
    stored = Store(db).exchanges(tape="t")
    # the summary as the writer would assemble it from the chunks, with the stream flag the request asked
    assert [(ex.text, ex.finish_reason, ex.done, ex.stream) for ex in stored] == [
        ("Hello", "stop", True, True), ("Hello", "stop", True, False), ("Hello", "stop", True, False)]
    assert [t["source"] for t in Store(db).tapes()] == [""]
    out = tmp_path / "deep" / "er" / "t.jsonl"  # folders made as needed
    assert export_tape(db, "t", out) == 3
    assert out.read_text() == path.read_text()


def test_an_imported_exchange_keeps_the_request_key_replay_looks_it_up_by(tmp_path: Path):
    """A cassette carries no request key; read back or imported, each exchange gets the key of its own
    request, so a DB filled by `import` is replayed from its index as a recorded one is."""
    bodies = [json.dumps(BODY).encode(), b"a=1&b=2", b""]
    path = cassette(tmp_path, [exchange(n, body) for n, body in enumerate(bodies)])
    want = [request_key("POST", "/v1/chat/completions", body) for body in bodies]
    assert [ex.request_key for ex in read_cassette(path)[1]] == want
    db = tmp_path / "db.db"
    import_cassette(path, db)
    rows = Store(db).db.execute("select request_key from exchanges order by seq").fetchall()
    assert [key for (key,) in rows] == want


def test_tapes_stay_apart_in_one_db(tmp_path: Path):
    db = tmp_path / "db.db"
    path = cassette(tmp_path, [exchange(0), exchange(1)])
    assert import_cassette(path, db, "a") == ("a", 2)
    assert import_cassette(path, db, "b") == ("b", 2)  # another tape in a DB that has one
    with pytest.raises(CassetteError, match="tape 'a' already exists in"):
        import_cassette(path, db, "a")
    assert export_tape(db, "b", tmp_path / "b.jsonl") == 2  # only its own exchanges
    assert len([line for line in (tmp_path / "b.jsonl").read_text().splitlines() if '"type":"request"' in line]) == 2
    with pytest.raises(LookupError) as caught:
        export_tape(db, "c", tmp_path / "c.jsonl")
    assert str(caught.value) == f"no tape 'c' in {db} (tapes: a, b)"


def test_a_cassette_imports_under_its_own_tape_beside_another(tmp_path: Path):
    db = tmp_path / "db.db"
    assert import_cassette(cassette(tmp_path, [exchange(0)]), db, "a") == ("a", 1)
    path_b = tmp_path / "b.jsonl"
    path_b.write_text("".join(line + "\n" for line in cassette_lines("b", [exchange(0), exchange(1)], chunks_of)))
    assert import_cassette(path_b, db) == ("b", 2)  # no tape given: the cassette's own, though the DB has one
    store = Store(db)
    assert [t["name"] for t in store.tapes()] == ["a", "b"]
    assert [(ex.tape, ex.seq) for ex in store.exchanges()] == [("a", 0), ("b", 0), ("b", 1)]


def test_an_empty_cassette_imports_as_an_empty_tape_even_over_a_registered_one(tmp_path: Path):
    db = tmp_path / "db.db"
    store = Store(db)
    store.db["tapes"].insert({"name": "t", "created_at": "2025-01-01T00:00:00Z", "source": "old"})
    path = write(tmp_path / "c.jsonl", {k: v for k, v in HEADER.items() if k != "source"})  # no source at all
    assert import_cassette(path, db) == ("t", 0)
    assert [(t["name"], t["source"]) for t in Store(db).tapes()] == [("t", "")]


def test_a_tape_name_with_two_dots_in_a_row_is_refused_anywhere_in_it():
    assert check_tape_name("v1.2_run-3") == "v1.2_run-3"
    with pytest.raises(CassetteError, match="cannot be a file name"):
        check_tape_name("a..b")


def test_a_gzipped_answer_is_summarised_from_its_decoded_bytes(tmp_path: Path):
    """A non-stream answer sent gzipped, as api.openai.com sends it: the chunk is the bytes on the wire."""
    answer = {"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}]}
    path = write(tmp_path / "c.jsonl", HEADER,
                 {"type": "request", "seq": 0, "method": "POST", "path": "/v1/chat/completions",
                  "body": {"json": {"model": "m"}}},
                 {"type": "response", "seq": 0, "status": 200,
                  "headers": [["Content-Type", "application/json"], ["Content-Encoding", "gzip"]]},
                 {"type": "chunk", "seq": 0, "i": 0, "t_ns": 5,
                  "b64": base64.b64encode(gzip.compress(json.dumps(answer).encode())).decode()},
                 {"type": "end", "seq": 0, "cause": "complete"})
    import_cassette(path, tmp_path / "db.db")
    [ex] = Store(tmp_path / "db.db").exchanges()
    assert (ex.text, ex.finish_reason) == ("Hi", "stop")


def test_a_tape_the_db_has_exchanges_of_but_no_entry_for_exports_with_no_source(tmp_path: Path):
    db = tmp_path / "db.db"
    import_cassette(write(tmp_path / "c.jsonl", {**HEADER, "source": "recorded by hand"}), db, "x")
    import_cassette(cassette(tmp_path, [exchange(0)]), db)
    Store(db).db.execute("delete from tapes where name = 't'")
    Store(db).db.conn.commit()
    assert [t["name"] for t in Store(db).tapes()] == ["x"] and Store(db).count("t") == 1
    export_tape(db, "t", tmp_path / "out.jsonl")
    assert json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])["source"] == ""


def test_a_cassette_read_as_a_store_in_memory(tmp_path: Path):
    store = cassette_store(cassette(tmp_path, [exchange(0), exchange(1)]))
    assert str(store.path) == ":memory:" and [t["name"] for t in store.tapes()] == ["t"]
    assert [(ex.seq, ex.text) for ex in store.exchanges(tape="t")] == [(0, "Hello"), (1, "Hello")]
    assert [c.data for c in store.chunks(store.exchanges()[0].id)] == EVENTS


def test_a_cassette_numbers_a_tape_s_exchanges_from_0_as_the_db_does(tmp_path: Path):
    lines = [json.loads(line) for line in cassette_lines("t", [exchange(0), exchange(1), exchange(2)], chunks_of)]
    assert sorted({line["seq"] for line in lines[1:]}) == [0, 1, 2]
    assert [line["seq"] for line in lines[1:] if line["type"] == "request"] == [0, 1, 2]
    db = tmp_path / "db.db"
    import_cassette(cassette(tmp_path, [exchange(0), exchange(1, b"a=1"), exchange(2, b"")]), db)
    store = Store(db)
    assert [ex.seq for ex in store.exchanges(tape="t")] == [0, 1, 2]
    # what `ls`, `diagnose` and the miss messages print names the same exchange after a round trip
    first, last = store.exchanges(tape="t")[0], store.exchanges(tape="t")[-1]
    assert store.resolve("t:0") == first.id and store.resolve("t:2") == last.id and store.resolve("t") == last.id
    out = tmp_path / "again.jsonl"
    export_tape(db, "t", out)
    exported = [json.loads(line) for line in out.read_text().splitlines()[1:]]
    assert [line["seq"] for line in exported if line["type"] == "end"] == [0, 1, 2]


def test_a_chunk_line_carries_utf8_bytes_as_text_and_any_other_bytes_as_b64():
    """README, Cassettes: one `chunk` line per network read, `text` where the bytes are UTF-8, else `b64`,
    with `t_ns`; keys sorted. A read that splits a character in two is not UTF-8 on its own."""
    reads = [b'data: {"content":"h\xc3\xa9llo \xf0\x9f\x8c\x8a"}\n\n', b"data: \xc3", b"\xa9\n\n", b"\xff\x00"]

    def split_reads(ex: Exchange) -> list[Chunk]:
        return [Chunk(i, 1000 * (i + 1), data) for i, data in enumerate(reads)]

    lines = list(cassette_lines("t", [exchange(0)], split_reads))
    chunk_lines = [line for line in lines if json.loads(line).get("type") == "chunk"]
    assert [json.loads(line) for line in chunk_lines] == [
        {"type": "chunk", "seq": 0, "i": 0, "t_ns": 1000, "text": 'data: {"content":"héllo 🌊"}\n\n'},
        {"type": "chunk", "seq": 0, "i": 1, "t_ns": 2000, "b64": base64.b64encode(b"data: \xc3").decode()},
        {"type": "chunk", "seq": 0, "i": 2, "t_ns": 3000, "b64": "qQoK"},
        {"type": "chunk", "seq": 0, "i": 3, "t_ns": 4000, "b64": "/wA="}]
    assert all(list(json.loads(line)) == sorted(json.loads(line)) for line in lines)


def test_an_import_keeps_the_time_each_request_was_recorded(tmp_path: Path):
    """README, Cassettes: a `request` line carries the time it was recorded, which an import keeps."""
    times = ["2026-11-20T04:48:42.318+00:00", "2026-11-21T23:59:59.999+00:00"]
    path = cassette(tmp_path, [exchange(n, started_at=at) for n, at in enumerate(times)])
    requests = [json.loads(line) for line in path.read_text().splitlines() if '"type":"request"' in line]
    assert [r["started_at"] for r in requests] == times
    db = tmp_path / "db.db"
    import_cassette(path, db)
    assert [ex.started_at for ex in Store(db).exchanges(tape="t")] == times
    assert export_tape(db, "t", tmp_path / "again.jsonl") == 2
    assert (tmp_path / "again.jsonl").read_text() == path.read_text()


@pytest.mark.parametrize("key", ["text", "i", "t_ns"])
def test_a_chunk_line_without_its_bytes_index_or_time_is_refused_naming_the_line_and_the_key(
        tmp_path: Path, key: str) -> None:
    """A chunk line needs its bytes (`text`, or `b64`), its index and its time: without one it is refused, naming
    the line and the key, never read as an empty or unplaced chunk."""
    lines = [json.loads(line) for line in cassette_lines("t", [exchange(0)], chunks_of)]
    number = next(i for i, line in enumerate(lines) if line.get("type") == "chunk")
    del lines[number][key]
    path = write(tmp_path / "c.jsonl", *lines)
    with pytest.raises(CassetteError) as caught:
        read_cassette(path)
    assert str(caught.value) == f"{path}:{number + 1}: {key!r}"


@pytest.mark.parametrize(("payload", "stream"), [({"model": "m"}, True), ({"model": "m", "stream": False}, False),
                                                 ({"model": "m", "stream": True}, True)])
def test_an_ollama_request_without_a_stream_flag_reads_back_as_the_stream_ollama_sends(tmp_path: Path, payload: dict,
                                                                                       stream: bool):
    """Ollama streams unless asked not to: a cassette's /api/chat request with no `stream` key is a stream, as the
    recorder stored it."""
    path = write(tmp_path / "c.jsonl", HEADER, {"type": "request", "seq": 0, "method": "POST", "path": "/api/chat",
                                                "body": {"json": payload}})
    [ex] = read_cassette(path)[1]
    assert ex.stream is stream
