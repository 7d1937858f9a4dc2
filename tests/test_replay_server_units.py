"""The replay server's request handler, one promise at a time: a recording made through the real
recorder from a scripted OpenAI upstream, served by a real ReplayServer on a free port, read by a real
HTTP client. Each test pins the exact status, bytes, record fields, counts and log lines."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from openai import AsyncOpenAI

from streamreplay.bundled import bundled_tape
from streamreplay.cassette import import_cassette
from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.replay import FaultSpecError, ReplayServer
from streamreplay.replay.faults import Cut, GapScale
from streamreplay.replay.matching import Index
from streamreplay.replay.options import ReplayOptions
from streamreplay.replay.replayed import Replayed
from streamreplay.replay.server import ReplayCounts, RetryMemory
from streamreplay.replay.source import StoreSource, open_source
from streamreplay.replay.storeindex import StoreIndex
from streamreplay.store import Chunk, Store
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import chat, chat_chunk, chat_upstream, post, record, until

GAP = 0.02  # between the recorded events: wide enough that every event is a read of its own
SAY_HELLO = chat("Say hello")
OTHER = chat("Something else")
QUERY_KEPT = chat("A path with its base")
ONLY_DONE = chat("Nothing but the end")


@pytest.fixture(scope="module")
def tape(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exchange 1: SAY_HELLO streamed with GAP between events; exchange 2: OTHER, a plain JSON answer;
    exchange 3: ONLY_DONE, a stream of nothing but its [DONE]."""
    db = tmp_path_factory.mktemp("replay") / "rec.db"
    asyncio.run(record(db, [Script(gap=GAP), Script(), Script(raw=[b"data: [DONE]\n\n"])],
                       [SAY_HELLO, {**OTHER, "stream": False}, ONLY_DONE]))
    return db


