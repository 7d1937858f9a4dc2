"""The recording proxy's request handler, one promise at a time: a real RecordingProxy on a free port in
front of a scripted upstream that speaks OpenAI's exact SSE wire, read by a real HTTP client. Each test
pins what the client got, what the upstream was sent, and every stored field the handler writes."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import re
import socket
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from streamreplay.dialects.base import SEAM
from streamreplay.endcause import EndCause
from streamreplay.exchange import Exchange
from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions, format_exchange_line, redact_body
from streamreplay.replay import ReplayServer
from streamreplay.store import Chunk, Store, StoreError
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import SECRET, bad_chunk_size, chat, chat_upstream, gzip_sse, post, serve_raw, until

EVENTS = 10  # the default script's stream: role, 7 content pieces, finish, [DONE]
DONE = b"data: [DONE]\n\n"


@dataclass
class Rig:
    upstream: ScriptedUpstream
    proxy: RecordingProxy
    db: Path
    lines: list[str] = field(default_factory=list)

    async def stored(self) -> tuple[Exchange, list[Chunk]]:
        await self.proxy.settle()
        store = Store(self.db)
        (ex,) = store.exchanges()
        return ex, store.chunks(ex.id)


@asynccontextmanager
async def rig(tmp_path: Path, *scripts: Script, **options) -> AsyncIterator[Rig]:
    db = tmp_path / "rec.db"
    async with ScriptedUpstream() as upstream:
        upstream.queue(*scripts)
        lines: list[str] = []
        opts = RecordOptions(upstream=upstream.base_url, db=str(db), tape="t", log=lines.append, **options)
        async with RecordingProxy(opts) as proxy:
            yield Rig(upstream, proxy, db, lines)


@asynccontextmanager
async def handled(tmp_path: Path, handler, **options) -> AsyncIterator[Rig]:
    """A rig whose upstream answers with `handler` (what no script gives)."""
    db = tmp_path / "rec.db"
    lines: list[str] = []
    async with chat_upstream(handler) as url, \
            RecordingProxy(RecordOptions(upstream=url, db=str(db), tape="t", log=lines.append, **options)) as proxy:
        yield Rig(None, proxy, db, lines)  # type: ignore[arg-type]


async def read_until(url: str, payload: dict, enough: bytes | int, **headers: str) -> tuple[bytes, float]:
    """Read a streamed answer until it holds `enough` (bytes or a byte count), then hang up; returns what
    arrived and the seconds from the request to the hang-up."""
    got = b""
    started = time.monotonic()
    async with httpx.AsyncClient() as client, \
            client.stream("POST", f"{url}/chat/completions", json=payload, headers=headers) as resp:
        async for data in resp.aiter_raw():
            got += data
            if (enough in got) if isinstance(enough, bytes) else len(got) >= enough:
                break
    return got, time.monotonic() - started


def seconds(line: str) -> float:
    return float(re.search(r" (\d+\.\d\d)s ", line).group(1))


# -- a whole exchange ----------------------------------------------------------------------------------


async def test_a_complete_stream_is_relayed_as_sent_and_stored_field_by_field(tmp_path: Path):
    async with rig(tmp_path, Script(gap=0.01)) as r:
        before = datetime.now(timezone.utc)
        async with httpx.AsyncClient() as client:
            resp = await client.post(f"{r.proxy.base_url}/chat/completions", json=chat(),
                                     headers={"Authorization": f"Bearer {SECRET}", "User-Agent": "agent/1.0"})
        ex, chunks = await r.stored()
    sent = r.upstream.sent[0]
    assert resp.status_code == 200 and resp.content == sent.body == b"".join(c.data for c in chunks)
    assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert resp.headers["x-request-id"] == "req_0001"
    assert resp.headers["transfer-encoding"] == "chunked"
    assert (ex.method, ex.path, ex.query, ex.status, ex.stream, ex.model) == \
        ("POST", "/chat/completions", "", 200, True, "gpt-4o-mini")
    assert (ex.client, ex.upstream, ex.tape) == ("agent/1.0", r.upstream.base_url, "t")
    assert (ex.end_cause, ex.upstream_end, ex.end_detail, ex.done) == ("complete", "complete", None, True)
    assert (ex.chunk_count, ex.byte_count) == (EVENTS, len(sent.body))
    assert (ex.client_left_at_chunk, ex.client_left_ns, ex.store_error) == (None, None, None)
    assert [c.index for c in chunks] == list(range(EVENTS))
    assert [c.data for c in chunks] == sent.writes
    offsets = [c.t_ns for c in chunks]
    assert ex.ttfb_ns == offsets[0] and 0 < ex.headers_ns <= offsets[0]
    assert offsets == sorted(offsets) and offsets[-1] - offsets[0] >= 0.01e9 * (EVENTS - 2)
    assert offsets[-1] <= ex.duration_ns < offsets[-1] + 0.2e9
    started = datetime.fromisoformat(ex.started_at)
    assert started.tzinfo == timezone.utc and re.fullmatch(r".*T\d\d:\d\d:\d\d\.\d{3}\+00:00", ex.started_at)
    assert before - timedelta(seconds=1) <= started <= before + timedelta(seconds=1)
    assert ["Authorization", "[redacted]"] in ex.request_headers
    assert ["User-Agent", "agent/1.0"] in ex.request_headers
    assert ["x-request-id", "req_0001"] in ex.response_headers
    assert json.loads(ex.request_body) == chat()
    (line,) = r.lines
    assert line == f"#1 POST /chat/completions gpt-4o-mini 200 stream 10 chunks {seconds(line):.2f}s complete"
    assert abs(seconds(line) - ex.duration_ns / 1e9) < 0.006


async def test_the_upstream_gets_the_request_as_sent_but_for_its_host_and_encoding(tmp_path: Path):
    async with rig(tmp_path) as r:
        async with httpx.AsyncClient() as client:
            resp = await client.post(f"{r.proxy.base_url}/files/x%2Fy?b=1&api_key={SECRET}&a=%20",
                                     content=b"raw body", headers={"X-Custom": "kept", "Accept-Encoding": "gzip",
                                                                   "Authorization": f"Bearer {SECRET}"})
        ex, chunks = await r.stored()
    echo = resp.json()
    assert (echo["method"], echo["path"], echo["body"]) == ("POST", "/v1/files/x/y", "raw body")
    assert echo["query"] == f"b=1&api_key={SECRET}&a= "  # as the upstream's server decodes it
    assert echo["headers"]["accept-encoding"] == "identity"
    assert echo["headers"]["host"] == r.upstream.base_url.split("/")[2]
    assert echo["headers"]["x-custom"] == "kept" and echo["headers"]["authorization"] == f"Bearer {SECRET}"
    assert echo["headers"]["content-length"] == "8"
    assert (ex.path, ex.query, ex.request_body) == ("/files/x/y", "b=1&api_key=%5Bredacted%5D&a=+", b"raw body")
    assert (ex.stream, ex.model, ex.end_cause, ex.done) == (False, None, "complete", False)
    assert r.lines[0].startswith("#1 POST /files/x/y - 200 json 1 chunks ")


@pytest.mark.parametrize(("field", "value", "said"), [
    ("upstream_timeout", float("nan"), "upstream_timeout must be a number of seconds over 0, not nan"),
    ("upstream_timeout", 0.0, "upstream_timeout must be a number of seconds over 0, not 0.0"),
    ("upstream_timeout", float("inf"), "upstream_timeout must be a number of seconds over 0, not inf"),
    ("max_body", 0, "max_body and max_db_bytes must be 1 byte or more"),
    ("max_db_bytes", -5, "max_body and max_db_bytes must be 1 byte or more"),
])
def test_a_proxy_refuses_a_timeout_or_bound_that_is_no_number_in_its_range(tmp_path: Path, field: str, value: object,
                                                                            said: str):
    """From Python as from the command line: refused before the DB is made."""
    options = RecordOptions(upstream="http://127.0.0.1:9/v1", db=str(tmp_path / "r.db"), **{field: value})
    with pytest.raises(ValueError, match=f"^{re.escape(said)}$"):
        RecordingProxy(options)
    assert not (tmp_path / "r.db").exists()


async def test_a_get_without_a_body_is_forwarded_without_one(tmp_path: Path):
    async with rig(tmp_path) as r:
        async with httpx.AsyncClient() as client:
            resp = await client.get(f"{r.proxy.base_url}/anything")
            base = await client.get(r.proxy.base_url)
        await r.proxy.settle()
    assert resp.json()["method"] == "GET" and "content-length" not in resp.json()["headers"]
    assert "transfer-encoding" not in resp.json()["headers"]
    assert base.json()["path"] == "/v1"
    anything, at_base = Store(r.db).exchanges()
    assert (anything.method, anything.path, anything.request_body, anything.query) == ("GET", "/anything", b"", "")
    assert at_base.path == "/"  # the base itself is the root of the recordings


async def test_a_redirect_is_relayed_not_followed(tmp_path: Path):
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": "/v1/elsewhere"})

    async with handled(tmp_path, handler) as r:
        status, _, _ = await post(r.proxy.base_url, chat())
        ex, _ = await r.stored()
    assert (status, ex.status, ex.end_cause) == (307, 307, "complete")
    assert ["Location", "/v1/elsewhere"] in ex.response_headers


async def test_a_named_tape_takes_more_recordings_and_default_tapes_never_share_a_name(tmp_path: Path):
    db = tmp_path / "rec.db"
    async with ScriptedUpstream() as upstream:
        for _ in range(2):
            async with RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db), tape="t")) as proxy:
                assert proxy.tape == "t"
        async with RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db))) as first, \
                RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db))) as second:
            assert first.tape != second.tape


async def test_a_tapes_exchanges_are_numbered_from_zero_in_the_order_they_came(tmp_path: Path):
    async with rig(tmp_path) as r:
        for content in ("first", "second"):
            await post(r.proxy.base_url, chat(content))
        await r.proxy.settle()
    store = Store(r.db)
    exchanges = store.exchanges(tape="t")
    assert [(ex.seq, json.loads(ex.request_body)["messages"][0]["content"]) for ex in exchanges] == [
        (0, "first"), (1, "second")]
    assert (store.resolve("t:0"), store.resolve("t:1")) == (exchanges[0].id, exchanges[1].id)


async def test_a_replay_miss_is_forwarded_to_the_first_upstream_and_recorded(tmp_path: Path):
    played = tmp_path / "played.db"
    Store(played).ensure_schema()
    async with ScriptedUpstream() as upstream, ReplayServer(played, upstream=upstream.base_url, speed=0) as srv:
        status, body, _ = await post(srv.base_url, chat())
        await srv.settle()
    (ex,) = Store(played).exchanges()
    assert (status, body) == (200, upstream.sent[0].body)
    assert (ex.path, ex.upstream, ex.end_cause, ex.done) == ("/chat/completions", upstream.base_url, "complete", True)


@pytest.mark.parametrize(("script", "status", "cause", "done"), [
    (Script(ending="no_done"), 200, "eof_without_done", False),
    (Script(status=429), 429, "http_error", False),
])
async def test_a_clean_end_is_stored_with_the_cause_its_status_and_done_make(tmp_path: Path, script, status,
                                                                             cause, done):
    async with rig(tmp_path, script) as r:
        got_status, body, error = await post(r.proxy.base_url, chat())
        ex, _ = await r.stored()
    assert (got_status, error, body) == (status, None, r.upstream.sent[0].body)
    assert (ex.status, ex.end_cause, ex.upstream_end, ex.done, ex.end_detail) == (status, cause, cause, done, None)


async def test_a_json_answer_is_complete_without_a_done(tmp_path: Path):
    async with rig(tmp_path) as r:
        status, body, _ = await post(r.proxy.base_url, chat(stream=False))
        ex, _ = await r.stored()
    assert status == 200 and json.loads(body)["object"] == "chat.completion"
    assert (ex.stream, ex.end_cause, ex.done, ex.chunk_count, ex.byte_count) == (False, "complete", False, 1, len(body))
    assert " 200 json 1 chunks " in r.lines[0]


# -- endings the upstream gives ---------------------------------------------------------------------


@pytest.mark.parametrize(("ending", "cause", "client_error", "detail"), [
    ("close", "upstream_closed", "RemoteProtocolError", "ClientPayloadError: "),
    ("reset", "upstream_reset", "ReadError", "ClientPayloadError: "),
])
async def test_an_upstream_that_breaks_mid_body_breaks_the_client_the_same_way(tmp_path: Path, ending, cause,
                                                                               client_error, detail):
    async with rig(tmp_path, Script(ending=ending, gap=0.01)) as r:
        status, body, error = await post(r.proxy.base_url, chat())
        ex, chunks = await r.stored()
    sent = r.upstream.sent[0]
    assert (status, error, body) == (0, client_error, sent.body)
    assert (ex.end_cause, ex.upstream_end, ex.done) == (cause, cause, False)
    assert ex.end_detail.startswith(detail)
    assert (ex.chunk_count, ex.byte_count) == (len(chunks), len(body)) and b"".join(c.data for c in chunks) == body
    assert ex.client_left_at_chunk is None


async def test_upstream_silence_mid_stream_ends_it_as_a_timeout(tmp_path: Path):
    async with rig(tmp_path, Script(pauses={3: 2.0}), upstream_timeout=0.3) as r:
        started = time.monotonic()
        status, body, error = await post(r.proxy.base_url, chat())
        took = time.monotonic() - started
        ex, chunks = await r.stored()
    assert (error, ex.end_cause, ex.upstream_end) == ("RemoteProtocolError", "upstream_timeout", "upstream_timeout")
    assert body == b"".join(c.data for c in chunks) == await first_writes(3) and ex.chunk_count == len(chunks)
    assert 0.3 <= took < 1.5
    assert ex.end_detail.startswith(("ClientPayloadError: ", "SocketTimeoutError: ", "ServerTimeoutError: "))


async def test_an_upstream_that_never_answers_is_a_504_stored_as_the_answer(tmp_path: Path):
    async with rig(tmp_path, Script(first_delay=2.0), upstream_timeout=0.2) as r:
        status, body, _ = await post(r.proxy.base_url, chat())
        settling = time.monotonic()
        ex, chunks = await r.stored()
        settled = time.monotonic() - settling
    error = json.loads(body)["error"]
    assert settled < 2  # the answered exchange is no longer open: settle has nothing to wait for
    assert 0.2e9 <= chunks[0].t_ns <= ex.duration_ns  # the answer's time, counted from the request
    assert (status, error["type"], error["code"]) == (504, "upstream_error", "upstream_timeout")
    assert error["message"].startswith("upstream timed out: ") and error["message"] == ex.end_detail
    assert (ex.status, ex.end_cause, ex.upstream_end, ex.chunk_count, ex.byte_count) == \
        (504, "upstream_timeout", "upstream_timeout", 1, len(body))
    assert [(c.index, c.data) for c in chunks] == [(0, body)]
    assert ["x-streamreplay-error", "upstream_timeout"] in ex.response_headers
    assert ["Content-Type", "application/json"] in ex.response_headers
    assert r.lines[0].startswith("#1 POST /chat/completions gpt-4o-mini 504 stream 1 chunks ")
    assert r.lines[0].endswith("s upstream_timeout")


async def test_an_unreachable_upstream_is_a_502_stored_as_the_answer(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens on it
    db = tmp_path / "rec.db"
    lines: list[str] = []
    options = RecordOptions(upstream=f"http://127.0.0.1:{port}/v1", db=str(db), tape="t", log=lines.append)
    async with RecordingProxy(options) as proxy:
        status, body, _ = await post(proxy.base_url, chat(stream=False))
        await proxy.settle()
    (ex,) = Store(db).exchanges()
    error = json.loads(body)["error"]
    assert (status, error["code"], error["type"]) == (502, "upstream_unreachable", "upstream_error")
    assert error["message"].startswith("upstream unreachable: Cannot connect to host 127.0.0.1:")
    assert (ex.status, ex.end_cause, ex.upstream_end, ex.end_detail) == \
        (502, "upstream_unreachable", "upstream_unreachable", error["message"])
    assert (ex.chunk_count, ex.byte_count, ex.stream, ex.ttfb_ns) == (1, len(body), False, None)
    assert Store(db).chunks(ex.id)[0].data == body and ex.duration_ns > 0
    assert lines[0].startswith("#1 POST /chat/completions gpt-4o-mini 502 json 1 chunks ")


async def test_the_query_reaches_the_upstream_byte_for_byte(tmp_path: Path):
    arrived: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        arrived.append(request.rel_url.raw_query_string)
        return web.json_response({"ok": True})

    async with handled(tmp_path, handler) as r:
        status, _, _ = await post(r.proxy.base_url, chat(stream=False),
                                  path="/chat/completions?q=a%20b%25c&x=%26&y=?&z=%7e%41%2f")
        ex, _ = await r.stored()
    # a "?" in the query is the query's; escapes of characters that need none stay escapes (a signature over the
    # query's bytes still holds)
    assert (status, arrived) == (200, ["q=a%20b%25c&x=%26&y=?&z=%7e%41%2f"])
    assert ex.query == "q=a+b%25c&x=%26&y=%3F&z=~A%2F"


# -- the client leaving ------------------------------------------------------------------------------


async def test_a_client_that_leaves_is_drained_so_the_recording_is_whole(tmp_path: Path):
    sent_three = await first_writes(3)
    async with rig(tmp_path, Script(pauses={3: 0.3})) as r:
        got, left = await read_until(r.proxy.base_url, chat(), len(sent_three))
        settling = time.monotonic()
        ex, chunks = await r.stored()
        settled = time.monotonic() - settling
    assert 0.2 < settled < 0.95  # settle waits for the drain, and notices its end within moments
    assert r.proxy._draining == set()  # a finished drain is let go of
    sent = r.upstream.sent[0]
    at = ex.client_left_at_chunk
    assert got == sent_three == b"".join(c.data for c in chunks[:at]) and at > 0
    assert b"".join(c.data for c in chunks) == sent.body
    assert (ex.end_cause, ex.upstream_end, ex.done, ex.chunk_count) == ("client_left", "complete", True, len(chunks))
    assert ex.chunk_count > at and ex.ttfb_ns == chunks[0].t_ns
    assert chunks[at - 1].t_ns < ex.client_left_ns < (left + 0.1) * 1e9
    assert ex.end_detail == (f"the client left after {at} of {len(chunks)} chunks at {ex.client_left_ns / 1e9:.3f} s; "
                             "the upstream ended: complete")
    assert r.lines[0].endswith(f"s client_left (client left at chunk {at}, {ex.client_left_ns / 1e9:.3f}s)")


async def first_writes(n: int) -> bytes:
    """The first `n` writes the default script makes for a first request, from an upstream of their own."""
    async with ScriptedUpstream() as probe:
        await post(probe.base_url, chat())
        return b"".join(probe.sent[0].writes[:n])


async def test_a_drained_stream_without_its_done_is_said_so(tmp_path: Path):
    sent_three = await first_writes(3)
    async with rig(tmp_path, Script(pauses={3: 0.3}, ending="no_done")) as r:
        await read_until(r.proxy.base_url, chat(), len(sent_three))
        ex, _ = await r.stored()
    assert (ex.end_cause, ex.upstream_end, ex.done) == ("client_left", "eof_without_done", False)


async def test_abort_stops_reading_when_the_client_leaves(tmp_path: Path):
    sent_three = await first_writes(3)
    async with rig(tmp_path, Script(pauses={3: 0.3}), on_client_disconnect="abort") as r:
        await read_until(r.proxy.base_url, chat(), len(sent_three))
        ex, chunks = await r.stored()
    assert (ex.end_cause, ex.upstream_end, ex.chunk_count, ex.client_left_at_chunk, ex.done) == \
        ("client_left", None, len(chunks), len(chunks), False)
    assert ex.end_detail == "the client left; --on-client-disconnect abort stopped reading"
    assert b"".join(c.data for c in chunks) == sent_three


async def chat_events() -> list[bytes]:
    """The scripted upstream's chat answer, one event per write, for a handler that sends it its own way."""
    async with ScriptedUpstream() as probe:
        await post(probe.base_url, chat())
        return probe.sent[0].writes


