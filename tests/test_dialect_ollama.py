"""Ollama's native chat API (`POST /api/chat`, newline-delimited JSON): recorded through the proxy from the
real ollama library and autogen-ext's Ollama client, summarised, replayed byte-exact, broken by every fault,
and served stream <-> non-stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from click.testing import CliRunner

from streamreplay.cli import main
from streamreplay.clientid import Client
from streamreplay.clients import DRIVERS
from streamreplay.dialects import dialect_for
from streamreplay.dialects.ollama import go_json
from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.replay import ReplayServer
from streamreplay.scripted import WIRES
from streamreplay.store import Store
from streamreplay.testing import Script, ScriptedUpstream, Sent
from tests.helpers import post, recorded_body, serve_raw, sha

TEXT = "Hello! How can I help you today?"
MESSAGES = [{"role": "user", "content": "Say hello"}]
WEATHER = [{"name": "get_weather", "arguments": '{"city":"Paris","unit":"celsius"}'}]
OLLAMA = dialect_for("/api/chat")
CLIENTS = (Client.OLLAMA, Client.AUTOGEN_OLLAMA)


def chat(stream: bool | None = True) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "smollm2", "messages": MESSAGES}
    return body if stream is None else {**body, "stream": stream}


class _Tee(httpx.SyncByteStream):
    def __init__(self, stream: httpx.SyncByteStream, reads: list[bytes]) -> None:
        self.stream, self.reads = stream, reads

    def __iter__(self) -> Iterator[bytes]:
        for data in self.stream:
            self.reads.append(data)
            yield data

    def close(self) -> None:
        self.stream.close()


class Capture(httpx.BaseTransport):
    """A real HTTP transport that keeps every body read the client made, before any decoding."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.reads: list[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers, extensions=response.extensions,
                              stream=_Tee(response.stream, self.reads))

    def close(self) -> None:
        self.inner.close()


@dataclass
class Read:
    """What the ollama library gave the app, and the bytes under it."""

    parts: list[ollama.ChatResponse] = field(default_factory=list)
    reads: list[bytes] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return b"".join(self.reads)

    @property
    def text(self) -> str:
        return "".join(p.message.content or "" for p in self.parts)


def read_ollama(host: str) -> Read:
    capture = Capture()
    with ollama.Client(host=host, timeout=5, transport=capture) as client:
        parts = list(client.chat(model="smollm2", messages=MESSAGES, stream=True))
    return Read(parts, capture.reads)


def whole_ollama(host: str) -> ollama.ChatResponse:
    with ollama.Client(host=host, timeout=5) as client:
        return client.chat(model="smollm2", messages=MESSAGES, stream=False)


async def record(db_path: Path, scripts: list[Script], requests: list[dict[str, Any] | bool]) -> list[Sent]:
    """Each request through the proxy, whose upstream URL has no path, as for an Ollama client: a dict is
    POSTed to /api/chat as it is, True and False are the ollama library's chat(stream=...). Returns what the
    upstream sent."""
    async with ScriptedUpstream() as upstream:
        upstream.queue(*scripts)
        async with RecordingProxy(RecordOptions(upstream=upstream.origin, db=str(db_path), tape="t")) as proxy:
            for request in requests:
                if isinstance(request, dict):
                    await post(proxy.origin, request, path="/api/chat")
                else:
                    await asyncio.to_thread(read_ollama if request else whole_ollama, proxy.origin)
            await proxy.settle()
        return list(upstream.sent)


# -- recording and replay with the real clients


