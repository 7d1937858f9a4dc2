"""What a dead recorder leaves open becomes `interrupted`, with what it had received counted and summed up;
what a live one is still recording is left alone (streamreplay.store.maintenance)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamreplay.store import Store
from streamreplay.store.maintenance import mark_interrupted, recording_elsewhere, summarize
from tests.helpers import write_exchange

EVENTS = [b'data: {"choices": [{"index": 0, "delta": {"content": "Half "}, "finish_reason": null}]}\n\n',
          b'data: {"choices": [{"index": 0, "delta": {"content": "an answer"}, "finish_reason": null}]}\n\n']


def _open_exchange(store: Store, pid: int | None, chunks: list[bytes], headers: list[list[str]] | None = None,
                   path: str = "/chat/completions") -> int:
    return write_exchange(store, [((i + 1) * 7_000_000, data) for i, data in enumerate(chunks)], path=path,
                          recorder_pid=pid,
                          response_headers=json.dumps(headers or [["Content-Type", "text/event-stream"]]))


@pytest.fixture
def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_an_exchange_a_dead_recorder_left_open_is_interrupted_counted_and_summed_up(tmp_path: Path, dead_pid: int):
    store = Store(tmp_path / "r.db")
    eid = _open_exchange(store, dead_pid, EVENTS)
    assert store.mark_interrupted() == [eid]
    ex = store.exchange(eid)
    assert (ex.end_cause, ex.end_detail) == ("interrupted", "the recording daemon stopped mid-exchange")
    assert (ex.chunk_count, ex.byte_count, ex.duration_ns) == (2, sum(map(len, EVENTS)), 14_000_000)
    assert ex.text == "Half an answer"
    assert store.mark_interrupted() == []  # once


def test_what_a_live_recorder_is_recording_is_left_open(tmp_path: Path):
    store = Store(tmp_path / "r.db")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as live:
        try:
            eid = _open_exchange(store, live.pid, EVENTS)
            assert recording_elsewhere(live.pid)
            assert mark_interrupted(store.db.conn) == []
            assert store.exchange(eid).end_cause is None
        finally:
            live.kill()
    live.wait()
    assert mark_interrupted(store.db.conn) == [eid]


def test_this_process_s_own_open_rows_and_rows_without_a_pid_are_not_in_flight(tmp_path: Path):
    store = Store(tmp_path / "r.db")
    own = _open_exchange(store, os.getpid(), EVENTS)
    unknown = _open_exchange(store, None, [])
    assert not recording_elsewhere(os.getpid()) and not recording_elsewhere(None) and not recording_elsewhere(0)
    assert sorted(mark_interrupted(store.db.conn)) == [own, unknown]
    nothing = store.exchange(unknown)
    assert (nothing.chunk_count, nothing.byte_count, nothing.duration_ns) == (0, 0, None)


def test_a_summary_reads_the_body_decoded_in_the_dialect_of_its_path(tmp_path: Path, dead_pid: int):
    store = Store(tmp_path / "r.db")
    packed = gzip.compress(b"".join(EVENTS))
    eid = _open_exchange(store, dead_pid, [packed[:9], packed[9:]],
                         headers=[["content-type", "text/event-stream"], ["Content-Encoding", "GZIP"]])
    ollama = _open_exchange(store, dead_pid, [b'{"message": {"content": "Hi"}, "done": false}\n'],
                            headers=[["Content-Type", "application/x-ndjson"]], path="/api/chat")
    mark_interrupted(store.db.conn)
    assert store.exchange(eid).text == "Half an answer"
    assert store.exchange(ollama).text == "Hi"
    summarize(store.db.conn, 12345)  # an exchange pruned before its summary: nothing to do, no error


def test_a_stream_is_read_as_one_by_its_content_type_though_its_first_read_is_too_short_to_tell(
        tmp_path: Path, dead_pid: int):
    store = Store(tmp_path / "r.db")
    body = b"".join(EVENTS)
    split = _open_exchange(store, dead_pid, [body[:2], body[2:]])
    mark_interrupted(store.db.conn)
    assert store.exchange(split).text == "Half an answer"


def test_an_exchange_over_the_summary_limit_is_summed_up_from_its_first_mib(tmp_path: Path, dead_pid: int):
    store = Store(tmp_path / "r.db")
    padding = b": " + b"x" * 700_000 + b"\n\n"  # an SSE comment: no text of its own
    big = _open_exchange(store, dead_pid, [EVENTS[0] + padding, EVENTS[1] + padding,
                                           b'data: {"choices": [{"index": 0, "delta": {"content": "!"}}]}\n\n'])
    assert mark_interrupted(store.db.conn) == [big]
    ex = store.exchange(big)
    assert ex.text == "Half an answer"
    assert ex.problems == [f"trailing unterminated line at end of stream (byte {1024 * 1024})",
                           f"summary built from the first {1024 * 1024} bytes only"]


def test_asking_whether_a_recorder_is_alive_leaves_it_running(tmp_path: Path):
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as live:
        try:
            assert recording_elsewhere(live.pid)
            with pytest.raises(subprocess.TimeoutExpired):
                live.wait(timeout=0.2)  # no signal reached it
        finally:
            live.kill()


def test_a_recorder_this_user_may_not_signal_is_taken_as_running():
    # pid 1 belongs to root: as any other user, asking about it is refused (EPERM), and it is alive.
    # Asked from a forked child that gives up root first, when the tests run as root.
    assert recording_elsewhere(1)  # whoever asks here
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        try:
            if os.getuid() == 0:
                os.setuid(65534)  # nobody
            os.write(write, b"1" if recording_elsewhere(1) else b"0")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(child, 0)
    assert answer == b"1"


def test_every_exchange_a_dead_recorder_left_open_is_counted_and_summed_up_on_its_own(tmp_path: Path, dead_pid: int):
    """Of several exchanges a dead recorder left open, each becomes `interrupted` with its own chunks counted
    and its own text summed up, not only the first."""
    store = Store(tmp_path / "r.db")
    first = _open_exchange(store, dead_pid, EVENTS)
    second = _open_exchange(store, dead_pid, EVENTS[1:])
    assert store.mark_interrupted() == [first, second]
    got = [(ex.end_cause, ex.chunk_count, ex.byte_count, ex.text) for ex in map(store.exchange, (first, second))]
    assert got == [("interrupted", 2, sum(map(len, EVENTS)), "Half an answer"),
                   ("interrupted", 1, len(EVENTS[1]), "an answer")]
