"""The SVG layout: series drawn as lanes on one shared time axis, with a legend, labels and brackets.

Recorded text is untrusted (an upstream can send any bytes), so every string leaves through `esc`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from streamreplay.store import Chunk, Exchange
from streamreplay.timeline.model import Mark, Series, fmt_ns, parting, recorded_series, replay_series

if TYPE_CHECKING:  # only for the hints: rendering needs neither the replay server nor aiohttp
    from streamreplay.replay.server import Replayed


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


def esc(text: object) -> str:
    """Escaped for HTML and SVG; control characters other than newline and tab made visible."""
    s = "".join(ch if ch >= " " or ch in "\n\t" else f"\\x{ord(ch):02x}" for ch in str(text))
    return html.escape(s, quote=True)


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
               f'{esc((letter + "  " if lettered else "") + s.title)}</text>')
    out.append(f'<text x="{width - PAD}" y="{top + 15}" font-size="11.5" fill="#4b5563" text-anchor="end">'
               f'{esc(s.note)}</text>')
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
                f'text-anchor="{anchor}" font-weight="600">{esc(text)}</text></g>')

    def bracket(x0: float, x1: float, text: str, color: str, kind: str) -> None:
        w = _text_w(text, 10.5)
        mid = (x0 + x1) / 2
        tx0 = max(PAD, min(mid - w / 2, width - PAD - w))
        row = below.place(min(x0, tx0), max(x1, tx0 + w))
        y = base + 8 + row * 17
        out.append(f'<g class="bracket {kind}"><path d="M{x0:.1f},{y - 4} V{y} H{x1:.1f} V{y - 4}" fill="none" '
                   f'stroke="{color}"/><text x="{tx0 + w / 2:.1f}" y="{y + 11}" font-size="10.5" fill="{color}" '
                   f'text-anchor="middle">{esc(text)}</text></g>')

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
        out.append(f'<a href="{esc(href)}"><g class="{classes}" data-index="{m.index}" '
                   f'data-t-ms="{m.t_ns / 1e6:.3f}" opacity="{0.35 if m.unseen else 1}"><title>{esc(tip)}</title>'
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
            out.append(f'<g class="marker {k.kind}" data-t-ms="{k.t_ns / 1e6:.3f}"><title>{esc(k.label)}</title>'
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
                   f'{esc(words)}</text></g>')
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
