"""The recording proxy.

Every read from the upstream is written to the client at once and handed to the store's queue;
nothing on this path parses more than the few bytes needed to see `data: [DONE]`. The client
sees the ending the upstream gave: a clean end, an unfinished body, or a reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from streamreplay import redact
from streamreplay.dialects import Dialect, dialect_for
from streamreplay.dialects.base import SEAM
from streamreplay.endcause import EndCause
from streamreplay.exchange import exchange_row
from streamreplay.proxy.endings import classify_read_error, clean_end_cause, end_body_when_connection_drops
from streamreplay.proxy.routes import Route, parse_routes, route_for
from streamreplay.redact import redact_headers, redact_query
from streamreplay.requestkey import json_object
from streamreplay.serving import AppServer
from streamreplay.store import DEFAULT_DB, STORE_BACKLOG, ExchangeHandle, StoreWriter
from streamreplay.summary import Decoder
from streamreplay.wire import (
    DEFAULT_MAX_BODY,
    close_mid_body,
    forwardable,
    openai_error,
    openai_errors,
    reset_connection,
)

DEFAULT_UPSTREAM_TIMEOUT = 600.0
#: the request Content-Encodings aiohttp's server undoes before `request.read()` returns the body
AIOHTTP_DECODES = frozenset({"gzip", "deflate", "br", "zstd"})


@dataclass
class RecordOptions:
    """Options of `RecordingProxy` and `streamreplay record`, each with the help text the CLI shows
    (`metadata["help"]`; `choices` where only some values are taken)."""

    upstream: str | tuple[str, ...] = field(metadata={
        "help": "The real API's base URL, e.g. https://api.openai.com/v1; or NAME=URL, repeated, for several "
                "(each served under /NAME)."})
    db: str = field(default=DEFAULT_DB, metadata={"help": "SQLite file the recordings go to."})
    tape: str | None = field(default=None, metadata={
        "help": "Tape name for this session (default: rec-YYYYmmdd-HHMMSS)."})
    upstream_timeout: float = field(default=DEFAULT_UPSTREAM_TIMEOUT, metadata={
        "help": "Seconds of upstream silence before the exchange ends as upstream_timeout.", "min": 0,
        "min_open": True})
    on_client_disconnect: str = field(default="drain", metadata={
        "help": "drain: keep reading upstream so the recording is whole; abort: stop reading.",
        "choices": ("drain", "abort")})
    redact_headers: tuple[str, ...] = field(default=(), metadata={
        "help": "Another header whose value never reaches disk."})
    redact_fields: tuple[str, ...] = field(default=(), metadata={
        "help": "A body field stored as [redacted]: a dotted path (metadata.user_id) or a bare name, any depth."})
    max_body: int = field(default=DEFAULT_MAX_BODY, metadata={"help": "Largest request body, bytes.", "min": 1})
    note: str = field(default="", metadata={
        "help": "Free text stored with the tape: where and how it was recorded."})
    max_db_bytes: int | None = field(default=None, metadata={
        "help": "Bytes the DB may grow to. Near it, the oldest exchanges that ended complete are pruned (said "
                "once); cutoffs and open exchanges stay, and storing fails, said, only when none is left.", "min": 1})
    log: Callable[[str], None] | None = field(default=None, metadata={
        "help": "Called with one line per finished exchange."})
    errors: Callable[[str], None] | None = field(default=None, metadata={
        "help": "Called with one line each time storing fails (default: log)."})

    def tape_name(self) -> str:
        """The tape to record into; a default one is made unique in the DB when the recording starts."""
        return self.tape or datetime.now().strftime("rec-%Y%m%d-%H%M%S")


@dataclass(frozen=True, slots=True)
class _RequestFacts:
    """What the stored request row is made of besides its body, as received: the writer's thread redacts
    and encodes it (`RecordingProxy._finish_request_row`)."""

    started: float  # time.time() at arrival
    headers: list[tuple[str, str]]
    url: URL | None  # the request's relative URL when it has a query, parsed as aiohttp parses request.query
    route: Route


@dataclass
class _InFlight:
    """The state of one exchange while its body passes through."""

    handle: ExchangeHandle
    t0: int
    dialect: Dialect
    stream: bool = False
    status: int = 0
    index: int = 0
    size: int = 0
    delivered: int = 0
    ttfb_ns: int | None = None
    saw_done: bool = False
    done_delivered: bool = False
    tail: bytes = b""
    left_ns: int | None = None
    #: undoes a Content-Encoding the upstream used anyway, so [DONE] is looked for in what the body says
    decoder: Decoder | None = None

    def elapsed(self) -> int:
        return time.perf_counter_ns() - self.t0


class RecordingProxy(AppServer):
    """`async with RecordingProxy(RecordOptions(upstream=...)) as proxy:` then use `proxy.base_url`."""

    shutdown_timeout = 2.0

    def __init__(self, options: RecordOptions, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        # `not x > 0`: NaN is refused too
        if not options.upstream_timeout > 0 or not math.isfinite(options.upstream_timeout):
            raise ValueError(f"upstream_timeout must be a number of seconds over 0, not {options.upstream_timeout}")
        if options.max_body < 1 or (options.max_db_bytes is not None and options.max_db_bytes < 1):
            raise ValueError("max_body and max_db_bytes must be 1 byte or more")
        self.options = options
        self.routes = parse_routes(options.upstream)
        self.upstream = self.routes[0].url  # the first (or only) upstream
        self.prefix = self.routes[0].prefix  # an unnamed upstream's local base path mirrors the upstream's
        upstreams = ", ".join(map(str, self.routes))
        self.writer = StoreWriter(options.db, options.tape_name(), options.note or upstreams,
                                  unique_tape=not options.tape, max_bytes=options.max_db_bytes)
        self._session: aiohttp.ClientSession | None = None
        self._draining: set[asyncio.Task[None]] = set()
        self._open: set[ExchangeHandle] = set()
        self._stopping = False

    @property
    def base_url(self) -> str:
        return f"{self.origin}{self.prefix}"

    @property
    def base_urls(self) -> dict[str, str]:
        """The base URL a client uses for each upstream, by name ("" for the single unnamed one)."""
        return {route.name: f"{self.origin}{route.prefix}" for route in self.routes}

    @property
    def tape(self) -> str:
        """The tape recorded into (final once started: a default name may have taken a suffix)."""
        return self.writer.tape

    @property
    def losses(self) -> list[tuple[str, str]]:
        """Every exchange that was forwarded but not stored whole, with why: empty when storing never failed."""
        return self.writer.losses

    async def start(self) -> None:
        db = Path(self.options.db)
        created = not db.exists()
        try:
            await super().start()
        except BaseException:
            # could not listen (the port is taken): leave no empty DB behind
            await self.on_stop()
            if created:
                for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
                    with contextlib.suppress(OSError):
                        path.unlink()
            raise

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.options.max_body, middlewares=[openai_errors])
        app.router.add_route("*", r"/{tail:[\s\S]*}", self.handle)  # newlines too: a %0A path is still ours to answer
        return app

    async def on_start(self) -> None:
        self.writer.on_end = self._log_exchange
        self.writer.on_failure = self.options.errors or self.options.log
        self.writer.start()
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=self.options.upstream_timeout),
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
        )

    async def stop(self) -> None:
        self._stopping = True
        await super().stop()

    async def on_stop(self) -> None:
        if self._draining:
            await asyncio.wait(self._draining, timeout=self.shutdown_timeout)
            for task in self._draining:
                task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.writer.close()

    def _log_exchange(self, summary: dict[str, Any]) -> None:
        if self.options.log:
            self.options.log(format_exchange_line(summary))

    # -- the request path -------------------------------------------------------------------------

    def _relative(self, request: web.Request) -> tuple[Route, str] | web.Response:
        """The request's upstream and raw path relative to its base, or the error that refuses it (what no
        streamreplay server serves was refused before: wire.openai_errors)."""
        raw_path = request.raw_path.split("?", 1)[0]
        found = route_for(self.routes, raw_path)
        if found is None:
            bases = ", ".join(r.prefix for r in self.routes)
            return openai_error(404, f"path {request.path} is not under the base path {bases}",
                                code="not_under_base")
        return found

    async def handle(self, request: web.Request) -> web.StreamResponse:
        found = self._relative(request)
        if isinstance(found, web.Response):
            return found
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return openai_error(413, f"request body over {self.options.max_body} bytes", code="body_too_large")
        route, rel = found
        return await self.forward(request, rel, body, route)

    async def forward(self, request: web.Request, rel: str, body: bytes, route: Route | None = None,
                      ) -> web.StreamResponse:
        """Send the request to its upstream + `rel` (a raw path) and relay the answer while recording it."""
        route = route or self.routes[0]
        upstream = route.url
        query = request.rel_url.raw_query_string  # as sent: the decoded one would put a %20 as a bare space
        target = URL(str(upstream) + rel + (f"?{query}" if query else ""), encoded=True)
        # a named upstream's recordings keep its name, so replay serves each from its own
        rel_path = (f"/{route.name}" if route.name else "") + (target.path[len(upstream.path.rstrip("/")):] or "/")
        facts = _RequestFacts(time.time(), list(request.headers.items()), request.rel_url if query else None, route)
        # only what names the exchange now: redacting and encoding the rest waits for the writer's thread
        handle = self.writer.begin(exchange_row(method=request.method, path=rel_path, request_body=body),
                                   functools.partial(self._finish_request_row, facts))
        self._open.add(handle)
        drop = ["host", "content-length", "accept-encoding"]
        if request.headers.get("Content-Encoding", "").strip().lower() in AIOHTTP_DECODES:
            drop.append("content-encoding")  # aiohttp's server decoded the body: it is forwarded as read, decoded
        headers = forwardable(request.headers.items(), drop=drop)
        headers["Accept-Encoding"] = "identity"  # stored bytes must be the bytes the client gets
        assert self._session is not None
        flow = _InFlight(handle, time.perf_counter_ns(), dialect_for(rel_path))
        try:
            upstream = await self._session.request(
                request.method, target, data=body or None, headers=headers, allow_redirects=False
            )
        except asyncio.CancelledError:
            self._end(flow, self._cancel_cause(flow), "the client left before the upstream answered")
            raise
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as exc:
            return self._answer_error(flow, EndCause.UPSTREAM_TIMEOUT, 504, f"upstream timed out: {exc!r}")
        except aiohttp.ClientError as exc:
            return self._answer_error(flow, EndCause.UPSTREAM_UNREACHABLE, 502, f"upstream unreachable: {exc}")
        return await self._relay(request, upstream, flow)

    def _finish_request_row(self, facts: _RequestFacts, row: dict[str, Any]) -> dict[str, Any]:
        """On the writer's thread, before anything is stored: the headers', the query's and the body's secrets
        redacted, the stream flag and model read from the body, the whole encoded. None of it changes what
        is forwarded, so the forwarding path (time to first byte) does not wait for it."""
        body = redact_body(row["request_body"], self.options.redact_fields)
        stream, model = dialect_for(row["path"]).stream_and_model(json_object(body) or {})
        headers = facts.headers
        return {**row, **exchange_row(
            started_at=datetime.fromtimestamp(facts.started, timezone.utc).isoformat(timespec="milliseconds"),
            query=redact_query(facts.url.query.items()) if facts.url is not None else "",
            request_headers=redact_headers(headers, self.options.redact_headers),
            client=next((v for k, v in headers if k.lower() == "user-agent"), None),
            upstream=str(facts.route),  # NAME=URL for a named upstream: replay -- CMD points each client at its route
            request_body=body, stream=stream, model=model,
        )}

    def _finish_response_head(self, raw_headers: list[tuple[str, str]], row: dict[str, Any]) -> dict[str, Any]:
        """On the writer's thread: a Set-Cookie or a session token the upstream hands out is a secret too
        (replay sends [redacted]), and never reaches the disk."""
        return {**row, **exchange_row(response_headers=redact_headers(raw_headers, self.options.redact_headers))}

    def _answer_error(self, flow: _InFlight, cause: EndCause, status: int, message: str) -> web.Response:
        """Answer for an upstream that never answered, and store that answer so replay gives it too."""
        response = openai_error(status, message, type="upstream_error", code=cause.value)
        data = response.body
        assert isinstance(data, bytes)
        self.writer.chunk(flow.handle, 0, flow.elapsed(), data)
        flow.index, flow.size, flow.status = 1, len(data), status
        self.writer.end(flow.handle, exchange_row(
            status=status,
            response_headers=[[k, v] for k, v in response.headers.items()],
            end_cause=cause, upstream_end=cause, end_detail=message,
            duration_ns=flow.elapsed(), chunk_count=1, byte_count=len(data),
        ))
        self._open.discard(flow.handle)
        return response

    async def _relay(self, request: web.Request, upstream: aiohttp.ClientResponse,
                     flow: _InFlight) -> web.StreamResponse:
        flow.status = upstream.status
        flow.stream = flow.dialect.is_stream(upstream.headers.get("Content-Type"))
        decoder = Decoder(upstream.headers.get("Content-Encoding"))
        flow.decoder = decoder if decoder.active else None
        head_ns = flow.elapsed()
        raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in upstream.raw_headers]
        self.writer.update(flow.handle, exchange_row(status=upstream.status, headers_ns=head_ns),
                           functools.partial(self._finish_response_head, raw_headers))
        protocol = upstream.connection.protocol if upstream.connection else None
        end_body_when_connection_drops(upstream, protocol)
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                  headers=forwardable(raw_headers))
        try:
            await resp.prepare(request)
            await self._pump(upstream, flow, resp)
        except asyncio.CancelledError:
            flow.left_ns = flow.elapsed()
            if self._stopping:
                upstream.release()
                self._end(flow, EndCause.INTERRUPTED, "the daemon stopped mid-exchange")
            elif self.options.on_client_disconnect == "drain":
                task = asyncio.ensure_future(self._drain(upstream, flow, protocol))
                self._draining.add(task)
                task.add_done_callback(self._draining.discard)
            else:
                upstream.close()
                self._end(flow, EndCause.CLIENT_LEFT, "the client left; --on-client-disconnect abort stopped reading")
            raise
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            cause = classify_read_error(exc, protocol)
            upstream.release()
            if flow.left_ns is None:
                (reset_connection if cause is EndCause.UPSTREAM_RESET else close_mid_body)(request)
                self._end(flow, cause, f"{type(exc).__name__}: {exc}", upstream_end=cause)
            else:
                self._end_left(flow, cause)
            return resp
        upstream.release()
        cause = clean_end_cause(flow.status, flow.stream, flow.saw_done)
        if flow.left_ns is not None:
            self._end_left(flow, cause)
            return resp
        try:
            await resp.write_eof()
        except ConnectionError:
            flow.left_ns = flow.elapsed()
            self._end_left(flow, cause)
            return resp
        self._end(flow, cause, None, upstream_end=cause)
        return resp

    async def _pump(self, upstream: aiohttp.ClientResponse, flow: _InFlight, resp: web.StreamResponse | None) -> None:
        """Read the upstream until its end, storing each read and (while the client is there) writing it."""
        content = upstream.content
        while True:
            data = await content.readany()
            if not data:
                return
            now = flow.elapsed()
            if flow.ttfb_ns is None:
                flow.ttfb_ns = now
            self.writer.chunk(flow.handle, flow.index, now, data)
            flow.index += 1
            flow.size += len(data)
            if not flow.saw_done:
                said = data if flow.decoder is None else flow.decoder.feed(data)
                # the seam between two reads is checked apart: no copy of a whole read
                terminal = flow.dialect.find_terminal
                flow.saw_done = terminal(said) or terminal(flow.tail + said[:SEAM])
                # reads shorter than the seam must add up, or a marker across several is missed
                flow.tail = said[-SEAM:] if len(said) >= SEAM else (flow.tail + said)[-SEAM:]
            if self.writer.backlog > STORE_BACKLOG:
                # the disk is behind the network: hold this stream back rather than grow without bound
                await self.writer.room()
            if resp is not None and flow.left_ns is None:
                try:
                    await resp.write(data)
                    flow.delivered += 1
                    flow.done_delivered = flow.saw_done
                except ConnectionError:
                    flow.left_ns = flow.elapsed()

    async def _drain(self, upstream: aiohttp.ClientResponse, flow: _InFlight, protocol: object | None) -> None:
        """After the client left: read the rest so the recording is whole."""
        try:
            await self._pump(upstream, flow, None)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            self._end_left(flow, classify_read_error(exc, protocol))
        except asyncio.CancelledError:
            self._end(flow, EndCause.CLIENT_LEFT, "the client left; the daemon stopped before the upstream ended")
            raise
        else:
            self._end_left(flow, clean_end_cause(flow.status, flow.stream, flow.saw_done))
        finally:
            upstream.release()

    def _cancel_cause(self, flow: _InFlight) -> EndCause:
        flow.left_ns = flow.elapsed()
        return EndCause.INTERRUPTED if self._stopping else EndCause.CLIENT_LEFT

    def _end_left(self, flow: _InFlight, upstream_end: EndCause) -> None:
        assert flow.left_ns is not None
        if flow.done_delivered:
            # The openai SDK closes the connection as soon as it reads [DONE], before the body's
            # terminator: the client had the whole answer, so this is the upstream's ending.
            detail = f"the client closed the connection after {flow.dialect.terminal}, at {flow.left_ns / 1e9:.3f} s"
            self._end(flow, upstream_end, detail, upstream_end=upstream_end)
            return
        detail = (f"the client left after {flow.delivered} of {flow.index} chunks at {flow.left_ns / 1e9:.3f} s; "
                  f"the upstream ended: {upstream_end.value}")
        self._end(flow, EndCause.CLIENT_LEFT, detail, upstream_end=upstream_end)

    def _end(self, flow: _InFlight, cause: EndCause, detail: str | None,
             upstream_end: EndCause | None = None) -> None:
        left = {} if flow.left_ns is None else {"client_left_at_chunk": flow.delivered, "client_left_ns": flow.left_ns}
        self.writer.end(flow.handle, exchange_row(
            end_cause=cause, end_detail=detail, upstream_end=upstream_end, ttfb_ns=flow.ttfb_ns,
            duration_ns=flow.elapsed(), chunk_count=flow.index, byte_count=flow.size, done=flow.saw_done, **left,
        ))
        self._open.discard(flow.handle)

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until every exchange so far has ended and is committed (for tests and tools)."""
        deadline = time.monotonic() + timeout
        while self._open and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(self.writer.flush)



def redact_body(body: bytes, fields: Iterable[str]) -> bytes:
    """The body as stored: secret-looking fields at any depth and the --redact-field ones as [redacted],
    every other byte as received (streamreplay.redact)."""
    return redact.redact_body(body, fields)


def format_exchange_line(s: dict[str, Any]) -> str:
    """`#12 POST /chat/completions gpt-4o-mini 200 stream 14 chunks 0.62s complete`."""
    dur = (s.get("duration_ns") or 0) / 1e9
    kind = "stream" if s.get("stream") else "json"
    left = ""
    if s.get("client_left_at_chunk") is not None:
        who = "the daemon stopped" if s.get("end_cause") == EndCause.INTERRUPTED else "client left"
        left = f" ({who} at chunk {s['client_left_at_chunk']}, {s['client_left_ns'] / 1e9:.3f}s)"
    if s.get("store_error"):
        left += " NOT STORED WHOLE"
    return (f"#{s.get('id')} {s.get('method')} {s.get('path')} {s.get('model') or '-'} {s.get('status') or '-'} "
            f"{kind} {s.get('chunk_count') or 0} chunks {dur:.2f}s {s.get('end_cause')}{left}")
