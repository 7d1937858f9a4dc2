"""What a request no recording matches gets: the replay server's `on_miss` policy.

`NotFound` answers OpenAI's 404 JSON, naming the recording that came closest and the field that differs
(VCR's `none` record mode). `RecordFromUpstream` forwards the miss to an upstream through a recording
proxy of its own and stores it; once committed, the exchange joins the index and is served like any
recording (VCR's `new_episodes`). The server only calls the policy: it knows no recorder.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from streamreplay.endcause import EndCause
from streamreplay.replay.source import DEFAULT_CACHE_BYTES, StoreSource, TapeSource
from streamreplay.store import Chunk, Exchange
from streamreplay.wire import openai_error

if TYPE_CHECKING:
    from aiohttp import web

    from streamreplay.proxy.recorder import RecordingProxy
    from streamreplay.replay.matching import Index, Miss
    from streamreplay.replay.replayed import Replayed
    from streamreplay.replay.request import IncomingRequest

__all__ = ["ON_MISS", "NotFound", "OnMiss", "RecordFromUpstream"]

#: the policies `on_miss` names: OpenAI's 404 JSON, or the upstream's answer, recorded
ON_MISS = ("404", "record")
#: seconds a recorded miss may take to be committed before the requests waiting for it stop waiting
RECORD_SETTLE_TIMEOUT = 30.0


class OnMiss:
    """A miss policy. The server binds it once to its index, its source and its request log, runs its
    `start`/`stop`/`settle` with its own, awaits `pending` before it looks a request up, and hands it each
    request the index misses (`answer`), which logs that request (`report`) once its answer is known."""

    name: ClassVar[str] = ""

    index: Index
    source: TapeSource
    report: Callable[[Replayed], None]

    def bind(self, index: Index, source: TapeSource, report: Callable[[Replayed], None]) -> None:
        self.index, self.source, self.report = index, source, report

    async def start(self) -> None:
        """On the server's loop, before it listens."""

    async def stop(self) -> None:
        """After the server stopped listening and its requests finished."""

    async def settle(self) -> None:
        """Return once every miss answered so far is done with (recorded and indexed, say)."""

    async def pending(self, request: IncomingRequest) -> None:
        """Return once no request identical to `request` is being answered by this policy: one that is
        may yet become a recording that answers `request` too."""

    def chunks(self, ex: Exchange) -> list[Chunk] | None:
        """The chunks of an exchange this policy added to the index; None for the source's own."""
        return None

    async def answer(self, request: IncomingRequest, miss: Miss, rec: Replayed) -> web.StreamResponse:
        """The answer to a request the index missed (`miss` says why); `rec` is the request's record."""
        raise NotImplementedError


class NotFound(OnMiss):
    """OpenAI's 404 JSON with the miss's account; a 400 when the body is not JSON (the likelier fault)."""

    name = "404"

    async def answer(self, request: IncomingRequest, miss: Miss, rec: Replayed) -> web.StreamResponse:
        if request.body and not request.is_json:
            cut = "..." if len(request.body) > 40 else ""  # say it was cut only when it was
            message = f"request body is not JSON ({request.body[:40]!r}{cut}); {miss.reason}"
            response = openai_error(400, message, code="body_not_json")
            rec.status, rec.ending, rec.miss = 400, "refused", message
        else:
            response = openai_error(404, miss.reason, code="no_recording_match")
            rec.status, rec.ending, rec.miss = 404, "miss", miss.reason
        self.report(rec)
        return response


