"""Slow and idle clients: a deadline for a request's head, on top of aiohttp's keep-alive timeout.

What aiohttp gives, and is used as is: `keepalive_timeout` (a RequestHandler kwarg, passed through
`web.AppRunner`). Its timer runs from the moment a connection opens and again from the end of each
response, and closes the connection only if, when it fires, the handler is still waiting for the next
request's head. So an idle kept-alive connection is closed, and a response in progress is never cut.

What aiohttp lacks: a deadline for the head itself. Bytes arriving do not move the keep-alive timer,
so a head sent a byte a second is only cut at the keep-alive time, and making that time short would
also throw away the kept-alive connections of ordinary clients between their requests. Hence the one
timer written here, per connection:

* armed when the connection opens (a fresh connection owes its first head: one that never sends a
  byte is closed after `header_timeout`), and when the first bytes of a later head arrive on a
  kept-alive connection (the wait before those bytes is keep-alive idle time, aiohttp's timer);
* cancelled as soon as the parser has a complete head: from then on the request belongs to its
  handler, and nothing here times its body, its handler or its response (a recording of a slow
  upstream stream can stay silent for minutes);
* when it fires, the connection is closed only if the handler is still waiting for a head, the same
  test aiohttp's keep-alive timer makes, so it cannot hit a request in progress either.

Request bodies are not timed: once the head is complete the request is the handler's, its size is
capped by the app's `client_max_size`, and a body cut half way would only make a half exchange.

It reads two RequestHandler internals, `_waiter` (pending while the handler waits for a head) and
`_request_count` (heads parsed so far); written against aiohttp 3.14, and tests/test_slow_clients.py
fails if an aiohttp upgrade changes what they mean.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from streamreplay.wire import openai_error


class HeaderTimeoutHandler(web.RequestHandler):
    """aiohttp's request handler (protocol) plus a deadline for each request head."""

    __slots__ = ("_header_timeout", "_header_timer")

    def __init__(self, manager: web.Server, *, header_timeout: float | None, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout if header_timeout and header_timeout > 0 else None
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._cancel_header_timer()  # a complete head: the request is its handler's now
        elif self._header_timer is None and self._waiting_for_head():
            self._arm_header_timer()  # the first bytes of the next head on a kept-alive connection

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _waiting_for_head(self) -> bool:
        """No request in progress: the handler waits for a complete head (same test as aiohttp's keep-alive)."""
        return self._waiter is not None and not self._waiter.done()

    def _arm_header_timer(self) -> None:
        if self._header_timeout is not None:
            self._header_timer = self._loop.call_later(self._header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request aiohttp could not parse (a bad Content-Length, chunk size, header): the client's
        fault, so a 4xx in OpenAI's error shape and no traceback on stderr. Our own failures (5xx), and
        a response already under way, stay aiohttp's."""
        if status >= 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        words = " ".join((message or str(exc or "")).split())[:300] or "unreadable request"
        response = openai_error(status, f"bad HTTP request: {words}", code="bad_http_request")
        response.force_close()
        return response

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._waiting_for_head():
            self.force_close()


class _Server(web.Server):
    """aiohttp's low-level server, making a HeaderTimeoutHandler per connection."""

    def __init__(self, *args: Any, header_timeout: float | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout

    def __call__(self) -> web.RequestHandler:
        return HeaderTimeoutHandler(self, loop=self._loop, header_timeout=self.header_timeout, **self._kwargs)


class TimedAppRunner(web.AppRunner):
    """`web.AppRunner` whose connections also time out waiting for a request head.

    `_make_server` is BaseRunner's extension point (AppRunner and ServerRunner implement it): aiohttp
    builds its Server (startup signals, handler kwargs such as keepalive_timeout) and it is remade as
    the same server with our handler.
    """

    def __init__(self, app: web.Application, *, header_timeout: float | None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return _Server(made.request_handler, request_factory=made.request_factory,
                       handler_cancellation=made.handler_cancellation, header_timeout=self.header_timeout,
                       **made._kwargs)
