"""Cassettes: a tape as a JSONL text file, stable and diff-friendly, that replay reads with no DB.

Line 1 is a header; then, per exchange, a `request` line, a `response` line (the head), one
`chunk` line per network read (UTF-8 text where it decodes, else base64) and an `end` line.
Keys are sorted and nothing volatile is written (no row ids, no wall-clock times, no Host port,
no Date header); secrets were already redacted when the exchange was recorded.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streamreplay.requestkey import request_key
from streamreplay.store import Chunk, Exchange, Store, body_for_db, now_iso, open_store
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
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (a byte that was not UTF-8): JSON's \\u escape keeps it
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return text


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
    except ValueError:
        return _chunk_payload(body)


def cassette_lines(tape: str, exchanges: list[Exchange], chunks_of: Any, source: str = "") -> Iterator[str]:
    """The cassette text of `exchanges`, a line at a time."""
    yield _dump({"format": FORMAT, "version": VERSION, "tape": tape, "source": source})
    for n, ex in enumerate(exchanges):
        headers = [[k, v] for k, v in ex.request_headers if k.lower() not in VOLATILE_REQUEST_HEADERS]
        yield _dump({"type": "request", "seq": n, "method": ex.method, "path": ex.path, "query": ex.query,
                     "headers": headers, "body": _request_body(ex.request_body),
                     # when it was recorded: part of the recording, so an import lists it as recorded
                     **({"started_at": ex.started_at} if ex.started_at else {})})
        response_headers = [[k, v] for k, v in ex.response_headers if k.lower() not in VOLATILE_RESPONSE_HEADERS]
        yield _dump({"type": "response", "seq": n, "status": ex.status, "headers": response_headers,
                     "headers_ns": ex.headers_ns})
        for chunk in chunks_of(ex):
            yield _dump({"type": "chunk", "seq": n, "i": chunk.index, "t_ns": chunk.t_ns, **_chunk_payload(chunk.data)})
        yield _dump({"type": "end", "seq": n, "cause": ex.end_cause, "upstream_end": ex.upstream_end,
                     "detail": ex.end_detail, "client_left_at_chunk": ex.client_left_at_chunk,
                     "client_left_ns": ex.client_left_ns, "ttfb_ns": ex.ttfb_ns, "duration_ns": ex.duration_ns,
                     "done": ex.done, "text": ex.text, "finish_reason": ex.finish_reason,
                     # only when set: a partial recording stays marked partial in every copy of it
                     **({"store_error": ex.store_error} if ex.store_error else {})})


def export_tape(db: str | Path, tape: str, path: str | Path) -> int:
    """Write a tape of a store as a cassette; returns the number of exchanges."""
    check_tape_name(tape)
    store = open_store(db)
    exchanges = store.exchanges(tape=tape)
    if not exchanges:
        known = ", ".join(t["name"] for t in store.tapes()) or "none"
        raise LookupError(f"no tape {tape!r} in {db} (tapes: {known})")
    source = next((t["source"] for t in store.tapes() if t["name"] == tape), "") or ""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for line in cassette_lines(tape, exchanges, lambda ex: store.iter_chunks(ex.id), source):
            out.write(line + "\n")
    tmp.replace(path)  # a reader never sees half a cassette
    return len(exchanges)


def read_cassette(path: str | Path) -> tuple[dict[str, Any], list[Exchange], dict[int, list[Chunk]]]:
    """(header, exchanges with ids 1..n, chunks by exchange id)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no cassette at {path}")
    header: dict[str, Any] | None = None
    exchanges: dict[int, Exchange] = {}
    chunks: dict[int, list[Chunk]] = {}
    with path.open(encoding="utf-8") as lines:
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                if header is None:
                    if line.get("format") != FORMAT:
                        raise CassetteError(f"{path}:1: not a streamreplay cassette")
                    header = line
                    continue
                _read_line(line, exchanges, chunks, header["tape"])
            except (ValueError, KeyError, TypeError) as exc:
                raise CassetteError(f"{path}:{number}: {exc}") from None
    if header is None:
        raise CassetteError(f"{path}: empty")
    return header, list(exchanges.values()), chunks


