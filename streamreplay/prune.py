"""Retention: remove recorded exchanges by age, by tape or down to a size, then compact the DB.

`prune()` is `streamreplay prune`; `make_room()` is what the recorder's writer does when the DB nears
its `--max-db-size`. Both are safe beside a recorder writing the same DB (WAL, busy_timeout):

- an exchange whose end is not stored is never removed. Its row is inserted with `store_error` set
  (`UNFINISHED`) and no `end_cause`, and only its stored end sets one: a NULL `end_cause` is an exchange
  in flight, or one a daemon that died left open (`mark_interrupted` makes those `interrupted` when a
  recorder next opens the DB, and they can go then);
- an exchange that has ended gets no more chunks, only its summary (which skips a row that is gone), so
  removing it never tears a recording;
- rows go in short write transactions taken up front (BEGIN IMMEDIATE: a deferred one that reads first
  could not take the write lock after a recorder's commit, whatever the busy timeout), so a recorder's
  commit waits for one of them at most;
- a tape's row goes only when its last exchange goes, and not while a recorder that wrote to it runs
  (the recorder that claimed it would go on recording into a tape nobody lists).

Sizes are decimal (`50MB` is 50,000,000 bytes, as the lines print them; `MiB` and the like are binary).
The size of a DB is its page count times its page size: what the file is once its WAL is checkpointed.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from streamreplay.endcause import EndCause
from streamreplay.store.database import open_store
from streamreplay.store.maintenance import recording_elsewhere

__all__ = ["PruneError", "PruneReport", "Pruned", "format_size", "make_room", "parse_age", "parse_size", "prune",
           "room"]

#: exchanges removed in one write transaction: a recorder's commit waits for one transaction at most
BATCH = 200
#: the estimated bytes removed in one write transaction (a batch of long streams stops at this much)
BATCH_BYTES = 32 * 10**6
#: what a stored chunk costs besides its bytes (its row and its primary-key entry), for estimates
CHUNK_OVERHEAD = 40
#: what an exchange's row costs besides its large columns, for estimates
ROW_OVERHEAD = 300
#: how long the -wal file's truncation may keep a recorder's commit waiting (see `_compact`)
TRUNCATE_WAIT_MS = 250

_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
#: an exchange's estimated bytes in the DB, from its row: its chunks (byte_count and chunk_count, set by its
#: end), the columns that grow with what it holds, and the rest of its row
_WEIGHT = (f"coalesce(byte_count, 0) + coalesce(chunk_count, 0) * {CHUNK_OVERHEAD} + {ROW_OVERHEAD} + "
           + " + ".join(f"coalesce(length(cast({c} as blob)), 0)" for c in (
               "request_body", "request_headers", "response_headers", "query", "text", "tool_calls", "usage",
               "problems", "end_detail")))


class PruneError(ValueError):
    """Arguments prune cannot act on, or a DB it may not change: one line that says which."""


def _amount(text: str, units: Mapping[str, float], refusal: str) -> float:
    """A number with one of `units` after it (`7d`, `50MB`), in the base unit; else PruneError(refusal)."""
    found = _AMOUNT.match(str(text))
    unit = found.group(2).lower() if found else ""
    if not found or unit not in units:
        raise PruneError(f"{text!r} is not {refusal}")
    return float(found.group(1)) * units[unit]


def parse_age(text: str) -> float:
    """Seconds, from `7d`, `12h`, `30m`, `45s`, `2w` or a plain number of seconds (`3600`, `1.5h`)."""
    return _amount(text, _AGE_UNITS, "an age: give a number with d, h, m or s (7d, 12h, 30m, 45s), or seconds")


def parse_size(text: str) -> int:
    """Bytes, from `50MB`, `500KB`, `1.5GB`, `64MiB` or a plain number of bytes (KB, MB, GB are powers of 1000)."""
    return int(_amount(text, _SIZE_UNITS, "a size: give bytes, or a number with KB, MB or GB (50MB), or KiB, "
                                          "MiB or GiB"))


def format_size(size: float) -> str:
    """`1.2 MB`, `10 MB`, `300 KB`, `512 B`: decimal units, as `ls` says a DB's size and `parse_size` reads them.
    Cut to a tenth, not rounded: a DB pruned under `--max-size 50MB` never reads `50 MB`."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if abs(size) >= scale:
            return f"{int(size * 10 / scale) / 10:.1f}".removesuffix(".0") + f" {unit}"
    return f"{int(size)} B"