def sse_handler(writes: list[bytes], before_eof: float = 0.0) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An upstream route that sends `writes` 5 ms apart, then waits `before_eof` before the body's end."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for data in writes:
            await resp.write(data)
            await asyncio.sleep(0.005)
        await asyncio.sleep(before_eof)
        await resp.write_eof()
        return resp

    return handler


async def test_a_client_that_hangs_up_after_done_had_the_whole_answer(tmp_path: Path):
    events = await chat_events()
    handler = sse_handler(events, before_eof=0.3)  # the body's end comes late: the SDK closes on [DONE] before it

    async with handled(tmp_path, handler) as r:
        got, _ = await read_until(r.proxy.base_url, chat(), DONE)
        ex, chunks = await r.stored()
    assert got == b"".join(events)
    assert (ex.end_cause, ex.upstream_end, ex.done, ex.client_left_at_chunk) == ("complete", "complete", True, EVENTS)
    assert ex.end_detail == f"the client closed the connection after [DONE], at {ex.client_left_ns / 1e9:.3f} s"
    assert r.lines[0].endswith(f"s complete (client left at chunk {EVENTS}, {ex.client_left_ns / 1e9:.3f}s)")


async def test_a_client_that_leaves_before_the_answer_is_stored_as_gone_at_chunk_zero(tmp_path: Path):
    async with rig(tmp_path, Script(first_delay=0.5)) as r:
        async with httpx.AsyncClient(timeout=0.1) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(f"{r.proxy.base_url}/chat/completions", json=chat())
        ex, chunks = await r.stored()
    assert (ex.end_cause, ex.upstream_end, ex.end_detail) == \
        ("client_left", None, "the client left before the upstream answered")
    assert (ex.chunk_count, ex.byte_count, ex.client_left_at_chunk, ex.status) == (0, 0, 0, None)
    assert 0.05e9 < ex.client_left_ns < 0.5e9 and chunks == []


