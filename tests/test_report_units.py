"""What `ls` and `show` print, on exchanges written down by hand and on the bundled tapes: every column of an
`ls` row, the table's widths, its last line, the JSON rows, and `show`'s lines to the character."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from streamreplay.bundled import bundled_tape
from streamreplay.cassette import import_cassette, read_cassette
from streamreplay.cli import main
from streamreplay.dialects import dialect_for
from streamreplay.endcause import EndCause
from streamreplay.exchange import Chunk, Exchange
from streamreplay.report import (
    LS_COLUMNS,
    chunk_deltas,
    chunk_events,
    describe_event,
    exchange_json,
    iter_ls_rows,
    ls_rows,
    show_lines,
    table,
    table_lines,
)
from streamreplay.sse import Assembled

MS = 1_000_000
CHAT = "/chat/completions"


def exchange(**fields: Any) -> Exchange:
    """Exchange 7, the third of tape t: a streamed chat answer that completed."""
    base: dict[str, Any] = {
        "id": 7, "tape": "t", "seq": 2, "method": "POST", "path": CHAT, "status": 200, "stream": True,
        "started_at": "2026-11-26T04:48:42.318+00:00", "model": "gpt-4o-mini", "chunk_count": 3, "byte_count": 90,
        "ttfb_ns": 14_600_000, "duration_ns": 36_400_000, "end_cause": EndCause.COMPLETE, "text": "Hello there",
        "request_body": json.dumps({"model": "gpt-4o-mini", "stream": True,
                                    "messages": [{"role": "user", "content": "Say hello"}]}).encode(),
        "response_headers": [["Content-Type", "text/event-stream"]], "headers_ns": 12_000_000, "done": True,
        "finish_reason": "stop", "client": "OpenAI/Python 2.54.0",
    }
    return Exchange(**{**base, **fields})


def row(**fields: Any) -> dict[str, str]:
    (only,) = ls_rows([exchange(**fields)])
    return dict(zip(LS_COLUMNS, only, strict=True))


def sse(*payloads: object) -> bytes:
    return b"".join(b"data: " + (p if isinstance(p, bytes) else json.dumps(p).encode()) + b"\n\n" for p in payloads)


def delta(**d: Any) -> dict[str, Any]:
    return {"choices": [{"delta": d}]}


# -- ls ------------------------------------------------------------------------------------------------------

def test_an_ls_row_has_every_column_in_order():
    assert LS_COLUMNS == ("id", "tape", "started", "request", "dialect", "model", "stream", "chunks", "ttfb_ms",
                          "ms", "end", "text")
    assert ls_rows([exchange()]) == [("7", "t", "04:48:42", "POST /chat/completions", "chat", "gpt-4o-mini", "yes",
                                      "3", "15", "36", "complete", "Hello there")]



def test_the_end_column_marks_where_a_client_left_only_when_its_leaving_ended_the_exchange():
    """`client_left@K` for a client that left at chunk K; a client that closed after `[DONE]` (the chunk it left at
    is noted too) leaves the exchange `complete`, shown without a mark, and so does a drained one's upstream end."""
    assert row(end_cause=EndCause.CLIENT_LEFT, client_left_at_chunk=2)["end"] == "client_left@2"
    assert row(end_cause=EndCause.COMPLETE, client_left_at_chunk=3)["end"] == "complete"
    assert row(end_cause=EndCause.UPSTREAM_RESET, client_left_at_chunk=1)["end"] == "upstream_reset"

def test_an_ls_row_of_an_open_unstreamed_exchange_with_nothing_known_says_so():
    assert row(started_at=None, model=None, stream=False, ttfb_ns=None, duration_ns=None, end_cause=None,
               text=None, path="/responses") == {
        "id": "7", "tape": "t", "started": "", "request": "POST /responses", "dialect": "responses", "model": "-",
        "stream": "no", "chunks": "3", "ttfb_ms": "-", "ms": "-", "end": "open", "text": ""}


