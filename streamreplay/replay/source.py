"""Where replay reads recordings from: a SQLite store, a JSONL cassette, or one exchange in memory."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Protocol

from streamreplay.cassette import is_cassette, read_cassette
from streamreplay.store import Chunk, Exchange, open_store
from streamreplay.store.database import unknown_tape

#: memory a StoreSource's chunk cache may take: the recordings replayed most recently, not the whole DB
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
#: what a cached chunk costs beyond its data (the Chunk, its bytes header, its ints, a list slot), so that
#: a recording of many tiny chunks is not kept at several times the bound
CHUNK_OVERHEAD = 100


class TapeSource(Protocol):
    """What replay needs of a recording: the exchanges of a tape, in recorded order, and their chunks."""

    def exchanges(self) -> list[Exchange]: ...

    def chunks(self, exchange: Exchange) -> list[Chunk]: ...


class ChunkCache:
    """The chunks of recently replayed exchanges, by exchange id, at most `max_bytes` (chunk data plus
    CHUNK_OVERHEAD a chunk): the least recently used exchange goes first. One exchange larger than the
    bound is not kept at all (it is read from disk each time) rather than evicting everything else."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0  # what the cached chunks take now, never over max_bytes
        self._entries: OrderedDict[int, tuple[list[Chunk], int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, exchange_id: int) -> list[Chunk] | None:
        entry = self._entries.get(exchange_id)
        if entry is None:
            return None
        self._entries.move_to_end(exchange_id)
        return entry[0]

    def put(self, exchange_id: int, chunks: list[Chunk]) -> None:
        size = chunk_bytes(chunks)
        if size > self.max_bytes or exchange_id in self._entries:
            return
        while self._entries and self.bytes + size > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped
        self._entries[exchange_id] = (chunks, size)
        self.bytes += size


def chunk_bytes(chunks: list[Chunk]) -> int:
    """What `chunks` take in the cache's accounting."""
    return sum(len(c.data) + CHUNK_OVERHEAD for c in chunks)


class StoreSource:
    """A tape (or every tape, when none is named) of a SQLite store."""

    def __init__(self, path: str | Path, tape: str | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no recordings at {self.path}")
        self.store = open_store(self.path)
        self.tape = tape
        if tape is not None and not self.store.exchanges(tape=tape, limit=1):
            raise LookupError(self.store.unknown_tape(tape, self.path))
        self.cache = ChunkCache(cache_bytes)

    def exchanges(self) -> list[Exchange]:
        return self.store.exchanges(tape=self.tape)

    def close(self) -> None:
        self.store.close()

    def chunks(self, exchange: Exchange) -> list[Chunk]:
        # cached: a recording replayed 200 times at once is read from disk once
        chunks = self.cache.get(exchange.id)
        if chunks is None:
            chunks = self.store.chunks(exchange.id)
            self.cache.put(exchange.id, chunks)
        return chunks


class CassetteSource:
    """A cassette file as a replay source: everything in memory, no DB."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.header, self._exchanges, self._chunks = read_cassette(self.path)
        self.tape = self.header["tape"]

    def exchanges(self) -> list[Exchange]:
        return list(self._exchanges)

    def chunks(self, exchange: Exchange) -> list[Chunk]:
        return self._chunks[exchange.id]


class OneExchange:
    """A replay source with a single exchange, served to whatever request comes (sequence mode, repeat):
    what bisect and the reference clients replay."""

    def __init__(self, exchange: Exchange, chunks: list[Chunk]) -> None:
        self.exchange, self._chunks = exchange, chunks

    def exchanges(self) -> list[Exchange]:
        return [self.exchange]

    def chunks(self, exchange: Exchange) -> list[Chunk]:
        return self._chunks


def open_source(path: str | Path, tape: str | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES) -> TapeSource:
    """A DB file, or a `.jsonl` cassette (`cache_bytes` bounds a DB's chunk cache; a cassette is held
    whole, as it has no DB to read again from)."""
    if is_cassette(path):
        cassette = CassetteSource(path)
        # a cassette holds one tape: serving it for another name would replay what was not asked for
        if tape is not None and tape != cassette.tape:
            raise LookupError(unknown_tape([cassette.tape], tape, path))
        return cassette
    return StoreSource(path, tape, cache_bytes)
