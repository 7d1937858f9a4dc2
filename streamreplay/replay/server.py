"""The replay server: matches each request to a recording and writes its schedule on time."""

from __future__ import annotations

import asyncio
import json
from array import array
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from streamreplay.endcause import Ending
from streamreplay.replay.faults import Fault, FaultSpecError, apply_faults, parse_faults
from streamreplay.replay.matching import Index, Miss
from streamreplay.replay.schedule import Schedule, convert_for_request, recorded_schedule
from streamreplay.replay.source import DEFAULT_CACHE_BYTES, TapeSource, open_source
from streamreplay.requestkey import json_object
from streamreplay.serving import AppServer
from streamreplay.sse import find_done
from streamreplay.wire import (
    FAULT_HEADER,
    close_mid_body,
    openai_error,
    openai_errors,
    refuse_request,
    reset_connection,
)

DEFAULT_MAX_BODY = 32 * 1024 * 1024
#: `Replayed` records kept on `ReplayServer.requests`: a server that runs for days must not grow with
#: every request it answers (each record holds an offset per chunk); `counts` keeps the totals
DEFAULT_KEEP_REQUESTS = 1000
#: request keys whose last answer broke, kept for retry detection; an entry is a key and a number
RETRY_KEYS = 10_000


@dataclass
class Replayed:
    """What happened to one request the replay server answered: the client's behaviour, observed."""

    n: int
    method: str
    path: str
    exchange_id: int | None = None
    applied: list[str] = field(default_factory=list)
    status: int = 0
    total: int = 0  # chunks in the schedule
    delivered: int = 0
    ending: str = ""  # clean | close | reset, or miss / refused
    client_left_at_chunk: int | None = None
    client_left_ns: int | None = None
    done_delivered: bool = False
    retry_of: int | None = None  # the earlier request this one repeats after it broke
    # when each chunk was written, since arrival; 8 bytes an offset (a list of ints takes 40), as the
    # server keeps the most recent records and a record of a long stream is mostly its offsets
    offsets_ns: array[int] = field(default_factory=lambda: array("q"))
    miss: str | None = None
    partial: str | None = None  # the recording served is not whole (its store_error)

    @property
    def finished(self) -> bool:
        """The client read the answer to its end (or to [DONE]) without leaving early."""
        return self.miss is None and (self.client_left_at_chunk is None or self.done_delivered)

    @property
    def broken(self) -> bool:
        return not self.finished or self.ending != Ending.CLEAN.value or self.status >= 400

    def line(self) -> str:
        target = f"exchange {self.exchange_id}" if self.exchange_id is not None else "no match"
        faults = f" [{' + '.join(self.applied)}]" if self.applied else ""
        if self.miss:
            how = self.miss
        elif self.client_left_at_chunk is not None and not self.done_delivered:
            left_s = (self.client_left_ns or 0) / 1e9
            how = (f"{self.delivered}/{self.total} chunks, the client left at chunk {self.client_left_at_chunk} "
                   f"({left_s:.3f}s)")
        else:
            how = f"{self.delivered}/{self.total} chunks, ended {self.ending}"
        retry = f", repeats #{self.retry_of} after it was cut (a retry)" if self.retry_of else ""
        partial = " (a PARTIAL recording: not all the upstream sent was stored)" if self.partial else ""
        return f"#{self.n} {self.method} {self.path} -> {target}{faults} {self.status}: {how}{retry}{partial}"


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
        self._serving: dict[str, Replayed] = {}  # as many as requests in flight
        self._broken: OrderedDict[str, int] = OrderedDict()

    def arrived(self, key: str, rec: Replayed) -> int | None:
        """The number of the request with `key` that `rec` repeats after it broke; `rec` is the key's last now."""
        previous = self._serving.get(key)
        self._serving[key] = rec
        last_broken = self._broken.pop(key, None)
        if previous is None:
            return last_broken
        # still being served: judged as it stands, since a client that gave up on it retries before it ends
        return previous.n if previous.broken else None

    def ended(self, key: str, rec: Replayed) -> None:
        if self._serving.get(key) is not rec:
            return  # a later request with this key arrived meanwhile: that one is the key's last
        del self._serving[key]
        if rec.broken:
            self._broken[key] = rec.n
            if len(self._broken) > self.max_keys:
                self._broken.popitem(last=False)