@pytest.mark.parametrize(("ns", "shown"), [(0, "0"), (499_999, "0"), (500_001, "1"), (1_499_999, "1"),
                                           (983_400_000, "983"), (12_345_678_901, "12346"),
                                           (1_000_500_100, "1001")])
def test_ls_gives_times_in_whole_milliseconds(ns: int, shown: str):
    assert (row(ttfb_ns=ns)["ttfb_ms"], row(duration_ns=ns)["ms"]) == (shown, shown)


@pytest.mark.parametrize(("fields", "end"), [
    ({"end_cause": EndCause.CLIENT_LEFT, "client_left_at_chunk": 3}, "client_left@3"),
    ({"end_cause": EndCause.CLIENT_LEFT, "client_left_at_chunk": 0}, "client_left@0"),
    ({"end_cause": EndCause.CLIENT_LEFT, "client_left_at_chunk": None}, "client_left"),
    # the openai SDK closes after [DONE]: the cause stays complete, where it left is not the end
    ({"end_cause": EndCause.COMPLETE, "client_left_at_chunk": 5}, "complete"),
    ({"end_cause": EndCause.UPSTREAM_RESET, "store_error": "not stored whole: x"}, "upstream_reset (partial)"),
    ({"end_cause": None, "store_error": "unfinished"}, "open (partial)"),
    ({"end_cause": EndCause.CLIENT_LEFT, "client_left_at_chunk": 2, "store_error": "x"}, "client_left@2 (partial)"),
    ({"end_cause": EndCause.COMPLETE, "store_error": ""}, "complete"),
    ({"end_cause": "from_a_newer_version"}, "from_a_newer_version"),
])
def test_the_end_column_says_the_cause_where_the_client_left_and_a_partial_store(fields: dict[str, Any], end: str):
    assert row(**fields)["end"] == end


@pytest.mark.parametrize(("text", "shown"), [
    ("x" * 40, "x" * 40),
    ("x" * 41, "x" * 39 + "…"),
    ("  Hello,\n\n  world\t! ", "Hello, world !"),
    ("a " * 30, "a " * 19 + "a…"),
    ("", ""),
])
def test_the_text_column_is_the_answer_on_one_line_cut_at_40_characters(text: str, shown: str):
    assert row(text=text)["text"] == shown


def test_iter_ls_rows_reads_one_exchange_at_a_time():
    def exchanges() -> Any:
        yield exchange(id=1)
        raise AssertionError("read past the first row")

    assert next(iter_ls_rows(exchanges()))[0] == "1"


def test_the_table_pads_each_column_to_its_widest_cell_two_spaces_apart_without_trailing_blanks():
    rows = [("1", "tape-a", "x"), ("22", "b", "")]
    expected = ["id  tape    text", "1   tape-a  x", "22  b"]
    assert table(("id", "tape", "text"), rows) == "\n".join(expected)
    assert list(table_lines(("id", "tape", "text"), iter(rows))) == expected


def test_an_empty_table_is_its_header():
    assert table(("id", "tape"), []) == "id  tape"
    assert list(table_lines(("id", "tape"), iter([]))) == ["id  tape"]


def test_a_wider_cell_after_the_sample_pushes_its_row_out_rather_than_being_cut():
    rows = [("1", "a", "x"), ("2", "bb", "y"), ("3", "a-much-wider-tape", "z")]
    assert list(table_lines(("id", "t", "text"), iter(rows), sample=2)) == [
        "id  t   text", "1   a   x", "2   bb  y", "3   a-much-wider-tape  z"]
    assert list(table_lines(("id", "t", "text"), iter(rows), sample=3))[1] == "1   a                  x"


