"""The Responses API dialect end to end: the scripted upstream speaks the documented event stream, the
recorder stores it byte-exact from each real client and knows its terminal event, `ls`/`show` read it,
replay gives it back byte-exact, and every fault reaches the real clients as they really react."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from click.testing import CliRunner

from streamreplay.cli import main
from streamreplay.clientid import Client
from streamreplay.dialects import dialect_for
from streamreplay.dialects.responses import TERMINAL_EVENTS
from streamreplay.drivers.responses import DRIVERS
from streamreplay.outcome import Outcome
from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.replay import ReplayServer, parse_faults
from streamreplay.scripted.responses import ResponsesWire
from streamreplay.sse import parse_events
from streamreplay.store import Exchange, Store
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import MESSAGES, SECRET, post, recorded_body, sha

TEXT = "Hello! How can I help you today?"
CALL = {"name": "get_weather", "arguments": '{"city":"Paris","units":"celsius"}'}
#: the documented order of a streamed answer with one text part, before its terminal event
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added", *["response.output_text.delta"] * 7, "response.output_text.done",
               "response.content_part.done", "response.output_item.done"]


class _Tap(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, sink: bytearray) -> None:
        self.inner, self.sink = inner, sink

    def __iter__(self) -> Iterator[bytes]:
        for data in self.inner:
            self.sink += data
            yield data

    def close(self) -> None:
        self.inner.close()


class _AsyncTap(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, sink: bytearray) -> None:
        self.inner, self.sink = inner, sink

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for data in self.inner:
            self.sink += data
            yield data

    async def aclose(self) -> None:
        await self.inner.aclose()


class Capture(httpx.HTTPTransport):
    """A real transport that keeps the body bytes of every response, as the client library read them."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytearray] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.bodies.append(bytearray())
        response.stream = _Tap(response.stream, self.bodies[-1])  # type: ignore[arg-type]
        return response


class AsyncCapture(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytearray] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.bodies.append(bytearray())
        response.stream = _AsyncTap(response.stream, self.bodies[-1])  # type: ignore[arg-type]
        return response


async def drive(client: Client, base_url: str, timeout: float = 5.0) -> tuple[Outcome, list[bytearray]]:
    """What the app got through a reference driver, and the body bytes its HTTP client received."""
    if client is Client.OPENAI_RESPONSES_STREAM:
        capture: Capture | AsyncCapture = AsyncCapture()
        http: httpx.Client | httpx.AsyncClient = httpx.AsyncClient(transport=capture)
    else:
        capture = Capture()
        http = httpx.Client(transport=capture)
    outcome = await DRIVERS[client](base_url, MESSAGES, timeout, http_client=http)  # type: ignore[call-arg]
    return outcome, capture.bodies


async def record(db_path: Path, scripts: list[Script],
                 behaviour: Callable[[str], Awaitable[Any]]) -> tuple[Any, ScriptedUpstream, list[Exchange]]:
    async with ScriptedUpstream() as upstream:
        upstream.queue(*scripts)
        async with RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db_path), tape="r")) as proxy:
            result = await behaviour(proxy.base_url)
            await proxy.settle()
    return result, upstream, Store(db_path).exchanges()


def events_of(body: bytes) -> list[tuple[str | None, dict]]:
    return [(ev.event, json.loads(ev.data)) for ev in parse_events(body)]


async def test_the_scripted_stream_is_the_documented_event_sequence():
    """Every event names its type twice (event line, data), numbers follow from 0, and the SDK's own
    accumulator (which asserts each index it is given) rebuilds the terminal event's response."""
    async with ScriptedUpstream() as upstream:
        upstream.queue(Script(tool_calls=[CALL]), Script(finish_reason="length", ending="no_done"))
        client = openai.AsyncOpenAI(base_url=upstream.base_url, api_key=SECRET, max_retries=0)
        async with client.responses.stream(model="smollm2", input=MESSAGES) as stream:
            final = await stream.get_final_response()
        cut = await client.responses.create(model="smollm2", input=MESSAGES, stream=True,
                                            stream_options={"include_obfuscation": False})
        cut_types = [event.type async for event in cut]
    whole, clipped = (events_of(s.body) for s in upstream.sent)
    assert [e for e, _ in whole] == [data["type"] for _, data in whole]
    assert [data["sequence_number"] for _, data in whole] == list(range(len(whole)))
    call_events = ["response.output_item.added", *["response.function_call_arguments.delta"] * 5,
                   "response.function_call_arguments.done", "response.output_item.done"]
    assert [e for e, _ in whole] == [*TEXT_EVENTS, *call_events, "response.completed"]
    completed = whole[-1][1]["response"]
    assert final.id == completed["id"] == "resp_0001" and final.status == "completed"
    assert final.output_text == TEXT and completed["output"][0]["content"][0]["text"] == TEXT
    assert (final.output[1].name, final.output[1].arguments) == (CALL["name"], CALL["arguments"])
    assert completed["usage"]["output_tokens"] == 12 and completed["incomplete_details"] is None
    assert all("obfuscation" in data for e, data in whole if e.endswith(".delta"))
    # no_done: the same sequence without its terminal event (response.incomplete, as the status says)
    assert cut_types == [e for e, _ in clipped] == TEXT_EVENTS
    assert not any("obfuscation" in data for _, data in clipped)
    assert clipped[-1][1]["item"]["status"] == "incomplete"


