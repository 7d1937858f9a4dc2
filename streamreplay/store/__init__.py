"""The SQLite store: tapes, exchanges and chunks (DESIGN.md, "Data model").

- `database`: the schema, its migrations and the reads (`Store`, `open_store`);
- `maintenance`: what is done to stored exchanges after the fact (summaries, interrupted exchanges);
- `writer`: `StoreWriter`, the only writer of a recording session, a thread of its own.

An exchange itself, and how it becomes a row, is defined in `streamreplay.exchange`. Everything is
imported from here: `from streamreplay.store import Store`.
"""

from __future__ import annotations

from streamreplay.exchange import EXCHANGE_COLUMNS, Chunk, Exchange, body_for_db, now_iso, readable
from streamreplay.store.database import DEFAULT_DB, SCHEMA_VERSION, Store, StoreError, open_store
from streamreplay.store.maintenance import summarize
from streamreplay.store.writer import (
    BATCH_PAUSE,
    COMMIT_INTERVAL,
    STORE_BACKLOG,
    UNFINISHED,
    ExchangeHandle,
    StoreWriter,
    describe_failure,
)

__all__ = [
    "BATCH_PAUSE",
    "COMMIT_INTERVAL",
    "DEFAULT_DB",
    "EXCHANGE_COLUMNS",
    "SCHEMA_VERSION",
    "STORE_BACKLOG",
    "UNFINISHED",
    "Chunk",
    "Exchange",
    "ExchangeHandle",
    "Store",
    "StoreError",
    "StoreWriter",
    "body_for_db",
    "describe_failure",
    "now_iso",
    "open_store",
    "readable",
    "summarize",
]