async def test_an_upstream_that_resets_while_drained_is_said_as_the_upstreams_ending(tmp_path: Path):
    sent_three = await first_writes(3)
    async with rig(tmp_path, Script(pauses={3: 0.3}, ending="reset")) as r:
        await read_until(r.proxy.base_url, chat(), len(sent_three))
        ex, chunks = await r.stored()
    at = ex.client_left_at_chunk
    assert (ex.end_cause, ex.upstream_end, ex.done, ex.chunk_count) == ("client_left", "upstream_reset", False,
                                                                        len(chunks))
    assert ex.end_detail == (f"the client left after {at} of {len(chunks)} chunks at {ex.client_left_ns / 1e9:.3f} s; "
                             "the upstream ended: upstream_reset")


async def test_a_stop_while_draining_ends_the_drain_as_the_clients_leaving(tmp_path: Path):
    sent_three = await first_writes(3)
    async with ScriptedUpstream(Script(pauses={3: 0.3, 5: 1.0})) as upstream:
        db = tmp_path / "rec.db"
        proxy = RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db), tape="t"))
        proxy.shutdown_timeout = 0.5  # the drain outlives it: the stop cancels the drain
        await proxy.start()
        await read_until(proxy.base_url, chat(), len(sent_three))
        await until(lambda: len(upstream.sent[0].writes) == 5)
        started = time.monotonic()
        await proxy.stop()
        took = time.monotonic() - started
    (ex,) = Store(db).exchanges()
    chunks = Store(db).chunks(ex.id)
    assert (ex.end_cause, ex.upstream_end, ex.end_detail) == \
        ("client_left", None, "the client left; the daemon stopped before the upstream ended")
    assert b"".join(c.data for c in chunks) == await first_writes(5) and ex.chunk_count == len(chunks)
    assert 0.4 < took < 1.5