@dataclass
class Pruned:
    """One exchange prune removes (or, in a dry run, would)."""

    id: int
    tape: str
    seq: int
    #: None while it is being recorded (such an exchange is only counted, never removed)
    end_cause: str | None
    #: when it was recorded (its tape's creation when the row has no time); None when neither says
    started: datetime | None
    recorder_pid: int | None
    #: its estimated bytes in the DB, from its row (`_WEIGHT`): what --max-size counts on
    weight: int = 0
    chunk_count: int = 0
    chunk_bytes: int = 0


@dataclass
class PruneReport:
    """What a prune did (or, with `dry_run`, would do); `lines()` says it as the CLI prints it."""

    pruned: list[Pruned]
    #: tapes whose row went with their last exchange
    tapes_removed: list[str]
    #: the DB's size before and after (in a dry run: an estimate of after)
    size_before: int
    size_after: int
    dry_run: bool = False
    #: the DB was compacted (VACUUM)
    compacted: bool = False
    #: bytes the -wal file still holds because a reader kept it from being truncated
    wal_left: int = 0
    #: exchanges a rule chose but that stay: still being recorded, or not `complete` under --keep-cutoffs
    kept_open: int = 0
    kept_cutoffs: int = 0
    max_size: int | None = None

    @property
    def count(self) -> int:
        return len(self.pruned)

    @property
    def chunk_bytes(self) -> int:
        return sum(p.chunk_bytes for p in self.pruned)

    def by_tape(self) -> dict[str, list[Pruned]]:
        grouped: dict[str, list[Pruned]] = {}
        for p in sorted(self.pruned, key=lambda p: p.seq):
            grouped.setdefault(p.tape, []).append(p)
        return {tape: grouped[tape] for tape in sorted(grouped, key=lambda t: min(p.id for p in grouped[t]))}

    def lines(self) -> list[str]:
        """One line per action, then the summary: `pruned 12 exchanges (3 tapes), 1.2 MB; DB 4.1 MB -> 2.9 MB`."""
        pruned, removed = ("would prune", "would remove") if self.dry_run else ("pruned", "removed")
        lines = []
        for tape, gone in self.by_tape().items():
            size = format_size(sum(p.chunk_bytes for p in gone))
            lines.append(f"{pruned} tape {tape}: {_plural(len(gone), 'exchange')} ({_seqs(gone)}), "
                         f"{size} of chunks")
        order = list(self.by_tape())
        lines += [f"{removed} tape {tape} (no exchanges left)" for tape in sorted(
            self.tapes_removed, key=lambda t: order.index(t) if t in order else len(order))]
        keep = "would keep" if self.dry_run else "kept"
        if self.kept_open:
            lines.append(f"{keep} {_plural(self.kept_open, 'exchange')} still being recorded")
        if self.kept_cutoffs:
            lines.append(f"{keep} {_plural(self.kept_cutoffs, 'exchange')} that did not end complete "
                         "(--keep-cutoffs)")
        if self.compacted:
            lines.append("compacted the DB (VACUUM)")
        if self.wal_left:
            lines.append(f"the -wal file still holds {format_size(self.wal_left)}: a reader had the DB open; "
                         "SQLite reuses it, and the next prune truncates it")
        if self.max_size is not None and self.size_after >= self.max_size:
            lines.append(f"the DB {'would still be' if self.dry_run else 'is still'} over --max-size "
                         f"{format_size(self.max_size)}: what is left is being recorded, kept, or outside --tape")
        tapes = len({p.tape for p in self.pruned})
        after = f"about {format_size(self.size_after)}" if self.dry_run else format_size(self.size_after)
        summary = (f"{pruned} {_plural(self.count, 'exchange')}"
                   + (f" ({_plural(tapes, 'tape')})" if tapes else "")
                   + f", {format_size(self.chunk_bytes)}; DB {format_size(self.size_before)} -> {after}")
        lines.append(summary + (" (dry run: nothing was changed)" if self.dry_run else ""))
        return lines


