"""Reference drivers for the responses dialect: its real client libraries, each reduced to an `Outcome`.

Each sends `input=messages` to model "smollm2" with no retries and the given timeout. The finish reason
is the final response's status, or its incomplete reason (`max_output_tokens`) when it has one. The
optional `http_client` is for tests that capture the bytes a client received; an app passes none.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from streamreplay.clientid import Client
from streamreplay.outcome import Driver, Outcome, describe

if TYPE_CHECKING:  # the type only: a base install without the openai extra has no httpx
    import httpx

MODEL = "smollm2"


def _stop_reason(response: Any) -> str | None:
    """The response's incomplete reason when it has one, else its status."""
    details = getattr(response, "incomplete_details", None)
    return getattr(details, "reason", None) or getattr(response, "status", None)


def _responses_create(base_url: str, messages: list[dict[str, Any]], timeout: float,
                      http_client: httpx.Client | None) -> Outcome:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=timeout,
                           http_client=http_client)
    out = Outcome("")
    try:
        for event in client.responses.create(model=MODEL, input=messages, stream=True):  # type: ignore[arg-type]
            if event.type == "response.output_text.delta":
                out.text += event.delta
            elif event.type in ("response.completed", "response.incomplete", "response.failed"):
                out.finish_reason = _stop_reason(event.response)
    except Exception as exc:  # the outcome is what the app sees, exceptions included
        out.error = describe(exc)
    finally:
        client.close()
    return out


async def openai_responses(base_url: str, messages: list[dict[str, Any]], timeout: float, *,
                           http_client: httpx.Client | None = None) -> Outcome:
    """openai.OpenAI `responses.create(stream=True)`, reading the output_text deltas (what most apps do)."""
    return await asyncio.to_thread(_responses_create, base_url, messages, timeout, http_client)


async def openai_responses_stream(base_url: str, messages: list[dict[str, Any]], timeout: float, *,
                                  http_client: httpx.AsyncClient | None = None) -> Outcome:
    """openai.AsyncOpenAI `responses.stream()`: iterate its events, then ask for `get_final_response()`,
    which raises when no response.completed came (the helper's own check)."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=timeout,
                                http_client=http_client)
    out = Outcome("")
    try:
        async with client.responses.stream(model=MODEL, input=messages) as stream:  # type: ignore[arg-type]
            async for event in stream:
                if event.type == "response.output_text.delta":
                    out.text += event.delta
                elif event.type in ("response.completed", "response.incomplete", "response.failed"):
                    out.finish_reason = _stop_reason(event.response)
            out.finish_reason = _stop_reason(await stream.get_final_response())
    except Exception as exc:  # see _responses_create
        out.error = describe(exc)
    finally:
        await client.close()
    return out


def _langchain_stream(base_url: str, messages: list[dict[str, Any]], timeout: float,
                      http_client: httpx.Client | None) -> Outcome:
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(model=MODEL, base_url=base_url, api_key="not-needed", max_retries=0,  # type: ignore[arg-type]
                       timeout=timeout, use_responses_api=True, streaming=True, http_client=http_client)
    out = Outcome("")
    try:
        for chunk in model.stream(messages):
            out.text += chunk.text
            meta = chunk.response_metadata
            if meta.get("status"):
                out.finish_reason = (meta.get("incomplete_details") or {}).get("reason") or meta["status"]
    except Exception as exc:  # see _responses_create
        out.error = describe(exc)
    return out


async def langchain_responses(base_url: str, messages: list[dict[str, Any]], timeout: float, *,
                              http_client: httpx.Client | None = None) -> Outcome:
    """langchain-openai `ChatOpenAI(use_responses_api=True, streaming=True).stream()` (sync, as most
    langchain apps call it)."""
    return await asyncio.to_thread(_langchain_stream, base_url, messages, timeout, http_client)


DRIVERS: dict[Client, Driver] = {
    Client.OPENAI_RESPONSES: openai_responses,
    Client.OPENAI_RESPONSES_STREAM: openai_responses_stream,
    Client.LANGCHAIN_RESPONSES: langchain_responses,
}