async def test_a_stop_before_the_upstream_answered_is_an_interruption(tmp_path: Path):
    async with ScriptedUpstream(Script(first_delay=1.0)) as upstream:
        db = tmp_path / "rec.db"
        proxy = RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db), tape="t"))
        proxy.shutdown_timeout = 0.1
        await proxy.start()
        client = asyncio.ensure_future(post(proxy.base_url, chat()))
        await until(lambda: upstream.sent)
        await proxy.stop()
        await client
    (ex,) = Store(db).exchanges()
    assert (ex.end_cause, ex.chunk_count, ex.client_left_at_chunk, ex.status) == ("interrupted", 0, 0, None)
    assert ex.end_detail == "the client left before the upstream answered"


async def test_a_body_whose_framing_breaks_ends_at_once_as_malformed(tmp_path: Path):
    server, url = await serve_raw(bad_chunk_size)
    db = tmp_path / "rec.db"
    async with server, RecordingProxy(RecordOptions(upstream=url, db=str(db), tape="t")) as proxy:
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=2) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                async with client.stream("POST", f"{proxy.base_url}/chat/completions", json=chat()) as resp:
                    async for _ in resp.aiter_raw():
                        pass
        took = time.monotonic() - started
        await proxy.settle()
    (ex,) = Store(db).exchanges()
    assert (ex.end_cause, ex.upstream_end, ex.chunk_count, ex.byte_count) == \
        ("upstream_malformed", "upstream_malformed", 1, 6)
    assert ex.end_detail.startswith("MalformedBody: the upstream's body could not be parsed") and took < 1


