"""The chunk schedule: what replay writes, when, and how it ends. Faults transform it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from streamreplay.dialects import CHAT, Dialect, dialect_for
from streamreplay.endcause import Ending, wire_ending
from streamreplay.store import Chunk, Exchange
from streamreplay.wire import forwardable

#: recorded response headers replay does not repeat besides the hop-by-hop ones: the framing is replay's own
NOT_REPLAYED = ("date", "content-length")


@dataclass
class Piece:
    """One write: bytes at `t_ns` of recorded time (scaled by speed) plus `extra_ns` of wall time
    (added by faults such as stall, which must stall even at speed 0)."""

    t_ns: int
    data: bytes
    extra_ns: int = 0


@dataclass
class Schedule:
    status: int
    headers: list[tuple[str, str]]
    pieces: list[Piece]
    ending: Ending
    head_ns: int = 0
    head_extra_ns: int = 0
    #: what was done to the recording on the way, for the log: fault specs, conversions
    applied: list[str] = field(default_factory=list)
    #: the wire format of the body: what faults that rewrite events rewrite
    dialect: Dialect = CHAT

    @property
    def body(self) -> bytes:
        return b"".join(p.data for p in self.pieces)

    def copy(self, **changes: object) -> Schedule:
        fresh: dict[str, object] = {"pieces": list(self.pieces), "applied": list(self.applied), **changes}
        return replace(self, **fresh)  # type: ignore[arg-type]

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def set_header(self, name: str, value: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()] + [(name, value)]


def recorded_ending(ex: Exchange) -> Ending:
    """The wire ending the upstream gave. A client that left does not change it: replay gives what
    the upstream sent, and the client may leave again."""
    if ex.response_header("x-streamreplay-error"):
        return Ending.CLEAN  # the proxy's own error answer (unreachable, timeout before headers)
    return wire_ending(ex.upstream_end or ex.end_cause)


def recorded_schedule(ex: Exchange, chunks: list[Chunk]) -> Schedule:
    # the live relay's own filter, so replay leaves out what the client never got
    headers = list(forwardable(ex.response_headers, drop=NOT_REPLAYED).items())
    return Schedule(
        status=ex.status or 502,
        headers=headers,
        pieces=[Piece(c.t_ns, c.data) for c in chunks],
        ending=recorded_ending(ex),
        head_ns=ex.headers_ns or (chunks[0].t_ns if chunks else 0),
        dialect=dialect_for(ex.path),
    )


def is_event_stream(schedule: Schedule) -> bool:
    return schedule.dialect.is_stream(schedule.header("content-type"))


def as_completion(schedule: Schedule, whole: dict) -> Schedule:
    """A streamed recording answered as the whole JSON answer a non-stream call gets."""
    body = json.dumps(whole).encode()
    last = schedule.pieces[-1].t_ns if schedule.pieces else schedule.head_ns
    out = schedule.copy(pieces=[Piece(last, body)], head_ns=last)
    out.set_header("Content-Type", "application/json")
    out.applied.append("stream->json")
    return out


def as_stream(schedule: Schedule, events: list[bytes]) -> Schedule:
    """A non-stream recording answered as a stream: events spread from the head to the answer's time."""
    start = schedule.head_ns
    end = schedule.pieces[-1].t_ns if schedule.pieces else start
    step = (end - start) // max(len(events) - 1, 1)
    out = schedule.copy(pieces=[Piece(start + i * step, e) for i, e in enumerate(events)])
    out.set_header("Content-Type", schedule.dialect.stream_content_type +
                   ("; charset=utf-8" if schedule.dialect.stream_content_type.startswith("text/") else ""))
    out.applied.append("json->stream")
    return out


def convert_for_request(schedule: Schedule, want_stream: bool | None) -> Schedule:
    """Stream and non-stream served from one recording (the 'turn streaming off' step, offline)."""
    if want_stream is None or not 200 <= schedule.status < 300:
        return schedule
    streamed = is_event_stream(schedule)
    if want_stream and not streamed and "json" in (schedule.header("content-type") or ""):
        try:
            whole = json.loads(schedule.body)
        except (ValueError, RecursionError):
            return schedule
        events = schedule.dialect.stream_events(whole) if isinstance(whole, dict) else None
        return as_stream(schedule, events) if events else schedule
    if not want_stream and streamed:
        whole = schedule.dialect.whole_body(schedule.body)
        return as_completion(schedule, whole) if whole is not None else schedule
    return schedule
