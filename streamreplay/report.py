"""Plain-text and JSON views of recordings: what `ls` and `show` print."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

from streamreplay.dialects import CHAT, Dialect
from streamreplay.endcause import EndCause
from streamreplay.sse import Assembled
from streamreplay.store import Chunk, Exchange


def _ms(ns: int | None) -> str:
    return "-" if ns is None else f"{ns / 1e6:.0f}"


def _words(text: str | None, limit: int = 40) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def exchange_json(ex: Exchange) -> dict[str, Any]:
    data = asdict(ex)
    data["request_body"] = ex.request_body.decode("utf-8", "replace")
    data["dialect"] = ex.dialect.name
    return data


LS_COLUMNS = ("id", "tape", "started", "request", "dialect", "model", "stream", "chunks", "ttfb_ms", "ms", "end",
              "text")


def ls_rows(exchanges: Iterable[Exchange]) -> list[tuple[str, ...]]:
    return list(iter_ls_rows(exchanges))


def iter_ls_rows(exchanges: Iterable[Exchange]) -> Iterator[tuple[str, ...]]:
    """`ls`'s row of each exchange, one at a time."""
    for ex in exchanges:
        end = ex.end_cause or "open"
        if ex.end_cause == EndCause.CLIENT_LEFT and ex.client_left_at_chunk is not None:
            end += f"@{ex.client_left_at_chunk}"
        if ex.store_error:
            end += " (partial)"  # never shown as whole: see show's `stored` line
        yield (
            str(ex.id), ex.tape, (ex.started_at or "")[11:19], f"{ex.method} {ex.path}", ex.dialect.name,
            ex.model or "-", "yes" if ex.stream else "no", str(ex.chunk_count), _ms(ex.ttfb_ns), _ms(ex.duration_ns),
            end, _words(ex.text),
        )


def table_lines(header: tuple[str, ...], rows: Iterable[tuple[str, ...]], sample: int = 500) -> Iterator[str]:
    """`table`, a line at a time: the widths come from the first `sample` rows, and a later, wider cell
    pushes its row out rather than being cut, so a listing of any length is never held whole."""
    rows = iter(rows)
    first = list(itertools.islice(rows, sample))
    widths = [max(len(h), *(len(r[i]) for r in first)) if first else len(h) for i, h in enumerate(header)]
    for row in itertools.chain([header], first, rows):
        yield "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows]
    return "\n".join(lines)


def chunk_events(chunks: Sequence[Chunk], dialect: Dialect = CHAT) -> list[list[Assembled]]:
    """For each chunk, every event it completes, each assembled on its own (its terminal event has `done`).

    One parser runs across all chunks: an event may start in one read and end in the next.
    """
    parser = dialect.parser()
    out = []
    for chunk in chunks:
        results: list[Assembled] = []
        for event in parser.feed(chunk.data):
            one = dialect.assembler()
            one.feed_event(event)
            results.append(one.result())
        out.append(results)
    return out


def describe_event(result: Assembled, dialect: Dialect = CHAT) -> str:
    """An event in a few characters: its text, or what it carries instead."""
    if result.text:
        return result.text
    if result.done:
        return dialect.terminal
    if result.finish_reason:
        return f"<{dialect.stop_field}={result.finish_reason}>"
    if result.error:
        return f"<error {result.error.get('message', '')}>"
    if result.tool_calls:
        fn = result.tool_calls[0]["function"]
        return f"<tool_call {fn.get('name') or ''}{fn.get('arguments') or ''}>"
    return ""


def chunk_deltas(chunks: Sequence[Chunk], dialect: Dialect = CHAT) -> list[str]:
    """For each chunk, the text its completed events add (what a user would see arrive)."""
    return ["".join(describe_event(result, dialect) for result in events) for events in chunk_events(chunks, dialect)]


def show_lines(ex: Exchange, chunks: list[Chunk]) -> list[str]:
    req = ex.request_json()
    lines = [
        f"exchange {ex.tape}:{ex.seq}  (id {ex.id})" + (f"  {ex.started_at}" if ex.started_at else ""),
        f"request   {ex.method} {ex.path}{'?' + ex.query if ex.query else ''}  {ex.dialect.name}  "
        f"model {ex.model or '-'}  stream {'yes' if ex.stream else 'no'}  client {ex.client or '-'}",
    ]
    if isinstance(req, dict) and isinstance(req.get("messages"), list) and req["messages"]:
        last = req["messages"][-1]
        if isinstance(last, dict):
            lines.append(f"last msg  {last.get('role')}: {_words(str(last.get('content')), 70)}")
    lines.append(f"response  {ex.status or '-'}  {ex.response_header('content-type') or ''}  "
                 f"headers {_ms(ex.headers_ns)} ms  first byte {_ms(ex.ttfb_ns)} ms")
    lines.append("")
    lines.append(f"{'chunk':>5} {'at ms':>9} {'gap ms':>8} {'bytes':>6}  delta")
    prev = 0
    deltas = chunk_deltas(chunks, ex.dialect)
    for chunk, delta in zip(chunks, deltas, strict=False):
        left = ""
        if ex.client_left_at_chunk is not None and chunk.index == ex.client_left_at_chunk:
            left = f"   <- client had left at {ex.client_left_ns / 1e6:.1f} ms"  # type: ignore[operator]
        row = f"{chunk.index:>5} {chunk.t_ns / 1e6:>9.1f} {(chunk.t_ns - prev) / 1e6:>8.1f} {len(chunk.data):>6}"
        # a chunk that added no text ends at its byte count: no trailing blanks to trip a diff
        if delta or left:
            row += f"  {json.dumps(delta, ensure_ascii=False)[1:-1]}{left}"
        lines.append(row)
        prev = chunk.t_ns
    lines.append("")
    lines.append(f"end       {ex.end_cause or 'open'}" + (f"  ({ex.end_detail})" if ex.end_detail else ""))
    if ex.store_error:
        lines.append(f"stored    PARTIAL: {ex.store_error}")
    if ex.upstream_end and ex.upstream_end != ex.end_cause:
        lines.append(f"upstream  {ex.upstream_end}")
    terminal = ex.dialect.terminal
    lines.append(f"done      {terminal + ' seen' if ex.done else 'no ' + terminal}  "
                 f"{ex.dialect.stop_said(ex.finish_reason)}  {ex.chunk_count} chunks  {ex.byte_count} bytes  "
                 f"{_ms(ex.duration_ns)} ms")
    if ex.usage:
        lines.append(f"usage     {json.dumps(ex.usage)}")
    for call in ex.tool_calls:
        lines.append(f"tool call {call['function'].get('name')}({call['function'].get('arguments')})")
    lines.append(f"message   {ex.text!r}")
    for problem in ex.problems:
        lines.append(f"problem   {problem}")
    return lines
