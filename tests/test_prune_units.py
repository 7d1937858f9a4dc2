"""prune.py on small real DBs (written by the store's own writer) with a fixed `now`, and on reports written down
by hand: which rule chooses what, exactly at its limit, what always stays, and the lines a person reads."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from streamreplay.endcause import EndCause
from streamreplay.exchange import exchange_row
from streamreplay.prune import (
    Pruned,
    PruneError,
    PruneReport,
    format_size,
    make_room,
    parse_age,
    parse_size,
    prune,
    room,
)
from streamreplay.store import Store, StoreWriter

COMPLETE, LEFT = EndCause.COMPLETE, EndCause.CLIENT_LEFT
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
DAY = 86400.0


def event(n: int) -> bytes:
    """One SSE event of exactly 1000 bytes."""
    head, tail = b'data: {"choices":[{"index":0,"delta":{"content":"', b'"}}]}\n\n'
    return head + (f"{n} ".encode() * 1000)[: 1000 - len(head) - len(tail)] + tail


def fill(db: Path, tape: str, exchanges: list[tuple[float, EndCause | None, int]]) -> None:
    """Rows as the recorder's writer stores them, one per (age in days before NOW, end cause or None for one
    still being recorded, KB of chunks). Open ones last: the next writer in this process closes them."""
    writer = StoreWriter(db, tape)
    writer.start()
    for days, cause, kb in exchanges:
        started = (NOW - timedelta(days=days)).isoformat(timespec="milliseconds")
        handle = writer.begin(exchange_row(method="POST", path="/v1/chat/completions", stream=True,
                                           request_body=b'{"model":"m"}', started_at=started))
        for i in range(kb):
            writer.chunk(handle, i, i * 1_000_000, event(i))
        if cause is not None:
            writer.end(handle, exchange_row(status=200, end_cause=cause, upstream_end=cause, chunk_count=kb,
                                            byte_count=kb * 1000, done=cause is COMPLETE))
    writer.close()


def rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchall()


def live_bytes(db: Path) -> int:
    """The bytes of the pages in use: what the DB comes to compacted."""
    (page_size, pages, free), = rows(db, "select * from pragma_page_size, pragma_page_count, pragma_freelist_count")
    return page_size * (pages - free)


def ids(db: Path) -> list[int]:
    return [r[0] for r in rows(db, "select id from exchanges order by id")]


def tapes(db: Path) -> list[str]:
    return [r[0] for r in rows(db, "select name from tapes order by name")]


def execute(db: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(sql, params)


# -- amounts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("7d", 7 * DAY), ("12h", 43200), ("30m", 1800), ("45s", 45), ("2w", 14 * DAY), ("3600", 3600),
    ("1.5h", 5400), (" 7D ", 7 * DAY), ("7 d", 7 * DAY), ("0", 0), ("0.5", 0.5),
])
def test_an_age_is_seconds_from_a_number_and_a_unit(text: str, seconds: float):
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["7x", "-1d", "", "d", "1.d", "1e3", "7dd", "7 d s", ".5h"])
def test_anything_else_is_not_an_age_in_the_words_the_readme_quotes(text: str):
    with pytest.raises(PruneError) as caught:
        parse_age(text)
    assert str(caught.value) == (f"{text!r} is not an age: give a number with d, h, m or s (7d, 12h, 30m, 45s), "
                                 "or seconds")


@pytest.mark.parametrize(("text", "size"), [
    ("50MB", 50 * 10**6), ("500KB", 500_000), ("1.5GB", 1_500_000_000), ("64MiB", 64 * 2**20), ("1kib", 1024),
    ("2GiB", 2 * 2**30), ("1TiB", 2**40), ("1t", 10**12), ("1tb", 10**12), ("100b", 100), ("100", 100),
    ("1k", 1000), ("1m", 10**6), ("1g", 10**9), ("1.5", 1), (" 2 kb ", 2000),
])
def test_a_size_is_bytes_decimal_unless_binary_is_said(text: str, size: int):
    assert parse_size(text) == size and isinstance(parse_size(text), int)


def test_anything_else_is_not_a_size():
    with pytest.raises(PruneError) as caught:
        parse_size("12XB")
    assert str(caught.value) == ("'12XB' is not a size: give bytes, or a number with KB, MB or GB (50MB), "
                                 "or KiB, MiB or GiB")


@pytest.mark.parametrize(("size", "says"), [
    (0, "0 B"), (999, "999 B"), (512.7, "512 B"), (1000, "1 KB"), (1234, "1.2 KB"), (1299, "1.2 KB"),
    (1999, "1.9 KB"), (999_999, "999.9 KB"), (10**6, "1 MB"), (49_999_999, "49.9 MB"), (2_550_000_000, "2.5 GB"),
    (10**12, "1000 GB"), (-1500, "-1.5 KB"),
])
def test_a_size_is_cut_to_a_tenth_of_a_decimal_unit(size: float, says: str):
    assert format_size(size) == says


# -- the report's lines -----------------------------------------------------------------------------------


def gone(pid: int, tape: str, seq: int, chunk_bytes: int = 1000) -> Pruned:
    return Pruned(pid, tape, seq, "complete", NOW, None, weight=2000, chunk_count=1, chunk_bytes=chunk_bytes)


def test_the_report_says_per_tape_what_went_in_seq_runs_then_the_summary():
    # tapes in the order their first exchange was recorded, not by name
    report = PruneReport([gone(9, "a", 4), gone(3, "z", 0), gone(4, "z", 1), gone(5, "z", 2), gone(8, "z", 5),
                          gone(10, "a", 5), gone(11, "z", 7, 500), gone(12, "z", 8)],
                         tapes_removed=["m", "a", "z"], size_before=118_700, size_after=90_100, compacted=True)
    assert report.count == 8 and report.chunk_bytes == 7500
    assert report.lines() == [
        "pruned tape z: 6 exchanges (seq 0-2, 5, 7-8), 5.5 KB of chunks",
        "pruned tape a: 2 exchanges (seq 4-5), 2 KB of chunks",
        "removed tape z (no exchanges left)",
        "removed tape a (no exchanges left)",
        "removed tape m (no exchanges left)",
        "compacted the DB (VACUUM)",
        "pruned 8 exchanges (2 tapes), 7.5 KB; DB 118.7 KB -> 90.1 KB"]


def test_a_dry_run_says_would_and_what_is_kept_and_that_nothing_changed():
    report = PruneReport([gone(1, "t", 0, 4000)], ["t"], 118_700, 56_500, dry_run=True, kept_open=2,
                         kept_cutoffs=1)
    assert report.lines() == [
        "would prune tape t: 1 exchange (seq 0), 4 KB of chunks",
        "would remove tape t (no exchanges left)",
        "would keep 2 exchanges still being recorded",
        "would keep 1 exchange that did not end complete (--keep-cutoffs)",
        "would prune 1 exchange (1 tape), 4 KB; DB 118.7 KB -> about 56.5 KB (dry run: nothing was changed)"]


def test_nothing_pruned_reads_as_such_with_what_was_kept_and_the_wal_left():
    report = PruneReport([], [], 5000, 5000, kept_open=1, kept_cutoffs=3, wal_left=4_200)
    assert report.lines() == [
        "kept 1 exchange still being recorded",
        "kept 3 exchanges that did not end complete (--keep-cutoffs)",
        "the -wal file still holds 4.2 KB: a reader had the DB open; SQLite reuses it, and the next prune "
        "truncates it",
        "pruned 0 exchanges, 0 B; DB 5 KB -> 5 KB"]


def test_a_db_still_at_or_over_max_size_is_said():
    at = PruneReport([], [], 5000, 5000, max_size=5000)
    assert at.lines()[0] == ("the DB is still over --max-size 5 KB: what is left is being recorded, kept, or "
                             "outside --tape")
    assert PruneReport([], [], 5000, 4999, max_size=5000).lines() == ["pruned 0 exchanges, 0 B; DB 5 KB -> 4.9 KB"]
    dry = PruneReport([], [], 5000, 6000, dry_run=True, max_size=5000)
    assert dry.lines()[0].startswith("the DB would still be over --max-size 5 KB:")


# -- what prune refuses ------------------------------------------------------------------------------------


def test_prune_refuses_what_it_cannot_act_on_in_one_line(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(10, COMPLETE, 1)])
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "say what to prune: --older-than AGE, --tape NAME or --max-size SIZE"),
        ({"older_than": -1.0}, "--older-than must not be negative, got -1 s"),
        ({"max_size": 0}, "--max-size must be more than 0 bytes, got 0"),
        ({"max_size": -5}, "--max-size must be more than 0 bytes, got -5"),
        ({"tape": "nope"}, f"no tape 'nope' in {db} (tapes: t)"),
    ]
    for args, says in cases:
        with pytest.raises(PruneError) as caught:
            prune(db, **args)
        assert str(caught.value) == says
    assert ids(db) == [1]
    missing = tmp_path / "missing.db"
    with pytest.raises(PruneError, match=f"^no recordings at {missing}$"):
        prune(missing, older_than=0)
    assert not missing.exists()


def test_an_age_of_zero_or_a_size_of_one_byte_are_accepted(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(10, COMPLETE, 1)])
    assert prune(db, older_than=0, dry_run=True, now=NOW).count == 1
    assert prune(db, max_size=1, dry_run=True, now=NOW).count == 1


# -- the rules ---------------------------------------------------------------------------------------------


def test_older_than_removes_what_was_recorded_strictly_before_the_cutoff_with_its_chunks(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(3, COMPLETE, 2), (2, COMPLETE, 1), (1, COMPLETE, 1)])
    # exactly 2 days old is not older than 2 days
    report = prune(db, older_than=2 * DAY, now=NOW)
    assert [(p.id, p.tape, p.seq, p.end_cause, p.chunk_count, p.chunk_bytes) for p in report.pruned] == [
        (1, "t", 0, "complete", 2, 2000)]
    assert ids(db) == [2, 3] and rows(db, "select count(*) from chunks") == [(2,)]
    assert report.tapes_removed == [] and tapes(db) == ["t"] and report.compacted
    assert prune(db, older_than=2 * DAY - 0.001, now=NOW).count == 1 and ids(db) == [3]


def test_ages_count_from_now_when_no_now_is_given(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(1, COMPLETE, 1)])
    days = (datetime.now(timezone.utc) - NOW).total_seconds() / DAY + 1
    assert prune(db, older_than=(days + 1) * DAY, dry_run=True).count == 0
    assert prune(db, older_than=(days - 1) * DAY, dry_run=True).count == 1


def test_tape_alone_removes_the_whole_tape_and_its_row_and_nothing_else(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "keep", [(5, COMPLETE, 1)])
    fill(db, "gone", [(5, COMPLETE, 1), (0, LEFT, 1)])
    report = prune(db, tape="gone", now=NOW)
    assert [p.id for p in report.pruned] == [2, 3] and report.tapes_removed == ["gone"]
    assert ids(db) == [1] and tapes(db) == ["keep"]
    assert report.lines()[-1] == f"pruned 2 exchanges (1 tape), 2 KB; DB {format_size(report.size_before)} -> " \
                                 f"{format_size(report.size_after)}"


def test_an_empty_tape_named_alone_loses_its_row(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(5, COMPLETE, 1)])
    execute(db, "insert into tapes (name, created_at) values ('empty', '2026-01-01T00:00:00.000+00:00')")
    dry = prune(db, tape="empty", dry_run=True, now=NOW)
    assert (dry.count, dry.tapes_removed) == (0, ["empty"]) and "empty" in tapes(db)
    assert prune(db, tape="empty", now=NOW).tapes_removed == ["empty"] and tapes(db) == ["t"]


def test_tape_narrows_the_age_rule_to_that_tape(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "a", [(5, COMPLETE, 1), (1, COMPLETE, 1)])
    fill(db, "b", [(5, COMPLETE, 1)])
    report = prune(db, tape="a", older_than=2 * DAY, now=NOW)
    assert [p.id for p in report.pruned] == [1] and report.tapes_removed == [] and ids(db) == [2, 3]


def test_keep_cutoffs_keeps_what_did_not_end_complete_and_counts_only_what_a_rule_chose(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(5, COMPLETE, 1), (5, LEFT, 1), (4, EndCause.UPSTREAM_RESET, 1), (1, LEFT, 1)])
    report = prune(db, older_than=2 * DAY, keep_cutoffs=True, now=NOW)
    assert [p.id for p in report.pruned] == [1] and (report.kept_cutoffs, report.kept_open) == (2, 0)
    assert ids(db) == [2, 3, 4]
    whole = prune(db, tape="t", keep_cutoffs=True, dry_run=True, now=NOW)
    assert (whole.count, whole.kept_cutoffs, whole.tapes_removed) == (0, 3, [])
    assert [p.id for p in prune(db, older_than=2 * DAY, now=NOW).pruned] == [2, 3]


def test_an_exchange_still_being_recorded_is_never_removed_by_any_rule(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(5, COMPLETE, 1), (4, None, 2)])
    assert rows(db, "select id, end_cause from exchanges order by id") == [(1, "complete"), (2, None)]
    dry = prune(db, older_than=0, dry_run=True, now=NOW)
    assert [p.id for p in dry.pruned] == [1] and dry.kept_open == 1 and dry.tapes_removed == []
    assert dry.lines()[1] == "would keep 1 exchange still being recorded"
    assert prune(db, older_than=3 * DAY, dry_run=True, now=NOW).kept_open == 1  # 4 days old: the rule chose it
    assert prune(db, older_than=10 * DAY, now=NOW).kept_open == 0  # too young for the rule
    report = prune(db, tape="t", max_size=1, now=NOW)
    assert [p.id for p in report.pruned] == [1] and ids(db) == [2] and tapes(db) == ["t"]
    assert (report.kept_open, report.kept_cutoffs) == (0, 0)  # a size alone keeps no list: its last line says
    assert report.lines()[-2].startswith("the DB is still over --max-size 1 B")
    assert prune(db, tape="t", now=NOW).kept_open == 1 and ids(db) == [2]


def test_max_size_removes_the_oldest_first_until_the_db_is_under_it(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(1, COMPLETE, 20), (3, COMPLETE, 20), (2, COMPLETE, 20), (0.5, COMPLETE, 20)])
    full = prune(db, max_size=10**9, now=NOW, dry_run=True)
    assert full.count == 0 and full.size_after == full.size_before
    target = live_bytes(db) - 60_000  # each takes about 40 KB (its chunks and its summary text): two go
    dry = prune(db, max_size=target, dry_run=True, now=NOW)
    report = prune(db, max_size=target, now=NOW)
    assert [p.id for p in report.pruned] == [2, 3] == [p.id for p in dry.pruned]
    assert ids(db) == [1, 4] and report.size_after < target and report.compacted
    assert dry.size_after < target and dry.lines()[-1].endswith("(dry run: nothing was changed)")


def test_age_and_size_rules_are_or_ed(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(1, COMPLETE, 20), (5, COMPLETE, 1), (2, COMPLETE, 20), (0.5, COMPLETE, 20)])
    size = live_bytes(db) - 15_000
    # the age rule takes the 5-day-old one (1 KB); the size rule then the oldest left (2 days), and no more
    dry = prune(db, older_than=4 * DAY, max_size=size, dry_run=True, now=NOW)
    report = prune(db, older_than=4 * DAY, max_size=size, now=NOW)
    assert [p.id for p in dry.pruned] == [2, 3] == [p.id for p in report.pruned]
    assert ids(db) == [1, 4]


def test_a_dry_run_changes_nothing_and_estimates_the_size_after(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "a", [(5, COMPLETE, 10), (4, COMPLETE, 10)])
    fill(db, "b", [(1, COMPLETE, 10)])
    before = db.read_bytes(), rows(db, "select * from exchanges"), rows(db, "select * from tapes")
    dry = prune(db, older_than=2 * DAY, dry_run=True, now=NOW)
    assert (db.read_bytes(), rows(db, "select * from exchanges"), rows(db, "select * from tapes")) == before
    assert [(p.id, p.chunk_count, p.chunk_bytes) for p in dry.pruned] == [(1, 10, 10_000), (2, 10, 10_000)]
    assert dry.tapes_removed == ["a"] and dry.dry_run and not dry.compacted
    real = prune(db, older_than=2 * DAY, now=NOW)
    assert real.size_after <= dry.size_after < dry.size_before
    assert abs(dry.size_after - real.size_after) < 0.25 * (dry.size_before - real.size_after)
    assert real.tapes_removed == ["a"] and tapes(db) == ["b"]


def test_without_compacting_the_file_keeps_its_size_and_a_dry_run_says_so(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(5, COMPLETE, 20), (1, COMPLETE, 1)])
    dry = prune(db, older_than=2 * DAY, dry_run=True, compact=False, now=NOW)
    assert dry.size_after == dry.size_before
    report = prune(db, older_than=2 * DAY, compact=False, now=NOW)
    assert not report.compacted and report.size_after == report.size_before and ids(db) == [2]
    assert "compacted the DB (VACUUM)" not in report.lines()
    # the free pages left behind are compacted by the next prune, even one that removes nothing
    again = prune(db, older_than=10 * DAY, now=NOW)
    assert again.count == 0 and again.compacted and again.size_after < again.size_before
    assert again.wal_left == 0
    assert not prune(db, older_than=10 * DAY, now=NOW).compacted  # nothing to remove, nothing free


def test_a_tape_a_running_recorder_wrote_keeps_its_row(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "live", [(5, COMPLETE, 1)])
    execute(db, "update exchanges set recorder_pid = ?", (os.getppid(),))  # another process, alive
    dry = prune(db, tape="live", dry_run=True, now=NOW)
    assert dry.count == 1 and dry.tapes_removed == []
    report = prune(db, tape="live", now=NOW)
    assert report.count == 1 and report.tapes_removed == [] and tapes(db) == ["live"]


def test_a_row_without_its_own_time_ages_from_its_tapes_creation(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(1, COMPLETE, 1), (1, COMPLETE, 1), (1, COMPLETE, 1), (1, COMPLETE, 1)])
    execute(db, "update tapes set created_at = '2026-02-01T00:00:00Z'")
    execute(db, "update exchanges set started_at = '' where id = 1")
    execute(db, "update exchanges set started_at = '2026-02-20T12:00:00' where id = 2")  # no zone: UTC
    execute(db, "update exchanges set started_at = 'yesterday' where id = 3")  # not a time: never old
    report = prune(db, older_than=9 * DAY - 1, now=NOW)
    assert [(p.id, p.started) for p in report.pruned] == [
        (1, datetime(2026, 2, 1, tzinfo=timezone.utc)), (2, datetime(2026, 2, 20, 12, tzinfo=timezone.utc))]
    # with no time at all it is the oldest for --max-size
    assert [p.id for p in prune(db, max_size=1, dry_run=True, now=NOW).pruned] == [3, 4]


# -- make room (the recorder near --max-db-size) -------------------------------------------------------


def test_make_room_removes_the_oldest_whole_complete_exchanges_until_the_bytes_fit(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "a", [(9, COMPLETE, 30), (8, LEFT, 30), (7, COMPLETE, 30), (6, COMPLETE, 30), (5, COMPLETE, 30)])
    fill(db, "b", [(10, COMPLETE, 30)])
    execute(db, "update exchanges set store_error = 'not stored whole' where id = 3")
    with contextlib.closing(Store(db).db.conn) as conn:
        pages = conn.execute("pragma page_count").fetchone()[0]
        conn.execute(f"pragma max_page_count = {pages}")
        page_size = conn.execute("pragma page_size").fetchone()[0]
        free = conn.execute("pragma freelist_count").fetchone()[0]
        assert room(conn) == free * page_size
        assert make_room(conn, room(conn)) == []  # it fits already
        removed = make_room(conn, room(conn) + 1, keep_tapes={"b"})
        assert [(p.id, p.tape) for p in removed] == [(6, "b")]
        assert [p.id for p in make_room(conn, 10**9)] == [1, 4, 5]
    assert ids(db) == [2, 3] and tapes(db) == ["a", "b"]  # b was the writer's when its last exchange went
    assert rows(db, "select count(*) from chunks where exchange_id not in (select id from exchanges)") == [(0,)]


# -- exact limits and what the sizes say ------------------------------------------------------------------


def floor_bytes(db: Path) -> int:
    """What the DB takes with no exchange: its schema page and a root page per table and index."""
    (page_size,), = rows(db, "pragma page_size")
    (trees,), = rows(db, "select count(*) from sqlite_master where rootpage > 0")
    return (1 + trees) * page_size


def test_max_size_means_strictly_under_it(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(2, COMPLETE, 5), (1, COMPLETE, 5)])
    live = live_bytes(db)
    assert prune(db, max_size=live + 1, dry_run=True, now=NOW).count == 0
    assert prune(db, max_size=live, dry_run=True, now=NOW).count >= 1
    assert prune(db, max_size=live + 1, now=NOW).count == 0 and ids(db) == [1, 2]
    live = live_bytes(db)  # compacted: no free page left
    report = prune(db, max_size=live, now=NOW)
    assert [p.id for p in report.pruned] == [1] and report.size_after < live


def test_a_dry_run_shares_the_bytes_in_use_out_by_weight(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(2, COMPLETE, 5), (1, COMPLETE, 5)])  # the same weight twice
    live, floor = live_bytes(db), floor_bytes(db)
    half = (live - floor) // 2
    assert prune(db, older_than=1.5 * DAY, dry_run=True, now=NOW).size_after == live - half
    # exactly at max_size after one is not under it: the next goes too
    assert prune(db, max_size=live - half, dry_run=True, now=NOW).count == 2
    assert prune(db, max_size=live - half + 1, dry_run=True, now=NOW).count == 1
    everything = prune(db, older_than=0, dry_run=True, now=NOW)
    assert everything.size_after == floor
    assert prune(db, older_than=0, now=NOW).size_after == floor  # the estimate of an emptied DB is exact


def test_a_dry_run_counts_free_pages_as_gone(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(2, COMPLETE, 20), (1, COMPLETE, 1)])
    prune(db, older_than=1.5 * DAY, compact=False, now=NOW)
    assert rows(db, "pragma freelist_count")[0][0] > 0
    dry = prune(db, older_than=10 * DAY, dry_run=True, now=NOW)
    assert dry.count == 0 and dry.size_after == live_bytes(db) < dry.size_before


def test_an_open_exchange_exactly_at_the_age_limit_was_not_chosen(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(2, COMPLETE, 1), (2, LEFT, 1), (2, None, 1)])
    at = prune(db, older_than=2 * DAY, keep_cutoffs=True, dry_run=True, now=NOW)
    assert (at.count, at.kept_open, at.kept_cutoffs) == (0, 0, 0)
    past = prune(db, older_than=2 * DAY - 1, keep_cutoffs=True, dry_run=True, now=NOW)
    assert (past.count, past.kept_open, past.kept_cutoffs) == (1, 1, 1)


def test_a_time_in_another_zone_is_that_instant(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(1, COMPLETE, 1)])
    execute(db, "update exchanges set started_at = '2026-02-20T14:00:00+02:00'")  # 12:00 UTC, 9 days before NOW
    assert prune(db, older_than=9 * DAY, dry_run=True, now=NOW).count == 0
    assert prune(db, older_than=9 * DAY - 1, dry_run=True, now=NOW).pruned[0].started == datetime(
        2026, 2, 20, 12, tzinfo=timezone.utc)


def test_more_exchanges_than_one_transaction_takes_are_all_reported(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(2, COMPLETE, 0)] * 205)
    report = prune(db, tape="t", now=NOW)
    assert report.count == 205 and ids(db) == [] and report.tapes_removed == ["t"]


def test_a_reader_that_keeps_the_wal_is_said_with_the_bytes_it_holds(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(2, COMPLETE, 20), (1, COMPLETE, 1)])
    with contextlib.closing(sqlite3.connect(db)) as reader:
        reader.execute("begin")
        reader.execute("select count(*) from exchanges").fetchall()  # a snapshot held open
        report = prune(db, older_than=1.5 * DAY, now=NOW)
        wal = Path(f"{db}-wal").stat().st_size
        reader.rollback()
    assert report.compacted and report.wal_left == wal > 0
    assert f"the -wal file still holds {format_size(wal)}: a reader had the DB open" in report.lines()[-2]


def test_make_room_says_what_it_removed_as_recorded(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "a", [(9, COMPLETE, 30), (8, COMPLETE, 30), (7, COMPLETE, 30), (6, COMPLETE, 30)])
    execute(db, "update exchanges set recorder_pid = 4242")
    with contextlib.closing(Store(db).db.conn) as conn:
        conn.execute(f"pragma max_page_count = {conn.execute('pragma page_count').fetchone()[0]}")
        removed = make_room(conn, room(conn) + 100_000)
        assert [(p.id, p.tape, p.seq, p.end_cause, p.started, p.recorder_pid) for p in removed] == [
            (1, "a", 0, "complete", NOW - timedelta(days=9), 4242), (2, "a", 1, "complete", NOW - timedelta(days=8),
                                                                     4242)]
        assert all(p.weight > 30_000 for p in removed) and room(conn) >= 100_000


def test_a_db_with_no_exchange_at_all_can_lose_its_empty_tape(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(1, COMPLETE, 0)])
    execute(db, "delete from exchanges")
    report = prune(db, tape="t", now=NOW)
    assert (report.count, report.tapes_removed, tapes(db)) == (0, ["t"], [])


def test_make_room_past_a_thousand_exchanges_says_it_removed_them_all(tmp_path: Path):
    db = tmp_path / "r.db"
    fill(db, "t", [(1, COMPLETE, 0)] * 1001)
    with contextlib.closing(Store(db).db.conn) as conn:
        conn.execute(f"pragma max_page_count = {conn.execute('pragma page_count').fetchone()[0]}")
        assert len(make_room(conn, 10**12)) == 1001
    assert ids(db) == []


def test_the_report_of_a_db_says_how_many_it_kept_for_each_reason(tmp_path: Path):
    """Pruning a DB by age under `--keep-cutoffs`, the report counts apart the exchanges the rule chose but kept
    because they are still being recorded and the ones kept because they did not end complete."""
    db = tmp_path / "r.db"
    fill(db, "t", [(5, COMPLETE, 1), (5, LEFT, 1), (4, EndCause.UPSTREAM_RESET, 1), (1, LEFT, 1), (4, None, 1)])
    lines = prune(db, older_than=2 * DAY, keep_cutoffs=True, dry_run=True, now=NOW).lines()
    assert lines[1:3] == ["would keep 1 exchange still being recorded",
                          "would keep 2 exchanges that did not end complete (--keep-cutoffs)"], lines


def page_bytes(db: Path) -> int:
    """The DB's size as prune measures it: its pages, in use or free."""
    (size,), = rows(db, "select page_size * page_count from pragma_page_size, pragma_page_count")
    return size


