"""Timelines: an exchange (or a replay of it) drawn as inline SVG on a time axis, and as one HTML page.

Pure rendering: the store, the replay server and the diagnosis come in as arguments, so that
`show --html`, the UI server and the tests draw the same picture. Recorded text is untrusted
(an upstream can send any bytes), so every string leaves through `_esc`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamreplay.endcause import CAUSES, EndCause
from streamreplay.report import chunk_deltas, chunk_events
from streamreplay.sse import assemble
from streamreplay.store import Chunk, Exchange

if TYPE_CHECKING:  # only for the hints: rendering needs neither the replay server nor aiohttp
    from streamreplay.replay.schedule import Schedule
    from streamreplay.replay.server import Replayed

# -- what is drawn ------------------------------------------------------------------------------------


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


def _kinds(chunks: Sequence[Chunk]) -> list[set[str]]:
    """What each chunk carries, event by event."""
    out = []
    for events in chunk_events(chunks):
        kinds: set[str] = set()
        for result in events:
            if result is None:
                kinds.add("done")
                continue
            if result.text or result.tool_calls:
                kinds.add("content")
            if result.finish_reason:
                kinds.add("finish")
            if result.error:
                kinds.add("error")
        out.append(kinds)
    return out


def _marks(chunks: Sequence[Chunk], times: Sequence[int], first_seen: bool = False) -> list[Mark]:
    marks = []
    for chunk, t_ns, delta, kinds in zip(chunks, times, chunk_deltas(list(chunks)), _kinds(chunks), strict=False):
        if "content" in kinds and not first_seen:
            kinds.add("first")
            first_seen = True
        marks.append(Mark(chunk.index, t_ns, chunk.data, delta, frozenset(kinds)))
    return marks


def _text(chunks: Sequence[Chunk], content_type: str | None) -> str:
    return assemble(b"".join(c.data for c in chunks), content_type).text


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
               _marks(chunks, [c.t_ns for c in chunks]), text=ex.text or _text(chunks, ctype))
    s.first_byte_ns = chunks[0].t_ns if chunks else None
    _recorded_ends(s, ex, len(chunks), chunks[-1].t_ns if chunks else 0, sum(len(c.data) for c in chunks))
    if ex.end_cause == EndCause.CLIENT_LEFT and ex.client_left_ns is not None:
        s.seen_text = _text(chunks[:ex.client_left_at_chunk or 0], ctype)
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
        here = (int(t_ns / slice_ns), k is not None and index >= k)  # never one bar across the client leaving
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


def _replay_ending(markers: list[Marker], ended: bool, ending: str, done: bool, t_ns: int) -> None:
    if ended:
        return
    kind, words = {"close": ("closed", "closed mid-body"), "reset": ("reset", "TCP reset")}.get(
        ending, ("end", "end · complete") if done else ("stop", "clean end, no [DONE]"))
    markers.append(Marker(kind, t_ns, f"{words} · {fmt_ns(t_ns)}"))


def replay_series(replayed: Replayed, chunks: Sequence[Chunk], *, title: str | None = None) -> Series:
    """What a replay server wrote (a `Replayed`: offsets_ns, applied faults, ending, the client leaving).

    `chunks` are the recording's; the replay's pieces are drawn with their bytes, which is exact
    unless a fault rewrote bytes (rechunk, drop-done, corrupt).
    """
    times = list(replayed.offsets_ns)
    pieces = [Chunk(i, t, chunks[i].data if i < len(chunks) else b"") for i, t in enumerate(times)]
    applied = list(replayed.applied)
    s = Series(title or f"replay #{replayed.n} · {' + '.join(applied) or 'no fault'}", _marks(pieces, times),
               text=_text(pieces, None))
    s.first_byte_ns = times[0] if times else None
    left = replayed.client_left_at_chunk is not None and not replayed.done_delivered
    s.markers, ended = _fault_markers(applied, times, replayed.client_left_ns or 0,
                                      reached_end=not left or replayed.delivered == replayed.total)
    if left:
        s.markers.append(Marker(LEFT.marker, replayed.client_left_ns or 0,
                                f"{LEFT.label} at {(replayed.client_left_ns or 0) / 1e6:.1f} ms · "
                                f"after {replayed.client_left_at_chunk} of {replayed.total} chunks"))
    else:
        _replay_ending(s.markers, ended, replayed.ending, replayed.done_delivered, times[-1] if times else 0)
    how = "the client left" if left else f"ended {replayed.ending}"
    s.note = f"{replayed.delivered}/{replayed.total} chunks delivered · {how}"
    return s


def schedule_series(schedule: Schedule, *, title: str | None = None, speed: float = 1.0) -> Series:
    """A replay's plan (a `Schedule` after faults) on the wall clock it would take at `speed`: no sockets."""
    times = [int((p.t_ns / speed if speed else 0) + p.extra_ns) for p in schedule.pieces]
    pieces = [Chunk(i, t, p.data) for i, (t, p) in enumerate(zip(times, schedule.pieces, strict=True))]
    s = Series(title or f"replay plan · {' + '.join(schedule.applied) or 'no fault'}", _marks(pieces, times),
               text=_text(pieces, schedule.header("content-type")))
    s.first_byte_ns = times[0] if times else None
    s.markers, ended = _fault_markers(schedule.applied, times, times[-1] if times else 0)
    done = any("done" in m.kinds for m in s.marks)
    _replay_ending(s.markers, ended, schedule.ending.value, done, times[-1] if times else 0)
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


