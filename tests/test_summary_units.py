"""The summary columns a stored exchange is listed by (streamreplay.summary): the assembled text, stop
reason, tool calls and usage, however the body came (split anywhere, gzipped, a JSON body where a stream
was asked for), and the problems it notes (cut at the limit, an encoding it could not undo)."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

from streamreplay.dialects import dialect_for
from streamreplay.summary import SUMMARY_LIMIT, Decoder, Summarizer


def _event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    body = {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta,
                                                                       "finish_reason": finish}], **extra}
    return f"data: {json.dumps(body)}\n\n".encode()


STREAM = (_event({"role": "assistant", "content": "Hel"}) + _event({"content": "lo"}) + _event({}, "stop")
          + _event({}, None, usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
          + b"data: [DONE]\n\n")
SSE = "text/event-stream; charset=utf-8"


def _summary(pieces: list[bytes], content_type: str | None = SSE, encoding: str | None = None,
             stream: bool = True) -> dict[str, Any]:
    summarizer = Summarizer(stream, encoding, content_type=content_type)
    for piece in pieces:
        summarizer.feed(piece)
    return summarizer.columns()


def _problems(columns: dict[str, Any]) -> list[str] | None:
    """The problems column, stored as JSON text."""
    return json.loads(columns["problems"]) if columns["problems"] is not None else None


def test_a_stream_split_anywhere_sums_to_the_same_message():
    whole = _summary([STREAM])
    assert whole["text"] == "Hello" and whole["finish_reason"] == "stop"
    assert json.loads(whole["usage"]) == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert whole["problems"] is None and whole["tool_calls"] is None
    assert _summary([STREAM[i:i + 1] for i in range(len(STREAM))]) == whole
    assert _summary([STREAM[:7], STREAM[7:]]) == whole


def test_a_stream_of_tool_calls_sums_to_the_calls_whole():
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    body = (_event({"role": "assistant", "tool_calls": [call]})
            + _event({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]})
            + _event({}, "tool_calls") + b"data: [DONE]\n\n")
    columns = _summary([body[:100], body[100:]])
    assert (columns["text"], columns["finish_reason"], columns["problems"]) == ("", "tool_calls", None)
    assert json.loads(columns["tool_calls"]) == [{**call, "function": {"name": "get_weather",
                                                                      "arguments": '{"city": "Paris"}'}}]


def test_the_content_type_says_whether_it_is_a_stream_else_the_first_bytes_do():
    answer = json.dumps({"id": "c", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Whole"}, "finish_reason": "length"}]}).encode()
    # a stream was asked for, but the answer is a JSON body: it is read as one
    assert (_summary([answer], "application/json")["text"], _summary([answer], None)["finish_reason"]) == \
        ("Whole", "length")
    # a JSON body split across reads is read whole
    assert _summary([answer[:10], answer[10:40], answer[40:]], "application/json")["text"] == "Whole"
    # no content type: the first bytes read as a stream (leading blank lines too)
    assert _summary([b"\n" + STREAM], None)["text"] == "Hello"
    # JSON by its label is not parsed as a stream, whatever it holds
    labelled = _summary([STREAM], "application/json")
    assert labelled["text"] == ""
    assert _problems(labelled)[0].startswith("body: invalid JSON")


def test_a_gzipped_body_is_read_decoded_and_one_that_cannot_be_is_said():
    packed = gzip.compress(STREAM)
    assert _summary([packed[:10], packed[10:]], encoding="gzip")["text"] == "Hello"
    deflated = zlib.compress(STREAM)
    assert _summary([deflated], encoding="deflate")["text"] == "Hello"
    assert _summary([gzip.compress(STREAM)], encoding=" X-GZIP ")["text"] == "Hello"
    broken = _summary([b"this is not gzip at all"], encoding="gzip")
    assert "the body's Content-Encoding could not be decoded" in _problems(broken)
    # a zlib stream is not gzip, whichever name says gzip: as a client's gzip decoder, it cannot undo it
    for name in ("gzip", "x-gzip"):
        assert _problems(_summary([deflated], encoding=name)) == ["the body's Content-Encoding could not be decoded"]
    # an encoding it does not know passes through unread, as the bytes came
    assert _summary([STREAM], encoding="br")["text"] == "Hello"


def test_the_decoder_stays_failed_and_says_nothing_more_after_bad_bytes():
    decoder = Decoder("gzip")
    assert decoder.active and decoder.feed(b"bad bytes") == b"" and decoder.failed
    assert decoder.feed(gzip.compress(b"late")) == b""
    plain = Decoder(None)
    assert not plain.active and plain.feed(b"as is") == b"as is"


def test_one_compressed_read_inflates_to_at_most_the_limit_at_once():
    bomb = gzip.compress(bytes(8 * SUMMARY_LIMIT))  # 8 MiB of zeros in about 8 KB
    assert len(Decoder("gzip").feed(bomb)) == SUMMARY_LIMIT


def test_past_the_limit_it_stops_reading_and_says_so():
    head = _event({"role": "assistant", "content": "A"})
    filler = b": " + b"x" * (SUMMARY_LIMIT - len(head) - 4) + b"\n"  # an SSE comment up to exactly the limit
    assert len(head + filler) == SUMMARY_LIMIT - 1
    at_limit = _summary([head, filler, b"\n"])
    assert at_limit["problems"] is None  # exactly the limit: nothing was left out
    # the limit's last byte is read: here the blank line that ends the last event
    last = _event({"content": "B"}, "stop")
    short = b": " + b"x" * (SUMMARY_LIMIT - len(head) - len(last) - 3) + b"\n"
    assert len(head + short + last) == SUMMARY_LIMIT
    whole = _summary([head + short + last[:-1], last[-1:]])
    assert (whole["text"], whole["finish_reason"], whole["problems"]) == ("AB", "stop", None)
    over = _summary([head, filler, b"\n" + _event({"content": "B"}, "stop")])  # one read across the limit
    assert over["text"] == "A"  # what came past the limit is not read
    assert _problems(over) == [f"summary built from the first {SUMMARY_LIMIT} bytes only"]
    summarizer = Summarizer(True, content_type=SSE)
    summarizer.feed(head + filler + b"\n")
    assert not summarizer.full
    summarizer.feed(b"\n")
    assert summarizer.full


def test_a_last_event_cut_before_its_blank_line_is_not_read_and_is_noted():
    # per the SSE spec an event needs its blank line: the body ended without it, so it is not taken
    cut = _event({"role": "assistant", "content": "Hel"}) + _event({"content": "lo"}, "stop")[:-1]
    columns = _summary([cut])
    assert (columns["text"], columns["finish_reason"]) == ("Hel", None)
    assert _problems(columns) == [f"trailing unterminated event at end of stream (byte {len(cut)})"]


def test_an_empty_body_has_nothing_to_say():
    columns = _summary([])
    assert (columns["text"], columns["finish_reason"], columns["problems"]) == ("", None, None)


def test_at_most_20_problems_are_kept():
    bad = b"".join(b"data: {not json %d}\n\n" % i for i in range(30))
    problems = _problems(_summary([bad]))
    assert len(problems) == 20 and problems[0].startswith("event 0: invalid JSON")


def test_another_dialect_s_stream_is_summed_in_its_own_words():
    events = [{"type": "message_start", "message": {"id": "m", "role": "assistant", "content": []}},
              {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi there"}},
              {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}},
              {"type": "message_stop"}]
    body = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)
    summarizer = Summarizer(True, dialect=dialect_for("/v1/messages"), content_type="text/event-stream")
    summarizer.feed(body)
    columns = summarizer.columns()
    assert (columns["text"], columns["finish_reason"]) == ("Hi there", "max_tokens")


def test_an_ollama_stream_s_last_line_without_its_newline_is_read_and_noted():
    # a JSON line is whole without its newline (unlike an SSE event without its blank line): read, and noted
    lines = [{"model": "m", "message": {"role": "assistant", "content": "Hi"}, "done": False},
             {"model": "m", "message": {"role": "assistant", "content": " there"}, "done": False},
             {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop"}]
    body = b"\n".join(json.dumps(line).encode() for line in lines)
    summarizer = Summarizer(True, dialect=dialect_for("/api/chat"), content_type="application/x-ndjson")
    summarizer.feed(body)
    columns = summarizer.columns()
    assert (columns["text"], columns["finish_reason"]) == ("Hi there", "stop")
    assert _problems(columns) == [f"trailing unterminated line at end of stream (byte {len(body)})"]


def test_a_stream_told_by_its_first_read_stays_a_stream_whatever_its_later_reads_start_with():
    """With no content type to say so, the first read decides that a body is a stream for every read
    after it: a read that starts mid-event is still read as part of the stream."""
    for content_type in (None, "text/plain"):
        columns = _summary([STREAM[:7], STREAM[7:40], STREAM[40:]], content_type)
        assert (columns["text"], columns["finish_reason"], columns["problems"]) == ("Hello", "stop", None)
