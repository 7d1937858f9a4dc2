"""`streamreplay drift`: has the live API moved away from what a tape recorded?

Each recorded request (method, path, query, body) is sent to the live upstream again and both answers are
reduced to their shape (`Shape`): the status and content type, the event types in order (each dialect
names them, `Dialect.event_kind`: chat's `role`, `content`, `finish`, `usage`, `[DONE]`; the `type`s of
the Responses API and Anthropic; Ollama's `content` and `done` lines), the JSON field paths seen, the stop
reason, how the body ended, the chunk count and chunk sizes, the time to first byte and the typical gap
between chunks. `compare` says what differs, in words. The text itself is never compared or shown: two
answers that say different things in the same shape have not drifted.

Counts and timings are compared as ratios with an absolute floor (`Tolerance`), since a live answer is
never timed or cut into reads exactly as the recorded one was.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
from yarl import URL

from streamreplay.dialects import dialect_named
from streamreplay.exchange import Chunk, Exchange
from streamreplay.proxy.endings import classify_read_error, clean_end_cause, end_body_when_connection_drops
from streamreplay.redact import REDACTED
from streamreplay.replay.source import TapeSource, open_source
from streamreplay.summary import Decoder
from streamreplay.wire import forwardable

#: keys whose values are the answer's content, not its shape: a tool call's arguments (an object in
#: Ollama's wire, a tool_use block's `input` in Anthropic's) and user metadata. Their own keys are not
#: field paths, so a model that calls a tool with other arguments has not drifted.
CONTENT_KEYS = frozenset({"arguments", "input", "metadata"})
#: JSON nesting past which field paths are not followed (no API's answer nests this deep)
MAX_DEPTH = 32
#: seconds of upstream silence before a live answer is given up as upstream_timeout
DEFAULT_TIMEOUT = 120.0


class DriftError(Exception):
    """The check itself could not run (the upstream cannot be reached, the tape cannot be read)."""


@dataclass(frozen=True)
class Tolerance:
    """How far a live answer's numbers may move before it counts as drift: a value drifts when the larger
    of the two is more than `ratio` times the smaller AND they differ by at least the floor."""

    #: time to first byte and the typical (median) gap between chunks
    timing: float = 3.0
    #: a first byte that moves by less than this never drifts: it is one sample, and a busy machine or
    #: network delays one by tens of milliseconds now and then (1 ms vs 30 ms is noise, not drift)
    ttfb_floor_ms: float = 100.0
    #: a typical gap that moves by less than this never drifts (a median of many gaps: steadier)
    gap_floor_ms: float = 20.0
    #: chunk count and chunk sizes (p50, p90)
    count: float = 2.0
    #: a chunk count that moves by fewer chunks than this never drifts
    count_floor: int = 4
    #: a chunk size that moves by fewer bytes than this never drifts
    size_floor: int = 64

    def words(self) -> str:
        return (f"timing {self.timing:g}x (and {self.ttfb_floor_ms:g} ms first byte, {self.gap_floor_ms:g} ms gap), "
                f"chunks {self.count:g}x (and {self.count_floor} chunks, {self.size_floor} bytes)")


@dataclass
class Shape:
    """What an answer looks like, without what it says."""

    dialect: str
    status: int | None
    #: the media type, without parameters
    content_type: str | None
    stream: bool
    #: the event types in order, each run of one type as one entry (the number of content events is the
    #: length of the text, not the shape)
    events: list[str]
    #: every JSON field path seen, list indices collapsed: `choices[].delta.content`
    fields: list[str]
    #: in the provider's words (finish_reason, status, stop_reason, done_reason)
    stop_reason: str | None
    #: how the body ended: an EndCause value (complete, eof_without_done, upstream_closed, ...)
    ending: str | None
    chunk_count: int
    #: bytes per chunk (network read): p50, p90, max
    chunk_bytes: dict[str, int]
    ttfb_ms: float | None
    #: the median gap between chunks
    gap_ms: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Difference:
    """One way the live answer differs from the recorded one."""

    field: str
    recorded: Any
    live: Any
    words: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ExchangeDrift:
    """One recorded exchange, resent."""

    ref: str  # TAPE:SEQ
    method: str
    path: str
    model: str | None
    recorded: Shape
    live: Shape
    differences: list[Difference]

    @property
    def drifted(self) -> bool:
        return bool(self.differences)

    def lines(self) -> list[str]:
        head = f"{self.ref}  {self.method} {self.path}  {self.model or '-'}  "
        if not self.differences:
            return [head + "no drift"]
        return [head + f"DRIFTED ({len(self.differences)})", *(f"    {d.words}" for d in self.differences)]

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "method": self.method, "path": self.path, "model": self.model,
                "drifted": self.drifted, "differences": [d.to_json() for d in self.differences],
                "recorded": self.recorded.to_json(), "live": self.live.to_json()}


@dataclass
class DriftReport:
    tape: str | None
    upstream: str
    tolerance: Tolerance
    #: exchanges in the tape (the ones resent so far are `exchanges`)
    total: int = 0
    exchanges: list[ExchangeDrift] = field(default_factory=list)
    #: what the check could not send as recorded (secrets redacted at recording), said once
    notes: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return any(e.drifted for e in self.exchanges)

    def head(self) -> list[str]:
        what = f"tape {self.tape}" if self.tape else "every tape"
        return [f"drift: {what}, {_plural(self.total, 'exchange')} resent to {self.upstream}",
                f"tolerance: {self.tolerance.words()}", *(f"note: {n}" for n in self.notes)]

    def tail(self) -> str:
        drifted = sum(e.drifted for e in self.exchanges)
        if not drifted:
            return f"no drift in {_plural(len(self.exchanges), 'exchange')}"
        return f"{drifted} of {_plural(len(self.exchanges), 'exchange')} drifted"

    def lines(self) -> list[str]:
        return [*self.head(), *(line for e in self.exchanges for line in e.lines()), self.tail()]

    def to_json(self) -> dict[str, Any]:
        return {"tape": self.tape, "upstream": self.upstream, "tolerance": asdict(self.tolerance),
                "drifted": self.drifted, "notes": self.notes, "exchanges": [e.to_json() for e in self.exchanges]}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


# -- the shape of an answer ---------------------------------------------------------------------------------


def shape_of(exchange: Exchange, chunks: list[Chunk]) -> Shape:
    """The shape of an exchange's answer, read in its dialect's terms from its chunks (as recorded, or as
    `fetch_live` read them)."""
    dialect = exchange.dialect
    content_type = exchange.response_header("Content-Type")
    decoder = Decoder(exchange.response_header("Content-Encoding"))
    body = b"".join(decoder.feed(c.data) for c in chunks)
    media = (content_type or "").split(";", 1)[0].strip().lower() or None
    if dialect.is_stream(content_type):
        stream = True
    elif "json" in (media or ""):
        stream = False
    else:
        stream = bool(body) and dialect.looks_like_stream(body[:64])
    kinds: list[str] = []
    paths: set[str] = set()
    if stream:
        parser, assembler = dialect.parser(), dialect.assembler()
        for event in parser.feed(body) + parser.close():
            kind = dialect.event_kind(event)
            if not kinds or kinds[-1] != kind:
                kinds.append(kind)
            paths |= field_paths(_json(event.data))
            assembler.feed_event(event)
        stop = assembler.result().finish_reason
    else:
        paths = field_paths(_json(body)) if body else set()
        stop = dialect.assemble_json(body).finish_reason if body else None
    sizes = sorted(len(c.data) for c in chunks)
    times = [c.t_ns for c in chunks]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    ending = exchange.upstream_end or exchange.end_cause
    return Shape(
        dialect=dialect.name, status=exchange.status, content_type=media, stream=stream, events=kinds,
        fields=sorted(paths), stop_reason=stop, ending=str(getattr(ending, "value", ending)) if ending else None,
        chunk_count=len(chunks),
        chunk_bytes={"p50": _percentile(sizes, 50), "p90": _percentile(sizes, 90), "max": sizes[-1] if sizes else 0},
        ttfb_ms=None if exchange.ttfb_ns is None else exchange.ttfb_ns / 1e6,
        gap_ms=statistics.median(gaps) / 1e6 if gaps else None,
    )


def _json(data: str | bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def field_paths(value: Any, prefix: str = "", depth: int = 0) -> set[str]:
    """Every key path in a JSON value, `[]` standing for any list index: `choices[].delta.content`. The
    keys under CONTENT_KEYS are content, not shape: the path stops at them, and at MAX_DEPTH (a recording
    holds whatever an upstream sent, however deep)."""
    found: set[str] = set()
    if depth >= MAX_DEPTH:
        return found
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            found.add(path)
            if key not in CONTENT_KEYS:
                found |= field_paths(item, path, depth + 1)
    elif isinstance(value, list):
        for item in value:
            found |= field_paths(item, f"{prefix}[]", depth + 1)
    return found


def _percentile(ordered: list[int], pct: int) -> int:
    """Nearest rank: a size that some chunk had."""
    if not ordered:
        return 0
    return ordered[max(0, -(-pct * len(ordered) // 100) - 1)]


# -- comparing two shapes -----------------------------------------------------------------------------------


def compare(recorded: Shape, live: Shape, tolerance: Tolerance | None = None) -> list[Difference]:
    """How `live` differs from `recorded`, each difference with both values and a sentence; empty when the
    live answer has the recorded shape within `tolerance`."""
    tol = tolerance or Tolerance()
    out: list[Difference] = []

    def differs(name: str, words: str, before: Any, after: Any) -> None:
        if before != after:
            out.append(Difference(name, before, after, f"{words}: {_show(before)} -> {_show(after)}"))

    differs("status", "status", recorded.status, live.status)
    differs("content_type", "content type", recorded.content_type, live.content_type)
    differs("stream", "streamed", recorded.stream, live.stream)
    if recorded.events != live.events:
        added = [k for k in dict.fromkeys(live.events) if k not in recorded.events]
        gone = [k for k in dict.fromkeys(recorded.events) if k not in live.events]
        said = [f"added: {', '.join(added)}"] if added else []
        said += [f"gone: {', '.join(gone)}"] if gone else []
        words = ("event types " + "; ".join(said)) if said else (
            f"event order: {' '.join(recorded.events)} -> {' '.join(live.events)}")
        out.append(Difference("events", recorded.events, live.events, words))
    added_fields = sorted(set(live.fields) - set(recorded.fields))
    gone_fields = sorted(set(recorded.fields) - set(live.fields))
    if added_fields:
        out.append(Difference("fields_added", None, added_fields, f"fields added: {', '.join(added_fields)}"))
    if gone_fields:
        out.append(Difference("fields_gone", gone_fields, None, f"fields gone: {', '.join(gone_fields)}"))
    stop_field = dialect_named(recorded.dialect).stop_field
    # the Responses API's `status` is read into chat's words (stop, length): not an HTTP status, so named as such
    differs("stop_reason", stop_field if stop_field.endswith("reason") else "stop reason", recorded.stop_reason,
            live.stop_reason)
    differs("ending", "ending", recorded.ending, live.ending)

    def beyond(name: str, words: str, before: float | None, after: float | None, ratio: float, floor: float,
               unit: str) -> None:
        if before is None or after is None or abs(after - before) < floor:
            return
        low, high = sorted((before, after))
        if high <= ratio * low:
            return
        times = f"{high / low:.1f}x" if low else "from none"
        out.append(Difference(name, before, after, f"{words}: {_number(before)} -> {_number(after)}{unit} ({times}; "
                                                   f"tolerance {ratio:g}x and {floor:g}{unit})"))

    beyond("chunk_count", "chunks", recorded.chunk_count, live.chunk_count, tol.count, tol.count_floor, "")
    for pct in ("p50", "p90"):
        beyond(f"chunk_bytes_{pct}", f"chunk size {pct}", recorded.chunk_bytes.get(pct), live.chunk_bytes.get(pct),
               tol.count, tol.size_floor, " bytes")
    beyond("ttfb_ms", "time to first byte", recorded.ttfb_ms, live.ttfb_ms, tol.timing, tol.ttfb_floor_ms, " ms")
    beyond("gap_ms", "typical gap", recorded.gap_ms, live.gap_ms, tol.timing, tol.gap_floor_ms, " ms")
    return out


def _number(value: float) -> str:
    return f"{value:.1f}" if 0 < abs(value) < 10 and value != int(value) else f"{value:.0f}"


def _show(value: Any) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


# -- resending -----------------------------------------------------------------------------------------------


@dataclass
class Request:
    """What is sent again for one recorded exchange."""

    method: str
    url: URL
    headers: list[tuple[str, str]]
    body: bytes
    #: recorded header names whose value was redacted and that nothing replaced
    unsent_headers: list[str]
    #: recorded query parameters that were redacted, left out
    unsent_query: list[str]
    #: body fields sent as "[redacted]" (what the recording hid and no setting replaced)
    redacted_fields: list[str]


def request_for(exchange: Exchange, upstream: str, headers: Iterable[tuple[str, str]] = (),
                settings: Mapping[str, Any] | None = None) -> Request:
    """The recorded request, addressed to `upstream`: headers whose value was redacted left out and the
    given ones added (replacing any of the same name), redacted query parameters left out, and the body's
    fields set as `settings` says (dotted paths; only for a JSON object body)."""
    given = list(headers)
    replaced = {name.lower() for name, _ in given}
    kept, unsent = [], []
    for name, value in forwardable(((k, v) for k, v in exchange.request_headers),
                                   drop=("host", "content-length", "accept-encoding")).items():
        if name.lower() in replaced:
            continue
        if value == REDACTED:
            unsent.append(name)
            continue
        kept.append((name, value))
    # the stored bytes must be what the upstream says, so nothing is compressed on the way (as recording)
    sent = [*kept, *given, ("Accept-Encoding", "identity")]
    query, pairs = exchange.query, parse_qsl(exchange.query, keep_blank_values=True)
    unsent_query = [k for k, v in pairs if v == REDACTED]
    if unsent_query:  # re-encoded only then: otherwise the query goes as it was recorded
        query = urlencode([(k, v) for k, v in pairs if v != REDACTED])
    body = exchange.request_body
    if settings:
        body = apply_settings(body, settings)
    target = URL(upstream.rstrip("/") + exchange.path + (f"?{query}" if query else ""))
    return Request(exchange.method, target, sent, body, unsent, unsent_query, _redacted_fields(body))


def _redacted_fields(body: bytes) -> list[str]:
    found: list[str] = []

    def walk(value: Any, path: str) -> None:
        if value == REDACTED:
            found.append(path)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list):
            for item in value:
                walk(item, f"{path}[]")

    walk(_json(body) if body else None, "")
    return found


def apply_settings(body: bytes, settings: Mapping[str, Any]) -> bytes:
    """A JSON object body with each dotted path set to its value (objects made on the way); any other body
    as it is, since there is no field to set."""
    obj = _json(body) if body else None
    if not isinstance(obj, dict):
        return body
    for path, value in settings.items():
        target = obj
        *parents, last = path.split(".")
        for key in parents:
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target = target[key]
        target[last] = value
    return json.dumps(obj, ensure_ascii=False).encode()


async def fetch_live(session: aiohttp.ClientSession, exchange: Exchange, request: Request) -> tuple[Exchange,
                                                                                                     list[Chunk]]:
    """Send `request` and read the answer read by read, timed as the recorder times them (from the moment
    the request is sent); the answer as an Exchange (status, headers, TTFB, how it ended) and its chunks.

    Raises DriftError when the upstream cannot be reached at all."""
    live = Exchange(id=exchange.id, tape=exchange.tape, seq=exchange.seq, method=request.method,
                    path=exchange.path, query=exchange.query)
    chunks: list[Chunk] = []
    t0 = time.perf_counter_ns()
    try:
        response = await session.request(request.method, request.url, data=request.body or None,
                                         headers=request.headers, allow_redirects=False)
    except aiohttp.ClientConnectorError as exc:
        raise DriftError(f"cannot reach the upstream {_safe_url(str(request.url))}: {exc.os_error}") from exc
    except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
        live.end_cause = classify_read_error(exc, None)
        live.end_detail = type(exc).__name__
        return live, chunks
    live.status = response.status
    live.response_headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in response.raw_headers]
    live.headers_ns = time.perf_counter_ns() - t0
    protocol = response.connection.protocol if response.connection else None
    end_body_when_connection_drops(response, protocol)
    try:
        while data := await response.content.readany():
            now = time.perf_counter_ns() - t0
            if live.ttfb_ns is None:
                live.ttfb_ns = now
            chunks.append(Chunk(len(chunks), now, data))
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
        live.end_cause = classify_read_error(exc, protocol)
    else:
        decoder = Decoder(live.response_header("Content-Encoding"))
        said = b"".join(decoder.feed(c.data) for c in chunks)
        live.done = live.dialect.find_terminal(said)
        live.end_cause = clean_end_cause(response.status, live.dialect.is_stream(live.response_header("Content-Type")),
                                         live.done)
    finally:
        response.release()
    live.duration_ns = time.perf_counter_ns() - t0
    live.chunk_count, live.byte_count = len(chunks), sum(len(c.data) for c in chunks)
    return live, chunks


def _safe_url(url: str) -> str:
    """A URL to show: no user info, no query (either may carry a key)."""
    parsed = URL(url).with_query(None)
    if parsed.absolute:
        return str(parsed.with_user(None))
    # no host (`127.0.0.1:8080`, `http:///v1`): yarl keeps no user info apart, so drop whatever is before an @
    return str(parsed).rpartition("@")[2]


async def drift(source: str | Path | TapeSource, tape: str | None, upstream: str,
                headers: Iterable[tuple[str, str]] = (), tolerance: Tolerance | None = None,
                settings: Mapping[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT,
                on_start: Callable[[DriftReport], None] | None = None,
                on_exchange: Callable[[ExchangeDrift], None] | None = None) -> DriftReport:
    """Resend each exchange of `tape` (in `source`: a DB, a cassette, or a TapeSource) to `upstream`, one at
    a time in recorded order, and compare each live answer's shape with the recorded one.

    `headers` are sent with every request (the secrets the recording redacted: they are never shown);
    `settings` sets body fields (`{"max_tokens": 8}`) to see what a change of settings or model does to the
    answers' shape. `on_start` is called once the requests are made (the report's head is known), `on_exchange`
    as each exchange is done."""
    target = URL(upstream.rstrip("/"))
    if target.scheme not in ("http", "https") or not target.host:
        raise ValueError(f"--upstream must be an http(s) URL, got {_safe_url(upstream)!r}")
    if not isinstance(source, (str, Path)):
        tape_source = source
    else:
        try:
            tape_source = open_source(source, tape)
        except (FileNotFoundError, LookupError) as exc:
            raise DriftError(str(exc).strip("'\"")) from exc
    tape = getattr(tape_source, "tape", None) or tape
    exchanges = tape_source.exchanges()
    headers = list(headers)
    requests = [request_for(exchange, upstream, headers, settings) for exchange in exchanges]
    report = DriftReport(tape, _safe_url(upstream), tolerance or Tolerance(), total=len(exchanges))
    report.notes = _notes(requests)
    if on_start:
        on_start(report)
    async with aiohttp.ClientSession(
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=timeout),
    ) as session:
        for exchange, request in zip(exchanges, requests, strict=True):
            live, live_chunks = await fetch_live(session, exchange, request)
            recorded = shape_of(exchange, tape_source.chunks(exchange))
            now = shape_of(live, live_chunks)
            result = ExchangeDrift(f"{exchange.tape}:{exchange.seq}", exchange.method, exchange.path, exchange.model,
                                   recorded, now, compare(recorded, now, report.tolerance))
            report.exchanges.append(result)
            if on_exchange:
                on_exchange(result)
    return report


def _notes(requests: list[Request]) -> list[str]:
    """What could not be sent as recorded, said once for the whole tape (names only, never values)."""
    headers = dict.fromkeys(h for r in requests for h in r.unsent_headers)
    query = dict.fromkeys(q for r in requests for q in r.unsent_query)
    fields = dict.fromkeys(f for r in requests for f in r.redacted_fields)
    notes = []
    if headers:
        notes.append(f"sent without the headers the recording redacted: {', '.join(headers)} "
                     "(give them with --header 'Name: value')")
    if query:
        notes.append(f"sent without the query parameters the recording redacted: {', '.join(query)}")
    if fields:
        notes.append(f"body fields sent as {REDACTED}: {', '.join(fields)} (set them with --set)")
    return notes
