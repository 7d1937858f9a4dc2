"""Cassettes: a tape as a JSONL text file, stable and diff-friendly, that replay reads with no DB.

Line 1 is a header; then, per exchange, a `request` line, a `response` line (the head), one
`chunk` line per network read (UTF-8 text where it decodes, else base64) and an `end` line.
Keys are sorted and nothing volatile is written (no row ids, no wall-clock times, no Host port,
no Date header); secrets were already redacted when the exchange was recorded.

Which line carries which field of an exchange, under which key, is said by the field itself
(`streamreplay.exchange`); what a cassette does not carry (the request key, the stream flag, the
model, the counts, the summary) is derived again when it is read.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any

from streamreplay.dialects import dialect_for
from streamreplay.endcause import EndCause
from streamreplay.exchange import (
    Chunk,
    Exchange,
    Line,
    cassette_fields,
    default,
    end_cause,
    field_type,
    json_text,
    now_iso,
)
from streamreplay.requestkey import request_key
from streamreplay.store import Store, open_store
from streamreplay.summary import Summarizer

FORMAT = "streamreplay-cassette"
VERSION = 1
VOLATILE_REQUEST_HEADERS = frozenset({"host", "content-length"})
VOLATILE_RESPONSE_HEADERS = frozenset({"date"})
TAPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class CassetteError(ValueError):
    """A cassette file that cannot be read, with the line that broke it."""


def check_tape_name(name: str) -> str:
    """Tape names become file names: no slashes, no `..`, nothing a shell would trip on."""
    if not TAPE_NAME.match(name) or ".." in name:
        raise CassetteError(
            f"tape name {name!r} cannot be a file name: use letters, digits, '.', '_' and '-' (no slashes, no '..')"
        )
    return name


def _dump(obj: dict[str, Any]) -> str:
    return json_text(obj, sort_keys=True, separators=(",", ":"))


def is_cassette(path: str | Path) -> bool:
    """A cassette file rather than a DB: what every command that reads recordings tells apart."""
    return str(path).endswith(".jsonl")


def _chunk_payload(data: bytes) -> dict[str, str]:
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(data).decode("ascii")}


def _chunk_bytes(line: dict[str, Any]) -> bytes:
    if "b64" in line:
        return base64.b64decode(line["b64"])
    return str(line["text"]).encode("utf-8")


def _request_body(body: bytes) -> dict[str, Any]:
    try:
        return {"json": json.loads(body)} if body else {}
    except (ValueError, RecursionError):
        return _chunk_payload(body)


def _request_body_bytes(body: dict[str, Any] | None) -> bytes:
    body = body or {}
    return json.dumps(body["json"]).encode() if "json" in body else (_chunk_bytes(body) if body else b"")


def _without(volatile: frozenset[str]) -> Callable[[list[list[str]]], list[list[str]]]:
    return lambda headers: [[k, v] for k, v in headers if k.lower() not in volatile]


#: a field's value as its cassette line holds it, where that is not the value itself
_TO_LINE: dict[str, Callable[[Any], Any]] = {
    "request_headers": _without(VOLATILE_REQUEST_HEADERS),
    "request_body": _request_body,
    "response_headers": _without(VOLATILE_RESPONSE_HEADERS),
}
#: ...and back
_FROM_LINE: dict[str, Callable[[Any], Any]] = {"request_body": _request_body_bytes}

#: the line types that carry fields, in the order an exchange's lines are written (chunk lines go between
#: the response and the end)
_LINES: tuple[Line, ...] = ("request", "response", "end")
_FIELDS = {line: cassette_fields(line) for line in _LINES}


def _line(kind: Line, n: int, ex: Exchange) -> dict[str, Any]:
    """The `kind` line of exchange number `n`: every field it carries (`when_set` ones only when set)."""
    out: dict[str, Any] = {"type": kind, "seq": n}
    for f, col in _FIELDS[kind]:
        value = getattr(ex, f.name)
        if col.when_set and not value:
            continue
        out[col.key or f.name] = _TO_LINE.get(f.name, _plain)(value)
    return out


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _fill(ex: Exchange, line: dict[str, Any]) -> None:
    """Set the fields `line` carries on `ex`: a missing key leaves a field its default, unless the line must
    carry it (ValueError)."""
    for f, col in _FIELDS[line["type"]]:
        key = col.key or f.name
        if key not in line:
            if col.required:  # a default would pass a broken line off as a recording
                raise ValueError(f"a {line['type']} line needs {key!r}")
            setattr(ex, f.name, default(f))
            continue
        value = line[key]
        if f.name in _FROM_LINE:
            value = _FROM_LINE[f.name](value)
        elif field_type(f) is bool:
            value = bool(value)
        elif field_type(f) is EndCause:
            value = end_cause(value)
        setattr(ex, f.name, value)


def cassette_lines(tape: str, exchanges: Iterable[Exchange], chunks_of: Any, source: str = "") -> Iterator[str]:
    """The cassette text of `exchanges`, a line at a time."""
    yield _dump({"format": FORMAT, "version": VERSION, "tape": tape, "source": source})
    for n, ex in enumerate(exchanges):
        yield _dump(_line("request", n, ex))
        yield _dump(_line("response", n, ex))
        for chunk in chunks_of(ex):
            yield _dump({"type": "chunk", "seq": n, "i": chunk.index, "t_ns": chunk.t_ns, **_chunk_payload(chunk.data)})
        yield _dump(_line("end", n, ex))


def export_tape(db: str | Path, tape: str, path: str | Path) -> int:
    """Write a tape of a store as a cassette; returns the number of exchanges."""
    check_tape_name(tape)
    store = open_store(db)
    if not store.count(tape):
        raise LookupError(store.unknown_tape(tape, db))
    count = 0

    def counted(exchanges: Iterable[Exchange]) -> Iterator[Exchange]:
        nonlocal count
        for count, ex in enumerate(exchanges, 1):  # noqa: B007 (the count is read after the loop)
            yield ex
    source = next((t["source"] for t in store.tapes() if t["name"] == tape), "") or ""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        # a row and its chunks at a time: a tape of any size is never in memory whole
        for line in cassette_lines(tape, counted(store.iter_exchanges(tape=tape)), lambda ex: store.iter_chunks(ex.id),
                                   source):
            out.write(line + "\n")
    tmp.replace(path)  # a reader never sees half a cassette
    return count


def read_cassette(path: str | Path) -> tuple[dict[str, Any], list[Exchange], dict[int, list[Chunk]]]:
    """(header, exchanges with ids 1..n, chunks by exchange id)."""
    header, each = iter_cassette(path)
    exchanges, chunks = [], {}
    for ex, its_chunks in sorted(each, key=lambda pair: pair[0].seq):
        exchanges.append(ex)
        chunks[ex.id] = its_chunks
    return header, exchanges, chunks


def iter_cassette(path: str | Path) -> tuple[dict[str, Any], Iterator[tuple[Exchange, list[Chunk]]]]:
    """(header, each exchange with its chunks, given as soon as its end line is read): an import holds
    one exchange at a time, whatever the cassette's size. Exchanges whose end line never comes are given
    at the end of the file, in order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no cassette at {path}")
    lines = _numbered_lines(path)
    first = next(lines, None)
    if first is None:
        raise CassetteError(f"{path}: empty")
    header = first[1]
    if header.get("format") != FORMAT:
        raise CassetteError(f"{path}:1: not a streamreplay cassette")

    def exchanges() -> Iterator[tuple[Exchange, list[Chunk]]]:
        open_: dict[int, Exchange] = {}
        chunks: dict[int, list[Chunk]] = {}
        for number, line in lines:
            try:
                _read_line(line, open_, chunks, header["tape"])
                if line["type"] == "end":
                    ex = open_.pop(int(line["seq"]))
                    yield ex, chunks.pop(ex.id)
            except (ValueError, KeyError, TypeError) as exc:
                raise CassetteError(f"{path}:{number}: {exc}") from None
        for seq in sorted(open_):
            yield open_[seq], chunks.pop(open_[seq].id)

    return header, exchanges()


