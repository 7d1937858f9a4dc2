"""The index of a big DB: recordings looked up in SQLite by their stored request key, one at a time.

`Index` holds every exchange of a tape in memory, which is right for a cassette or a test's tape and
wrong for a DB a recorder has filled for weeks (about 11 KB an exchange). `StoreIndex` answers the
same questions from the DB: the exchanges of a request by the indexed `request_key` column (which the
writer stores as `requestkey.request_key` of the stored body, the default matchers' key), the closest
recording on a miss by scanning the most recent ones, the unused ones by streaming. What it keeps
grows with the distinct requests served, not with the DB.

A field some recording's `--redact-field` hid is masked in every recording played, as `Index` masks it;
a recording made without that redaction was stored under its unmasked key, so those few are found at
start and kept by their masked key.

It serves key mode with the default matchers and no extra ignored field, the stored key's terms;
`use_store_index` says when, and the replay server falls back to `Index` otherwise.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import Any

from streamreplay.exchange import Exchange
from streamreplay.redact import redacted_paths
from streamreplay.replay.matching import (
    DEFAULT_MATCH_ON,
    REDACTED_JSON,
    Index,
    MatchRules,
    Miss,
    matchers_named,
)
from streamreplay.replay.request import Request
from streamreplay.requestkey import DEFAULT_IGNORED, canonical_body
from streamreplay.store import Store
from streamreplay.store.database import KEY_INDEX

#: a miss names the closest of at most this many recordings, the most recent first: a miss must not
#: read a month of recordings
CLOSEST_SCAN = 2000


def use_store_index(store: Store, match: str, ignore: Iterable[str], match_on: Iterable[str]) -> bool:
    """Whether `StoreIndex` answers as `Index` would: key mode, the default matchers, no field ignored
    beyond the default, every row keyed, and the key column indexed (a read-only DB made before it was
    cannot get the index)."""
    if match != "key" or tuple(ignore) or tuple(match_on) != DEFAULT_MATCH_ON:
        return False
    db = store.db
    if not any(ix.name == KEY_INDEX for ix in db["exchanges"].indexes):
        return False
    return db.execute("select 1 from exchanges where request_key is null or request_key = '' limit 1").fetchone() \
        is None


class StoreIndex(Index):
    """`Index` over a Store's tape (every tape when `tape` is None), for key mode with the default
    matchers: see the module's docstring."""

    def __init__(self, store: Store, tape: str | None = None, repeat: bool = True) -> None:
        self.store, self.tape = store, tape
        self._last_id = store.db.execute("select coalesce(max(id), 0) from exchanges").fetchone()[0]
        self.ignore = DEFAULT_IGNORED
        self.mode = "key"
        self.repeat = repeat
        self.masks = frozenset(self._masks())
        self.rules = MatchRules(matchers_named(DEFAULT_MATCH_ON), self.ignore, self.masks)
        #: the ids of recordings whose stored key was made without a mask (the same request recorded with
        #: and without --redact-field), by their masked key, the key Index gives them
        self._rekeyed: dict[str, list[int]] = self._rekey() if self.masks else {}
        self.paths = {row[0] for row in self._query("select distinct path from exchanges")}
        self._used: dict[Hashable, int] = {}
        #: exchanges recorded while serving (a miss forwarded upstream), by key; they may live in another DB
        self._added: dict[Hashable, list[Any]] = {}
        self._added_list: list[Any] = []
        #: ids of the DB's exchanges served (the added ones go by id() in `served`, as in Index)
        self._served_ids: set[int] = set()
        self.served: set[int] = set()

    # -- what Index keeps in memory, read from the DB ------------------------------------------------

    def _where(self, sql: str, params: Iterable[Any] = (), suffix: str = "") -> tuple[str, list[Any]]:
        """`sql` (a select from exchanges, with or without its own where) limited to the tape and to the
        exchanges there were at start, then `suffix` (order, limit). Like Index's list, the index is the
        tape as replay found it: what is recorded while serving (a miss recorded into this very DB) joins
        through `add` alone, so it is never counted twice."""
        conds, args = ["id <= ?"], [self._last_id]
        if self.tape is not None:
            conds.append("tape = ?")
            args.append(self.tape)
        if " where " in sql:
            sql, own = sql.split(" where ", 1)
            conds.append(own)
        return f"{sql} where {' and '.join(conds)}{suffix}", [*args, *params]

    def _query(self, sql: str, params: Iterable[Any] = (), suffix: str = "") -> Any:
        """`_where`'s statement, run."""
        return self.store.db.execute(*self._where(sql, params, suffix))

    def _masks(self) -> set[tuple[str, ...]]:
        """Index's masks: paths some stored body holds "[redacted]" at. Only bodies that contain the marker
        are read (SQLite's instr finds them), so start-up stays quick on a big DB."""
        found: set[tuple[str, ...]] = set()
        for (body,) in self._query("select request_body from exchanges where instr(request_body, ?) > 0",
                                   [REDACTED_JSON.decode()]):
            # the column holds text when the body was UTF-8, else a blob (exchange.body_for_db)
            raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
            found |= redacted_paths(canonical_body(raw, self.ignore))
        return found

    def _rekey(self) -> dict[str, list[int]]:
        """The recordings holding a value at a masked path, keyed as Index keys them. SQLite's JSON functions
        pick them out, so only those bodies are read; a path whose key SQLite cannot quote picks every row."""
        found: dict[str, list[int]] = {}
        held, params = _any_value_at(self.masks)
        for ex in self.store.query_exchanges(*self._where(f"select * from exchanges where ({held})", params,
                                                          " order by id")):
            key = self._stored_key(self.key_of(ex))
            if key != ex.request_key:
                found.setdefault(key, []).append(ex.id)
        return found

    @property
    def exchanges(self) -> list[Any]:  # type: ignore[override]
        """Every exchange, read from the DB now: for a look at a small tape (tests); serving never asks."""
        return [*self._stored(), *self._added_list]

    def _stored(self, suffix: str = " order by id") -> Iterator[Exchange]:
        """The DB's exchanges, one row at a time."""
        return self.store.query_exchanges(*self._where("select * from exchanges", suffix=suffix))

    @property
    def count(self) -> int:
        return self._query("select count(*) from exchanges").fetchone()[0] + len(self._added_list)

    # -- the questions Index answers -----------------------------------------------------------------

    @staticmethod
    def _stored_key(key: Hashable) -> str:
        """The request_key column's form of the default matchers' key (method, path, body digest): the
        form requestkey.request_key gives. Masks, if any, were applied to the request's body already."""
        return " ".join(key)  # type: ignore[arg-type]

    def add(self, recorded: list[Any]) -> None:
        for ex in recorded:
            key = self.key_of(ex)
            self._added.setdefault(key, []).append(ex)
            self._added_list.append(ex)
            self.paths.add(ex.path)
            self._used[key] = self._used.get(key, 0) + 1
            self.served.add(id(ex))

    def lookup(self, request: Request) -> Any:
        request = self._ours(request)
        key = request.key
        stored_key = self._stored_key(key)
        ids = [row[0] for row in self._query("select id from exchanges where request_key = ?", [stored_key])]
        ids = sorted([*ids, *self._rekeyed.get(stored_key, ())])
        added = self._added.get(key, [])
        total = len(ids) + len(added)
        if not total:
            return self.closest(request)
        used = self._used.get(key, 0)
        if used >= total and not self.repeat:
            return Miss(f"all {total} recordings of this request were used, and repeat is off", self._nth(ids, added,
                                                                                                          total - 1))
        self._used[key] = used + 1
        return self._nth(ids, added, min(used, total - 1))

    def _nth(self, ids: list[int], added: list[Any], n: int) -> Any:
        if n < len(ids):
            self._served_ids.add(ids[n])
            return self.store.exchange(ids[n])
        ex = added[n - len(ids)]
        self.served.add(id(ex))
        return ex

    def _nearby(self) -> list[Any]:
        """The most recent CLOSEST_SCAN recordings and those added since, in recorded order."""
        return [*self._stored(f" order by id desc limit {CLOSEST_SCAN}")][::-1] + self._added_list

    def unused(self) -> list[Any]:
        return [ex for ex in self._stored() if ex.id not in self._served_ids] + \
            [ex for ex in self._added_list if id(ex) not in self.served]

    def upstreams(self) -> list[str]:
        return [row[0] for row in self._query("select distinct upstream from exchanges")] + \
            [ex.upstream for ex in self._added_list]


def _any_value_at(paths: Iterable[tuple[str, ...]]) -> tuple[str, list[str]]:
    """An SQL condition and its parameters: the request body is JSON with something at one of `paths`."""
    body = "cast(request_body as text)"
    conds, params = [], []
    for path in sorted(paths):
        if any('"' in key for key in path):  # SQLite's JSON path cannot quote it: every row may hold it
            return "1", []
        conds.append(f"(case when json_valid({body}) then json_type({body}, ?) end) is not null")
        params.append("$" + "".join(f'."{key}"' for key in path))
    return " or ".join(conds) or "0", params
