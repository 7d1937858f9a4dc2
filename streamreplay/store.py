"""The SQLite store: tapes, exchanges and chunks (DESIGN.md, "Data model").

Reads go through sqlite-utils. Writes from the proxy go through `StoreWriter`, a thread of its
own that commits in batches, so that the event loop forwarding chunks never waits on the disk,
and a killed daemon loses at most what arrived since the last commit (well under 100 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
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
SCHEMA_VERSION = 2

#: the longest the writer holds received chunks before committing them
COMMIT_INTERVAL = 0.05
#: the writer wakes at most this often: each wake takes the GIL from the event loop, and waking per
#: chunk (thousands of times a second under load) delays the loop's chunks more than batching does
BATCH_PAUSE = 0.01
#: bytes received but not yet committed, past which the proxy waits for the store (while it works)
STORE_BACKLOG = 16 * 1024 * 1024

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
    "store_error": str,  # why the exchange is not stored whole; NULL when it is
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
    store_error: str | None = None

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
            store_error=row.get("store_error"),
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


def open_store(path: str | Path, readonly: bool = False) -> Store:
    """A Store, or a StoreError saying why not (instead of a sqlite3 traceback).

    A DB that cannot be written (a read-only file or directory, where SQLite cannot make its -wal and
    -shm files) is opened read-only, so it can still be listed, shown and replayed."""
    try:
        try:
            return Store(path, readonly=readonly)
        except sqlite3.OperationalError as exc:
            if readonly or not any(w in str(exc) for w in ("readonly", "read-only", "unable to open")):
                raise
            if not Path(path).exists():
                raise
            return Store(path, readonly=True)
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            raise StoreError(f"{path} is locked by another process (a recording daemon?): {text}") from None
        raise StoreError(f"{path} is not a usable streamreplay database: {text}") from None
    except OSError as exc:  # the folder for a new DB cannot be made
        raise StoreError(f"{path} cannot be opened: {exc}") from None


class Store:
    """Reads and schema. One per thread: sqlite3 connections stay on the thread that made them."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            # immutable: no -shm or lock files either, which a read-only place cannot hold; it is only
            # safe for a DB nobody writes meanwhile, which is what a read-only place means
            uri = f"{self.path.resolve().as_uri()}?mode=ro&immutable=1"
            self.db = sqlite_utils.Database(sqlite3.connect(uri, uri=True, check_same_thread=False))
            return
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

    def resolve(self, ref: str | int) -> int:
        """The id of the exchange a user names: `12` (an id), `TAPE` (its last exchange) or `TAPE:SEQ`
        (the seq `ls` and miss messages print). Names that do not depend on the order a DB was filled."""
        text = str(ref).strip()
        if text.isdigit():
            self.exchange(int(text))  # KeyError when there is none
            return int(text)
        tape, _, seq = text.rpartition(":") if ":" in text else (text, "", "")
        if seq and not seq.isdigit():
            raise KeyError(f"{text!r} is not an exchange: give an id, TAPE or TAPE:SEQ")
        sql = ("select id from exchanges where tape = ?" + (" and seq = ?" if seq else "")
               + " order by seq desc, id desc")
        row = self.db.execute(sql, [tape, int(seq)] if seq else [tape]).fetchone()
        if row is None:
            known = ", ".join(t["name"] for t in self.tapes()) or "none"
            where = f"no exchange {seq} in tape {tape!r}" if seq else f"no tape {tape!r}"
            raise KeyError(f"{where} in {self.path} (tapes: {known})")
        return int(row[0])

    def chunks(self, exchange_id: int) -> list[Chunk]:
        return list(self.iter_chunks(exchange_id))

    def iter_chunks(self, exchange_id: int) -> Iterator[Chunk]:
        cursor = self.db.conn.execute(
            "select idx, t_ns, data from chunks where exchange_id = ? order by idx", [exchange_id]
        )
        for idx, t_ns, data in cursor:
            yield Chunk(idx, t_ns, bytes(data))

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
        for eid in dead:
            summarize(self.db.conn, eid)  # what it had received reads like any other exchange
        return dead

    def integrity_ok(self) -> bool:
        return self.db.execute("pragma integrity_check").fetchone()[0] == "ok"


