"""The replay server: matches each request to a recording and writes its schedule on time."""

from __future__ import annotations

import asyncio
import math
from collections import Counter, OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from streamreplay.dialects.base import SEAM
from streamreplay.endcause import Ending
from streamreplay.replay.faults import Fault, FaultSpecError, apply_faults, parse_faults
from streamreplay.replay.matching import Index, Miss
from streamreplay.replay.onmiss import OnMiss
from streamreplay.replay.options import ReplayOptions
from streamreplay.replay.replayed import Replayed
from streamreplay.replay.request import IncomingRequest
from streamreplay.replay.schedule import Schedule, convert_for_request, recorded_schedule
from streamreplay.replay.source import StoreSource, TapeSource, open_source
from streamreplay.replay.storeindex import StoreIndex, use_store_index
from streamreplay.serving import AppServer
from streamreplay.store import Chunk, Exchange
from streamreplay.wire import FAULT_HEADER, close_mid_body, openai_error, openai_errors, reset_connection

#: request keys whose last answer broke, kept for retry detection; an entry is a key and a number
RETRY_KEYS = 10_000


@dataclass
class ReplayCounts:
    """Totals over every request the server answered, exact however few records `requests` still keeps."""

    requests: int = 0
    endings: Counter[str] = field(default_factory=Counter)  # clean | close | reset | miss | refused | recorded
    unfinished: int = 0  # not `Replayed.finished`: the client left early, or the request missed or was refused
    retries: int = 0  # requests that repeat one whose answer broke
    first_miss: str | None = None  # the first miss's reason, for a report of "N misses, the first: ..."

    @property
    def misses(self) -> int:
        return self.endings["miss"]

    def snapshot(self) -> ReplayCounts:
        """A copy to compare with later: what a run added is `server.counts` minus the snapshot."""
        return replace(self, endings=Counter(self.endings))


class RetryMemory:
    """Which earlier request a new one repeats after that one broke: per request key, the last request
    while it is served, then its number if it broke. It holds no record once its request has ended, and
    at most `max_keys` broken keys (the oldest forgotten first), so it stays small however long it runs."""

    def __init__(self, max_keys: int = RETRY_KEYS) -> None:
        self.max_keys = max_keys
        self._serving: dict[Hashable, Replayed] = {}  # as many as requests in flight
        self._broken: OrderedDict[Hashable, int] = OrderedDict()

    def arrived(self, key: Hashable, rec: Replayed) -> int | None:
        """The number of the request with `key` that `rec` repeats after it broke; `rec` is the key's last now."""
        previous = self._serving.get(key)
        self._serving[key] = rec
        last_broken = self._broken.pop(key, None)
        if previous is None:
            return last_broken
        # still being served: judged as it stands, since a client that gave up on it retries before it ends
        return previous.n if previous.broken else None

    def ended(self, key: Hashable, rec: Replayed) -> None:
        if self._serving.get(key) is not rec:
            return  # a later request with this key arrived meanwhile: that one is the key's last
        del self._serving[key]
        if rec.broken:
            self._broken[key] = rec.n
            if len(self._broken) > self.max_keys:
                self._broken.popitem(last=False)