def prune(db: str | Path, *, older_than: float | None = None, tape: str | None = None, max_size: int | None = None,
          keep_cutoffs: bool = False, dry_run: bool = False, compact: bool = True,
          now: datetime | None = None) -> PruneReport:
    """Remove exchanges of the DB at `db`, with their chunks, and compact it.

    - `older_than`: seconds; exchanges recorded longer ago than that go;
    - `tape`: only this tape; with no other rule, all of it, and its row in `tapes` once it is empty;
    - `max_size`: bytes; the oldest exchanges go until the DB, compacted, is under that size;
    - `keep_cutoffs`: every exchange whose end cause is not `complete` stays;
    - `dry_run`: change nothing, say what would go (the size after is then an estimate);
    - `now`: the moment ages count from (default: now).

    An exchange goes when any rule (`older_than`, `max_size`) chooses it; `tape` and `keep_cutoffs` narrow what
    they may choose. An exchange still being recorded always stays. `compact=False` leaves the freed pages
    for new recordings instead of shrinking the file. Raises PruneError for arguments it cannot act on,
    StoreError for a DB it cannot open."""
    if older_than is None and tape is None and max_size is None:
        raise PruneError("say what to prune: --older-than AGE, --tape NAME or --max-size SIZE")
    if older_than is not None and older_than < 0:
        raise PruneError(f"--older-than must not be negative, got {older_than:g} s")
    if max_size is not None and max_size <= 0:
        raise PruneError(f"--max-size must be more than 0 bytes, got {max_size}")
    path = Path(db)
    if not path.is_file():
        raise PruneError(f"no recordings at {db}")  # open_store would make an empty DB there
    store = open_store(path)
    try:
        if store.readonly:
            raise PruneError(f"{db} cannot be changed: it is read-only (or its folder is)")
        conn = store.db.conn
        if tape is not None and not _has_tape(conn, tape):
            raise PruneError(store.unknown_tape(tape, db))
        plan = _Plan(conn, tape, keep_cutoffs, now or datetime.now(timezone.utc))
        return plan.run(older_than, max_size, dry_run, compact)
    finally:
        store.db.close()


def room(conn: sqlite3.Connection) -> int:
    """Bytes that can still be stored under the connection's max_page_count: pages not made yet, and free ones."""
    page_size, pages, free, most = _pages(conn)
    return (most - pages + free) * page_size


def make_room(conn: sqlite3.Connection, want: int, keep_tapes: Collection[str] = ()) -> list[Pruned]:
    """Remove the oldest exchanges that ended `complete` and are stored whole until `want` bytes fit under
    the connection's max_page_count (`room`), or none is left. Never a cutoff, an exchange not stored whole
    (its partial recording is what the recorder reported as lost) or one still open. The freed pages stay
    in the file for what comes next: nothing is vacuumed. The rows of tapes left empty go, but not those in
    `keep_tapes` (the writer's own). Returns what it removed, oldest first."""
    removed: list[Pruned] = []
    while room(conn) < want:
        rows = conn.execute(
            f"select id, tape, seq, end_cause, started_at, recorder_pid, {_WEIGHT} from exchanges "
            "where end_cause = ? and store_error is null order by started_at, id limit ?",
            [EndCause.COMPLETE.value, BATCH * 5]).fetchall()
        if not rows:
            break
        queue = [Pruned(r[0], r[1], r[2], r[3], _when(r[4]), r[5], weight=r[6]) for r in rows]
        removed += _shed(conn, queue, lambda: want - room(conn))
    if removed:
        _drop_emptied_tapes(conn, removed, keep=keep_tapes)
    return removed


