"""The only writer of a recording session: a thread of its own that commits in batches, so that the
event loop forwarding chunks never waits on the disk, and a killed daemon loses at most what arrived
since the last commit (well under 100 ms)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlite_utils

import streamreplay.prune as prune
from streamreplay.exchange import body_for_db, now_iso, storable
from streamreplay.requestkey import request_key
from streamreplay.store.database import StoreError, open_store
from streamreplay.store.maintenance import summarize

#: the longest a batch keeps taking queued messages before it commits them: the bound under a flood. In
#: practice the queue empties long before (draining runs at millions of messages a second), so what a
#: received chunk waits for its commit is the writer's pause below plus the commit itself
COMMIT_INTERVAL = 0.05
#: the writer wakes at most this often: each wake takes the GIL from the event loop, and waking per
#: chunk (thousands of times a second under load) delays the loop's chunks more than batching does
BATCH_PAUSE = 0.01
#: bytes received but not yet committed, past which the proxy waits for the store (while it works)
STORE_BACKLOG = 16 * 1024 * 1024

#: the store_error of a row whose end is not stored yet; an exchange that ends well clears it
UNFINISHED = "not stored whole: its end was never stored"

#: sqlite3 errors that say the database or the disk is unusable, not that one row is bad
_ENVIRONMENT_ERRORS = (sqlite3.OperationalError, sqlite3.InternalError)

#: under `max_bytes`, a batch that would leave less than this share of it free first prunes the oldest
#: complete exchanges...
NEAR_LIMIT = 0.02
#: ...until this share is free besides the batch: pruning then happens once per twentieth of the limit
#: recorded, not at every batch
PRUNE_TO = 0.07


def _is_full(exc: BaseException) -> bool:
    """SQLITE_FULL: the disk, or the DB's max_page_count, has no room for the transaction."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    return isinstance(exc, sqlite3.OperationalError) and (
        code == sqlite3.SQLITE_FULL if code is not None else "database or disk is full" in str(exc))


