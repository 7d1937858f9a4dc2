"""Reference clients: the ways real apps read a stream, each reduced to what the app ends up with.

Used by the cause tests, `streamreplay matrix` and the demo. Every driver sends the same chat
request through a real client library and reports an `Outcome`: the text the app got, the
finish_reason if the client exposes one, and the exception it raised, if any.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from streamreplay.clientid import Client
from streamreplay.dialects import Dialect
from streamreplay.drivers import DIALECT_DRIVERS
from streamreplay.outcome import Driver, Outcome, ag2_reply, describe, read_autogen_stream

MODEL_INFO = {"vision": False, "function_calling": False, "json_output": False, "family": "unknown",
              "structured_output": False}


async def openai_async(base_url: str, messages: list[dict[str, Any]], timeout: float) -> Outcome:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=timeout)
    out = Outcome("")
    try:
        stream = await client.chat.completions.create(model="smollm2", messages=messages, stream=True)
        async for chunk in stream:
            if chunk.choices:
                out.text += chunk.choices[0].delta.content or ""
                out.finish_reason = chunk.choices[0].finish_reason or out.finish_reason
    except Exception as exc:  # the outcome is what the app sees, exceptions included
        out.error = describe(exc)
    finally:
        await client.close()
    return out


def _openai_sync(base_url: str, messages: list[dict[str, Any]], timeout: float) -> Outcome:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=timeout)
    out = Outcome("")
    try:
        for chunk in client.chat.completions.create(model="smollm2", messages=messages, stream=True):
            if chunk.choices:
                out.text += chunk.choices[0].delta.content or ""
                out.finish_reason = chunk.choices[0].finish_reason or out.finish_reason
    except Exception as exc:  # see openai_async
        out.error = describe(exc)
    finally:
        client.close()
    return out


async def openai_sync(base_url: str, messages: list[dict[str, Any]], timeout: float) -> Outcome:
    return await asyncio.to_thread(_openai_sync, base_url, messages, timeout)


async def autogen_create_stream(base_url: str, messages: list[dict[str, Any]], timeout: float) -> Outcome:
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    client = OpenAIChatCompletionClient(model="smollm2", base_url=base_url, api_key="not-needed", max_retries=0,
                                        timeout=timeout, model_info=MODEL_INFO)
    return await read_autogen_stream(client, messages)




def _ag2_generate_reply(base_url: str, messages: list[dict[str, Any]], timeout: float) -> Outcome:
    entry = {"model": "smollm2", "base_url": base_url, "api_key": "not-needed", "stream": True, "timeout": timeout,
             "max_retries": 0}
    return ag2_reply(entry, messages)


async def ag2_generate_reply(base_url: str, messages: list[dict[str, Any]], timeout: float) -> Outcome:
    return await asyncio.to_thread(_ag2_generate_reply, base_url, messages, timeout)


#: the reference clients, in the order tables show them
DRIVERS: dict[Client, Driver] = {
    Client.OPENAI_SYNC: openai_sync,
    Client.OPENAI_ASYNC: openai_async,
    Client.AUTOGEN_AGENTCHAT: autogen_create_stream,
    Client.AG2: ag2_generate_reply,
    **DIALECT_DRIVERS,
}


async def run_client(name: Client | str, base_url: str, messages: list[dict[str, Any]],
                     timeout: float = 2.0) -> Outcome:
    """Send `messages` through a reference client (by `Client`, id or label) and return what the app got."""
    started = time.monotonic()
    outcome = await DRIVERS[Client.parse(name, among=DRIVERS)](base_url, messages, timeout)
    outcome.seconds = time.monotonic() - started
    return outcome


def clients_of(dialect: Dialect | str) -> list[Client]:
    """The reference clients that speak `dialect`, in the order tables show them."""
    name = dialect if isinstance(dialect, str) else dialect.name
    return [c for c in DRIVERS if c.info.dialect == name]


def chat_messages(request: Any) -> list[dict[str, Any]]:
    """A recorded request's conversation as chat messages, whatever its dialect: `messages` (chat, Azure,
    Ollama, Anthropic with its `system` put first) or the Responses API's `input`."""
    request = request if isinstance(request, dict) else {}
    messages = request.get("messages")
    if messages is None:
        given = request.get("input")
        messages = [{"role": "user", "content": given}] if isinstance(given, str) else given
    messages = [m for m in messages or [] if isinstance(m, dict)]
    system = request.get("system")
    if isinstance(system, str):
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("openai", "anthropic", "ollama", "langchain-openai", "httpx", "autogen-agentchat", "autogen-ext",
                    "ag2"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found