def test_a_real_prune_says_the_chunk_bytes_it_removed_and_the_db_s_size_before_and_after(tmp_path: Path):
    """Pruning a DB the writer filled, the report's lines give what each tape lost (seq runs, chunk bytes as
    stored), that it compacted, and the DB's size before and after the compaction, as measured."""
    db = tmp_path / "r.db"
    fill(db, "t", [(5, COMPLETE, 20), (4, COMPLETE, 10), (1, COMPLETE, 1)])
    before = page_bytes(db)
    lines = prune(db, older_than=2 * DAY, now=NOW).lines()
    after = page_bytes(db)
    assert after < before - 20_000
    assert lines == ["pruned tape t: 2 exchanges (seq 0-1), 30 KB of chunks",
                     "compacted the DB (VACUUM)",
                     f"pruned 2 exchanges (1 tape), 30 KB; DB {format_size(before)} -> {format_size(after)}"]


def test_a_real_prune_that_cannot_get_under_max_size_says_so(tmp_path: Path):
    """When what is left is still being recorded, a `--max-size` prune (dry run or not) says the DB is still over
    it."""
    db = tmp_path / "r.db"
    fill(db, "t", [(1, None, 20)])
    dry = prune(db, max_size=1000, dry_run=True, now=NOW).lines()
    real = prune(db, max_size=1000, now=NOW).lines()
    assert dry[0] == ("the DB would still be over --max-size 1 KB: what is left is being recorded, kept, or "
                      "outside --tape")
    assert real[0] == "the DB is still over --max-size 1 KB: what is left is being recorded, kept, or outside --tape"


