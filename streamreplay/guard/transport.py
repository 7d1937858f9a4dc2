"""The guard at the HTTP layer: an httpx transport whose streamed answers raise `TruncatedStream` where
they end if they were not whole, for clients whose stream the app never holds (an AutoGen agent, AG2,
LangChain) and for checking `[DONE]`, which the SDKs swallow.

Every client library here speaks through httpx, so one wrapper serves them all: `GuardedTransport`
(sync) and `AsyncGuardedTransport` wrap any transport; `install()` wraps httpx's default ones in this
process (what `streamreplay matrix --guard` does), and `uninstall()` puts them back. The bytes reach the
client unchanged; the guard parses a copy with the dialect's own parser (the request's path says which)
and raises at the end of the body, from inside the client's read, so the app sees it where it reads.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from streamreplay.dialects import Dialect, dialect_for
from streamreplay.guard.check import StreamCheck, check_for
from streamreplay.summary import Decoder


class _Reader:
    """The dialect's parser over a copy of the body, feeding each event to the check."""

    def __init__(self, dialect: Dialect, check: StreamCheck, encoding: str | None) -> None:
        self.dialect, self.check = dialect, check
        self.parser = dialect.parser()
        self.decoder = Decoder(encoding)
        self.judged = False

    def feed(self, data: bytes) -> None:
        if not self.judged:
            self._events(self.parser.feed(self.decoder.feed(data)))

    def end(self) -> None:
        if not self.judged:
            self._events(self.parser.close())
            self._judge()

    def _judge(self) -> None:
        # once: at the dialect's last event (the SDKs may close the response there, unread to its end), or at EOF
        self.judged = True
        problem = self.check.verdict()
        if problem is not None:
            raise problem

    def _events(self, events: list[Any]) -> None:
        for event in events:
            data = event.data
            if data.startswith("[DONE]"):
                self.check.terminal()
            else:
                try:
                    self.check.item(json.loads(data))
                except ValueError:
                    continue  # a line the client itself will choke on, or not: it is the client's to say
            if self.check.ended:
                self._judge()
                return


class _GuardedStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, reader: _Reader) -> None:
        self.inner, self.reader = inner, reader

    def __iter__(self) -> Iterator[bytes]:
        for data in self.inner:
            self.reader.feed(data)
            yield data
        self.reader.end()

    def close(self) -> None:
        self.inner.close()


class _AsyncGuardedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, reader: _Reader) -> None:
        self.inner, self.reader = inner, reader

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for data in self.inner:
            self.reader.feed(data)
            yield data
        self.reader.end()

    async def aclose(self) -> None:
        await self.inner.aclose()


def guard_response(request: httpx.Request, response: httpx.Response, expect_done: bool = True,
                   is_async: bool = False) -> httpx.Response:
    """`response`, its body guarded when it is a stream in its dialect's terms (the request's path says
    which); anything else as it is. `is_async`: read by an async client (a body may be both kinds)."""
    dialect = dialect_for(request.url.path)
    if response.status_code != 200 or not dialect.is_stream(response.headers.get("content-type")):
        return response
    reader = _Reader(dialect, check_for(dialect.name, expect_done), response.headers.get("content-encoding"))
    inner = response.stream
    response.stream = (_AsyncGuardedStream(inner, reader) if is_async  # type: ignore[assignment, arg-type]
                       else _GuardedStream(inner, reader))  # type: ignore[arg-type]
    return response


class GuardedTransport(httpx.BaseTransport):
    """`inner` (default: httpx's own), every streamed answer checked (see the module's docstring)."""

    def __init__(self, inner: httpx.BaseTransport | None = None, expect_done: bool = True) -> None:
        self.inner = inner or httpx.HTTPTransport()
        self.expect_done = expect_done

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return guard_response(request, self.inner.handle_request(request), self.expect_done)

    def close(self) -> None:
        self.inner.close()


class AsyncGuardedTransport(httpx.AsyncBaseTransport):
    """The async `GuardedTransport`."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, expect_done: bool = True) -> None:
        self.inner = inner or httpx.AsyncHTTPTransport()
        self.expect_done = expect_done

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return guard_response(request, await self.inner.handle_async_request(request), self.expect_done, True)

    async def aclose(self) -> None:
        await self.inner.aclose()


def guarded_client(**kwargs: Any) -> httpx.Client:
    """An httpx.Client whose streams are guarded: `openai.OpenAI(http_client=guarded_client())`."""
    return httpx.Client(transport=GuardedTransport(expect_done=kwargs.pop("expect_done", True)), **kwargs)


def guarded_async_client(**kwargs: Any) -> httpx.AsyncClient:
    """An httpx.AsyncClient whose streams are guarded: `openai.AsyncOpenAI(http_client=guarded_async_client())`,
    `OpenAIChatCompletionClient(..., http_client=guarded_async_client())`."""
    return httpx.AsyncClient(transport=AsyncGuardedTransport(expect_done=kwargs.pop("expect_done", True)), **kwargs)


_ORIGINAL: dict[str, Any] = {}


def install(expect_done: bool = True) -> None:
    """Guard every stream this process reads through httpx's default transports, whichever library asks:
    the same check as `GuardedTransport`, without touching the app. `uninstall()` undoes it."""
    if _ORIGINAL:
        return
    _ORIGINAL["sync"] = httpx.HTTPTransport.handle_request
    _ORIGINAL["async"] = httpx.AsyncHTTPTransport.handle_async_request
    sync, async_ = _ORIGINAL["sync"], _ORIGINAL["async"]

    def handle_request(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        return guard_response(request, sync(self, request), expect_done)

    async def handle_async_request(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
        return guard_response(request, await async_(self, request), expect_done, True)

    httpx.HTTPTransport.handle_request = handle_request  # type: ignore[method-assign]
    httpx.AsyncHTTPTransport.handle_async_request = handle_async_request  # type: ignore[method-assign]


def uninstall() -> None:
    """Put httpx's transports back as they were before `install()`."""
    if not _ORIGINAL:
        return
    httpx.HTTPTransport.handle_request = _ORIGINAL.pop("sync")  # type: ignore[method-assign]
    httpx.AsyncHTTPTransport.handle_async_request = _ORIGINAL.pop("async")  # type: ignore[method-assign]