def _read_line(line: dict[str, Any], exchanges: dict[int, Exchange], chunks: dict[int, list[Chunk]],
               tape: str) -> None:
    seq = int(line["seq"])
    kind = line["type"]
    if kind == "request":
        body = line.get("body") or {}
        raw = json.dumps(body["json"]).encode() if "json" in body else (_chunk_bytes(body) if body else b"")
        payload = body.get("json") if isinstance(body.get("json"), dict) else {}
        exchanges[seq] = Exchange(
            id=seq + 1, tape=tape, seq=seq, method=line["method"], path=line["path"], query=line.get("query", ""),
            request_headers=line.get("headers", []), request_body=raw, stream=bool(payload.get("stream")),
            model=payload.get("model") if isinstance(payload.get("model"), str) else None,
            client=next((v for k, v in line.get("headers", []) if k.lower() == "user-agent"), None),
            started_at=line.get("started_at"),
        )
        exchanges[seq].request_key = request_key(line["method"], line["path"], raw)
        chunks[seq + 1] = []
        return
    ex = exchanges[seq]
    if kind == "response":
        ex.status, ex.response_headers, ex.headers_ns = line["status"], line["headers"], line.get("headers_ns")
    elif kind == "chunk":
        data = _chunk_bytes(line)
        chunks[ex.id].append(Chunk(int(line["i"]), int(line["t_ns"]), data))
        ex.chunk_count += 1
        ex.byte_count += len(data)
    elif kind == "end":
        ex.end_cause, ex.upstream_end, ex.end_detail = line["cause"], line.get("upstream_end"), line.get("detail")
        ex.client_left_at_chunk, ex.client_left_ns = line.get("client_left_at_chunk"), line.get("client_left_ns")
        ex.ttfb_ns, ex.duration_ns = line.get("ttfb_ns"), line.get("duration_ns")
        ex.text, ex.finish_reason = line.get("text"), line.get("finish_reason")
        ex.done = bool(line.get("done"))
        ex.store_error = line.get("store_error")
    else:
        raise CassetteError(f"unknown line type {kind!r}")


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
    header, exchanges, chunks = read_cassette(path)
    name = check_tape_name(tape or header["tape"])
    if store.exchanges(tape=name, limit=1):
        raise CassetteError(f"tape {name!r} already exists in {store.path}; import it under another name with --tape")
    with store.db.conn:
        store.db["tapes"].insert({"name": name, "created_at": now_iso(), "source": header.get("source", "")},
                                 replace=True)
        for ex in exchanges:
            summary = Summarizer(ex.stream, ex.response_header("content-encoding"))
            for chunk in chunks[ex.id]:
                summary.feed(chunk.data)
            row = {
                "tape": name, "seq": ex.seq, "started_at": ex.started_at, "method": ex.method, "path": ex.path,
                "query": ex.query, "request_headers": json.dumps(ex.request_headers),
                "request_body": body_for_db(ex.request_body), "stream": int(ex.stream),
                "model": ex.model, "client": ex.client, "status": ex.status,
                "request_key": request_key(ex.method, ex.path, ex.request_body),
                "response_headers": json.dumps(ex.response_headers), "headers_ns": ex.headers_ns,
                "ttfb_ns": ex.ttfb_ns, "duration_ns": ex.duration_ns, "chunk_count": ex.chunk_count,
                "byte_count": ex.byte_count, "end_cause": ex.end_cause, "upstream_end": ex.upstream_end,
                "end_detail": ex.end_detail, "client_left_at_chunk": ex.client_left_at_chunk,
                "client_left_ns": ex.client_left_ns, "done": int(ex.done), "store_error": ex.store_error,
                **summary.columns(),
            }
            new_id = store.db["exchanges"].insert(row).last_pk
            store.db["chunks"].insert_all(
                {"exchange_id": new_id, "idx": c.index, "t_ns": c.t_ns, "data": c.data} for c in chunks[ex.id]
            )
    return name, len(exchanges)