# -- SVG ------------------------------------------------------------------------------------------------

COLORS = {
    "content": "#4f7cff", "none": "#a3acb9", "first": "#8b3fd9", "finish": "#e08a00", "done": "#0f8a7e",
    "error": "#d62828", "client-left": "#d62828", "end": "#1f8a3a", "stop": "#c77700", "closed": "#b3261e",
    "reset": "#b3261e", "timeout": "#b3261e", "open": "#2563eb", "fault": "#c2189b", "stall": "#c2189b",
    "part": "#6d28d9",
}
LEGEND = [
    ("content", "chunk (height = bytes)"), ("first", "first content"), ("finish", "finish_reason"),
    ("done", "[DONE]"), ("none", "no text (role, usage)"), ("unseen", "sent after the client left"),
    ("client-left", "client left"), ("end", "upstream end"), ("reset", "reset / closed"),
    ("fault", "fault"), ("part", "where A and B part"),
]
TITLE_H, ROW_H, ROWS, BAR_H, BELOW_H = 22, 15, 3, 58, 40
LANE_H = TITLE_H + ROWS * ROW_H + BAR_H + BELOW_H
PAD = 14
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif"


def _esc(text: object) -> str:
    """Escaped for HTML and SVG; control characters other than newline and tab made visible."""
    s = "".join(ch if ch >= " " or ch in "\n\t" else f"\\x{ord(ch):02x}" for ch in str(text))
    return html.escape(s, quote=True)


def _one_line(text: str) -> str:
    return text.replace("\r\n", "⏎").replace("\n", "⏎").replace("\r", "⏎")


def _text_w(text: str, size: float = 11, per_char: float = 0.56) -> float:
    # a little wider than bold system-ui text; only used to keep labels apart, so erring wide is safe
    return len(text) * size * per_char + 4


def _nice_step(span: float, ticks: int = 8) -> float:
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


class _Rows:
    """Greedy placement of labels into rows so that none overlap (falls back to the last row)."""

    def __init__(self, count: int) -> None:
        self.taken: list[list[tuple[float, float]]] = [[] for _ in range(count)]

    def place(self, x0: float, x1: float) -> int:
        for row, spans in enumerate(self.taken):
            if all(x1 + 6 < a or x0 - 6 > b for a, b in spans):
                spans.append((x0, x1))
                return row
        self.taken[-1].append((x0, x1))
        return len(self.taken) - 1