# -- planning and removing ---------------------------------------------------------------------------

class _Plan:
    """The exchanges of one prune: what may go (oldest first), what is kept and why."""

    def __init__(self, conn: sqlite3.Connection, tape: str | None, keep_cutoffs: bool, now: datetime) -> None:
        self.conn = conn
        self.tape = tape
        self.now = now
        # (no column of tapes but name is also one of exchanges: the weight needs no prefix)
        rows = conn.execute(
            "select e.id, e.tape, e.seq, e.end_cause, coalesce(nullif(e.started_at, ''), t.created_at), "
            "e.recorder_pid, "
            f"{_WEIGHT} from exchanges e left join tapes t on t.name = e.tape" + (" where e.tape = ?" if tape else ""),
            [tape] if tape else []).fetchall()
        everyone = sorted((Pruned(r[0], r[1], r[2], r[3], _when(r[4]), r[5], weight=r[6]) for r in rows),
                          key=lambda p: (p.started or datetime.min.replace(tzinfo=timezone.utc), p.id))
        #: still being recorded (or left open by a dead daemon): never removed
        self.open = [p for p in everyone if p.end_cause is None]
        #: not `complete`, under --keep-cutoffs
        self.cutoffs = [p for p in everyone if keep_cutoffs and p.end_cause is not None
                        and p.end_cause != EndCause.COMPLETE]
        kept = {p.id for p in (*self.open, *self.cutoffs)}
        #: what a rule may choose, oldest first
        self.eligible = [p for p in everyone if p.id not in kept]
        self.size_before = _size(conn)
        # the DB's bytes in use beyond what it takes empty (the schema page and each table's and index's root
        # page), shared out by each exchange's weight: what removing it would free
        page_size, pages, free, _ = _pages(conn)
        self.live = (pages - free) * page_size
        trees = conn.execute("select count(*) from sqlite_master where rootpage > 0").fetchone()[0]
        self.floor = (1 + trees) * page_size
        total = conn.execute(f"select coalesce(sum({_WEIGHT}), 0) from exchanges").fetchone()[0]
        self.scale = max(self.live - self.floor, 0) / total if total else 1.0

    def footprint(self, p: Pruned) -> int:
        return int(p.weight * self.scale)

    def run(self, older_than: float | None, max_size: int | None, dry_run: bool, compact: bool) -> PruneReport:
        conn = self.conn
        if older_than is None and max_size is None:
            chosen = list(self.eligible)  # --tape alone: the whole tape
        elif older_than is not None:
            cutoff = self.now - timedelta(seconds=older_than)
            chosen = [p for p in self.eligible if p.started is not None and p.started < cutoff]
        else:
            chosen = []
        kept_open, kept_cutoffs = self._kept(older_than, max_size)
        taken = {p.id for p in chosen}
        rest = [p for p in self.eligible if p.id not in taken]
        report = PruneReport([], [], self.size_before, self.size_before, dry_run=dry_run, kept_open=kept_open,
                             kept_cutoffs=kept_cutoffs, max_size=max_size)
        if dry_run:
            # the same choice as a real run, on estimates: what it would remove to get under max_size
            estimate = self.live - sum(self.footprint(p) for p in chosen)
            while max_size is not None and rest and estimate >= max_size:
                p = rest.pop(0)
                chosen.append(p)
                estimate -= self.footprint(p)
            _chunk_stats(conn, chosen)
            report.pruned = chosen
            report.tapes_removed = self._emptied(chosen, dry_run=True)
            compacts = compact and (chosen or _pages(conn)[2])
            report.size_after = max(estimate, self.floor) if compacts else self.size_before
            return report
        removed = _shed(conn, chosen, None, self.footprint)
        if max_size is not None:
            # measured, not estimated: the bytes in use once the file is compacted are at most these
            removed += _shed(conn, rest, lambda: _live(conn) - max_size + 1, self.footprint)
        report.pruned = removed
        report.tapes_removed = self._emptied(removed, dry_run=False)
        if compact and (removed or _pages(conn)[2]):
            report.wal_left = _compact(conn)
            report.compacted = True
        report.size_after = _size(conn)
        return report

    def _kept(self, older_than: float | None, max_size: int | None) -> tuple[int, int]:
        """How many exchanges a rule would have chosen but that stay (open ones, cutoffs)."""
        if older_than is None and max_size is not None:
            return 0, 0  # a size has no list of its own to keep them from: the summary says when it is not met
        if older_than is None:
            return len(self.open), len(self.cutoffs)
        cutoff = self.now - timedelta(seconds=older_than)

        def old(group: list[Pruned]) -> int:
            return sum(1 for p in group if p.started is not None and p.started < cutoff)

        return old(self.open), old(self.cutoffs)

    def _emptied(self, removed: list[Pruned], dry_run: bool) -> list[str]:
        """The tapes whose row goes (or would): left with no exchange, and no recorder that wrote them running.
        `--tape NAME` names a tape to remove whole, so its row goes even when it had no exchange to remove."""
        if dry_run:
            left = {tape: n for tape, n in self.conn.execute("select tape, count(*) from exchanges group by tape")}
            for p in removed:
                left[p.tape] -= 1
            touched = {p.tape for p in removed} | ({self.tape} if self.tape else set())
            live = _live_recorders(removed)
            return sorted(t for t in touched if not left.get(t) and t not in live and _has_row(self.conn, t))
        return _drop_emptied_tapes(self.conn, removed, named=self.tape)