async def test_the_ollama_library_gets_the_upstream_bytes_recorded_and_replayed(db_path: Path):
    async with (
        ScriptedUpstream(Script(gap=0.03, split_events=True, tool_calls=WEATHER)) as upstream,
        RecordingProxy(RecordOptions(upstream=upstream.origin, db=str(db_path), tape="t")) as proxy,
    ):
        live = await asyncio.to_thread(read_ollama, proxy.origin)
        await proxy.settle()
    (sent,) = upstream.sent
    (ex,) = Store(db_path).exchanges()
    chunks = Store(db_path).chunks(ex.id)
    assert sent.path == ex.path == "/api/chat" and ex.dialect is OLLAMA
    assert ex.response_header("content-type") == "application/x-ndjson"
    assert [c.data for c in chunks] == sent.writes  # one chunk per upstream write, each line split in two
    assert sha(live.body) == sent.sha256 == sha(recorded_body(db_path, ex.id))
    assert live.text == TEXT and live.parts[-1].done and live.parts[-1].done_reason == "stop"
    (call,) = [c for p in live.parts for c in p.message.tool_calls or []]
    assert (call.function.name, call.function.arguments) == ("get_weather", {"city": "Paris", "unit": "celsius"})

    async with ReplayServer(db_path) as srv:  # at recorded speed, so that each chunk is its own read
        replayed = await asyncio.to_thread(read_ollama, srv.origin)
    assert sha(replayed.body) == sent.sha256
    assert replayed.reads == [c.data for c in chunks]  # the client read each recorded chunk on its own
    assert replayed.parts == live.parts
    (rec,) = srv.requests
    assert rec.exchange_id == ex.id and rec.delivered == rec.total == len(chunks) > 16


async def test_autogen_ollama_records_the_upstream_bytes(db_path: Path):
    async with (
        ScriptedUpstream(Script(gap=0.005)) as upstream,
        RecordingProxy(RecordOptions(upstream=upstream.origin, db=str(db_path), tape="t")) as proxy,
    ):
        outcome = await DRIVERS[Client.AUTOGEN_OLLAMA](proxy.base_url, MESSAGES, 2.0)
        await proxy.settle()
    (sent,) = upstream.sent
    (ex,) = Store(db_path).exchanges()
    assert (outcome.text, outcome.finish_reason, outcome.error) == (TEXT, "stop", None)
    assert sha(recorded_body(db_path, ex.id)) == sent.sha256
    assert ex.path == "/api/chat" and ex.end_cause == "complete" and ex.done
    # what tells the client apart (clientid): the ollama library's User-Agent, the library's body shape
    assert ex.client is not None and ex.client.startswith("ollama-python/0.6.3 (")
    assert json.loads(ex.request_body) == {**chat(), "tools": []}


async def test_ls_and_show_read_text_tool_calls_done_reason_and_usage(db_path: Path):
    (sent,) = await record(db_path, [Script(tool_calls=WEATHER, finish_reason="length")], [True])
    runner = CliRunner()
    (row,) = map(json.loads, runner.invoke(main, ["ls", "--db", str(db_path), "--json"]).output.splitlines())
    assert (row["dialect"], row["text"], row["finish_reason"], row["end_cause"]) == ("ollama", TEXT, "length",
                                                                                    "complete")
    assert row["usage"] == {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}
    assert row["tool_calls"] == [{"index": 0, "id": "call_00010000", "type": "function",
                                  "function": {"name": "get_weather",
                                               "arguments": '{"city": "Paris", "unit": "celsius"}'}}]
    assert row["problems"] == []
    listing = runner.invoke(main, ["ls", "--db", str(db_path)]).output.splitlines()
    assert listing[1].split()[3:8] == ["POST", "/api/chat", "ollama", "smollm2", "yes"]
    shown = runner.invoke(main, ["show", "1", "--db", str(db_path)]).output
    assert "done      done: true seen  done_reason length" in shown
    assert 'tool call get_weather({"city": "Paris", "unit": "celsius"})' in shown
    assert 'usage     {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}' in shown
    as_json = json.loads(runner.invoke(main, ["show", "1", "--db", str(db_path), "--json"]).output)
    assert "".join(c["data"] for c in as_json["chunks"]).encode() == sent.body