def test_the_widths_come_from_the_first_500_rows():
    rows = [(str(k), "a", "x") for k in range(500)] + [("500", "wide", "x")]
    lines = list(table_lines(("id", "t", "text"), iter(rows)))
    assert len(lines) == 502 and lines[1] == "0    a  x" and lines[-1] == "500  wide  x"
    rows = rows[:499] + [("499", "wide", "x")]
    assert list(table_lines(("id", "t", "text"), iter(rows)))[1] == "0    a     x"


def test_a_header_wider_than_its_cells_sets_the_width_and_a_short_last_header_is_not_padded():
    rows = [("1", "a", "longer text"), ("2", "b", "")]
    expected = ["identifier  t  text", "1           a  longer text", "2           b"]
    assert table(("identifier", "t", "text"), rows) == "\n".join(expected)
    assert list(table_lines(("identifier", "t", "text"), iter(rows))) == expected


def test_ls_json_is_every_field_with_the_body_as_text_and_the_dialect():
    ex = exchange(request_body=b'{"a": "\xff"}', path="/v1/messages")
    data = exchange_json(ex)
    assert list(data) == [*(f for f in Exchange.__dataclass_fields__), "dialect"]
    assert data["request_body"] == '{"a": "\ufffd"}' and data["dialect"] == "anthropic"
    assert data["end_cause"] == "complete" and data["response_headers"] == [["Content-Type", "text/event-stream"]]
    assert json.loads(json.dumps(data)) == data


# -- ls on a DB, end to end ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_tapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("ls") / "ls.db"
    import_cassette(bundled_tape("consumer-break"), db)
    import_cassette(bundled_tape("anthropic-happy-path"), db)
    return db


def test_ls_lists_the_db_and_ends_with_how_much_it_showed_and_the_db_size(two_tapes: Path):
    out = CliRunner().invoke(main, ["ls", "--db", str(two_tapes)]).output.splitlines()
    assert out[:3] == [
        "id  tape                  started   request                 dialect    model    stream  chunks  ttfb_ms  "
        "ms    end            text",
        "1   consumer-break                  POST /chat/completions  chat       smollm2  yes     63      372      "
        "1094  client_left@2  The moon is a celestial body that orbit\u2026",
        "2   anthropic-happy-path  06:44:50  POST /v1/messages       anthropic  smollm2  yes     24      204      "
        "904   complete       The capital of France is Paris. It lies\u2026",
    ]
    assert len(out) == 4 and out[-1].startswith("2 exchanges, 2 tapes, DB ") and out[-1].endswith(" KB")
    limited = CliRunner().invoke(main, ["ls", "--db", str(two_tapes), "--limit", "1"]).output.splitlines()
    assert len(limited) == 3 and limited[-1].startswith("1 of 2 exchanges, 2 tapes, DB ")


def test_ls_json_prints_one_exchange_a_line(two_tapes: Path):
    out = CliRunner().invoke(main, ["ls", "--db", str(two_tapes), "--json"]).output.splitlines()
    rows = [json.loads(line) for line in out]
    assert [(r["id"], r["tape"], r["dialect"], r["end_cause"]) for r in rows] == [
        (1, "consumer-break", "chat", "client_left"), (2, "anthropic-happy-path", "anthropic", "complete")]


# -- show ----------------------------------------------------------------------------------------------------

def test_each_chunk_shows_the_text_its_completed_events_add_even_split_across_reads():
    chunks = [Chunk(0, 1, sse(delta(role="assistant"))),
              Chunk(1, 2, b'data: {"choices":[{"delta":{"content":"Hel'),
              Chunk(2, 3, b'lo"}}]}\n\n' + sse(delta(content='"hi" \u00e9'))),
              Chunk(3, 4, sse({"choices": [{"delta": {}, "finish_reason": "stop"}]}, b"[DONE]"))]
    assert chunk_deltas(chunks) == ["", "", 'Hello"hi" \u00e9', "<finish_reason=stop>[DONE]"]
    assert [len(events) for events in chunk_events(chunks)] == [1, 0, 2, 2]
    assert [e.done for e in chunk_events(chunks)[3]] == [False, True]


