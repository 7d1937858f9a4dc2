"""The ui's bounds at their edges, in-process: when an exchange is drawn as an overview (over 1000 chunks
or 512 KiB), the chunk table's pages (200 rows or 256 KiB), the download's steps, and the Host names the
ui answers. tests/test_ui.py serves a 50 MB exchange and a browser; these pin the limits themselves."""

from __future__ import annotations

import html
import re
from pathlib import Path

import httpx
import pytest

from streamreplay.bundled import bundled_tape
from streamreplay.cassette import import_cassette
from streamreplay.store import Store
from streamreplay.timeline.svg import PAD
from streamreplay.ui import (
    FULL_BYTES,
    FULL_CHUNKS,
    LIST_LIMIT,
    PAGE_BYTES,
    PAGE_ROWS,
    UIServer,
    _raw_batch,
    chunk_window,
    index_html,
    is_big,
    render_chunks,
    render_compare,
    render_exchange,
)
from tests.helpers import chat_chunk, write_exchange


def _exchange(store: Store, sizes: list[int], tape: str = "t") -> int:
    """An exchange whose chunks have these sizes, 1 ms apart, written straight into the DB."""
    return write_exchange(store, [((i + 1) * 1_000_000, bytes([65 + i % 26]) * n) for i, n in enumerate(sizes)],
                          tape=tape, headers_ns=1, ttfb_ns=1_000_000, duration_ns=(len(sizes) + 1) * 1_000_000,
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
    chunks, _, next_start, before = chunk_window(store, eid, 400)
    assert [c.index for c in chunks] == list(range(400, 450)) and next_start is None
    assert before == 400 * 1_000_000
    one_page = _exchange(store, [10] * 3)
    assert chunk_window(store, one_page, 0)[2:] == (None, 0)  # nothing before the first chunk


def test_a_big_exchange_s_table_notes_the_first_content_on_the_first_page_and_on_no_later_one(store: Store):
    body = [chat_chunk({"role": "assistant"}), *[chat_chunk({"content": "w "})] * 1000,
            chat_chunk({}, finish="stop"), b"data: [DONE]\n\n"]
    eid = write_exchange(store, [((i + 1) * 1_000_000, data) for i, data in enumerate(body)], headers_ns=1,
                         ttfb_ns=1_000_000, duration_ns=len(body) * 1_000_000, chunk_count=len(body),
                         byte_count=sum(map(len, body)), end_cause="complete")
    assert is_big(store, eid)

    def noted(start: int) -> list[tuple[str, str]]:
        rows = re.findall(r'<tr id="a-(\d+)"[^>]*>.*?<td class="n">([^<]*)</td></tr>', render_chunks(store, eid, start))
        return [(index, notes) for index, notes in rows if notes]

    assert noted(0) == [("1", "first content")]  # chunk 0 carries only the role
    assert noted(200) == []  # its first row has content, but the first content was on page one
    assert noted(1000) == [("1001", "finish_reason"), ("1002", "[DONE]")]  # the last page notes its own


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
    # one byte of room left: the next row still gets it
    edge = _exchange(store, [PAGE_BYTES - 1, 5, 5])
    chunks, sizes, next_start, _ = chunk_window(store, edge, 0)
    assert [len(c.data) for c in chunks] == [PAGE_BYTES - 1, 1] and sizes == [PAGE_BYTES - 1, 5] and next_start == 2


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


def _pagers(html: str) -> list[str]:
    return re.findall(r'<nav class="pager">.*?</nav>|<p>no chunks here</p>', html)


def test_an_overview_page_says_why_and_tables_its_first_page_with_links_to_the_rest(store: Store):
    eid = _exchange(store, [1] * 1001)
    page = render_exchange(store, eid, "ui.db", links=True)
    assert ('<p class="lead big">1001 chunks, 1001 bytes: drawn as an overview (a bar per time slice), '
            "the chunk table 200 rows or 256 KiB at a time.</p>") in page
    assert _pagers(page) == [
        f'<nav class="pager">chunks 0–199 of 1001 · <a class="next" href="/exchange/{eid}/chunks?from=200">next '
        f'chunks</a> · <a class="raw" href="/exchange/{eid}/raw">all 1001 bytes as recorded (download)</a></nav>']
    assert page.count('<tr id="a-') == 200  # the table's first page only
    # each bar of the overview links to the page of the table its chunk is on
    assert f'href="/exchange/{eid}/chunks?from=0#a-0"' in page
    assert "streamreplay play --db ui.db --tape t" in page
    # without the ui's links (show --html): the table's first page, and where the rest is
    alone = render_exchange(store, eid, "ui.db")
    assert _pagers(alone) == [
        f'<nav class="pager">chunks 0–199 of 1001 · <code>streamreplay show {eid}</code> prints them all</nav>']
    assert "/chunks?from=" not in alone and 'href="#a-0"' in alone


def test_an_overview_under_a_fault_says_to_play_it_instead(store: Store):
    eid = _exchange(store, [1] * 1001)
    page = render_exchange(store, eid, "ui.db", fault="cut:chunk=3")
    assert ('<p class="lead big">1001 chunks, 1001 bytes: drawn as an overview (a bar per time slice), '
            "the chunk table 200 rows or 256 KiB at a time. Replays under a fault are drawn for exchanges up to "
            "1000 chunks and 512 KiB; play it with <code>--fault cut:chunk=3</code> instead.</p>") in page
    assert "streamreplay play --db ui.db --tape t --fault cut:chunk=3<" in page


def test_each_page_of_the_chunk_table_links_the_first_the_previous_and_the_next(store: Store):
    eid = _exchange(store, [1] * 1001)
    middle = render_chunks(store, eid, 600)
    base = f"/exchange/{eid}/chunks?from="
    pager = (f'<nav class="pager">chunks 600–799 of 1001 · <a href="{base}0">first</a> · <a href="{base}400">'
             f'previous</a> · <a class="next" href="{base}800">next chunks</a> · <a class="raw" '
             f'href="/exchange/{eid}/raw">all 1001 bytes as recorded (download)</a></nav>')
    assert _pagers(middle) == [pager, pager]  # above and below the table
    assert f"<title>streamreplay · exchange {eid} · chunks from 600</title>" in middle
    near_start = _pagers(render_chunks(store, eid, 150))[0]
    assert f'<a href="{base}0">first</a> · <a href="{base}0">previous</a>' in near_start
    last = _pagers(render_chunks(store, eid, 1000))[0]
    assert last.startswith('<nav class="pager">chunks 1000–1000 of 1001 · ') and 'class="next"' not in last
    assert _pagers(render_chunks(store, eid, 5000)) == ["<p>no chunks here</p>"] * 2


def test_the_ui_serves_the_table_s_pages_and_the_download_named_after_its_exchange(store: Store, tmp_path: Path):
    eid = _exchange(store, [200 * 1024, 200 * 1024, 5])  # the download takes two steps
    with UIServer(tmp_path / "ui.db") as ui:
        page = httpx.get(f"{ui.origin}/exchange/{eid}/chunks?from=1")
        assert page.status_code == 200 and "chunks 1–2 of 3" in page.text  # 256 KiB a page: 200 KiB and 5 bytes
        assert f'<a href="/exchange/{eid}/chunks?from=0">first</a>' in page.text
        assert "chunks 0–1 of 3" in httpx.get(f"{ui.origin}/exchange/{eid}/chunks?from=x").text  # not a number: 0
        assert "chunks 0–1 of 3" in httpx.get(f"{ui.origin}/exchange/{eid}/chunks").text  # none: 0
        got = httpx.get(f"{ui.origin}/exchange/{eid}/raw")
        assert got.status_code == 200 and len(got.content) == 400 * 1024 + 5
        assert (got.headers["content-type"], got.headers["content-disposition"],
                got.headers["x-recorded-content-type"]) == (
            "application/octet-stream", f'attachment; filename="exchange-{eid}.sse"', "text/event-stream")
        assert httpx.get(f"{ui.origin}/exchange/999/raw").status_code == 404
        untyped = write_exchange(store, [(1, b"x")], response_headers="[]")
        got = httpx.get(f"{ui.origin}/exchange/{untyped}/raw")
        assert (got.content, got.headers["content-disposition"], got.headers["x-recorded-content-type"]) == (
            b"x", f'attachment; filename="exchange-{untyped}.bin"', "application/octet-stream")
    with UIServer(tmp_path / "none.db") as ui:
        assert httpx.get(f"{ui.origin}/exchange/1/raw").status_code == 404
        assert not (tmp_path / "none.db").exists()


def test_the_list_pages_500_newest_first_and_filters_by_end_cause(store: Store):
    assert LIST_LIMIT == 500
    for i in range(501):
        write_exchange(store, end_cause="complete" if i else "client_left", client_left_at_chunk=3,
                       text="word " * 30 if i == 500 else "hi", chunk_count=0)
    first = index_html(store, label="ui.db")
    ids = [int(i) for i in re.findall(r'<tr><td><a href="/exchange/(\d+)">', first)]
    assert ids == list(range(501, 1, -1))
    assert "<nav>exchanges 1-500 of 501 · <a href=\"/?page=1\">older</a></nav>" in first
    assert "<td class=\"d\">" + ("word " * 13) + "word…</td>" in first  # the text cut to 70 characters
    assert 'all (501)' in first and 'refresh' not in first
    assert "</span>@" not in first  # only a client that left has a chunk it left at
    second = index_html(store, page=1)
    assert re.findall(r'<tr><td><a href="/exchange/(\d+)">', second) == ["1"]
    assert '<nav>exchanges 501-501 of 501 · <a href="/">newer</a></nav>' in second
    assert "client_left</span>@3</td>" in second  # where the client left
    left = index_html(store, cause="client_left")
    assert re.findall(r'<tr><td><a href="/exchange/(\d+)">', left) == ["1"]
    assert "<nav>exchanges" not in left  # one page: no paging
    assert index_html(store, tape="other").endswith("<p>no exchanges here yet</p></body></html>")
    assert "<nav>exchanges" not in index_html(store, cause="complete")  # exactly 500: one page
    assert '<nav>exchanges 1001-1000 of 501 · <a href="/?page=1">newer</a></nav>' in index_html(store, page=2)


def test_the_ui_s_pages_answer_with_their_status(store: Store, tmp_path: Path):
    a = _exchange(store, [5, 5])
    b = _exchange(store, [5, 5, 5])
    with UIServer(tmp_path / "ui.db") as ui:
        get = lambda path: httpx.get(f"{ui.origin}{path}")  # noqa: E731
        assert get("/").status_code == 200 and f'<a href="/exchange/{b}">{b}</a>' in get("/").text
        page = get(f"/exchange/{a}?fault=cut:chunk=1")
        assert page.status_code == 200 and "replay · cut:chunk=1" in page.text
        assert f'<a href="/compare/{a}/{b}">#{b}</a>' in page.text  # the next exchange of its tape
        bad = get(f"/exchange/{a}?fault=nonsense")
        assert bad.status_code == 400 and "<h1>bad fault spec</h1>" in bad.text
        missing = get("/exchange/999")
        assert missing.status_code == 404 and "<h1>not found</h1>" in missing.text
        both = get(f"/compare/{a}/{b}")
        assert both.status_code == 200 and f'<a href="/compare/{b}/{a}">swap</a>' in both.text
        form = httpx.get(f"{ui.origin}/compare?a={a}&b= {b} ")
        assert (form.status_code, form.headers["location"]) == (302, f"/compare/{a}/{b}")
        assert get("/compare?a=1&b=x").status_code == 400
        no_ids = get("/compare")
        assert (no_ids.status_code, no_ids.headers["content-type"]) == (400, "text/html; charset=utf-8")
        assert "<p>give two exchange ids</p>" in no_ids.text
        assert (missing.headers["content-type"], "<title>not found</title>" in missing.text) == (
            "text/html; charset=utf-8", True)
        assert "<title>bad fault</title>" in bad.text and "<p>unknown fault &#x27;nonsense&#x27; in " in bad.text
        assert f'<p>no exchange 999 in {tmp_path / "ui.db"}</p>' in missing.text
        assert "<title>compare</title>" in no_ids.text
        assert f"streamreplay play --db {tmp_path / 'ui.db'} --tape t" in page.text  # named by its path
        assert get("/").headers["content-type"] == "text/html; charset=utf-8"
        rebound = httpx.get(f"{ui.origin}/", headers={"Host": "evil.example"})
        assert rebound.status_code == 403  # DNS rebinding: only its own names
        scoped = get("/?tape=t&cause=complete").text
        assert f'<div class="meta">{tmp_path / "ui.db"} · tape t · cause complete · ' in scoped
        assert "no exchanges here yet" in get("/?page=1").text
        assert f'<a href="/exchange/{b}">{b}</a>' in get("/?page=x").text  # not a number: the first page
    (tmp_path / "bad.db").write_bytes(b"not a database, " * 100)
    with UIServer(tmp_path / "bad.db") as ui:
        bad_db = httpx.get(f"{ui.origin}/")
        assert bad_db.status_code == 500 and "<h1>cannot read the DB</h1>" in bad_db.text
        assert "<title>unusable DB</title>" in bad_db.text
        assert f"<p>{tmp_path / 'bad.db'} is not a usable streamreplay database: " in bad_db.text
    with UIServer(tmp_path / "later.db", db_label="later.db") as ui:
        empty = httpx.get(f"{ui.origin}/")
        assert empty.status_code == 200 and "no recordings yet in later.db" in empty.text
        assert "<title>streamreplay</title>" in empty.text and 'refresh" content="2"' in empty.text
    with UIServer(tmp_path / "later.db") as ui:  # named by its path unless told
        assert f"no recordings yet in {tmp_path / 'later.db'}" in httpx.get(f"{ui.origin}/").text
    assert not (tmp_path / "later.db").exists()  # a recording started later creates it
    assert UIServer(tmp_path / "later.db").port == 0  # a free port unless told


def test_the_ui_reads_a_cassette_once_and_serves_it_page_after_page():
    with UIServer(bundled_tape("openai-happy-path")) as ui:
        for _ in range(2):
            listed = httpx.get(f"{ui.origin}/")
            assert listed.status_code == 200 and '<a href="/exchange/1">1</a>' in listed.text


def test_an_exchange_s_page_carries_its_diagnosis_its_replay_under_a_fault_and_the_command_for_it(store: Store):
    eid = _exchange(store, [5, 5, 5])
    page = render_exchange(store, eid, "my db.db", fault="cut:chunk=1")
    assert f'diagnosis">exchange t:0 (id {eid}): the stream completed with [DONE], but no event carried a ' \
           "finish_reason\n" in page
    assert "streamreplay play --db &#x27;my db.db&#x27; --tape t --fault cut:chunk=1<" in page
    assert "replay · cut:chunk=1" in page  # lane B: the replay's plan under the fault
    lane_b = page[page.index('id="lane-b"'):]
    assert len(re.findall(r'<g class="chunk[ "]', lane_b)) == 1  # the fault applied: one chunk, not the three
    assert "A and B part at chunk 1: B stops after 1 chunks; A goes on to 3" in page
    assert 'http-equiv="refresh"' not in page
    plain = render_exchange(store, eid, "ui.db")
    assert "replay · cut:chunk=1" not in plain and "--fault" not in plain
    assert '<tr id="a-2">' in plain and "<nav>" not in plain  # every chunk in the table; no ui links
    # an exchange still being recorded: no diagnosis yet, and the page refreshes itself
    still_open = write_exchange(store, [(1, b"data: x\n\n")])
    live = render_exchange(store, still_open, "ui.db")
    assert f"exchange t:1 (id {still_open}): " not in live and 'refresh" content="2"' in live
    assert "streamreplay play --db ui.db --tape t<" in live


def test_an_exchange_s_page_links_its_neighbours_and_offers_faults_sized_to_it(store: Store):
    # the one just before and just after, not the tape's first or last (two more on each side)
    first, _, before, this, after, _, last = (_exchange(store, [5] * 6) for _ in range(7))
    page = render_exchange(store, this, "ui.db", fault="drop-done", links=True)
    assert (f'<nav><a href="/">all exchanges</a> · <a href="/?tape=t">tape t</a> · compare with '
            f'<a href="/compare/{this}/{before}">#{before}</a> <a href="/compare/{this}/{after}">#{after}</a></nav>'
            f'<nav><form action="/exchange/{this}">see it replayed under a fault: <input name="fault" size="34" '
            f'value="drop-done" placeholder="stall:chunk=3,seconds=1"> <button>draw</button></form> e.g. '
            f'<a href="/exchange/{this}?fault=cut%3Achunk%3D3">cut:chunk=3</a> '
            f'<a href="/exchange/{this}?fault=stall%3Achunk%3D3%2Cseconds%3D1">stall:chunk=3,seconds=1</a> '
            f'<a href="/exchange/{this}?fault=reset%3Achunk%3D3">reset:chunk=3</a> '
            f'<a href="/exchange/{this}?fault=drop-done">drop-done</a></nav>') in page
    assert f"/compare/{this}/{first}" not in page and f"/compare/{this}/{last}" not in page
    alone = _exchange(store, [5], tape="alone")
    nav = render_exchange(store, alone, "ui.db", links=True)
    assert '<a href="/?tape=alone">tape alone</a></nav>' in nav and 'value=""' in nav  # no neighbour, no fault


def test_a_table_page_times_its_first_row_from_the_chunk_before_it(store: Store):
    eid = _exchange(store, [1] * 1001)
    page = render_chunks(store, eid, 600)
    assert '<tr id="a-600"><td>600</td><td>601.0</td><td>1.0</td><td>1</td>' in page
    assert f'<h1>exchange {eid} <span class="badge b-complete">complete</span> · chunks</h1>' in page


def test_names_are_escaped_inside_attributes_too(store: Store):
    _exchange(store, [5], tape='say "hi"')
    assert '>say &quot;hi&quot;</a>' in index_html(store)


def test_compare_draws_two_exchanges_on_one_axis_unless_one_is_too_big(store: Store):
    a = _exchange(store, [5] * 3)
    big = _exchange(store, [1] * 1001)
    both_big = _exchange(store, [256 * 1024, 256 * 1024 + 1])
    assert ('<body><h1>compare 1 with 2</h1><p><a href="/exchange/2">exchange 2</a>: over 1000 chunks or 512 KiB, '
            "too big to draw chunk by chunk on one axis; its own page draws it as an overview.</p></body>") in \
        render_compare(store, a, big, links=True)
    assert (f"<h1>compare {big} with {both_big}</h1><p>exchange {big} and exchange {both_big}: over 1000 chunks "
            "or 512 KiB,") in render_compare(store, big, both_big)
    still_open = write_exchange(store, [(1, b"x")])
    page = render_compare(store, a, still_open, links=True)
    assert (f'<nav><a href="/">all exchanges</a> · A is <a href="/exchange/{a}">exchange {a}</a>, B is '
            f'<a href="/exchange/{still_open}">exchange {still_open}</a> · '
            f'<a href="/compare/{still_open}/{a}">swap</a></nav>') in page
    assert 'refresh" content="2"' in page  # one of them is still being recorded
    done = render_compare(store, a, a)
    assert "<nav>" not in done and "refresh" not in done and "exchange 1" in done
    b = _exchange(store, [7] * 4)
    lanes = render_compare(store, a, b)
    assert "A · recorded · exchange 1 · complete" in lanes and f"B · recorded · exchange {b} · complete" in lanes
    assert sorted(set(re.findall(r'id="([ab]-\d+)"', lanes))) == ["a-0", "a-1", "a-2", "b-0", "b-1", "b-2", "b-3"]
    assert "<title>compare</title>" in render_compare(store, a, big)


def test_an_overview_carries_the_same_diagnosis_as_the_exchange_s_own(store: Store):
    from streamreplay.diagnose import diagnose

    eid = _exchange(store, [1] * 1001)
    found = diagnose(store, eid, "ui.db")
    page = render_exchange(store, eid, "ui.db", links=True)
    assert html.escape("\n".join(found.lines()), quote=True) in page
    assert found.lines()[0].startswith(f"exchange t:0 (id {eid}): ") and len(found.lines()) > 3
    assert '<a href="/?tape=t">tape t</a>' in page and 'http-equiv="refresh"' not in page
    assert "<nav>" not in render_exchange(store, eid, "ui.db")  # without the ui's links: no navigation
    # one still being recorded: no diagnosis yet, the command that replays its tape, and a page that refreshes
    still_open = write_exchange(store, [(i * 1000, b"x") for i in range(1001)], tape="live")
    live = render_exchange(store, still_open, "ui.db")
    assert 'class="diagnosis"' not in live and 'refresh" content="2"' in live
    assert "streamreplay play --db ui.db --tape live<" in live


def test_the_list_shows_a_text_of_70_characters_whole_and_no_text_as_nothing(store: Store):
    write_exchange(store, text="y" * 70)
    write_exchange(store, text=None)
    listed = index_html(store)
    assert f'<td class="d">{"y" * 70}</td></tr>' in listed and '<td class="d"></td></tr>' in listed


def test_the_list_shows_each_tape_and_each_exchange_with_its_columns_and_the_end_cause_filters(store: Store):
    write_exchange(store, [(1, b"x")], model="gpt-4o-mini", ttfb_ns=12_000_000, duration_ns=1_500_000_000,
                   chunk_count=1, end_cause="complete", text="Hello there",
                   started_at="2025-01-01T09:40:53.123+00:00")
    write_exchange(store, [], tape="u")  # still open
    page = index_html(store, label="ui.db")
    tape_row = ('<tr><td class="d"><a href="/?tape={0}">{0}</a></td><td>2025-01-01T00:00:00.000+00:00</td>'
                '<td class="d">test</td><td>1</td></tr>')
    assert re.search(r"<body>.*</body>", page, re.S).group(0) == (
        '<body><h1>streamreplay</h1><div class="meta">ui.db · <a href="/">everything</a></div><h2>tapes</h2>'
        '<table class="tapes"><thead><tr><th>tape</th><th>created</th><th>source</th><th>exchanges</th></tr>'
        f'</thead><tbody>{tape_row.format("t")}{tape_row.format("u")}</tbody></table><h2>exchanges</h2>'
        '<nav class="causes">end cause: <a href="/">all (2)</a> · <a href="/?cause=complete"><span class="badge '
        'b-complete">complete</span> 1</a> · <a href="/?cause=open"><span class="badge b-open">open</span> 1</a>'
        '</nav><nav><form action="/compare">compare exchange <input name="a" size="4"> with <input name="b" '
        'size="4"> <button>on one time axis</button></form></nav><table class="exchanges"><thead><tr><th>id</th>'
        "<th>tape</th><th>#</th><th>started</th><th>request</th><th>model</th><th>chunks</th><th>first byte</th>"
        "<th>took</th><th>end</th><th>text</th></tr></thead><tbody>"
        '<tr><td><a href="/exchange/2">2</a></td><td class="d">u</td><td>0</td><td></td><td class="d">POST '
        '/chat/completions</td><td class="d">-</td><td>0</td><td>-</td><td>-</td><td class="d"><span '
        'class="badge b-open">open</span></td><td class="d"></td></tr>'
        '<tr><td><a href="/exchange/1">1</a></td><td class="d">t</td><td>0</td><td>09:40:53</td><td class="d">'
        'POST /chat/completions</td><td class="d">gpt-4o-mini</td><td>1</td><td>12 ms</td><td>1.50 s</td>'
        '<td class="d"><span class="badge b-complete">complete</span></td><td class="d">Hello there</td></tr>'
        "</tbody></table></body>")
    assert "<title>streamreplay</title>" in page and 'refresh" content="2"' in page  # one is still open
    scoped = index_html(store, tape="u", cause="open", label="ui.db")
    assert '<div class="meta">ui.db · tape u · cause open · <a href="/">everything</a></div>' in scoped
    assert '<a href="/?tape=t">t</a>' in scoped  # a tape's link leaves the cause
    assert '<a href="/?tape=u">all (1)</a>' in scoped and '<a href="/?tape=u&amp;cause=open">' in scoped
    assert 'refresh"' not in index_html(store, tape="t")


def test_an_overview_quotes_the_first_300_bytes_of_an_error_body_read_across_its_chunks(store: Store):
    from streamreplay.diagnose import diagnose

    # a 502's HTML page of over 512 KiB, in three reads: the quote runs across the seams of the first two
    body = b"<html><body><h1>502 Bad Gateway</h1>" + b"<p>the upstream is unavailable</p>" * 20_000
    reads = [body[:40], body[40:100], body[100:]]
    eid = write_exchange(store, [((i + 1) * 1_000_000, data) for i, data in enumerate(reads)], status=502,
                         response_headers='[["Content-Type", "text/html"]]', end_cause="http_error",
                         headers_ns=500_000, duration_ns=4_000_000, chunk_count=3, byte_count=len(body))
    assert is_big(store, eid)
    page = render_exchange(store, eid, "ui.db", links=True)
    assert f"\nevidence   body: {html.escape(body[:300].decode(), quote=True)}\n" in page
    assert html.escape("\n".join(diagnose(store, eid, "ui.db").lines()), quote=True) in page


def test_an_overview_times_a_client_s_leaving_from_its_first_chunks_as_recorded(store: Store):
    from streamreplay.diagnose import diagnose

    # chunk 0 at 10 ms, chunk 1 a second later, then a chunk a millisecond; the client left 0.5 s after chunk 0
    times = [10_000_000, 1_010_000_000] + [1_010_000_000 + i * 1_000_000 for i in range(1, 1000)]
    eid = write_exchange(store, [(t, b"x") for t in times], end_cause="client_left", upstream_end="complete",
                         client_left_at_chunk=1, client_left_ns=510_000_000, headers_ns=1_000_000,
                         duration_ns=2_010_000_000, chunk_count=1001)
    assert is_big(store, eid)
    page = render_exchange(store, eid, "ui.db", links=True)
    assert ("\nended by   the client, at chunk 1 of 1001, 0.510 s, 0.500 s after the chunk before\n"
            "upstream   answer not complete: finish_reason None, no [DONE]\ncause      client_timeout\n") in page
    assert "\nevidence   the next chunk came 1.000 s after chunk 0: longer than the client waited\n" in page
    assert html.escape("\n".join(diagnose(store, eid, "ui.db").lines()), quote=True) in page


def test_a_page_whose_diagnosis_fails_still_shows_and_says_why(store: Store):
    # a row another tool wrote, with text where a time belongs: diagnose raises, the page still draws the rest
    failed = ("diagnose failed (TypeError: unsupported operand type(s) for -: &#x27;int&#x27; and "
              "&#x27;str&#x27;)")
    for sizes in ([5, 5], [1] * 1001):
        eid = write_exchange(store, [((i + 1) * 1_000_000, b"x" * n) for i, n in enumerate(sizes)],
                             headers_ns="soon", end_cause="complete", chunk_count=len(sizes))
        page = render_exchange(store, eid, "ui.db", links=True)
        assert f'<pre class="diagnosis">exchange {eid}: {failed}</pre>' in page
        assert f'<p class="lead">{failed}</p>' in page
        assert f'<tr id="a-{len(sizes) - 1}">' in page or 'class="next"' in page  # and its chunks


def test_an_overview_s_navigation_keeps_the_fault_asked_for(store: Store):
    eid = _exchange(store, [1] * 1001)
    page = render_exchange(store, eid, "ui.db", fault="cut:chunk=3", links=True)
    assert (f'<nav><form action="/exchange/{eid}">see it replayed under a fault: <input name="fault" size="34" '
            'value="cut:chunk=3" placeholder="stall:chunk=500,seconds=1"> <button>draw</button></form> e.g. '
            f'<a href="/exchange/{eid}?fault=cut%3Achunk%3D500">cut:chunk=500</a> ') in page


def test_a_page_without_the_ui_s_links_goes_from_its_header_straight_to_what_follows(store: Store):
    small, big = _exchange(store, [5, 5]), _exchange(store, [1] * 1001)
    meta = "HTTP 200 · stream · client -</div>"
    assert f'{meta}<p class="lead">the stream completed with [DONE]' in render_exchange(store, small, "ui.db")
    assert f'{meta}<p class="lead big">1001 chunks, 1001 bytes: ' in render_exchange(store, big, "ui.db")
    assert f'{meta}<p class="lead part">A and B agree chunk for chunk</p>' in render_compare(store, small, small)


def test_an_exchange_of_0_or_1_chunks_is_offered_faults_at_chunk_0(store: Store):
    for sizes in ([], [5]):
        eid = _exchange(store, sizes, tape=f"n{len(sizes)}")
        page = render_exchange(store, eid, "ui.db", links=True)
        assert (f'value="" placeholder="stall:chunk=0,seconds=1"> <button>draw</button></form> e.g. '
                f'<a href="/exchange/{eid}?fault=cut%3Achunk%3D0">cut:chunk=0</a> '
                f'<a href="/exchange/{eid}?fault=stall%3Achunk%3D0%2Cseconds%3D1">stall:chunk=0,seconds=1</a> '
                f'<a href="/exchange/{eid}?fault=reset%3Achunk%3D0">reset:chunk=0</a> '
                f'<a href="/exchange/{eid}?fault=drop-done">drop-done</a></nav>') in page, sizes


def test_a_middle_page_of_the_list_links_the_newer_and_the_older_apart(store: Store):
    for _ in range(2 * LIST_LIMIT + 1):
        write_exchange(store, end_cause="complete", chunk_count=0)
    assert ('<nav>exchanges 501-1000 of 1001 · <a href="/">newer</a> · <a href="/?page=2">older</a></nav>'
            in index_html(store, page=1))


def test_the_list_shows_a_tape_s_source_of_90_characters_whole_and_cuts_a_longer_one(store: Store):
    with store.db.conn:
        for name, source in (("whole", "s" * 90), ("cut", "s" * 80 + " ab  cd ef" + "tt")):
            store.db["tapes"].insert({"name": name, "created_at": "2025-01-01T00:00:00.000+00:00",
                                      "source": source})
    listed = index_html(store)
    assert f'<td class="d">{"s" * 90}</td><td>0</td></tr>' in listed
    # 91 characters once its run of spaces is folded: cut to 89 and an ellipsis
    assert f'<td class="d">{"s" * 80} ab cd ef…</td><td>0</td></tr>' in listed


def test_a_table_page_past_the_last_chunk_says_there_are_no_chunks_here(store: Store):
    eid = _exchange(store, [1] * 3)
    page = render_chunks(store, eid, 5000)
    assert '<a href="/">all exchanges</a></nav><p>no chunks here</p><table class="chunks">' in page
    assert page.endswith("</tbody></table><p>no chunks here</p></body></html>")


def test_the_compare_form_without_two_ids_says_so_and_nothing_else(tmp_path: Path):
    Store(tmp_path / "ui.db")
    with UIServer(tmp_path / "ui.db") as ui:
        got = httpx.get(f"{ui.origin}/compare?a=1")
    assert got.status_code == 400 and got.text.endswith("<body><p>give two exchange ids</p></body></html>")


def test_an_overview_s_lane_counts_the_bytes_recorded(store: Store):
    eid = _exchange(store, [3] * 1001)
    page = render_exchange(store, eid, "ui.db")
    assert "1001 chunks · 3003 bytes · 1.00 s · 900 bars" in page


def test_compare_puts_both_recordings_on_one_time_axis_that_reaches_the_longer_one_s_end(tmp_path: Path) -> None:
    """`/compare/A/B` of a 0.6 s and a 2.7 s recording, either way round: every bar of both lanes stands at its
    time on one shared scale, and the longer recording's last bar is still on the plot."""
    db = tmp_path / "two.db"
    import_cassette(bundled_tape("openai-happy-path"), db)
    import_cassette(bundled_tape("client-timeout"), db)
    store = Store(db)
    short, long = (ex.id for ex in store.exchanges())
    for a, b in ((short, long), (long, short)):
        page = render_compare(store, a, b)
        assert 'viewBox="0 0 1000 ' in page
        # a chunk's bar: its time, then its 3-pixel rect, which starts 1.5 px left of that time
        bar = r'<g class="chunk[^"]*" data-index="\d+" data-t-ms="([\d.]+)".*?<rect x="([-\d.]+)"'
        bars = [(float(t), float(x) + 1.5) for t, x in re.findall(bar, page, re.S)]
        assert len(bars) == 18 + 203
        last_t, last_x = max(bars)
        assert last_x <= 1000 - PAD
        per_ms = (last_x - PAD) / last_t
        assert all(abs(x - (PAD + t * per_ms)) <= 0.2 for t, x in bars), (a, b)


def test_the_list_reloads_every_2_s_while_one_exchange_in_it_is_open(store: Store) -> None:
    """While a recording runs the list reloads itself, from the first exchange still open on; the list of a tape
    with none open stays as it is."""
    refresh = '<meta http-equiv="refresh" content="2">'
    write_exchange(store, [(1_000_000, b"x")], end_cause="complete")
    assert refresh not in index_html(store)
    write_exchange(store, [(1_000_000, b"x")], tape="live")
    assert [refresh in index_html(store, **scope) for scope in ({}, {"tape": "live"}, {"tape": "t"})] == [
        True, True, False]
    write_exchange(store, [(1_000_000, b"x")], tape="live")
    assert refresh in index_html(store)


def test_an_open_exchange_s_page_reloads_every_2_s_even_when_drawn_as_an_overview(store: Store) -> None:
    """A recording still running has a page that reloads itself every 2 s, drawn whole or, past 1000 chunks, as an
    overview; once it has ended its page stays as it is."""
    refresh = '<meta http-equiv="refresh" content="2">'
    for sizes in ([1] * 3, [1] * 1001):
        ended = _exchange(store, sizes)
        still_open = write_exchange(store, [((i + 1) * 1_000_000, b"x") for i in range(len(sizes))],
                                    chunk_count=len(sizes), headers_ns=1)
        assert is_big(store, still_open) is (len(sizes) > FULL_CHUNKS)
        assert refresh in render_exchange(store, still_open, "ui.db", links=True)
        assert refresh not in render_exchange(store, ended, "ui.db", links=True)


def test_the_list_filtered_by_an_end_cause_still_offers_every_cause_and_marks_only_a_client_that_left_early(
        store: Store) -> None:
    """Filtered by one end cause, the list keeps every cause's filter with its count; its end column marks where
    a client left (`@K`) only when the leaving ended the exchange, not after `[DONE]` (the openai SDK's close)."""
    done_then_closed = write_exchange(store, [(1, b"x")], end_cause="complete", client_left_at_chunk=5,
                                      client_left_ns=9_000_000, chunk_count=5)
    left = write_exchange(store, [(1, b"x")], end_cause="client_left", upstream_end="complete",
                          client_left_at_chunk=2, client_left_ns=3_000_000, chunk_count=4)
    write_exchange(store, [(1, b"x")], end_cause="upstream_reset", chunk_count=1)
    page = index_html(store)
    end = '</td><td class="d">{}</td>'
    assert (f'<a href="/exchange/{done_then_closed}">' in page
            and end.format('<span class="badge b-complete">complete</span>') in page and "@5" not in page)
    assert end.format('<span class="badge b-client_left">client_left</span>@2') in page
    scoped = index_html(store, cause="client_left")
    assert ('<nav class="causes">end cause: <a href="/">all (3)</a> · <a href="/?cause=client_left"><span class="badge '
            'b-client_left">client_left</span> 1</a> · <a href="/?cause=complete"><span class="badge '
            'b-complete">complete</span> 1</a> · <a href="/?cause=upstream_reset"><span class="badge '
            'b-upstream_reset">upstream_reset</span> 1</a></nav>') in scoped
    assert f'<a href="/exchange/{left}">' in scoped and f'<a href="/exchange/{done_then_closed}">' not in scoped