async def test_a_stop_mid_stream_is_an_interruption(tmp_path: Path):
    db = tmp_path / "rec.db"
    lines: list[str] = []
    async with ScriptedUpstream(Script(pauses={3: 1.0})) as upstream:
        proxy = RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db), tape="t", log=lines.append))
        proxy.shutdown_timeout = 0.2  # the exchange must still be mid-stream when the stop cancels it
        await proxy.start()
        client = asyncio.ensure_future(post(proxy.base_url, chat()))
        await until(lambda: upstream.sent and len(upstream.sent[0].writes) == 3)
        await asyncio.sleep(0.05)
        await proxy.stop()
        await client
    (ex,) = Store(db).exchanges()
    n = ex.chunk_count
    assert (ex.end_cause, ex.end_detail, ex.client_left_at_chunk, ex.upstream_end) == \
        ("interrupted", "the daemon stopped mid-exchange", n, None)
    assert b"".join(c.data for c in Store(db).chunks(ex.id)) == await first_writes(3)
    assert lines[0].endswith(f"s interrupted (the daemon stopped at chunk {n}, {ex.client_left_ns / 1e9:.3f}s)")


# -- what is looked at, and what is hidden --------------------------------------------------------------


async def test_done_split_across_reads_shorter_than_the_seam_is_seen(tmp_path: Path):
    events = await chat_events()
    handler = sse_handler([*events[:-1], *(bytes([b]) for b in events[-1])])

    async with handled(tmp_path, handler) as r:
        _, body, _ = await post(r.proxy.base_url, chat())
        ex, _ = await r.stored()
    assert body == b"".join(events)
    assert (ex.done, ex.end_cause) == (True, "complete") and ex.chunk_count > EVENTS


async def test_done_split_across_two_reads_the_first_one_seam_long_is_seen(tmp_path: Path):
    events = await chat_events()
    first = b": " + b"x" * (SEAM - 13) + b"\n\n" + DONE[:9]  # a comment, then "data: [DO": SEAM bytes in all
    assert len(first) == SEAM and events[-1] == DONE
    handler = sse_handler([*events[:-1], first, DONE[9:]])

    async with handled(tmp_path, handler) as r:
        _, body, _ = await post(r.proxy.base_url, chat())
        ex, chunks = await r.stored()
    assert body == b"".join([*events[:-1], first, DONE[9:]]) and chunks[-2].data == first
    assert (ex.done, ex.end_cause) == (True, "complete")


async def test_a_gzip_stream_is_relayed_as_sent_and_its_done_read_decoded(tmp_path: Path):
    events = [b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n', DONE]
    writes, handler = gzip_sse(events)
    async with handled(tmp_path, handler) as r:
        _, body, _ = await post(r.proxy.base_url, chat())
        ex, chunks = await r.stored()
    assert body == b"".join(writes) == b"".join(c.data for c in chunks) and gzip.decompress(body) == b"".join(events)
    assert (ex.done, ex.end_cause) == (True, "complete")


async def test_secrets_in_headers_fields_and_the_answers_cookies_never_reach_disk(tmp_path: Path):
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True}, status=203, reason="Seen Elsewhere",
                                 headers={"Set-Cookie": "session=abc", "X-Trace": "t-1", "X-Tenant": "acme-out"})

    payload = chat(stream=False, metadata={"user_id": "u-42", "team": "a"})
    async with handled(tmp_path, handler, redact_headers=("x-tenant",),
                       redact_fields=("metadata.user_id",)) as r:
        async with httpx.AsyncClient() as client:
            resp = await client.post(f"{r.proxy.base_url}/chat/completions", json=payload,
                                     headers={"X-Tenant": "acme", "X-Other": "seen"})
        ex, _ = await r.stored()
    assert (resp.status_code, resp.reason_phrase) == (203, "Seen Elsewhere")
    assert resp.headers["set-cookie"] == "session=abc" and resp.headers["x-tenant"] == "acme-out"
    sent = {k.lower(): v for k, v in ex.request_headers}
    answered = {k.lower(): v for k, v in ex.response_headers}
    assert (sent["x-tenant"], sent["x-other"]) == ("[redacted]", "seen")
    assert (answered["set-cookie"], answered["x-trace"], answered["x-tenant"]) == ("[redacted]", "t-1", "[redacted]")
    assert json.loads(ex.request_body)["metadata"] == {"user_id": "[redacted]", "team": "a"}
    assert (ex.model, ex.stream) == ("gpt-4o-mini", False)


