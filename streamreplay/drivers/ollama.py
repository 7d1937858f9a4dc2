"""Reference drivers for the ollama dialect: its real client libraries, each reduced to an `Outcome`.

Neither retries: the ollama library has no retry, and autogen-ext's client adds none.
"""

from __future__ import annotations

import asyncio
from typing import Any

from streamreplay.clientid import Client
from streamreplay.outcome import Driver, Outcome, describe, origin_of

#: autogen-ext knows no model called smollm2: what it may use it for
MODEL_INFO = {"vision": False, "function_calling": False, "json_output": False, "family": "unknown",
              "structured_output": False}


def _ollama_chat(base_url: str, messages: list[dict[str, Any]], timeout: float) -> Outcome:
    import ollama

    client = ollama.Client(host=origin_of(base_url), timeout=timeout)
    out = Outcome("")
    try:
        for part in client.chat(model="smollm2", messages=messages, stream=True):
            out.text += part.message.content or ""
            out.finish_reason = part.done_reason or out.finish_reason
    except Exception as exc:  # the outcome is what the app sees, exceptions included
        out.error = describe(exc)
    finally:
        client.close()
    return out


async def ollama_chat(base_url: str, messages: list[dict[str, Any]], timeout: float) -> Outcome:
    return await asyncio.to_thread(_ollama_chat, base_url, messages, timeout)


async def autogen_ollama(base_url: str, messages: list[dict[str, Any]], timeout: float) -> Outcome:
    from autogen_core.models import CreateResult, SystemMessage, UserMessage
    from autogen_ext.models.ollama import OllamaChatCompletionClient

    # it passes only `host` to ollama.AsyncClient: a `timeout` given here would be ignored
    client = OllamaChatCompletionClient(model="smollm2", host=origin_of(base_url), model_info=MODEL_INFO)
    history = [SystemMessage(content=m["content"]) if m["role"] == "system"
               else UserMessage(content=m["content"], source="user") for m in messages]
    out = Outcome("")
    stream = client.create_stream(history)
    try:
        while True:
            # the driver's own read deadline, as httpx's read timeout would be: the silence before each item
            try:
                item = await asyncio.wait_for(anext(stream), timeout)
            except StopAsyncIteration:
                break
            if isinstance(item, str):
                out.text += item
            elif isinstance(item, CreateResult):
                out.finish_reason = item.finish_reason
    except TimeoutError:
        out.error = (f"builtins.TimeoutError: nothing read for {timeout} s (the driver's own deadline: "
                     "autogen-ext's OllamaChatCompletionClient ignores timeout and would wait forever)")
    except Exception as exc:  # see _ollama_chat
        out.error = describe(exc)
    finally:
        await stream.aclose()
        await client.close()
    return out


DRIVERS: dict[Client, Driver] = {
    Client.OLLAMA: ollama_chat,
    Client.AUTOGEN_OLLAMA: autogen_ollama,
}
