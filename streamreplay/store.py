"""The SQLite store: tapes, exchanges and chunks (DESIGN.md, "Data model").

Reads go through sqlite-utils. Writes from the proxy go through `StoreWriter`, a thread of its
own that commits in batches, so that the event loop forwarding chunks never waits on the disk,
and a killed daemon loses at most what arrived since the last commit (well under 100 ms).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

from streamreplay.endcause import EndCause
from streamreplay.requestkey import request_key
from streamreplay.summary import Summarizer

DEFAULT_DB = "recordings/streamreplay.db"
SCHEMA_VERSION = 1

#: the longest the writer holds received chunks before committing them
COMMIT_INTERVAL = 0.05
#: the writer wakes at most this often: each wake takes the GIL from the event loop, and waking per
#: chunk (thousands of times a second under load) delays the loop's chunks more than batching does
BATCH_PAUSE = 0.01

EXCHANGE_COLUMNS: dict[str, Any] = {
    "id": int,
    "tape": str,
    "seq": int,  # order within the tape
    "started_at": str,
    "method": str,
    "path": str,  # relative to the base_url, e.g. /chat/completions
    "query": str,
    "request_headers": str,  # JSON [[name, value], ...], secrets redacted
    "request_body": str,
    "request_key": str,
    "stream": int,
    "model": str,
    "client": str,  # User-Agent, for telling which client sent it
    "upstream": str,
    "status": int,
    "response_headers": str,
    "headers_ns": int,  # response head received, since the request was sent upstream
    "ttfb_ns": int,  # first body byte
    "duration_ns": int,
    "chunk_count": int,
    "byte_count": int,
    "end_cause": str,
    "end_detail": str,
    "upstream_end": str,  # how the upstream ended, even when the client left first
    "client_left_at_chunk": int,  # chunks the client had been sent when it went away
    "client_left_ns": int,
    "done": int,  # saw data: [DONE]
    "finish_reason": str,
    "text": str,
    "tool_calls": str,
    "usage": str,
    "problems": str,
    "recorder_pid": int,
}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Chunk:
    index: int
    t_ns: int
    data: bytes


@dataclass
class Exchange:
    """One recorded request/response, as stored."""

    id: int
    tape: str
    seq: int
    method: str
    path: str
    query: str = ""
    request_headers: list[list[str]] = field(default_factory=list)
    request_body: bytes = b""
    request_key: str = ""
    stream: bool = False
    model: str | None = None
    client: str | None = None
    upstream: str | None = None
    started_at: str | None = None
    status: int | None = None
    response_headers: list[list[str]] = field(default_factory=list)
    headers_ns: int | None = None
    ttfb_ns: int | None = None
    duration_ns: int | None = None
    chunk_count: int = 0
    byte_count: int = 0
    end_cause: str | None = None
    end_detail: str | None = None
    upstream_end: str | None = None
    client_left_at_chunk: int | None = None
    client_left_ns: int | None = None
    done: bool = False
    finish_reason: str | None = None
    text: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Exchange:
        body = row.get("request_body") or b""
        return cls(
            id=row["id"],
            tape=row["tape"],
            seq=row["seq"] or 0,
            method=row["method"],
            path=row["path"],
            query=row.get("query") or "",
            request_headers=json.loads(row.get("request_headers") or "[]"),
            request_body=body.encode() if isinstance(body, str) else body,
            request_key=row.get("request_key") or "",
            stream=bool(row.get("stream")),
            model=row.get("model"),
            client=row.get("client"),
            upstream=row.get("upstream"),
            started_at=row.get("started_at"),
            status=row.get("status"),
            response_headers=json.loads(row.get("response_headers") or "[]"),
            headers_ns=row.get("headers_ns"),
            ttfb_ns=row.get("ttfb_ns"),
            duration_ns=row.get("duration_ns"),
            chunk_count=row.get("chunk_count") or 0,
            byte_count=row.get("byte_count") or 0,
            end_cause=row.get("end_cause"),
            end_detail=row.get("end_detail"),
            upstream_end=row.get("upstream_end"),
            client_left_at_chunk=row.get("client_left_at_chunk"),
            client_left_ns=row.get("client_left_ns"),
            done=bool(row.get("done")),
            finish_reason=row.get("finish_reason"),
            text=row.get("text"),
            tool_calls=json.loads(row.get("tool_calls") or "[]"),
            usage=json.loads(row["usage"]) if row.get("usage") else None,
            problems=json.loads(row.get("problems") or "[]"),
        )

    def request_json(self) -> Any:
        """The request body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.request_body) if self.request_body else None
        except ValueError:
            return None

    def response_header(self, name: str) -> str | None:
        for k, v in self.response_headers:
            if k.lower() == name.lower():
                return v
        return None


