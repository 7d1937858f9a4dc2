"""What a timeline draws: an exchange (or a replay of it, or a replay's plan) as lanes of marks and markers.

A `Series` is one lane: a `Mark` per chunk (when it came, its bytes, what it carries: first content,
finish_reason, [DONE], an error; whether the client had left before it) and `Marker`s for the endings,
faults, stalls and the client leaving. Built from a recorded exchange and its chunks, a `Replayed` or a
`Schedule`; `parting` says where two lanes part. No drawing here: `svg.py` draws series, `page.py` the page.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from streamreplay.dialects import CHAT, Dialect, dialect_for
from streamreplay.endcause import CAUSES, EndCause
from streamreplay.report import chunk_deltas, chunk_events
from streamreplay.store import Chunk, Exchange

if TYPE_CHECKING:  # only for the hints: rendering needs neither the replay server nor aiohttp
    from streamreplay.replay.schedule import Schedule
    from streamreplay.replay.server import Replayed


@dataclass
class Mark:
    """One chunk: a bar at the moment it was written, as tall as its bytes."""

    index: int
    t_ns: int
    data: bytes
    delta: str
    kinds: frozenset[str]  # content, first, finish, done, error
    unseen: bool = False  # recorded after the client had left: the client never read it
    #: a bar that stands for chunks index..last_index (an overview of a big exchange): their bytes, no data
    last_index: int | None = None
    nbytes: int | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.nbytes is None else self.nbytes


@dataclass
class Marker:
    """An ending, a fault or the client leaving; with `until_ns`, a span (a stall)."""

    kind: str  # client-left end stop closed reset timeout error open fault stall part
    t_ns: int
    label: str
    until_ns: int | None = None


@dataclass
class Series:
    """One lane of the timeline: a recording, a replay, or a replay's plan."""

    title: str
    marks: list[Mark]
    markers: list[Marker] = field(default_factory=list)
    first_byte_ns: int | None = None  # the wait before the first chunk, drawn as a bracket
    text: str = ""
    seen_text: str | None = None  # what the client had read when it left early
    note: str = ""
    has_client: bool = True  # False for a plan: nobody read it, so a client leaving is no difference
    #: where a bar links to: its row in the chunk table ({anchor} is e.g. "a-12", {index} the chunk's)
    chunk_link: str = "#{anchor}"

    @property
    def end_ns(self) -> int:
        times = [m.t_ns for m in self.marks] + [k.until_ns or k.t_ns for k in self.markers]
        return max(times, default=0)


def fmt_ns(ns: float) -> str:
    """A duration as people read it: 3.2 ms, 372 ms, 1.09 s."""
    ms = ns / 1e6
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    return f"{ms / 1000:.2f} s"


def _kinds(chunks: Sequence[Chunk], dialect: Dialect) -> list[set[str]]:
    """What each chunk carries, event by event."""
    out = []
    for events in chunk_events(chunks, dialect):
        kinds: set[str] = set()
        for result in events:
            if result.done:
                kinds.add("done")
            if result.text or result.tool_calls:
                kinds.add("content")
            if result.finish_reason:
                kinds.add("finish")
            if result.error:
                kinds.add("error")
        out.append(kinds)
    return out


def chunk_marks(chunks: Sequence[Chunk], times: Sequence[int], first_seen: bool = False,
                dialect: Dialect = CHAT) -> list[Mark]:
    marks = []
    for chunk, t_ns, delta, kinds in zip(chunks, times, chunk_deltas(list(chunks), dialect), _kinds(chunks, dialect),
                                         strict=False):
        if "content" in kinds and not first_seen:
            kinds.add("first")
            first_seen = True
        marks.append(Mark(chunk.index, t_ns, chunk.data, delta, frozenset(kinds)))
    return marks


def _text(chunks: Sequence[Chunk], content_type: str | None, dialect: Dialect = CHAT) -> str:
    return dialect.assemble(b"".join(c.data for c in chunks), content_type).text


#: how the upstream's end is drawn, by recorded end cause: (marker kind, words), from endcause.CAUSES. The
#: client leaving is drawn as a marker of its own; "abort" stands for an upstream end nobody read (the proxy
#: stopped reading with the client), None for an exchange still being recorded
UPSTREAM_ENDS: dict[str | None, tuple[str, str]] = {
    **{cause.value: (info.marker, info.label) for cause, info in CAUSES.items() if cause is not EndCause.CLIENT_LEFT},
    "abort": ("stop", "recording stopped with the client (abort)"),
    None: ("open", "still recording…"),
}
#: how the client leaving is drawn (in a recording or a replay)
LEFT = CAUSES[EndCause.CLIENT_LEFT]


