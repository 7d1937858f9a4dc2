"""Retention: `streamreplay prune` and `record --max-db-size`, on real DBs.

The DBs are written by the store's own writer (StoreWriter, as the recorder writes them) or recorded
through a real `streamreplay record` from a scripted upstream; prune runs through the CLI, as a user runs it,
and alongside a recorder that is writing to the same DB.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from streamreplay.cli import main
from streamreplay.endcause import EndCause
from streamreplay.exchange import exchange_row
from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.prune import make_room, parse_age, parse_size, prune, room
from streamreplay.replay import ReplayServer
from streamreplay.store import Store, StoreWriter, summarize
from streamreplay.store import writer as writer_module
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import chat, post, sha

COMPLETE, NO_DONE, LEFT, RESET = (EndCause.COMPLETE, EndCause.EOF_WITHOUT_DONE, EndCause.CLIENT_LEFT,
                                  EndCause.UPSTREAM_RESET)


def event(n: int) -> bytes:
    """One SSE event of exactly 1000 bytes, different for each n."""
    head, tail = b'data: {"choices":[{"index":0,"delta":{"content":"', b'"}}]}\n\n'
    text = f"{n} ".encode()
    return head + (text * 1000)[: 1000 - len(head) - len(tail)] + tail


def fill(db: Path, tape: str, exchanges: list[tuple[float, EndCause | None, int]]) -> None:
    """Rows as the recorder's writer stores them, one per (age in days, end cause or None for one still being
    recorded, KB of chunks). Call it last for open ones: the next writer to open the DB in this process takes
    its own open rows for a dead daemon's."""
    writer = StoreWriter(db, tape)
    writer.start()
    now = datetime.now(timezone.utc)
    for days, cause, kb in exchanges:
        started = (now - timedelta(days=days)).isoformat(timespec="milliseconds")
        handle = writer.begin(exchange_row(method="POST", path="/v1/chat/completions", stream=True,
                                           request_body=f'{{"model":"m","n":{kb}}}'.encode(), started_at=started))
        for i in range(kb):
            writer.chunk(handle, i, i * 1_000_000, event(i))
        if cause is not None:
            writer.end(handle, exchange_row(status=200, end_cause=cause, upstream_end=cause, chunk_count=kb,
                                            byte_count=kb * 1000, duration_ns=kb * 1_000_000,
                                            done=cause is COMPLETE))
    writer.close()


def rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, params).fetchall()


def tapes_and_ages(db: Path) -> dict[str, list[int]]:
    """{tape: [the age in whole days of each exchange, by seq]}."""
    now = datetime.now(timezone.utc)
    found: dict[str, list[int]] = {name: [] for (name,) in rows(db, "select name from tapes")}
    for tape, started in rows(db, "select tape, started_at from exchanges order by tape, seq"):
        found.setdefault(tape, []).append(round((now - datetime.fromisoformat(started)).total_seconds() / 86400))
    return found


def contents(db: Path) -> tuple[Any, ...]:
    """Everything in the DB, and the DB file's bytes."""
    tables = tuple(rows(db, f"select * from {t} order by 1, 2") for t in ("tapes", "exchanges", "chunks"))
    return tables, hashlib.sha256(db.read_bytes()).hexdigest()


def wal_bytes(db: Path) -> int:
    wal = Path(f"{db}-wal")
    return wal.stat().st_size if wal.exists() else 0


def no_orphan_chunks(db: Path) -> bool:
    return not rows(db, "select 1 from chunks where exchange_id not in (select id from exchanges) limit 1")