def _mark_color(mark: Mark) -> str:
    for kind in ("error", "done", "finish", "first", "content"):
        if kind in mark.kinds:
            return COLORS[kind]
    return COLORS["none"]


class _Labels:
    """Labels in rows above the bars, placed left to right: no label covers another, and no label's line
    (it runs down from the label through the rows below, to its bar or to the axis) crosses another's text."""

    def __init__(self, rows: int, left: float, right: float) -> None:
        self.text: list[list[tuple[float, float]]] = [[] for _ in range(rows)]
        self.lines: list[list[float]] = [[] for _ in range(rows)]
        self.left, self.right = left, right

    def _fits(self, row: int, x: float, x0: float, x1: float) -> bool:
        return (self.left <= x0 and x1 <= self.right
                and all(x1 + 6 < a or x0 - 6 > b for a, b in self.text[row])
                and all(not x0 - 3 <= lx <= x1 + 3 for lx in self.lines[row])
                and all(not a - 2 <= x <= b + 2 for spans in self.text[row + 1:] for a, b in spans))

    def place(self, x: float, w: float) -> tuple[int, float, str]:
        """(row, text x, text-anchor) for a label of width `w` whose line stands at `x`."""
        options = [(row, x0) for row in range(len(self.text)) for x0 in (x + 4, x - 4 - w)]
        row, x0 = next(((r, x0) for r, x0 in options if self._fits(r, x, x0, x0 + w)),
                       (len(self.text) - 1, x + 4 if x + 4 + w <= self.right else x - 4 - w))  # crowded: overlap
        self.text[row].append((x0, x0 + w))
        for r in range(row, len(self.text)):
            self.lines[r].append(x)
        return (row, x0, "start") if x0 > x else (row, x0 + w, "end")