class ReplayServer(AppServer):
    """Serves recordings offline, byte-exact, on their recorded timing (scaled by `speed`).

    `async with ReplayServer("recordings/x.db", tape="t") as srv:` or, from sync code, `with ...`. It takes
    a `ReplayOptions`, or its `source` and any of its fields as keywords (`ReplayServer(db, speed=0)`).

    A request no recording matches gets what the `on_miss` policy answers (streamreplay.replay.onmiss):
    OpenAI's 404 JSON (`on_miss="404"`), or, with `on_miss="record"` and an `upstream` (`upstream=URL`
    alone means the same), the upstream's answer, recorded into the DB played (or `record_db`), on the
    tape played. Once that exchange is committed it joins the index and is served like any recording; an
    identical request that arrives meanwhile waits for it rather than going upstream again.
    """

    def __init__(self, source: ReplayOptions | str | Path | TapeSource, *, host: str = "127.0.0.1", port: int = 0,
                 **overrides: Any) -> None:
        super().__init__(host, port)
        options = source if isinstance(source, ReplayOptions) else ReplayOptions(source)
        options = replace(options, **overrides) if overrides else options
        if not 0 <= options.speed < math.inf:  # NaN too
            raise ValueError("speed must be 0 (no waits) or more")
        if options.keep_requests < 0 or options.cache_bytes < 0:
            raise ValueError("keep_requests and cache_bytes must be 0 or more")
        self.options = options
        src = options.source
        #: a DB or cassette given by its path is opened here, and `close()` closes it again
        self._owns_source = isinstance(src, (str, Path))
        self.source = open_source(src, options.tape, options.cache_bytes) if self._owns_source else src
        self.speed = options.speed
        self.faults: list[Fault] = []
        for fault in options.faults:
            self.faults += parse_faults(fault) if isinstance(fault, str) else [fault]
        self.prefix = options.prefix.rstrip("/")
        self.max_body = options.max_body
        self.log = options.log
        self.index = self._index(options)
        #: the most recent `keep_requests` requests; `counts` has the totals over all of them
        self.requests: deque[Replayed] = deque(maxlen=options.keep_requests)
        self.counts = ReplayCounts()
        self._retries = RetryMemory()
        #: what a request the index misses gets (streamreplay.replay.onmiss)
        self.on_miss: OnMiss = options.miss_policy()
        self.on_miss.bind(self.index, self.source, self._report)

    def _index(self, options: ReplayOptions) -> Index:
        """A big DB is looked up in place (StoreIndex) when its stored keys are the matchers' own; anything
        else is held in memory."""
        source = self.source
        if isinstance(source, StoreSource) and use_store_index(source.store, options.match, options.ignore_fields,
                                                               options.match_on):
            return StoreIndex(source.store, source.tape, options.repeat)
        return Index(source.exchanges(), options.ignore_fields, options.match, options.repeat, options.match_on)

    @property
    def base_url(self) -> str:
        return f"{self.origin}{self.prefix}"

    def fault_url(self, spec: str) -> str:
        """The base_url that applies `spec` to every request, for clients that take nothing but a URL."""
        parse_faults(spec)
        return f"{self.origin}/fault/{spec}{self.prefix}"

    def build_app(self) -> web.Application:
        # openai_errors refuses what no streamreplay server serves (wire.refuse_request) before `handle`
        app = web.Application(client_max_size=self.max_body, middlewares=[openai_errors])
        app.router.add_route("*", r"/{tail:[\s\S]*}", self.handle)  # newlines too: a %0A path is still ours to answer
        return app

    async def on_start(self) -> None:
        await self.on_miss.start()

    async def on_stop(self) -> None:
        await self.on_miss.stop()

    async def settle(self) -> None:
        """Wait until every miss answered so far is done with: with on_miss="record", every forwarded miss
        recorded and in the index (or known not to be)."""
        await self.on_miss.settle()

    def unused(self) -> list[Any]:
        """Recorded exchanges no request has used."""
        return self.index.unused()

    def close(self) -> None:
        """Close the DB it opened from a path (a source passed in stays its caller's): once stopped and done
        with (`unused()` reads the DB), so that a process that makes many servers keeps no descriptors."""
        close = getattr(self.source, "close", None)
        if self._owns_source and close is not None:
            close()

    def since(self, count: int) -> list[Replayed]:
        """The kept records of the requests after the first `count` (a `counts.requests` read earlier)."""
        # list() first: a sync caller reads from another thread while the server's loop appends
        return [rec for rec in list(self.requests) if rec.n > count]

    # -- one request ------------------------------------------------------------------------------

    def _split_path(self, request: web.Request) -> tuple[str, str | None]:
        """(the path relative to the base, the spec of a /fault/<spec>/ prefix)."""
        path = request.raw_path.split("?", 1)[0]
        spec = None
        if path.startswith("/fault/"):
            spec, _, rest = path[len("/fault/"):].partition("/")
            spec, path = unquote(spec), "/" + rest
        # the base path is left on when the recordings have it: a tape recorded against an upstream with no
        # base path (Anthropic's, Ollama's, Azure's clients add their own) stores /v1/messages, /api/chat
        if self.prefix and (path == self.prefix or path.startswith(self.prefix + "/")) \
                and path not in self.index.paths:
            path = path[len(self.prefix):]
        return path or "/", spec

    async def handle(self, request: web.Request) -> web.StreamResponse:
        arrived = asyncio.get_running_loop().time()
        self.counts.requests += 1
        rec = Replayed(self.counts.requests, request.method, request.path)
        self.requests.append(rec)
        rel, url_spec = self._split_path(request)
        rec.path = rel
        try:
            asked = parse_faults(url_spec) + parse_faults(request.headers.get(FAULT_HEADER))
        except FaultSpecError as exc:
            return self._refuse(rec, openai_error(400, f"bad fault spec: {exc}", code="bad_fault_spec"),
                                f"bad fault spec: {exc}")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(rec, openai_error(413, f"request body over {self.max_body} bytes",
                                                  code="body_too_large"), "too large")
        incoming = IncomingRequest(request.method, rel, body, self.index.rules, request.query_string,
                                   faults=tuple(asked), http=request)
        await self.on_miss.pending(incoming)
        found = self.index.lookup(incoming)
        if isinstance(found, Miss):
            return await self.on_miss.answer(incoming, found, rec)
        rec.exchange_id = found.id
        rec.partial = found.store_error
        rec.retry_of = self._retries.arrived(incoming.key, rec)
        self.counts.retries += rec.retry_of is not None
        try:
            schedule = recorded_schedule(found, self._chunks(found))
            schedule = convert_for_request(schedule, incoming.stream)
            schedule = apply_faults(schedule, self.faults + list(incoming.faults))
            rec.applied = schedule.applied
            return await self.play(request, schedule, rec, arrived)
        finally:
            self._retries.ended(incoming.key, rec)
            self._report(rec)

    def _refuse(self, rec: Replayed, response: web.Response, why: str) -> web.Response:
        rec.status, rec.ending, rec.miss = response.status, "refused", why
        self._report(rec)
        return response

    def _chunks(self, ex: Exchange) -> list[Chunk]:
        chunks = self.on_miss.chunks(ex)  # an exchange the policy recorded may be in another DB
        return chunks if chunks is not None else self.source.chunks(ex)

    def _report(self, rec: Replayed) -> None:
        """Once per request, as it ends: count it, then log it."""
        counts = self.counts
        counts.endings[rec.ending] += 1
        counts.unfinished += not rec.finished
        if rec.ending == "miss" and counts.first_miss is None:
            counts.first_miss = rec.miss
        if self.log:
            self.log(rec.line())

    async def play(self, request: web.Request, schedule: Schedule, rec: Replayed, arrived: float) -> web.StreamResponse:
        """Write the schedule: the head, each piece at its offset, then its ending."""
        loop = asyncio.get_running_loop()
        speed = self.speed

        def due(t_ns: int, extra_ns: int) -> float:
            return arrived + (t_ns / speed / 1e9 if speed else 0.0) + extra_ns / 1e9

        async def wait_until(when: float) -> None:
            delay = when - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

        rec.status, rec.total = schedule.status, len(schedule.pieces)
        rec.ending = schedule.ending.value
        resp = web.StreamResponse(status=schedule.status, headers=schedule.headers)
        tail = b""
        try:
            await wait_until(due(schedule.head_ns, schedule.head_extra_ns))
            await resp.prepare(request)
            for piece in schedule.pieces:
                # absolute offsets from the arrival: a late write does not delay the ones after it
                await wait_until(due(piece.t_ns, piece.extra_ns))
                await resp.write(piece.data)
                rec.offsets_ns.append(int((loop.time() - arrived) * 1e9))
                rec.delivered += 1
                if not rec.done_delivered:
                    rec.done_delivered = schedule.dialect.find_terminal(tail + piece.data)
                    # pieces shorter than the seam (rechunk) must add up, or a marker across several is missed
                    tail = piece.data[-SEAM:] if len(piece.data) >= SEAM else (tail + piece.data)[-SEAM:]
            if schedule.ending is Ending.RESET:
                await asyncio.sleep(0.005)  # an RST discards unsent bytes: let the last write leave first
                reset_connection(request)
            elif schedule.ending is Ending.CLOSE:
                close_mid_body(request)
            else:
                await resp.write_eof()
        except asyncio.CancelledError:
            self._left(rec, loop.time() - arrived)
            raise
        except ConnectionError:
            self._left(rec, loop.time() - arrived)
        return resp

    @staticmethod
    def _left(rec: Replayed, elapsed: float) -> None:
        rec.client_left_at_chunk = rec.delivered
        rec.client_left_ns = int(elapsed * 1e9)