def recorded_series(ex: Exchange, chunks: Sequence[Chunk], *, title: str | None = None) -> Series:
    """A recording as it happened: chunks at their recorded offsets, the client leaving, the upstream's end."""
    ctype = ex.response_header("content-type")
    s = Series(title or f"recorded · exchange {ex.id} · {ex.end_cause or 'open'}",
               chunk_marks(chunks, [c.t_ns for c in chunks], dialect=ex.dialect),
               text=ex.text or _text(chunks, ctype, ex.dialect))
    s.first_byte_ns = chunks[0].t_ns if chunks else None
    _recorded_ends(s, ex, len(chunks), chunks[-1].t_ns if chunks else 0, sum(len(c.data) for c in chunks))
    if ex.end_cause == EndCause.CLIENT_LEFT and ex.client_left_ns is not None:
        s.seen_text = _text(chunks[:ex.client_left_at_chunk or 0], ctype, ex.dialect)
    return s


def _recorded_ends(s: Series, ex: Exchange, n: int, last_t: int, nbytes: int) -> None:
    """The client leaving (and the chunks it never read) and the upstream's end, as markers; and the note."""
    upstream = ex.end_cause
    if ex.end_cause == EndCause.CLIENT_LEFT and ex.client_left_ns is not None:
        k = ex.client_left_at_chunk or 0
        s.markers.append(Marker(LEFT.marker, ex.client_left_ns,
                                f"{LEFT.label} at {ex.client_left_ns / 1e6:.1f} ms · after {k} of {n} chunks"))
        for mark in s.marks:
            mark.unseen = mark.index >= k
        # what the upstream did while nobody was reading; None when the proxy stopped reading too (abort)
        upstream = ex.upstream_end or "abort"
    kind, words = UPSTREAM_ENDS.get(upstream, ("end", upstream or "end"))
    if kind == "error":
        words = f"HTTP {ex.status}" if ex.status else words
    end_t = ex.duration_ns if ex.duration_ns is not None and upstream is not None else last_t
    s.markers.append(Marker(kind, max(end_t, last_t), f"{words} · {fmt_ns(max(end_t, last_t))}"))
    s.note = f"{n} chunks · {nbytes} bytes · {fmt_ns(max(end_t, last_t))}"


#: at most this many bars in an overview: about one per pixel column of the default width
OVERVIEW_BARS = 900


def overview_series(ex: Exchange, rows: Iterable[tuple[int, int, int]], *, span_ns: int,
                    bars: int = OVERVIEW_BARS, chunk_link: str = "#{anchor}") -> Series:
    """A recording too big to draw chunk by chunk, from (index, t_ns, bytes) rows in order: the chunks that
    fall in the same time slice (one of `bars`) become one bar, as tall as their bytes. Reads no chunk data,
    keeps at most `bars` marks, so its size and the page's are bounded whatever the exchange's size.
    `span_ns` is the last row's t_ns (known beforehand from a cheap SQL query), to cut the time slices."""
    k = ex.client_left_at_chunk if ex.end_cause == EndCause.CLIENT_LEFT and ex.client_left_ns is not None else None
    slice_ns = max(span_ns, 1) / bars
    marks: list[Mark] = []
    key = None
    first_t, last_t, nbytes, count = None, 0, 0, 0
    for index, t_ns, size in rows:
        first_t = t_ns if first_t is None else first_t
        last_t, nbytes, count = t_ns, nbytes + size, count + 1
        # the last row ends the span: it is in the last slice, not in one of its own past it; and never
        # one bar across the client leaving
        here = (min(int(t_ns / slice_ns), bars - 1), k is not None and index >= k)
        if here != key or not marks:
            marks.append(Mark(index, t_ns, b"", "", frozenset({"content"}), last_index=index, nbytes=size))
            key = here
        else:
            marks[-1].last_index, marks[-1].nbytes = index, (marks[-1].nbytes or 0) + size
    s = Series(f"recorded · exchange {ex.id} · {ex.end_cause or 'open'} · overview", marks,
               text=ex.text or "", chunk_link=chunk_link)
    s.first_byte_ns = first_t
    _recorded_ends(s, ex, count, last_t, nbytes)
    s.note = f"{s.note} · {len(marks)} bars"
    return s


def _fault_markers(applied: Sequence[str], times: Sequence[int], until_ns: int,
                   reached_end: bool = True) -> tuple[list[Marker], bool]:
    """Markers for the faults a replay applied; and whether one of them already says how it ended.

    `reached_end` is False when the client left first: a cut that was never reached is not drawn.
    """
    markers, ended = [], False
    last = times[-1] if times else 0
    words = {"cut": "clean end", "close": "closed mid-body", "reset": "TCP reset", "error-event": "error event",
             "status": "an error status instead"}
    for spec in applied:
        name, _, params = spec.partition(":")
        args = dict(p.split("=", 1) for p in params.split(",") if "=" in p)
        if name in words and reached_end:
            markers.append(Marker("fault", last, f"fault {spec}: {words[name]} after {len(times)} chunks"))
            ended = True
        elif name == "stall":
            n = int(args.get("chunk", 0))
            start = times[n - 1] if 0 < n <= len(times) else 0
            stop = times[n] if n < len(times) else max(until_ns, last)  # still stalled when it ended
            still = "" if n < len(times) else ", still stalled at the end"
            markers.append(Marker("stall", start, f"fault {spec}: stalled {fmt_ns(stop - start)}{still}",
                                  until_ns=stop))
        elif name == "delay-first" and times:
            markers.append(Marker("stall", 0, f"fault {spec}: first byte held back", until_ns=times[0]))
    return markers, ended