def _lane(s: Series, letter: str, top: float, x: Any, max_size: int, width: int, part: int | None,
          lettered: bool) -> list[str]:
    out = [f'<g class="lane" id="lane-{letter.lower()}">']
    base = top + TITLE_H + ROWS * ROW_H + BAR_H
    bar_top = base - BAR_H
    out.append(f'<text x="{PAD}" y="{top + 15}" font-size="13" font-weight="600" fill="#1f2937">'
               f'{_esc((letter + "  " if lettered else "") + s.title)}</text>')
    out.append(f'<text x="{width - PAD}" y="{top + 15}" font-size="11.5" fill="#4b5563" text-anchor="end">'
               f'{_esc(s.note)}</text>')
    out.append(f'<line x1="{PAD}" x2="{width - PAD}" y1="{base}" y2="{base}" stroke="#9ca3af"/>')
    below = _Rows(2)
    wanted: list[tuple[float, int, str, str, str, float | None]] = []

    def label(xpos: float, text: str, color: str, kind: str, line_from_bar: float | None) -> None:
        wanted.append((xpos, len(wanted), text, color, kind, line_from_bar))

    def draw_label(xpos: float, text: str, color: str, kind: str, line_from_bar: float | None) -> str:
        row, tx, anchor = rows.place(xpos, _text_w(text))
        y = top + TITLE_H + (row + 1) * ROW_H - 4
        end_y = line_from_bar if line_from_bar is not None else base
        # a marker's line runs dashed down to the axis; a chunk's label gets a thin leader to its bar
        stroke = 'stroke-width="1"' if line_from_bar is not None else 'stroke-width="1.6" stroke-dasharray="5 3"'
        return (f'<g class="label {kind}"><line x1="{xpos:.1f}" x2="{xpos:.1f}" y1="{y - 9}" y2="{end_y:.1f}" '
                f'stroke="{color}" {stroke}/><text x="{tx:.1f}" y="{y}" font-size="11" fill="{color}" '
                f'text-anchor="{anchor}" font-weight="600">{_esc(text)}</text></g>')

    def bracket(x0: float, x1: float, text: str, color: str, kind: str) -> None:
        w = _text_w(text, 10.5)
        mid = (x0 + x1) / 2
        tx0 = max(PAD, min(mid - w / 2, width - PAD - w))
        row = below.place(min(x0, tx0), max(x1, tx0 + w))
        y = base + 8 + row * 17
        out.append(f'<g class="bracket {kind}"><path d="M{x0:.1f},{y - 4} V{y} H{x1:.1f} V{y - 4}" fill="none" '
                   f'stroke="{color}"/><text x="{tx0 + w / 2:.1f}" y="{y + 11}" font-size="10.5" fill="{color}" '
                   f'text-anchor="middle">{_esc(text)}</text></g>')

    # spans behind the bars: what the client never read, and stalls
    for k in s.markers:
        if k.kind == "client-left" and any(m.unseen for m in s.marks):
            x0, x1 = x(k.t_ns), x(s.end_ns)
            out.append(f'<rect class="unseen-zone" x="{x0:.1f}" y="{bar_top}" width="{max(x1 - x0, 1):.1f}" '
                       f'height="{BAR_H}" fill="url(#hatch)"/>')
        if k.until_ns is not None:
            x0, x1 = x(k.t_ns), x(k.until_ns)
            out.append(f'<rect class="marker stall" x="{x0:.1f}" y="{bar_top}" width="{max(x1 - x0, 2):.1f}" '
                       f'height="{BAR_H}" fill="{COLORS["stall"]}" fill-opacity="0.13"/>')
    if s.first_byte_ns:
        bracket(x(0), x(s.first_byte_ns), f"first byte after {fmt_ns(s.first_byte_ns)}", "#4b5563", "first-byte")
    for gap_start, gap_end in _long_gaps(s.marks):
        bracket(x(gap_start), x(gap_end), f"gap {fmt_ns(gap_end - gap_start)}", "#4b5563", "gap")

    # one bar per chunk; the <title> is the hover text, the link jumps to the chunk's table row
    prev = 0
    for m in s.marks:
        h = 3 + (BAR_H - 6) * m.size / max_size
        xm = x(m.t_ns)
        classes = " ".join(["chunk", *sorted(m.kinds), *(["unseen"] if m.unseen else [])])
        if m.last_index is None:
            tip = (f"chunk {m.index} · at {m.t_ns / 1e6:.1f} ms · gap {(m.t_ns - prev) / 1e6:.1f} ms · "
                   f"{m.size} bytes\n{m.delta!r}")
        else:
            tip = (f"chunks {m.index}–{m.last_index} · from {m.t_ns / 1e6:.1f} ms · gap {(m.t_ns - prev) / 1e6:.1f} ms"
                   f" · {m.size} bytes")
        href = s.chunk_link.format(anchor=f"{letter.lower()}-{m.index}", index=m.index)
        out.append(f'<a href="{_esc(href)}"><g class="{classes}" data-index="{m.index}" '
                   f'data-t-ms="{m.t_ns / 1e6:.3f}" opacity="{0.35 if m.unseen else 1}"><title>{_esc(tip)}</title>'
                   f'<rect x="{xm - 1.5:.1f}" y="{base - h:.1f}" width="3" height="{h:.1f}" '
                   f'fill="{_mark_color(m)}"/><rect x="{xm - 3:.1f}" y="{bar_top}" width="6" height="{BAR_H}" '
                   f'fill="transparent"/></g></a>')
        prev = m.t_ns

    # labels: the endings, and the chunks that carry the answer's landmarks; placed left to right
    for k in s.markers:
        if k.until_ns is None:
            label(x(k.t_ns), k.label, COLORS.get(k.kind, "#374151"), k.kind, None)
        else:
            label(x(k.t_ns), k.label, COLORS["stall"], k.kind, bar_top)
    first = next((m for m in s.marks if "first" in m.kinds), None)
    if first is not None:
        label(x(first.t_ns), f"first content · {fmt_ns(first.t_ns)}", COLORS["first"], "first",
              base - 3 - (BAR_H - 6) * first.size / max_size)
    for m in s.marks:
        landmark = [w for k, w in (("finish", "finish_reason"), ("done", "[DONE]"), ("error", "error")) if k in m.kinds]
        if landmark:
            label(x(m.t_ns), " + ".join(landmark), _mark_color(m), "landmark",
                  base - 3 - (BAR_H - 6) * m.size / max_size)
    if part is not None:
        label(x(part), "A and B part here", COLORS["part"], "part", None)
    rows = _Labels(ROWS, PAD, width - PAD)
    out += [draw_label(w[0], *w[2:]) for w in sorted(wanted, key=lambda w: (round(w[0], 1), w[1]))]
    # marker classes the tests and the browser look for: the endings themselves
    for k in s.markers:
        if k.until_ns is None:
            out.append(f'<g class="marker {k.kind}" data-t-ms="{k.t_ns / 1e6:.3f}"><title>{_esc(k.label)}</title>'
                       f'<circle cx="{x(k.t_ns):.1f}" cy="{base}" r="4" fill="{COLORS.get(k.kind, "#374151")}"/></g>')
    out.append("</g>")
    return out