def body_for_db(body: bytes) -> str | bytes:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreError(Exception):
    """A DB that cannot be used, said plainly: not a streamreplay DB, corrupt, locked, too new."""


def open_store(path: str | Path) -> Store:
    """A Store, or a StoreError saying why not (instead of a sqlite3 traceback)."""
    try:
        return Store(path)
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            raise StoreError(f"{path} is locked by another process (a recording daemon?): {text}") from None
        raise StoreError(f"{path} is not a usable streamreplay database: {text}") from None


class Store:
    """Reads and schema. One per thread: sqlite3 connections stay on the thread that made them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # one thread at a time, but not always the one that opened it (a server started from sync code)
        self.db = sqlite_utils.Database(sqlite3.connect(str(path), check_same_thread=False))
        self.db.conn.execute("PRAGMA busy_timeout = 5000")
        self.ensure_schema()

    def ensure_schema(self) -> None:
        db = self.db
        if str(self.path) != ":memory:":
            db.enable_wal()
        # WAL with synchronous=NORMAL: a commit is not fsynced, so it costs microseconds, and a killed
        # daemon still loses nothing it committed (the WAL is in the OS's cache); only a power cut can.
        db.conn.execute("PRAGMA synchronous = NORMAL")
        if "tapes" not in db.table_names():
            db["tapes"].create({"name": str, "created_at": str, "source": str}, pk="name")
        if "exchanges" not in db.table_names():
            db["exchanges"].create(EXCHANGE_COLUMNS, pk="id", not_null={"tape", "method", "path"})
            db["exchanges"].create_index(["tape", "seq"])
            db["exchanges"].create_index(["end_cause"])
        if "chunks" not in db.table_names():
            db["chunks"].create(
                {"exchange_id": int, "idx": int, "t_ns": int, "data": bytes},
                pk=("exchange_id", "idx"),
                foreign_keys=[("exchange_id", "exchanges", "id")],
            )
        self.migrate()

    def migrate(self) -> None:
        """Bring a DB written by an older version up to this schema: columns are only ever added."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer streamreplay (schema {version} > {SCHEMA_VERSION})")
        existing = self.db["exchanges"].columns_dict
        for name, kind in EXCHANGE_COLUMNS.items():
            if name not in existing:
                self.db["exchanges"].add_column(name, kind)
        if version != SCHEMA_VERSION:
            self.db.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- reads -------------------------------------------------------------------------------

    def tapes(self) -> list[dict[str, Any]]:
        return list(
            self.db.query(
                "select t.name, t.created_at, t.source, count(e.id) as exchanges "
                "from tapes t left join exchanges e on e.tape = t.name group by t.name order by t.created_at"
            )
        )

    def exchanges(
        self, tape: str | None = None, cause: str | None = None, limit: int | None = None
    ) -> list[Exchange]:
        where, params = [], []
        if tape:
            where.append("tape = ?")
            params.append(tape)
        if cause:
            where.append("end_cause = ?")
            params.append(cause)
        sql = "select * from exchanges"
        if where:
            sql += " where " + " and ".join(where)
        sql += " order by id"
        if limit:
            sql += f" limit {int(limit)}"
        return [Exchange.from_row(r) for r in self.db.query(sql, params)]

    def exchange(self, exchange_id: int) -> Exchange:
        rows = list(self.db.query("select * from exchanges where id = ?", [exchange_id]))
        if not rows:
            raise KeyError(f"no exchange {exchange_id} in {self.path}")
        return Exchange.from_row(rows[0])

    def chunks(self, exchange_id: int) -> list[Chunk]:
        return list(self.iter_chunks(exchange_id))

    def iter_chunks(self, exchange_id: int) -> Iterator[Chunk]:
        cursor = self.db.conn.execute(
            "select idx, t_ns, data from chunks where exchange_id = ? order by idx", [exchange_id]
        )
        for idx, t_ns, data in cursor:
            yield Chunk(idx, t_ns, bytes(data))

    def latest_tape(self) -> str | None:
        row = self.db.execute("select tape from exchanges order by id desc limit 1").fetchone()
        return row[0] if row else None

    # -- maintenance --------------------------------------------------------------------------

    def mark_interrupted(self) -> list[int]:
        """Exchanges left open by a daemon that is no longer running become `interrupted`."""
        rows = self.db.execute(
            "select id, recorder_pid from exchanges where end_cause is null"
        ).fetchall()
        dead = [eid for eid, pid in rows if not (pid and pid != os.getpid() and _pid_alive(pid))]
        with self.db.conn:
            for eid in dead:
                count, size, last = self.db.execute(
                    "select count(*), coalesce(sum(length(data)), 0), max(t_ns) from chunks where exchange_id = ?",
                    [eid],
                ).fetchone()
                self.db.execute(
                    "update exchanges set end_cause = ?, end_detail = ?, chunk_count = ?, byte_count = ?, "
                    "duration_ns = ? where id = ?",
                    [EndCause.INTERRUPTED.value, "the recording daemon stopped mid-exchange", count, size, last, eid],
                )
        return dead

    def integrity_ok(self) -> bool:
        return self.db.execute("pragma integrity_check").fetchone()[0] == "ok"


