"""The exchange: one recorded request and its response, defined once (DESIGN.md, "Data model").

The fields of `Exchange` are the only list of what an exchange holds. From them derive:

- the `exchanges` table's columns, their SQL types and order (`EXCHANGE_COLUMNS`);
- a row and back (`Exchange.to_row`, `Exchange.from_row`), and the partial rows the recorder hands
  the store's writer (`exchange_row`, which refuses a name that is not a column);
- which cassette line carries each field, under which key (`Column.cassette`, `Column.key`), read by
  `streamreplay.cassette`.

A field says how it is stored and carried in its metadata (`column(...)`); a field without any is a
plain column of its own name and type, not carried by cassettes.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Literal

from streamreplay.dialects import Dialect, dialect_for
from streamreplay.endcause import EndCause

Line = Literal["request", "response", "end"]


@dataclass(frozen=True)
class Column:
    """How a field of `Exchange` is stored and carried in a cassette (the field's metadata)."""

    #: the column holds the value as JSON text (a list or a dict)
    json: bool = False
    #: the column's place in the table: right after this column (the order DBs were created with),
    #: rather than in field order
    after: str | None = None
    #: the cassette line that carries it; None when cassettes do not (it is derived when they are read)
    cassette: Line | None = None
    #: its key in that line, when not the field's name (the cassette format is a contract: keys stay)
    key: str | None = None
    #: a cassette line without this key is refused (without any other, the field keeps its default)
    required: bool = False
    #: written into the cassette only when set (a falsy value leaves the key out)
    when_set: bool = False


PLAIN = Column()


def column(default: Any = MISSING, *, default_factory: Any = MISSING, **spec: Any) -> Any:
    """A field of `Exchange` with its `Column` spec."""
    return field(default=default, default_factory=default_factory, metadata={"column": Column(**spec)})


def now_iso() -> str:
    """The time as `started_at` and a tape's `created_at` store it."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Chunk:
    """One read of the response body, as the proxy received it."""

    index: int
    t_ns: int  # since the request was sent upstream
    data: bytes


@dataclass
class Exchange:
    """One recorded request/response, as stored. Its field order is the order `--json` output lists."""

    id: int
    tape: str
    #: order within the tape
    seq: int
    method: str = column(cassette="request", required=True)
    #: relative to the base_url, e.g. /chat/completions
    path: str = column(cassette="request", required=True)
    query: str = column("", cassette="request")
    #: [[name, value], ...], secrets redacted
    request_headers: list[list[str]] = column(default_factory=list, json=True, cassette="request", key="headers")
    #: the bytes received (secret fields redacted); stored as text when UTF-8, else as a blob
    request_body: bytes = column(b"", cassette="request", key="body")
    #: what replay matches on (streamreplay.requestkey): derived from the request
    request_key: str = ""
    stream: bool = False
    model: str | None = None
    #: User-Agent, for telling which client sent it
    client: str | None = None
    upstream: str | None = None
    #: when it was recorded: part of the recording, so an import lists it as recorded
    started_at: str | None = column(None, after="seq", cassette="request", when_set=True)
    status: int | None = column(None, cassette="response", required=True)
    response_headers: list[list[str]] = column(default_factory=list, json=True, cassette="response", key="headers",
                                               required=True)
    #: response head received, since the request was sent upstream
    headers_ns: int | None = column(None, cassette="response")
    #: first body byte
    ttfb_ns: int | None = column(None, cassette="end")
    duration_ns: int | None = column(None, cassette="end")
    chunk_count: int = 0
    byte_count: int = 0
    #: None while the exchange is open. A cause this version does not know (written by a newer one) is
    #: kept as the str it was, so it is shown and exported again unchanged
    end_cause: EndCause | None = column(None, cassette="end", key="cause", required=True)
    end_detail: str | None = column(None, cassette="end", key="detail")
    #: how the upstream ended, even when the client left first
    upstream_end: EndCause | None = column(None, cassette="end")
    #: chunks the client had been sent when it went away
    client_left_at_chunk: int | None = column(None, cassette="end")
    client_left_ns: int | None = column(None, cassette="end")
    #: saw data: [DONE]
    done: bool = column(False, cassette="end")
    # the summary, assembled from the chunks (streamreplay.summary)
    finish_reason: str | None = column(None, cassette="end")
    text: str | None = column(None, cassette="end")
    tool_calls: list[dict[str, Any]] = column(default_factory=list, json=True)
    usage: dict[str, Any] | None = column(None, json=True)
    problems: list[str] = column(default_factory=list, json=True)
    #: why the exchange is not stored whole; None when it is. Cassettes carry it when set: a partial
    #: recording stays marked partial in every copy of it
    store_error: str | None = column(None, cassette="end", when_set=True)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Exchange:
        """The exchange of a row of the `exchanges` table (columns it does not have read as unset)."""
        values = {name: row[name] if required else row.get(name) for name, required, _ in _READ}
        for name, _, decode in _READ:
            if decode is not None:
                values[name] = decode(values[name])
        return cls(**values)

    def to_row(self) -> dict[str, Any]:
        """This exchange as column values (every column but the writer's bookkeeping)."""
        return {name: encode(getattr(self, name)) for name, encode in _WRITE}

    def request_json(self) -> Any:
        """The request body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.request_body) if self.request_body else None
        except (ValueError, RecursionError):
            return None

    def response_header(self, name: str) -> str | None:
        for k, v in self.response_headers:
            if k.lower() == name.lower():
                return v
        return None

    @property
    def dialect(self) -> Dialect:
        """The provider API it spoke, from its path (streamreplay.dialects)."""
        return dialect_for(self.path)


#: columns that are not fields of an exchange: the recorder's bookkeeping. Name: (type, the column before it)
BOOKKEEPING: dict[str, tuple[type, str]] = {
    # the daemon writing the row: its open exchanges are not marked interrupted while it runs
    "recorder_pid": (int, "problems"),
}


def spec(f: Field[Any]) -> Column:
    return f.metadata.get("column", PLAIN)


def end_cause(value: str | None) -> EndCause | None:
    """The EndCause a stored string names; one this version does not know stays the str it is."""
    if value is None:
        return None
    try:
        return EndCause(value)
    except ValueError:
        return value  # type: ignore[return-value]  # from a newer version: kept, not lost


def body_for_db(body: bytes) -> str | bytes:
    """A body as its column stores it: text when it is UTF-8 (readable in any SQLite tool), else a blob."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body


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


def json_text(obj: Any, **options: Any) -> str:
    """`json.dumps` as text that encodes to UTF-8: written as is where it can be, and with JSON's `\\u`
    escapes throughout when it holds a lone surrogate (a byte that was not UTF-8), which they carry
    losslessly where UTF-8 cannot."""
    text = json.dumps(obj, ensure_ascii=False, **options)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, **options)
    return text


def storable(row: dict[str, Any]) -> dict[str, Any]:
    """Column values as the writer stores them: every text valid UTF-8 (`readable`)."""
    return {k: readable(v) if isinstance(v, str) else v for k, v in row.items()}


# -- what derives from the fields -----------------------------------------------------------------

_HINTS = typing.get_type_hints(Exchange)

#: the SQL type of a column, by the field's type (JSON fields are TEXT)
SQL_TYPES: dict[type, type] = {int: int, str: str, bool: int, bytes: str, EndCause: str}


def field_type(f: Field[Any]) -> type:
    """The field's type without `| None`, and without its parameters (`list[str]` is `list`)."""
    hint = _HINTS[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return typing.get_origin(hint) or hint


def optional(f: Field[Any]) -> bool:
    return type(None) in typing.get_args(_HINTS[f.name])


def default(f: Field[Any]) -> Any:
    """The value a field takes when it is not given: its default, else its type's empty value."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return field_type(f)()


def _columns() -> dict[str, type]:
    kinds = {f.name: str if spec(f).json else SQL_TYPES[field_type(f)] for f in fields(Exchange)}
    kinds.update({name: kind for name, (kind, _) in BOOKKEEPING.items()})
    order = [f.name for f in fields(Exchange) if spec(f).after is None]
    moved = [(f.name, spec(f).after) for f in fields(Exchange) if spec(f).after]
    for name, after in [*moved, *((name, after) for name, (_, after) in BOOKKEEPING.items())]:
        order.insert(order.index(after) + 1, name)
    return {name: kinds[name] for name in order}


#: the `exchanges` table: column name -> SQL type, in table order. Columns are only ever added:
#: `Store.migrate` adds any a DB lacks
EXCHANGE_COLUMNS: dict[str, type] = _columns()


def _same(value: Any) -> Any:
    return value


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _encoder(f: Field[Any]) -> Callable[[Any], Any]:
    """Model value -> column value."""
    kind = field_type(f)
    if spec(f).json:
        return lambda v: None if v is None else json.dumps(v)
    if kind is bool:
        return lambda v: None if v is None else int(v)
    if kind is bytes:
        return lambda v: None if v is None else body_for_db(v)
    if issubclass(kind, Enum):
        return lambda v: v.value if isinstance(v, Enum) else v
    return _same


def _decoder(f: Field[Any]) -> Callable[[Any], Any] | None:
    """Column value -> model value (None: the same). An empty value (NULL, 0, '') of a field that cannot be
    None, or of a JSON field, is the field's default."""
    kind = field_type(f)
    if spec(f).json:
        convert: Callable[[Any], Any] = json.loads
    elif kind is bool:
        convert = bool
    elif kind is bytes:
        convert = _bytes
    elif kind is EndCause:
        return end_cause
    else:
        convert = _same
    if optional(f) and not spec(f).json:
        return None if convert is _same else convert
    if f.default_factory is not MISSING:
        factory = f.default_factory
        return lambda value: convert(value) if value else factory()
    empty = default(f)  # immutable: an int, a str, a bool, bytes or None
    return lambda value: convert(value) if value else empty


#: (field, required in a row, decode or None) for `from_row`; (field, encode) for `to_row`
_READ = tuple((f.name, f.default is MISSING and f.default_factory is MISSING, _decoder(f)) for f in fields(Exchange))
_WRITE = tuple((f.name, _encoder(f)) for f in fields(Exchange))
_ENCODE = dict(_WRITE)


def exchange_row(**values: Any) -> dict[str, Any]:
    """Column values for part of a row, from the model's values (lists, bools, EndCause): what the
    recorder hands the store's writer. A name that is not a column is refused. Bytes are left as they
    are: the writer takes the request key from them and stores them (`body_for_db`) off the event loop."""
    unknown = values.keys() - EXCHANGE_COLUMNS.keys()
    if unknown:
        raise TypeError(f"not a column of exchanges: {', '.join(sorted(unknown))}")
    return {k: v if isinstance(v, bytes) else _ENCODE.get(k, _same)(v) for k, v in values.items()}


def cassette_fields(line: Line) -> list[tuple[Field[Any], Column]]:
    """The fields a cassette line carries, in field order."""
    return [(f, spec(f)) for f in fields(Exchange) if spec(f).cassette == line]
