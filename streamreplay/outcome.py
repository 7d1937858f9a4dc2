"""What an app ends up with after reading a stream through a client library: `Outcome`, and the
signature every reference driver has (`Driver`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Outcome:
    text: str
    finish_reason: str | None = None
    error: str | None = None  # "module.Type: message"
    seconds: float = 0.0

    @property
    def error_type(self) -> str | None:
        return self.error.split(":", 1)[0] if self.error else None


def describe(exc: BaseException) -> str:
    name = f"{type(exc).__module__.split('.')[0]}.{type(exc).__name__}"
    # asyncio.wait_for's TimeoutError says nothing: say what it means rather than print an empty message
    message = str(exc) or ("(no message: a deadline ran out)" if isinstance(exc, TimeoutError) else "(no message)")
    return f"{name}: {message}"


#: (base_url, messages, timeout) -> what the app got. `base_url` is the server's OpenAI-style base
#: (it ends in /v1); a driver whose client adds /v1 itself takes `origin_of(base_url)`.
Driver = Callable[[str, list[dict[str, Any]], float], Awaitable[Outcome]]


def origin_of(base_url: str) -> str:
    """The base URL without its trailing /v1: what the Anthropic, Ollama and Azure clients take (they add
    their own path)."""
    return base_url.rstrip("/").removesuffix("/v1")


async def read_autogen_stream(client: Any, messages: list[dict[str, Any]]) -> Outcome:
    """What an autogen-ext model client's `create_stream` gives an app for chat `messages` (system and user),
    the client closed after; every autogen driver reads this way."""
    from autogen_core.models import CreateResult, SystemMessage, UserMessage

    history = [SystemMessage(content=m["content"]) if m["role"] == "system"
               else UserMessage(content=m["content"], source="user") for m in messages]
    out = Outcome("")
    try:
        async for item in client.create_stream(history):
            if isinstance(item, str):
                out.text += item
            elif isinstance(item, CreateResult):
                out.finish_reason = item.finish_reason
    except Exception as exc:  # the outcome is what the app sees, exceptions included
        out.error = describe(exc)
    finally:
        await client.close()
    return out


class QuietIO:
    """AG2 sends every streamed token to its IOStream (stdout); a table of outcomes has no use for them."""

    def print(self, *objects: Any, sep: str = " ", end: str = "\n", flush: bool = False) -> None:
        pass

    def send(self, message: Any) -> None:
        pass

    def input(self, prompt: str = "", *, password: bool = False) -> str:
        return ""


def ag2_reply(entry: dict[str, Any], messages: list[dict[str, Any]],
              adjust: Callable[[Any], None] | None = None) -> Outcome:
    """What AG2 0.14's `ConversableAgent.generate_reply` gives an app with one config entry: its streamed
    tokens kept off stdout; `adjust` may change the agent before it runs (a client AG2 built badly)."""
    import logging
    import warnings

    from autogen import ConversableAgent
    from autogen.io import IOStream

    logging.getLogger("autogen.oai.client").setLevel(logging.ERROR)  # "model not found, cost will be 0"
    agent = ConversableAgent("assistant", llm_config={"config_list": [entry], "cache_seed": None},
                             human_input_mode="NEVER")
    if adjust is not None:
        adjust(agent)
    out = Outcome("")
    try:
        with IOStream.set_default(QuietIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Cost calculation not available")  # a model AG2 has no price for
            reply = agent.generate_reply(messages=messages)
        out.text = reply if isinstance(reply, str) else str((reply or {}).get("content", ""))
    except Exception as exc:  # the outcome is what the app sees, exceptions included
        out.error = describe(exc)
    return out