def _long_gaps(marks: Sequence[Mark], most: int = 3) -> list[tuple[int, int]]:
    """Silences well above the stream's usual gap: the ones that explain timeouts."""
    gaps = [(marks[i].t_ns - marks[i - 1].t_ns, marks[i - 1].t_ns, marks[i].t_ns) for i in range(1, len(marks))]
    if len(gaps) < 2:
        return []
    usual = sorted(g for g, _, _ in gaps)[len(gaps) // 2]
    long = [g for g in gaps if g[0] > max(100_000_000, 5 * usual)]
    return [(a, b) for _, a, b in sorted(long, reverse=True)[:most]]


def _legend(series: Sequence[Series], width: int) -> tuple[list[str], float]:
    used = {k for s in series for m in s.marks for k in m.kinds} | {"content"}
    used |= {"none" for s in series for m in s.marks if not m.kinds}
    used |= {"unseen" for s in series for m in s.marks if m.unseen}
    used |= {"end" if k.kind in ("end", "stop") else k.kind for s in series for k in s.markers}
    used |= {"reset" for s in series for k in s.markers if k.kind in ("closed", "timeout")}
    used |= {"fault" for s in series for k in s.markers if k.kind == "stall"}
    if len(series) == 2 and parting(series[0], series[1]) is not None:
        used.add("part")
    out, x, y = [], float(PAD), 16.0
    for kind, words in LEGEND:
        if kind not in used:
            continue
        w = 16 + _text_w(words, 11.5, 0.5)
        if x + w > width - PAD:
            x, y = PAD, y + 18
        if kind == "unseen":
            swatch = f'<rect x="{x}" y="{y - 9}" width="11" height="11" fill="url(#hatch)" stroke="#9ca3af"/>'
        elif kind in ("client-left", "part"):
            swatch = (f'<line x1="{x + 5}" x2="{x + 5}" y1="{y - 10}" y2="{y + 2}" stroke="{COLORS[kind]}" '
                      f'stroke-width="2" stroke-dasharray="3 2"/>')
        elif kind in ("end", "reset"):
            swatch = f'<circle cx="{x + 5}" cy="{y - 4}" r="4.5" fill="{COLORS[kind]}"/>'
        else:
            swatch = f'<rect x="{x + 3}" y="{y - 10}" width="5" height="12" fill="{COLORS[kind]}"/>'
        out.append(f'<g class="legend">{swatch}<text x="{x + 15}" y="{y}" font-size="11.5" fill="#374151">'
                   f'{_esc(words)}</text></g>')
        x += w + 8
    return out, y + 12


def series_svg(series: Sequence[Series], *, width: int = 1000) -> str:
    """Lanes on one shared time axis (A on top, B under it), with a legend and the axis at the bottom."""
    span = max(max((s.end_ns for s in series), default=0), 1_000_000) * 1.03
    plot_w = width - 2 * PAD

    def x(t_ns: float) -> float:
        return PAD + t_ns / span * plot_w

    max_size = max((m.size for s in series for m in s.marks), default=1) or 1
    legend, top = _legend(series, width)
    part = parting(series[0], series[1]) if len(series) == 2 else None
    body: list[str] = []
    lanes_top = top
    for i, s in enumerate(series):
        letter = "AB"[i] if len(series) == 2 else chr(65 + i)
        body += _lane(s, letter, top, x, max_size, width, part[1] if part and i == len(series) - 1 else None,
                      len(series) > 1)
        top += LANE_H
    axis_y = top + 4
    step = _nice_step(span)
    unit, div = ("ms", 1e6) if span < 2e9 else ("s", 1e9)
    grid, ticks = [], []
    for i in range(int(span // step) + 1):
        t = i * step  # multiplied, not summed: no drift in the labels
        xt = x(t)
        grid.append(f'<line x1="{xt:.1f}" x2="{xt:.1f}" y1="{lanes_top}" y2="{axis_y}" stroke="#eef0f3"/>')
        ticks.append(f'<line x1="{xt:.1f}" x2="{xt:.1f}" y1="{axis_y}" y2="{axis_y + 5}" stroke="#6b7280"/>'
                     f'<text x="{xt:.1f}" y="{axis_y + 18}" font-size="11" fill="#374151" text-anchor="middle">'
                     f'{t / div:g} {unit}</text>')
    if part is not None:
        grid.append(f'<line class="part" x1="{x(part[1]):.1f}" x2="{x(part[1]):.1f}" y1="{lanes_top}" '
                    f'y2="{axis_y}" stroke="{COLORS["part"]}" stroke-width="1.5" stroke-dasharray="2 3"/>')
    height = axis_y + 40
    axis = [f'<line x1="{PAD}" x2="{width - PAD}" y1="{axis_y}" y2="{axis_y}" stroke="#6b7280"/>', *ticks,
            f'<text x="{width / 2}" y="{axis_y + 34}" font-size="11.5" fill="#4b5563" text-anchor="middle">'
            f'time since the request was sent</text>']
    defs = ('<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
            'patternTransform="rotate(45)"><rect width="6" height="6" fill="#f3f4f6"/>'
            '<line x1="0" y1="0" x2="0" y2="6" stroke="#d1d5db" stroke-width="2"/></pattern></defs>')
    return (f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height:.0f}" '
            f'width="{width}" height="{height:.0f}" role="img" style="{FONT}">{defs}'
            + "".join(grid + legend + body + axis) + "</svg>")


def timeline_svg(exchange: Exchange, chunks: Sequence[Chunk], *, replayed: Replayed | None = None,
                 width: int = 1000) -> str:
    """One recorded exchange; with `replayed` (a replay server's `Replayed`), the replay as lane B under it."""
    series = [recorded_series(exchange, chunks)]
    if replayed is not None:
        series.append(replay_series(replayed, chunks))
    return series_svg(series, width=width)


# -- the page -------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#1f2937;margin:20px 28px;
 background:#fff;line-height:1.4}
h1{font-size:20px;margin:0 0 4px}h2{font-size:15px;margin:22px 0 6px}h3{font-size:13px;margin:10px 0 4px}
.meta{color:#4b5563;font-size:13px}.lead{font-size:14.5px;margin:8px 0}
.badge{display:inline-block;padding:1px 8px;border-radius:9px;font-size:12px;font-weight:600;color:#fff;
 background:#6b7280;vertical-align:middle}
svg.timeline{max-width:100%;height:auto;display:block;margin:8px 0}
.chunk{cursor:pointer}.chunk:hover rect:first-of-type{stroke:#111827;stroke-width:1.5}
pre{background:#f6f7f9;border:1px solid #e5e7eb;border-radius:6px;padding:8px 10px;white-space:pre-wrap;
 word-break:break-word;font-size:12.5px;margin:4px 0}
pre.cmd{background:#111827;color:#e5e7eb}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:18px}
table{border-collapse:collapse;font-size:12px}th,td{padding:2px 8px;text-align:right;border-bottom:1px solid #eef0f3}
th{background:#f3f4f6;position:sticky;top:0}td.d{text-align:left;font-family:ui-monospace,Menlo,Consolas,monospace;
 white-space:pre-wrap;max-width:420px}td.n{text-align:left;color:#6b7280}tr.unseen{color:#9ca3af}
tr:target{background:#fff4c2}td{white-space:nowrap}
.exchanges th,.tapes th,.exchanges td,.tapes td{text-align:left}a{color:#2563eb}nav{font-size:13px;margin-bottom:10px}
form{display:inline}input{font-size:12.5px;padding:2px 4px}
"""
#: a badge's colour, by its end cause's tone (endcause.CAUSES); `.b-open`: an exchange still being recorded
BADGE_COLORS = {"ok": "#1f8a3a", "warning": "#c77700", "failed": "#b3261e", "client": "#d62828", "neutral": "#6b7280"}
CSS += "".join(f".b-{cause.value}{{background:{BADGE_COLORS[info.tone]}}}" for cause, info in CAUSES.items())
CSS += ".b-open{background:#2563eb}\n"


def html_page(title: str, body: str, *, refresh_s: int | None = None) -> str:
    """A self-contained page: inline CSS, no scripts, nothing fetched (works offline)."""
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>{body}</body></html>")


def badge(cause: str | None) -> str:
    return f'<span class="badge b-{_esc(cause or "open")}">{_esc(cause or "open")}</span>'


#: characters of a chunk's delta shown in its table row; of a message, in the message section
DELTA_CHARS = 2000
TEXT_CHARS = 100_000


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]} … [{len(text) - limit} more characters]"


def chunk_page(ex: Exchange, chunks: Sequence[Chunk], sizes: Sequence[int], prev_ns: int = 0) -> str:
    """A page of an exchange's chunk table, from any chunk on: `chunks` may be cut short (a page holds a
    bounded number of bytes), `sizes` are their recorded lengths. Events are parsed from the page's first
    chunk, so an event that began on the page before shows no delta here."""
    marks = _marks(chunks, [c.t_ns for c in chunks], first_seen=bool(chunks) and chunks[0].index > 0)
    left = ex.client_left_at_chunk if ex.end_cause == EndCause.CLIENT_LEFT and ex.client_left_ns is not None else None
    for mark, size in zip(marks, sizes, strict=True):
        mark.nbytes = size
        mark.unseen = left is not None and mark.index >= left
    return chunk_table(Series("", marks), "a", prev_ns)


def chunk_table(s: Series, letter: str = "a", prev_ns: int = 0) -> str:
    """The chunks of one lane as rows; each row's id is the target of its bar's link. `prev_ns`: the time of
    the chunk before the first row (for the first gap, when the rows are a page from the middle)."""
    rows, prev = [], prev_ns
    for m in s.marks:
        notes = [w for k, w in (("first", "first content"), ("finish", "finish_reason"), ("done", "[DONE]"),
                                ("error", "error")) if k in m.kinds]
        if m.unseen:
            notes.append("after the client left")
        if m.size > len(m.data) and m.last_index is None:
            notes.append(f"only its first {len(m.data)} bytes read here")
        rows.append(f'<tr id="{letter}-{m.index}"{" class=unseen" if m.unseen else ""}><td>{m.index}</td>'
                    f"<td>{m.t_ns / 1e6:.1f}</td><td>{(m.t_ns - prev) / 1e6:.1f}</td><td>{m.size}</td>"
                    f'<td class="d">{_esc(_one_line(_clip(m.delta, DELTA_CHARS)))}</td>'
                    f'<td class="n">{_esc(", ".join(notes))}</td></tr>')
        prev = m.t_ns
    return ('<table class="chunks"><thead><tr><th>chunk</th><th>at ms</th><th>gap ms</th><th>bytes</th>'
            f'<th>delta</th><th></th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _messages(s: Series) -> str:
    if s.seen_text is not None:
        return (f"<h3>what the client read before it left</h3><pre>{_esc(_clip(s.seen_text, TEXT_CHARS))}</pre>"
                f"<h3>what the upstream sent (recorded whole)</h3><pre>{_esc(_clip(s.text, TEXT_CHARS))}</pre>")
    return f"<pre>{_esc(_clip(s.text, TEXT_CHARS))}</pre>"


def _as_series(compare: Any) -> Series:
    if isinstance(compare, Series):
        return compare
    if isinstance(compare, tuple):
        other, other_chunks = compare
        return recorded_series(other, other_chunks)
    raise TypeError(f"compare: a Series, or (Exchange, chunks); got {type(compare).__name__}")


def exchange_page(
    exchange: Exchange,
    chunks: Sequence[Chunk],
    diagnosis_lines: Sequence[str] | None = None,
    compare: Series | tuple[Exchange, Sequence[Chunk]] | None = None,
    *,
    replay_command: str | None = None,
    nav_html: str = "",
    refresh_s: int | None = None,
    width: int = 1000,
    lane: Series | None = None,
    chunks_html: str | None = None,
) -> str:
    """One exchange as a self-contained HTML page: header, timeline, message, diagnosis, replay command, chunks.

    `compare` (a `Series`, e.g. `replay_series(...)`, or another `(exchange, chunks)`) is drawn as lane B on
    the same axis. `nav_html` is trusted HTML placed under the header (the UI's links and forms).
    For an exchange too big to hold whole, `lane` (an `overview_series`) is drawn instead of `chunks`, and
    `chunks_html` (trusted: one page of the chunk table and the links to the rest) is the chunks section.
    """
    ex = exchange
    lanes = [lane if lane is not None else recorded_series(ex, chunks)]
    if compare is not None:
        lanes.append(_as_series(compare))
    query = f"?{ex.query}" if ex.query else ""
    parts = [
        f"<h1>exchange {ex.id} {badge(ex.end_cause)}</h1>",
        f'<div class="meta">tape {_esc(ex.tape)} · #{ex.seq} · {_esc(ex.started_at or "")} · '
        f"{_esc(ex.method)} {_esc(ex.path + query)} · model {_esc(ex.model or '-')} · "
        f"HTTP {_esc(ex.status or '-')} · {'stream' if ex.stream else 'no stream'} · client {_esc(ex.client or '-')}"
        "</div>",
        nav_html,
    ]
    if diagnosis_lines:
        summary = diagnosis_lines[0].split(": ", 1)[-1]
        parts.append(f'<p class="lead">{_esc(summary)}</p>')
    if len(lanes) == 2:
        where = parting(lanes[0], lanes[1])
        words = "A and B agree chunk for chunk" if where is None else f"A and B part at chunk {where[0]}: {where[2]}"
        parts.append(f'<p class="lead part">{_esc(words)}</p>')
    parts.append(series_svg(lanes, width=width))
    letters = "AB" if len(lanes) == 2 else "A"
    parts.append('<h2>message</h2><div class="cols">' + "".join(
        f"<div>{f'<h3>{letter} · {_esc(s.title)}</h3>' if len(lanes) == 2 else ''}{_messages(s)}</div>"
        for letter, s in zip(letters, lanes, strict=True)) + "</div>")
    if diagnosis_lines:
        parts.append(f'<h2>diagnosis</h2><pre class="diagnosis">{_esc(chr(10).join(diagnosis_lines))}</pre>')
    if replay_command:
        parts.append(f'<h2>replay it</h2><pre class="cmd">{_esc(replay_command)}</pre>')
    if chunks_html is not None:
        parts.append(f"<h2>chunks</h2>{chunks_html}")
    else:
        parts.append('<h2>chunks</h2><div class="cols">' + "".join(
            f"<div>{f'<h3>{letter}</h3>' if len(lanes) == 2 else ''}{chunk_table(s, letter.lower())}</div>"
            for letter, s in zip(letters, lanes, strict=True)) + "</div>")
    return html_page(f"streamreplay · exchange {ex.id}", "".join(parts), refresh_s=refresh_s)
