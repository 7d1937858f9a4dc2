"""Helpers shared by the tests: record through the real proxy, read what a client got on the wire."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import gc
import hashlib
import json
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.serving import AppServer
from streamreplay.store import Store
from streamreplay.testing import Script, ScriptedUpstream

SECRET = "sk-test-SECRET-7f3a9c"
MESSAGES = [{"role": "user", "content": "Say hello"}]


@asynccontextmanager
async def chat_upstream(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """An upstream whose `POST /v1/chat/completions` is `handler` (an answer the scripted one cannot give),
    on a free port; yields its base_url."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


def sse_data(obj: dict[str, Any]) -> bytes:
    """One JSON event as OpenAI writes it: a data line and a blank line."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def chat_chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
    """A chat completion chunk with one choice, as an SSE event."""
    return sse_data({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                     "choices": [{"index": index, "delta": delta, "finish_reason": finish}]})


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chat(content: str = "Say hello", stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "stream": stream, **extra}


async def record(db_path: Path, scripts: list[Script], payloads: list[dict[str, Any]], tape: str = "t") -> list[bytes]:
    """Record each payload through the proxy from a scripted upstream; returns what the upstream sent."""
    async with ScriptedUpstream() as upstream:
        upstream.queue(*scripts)
        async with RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db_path), tape=tape)) as proxy:
            for payload in payloads:
                await post(proxy.base_url, payload)
            await proxy.settle()
        return [s.body for s in upstream.sent]


async def post(
    base_url: str, payload: dict[str, Any], headers: dict[str, str] | None = None, path: str = "/chat/completions"
) -> tuple[int, bytes, str | None]:
    """POST and read the raw body: status, bytes received, and the name of the error that ended it."""
    received = bytearray()
    async with httpx.AsyncClient(timeout=10) as client:
        try:
            async with client.stream("POST", f"{base_url}{path}", json=payload, headers=headers or {}) as resp:
                async for data in resp.aiter_raw():
                    received += data
                return resp.status_code, bytes(received), None
        except httpx.HTTPError as exc:
            return 0, bytes(received), type(exc).__name__


def recorded_body(db_path: Path, exchange_id: int) -> bytes:
    return b"".join(c.data for c in Store(db_path).chunks(exchange_id))


def parse_python(source: str) -> ast.Module:
    """ast.parse with the garbage collector held off. CPython 3.11 keeps the AST constructor's recursion count
    in interpreter-wide state; a collection in the middle can run a finalizer, let another thread in, and end in
    a spurious "SystemError: AST constructor recursion depth mismatch" (cpython gh-106905). Without a collection
    the conversion is plain C that no other thread interleaves with."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source)
    finally:
        if enabled:
            gc.enable()


#: a request with an absolute URI, as a client of a forwarding proxy sends it
ABSOLUTE_URI_REQUEST = b"GET http://example.com/v1/models HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"


async def raw_answer(port: int, request: bytes, limit: int = -1) -> bytes:
    """Send `request` as written on a socket of its own (what an HTTP client would not send, such as an absolute
    URI or CONNECT) and read the answer: to the end, or its first `limit` bytes for a connection left open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read(limit)
    writer.close()
    return answer


async def serve_raw(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
                    ) -> tuple[asyncio.AbstractServer, str]:
    """A TCP upstream that answers with whatever bytes `handler` writes, HTTP or not; and its /v1 URL."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"


async def bad_chunk_size(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A raw upstream whose chunked body breaks its framing after one good chunk (`zz` is no chunk size)."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"6\r\ndata: \r\n")
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.write(b"zz\r\nhello\r\n")
    await writer.drain()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(5)  # the connection stays open: only the framing says it is broken
    writer.close()


def gzip_sse(events: list[bytes]) -> tuple[list[bytes], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """A compressing upstream: `events` gzipped and flushed one by one, and a route that streams those writes
    10 ms apart with Content-Encoding: gzip."""
    packer = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    writes = [packer.compress(e) + packer.flush(zlib.Z_SYNC_FLUSH) for e in events] + [packer.flush()]

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Content-Encoding": "gzip"})
        await resp.prepare(request)
        for data in writes:
            await resp.write(data)
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    return writes, handler


async def until(condition: Callable[[], object], timeout: float = 3.0) -> None:
    """Wait, polling every 5 ms, until `condition()` is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "never got there"
        await asyncio.sleep(0.005)


def write_exchange(store: Store, chunks: Iterable[tuple[int, bytes]] = (), **columns: Any) -> int:
    """An exchange written straight into a Store's DB, no proxy (a shape recording cannot give quickly: 50 MB,
    1001 chunks, a row a dead recorder left open): a streamed chat answer's row with `columns` over it, its
    tape's row, and `chunks` as (t_ns, data) in order; returns its id."""
    row = {"tape": "t", "method": "POST", "path": "/chat/completions", "request_headers": "[]", "request_body": "{}",
           "request_key": "k", "stream": 1, "status": 200,
           "response_headers": '[["Content-Type", "text/event-stream"]]', **columns}
    row.setdefault("seq", store.count(row["tape"]))
    with store.db.conn:
        store.db["tapes"].insert({"name": row["tape"], "created_at": "2025-01-01T00:00:00.000+00:00",
                                  "source": "test"}, replace=True)
        eid = store.db["exchanges"].insert(row).last_pk
        store.db.conn.executemany("insert into chunks (exchange_id, idx, t_ns, data) values (?, ?, ?, ?)",
                                  ((eid, i, t_ns, data) for i, (t_ns, data) in enumerate(chunks)))
    return eid


class Hello(AppServer):
    """The smallest server: any GET answers "hello on PATH", with AppServer's deadlines; `events` says
    when its start and stop hooks ran."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.events: list[str] = []

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{path:.*}", self.hello)
        return app

    async def hello(self, request: web.Request) -> web.Response:
        return web.Response(text=f"hello on {request.path}")

    async def on_start(self) -> None:
        self.events.append("start")

    async def on_stop(self) -> None:
        self.events.append("stop")
