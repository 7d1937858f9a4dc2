"""The `realmodel` tier: a real LLM server (llama.cpp + SmolLM2) behind the proxy, real clients, real pacing.

The server is built and started by scripts/real-upstream.sh (cached outside the repo). If it cannot be
built or started, these tests fail: they never skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import openai
import pytest

from streamreplay.bundled import bundled_dir
from streamreplay.clients import MODEL_INFO
from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.replay import ReplayServer
from streamreplay.store import Store
from tests.helpers import sha
from tests.realmodel_server import real_upstream_url

pytestmark = pytest.mark.realmodel

RECORDINGS = bundled_dir()


@pytest.fixture(scope="session")
def real_upstream() -> str:
    return os.environ.get("STREAMREPLAY_REAL_UPSTREAM") or real_upstream_url()


async def openai_outcome(base_url: str, prompt: str) -> tuple[bytes, str, str | None]:
    """(the raw bytes received, the text, the finish_reason) through the real openai SDK."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0)
    payload = dict(model="smollm2", temperature=0, max_tokens=40, stream=True,
                   messages=[{"role": "user", "content": prompt}])
    async with client.chat.completions.with_streaming_response.create(**payload) as resp:
        raw = b"".join([data async for data in resp.iter_bytes()])
    stream = await client.chat.completions.create(**payload)
    text, finish = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return raw, text, finish


async def test_openai_sdk_live_then_replayed_byte_identical(real_upstream: str, db_path: Path):
    async with RecordingProxy(RecordOptions(upstream=real_upstream, db=str(db_path), tape="real")) as proxy:
        live_raw, live_text, live_finish = await openai_outcome(proxy.base_url, "Name a fruit.")
        await proxy.settle()
    first, second = Store(db_path).exchanges()
    assert first.end_cause == "complete" and first.done and first.chunk_count > 3
    assert sha(b"".join(c.data for c in Store(db_path).chunks(first.id))) == sha(live_raw)
    assert b'"delta": {"content": ' in live_raw  # llama.cpp's own JSON spacing, kept as sent
    async with ReplayServer(db_path, speed=1) as srv:
        replay_raw, replay_text, replay_finish = await openai_outcome(srv.base_url, "Name a fruit.")
    assert sha(replay_raw) == sha(live_raw)
    assert (replay_text, replay_finish) == (live_text, live_finish) == (second.text, "stop")


async def test_autogen_live_then_replayed_same_outcome(real_upstream: str, db_path: Path):
    from autogen_agentchat.agents import AssistantAgent
    from autogen_agentchat.messages import ModelClientStreamingChunkEvent
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    async def run(base_url: str) -> tuple[str, str]:
        client = OpenAIChatCompletionClient(model="smollm2", base_url=base_url, api_key="none", temperature=0,
                                            max_tokens=40, max_retries=0, model_info=MODEL_INFO)
        agent = AssistantAgent("assistant", model_client=client, model_client_stream=True)
        streamed = ""
        result = None
        async for item in agent.run_stream(task="Say something about rivers."):
            if isinstance(item, ModelClientStreamingChunkEvent):
                streamed += item.content
            else:
                result = item
        await client.close()
        return streamed, str(result.messages[-1].content)

    async with RecordingProxy(RecordOptions(upstream=real_upstream, db=str(db_path), tape="ag")) as proxy:
        live = await run(proxy.base_url)
        await proxy.settle()
    (ex,) = Store(db_path).exchanges()
    assert ex.end_cause == "complete" and ex.text == live[0] == live[1]
    async with ReplayServer(db_path, speed=0) as srv:
        assert await run(srv.base_url) == live
    async with ReplayServer(db_path, speed=0, faults=["reset:chunk=4"]) as srv:
        with pytest.raises(httpx.ReadError):
            await run(srv.base_url)


async def test_a_fault_on_a_bundled_real_tape_cuts_autogen():
    from streamreplay.demo import run_agent

    cassette = RECORDINGS / "agent-happy-path.jsonl"
    async with ReplayServer(cassette, speed=0) as srv:
        full, _, error = await run_agent(srv.base_url)
        cut, _, cut_error = await run_agent(srv.fault_url("close:chunk=6"))
        silent, silent_final, silent_error = await run_agent(srv.fault_url("cut:chunk=6"))
    assert error is None and full == srv.index.exchanges[0].text
    assert cut_error.startswith("httpx.RemoteProtocolError") and full.startswith(cut) and len(cut) < len(full)
    # a clean end without finish_reason or [DONE]: AutoGen takes the truncated text as the answer
    assert (silent, silent_final, silent_error) == (cut, cut, None)


async def test_play_upstream_records_a_real_miss_once_then_serves_it(real_upstream: str, db_path: Path):
    import asyncio

    from streamreplay.store import open_store

    open_store(db_path)  # an empty DB: every request is a miss until recorded
    payload = dict(model="smollm2", temperature=0, max_tokens=30, stream=True,
                   messages=[{"role": "user", "content": "Name a color."}])

    def ask(base_url: str) -> bytes:
        """A client of its own (as another process would be), its connection closed once it has the answer."""
        with openai.OpenAI(base_url=base_url, api_key="none", max_retries=0) as client, \
                client.chat.completions.with_streaming_response.create(**payload) as resp:
            return b"".join(resp.iter_bytes())

    lines: list[str] = []
    async with ReplayServer(db_path, speed=0, upstream=real_upstream, log=lines.append) as srv:
        raws = [await asyncio.to_thread(ask, srv.base_url) for _ in range(3)]
    (ex,) = Store(db_path).exchanges()  # the upstream was asked once: each forwarded request is recorded
    assert ex.end_cause == "complete" and ex.chunk_count > 3
    # a second generation would differ (its id, its created time): these are the recording's bytes
    assert [sha(raw) for raw in raws] == [sha(b"".join(c.data for c in Store(db_path).chunks(ex.id)))] * 3
    assert srv.counts.endings == {"recorded": 1, "clean": 2}
    assert [line.split(":")[0] for line in lines] == [
        f"#1 POST /chat/completions -> upstream, recorded as exchange {ex.id} 200",
        f"#2 POST /chat/completions -> exchange {ex.id} 200",
        f"#3 POST /chat/completions -> exchange {ex.id} 200",
    ]
