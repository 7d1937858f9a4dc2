"""Reference drivers for the anthropic dialect: its real client libraries, each reduced to an `Outcome`.

Every client here takes the server's origin (it adds /v1/messages itself), sends the system messages in
`system` and the rest as `messages`, asks for `MAX_TOKENS` (Anthropic requires max_tokens), never retries
and gives up after `timeout` seconds.
"""

from __future__ import annotations

import asyncio
from typing import Any

from streamreplay.clientid import Client
from streamreplay.outcome import Driver, Outcome, ag2_reply, describe, origin_of, read_autogen_stream

MODEL = "smollm2"
MAX_TOKENS = 256
#: autogen-ext asks for model_info for a model name it does not know
MODEL_INFO = {"vision": False, "function_calling": False, "json_output": False, "family": "unknown",
              "structured_output": False}


def split_system(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """(the system prompt, the other messages): Anthropic takes the system prompt apart from the turns."""
    system = "\n".join(str(m["content"]) for m in messages if m["role"] == "system")
    return system or None, [m for m in messages if m["role"] != "system"]


def _request(messages: list[dict[str, Any]]) -> dict[str, Any]:
    system, turns = split_system(messages)
    return {"model": MODEL, "max_tokens": MAX_TOKENS, "messages": turns, **({"system": system} if system else {})}


def _anthropic_create(base_url: str, messages: list[dict[str, Any]], timeout: float) -> Outcome:
    import anthropic

    client = anthropic.Anthropic(base_url=origin_of(base_url), api_key="not-needed", max_retries=0, timeout=timeout)
    out = Outcome("")
    try:
        for event in client.messages.create(**_request(messages), stream=True):
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                out.text += event.delta.text
            elif event.type == "message_delta":
                out.finish_reason = event.delta.stop_reason or out.finish_reason
    except Exception as exc:  # the outcome is what the app sees, exceptions included
        out.error = describe(exc)
    finally:
        client.close()
    return out


async def anthropic_create(base_url: str, messages: list[dict[str, Any]], timeout: float) -> Outcome:
    """anthropic.Anthropic messages.create(stream=True), reading the text deltas."""
    return await asyncio.to_thread(_anthropic_create, base_url, messages, timeout)


async def anthropic_stream(base_url: str, messages: list[dict[str, Any]], timeout: float) -> Outcome:
    """anthropic.AsyncAnthropic messages.stream(): text_stream, then get_final_message()."""
    import anthropic

    client = anthropic.AsyncAnthropic(base_url=origin_of(base_url), api_key="not-needed", max_retries=0,
                                      timeout=timeout)
    out = Outcome("")
    try:
        async with client.messages.stream(**_request(messages)) as stream:
            async for text in stream.text_stream:
                out.text += text
            out.finish_reason = (await stream.get_final_message()).stop_reason
    except Exception as exc:  # see _anthropic_create
        out.error = describe(exc)
    finally:
        await client.close()
    return out


async def autogen_anthropic(base_url: str, messages: list[dict[str, Any]], timeout: float) -> Outcome:
    """autogen-ext's AnthropicChatCompletionClient.create_stream (finish_reason in autogen's words)."""
    from autogen_ext.models.anthropic import AnthropicChatCompletionClient

    client = AnthropicChatCompletionClient(model=MODEL, base_url=origin_of(base_url), api_key="not-needed",
                                           max_retries=0, timeout=timeout, max_tokens=MAX_TOKENS,
                                           model_info=MODEL_INFO)
    return await read_autogen_stream(client, messages)




def _ag2_anthropic(base_url: str, messages: list[dict[str, Any]], timeout: float) -> Outcome:
    entry = {"api_type": "anthropic", "model": MODEL, "base_url": origin_of(base_url), "api_key": "not-needed",
             "stream": True, "max_tokens": MAX_TOKENS}

    def with_this_timeout(agent: Any) -> None:
        # AG2 files an entry's `timeout` and `max_retries` under the openai client's options and builds its
        # anthropic.Anthropic without them (the SDK's defaults: 600 s, two retries), so the client it built is
        # swapped for the same client with this timeout and no retries.
        for wrapped in agent.client._clients:
            wrapped._client = wrapped._client.with_options(max_retries=0, timeout=timeout)

    return ag2_reply(entry, messages, with_this_timeout)


async def ag2_anthropic(base_url: str, messages: list[dict[str, Any]], timeout: float) -> Outcome:
    """AG2 0.14 ConversableAgent.generate_reply with a config entry of api_type "anthropic", streaming."""
    return await asyncio.to_thread(_ag2_anthropic, base_url, messages, timeout)


DRIVERS: dict[Client, Driver] = {
    Client.ANTHROPIC: anthropic_create,
    Client.ANTHROPIC_STREAM: anthropic_stream,
    Client.AUTOGEN_ANTHROPIC: autogen_anthropic,
    Client.AG2_ANTHROPIC: ag2_anthropic,
}