@pytest.mark.parametrize("client", list(DRIVERS))
async def test_each_client_records_byte_exact(db_path: Path, client: Client):
    (outcome, bodies), upstream, (ex,) = await record(db_path, [Script(gap=0.003, split_events=True)],
                                                      lambda base: drive(client, base))
    (received,) = bodies
    assert sha(received) == upstream.sent[0].sha256 == sha(recorded_body(db_path, ex.id))
    assert (outcome.text, outcome.finish_reason, outcome.error) == (TEXT, "completed", None)
    assert ex.dialect.name == "responses" and ex.path == "/responses" and ex.stream
    assert (ex.end_cause, ex.done, ex.text, ex.finish_reason) == ("complete", True, TEXT, "stop")
    agent = dict((k.lower(), v) for k, v in ex.request_headers)["user-agent"]
    assert agent.startswith("AsyncOpenAI/" if client is Client.OPENAI_RESPONSES_STREAM else "OpenAI/")
    (item,) = ex.request_json()["input"]
    # how a recording tells them apart: langchain writes content first and types the item
    assert list(item) == (["content", "role", "type"] if client is Client.LANGCHAIN_RESPONSES else ["role", "content"])


async def test_a_max_output_tokens_answer_as_each_client_sees_it(db_path: Path):
    """response.incomplete: every client has the text and the reason, but the SDK's stream helper has no
    final response to give (it keeps only response.completed's)."""

    async def behaviour(base: str) -> dict[Client, tuple[str, str | None, str | None]]:
        outcomes = {client: (await drive(client, base))[0] for client in DRIVERS}
        return {client: (o.text, o.finish_reason, o.error_type) for client, o in outcomes.items()}

    got, _, exchanges = await record(db_path, [Script(finish_reason="length") for _ in DRIVERS], behaviour)
    assert got == {Client.OPENAI_RESPONSES: (TEXT, "max_output_tokens", None),
                   Client.OPENAI_RESPONSES_STREAM: (TEXT, "max_output_tokens", "builtins.RuntimeError"),
                   Client.LANGCHAIN_RESPONSES: (TEXT, "max_output_tokens", None)}
    assert [(ex.end_cause, ex.finish_reason) for ex in exchanges] == [("complete", "length")] * 3


async def test_ls_and_show_read_text_tool_call_usage_and_status(db_path: Path):
    scripts = [Script(tool_calls=[CALL], split_events=True, gap=0.002), Script(finish_reason="length")]

    async def behaviour(base: str) -> None:
        for _ in scripts:
            await drive(Client.OPENAI_RESPONSES, base)

    await record(db_path, scripts, behaviour)
    runner = CliRunner()
    listing = runner.invoke(main, ["ls", "--db", str(db_path)]).output.splitlines()
    assert [line.split()[3:7] for line in listing[1:-1]] == [["POST", "/responses", "responses", "smollm2"]] * 2
    assert all(line.endswith("Hello! How can I help you today?") for line in listing[1:-1])
    assert listing[-1].startswith("2 exchanges, 1 tape, DB ")
    shown = runner.invoke(main, ["show", "r:0", "--db", str(db_path)]).output.splitlines()
    assert f"tool call get_weather({CALL['arguments']})" in shown
    assert "message   'Hello! How can I help you today?'" in shown
    usage = next(line for line in shown if line.startswith("usage"))
    assert json.loads(usage.removeprefix("usage"))["total_tokens"] == 21
    done = next(line for line in shown if line.startswith("done"))
    assert done.startswith("done      response.completed seen  status completed  ")
    length = runner.invoke(main, ["show", "r:1", "--db", str(db_path)]).output
    assert "  status incomplete: max_output_tokens  " in length and "end       complete" in length
    diagnosed = runner.invoke(main, ["diagnose", "r:1", "--db", str(db_path)]).output.splitlines()
    assert "upstream   answer complete: status incomplete: max_output_tokens, response.completed seen" in diagnosed
    assert diagnosed[0] == ("exchange r:1 (id 2): the stream completed, but the answer was cut by the token limit "
                            "(status incomplete: max_output_tokens)")


