"""The guard for agent frameworks, whose streams the app never holds: the framework's model client gets
a guarded HTTP transport (guard/transport.py), so a truncated stream raises `TruncatedStream` inside the
framework's own read and reaches the app as any model error does. The agent's code does not change.

- autogen-ext: `GuardedChatCompletionClient(OpenAIChatCompletionClient(...))` (any autogen-ext client
  whose SDK speaks through httpx: OpenAI, Azure, Anthropic, Ollama), given to `AssistantAgent` as usual;
- AG2: `guard_agent(agent)` after the agent is made (`AssistantAgent`, `ConversableAgent`).
"""

from __future__ import annotations

from typing import Any

import httpx

from streamreplay.guard.transport import AsyncGuardedTransport, GuardedTransport


def _httpx_clients(obj: Any, depth: int = 4) -> list[httpx.Client | httpx.AsyncClient]:
    """The httpx clients an SDK client holds: its `_client` (openai, anthropic, ollama), followed down."""
    found: list[httpx.Client | httpx.AsyncClient] = []
    seen: set[int] = set()

    def walk(node: Any, left: int) -> None:
        if node is None or id(node) in seen or left < 0:
            return
        seen.add(id(node))
        if isinstance(node, (httpx.Client, httpx.AsyncClient)):
            found.append(node)
            return
        for name in ("_client", "_oai_client"):
            walk(getattr(node, name, None), left - 1)

    walk(obj, depth)
    return found


def guard_http(obj: Any, expect_done: bool = True) -> int:
    """Wrap the transport of every httpx client `obj` (an SDK or framework client) holds; returns how
    many. Idempotent: a transport already guarded is left as it is."""
    count = 0
    for client in _httpx_clients(obj):
        transport = client._transport  # httpx keeps the one transport of a client without proxies here
        if isinstance(transport, (GuardedTransport, AsyncGuardedTransport)):
            count += 1
            continue
        client._transport = (AsyncGuardedTransport(transport, expect_done) if isinstance(client, httpx.AsyncClient)
                             else GuardedTransport(transport, expect_done))  # type: ignore[arg-type]
        count += 1
    return count


def guard_agent(agent: Any, expect_done: bool = True) -> Any:
    """Guard an AG2 (below 1.0) agent's model clients in place: every config entry's OpenAI client reads
    its streams through a guarded transport. Returns the agent."""
    wrapper = getattr(agent, "client", None)
    clients = getattr(wrapper, "_clients", None) or []
    if not sum(guard_http(c, expect_done) for c in clients):
        raise TypeError(f"{type(agent).__name__} has no model client with an httpx transport to guard "
                        "(an agent without llm_config, or a client library that does not use httpx)")
    return agent


def _autogen_base() -> type:
    try:
        from autogen_core.models import ChatCompletionClient
    except ImportError:  # autogen-core absent: the class below still imports, and says so when used
        return object
    return ChatCompletionClient


class GuardedChatCompletionClient(_autogen_base()):  # type: ignore[misc]
    """An autogen-ext model client whose streams raise `TruncatedStream` when cut off: `inner` with its
    HTTP transport guarded, everything else passed through."""

    def __init__(self, inner: Any, expect_done: bool = True) -> None:
        if not guard_http(inner, expect_done):
            raise TypeError(f"{type(inner).__name__} holds no httpx client to guard")
        self._inner = inner

    def create(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner.create(*args, **kwargs)

    def create_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner.create_stream(*args, **kwargs)

    async def close(self) -> None:
        await self._inner.close()

    def actual_usage(self) -> Any:
        return self._inner.actual_usage()

    def total_usage(self) -> Any:
        return self._inner.total_usage()

    def count_tokens(self, *args: Any, **kwargs: Any) -> int:
        return self._inner.count_tokens(*args, **kwargs)

    def remaining_tokens(self, *args: Any, **kwargs: Any) -> int:
        return self._inner.remaining_tokens(*args, **kwargs)

    @property
    def capabilities(self) -> Any:
        return self._inner.capabilities

    @property
    def model_info(self) -> Any:
        return self._inner.model_info
