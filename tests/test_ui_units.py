"""The ui's bounds at their edges, in-process: when an exchange is drawn as an overview (over 1000 chunks
or 512 KiB), the chunk table's pages (200 rows or 256 KiB), the download's steps, and the Host names the
ui answers. tests/test_ui.py serves a 50 MB exchange and a browser; these pin the limits themselves."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from streamreplay.store import Store
from streamreplay.ui import (
    FULL_BYTES,
    FULL_CHUNKS,
    PAGE_BYTES,
    PAGE_ROWS,
    UIServer,
    _raw_batch,
    chunk_window,
    is_big,
    render_exchange,
)
from tests.helpers import write_exchange


def _exchange(store: Store, sizes: list[int]) -> int:
    """An exchange whose chunks have these sizes, 1 ms apart, written straight into the DB."""
    return write_exchange(store, [((i + 1) * 1_000_000, bytes([65 + i % 26]) * n) for i, n in enumerate(sizes)],
                          headers_ns=1, ttfb_ns=1_000_000, duration_ns=(len(sizes) + 1) * 1_000_000,
                          chunk_count=len(sizes), byte_count=sum(sizes), end_cause="complete")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "ui.db")


def test_an_exchange_over_1000_chunks_or_512_kib_is_drawn_as_an_overview(store: Store):
    assert (FULL_CHUNKS, FULL_BYTES) == (1000, 512 * 1024)
    at_chunks = _exchange(store, [1] * 1000)
    over_chunks = _exchange(store, [1] * 1001)
    at_bytes = _exchange(store, [256 * 1024, 256 * 1024])
    over_bytes = _exchange(store, [256 * 1024, 256 * 1024 + 1])
    assert [is_big(store, e) for e in (at_chunks, over_chunks, at_bytes, over_bytes)] == [False, True, False, True]
    assert "drawn as an overview" not in render_exchange(store, at_chunks, "ui.db")
    assert "drawn as an overview" in render_exchange(store, over_chunks, "ui.db")


def test_the_chunk_table_goes_200_rows_at_a_time_each_page_naming_the_next(store: Store):
    assert PAGE_ROWS == 200
    eid = _exchange(store, [10] * 450)
    chunks, sizes, next_start, before = chunk_window(store, eid, 0)
    assert [c.index for c in chunks] == list(range(200)) and sizes == [10] * 200
    assert (next_start, before) == (200, 0)
    chunks, _, next_start, before = chunk_window(store, eid, 200)
    assert [c.index for c in chunks] == list(range(200, 400))
    assert (next_start, before) == (400, 200 * 1_000_000)  # the gap of its first row is from the chunk before
    chunks, _, next_start, _ = chunk_window(store, eid, 400)
    assert [c.index for c in chunks] == list(range(400, 450)) and next_start is None


def test_a_table_page_holds_at_most_256_kib_of_data_and_one_row_at_least(store: Store):
    assert PAGE_BYTES == 256 * 1024
    eid = _exchange(store, [100 * 1024, 100 * 1024, 100 * 1024, 10, 600 * 1024])
    chunks, sizes, next_start, _ = chunk_window(store, eid, 0)
    # 100 + 100 KiB, then the third row gets the 56 KiB left, and the page ends there
    assert [len(c.data) for c in chunks] == [100 * 1024, 100 * 1024, 56 * 1024]
    assert sizes == [100 * 1024] * 3 and next_start == 3
    # a chunk bigger than a page is its own page, cut to the page's bytes; its recorded size is kept
    chunks, sizes, next_start, _ = chunk_window(store, eid, 4)
    assert [len(c.data) for c in chunks] == [PAGE_BYTES] and sizes == [600 * 1024] and next_start is None


def test_the_download_goes_in_steps_of_at_least_one_chunk_and_gives_the_recorded_bytes(store: Store,
                                                                                         tmp_path: Path):
    eid = _exchange(store, [100, 200, 300, 50])
    assert [i for i, _ in _raw_batch(store, eid, -1, budget=300)] == [0, 1]  # stops once the budget is met
    assert [i for i, _ in _raw_batch(store, eid, 1, budget=1)] == [2]  # one at least
    assert [i for i, _ in _raw_batch(store, eid, 3)] == []
    whole = b"".join(data for _, data in store.db.conn.execute(
        "select idx, data from chunks where exchange_id = ? order by idx", [eid]))
    with UIServer(tmp_path / "ui.db") as ui:
        got = httpx.get(f"{ui.origin}/exchange/{eid}/raw")
    assert got.status_code == 200 and got.content == whole


def test_the_ui_answers_its_own_names_with_its_port_only():
    ui = UIServer(":memory:", host="127.0.0.1", port=8901)
    assert ui.allowed_hosts() == {"127.0.0.1:8901", "localhost:8901", "[::1]:8901"}
    on_80 = UIServer(":memory:", host="0.0.0.0", port=80)
    assert on_80.allowed_hosts() == {"0.0.0.0:80", "127.0.0.1:80", "localhost:80", "[::1]:80",
                                     "0.0.0.0", "127.0.0.1", "localhost", "[::1]"}