def _replay_ending(markers: list[Marker], ended: bool, ending: str, done: bool, t_ns: int,
                   dialect: Dialect = CHAT) -> None:
    if ended:
        return
    kind, words = {"close": ("closed", "closed mid-body"), "reset": ("reset", "TCP reset")}.get(
        ending, ("end", "end · complete") if done else ("stop", f"clean end, no {dialect.terminal}"))
    markers.append(Marker(kind, t_ns, f"{words} · {fmt_ns(t_ns)}"))


def replay_series(replayed: Replayed, chunks: Sequence[Chunk], *, title: str | None = None) -> Series:
    """What a replay server wrote (a `Replayed`: offsets_ns, applied faults, ending, the client leaving).

    `chunks` are the recording's; the replay's pieces are drawn with their bytes, which is exact
    unless a fault rewrote bytes (rechunk, drop-done, corrupt).
    """
    times = list(replayed.offsets_ns)
    pieces = [Chunk(i, t, chunks[i].data if i < len(chunks) else b"") for i, t in enumerate(times)]
    applied = list(replayed.applied)
    dialect = dialect_for(replayed.path)
    s = Series(title or f"replay #{replayed.n} · {' + '.join(applied) or 'no fault'}",
               chunk_marks(pieces, times, dialect=dialect), text=_text(pieces, None, dialect))
    s.first_byte_ns = times[0] if times else None
    left = replayed.client_left_at_chunk is not None and not replayed.done_delivered
    s.markers, ended = _fault_markers(applied, times, replayed.client_left_ns or 0,
                                      reached_end=not left or replayed.delivered == replayed.total)
    if left:
        s.markers.append(Marker(LEFT.marker, replayed.client_left_ns or 0,
                                f"{LEFT.label} at {(replayed.client_left_ns or 0) / 1e6:.1f} ms · "
                                f"after {replayed.client_left_at_chunk} of {replayed.total} chunks"))
    else:
        _replay_ending(s.markers, ended, replayed.ending, replayed.done_delivered, times[-1] if times else 0,
                       dialect)
    how = "the client left" if left else f"ended {replayed.ending}"
    s.note = f"{replayed.delivered}/{replayed.total} chunks delivered · {how}"
    return s


def schedule_series(schedule: Schedule, *, title: str | None = None, speed: float = 1.0) -> Series:
    """A replay's plan (a `Schedule` after faults) on the wall clock it would take at `speed`: no sockets."""
    times = [int((p.t_ns / speed if speed else 0) + p.extra_ns) for p in schedule.pieces]
    pieces = [Chunk(i, t, p.data) for i, (t, p) in enumerate(zip(times, schedule.pieces, strict=True))]
    s = Series(title or f"replay plan · {' + '.join(schedule.applied) or 'no fault'}",
               chunk_marks(pieces, times, dialect=schedule.dialect),
               text=_text(pieces, schedule.header("content-type"), schedule.dialect))
    s.first_byte_ns = times[0] if times else None
    s.markers, ended = _fault_markers(schedule.applied, times, times[-1] if times else 0)
    done = any("done" in m.kinds for m in s.marks)
    _replay_ending(s.markers, ended, schedule.ending.value, done, times[-1] if times else 0, schedule.dialect)
    s.note = f"{len(times)} chunks · ends {schedule.ending.value}"
    s.has_client = False
    return s


def parting(a: Series, b: Series) -> tuple[int, int, str] | None:
    """Where two lanes part: (chunk index, time, words); None when they agree chunk for chunk."""
    tolerance = max(50_000_000, int(0.05 * max(a.end_ns, b.end_ns)))
    for i in range(max(len(a.marks), len(b.marks))):
        ma = a.marks[i] if i < len(a.marks) else None
        mb = b.marks[i] if i < len(b.marks) else None
        if ma is None or mb is None:
            short, other = ("A", "B") if ma is None else ("B", "A")
            have = mb or ma
            assert have is not None
            count = len(b.marks) if ma is None else len(a.marks)
            return i, have.t_ns, f"{short} stops after {i} chunks; {other} goes on to {count}"
        if ma.delta != mb.delta:  # what a reader sees; the bytes of two answers differ anyway (ids, created)
            return i, min(ma.t_ns, mb.t_ns), f"chunk {i} reads {ma.delta[:30]!r} in A, {mb.delta[:30]!r} in B"
        if ma.unseen != mb.unseen and a.has_client and b.has_client:
            who = "A" if ma.unseen else "B"
            return i, min(ma.t_ns, mb.t_ns), f"the client of {who} had left before chunk {i}"
        if abs(ma.t_ns - mb.t_ns) > tolerance:
            return i, min(ma.t_ns, mb.t_ns), f"chunk {i} comes at {fmt_ns(ma.t_ns)} in A, {fmt_ns(mb.t_ns)} in B"
    return None