class ReplayServer(AppServer):
    """Serves recordings offline, byte-exact, on their recorded timing (scaled by `speed`).

    `async with ReplayServer("recordings/x.db", tape="t") as srv:` or, from sync code, `with ...`.
    """

    def __init__(
        self,
        source: str | Path | TapeSource,
        tape: str | None = None,
        speed: float = 1.0,
        faults: Iterable[Fault | str] = (),
        match: str = "key",
        ignore_fields: Iterable[str] = (),
        repeat: bool = True,
        upstream: str | None = None,
        record_db: str | None = None,
        prefix: str = "/v1",
        host: str = "127.0.0.1",
        port: int = 0,
        max_body: int = DEFAULT_MAX_BODY,
        log: Callable[[str], None] | None = None,
        keep_requests: int = DEFAULT_KEEP_REQUESTS,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        super().__init__(host, port)
        if speed < 0:
            raise ValueError("speed must be 0 (no waits) or more")
        if keep_requests < 0 or cache_bytes < 0:
            raise ValueError("keep_requests and cache_bytes must be 0 or more")
        if isinstance(source, (str, Path)):
            source = open_source(source, tape, cache_bytes)
        self.source = source
        self.speed = speed
        self.faults: list[Fault] = []
        for fault in faults:
            self.faults += parse_faults(fault) if isinstance(fault, str) else [fault]
        self.match = match
        self.ignore_fields = tuple(ignore_fields)
        self.repeat = repeat
        self.prefix = prefix.rstrip("/")
        self.max_body = max_body
        self.log = log
        self.index = Index(self.source.exchanges(), self.ignore_fields, match, repeat)
        #: the most recent `keep_requests` requests; `counts` has the totals over all of them
        self.requests: deque[Replayed] = deque(maxlen=keep_requests)
        self.counts = ReplayCounts()
        self._retries = RetryMemory()
        self._recorder: Any = None
        if upstream is not None:
            from streamreplay.proxy.recorder import RecordingProxy, RecordOptions

            db = record_db or str(getattr(self.source, "path", "recordings/streamreplay.db"))
            self._recorder = RecordingProxy(RecordOptions(upstream=upstream, db=db, tape=tape, log=log))

    @property
    def base_url(self) -> str:
        return f"{self.origin}{self.prefix}"

    def fault_url(self, spec: str) -> str:
        """The base_url that applies `spec` to every request, for clients that take nothing but a URL."""
        parse_faults(spec)
        return f"{self.origin}/fault/{spec}{self.prefix}"

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body, middlewares=[openai_errors])
        app.router.add_route("*", r"/{tail:[\s\S]*}", self.handle)  # newlines too: a %0A path is still ours to answer
        return app

    async def on_start(self) -> None:
        if self._recorder is not None:
            await self._recorder.on_start()

    async def on_stop(self) -> None:
        if self._recorder is not None:
            await self._recorder.on_stop()

    def unused(self) -> list[Any]:
        """Recorded exchanges no request has used."""
        return self.index.unused()

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
        if self.prefix and (path == self.prefix or path.startswith(self.prefix + "/")):
            path = path[len(self.prefix):]
        return path or "/", spec

    async def handle(self, request: web.Request) -> web.StreamResponse:
        arrived = asyncio.get_running_loop().time()
        refusal = refuse_request(request)
        self.counts.requests += 1
        rec = Replayed(self.counts.requests, request.method, request.path)
        self.requests.append(rec)
        if refusal is not None:
            return self._refuse(rec, refusal, "refused")
        rel, url_spec = self._split_path(request)
        rec.path = rel
        try:
            faults = self.faults + parse_faults(url_spec) + parse_faults(request.headers.get(FAULT_HEADER))
        except FaultSpecError as exc:
            return self._refuse(rec, openai_error(400, f"bad fault spec: {exc}", code="bad_fault_spec"), "bad fault")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(rec, openai_error(413, f"request body over {self.max_body} bytes",
                                                  code="body_too_large"), "too large")
        found = self.index.lookup(request.method, rel, body)
        if isinstance(found, Miss) and self._recorder is not None:
            return await self._record_miss(request, rec, rel, body, found)
        if isinstance(found, Miss):
            return self._miss(rec, found, body)
        rec.exchange_id = found.id
        rec.partial = found.store_error
        key = self.index.key(request.method, rel, body)
        rec.retry_of = self._retries.arrived(key, rec)
        self.counts.retries += rec.retry_of is not None
        try:
            schedule = recorded_schedule(found, self.source.chunks(found))
            schedule = convert_for_request(schedule, _wants_stream(body))
            schedule = apply_faults(schedule, faults)
            rec.applied = schedule.applied
            return await self.play(request, schedule, rec, arrived)
        finally:
            self._retries.ended(key, rec)
            self._report(rec)

    def _refuse(self, rec: Replayed, response: web.Response, why: str) -> web.Response:
        rec.status, rec.ending, rec.miss = response.status, "refused", why
        self._report(rec)
        return response

    def _miss(self, rec: Replayed, miss: Miss, body: bytes) -> web.Response:
        if body and _not_json(body):
            message = f"request body is not JSON ({body[:40]!r}...); {miss.reason}"
            return self._refuse(rec, openai_error(400, message, code="body_not_json"), message)
        rec.status, rec.ending, rec.miss = 404, "miss", miss.reason
        self._report(rec)
        return openai_error(404, miss.reason, code="no_recording_match")

    async def _record_miss(self, request: web.Request, rec: Replayed, rel: str, body: bytes,
                           miss: Miss) -> web.StreamResponse:
        rec.miss = f"recorded from upstream ({miss.reason.split(';')[0]})"
        rec.ending = "recorded"
        try:
            return await self._recorder.forward(request, rel, body)
        finally:
            self._report(rec)
            await self._recorder.settle()
            known = {ex.id for ex in self.index.exchanges}
            recorded = [ex for ex in self.source.exchanges() if ex.id not in known]
            self.index.add(recorded)
            rec.exchange_id = recorded[-1].id if recorded else None

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
                    rec.done_delivered = find_done(tail + piece.data)
                    tail = piece.data[-16:]
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


def _wants_stream(body: bytes) -> bool | None:
    payload = json_object(body)
    return bool(payload.get("stream")) if payload is not None else None


def _not_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return True
    return False


