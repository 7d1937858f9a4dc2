"""The project's own end-to-end tests: real clients against the bundled real-model tapes, via the plugin."""

from __future__ import annotations

import httpx
import pytest

from streamreplay.demo import run_agent

AG2_QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def ag2_agent(base_url: str):
    from autogen import ConversableAgent

    config = {"config_list": [{"model": "smollm2", "base_url": base_url, "api_key": "none", "stream": True}],
              "temperature": 0, "cache_seed": None}
    return ConversableAgent("assistant", llm_config=config, human_input_mode="NEVER")


@pytest.mark.streamreplay("agent-happy-path")
async def test_autogen_agent_replays_the_real_answer(streamreplay):
    streamed, final, error = await run_agent(streamreplay.base_url)
    assert error is None
    assert streamed == final == "The waves of the sea are a mirror that reflects the very essence of life."
    streamreplay.assert_all_used()


@pytest.mark.streamreplay("agent-happy-path", fault="reset:chunk=5")
async def test_autogen_agent_under_a_reset(streamreplay):
    streamed, _, error = await run_agent(streamreplay.base_url)
    assert error.startswith("httpx.ReadError") and streamed == "The waves of the"
    assert streamreplay.requests[0].ending == "reset"


@pytest.mark.streamreplay("ag2-happy-path")
def test_ag2_generate_reply(streamreplay):
    assert ag2_agent(streamreplay.base_url).generate_reply(messages=AG2_QUESTION) == "The capital of France is Paris."


@pytest.mark.streamreplay("ag2-happy-path")
async def test_ag2_a_generate_reply(streamreplay):
    reply = await ag2_agent(streamreplay.base_url).a_generate_reply(messages=AG2_QUESTION)
    assert reply == "The capital of France is Paris."


@pytest.mark.streamreplay("ag2-happy-path", fault="close:chunk=4")
def test_ag2_under_a_close_mid_body(streamreplay):
    with pytest.raises(httpx.RemoteProtocolError):
        ag2_agent(streamreplay.base_url).generate_reply(messages=AG2_QUESTION)
