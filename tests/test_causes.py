"""Every known cause of a streaming cutoff: recorded once through the proxy, replayed offline into the
same real client, with the same outcome; and the recording says what happened."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from streamreplay.clients import Outcome, describe
from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.replay import ReplayServer
from streamreplay.serving import AppServer
from streamreplay.store import Exchange, Store
from streamreplay.testing import Script, ScriptedUpstream

MESSAGES = [{"role": "user", "content": "Tell me a story."}]
STORY = "Once upon a time a small robot learned to read streams to the very end."

Behaviour = Callable[[str], Awaitable[Any]]


async def live_then_replay(
    db_path: Path, scripts: list[Script], behaviour: Behaviour, speed: float = 1.0
) -> tuple[Any, Any, list[Exchange], ReplayServer]:
    async with ScriptedUpstream() as upstream:
        upstream.queue(*scripts)
        async with RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db_path), tape="cause")) as proxy:
            live = await behaviour(proxy.base_url)
            await proxy.settle()
    async with ReplayServer(db_path, speed=speed) as server:
        replayed = await behaviour(server.base_url)
        await asyncio.sleep(0.05)  # let the server see the client go
    return live, replayed, Store(db_path).exchanges(), server


def sdk(base_url: str, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", **{"max_retries": 0, **kw})


async def read_all(base_url: str, **kw: Any) -> Outcome:
    out = Outcome("")
    try:
        stream = await sdk(base_url, **kw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        async for chunk in stream:
            if chunk.choices:
                out.text += chunk.choices[0].delta.content or ""
                out.finish_reason = chunk.choices[0].finish_reason or out.finish_reason
    except Exception as exc:  # the outcome under test
        out.error = describe(exc).split(":")[0]
    return out


async def test_a_consumer_that_stops_after_the_first_chunk(db_path: Path):
    async def behaviour(base_url: str) -> str:
        stream = await sdk(base_url).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        async for chunk in stream:
            if chunk.choices[0].delta.content:
                break
        await stream.close()
        return chunk.choices[0].delta.content

    live, replayed, (ex,), server = await live_then_replay(db_path, [Script(text=STORY, gap=0.02)], behaviour)
    assert live == replayed == "Once "
    assert ex.end_cause == "client_left" and ex.client_left_at_chunk == 2 and ex.upstream_end == "complete"
    assert ex.text == STORY  # the proxy read on: the recording is whole
    assert server.requests[0].client_left_at_chunk == 2


async def test_a_client_timeout_shorter_than_a_gap(db_path: Path):
    script = Script(text=STORY, gap=0.01, pauses={4: 1.0})

    async def behaviour(base_url: str) -> Outcome:
        return await read_all(base_url, timeout=0.4)

    live, replayed, (ex,), server = await live_then_replay(db_path, [script], behaviour)
    assert live == replayed == Outcome("Once upon a ", None, "httpx.ReadTimeout")
    assert ex.end_cause == "client_left" and ex.client_left_at_chunk == 4
    chunks = Store(db_path).chunks(ex.id)
    silence = (ex.client_left_ns - chunks[3].t_ns) / 1e9
    assert 0.35 < silence < 0.6  # the client gave up about 0.4 s into the gap
    assert server.requests[0].client_left_at_chunk == 4
    await asyncio.sleep(0.7)


async def test_a_round_limit_too_low_stops_the_conversation(db_path: Path):
    from autogen import ConversableAgent, GroupChat, GroupChatManager

    from streamreplay.outcome import QuietIO

    def behaviour_sync(base_url: str) -> list[str]:
        from autogen.io import IOStream

        config = {
            "config_list": [{"model": "gpt-4o-mini", "base_url": base_url, "api_key": "sk-test", "stream": True}],
            "cache_seed": None,
        }
        writer = ConversableAgent("writer", llm_config=config, human_input_mode="NEVER")
        critic = ConversableAgent("critic", llm_config=config, human_input_mode="NEVER")
        user = ConversableAgent("user", llm_config=False, human_input_mode="NEVER")
        chat = GroupChat([user, writer, critic], messages=[], max_round=3, speaker_selection_method="round_robin")
        manager = GroupChatManager(chat, llm_config=config)
        with IOStream.set_default(QuietIO()):
            user.initiate_chat(manager, message="Write a line about rain.")
        return [m.get("content") for m in chat.messages]

    async def behaviour(base_url: str) -> list[str]:
        return await asyncio.to_thread(behaviour_sync, base_url)

    scripts = [Script(text="Rain taps the roof.", gap=0.002), Script(text="Add a colour.", gap=0.002)]
    live, replayed, exchanges, _ = await live_then_replay(db_path, scripts, behaviour, speed=0)
    assert live == replayed == ["Write a line about rain.", "Rain taps the roof.", "Add a colour."]
    # each message whole, and exactly max_round - 1 model calls: the limit ended it, not a cutoff
    assert [e.end_cause for e in exchanges] == ["complete", "complete"]
    assert all(e.finish_reason == "stop" for e in exchanges)


async def test_async_misuse_a_task_cancelled_mid_stream(db_path: Path):
    async def behaviour(base_url: str) -> str:
        parts: list[str] = []

        async def consume() -> None:
            stream = await sdk(base_url).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
            async for chunk in stream:
                parts.append(chunk.choices[0].delta.content or "")

        task = asyncio.create_task(consume())
        while len(parts) < 3:  # three chunks in, the caller gives up on it (a timeout, a shutdown)
            await asyncio.sleep(0.002)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return "".join(parts)

    live, replayed, (ex,), _ = await live_then_replay(db_path, [Script(text=STORY, gap=0.03)], behaviour)
    assert live == replayed == "Once upon "
    assert ex.end_cause == "client_left" and ex.client_left_at_chunk == 3


async def test_async_misuse_the_event_loop_closes_mid_stream(db_path: Path):
    def app(base_url: str) -> str:
        parts: list[str] = []

        async def consume() -> None:
            stream = await sdk(base_url).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
            async for chunk in stream:
                parts.append(chunk.choices[0].delta.content or "")

        async def main() -> None:
            asyncio.create_task(consume())  # fire and forget: asyncio.run() cancels it on the way out
            while len(parts) < 3:
                await asyncio.sleep(0.002)

        asyncio.run(main())
        return "".join(parts)

    async def behaviour(base_url: str) -> str:
        return await asyncio.to_thread(app, base_url)

    live, replayed, (ex,), _ = await live_then_replay(db_path, [Script(text=STORY, gap=0.03)], behaviour)
    assert live == replayed == "Once upon "
    assert ex.end_cause == "client_left" and ex.client_left_at_chunk == 3


class EarlyReturningWebLayer(AppServer):
    """An SSE endpoint in front of the model that returns after relaying the first chunk (the bug)."""

    def __init__(self, model_url: str) -> None:
        super().__init__()
        self.model_url = model_url

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/chat", self.chat)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        request_model = sdk(self.model_url).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        async with await request_model as stream:
            async for chunk in stream:
                if chunk.choices[0].delta.content:
                    await resp.write(f"data: {chunk.choices[0].delta.content}\n\n".encode())
                    return resp  # returns inside the loop: the browser gets one chunk, the model stream is closed
        return resp


async def test_a_web_layer_that_returns_before_the_stream_ends(db_path: Path):
    async def behaviour(base_url: str) -> str:
        async with EarlyReturningWebLayer(base_url) as layer, aiohttp.ClientSession() as browser, browser.get(
            f"{layer.origin}/chat"
        ) as resp:
            return await resp.text()

    live, replayed, (ex,), server = await live_then_replay(db_path, [Script(text=STORY, gap=0.03)], behaviour)
    assert live == replayed == "data: Once \n\n"
    assert ex.end_cause == "client_left" and ex.client_left_at_chunk == 2
    assert server.requests[0].client_left_at_chunk == 2


@pytest.mark.parametrize(
    ("script", "cause", "expected"),
    [
        (Script(text=STORY, ending="no_done"), "eof_without_done", Outcome(STORY, "stop", None)),
        (Script(text=STORY, finish_reason=None), "complete", Outcome(STORY, None, None)),
        (Script(text=STORY, ending="reset", gap=0.01), "upstream_reset", Outcome(STORY[:-4], None, "httpx.ReadError")),
        (
            Script(text=STORY, ending="close", gap=0.01),
            "upstream_closed",
            Outcome(STORY[:-4], None, "httpx.RemoteProtocolError"),
        ),
    ],
)
async def test_upstream_side_endings(db_path: Path, script: Script, cause: str, expected: Outcome):
    live, replayed, (ex,), _ = await live_then_replay(db_path, [script], read_all, speed=0)
    assert live == replayed == expected
    assert ex.end_cause == cause


@pytest.mark.parametrize(("status", "error"), [(429, "openai.RateLimitError"), (500, "openai.InternalServerError")])
async def test_http_errors_before_the_stream_and_the_sdk_retry(db_path: Path, status: int, error: str):
    async def behaviour(base_url: str) -> Outcome:
        return await read_all(base_url, max_retries=1)

    live, replayed, exchanges, server = await live_then_replay(
        db_path, [Script(status=status), Script(status=status)], behaviour, speed=0
    )
    assert live == replayed == Outcome("", None, error)
    assert [e.end_cause for e in exchanges] == ["http_error", "http_error"]  # the SDK retried once
    assert [r.retry_of for r in server.requests] == [None, 1]


async def test_ag2_async_reply_live_and_replayed(db_path: Path):
    from autogen import ConversableAgent

    async def behaviour(base_url: str) -> str:
        config = {"config_list": [{"model": "gpt-4o-mini", "base_url": base_url, "api_key": "sk-test",
                                   "stream": True}], "cache_seed": None}
        agent = ConversableAgent("assistant", llm_config=config, human_input_mode="NEVER")
        return await agent.a_generate_reply(messages=MESSAGES)

    live, replayed, (ex,), _ = await live_then_replay(db_path, [Script(text=STORY, gap=0.002)], behaviour, speed=0)
    assert live == replayed == STORY and ex.end_cause == "complete"
