"""What is done to stored exchanges after the fact: their summaries, and the ones a dead daemon left open."""

from __future__ import annotations

import json
import os
import sqlite3

from streamreplay.dialects import dialect_for
from streamreplay.endcause import EndCause
from streamreplay.exchange import storable
from streamreplay.summary import Summarizer


def mark_interrupted(conn: sqlite3.Connection) -> list[int]:
    """Exchanges left open by a daemon that is no longer running become `interrupted`; returns their ids."""
    rows = conn.execute("select id, recorder_pid from exchanges where end_cause is null").fetchall()
    dead = [eid for eid, pid in rows if not recording_elsewhere(pid)]
    with conn:
        for eid in dead:
            count, size, last = conn.execute(
                "select count(*), coalesce(sum(length(data)), 0), max(t_ns) from chunks where exchange_id = ?",
                [eid],
            ).fetchone()
            conn.execute(
                "update exchanges set end_cause = ?, end_detail = ?, chunk_count = ?, byte_count = ?, "
                "duration_ns = ? where id = ?",
                [EndCause.INTERRUPTED.value, "the recording daemon stopped mid-exchange", count, size, last, eid],
            )
    for eid in dead:
        summarize(conn, eid)  # what it had received reads like any other exchange
    return dead


def recording_elsewhere(pid: int | None) -> bool:
    """The recorder that wrote a row (its `recorder_pid`) is another process, still running: its open exchanges
    are in flight, and it may record into their tape again. This process's own rows are not: its writer is the
    one asking (a writer opened before in this process and gone left them)."""
    return bool(pid and pid != os.getpid() and _pid_alive(pid))


def summarize(conn: sqlite3.Connection, exchange_id: int) -> None:
    """Write an exchange's summary columns from its stored chunks (decoded when the upstream compressed them)."""
    row = conn.execute(
        "select stream, status, response_headers, path from exchanges where id = ?", [exchange_id]).fetchone()
    if row is None:
        return  # pruned between its end and its summary (streamreplay.prune): nothing left to sum up
    stream, status, headers, path = row
    summary = Summarizer(bool(stream), content_encoding=_header(headers, "content-encoding"), dialect=dialect_for(path),
                         content_type=_header(headers, "content-type"))
    for (data,) in conn.execute("select data from chunks where exchange_id = ? order by idx", [exchange_id]):
        summary.feed(bytes(data))
        if summary.full:
            break
    columns = storable(summary.columns())
    with conn:
        sets = ", ".join(f"{k} = ?" for k in columns)
        conn.execute(f"update exchanges set {sets} where id = ?", [*columns.values(), exchange_id])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _header(headers_json: str | None, name: str) -> str | None:
    try:
        pairs = json.loads(headers_json or "[]")
    except ValueError:
        return None
    return next((v for k, v in pairs if isinstance(k, str) and k.lower() == name), None)
