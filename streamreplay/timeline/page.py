"""The HTML page: a self-contained page (inline CSS, no scripts) with an exchange's header, timeline,
message, diagnosis, replay command and chunk table; and the page shell and badges the UI uses too."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streamreplay.endcause import CAUSES, EndCause
from streamreplay.store import Chunk, Exchange
from streamreplay.timeline.model import Series, chunk_marks, parting, recorded_series
from streamreplay.timeline.svg import esc, series_svg

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
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>{body}</body></html>")


def badge(cause: str | None) -> str:
    return f'<span class="badge b-{esc(cause or "open")}">{esc(cause or "open")}</span>'


#: characters of a chunk's delta shown in its table row; of a message, in the message section
DELTA_CHARS = 2000
TEXT_CHARS = 100_000


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]} … [{len(text) - limit} more characters]"


def _one_line(text: str) -> str:
    return text.replace("\r\n", "⏎").replace("\n", "⏎").replace("\r", "⏎")


def chunk_page(ex: Exchange, chunks: Sequence[Chunk], sizes: Sequence[int], prev_ns: int = 0) -> str:
    """A page of an exchange's chunk table, from any chunk on: `chunks` may be cut short (a page holds a
    bounded number of bytes), `sizes` are their recorded lengths. Events are parsed from the page's first
    chunk, so an event that began on the page before shows no delta here."""
    marks = chunk_marks(chunks, [c.t_ns for c in chunks], first_seen=bool(chunks) and chunks[0].index > 0)
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
                    f'<td class="d">{esc(_one_line(_clip(m.delta, DELTA_CHARS)))}</td>'
                    f'<td class="n">{esc(", ".join(notes))}</td></tr>')
        prev = m.t_ns
    return ('<table class="chunks"><thead><tr><th>chunk</th><th>at ms</th><th>gap ms</th><th>bytes</th>'
            f'<th>delta</th><th></th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _messages(s: Series) -> str:
    if s.seen_text is not None:
        return (f"<h3>what the client read before it left</h3><pre>{esc(_clip(s.seen_text, TEXT_CHARS))}</pre>"
                f"<h3>what the upstream sent (recorded whole)</h3><pre>{esc(_clip(s.text, TEXT_CHARS))}</pre>")
    return f"<pre>{esc(_clip(s.text, TEXT_CHARS))}</pre>"


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
        f'<div class="meta">tape {esc(ex.tape)} · #{ex.seq} · {esc(ex.started_at or "")} · '
        f"{esc(ex.method)} {esc(ex.path + query)} · model {esc(ex.model or '-')} · "
        f"HTTP {esc(ex.status or '-')} · {'stream' if ex.stream else 'no stream'} · client {esc(ex.client or '-')}"
        "</div>",
        nav_html,
    ]
    if diagnosis_lines:
        summary = diagnosis_lines[0].split(": ", 1)[-1]
        parts.append(f'<p class="lead">{esc(summary)}</p>')
    if len(lanes) == 2:
        where = parting(lanes[0], lanes[1])
        words = "A and B agree chunk for chunk" if where is None else f"A and B part at chunk {where[0]}: {where[2]}"
        parts.append(f'<p class="lead part">{esc(words)}</p>')
    parts.append(series_svg(lanes, width=width))
    letters = "AB" if len(lanes) == 2 else "A"
    parts.append('<h2>message</h2><div class="cols">' + "".join(
        f"<div>{f'<h3>{letter} · {esc(s.title)}</h3>' if len(lanes) == 2 else ''}{_messages(s)}</div>"
        for letter, s in zip(letters, lanes, strict=True)) + "</div>")
    if diagnosis_lines:
        parts.append(f'<h2>diagnosis</h2><pre class="diagnosis">{esc(chr(10).join(diagnosis_lines))}</pre>')
    if replay_command:
        parts.append(f'<h2>replay it</h2><pre class="cmd">{esc(replay_command)}</pre>')
    if chunks_html is not None:
        parts.append(f"<h2>chunks</h2>{chunks_html}")
    else:
        parts.append('<h2>chunks</h2><div class="cols">' + "".join(
            f"<div>{f'<h3>{letter}</h3>' if len(lanes) == 2 else ''}{chunk_table(s, letter.lower())}</div>"
            for letter, s in zip(letters, lanes, strict=True)) + "</div>")
    return html_page(f"streamreplay · exchange {ex.id}", "".join(parts), refresh_s=refresh_s)