@pytest.mark.parametrize(
    ("script", "payload", "cause", "done", "finish"),
    [
        (Script(), chat(), "complete", True, "stop"),
        (Script(), chat(stream=None), "complete", True, "stop"),  # Ollama streams unless told not to
        (Script(ending="no_done"), chat(), "eof_without_done", False, None),
        (Script(finish_reason="length", split_events=True), chat(), "complete", True, "length"),
        # no "stream": true in the request: the content type says it is a stream, so no done line is a cause
        (Script(ending="no_done"), chat(stream=None), "eof_without_done", False, None),
        (Script(spaced_json=True), chat(), "complete", True, "stop"),  # "done": true
        # the marker inside a string is escaped ({\"done\":true}): no terminal
        (Script(text='Print {"done":true} or {"done": true}', ending="no_done"), chat(), "eof_without_done", False,
         None),
        (Script(), chat(stream=False), "complete", True, "stop"),
    ],
)
async def test_the_done_line_decides_the_end_cause(db_path: Path, script: Script, payload: dict[str, Any],
                                                   cause: str, done: bool, finish: str | None):
    (sent,) = await record(db_path, [script], [payload])
    (ex,) = Store(db_path).exchanges()
    streamed = payload.get("stream") is not False
    assert OLLAMA.is_stream(ex.response_header("content-type")) is streamed
    assert (ex.end_cause, ex.done, ex.finish_reason) == (cause, done, finish)
    assert ex.text == script.text and ex.problems == []
    assert sha(recorded_body(db_path, ex.id)) == sent.sha256
    assert sent.body.endswith(b"\n") is streamed  # Go's encoder ends each line; a whole answer has none


async def test_a_done_marker_split_across_two_reads_is_seen(db_path: Path):
    lines = WIRES["ollama"].stream_events(Script(), chat(), 1)
    cut = lines[-1].index(b'"done":true') + 6  # the first read ends in `"done"`, the next starts `:true`
    script = Script(raw=[*lines[:-1], lines[-1][:cut], lines[-1][cut:]], gap=0.02)
    (sent,) = await record(db_path, [script], [chat()])
    (ex,) = Store(db_path).exchanges()
    chunks = Store(db_path).chunks(ex.id)
    assert chunks[-2].data.endswith(b',"done"') and chunks[-1].data.startswith(b":true,")
    assert not any(OLLAMA.find_terminal(c.data) for c in chunks)  # only the seam between them holds it
    assert (ex.end_cause, ex.done, ex.text, ex.finish_reason) == ("complete", True, TEXT, "stop")


GENERATE = [b'{"model":"smollm2","created_at":"2024-01-01T00:00:00Z","response":"Hello","done":false}\n',
            b'{"model":"smollm2","created_at":"2024-01-01T00:00:01Z","response":"!","done":false}\n',
            b'{"model":"smollm2","created_at":"2024-01-01T00:00:02Z","response":"","done":true,'
            b'"done_reason":"stop"}\n']


async def test_api_generate_is_ollama_and_its_done_line_ends_it_complete(db_path: Path):
    assert (dialect_for("/api/generate").name, dialect_for("/api/chat").name) == ("ollama", "ollama")

    async def generate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        body = b"".join(GENERATE)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server, url = await serve_raw(generate)
    async with server:
        options = RecordOptions(upstream=url.removesuffix("/v1"), db=str(db_path), tape="t")
        async with RecordingProxy(options) as proxy:
            status, got, error = await post(proxy.origin, {"model": "smollm2", "prompt": "Say hello"},
                                            path="/api/generate")
            await proxy.settle()
    assert (status, got, error) == (200, b"".join(GENERATE), None)
    (ex,) = Store(db_path).exchanges()
    assert (ex.path, ex.dialect.name, ex.end_cause, ex.done, ex.finish_reason, ex.text) == (
        "/api/generate", "ollama", "complete", True, "stop", "Hello!")


# -- faults, as each client sees them


def alike(spec: str, outcome: tuple[str, str | None, str | None]) -> tuple[str, tuple, tuple]:
    """A row where both clients end up with the same (text, finish_reason, error type)."""
    return spec, outcome, outcome