async def test_a_request_without_a_user_agent_is_stored_whole_with_no_client(tmp_path: Path):
    async with rig(tmp_path) as r:
        async with httpx.AsyncClient() as client:
            del client.headers["User-Agent"]
            resp = await client.post(f"{r.proxy.base_url}/chat/completions", json=chat(stream=False))
        ex, _ = await r.stored()
    assert resp.status_code == 200 and r.proxy.losses == []
    assert (ex.client, ex.store_error, ex.end_cause, ex.model) == (None, None, "complete", "gpt-4o-mini")
    assert not any(k.lower() == "user-agent" for k, _ in ex.request_headers)


async def test_the_stored_stream_flag_is_read_in_the_path_s_dialect(tmp_path: Path):
    """Ollama streams unless told not to: a /api/chat request without "stream" is stored as a stream."""
    async with rig(tmp_path) as r:
        await post(r.proxy.base_url, {"model": "llama3.2", "messages": []}, path="/api/chat")
        ex, _ = await r.stored()
    assert (ex.path, ex.stream, ex.model) == ("/api/chat", True, "llama3.2")


async def test_a_model_that_is_not_a_string_is_stored_as_none(tmp_path: Path):
    async with rig(tmp_path) as r:
        await post(r.proxy.base_url, {"model": 5, "messages": [], "stream": True})
        ex, _ = await r.stored()
    assert (ex.model, ex.stream) == (None, True)


# -- paths, limits, upstreams ----------------------------------------------------------------------------


async def test_named_upstreams_keep_their_names_and_a_path_outside_them_is_a_404(tmp_path: Path):
    db = tmp_path / "rec.db"
    async with ScriptedUpstream() as one, ScriptedUpstream() as two:
        options = RecordOptions(upstream=(f"a={one.base_url}", f"b={two.base_url}"), db=str(db))
        async with RecordingProxy(options) as proxy:
            await post(proxy.base_urls["b"], chat())
            status, body, _ = await post(proxy.origin, chat(), path="/c/chat/completions")
            await proxy.settle()
            base_urls, base_url, tape = proxy.base_urls, proxy.base_url, proxy.tape
            assert proxy.losses == []
    assert base_urls == {"a": f"{proxy.origin}/a", "b": f"{proxy.origin}/b"} and base_url == f"{proxy.origin}/a"
    assert (len(one.sent), len(two.sent)) == (0, 1)
    error = json.loads(body)["error"]
    assert (status, error["code"]) == (404, "not_under_base")
    assert error["message"] == "path /c/chat/completions is not under the base path /a, /b"
    store = Store(db)
    (ex,) = store.exchanges()
    assert (ex.path, ex.upstream, ex.tape) == ("/b/chat/completions", f"b={two.base_url}", tape)
    assert re.fullmatch(r"rec-\d{8}-\d{6}", tape)
    assert store.tapes()[0]["source"] == f"a={one.base_url}, b={two.base_url}"


async def test_a_body_over_max_body_is_refused_with_a_413_and_not_forwarded(tmp_path: Path):
    async with rig(tmp_path, max_body=100) as r:
        status, body, _ = await post(r.proxy.base_url, chat("x" * 200))
        newline, _, _ = await post(r.proxy.base_url, chat(stream=False), path="/a%0Ab")
    error = json.loads(body)["error"]
    assert (status, error["code"], error["message"]) == (413, "body_too_large", "request body over 100 bytes")
    assert r.upstream.sent == [] and newline == 404  # a newline in the path is still forwarded: the upstream's 404
    (ex,) = Store(r.db).exchanges()
    assert (ex.path, ex.status, ex.end_cause) == ("/a\nb", 404, "http_error")


async def test_a_note_names_the_tape_and_a_default_tape_is_dated(tmp_path: Path):
    async with rig(tmp_path, note="by hand") as r:
        assert r.proxy.tape == "t" and r.proxy.upstream.port == r.upstream.port and r.proxy.prefix == "/v1"
    assert Store(r.db).tapes()[0]["source"] == "by hand"
    assert re.fullmatch(r"rec-\d{8}-\d{6}", RecordOptions(upstream="http://x").tape_name())
    assert RecordOptions(upstream="http://x", tape="mine").tape_name() == "mine"