class RecordFromUpstream(OnMiss):
    """Forward a miss to `upstream` while recording it into `db` (default: the DB played), on `tape`.

    Once the exchange is committed it joins the index and is served like any recording; an identical
    request that arrives meanwhile waits for it rather than going upstream again. The request's line is
    logged once its exchange is in the index (or known not to be coming). `errors` gets a line each time
    storing fails; `cache_bytes` bounds the chunk cache of `db` when it is not the DB played.
    """

    name = "record"

    def __init__(self, upstream: str, db: str | Path | None = None, tape: str | None = None,
                 errors: Callable[[str], None] | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.upstream = upstream
        self.db = db
        self.tape = tape
        self.errors = errors
        self.cache_bytes = cache_bytes
        self._recorder: RecordingProxy | None = None
        self._db: Path | None = None
        #: where the chunks of the exchanges recorded here are read (the source itself when it is that DB)
        self._record_source: TapeSource | None = None
        self._recorded_here: set[int] = set()  # id() of each Exchange recorded by this policy
        #: the key of each miss being recorded now -> done once its exchange is in the index (or is known
        #: not to be coming); identical requests wait for it
        self._recording: dict[Hashable, asyncio.Future[None]] = {}
        self._awaiting: dict[Hashable, Replayed] = {}  # the same keys: the request whose line waits for its exchange
        self._settling: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, index: Index, source: TapeSource, report: Callable[[Replayed], None]) -> None:
        super().bind(index, source, report)
        from streamreplay.proxy.recorder import RecordingProxy, RecordOptions

        if self.db is None and not isinstance(source, StoreSource):
            raise ValueError(f"recording misses needs a DB, and {getattr(source, 'path', 'the source')} is "
                             "not one: import the cassette into a DB (streamreplay import), or give record_db")
        self._db = Path(self.db) if self.db is not None else Path(source.path)  # type: ignore[attr-defined]
        # the recorder says nothing per exchange: the server logs one line per request, the recorded ones
        # included; storing failures still reach `errors`
        self._recorder = RecordingProxy(RecordOptions(upstream=self.upstream, db=str(self._db), tape=self.tape,
                                                      errors=self.errors))

    @property
    def recorder(self) -> RecordingProxy:
        if self._recorder is None:
            raise RuntimeError("RecordFromUpstream is used before a server bound it")
        return self._recorder

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.recorder.on_start()
        # the writer calls this with each exchange once committed (instead of the recorder's own log line)
        self.recorder.writer.on_end = self._committed
        source = self.source
        same_db = isinstance(source, StoreSource) and _same_file(source.path, self._db)
        self._record_source = source if same_db else StoreSource(self._db, None, self.cache_bytes)  # type: ignore[arg-type]

    async def stop(self) -> None:
        await self.recorder.on_stop()  # every exchange committed, and its `_committed` call queued to this loop
        await asyncio.sleep(0)
        if self._settling:
            await asyncio.wait(set(self._settling), timeout=RECORD_SETTLE_TIMEOUT)

    async def settle(self) -> None:
        while self._settling:
            await asyncio.wait(set(self._settling))

    async def pending(self, request: IncomingRequest) -> None:
        while (recording := self._recording.get(request.key)) is not None:
            # an identical request is being recorded: it is served from that recording once stored
            await asyncio.wait([recording])

    def chunks(self, ex: Exchange) -> list[Chunk] | None:
        if id(ex) in self._recorded_here and self._record_source is not None:
            return self._record_source.chunks(ex)
        return None

    async def answer(self, request: IncomingRequest, miss: Miss, rec: Replayed) -> web.StreamResponse:
        """Forward the miss while the recorder stores it. Its line is logged, and identical requests let
        go, once its exchange is committed and in the index (`_add_recorded`), which may be after this
        handler ended or was cancelled (the client closed as soon as it had the answer)."""
        assert request.http is not None, "a miss is forwarded as the HTTP request it came as"
        key = request.key
        done = self._recording[key] = asyncio.get_running_loop().create_future()
        self._awaiting[key] = rec
        rec.ending, rec.recorded = "recorded", ""
        try:
            response = await self.recorder.forward(request.http, request.path, request.body)
            rec.status = rec.status or response.status
            return response
        finally:
            task = asyncio.ensure_future(self._settle_recording(key, rec, done))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    def _committed(self, row: dict[str, Any]) -> None:
        """On the store's writer thread: an exchange the recorder committed, handed to the server's loop."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server has stopped
                loop.call_soon_threadsafe(self._add_recorded, Exchange.from_row(row))

    def _add_recorded(self, ex: Exchange) -> None:
        """A recorded exchange joins the index, its chunks the cache; the request that recorded it is logged."""
        self._recorded_here.add(id(ex))
        self.chunks(ex)
        self.index.add([ex])
        key = self.index.key_of(ex)
        rec = self._awaiting.pop(key, None)
        if rec is not None:
            rec.exchange_id, rec.status, rec.recorded = ex.id, ex.status or rec.status, ex.end_cause or "?"
            rec.total = ex.chunk_count
            rec.delivered = ex.chunk_count if ex.client_left_at_chunk is None else ex.client_left_at_chunk
            rec.client_left_at_chunk, rec.client_left_ns = ex.client_left_at_chunk, ex.client_left_ns
            rec.done_delivered = ex.client_left_at_chunk is not None and ex.end_cause != EndCause.CLIENT_LEFT
            rec.partial = ex.store_error
            self.report(rec)
        self._release(key)

    async def _settle_recording(self, key: Hashable, rec: Replayed, done: asyncio.Future[None]) -> None:
        """Once the recorder has committed all it had: a request whose exchange did not come (it was not
        stored, or not under this request's key) is logged as such, and its identical requests let go."""
        try:
            await self.recorder.settle(RECORD_SETTLE_TIMEOUT)
        finally:
            if self._awaiting.get(key) is rec:
                del self._awaiting[key]
                self.report(rec)
            if self._recording.get(key) is done:
                self._release(key)

    def _release(self, key: Hashable) -> None:
        done = self._recording.pop(key, None)
        if done is not None and not done.done():
            done.set_result(None)


def _same_file(a: str | Path, b: str | Path | None) -> bool:
    try:
        return b is not None and Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False