class ExchangeHandle:
    """The proxy's reference to an exchange whose row the writer thread may not have inserted yet."""

    __slots__ = ("id", "tape", "seq", "label", "lost", "dropped")

    def __init__(self, tape: str, label: str) -> None:
        self.id: int | None = None  # set by the writer once the row is in
        self.seq: int | None = None  # set by the writer: the next seq of the tape in the DB, at insert time
        self.tape = tape
        self.label = label  # "POST /chat/completions", for the lines that say what was lost
        #: why this exchange is not stored whole (None while it is)
        self.lost: str | None = None
        #: chunks handed over but never queued: the writer was gone, or failing with its backlog full
        self.dropped = 0

    @property
    def ref(self) -> str:
        """How the lines about it name it: its id once stored, else its tape and place."""
        if self.id is not None:
            return f"#{self.id}"
        return f"{self.tape}:{self.seq}" if self.seq is not None else f"(tape {self.tape}, no row)"


def readable(text: str) -> str:
    """`text` as valid UTF-8: bytes that were not UTF-8 (surrogate escapes) as `\\xNN`, other lone
    surrogates as `\\udNNN`. For the columns shown to people; the lossless forms are kept elsewhere."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _storable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: readable(v) if isinstance(v, str) else v for k, v in row.items()}


#: the store_error of a row whose end is not stored yet; an exchange that ends well clears it
UNFINISHED = "not stored whole: its end was never stored"

#: sqlite3 errors that say the database or the disk is unusable, not that one row is bad
_ENVIRONMENT_ERRORS = (sqlite3.OperationalError, sqlite3.InternalError)


def describe_failure(exc: BaseException) -> str:
    """One line for an error of the writer: what went wrong, without a traceback."""
    if isinstance(exc, sqlite3.DatabaseError):
        return f"sqlite: {exc}"
    return f"{type(exc).__name__}: {exc}"


class StoreWriter:
    """The only writer of a recording session: a thread fed through a queue.

    `begin`, `chunk` and `end` only enqueue; they never touch the disk, so they are safe to call
    on the forwarding path. The thread applies whatever has queued up in one transaction.

    Storing fails loud and never stops forwarding: a batch that cannot be written is rolled back and
    tried again message by message, each exchange that could not be stored whole is marked `lost`
    (and its row, when there is one, gets `store_error`), `on_failure` is told in one line, and
    `losses` lists them all at the end. Once the thread is gone, or is failing with its backlog
    full, chunks are dropped (and counted) instead of held: memory stays bounded and no client waits.
    """

    def __init__(self, path: str | Path, tape: str, source: str = "", *, unique_tape: bool = False,
                 max_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.tape = tape
        self.source = source
        #: the tape name is a default one: if the DB has it already, take the next free `NAME-2`, `NAME-3`...
        self.unique_tape = unique_tape
        #: the DB may not grow past this (SQLite's max_page_count): a disk quota of its own
        self.max_bytes = max_bytes
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        # each counter has one writer thread, so the difference needs no lock
        self._queued_bytes = 0  # the event loop's
        self._committed_bytes = 0  # the writer thread's
        #: called on the writer thread with each finished exchange's row, once it is committed
        self.on_end: Callable[[dict[str, Any]], None] | None = None
        #: called with one line each time storing starts failing, and for each exchange not stored whole
        self.on_failure: Callable[[str], None] | None = None
        #: the latest reason storing failed, None while it works
        self.failure: str | None = None
        #: every exchange not stored whole: (its reference, why)
        self.losses: list[tuple[str, str]] = []
        self._unsummarized: deque[int] = deque()  # the writer thread's
        self._announced: set[str] = set()  # the writer thread's: failure causes said already

    # -- called from the event loop -------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="streamreplay-store", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error:
            raise self._error

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def begin(self, row: dict[str, Any]) -> ExchangeHandle:
        handle = ExchangeHandle(self.tape, f"{row.get('method')} {row.get('path')}")
        self._queue.put(("begin", handle, row))
        return handle

    def chunk(self, handle: ExchangeHandle, index: int, t_ns: int, data: bytes) -> None:
        if not self.alive or (self.failure is not None and self.backlog > STORE_BACKLOG):
            handle.dropped += 1
            return
        self._queued_bytes += len(data)
        self._queue.put(("chunk", handle, index, t_ns, data))

    @property
    def backlog(self) -> int:
        """Bytes handed over and not yet committed."""
        return self._queued_bytes - self._committed_bytes

    async def room(self, below: int = STORE_BACKLOG // 2) -> None:
        """Wait (without blocking the loop) until the backlog is under `below` bytes, while the writer
        works: a writer that is gone or failing holds no client back (`chunk` drops instead)."""
        while self.backlog > below and self.alive and self.failure is None:
            await asyncio.sleep(0.005)

    def update(self, handle: ExchangeHandle, updates: dict[str, Any]) -> None:
        self._queue.put(("update", handle, updates))

    def end(self, handle: ExchangeHandle, updates: dict[str, Any]) -> None:
        """The last update of an exchange: the writer adds the assembled summary and calls `on_end`."""
        if not self.alive:
            self._lose(handle, "the store's writer had stopped", report=True)
            return
        self._queue.put(("end", handle, updates))

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far is committed."""
        if not self.alive:
            return
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

    def _open(self) -> sqlite_utils.Database:
        store = open_store(self.path)
        db = store.db
        try:
            if self.max_bytes:
                page_size = db.execute("pragma page_size").fetchone()[0]
                db.execute(f"pragma max_page_count = {max(1, int(self.max_bytes) // page_size)}")
            store.mark_interrupted()
            self.tape = self._claim_tape(db)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is locked by another process, or unusable: {exc}") from None
        return db

    def _claim_tape(self, db: sqlite_utils.Database) -> str:
        """The tape's row; a default name already taken (another recorder, the same second) gets a suffix.
        The insert itself is the test, so two recorders starting together cannot both take one name."""
        name = self.tape
        for n in range(2, 10_000):
            try:
                with db.conn:
                    db.conn.execute("insert into tapes (name, created_at, source) values (?, ?, ?)",
                                    [name, now_iso(), self.source])
                return name
            except sqlite3.IntegrityError:
                if not self.unique_tape:
                    return name  # recording more into a tape the user named
                name = f"{self.tape}-{n}"
        raise StoreError(f"no free tape name like {self.tape} in {self.path}")

    def _run(self) -> None:
        try:
            db = self._open()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        conn: sqlite3.Connection = db.conn
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
            stopping = None in batch
            messages = [m for m in batch if m is not None and m[0] != "flush"]
            flushes = [m[1] for m in batch if m is not None and m[0] == "flush"]
            try:
                for handle in self._write(conn, messages):
                    self._report_end(db, handle)
                if flushes or stopping:
                    while self._unsummarized:
                        self._summarize(conn, self._unsummarized.popleft())
            except Exception as exc:  # a bug of ours: said, and the thread goes on, since forwarding does
                self._say(f"streamreplay: store writer error: {describe_failure(exc)}")
            for event in flushes:
                event.set()
            if not flushes:
                time.sleep(BATCH_PAUSE)
        with contextlib.suppress(sqlite3.Error):
            db.close()

    def _write(self, conn: sqlite3.Connection, messages: list[tuple[Any, ...]]) -> list[ExchangeHandle]:
        """Apply a batch in one transaction; when that fails, each message alone, so one bad exchange
        loses only itself. Returns the exchanges that ended in this batch."""
        try:
            with conn:
                chunk_rows: list[tuple[Any, ...]] = []
                for msg in messages:
                    self._apply(conn, msg, chunk_rows)
                self._insert_chunks(conn, chunk_rows)
        except Exception as exc:
            self._rolled_back(messages)
            if isinstance(exc, _ENVIRONMENT_ERRORS) or type(exc) is sqlite3.DatabaseError:
                # the disk or the DB is at fault: every message would fail alike, and each try may wait
                # for the busy timeout, so the whole batch is lost at once
                self._failing(describe_failure(exc), messages)
                return []
            return [m[1] for m in messages if self._write_alone(conn, m) and m[0] == "end"]
        self.failure = None  # the disk may have room again: backpressure is back on
        return [m[1] for m in messages if m[0] == "end"]

    def _write_alone(self, conn: sqlite3.Connection, msg: tuple[Any, ...]) -> bool:
        handle: ExchangeHandle = msg[1]
        if handle.id is None and msg[0] != "begin":
            if msg[0] == "end":
                self._lose(handle, handle.lost or "its request could not be stored", report=True)
            return False  # its row never made it: nothing to attach this to
        try:
            with conn:
                chunk_rows: list[tuple[Any, ...]] = []
                self._apply(conn, msg, chunk_rows)
                self._insert_chunks(conn, chunk_rows)
        except Exception as exc:
            if msg[0] == "begin":
                handle.id = handle.seq = None
            self._failing(describe_failure(exc), [msg])
            return False
        return True

    def _rolled_back(self, messages: list[tuple[Any, ...]]) -> None:
        """Undo what the handles learnt in a transaction that was rolled back."""
        for msg in messages:
            if msg[0] == "begin":
                msg[1].id = msg[1].seq = None
            elif msg[0] == "end":
                with contextlib.suppress(ValueError):
                    self._unsummarized.remove(msg[1].id)

    def _apply(self, conn: sqlite3.Connection, msg: tuple[Any, ...], chunk_rows: list[tuple[Any, ...]]) -> None:
        kind, handle = msg[0], msg[1]
        if kind == "chunk":
            _, _, index, t_ns, data = msg
            chunk_rows.append((handle, index, t_ns, data))
            return
        self._insert_chunks(conn, chunk_rows)  # chunks first: an update may be the exchange's end
        if kind == "begin":
            # pessimistic until its end is stored: a row whose end never lands (a full disk, a kill) says so
            row = dict(msg[2], tape=handle.tape, recorder_pid=os.getpid(), store_error=UNFINISHED)
            body = row.get("request_body") or b""
            row.setdefault("request_key", request_key(row["method"], row["path"], body))
            if isinstance(body, bytes):
                row["request_body"] = body_for_db(body)
            row = _storable(row)
            # the seq is taken inside the write transaction: two recorders on one tape never share one
            cur = conn.execute(
                f"insert into exchanges ({', '.join(row)}, seq) values ({', '.join('?' * len(row))}, "
                "(select coalesce(max(seq) + 1, 0) from exchanges where tape = ?))",
                [*row.values(), handle.tape],
            )
            handle.id = cur.lastrowid
            handle.seq = conn.execute("select seq from exchanges where id = ?", [handle.id]).fetchone()[0]
        elif kind in ("update", "end"):
            if handle.id is None:
                return  # its row never made it (said when it failed): nothing to update
            updates = dict(msg[2])
            if kind == "end":
                updates["store_error"] = self._loss_text(handle) if handle.lost or handle.dropped else None
            updates = _storable(updates)
            sets = ", ".join(f"{k} = ?" for k in updates)
            conn.execute(f"update exchanges set {sets} where id = ?", [*updates.values(), handle.id])
            if kind == "end":
                self._unsummarized.append(handle.id)

    def _insert_chunks(self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        stored = [(h.id, i, t, d) for h, i, t, d in rows if h.id is not None]
        size = sum(len(r[3]) for r in rows)
        rows.clear()
        conn.executemany("insert into chunks (exchange_id, idx, t_ns, data) values (?, ?, ?, ?)", stored)
        self._committed_bytes += size

    @staticmethod
    def _loss_text(handle: ExchangeHandle) -> str:
        parts = [handle.lost] if handle.lost else []
        if handle.dropped:
            parts.append(f"{handle.dropped} chunks were forwarded but not stored")
        return "not stored whole: " + "; ".join(parts)

    def _failing(self, why: str, messages: list[tuple[Any, ...]]) -> None:
        """Storing failed for these messages: their exchanges are marked, and it is said at once."""
        for msg in messages:
            if msg[0] == "chunk":
                self._committed_bytes += len(msg[4])  # never coming: not backlog any more
        handles = list({id(m[1]): m[1] for m in messages}.values())
        fresh = [h for h in handles if h.lost is None]
        for handle in fresh:
            handle.lost = why
        self.failure = why
        if why not in self._announced:  # once per cause; after that, a line per exchange
            self._announced.add(why)
            refs = ", ".join(h.ref for h in fresh) or "none yet"
            self._say(f"streamreplay: STORING FAILED ({why}); exchanges not stored whole: {refs}; "
                      "forwarding goes on")
        for msg in messages:
            if msg[0] == "end":
                self._lose(msg[1], why, report=True)

    def _lose(self, handle: ExchangeHandle, why: str, report: bool) -> None:
        handle.lost = handle.lost or why
        self.losses.append((handle.ref, self._loss_text(handle)))
        if report:
            self._say(f"streamreplay: exchange {handle.ref} ({handle.label}) {self._loss_text(handle)}")

    def _say(self, line: str) -> None:
        if self.on_failure is not None:
            with contextlib.suppress(Exception):
                self.on_failure(line)

    def _report_end(self, db: sqlite_utils.Database, handle: ExchangeHandle) -> None:
        if handle.id is None:
            # its request was never stored (a batch before this one failed for it): lost, and said so
            self._lose(handle, handle.lost or "its request could not be stored", report=True)
            return
        if handle.lost or handle.dropped:
            self._lose(handle, handle.lost or "", report=True)
        if self.on_end is None:
            return
        try:
            row = next(db.query("select * from exchanges where id = ?", [handle.id]))
            self.on_end(row)
        except Exception as exc:  # the log must never stop the writer
            self._say(f"streamreplay: could not report exchange {handle.ref}: {describe_failure(exc)}")

    def _summarize(self, conn: sqlite3.Connection, exchange_id: int) -> None:
        """The assembled text, finish_reason, tool calls and usage, for listing. Parsing every event costs
        CPU (and the GIL the event loop needs), so it runs only when no chunk is waiting to be stored."""
        try:
            summarize(conn, exchange_id)
        except Exception as exc:  # a summary is a convenience: never worth the recording
            self._say(f"streamreplay: no summary for exchange #{exchange_id}: {describe_failure(exc)}")


def summarize(conn: sqlite3.Connection, exchange_id: int) -> None:
    """Write an exchange's summary columns from its stored chunks (decoded when the upstream compressed them)."""
    stream, status, headers = conn.execute(
        "select stream, status, response_headers from exchanges where id = ?", [exchange_id]).fetchone()
    summary = Summarizer(bool(stream), content_encoding=_header(headers, "content-encoding"))
    for (data,) in conn.execute("select data from chunks where exchange_id = ? order by idx", [exchange_id]):
        summary.feed(bytes(data))
        if summary.full:
            break
    columns = _storable(summary.columns())
    with conn:
        sets = ", ".join(f"{k} = ?" for k in columns)
        conn.execute(f"update exchanges set {sets} where id = ?", [*columns.values(), exchange_id])


def _header(headers_json: str | None, name: str) -> str | None:
    try:
        pairs = json.loads(headers_json or "[]")
    except ValueError:
        return None
    return next((v for k, v in pairs if isinstance(k, str) and k.lower() == name), None)
