"""`streamreplay matrix`: each ending and fault replayed into each reference client, and what the app got.

The answer to "which clients accept a truncated stream silently": a row that reads "partial text,
no error" is a cutoff the app will never notice unless it checks finish_reason itself. A cassette is
played into the reference clients of its own dialect (chat, responses, anthropic, azure, ollama).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streamreplay.clientid import Client
from streamreplay.clients import Outcome, chat_messages, clients_of, run_client
from streamreplay.dialects import CHAT, DIALECTS, Dialect
from streamreplay.replay import ReplayServer
from streamreplay.replay.source import CassetteSource

DEFAULT_TAPE = "openai-happy-path"
#: the bundled tape each dialect's matrix plays by default
DEFAULT_TAPES = {"chat": DEFAULT_TAPE, **{name: f"{name}-happy-path" for name in DIALECTS if name != "chat"}}


@dataclass
class Row:
    label: str
    spec: str | None


def rows(chunks: int, timeout: float, dialect: Dialect = CHAT) -> list[Row]:
    n = max(1, chunks // 2)
    late = timeout + 1.0
    return [
        Row("complete (as recorded)", None),
        Row(f"eof_without_done: no {dialect.terminal} (drop-done)", "drop-done"),
        Row(f"no {dialect.stop_field} (drop-finish)", "drop-finish"),
        Row(f"clean end mid-answer (cut:chunk={n})", f"cut:chunk={n}"),
        Row(f"upstream_closed (close:chunk={n})", f"close:chunk={n}"),
        Row(f"upstream_reset (reset:chunk={n})", f"reset:chunk={n}"),
        Row(f"error event (error-event:chunk={n})", f"error-event:chunk={n}"),
        Row(f"corrupt JSON (corrupt:chunk={n})", f"corrupt:chunk={n}"),
        Row("http_error 429 (status:code=429)", "status:code=429"),
        Row("http_error 500 (status:code=500)", "status:code=500"),
        Row(f"{late:g} s gap mid-stream (stall:chunk={n})", f"stall:chunk={n},seconds={late:g}"),
        Row(f"{late:g} s before the head (delay-first)", f"delay-first:seconds={late:g}"),
    ]


def verdict(outcome: Outcome, full_text: str) -> str:
    if outcome.error:
        kind = outcome.error_type or "error"
        if "Timeout" in kind:
            return f"times out after {outcome.seconds:.1f} s ({kind})"
        return f"raises {kind}"
    if outcome.text == full_text:
        return "completes"
    return f"partial text, no error ({len(outcome.text)}/{len(full_text)} chars)"


async def run_matrix(cassette: Path, clients: list[str], timeout: float = 1.0,
                     progress: Callable[[str], None] | None = None, faults: list[str] | None = None,
                     guarded: bool = False) -> tuple[list[Row], dict[tuple[str, str], str]]:
    """Each row replayed into each client (by id or label); the verdicts by (row label, client as given).
    `faults` keeps only the rows whose fault is named there ("" for the recording as it is). `guarded`:
    every client reads through the stream guard (streamreplay.guard.install), as an app that uses it."""
    if guarded:
        from streamreplay import guard

        guard.install()
        try:
            return await run_matrix(cassette, clients, timeout, progress, faults)
        finally:
            guard.uninstall()
    source = CassetteSource(cassette)
    exchange = source.exchanges()[0]
    messages = chat_messages(exchange.request_json())
    table_rows = rows(len(source.chunks(exchange)), timeout, exchange.dialect)
    if faults is not None:
        table_rows = [r for r in table_rows if (r.spec or "").split(":")[0] in faults]
    results: dict[tuple[str, str], str] = {}
    # sequence matching with repeat: every client's request body differs a little, all get this answer
    async with ReplayServer(source, speed=0, match="sequence") as server:
        for row in table_rows:
            base_url = server.fault_url(row.spec) if row.spec else server.base_url
            for client in clients:
                outcome = await run_client(client, base_url, messages, timeout)
                results[(row.label, client)] = verdict(outcome, exchange.text or "")
                if progress:
                    progress(f"{row.label} / {client}: {results[(row.label, client)]}")
    return table_rows, results


def render(table_rows: list[Row], clients: list[str], results: dict[tuple[str, str], str],
           markdown: bool = False) -> str:
    header = ["ending or fault", *clients]
    body = [[row.label, *(results[(row.label, c)] for c in clients)] for row in table_rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *body])


def main(cassette: Path, clients: list[str] | None = None, timeout: float = 1.0, markdown: bool = False,
         say: Callable[[str], None] = print, guarded: bool = False) -> None:
    dialect = CassetteSource(cassette).exchanges()[0].dialect
    speak = clients_of(dialect)
    chosen = [Client.parse(c, among=speak).label for c in clients] if clients else [c.label for c in speak]
    table_rows, results = asyncio.run(run_matrix(cassette, chosen, timeout, guarded=guarded))
    say(render(table_rows, chosen, results, markdown))