def _numbered_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """The cassette's non-blank lines, parsed, with their line numbers."""
    with path.open(encoding="utf-8") as lines:
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError as exc:
                raise CassetteError(f"{path}:{number}: {exc}") from None
            if not isinstance(line, dict):
                raise CassetteError(f"{path}:{number}: a line must be a JSON object")
            yield number, line


def _read_line(line: dict[str, Any], exchanges: dict[int, Exchange], chunks: dict[int, list[Chunk]],
               tape: str) -> None:
    seq = int(line["seq"])
    kind = line["type"]
    if kind == "request":
        ex = exchanges[seq] = Exchange(id=seq + 1, tape=tape, seq=seq, method="", path="")
        _fill(ex, line)  # which refuses a line without its method or path
        # what a cassette does not carry, derived from what it does
        body = line.get("body") or {}
        payload = body.get("json") if isinstance(body.get("json"), dict) else {}
        ex.stream, ex.model = ex.dialect.stream_and_model(payload)  # as the recorder stored them
        ex.client = next((v for k, v in ex.request_headers if k.lower() == "user-agent"), None)
        ex.request_key = request_key(ex.method, ex.path, ex.request_body)
        chunks[seq + 1] = []
        return
    ex = exchanges[seq]
    if kind == "chunk":
        data = _chunk_bytes(line)
        chunks[ex.id].append(Chunk(int(line["i"]), int(line["t_ns"]), data))
        ex.chunk_count += 1
        ex.byte_count += len(data)
    elif kind in _LINES:
        _fill(ex, line)
    else:
        raise CassetteError(f"unknown line type {kind!r}")


