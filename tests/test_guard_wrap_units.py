"""The stream guard's wrapping of what the app holds (guard/wrap.py, guard/agents.py): the dialect it is told is
the one that judges, guarding a client twice is harmless, the autogen wrapper passes every argument on, and an agent
with nothing to guard is refused."""

from __future__ import annotations

import openai
import pytest

from streamreplay.guard import GuardedChatCompletionClient, TruncatedStream, guard, guard_agent, guard_http
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import MESSAGES


@pytest.mark.parametrize(("dialect", "missing"), [("anthropic", "no stop_reason, no message_stop"),
                                                  ("ollama", "no line with done: true"),
                                                  ("responses", "no response.completed")])
def test_the_dialect_given_judges_a_stream_that_brought_no_item(dialect: str, missing: str):
    """`guard(stream, dialect=...)` is for a stream that cannot say its dialect: one cut before its first item is
    truncated in that dialect's terms, not chat's."""
    with pytest.raises(TruncatedStream) as cut:
        list(guard(iter([]), dialect=dialect))
    assert (cut.value.dialect, cut.value.missing) == (dialect, missing)


def test_guarding_a_client_twice_counts_its_transport_once_and_still_raises_on_a_cutoff():
    """`guard_http` is idempotent: a client guarded already (by the app, then by a wrapper) still counts as one
    guarded transport, so nothing refuses it, and its cut streams still raise `TruncatedStream`."""
    with ScriptedUpstream() as upstream:
        upstream.queue(Script(), Script(ending="no_done"))
        with openai.OpenAI(base_url=upstream.base_url, api_key="unused", max_retries=0) as client:
            assert [guard_http(client), guard_http(client)] == [1, 1]
            whole = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in whole if c.choices) == Script().text
            with pytest.raises(TruncatedStream) as cut:
                list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert cut.value.missing == "no [DONE] after the last chunk"


def test_an_ag2_agent_without_a_model_client_is_refused():
    """An AG2 agent made with `llm_config=False` has no stream to guard: `guard_agent` says so with a TypeError
    instead of returning it unguarded."""
    from autogen import ConversableAgent

    agent = ConversableAgent("assistant", llm_config=False, human_input_mode="NEVER")
    with pytest.raises(TypeError, match="ConversableAgent has no model client with an httpx transport to guard"):
        guard_agent(agent)


async def test_the_guarded_autogen_client_passes_the_create_arguments_on():
    """`GuardedChatCompletionClient` passes every argument of `create_stream` and `create` to the client it wraps:
    the request the upstream gets carries the app's `extra_create_args`, streamed or not."""
    from autogen_core.models import CreateResult, UserMessage
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    async with ScriptedUpstream() as upstream:
        inner = OpenAIChatCompletionClient(model="m", base_url=upstream.base_url, api_key="unused", max_retries=0,
                                           model_info={"vision": False, "function_calling": False, "family": "unknown",
                                                       "json_output": False, "structured_output": False})
        client = GuardedChatCompletionClient(inner)
        messages = [UserMessage(content="Say hello", source="user")]
        streamed = [c async for c in client.create_stream(messages, extra_create_args={"temperature": 0.25})]
        whole = await client.create(messages, extra_create_args={"temperature": 0.5})
        await client.close()
    assert isinstance(streamed[-1], CreateResult) and streamed[-1].content == Script().text == whole.content
    sent = [(s.request or {}) for s in upstream.sent]
    assert [(s.get("stream"), s.get("temperature")) for s in sent] == [(True, 0.25), (False, 0.5)]
