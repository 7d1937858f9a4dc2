"""drift.py on shapes written down by hand and on the bundled tapes: what counts as drift (a ratio AND a floor,
each exactly at its limit), the words a person reads, what is resent, and a whole check against a local
upstream that answers with the bundled recording's own bytes."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from streamreplay.bundled import bundled_tape
from streamreplay.cassette import import_cassette
from streamreplay.cli import drift_command
from streamreplay.drift import (
    CONTENT_KEYS,
    DriftError,
    DriftReport,
    ExchangeDrift,
    Shape,
    Tolerance,
    apply_settings,
    compare,
    drift,
    fetch_live,
    field_paths,
    request_for,
    shape_of,
)
from streamreplay.endcause import EndCause
from streamreplay.exchange import Chunk, Exchange
from streamreplay.replay.source import open_source
from tests.helpers import bad_chunk_size, gzip_sse, serve_raw

MS = 1_000_000
SSE = [["Content-Type", "text/event-stream"]]


def shape(**fields: Any) -> Shape:
    """A chat stream of 20 chunks, its first byte at 400 ms and a typical gap of 30 ms."""
    base = Shape(dialect="chat", status=200, content_type="text/event-stream", stream=True,
                 events=["role", "content", "finish", "[DONE]"], fields=["choices", "id"], stop_reason="stop",
                 ending="complete", chunk_count=20, chunk_bytes={"p50": 200, "p90": 240, "max": 300},
                 ttfb_ms=400.0, gap_ms=30.0)
    return replace(base, **fields)


def said(recorded: Shape, live: Shape, tolerance: Tolerance | None = None) -> list[str]:
    return [d.words for d in compare(recorded, live, tolerance)]


def bundled(name: str) -> tuple[Exchange, list[Chunk]]:
    source = open_source(bundled_tape(name), None)
    exchange = source.exchanges()[0]
    return exchange, source.chunks(exchange)


# -- tolerance --------------------------------------------------------------------------------------------


def test_the_default_tolerance_is_the_one_the_readme_prints():
    assert Tolerance().words() == "timing 3x (and 100 ms first byte, 20 ms gap), chunks 2x (and 4 chunks, 64 bytes)"
    custom = Tolerance(timing=1.5, ttfb_floor_ms=12.5, gap_floor_ms=2, count=4, count_floor=1, size_floor=8)
    assert custom.words() == "timing 1.5x (and 12.5 ms first byte, 2 ms gap), chunks 4x (and 1 chunks, 8 bytes)"
    # `streamreplay drift` without --tolerance or --count-tolerance judges by these same defaults
    options = {param.name: param.default for param in drift_command.params}
    assert (options["tolerance"], options["count_tolerance"]) == (Tolerance().timing, Tolerance().count) == (3, 2)


def test_the_same_shape_is_no_drift():
    assert compare(shape(), shape()) == []


def test_a_first_byte_exactly_three_times_later_is_within_tolerance_and_past_it_drifts():
    assert said(shape(ttfb_ms=400.0), shape(ttfb_ms=1200.0)) == []
    assert said(shape(ttfb_ms=400.0), shape(ttfb_ms=1201.0)) == [
        "time to first byte: 400 -> 1201 ms (3.0x; tolerance 3x and 100 ms)"]
    # earlier drifts as much as later
    assert said(shape(ttfb_ms=1201.0), shape(ttfb_ms=400.0)) == [
        "time to first byte: 1201 -> 400 ms (3.0x; tolerance 3x and 100 ms)"]


def test_a_first_byte_that_moves_by_less_than_100_ms_never_drifts_and_by_100_ms_does():
    assert said(shape(ttfb_ms=10.0), shape(ttfb_ms=109.9)) == []
    got = compare(shape(ttfb_ms=10.0), shape(ttfb_ms=110.0))
    assert [(d.field, d.recorded, d.live, d.words) for d in got] == [
        ("ttfb_ms", 10.0, 110.0, "time to first byte: 10 -> 110 ms (11.0x; tolerance 3x and 100 ms)")]


def test_the_typical_gap_has_a_20_ms_floor_and_the_timing_ratio():
    assert said(shape(gap_ms=5.0), shape(gap_ms=24.9)) == []
    assert said(shape(gap_ms=5.5), shape(gap_ms=25.5)) == [
        "typical gap: 5.5 -> 26 ms (4.6x; tolerance 3x and 20 ms)"]
    assert said(shape(gap_ms=20.0), shape(gap_ms=60.0)) == []
    assert said(shape(gap_ms=20.0), shape(gap_ms=60.5)) == [
        "typical gap: 20 -> 60 ms (3.0x; tolerance 3x and 20 ms)"]


def test_a_chunk_count_drifts_past_twice_and_by_at_least_4_chunks_either_way():
    assert said(shape(chunk_count=20), shape(chunk_count=40)) == []
    assert said(shape(chunk_count=20), shape(chunk_count=42)) == ["chunks: 20 -> 42 (2.1x; tolerance 2x and 4)"]
    assert said(shape(chunk_count=20), shape(chunk_count=9)) == ["chunks: 20 -> 9 (2.2x; tolerance 2x and 4)"]
    assert said(shape(chunk_count=1), shape(chunk_count=4)) == []
    assert said(shape(chunk_count=1), shape(chunk_count=5)) == ["chunks: 1 -> 5 (5.0x; tolerance 2x and 4)"]
    assert said(shape(chunk_count=0), shape(chunk_count=4)) == ["chunks: 0 -> 4 (from none; tolerance 2x and 4)"]


def test_chunk_sizes_p50_and_p90_drift_past_twice_and_by_64_bytes_and_the_max_never():
    sizes = {"p50": 30, "p90": 100, "max": 100}
    assert said(shape(chunk_bytes=sizes), shape(chunk_bytes={"p50": 93, "p90": 163, "max": 9000})) == []
    got = compare(shape(chunk_bytes=sizes), shape(chunk_bytes={"p50": 94, "p90": 250, "max": 100}))
    assert [(d.field, d.recorded, d.live, d.words) for d in got] == [
        ("chunk_bytes_p50", 30, 94, "chunk size p50: 30 -> 94 bytes (3.1x; tolerance 2x and 64 bytes)"),
        ("chunk_bytes_p90", 100, 250, "chunk size p90: 100 -> 250 bytes (2.5x; tolerance 2x and 64 bytes)")]
    assert said(shape(chunk_bytes=sizes), shape(chunk_bytes={})) == []


def test_a_timing_missing_on_either_side_is_not_compared():
    assert said(shape(ttfb_ms=None, gap_ms=None), shape(ttfb_ms=5000.0, gap_ms=900.0)) == []
    assert said(shape(), shape(ttfb_ms=None, gap_ms=None)) == []


def test_a_given_tolerance_replaces_every_default():
    loose = Tolerance(timing=10, ttfb_floor_ms=1, gap_floor_ms=1, count=1, count_floor=1, size_floor=1)
    assert said(shape(ttfb_ms=400.0, gap_ms=30.0), shape(ttfb_ms=3900.0, gap_ms=300.0), loose) == []
    assert said(shape(chunk_count=20), shape(chunk_count=21), loose) == ["chunks: 20 -> 21 (1.1x; tolerance 1x and 1)"]
    assert said(shape(chunk_bytes={"p50": 10, "p90": 10}), shape(chunk_bytes={"p50": 11, "p90": 10}), loose) == [
        "chunk size p50: 10 -> 11 bytes (1.1x; tolerance 1x and 1 bytes)"]
    assert said(shape(ttfb_ms=400.0), shape(ttfb_ms=4001.0), loose) == [
        "time to first byte: 400 -> 4001 ms (10.0x; tolerance 10x and 1 ms)"]
    assert said(shape(gap_ms=3.0), shape(gap_ms=31.0), loose) == [
        "typical gap: 3 -> 31 ms (10.3x; tolerance 10x and 1 ms)"]


# -- what changed, in words -----------------------------------------------------------------------------------


def test_status_content_type_streaming_stop_reason_and_ending_are_named_with_both_values():
    live = shape(status=None, content_type="application/json", stream=False, stop_reason="length",
                 ending="eof_without_done")
    got = compare(shape(), live)
    assert [(d.field, d.recorded, d.live) for d in got] == [
        ("status", 200, None), ("content_type", "text/event-stream", "application/json"), ("stream", True, False),
        ("stop_reason", "stop", "length"), ("ending", "complete", "eof_without_done")]
    assert [d.words for d in got] == ["status: 200 -> none", "content type: text/event-stream -> application/json",
                                      "streamed: true -> false", "finish_reason: stop -> length",
                                      "ending: complete -> eof_without_done"]


@pytest.mark.parametrize(("dialect", "name"), [("chat", "finish_reason"), ("anthropic", "stop_reason"),
                                               ("ollama", "done_reason"), ("responses", "stop reason")])
def test_the_stop_reason_is_named_in_the_dialects_words_unless_it_is_a_status(dialect: str, name: str):
    assert said(shape(dialect=dialect), shape(dialect=dialect, stop_reason=None)) == [f"{name}: stop -> none"]


def test_event_types_added_or_gone_are_named_once_each_and_a_new_order_in_full():
    before = ["role", "content", "finish", "[DONE]"]
    got = compare(shape(events=before), shape(events=["role", "content", "usage", "content", "usage", "finish"]))
    assert [(d.field, d.recorded, d.live, d.words) for d in got] == [
        ("events", before, ["role", "content", "usage", "content", "usage", "finish"],
         "event types added: usage; gone: [DONE]")]
    assert said(shape(events=before), shape(events=["role", "content", "finish"])) == ["event types gone: [DONE]"]
    assert said(shape(events=before), shape(events=[*before, "ping"])) == ["event types added: ping"]
    assert said(shape(events=before), shape(events=["role", "finish", "content", "[DONE]"])) == [
        "event order: role content finish [DONE] -> role finish content [DONE]"]


def test_fields_added_and_gone_are_listed_sorted():
    got = compare(shape(fields=["a", "c", "z"]), shape(fields=["c", "y", "b"]))
    assert [(d.field, d.recorded, d.live, d.words) for d in got] == [
        ("fields_added", None, ["b", "y"], "fields added: b, y"),
        ("fields_gone", ["a", "z"], None, "fields gone: a, z")]


def test_small_fractions_keep_one_decimal_and_the_rest_none():
    assert said(shape(ttfb_ms=0.5), shape(ttfb_ms=200.0)) == [
        "time to first byte: 0.5 -> 200 ms (400.0x; tolerance 3x and 100 ms)"]
    assert said(shape(ttfb_ms=9.0), shape(ttfb_ms=300.75)) == [
        "time to first byte: 9 -> 301 ms (33.4x; tolerance 3x and 100 ms)"]
    assert said(shape(gap_ms=0.0), shape(gap_ms=20.0)) == [
        "typical gap: 0 -> 20 ms (from none; tolerance 3x and 20 ms)"]


def test_an_exchange_and_a_report_read_as_the_cli_prints_them():
    quiet = ExchangeDrift("t:0", "POST", "/v1/chat/completions", None, shape(), shape(), [])
    moved = ExchangeDrift("t:1", "POST", "/v1/messages", "claude", shape(), shape(status=500),
                          compare(shape(), shape(status=500, ending="upstream_closed")))
    assert quiet.lines() == ["t:0  POST /v1/chat/completions  -  no drift"] and not quiet.drifted
    assert moved.lines() == ["t:1  POST /v1/messages  claude  DRIFTED (2)", "    status: 200 -> 500",
                             "    ending: complete -> upstream_closed"] and moved.drifted
    report = DriftReport("t", "http://h/v1", Tolerance(), total=2, exchanges=[quiet], notes=["n1", "n2"])
    assert report.lines() == [
        "drift: tape t, 2 exchanges resent to http://h/v1",
        "tolerance: timing 3x (and 100 ms first byte, 20 ms gap), chunks 2x (and 4 chunks, 64 bytes)",
        "note: n1", "note: n2", "t:0  POST /v1/chat/completions  -  no drift", "no drift in 1 exchange"]
    assert not report.drifted
    report.exchanges.append(moved)
    assert report.drifted and report.tail() == "1 of 2 exchanges drifted"
    everything = DriftReport(None, "http://h", Tolerance(), total=1)
    assert everything.head()[0] == "drift: every tape, 1 exchange resent to http://h"
    assert everything.tail() == "no drift in 0 exchanges"
    assert json.loads(json.dumps(report.to_json()))["exchanges"][1] == {
        "ref": "t:1", "method": "POST", "path": "/v1/messages", "model": "claude", "drifted": True,
        "differences": [{"field": "status", "recorded": 200, "live": 500, "words": "status: 200 -> 500"},
                        {"field": "ending", "recorded": "complete", "live": "upstream_closed",
                         "words": "ending: complete -> upstream_closed"}],
        "recorded": shape().to_json(), "live": shape(status=500).to_json()}
    top = report.to_json()
    assert (top["tape"], top["upstream"], top["drifted"], top["notes"]) == ("t", "http://h/v1", True, ["n1", "n2"])
    assert top["tolerance"] == {"timing": 3.0, "ttfb_floor_ms": 100.0, "gap_floor_ms": 20.0, "count": 2.0,
                                "count_floor": 4, "size_floor": 64}


# -- the shape of an answer ---------------------------------------------------------------------------------


def test_the_bundled_chat_answer_has_its_recorded_shape():
    got = shape_of(*bundled("openai-happy-path"))
    assert got == Shape(
        dialect="chat", status=200, content_type="text/event-stream", stream=True,
        events=["role", "content", "finish", "[DONE]"],
        fields=["choices", "choices[].delta", "choices[].delta.content", "choices[].delta.role",
                "choices[].finish_reason", "choices[].index", "choices[].logprobs", "created", "id", "model", "object"],
        stop_reason="stop", ending="complete", chunk_count=18, chunk_bytes={"p50": 239, "p90": 243, "max": 244},
        ttfb_ms=430.044721, gap_ms=12.044764)


def test_the_bundled_anthropic_answer_is_read_in_its_own_event_types():
    got = shape_of(*bundled("anthropic-happy-path"))
    assert got.events == ["message_start", "content_block_start", "ping", "content_block_delta",
                          "content_block_stop", "message_delta", "message_stop"]
    assert (got.dialect, got.stop_reason, got.chunk_count, got.chunk_bytes) == (
        "anthropic", "end_turn", 24, {"p50": 119, "p90": 123, "max": 233})


def chat_exchange(**fields: Any) -> Exchange:
    base = {"id": 1, "tape": "t", "seq": 0, "method": "POST", "path": "/v1/chat/completions", "status": 200,
            "response_headers": SSE, "end_cause": EndCause.COMPLETE}
    return Exchange(**{**base, **fields})


EVENTS = [b'data: {"choices":[{"delta":{"content":"Hi"},"index":0}]}\n\n',
          b'data: {"choices":[{"delta":{},"finish_reason":"length","index":0}]}\n\n', b"data: [DONE]\n\n"]


def test_timings_sizes_and_the_median_gap_come_from_the_chunks():
    chunks = [Chunk(i, t * MS, data) for i, (t, data) in enumerate(zip((5, 15, 35, 65, 465), [
        EVENTS[0][:10], EVENTS[0][10:], EVENTS[1], EVENTS[2][:4], EVENTS[2][4:]], strict=True))]
    got = shape_of(chat_exchange(ttfb_ns=5 * MS + 500_000), chunks)
    sizes = sorted(len(c.data) for c in chunks)
    assert (got.chunk_count, got.ttfb_ms, got.gap_ms) == (5, 5.5, 25.0)  # gaps 10, 20, 30, 400: a pause moves a mean
    assert got.chunk_bytes == {"p50": sizes[2], "p90": sizes[4], "max": sizes[4]}
    assert (got.events, got.stop_reason) == (["content", "finish", "[DONE]"], "length")
    odd = shape_of(chat_exchange(), [Chunk(i, t * MS, d) for i, (t, d) in enumerate(zip((0, 10, 40), EVENTS,
                                                                                      strict=True))])
    assert odd.gap_ms == 20.0 and odd.ttfb_ms is None


def test_nearest_rank_sizes_are_sizes_some_chunk_had():
    chunks = [Chunk(i, i * MS, b"x" * n) for i, n in enumerate((10, 30, 20))]
    assert shape_of(chat_exchange(), chunks).chunk_bytes == {"p50": 20, "p90": 30, "max": 30}
    ten = [Chunk(i, i * MS, b"x" * n) for i, n in enumerate(range(1, 11))]
    assert shape_of(chat_exchange(), ten).chunk_bytes == {"p50": 5, "p90": 9, "max": 10}
    one = shape_of(chat_exchange(), [Chunk(0, 0, b"x" * 7)])
    assert (one.chunk_bytes, one.gap_ms) == ({"p50": 7, "p90": 7, "max": 7}, None)
    none = shape_of(chat_exchange(response_headers=[]), [])
    assert (none.chunk_bytes, none.chunk_count, none.stream, none.fields, none.stop_reason) == (
        {"p50": 0, "p90": 0, "max": 0}, 0, False, [], None)


def test_a_json_answer_is_not_a_stream_and_its_fields_and_stop_reason_are_read():
    body = b'{"id": "c1", "choices": [{"message": {"content": "Hi"}, "finish_reason": "stop"}]}'
    ex = chat_exchange(response_headers=[["content-type", "Application/JSON; charset=utf-8"]])
    got = shape_of(ex, [Chunk(0, MS, body[:20]), Chunk(1, 2 * MS, body[20:])])
    assert (got.content_type, got.stream, got.events, got.stop_reason) == ("application/json", False, [], "stop")
    assert got.fields == ["choices", "choices[].finish_reason", "choices[].message", "choices[].message.content", "id"]


def test_without_a_content_type_the_body_says_whether_it_streams():
    streamed = shape_of(chat_exchange(response_headers=[]), [Chunk(0, 0, b"".join(EVENTS))])
    assert (streamed.content_type, streamed.stream, streamed.stop_reason) == (None, True, "length")
    plain = shape_of(chat_exchange(response_headers=[["Content-Type", "text/plain"]]), [Chunk(0, 0, b"hello")])
    assert (plain.content_type, plain.stream, plain.fields) == ("text/plain", False, [])


def test_a_compressed_answer_is_read_decompressed():
    packed = gzip.compress(b"".join(EVENTS))
    ex = chat_exchange(response_headers=[*SSE, ["Content-Encoding", "gzip"]])
    got = shape_of(ex, [Chunk(0, 0, packed[:15]), Chunk(1, MS, packed[15:])])
    assert (got.events, got.stop_reason, got.chunk_count) == (["content", "finish", "[DONE]"], "length", 2)


def test_the_ending_is_the_upstreams_when_the_client_left_first():
    chunks = [Chunk(0, 0, b"".join(EVENTS))]
    left = chat_exchange(end_cause=EndCause.CLIENT_LEFT, upstream_end=EndCause.EOF_WITHOUT_DONE)
    assert shape_of(left, chunks).ending == "eof_without_done"
    assert shape_of(chat_exchange(end_cause=EndCause.CLIENT_LEFT), chunks).ending == "client_left"
    assert shape_of(chat_exchange(end_cause=None), chunks).ending is None


def test_field_paths_collapse_list_indices_and_stop_at_content_keys():
    value = {"choices": [{"delta": {"tool_calls": [{"function": {"arguments": {"x": 1}}}]}}],
             "input": {"q": 1}, "metadata": {"m": 1}, "n": [[{"k": 1}]]}
    assert {"arguments", "input", "metadata"} == CONTENT_KEYS
    assert field_paths(value) == {"choices", "choices[].delta", "choices[].delta.tool_calls",
                                  "choices[].delta.tool_calls[].function",
                                  "choices[].delta.tool_calls[].function.arguments",
                                  "input", "metadata", "n", "n[][].k"}
    assert field_paths([{"a": 1}]) == {"[].a"} and field_paths("x") == set()


def test_field_paths_stop_at_32_levels():
    deep: Any = 1
    for _ in range(40):
        deep = {"a": deep}
    paths = field_paths(deep)
    assert len(paths) == 32 and "a" + ".a" * 31 in paths
    listed: Any = {"k": 1}
    for _ in range(31):
        listed = [listed]
    assert field_paths(listed) == {"[]" * 31 + ".k"} and field_paths([listed]) == set()


# -- what is resent ---------------------------------------------------------------------------------------


def test_the_recorded_request_is_resent_without_its_redacted_headers_and_compression():
    exchange, _ = bundled("openai-happy-path")
    request = request_for(exchange, "http://127.0.0.1:9/v1/")
    assert (request.method, str(request.url)) == ("POST", "http://127.0.0.1:9/v1/chat/completions")
    names = [name for name, _ in request.headers]
    assert "Authorization" not in names and "Connection" not in names and "Accept-Encoding" in names
    assert request.headers[-1] == ("Accept-Encoding", "identity") and names.count("Accept-Encoding") == 1
    assert request.headers[0] == ("Accept", "application/json")
    assert request.unsent_headers == ["Authorization"] and request.body == exchange.request_body
    assert (request.unsent_query, request.redacted_fields) == ([], [])


def test_given_headers_replace_recorded_ones_of_any_case():
    exchange, _ = bundled("openai-happy-path")
    request = request_for(exchange, "http://h", [("authorization", "Bearer k"), ("user-agent", "drift")])
    assert request.unsent_headers == []
    assert request.headers[-3:] == [("authorization", "Bearer k"), ("user-agent", "drift"),
                                    ("Accept-Encoding", "identity")]
    assert [n for n, _ in request.headers].count("User-Agent") == 0


def test_redacted_query_parameters_are_left_out_and_an_untouched_query_goes_as_recorded():
    ex = chat_exchange(query="api-version=2024-10-21&key=%5Bredacted%5D&x=a%20b", path="/chat/completions")
    request = request_for(ex, "http://h/v1")
    assert request.unsent_query == ["key"]
    assert str(request.url) == "http://h/v1/chat/completions?api-version=2024-10-21&x=a+b"
    assert str(request_for(chat_exchange(query="x=a%20b"), "http://h").url) == "http://h/v1/chat/completions?x=a%20b"
    assert str(request_for(chat_exchange(), "http://h").url) == "http://h/v1/chat/completions"


def test_settings_set_body_fields_and_fields_still_redacted_are_named():
    body = json.dumps({"model": "m", "api_key": REDACTED_VALUE, "messages": [{"name": REDACTED_VALUE}],
                       "meta": {"user": REDACTED_VALUE}}).encode()
    request = request_for(chat_exchange(request_body=body), "http://h", settings={"max_tokens": 3, "api_key": "k"})
    assert json.loads(request.body) == {"model": "m", "api_key": "k", "messages": [{"name": REDACTED_VALUE}],
                                        "meta": {"user": REDACTED_VALUE}, "max_tokens": 3}
    assert request.redacted_fields == ["messages[].name", "meta.user"]
    assert request_for(chat_exchange(request_body=body), "http://h").redacted_fields == [
        "api_key", "messages[].name", "meta.user"]
    assert request_for(chat_exchange(request_body=b'"[redacted]"'), "http://h").redacted_fields == [""]


REDACTED_VALUE = "[redacted]"


def test_apply_settings_makes_objects_on_the_way_and_leaves_other_bodies_alone():
    assert apply_settings(b'{"a": 1, "m": {"c": 1}, "t": "caf\\u00e9"}', {"a.b": 2, "m.d": "é", "x.y.z": None}) == (
        '{"a": {"b": 2}, "m": {"c": 1, "d": "é"}, "t": "café", "x": {"y": {"z": null}}}'.encode())
    for body in (b"[1]", b"not json", b""):
        assert apply_settings(body, {"a": 1}) is body


# -- a whole check ----------------------------------------------------------------------------------------


def replaying(exchange: Exchange, chunks: list[Chunk], seen: list[web.Request], drop_last: bool = False
              ) -> web.Application:
    """An upstream that answers any request with the recorded head and bytes (the last read left out if
    asked), at once."""
    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        seen.append(request)
        resp = web.StreamResponse(status=exchange.status or 200)
        for name, value in exchange.response_headers:
            if name.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                resp.headers[name] = value
        await resp.prepare(request)
        for chunk in chunks[:-1] if drop_last else chunks:
            await resp.write(chunk.data)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


LOOSE_TIMING = Tolerance(timing=1e9, count=1e9)  # a local upstream answers at once and in fewer reads


async def test_the_same_bytes_again_are_no_drift_and_each_exchange_is_reported(aiohttp_server: Any):
    exchange, chunks = bundled("openai-happy-path")
    seen: list[web.Request] = []
    server = await aiohttp_server(replaying(exchange, chunks, seen))
    started: list[DriftReport] = []
    done: list[ExchangeDrift] = []
    report = await drift(bundled_tape("openai-happy-path"), None, str(server.make_url("/v1")),
                         headers=[("Authorization", "Bearer sk-given")], tolerance=LOOSE_TIMING,
                         settings={"max_tokens": 7}, on_start=started.append, on_exchange=done.append)
    assert report.lines() == [
        f"drift: tape openai-happy-path, 1 exchange resent to {server.make_url('/v1')}",
        "tolerance: timing 1e+09x (and 100 ms first byte, 20 ms gap), chunks 1e+09x (and 4 chunks, 64 bytes)",
        "openai-happy-path:0  POST /chat/completions  smollm2  no drift", "no drift in 1 exchange"]
    assert started == [report] and done == report.exchanges and not report.drifted
    assert seen[0].headers["Authorization"] == "Bearer sk-given" and seen[0].path == "/v1/chat/completions"
    assert json.loads(await seen[0].read())["max_tokens"] == 7
    live = report.exchanges[0].live
    assert (live.ending, live.stop_reason, live.status) == ("complete", "stop", 200)
    assert live.ttfb_ms is not None and live.gap_ms is not None or live.chunk_count == 1


async def test_an_answer_cut_before_its_terminal_event_drifts(aiohttp_server: Any):
    exchange, chunks = bundled("openai-happy-path")
    server = await aiohttp_server(replaying(exchange, chunks, [], drop_last=True))
    report = await drift(open_source(bundled_tape("openai-happy-path"), None), "mine", str(server.make_url("/v1")),
                         tolerance=LOOSE_TIMING)
    assert report.tape == "openai-happy-path" and report.notes == [
        "sent without the headers the recording redacted: Authorization (give them with --header 'Name: value')"]
    assert report.drifted and [d.words for d in report.exchanges[0].differences] == [
        "event types gone: [DONE]", "ending: complete -> eof_without_done"]


async def test_an_upstream_that_cannot_be_reached_is_a_drift_error_naming_it_without_secrets():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    where = rf"http://127\.0\.0\.1:{port}/v1/chat/completions"
    with pytest.raises(DriftError, match=rf"^cannot reach the upstream {where}: .*{port}"):
        await drift(bundled_tape("openai-happy-path"), None, f"http://user:pw@127.0.0.1:{port}/v1")


async def test_what_cannot_be_checked_says_so_in_one_line(tmp_path: Path):
    with pytest.raises(ValueError, match=r"^--upstream must be an http\(s\) URL, got 'ftp://h/v1'$"):
        await drift(bundled_tape("openai-happy-path"), None, "ftp://user:pw@h/v1?key=s")
    # a URL without its scheme is the usual slip: it is named, not taken for a relative URL
    for upstream, shown in (("http:///v1", "http:///v1"), ("127.0.0.1:8080/v1?key=s", "127.0.0.1:8080/v1"),
                            ("user:pw@host/v1", "host/v1")):
        with pytest.raises(ValueError, match=rf"^--upstream must be an http\(s\) URL, got '{shown}'$"):
            await drift(bundled_tape("openai-happy-path"), None, upstream)
    with pytest.raises(DriftError, match=r"^no recordings at .*nothing\.db$"):
        await drift(tmp_path / "nothing.db", None, "http://127.0.0.1:9")


def test_the_notes_name_what_could_not_be_sent_once_each():
    from streamreplay.drift import _notes
    a = request_for(chat_exchange(request_headers=[["X-Key", REDACTED_VALUE], ["Cookie", REDACTED_VALUE]],
                                  query="key=%5Bredacted%5D&sig=%5Bredacted%5D",
                                  request_body=b'{"api_key": "[redacted]"}'), "http://h")
    b = request_for(chat_exchange(request_headers=[["X-Key", REDACTED_VALUE]], query="key=%5Bredacted%5D",
                                  request_body=b'{"user": "[redacted]"}'), "http://h")
    assert _notes([a, b]) == [
        "sent without the headers the recording redacted: X-Key, Cookie (give them with --header 'Name: value')",
        "sent without the query parameters the recording redacted: key, sig",
        "body fields sent as [redacted]: api_key, user (set them with --set)"]
    assert _notes([request_for(chat_exchange(), "http://h")]) == []


# -- reading a live answer ------------------------------------------------------------------------------


def paced(events: list[bytes], headers: dict[str, str], status: int = 200, stall: float = 0.0) -> web.Application:
    """An upstream that writes each event 20 ms after the one before (each a read of its own), then stalls
    for `stall` seconds before it ends."""
    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=status, headers=headers)
        await resp.prepare(request)
        for data in events:
            await asyncio.sleep(0.02)
            await resp.write(data)
        await asyncio.sleep(stall)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


async def live_answer(url: str, exchange: Exchange | None = None, read_timeout: float = 10
                      ) -> tuple[Exchange, list[Chunk]]:
    exchange = exchange or chat_exchange(id=7, tape="t", seq=3, query="a=1")
    timeout = aiohttp.ClientTimeout(total=None, sock_read=read_timeout)
    async with aiohttp.ClientSession(auto_decompress=False, timeout=timeout) as session:
        return await fetch_live(session, exchange, request_for(exchange, url))


async def test_a_live_answer_is_read_read_by_read_and_timed_from_the_request(aiohttp_server: Any):
    server = await aiohttp_server(paced(EVENTS, {"Content-Type": "text/event-stream", "X-Id": "r1"}))
    live, chunks = await live_answer(str(server.make_url("/v1")))
    assert (live.id, live.tape, live.seq, live.method, live.path, live.query) == (
        7, "t", 3, "POST", "/v1/chat/completions", "a=1")
    assert (live.status, live.done, live.end_cause, live.end_detail) == (200, True, EndCause.COMPLETE, None)
    assert ["X-Id", "r1"] in live.response_headers and live.response_header("content-type") == "text/event-stream"
    assert [(c.index, c.data) for c in chunks] == list(enumerate(EVENTS))
    assert (live.chunk_count, live.byte_count) == (3, sum(map(len, EVENTS)))
    times = [c.t_ns for c in chunks]
    assert 0 < live.headers_ns <= live.ttfb_ns == times[0] < times[1] < times[2] <= live.duration_ns < 5 * 10**9
    assert all(b - a >= 15 * MS for a, b in zip(times, times[1:], strict=False))  # paced 20 ms apart
    got = shape_of(live, chunks)
    assert (got.events, got.stop_reason, got.ending, got.chunk_count) == (
        ["content", "finish", "[DONE]"], "length", "complete", 3)
    assert got.gap_ms is not None and got.gap_ms >= 15


async def test_a_live_stream_without_its_terminal_event_or_with_an_error_status_ends_so(aiohttp_server: Any):
    cut = await aiohttp_server(paced(EVENTS[:2], {"Content-Type": "text/event-stream"}))
    live, _ = await live_answer(str(cut.make_url("/v1")))
    assert (live.done, live.end_cause) == (False, EndCause.EOF_WITHOUT_DONE)
    failed = await aiohttp_server(paced([b'{"error": {}}'], {"Content-Type": "application/json"}, status=429))
    live, _ = await live_answer(str(failed.make_url("/v1")))
    assert (live.status, live.end_cause) == (429, EndCause.HTTP_ERROR)


async def test_a_redirect_is_the_answer_not_followed(aiohttp_server: Any):
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", moved)
    server = await aiohttp_server(app)
    live, chunks = await live_answer(str(server.make_url("/v1")))
    assert live.status == 302 and live.response_header("Location") == "/elsewhere"


async def test_a_compressed_live_answer_is_kept_compressed_as_recording_keeps_it(aiohttp_server: Any):
    writes, handler = gzip_sse(EVENTS)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = await aiohttp_server(app)
    live, chunks = await live_answer(str(server.make_url("/v1")))
    assert b"".join(c.data for c in chunks) == b"".join(writes) and live.done
    recorded = chat_exchange(response_headers=[*SSE, ["Content-Encoding", "gzip"]], ttfb_ns=live.ttfb_ns)
    assert compare(shape_of(recorded, [Chunk(i, 0, w) for i, w in enumerate(writes)]), shape_of(live, chunks),
                   LOOSE_TIMING) == []
    report = await drift(open_source(bundled_tape("openai-happy-path"), None), None, str(server.make_url("/v1")),
                         tolerance=Tolerance(timing=1e9, count=1e9, size_floor=10**9))
    # decompressed on the way, the bytes would not be what the Content-Encoding says, and read as no events
    seen = report.exchanges[0].live
    assert (seen.events, seen.stop_reason, seen.ending) == (["content", "finish", "[DONE]"], "length", "complete")


async def test_a_body_broken_mid_stream_or_no_answer_at_all_is_an_upstream_ending():
    server, url = await serve_raw(bad_chunk_size)
    async with server:
        live, chunks = await live_answer(url)
    assert (live.status, live.end_cause, chunks[0].data) == (200, EndCause.UPSTREAM_MALFORMED, b"data: ")
    assert live.duration_ns is not None and live.chunk_count == 1

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server, url = await serve_raw(hang_up)
    async with server:
        live, chunks = await live_answer(url)
    assert (live.status, live.end_cause, live.end_detail, chunks) == (
        None, EndCause.UPSTREAM_CLOSED, "ServerDisconnectedError", [])


async def test_an_upstream_silent_past_the_timeout_is_an_upstream_timeout(aiohttp_server: Any):
    stalls = await aiohttp_server(paced(EVENTS[:1], {"Content-Type": "text/event-stream"}, stall=2))
    live, chunks = await live_answer(str(stalls.make_url("/v1")), read_timeout=0.3)
    assert (live.status, live.end_cause, len(chunks)) == (200, EndCause.UPSTREAM_TIMEOUT, 1)
    report = await drift(bundled_tape("openai-happy-path"), None, str(stalls.make_url("/v1")), timeout=0.3,
                         tolerance=LOOSE_TIMING)
    assert report.exchanges[0].live.ending == "upstream_timeout"

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(2)
        writer.close()

    server, url = await serve_raw(silent)
    async with server:
        live, _ = await live_answer(url, read_timeout=0.3)
    assert (live.status, live.end_cause) == (None, EndCause.UPSTREAM_TIMEOUT)
    assert live.end_detail is not None and live.end_detail.endswith("TimeoutError")


# -- the edges of reading and comparing ---------------------------------------------------------------------


def test_the_content_type_decides_before_the_body_does():
    sse_body = [Chunk(0, 0, b"".join(EVENTS))]
    # a stream content type with nothing read is still a stream; a JSON one with stream-looking bytes is not
    assert shape_of(chat_exchange(), []).stream
    as_json = shape_of(chat_exchange(response_headers=[["Content-Type", "application/json"]]), sse_body)
    assert (as_json.stream, as_json.events) == (False, [])
    two_params = chat_exchange(response_headers=[["Content-Type", "Application/JSON; charset=utf-8; x=1"]])
    assert shape_of(two_params, [Chunk(0, 0, b"{}")]).content_type == "application/json"
    named = shape_of(chat_exchange(end_cause="eof_without_done"), sse_body)  # a plain string, as a row holds it
    assert named.ending == "eof_without_done"


def test_the_p90_of_19_sizes_is_the_18th():
    chunks = [Chunk(i, i * MS, b"x" * n) for i, n in enumerate(range(1, 20))]
    assert shape_of(chat_exchange(), chunks).chunk_bytes == {"p50": 10, "p90": 18, "max": 19}


def test_field_paths_of_every_item_of_a_list_are_kept():
    assert field_paths({"l": [{"a": 1}, {"b": 2}, 3]}) == {"l", "l[].a", "l[].b"}


def test_several_event_types_added_and_gone_are_listed_with_commas():
    assert said(shape(events=["a", "b", "c"]), shape(events=["c", "d", "e"])) == [
        "event types added: d, e; gone: a, b"]


def test_each_difference_is_named_by_its_shape_field():
    got = compare(shape(chunk_count=1, gap_ms=1.0, ttfb_ms=1.0, chunk_bytes={"p50": 1, "p90": 1}),
                  shape(chunk_count=100, gap_ms=100.0, ttfb_ms=1000.0, chunk_bytes={"p50": 100, "p90": 100}))
    assert [d.field for d in got] == ["chunk_count", "chunk_bytes_p50", "chunk_bytes_p90", "ttfb_ms", "gap_ms"]


def test_numbers_of_ten_and_more_are_whole_and_words_keep_their_case():
    assert said(shape(ttfb_ms=10.5), shape(ttfb_ms=200.25)) == [
        "time to first byte: 10 -> 200 ms (19.1x; tolerance 3x and 100 ms)"]
    assert said(shape(stop_reason="MAX_TOKENS"), shape(stop_reason="STOP")) == ["finish_reason: MAX_TOKENS -> STOP"]


def test_the_recorded_host_length_and_encoding_are_not_resent_and_later_headers_are():
    ex = chat_exchange(request_headers=[["Host", "api.example"], ["Authorization", REDACTED_VALUE],
                                        ["Content-Length", "12"], ["X-After", "1"], ["accept-encoding", "gzip"]])
    request = request_for(ex, "http://h", [("AUTHORIZATION", "Bearer k")])
    assert request.headers == [("X-After", "1"), ("AUTHORIZATION", "Bearer k"), ("Accept-Encoding", "identity")]


def test_blank_query_values_are_kept_when_the_query_is_rewritten():
    ex = chat_exchange(query="a=&key=%5Bredacted%5D&b=2")
    assert str(request_for(ex, "http://h/X/").url) == "http://h/X/v1/chat/completions?a=&b=2"


async def test_a_tape_of_a_db_is_resent_alone_and_an_unknown_one_is_named(tmp_path: Path, aiohttp_server: Any):
    db = tmp_path / "two.db"
    import_cassette(bundled_tape("openai-happy-path"), db)
    import_cassette(bundled_tape("anthropic-happy-path"), db)
    exchange, chunks = bundled("anthropic-happy-path")
    server = await aiohttp_server(replaying(exchange, chunks, []))
    report = await drift(db, "anthropic-happy-path", str(server.make_url("/")), tolerance=LOOSE_TIMING)
    assert [e.ref for e in report.exchanges] == ["anthropic-happy-path:0"] and not report.drifted
    assert report.exchanges[0].recorded == shape_of(exchange, chunks)
    with pytest.raises(DriftError) as caught:
        await drift(db, "nope", "http://127.0.0.1:9")
    assert str(caught.value) == f"no tape 'nope' in {db} (tapes: openai-happy-path, anthropic-happy-path)"


async def test_an_https_upstream_is_an_upstream_too():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DriftError, match="^cannot reach the upstream https://127"):
        await drift(bundled_tape("openai-happy-path"), None, f"https://127.0.0.1:{port}/v1")


def test_an_event_type_that_comes_back_after_another_is_listed_again_in_its_place():
    """A stream's event types are kept in order, a run of one type read as one: content, then a tool call, then
    content again is three entries, so a live answer that changes that order is said to."""
    content = b'data: {"choices":[{"delta":{"content":"Hi"},"index":0}]}\n\n'
    call = (b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c","type":"function",'
            b'"function":{"name":"f","arguments":"{}"}}]},"index":0}]}\n\n')
    stream = [content, content, call, content, EVENTS[1], EVENTS[2]]
    got = shape_of(chat_exchange(), [Chunk(i, i * MS, d) for i, d in enumerate(stream)])
    assert got.events == ["content", "tool_calls", "content", "finish", "[DONE]"]
    calls_last = [content, content, content, call, EVENTS[1], EVENTS[2]]
    live = shape_of(chat_exchange(), [Chunk(i, i * MS, d) for i, d in enumerate(calls_last)])
    assert said(got, live) == ["event order: content tool_calls content finish [DONE] -> "
                               "content tool_calls finish [DONE]"]


async def test_a_live_answer_s_head_and_first_byte_are_timed_from_the_request_sent(aiohttp_server: Any):
    """The live answer is timed as recording times it, from the moment the request is sent: an upstream that
    thinks 200 ms before its head gives a head and a first byte that late (150 ms at least), not near zero."""
    async def slow_head(request: web.Request) -> web.StreamResponse:
        await request.read()
        await asyncio.sleep(0.2)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"".join(EVENTS))
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/{tail:.*}", slow_head)
    server = await aiohttp_server(app)
    live, chunks = await live_answer(str(server.make_url("/v1")))
    assert live.end_cause == EndCause.COMPLETE and chunks
    assert 150 * MS <= live.headers_ns <= live.ttfb_ns == chunks[0].t_ns <= live.duration_ns