def import_cassette(path: str | Path, db: str | Path, tape: str | None = None) -> tuple[str, int]:
    """Load a cassette into a store, as tape `tape` (default: the cassette's own); returns (tape, count)."""
    return load_cassette(open_store(db), path, tape)


def cassette_store(path: str | Path) -> Store:
    """A cassette as a Store in memory, so every command that reads a DB reads a cassette file too."""
    store = Store(":memory:")
    load_cassette(store, path)
    return store


def load_cassette(store: Store, path: str | Path, tape: str | None = None) -> tuple[str, int]:
    """Load a cassette into `store`; returns (tape, count)."""
    header, exchanges = iter_cassette(path)
    name = check_tape_name(tape or header["tape"])
    if store.exchanges(tape=name, limit=1):
        raise CassetteError(f"tape {name!r} already exists in {store.path}; import it under another name with --tape")
    count = 0
    with store.db.conn:  # one transaction: a cassette that turns out bad halfway leaves nothing behind
        store.db["tapes"].insert({"name": name, "created_at": now_iso(), "source": header.get("source", "")},
                                 replace=True)
        for count, (ex, chunks) in enumerate(exchanges, 1):  # noqa: B007 (the count is read after the loop)
            summary = Summarizer(ex.stream, ex.response_header("content-encoding"), dialect_for(ex.path),
                                 ex.response_header("content-type"))
            for chunk in chunks:
                summary.feed(chunk.data)
            # the summary as the writer would assemble it from these chunks, not as the cassette says it
            row = {**ex.to_row(), "tape": name, **summary.columns()}
            del row["id"]  # a new one in this DB
            new_id = store.db["exchanges"].insert(row).last_pk
            store.db["chunks"].insert_all(
                {"exchange_id": new_id, "idx": c.index, "t_ns": c.t_ns, "data": c.data} for c in chunks
            )
    return name, count