class ExchangeHandle:
    """The proxy's reference to an exchange whose row the writer thread has not inserted yet."""

    __slots__ = ("id", "tape", "seq")

    def __init__(self, tape: str, seq: int) -> None:
        self.id: int | None = None
        self.tape = tape
        self.seq = seq


class StoreWriter:
    """The only writer of a recording session: a thread fed through a queue.

    `begin`, `chunk` and `end` only enqueue; they never touch the disk, so they are safe to call
    on the forwarding path. The thread applies whatever has queued up in one transaction.
    """

    def __init__(self, path: str | Path, tape: str, source: str = "") -> None:
        self.path = Path(path)
        self.tape = tape
        self.source = source
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._seq = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.committed_chunks = 0
        # each counter has one writer thread, so the difference needs no lock
        self._queued_bytes = 0  # the event loop's
        self._committed_bytes = 0  # the writer thread's
        #: called on the writer thread with each finished exchange's row, once it is committed
        self.on_end: Callable[[dict[str, Any]], None] | None = None
        self._unsummarized: deque[int] = deque()  # the writer thread's

    # -- called from the event loop -------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="streamreplay-store", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error:
            raise self._error

    def begin(self, row: dict[str, Any]) -> ExchangeHandle:
        handle = ExchangeHandle(self.tape, self._seq)
        self._seq += 1
        self._queue.put(("begin", handle, row))
        return handle

    def chunk(self, handle: ExchangeHandle, index: int, t_ns: int, data: bytes) -> None:
        self._queued_bytes += len(data)
        self._queue.put(("chunk", handle, index, t_ns, data))

    @property
    def backlog(self) -> int:
        """Bytes handed over and not yet committed."""
        return self._queued_bytes - self._committed_bytes

    async def room(self, below: int = 8 * 1024 * 1024) -> None:
        """Wait (without blocking the loop) until the backlog is under `below` bytes."""
        while self.backlog > below and self._thread is not None:
            await asyncio.sleep(0.005)

    def update(self, handle: ExchangeHandle, updates: dict[str, Any]) -> None:
        self._queue.put(("update", handle, updates))

    def end(self, handle: ExchangeHandle, updates: dict[str, Any]) -> None:
        """The last update of an exchange: the writer adds the assembled summary and calls `on_end`."""
        self._queue.put(("end", handle, updates))

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far is committed."""
        done = threading.Event()
        self._queue.put(("flush", done))
        done.wait(timeout)

    def close(self) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join()
        self._thread = None

    # -- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            store = open_store(self.path)
            db = store.db
            try:
                store.mark_interrupted()
                if not db["tapes"].count_where("name = ?", [self.tape]):
                    db["tapes"].insert({"name": self.tape, "created_at": now_iso(), "source": self.source})
                row = db.execute("select coalesce(max(seq) + 1, 0) from exchanges where tape = ?",
                                 [self.tape]).fetchone()
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{self.path} is locked by another process, or unusable: {exc}") from None
            self._seq = row[0]
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        conn: sqlite3.Connection = db.conn
        pid = os.getpid()
        stopping = False
        while not stopping:
            try:
                # with summaries to write, never block: they are what the thread does when idle
                item = self._queue.get(block=not self._unsummarized)
            except queue.Empty:
                self._summarize(conn, self._unsummarized.popleft())
                continue
            batch = [item]
            deadline = time.monotonic() + COMMIT_INTERVAL
            # take whatever else is already queued, but commit within the interval
            while time.monotonic() < deadline:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            chunk_rows: list[tuple[int, int, int, bytes]] = []
            flushes: list[threading.Event] = []
            finished: list[int] = []
            with conn:
                for msg in batch:
                    if msg is None:
                        stopping = True
                        continue
                    kind = msg[0]
                    if kind == "chunk":
                        _, handle, index, t_ns, data = msg
                        chunk_rows.append((handle.id, index, t_ns, data))
                    elif kind == "begin":
                        self._flush_chunks(conn, chunk_rows)
                        _, handle, row = msg
                        row = dict(row, tape=handle.tape, seq=handle.seq, recorder_pid=pid)
                        body = row.get("request_body") or b""
                        row.setdefault("request_key", request_key(row["method"], row["path"], body))
                        if isinstance(row.get("request_body"), bytes):
                            row["request_body"] = body_for_db(row["request_body"])
                        cur = conn.execute(
                            f"insert into exchanges ({', '.join(row)}) values ({', '.join('?' * len(row))})",
                            list(row.values()),
                        )
                        handle.id = cur.lastrowid
                    elif kind in ("update", "end"):
                        self._flush_chunks(conn, chunk_rows)
                        _, handle, updates = msg
                        sets = ", ".join(f"{k} = ?" for k in updates)
                        conn.execute(f"update exchanges set {sets} where id = ?", [*updates.values(), handle.id])
                        if kind == "end":
                            finished.append(handle.id)
                            self._unsummarized.append(handle.id)
                    elif kind == "flush":
                        flushes.append(msg[1])
                self._flush_chunks(conn, chunk_rows)
            if self.on_end is not None:
                for exchange_id in finished:
                    row = next(db.query("select * from exchanges where id = ?", [exchange_id]))
                    self.on_end(row)
            if flushes or stopping:
                while self._unsummarized:
                    self._summarize(conn, self._unsummarized.popleft())
            for event in flushes:
                event.set()
            if not flushes:
                time.sleep(BATCH_PAUSE)
        db.close()

    def _summarize(self, conn: sqlite3.Connection, exchange_id: int) -> None:
        """The assembled text, finish_reason, tool calls and usage, for listing. Parsing every event costs
        CPU (and the GIL the event loop needs), so it runs only when no chunk is waiting to be stored."""
        stream, status = conn.execute("select stream, status from exchanges where id = ?", [exchange_id]).fetchone()
        summary = Summarizer(bool(stream))
        for (data,) in conn.execute("select data from chunks where exchange_id = ? order by idx", [exchange_id]):
            summary.feed(bytes(data))
            if summary.full:
                break
        columns = summary.columns(status)
        with conn:
            sets = ", ".join(f"{k} = ?" for k in columns)
            conn.execute(f"update exchanges set {sets} where id = ?", [*columns.values(), exchange_id])

    def _flush_chunks(self, conn: sqlite3.Connection, rows: list[tuple[int, int, int, bytes]]) -> None:
        if rows:
            conn.executemany("insert into chunks (exchange_id, idx, t_ns, data) values (?, ?, ?, ?)", rows)
            self.committed_chunks += len(rows)
            self._committed_bytes += sum(len(r[3]) for r in rows)
            rows.clear()
