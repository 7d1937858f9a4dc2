"""The reference clients (`streamreplay/clients.py`, `streamreplay/drivers/`, `streamreplay/outcome.py`) one
behaviour at a time, as `client`, `matrix` and `bisect --by client` show them: each driver sends the
conversation as its client library would (system messages where its API takes them), asks once even when
answered an error status, keeps the finish reason past a chunk after it, assembles only the answer's text,
says its timeout as what it means, keeps AG2's streamed tokens off stdout, and `run_client` times what it ran.
Real scripted upstreams on 127.0.0.1 and the real client libraries throughout."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streamreplay.clientid import Client
from streamreplay.clients import DRIVERS, chat_messages, run_client
from streamreplay.dialects.responses import response_events
from streamreplay.matrix import verdict
from streamreplay.scripted.anthropic import anthropic_events
from streamreplay.scripted.chat import chat_events
from streamreplay.scripted.responses import response_object
from streamreplay.scripted.script import split_pieces
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import MESSAGES

TEXT = Script().text
WITH_SYSTEM = [{"role": "system", "content": "Be brief."}, {"role": "system", "content": "Answer in English."},
               {"role": "user", "content": "Say hello"}]


def _seen(outcome: Any) -> tuple[str, str | None, str | None]:
    return outcome.text, outcome.finish_reason, outcome.error


# -- what each client sends


@pytest.mark.parametrize("client", [Client.ANTHROPIC, Client.ANTHROPIC_STREAM])
async def test_the_anthropic_drivers_send_the_system_messages_joined_in_system_and_the_rest_as_messages(
        client: Client):
    async with ScriptedUpstream() as upstream:
        outcome = await run_client(client, upstream.base_url, WITH_SYSTEM, 5.0)
    assert (outcome.text, outcome.error) == (TEXT, None)
    (sent,) = upstream.sent
    assert sent.request is not None
    assert (sent.request["system"], sent.request["messages"]) == ("Be brief.\nAnswer in English.", WITH_SYSTEM[2:])


@pytest.mark.parametrize("client", [Client.AUTOGEN_AGENTCHAT, Client.AUTOGEN_AZURE, Client.AUTOGEN_OLLAMA])
async def test_the_autogen_drivers_send_a_system_message_as_a_system_message(client: Client):
    system = [WITH_SYSTEM[0], WITH_SYSTEM[2]]
    async with ScriptedUpstream() as upstream:
        outcome = await run_client(client, upstream.base_url, system, 5.0)
    assert (outcome.text, outcome.error) == (TEXT, None)
    (sent,) = upstream.sent
    assert sent.request is not None
    assert [(m["role"], m["content"]) for m in sent.request["messages"]] == [
        ("system", "Be brief."), ("user", "Say hello")]


def test_a_recorded_request_s_conversation_is_its_messages_with_a_system_first_or_its_input_as_a_user_turn():
    anthropic = {"system": "Be brief.", "messages": MESSAGES, "max_tokens": 256}
    assert chat_messages(anthropic) == [{"role": "system", "content": "Be brief."}, *MESSAGES]
    assert chat_messages({"input": "Say hello", "model": "m"}) == MESSAGES
    assert chat_messages({"input": MESSAGES}) == MESSAGES
    assert chat_messages({"messages": [*MESSAGES, "garbage", 3]}) == MESSAGES
    assert chat_messages(["not", "a", "request"]) == chat_messages(None) == []


# -- asking once


@pytest.mark.parametrize("client", list(DRIVERS), ids=lambda c: c.value)
async def test_every_reference_client_asks_once_when_answered_an_error_status(client: Client):
    """No client library's own retries: `matrix` and `bisect --by client` count one request per client, and a
    retried 500 would be slower and seen by the replay as two or three requests."""
    async with ScriptedUpstream(Script(status=500)) as upstream:
        outcome = await run_client(client, upstream.base_url, MESSAGES, 5.0)
    assert outcome.error is not None
    assert len(upstream.sent) == 1


# -- what the app got


def _chat_with_a_chunk_after_the_finish(include_usage: bool) -> list[bytes]:
    events = chat_events(Script(), "gpt-4o-mini", "chatcmpl-1", include_usage=include_usage)
    assert events[-1] == b"data: [DONE]\n\n"
    if include_usage:  # OpenAI's usage chunk: no choices at all
        return events
    after = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
             "choices": [{"index": 0, "delta": {}, "finish_reason": None}]}
    return [*events[:-1], b"data: " + json.dumps(after).encode() + b"\n\n", events[-1]]


@pytest.mark.parametrize("client", [Client.OPENAI_SYNC, Client.OPENAI_ASYNC])
@pytest.mark.parametrize("include_usage", [True, False], ids=["usage-chunk-without-choices", "empty-chunk"])
async def test_the_openai_drivers_keep_the_finish_reason_past_a_chunk_after_the_finish_chunk(
        client: Client, include_usage: bool):
    async with ScriptedUpstream(Script(raw=_chat_with_a_chunk_after_the_finish(include_usage))) as upstream:
        outcome = await run_client(client, upstream.base_url, MESSAGES, 5.0)
    assert _seen(outcome) == (TEXT, "stop", None)


@pytest.mark.parametrize("client", [Client.ANTHROPIC, Client.ANTHROPIC_STREAM])
async def test_the_anthropic_drivers_read_only_the_text_of_an_answer_that_also_calls_a_tool(client: Client):
    script = Script(text="Let me check.", tool_calls=[{"name": "get_weather", "arguments": '{"city": "Paris"}'}])
    async with ScriptedUpstream(script) as upstream:
        outcome = await run_client(client, upstream.base_url, MESSAGES, 5.0)
    assert _seen(outcome) == ("Let me check.", "tool_use", None)


async def test_the_anthropic_driver_keeps_the_stop_reason_of_message_delta_past_a_later_one_without():
    events = anthropic_events(Script(), "claude-sonnet-4-5", "msg_0001")
    usage_only = (b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":null,'
                  b'"stop_sequence":null},"usage":{"output_tokens":9}}\n\n')
    async with ScriptedUpstream(Script(raw=[*events[:-1], usage_only, events[-1]])) as upstream:
        outcome = await run_client(Client.ANTHROPIC, upstream.base_url, MESSAGES, 5.0)
    assert _seen(outcome) == (TEXT, "end_turn", None)


async def test_the_responses_driver_takes_a_failed_response_s_status_as_its_finish_reason():
    response = response_object(Script(), {"model": "smollm2"}, 1, split_pieces(TEXT))
    response.update(status="failed", error={"code": "server_error", "message": "The model failed"})
    events = response_events(response, text_pieces=split_pieces)
    assert events is not None and events[-1].startswith(b"event: response.failed\n")
    async with ScriptedUpstream(Script(raw=events)) as upstream:
        outcome = await run_client(Client.OPENAI_RESPONSES, upstream.base_url, MESSAGES, 5.0)
    assert _seen(outcome) == (TEXT, "failed", None)


@pytest.mark.parametrize("client", [Client.OPENAI_RESPONSES, Client.OPENAI_RESPONSES_STREAM,
                                    Client.LANGCHAIN_RESPONSES])
async def test_the_responses_drivers_take_an_incomplete_response_s_reason_as_its_finish_reason(client: Client):
    """`response.incomplete` says why in `incomplete_details.reason`; the status alone (`incomplete`) would not
    tell a token limit from a content filter."""
    async with ScriptedUpstream(Script(finish_reason="length")) as upstream:
        outcome = await run_client(client, upstream.base_url, MESSAGES, 5.0)
    assert (outcome.text, outcome.finish_reason) == (TEXT, "max_output_tokens")


# -- how an error and a time are said


async def test_an_error_is_said_as_its_package_and_type_then_its_whole_message():
    async with ScriptedUpstream(Script(status=429)) as upstream:
        outcome = await run_client(Client.OPENAI_SYNC, upstream.base_url, MESSAGES, 5.0)
    assert outcome.error_type == "openai.RateLimitError"
    assert outcome.error is not None and outcome.error.startswith("openai.RateLimitError: Error code: 429 - ")
    assert outcome.error.endswith("}")  # the whole error body the SDK quotes, not a cut of it


async def test_the_autogen_ollama_driver_says_its_own_deadline_ran_out_and_why():
    async with ScriptedUpstream(Script(first_delay=2.0)) as upstream:
        outcome = await run_client(Client.AUTOGEN_OLLAMA, upstream.base_url, MESSAGES, 0.3)
    assert outcome.error == ("builtins.TimeoutError: nothing read for 0.3 s (the driver's own deadline: "
                             "autogen-ext's OllamaChatCompletionClient ignores timeout and would wait forever)")
    assert outcome.seconds < 2.0  # the upstream's 2 s silence was not waited out
    assert verdict(outcome, TEXT) == f"times out after {outcome.seconds:.1f} s (builtins.TimeoutError)"


async def test_run_client_times_what_the_client_took_as_the_matrix_says_it():
    async with ScriptedUpstream(Script(pauses={3: 2.0})) as upstream:
        outcome = await run_client(Client.OPENAI_ASYNC, upstream.base_url, MESSAGES, 0.4)
    assert outcome.error_type == "httpx.ReadTimeout"
    assert 0.35 <= outcome.seconds < 1.5
    assert verdict(outcome, TEXT) == f"times out after {outcome.seconds:.1f} s (httpx.ReadTimeout)"


# -- what AG2 prints


@pytest.mark.parametrize("client", [Client.AG2, Client.AG2_ANTHROPIC])
async def test_the_ag2_drivers_keep_the_streamed_tokens_off_stdout(client: Client, capfd: pytest.CaptureFixture[str]):
    """`matrix` and `client` print their table and report on stdout: AG2's echo of each token would land in it."""
    async with ScriptedUpstream() as upstream:
        outcome = await run_client(client, upstream.base_url, MESSAGES, 5.0)
    assert (outcome.text, outcome.error) == (TEXT, None)
    assert capfd.readouterr().out == ""