async def test_a_proxy_that_cannot_listen_leaves_no_new_db_and_keeps_an_old_one(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        db = tmp_path / "new.db"
        with pytest.raises(OSError):
            await RecordingProxy(RecordOptions(upstream="http://127.0.0.1:9/v1", db=str(db)), port=port).start()
        assert sorted(p.name for p in tmp_path.iterdir()) == []
        old = tmp_path / "old.db"
        Store(old).ensure_schema()
        with pytest.raises(OSError):
            await RecordingProxy(RecordOptions(upstream="http://127.0.0.1:9/v1", db=str(old)), port=port).start()
        assert old.exists()


async def test_a_proxy_on_a_corrupt_db_fails_with_the_db_s_own_error_and_leaves_the_file_as_it_was(tmp_path: Path):
    db = tmp_path / "corrupt.db"
    db.write_bytes(b"not a database, " * 512)
    with pytest.raises(StoreError, match="is not a usable streamreplay database: file is not a database"):
        await RecordingProxy(RecordOptions(upstream="http://127.0.0.1:9/v1", db=str(db))).start()
    assert db.read_bytes() == b"not a database, " * 512


async def test_a_proxy_stopped_twice_stops_quietly_the_second_time(tmp_path: Path):
    async with rig(tmp_path) as r:
        status, _, _ = await post(r.proxy.base_url, chat(stream=False))
        await r.proxy.stop()
    # the context's own stop() came second: it raised nothing, and what was recorded is stored
    assert status == 200 and [ex.end_cause for ex in Store(r.db).exchanges()] == ["complete"]


async def test_storing_failures_go_to_errors_and_else_to_log(tmp_path: Path):
    said: list[str] = []
    errors: list[str] = []
    for options in ({"log": said.append}, {"log": said.append, "errors": errors.append}):
        proxy = RecordingProxy(RecordOptions(upstream="http://127.0.0.1:9/v1", db=str(tmp_path / "x.db"), **options))
        await proxy.on_start()
        try:
            assert proxy.writer.on_failure == (options.get("errors") or said.append)
        finally:
            await proxy.on_stop()


# -- the log line ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("summary", "line"), [
    ({"id": 12, "method": "POST", "path": "/chat/completions", "model": "gpt-4o-mini", "status": 200,
      "stream": True, "chunk_count": 14, "duration_ns": 625_000_000, "end_cause": EndCause.COMPLETE},
     "#12 POST /chat/completions gpt-4o-mini 200 stream 14 chunks 0.62s complete"),
    ({"id": 3, "method": "GET", "path": "/models"},
     "#3 GET /models - - json 0 chunks 0.00s None"),
    ({"id": 4, "method": "POST", "path": "/p", "status": 200, "stream": True, "chunk_count": 5, "duration_ns": 2e9,
      "end_cause": EndCause.CLIENT_LEFT, "client_left_at_chunk": 2, "client_left_ns": 1_234_567_890},
     "#4 POST /p - 200 stream 5 chunks 2.00s client_left (client left at chunk 2, 1.235s)"),
    ({"id": 5, "method": "POST", "path": "/p", "status": 200, "end_cause": EndCause.INTERRUPTED,
      "client_left_at_chunk": 0, "client_left_ns": 0, "store_error": "disk full"},
     "#5 POST /p - 200 json 0 chunks 0.00s interrupted (the daemon stopped at chunk 0, 0.000s) NOT STORED WHOLE"),
    ({"id": 6, "method": "POST", "path": "/p", "status": 0, "store_error": "disk full"},
     "#6 POST /p - - json 0 chunks 0.00s None NOT STORED WHOLE"),
])
def test_the_log_line_says_each_exchange_in_one_line(summary: dict, line: str):
    assert format_exchange_line(summary) == line


def test_redact_body_hides_secret_fields_and_the_named_ones_and_keeps_every_other_byte():
    body = b'{"api_key": "k",  "a": {"user": "u"}, "n": 1}'
    assert redact_body(body, ("a.user",)) == b'{"api_key": "[redacted]",  "a": {"user": "[redacted]"}, "n": 1}'
    assert redact_body(b"not json", ()) == b"not json"


@pytest.mark.parametrize(("ending", "cause", "done"), [("done", "complete", True),
                                                       ("no_done", "eof_without_done", False)])
async def test_the_path_s_dialect_decides_what_ends_a_stream(tmp_path: Path, ending: str, cause: str, done: bool):
    """An Anthropic stream has no [DONE]: its own message_stop is what the recorder looks for on /messages."""
    payload = {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True,
               "messages": [{"role": "user", "content": "Say hello"}]}
    async with rig(tmp_path, Script(ending=ending)) as r:
        status, _, error = await post(r.proxy.base_url, payload, path="/messages")
        ex, _ = await r.stored()
    assert (status, error, ex.path, ex.end_cause, ex.done) == (200, None, "/messages", cause, done)


async def test_streams_go_upstream_side_by_side_not_one_after_another(tmp_path: Path):
    """A slow stream holds no other request back: upstream connections are not pooled to a limit."""
    async with rig(tmp_path, Script(gap=0.01, pauses={2: 1.0}), Script()) as r:
        slow = asyncio.ensure_future(post(r.proxy.base_url, chat("slow")))
        await until(lambda: r.upstream.sent)
        started = time.monotonic()
        status, _, error = await post(r.proxy.base_url, chat("quick"))
        quick_s = time.monotonic() - started
        assert (status, error) == (200, None) and not slow.done() and quick_s < 0.5, quick_s
        await slow


async def test_requests_one_after_another_reuse_one_upstream_connection(tmp_path: Path):
    """The upstream session keeps its connections alive: a second request pays no new connect (nor TLS
    handshake) before its first byte."""
    peers: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername")[1])
        return web.json_response({"ok": True})

    async with handled(tmp_path, handler) as r:
        for _ in range(3):
            status, _, _ = await post(r.proxy.base_url, chat(stream=False))
            assert status == 200
    assert len(peers) == 3 and len(set(peers)) == 1, peers


async def test_more_streams_than_an_http_pool_holds_reach_the_upstream_at_once(tmp_path: Path):
    """No pool limit at all, not aiohttp's default of 100: a 101st stream is not held back behind 100 slow ones."""
    n = 101
    arrived: list[int] = []
    everyone = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        arrived.append(1)
        if len(arrived) == n:
            everyone.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(everyone.wait(), 3.0)  # only a held-back stream makes anyone wait this long
        return web.json_response({"seen": len(arrived)})

    async with handled(tmp_path, handler) as r, \
            httpx.AsyncClient(limits=httpx.Limits(max_connections=None), timeout=10) as client:
        answers = await asyncio.gather(*(client.post(f"{r.proxy.base_url}/chat/completions", json=chat(stream=False))
                                         for _ in range(n)))
    assert [(a.status_code, a.json()["seen"]) for a in answers] == [(200, n)] * n


async def test_a_path_that_leaves_the_base_is_refused_in_openai_s_shape_and_not_forwarded(tmp_path: Path):
    async with rig(tmp_path) as r:
        status, body, _ = await post(r.proxy.base_url, chat(), path="/%2e%2e/admin")
    error = json.loads(body)["error"]
    assert (status, error["code"], error["message"]) == (400, "bad_path", "path leaves the base URL")
    assert r.upstream.sent == [] and Store(r.db).exchanges() == []


