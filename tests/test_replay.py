"""Play mode: recordings served back byte-exact, on time, with their endings, and with faults."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.replay import FaultSpecError, ReplayServer, parse_faults
from streamreplay.store import Store
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import SECRET, chat, post, record, recorded_body, sha

#: between the scripted upstream's events when chunk N must be event N (the faults count chunks): at 3 ms a
#: loaded machine sometimes joined two events into one read
GAP = 0.015

TEXT = "Hello! How can I help you today?"


@pytest.fixture
async def tape(db_path: Path) -> Path:
    """One streamed answer with 20 ms gaps, events split across reads."""
    await record(db_path, [Script(gap=0.02, split_events=True)], [chat()])
    return db_path


def sdk(srv: ReplayServer, base_url: str | None = None, **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url or srv.base_url, api_key=SECRET, max_retries=0, **kw)


async def sdk_outcome(client: openai.AsyncOpenAI, **kw) -> tuple[str, str | None, str | None]:
    """(text, finish_reason, exception type) as the app sees them."""
    text, finish = "", None
    try:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=chat()["messages"], stream=True, **kw
        )
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
    except Exception as exc:  # the exception type is the outcome under test
        return text, finish, type(exc).__name__
    return text, finish, None


async def test_replay_is_byte_exact_with_recorded_boundaries_and_timing(tape: Path):
    (ex,) = Store(tape).exchanges()
    chunks = Store(tape).chunks(ex.id)
    async with ReplayServer(tape) as srv:
        status, body, error = await post(srv.base_url, chat())
    assert (status, error) == (200, None)
    assert sha(body) == sha(recorded_body(tape, ex.id))
    (rec,) = srv.requests
    assert rec.exchange_id == ex.id and rec.delivered == rec.total == len(chunks) > 10
    # each chunk its own write, at its recorded offset; 15 ms is loose enough for a loaded CI box
    # and tight against the 20 ms gaps: a replay that ignored timing or drifted would fail it
    errors = [abs(got - c.t_ns) / 1e6 for got, c in zip(rec.offsets_ns, chunks, strict=True)]
    assert max(errors) < 15, errors


async def chunk_frames(srv: ReplayServer, payload: dict, fault: str | None = None) -> list[bytes]:
    """POST on a raw socket and read the reply's chunked framing by hand: one frame per write the server made
    (recv sizes say nothing: TCP may merge writes in the socket, the framing keeps them apart)."""
    body = json.dumps(payload).encode()
    head = [f"POST {urlsplit(srv.base_url).path}/chat/completions HTTP/1.1", f"Host: 127.0.0.1:{srv.port}",
            "Content-Type: application/json", f"Content-Length: {len(body)}", "Connection: close"]
    if fault:
        head.append(f"X-Streamreplay-Fault: {fault}")
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        status, *headers = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower().split("\r\n")
        assert status.startswith("http/1.1 200") and "transfer-encoding: chunked" in headers, (status, headers)
        frames = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            frames.append(await reader.readexactly(size))
            assert await reader.readexactly(2) == b"\r\n"
        assert await reader.readexactly(2) == b"\r\n"  # the terminator ends with an empty trailer
        return frames
    finally:
        writer.close()


async def test_each_write_is_one_recorded_chunk_on_the_wire_at_any_speed(tape: Path):
    """"Same chunk boundaries": frame i of the reply is recorded chunk i, at speed 1 and at speed 0, where every
    piece is due at once; under rechunk:size=7 frame i is the body's 7-byte piece i (those of one recorded chunk
    are due together)."""
    (ex,) = Store(tape).exchanges()
    chunks = [c.data for c in Store(tape).chunks(ex.id)]
    body = b"".join(chunks)
    assert len(chunks) > 10 and len({len(c) for c in chunks}) > 1
    for speed in (1, 0):
        async with ReplayServer(tape, speed=speed) as srv:
            assert await chunk_frames(srv, chat()) == chunks, f"speed {speed}"
    async with ReplayServer(tape, speed=0) as srv:
        frames = await chunk_frames(srv, chat(), fault="rechunk:size=7")
    assert frames == [body[i : i + 7] for i in range(0, len(body), 7)]
    assert srv.requests[0].delivered == len(frames) > len(chunks)


async def test_speed_scales_time_and_zero_means_no_waits(tape: Path):
    (ex,) = Store(tape).exchanges()
    recorded = Store(tape).chunks(ex.id)[-1].t_ns / 1e9
    async with ReplayServer(tape, speed=2) as srv:
        await post(srv.base_url, chat())
    assert abs(srv.requests[0].offsets_ns[-1] / 1e9 - recorded / 2) < 0.015
    async with ReplayServer(tape, speed=0) as srv:
        started = time.monotonic()
        _, body, _ = await post(srv.base_url, chat())
        assert time.monotonic() - started < recorded / 2
    assert sha(body) == sha(recorded_body(tape, ex.id))


@pytest.mark.parametrize(
    ("script", "error"),
    [
        (Script(ending="no_done"), None),
        (Script(ending="close", gap=0.01), "RemoteProtocolError"),
        (Script(ending="reset", gap=0.01), "ReadError"),
        (Script(status=429), None),
    ],
)
async def test_recorded_endings_replay_as_recorded(db_path: Path, script: Script, error: str | None):
    (sent,) = await record(db_path, [script], [chat()])
    live_status = script.status
    async with ReplayServer(db_path, speed=0) as srv:
        status, body, got_error = await post(srv.base_url, chat())
    assert got_error == error
    assert sha(body) == sha(sent)
    if live_status != 200:
        assert status == live_status


async def test_an_upstream_that_went_silent_replays_as_the_close_the_client_got(db_path: Path):
    """Recorded as upstream_timeout (the recorder gave up on the silence and closed on the client), replayed
    as that close: the same bytes, then a body without its end, never a clean one."""
    async with ScriptedUpstream(Script(gap=0.01, pauses={3: 1.0})) as upstream:
        options = RecordOptions(upstream=upstream.base_url, db=str(db_path), tape="t", upstream_timeout=0.3)
        async with RecordingProxy(options) as proxy:
            _, live, live_error = await post(proxy.base_url, chat())
            await proxy.settle()
    (ex,) = Store(db_path).exchanges()
    assert (ex.end_cause, live_error) == ("upstream_timeout", "RemoteProtocolError")
    async with ReplayServer(db_path, speed=0) as srv:
        _, body, error = await post(srv.base_url, chat())
    assert (sha(body), error) == (sha(live), "RemoteProtocolError")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("cut:chunk=4", ("Hello! How can ", None, None)),
        ("close:chunk=4", ("Hello! How can ", None, "RemoteProtocolError")),
        ("reset:chunk=4", ("Hello! How can ", None, "ReadError")),
        ("drop-done", (TEXT, "stop", None)),
        ("drop-finish", (TEXT, None, None)),
        ("status:code=429", ("", None, "RateLimitError")),
        ("status:code=500", ("", None, "InternalServerError")),
        ("error-event:chunk=3", ("Hello! How ", None, "APIError")),
        ("corrupt:chunk=2", ("Hello! ", None, "JSONDecodeError")),
        ("rechunk:size=7", (TEXT, "stop", None)),
        ("gap-scale:factor=0", (TEXT, "stop", None)),
        ("cut:chunk=2+stall:chunk=1,seconds=0.05", ("Hello! ", None, None)),
    ],
)
async def test_each_fault_as_the_openai_sdk_sees_it(db_path: Path, spec: str, expected: tuple):
    await record(db_path, [Script(gap=GAP)], [chat()])
    async with ReplayServer(db_path, speed=0, faults=[spec]) as srv:
        assert await sdk_outcome(sdk(srv)) == expected
    assert srv.requests[0].applied == [f.spec() for f in parse_faults(spec)]


async def test_stall_and_delay_first_meet_a_client_timeout(db_path: Path):
    await record(db_path, [Script(gap=GAP)], [chat()])
    async with ReplayServer(db_path, speed=0) as srv:
        client = sdk(srv, base_url=srv.fault_url("stall:chunk=3,seconds=1"), timeout=0.3)
        assert await sdk_outcome(client) == ("Hello! How ", None, "ReadTimeout")
        client = sdk(srv, base_url=srv.fault_url("delay-first:seconds=1"), timeout=0.3)
        assert await sdk_outcome(client) == ("", None, "APITimeoutError")
        await asyncio.sleep(1)
    stalled = srv.requests[0]
    assert stalled.delivered == 3 and stalled.client_left_at_chunk == 3
    assert 0.25e9 < stalled.client_left_ns < 0.6e9


async def test_byte_preserving_faults_keep_the_bytes(db_path: Path):
    (sent,) = await record(db_path, [Script(gap=GAP)], [chat()])
    async with ReplayServer(db_path, speed=0, faults=["rechunk:size=5"]) as srv:
        _, body, _ = await post(srv.base_url, chat())
    assert sha(body) == sha(sent)
    assert srv.requests[0].total == -(-len(sent) // 5)
    async with ReplayServer(db_path, speed=0, faults=["cut:byte=100"]) as srv:
        _, body, _ = await post(srv.base_url, chat())
    assert body == sent[:100]
    async with ReplayServer(db_path, speed=0, faults=["drop-done"]) as srv:
        _, body, _ = await post(srv.base_url, chat())
    assert body == sent.replace(b"data: [DONE]\n\n", b"") and b"[DONE]" not in body


async def test_fault_from_header_and_url_prefix_combine(db_path: Path):
    await record(db_path, [Script(gap=GAP)], [chat()])
    async with ReplayServer(db_path, speed=0) as srv:
        client = sdk(srv, base_url=srv.fault_url("cut:chunk=6"), default_headers={"X-Streamreplay-Fault": "drop-done"})
        text, _, error = await sdk_outcome(client)
    assert (text, error) == ("Hello! How can I help ", None)
    assert srv.requests[0].applied == ["cut:chunk=6", "drop-done"]


async def test_bad_fault_spec_is_a_400_naming_the_problem(db_path: Path):
    await record(db_path, [Script(gap=GAP)], [chat()])
    async with ReplayServer(db_path, speed=0) as srv:
        status, body, _ = await post(srv.base_url, chat(), headers={"X-Streamreplay-Fault": "cut:chnk=3"})
        url_status, url_body, _ = await post(f"{srv.origin}/fault/explode/v1", chat())
    assert status == 400
    assert json.loads(body)["error"]["message"] == "bad fault spec: cut: unknown parameter 'chnk' (takes byte, chunk)"
    assert url_status == 400 and "unknown fault 'explode'" in json.loads(url_body)["error"]["message"]
    for bad, why in [
        ("stall:chunk=x", "chunk='x' is not an integer"),
        ("cut", "exactly one of"),
        ("rechunk:size=0", "at least 1"),
        ("close:chunk", "is not key=value"),
    ]:
        with pytest.raises(FaultSpecError, match=why):
            parse_faults(bad)


async def test_stream_and_non_stream_from_one_recording(db_path: Path):
    await record(db_path, [Script(), Script()], [chat("streamed"), chat("plain", stream=False)])
    async with ReplayServer(db_path, speed=0) as srv:
        client = sdk(srv)
        reply = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "streamed"}], stream=False
        )
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "plain"}], stream=True
        )
        chunks = [c async for c in stream]
    assert reply.object == "chat.completion" and reply.choices[0].message.content == TEXT
    assert reply.choices[0].finish_reason == "stop" and reply.id == "chatcmpl-0001"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert srv.requests[0].applied == ["stream->json"] and srv.requests[1].applied == ["json->stream"]


async def test_a_miss_names_the_closest_recording_and_the_field(db_path: Path):
    await record(db_path, [Script()], [chat("hello")])
    log: list[str] = []
    async with ReplayServer(db_path, speed=0, log=log.append) as srv:
        client = sdk(srv)
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        status, body, _ = await post(srv.base_url, chat("hello", temperature=0.5))
        raw = await httpx.AsyncClient().post(f"{srv.base_url}/chat/completions", content=b"{not json")
    message = caught.value.body["message"]
    assert caught.value.body["code"] == "no_recording_match"
    assert "closest is exchange 1 (tape t, #0)" in message
    assert "messages[0].content: 'hi' != 'hello'" in message
    assert any("messages[0].content" in line for line in log)
    assert "temperature: 0.5 in the request, not in the recording" in json.loads(body)["error"]["message"]
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "body_not_json"


async def test_identical_requests_in_recorded_order_then_repeat(db_path: Path):
    scripts = [Script(text="first answer"), Script(text="second answer")]
    await record(db_path, scripts, [chat(), chat()])
    async with ReplayServer(db_path, speed=0) as srv:
        texts = [(await sdk_outcome(sdk(srv)))[0] for _ in range(3)]
    assert texts == ["first answer", "second answer", "second answer"]
    async with ReplayServer(db_path, speed=0, repeat=False) as srv:
        outcomes = [await sdk_outcome(sdk(srv)) for _ in range(3)]
    assert outcomes[2][2] == "NotFoundError" and "were used" in srv.requests[2].miss


async def test_sequence_mode_ignores_the_body(db_path: Path):
    scripts = [Script(text="one"), Script(text="two")]
    await record(db_path, scripts, [chat("at 10:00:01"), chat("at 10:00:02")])
    async with ReplayServer(db_path, speed=0, match="sequence") as srv:
        first = await sdk_outcome(sdk(srv))
        second = await sdk_outcome(sdk(srv))
    assert (first[0], second[0]) == ("one", "two")
    async with ReplayServer(db_path, speed=0, ignore_fields=["messages"]) as srv:
        assert (await sdk_outcome(sdk(srv)))[0] == "one"


async def test_client_behaviour_is_observed_and_a_retry_is_noticed(db_path: Path):
    await record(db_path, [Script(gap=0.02)], [chat()])
    async with ReplayServer(db_path) as srv:
        client = sdk(srv)
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=chat()["messages"], stream=True)
        async for _ in stream:
            break
        await stream.close()
        await asyncio.sleep(0.05)
        assert (await sdk_outcome(client))[0] == TEXT
    first, second = srv.requests
    assert first.client_left_at_chunk == 1 and not first.finished and first.retry_of is None
    assert second.retry_of == 1 and second.finished and second.delivered == second.total
    assert "the client left at chunk 1" in first.line() and "repeats #1 after it was cut" in second.line()


async def test_misses_are_recorded_from_an_upstream(db_path: Path):
    await record(db_path, [Script(text="old")], [chat("old")])
    async with ScriptedUpstream(Script(text="new answer")) as upstream:
        async with ReplayServer(db_path, speed=0, upstream=upstream.base_url) as srv:
            assert (await sdk_outcome(sdk(srv)))[0] == "new answer"  # a miss: forwarded and recorded
            assert (await sdk_outcome(sdk(srv)))[0] == "new answer"  # now a hit
        assert len(upstream.sent) == 1
    exchanges = Store(db_path).exchanges()
    assert [e.text for e in exchanges] == ["old", "new answer"]


def test_sync_context_manager_serves_sync_clients(tape: Path):
    with ReplayServer(tape, speed=0) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key=SECRET, max_retries=0)
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=chat()["messages"], stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == TEXT


async def test_autogen_streams_through_a_fault_in_the_base_url(db_path: Path):
    from autogen_core.models import UserMessage
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    def autogen_client(base_url: str) -> OpenAIChatCompletionClient:
        return OpenAIChatCompletionClient(
            model="gpt-4o-mini",
            base_url=base_url,
            api_key=SECRET,
            max_retries=0,
            model_info={
                "vision": False,
                "function_calling": True,
                "json_output": True,
                "family": "unknown",
                "structured_output": False,
            },
        )

    async def stream_text(client: OpenAIChatCompletionClient) -> str:
        pieces = [p async for p in client.create_stream([UserMessage(content="Say hello", source="user")])]
        return "".join(p for p in pieces if isinstance(p, str))

    async with ScriptedUpstream(Script(gap=GAP)) as upstream:
        from streamreplay.proxy import RecordingProxy
        from streamreplay.proxy.recorder import RecordOptions

        async with RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db_path), tape="ag")) as proxy:
            client = autogen_client(proxy.base_url)
            assert await stream_text(client) == TEXT
            await client.close()
            await proxy.settle()
    async with ReplayServer(db_path, speed=0) as srv:
        client = autogen_client(srv.fault_url("close:chunk=4"))
        pieces: list[object] = []
        with pytest.raises(httpx.RemoteProtocolError):
            async for item in client.create_stream([UserMessage(content="Say hello", source="user")]):
                pieces.append(item)
        await client.close()
    assert "".join(p for p in pieces if isinstance(p, str)) == "Hello! How can "
    assert srv.requests[0].applied == ["close:chunk=4"] and srv.requests[0].ending == "close"
