"""Azure OpenAI chat.completions: recorded through the proxy (an upstream URL with no path: the clients add
/openai/deployments/...?api-version=...) and replayed, byte-exact, into the real clients (openai.AzureOpenAI,
autogen-ext's AzureOpenAIChatCompletionClient), with every ending and fault, and as the summary reads it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
from autogen_core.models import CreateResult, UserMessage
from autogen_ext.models.openai import AzureOpenAIChatCompletionClient
from click.testing import CliRunner
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from streamreplay.cli import main
from streamreplay.clientid import Client, recognise_client
from streamreplay.dialects import dialect_for
from streamreplay.drivers.azure import API_VERSION, DEPLOYMENT, DRIVERS, MODEL_INFO
from streamreplay.outcome import Outcome
from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.replay import ReplayServer, parse_faults
from streamreplay.scripted.azure import (
    AZURE_MODEL,
    CONTENT_FILTER_RESULTS,
    PROMPT_FILTER_RESULTS,
    async_filter_events,
    azure_completion,
)
from streamreplay.scripted.script import CREATED
from streamreplay.store import Store
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import MESSAGES, SECRET, post, recorded_body, sha

TEXT = "Hello! How can I help you today?"
PATH = f"/openai/deployments/{DEPLOYMENT}/chat/completions"
QUERY = f"?api-version={API_VERSION}"
#: what openai.AzureOpenAI sends for MESSAGES, so that a plain HTTP request matches its recording
SDK_BODY = {"messages": MESSAGES, "model": DEPLOYMENT, "stream": True}
SYNC, AUTOGEN = Client.AZURE_OPENAI, Client.AUTOGEN_AZURE

T = TypeVar("T")


# -- what each client received, byte for byte: a transport that keeps the body the SDK read


class _SyncTee(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, into: bytearray) -> None:
        self.inner, self.into = inner, into

    def __iter__(self) -> Iterator[bytes]:
        for part in self.inner:
            self.into += part
            yield part

    def close(self) -> None:
        self.inner.close()


class _AsyncTee(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, into: bytearray) -> None:
        self.inner, self.into = inner, into

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self.inner:
            self.into += part
            yield part

    async def aclose(self) -> None:
        await self.inner.aclose()


class SyncTap(httpx.BaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.received: list[bytearray] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        self.received.append(bytearray())
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers, extensions=response.extensions,
                              stream=_SyncTee(response.stream, self.received[-1]))

    def close(self) -> None:
        self.inner.close()


class AsyncTap(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.received: list[bytearray] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.received.append(bytearray())
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers, extensions=response.extensions,
                              stream=_AsyncTee(response.stream, self.received[-1]))

    async def aclose(self) -> None:
        await self.inner.aclose()


def azure_sdk(endpoint: str, tap: SyncTap, timeout: float = 5.0) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=endpoint, api_key=SECRET, api_version=API_VERSION, max_retries=0,
                              timeout=timeout, http_client=httpx.Client(transport=tap))


def _read_sync(endpoint: str, tap: SyncTap, **create: object) -> Outcome:
    out = Outcome("")
    with azure_sdk(endpoint, tap) as client:
        for chunk in client.chat.completions.create(model=DEPLOYMENT, messages=MESSAGES, stream=True, **create):
            if chunk.choices:
                out.text += chunk.choices[0].delta.content or ""
                out.finish_reason = chunk.choices[0].finish_reason or out.finish_reason
    return out


async def read_sync(endpoint: str, tap: SyncTap, **create: object) -> Outcome:
    return await asyncio.to_thread(_read_sync, endpoint, tap, **create)


def autogen_azure(endpoint: str, tap: AsyncTap) -> AzureOpenAIChatCompletionClient:
    return AzureOpenAIChatCompletionClient(azure_deployment=DEPLOYMENT, model=DEPLOYMENT, api_version=API_VERSION,
                                           azure_endpoint=endpoint, api_key=SECRET, max_retries=0, timeout=5.0,
                                           model_info=MODEL_INFO, http_client=httpx.AsyncClient(transport=tap))


async def read_autogen(endpoint: str, tap: AsyncTap, question: str = MESSAGES[0]["content"]) -> Outcome:
    client = autogen_azure(endpoint, tap)
    out = Outcome("")
    try:
        async for item in client.create_stream([UserMessage(content=question, source="user")]):
            if isinstance(item, str):
                out.text += item
            elif isinstance(item, CreateResult):
                out.finish_reason = item.finish_reason
    finally:
        await client.close()
    return out


async def read_tapped(client: Client, endpoint: str) -> tuple[Outcome, bytes]:
    """What the app got through the real client, and the bytes the client read."""
    if client is SYNC:
        tap: SyncTap | AsyncTap = SyncTap()
        outcome = await read_sync(endpoint, tap)
    else:
        tap = AsyncTap()
        outcome = await read_autogen(endpoint, tap)
    (received,) = tap.received
    return outcome, bytes(received)


def seen(outcome: Outcome) -> tuple[str, str | None, str | None]:
    return outcome.text, outcome.finish_reason, outcome.error_type


# -- a tape recorded once: one stream read by each client, through the proxy


@dataclass
class Tape:
    db: Path
    sent: bytes  # what the upstream wrote to openai.AzureOpenAI's request (the first exchange)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    # a loop of its own on another thread: the servers run on theirs, and pytest-asyncio's stays untouched
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="module")
def tape(tmp_path_factory: pytest.TempPathFactory) -> Tape:
    db = tmp_path_factory.mktemp("azure") / "rec.db"
    with (
        ScriptedUpstream() as upstream,
        RecordingProxy(RecordOptions(upstream=upstream.origin, db=str(db), tape="azure")) as proxy,
    ):
        # 15 ms apart, each event is a read of its own even on a busy machine: the faults count chunks as events
        upstream.queue(Script(gap=0.015), Script(gap=0.015))
        for client in (SYNC, AUTOGEN):
            assert seen(_run(DRIVERS[client](proxy.base_url, MESSAGES, 5.0))) == (TEXT, "stop", None)
        proxy.call(proxy.settle())
        return Tape(db, upstream.sent[0].body)


# -- the scripted upstream


async def test_the_scripted_upstream_speaks_azures_stream(upstream: ScriptedUpstream):
    payload = {**SDK_BODY, "stream_options": {"include_usage": True}}
    upstream.queue(Script(), Script(status=429))
    async with httpx.AsyncClient() as http:
        resp = await http.post(f"{upstream.origin}{PATH}{QUERY}", json=payload)
        error = await http.post(f"{upstream.origin}{PATH}{QUERY}", json=payload)
    assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = resp.content.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    # the prompt's verdicts first, with empty metadata and keys in Azure's order (captured streams)
    assert events[0] == (
        b'data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,'
        b'"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},"jailbreak":{"filtered":false,'
        b'"detected":false},"self_harm":{"filtered":false,"severity":"safe"},"sexual":{"filtered":false,'
        b'"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}}]}')
    chunks = [json.loads(e[6:]) for e in events[1:-2]]
    for chunk in chunks:
        assert list(chunk) == ["choices", "created", "id", "model", "object", "system_fingerprint", "usage"]
        for choice in chunk["choices"]:
            assert list(choice) == ["content_filter_results", "delta", "finish_reason", "index", "logprobs"]
    verdicts = [c["choices"][0]["content_filter_results"] for c in chunks[:-1]]
    texts = [c["choices"][0]["delta"].get("content") for c in chunks[:-1]]
    assert verdicts == [{}] + [CONTENT_FILTER_RESULTS] * (len(chunks) - 3) + [{}]  # role, content..., finish
    assert "".join(texts[1:-1]) == TEXT and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {"completion_tokens": 7, "prompt_tokens": 9,
                                                                   "total_tokens": 16}
    assert {c["model"] for c in chunks} == {AZURE_MODEL}
    # a 429 is Azure's error body
    assert error.status_code == 429 and error.json() == {"error": {"code": "429", "message": "scripted error 429"}}


# -- recording


@pytest.mark.parametrize("client", [SYNC, AUTOGEN])
async def test_each_client_records_byte_exact_and_the_key_never_reaches_disk(client: Client, tmp_path: Path):
    db = tmp_path / "secret.db"
    async with ScriptedUpstream(Script(gap=0.005)) as upstream:
        async with RecordingProxy(RecordOptions(upstream=upstream.origin, db=str(db), tape="t")) as proxy:
            outcome, received = await read_tapped(client, proxy.base_url)
            await proxy.settle()
            files = [p for p in tmp_path.iterdir() if p.name.startswith("secret.db")]
            assert any(p.name.endswith("-wal") for p in files)  # read while the WAL still holds the rows
            for path in files:
                assert SECRET.encode() not in path.read_bytes(), path
        (sent,) = upstream.sent
    assert seen(outcome) == (TEXT, "stop", None)
    assert sent.path == PATH and sent.headers["api-key"] == SECRET  # forwarded as it came
    (ex,) = Store(db).exchanges()
    assert sha(received) == sent.sha256 == sha(recorded_body(db, ex.id))
    assert ex.chunk_count == len(sent.writes)  # one stored chunk per upstream write
    assert (ex.path, ex.query, ex.dialect.name) == (PATH, f"api-version={API_VERSION}", "azure")
    assert ("api-key", "[redacted]") in [(k.lower(), v) for k, v in ex.request_headers]
    assert (ex.end_cause, ex.done, ex.text, ex.finish_reason) == ("complete", True, TEXT, "stop")
    assert SECRET.encode() not in db.read_bytes()
    assert recognise_client(ex) is client


def test_ls_and_show_read_azures_chunks(db_path: Path):
    with (
        # 15 ms apart: one event per read, as the rows below count them, even on a loaded machine
        ScriptedUpstream(Script(gap=0.015)) as upstream,
        RecordingProxy(RecordOptions(upstream=upstream.origin, db=str(db_path), tape="az")) as proxy,
    ):
        assert seen(_read_sync(proxy.base_url, SyncTap(), stream_options={"include_usage": True})) == (
            TEXT, "stop", None)
        proxy.call(proxy.settle())
    (ex,) = Store(db_path).exchanges()
    assert ex.usage == {"completion_tokens": 7, "prompt_tokens": 9, "total_tokens": 16}  # the last chunk's
    assert ex.model == DEPLOYMENT  # what the request named; the chunks name the model behind it
    runner = CliRunner()
    listing = runner.invoke(main, ["ls", "--db", str(db_path)])
    assert listing.exit_code == 0, listing.output
    (row,) = [line for line in listing.output.splitlines() if PATH in line]
    assert row.split()[5:7] == ["azure", DEPLOYMENT] and row.endswith(f"complete  {TEXT}")
    shown = runner.invoke(main, ["show", "az:0", "--db", str(db_path)])
    assert shown.exit_code == 0, shown.output
    assert f"POST {PATH}{QUERY}  azure" in shown.output
    rows = [line.split(None, 4) for line in shown.output.splitlines() if line[:5].strip().isdigit()]
    # the prompt's verdicts and the role chunk add nothing; the usage chunk neither
    assert [r[4] if len(r) > 4 else "" for r in rows] == [
        "", "", "Hello! ", "How ", "can ", "I ", "help ", "you ", "today?", "<finish_reason=stop>", "", "[DONE]"]
    assert "end       complete" in shown.output and "done      [DONE] seen  finish_reason stop" in shown.output


@pytest.mark.parametrize(
    ("script", "cause", "expected"),
    [
        (Script(ending="no_done"), "eof_without_done",
         {SYNC: (TEXT, "stop", None), AUTOGEN: (TEXT, "stop", None)}),
        (Script(ending="no_done", stop_after=4), "eof_without_done",  # a clean end mid-answer
         {SYNC: ("Hello! How ", None, None), AUTOGEN: ("Hello! How ", "unknown", None)}),
        (Script(ending="close"), "upstream_closed",
         {c: (TEXT, None, "httpx.RemoteProtocolError") for c in (SYNC, AUTOGEN)}),
        (Script(ending="reset", stop_after=4), "upstream_reset",
         {c: ("Hello! How ", None, "httpx.ReadError") for c in (SYNC, AUTOGEN)}),
    ],
    ids=["no-done", "cut", "close", "reset"],
)
async def test_each_ending_live_and_replayed(db_path: Path, script: Script, cause: str, expected: dict):
    async with ScriptedUpstream() as upstream:
        upstream.queue(script, script)
        async with RecordingProxy(RecordOptions(upstream=upstream.origin, db=str(db_path), tape="t")) as proxy:
            live = {c: seen(await DRIVERS[c](proxy.base_url, MESSAGES, 5.0)) for c in (SYNC, AUTOGEN)}
            await proxy.settle()
        sent = [s.body for s in upstream.sent]
    async with ReplayServer(db_path, speed=0) as srv:
        replayed = {c: seen(await DRIVERS[c](srv.base_url, MESSAGES, 5.0)) for c in (SYNC, AUTOGEN)}
    assert live == replayed == expected
    exchanges = Store(db_path).exchanges()
    assert [e.end_cause for e in exchanges] == [cause, cause] and not any(e.done for e in exchanges)
    assert [recorded_body(db_path, e.id) for e in exchanges] == sent


# -- replay


@pytest.mark.parametrize("client", [SYNC, AUTOGEN])
async def test_replay_is_byte_exact_with_the_recorded_chunk_boundaries(client: Client, db_path: Path):
    async with (
        # 15 ms between writes: at 5 ms a loaded machine joined two writes into one read now and then
        ScriptedUpstream(Script(gap=0.03, split_events=True)) as upstream,
        RecordingProxy(RecordOptions(upstream=upstream.origin, db=str(db_path), tape="t")) as proxy,
    ):
        await read_tapped(client, proxy.base_url)
        await proxy.settle()
    (ex,) = Store(db_path).exchanges()
    chunks = Store(db_path).chunks(ex.id)
    async with ReplayServer(db_path) as srv:
        outcome, received = await read_tapped(client, srv.origin)
    assert seen(outcome) == (TEXT, "stop", None)
    assert sha(received) == upstream.sent[0].sha256 == sha(recorded_body(db_path, ex.id))
    (rec,) = srv.requests
    assert rec.path == PATH and rec.exchange_id == ex.id
    assert rec.delivered == rec.total == len(chunks) == len(upstream.sent[0].writes) > 20
    errors = [abs(got - c.t_ns) / 1e6 for got, c in zip(rec.offsets_ns, chunks, strict=True)]
    assert max(errors) < 15, errors  # each chunk its own write at its recorded offset (gaps are 15-30 ms)


FAULTS = [
    ("drop-done", {SYNC: (TEXT, "stop", None), AUTOGEN: (TEXT, "stop", None)}),
    ("drop-finish", {SYNC: (TEXT, None, None), AUTOGEN: (TEXT, "unknown", None)}),
    ("error-event:chunk=3", {c: ("Hello! ", None, "openai.APIError") for c in (SYNC, AUTOGEN)}),
    ("corrupt:chunk=0", {c: ("", None, "json.JSONDecodeError") for c in (SYNC, AUTOGEN)}),  # the prompt's verdicts
    ("corrupt:chunk=3", {c: ("Hello! ", None, "json.JSONDecodeError") for c in (SYNC, AUTOGEN)}),
    ("cut:chunk=4", {SYNC: ("Hello! How ", None, None), AUTOGEN: ("Hello! How ", "unknown", None)}),
    ("close:chunk=4", {c: ("Hello! How ", None, "httpx.RemoteProtocolError") for c in (SYNC, AUTOGEN)}),
    ("reset:chunk=4", {c: ("Hello! How ", None, "httpx.ReadError") for c in (SYNC, AUTOGEN)}),
    ("stall:chunk=3,seconds=2", {c: ("Hello! ", None, "httpx.ReadTimeout") for c in (SYNC, AUTOGEN)}),
    ("delay-first:seconds=2", {c: ("", None, "openai.APITimeoutError") for c in (SYNC, AUTOGEN)}),
    ("status:code=429", {c: ("", None, "openai.RateLimitError") for c in (SYNC, AUTOGEN)}),
    ("status:code=500", {c: ("", None, "openai.InternalServerError") for c in (SYNC, AUTOGEN)}),
    ("rechunk:size=7", {c: (TEXT, "stop", None) for c in (SYNC, AUTOGEN)}),
]


@pytest.mark.parametrize("client", [SYNC, AUTOGEN])
@pytest.mark.parametrize(("spec", "expected"), FAULTS, ids=[spec for spec, _ in FAULTS])
async def test_each_fault_as_each_azure_client_sees_it(tape: Tape, client: Client, spec: str, expected: dict):
    async with ReplayServer(tape.db, speed=0, faults=[spec]) as srv:
        started = time.monotonic()
        outcome = await DRIVERS[client](srv.base_url, MESSAGES, 0.4)
        seconds = time.monotonic() - started
    assert seen(outcome) == expected[client]
    (rec,) = srv.requests  # one request: the drivers never retry, not even a 429 or a 500
    assert rec.path == PATH and rec.applied == [f.spec() for f in parse_faults(spec)]
    assert seconds < 1.5  # a stalled stream or head ends at the client's 0.4 s timeout, not the stall's 2 s


async def test_event_faults_rewrite_azure_streams_exactly(tape: Tape):
    sent = tape.sent
    (ex, _) = Store(tape.db).exchanges()
    chunks = [c.data for c in Store(tape.db).chunks(ex.id)]

    async def body(spec: str) -> tuple[int, bytes]:
        async with ReplayServer(tape.db, speed=0, faults=[spec]) as srv:
            status, data, error = await post(srv.origin, SDK_BODY, path=PATH + QUERY)
        assert error is None and srv.requests[0].exchange_id == ex.id
        return status, data

    assert await body("drop-done") == (200, sent.removesuffix(b"data: [DONE]\n\n"))
    dropped = sent.replace(b'"finish_reason":"stop"', b'"finish_reason":null')
    assert dropped != sent and await body("drop-finish") == (200, dropped)
    status, errored = await body("error-event:chunk=3")
    head = b"".join(chunks[:3])
    assert errored.startswith(head) and errored.endswith(b"\n\n")
    assert json.loads(errored[len(head) + len(b"data: "):])["error"]["message"] == (
        "streamreplay fault: error event mid-stream")
    status, corrupted = await body("corrupt:chunk=0")
    torn = corrupted[: len(corrupted) - len(sent) + len(chunks[0])]
    assert corrupted.endswith(b"".join(chunks[1:])) and len(torn) < len(chunks[0])
    assert chunks[0].startswith(torn.removesuffix(b"\n\n")) and torn.endswith(b"\n\n")  # the JSON cut in half
    status, refused = await body("status:code=429")
    assert status == 429
    assert json.loads(refused) == {"error": {"code": "429", "message": "streamreplay fault: status 429"}}


# -- stream <-> whole answer


async def test_stream_and_whole_answers_served_from_each_other_keep_azures_verdicts(db_path: Path):
    streamed_q, whole_q = [{"role": "user", "content": "streamed"}], [{"role": "user", "content": "whole"}]
    async with (
        ScriptedUpstream() as upstream,
        RecordingProxy(RecordOptions(upstream=upstream.origin, db=str(db_path), tape="t")) as proxy,
    ):
        def record() -> None:
            with azure_sdk(proxy.base_url, SyncTap()) as client:
                list(client.chat.completions.create(model=DEPLOYMENT, messages=streamed_q, stream=True))
                client.chat.completions.create(model=DEPLOYMENT, messages=whole_q)

        await asyncio.to_thread(record)
        autogen = autogen_azure(proxy.base_url, AsyncTap())
        await autogen.create([UserMessage(content=whole_q[0]["content"], source="user")])  # stream:false
        await autogen.close()
        await proxy.settle()
    streamed, whole, _ = Store(db_path).exchanges()
    assert (streamed.stream, whole.stream, whole.dialect.name, whole.text) == (True, False, "azure", TEXT)
    async with ReplayServer(db_path, speed=0) as srv:
        def replay() -> tuple[bytes, ChatCompletion, list[ChatCompletionChunk]]:
            tap = SyncTap()
            with azure_sdk(srv.origin, tap) as client:
                reply = client.chat.completions.create(model=DEPLOYMENT, messages=streamed_q)
                chunks = list(client.chat.completions.create(model=DEPLOYMENT, messages=whole_q, stream=True))
            return bytes(tap.received[0]), reply, chunks

        raw, reply, chunks = await asyncio.to_thread(replay)
    assert [r.applied for r in srv.requests] == [["stream->json"], ["json->stream"]]
    # the whole answer made from the stream is the one Azure gives for stream:false (the scripted upstream's,
    # for the same script and id), but for the usage, which the stream did not ask for
    assert json.loads(raw) == {**azure_completion(Script(), "chatcmpl-0001"), "usage": None}
    assert reply.choices[0].message.content == TEXT and reply.choices[0].finish_reason == "stop"
    assert reply.model_extra["prompt_filter_results"] == PROMPT_FILTER_RESULTS
    assert reply.choices[0].model_extra["content_filter_results"] == CONTENT_FILTER_RESULTS
    # the stream made from the whole answer starts with the prompt's verdicts, as Azure's does
    assert chunks[0].choices == [] and chunks[0].model_extra["prompt_filter_results"] == PROMPT_FILTER_RESULTS
    assert "".join(c.choices[0].delta.content or "" for c in chunks[1:]) == TEXT
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert [c.choices[0].model_extra["content_filter_results"] for c in chunks[1:]] == (
        [{}] + [CONTENT_FILTER_RESULTS] * (len(chunks) - 3) + [{}])
    # and autogen reads it as it reads Azure's
    async with ReplayServer(db_path, speed=0) as srv:
        assert seen(await read_autogen(srv.origin, AsyncTap(), whole_q[0]["content"])) == (TEXT, "stop", None)
    assert srv.requests[0].applied == ["json->stream"]


# -- Azure's Asynchronous Filter: verdicts in annotation chunks, after the tokens


@pytest.mark.parametrize("blocked", [False, True], ids=["passed", "blocked"])
async def test_asynchronous_filter_annotations_break_both_clients_live_and_replayed(db_path: Path, blocked: bool):
    events = async_filter_events(Script(), "chatcmpl-0001", blocked=blocked)
    async with ScriptedUpstream() as upstream:
        upstream.queue(Script(raw=events), Script(raw=events))
        async with RecordingProxy(RecordOptions(upstream=upstream.origin, db=str(db_path), tape="t")) as proxy:
            live = {c: seen(await DRIVERS[c](proxy.base_url, MESSAGES, 5.0)) for c in (SYNC, AUTOGEN)}
            await proxy.settle()
    async with ReplayServer(db_path, speed=0) as srv:
        replayed = {c: seen(await DRIVERS[c](srv.base_url, MESSAGES, 5.0)) for c in (SYNC, AUTOGEN)}
    # an annotation's choice has no delta: the app's `choices[0].delta.content` and autogen-ext's own reading of
    # the chunk both meet None, after the whole text (and, when it passed, the finish chunk) arrived
    finish = None if blocked else "stop"
    assert live == replayed == {SYNC: (TEXT, finish, "builtins.AttributeError"),
                                AUTOGEN: (TEXT, None, "builtins.AttributeError")}
    for ex in Store(db_path).exchanges():
        assert (ex.end_cause, ex.done, ex.text) == ("complete", True, TEXT)
        assert recorded_body(db_path, ex.id) == b"".join(events)


async def test_a_chunk_after_the_finish_with_no_finish_reason_leaves_the_one_the_client_saw(db_path: Path):
    """The reference client keeps the last finish reason it met, as an app does: an annotation sent with an
    empty delta (read past the finish chunk, without the AttributeError a missing delta gives) does not undo it."""
    *head, annotation, done = async_filter_events(Script(), "chatcmpl-0001")
    verdicts = json.loads(annotation[6:])
    verdicts["choices"][0]["delta"] = {}
    events = [*head, f"data: {json.dumps(verdicts)}\n\n".encode(), done]
    async with ScriptedUpstream() as upstream:
        upstream.queue(Script(raw=events))
        async with RecordingProxy(RecordOptions(upstream=upstream.origin, db=str(db_path), tape="t")) as proxy:
            live = seen(await DRIVERS[SYNC](proxy.base_url, MESSAGES, 5.0))
            await proxy.settle()
    async with ReplayServer(db_path, speed=0) as srv:
        replayed = seen(await DRIVERS[SYNC](srv.base_url, MESSAGES, 5.0))
    assert live == replayed == (TEXT, "stop", None)


async def test_a_whole_answer_from_a_stream_keeps_each_category_s_last_verdict_and_a_blocking_one_over_any_later(
        db_path: Path):
    """The verdicts of a stream asked as a whole answer: each category's last, but one that filtered stays
    (Azure's later annotations cover other offsets; the answer was still blocked)."""
    *head, first, blocking, done = async_filter_events(Script(), "chatcmpl-0001", blocked=True)

    def with_verdicts(annotation: bytes, verdicts: dict[str, Any]) -> bytes:
        obj = json.loads(annotation[6:])
        obj["choices"][0]["content_filter_results"] = verdicts
        return f"data: {json.dumps(obj)}\n\n".encode()

    high = {"filtered": True, "severity": "high"}
    events = [*head, first, with_verdicts(blocking, {"violence": high}),
              with_verdicts(first, {"violence": {"filtered": False, "severity": "safe"}}), done]
    async with ScriptedUpstream() as upstream:
        upstream.queue(Script(raw=events))
        async with RecordingProxy(RecordOptions(upstream=upstream.origin, db=str(db_path), tape="t")) as proxy:
            await post(proxy.base_url, SDK_BODY, path=PATH + QUERY)
            await proxy.settle()
    async with ReplayServer(db_path, speed=0) as srv:
        status, body, _ = await post(srv.origin, {**SDK_BODY, "stream": False}, path=PATH + QUERY)
    assert (status, srv.requests[0].applied) == (200, ["stream->json"])
    choice = json.loads(body)["choices"][0]
    assert choice["content_filter_results"] == {**CONTENT_FILTER_RESULTS, "violence": high}
    assert choice["finish_reason"] == "content_filter"


def test_a_blocking_annotation_is_the_stop_reason():
    body = b"".join(async_filter_events(Script(), "chatcmpl-0001", blocked=True))
    assert dialect_for(PATH).assemble_stream(body).finish_reason == "content_filter"


def test_an_annotation_after_the_answer_keeps_its_created():
    body = b"".join(async_filter_events(Script(), "chatcmpl-0001"))
    assert dialect_for(PATH).assemble_stream(body).created == CREATED


async def test_an_annotation_after_the_finish_chunk_leaves_the_stop_reason_of_the_whole_answer(db_path: Path):
    """An Asynchronous Filter stream that passed ends with an annotation whose `finish_reason` is null,
    after the finish chunk: the stored summary and the whole answer replay makes of it keep `stop`."""
    events = async_filter_events(Script(), "chatcmpl-0001")
    async with ScriptedUpstream() as upstream:
        upstream.queue(Script(raw=events))
        async with RecordingProxy(RecordOptions(upstream=upstream.origin, db=str(db_path), tape="t")) as proxy:
            await post(proxy.base_url, SDK_BODY, path=PATH + QUERY)
            await proxy.settle()
    assert [(ex.text, ex.finish_reason) for ex in Store(db_path).exchanges()] == [(TEXT, "stop")]
    async with ReplayServer(db_path, speed=0) as srv:
        status, body, _ = await post(srv.origin, {**SDK_BODY, "stream": False}, path=PATH + QUERY)
    assert srv.requests[0].applied == ["stream->json"]
    whole = json.loads(body)
    assert (status, whole["choices"][0]["message"]["content"], whole["choices"][0]["finish_reason"]) == \
        (200, TEXT, "stop")
