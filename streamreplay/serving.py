"""One way to run an aiohttp app on 127.0.0.1: awaited in a loop, or on a thread for sync code."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web

from streamreplay.timeouts import TimedAppRunner


class AppServer:
    """Base of the recording proxy, the replay server, the ui and the scripted upstream.

    `async with` runs it on the current loop; plain `with` runs it on a loop of its own in a
    background thread, so sync test code and sync clients (openai.OpenAI, AG2) can use it.
    """

    #: seconds in-flight requests get to finish when the server stops
    shutdown_timeout: float = 1.0
    #: seconds a connection gets to deliver a complete request head, counted from the moment it opens
    #: (a socket that never sends is closed after this) or, on a kept-alive connection, from the first
    #: byte of the next head. Local clients send a head in well under a millisecond; 10 s leaves room
    #: for a loaded machine or a paused debugger and still frees a slowloris's sockets quickly. It never
    #: applies once a head is complete: bodies, handlers and (long, silent) streamed responses are untimed.
    #: 0 (or None as the attribute) turns it off. See streamreplay/timeouts.py.
    header_timeout: float | None = 10.0
    #: seconds a kept-alive connection may sit idle between a response's end and the next request
    #: (aiohttp's own keepalive_timeout; it also bounds a head that trickles in after such a wait). 75 s
    #: (nginx's default) is longer than the pools of common clients keep an idle connection (httpx 5 s,
    #: aiohttp 15 s, undici 4 s), so they close first and never send into a connection being closed.
    keepalive_timeout: float = 75.0

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, header_timeout: float | None = None,
                 keepalive_timeout: float | None = None) -> None:
        self.host = host
        self.port = port
        # None keeps the class's value; subclasses that do not pass these on can still be set per
        # instance (server.header_timeout = 0.5) before start()
        if header_timeout is not None:
            self.header_timeout = header_timeout
        if keepalive_timeout is not None:
            self.keepalive_timeout = keepalive_timeout
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def build_app(self) -> web.Application:
        raise NotImplementedError

    async def on_start(self) -> None:
        """Hook: runs before the socket is opened."""

    async def on_stop(self) -> None:
        """Hook: runs after the socket is closed and requests have finished."""

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    async def start(self) -> None:
        await self.on_start()
        # handler_cancellation: a client that goes away cancels its handler at once, which is how
        # the proxy and the replay learn the exact moment a client left, even inside a long gap.
        # keepalive_timeout is aiohttp's; header_timeout is the one deadline aiohttp lacks (timeouts.py).
        self._runner = TimedAppRunner(
            self.build_app(),
            header_timeout=self.header_timeout,
            keepalive_timeout=self.keepalive_timeout,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=self.shutdown_timeout,
        )
        await self._runner.setup()
        # a deep backlog: hundreds of clients may connect in the same instant (the load tests do)
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the bound port, when 0 asked for a free one

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.on_stop()

    async def __aenter__(self) -> Any:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> Any:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # reported to the caller's thread below
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = None

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the server's own loop from another thread (sync mode only)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()
