"""Record mode, end to end on real sockets: scripted upstream -> recording proxy -> real openai SDK."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import openai
import pytest
from click.testing import CliRunner

from streamreplay.cli import main
from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.replay import ReplayServer
from streamreplay.store import Store
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import ABSOLUTE_URI_REQUEST, MESSAGES, SECRET, chat, post, raw_answer, recorded_body, sha


async def test_openai_async_stream_is_byte_exact(upstream: ScriptedUpstream, proxy: RecordingProxy, db_path: Path):
    upstream.queue(Script(gap=0.02))
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=SECRET, max_retries=0)
    async with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    ) as resp:
        received = b"".join([data async for data in resp.iter_bytes()])
    await proxy.settle()
    (ex,) = Store(db_path).exchanges()
    assert sha(received) == upstream.sent[0].sha256 == sha(recorded_body(db_path, ex.id))
    assert ex.end_cause == "complete" and ex.done and ex.finish_reason == "stop"
    assert ex.text == "Hello! How can I help you today?"
    # one stored chunk per upstream write: the gaps keep TCP from merging them
    assert ex.chunk_count == len(upstream.sent[0].writes)
    offsets = [c.t_ns for c in Store(db_path).chunks(ex.id)]
    assert offsets == sorted(offsets) and offsets[-1] - offsets[0] >= 0.02 * 1e9 * (len(offsets) - 2)


def test_openai_sync_client_through_proxy(upstream: ScriptedUpstream, db_path: Path):
    with (
        ScriptedUpstream(Script(gap=0.005, split_events=True)) as up,
        RecordingProxy(RecordOptions(upstream=up.base_url, db=str(db_path), tape="sync")) as proxy,
    ):
        client = openai.OpenAI(base_url=proxy.base_url, api_key=SECRET, max_retries=0)
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        proxy.call(proxy.settle())
        sent = [s.sha256 for s in up.sent]
    assert text == reply.choices[0].message.content == "Hello! How can I help you today?"
    streamed, plain = Store(db_path).exchanges()
    assert [sha(recorded_body(db_path, e.id)) for e in (streamed, plain)] == sent
    assert streamed.stream and not plain.stream and plain.end_cause == "complete"
    assert streamed.client.startswith("OpenAI/Python")


@pytest.mark.parametrize(
    ("script", "cause", "client_error"),
    [
        (Script(), "complete", None),
        (Script(ending="no_done"), "eof_without_done", None),
        (Script(ending="close", gap=0.01), "upstream_closed", "RemoteProtocolError"),
        (Script(ending="reset", gap=0.01), "upstream_reset", "ReadError"),
        (Script(status=429), "http_error", None),
        (Script(status=500), "http_error", None),
    ],
)
async def test_each_ending_reaches_the_client_unchanged(
    upstream: ScriptedUpstream,
    proxy: RecordingProxy,
    db_path: Path,
    script: Script,
    cause: str,
    client_error: str | None,
):
    upstream.queue(script)
    status, received, error = await post(proxy.base_url, {"model": "m", "messages": MESSAGES, "stream": True})
    await proxy.settle()
    (ex,) = Store(db_path).exchanges()
    assert ex.end_cause == cause
    assert error == client_error
    assert sha(received) == upstream.sent[0].sha256 == sha(recorded_body(db_path, ex.id))
    if script.status >= 400:
        assert status == script.status == ex.status


async def test_the_same_endings_through_the_openai_sdk(upstream: ScriptedUpstream, proxy: RecordingProxy):
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=SECRET, max_retries=0)

    async def outcome() -> tuple[str, str | None]:
        text = ""
        try:
            async for chunk in await client.chat.completions.create(model="m", messages=MESSAGES, stream=True):
                text += chunk.choices[0].delta.content or "" if chunk.choices else ""
        except Exception as exc:  # the type is the outcome under test
            return text, type(exc).__name__
        return text, None

    upstream.queue(Script(ending="close", gap=0.01), Script(ending="reset", gap=0.01), Script(status=500))
    assert await outcome() == ("Hello! How can I help you ", "RemoteProtocolError")
    assert await outcome() == ("Hello! How can I help you ", "ReadError")
    assert await outcome() == ("", "InternalServerError")


async def test_client_that_breaks_after_first_chunk(upstream: ScriptedUpstream, proxy: RecordingProxy, db_path: Path):
    upstream.queue(Script(gap=0.05))
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=SECRET, max_retries=0)
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    async for _chunk in stream:
        break
    await stream.close()
    await asyncio.sleep(0.1)
    await proxy.settle()
    (ex,) = Store(db_path).exchanges()
    assert ex.end_cause == "client_left"
    assert ex.client_left_at_chunk == 1
    assert 0 < ex.client_left_ns < 0.05e9
    # the proxy kept reading: the recording is whole
    assert ex.upstream_end == "complete" and ex.done
    assert sha(recorded_body(db_path, ex.id)) == upstream.sent[0].sha256


async def test_abort_mode_stops_reading_when_the_client_leaves(upstream: ScriptedUpstream, db_path: Path):
    upstream.queue(Script(gap=0.05))
    options = RecordOptions(upstream=upstream.base_url, db=str(db_path), tape="t", on_client_disconnect="abort")
    async with RecordingProxy(options) as proxy:
        async with (
            httpx.AsyncClient() as client,
            client.stream("POST", f"{proxy.base_url}/chat/completions", json={"model": "m", "stream": True}) as resp,
        ):
            async for _ in resp.aiter_raw():
                break
        await asyncio.sleep(0.1)
        await proxy.settle()
    (ex,) = Store(db_path).exchanges()
    assert ex.end_cause == "client_left" and ex.upstream_end is None
    assert ex.chunk_count < len(upstream.sent[0].writes) or not upstream.sent[0].finished


async def test_upstream_unreachable_is_a_502_in_openai_shape(db_path: Path):
    async with ScriptedUpstream() as dead:
        port = dead.port
    options = RecordOptions(upstream=f"http://127.0.0.1:{port}/v1", db=str(db_path), tape="t")
    async with RecordingProxy(options) as proxy:
        client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=SECRET, max_retries=0)
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model="m", messages=MESSAGES)
        await proxy.settle()
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_unreachable"
    (ex,) = Store(db_path).exchanges()
    assert ex.end_cause == "upstream_unreachable" and ex.status == 502


async def test_upstream_timeout_before_headers(upstream: ScriptedUpstream, db_path: Path):
    upstream.queue(Script(first_delay=1.0))
    options = RecordOptions(upstream=upstream.base_url, db=str(db_path), tape="t", upstream_timeout=0.3)
    async with RecordingProxy(options) as proxy:
        status, body, _ = await post(proxy.base_url, {"model": "m", "stream": True})
        await proxy.settle()
    assert status == 504 and json.loads(body)["error"]["code"] == "upstream_timeout"
    (ex,) = Store(db_path).exchanges()
    assert ex.end_cause == "upstream_timeout"


@pytest.mark.parametrize("stream", [True, False])
async def test_an_answer_the_proxy_made_itself_replays_as_the_same_whole_answer(
    upstream: ScriptedUpstream, db_path: Path, stream: bool
):
    """The proxy's own 502 / 504 is stored as the answer, and replay gives the client that answer whole:
    a status error carrying the same JSON, not a broken connection, even though the upstream broke."""
    async with ScriptedUpstream() as dead:
        port = dead.port
    upstream.queue(Script(first_delay=1.0))
    for url, timeout in ((f"http://127.0.0.1:{port}/v1", 10.0), (upstream.base_url, 0.3)):
        options = RecordOptions(upstream=url, db=str(db_path), tape="t", upstream_timeout=timeout)
        async with RecordingProxy(options) as proxy:
            await post(proxy.base_url, chat("same", stream=stream))
            await proxy.settle()
    recorded = Store(db_path).exchanges()
    assert [(ex.status, ex.end_cause) for ex in recorded] == [(502, "upstream_unreachable"), (504, "upstream_timeout")]
    async with ReplayServer(db_path, speed=0) as srv:
        client = openai.AsyncOpenAI(base_url=srv.base_url, api_key=SECRET, max_retries=0)
        for ex in recorded:
            with pytest.raises(openai.APIStatusError) as caught:
                await client.chat.completions.create(**chat("same", stream=stream))
            assert caught.value.status_code == ex.status
            assert caught.value.response.content == recorded_body(db_path, ex.id)
    assert [r.exchange_id for r in srv.requests] == [ex.id for ex in recorded]


async def test_long_silence_mid_stream_reaches_the_client_as_silence(upstream: ScriptedUpstream, proxy: RecordingProxy):
    """A client read timeout shorter than an upstream gap fires on the client, after the early chunks arrived."""
    upstream.queue(Script(pauses={3: 1.0}))
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=SECRET, max_retries=0, timeout=0.4)
    text = ""
    with pytest.raises(httpx.ReadTimeout):
        async for chunk in await client.chat.completions.create(model="m", messages=MESSAGES, stream=True):
            text += chunk.choices[0].delta.content or ""
    assert text == "Hello! How "
    await asyncio.sleep(0.8)
    await proxy.settle()


async def test_chunk_offsets_count_from_the_request_so_replay_keeps_the_time_to_first_byte(
    upstream: ScriptedUpstream, proxy: RecordingProxy, db_path: Path
):
    """A chunk's t_ns counts from the moment the request went upstream, not from the first body byte: the
    first chunk sits at the time to first byte, after the head, and a head sent at once followed by 0.3 s
    of silence is stored, and replayed at speed 1, with the first byte 0.3 s or more after the request."""
    # the first: a read per event, 20 ms apart; the second: the head at once, then 0.3 s, then the body
    upstream.queue(Script(gap=0.02), Script(pauses={0: 0.3}))
    for content in ("quick", "slow"):
        await post(proxy.base_url, chat(content))
    await proxy.settle()
    quick, slow = Store(db_path).exchanges()
    for ex in (quick, slow):
        first = Store(db_path).chunks(ex.id)[0]
        assert first.t_ns == ex.ttfb_ns >= ex.headers_ns > 0, (ex.id, first.t_ns, ex.ttfb_ns, ex.headers_ns)
    # the time to first byte is the first read's, not the last's
    chunks = Store(db_path).chunks(quick.id)
    assert len(chunks) > 5 and quick.ttfb_ns == chunks[0].t_ns < chunks[-1].t_ns - 0.05e9
    assert slow.headers_ns < 0.3e9 <= slow.ttfb_ns
    async with ReplayServer(db_path) as srv, httpx.AsyncClient(timeout=10) as client:
        sent = time.monotonic()
        async with client.stream("POST", f"{srv.base_url}/chat/completions", json=chat("slow")) as resp:
            async for _ in resp.aiter_raw():
                first_byte_s = time.monotonic() - sent
                break
    assert srv.requests[0].exchange_id == slow.id
    assert first_byte_s >= 0.3 and srv.requests[0].offsets_ns[0] >= 0.3e9, first_byte_s


async def test_forwarding_of_any_path_query_body_and_headers(
    upstream: ScriptedUpstream, proxy: RecordingProxy, db_path: Path
):
    async with httpx.AsyncClient() as client:
        resp = await client.post(
            f"{proxy.base_url}/embeddings?api-version=2024-10-21&x=1",
            content=b'{"input":"hi"}',
            headers={
                "Authorization": f"Bearer {SECRET}",
                "api-key": SECRET,
                "X-Custom": "kept",
                "Connection": "keep-alive",
                "Content-Type": "application/json",
            },
        )
        models = await client.get(f"{proxy.base_url}/models")
    echo = resp.json()
    assert echo["path"] == "/v1/embeddings" and echo["query"] == "api-version=2024-10-21&x=1"
    assert echo["body"] == '{"input":"hi"}'
    assert echo["headers"]["authorization"] == f"Bearer {SECRET}" and echo["headers"]["api-key"] == SECRET
    assert echo["headers"]["x-custom"] == "kept" and echo["headers"]["accept-encoding"] == "identity"
    assert models.json()["data"][0]["id"] == "gpt-4o-mini"
    await proxy.settle()
    ex = Store(db_path).exchanges()[0]
    headers = dict((k.lower(), v) for k, v in ex.request_headers)
    assert headers["authorization"] == headers["api-key"] == "[redacted]" and headers["x-custom"] == "kept"


async def test_hop_by_hop_request_headers_stop_at_the_proxy_and_every_other_goes_on(
    upstream: ScriptedUpstream, proxy: RecordingProxy
):
    """README, Record: every request goes upstream with its headers, hop-by-hop ones aside (they describe
    the client's connection to the proxy, not the proxy's to the upstream)."""
    async with httpx.AsyncClient() as client:
        resp = await client.post(f"{proxy.base_url}/embeddings", content=b'{"input":"hi"}', headers={
            "Keep-Alive": "timeout=5", "Proxy-Connection": "keep-alive", "TE": "trailers", "Trailer": "X-Sum",
            "X-Custom": "kept", "OpenAI-Beta": "assistants=v2", "Content-Type": "application/json"})
    headers = resp.json()["headers"]
    for name in ("keep-alive", "proxy-connection", "te", "trailer"):
        assert name not in headers, name
    assert (headers["x-custom"], headers["openai-beta"]) == ("kept", "assistants=v2")


async def test_not_an_open_proxy(proxy: RecordingProxy):
    answer = await raw_answer(proxy.port, ABSOLUTE_URI_REQUEST)
    assert answer.startswith(b"HTTP/1.1 400") and b"not an open proxy" in answer
    async with httpx.AsyncClient() as client:
        outside = await client.get(f"{proxy.origin}/elsewhere")
        traversal = await client.get(f"{proxy.origin}/v1/%2e%2e/admin")
    assert outside.status_code == 404 and outside.json()["error"]["code"] == "not_under_base"
    assert traversal.status_code == 400 and traversal.json()["error"]["code"] == "bad_path"


async def test_secrets_never_reach_disk(upstream: ScriptedUpstream, tmp_path: Path, proxy_log: list[str]):
    db_path = tmp_path / "secret.db"
    options = RecordOptions(
        upstream=upstream.base_url, db=str(db_path), tape="t", log=proxy_log.append, redact_fields=("user",)
    )
    async with RecordingProxy(options) as proxy:
        client = openai.AsyncOpenAI(
            base_url=proxy.base_url,
            api_key=SECRET,
            max_retries=0,
            default_headers={"api-key": SECRET, "x-api-key": SECRET},
            default_query={"api-key": SECRET},
        )
        await client.chat.completions.create(model="m", messages=MESSAGES, user=SECRET)
        await proxy.settle()
        assert upstream.sent[0].headers["authorization"] == f"Bearer {SECRET}"  # forwarded
        files = [p for p in tmp_path.iterdir() if p.name.startswith("secret.db")]
        assert any(p.name.endswith("-wal") for p in files)
        for path in files:
            assert SECRET.encode() not in path.read_bytes(), path
    assert proxy_log and not any(SECRET in line for line in proxy_log)
    assert SECRET.encode() not in db_path.read_bytes()


def test_ls_and_show(upstream: ScriptedUpstream, db_path: Path):
    with (
        ScriptedUpstream(Script(gap=0.01)) as up,
        RecordingProxy(RecordOptions(upstream=up.base_url, db=str(db_path), tape="demo")) as proxy,
    ):
        client = openai.OpenAI(base_url=proxy.base_url, api_key=SECRET, max_retries=0)
        list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
        proxy.call(proxy.settle())
    runner = CliRunner()
    listing = runner.invoke(main, ["ls", "--db", str(db_path)])
    assert listing.exit_code == 0, listing.output
    assert "POST /chat/completions" in listing.output and "complete" in listing.output
    assert "Hello! How can I help" in listing.output
    shown = runner.invoke(main, ["show", "1", "--db", str(db_path)])
    assert shown.exit_code == 0, shown.output
    assert "<finish_reason=stop>" in shown.output and "[DONE]" in shown.output
    assert "end       complete" in shown.output
    as_json = json.loads(runner.invoke(main, ["show", "1", "--db", str(db_path), "--json"]).output)
    assert "".join(c["data"] for c in as_json["chunks"]).encode() == up.sent[0].body
    rows = [
        json.loads(line) for line in runner.invoke(main, ["ls", "--db", str(db_path), "--json"]).output.splitlines()
    ]
    assert rows[0]["end_cause"] == "complete" and rows[0]["tape"] == "demo"
    missing = runner.invoke(main, ["show", "99", "--db", str(db_path)])
    assert missing.exit_code == 1 and "no exchange 99" in missing.output
