"""The replay server: matches each request to a recording and writes its schedule on time."""

from __future__ import annotations

import asyncio
import contextlib
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
from streamreplay.replay.source import DEFAULT_CACHE_BYTES, StoreSource, TapeSource, open_source
from streamreplay.requestkey import json_object
from streamreplay.serving import AppServer
from streamreplay.sse import find_done
from streamreplay.store import Chunk, Exchange
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
#: what a request no recording matches gets: OpenAI's 404 JSON, or the upstream's answer, recorded
ON_MISS = ("404", "record")
#: seconds a recorded miss may take to be committed before the requests waiting for it stop waiting
RECORD_SETTLE_TIMEOUT = 30.0


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
    #: a miss forwarded to the upstream (on_miss="record"): how its recording ended (an end cause), or
    #: "" while it is not in the index (not stored, or stored under another request key)
    recorded: str | None = None

    @property
    def finished(self) -> bool:
        """The client read the answer to its end (or to [DONE]) without leaving early."""
        return self.miss is None and (self.client_left_at_chunk is None or self.done_delivered)

    @property
    def broken(self) -> bool:
        return not self.finished or self.ending != Ending.CLEAN.value or self.status >= 400

    def line(self) -> str:
        if self.exchange_id is not None:
            target = f"exchange {self.exchange_id}"
        else:
            target = "refused" if self.ending == "refused" else "no match"
        faults = f" [{' + '.join(self.applied)}]" if self.applied else ""
        if self.recorded is not None:
            if self.exchange_id is not None:
                target = f"upstream, recorded as exchange {self.exchange_id}"
                how = f"{self.delivered}/{self.total} chunks, ended {self.recorded}"
            else:
                target = "upstream"
                how = "forwarded, but its recording never joined the index (see any storing errors above)"
        elif self.miss:
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

    A request no recording matches gets OpenAI's 404 JSON (`on_miss="404"`), or, with
    `on_miss="record"` and an `upstream` (`upstream=URL` alone means the same), is forwarded there and
    recorded into the DB played (or `record_db`), on the tape played. Once that exchange is committed it
    joins the index and is served like any recording; an identical request that arrives meanwhile waits
    for it rather than going upstream again.
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
        on_miss: str | None = None,
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
        self._cache_bytes = cache_bytes
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
        self.on_miss = on_miss or ("record" if upstream is not None else "404")
        if self.on_miss not in ON_MISS:
            raise ValueError(f"on_miss must be one of {', '.join(ON_MISS)}, not {self.on_miss!r}")
        if (self.on_miss == "record") != (upstream is not None):
            raise ValueError("on_miss='record' needs an upstream, and an upstream is only used to record misses")
        self.upstream = upstream
        self._recorder: Any = None
        self._record_db: Path | None = None
        #: where the chunks of the exchanges this server recorded are read (the source itself when it is that DB)
        self._record_source: TapeSource | None = None
        self._recorded_here: set[int] = set()  # id() of each Exchange recorded by this server
        #: the request key of each miss being recorded now -> done once its exchange is in the index (or is
        #: known not to be coming); identical requests wait for it
        self._recording: dict[str, asyncio.Future[None]] = {}
        self._awaiting: dict[str, Replayed] = {}  # the same keys: the request whose log line waits for its exchange
        self._settling: set[asyncio.Task[None]] = set()
        self._loop_of_server: asyncio.AbstractEventLoop | None = None
        if self.on_miss == "record":
            from streamreplay.proxy.recorder import RecordingProxy, RecordOptions

            if record_db is None and not isinstance(self.source, StoreSource):
                raise ValueError(f"recording misses needs a DB, and {getattr(self.source, 'path', 'the source')} is "
                                 "not one: import the cassette into a DB (streamreplay import), or give record_db")
            self._record_db = Path(record_db) if record_db is not None else Path(self.source.path)  # type: ignore[attr-defined]
            # the recorder says nothing per exchange: this server logs one line per request, the recorded
            # ones included; storing failures still reach the log
            options = RecordOptions(upstream=upstream, db=str(self._record_db), tape=tape, errors=log)
            self._recorder = RecordingProxy(options)

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
        if self._recorder is None:
            return
        self._loop_of_server = asyncio.get_running_loop()
        await self._recorder.on_start()
        # the writer calls this with each exchange once committed (instead of the recorder's own log line)
        self._recorder.writer.on_end = self._committed
        same_db = isinstance(self.source, StoreSource) and _same_file(self.source.path, self._record_db)
        self._record_source = self.source if same_db else StoreSource(self._record_db, None, self._cache_bytes)

    async def on_stop(self) -> None:
        if self._recorder is None:
            return
        await self._recorder.on_stop()  # every exchange committed, and its `_committed` call queued to this loop
        await asyncio.sleep(0)
        if self._settling:
            await asyncio.wait(set(self._settling), timeout=RECORD_SETTLE_TIMEOUT)

    async def settle(self) -> None:
        """Wait until every miss forwarded so far is recorded and in the index (or known not to be)."""
        while self._settling:
            await asyncio.wait(set(self._settling))

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
            return self._refuse(rec, openai_error(400, f"bad fault spec: {exc}", code="bad_fault_spec"),
                                f"bad fault spec: {exc}")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(rec, openai_error(413, f"request body over {self.max_body} bytes",
                                                  code="body_too_large"), "too large")
        key = self.index.key(request.method, rel, body)
        while (recording := self._recording.get(key)) is not None:
            # an identical request is being recorded: it is served from that recording once stored
            await asyncio.wait([recording])
        found = self.index.lookup(request.method, rel, body, key)
        if isinstance(found, Miss) and self._recorder is not None:
            return await self._record_miss(request, rec, rel, body, key)
        if isinstance(found, Miss):
            return self._miss(rec, found, body)
        rec.exchange_id = found.id
        rec.partial = found.store_error
        rec.retry_of = self._retries.arrived(key, rec)
        self.counts.retries += rec.retry_of is not None
        try:
            schedule = recorded_schedule(found, self._chunks(found))
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

    # -- misses recorded from the upstream (on_miss="record") ----------------------------------------

    async def _record_miss(self, request: web.Request, rec: Replayed, rel: str, body: bytes,
                           key: str) -> web.StreamResponse:
        """Forward a miss to the upstream while the recorder stores it. Its line is logged, and identical
        requests are let go, once its exchange is committed and in the index (`_add_recorded`), which may
        be after this handler ended or was cancelled (the client closed as soon as it had the answer)."""
        done = self._recording[key] = asyncio.get_running_loop().create_future()
        self._awaiting[key] = rec
        rec.ending, rec.recorded = "recorded", ""
        try:
            response = await self._recorder.forward(request, rel, body)
            rec.status = rec.status or response.status
            return response
        finally:
            task = asyncio.ensure_future(self._settle_recording(key, rec, done))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    def _committed(self, row: dict[str, Any]) -> None:
        """On the store's writer thread: an exchange the recorder committed, handed to the server's loop."""
        loop = self._loop_of_server
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server has stopped
                loop.call_soon_threadsafe(self._add_recorded, Exchange.from_row(row))

    def _add_recorded(self, ex: Exchange) -> None:
        """A recorded exchange joins the index, its chunks the cache; the request that recorded it is logged."""
        self._recorded_here.add(id(ex))
        self._chunks(ex)
        self.index.add([ex])
        key = self.index.key(ex.method, ex.path, ex.request_body)
        rec = self._awaiting.pop(key, None)
        if rec is not None:
            rec.exchange_id, rec.status, rec.recorded = ex.id, ex.status or rec.status, ex.end_cause or "?"
            rec.total = ex.chunk_count
            rec.delivered = ex.chunk_count if ex.client_left_at_chunk is None else ex.client_left_at_chunk
            rec.client_left_at_chunk, rec.client_left_ns = ex.client_left_at_chunk, ex.client_left_ns
            rec.done_delivered = ex.client_left_at_chunk is not None and ex.end_cause != "client_left"
            rec.partial = ex.store_error
            self._report(rec)
        self._release(key)

    async def _settle_recording(self, key: str, rec: Replayed, done: asyncio.Future[None]) -> None:
        """Once the recorder has committed all it had: a request whose exchange did not come (it was not
        stored, or not under this request's key) is logged as such, and its identical requests let go."""
        try:
            await self._recorder.settle(RECORD_SETTLE_TIMEOUT)
        finally:
            if self._awaiting.get(key) is rec:
                del self._awaiting[key]
                self._report(rec)
            if self._recording.get(key) is done:
                self._release(key)

    def _release(self, key: str) -> None:
        done = self._recording.pop(key, None)
        if done is not None and not done.done():
            done.set_result(None)

    def _chunks(self, ex: Exchange) -> list[Chunk]:
        if id(ex) in self._recorded_here and self._record_source is not None:
            return self._record_source.chunks(ex)
        return self.source.chunks(ex)

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


def _same_file(a: str | Path, b: str | Path | None) -> bool:
    try:
        return b is not None and Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _wants_stream(body: bytes) -> bool | None:
    payload = json_object(body)
    return bool(payload.get("stream")) if payload is not None else None


def _not_json(body: bytes) -> bool:
    try:
        json.loads(body)
    except ValueError:
        return True
    return False