def assembled(**fields: Any) -> Assembled:
    base: dict[str, Any] = {"kind": "chat.completion", "id": None, "model": None, "text": "", "finish_reason": None,
                            "tool_calls": [], "usage": None, "done": False, "error": None, "events": 1,
                            "problems": []}
    return Assembled(**{**base, **fields})


@pytest.mark.parametrize(("fields", "said"), [
    ({"text": "hi", "done": True, "finish_reason": "stop"}, "hi"),
    ({"done": True, "finish_reason": "stop"}, "[DONE]"),
    ({"finish_reason": "length", "error": {"message": "x"}}, "<finish_reason=length>"),
    ({"error": {"message": "boom"}, "tool_calls": [{"function": {"name": "f"}}]}, "<error boom>"),
    ({"error": {"code": 1}}, "<error >"),
    ({"tool_calls": [{"function": {"name": "get", "arguments": '{"a": 1}'}}, {"function": {"name": "z"}}]},
     '<tool_call get{"a": 1}>'),
    ({"tool_calls": [{"function": {"name": None, "arguments": None}}]}, "<tool_call >"),
    ({"tool_calls": [{"function": {"arguments": "{}"}}]}, "<tool_call {}>"),
    ({}, ""),
])
def test_an_event_is_its_text_or_what_it_carries_instead(fields: dict[str, Any], said: str):
    assert describe_event(assembled(**fields)) == said


def test_an_event_is_described_in_its_dialects_words():
    ollama = dialect_for("/api/chat")
    assert describe_event(assembled(done=True), ollama) == "done: true"
    assert describe_event(assembled(finish_reason="stop"), ollama) == "<done_reason=stop>"


def test_another_dialects_chunks_are_read_in_that_dialect():
    _, (ex,), chunks = read_cassette(bundled_tape("anthropic-happy-path"))
    deltas = chunk_deltas(chunks[ex.id], ex.dialect)
    assert deltas[3:5] == ["The ", "capital "]
    assert deltas[-2:] == ["<stop_reason=end_turn>", "message_stop"]


def test_show_prints_the_exchange_chunk_by_chunk_then_how_it_ended():
    ex = exchange(query="api-version=1", client_left_at_chunk=1, client_left_ns=20_250_000,
                  end_cause=EndCause.CLIENT_LEFT, end_detail="the client left after 1 of 3 chunks",
                  upstream_end=EndCause.COMPLETE, usage={"total_tokens": 9},
                  tool_calls=[{"function": {"name": "get", "arguments": '{"a": 1}'}}],
                  problems=["a chunk arrived after [DONE]"])
    chunks = [Chunk(0, 14_600_000, sse(delta(content="Hello"))),
              Chunk(1, 20_000_000, sse(delta(content=" \u00e9\n"))),
              Chunk(2, 36_450_000, sse({"choices": [{"delta": {}, "finish_reason": "stop"}]}, b"[DONE]"))]
    lengths = [len(c.data) for c in chunks]
    assert show_lines(ex, chunks) == [
        "exchange t:2  (id 7)  2026-11-26T04:48:42.318+00:00",
        "request   POST /chat/completions?api-version=1  chat  model gpt-4o-mini  stream yes  "
        "client OpenAI/Python 2.54.0",
        "last msg  user: Say hello",
        "response  200  text/event-stream  headers 12 ms  first byte 15 ms",
        "",
        "chunk     at ms   gap ms  bytes  delta",
        f"    0      14.6     14.6  {lengths[0]:>5}  Hello",
        f"    1      20.0      5.4  {lengths[1]:>5}   \u00e9\\n   <- client had left at 20.2 ms",
        f"    2      36.5     16.4  {lengths[2]:>5}  <finish_reason=stop>[DONE]",
        "",
        "end       client_left  (the client left after 1 of 3 chunks)",
        "upstream  complete",
        "done      [DONE] seen  finish_reason stop  3 chunks  90 bytes  36 ms",
        'usage     {"total_tokens": 9}',
        'tool call get({"a": 1})',
        "message   'Hello there'",
        "problem   a chunk arrived after [DONE]",
    ]