async def test_the_terminal_event_decides_the_end_cause(db_path: Path):
    """Missing: eof_without_done. Its words inside the answer's text (JSON strings) do not count; cut
    across reads so that no read holds it whole, it still does."""
    decoy = 'event: response.completed\ndata: {"type":"response.completed"}\n\n'
    body = b"".join(ResponsesWire().stream_events(Script(), {"model": "m"}, 1))
    event_line = body.index(b"event: response.completed") + 15
    data_type = body.index(b'"type":"response.completed"') + 15
    split = [body[:event_line], body[event_line:data_type], body[data_type:]]
    scripts = [Script(ending="no_done"), Script(text=decoy, ending="no_done"), Script(raw=split, gap=0.01)]

    async def behaviour(base: str) -> list[tuple[int, bytes, str | None]]:
        return [await post(base, {"model": "m", "input": "hi", "stream": True}, path="/responses") for _ in scripts]

    answers, upstream, exchanges = await record(db_path, scripts, behaviour)
    assert [ex.end_cause for ex in exchanges] == ["eof_without_done", "eof_without_done", "complete"]
    assert [ex.done for ex in exchanges] == [False, False, True]
    assert exchanges[1].text == decoy and decoy.encode() not in upstream.sent[1].body  # escaped in JSON
    chunks = Store(db_path).chunks(exchanges[2].id)
    assert len(chunks) == 3 and not any(dialect_for("/responses").find_terminal(c.data) for c in chunks)
    assert [sha(body) for _, body, _ in answers] == [s.sha256 for s in upstream.sent]
    # replay finds it across its own pieces too: 20 bytes each, none holds the event line (27) whole
    async with ReplayServer(db_path, speed=0, faults=["rechunk:size=20"]) as srv:
        replayed = [await post(srv.base_url, {"model": "m", "input": "hi", "stream": True}, path="/responses")
                    for _ in scripts]
    assert [rec.done_delivered for rec in srv.requests] == [False, False, True]
    assert [sha(body) for _, body, _ in replayed] == [s.sha256 for s in upstream.sent]


def test_find_terminal_reads_the_type_only_where_it_names_the_event():
    responses = dialect_for("/v1/responses")
    assert responses.name == "responses"
    pydantic_order = b'data: {"response":{"status":"completed"},"sequence_number":9,"type":"response.completed"}\n'
    assert responses.find_terminal(pydantic_order)
    assert responses.find_terminal(b'\nevent: response.failed\n')
    # an answer cut by max_output_tokens ends with response.incomplete: whole, not a cutoff
    assert responses.find_terminal(b'\nevent: response.incomplete\n')
    assert responses.find_terminal(b'data: {"response":{"status":"incomplete"},"type":"response.incomplete"}\n')
    nested = b'data: {"type":"response.created","response":{"metadata":{"type":"response.completed"}}}\n'
    inside = b'data: {"type":"response.output_text.delta","delta":"event: response.completed\\n"}\n'
    comment = b'\n: event: response.completed\n: data: {"type":"response.completed"\n'  # comments, not events
    assert not any(responses.find_terminal(data) for data in (nested, inside, comment))


def test_drop_stop_nulls_the_responses_status_only():
    responses = dialect_for("/responses")
    body = (b'event: response.output_item.done\ndata: {"type":"response.output_item.done","item":'
            b'{"status":"completed"}}\n\n'
            b'event: response.incomplete\ndata: {"response":{"output":[{"status":"incomplete"}],'
            b'"incomplete_details":{"reason":"max_output_tokens"},"status":"incomplete"},"type":"response.incomplete"}\n\n'
            b'event: response.completed\ndata: {"type":"response.completed","response":\n\n')
    expected = body.replace(b'"incomplete_details":{"reason":"max_output_tokens"},"status":"incomplete"',
                            b'"incomplete_details":null,"status":null')
    assert responses.drop_stop(body) == expected  # the malformed last event is left as sent
    assert responses.whole_body(body) == {"output": [{"status": "incomplete"}],
                                          "incomplete_details": {"reason": "max_output_tokens"},
                                          "status": "incomplete"}
    assert responses.whole_body(body.split(b"event: response.incomplete")[0]) is None