def test_a_real_prune_told_not_to_compact_does_not_and_does_not_say_it_did(tmp_path: Path):
    """With `compact=False` the freed pages stay in the file: the report has no compaction line and the DB's
    size reads the same before and after."""
    db = tmp_path / "r.db"
    fill(db, "t", [(5, COMPLETE, 20), (1, COMPLETE, 1)])
    before = page_bytes(db)
    report = prune(db, older_than=2 * DAY, compact=False, now=NOW)
    assert (report.compacted, page_bytes(db)) == (False, before)
    assert report.lines() == ["pruned tape t: 1 exchange (seq 0), 20 KB of chunks",
                              f"pruned 1 exchange (1 tape), 20 KB; DB {format_size(before)} -> {format_size(before)}"]


def test_an_age_rule_given_with_a_size_rule_still_says_what_it_kept_and_why(tmp_path: Path):
    """`--older-than` given with `--max-size` still counts and says the old exchanges it kept: one still
    being recorded, and one that did not end complete under `--keep-cutoffs`."""
    db = tmp_path / "r.db"
    fill(db, "t", [(5, COMPLETE, 1), (5, LEFT, 1), (4, None, 1)])
    report = prune(db, older_than=2 * DAY, max_size=10**9, keep_cutoffs=True, now=NOW)
    assert [p.id for p in report.pruned] == [1] and ids(db) == [2, 3]
    assert (report.kept_open, report.kept_cutoffs) == (1, 1)
    assert report.lines()[1:3] == ["kept 1 exchange still being recorded",
                                   "kept 1 exchange that did not end complete (--keep-cutoffs)"]
