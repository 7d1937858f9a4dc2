"""The store's DB in-process (store/database.py): a DB that cannot be used is said in one line, a read-only one
is still read, an older one gains its columns, a newer one is refused; the reads every command makes (a tape's
exchanges in order, by end cause, `open` for those with no end; `12`, `TAPE`, `TAPE:SEQ`; what a missing tape
says) and their chunks byte-exact."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest

from streamreplay.store import Store
from streamreplay.store.database import KEY_INDEX, SCHEMA_VERSION, StoreError, open_store, unknown_tape
from tests.helpers import write_exchange


@pytest.fixture
def store(tmp_path: Path) -> Store:
    with Store(tmp_path / "d.db") as s:
        yield s


def test_a_new_db_has_its_schema_its_indexes_and_runs_in_wal(tmp_path: Path):
    with Store(tmp_path / "a" / "b" / "new.db") as s:  # its folders are made
        assert {"tapes", "exchanges", "chunks"} <= set(s.db.table_names())
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert s.db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        assert KEY_INDEX in {i.name for i in s.db["exchanges"].indexes}
        assert s.integrity_ok()


def test_an_older_db_gains_its_missing_columns_and_a_newer_one_is_refused(tmp_path: Path):
    db = tmp_path / "old.db"
    with Store(db) as s:
        eid = write_exchange(s, [(5, b"data: a\n\n")])
    conn = sqlite3.connect(db)
    conn.execute("alter table exchanges drop column store_error")
    conn.execute("drop index " + KEY_INDEX)
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with Store(db) as s:
        assert "store_error" in s.db["exchanges"].columns_dict
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert s.exchange(eid).store_error is None and [c.data for c in s.chunks(eid)] == [b"data: a\n\n"]
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=rf"written by a newer streamreplay \(schema {SCHEMA_VERSION + 1} > "):
        open_store(db)


def test_a_file_that_is_no_db_is_said_in_one_line(tmp_path: Path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"no database here " * 512)
    with pytest.raises(StoreError, match=r"bad\.db is not a usable streamreplay database: "):
        open_store(bad)


@pytest.mark.parametrize(("schema", "said"), [
    ("create table t (a); create view exchanges as select * from t", "exchanges is a view, not our table"),
    ("create table exchanges (id integer primary key, amount real)",
     "its table exchanges lacks the columns method, path, tape"),
    ("create table chunks (exchange_id, idx, t_ns)", "its table chunks lacks the columns data"),
])
def test_another_program_s_db_is_refused_in_one_line_and_left_as_it_was(tmp_path: Path, schema: str, said: str):
    """A DB whose table of one of our names has another shape is someone else's: refused before the schema
    is made, so no column, table, index or journal mode of ours is added to it."""
    theirs = tmp_path / "theirs.db"
    conn = sqlite3.connect(theirs)
    conn.executescript(schema)
    conn.close()
    before = theirs.read_bytes()
    with pytest.raises(StoreError, match=rf"theirs\.db is not a usable streamreplay database: {said}$"):
        open_store(theirs)
    assert theirs.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs.db"]


def test_a_folder_that_cannot_be_made_is_said_in_one_line(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match=r"cannot be opened: "):
        open_store(tmp_path / "file" / "sub" / "d.db")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_db_in_a_read_only_folder_is_opened_read_only_and_still_read(tmp_path: Path):
    folder = tmp_path / "ro"
    folder.mkdir()
    with Store(folder / "d.db") as s:
        eid = write_exchange(s, [(5, b"data: a\n\n")], end_cause="complete")
        s.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        s.db.disable_wal()
    folder.chmod(0o555)
    try:
        s = open_store(folder / "d.db")
        assert s.readonly and [c.data for c in s.chunks(eid)] == [b"data: a\n\n"]
        s.close()
    finally:
        folder.chmod(0o755)


def test_exchanges_are_read_in_recorded_order_by_tape_and_by_end_cause(store: Store):
    a = write_exchange(store, tape="x", end_cause="complete")
    b = write_exchange(store, tape="y", end_cause="client_left")
    c = write_exchange(store, tape="x")  # open: no end stored yet
    d = write_exchange(store, tape="x", end_cause="client_left")
    ids = lambda exs: [e.id for e in exs]  # noqa: E731
    assert ids(store.exchanges()) == [a, b, c, d]
    assert ids(store.exchanges(tape="x")) == [a, c, d]
    assert ids(store.exchanges(cause="client_left")) == [b, d]
    assert ids(store.exchanges(tape="x", cause="client_left")) == [d]
    assert ids(store.exchanges(cause="open")) == [c]
    assert ids(store.exchanges(tape="y", cause="open")) == []
    assert ids(store.exchanges(limit=2)) == [a, b]
    assert (store.count(), store.count("x"), store.count("nope")) == (4, 3, 0)
    assert Store.filter_sql() == ("", [])
    assert Store.filter_sql("x", "open") == (" where tape = ? and end_cause is null", ["x"])


def test_an_exchange_is_named_by_its_id_its_tape_or_its_tape_and_seq(store: Store):
    a0 = write_exchange(store, tape="a")
    b0 = write_exchange(store, tape="b")
    a1 = write_exchange(store, tape="a")
    assert store.resolve(a0) == a0 and store.resolve(f" {b0} ") == b0
    assert store.resolve("a") == a1  # a tape alone: its last exchange
    assert (store.resolve("a:0"), store.resolve("a:1"), store.resolve("b:0")) == (a0, a1, b0)
    with pytest.raises(KeyError, match="no exchange 99"):
        store.resolve("99")
    with pytest.raises(KeyError, match=r"no exchange 5 in tape 'a' in .*d\.db \(tapes: a, b\)"):
        store.resolve("a:5")
    with pytest.raises(KeyError, match=r"no tape 'c' in .*d\.db \(tapes: a, b\)"):
        store.resolve("c")
    with pytest.raises(KeyError, match="is not an exchange: give an id, TAPE or TAPE:SEQ"):
        store.resolve("a:x")


def test_a_missing_tape_names_the_tapes_there_are():
    assert unknown_tape(["a", "b"], "c", "x.db") == "no tape 'c' in x.db (tapes: a, b)"
    assert unknown_tape([], "c", "x.db") == "no tape 'c' in x.db (tapes: none)"
    assert unknown_tape(["a"], "a", "x.db", what="no exchange 3 in tape 'a'") == \
        "no exchange 3 in tape 'a' in x.db (tapes: a)"


def test_chunks_come_back_byte_exact_in_order_and_tapes_with_their_counts(store: Store):
    data = [(3, b"\x00\xff binary"), (7, b"data: x\n\n"), (9, b"")]
    eid = write_exchange(store, data, tape="z")
    assert [(c.index, c.t_ns, c.data) for c in store.chunks(eid)] == [(i, t, d) for i, (t, d) in enumerate(data)]
    assert all(type(c.data) is bytes for c in store.chunks(eid))
    assert [(t["name"], t["exchanges"]) for t in store.tapes()] == [("z", 1)]
    with pytest.raises(KeyError):
        store.exchange(eid + 1)
    assert store.size_bytes() > 0


def test_a_db_opened_read_only_is_read_and_never_written(tmp_path: Path):
    db = tmp_path / "d.db"
    with Store(db) as s:
        eid = write_exchange(s, [(5, b"data: a\n\n")], tape="t", end_cause="complete")
        s.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ro = open_store(db, readonly=True)
    try:
        assert ro.readonly and ro.resolve("t") == eid and [c.data for c in ro.chunks(eid)] == [b"data: a\n\n"]
        with pytest.raises(sqlite3.OperationalError):
            ro.db.execute("delete from exchanges")
    finally:
        ro.close()


def test_a_store_is_used_from_another_thread_than_the_one_that_opened_it(tmp_path: Path):
    """A server started from sync code reads its store on its own thread."""
    with Store(tmp_path / "d.db") as s:
        eid = write_exchange(s, [(5, b"data: a\n\n")], tape="t")
        s.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        ro = open_store(tmp_path / "d.db", readonly=True)
        got: list = []
        worker = threading.Thread(target=lambda: got.extend([s.resolve("t"), ro.chunks(eid)[0].data]))
        worker.start()
        worker.join(5)
        ro.close()
        assert got == [eid, b"data: a\n\n"]


def test_a_db_whose_write_ahead_log_cannot_be_opened_is_opened_read_only_and_still_read(tmp_path: Path):
    """A DB SQLite cannot open to write ("unable to open database file": here its -wal, which root meets too) is
    opened read-only and still read, not refused."""
    db = tmp_path / "d.db"
    with Store(db) as s:
        eid = write_exchange(s, [(5, b"data: a\n\n")], tape="t")
    (tmp_path / "d.db-wal").mkdir()  # closing removed the WAL: a folder in its place cannot be opened as one
    with pytest.raises(sqlite3.OperationalError, match="unable to open"):
        Store(db)
    s = open_store(db)
    try:
        assert s.readonly and s.resolve("t") == eid and [c.data for c in s.chunks(eid)] == [b"data: a\n\n"]
    finally:
        s.close()


def test_a_db_file_that_cannot_be_written_is_opened_read_only_and_still_read(tmp_path: Path):
    """A DB file SQLite can only read ("attempt to write a readonly database") is opened read-only and still read,
    not refused."""
    db = tmp_path / "d.db"
    with Store(db) as s:
        eid = write_exchange(s, [(5, b"data: a\n\n")], tape="t")
        s.db.disable_wal()  # so that opening it to write must write (WAL on again), which a read-only file refuses
    root = os.geteuid() == 0
    if root:  # root writes any file chmod protects: an immutable one it cannot
        if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
            pytest.skip("root, and chattr +i cannot make a file root cannot write here")
    else:
        db.chmod(0o444)
    try:
        with pytest.raises(sqlite3.OperationalError, match="attempt to write a readonly database"):
            Store(db)
        s = open_store(db)
        assert s.readonly and s.resolve("t") == eid and [c.data for c in s.chunks(eid)] == [b"data: a\n\n"]
        s.close()
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(db)], check=True)
        else:
            db.chmod(0o644)


def test_a_db_of_this_version_opens_again_and_again_to_write_as_it_was_left(tmp_path: Path):
    """Opening a DB this version made, for writing, keeps it as it is: no refusal, no index made twice."""
    db = tmp_path / "d.db"
    with Store(db) as s:
        eid = write_exchange(s, [(5, b"data: a\n\n")], tape="t")
    for _ in range(2):
        with open_store(db) as s:
            assert not s.readonly and s.resolve("t") == eid and [c.data for c in s.chunks(eid)] == [b"data: a\n\n"]
            assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_an_older_db_gains_its_missing_columns_with_their_types(tmp_path: Path):
    """A column an older DB lacks is added with its type: a number stored in it reads back as a number."""
    db = tmp_path / "old.db"
    with Store(db) as s:
        write_exchange(s)
        s.db.conn.execute("alter table exchanges drop column chunk_count")
        s.db.conn.execute("PRAGMA user_version = 1")
    with Store(db) as s:
        assert s.db["exchanges"].columns_dict["chunk_count"] is int
        eid = write_exchange(s, chunk_count=1234)
        assert s.exchange(eid).chunk_count == 1234


def test_the_schema_refuses_a_tape_name_twice_a_row_with_no_tape_method_or_path_and_a_chunk_stored_twice(
        store: Store):
    """The constraints the writer relies on: a tape name is taken once (a default one then gets a suffix), an
    exchange has its tape, method and path, and an exchange's chunk index is stored once."""
    eid = write_exchange(store, [(5, b"data: a\n\n")], tape="t")
    with pytest.raises(sqlite3.IntegrityError):
        store.db.execute("insert into tapes (name, created_at, source) values ('t', '', '')")
    for column in ("tape", "method", "path"):
        row = {"tape": "t", "method": "POST", "path": "/chat/completions", column: None}
        with pytest.raises(sqlite3.IntegrityError):
            store.db.execute("insert into exchanges (tape, method, path) values (?, ?, ?)", list(row.values()))
    with pytest.raises(sqlite3.IntegrityError):
        store.db.execute("insert into chunks (exchange_id, idx, t_ns, data) values (?, 0, 9, x'00')", [eid])
    assert [c.data for c in store.chunks(eid)] == [b"data: a\n\n"]


