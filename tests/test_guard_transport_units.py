"""The guard at the HTTP layer (guard/transport.py) and the dialect a bare stream's items are told by
(guard/wrap.py): real httpx transports reading a real scripted upstream on 127.0.0.1.

What a whole stream is in each dialect is tests/test_guard_units.py's; here: the bytes pass unchanged,
only a 200 stream in its dialect's content type is judged, a marker split across reads or gzipped still
counts, `expect_done` reaches the check, and `install()` / `uninstall()` guard and unguard the process."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from aiohttp import web

from streamreplay.guard import TruncatedStream, install, uninstall
from streamreplay.guard.transport import (
    AsyncGuardedTransport,
    GuardedTransport,
    guard_response,
    guarded_async_client,
    guarded_client,
)
from streamreplay.guard.wrap import dialect_of_item
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import MESSAGES, chat_upstream, gzip_sse

BODY = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    data = json.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [choice]})
    return f"data: {data}\n\n".encode()


WHOLE = [_chunk({"role": "assistant", "content": "Hi"}), _chunk({}, "stop"), b"data: [DONE]\n\n"]


def _read(client: httpx.Client, url: str) -> bytes:
    with client.stream("POST", f"{url}/chat/completions", json=BODY) as response:
        return b"".join(response.iter_raw())


def _read_through(transport: httpx.BaseTransport, script: Script) -> tuple[bytes, bytes]:
    """(what the client read, what the upstream sent)."""
    with ScriptedUpstream(script) as upstream, httpx.Client(transport=transport) as client:
        got = _read(client, upstream.base_url)
        return got, upstream.sent[0].body


def test_a_whole_stream_passes_byte_for_byte():
    got, sent = _read_through(GuardedTransport(), Script(split_events=True))
    assert got == sent and sent.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("script", [Script(ending="no_done"), Script(raw=WHOLE[:2]), Script(raw=WHOLE[:1] + WHOLE[2:])],
                         ids=["no-done", "no-done-raw", "no-finish"])
def test_a_clean_early_end_raises_at_the_end_of_the_body(script: Script):
    with pytest.raises(TruncatedStream) as raised:
        _read_through(GuardedTransport(), script)
    assert raised.value.dialect == "chat"


def test_a_data_line_that_is_not_json_is_the_client_s_business_and_the_events_after_it_still_count():
    # one network read: a junk line, then the finish_reason and [DONE] the stream is whole by
    one_read = WHOLE[0] + b"data: keep-alive\n\n" + WHOLE[1] + WHOLE[2]
    got, sent = _read_through(GuardedTransport(), Script(raw=[one_read]))
    assert got == sent


def test_the_done_marker_split_over_two_reads_still_counts():
    # the marker's bytes arrive in two network reads, 20 ms apart
    got, sent = _read_through(GuardedTransport(), Script(raw=[*WHOLE[:2], b"data: [DO", b"NE]\n\n"], gap=0.02))
    assert got == sent


def test_expect_done_false_accepts_a_server_that_omits_it_but_not_a_missing_finish_reason():
    got, sent = _read_through(GuardedTransport(expect_done=False), Script(ending="no_done"))
    assert got == sent and b"[DONE]" not in sent
    with pytest.raises(TruncatedStream, match="finish_reason"):
        _read_through(GuardedTransport(expect_done=False), Script(raw=WHOLE[:1]))
    with ScriptedUpstream(Script(ending="no_done")) as upstream:
        with guarded_client(expect_done=False) as client:
            assert _read(client, upstream.base_url) == upstream.sent[0].body
        with guarded_client() as client, pytest.raises(TruncatedStream, match=r"\[DONE\]"):
            _read(client, upstream.base_url)


async def test_the_guarded_clients_want_done_by_default_and_take_expect_done_false():
    # chat is whole only with [DONE]: a stream that ends cleanly without it raises, sync and async alike
    with ScriptedUpstream(Script(ending="no_done")) as upstream:
        with guarded_client() as client, pytest.raises(TruncatedStream, match=r"\[DONE\]"):
            _read(client, upstream.base_url)
        async with guarded_async_client() as aclient:
            with pytest.raises(TruncatedStream, match=r"\[DONE\]"):
                await _aread(aclient, upstream.base_url)
        with guarded_client(expect_done=False) as client:
            assert _read(client, upstream.base_url) == upstream.sent[2].body
        async with guarded_async_client(expect_done=False) as aclient:
            assert await _aread(aclient, upstream.base_url) == upstream.sent[3].body


def test_an_answer_that_is_not_a_stream_in_its_dialect_s_terms_is_left_alone():
    # the same cut-off events, but labelled JSON: not a stream, so not judged
    got, sent = _read_through(GuardedTransport(), Script(raw=WHOLE[:1], content_type="application/json"))
    assert got == sent
    # an error status is the client's to raise, not a truncation
    with ScriptedUpstream(Script(status=503)) as upstream, guarded_client() as client, \
            client.stream("POST", f"{upstream.base_url}/chat/completions", json=BODY) as response:
        assert response.status_code == 503
        assert b"".join(response.iter_raw()) == upstream.sent[0].body


async def test_an_error_status_with_a_stream_s_content_type_is_not_judged():
    async def failing(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=500, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(WHOLE[0])  # a stream begun, then given up: the status already says so
        await response.write_eof()
        return response

    async with chat_upstream(failing) as url, guarded_async_client() as client, \
            client.stream("POST", f"{url}/chat/completions", json=BODY) as response:
        assert response.status_code == 500
        assert b"".join([data async for data in response.aiter_raw()]) == WHOLE[0]


@pytest.mark.parametrize("status", [201, 206, 302])
async def test_only_a_200_stream_is_judged_not_another_2xx_or_a_redirect(status: int):
    """The guard judges the answer OpenAI gives a stream, a 200: another status with a stream's content type is
    passed on as it is, even cut short."""
    async def other(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(WHOLE[0])
        await response.write_eof()
        return response

    async with chat_upstream(other) as url, guarded_async_client() as client, \
            client.stream("POST", f"{url}/chat/completions", json=BODY) as response:
        assert response.status_code == status
        assert b"".join([data async for data in response.aiter_raw()]) == WHOLE[0]


def test_a_last_ollama_line_without_its_newline_still_ends_the_stream_whole():
    lines = [b'{"model":"m","message":{"role":"assistant","content":"Hi"},"done":false}\n',
             b'{"model":"m","message":{"role":"assistant","content":""},"done":true}']  # no newline at EOF
    with ScriptedUpstream(Script(raw=lines, content_type="application/x-ndjson")) as upstream, \
            guarded_client() as client, \
            client.stream("POST", f"{upstream.origin}/api/chat", json={"model": "m", "messages": MESSAGES}) as r:
        assert b"".join(r.iter_raw()) == b"".join(lines)
    with ScriptedUpstream(Script(raw=lines[:1], content_type="application/x-ndjson")) as upstream, \
            guarded_client() as client, \
            client.stream("POST", f"{upstream.origin}/api/chat", json={"model": "m", "messages": MESSAGES}) as r, \
            pytest.raises(TruncatedStream) as raised:
        b"".join(r.iter_raw())
    assert raised.value.dialect == "ollama"


def test_after_the_last_event_nothing_more_is_judged():
    # a client may stop reading at [DONE]; what a server sends after it does not make the stream truncated
    got, sent = _read_through(GuardedTransport(), Script(raw=[*WHOLE, b'data: {"choices": [{"index": 1}]}\n\n']))
    assert got == sent


async def test_a_reader_that_stops_at_done_still_gets_the_verdict_on_the_piece_holding_it():
    # the openai SDKs stop reading at [DONE] and close the response: the guard must judge each piece before
    # the client gets it, or a stream with [DONE] but no finish_reason would pass
    no_finish = Script(raw=[WHOLE[0], WHOLE[2]], gap=0.02)
    with ScriptedUpstream(no_finish) as upstream:
        with guarded_client() as client, \
                client.stream("POST", f"{upstream.base_url}/chat/completions", json=BODY) as response, \
                pytest.raises(TruncatedStream, match="no finish_reason for choice 0"):
            for data in response.iter_raw():
                if b"[DONE]" in data:
                    break
        async with guarded_async_client() as aclient, \
                aclient.stream("POST", f"{upstream.base_url}/chat/completions", json=BODY) as response:
            with pytest.raises(TruncatedStream, match="no finish_reason for choice 0"):
                async for data in response.aiter_raw():
                    if b"[DONE]" in data:
                        break


async def _aread(client: httpx.AsyncClient, url: str) -> bytes:
    async with client.stream("POST", f"{url}/chat/completions", json=BODY) as response:
        return b"".join([data async for data in response.aiter_raw()])


async def test_the_async_transport_judges_a_gzipped_stream_by_what_it_says():
    writes, handler = gzip_sse(WHOLE)
    async with chat_upstream(handler) as url, httpx.AsyncClient(transport=AsyncGuardedTransport()) as client:
        assert await _aread(client, url) == b"".join(writes)  # as sent: still compressed
    _, cut = gzip_sse(WHOLE[:2])
    async with chat_upstream(cut) as url, guarded_async_client() as client:
        with pytest.raises(TruncatedStream, match=r"\[DONE\]"):
            await _aread(client, url)
    async with chat_upstream(cut) as url, guarded_async_client(expect_done=False) as client:
        await _aread(client, url)
    async with chat_upstream(cut) as url, httpx.AsyncClient(transport=AsyncGuardedTransport()) as client:
        with pytest.raises(TruncatedStream, match=r"\[DONE\]"):  # the transport too wants it by default
            await _aread(client, url)


def test_guard_response_wants_done_by_default_as_the_transports_do():
    with ScriptedUpstream(Script(ending="no_done")) as upstream, httpx.HTTPTransport() as transport:
        request = httpx.Request("POST", f"{upstream.base_url}/chat/completions", json=BODY)
        with pytest.raises(TruncatedStream, match=r"\[DONE\]"):
            guard_response(request, transport.handle_request(request)).read()
        request = httpx.Request("POST", f"{upstream.base_url}/chat/completions", json=BODY)
        assert guard_response(request, transport.handle_request(request), expect_done=False).read() == \
            upstream.sent[1].body


async def test_the_guarded_clients_take_httpx_s_own_arguments():
    with ScriptedUpstream(Script()) as upstream:
        with guarded_client(base_url=upstream.base_url, headers={"x-app": "mine"}) as client, \
                client.stream("POST", "/chat/completions", json=BODY) as response:
            assert b"".join(response.iter_raw()) == upstream.sent[0].body
        async with guarded_async_client(base_url=upstream.base_url, headers={"x-app": "mine"}) as aclient, \
                aclient.stream("POST", "/chat/completions", json=BODY) as response:
            assert b"".join([data async for data in response.aiter_raw()]) == upstream.sent[1].body
        assert [sent.headers["x-app"] for sent in upstream.sent] == ["mine", "mine"]


async def test_install_guards_every_client_of_the_process_until_uninstall():
    original = (httpx.HTTPTransport.handle_request, httpx.AsyncHTTPTransport.handle_async_request)
    with ScriptedUpstream(Script(ending="no_done")) as upstream:
        try:
            install()
            install()  # a second install changes nothing: one uninstall undoes it
            with httpx.Client() as client, pytest.raises(TruncatedStream):
                _read(client, upstream.base_url)
            async with httpx.AsyncClient() as aclient:
                with pytest.raises(TruncatedStream):
                    await _aread(aclient, upstream.base_url)
        finally:
            uninstall()
        assert (httpx.HTTPTransport.handle_request, httpx.AsyncHTTPTransport.handle_async_request) == original
        with httpx.Client() as client:
            assert _read(client, upstream.base_url) == upstream.sent[-1].body
        uninstall()  # and a second uninstall is harmless
        assert httpx.HTTPTransport.handle_request is original[0]
    try:
        install(expect_done=False)
        with ScriptedUpstream(Script(ending="no_done")) as upstream, httpx.Client() as client:
            assert _read(client, upstream.base_url) == upstream.sent[0].body
            async with httpx.AsyncClient() as aclient:
                assert await _aread(aclient, upstream.base_url) == upstream.sent[1].body
    finally:
        uninstall()


@pytest.mark.parametrize(("item", "dialect"), [
    ({"type": "response.output_text.delta", "delta": "Hi"}, "responses"),
    ({"type": "error", "sequence_number": 4, "message": "x"}, "responses"),  # the Responses API numbers its events
    ({"type": "error", "error": {"message": "overloaded"}}, "anthropic"),
    ({"type": "message_stop"}, "anthropic"), ({"type": "ping"}, "anthropic"),
    ({"type": "content_block_delta", "delta": {"text": "Hi"}}, "anthropic"),
    ({"model": "smollm2", "message": {"content": "Hi"}, "done": False}, "ollama"),
    ({"model": "smollm2", "response": "", "done": True}, "ollama"),
    ({"choices": [], "done": True}, "chat"),
    ({"id": "c", "choices": [{"index": 0, "delta": {}}]}, "chat"),
    (SimpleNamespace(type="response.completed"), "responses"),
    (SimpleNamespace(done=True, message=None), "ollama"),
    (SimpleNamespace(choices=[]), "chat"),
])
def test_a_bare_stream_s_dialect_is_told_by_its_first_item(item: Any, dialect: str):
    assert dialect_of_item(item) == dialect