def run(*args: str) -> Any:
    result = CliRunner().invoke(main, ["prune", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


# -- the rules ------------------------------------------------------------------------------------------

def test_older_than_takes_days_hours_minutes_seconds_and_the_chunks_go_with_their_exchange(tmp_path: Path):
    db = tmp_path / "age.db"
    fill(db, "old", [(10, COMPLETE, 3), (10, COMPLETE, 2)])
    fill(db, "mixed", [(9, COMPLETE, 2), (1 / 24, COMPLETE, 2)])
    fill(db, "new", [(2, COMPLETE, 4)])
    assert parse_age("7d") == parse_age("168h") == parse_age("10080m") == parse_age("604800s") == 604800
    assert parse_age("604800") == parse_age(" 1.5w ") / 1.5 == 604800

    result = run("--db", str(db), "--older-than", "9.5d")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "pruned tape old: 2 exchanges (seq 0-1), 5 KB of chunks",
        "removed tape old (no exchanges left)",
        "compacted the DB (VACUUM)",
        result.output.splitlines()[-1],
    ]
    assert re.fullmatch(r"pruned 2 exchanges \(1 tape\), 5 KB; DB \d+(\.\d)? KB -> \d+(\.\d)? KB",
                        result.output.splitlines()[-1])
    assert tapes_and_ages(db) == {"mixed": [9, 0], "new": [2]}
    assert no_orphan_chunks(db) and len(rows(db, "select * from chunks")) == 2 + 2 + 4

    # a tape whose last exchange goes goes too
    for age, left in (("200h", {"mixed": [0], "new": [2]}), ("2879m", {"mixed": [0]}), ("3000", {}), ("60s", {})):
        assert run("--db", str(db), "--older-than", age).exit_code == 0
        assert tapes_and_ages(db) == left, age
    assert no_orphan_chunks(db) and not rows(db, "select * from chunks")


def test_tape_removes_the_whole_tape_with_its_row_and_nothing_else(tmp_path: Path):
    db = tmp_path / "tape.db"
    fill(db, "a", [(1, COMPLETE, 2), (1, NO_DONE, 1), (0, LEFT, 1)])
    fill(db, "b", [(5, COMPLETE, 2), (0, COMPLETE, 1)])
    b_before = rows(db, "select * from exchanges where tape = 'b'"), rows(
        db, "select c.* from chunks c join exchanges e on e.id = c.exchange_id where e.tape = 'b'")

    result = run("--db", str(db), "--tape", "a")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[:2] == ["pruned tape a: 3 exchanges (seq 0-2), 4 KB of chunks",
                                              "removed tape a (no exchanges left)"]
    assert result.output.splitlines()[-1].startswith("pruned 3 exchanges (1 tape), 4 KB; DB ")
    assert rows(db, "select name from tapes") == [("b",)]
    assert (rows(db, "select * from exchanges where tape = 'b'"), rows(
        db, "select c.* from chunks c join exchanges e on e.id = c.exchange_id where e.tape = 'b'")) == b_before
    assert no_orphan_chunks(db) and len(rows(db, "select * from chunks")) == 3


def test_max_size_removes_the_oldest_first_until_the_file_is_under_it(tmp_path: Path):
    db = tmp_path / "size.db"
    # inserted out of age order: "oldest" is when it was recorded, not its id
    ages = [3, 9, 1, 7, 5, 10, 2, 8, 4, 6]
    for n, age in enumerate(ages):
        fill(db, f"t{n}", [(age, COMPLETE, 40)])
    assert db.stat().st_size > 400_000

    each = db.stat().st_size / len(ages)  # an exchange's share of the file (its chunks, its row, its summary)

    result = run("--db", str(db), "--max-size", "250KB")
    assert result.exit_code == 0, result.output
    assert db.stat().st_size < 250_000 and wal_bytes(db) == 0
    left = sorted(age for ages_ in tapes_and_ages(db).values() for age in ages_)
    assert left == list(range(1, len(left) + 1)), left  # the newest stayed, the oldest went
    assert len(left) >= 2 and db.stat().st_size + each > 250_000, left  # and no more went than had to
    assert parse_size("150KB") == parse_size("150kb") == parse_size("150000") == 150_000
    assert parse_size("1.5MB") == 1_500_000 and parse_size("2MiB") == 2 * 1024 * 1024
    summary = result.output.splitlines()[-1]
    removed = len(ages) - len(left)
    assert summary.startswith(f"pruned {removed} exchanges ({removed} tapes), {removed * 40} KB; DB "), summary


def test_keep_cutoffs_keeps_every_exchange_that_did_not_end_complete(tmp_path: Path):
    db = tmp_path / "cut.db"
    fill(db, "t", [(10, COMPLETE, 1), (10, LEFT, 1), (10, NO_DONE, 1), (10, RESET, 1), (10, COMPLETE, 1)])

    result = run("--db", str(db), "--older-than", "7d", "--keep-cutoffs")
    assert result.exit_code == 0, result.output
    assert "pruned tape t: 2 exchanges (seq 0, 4), 2 KB of chunks" in result.output.splitlines()
    assert "kept 3 exchanges that did not end complete (--keep-cutoffs)" in result.output.splitlines()
    assert rows(db, "select seq, end_cause from exchanges order by seq") == [
        (1, "client_left"), (2, "eof_without_done"), (3, "upstream_reset")]
    assert rows(db, "select name from tapes") == [("t",)]

    # --max-size keeps them too, and says the size could not be reached
    result = run("--db", str(db), "--max-size", "1KB", "--keep-cutoffs")
    assert "the DB is still over --max-size 1 KB" in result.output and len(rows(db, "select * from exchanges")) == 3
    # without the flag they go
    assert run("--db", str(db), "--older-than", "7d").exit_code == 0
    assert not rows(db, "select * from exchanges") and not rows(db, "select * from tapes")


def test_an_exchange_still_being_recorded_is_never_pruned(tmp_path: Path):
    db = tmp_path / "open.db"
    fill(db, "t", [(10, COMPLETE, 2), (10, NO_DONE, 1), (10, None, 3)])
    # its recorder is another process, still running (this test's parent)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("update exchanges set recorder_pid = ? where end_cause is null", [os.getppid()])
    chunks = rows(db, "select * from chunks where exchange_id = 3")
    # a tape a running recorder wrote, all of whose exchanges ended: it may record into it again
    fill(db, "running", [(10, COMPLETE, 1)])
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("update exchanges set recorder_pid = ? where tape = 'running'", [os.getppid()])
    assert run("--db", str(db), "--older-than", "1d").exit_code == 0
    assert rows(db, "select name from tapes order by name") == [("running",), ("t",)]
    assert not rows(db, "select * from exchanges where tape = 'running'")

    for args in (["--tape", "t"], ["--older-than", "0"], ["--max-size", "1"]):
        result = run("--db", str(db), *args)
        assert result.exit_code == 0, result.output
        assert rows(db, "select id, end_cause, store_error is not null from exchanges") == [(3, None, 1)], args
        assert rows(db, "select * from chunks where exchange_id = 3") == chunks
        assert rows(db, "select name from tapes order by name") == [("running",), ("t",)]  # t: not empty
    assert "kept 1 exchange still being recorded" in run("--db", str(db), "--tape", "t").output


def test_dry_run_lists_what_would_go_and_changes_nothing(tmp_path: Path):
    db = tmp_path / "dry.db"
    fill(db, "old", [(10, COMPLETE, 3), (9, LEFT, 2)])
    fill(db, "new", [(8, COMPLETE, 5), (1, COMPLETE, 7)])
    before = contents(db)

    for args, lines in (
        (["--older-than", "7d"], ["would prune tape old: 2 exchanges (seq 0-1), 5 KB of chunks",
                                  "would prune tape new: 1 exchange (seq 0), 5 KB of chunks",
                                  "would remove tape old (no exchanges left)"]),
        (["--older-than", "7d", "--keep-cutoffs"], [
            "would prune tape old: 1 exchange (seq 0), 3 KB of chunks",
            "would prune tape new: 1 exchange (seq 0), 5 KB of chunks",
            "would keep 1 exchange that did not end complete (--keep-cutoffs)"]),
        (["--tape", "new"], ["would prune tape new: 2 exchanges (seq 0-1), 12 KB of chunks",
                             "would remove tape new (no exchanges left)"]),
        (["--max-size", "1KB"], ["would prune tape old: 2 exchanges (seq 0-1), 5 KB of chunks",
                                 "would prune tape new: 2 exchanges (seq 0-1), 12 KB of chunks",
                                 "would remove tape old (no exchanges left)",
                                 "would remove tape new (no exchanges left)"]),
    ):
        result = run("--db", str(db), "--dry-run", *args)
        assert result.exit_code == 0, result.output
        *listed, summary = result.output.splitlines()
        assert listed[: len(lines)] == lines, (args, result.output)
        assert summary.startswith("would prune ") and summary.endswith("(dry run: nothing was changed)"), summary
        assert contents(db) == before, args

    # what a dry run lists is what the run removes
    dry = run("--db", str(db), "--dry-run", "--older-than", "7d").output.splitlines()
    real = run("--db", str(db), "--older-than", "7d").output.splitlines()
    assert [line.removeprefix("would ") for line in dry[:3]] == [
        line.replace("pruned", "prune").replace("removed", "remove") for line in real[:3]]
    assert contents(db) != before


def test_compaction_gives_the_freed_bytes_back_to_the_disk(tmp_path: Path):
    db = tmp_path / "vac.db"
    fill(db, "big", [(10, COMPLETE, 300)])
    fill(db, "small", [(1, COMPLETE, 20)])
    size = db.stat().st_size
    assert size > 300_000

    # without compacting, the pages are only freed for new recordings: the file keeps its size
    kept = prune(db, older_than=parse_age("5d"), compact=False)
    assert kept.count == 1 and not kept.compacted and db.stat().st_size == size
    assert rows(db, "pragma freelist_count")[0][0] > 60

    result = run("--db", str(db), "--older-than", "5d")  # nothing left to remove: it still compacts
    assert "compacted the DB (VACUUM)" in result.output.splitlines()
    assert db.stat().st_size < size // 5 and rows(db, "pragma freelist_count") == [(0,)]
    assert wal_bytes(db) == 0
    assert Store(db).integrity_ok() and len(Store(db).chunks(2)) == 20
    summary = result.output.splitlines()[-1]
    before, after = (float(x) for x in re.fullmatch(r"pruned 0 exchanges, 0 B; DB ([\d.]+) KB -> ([\d.]+) KB",
                                                    summary).groups())
    assert after * 1000 == pytest.approx(db.stat().st_size, abs=100) and before > 300


@pytest.mark.parametrize(("args", "says"), [
    (["--older-than", "7x"], "--older-than: '7x' is not an age"),
    (["--older-than", "-1d"], "--older-than: '-1d' is not an age"),
    (["--max-size", "12XB"], "--max-size: '12XB' is not a size"),
    (["--max-size", "0"], "--max-size must be more than 0 bytes"),
    ([], "say what to prune: --older-than AGE, --tape NAME or --max-size SIZE"),
    (["--tape", "nope"], "no tape 'nope' in DB (tapes: t)"),
    (["--db", "missing.db", "--tape", "t"], "no recordings at missing.db"),
    (["--db", "t.jsonl", "--tape", "t"], "t.jsonl is a cassette: prune works on a DB"),
])
def test_bad_arguments_say_one_line_and_change_nothing(tmp_path: Path, monkeypatch, args: list[str], says: str):
    monkeypatch.chdir(tmp_path)
    fill(tmp_path / "DB", "t", [(10, COMPLETE, 1)])
    (tmp_path / "t.jsonl").write_text("{}\n")
    before = contents(tmp_path / "DB")
    result = CliRunner().invoke(main, ["prune", "--db", "DB", *args])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.splitlines() == [result.output.strip()] and "Traceback" not in result.output
    assert result.output.startswith(f"Error: {says}"), result.output
    assert contents(tmp_path / "DB") == before and not (tmp_path / "missing.db").exists()


def test_make_room_prunes_only_whole_complete_exchanges_oldest_first(tmp_path: Path):
    """What the recorder's writer does near --max-db-size."""
    db = tmp_path / "room.db"
    fill(db, "gone", [(10, COMPLETE, 30)])
    fill(db, "old", [(9, COMPLETE, 30), (8, LEFT, 30), (7, COMPLETE, 30), (6, COMPLETE, 30)])
    fill(db, "now", [(5, COMPLETE, 30), (4, COMPLETE, 30)])  # the writer's own tape
    fill(db, "old", [(3, None, 30)])  # still being recorded
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        # a complete exchange not stored whole is what the recorder said it lost: it stays as evidence
        conn.execute("update exchanges set store_error = 'not stored whole: sqlite: database or disk is full' "
                     "where id = 4")
    with contextlib.closing(Store(db).db.conn) as conn:
        conn.execute(f"pragma max_page_count = {rows(db, 'pragma page_count')[0][0]}")
        assert room(conn) < 30_000  # what pages are free, and no more: less than an exchange takes
        # each exchange takes about 60 KB (its chunks, and its summary's text): two, and no more than two
        removed = make_room(conn, 100_000, keep_tapes={"now"})
        assert [p.id for p in removed] == [1, 2] and room(conn) >= 100_000
        assert [p.id for p in make_room(conn, 10**9, keep_tapes={"now"})] == [5, 6, 7]
        assert make_room(conn, 10**9) == []
    assert rows(db, "select id from exchanges order by id") == [(3,), (4,), (8,)] and no_orphan_chunks(db)
    # "gone" went with its last exchange; "now" is empty, but the writer records into it
    assert rows(db, "select name from tapes order by name") == [("now",), ("old",)]


# -- beside a recorder -------------------------------------------------------------------------------------

def start_record(db: Path, upstream: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "streamreplay.cli", "record", "--upstream", upstream, "--db",
                             str(db), "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    banner = proc.stdout.readline()
    found = re.search(r"base_url (\S+) ", banner)
    assert found, (banner, proc.stderr.read() if proc.stderr else "")
    return proc, found.group(1)


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=20)


def stream(url: str, payload: dict[str, Any], into: bytearray) -> None:
    with httpx.stream("POST", f"{url}/chat/completions", json=payload, timeout=20) as resp:
        for data in resp.iter_raw():
            into += data


def test_prune_while_a_recorder_streams_keeps_the_exchange_in_flight_whole_and_replayable(tmp_path: Path):
    db = tmp_path / "live.db"
    fill(db, "old", [(10, COMPLETE, 200), (9, LEFT, 20)])
    fill(db, "recent", [(0, COMPLETE, 100)])
    question = chat("the live one")
    with ScriptedUpstream(Script(text="tick " * 200, gap=0.008)) as upstream:  # 1.6 s of stream
        proc, base_url = start_record(db, upstream.base_url, "--tape", "live")
        received = bytearray()
        client = threading.Thread(target=stream, args=(base_url, question, received))
        client.start()
        deadline = time.monotonic() + 10
        while not rows(db, "select 1 from chunks c join exchanges e on e.id = c.exchange_id where e.tape = 'live' "
                           "group by e.id having count(*) > 20") and time.monotonic() < deadline:
            time.sleep(0.02)
        # while its chunks are being committed: the tape alone (nothing of it may go), then everything ended
        during = [run("--db", str(db), "--tape", "live"), run("--db", str(db), "--older-than", "0")]
        open_then = rows(db, "select count(*) from exchanges where tape = 'live' and end_cause is null")
        client.join()
        out, err = stop(proc)
        sent = upstream.sent[0].body
    assert all(r.exit_code == 0 for r in during), [r.output for r in during]
    assert "kept 1 exchange still being recorded" in during[0].output.splitlines()
    assert during[0].output.splitlines()[-1].startswith("pruned 0 exchanges, 0 B; DB ")
    assert "pruned tape old: 2 exchanges" in during[1].output and "compacted the DB (VACUUM)" in during[1].output
    assert open_then == [(1,)], "prune must have run while the exchange was in flight"
    assert proc.returncode == 0 and "STORING FAILED" not in err and "Traceback" not in err, (out, err)

    (live,) = Store(db).exchanges()
    assert (live.tape, live.end_cause, live.store_error) == ("live", "complete", None)
    assert sha(b"".join(c.data for c in Store(db).chunks(live.id))) == sha(sent) == sha(bytes(received))
    assert [t["name"] for t in Store(db).tapes()] == ["live"] and Store(db).integrity_ok()
    with ReplayServer(str(db), tape="live", speed=0) as replay:
        replayed = bytearray()
        stream(replay.base_url, question, replayed)
    assert sha(bytes(replayed)) == sha(sent)


def test_record_max_db_size_prunes_the_oldest_complete_exchanges_and_says_so_once(tmp_path: Path):
    db = tmp_path / "cap.db"
    limit = 200_000
    with ScriptedUpstream(Script(text="word " * 100)) as upstream:  # about 20 KB a stream
        upstream.queue(Script(text="word " * 100, ending="no_done"))  # a cutoff first: the oldest of all
        proc, base_url = start_record(db, upstream.base_url, "--tape", "cap", "--max-db-size", str(limit))
        for n in range(24):  # about 550 KB in all
            with httpx.stream("POST", f"{base_url}/chat/completions", json=chat(f"q{n}"), timeout=10) as resp:
                assert resp.status_code == 200 and sum(len(d) for d in resp.iter_raw()) > 15_000
        out, err = stop(proc)
        sent = [s.body for s in upstream.sent]
    line = "streamreplay: DB at its --max-db-size (200 KB): pruning the oldest complete exchanges"
    assert proc.returncode == 0 and err.splitlines() == [line], err  # once, and nothing failed

    store = Store(db)
    kept = store.exchanges()
    assert kept[0].seq == 0 and kept[0].end_cause == "eof_without_done"  # the cutoff stays
    seqs = [ex.seq for ex in kept[1:]]
    assert seqs == list(range(seqs[0], 24)) and seqs[0] > 1, seqs  # the newest stayed, the oldest went
    for ex in kept:
        assert ex.store_error is None and sha(b"".join(c.data for c in store.chunks(ex.id))) == sha(sent[ex.seq])
        assert ex.text and ex.text.startswith("word word")  # room was made before it was full: summaries too
    assert rows(db, "pragma page_count")[0][0] * rows(db, "pragma page_size")[0][0] <= limit
    assert [t["name"] for t in store.tapes()] == ["cap"]


async def test_a_batch_the_db_is_too_full_for_prunes_and_is_written_again(tmp_path: Path, monkeypatch):
    """The writer prunes before the DB is full; should that fall short, a batch SQLite finds no room for
    prunes then, and goes in whole."""
    monkeypatch.setattr(writer_module, "NEAR_LIMIT", -1.0)  # never near: only a full DB makes room
    db = tmp_path / "full.db"
    said: list[str] = []
    async with ScriptedUpstream(Script(text="word " * 200)) as upstream:
        options = RecordOptions(upstream=upstream.base_url, db=str(db), tape="f", max_db_bytes=300_000,
                                errors=said.append)
        async with RecordingProxy(options) as proxy:
            for n in range(16):  # about 45 KB each
                await post(proxy.base_url, chat(f"q{n}"))
            await proxy.settle()
            losses = list(proxy.losses)
            backlog = proxy.writer.backlog
        sent = [s.body for s in upstream.sent]
    assert backlog == 0  # a batch written twice counts once: what holds clients back stays true
    assert not losses and said == ["streamreplay: DB at its --max-db-size (300 KB): pruning the oldest complete "
                                   "exchanges"], said
    store = Store(db)
    kept = store.exchanges()
    assert 2 < len(kept) < 16 and kept[-1].seq == 15
    for ex in kept:
        assert sha(b"".join(c.data for c in store.chunks(ex.id))) == sha(sent[ex.seq]) and ex.store_error is None


def test_a_summary_of_an_exchange_pruned_meanwhile_is_skipped(tmp_path: Path):
    db = tmp_path / "gone.db"
    fill(db, "t", [(1, COMPLETE, 2)])
    prune(db, tape="t")
    with contextlib.closing(Store(db).db.conn) as conn:
        summarize(conn, 1)  # the writer's summary, due after its end, for an exchange pruned since
    assert not rows(db, "select * from exchanges")


async def test_max_db_size_still_fails_loud_when_only_cutoffs_are_stored(tmp_path: Path):
    db = tmp_path / "cutoffs.db"
    said: list[str] = []
    async with ScriptedUpstream(Script(text="word " * 200, ending="no_done")) as upstream:
        options = RecordOptions(upstream=upstream.base_url, db=str(db), tape="c", max_db_bytes=200_000,
                                log=said.append, errors=said.append)
        async with RecordingProxy(options) as proxy:
            results = [await post(proxy.base_url, chat(f"q{n}")) for n in range(10)]
            await proxy.settle()
            losses = list(proxy.losses)
    assert all(status == 200 and error is None for status, _, error in results)
    assert losses and any("STORING FAILED (sqlite: database or disk is full)" in line for line in said), said
    assert not any("pruning the oldest" in line for line in said), said
    whole = [ex for ex in Store(db).exchanges() if ex.store_error is None]
    assert len(whole) >= 3 and all(ex.end_cause == "eof_without_done" for ex in whole)
    assert [ex.seq for ex in whole] == list(range(len(whole)))  # the first ones, none pruned