def describe_failure(exc: BaseException) -> str:
    """One line for an error of the writer: what went wrong, without a traceback."""
    if isinstance(exc, sqlite3.DatabaseError):
        return f"sqlite: {exc}"
    return f"{type(exc).__name__}: {exc}"


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
        #: the DB may not grow past this (SQLite's max_page_count): a disk quota of its own. Near it, the oldest
        #: exchanges that ended complete are pruned (streamreplay.prune.make_room); storing fails only when
        #: none is left
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
        #: called with one line each time storing starts failing, for each exchange not stored whole, and once
        #: when `max_bytes` makes it prune
        self.on_failure: Callable[[str], None] | None = None
        #: the latest reason storing failed, None while it works
        self.failure: str | None = None
        #: every exchange not stored whole: (its reference, why)
        self.losses: list[tuple[str, str]] = []
        self._unsummarized: deque[int] = deque()  # the writer thread's
        self._announced: set[str] = set()  # the writer thread's: failure causes said already
        self._pruned = 0  # the writer thread's: exchanges pruned for max_bytes

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

    def begin(self, row: dict[str, Any],
              finish: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> ExchangeHandle:
        """Queue a new exchange's row. `finish`, when given, completes the row on the writer thread before
        anything is stored (the recorder redacts the body and reads it there, off the forwarding path)."""
        handle = ExchangeHandle(self.tape, f"{row.get('method')} {row.get('path')}")
        self._queue.put(("begin", handle, row, finish))
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

    def update(self, handle: ExchangeHandle, updates: dict[str, Any],
               finish: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        """Queue an update of the exchange's row; `finish`, as for `begin`, completes it on the writer thread."""
        self._queue.put(("update", handle, updates, finish))

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
        for name in [self.tape, *(f"{self.tape}-{n}" for n in range(2, 10_000))]:
            try:
                with db.conn:
                    db.conn.execute("insert into tapes (name, created_at, source) values (?, ?, ?)",
                                    [name, now_iso(), self.source])
                return name
            except sqlite3.IntegrityError:
                if not self.unique_tape:
                    return name  # recording more into a tape the user named
        raise StoreError(f"no free tape name like {self.tape} in {self.path}")

    def _run(self) -> None:
        try:
            db = self._open()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        stopping = False
        while not stopping:
            if self._unsummarized and self._queue.empty():
                # summaries are what the thread does when idle: one at a time, then the queue again
                self._summarize(db.conn, self._unsummarized.popleft())
                continue
            batch = self._next_batch()
            stopping = None in batch
            flushes = [m[1] for m in batch if m is not None and m[0] == "flush"]
            self._commit(db, [m for m in batch if m is not None and m[0] != "flush"],
                         summarize_all=bool(flushes) or stopping)
            for event in flushes:
                event.set()
            if not flushes:
                time.sleep(BATCH_PAUSE)
        with contextlib.suppress(sqlite3.Error):
            db.close()

    def _next_batch(self) -> list[tuple[Any, ...] | None]:
        """The next message (waiting for it), and whatever else is already queued, for at most the interval."""
        batch = [self._queue.get()]
        deadline = time.monotonic() + COMMIT_INTERVAL
        while time.monotonic() < deadline:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _commit(self, db: sqlite_utils.Database, messages: list[tuple[Any, ...]], summarize_all: bool) -> None:
        """Write a batch, report the exchanges it ended, and (before a flush or the end) every summary due."""
        try:
            ended = self._write(db.conn, messages)
        except Exception as exc:  # a bug of ours: the batch's exchanges are not stored whole, and said so loud
            self._rolled_back(messages)
            self._failing(f"store writer error: {describe_failure(exc)}", messages)
            return
        try:
            for handle in ended:
                self._report_end(db, handle)
            if summarize_all:
                while self._unsummarized:
                    self._summarize(db.conn, self._unsummarized.popleft())
        except Exception as exc:  # a bug of ours after the batch was stored: said, and the thread goes on
            self._say(f"streamreplay: store writer error: {describe_failure(exc)}")

    def _write(self, conn: sqlite3.Connection, messages: list[tuple[Any, ...]]) -> list[ExchangeHandle]:
        """Apply a batch in one transaction; when that fails, each message alone, so one bad exchange
        loses only itself. Returns the exchanges that ended in this batch. Under `max_bytes`, room is made
        first when the DB is near it, and again when the batch finds it full (`_make_room`)."""
        if self.max_bytes:
            self._make_room(conn, messages, only_when_near=True)
        while True:
            committed = self._committed_bytes
            try:
                with conn:
                    chunk_rows: list[tuple[Any, ...]] = []
                    for msg in messages:
                        self._apply(conn, msg, chunk_rows)
                    self._insert_chunks(conn, chunk_rows)
                break
            except Exception as exc:
                self._committed_bytes = committed  # rolled back: none of it reached the disk
                self._rolled_back(messages)
                if self.max_bytes and _is_full(exc) and self._make_room(conn, messages, only_when_near=False):
                    continue  # room was made: the same batch again
                return self._failed(conn, messages, exc)
        self.failure = None  # the disk may have room again: backpressure is back on
        return [m[1] for m in messages if m[0] == "end"]

    def _failed(self, conn: sqlite3.Connection, messages: list[tuple[Any, ...]],
                exc: Exception) -> list[ExchangeHandle]:
        """A batch was rolled back: the exchanges it ended that could be stored alone."""
        if isinstance(exc, _ENVIRONMENT_ERRORS) or type(exc) is sqlite3.DatabaseError:
            # the disk or the DB is at fault: every message would fail alike, and each try may wait
            # for the busy timeout, so the whole batch is lost at once
            self._failing(describe_failure(exc), messages)
            return []
        return [m[1] for m in messages if self._write_alone(conn, m) and m[0] == "end"]

    def _make_room(self, conn: sqlite3.Connection, messages: list[tuple[Any, ...]], only_when_near: bool) -> bool:
        """Room under `max_bytes` for this batch and a share of the limit besides: the oldest exchanges that
        ended complete and are stored whole are pruned (never a cutoff, never one still open), said once.
        With `only_when_near`, only when the batch would leave less than NEAR_LIMIT of it free. True when
        something was pruned, so that a batch the DB was too full for is worth trying again."""
        assert self.max_bytes
        need = self._batch_bytes(messages)
        try:
            want = need + int(PRUNE_TO * self.max_bytes)
            if only_when_near:
                if prune.room(conn) >= need + NEAR_LIMIT * self.max_bytes:
                    return False
            else:
                # The batch did not fit though the estimate said it would (an end rewrites its whole row,
                # request body included): each retry asks for its estimate beyond the room there is, so
                # pruning goes on until the batch fits or nothing prunable is left.
                want = max(want, prune.room(conn) + need)
            removed = prune.make_room(conn, want, keep_tapes={self.tape})
        except sqlite3.Error as exc:  # the write that follows fails loud if it must: no more to say here
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
            if "prune" not in self._announced:
                self._announced.add("prune")
                self._say(f"streamreplay: could not prune for --max-db-size: {describe_failure(exc)}")
            return False
        if removed and not self._pruned:
            self._say(f"streamreplay: DB at its --max-db-size ({prune.format_size(self.max_bytes)}): "
                      "pruning the oldest complete exchanges")
        self._pruned += len(removed)
        return bool(removed)

    @staticmethod
    def _batch_bytes(messages: list[tuple[Any, ...]]) -> int:
        """About what a batch adds to the DB: its chunks with their rows, and a few pages a new or ended exchange."""
        size = 0
        for msg in messages:
            if msg[0] == "chunk":
                size += len(msg[4]) + prune.CHUNK_OVERHEAD
            elif msg[0] == "begin":
                size += len(msg[2].get("request_body") or b"") + 8192
            elif msg[0] == "end":
                size += 8192  # its summary: the text and usage assembled from its chunks
        return size

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
            row = msg[3](msg[2]) if msg[3] is not None else msg[2]
            row = dict(row, tape=handle.tape, recorder_pid=os.getpid(), store_error=UNFINISHED)
            body = row.get("request_body") or b""
            row.setdefault("request_key", request_key(row["method"], row["path"], body))
            if isinstance(body, bytes):
                row["request_body"] = body_for_db(body)
            row = storable(row)
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
            finish = msg[3] if kind == "update" else None
            updates = dict(finish(msg[2]) if finish is not None else msg[2])
            if kind == "end":
                updates["store_error"] = self._loss_text(handle) if handle.lost or handle.dropped else None
            updates = storable(updates)
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
            row = next(db.query("select * from exchanges where id = ?", [handle.id]), None)
            if row is None:
                return  # pruned since (streamreplay.prune, from another process): nothing to report
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