def _shed(conn: sqlite3.Connection, queue: list[Pruned], short: Callable[[], int] | None,
          footprint: Callable[[Pruned], int] = lambda p: p.weight) -> list[Pruned]:
    """Remove exchanges from the front of `queue`: all of them, or (given `short`) while `short()`, the bytes
    still to free, is above 0. Each round takes as many as their footprints say cover it, in one short
    transaction, then asks again."""
    removed: list[Pruned] = []
    while queue:
        missing = short() if short is not None else None
        if missing is not None and missing <= 0:
            break
        batch: list[Pruned] = []
        covered = weight = 0
        while queue and (missing is None or covered < missing) and len(batch) < BATCH and weight < BATCH_BYTES:
            p = queue.pop(0)
            batch.append(p)
            covered += max(footprint(p), 1)
            weight += p.weight
        removed += _delete(conn, batch)
    return removed


def _delete(conn: sqlite3.Connection, batch: list[Pruned]) -> list[Pruned]:
    """Delete these exchanges and their chunks in one write transaction; returns them, with what their chunks
    held. Each was chosen with its end stored, which no writer takes back (`end_cause` is set once, from
    NULL), so none of them can have become an exchange in flight since."""
    if not batch:
        return []
    if conn.in_transaction:
        conn.commit()
    conn.execute("begin immediate")
    try:
        _chunk_stats(conn, batch)
        ids = [p.id for p in batch]
        marks = ", ".join("?" * len(ids))
        # chunks first: they point at their exchange
        conn.execute(f"delete from chunks where exchange_id in ({marks})", ids)
        conn.execute(f"delete from exchanges where id in ({marks})", ids)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return batch


def _chunk_stats(conn: sqlite3.Connection, pruned: Iterable[Pruned]) -> None:
    """Fill in how many chunks each exchange has and how many bytes they hold."""
    by_id = {p.id: p for p in pruned}
    ids = list(by_id)
    for start in range(0, len(ids), 500):
        part = ids[start:start + 500]
        for eid, count, size in conn.execute(
                f"select exchange_id, count(*), coalesce(sum(length(data)), 0) from chunks where exchange_id in "
                f"({', '.join('?' * len(part))}) group by exchange_id", part):
            by_id[eid].chunk_count, by_id[eid].chunk_bytes = count, size


