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