@pytest.mark.parametrize(
    ("spec", "ollama_lib", "autogen"),
    [
        # autogen-ext says "unknown" for a missing done_reason (and for "length")
        ("drop-done", (TEXT, None, None), (TEXT, "unknown", None)),
        ("drop-finish", (TEXT, None, None), (TEXT, "unknown", None)),
        ("cut:chunk=4", ("Hello! How can I ", None, None), ("Hello! How can I ", "unknown", None)),
        alike("close:chunk=4", ("Hello! How can I ", None, "httpx.RemoteProtocolError")),
        alike("reset:chunk=4", ("Hello! How can I ", None, "httpx.ReadError")),
        alike("error-event:chunk=3", ("Hello! How can ", None, "ollama.ResponseError")),
        alike("corrupt:chunk=2", ("Hello! How ", None, "json.JSONDecodeError")),
        alike("status:code=500", ("", None, "ollama.ResponseError")),
        alike("rechunk:size=7", (TEXT, "stop", None)),
        ("stall:chunk=3,seconds=0.6", ("Hello! How can ", None, "httpx.ReadTimeout"),
         ("Hello! How can ", None, "builtins.TimeoutError")),
    ],
)
async def test_each_fault_as_each_ollama_client_sees_it(db_path: Path, spec: str, ollama_lib: tuple,
                                                        autogen: tuple):
    await record(db_path, [Script(gap=0.015)], [True])
    async with ReplayServer(db_path, speed=0, faults=[spec]) as srv:
        got = {}
        timeout = 0.3 if spec.startswith("stall") else 2.0  # only the stall is meant to outlast it
        for client in CLIENTS:
            outcome = await DRIVERS[client](srv.base_url, MESSAGES, timeout)
            got[client] = (outcome.text, outcome.finish_reason, outcome.error_type)
    assert got == {Client.OLLAMA: ollama_lib, Client.AUTOGEN_OLLAMA: autogen}
    assert [r.applied for r in srv.requests] == [[spec]] * 2


async def test_faults_rewrite_ollama_lines_and_keep_the_rest(db_path: Path):
    (sent,) = await record(db_path, [Script(gap=0.015)], [chat()])
    lines = sent.writes
    assert len(lines) == 8 and all(line.endswith(b"\n") for line in lines)

    async def replay(spec: str) -> tuple[int, bytes]:
        async with ReplayServer(db_path, speed=0, faults=[spec]) as srv:
            status, body, error = await post(srv.origin, chat(), path="/api/chat")
        assert error is None
        return status, body

    assert await replay("drop-done") == (200, b"".join(lines[:-1]))
    assert await replay("drop-finish") == (200, sent.body.replace(b'"done_reason":"stop"', b'"done_reason":null'))
    error_line = b'{"error":"streamreplay fault: error event mid-stream"}\n'
    assert await replay("error-event:chunk=2") == (200, b"".join(lines[:2]) + error_line)
    status, body = await replay("corrupt:chunk=1")
    half = (len(lines[1]) - 1) // 2
    assert body == lines[0] + lines[1][:half] + b"\n" + b"".join(lines[2:])
    assert await replay("status:code=500") == (500, b'{"error":"streamreplay fault: status 500"}')
    assert await replay("rechunk:size=5") == (200, sent.body)


# -- stream <-> non-stream through replay


async def test_a_stream_recording_answers_a_non_stream_call_as_ollama_would(db_path: Path):
    script = Script(tool_calls=WEATHER, gap=0.002)
    await record(db_path, [script], [True])
    async with ScriptedUpstream(script) as upstream:  # what Ollama itself answers stream: false with
        live = await asyncio.to_thread(whole_ollama, upstream.origin)
    async with ReplayServer(db_path, speed=0) as srv:
        capture = Capture()
        replayed = await asyncio.to_thread(ollama.Client(host=srv.origin, transport=capture).chat,
                                           model="smollm2", messages=MESSAGES, stream=False)
    assert srv.requests[0].applied == ["stream->json"]
    assert replayed == live and replayed.message.content == TEXT and replayed.done_reason == "stop"
    assert json.loads(b"".join(capture.reads)) == json.loads(upstream.sent[0].body)


async def test_a_non_stream_recording_answers_a_streaming_client(db_path: Path):
    await record(db_path, [Script(tool_calls=WEATHER)], [False])
    (ex,) = Store(db_path).exchanges()
    assert (ex.stream, ex.end_cause, ex.done, ex.text, ex.finish_reason) == (False, "complete", True, TEXT, "stop")
    async with ReplayServer(db_path, speed=0) as srv:
        replayed = await asyncio.to_thread(read_ollama, srv.origin)
        outcome = await DRIVERS[Client.AUTOGEN_OLLAMA](srv.base_url, MESSAGES, 1.0)
    assert [r.applied for r in srv.requests] == [["json->stream"]] * 2
    assert replayed.text == outcome.text == TEXT and outcome.finish_reason == "stop"
    assert len(replayed.parts) == len(TEXT.split()) + 2  # a line a word, the tool call line, the done line
    assert [p.done for p in replayed.parts].count(True) == 1 and replayed.parts[-1].eval_count == 7
    (call,) = [c for p in replayed.parts for c in p.message.tool_calls or []]
    assert call.function.arguments == {"city": "Paris", "unit": "celsius"}


