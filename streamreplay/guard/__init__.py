"""The stream guard: a stream that ends cleanly but early raises `TruncatedStream` where it ends, instead of
being taken as the whole answer.

- `guard(stream)`: an SDK stream (openai chat or Responses, anthropic, ollama), passed through item by item;
- `guarded_client()` / `guarded_async_client()`, `GuardedTransport`: an httpx client for any SDK's
  `http_client=`; `install()`: every httpx stream of the process;
- `GuardedChatCompletionClient(inner)` for autogen-ext, `guard_agent(agent)` for AG2.

No network calls and no dependency beyond httpx, which every client here already uses.
"""

from streamreplay.guard.agents import GuardedChatCompletionClient, guard_agent, guard_http
from streamreplay.guard.check import CHECKS, StreamCheck, TruncatedStream, check_for
from streamreplay.guard.transport import (
    AsyncGuardedTransport,
    GuardedTransport,
    guarded_async_client,
    guarded_client,
    install,
    uninstall,
)
from streamreplay.guard.wrap import GuardedStream, guard

__all__ = [
    "CHECKS", "AsyncGuardedTransport", "GuardedChatCompletionClient", "GuardedStream", "GuardedTransport",
    "StreamCheck", "TruncatedStream", "check_for", "guard", "guard_agent", "guard_http", "guarded_async_client",
    "guarded_client", "install", "uninstall",
]