async def test_max_db_bytes_bounds_the_db_by_pruning_the_oldest_complete_exchanges_said_once(tmp_path: Path):
    said: list[str] = []
    async with rig(tmp_path, *[Script(text="word " * 200)] * 8, max_db_bytes=150_000, errors=said.append) as r:
        for n in range(8):  # about 45 KB each
            await post(r.proxy.base_url, chat(f"q{n}"))
        await r.proxy.settle()
    kept = Store(r.db).exchanges()
    assert said == ["streamreplay: DB at its --max-db-size (150 KB): pruning the oldest complete exchanges"], said
    asked = [json.loads(ex.request_body)["messages"][0]["content"] for ex in kept]
    assert 0 < len(kept) < 8 and asked == [f"q{n}" for n in range(8 - len(kept), 8)]  # the newest are kept
    assert r.db.stat().st_size <= 150_000


async def test_a_gzipped_request_body_reaches_the_upstream_readable_and_is_stored_decoded(tmp_path: Path):
    """aiohttp's server undoes a request's Content-Encoding before the proxy reads the body: what goes on is
    that decoded body, so it must not still say it is gzip (the upstream would fail to decode it)."""
    async with rig(tmp_path) as r:
        async with httpx.AsyncClient() as client:
            resp = await client.post(f"{r.proxy.base_url}/files/x", content=gzip.compress(b'{"a": 1}'),
                                     headers={"Content-Encoding": "gzip"})
        ex, _ = await r.stored()
    echo = resp.json()
    assert (resp.status_code, echo["body"], echo["headers"]["content-length"]) == (200, '{"a": 1}', "8")
    assert "content-encoding" not in echo["headers"]
    assert (ex.status, ex.request_body) == (200, b'{"a": 1}')
    assert ["Content-Encoding", "gzip"] in ex.request_headers  # stored as the client sent it


@pytest.mark.parametrize("encoding", ["deflate", "Deflate", "GZIP"])
async def test_a_deflated_or_capitalised_request_encoding_is_forwarded_decoded_without_its_header(
        tmp_path: Path, encoding: str):
    """Deflate is undone like gzip, and an encoding named in capitals is still the one aiohttp undid: the upstream
    gets the readable body with no Content-Encoding, and the stored headers keep what the client sent."""
    packed = gzip.compress(b'{"a": 1}') if encoding == "GZIP" else zlib.compress(b'{"a": 1}')
    async with rig(tmp_path) as r:
        async with httpx.AsyncClient() as client:
            resp = await client.post(f"{r.proxy.base_url}/files/x", content=packed,
                                     headers={"Content-Encoding": encoding})
        ex, _ = await r.stored()
    echo = resp.json()
    assert (resp.status_code, echo["body"]) == (200, '{"a": 1}')
    assert "content-encoding" not in echo["headers"]
    assert (ex.request_body, ["Content-Encoding", encoding] in ex.request_headers) == (b'{"a": 1}', True)


async def test_a_path_that_only_starts_with_the_base_path_s_letters_is_not_forwarded(tmp_path: Path):
    """Only a path under the upstream's base path (`/v1` itself or `/v1/...`) goes upstream, there under that base
    path; `/v1x/...` and `/v2/...` are refused with a 404 that names the base path, and nothing is recorded."""
    async with rig(tmp_path) as r:
        assert r.proxy.base_url == f"{r.proxy.origin}/v1"
        async with httpx.AsyncClient() as client:
            under = await client.post(f"{r.proxy.origin}/v1/files/x", content=b"{}")
            near = await client.post(f"{r.proxy.origin}/v1x/files/x", content=b"{}")
            other = await client.post(f"{r.proxy.origin}/v2/files/x", content=b"{}")
        await r.proxy.settle()
    assert (under.status_code, under.json()["path"]) == (200, "/v1/files/x")
    assert (near.status_code, other.status_code) == (404, 404)
    assert near.json()["error"]["message"] == "path /v1x/files/x is not under the base path /v1"
    assert [ex.path for ex in Store(r.db).exchanges()] == ["/files/x"]


async def test_abort_closes_the_upstream_connection_so_the_upstream_cannot_send_the_rest(tmp_path: Path):
    """`--on-client-disconnect abort` stops reading by closing the upstream connection: the upstream's
    writes after the client left fail, and it never finishes its answer."""
    sent_three = await first_writes(3)
    async with rig(tmp_path, Script(pauses={3: 0.3}), on_client_disconnect="abort") as r:
        await read_until(r.proxy.base_url, chat(), len(sent_three))
        await r.stored()
        # past the upstream's pause: had its connection stayed open, it would have sent all of its answer
        await asyncio.sleep(0.6)
        sent = r.upstream.sent[0]
        assert (sent.finished, len(sent.writes)) == (False, 3)


async def test_a_full_db_says_storing_failed_once_and_then_a_line_for_each_exchange_it_lost(tmp_path: Path):
    """A DB with no room left says `STORING FAILED` once for its cause, then one line per exchange it could not
    store whole, each naming that exchange."""
    said: list[str] = []
    async with ScriptedUpstream(Script(text="word " * 2000, gap=0)) as upstream:
        options = RecordOptions(upstream=upstream.base_url, db=str(tmp_path / "full.db"), tape="full",
                                max_db_bytes=300_000, errors=said.append)
        async with RecordingProxy(options) as proxy:
            for _ in range(4):
                assert (await post(proxy.base_url, chat()))[:1] == (200,)
            await proxy.settle()
            losses = list(proxy.losses)
    failed = [line for line in said if "STORING FAILED" in line]
    assert len(failed) == 1 and "(sqlite: database or disk is full)" in failed[0], said
    assert len(losses) >= 3
    for ref, _ in losses:
        assert any(line.startswith(f"streamreplay: exchange {ref} ") for line in said), (ref, said)
