"""Anthropic Messages: recorded through the proxy from the scripted upstream with each real client, read
back by `ls`/`show`, replayed byte-exact, and every fault into the real clients, with what each does."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import autogen  # noqa: F401  (imported up front: a first import on a driver's thread takes seconds of CPU, which
import autogen_ext.models.anthropic  # noqa: F401  the servers on this loop then miss, past short client timeouts)
import httpx
import pytest

from streamreplay.clientid import Client
from streamreplay.dialects import dialect_for
from streamreplay.drivers.anthropic import DRIVERS
from streamreplay.outcome import Outcome, origin_of
from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.replay import ReplayServer
from streamreplay.report import chunk_events, describe_event, ls_rows, show_lines
from streamreplay.scripted.anthropic import AnthropicWire, anthropic_events
from streamreplay.store import Store
from streamreplay.testing import Script, ScriptedUpstream, Sent

TEXT = "Hello! How can I help you today?"
PART = "Hello! How can "  # what 6 chunks hold: message_start, the text block's start, ping, 3 text deltas
MESSAGES = [{"role": "user", "content": "Say hello"}]
CLIENTS = list(DRIVERS)
#: what each client's app gets from a whole answer (autogen says the stop reason in its words; AG2 not at all)
WHOLE = {Client.ANTHROPIC: (TEXT, "end_turn", None), Client.ANTHROPIC_STREAM: (TEXT, "end_turn", None),
         Client.AUTOGEN_ANTHROPIC: (TEXT, "stop", None), Client.AG2_ANTHROPIC: (TEXT, None, None)}
WEATHER = {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Received:
    """One response as a client's httpx transport handed it on: each piece, after the chunked framing."""

    user_agent: str
    pieces: list[bytes] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces)


class _Tee(httpx.SyncByteStream):
    def __init__(self, inner: Any, sink: list[bytes]) -> None:
        self.inner, self.sink = inner, sink

    def __iter__(self) -> Iterator[bytes]:
        for piece in self.inner:
            self.sink.append(piece)
            yield piece

    def close(self) -> None:
        self.inner.close()


