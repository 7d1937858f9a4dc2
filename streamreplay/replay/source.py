"""Where replay reads recordings from: a SQLite store (or, see `cassette`, a JSONL file)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from streamreplay.store import Chunk, Exchange, open_store


class TapeSource(Protocol):
    """What replay needs of a recording: the exchanges of a tape, in recorded order, and their chunks."""

    def exchanges(self) -> list[Exchange]: ...

    def chunks(self, exchange: Exchange) -> list[Chunk]: ...


class StoreSource:
    """A tape (or every tape, when none is named) of a SQLite store."""

    def __init__(self, path: str | Path, tape: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no recordings at {self.path}")
        self.store = open_store(self.path)
        self.tape = tape
        if tape is not None and not self.store.exchanges(tape=tape, limit=1):
            known = ", ".join(t["name"] for t in self.store.tapes()) or "none"
            raise LookupError(f"no tape {tape!r} in {self.path} (tapes: {known})")
        self._chunks: dict[int, list[Chunk]] = {}

    def exchanges(self) -> list[Exchange]:
        return self.store.exchanges(tape=self.tape)

    def chunks(self, exchange: Exchange) -> list[Chunk]:
        # kept in memory: a recording replayed 200 times at once is read from disk once
        if exchange.id not in self._chunks:
            self._chunks[exchange.id] = self.store.chunks(exchange.id)
        return self._chunks[exchange.id]


def open_source(path: str | Path, tape: str | None = None) -> TapeSource:
    """A DB file, or a `.jsonl` cassette."""
    if str(path).endswith(".jsonl"):
        from streamreplay.cassette import CassetteSource

        return CassetteSource(path)
    return StoreSource(path, tape)