def test_malformed_upstream_bytes_are_read_without_raising():
    responses = dialect_for("/responses")
    bodies = [b"", b"\xff\xfe event: response.completed\n\n", b"event: response.completed\ndata: {\n\n",
              b'data: {"type":"response.completed","response":[1]}\n\n', b"data: " + b"[" * 100_000 + b"\n\n",
              b'data: {"type":"response.failed","response":{"status":' + b"[" * 100_000 + b"}}\n\n"]
    for body in bodies:
        assert responses.drop_stop(body) == body
        assert responses.whole_body(body) is None
        responses.drop_terminal(body), responses.find_terminal(body), responses.assemble_stream(body)
    odd = {"object": "response", "status": "completed",
           "output": [5, {"type": "message", "content": "x"}, {"type": "function_call", "arguments": {"a": 1}}]}
    assert responses.stream_events({"object": "response", "status": ["completed"]}) is None
    events = responses.stream_events(odd)
    assert events is not None and b"response.completed" in events[-1]


async def test_replay_is_byte_exact_with_the_recorded_chunks(db_path: Path):
    _, upstream, (ex,) = await record(db_path, [Script(gap=0.015)], lambda base: drive(Client.OPENAI_RESPONSES, base))
    chunks = Store(db_path).chunks(ex.id)
    async with ReplayServer(db_path, speed=0) as srv:
        outcome, (received,) = await drive(Client.OPENAI_RESPONSES_STREAM, srv.base_url)
    assert (outcome.text, outcome.finish_reason, outcome.error) == (TEXT, "completed", None)
    assert sha(received) == upstream.sent[0].sha256
    (rec,) = srv.requests
    assert rec.delivered == rec.total == len(chunks) > 10  # each recorded chunk one write of its own
    assert rec.done_delivered and rec.ending == "clean" and rec.applied == []


PARTIAL = "Hello! How "
#: fault -> what each client ends with: (text, finish reason, error type); chunk N is event N here
FAULTS: dict[str, dict[Client, tuple[str, str | None, str | None]]] = {
    "drop-done": {Client.OPENAI_RESPONSES: (TEXT, None, None),
                  Client.OPENAI_RESPONSES_STREAM: (TEXT, None, "builtins.RuntimeError"),
                  Client.LANGCHAIN_RESPONSES: (TEXT, None, None)},
    "drop-finish": {Client.OPENAI_RESPONSES: (TEXT, None, None),
                    Client.OPENAI_RESPONSES_STREAM: (TEXT, None, None),
                    Client.LANGCHAIN_RESPONSES: (TEXT, None, None)},
    "error-event:chunk=6": {Client.OPENAI_RESPONSES: (PARTIAL, None, None),
                            Client.OPENAI_RESPONSES_STREAM: (PARTIAL, None, "builtins.RuntimeError"),
                            Client.LANGCHAIN_RESPONSES: (PARTIAL, None, "builtins.ValueError")},
    "corrupt:chunk=5": {c: ("Hello! ", None, "json.JSONDecodeError") for c in DRIVERS},
    "cut:chunk=6": {Client.OPENAI_RESPONSES: (PARTIAL, None, None),
                    Client.OPENAI_RESPONSES_STREAM: (PARTIAL, None, "builtins.RuntimeError"),
                    Client.LANGCHAIN_RESPONSES: (PARTIAL, None, None)},
    "close:chunk=6": {c: (PARTIAL, None, "httpx.RemoteProtocolError") for c in DRIVERS},
    "reset:chunk=6": {c: (PARTIAL, None, "httpx.ReadError") for c in DRIVERS},
    "stall:chunk=6,seconds=1": {c: (PARTIAL, None, "httpx.ReadTimeout") for c in DRIVERS},
    "status:code=500": {Client.OPENAI_RESPONSES: ("", None, "openai.InternalServerError"),
                        Client.OPENAI_RESPONSES_STREAM: ("", None, "openai.InternalServerError"),
                        Client.LANGCHAIN_RESPONSES: ("", None, "langchain_openai.OpenAIAPIError")},
    "rechunk:size=7": {c: (TEXT, "completed", None) for c in DRIVERS},
}