class _AsyncTee(httpx.AsyncByteStream):
    def __init__(self, inner: Any, sink: list[bytes]) -> None:
        self.inner, self.sink = inner, sink

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in self.inner:
            self.sink.append(piece)
            yield piece

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch) -> list[Received]:
    """The bytes every client in the test received, as its transport read them (all four clients use httpx's
    default transports: the SDK's own clients, autogen-ext's and AG2's through the SDK)."""
    got: list[Received] = []
    sync_send, async_send = httpx.HTTPTransport.handle_request, httpx.AsyncHTTPTransport.handle_async_request

    def handle_request(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        response = sync_send(self, request)
        got.append(seen := Received(request.headers.get("user-agent", "")))
        response.stream = _Tee(response.stream, seen.pieces)
        return response

    async def handle_async_request(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
        response = await async_send(self, request)
        got.append(seen := Received(request.headers.get("user-agent", "")))
        response.stream = _AsyncTee(response.stream, seen.pieces)
        return response

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", handle_request)
    monkeypatch.setattr(httpx.AsyncHTTPTransport, "handle_async_request", handle_async_request)
    return got


async def record(db_path: Path, *scripts: Script, client: Client = Client.ANTHROPIC) -> tuple[list[Sent], Outcome]:
    """Each script recorded through the proxy, asked for by `client`; the proxy's upstream has no path, as
    for every client that adds its own (/v1/messages)."""
    async with ScriptedUpstream() as upstream:
        upstream.queue(*scripts)
        async with RecordingProxy(RecordOptions(upstream=upstream.origin, db=str(db_path), tape="a")) as proxy:
            for _ in scripts:
                outcome = await DRIVERS[client](proxy.base_url, MESSAGES, 2.0)
            await proxy.settle()
    return upstream.sent, outcome


def seen(outcome: Outcome) -> tuple[str, str | None, str | None]:
    return outcome.text, outcome.finish_reason, outcome.error_type


async def every_client(base_url: str, timeout: float = 2.0) -> dict[Client, tuple[str, str | None, str | None]]:
    """What each client's app ends up with, all four asking at once."""
    outcomes = await asyncio.gather(*(DRIVERS[c](base_url, MESSAGES, timeout) for c in CLIENTS))
    return {c: seen(o) for c, o in zip(CLIENTS, outcomes, strict=True)}


# -- recording


@pytest.mark.parametrize("client", CLIENTS)
async def test_each_client_records_byte_exact(db_path: Path, received: list[Received], client: Client):
    (sent,), outcome = await record(db_path, Script(gap=0.002), client=client)
    assert outcome.text == TEXT and outcome.error is None
    assert sent.path == "/v1/messages" and sent.request["max_tokens"] == 256
    (got,) = received
    (ex,) = Store(db_path).exchanges()
    stored = b"".join(c.data for c in Store(db_path).chunks(ex.id))
    assert sha(got.body) == sha(stored) == sent.sha256
    assert ex.path == "/v1/messages" and ex.dialect.name == "anthropic"
    assert (ex.end_cause, ex.done, ex.text) == ("complete", True, TEXT)
    assert got.user_agent == {Client.ANTHROPIC: "Anthropic/Python 0.125.0",
                              Client.ANTHROPIC_STREAM: "AsyncAnthropic/Python 0.125.0",
                              Client.AUTOGEN_ANTHROPIC: "AsyncAnthropic/Python 0.125.0",
                              Client.AG2_ANTHROPIC: "ag2/0.14.0 Anthropic/Python 0.125.0"}[client]


async def test_ls_and_show_read_text_tool_use_usage_and_stop_reason(db_path: Path):
    await record(db_path, Script(text="Let me check.", tool_calls=[WEATHER]), client=Client.ANTHROPIC_STREAM)
    (ex,) = Store(db_path).exchanges()
    chunks = Store(db_path).chunks(ex.id)
    assert (ex.text, ex.finish_reason) == ("Let me check.", "tool_use")
    assert ex.usage == {"input_tokens": 9, "output_tokens": 3}
    assert ex.tool_calls == [{"index": 0, "id": "toolu_00", "type": "function",
                              "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert ex.problems == [] and ex.model == "smollm2"
    assert ls_rows([ex])[0][4] == "anthropic"
    lines = show_lines(ex, chunks)
    assert any(line.startswith("done      message_stop seen  stop_reason tool_use  ") for line in lines)
    assert 'tool call get_weather({"city": "Paris"})' in lines
    assert 'usage     {"input_tokens": 9, "output_tokens": 3}' in lines
    # what each event says on its own, as show's delta column and the timeline read it
    assert [describe_event(r, ex.dialect) for events in chunk_events(chunks, ex.dialect) for r in events] == [
        "", "", "", "Let ", "me ", "check.", "", "<tool_call get_weather>", "", '<tool_call {"city":>',
        '<tool_call  "Paris">', "<tool_call }>", "", "<stop_reason=tool_use>", "message_stop"]


async def test_a_stream_without_message_stop_ends_eof_without_done(db_path: Path, tmp_path: Path):
    await record(db_path, Script(ending="no_done"))
    (missing,) = Store(db_path).exchanges()
    assert (missing.end_cause, missing.done, missing.text, missing.finish_reason) == (
        "eof_without_done", False, TEXT, "end_turn")
    assert "done      no message_stop" in "\n".join(show_lines(missing, Store(db_path).chunks(missing.id)))
    async with ReplayServer(db_path, speed=0, match="sequence") as srv:
        assert await every_client(srv.base_url) == WHOLE  # no client notices
    assert not any(r.done_delivered for r in srv.requests)


async def test_message_stop_is_found_across_reads_and_not_inside_text(tmp_path: Path):
    body = b"".join(AnthropicWire().stream_events(Script(), {"model": "smollm2"}, 1))
    # both the event line's and the data's marker cut in two: no read holds one whole, the seam between two does
    event_line, data = body.rindex(b"event: message_stop") + 10, body.rindex(b'"message_stop"') + 5
    reads = [body[:event_line], body[event_line:data], body[data:]]
    assert not any(dialect_for("/v1/messages").find_terminal(read) for read in reads)
    tricky = 'quoted "type":"message_stop" and event: message_stop\n on a line'
    db_path = tmp_path / "seam.db"
    await record(db_path, Script(raw=reads, gap=0.02), Script(text=tricky, ending="no_done"))
    split, in_text = Store(db_path).exchanges()
    assert [c.data for c in Store(db_path).chunks(split.id)] == reads
    assert (split.end_cause, split.done) == ("complete", True)
    # the marker's words inside a JSON string are not the marker
    assert (in_text.end_cause, in_text.done, in_text.text) == ("eof_without_done", False, tricky)


# -- replay


async def test_replay_is_byte_exact_with_the_recorded_chunk_boundaries(db_path: Path, received: list[Received]):
    (sent,), _ = await record(db_path, Script(gap=0.004, split_events=True))
    (ex,) = Store(db_path).exchanges()
    recorded = [c.data for c in Store(db_path).chunks(ex.id)]
    assert len(recorded) > 13  # more reads than events: events split across reads
    received.clear()
    async with ReplayServer(db_path, speed=0, match="sequence") as srv:
        outcomes = await every_client(srv.base_url)
    assert {o[0] for o in outcomes.values()} == {TEXT}
    assert len(received) == len(CLIENTS)
    for got in received:  # one HTTP chunk per recorded read, byte for byte
        assert got.pieces == recorded and sha(got.body) == sent.sha256
    assert all(r.delivered == r.total == len(recorded) and r.done_delivered for r in srv.requests)


PARTIAL_NO_ERROR = {c: (PART, None, None) for c in CLIENTS} | {Client.AUTOGEN_ANTHROPIC: (PART, "unknown", None)}


def raises(error: str, text: str = PART) -> dict[Client, tuple[str, str | None, str | None]]:
    # AG2 hands back nothing but its final reply: the text streamed before an error is only printed
    return {c: ("" if c is Client.AG2_ANTHROPIC else text, None, error) for c in CLIENTS}


#: each fault: what each client's app ends up with, and whether message_stop reached it (None: a race, as the
#: clients raise at the broken event and leave while the rest is being written)
FAULT_OUTCOMES: dict[str, tuple[dict[Client, tuple[str, str | None, str | None]], bool | None]] = {
    "cut:chunk=6": (PARTIAL_NO_ERROR, False),
    "close:chunk=6": (raises("httpx.RemoteProtocolError"), False),
    "reset:chunk=6": (raises("httpx.ReadError"), False),
    "drop-done": (WHOLE, False),
    "drop-finish": ({c: (TEXT, "unknown" if c is Client.AUTOGEN_ANTHROPIC else None, None) for c in CLIENTS}, True),
    "error-event:chunk=6": (raises("anthropic.APIStatusError"), False),
    "corrupt:chunk=5": (raises("json.JSONDecodeError", "Hello! How "), None),
    "status:code=529": (raises("anthropic.OverloadedError", ""), False),
    "status:code=500": (raises("anthropic.InternalServerError", ""), False),
    "rechunk:size=7": (WHOLE, True),  # message_stop over four pieces: still seen
    "stall:chunk=6,seconds=0.8": (raises("httpx.ReadTimeout"), False),  # past the 0.3 s read timeout
}


@pytest.fixture(scope="module")
def tape(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Sent]:
    """One answer recorded with the anthropic SDK, an event a read (chunk N is event N)."""
    db_path = tmp_path_factory.mktemp("anthropic") / "rec.db"
    (sent,), _ = asyncio.run(record(db_path, Script(gap=0.015)))
    return db_path, sent


async def test_each_fault_as_each_client_sees_it(tape: tuple[Path, Sent]):
    db_path, _ = tape
    outcomes = {}
    async with ReplayServer(db_path, speed=0, match="sequence") as srv:
        for spec in FAULT_OUTCOMES:
            outcomes[spec] = await every_client(srv.fault_url(spec), timeout=0.3 if spec.startswith("stall") else 5.0)
    assert outcomes == {spec: expected for spec, (expected, _) in FAULT_OUTCOMES.items()}
    assert len(srv.requests) == len(FAULT_OUTCOMES) * len(CLIENTS)  # no client retried
    checked = {spec: terminal for spec, (_, terminal) in FAULT_OUTCOMES.items() if terminal is not None}
    delivered = {spec: {r.done_delivered for r in srv.requests if r.applied == [spec]} for spec in checked}
    assert delivered == {spec: {terminal} for spec, terminal in checked.items()}


async def test_fault_bytes_are_anthropics_own(tape: tuple[Path, Sent], received: list[Received]):
    db_path, sent = tape
    async with ReplayServer(db_path, speed=0) as srv:
        for spec in ("drop-done", "drop-finish", "error-event:chunk=3", "status:code=529"):
            await DRIVERS[Client.ANTHROPIC](srv.fault_url(spec), MESSAGES, 2.0)
    dropped, nulled, failed, overloaded = (r.body for r in received)
    assert dropped == sent.body.replace(b'event: message_stop\ndata: {"type":"message_stop"}\n\n', b"")
    assert nulled == sent.body.replace(b'"stop_reason":"end_turn"', b'"stop_reason":null')
    assert failed.endswith(b'\n\nevent: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
                           b'"message":"streamreplay fault: error event mid-stream"}}\n\n')
    assert json.loads(overloaded) == {"type": "error", "error": {"type": "overloaded_error",
                                                                 "message": "streamreplay fault: status 529"}}


# -- stream <-> whole Message


async def test_a_streamed_recording_answers_a_non_stream_request(db_path: Path):
    await record(db_path, Script(text="Let me check.", tool_calls=[WEATHER]))
    async with ReplayServer(db_path, speed=0) as srv:
        client = anthropic.AsyncAnthropic(base_url=origin_of(srv.base_url), api_key="k", max_retries=0)
        message = await client.messages.create(model="smollm2", max_tokens=256, messages=MESSAGES)
        await client.close()
    assert srv.requests[0].applied == ["stream->json"]
    assert message.model_dump(exclude_none=True) == {
        "id": "msg_0001", "type": "message", "role": "assistant", "model": "smollm2",
        "content": [{"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_00", "name": "get_weather", "input": {"city": "Paris"}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 9, "output_tokens": 3}}


async def test_a_whole_message_answers_a_stream_request_as_the_api_streams_it(db_path: Path, received: list[Received]):
    text = "A longer answer, so that the text comes in several deltas."
    # the answer cut in the 16-character pieces replay's stream uses, so that the scripted stream matches it
    pieces = [text[i : i + 16] for i in range(0, len(text), 16)]
    script = Script(text=text, pieces=pieces, tool_calls=[{"name": "noop", "arguments": '{"a":1}'}])
    async with ScriptedUpstream(script) as up, RecordingProxy(RecordOptions(upstream=up.origin, db=str(db_path),
                                                                            tape="a")) as proxy:
        client = anthropic.AsyncAnthropic(base_url=origin_of(proxy.base_url), api_key="k", max_retries=0)
        whole = await client.messages.create(model="smollm2", max_tokens=256, messages=MESSAGES)
        await proxy.settle()
    async with ReplayServer(db_path, speed=0) as srv:
        client = anthropic.AsyncAnthropic(base_url=origin_of(srv.base_url), api_key="k", max_retries=0)
        async with client.messages.stream(model="smollm2", max_tokens=256, messages=MESSAGES) as stream:
            streamed = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
    assert srv.requests[0].applied == ["json->stream"]
    assert streamed == text and final.model_dump(exclude_none=True) == whole.model_dump(exclude_none=True)
    # byte for byte what the scripted upstream (the published event sequence) streams for the same answer
    assert received[-1].body == b"".join(anthropic_events(script, "smollm2", "msg_0001"))
    assert dialect_for("/v1/messages").assemble_stream(received[-1].body).problems == []


def test_malformed_events_are_written_down_not_raised():
    dialect = dialect_for("/v1/messages")
    body = (b'event: message_start\ndata: {"type":"message_start","message":"not an object"}\n\n'
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":"0","delta":5}\n\n'
            b"event: content_block_delta\ndata: {cut\n\n"
            b"data: [1, 2]\n\n"
            b'event: some_future_event\ndata: {"type":"some_future_event","x":1}\n\n'
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":"kept"}}\n\n'
            b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"boom"}}\n\n'
            b"event: message_stop\ndata: {\"type\"")
    result = dialect.assemble_stream(body)
    assert (result.text, result.done, result.error) == ("kept", False, {"type": "api_error", "message": "boom"})
    assert [p.split(":")[0] for p in result.problems] == [
        f"trailing unterminated event at end of stream (byte {len(body)})", "event 0", "event 1", "event 2", "event 3"]
    assert dialect.whole_body(body) is None  # an error is no Message
    assert dialect.assemble_json(b'{"type":"message","content":[7,{"type":"tool_use","input":[]}]}').problems == []
    assert dialect.stream_events({"type": "message", "content": "text", "usage": None})[-1].startswith(
        b"event: message_stop")
    assert dialect.drop_terminal(body) == body  # the unterminated message_stop is no event: nothing to drop