def _drop_emptied_tapes(conn: sqlite3.Connection, removed: list[Pruned], keep: Collection[str] = (),
                        named: str | None = None) -> list[str]:
    """Delete the row of each tape these removals left empty (and of `named`, when empty): not those in `keep`,
    nor a tape a still-running recorder wrote to, which may record into it again."""
    touched = {p.tape for p in removed} | ({named} if named else set())
    live = _live_recorders(removed)
    dropped = []
    with conn:
        for tape in sorted(touched - set(keep) - live):
            if conn.execute("select 1 from exchanges where tape = ? limit 1", [tape]).fetchone() is None \
                    and conn.execute("delete from tapes where name = ?", [tape]).rowcount:
                dropped.append(tape)
    return dropped


def _live_recorders(removed: list[Pruned]) -> set[str]:
    """Tapes that a recorder still running wrote some of these exchanges to."""
    return {p.tape for p in removed if recording_elsewhere(p.recorder_pid)}


def _compact(conn: sqlite3.Connection) -> int:
    """VACUUM, and give the -wal file its bytes back; returns what the -wal file still holds (0 when truncated).

    VACUUM, not incremental_vacuum: the store's DBs are made with auto_vacuum off (its default), where
    incremental_vacuum does nothing, and turning auto_vacuum on takes a full VACUUM anyway. Under WAL a VACUUM
    runs beside a recorder's open connection: readers keep their snapshot, and the recorder's next commit waits
    for the VACUUM (it rewrites the whole DB, about a second per few hundred MB) within its busy_timeout of 5 s.
    The rewrite lands in the -wal file first: a passive checkpoint copies it into the DB file (which shrinks)
    without blocking anyone, and a truncating one empties the -wal file; that one holds writers back while it
    waits for readers, so it waits TRUNCATE_WAIT_MS at most, and a -wal file a reader kept stays for SQLite to
    reuse."""
    if conn.in_transaction:
        conn.commit()
    conn.execute("vacuum")
    conn.execute("pragma wal_checkpoint(passive)")
    timeout = conn.execute("pragma busy_timeout").fetchone()[0]
    try:
        conn.execute(f"pragma busy_timeout = {TRUNCATE_WAIT_MS}")
        busy = conn.execute("pragma wal_checkpoint(truncate)").fetchone()[0]
    finally:
        conn.execute(f"pragma busy_timeout = {int(timeout)}")
    if not busy:
        return 0
    wal = Path(conn.execute("pragma database_list").fetchone()[2] + "-wal")
    return wal.stat().st_size if wal.exists() else 0


# -- small reads -------------------------------------------------------------------------------------

def _pages(conn: sqlite3.Connection) -> tuple[int, int, int, int]:
    """page size, pages, free pages, the most pages this connection may make."""
    return tuple(conn.execute(f"pragma {name}").fetchone()[0]  # type: ignore[return-value]
                 for name in ("page_size", "page_count", "freelist_count", "max_page_count"))


def _size(conn: sqlite3.Connection) -> int:
    page_size, pages, _, _ = _pages(conn)
    return page_size * pages


def _live(conn: sqlite3.Connection) -> int:
    """Bytes of pages in use: what the DB comes to once compacted (at most)."""
    page_size, pages, free, _ = _pages(conn)
    return (pages - free) * page_size


def _has_tape(conn: sqlite3.Connection, tape: str) -> bool:
    return _has_row(conn, tape) or conn.execute(
        "select 1 from exchanges where tape = ? limit 1", [tape]).fetchone() is not None


def _has_row(conn: sqlite3.Connection, tape: str) -> bool:
    return conn.execute("select 1 from tapes where name = ?", [tape]).fetchone() is not None


def _when(text: str | None) -> datetime | None:
    """A stored time as an aware datetime (UTC when it says no zone); None when it is not one."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _seqs(pruned: list[Pruned]) -> str:
    """`seq 0-4, 7, 9-12`: the places in their tape, as TAPE:SEQ names them."""
    seqs = sorted(p.seq for p in pruned)
    runs: list[list[int]] = []
    for seq in seqs:
        if runs and seq == runs[-1][1] + 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    return "seq " + ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