@pytest.fixture(scope="module")
def base_path_tape(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recording whose path keeps /v1, as one made against an upstream with no base path stores it."""
    db = tmp_path_factory.mktemp("based") / "rec.db"

    async def make() -> None:
        async with ScriptedUpstream() as upstream, \
                RecordingProxy(RecordOptions(upstream=upstream.origin, db=str(db), tape="t")) as proxy:
            await post(proxy.origin, QUERY_KEPT, path="/v1/chat/completions")
            await proxy.settle()

    asyncio.run(make())
    return db


def chunks(db: Path, exchange_id: int = 1) -> list[Chunk]:
    return Store(db).chunks(exchange_id)


def body_of(db: Path, exchange_id: int = 1, first: int | None = None) -> bytes:
    return b"".join(c.data for c in chunks(db, exchange_id)[:first])


@asynccontextmanager
async def serving(source: Path, **options) -> AsyncIterator[tuple[ReplayServer, list[str]]]:
    lines: list[str] = []
    async with ReplayServer(source, log=lines.append, **{"speed": 0, **options}) as srv:
        yield srv, lines


def error_of(body: bytes) -> dict:
    return json.loads(body)["error"]


# -- a recording served whole -------------------------------------------------------------------------


async def test_a_match_is_served_byte_exact_and_its_record_counted_and_logged(tape: Path):
    recorded = chunks(tape)
    async with serving(tape) as (srv, lines):
        async with httpx.AsyncClient() as client:
            resp = await client.post(f"{srv.base_url}/chat/completions", json=SAY_HELLO)
        (rec,) = srv.requests
    assert resp.status_code == 200 and resp.content == body_of(tape)
    assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert resp.headers["x-request-id"] == "req_0001"
    n = len(recorded)
    assert n == 10
    assert (rec.n, rec.method, rec.path, rec.exchange_id, rec.status) == (1, "POST", "/chat/completions", 1, 200)
    assert (rec.total, rec.delivered, rec.ending, rec.done_delivered) == (n, n, "clean", True)
    assert (rec.client_left_at_chunk, rec.client_left_ns, rec.retry_of, rec.partial, rec.miss) == (None,) * 5
    assert rec.applied == [] and len(rec.offsets_ns) == n
    assert (srv.counts.requests, dict(srv.counts.endings), srv.counts.unfinished, srv.counts.retries) == \
        (1, {"clean": 1}, 0, 0)
    assert lines == [f"#1 POST /chat/completions -> exchange 1 200: {n}/{n} chunks, ended clean"]


async def test_speed_one_writes_each_chunk_at_its_recorded_offset_from_the_arrival(tape: Path):
    recorded = [c.t_ns for c in chunks(tape)]
    async with serving(tape, speed=1) as (srv, _):
        await post(srv.base_url, SAY_HELLO)
    offsets = list(srv.requests[0].offsets_ns)
    assert len(offsets) == len(recorded)
    for sent, due in zip(offsets, recorded, strict=True):
        assert due - 1e6 <= sent <= due + 0.04e9


async def test_speed_two_halves_every_offset(tape: Path):
    recorded = [c.t_ns for c in chunks(tape)]
    async with serving(tape, speed=2) as (srv, _):
        await post(srv.base_url, SAY_HELLO)
    offsets = list(srv.requests[0].offsets_ns)
    assert recorded[-1] > 8 * GAP * 1e9
    for sent, due in zip(offsets, recorded, strict=True):
        assert due / 2 - 1e6 <= sent <= due / 2 + 0.03e9


async def test_speed_zero_waits_for_nothing_but_a_faults_wall_time(tape: Path):
    async with serving(tape) as (srv, _):
        await post(srv.base_url, SAY_HELLO)
        await post(srv.base_url, SAY_HELLO, headers={"X-Streamreplay-Fault": "stall:chunk=4,seconds=0.15"})
        started = time.monotonic()
        await post(srv.base_url, SAY_HELLO, headers={"X-Streamreplay-Fault": "delay-first:seconds=0.1"})
        delayed = time.monotonic() - started
    plain, stalled, late = (list(rec.offsets_ns) for rec in srv.requests)
    assert plain[-1] < 0.05e9
    assert stalled[3] < 0.05e9 and 0.15e9 <= stalled[4] < 0.25e9 and 0.15e9 <= stalled[-1] < 0.25e9
    # the head waits too: nothing at all reaches the client before the delay
    assert 0.1e9 <= late[0] < 0.2e9 and 0.1 <= delayed < 0.5


async def test_a_fault_s_wall_time_is_not_scaled_by_the_speed(tape: Path):
    """README, Choices: `stall` and `delay-first` are wall-clock seconds, not scaled by `--speed`: at speed 4
    the recorded offsets are quartered, the fault's seconds are not."""
    recorded = [c.t_ns for c in chunks(tape)]
    async with serving(tape, speed=4) as (srv, _):
        await post(srv.base_url, SAY_HELLO, headers={"X-Streamreplay-Fault": "delay-first:seconds=0.2+stall:chunk=3,"
                                                                             "seconds=0.2"})
    offsets = list(srv.requests[0].offsets_ns)
    for i, (sent, due) in enumerate(zip(offsets, recorded, strict=True)):
        wall = 0.2e9 + (0.2e9 if i >= 3 else 0)
        assert due / 4 + wall - 1e6 <= sent <= due / 4 + wall + 0.08e9, (i, sent, due)


# -- endings ---------------------------------------------------------------------------------------


async def test_the_schedules_status_is_the_one_sent(tape: Path):
    async with serving(tape) as (srv, lines):
        status, received, _ = await post(srv.base_url, SAY_HELLO, headers={"X-Streamreplay-Fault": "status:code=503"})
    (rec,) = srv.requests
    assert (status, rec.status, error_of(received)["message"]) == (503, 503, "streamreplay fault: status 503")
    assert srv.counts.unfinished == 0 and rec.broken is True


@pytest.mark.parametrize(("spec", "ending", "error"), [
    ("reset:chunk=3", "reset", "ReadError"),
    ("close:chunk=3", "close", "RemoteProtocolError"),
    ("cut:chunk=3", "clean", None),
])
async def test_a_truncated_schedule_ends_as_it_says_after_exactly_its_chunks(tape: Path, spec, ending, error,
                                                                              caplog: pytest.LogCaptureFixture):
    async with serving(tape) as (srv, lines):
        started = time.monotonic()
        status, received, raised = await post(srv.base_url, SAY_HELLO, headers={"X-Streamreplay-Fault": spec})
        took = time.monotonic() - started
    (rec,) = srv.requests
    assert (status if error is None else 200, received, raised) == (200, body_of(tape, first=3), error)
    assert (rec.ending, rec.total, rec.delivered, rec.applied, rec.done_delivered) == (ending, 3, 3, [spec], False)
    assert took < 0.8  # a reset waits a few milliseconds for the last write, no more
    assert lines == [f"#1 POST /chat/completions -> exchange 1 [{spec}] 200: 3/3 chunks, ended {ending}"]
    assert srv.counts.endings == {ending: 1} and srv.counts.unfinished == 0
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []  # the ending is no failure


async def test_done_is_seen_across_pieces_smaller_than_the_marker(tape: Path):
    async with serving(tape) as (srv, _):
        status, received, _ = await post(srv.base_url, SAY_HELLO, headers={"X-Streamreplay-Fault": "rechunk:size=2"})
        await post(srv.base_url, SAY_HELLO, headers={"X-Streamreplay-Fault": "rechunk:size=5+drop-done"})
        await post(srv.base_url, ONLY_DONE)
    split, dropped, only_done = srv.requests
    assert received == body_of(tape) and split.delivered == split.total == (len(received) + 1) // 2
    assert split.done_delivered is True and dropped.done_delivered is False
    # [DONE] as the very first bytes of the first piece: nothing comes before it
    assert (only_done.exchange_id, only_done.total, only_done.done_delivered) == (3, 1, True)


async def test_a_client_that_leaves_mid_stream_is_recorded_at_the_chunk_it_left(tape: Path):
    first_three = body_of(tape, first=3)
    async with serving(tape) as (srv, lines):
        async with httpx.AsyncClient() as client:
            started = time.monotonic()
            async with client.stream("POST", f"{srv.base_url}/chat/completions", json=SAY_HELLO,
                                     headers={"X-Streamreplay-Fault": "stall:chunk=3,seconds=5"}) as resp:
                got = b""
                async for data in resp.aiter_raw():
                    got += data
                    if len(got) >= len(first_three):
                        break
            left = time.monotonic() - started
        (rec,) = srv.requests
        await until(lambda: rec.client_left_at_chunk is not None)
        await until(lambda: lines)
    assert got == first_three
    assert (rec.client_left_at_chunk, rec.delivered, rec.total, rec.ending) == (3, 3, 10, "clean")
    assert 0 < rec.client_left_ns < (left + 0.5) * 1e9
    assert srv.counts.unfinished == 1 and rec.finished is False
    assert lines == [f"#1 POST /chat/completions -> exchange 1 [stall:chunk=3,seconds=5.0] 200: 3/10 chunks, "
                     f"the client left at chunk 3 ({rec.client_left_ns / 1e9:.3f}s)"]


# -- what a request asks for ------------------------------------------------------------------------


async def test_faults_apply_in_order_the_servers_then_the_urls_then_the_headers(tape: Path):
    async with serving(tape, faults=("gap-scale:factor=0", Cut(chunk=5))) as (srv, _):
        url = f"{srv.fault_url('cut:chunk=4')}/chat/completions"
        async with httpx.AsyncClient() as client:
            # close after 2 of the 4 the URL kept; the other order would cut a 2-chunk close to a clean end
            with suppress(httpx.RemoteProtocolError):
                await client.post(url, json=SAY_HELLO, headers={"X-Streamreplay-Fault": "close:chunk=2"})
    assert srv.faults == [GapScale(factor=0), Cut(chunk=5)]
    (rec,) = srv.requests
    assert rec.applied == ["gap-scale:factor=0.0", "cut:chunk=5", "cut:chunk=4", "close:chunk=2"]
    assert (rec.path, rec.ending, rec.delivered) == ("/chat/completions", "close", 2)


async def test_a_fault_spec_in_the_url_is_unquoted(tape: Path):
    async with serving(tape) as (srv, _):
        status, received, _ = await post(f"{srv.origin}/fault/cut%3Achunk%3D1/v1", SAY_HELLO)
    assert (status, received, srv.requests[0].applied) == (200, body_of(tape, first=1), ["cut:chunk=1"])


async def test_a_stream_recording_answers_a_json_request_converted(tape: Path):
    async with serving(tape) as (srv, lines):
        status, received, _ = await post(srv.base_url, {**SAY_HELLO, "stream": False})
    (rec,) = srv.requests
    assert status == 200 and json.loads(received)["choices"][0]["message"]["content"] == \
        "Hello! How can I help you today?"
    assert (rec.applied, rec.total, rec.delivered, rec.ending) == (["stream->json"], 1, 1, "clean")
    assert lines == ["#1 POST /chat/completions -> exchange 1 [stream->json] 200: 1/1 chunks, ended clean"]


async def test_a_bad_fault_spec_is_refused_with_a_400_counted_and_logged(tape: Path):
    async with serving(tape) as (srv, lines):
        status, received, _ = await post(srv.base_url, SAY_HELLO, headers={"X-Streamreplay-Fault": "explode"})
    (rec,) = srv.requests
    err = error_of(received)
    assert status == 400 and err["code"] == "bad_fault_spec" and err["message"].startswith("bad fault spec: ")
    assert (rec.status, rec.ending, rec.miss, rec.exchange_id) == (400, "refused", err["message"], None)
    assert srv.counts.endings == {"refused": 1} and srv.counts.unfinished == 1 and srv.counts.first_miss is None
    assert lines == [f"#1 POST /chat/completions -> refused 400: {err['message']}"]


async def test_a_body_over_max_body_is_a_413_naming_the_limit(tape: Path):
    async with serving(tape, max_body=100) as (srv, lines):
        status, received, _ = await post(srv.base_url, chat("x" * 200))
        ok, _, _ = await post(srv.base_url, SAY_HELLO)
    first = srv.requests[0]
    assert (status, error_of(received)["code"], error_of(received)["message"]) == \
        (413, "body_too_large", "request body over 100 bytes")
    assert (first.status, first.ending, first.miss) == (413, "refused", "too large")
    assert ok == 200 and lines[0] == "#1 POST /chat/completions -> refused 413: too large"


async def test_misses_are_404s_counted_with_the_first_reason_kept(tape: Path):
    async with serving(tape) as (srv, lines):
        first, body, _ = await post(srv.base_url, chat("Nobody asked this"))
        await post(srv.base_url, chat("Nor this"), path="/embeddings")
    one, two = srv.requests
    assert first == 404 and error_of(body)["code"] == "no_recording_match"
    assert (one.ending, two.ending, one.exchange_id) == ("miss", "miss", None)
    assert srv.counts.misses == 2 and srv.counts.unfinished == 2
    assert srv.counts.first_miss == one.miss != two.miss
    assert lines == [one.line(), two.line()] and lines[0].startswith("#1 POST /chat/completions -> no match 404: ")


async def test_a_repeat_of_a_broken_answer_is_a_retry_and_a_clean_answer_ends_the_chain(tape: Path):
    async with serving(tape) as (srv, lines):
        await post(srv.base_url, SAY_HELLO, headers={"X-Streamreplay-Fault": "reset:chunk=2"})
        await post(srv.base_url, SAY_HELLO)
        await post(srv.base_url, SAY_HELLO)
        await post(srv.base_url, SAY_HELLO, headers={"X-Streamreplay-Fault": "reset:chunk=2"})
        await post(srv.base_url, OTHER)  # another request: no retry of the broken one
    assert [rec.retry_of for rec in srv.requests] == [None, 1, None, None, None]
    assert srv.counts.retries == 1
    # it holds no record of a request once that request has ended
    assert srv._retries._serving == {}
    assert lines[1] == "#2 POST /chat/completions -> exchange 1 200: 10/10 chunks, ended clean, " \
                       "repeats #1 after it was cut (a retry)"


async def test_a_repeat_of_an_error_answer_is_a_retry_whatever_its_4xx_or_5xx_code(tape: Path):
    # an error status is read whole and ends clean: only its code says the answer broke
    async with serving(tape) as (srv, _):
        for code in (429, 400, 503):
            await post(srv.base_url, SAY_HELLO, headers={"X-Streamreplay-Fault": f"status:code={code}"})
            await post(srv.base_url, SAY_HELLO)
    errors = list(srv.requests)[::2]
    assert [(rec.status, rec.ending) for rec in errors] == [(429, "clean"), (400, "clean"), (503, "clean")]
    assert [rec.retry_of for rec in srv.requests] == [None, 1, None, 3, None, 5]
    assert srv.counts.retries == 3


async def test_a_partial_recording_is_said_on_its_record(tape: Path, tmp_path: Path):
    partial = tmp_path / "partial.db"
    partial.write_bytes(tape.read_bytes())
    with sqlite3.connect(partial) as db:
        db.execute("update exchanges set store_error = 'disk full' where id = 1")
    async with serving(partial) as (srv, lines):
        await post(srv.base_url, SAY_HELLO)
    assert srv.requests[0].partial == "disk full"
    assert lines[0].endswith("ended clean (a PARTIAL recording: not all the upstream sent was stored)")


# -- paths -----------------------------------------------------------------------------------------


async def test_the_base_path_comes_off_unless_the_recordings_keep_it(base_path_tape: Path, tape: Path):
    async with serving(base_path_tape) as (srv, _):
        kept, _, _ = await post(srv.base_url, QUERY_KEPT)
        bare, _, _ = await post(srv.origin, QUERY_KEPT, path="/v1")
        near, _, _ = await post(srv.origin, QUERY_KEPT, path="/v1x/chat/completions")
    assert (kept, bare, near) == (200, 404, 404)
    assert [rec.path for rec in srv.requests] == ["/v1/chat/completions", "/", "/v1x/chat/completions"]
    async with serving(tape, prefix="/v1/") as (srv, _):
        stripped, _, _ = await post(srv.base_url, SAY_HELLO)
        newline, body, _ = await post(srv.base_url, SAY_HELLO, path="/a%0Ab")
    assert srv.base_url == f"{srv.origin}/v1" and stripped == 200
    assert [rec.path for rec in srv.requests] == ["/chat/completions", "/a%0Ab"]
    # a newline in the path is still the handler's to answer: a miss, not the router's 404
    assert (newline, error_of(body)["code"]) == (404, "no_recording_match")


async def test_the_query_is_no_part_of_the_path_but_is_matched_when_asked(tape: Path):
    async with serving(tape) as (srv, _):
        await post(srv.base_url, SAY_HELLO, path="/chat/completions?a=1?b=2")
    assert srv.requests[0].path == "/chat/completions"
    async with serving(tape, match_on=("method", "path", "body", "query")) as (srv, _):
        with_query, _, _ = await post(srv.base_url, SAY_HELLO, path="/chat/completions?x=1")
        without, _, _ = await post(srv.base_url, SAY_HELLO)
    assert (with_query, without) == (404, 200) and srv.requests[0].miss.endswith("query: x=1 != (none)")


async def test_fault_url_names_the_spec_under_the_origin_and_checks_it(tape: Path):
    async with serving(tape) as (srv, _):
        assert srv.fault_url("cut:chunk=1") == f"{srv.origin}/fault/cut:chunk=1/v1"
        with pytest.raises(FaultSpecError):
            srv.fault_url("explode")


# -- the server's own state ----------------------------------------------------------------------------


async def test_unused_and_since_say_what_the_requests_so_far_did(tape: Path):
    async with serving(tape) as (srv, _):
        assert [ex.id for ex in srv.unused()] == [1, 2, 3]
        await post(srv.base_url, SAY_HELLO)
        count = srv.counts.requests
        await post(srv.base_url, SAY_HELLO)
        assert [ex.id for ex in srv.unused()] == [2, 3]
        await post(srv.base_url, OTHER)
        assert [ex.id for ex in srv.unused()] == [3]
        assert [rec.n for rec in srv.since(count)] == [2, 3] and [rec.n for rec in srv.since(0)] == [1, 2, 3]


async def test_keep_requests_bounds_the_records_not_the_counts(tape: Path):
    async with serving(tape, keep_requests=1) as (srv, _):
        await post(srv.base_url, SAY_HELLO)
        await post(srv.base_url, SAY_HELLO)
    assert [rec.n for rec in srv.requests] == [2] and srv.counts.requests == 2
    async with serving(tape, keep_requests=0) as (srv, _):
        await post(srv.base_url, SAY_HELLO)
    assert list(srv.requests) == [] and srv.counts.endings == {"clean": 1}


def test_options_are_checked_and_overrides_win(tape: Path):
    for speed in (-0.5, float("nan"), float("inf")):  # NaN compares false with every bound
        with pytest.raises(ValueError, match=r"^speed must be 0 \(no waits\) or more$"):
            ReplayServer(tape, speed=speed)
    for bad in ({"keep_requests": -1}, {"cache_bytes": -1}):
        with pytest.raises(ValueError, match=r"^keep_requests and cache_bytes must be 0 or more$"):
            ReplayServer(tape, **bad)
    srv = ReplayServer(ReplayOptions(tape, speed=3, prefix="/api/"), speed=0.5)
    assert (srv.speed, srv.prefix, srv.max_body) == (0.5, "/api", 32 * 1024 * 1024)
    assert ReplayServer(ReplayOptions(tape, speed=3)).speed == 3
    assert (srv.options.speed, srv.options.prefix) == (0.5, "/api/")
    assert (ReplayServer(tape).port, ReplayServer(tape, prefix="/aX").prefix) == (0, "/aX")
    assert ReplayServer(str(tape), cache_bytes=0).speed == 1.0


@pytest.mark.parametrize("ignore_fields", [(), ("temperature",)])  # looked up in the DB, and in memory
@pytest.mark.parametrize(("repeat", "second_status"), [(False, 404), (True, 200)])
async def test_a_used_recording_is_served_again_only_with_repeat(tape: Path, ignore_fields, repeat, second_status):
    async with serving(tape, repeat=repeat, ignore_fields=ignore_fields) as (srv, _):
        first, _, _ = await post(srv.base_url, SAY_HELLO)
        second, _, _ = await post(srv.base_url, SAY_HELLO)
    assert (first, second) == (200, second_status)


async def test_only_the_tape_asked_for_is_served(tape: Path, tmp_path: Path):
    two_tapes = tmp_path / "two.db"
    two_tapes.write_bytes(tape.read_bytes())
    await record(two_tapes, [Script()], [chat("On the other tape")], tape="u")
    async with serving(two_tapes, tape="u") as (srv, _):
        assert [ex.id for ex in srv.unused()] == [4]
        elsewhere, _, _ = await post(srv.base_url, SAY_HELLO)
        here, _, _ = await post(srv.base_url, chat("On the other tape"))
    assert (elsewhere, here) == (404, 200)


async def test_it_listens_where_it_is_told(tape: Path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with ReplayServer(tape, host="127.0.0.1", port=port, speed=0) as srv:
        status, _, _ = await post(f"http://127.0.0.1:{port}/v1", SAY_HELLO)
    assert (srv.base_url, status) == (f"http://127.0.0.1:{port}/v1", 200)


async def test_what_no_server_serves_is_refused_before_the_handler(tape: Path):
    async with serving(tape) as (srv, lines):
        status, body, _ = await post(srv.base_url, SAY_HELLO, path="/%2e%2e/chat/completions")
    assert (status, error_of(body)["code"]) == (400, "bad_path")
    assert srv.counts.requests == 0 and lines == []


def test_a_db_is_looked_up_in_place_unless_its_keys_are_not_the_matchers(tape: Path):
    assert type(ReplayServer(tape).index) is StoreIndex
    assert type(ReplayServer(tape, ignore_fields=("temperature",)).index) is Index
    source = open_source(tape, None, 0)
    srv = ReplayServer(source)
    assert srv.source is source and type(srv.index) is StoreIndex


@pytest.mark.parametrize(("record_into", "exchange_id"), [(None, 4), ("other.db", 1)])
async def test_a_miss_recorded_from_an_upstream_is_served_from_its_recording_after(tape: Path, tmp_path: Path,
                                                                                    record_into, exchange_id):
    played = tmp_path / "played.db"
    played.write_bytes(tape.read_bytes())
    record_db = tmp_path / record_into if record_into else None
    # an answer of its own: the played DB's exchange with the same id must not pass for it
    async with ScriptedUpstream(Script(text="A brand new answer")) as upstream, \
            serving(played, upstream=upstream.base_url, record_db=record_db) as (srv, lines):
        status, first, _ = await post(srv.base_url, chat("New question"))
        await srv.settle()
        again, second, _ = await post(srv.base_url, chat("New question"))
    forwarded, served = srv.requests
    # served from the DB it was recorded into, whatever exchange the played DB holds under that id
    assert (status, again, first) == (200, 200, second) and b"A brand new answer" not in body_of(played, exchange_id)
    assert len(upstream.sent) == 1 and b'"brand "' in second
    assert (forwarded.recorded, forwarded.exchange_id, served.exchange_id) == ("complete", exchange_id, exchange_id)
    assert srv.counts.endings == {"recorded": 1, "clean": 1}


# -- the parts that hold state ------------------------------------------------------------------------


def test_counts_snapshot_is_a_copy_and_misses_are_the_miss_endings():
    counts = ReplayCounts(requests=3, unfinished=1, retries=1, first_miss="why")
    counts.endings.update({"miss": 2, "clean": 1})
    before = counts.snapshot()
    counts.endings["miss"] += 1
    counts.requests += 1
    assert (before.requests, before.endings, before.misses, counts.misses) == (3, {"miss": 2, "clean": 1}, 2, 3)
    assert (before.unfinished, before.retries, before.first_miss) == (1, 1, "why")


def rec(n: int, broken: bool) -> Replayed:
    return Replayed(n, "POST", "/chat/completions", status=500 if broken else 200, ending="clean")


def test_retry_memory_answers_with_the_last_broken_request_of_a_key():
    memory = RetryMemory()
    assert memory.max_keys == 10_000
    one, two, three = rec(1, True), rec(2, False), rec(3, False)
    assert memory.arrived("k", one) is None
    memory.ended("k", one)
    assert memory.arrived("k", two) == 1
    assert memory.arrived("other", rec(9, True)) is None
    memory.ended("k", two)
    assert memory.arrived("k", three) is None  # the clean one ended the chain


def test_retry_memory_judges_a_request_still_served_as_it_stands():
    memory = RetryMemory()
    slow, retry, fresh = rec(1, True), rec(2, False), rec(3, False)
    memory.arrived("k", slow)
    assert memory.arrived("k", retry) == 1
    memory.ended("k", slow)  # not the key's last any more: forgotten
    assert memory.arrived("k", fresh) is None
    memory.ended("k", retry)
    memory.ended("k", fresh)
    assert memory.arrived("k", rec(4, False)) is None


def test_retry_memory_forgets_the_oldest_broken_key_past_its_bound():
    memory = RetryMemory(max_keys=2)
    for n, key in enumerate("abc", 1):
        broken = rec(n, True)
        memory.arrived(key, broken)
        memory.ended(key, broken)
    assert [memory.arrived(key, rec(9, False)) for key in "abc"] == [None, 2, 3]


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in Linux's /proc")
def test_a_server_closes_the_db_it_opened_and_leaves_a_source_passed_in_open(tmp_path: Path):
    db = tmp_path / "many.db"
    import_cassette(bundled_tape("openai-happy-path"), db, "t")
    gc.collect()
    before = _open_descriptors()
    gc.disable()  # the collector would close what close() forgot: only close() may give them back here
    try:
        for _ in range(20):
            server = ReplayServer(db, speed=0)
            assert server.unused()  # the DB is open and read
            server.close()
        assert _open_descriptors() <= before
        source = StoreSource(db)
        ReplayServer(source).close()
        assert source.exchanges()  # the caller's source is still open
        source.close()
    finally:
        gc.enable()


def test_a_speed_or_bound_of_exactly_zero_is_accepted(tape: Path):
    """Only a negative speed or bound is refused: 0 is a speed (no waits) and a bound (keep no requests, cache
    no bytes) of its own."""
    srv = ReplayServer(tape, speed=0, keep_requests=0, cache_bytes=0)
    assert (srv.speed, srv.options.keep_requests, srv.options.cache_bytes) == (0, 0, 0)


async def test_a_client_that_closes_right_after_done_is_not_noted_as_leaving(tmp_path: Path):
    """A client that closes as soon as it has `[DONE]`, a piece of the recording still to come, had the whole
    answer: its line says the replay's clean ending at the chunk it reached, not "the client left"."""
    db = tmp_path / "after-done.db"
    raw = [chat_chunk({"content": "Hi"}), chat_chunk({}, finish="stop"), b"data: [DONE]\n\n", b": bye\n\n"]
    await record(db, [Script(raw=raw, gap=GAP, content_type="text/event-stream")], [SAY_HELLO])
    async with serving(db) as (srv, lines):
        async with httpx.AsyncClient() as client, client.stream(
                "POST", f"{srv.base_url}/chat/completions", json=SAY_HELLO,
                headers={"X-Streamreplay-Fault": "stall:chunk=3,seconds=5"}) as resp:
            got = b""
            async for data in resp.aiter_raw():
                got += data
                if b"[DONE]" in got:
                    break
        (rec,) = srv.requests
        await until(lambda: lines)
    assert (rec.client_left_at_chunk, rec.done_delivered, rec.finished, srv.counts.unfinished) == (3, True, True, 0)
    assert lines == ["#1 POST /chat/completions -> exchange 1 [stall:chunk=3,seconds=5.0] 200: 3/4 chunks, ended clean"]


async def seconds_to_head(base_url: str, payload: dict, headers: dict[str, str] | None = None) -> float:
    """Seconds from sending the request to the response head's arrival (the body is read after)."""
    async with httpx.AsyncClient(timeout=10) as client:
        started = time.monotonic()
        async with client.stream("POST", f"{base_url}/chat/completions", json=payload, headers=headers or {}) as resp:
            head = time.monotonic() - started
            await resp.aread()
    return head


async def test_delay_first_holds_back_the_response_head_too_at_speed_zero(tape: Path):
    """`delay-first:seconds=S` delays the first byte, the response head included, by S wall-clock seconds
    even at speed 0: a client's wait for the head sees the delay."""
    async with serving(tape) as (srv, _):
        head = await seconds_to_head(srv.base_url, SAY_HELLO, {"X-Streamreplay-Fault": "delay-first:seconds=0.3"})
    assert head >= 0.3


async def test_the_response_head_goes_out_at_its_recorded_offset(tmp_path: Path):
    """At speed 1 the response head goes out at its recorded offset from the request (an upstream that took
    0.3 s to answer replays as one), not at once."""
    db = tmp_path / "slow_head.db"
    await record(db, [Script(first_delay=0.3)], [SAY_HELLO])
    store = Store(db)
    assert store.exchanges()[0].headers_ns >= 0.3e9
    store.close()
    async with serving(db, speed=1) as (srv, _):
        head = await seconds_to_head(srv.base_url, SAY_HELLO)
    assert head >= 0.3


async def test_the_server_matches_whatever_the_delivery_fields_say_and_ignores_each_ignore_field(tape: Path):
    """Served by a real ReplayServer: `stream_options` never decides a match, and a field named in
    `ignore_fields` (`--ignore-field`) does not either, while it does when not named."""
    with_options = {**SAY_HELLO, "stream_options": {"include_usage": True}}
    seeded = {**with_options, "seed": 7}
    async with serving(tape) as (srv, _):
        assert (await post(srv.base_url, with_options))[:2] == (200, body_of(tape))
        assert (await post(srv.base_url, seeded))[0] == 404
    async with serving(tape, ignore_fields=("seed",)) as (srv, _):
        assert (await post(srv.base_url, seeded))[:2] == (200, body_of(tape))


async def _recorded_then_replayed(tmp_path: Path, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                                  ) -> httpx.Response:
    """SAY_HELLO recorded through the proxy from an upstream answering with `handler`, then replayed once."""
    db = tmp_path / "rec.db"
    async with chat_upstream(handler) as upstream, \
            RecordingProxy(RecordOptions(upstream=upstream, db=str(db), tape="t")) as proxy:
        await post(proxy.base_url, SAY_HELLO)
        await proxy.settle()
    async with serving(db) as (srv, _), httpx.AsyncClient(timeout=10) as client:
        return await client.post(f"{srv.base_url}/chat/completions", json=SAY_HELLO)


async def _connection_named(request: web.Request) -> web.Response:
    """An upstream answer whose Connection header names a header of this hop (RFC 9110 7.6.1)."""
    return web.json_response({"id": "c", "object": "chat.completion", "choices": []},
                             headers={"Connection": "keep-alive, X-Hop-Only", "X-Hop-Only": "1", "X-Kept": "2"})


async def test_replay_leaves_out_a_header_the_recorded_connection_header_names_as_the_live_relay_did(tmp_path: Path):
    db = tmp_path / "rec.db"
    async with chat_upstream(_connection_named) as upstream, \
            RecordingProxy(RecordOptions(upstream=upstream, db=str(db), tape="t")) as proxy, \
            httpx.AsyncClient(timeout=10) as client:
        live = await client.post(f"{proxy.base_url}/chat/completions", json=SAY_HELLO)
        await proxy.settle()
    (ex,) = Store(db).exchanges()
    assert ("X-Hop-Only", "1") in [tuple(h) for h in ex.response_headers]  # stored as the upstream sent it
    async with serving(db) as (srv, _), httpx.AsyncClient(timeout=10) as client:
        replayed = await client.post(f"{srv.base_url}/chat/completions", json=SAY_HELLO)
    assert [("x-hop-only" in r.headers, r.headers.get("x-kept")) for r in (live, replayed)] == [(False, "2")] * 2


RECORDED_DATE = "Mon, 01 Jan 2024 00:00:00 GMT"


async def _overloaded(request: web.Request) -> web.Response:
    """An upstream answer with a status, ids and a date of its own, for replay to give back."""
    return web.json_response({"error": {"message": "overloaded", "type": "server_error"}}, status=503,
                             headers={"x-request-id": "req-recorded", "Retry-After": "7", "Date": RECORDED_DATE})


async def test_replay_answers_with_the_recorded_status_and_headers_but_not_their_date_or_length(tmp_path: Path):
    """A replayed answer has the status and the headers the upstream recorded (its ids, its content type),
    but not the recorded `Date` or `Content-Length`: replay frames the body itself."""
    replayed = await _recorded_then_replayed(tmp_path, _overloaded)
    assert replayed.status_code == 503
    assert replayed.json() == {"error": {"message": "overloaded", "type": "server_error"}}
    assert (replayed.headers["x-request-id"], replayed.headers["retry-after"]) == ("req-recorded", "7")
    assert replayed.headers["content-type"].startswith("application/json")
    assert replayed.headers["date"] != RECORDED_DATE and "content-length" not in replayed.headers


TWO_CALLS = [{"name": "get_weather", "arguments": '{"city": "Paris"}'},
             {"name": "get_time", "arguments": '{"zone": "Europe/Paris"}'}]


async def test_parallel_tool_calls_stay_apart_when_a_whole_answer_is_served_as_a_stream(tmp_path: Path):
    """A JSON recording with two tool calls, asked for as a stream, reaches the real SDK as both calls,
    each with its own id, name and arguments, as they were recorded."""
    db = tmp_path / "rec.db"
    await record(db, [Script(tool_calls=TWO_CALLS)], [chat("Weather and time in Paris", stream=False)])
    calls: dict[int, dict[str, str]] = {}
    async with serving(db) as (srv, _):
        client = AsyncOpenAI(base_url=srv.base_url, api_key="sk-replay", max_retries=0)
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Weather and time in Paris"}], stream=True)
        async for chunk in stream:
            for delta in chunk.choices[0].delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                call["name"] += (delta.function and delta.function.name) or ""
                call["arguments"] += (delta.function and delta.function.arguments) or ""
        await client.close()
    assert srv.requests[0].applied == ["json->stream"]
    assert [calls[i] for i in sorted(calls)] == [{"id": f"call_{i}", **call} for i, call in enumerate(TWO_CALLS)]


async def test_a_field_another_tape_redacted_is_matched_exactly_on_the_tape_played(tmp_path: Path):
    """The fields a recording's `--redact-field` hid match any value on its own tape only: on another tape
    played with `--tape`, a request must still send the value that tape recorded there."""
    db = tmp_path / "rec.db"
    asked = chat("Who am I?", user="alice")
    async with ScriptedUpstream() as upstream:
        for tape, hidden in (("plain", ()), ("hidden", ("user",))):
            options = RecordOptions(upstream=upstream.base_url, db=str(db), tape=tape, redact_fields=hidden)
            async with RecordingProxy(options) as proxy:
                await post(proxy.base_url, asked)
                await proxy.settle()
    async with serving(db, tape="plain") as (srv, _):
        same, _, _ = await post(srv.base_url, asked)
        other, _, _ = await post(srv.base_url, {**asked, "user": "mallory"})
    async with serving(db, tape="hidden") as (srv, _):
        masked, _, _ = await post(srv.base_url, {**asked, "user": "mallory"})
    assert (same, other, masked) == (200, 404, 200)


async def test_a_db_played_whole_serves_a_request_recorded_with_and_without_its_field_redacted(tmp_path: Path):
    """Without `--tape`, a field one tape's `--redact-field` hid matches any value on every tape played: each
    recording of the request is served in turn (the DB's own index and the in-memory one agree)."""
    db = tmp_path / "rec.db"
    asked = chat("Who am I?", user="alice")
    async with ScriptedUpstream() as upstream:
        for tape, hidden, text in (("hidden", ("user",), "First answer"), ("plain", (), "Second answer")):
            upstream.queue(Script(text=text))
            options = RecordOptions(upstream=upstream.base_url, db=str(db), tape=tape, redact_fields=hidden)
            async with RecordingProxy(options) as proxy:
                await post(proxy.base_url, asked)
                await proxy.settle()
    async with serving(db) as (srv, _):
        assert isinstance(srv.index, StoreIndex)
        served = [await post(srv.base_url, {**asked, "user": "mallory"}) for _ in range(3)]
    assert [status for status, _, _ in served] == [200] * 3
    assert [b"First" in body for _, body, _ in served] == [True, False, False]
    assert [b"Second" in body for _, body, _ in served] == [False, True, True]


async def _two_hops(request: web.Request) -> web.Response:
    """A whole answer with a header the upstream sent twice, in an order of its own."""
    response = web.json_response({"id": "c", "object": "chat.completion", "choices": []})
    response.headers.add("X-Trace-Hop", "edge")
    response.headers.add("X-Trace-Hop", "origin")
    return response


async def test_replay_repeats_a_header_the_upstream_sent_twice_in_its_order(tmp_path: Path):
    """A header recorded twice is replayed twice, its values in the recorded order."""
    replayed = await _recorded_then_replayed(tmp_path, _two_hops)
    assert replayed.headers.get_list("x-trace-hop") == ["edge", "origin"]