@pytest.fixture(scope="module")
def tape(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One answer recorded from each client (replay matches each client's own request), 3 ms apart."""
    db_path = tmp_path_factory.mktemp("responses") / "rec.db"

    async def behaviour(base: str) -> None:
        for client in DRIVERS:
            await drive(client, base)

    asyncio.run(record(db_path, [Script(gap=0.015) for _ in DRIVERS], behaviour))
    return db_path


@pytest.mark.parametrize("spec", list(FAULTS))
async def test_each_fault_as_each_client_sees_it(tape: Path, spec: str):
    timeout = 0.3 if spec.startswith("stall") else 5.0
    async with ReplayServer(tape, speed=0, faults=[spec]) as srv:
        got = {}
        for client in DRIVERS:
            outcome, _ = await drive(client, srv.base_url, timeout)
            got[client] = (outcome.text, outcome.finish_reason, outcome.error_type)
    assert got == FAULTS[spec]
    assert [rec.applied for rec in srv.requests] == [[f.spec() for f in parse_faults(spec)]] * len(DRIVERS)


async def test_event_rewriting_faults_change_only_their_events(db_path: Path):
    (_, sent, _), _, _ = await record(db_path, [Script(gap=0.015)], lambda base: post(
        base, {"model": "m", "input": "hi", "stream": True}, path="/responses"))
    terminal = sent[sent.index(b"event: response.completed\n"):]
    payload = {"model": "m", "input": "hi", "stream": True}
    async with ReplayServer(db_path, speed=0) as srv:
        bodies = {spec: (await post(srv.fault_url(spec), payload, path="/responses"))[1]
                  for spec in ("drop-done", "drop-finish", "error-event:chunk=6")}
    assert bodies["drop-done"] == sent.removesuffix(terminal) and terminal.endswith(b"}}\n\n")
    assert bodies["drop-finish"] == sent.removesuffix(terminal) + terminal.replace(
        b'"status":"completed"', b'"status":null', 1)
    events = parse_events(bodies["error-event:chunk=6"])
    assert [ev.event for ev in events] == [*TEXT_EVENTS[:6], "error"]
    assert json.loads(events[-1].data) == {"type": "error", "code": "server_error", "param": None,
                                           "message": "streamreplay fault: error event mid-stream",
                                           "sequence_number": 0}
    assert set(TERMINAL_EVENTS) == {"response.completed", "response.incomplete", "response.failed"}


async def test_stream_and_whole_answers_convert_through_replay(db_path: Path):
    """A streamed recording answers stream=false with its final response; a whole one answers a stream
    with the documented events, which the SDK's accumulator rebuilds into the same response."""
    scripts = [Script(gap=0.002), Script(tool_calls=[CALL])]

    async def behaviour(base: str) -> None:
        client = openai.AsyncOpenAI(base_url=base, api_key=SECRET, max_retries=0)
        stream = await client.responses.create(model="smollm2", input="streamed", stream=True)
        [_ async for _ in stream]
        await client.responses.create(model="smollm2", input="whole")

    _, upstream, _ = await record(db_path, scripts, behaviour)
    streamed_final = events_of(upstream.sent[0].body)[-1][1]["response"]
    whole = json.loads(upstream.sent[1].body)
    capture = AsyncCapture()
    async with ReplayServer(db_path, speed=0) as srv:
        client = openai.AsyncOpenAI(base_url=srv.base_url, api_key=SECRET, max_retries=0,
                                    http_client=httpx.AsyncClient(transport=capture))
        reply = await client.responses.create(model="smollm2", input="streamed", stream=False)
        async with client.responses.stream(model="smollm2", input="whole") as stream:
            final = await stream.get_final_response()
    assert [rec.applied for rec in srv.requests] == [["stream->json"], ["json->stream"]]
    assert json.loads(capture.bodies[0]) == streamed_final
    assert (reply.id, reply.status, reply.output_text, reply.usage.output_tokens) == ("resp_0001", "completed", TEXT, 7)
    served = events_of(bytes(capture.bodies[1]))
    assert [e for e, _ in served] == [data["type"] for _, data in served]
    assert [data["sequence_number"] for _, data in served] == list(range(len(served)))
    assert served[-1][1]["response"] == whole
    assert final.id == whole["id"] == "resp_0002" and final.output_text == TEXT
    assert (final.output[1].call_id, final.output[1].arguments) == ("call_0", CALL["arguments"])

