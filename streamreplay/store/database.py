"""The store's DB: its schema and migrations, and the reads every command makes."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlite_utils

import streamreplay.store.maintenance as maintenance
from streamreplay.exchange import EXCHANGE_COLUMNS, Chunk, Exchange

DEFAULT_DB = "recordings/streamreplay.db"
#: replay's lookups by request (replay.storeindex), with or without a tape: made when a DB is opened
KEY_INDEX = "idx_exchanges_request_key_tape"
SCHEMA_VERSION = 2
#: the columns each of our tables has had since the first version: a DB whose table of that name lacks
#: them (or holds a view by that name) is another program's, and is refused before anything is changed
FIRST_COLUMNS = {"tapes": {"name"}, "exchanges": {"id", "tape", "method", "path"},
                 "chunks": {"exchange_id", "idx", "t_ns", "data"}}


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
        try:
            self.refuse_foreign()
        except StoreError:
            self.close()
            raise
        self.ensure_schema()

    def close(self) -> None:
        """Close the DB connection (and with it the file and its -wal): a process that opens many stores,
        a test suite's, does not wait for the garbage collector to give the descriptors back."""
        self.db.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ------------------------------------------------------------------------------

    def refuse_foreign(self) -> None:
        """A StoreError when a table this DB needs exists with another shape: the file belongs to another
        program (or is damaged), and making the schema would change it."""
        views, tables = set(self.db.view_names()), set(self.db.table_names())
        for name, needed in FIRST_COLUMNS.items():
            if name in views:
                raise StoreError(f"{self.path} is not a usable streamreplay database: {name} is a view, not our table")
            missing = needed - set(self.db[name].columns_dict) if name in tables else set()
            if missing:
                raise StoreError(f"{self.path} is not a usable streamreplay database: its table {name} lacks "
                                 f"the columns {', '.join(sorted(missing))}")

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
        # after migrate: an old DB gains its request_key column first. Once, on a big DB, this takes a
        # moment (about a second for 100,000 exchanges); replay then finds a request without reading them all.
        db["exchanges"].create_index(["request_key", "tape"], index_name=KEY_INDEX, if_not_exists=True)

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
        return list(self.iter_exchanges(tape, cause, limit))

    def iter_exchanges(
        self, tape: str | None = None, cause: str | None = None, limit: int | None = None
    ) -> Iterator[Exchange]:
        """The exchanges in recorded order, read a row at a time: a month of recordings is never in memory."""
        where, params = self.filter_sql(tape, cause)
        sql = f"select * from exchanges{where} order by id"
        if limit:
            sql += f" limit {int(limit)}"
        return self.query_exchanges(sql, params)

    @staticmethod
    def filter_sql(tape: str | None = None, cause: str | None = None) -> tuple[str, list[Any]]:
        """The `where` clause (empty, or starting with a space) and its parameters that keep the exchanges
        of `tape` that ended with `cause`. Cause `open` is an exchange with no end stored yet, as `ls` and
        the ui print it."""
        where, params = [], []
        if tape:
            where.append("tape = ?")
            params.append(tape)
        if cause == "open":
            where.append("end_cause is null")
        elif cause:
            where.append("end_cause = ?")
            params.append(cause)
        return (" where " + " and ".join(where) if where else ""), params

    def query_exchanges(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> Iterator[Exchange]:
        """`sql` (a `select * from exchanges ...`), its rows as Exchanges, one at a time."""
        cursor = self.db.execute(sql, params)
        columns = [d[0] for d in cursor.description]
        for row in cursor:
            yield Exchange.from_row(dict(zip(columns, row, strict=True)))

    def count(self, tape: str | None = None) -> int:
        """How many exchanges (of `tape`)."""
        sql, params = ("select count(*) from exchanges where tape = ?", [tape]) if tape else \
            ("select count(*) from exchanges", [])
        return self.db.execute(sql, params).fetchone()[0]

    def size_bytes(self) -> int:
        """What the DB takes on disk, its write-ahead log included."""
        if str(self.path) == ":memory:":
            return 0
        return sum(p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal")) if p.exists())

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
            if seq:
                raise KeyError(self.unknown_tape(tape, self.path, what=f"no exchange {seq} in tape {tape!r}"))
            raise KeyError(self.unknown_tape(tape, self.path))
        return int(row[0])

    def unknown_tape(self, tape: str, where: str | Path, what: str | None = None) -> str:
        """What every command says for a tape (or a place in it) the DB does not have: the tapes it has."""
        return unknown_tape([t["name"] for t in self.tapes()], tape, where, what)

    def chunks(self, exchange_id: int) -> list[Chunk]:
        return list(self.iter_chunks(exchange_id))

    def iter_chunks(self, exchange_id: int) -> Iterator[Chunk]:
        cursor = self.db.conn.execute(
            "select idx, t_ns, data from chunks where exchange_id = ? order by idx", [exchange_id]
        )
        for idx, t_ns, data in cursor:
            yield Chunk(idx, t_ns, bytes(data))

    # -- maintenance (streamreplay.store.maintenance) ----------------------------------------------

    def mark_interrupted(self) -> list[int]:
        """Exchanges left open by a daemon that is no longer running become `interrupted`."""
        return maintenance.mark_interrupted(self.db.conn)

    def integrity_ok(self) -> bool:
        return self.db.execute("pragma integrity_check").fetchone()[0] == "ok"


def unknown_tape(known: list[str], tape: str, where: str | Path, what: str | None = None) -> str:
    """What every command says for a tape (or a place in it) a DB or cassette does not have: the tapes it has."""
    return f"{what or f'no tape {tape!r}'} in {where} (tapes: {', '.join(known) or 'none'})"
