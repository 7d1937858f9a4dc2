"""`guard(stream)`: a client library's stream, passed through item by item, that raises `TruncatedStream`
where it ends if it was not whole (guard/check.py says what whole means per dialect).

The openai and anthropic SDKs' streams carry their HTTP response; the guard reads the dialect from its
path and, for chat, sees `[DONE]` by wrapping the SDK's own event reader (which swallows it) before the
first item is read. Any other iterator (ollama's generator, an item list in a test) is told by its first
item, or by `dialect=`; chat's `[DONE]` cannot be seen there, so pass `expect_done=False` or guard the
HTTP client instead (guard/transport.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from streamreplay.dialects import dialect_for
from streamreplay.guard.check import StreamCheck, check_for, field

ANTHROPIC_EVENTS = frozenset({"message_start", "content_block_start", "content_block_delta", "content_block_stop",
                              "message_delta", "message_stop", "ping"})


def dialect_of_item(item: Any) -> str:
    """The dialect an item belongs to, told by its shape, for a stream that carries no request path."""
    kind = field(item, "type")
    if isinstance(kind, str):
        if kind.startswith("response.") or kind == "error" and field(item, "sequence_number") is not None:
            return "responses"
        if kind in ANTHROPIC_EVENTS or kind == "error":
            return "anthropic"
    if field(item, "done") is not None and field(item, "choices") is None:
        return "ollama"
    return "chat"


class GuardedStream:
    """The stream, item for item, and anything else it offers (close, response, context manager)."""

    def __init__(self, inner: Any, dialect: str | None, expect_done: bool) -> None:
        self._inner = inner
        self._dialect = dialect
        self._expect_done = expect_done
        self._check: StreamCheck | None = None
        response = getattr(inner, "response", None)
        request = getattr(response, "request", None)
        if dialect is None and request is not None:
            self._dialect = dialect_for(request.url.path).name
        sees_done = self._watch_events()
        if self._dialect is not None:
            self._check = check_for(self._dialect, expect_done and sees_done)

    def _watch_events(self) -> bool:
        """Wrap the SDK's SSE reader so `[DONE]` reaches the check; False when there is none to wrap."""
        reader = getattr(self._inner, "_iter_events", None)
        if reader is None:
            return False
        guarded = self

        def events(*args: Any, **kwargs: Any) -> Any:
            for sse in reader(*args, **kwargs):
                if sse.data.startswith("[DONE]") and guarded._check is not None:
                    guarded._check.terminal()
                yield sse

        async def aevents(*args: Any, **kwargs: Any) -> Any:
            async for sse in reader(*args, **kwargs):
                if sse.data.startswith("[DONE]") and guarded._check is not None:
                    guarded._check.terminal()
                yield sse

        is_async = hasattr(self._inner, "__aiter__")
        self._inner._iter_events = aevents if is_async else events
        return True

    def _checked(self, item: Any) -> StreamCheck:
        if self._check is None:
            self._dialect = dialect_of_item(item)
            self._check = check_for(self._dialect, self._expect_done and self._dialect != "chat")
        return self._check

    def __iter__(self) -> Iterator[Any]:
        check = self._check
        for item in self._inner:
            (check or self._checked(item)).item(item)
            check = self._check
            yield item
        self._end()

    async def _aiter(self) -> AsyncIterator[Any]:
        check = self._check
        async for item in self._inner:
            (check or self._checked(item)).item(item)
            check = self._check
            yield item
        self._end()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._aiter()

    def _end(self) -> None:
        if self._check is None:  # not one item: nothing said the stream was whole
            self._check = check_for(self._dialect or "chat", False)
        problem = self._check.verdict()
        if problem is not None:
            raise problem

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> GuardedStream:
        self._inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._inner.__exit__(*exc)

    async def __aenter__(self) -> GuardedStream:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._inner.__aexit__(*exc)


def guard(stream: Any, *, dialect: str | None = None, expect_done: bool = True) -> Any:
    """`stream`, passed through unchanged, raising `TruncatedStream` where it ends if it was not whole.

    `dialect` ("chat", "responses", "anthropic", "ollama", "azure") when the stream cannot say; and
    `expect_done=False` for a chat server known to end its streams without `[DONE]`."""
    return GuardedStream(stream, dialect, expect_done)