async def test_a_request_that_leaves_stream_out_is_a_stream_recorded_and_replayed(db_path: Path):
    (sent,) = await record(db_path, [Script()], [chat(stream=None)])
    async with ReplayServer(db_path, speed=0) as srv:
        _, body, _ = await post(srv.origin, chat(stream=None), path="/api/chat")
    assert srv.requests[0].applied == [] and sha(body) == sent.sha256
    assert Store(db_path).exchanges()[0].stream


# -- the dialect on its own


def test_find_terminal_sees_the_done_key_not_a_string_that_holds_it():
    assert OLLAMA.find_terminal(b'{"model":"m","message":{"role":"assistant","content":""},"done":true}\n')
    assert OLLAMA.find_terminal(b'"content": ""}, "done" : true, "done_reason": "stop"}')
    assert not OLLAMA.find_terminal(b'{"message":{"content":"say {\\"done\\":true}"},"done":false}\n')
    assert not OLLAMA.find_terminal(b'{"message":{"content":"x, \\"done\\": true"},"done":false}\n')
    assert not OLLAMA.find_terminal(b'"done":true')  # a read that starts at the key: the seam check has it


def test_a_stream_and_a_whole_answer_tell_apart():
    wire = WIRES["ollama"]
    stream = b"".join(wire.stream_events(Script(), {}, 1))
    whole = go_json(wire.body(Script(), {}, 1))
    assert OLLAMA.looks_like_stream(stream[:40]) and OLLAMA.looks_like_stream(stream)
    assert not OLLAMA.looks_like_stream(whole) and not OLLAMA.looks_like_stream(b'{"error":"model not found"}')
    assert not OLLAMA.looks_like_stream(b"<html>")
    assert OLLAMA.assemble(whole, None).text == OLLAMA.assemble(stream, None).text == TEXT
    assert OLLAMA.assemble(whole, None).problems == OLLAMA.assemble(stream, None).problems == []
    assert OLLAMA.wants_stream({}) and OLLAMA.wants_stream({"stream": True}) and not OLLAMA.wants_stream(
        {"stream": False})


def test_whole_body_and_stream_events_are_each_others_inverse():
    wire, script = WIRES["ollama"], Script(tool_calls=WEATHER, finish_reason="length")
    stream = b"".join(wire.stream_events(script, {}, 3))
    whole = OLLAMA.whole_body(stream)
    assert whole == wire.body(script, {}, 3)  # what Ollama answers stream: false with
    again = OLLAMA.assemble_stream(b"".join(OLLAMA.stream_events(whole) or []))
    first = OLLAMA.assemble_stream(stream)
    assert (again.text, again.tool_calls, again.finish_reason, again.usage, again.done) == (
        first.text, first.tool_calls, "length", first.usage, True)
    assert OLLAMA.whole_body(stream + OLLAMA.error_event("boom")) is None  # Ollama answers that with a 500
    assert OLLAMA.stream_events({"error": "model not found"}) is None


def test_dropping_the_done_line_drops_what_it_carried():
    lines = [b'{"model":"m","message":{"role":"assistant","content":"Hi"},"done":false}\n',
             b'{"model":"m","message":{"role":"assistant","content":"!"},"done":true,"done_reason":"stop",'
             b'"eval_count":2}\n']
    dropped = OLLAMA.drop_terminal(b"".join(lines))
    assert dropped == lines[0]
    result = OLLAMA.assemble_stream(dropped)
    assert (result.text, result.done, result.finish_reason, result.usage) == ("Hi", False, None, None)


def test_error_lines_and_garbage_are_written_down_not_raised():
    result = OLLAMA.assemble_stream(b'{"message":{"content":"a"},"done":false}\n{"error":"boom"}\nnot json\n[1]\n{"x')
    assert result.text == "a" and result.error == {"message": "boom"}
    assert [p.split(" (byte")[0].split(":")[0] for p in result.problems] == [
        "trailing unterminated line at end of stream", "line 2", "line 3", "line 4"]
    assert go_json({"content": "<b>&\u2028é"}) == b'{"content":"\\u003cb\\u003e\\u0026\\u2028\xc3\xa9"}'