def test_the_db_s_size_on_disk_counts_its_write_ahead_log(store: Store, tmp_path: Path):
    """What `ls` gives as the DB's size on disk counts its write-ahead log, where recent writes are."""
    write_exchange(store, [(5, b"x" * 50_000)])
    wal = tmp_path / "d.db-wal"
    assert wal.stat().st_size > 50_000
    assert store.size_bytes() == (tmp_path / "d.db").stat().st_size + wal.stat().st_size


def test_a_tape_whose_name_has_a_colon_is_named_with_its_seq_after_the_last_colon(store: Store):
    """`TAPE:SEQ` splits at the last colon, so a tape named `team:a` has its exchanges named `team:a:0`, ..."""
    first = write_exchange(store, tape="team:a")
    second = write_exchange(store, tape="team:a")
    assert (store.resolve("team:a:0"), store.resolve("team:a:1")) == (first, second)


def test_an_exchange_a_dead_recorder_left_open_is_marked_interrupted_with_what_arrived(store: Store):
    """Opening a DB to record marks each exchange left open by a recorder no longer running `interrupted`,
    with its chunks counted and summed; an ended one is left as it was."""
    open_id = write_exchange(store, [(5, b"data: a\n\n"), (9, b"data: b\n\n")], tape="t")
    ended = write_exchange(store, [(5, b"data: a\n\n")], tape="t", end_cause="complete")
    assert store.mark_interrupted() == [open_id]
    ex = store.exchange(open_id)
    assert (ex.end_cause, ex.chunk_count, ex.byte_count, ex.duration_ns) == ("interrupted", 2, 18, 9)
    assert store.exchange(ended).end_cause == "complete"


def test_tapes_are_listed_oldest_first_with_when_they_were_made_their_source_and_their_count(store: Store):
    """`tapes()` gives each tape's name, when it was made, its source (what a cassette export carries) and how many
    exchanges it holds, oldest first."""
    with store.db.conn:
        store.db["tapes"].insert({"name": "new", "created_at": "2025-02-01T00:00:00", "source": "proxy of b"})
    write_exchange(store, tape="old")  # its tape made 2025-01-01, source "test"
    assert store.tapes() == [
        {"name": "old", "created_at": "2025-01-01T00:00:00.000+00:00", "source": "test", "exchanges": 1},
        {"name": "new", "created_at": "2025-02-01T00:00:00", "source": "proxy of b", "exchanges": 0},
    ]