def test_show_of_an_open_exchange_with_nothing_known_says_so():
    ex = exchange(started_at=None, model=None, stream=False, client=None, status=None, response_headers=[],
                  headers_ns=None, ttfb_ns=None, duration_ns=None, end_cause=None, done=False, finish_reason=None,
                  text=None, request_body=b"", chunk_count=0, byte_count=0)
    assert show_lines(ex, []) == [
        "exchange t:2  (id 7)",
        "request   POST /chat/completions  chat  model -  stream no  client -",
        "response  -    headers - ms  first byte - ms",
        "",
        "chunk     at ms   gap ms  bytes  delta",
        "",
        "end       open",
        "done      no [DONE]  finish_reason None  0 chunks  0 bytes  - ms",
        "message   None",
    ]


def test_show_says_a_partial_store_and_an_upstream_end_only_when_it_differs():
    lines = show_lines(exchange(store_error="not stored whole: disk full", upstream_end=EndCause.COMPLETE), [])
    assert lines[-4:-1] == ["end       complete", "stored    PARTIAL: not stored whole: disk full",
                            "done      [DONE] seen  finish_reason stop  3 chunks  90 bytes  36 ms"]


@pytest.mark.parametrize("body", [
    b"not json", b"[1, 2]", b'{"messages": []}', b'{"messages": "hi"}', b'{"messages": ["hi"]}', b'{"prompt": "x"}'])
def test_show_has_a_last_message_line_only_for_a_list_of_message_objects(body: bytes):
    assert not any(line.startswith("last msg") for line in show_lines(exchange(request_body=body), []))


def test_the_last_message_is_the_last_one_on_one_line_cut_at_70_characters():
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "word " * 20}]
    lines = show_lines(exchange(request_body=json.dumps({"messages": messages}).encode()), [])
    assert lines[2] == "last msg  user: " + ("word " * 14)[:69] + "…"
    lines = show_lines(exchange(request_body=json.dumps({"messages": [{"content": None}]}).encode()), [])
    assert lines[2] == "last msg  None: None"


def test_the_gap_is_from_the_chunk_before_and_the_client_left_mark_is_on_its_chunk_only():
    ex = exchange(client_left_at_chunk=0, client_left_ns=1_000_000)
    chunks = [Chunk(0, 2_000_000, b"a"), Chunk(1, 2_500_000, b"bc"), Chunk(2, 10_000_000, b"")]
    body = show_lines(ex, chunks)[6:9]
    assert body == ["    0       2.0      2.0      1     <- client had left at 1.0 ms",
                    "    1       2.5      0.5      2",
                    "    2      10.0      7.5      0"]


def test_show_times_are_milliseconds_to_a_tenth_from_the_request_sent():
    ex = exchange(client_left_at_chunk=1, client_left_ns=1_000_050_001)
    chunks = [Chunk(0, 1_350_000, b"a"), Chunk(1, 1_001_400_001, b"b")]
    assert show_lines(ex, chunks)[6:8] == ["    0       1.4      1.4      1",
                                           "    1    1001.4   1000.1      1     <- client had left at 1000.1 ms"]


def test_show_reads_another_dialects_chunks_in_that_dialect():
    _, (ex,), chunks = read_cassette(bundled_tape("anthropic-happy-path"))
    lines = show_lines(ex, chunks[ex.id])
    assert lines[1].startswith("request   POST /v1/messages  anthropic  model smollm2  stream yes")
    assert lines[9].endswith("  The ") and lines[-5].endswith("  message_stop")
    assert lines[-2] == "done      message_stop seen  stop_reason end_turn  24 chunks  2805 bytes  904 ms"
