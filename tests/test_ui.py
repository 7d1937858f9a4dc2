"""The timeline page and the UI server, on exchanges recorded for real through the proxy; and the page as a
person sees it: headless Chromium loads it from the UI server, and its screenshot is looked at."""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import openai
import pytest

from streamreplay.bundled import bundled_tape
from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.replay import ReplayServer
from streamreplay.store import Store
from streamreplay.testing import Script, ScriptedUpstream
from streamreplay.timeline import exchange_page, replay_series, timeline_svg
from streamreplay.ui import UIServer
from tests.helpers import chat, chat_chunk, post, record, until, write_exchange

STORY = "Once upon a time a small robot learned to read streams to the very end."
INJECTION = '<script>alert("x")</script><img src=x onerror=alert(1)> & more'
CHUNK_MARK = re.compile(r'<g class="chunk[ "]')

#: the flags that keep headless Chromium from reaching out (its connections are refused here)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


async def break_after_first_content(base_url: str) -> None:
    """The consumer-break bug: the app stops reading at the first content chunk and closes the stream."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "b"}],
                                                  stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    await stream.close()


async def record_all(db: Path) -> dict[str, int]:
    async with ScriptedUpstream() as upstream:
        upstream.queue(Script(text=STORY, gap=0.01), Script(text=STORY, gap=0.02),
                       Script(text=STORY, gap=0.01, ending="reset"), Script(text=INJECTION, gap=0.005))
        async with RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db), tape="ui")) as proxy:
            await post(proxy.base_url, chat("complete"))
            await break_after_first_content(proxy.base_url)
            await post(proxy.base_url, chat("reset"))
            await post(proxy.base_url, chat("inject"))
            await proxy.settle()
    ids = {ex.end_cause: ex.id for ex in Store(db).exchanges()}
    return {"complete": 1, "client_left": ids["client_left"], "reset": ids["upstream_reset"], "inject": 4}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    db = tmp_path_factory.mktemp("ui") / "ui.db"
    return db, asyncio.run(record_all(db))


def page_of(db: Path, exchange_id: int) -> tuple[str, str]:
    store = Store(db)
    ex, chunks = store.exchange(exchange_id), store.chunks(exchange_id)
    return timeline_svg(ex, chunks), exchange_page(ex, chunks)


def test_one_mark_per_chunk_with_the_landmarks(recorded):
    db, ids = recorded
    store = Store(db)
    for exchange_id in ids.values():
        ex = store.exchange(exchange_id)
        svg, page = page_of(db, exchange_id)
        assert len(CHUNK_MARK.findall(svg)) == ex.chunk_count == len(store.chunks(exchange_id)) > 3
        assert svg in page
    svg, page = page_of(db, ids["complete"])
    assert len(re.findall(r'<g class="chunk[^"]* first[ "]', svg)) == 1
    assert len(re.findall(r'<g class="chunk[^"]* finish[ "]', svg)) == 1
    assert len(re.findall(r'<g class="chunk done[ "]', svg)) == 1
    assert 'class="marker end"' in svg and "upstream end · complete" in svg
    # hovering a mark says what it is: index, offset, gap, bytes and the text it added
    assert re.search(r"<title>chunk 2 · at [\d.]+ ms · gap [\d.]+ ms · \d+ bytes\n&#x27;upon &#x27;</title>", svg)
    assert f"<pre>{STORY}</pre>" in page


def test_the_client_leaving_is_drawn_where_and_when_it_happened(recorded):
    db, ids = recorded
    ex = Store(db).exchange(ids["client_left"])
    assert ex.end_cause == "client_left" and ex.client_left_at_chunk == 2 and ex.upstream_end == "complete"
    svg, page = page_of(db, ex.id)
    at_ms = ex.client_left_ns / 1e6
    assert f'<g class="marker client-left" data-t-ms="{at_ms:.3f}">' in svg
    assert f"client left at {at_ms:.1f} ms · after 2 of {ex.chunk_count} chunks" in svg
    assert len(re.findall(r'<g class="chunk[^"]* unseen"', svg)) == ex.chunk_count - 2  # recorded, never read
    assert 'class="marker end"' in svg  # and the upstream went on to the end
    assert "<h3>what the client read before it left</h3><pre>Once </pre>" in page


def test_an_upstream_reset_is_drawn_as_a_reset(recorded):
    db, ids = recorded
    svg, _ = page_of(db, ids["reset"])
    assert 'class="marker reset"' in svg and "upstream reset (TCP RST)" in svg
    assert "finish_reason" not in svg and 'class="chunk done' not in svg


def test_recorded_text_cannot_inject_html(recorded):
    db, ids = recorded
    svg, page = page_of(db, ids["inject"])
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt; &amp; more" in page
    assert "&lt;script&gt;" in svg  # in the hover text too


async def test_a_replay_under_faults_is_drawn_on_the_same_axis(recorded):
    db, ids = recorded
    store = Store(db)
    ex, chunks = store.exchange(ids["complete"]), store.chunks(ids["complete"])
    async with ReplayServer(db, tape="ui", faults=["stall:chunk=3,seconds=0.3+cut:chunk=6"]) as server:
        await post(server.base_url, chat("complete"))
    (replayed,) = server.requests
    assert replayed.exchange_id == ex.id and replayed.delivered == 6
    svg = timeline_svg(ex, chunks, replayed=replayed)
    lane_b = svg[svg.index('id="lane-b"'):]
    assert len(CHUNK_MARK.findall(lane_b)) == 6
    assert 'class="marker fault"' in lane_b and "fault cut:chunk=6: clean end after 6 chunks" in lane_b
    assert 'class="marker stall"' in lane_b and "fault stall:chunk=3,seconds=0.3: stalled" in lane_b
    page = exchange_page(ex, chunks, compare=replay_series(replayed, chunks))
    assert "A and B part at chunk 3: chunk 3 comes at" in page  # the stall parts them before the cut does


async def _read_until_a_quarter_second_of_silence(server: ReplayServer, body: dict) -> None:
    """A client whose read timeout is 0.25 s reads the replay until a silence that long makes it give up."""
    async with httpx.AsyncClient(timeout=0.25) as client:
        with pytest.raises(httpx.ReadTimeout):
            async with client.stream("POST", f"{server.base_url}/chat/completions", json=body) as r:
                async for _ in r.aiter_raw():
                    pass


async def test_a_client_that_times_out_inside_a_stall_is_drawn_leaving_there(recorded):
    db, ids = recorded
    store = Store(db)
    ex, chunks = store.exchange(ids["complete"]), store.chunks(ids["complete"])
    async with ReplayServer(db, tape="ui", faults=["stall:chunk=3,seconds=2"]) as server:
        await _read_until_a_quarter_second_of_silence(server, chat("complete"))
        await asyncio.sleep(0.05)  # let the server see the client go
    (replayed,) = server.requests
    assert replayed.delivered == 3 and replayed.client_left_at_chunk == 3
    lane_b = timeline_svg(ex, chunks, replayed=replayed).split('id="lane-b"')[1]
    assert f"client left at {replayed.client_left_ns / 1e6:.1f} ms · after 3 of {ex.chunk_count} chunks" in lane_b
    stall = re.search(r'<rect class="marker stall" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"', lane_b)
    left = re.search(r'<g class="marker client-left" data-t-ms="[\d.]+"><title>[^<]*</title><circle cx="([\d.]+)"',
                     lane_b)
    assert stall and left and abs(float(stall[1]) + float(stall[2]) - float(left[1])) < 1  # stalled until it left
    assert 'class="marker end"' not in lane_b and 'class="marker stop"' not in lane_b


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as resp:
        return resp.status, await resp.text()


async def test_the_ui_server_lists_filters_shows_and_compares(recorded):
    db, ids = recorded
    async with UIServer(db, db_label="ui.db") as ui, aiohttp.ClientSession() as session:
        assert ui.host == "127.0.0.1"
        status, index = await get(session, f"{ui.origin}/")
        assert status == 200 and all(f'href="/exchange/{i}"' in index for i in ids.values())
        assert '<a href="/?cause=client_left">' in index
        status, left = await get(session, f"{ui.origin}/?cause=client_left")
        assert status == 200 and f'href="/exchange/{ids["client_left"]}"' in left
        assert f'href="/exchange/{ids["complete"]}"' not in left
        status, page = await get(session, f"{ui.origin}/exchange/{ids['client_left']}")
        assert status == 200 and 'class="marker client-left"' in page
        assert "cause      consumer_stopped_reading" in page  # the diagnosis
        assert "streamreplay play --db ui.db --tape ui" in page  # the command that replays it
        status, page = await get(session, f"{ui.origin}/exchange/{ids['complete']}?fault=cut:chunk=5")
        assert status == 200 and "--fault cut:chunk=5" in page and 'id="lane-b"' in page
        assert "B stops after 5 chunks" in page
        status, page = await get(session, f"{ui.origin}/compare/{ids['complete']}/{ids['reset']}")
        assert status == 200 and 'id="lane-a"' in page and 'id="lane-b"' in page
        assert 'class="marker reset"' in page and "A and B part at chunk" in page
        assert (await get(session, f"{ui.origin}/exchange/999"))[0] == 404
        assert (await get(session, f"{ui.origin}/exchange/1?fault=nonsense"))[0] == 400


async def test_the_ui_reads_a_recording_while_it_runs(tmp_path):
    db = tmp_path / "live.db"
    async with UIServer(db) as ui, aiohttp.ClientSession() as session, ScriptedUpstream() as upstream:
        assert "no recordings yet" in (await get(session, f"{ui.origin}/"))[1]
        upstream.queue(Script(text=STORY, gap=0.06))
        async with RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db), tape="live")) as proxy:
            request = asyncio.create_task(post(proxy.base_url, chat()))
            page = ""
            for _ in range(50):
                await asyncio.sleep(0.05)
                status, page = await get(session, f"{ui.origin}/exchange/1")
                if status == 200 and len(CHUNK_MARK.findall(page)) >= 3:
                    break
            assert not request.done(), "the recording finished before the page was read"
            assert "still recording" in page and '<meta http-equiv="refresh"' in page
            await request
            await proxy.settle()
        status, page = await get(session, f"{ui.origin}/exchange/1")
        assert "upstream end · complete" in page and "refresh" not in page


def png_pixels(data: bytes) -> list[bytes]:
    """RGB(A) pixels of an 8-bit, non-interlaced PNG (what Chromium writes), with zlib and struct only."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, channels = 8, [], 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color_type in (2, 6) and not interlace, (depth, color_type, interlace)
            channels = 3 if color_type == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
    raw, stride, prev, pixels = zlib.decompress(b"".join(idat)), width * channels, bytearray(width * channels), []
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride) if kind else ():
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        pixels += [bytes(line[i:i + 3]) for i in range(0, stride, channels)]
        prev = line
    assert len(pixels) == width * height
    return pixels


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("headless Chromium is needed for this test and is not installed: "
                    "apt-get install -y chromium (Debian), or run scripts/test.sh, which installs it")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=60, check=True)


def test_a_browser_shows_the_marks_and_the_client_leaving(recorded, tmp_path):
    db, ids = recorded
    ex = Store(db).exchange(ids["client_left"])
    with UIServer(db) as ui:
        url = f"{ui.origin}/exchange/{ex.id}"
        dom = chromium("--dump-dom", url).stdout
        shot = tmp_path / "timeline.png"
        chromium("--window-size=1200,800", f"--screenshot={shot}", url)
    lane_a = dom[dom.index('id="lane-a"'):]
    assert len(CHUNK_MARK.findall(lane_a)) == ex.chunk_count
    assert f'<g class="marker client-left" data-t-ms="{ex.client_left_ns / 1e6:.3f}">' in dom
    assert f"client left at {ex.client_left_ns / 1e6:.1f} ms" in dom
    pixels = png_pixels(shot.read_bytes())
    colours = Counter(pixels)
    assert len(pixels) == 1200 * 800
    assert len(colours) > 200, f"a blank-looking screenshot: {len(colours)} colours"
    assert colours.most_common(1)[0][1] < 0.95 * len(pixels)
    # the first content chunk and the client-left marker are painted, in their own colours
    assert colours[bytes.fromhex("8b3fd9")] > 100 and colours[bytes.fromhex("d62828")] > 50


def test_show_html_and_ui_commands(tmp_path: Path):
    import re
    import signal
    import subprocess
    import sys

    import httpx
    from click.testing import CliRunner

    from streamreplay.cassette import import_cassette
    from streamreplay.cli import main

    db = tmp_path / "ui.db"
    import_cassette(bundled_tape("consumer-break"), db)
    page = tmp_path / "page.html"
    out = CliRunner().invoke(main, ["show", "1", "--db", str(db), "--html", str(page)])
    assert out.exit_code == 0 and "client left at" in page.read_text()
    bad = CliRunner().invoke(main, ["show", "1", "--db", str(db), "--html", str(page), "--fault", "nope"])
    assert bad.exit_code == 2 and "unknown fault 'nope'" in bad.output
    proc = subprocess.Popen([sys.executable, "-m", "streamreplay.cli", "ui", "--db", str(db), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        origin = re.search(r"on (http://127\.0\.0\.1:\d+)/", proc.stdout.readline()).group(1)
        listing = httpx.get(f"{origin}/?cause=client_left")
        assert listing.status_code == 200 and "consumer-break" in listing.text
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)


# -- the ui serves only its own host, and a page's size does not grow with the exchange -----------------


async def test_the_ui_answers_only_its_own_host(recorded):
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 sends Host: evil.example."""
    db, ids = recorded
    async with UIServer(db) as ui, httpx.AsyncClient(timeout=10) as client:
        port = ui.port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LocalHost:{port}"):
            resp = await client.get(f"{ui.origin}/exchange/{ids['complete']}", headers={"Host": host})
            assert resp.status_code == 200 and "upstream end · complete" in resp.text, host
        paths = ["/", f"/exchange/{ids['complete']}", f"/exchange/{ids['complete']}/raw",
                 f"/exchange/{ids['complete']}/chunks", "/compare/1/2", "/no/such/page"]
        for host in ("evil.example", f"evil.example:{port}", f"localhost.evil.example:{port}", f"localhost:{port + 1}",
                     "localhost", f"127.0.0.2:{port}"):
            for path in paths:
                resp = await client.get(f"{ui.origin}{path}", headers={"Host": host})
                assert resp.status_code == 403, (host, path, resp.status_code)
                assert resp.headers["content-type"].startswith("application/json")
                error = resp.json()["error"]
                assert error["code"] == "host_not_allowed" and set(error) == {"message", "type", "param", "code"}
                assert STORY not in resp.text and "Once" not in resp.text


BIG_EVENTS = 50_000  # ~1 KiB each, plus one 4 MiB event: ~54 MB of chunks
BIG_EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"lorem ipsum " * 80 + b'"}}]}\n\n'
HUGE_EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"x" * (4 << 20) + b'"}}]}\n\n'


def big_chunks() -> Iterator[tuple[int, int, bytes]]:
    """(index, t_ns, data): a long stream with a 2 s silence in the middle and one 4 MiB chunk near the start."""
    yield 0, 1_000_000, b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    for i in range(1, BIG_EVENTS + 1):
        yield i, 1_000_000 + i * 100_000 + (2_000_000_000 if i > BIG_EVENTS // 2 else 0), \
            HUGE_EVENT if i == 3 else BIG_EVENT
    end = 1_000_000 + (BIG_EVENTS + 1) * 100_000 + 2_000_000_000
    yield BIG_EVENTS + 1, end, b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    yield BIG_EVENTS + 2, end + 100_000, b"data: [DONE]\n\n"


def write_big_exchange(db: Path) -> tuple[int, int, str]:
    """An exchange with ~54 MB of chunks written straight into a Store's DB (recording that much through the
    proxy would take minutes here); returns (id, bytes, sha256 of the body)."""
    import hashlib
    import json

    store = Store(db)
    digest, total, count = hashlib.sha256(), 0, 0
    for _, _, data in big_chunks():
        digest.update(data)
        total, count = total + len(data), count + 1
    eid = write_exchange(
        store, ((t, data) for _, t, data in big_chunks()),
        tape="big", seq=1, started_at="2025-01-01T00:00:00.000+00:00", query="",
        request_body=json.dumps(chat("big")), request_key="big", model="gpt-4o-mini",
        headers_ns=500_000, ttfb_ns=1_000_000, duration_ns=1_000_000 + (BIG_EVENTS + 3) * 100_000 + 2_000_000_000,
        chunk_count=count, byte_count=total, end_cause="complete", done=1, finish_reason="stop",
        text="lorem ipsum " * 90_000,  # ~1 MB, as the summary holds at most
    )
    store.close()
    return eid, total, digest.hexdigest()


@pytest.fixture(scope="module")
def big_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int, str]:
    db = tmp_path_factory.mktemp("big") / "big.db"
    return (db, *write_big_exchange(db))


def test_a_50_mb_exchange_page_stays_small_and_the_rest_is_reachable(big_db):
    import hashlib

    db, eid, total, sha = big_db
    assert total > 50_000_000
    with UIServer(db) as ui, httpx.Client(base_url=ui.origin, timeout=60) as client:
        resp = client.get(f"/exchange/{eid}")
        page = resp.text
        assert resp.status_code == 200 and len(resp.content) < 1_500_000, len(resp.content)
        assert "drawn as an overview" in page and "upstream end · complete" in page
        assert 0 < len(CHUNK_MARK.findall(page)) <= 1000  # bars by time slice, not one per chunk
        assert f"{BIG_EVENTS + 3} chunks" in page and "gap 2.00 s" in page  # the silence still shows
        assert 'id="a-0"' in page and 'id="a-3"' in page and "only its first" in page  # the 4 MiB chunk, cut
        assert f'id="a-{BIG_EVENTS}"' not in page
        # the rest of the table, page by page: each page bounded, each linking to the next
        seen, url = 0, re.search(r'<a class="next" href="([^"]+)"', page)[1]
        for _ in range(3):
            resp = client.get(url)
            assert resp.status_code == 200 and len(resp.content) < 1_000_000
            rows = [int(i) for i in re.findall(r'<tr id="a-(\d+)"', resp.text)]
            assert rows and rows[0] > seen and rows == list(range(rows[0], rows[0] + len(rows)))
            seen, url = rows[-1], re.search(r'<a class="next" href="([^"]+)"', resp.text)[1]
        last = client.get(f"/exchange/{eid}/chunks?from={BIG_EVENTS}")
        assert f'id="a-{BIG_EVENTS + 2}"' in last.text and "[DONE]" in last.text and 'class="next"' not in last.text
        # and every byte, as recorded, streamed from the DB
        digest, size = hashlib.sha256(), 0
        with client.stream("GET", f"/exchange/{eid}/raw") as raw:
            assert raw.status_code == 200 and raw.headers["x-recorded-content-type"] == "text/event-stream"
            for data in raw.iter_bytes():
                digest.update(data)
                size += len(data)
        assert (size, digest.hexdigest()) == (total, sha)
        # a fault or a comparison of it: a short page that says why, not a 50 MB one
        resp = client.get(f"/exchange/{eid}?fault=cut:chunk=5")
        assert resp.status_code == 200 and len(resp.content) < 1_500_000 and "--fault cut:chunk=5" in resp.text


def test_a_50_mb_exchange_page_does_not_grow_the_ui_memory(big_db):
    """The ui in a process of its own: its peak RSS (VmHWM) after drawing and downloading the exchange."""
    import sys

    db, eid, total, _ = big_db
    code = ("import sys, time\nfrom streamreplay.ui import UIServer\nui = UIServer(sys.argv[1])\n"
            "ui.__enter__()\nprint(ui.origin, flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True)

    def peak_kb() -> int:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1])

    try:
        origin = proc.stdout.readline().strip()
        assert httpx.get(f"{origin}/", timeout=60).status_code == 200
        before = peak_kb()
        assert httpx.get(f"{origin}/exchange/{eid}", timeout=120).status_code == 200
        grown_mb = (peak_kb() - before) / 1024
        assert grown_mb < 40, f"the ui's peak memory grew {grown_mb:.0f} MB for a {total / 1e6:.0f} MB exchange page"
        size = 0
        with httpx.stream("GET", f"{origin}/exchange/{eid}/raw", timeout=60) as raw:
            for data in raw.iter_bytes():
                size += len(data)
        assert size == total
        grown_mb = (peak_kb() - before) / 1024
        assert grown_mb < 40, f"the ui's peak memory grew {grown_mb:.0f} MB streaming {total / 1e6:.0f} MB"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_a_replay_whose_client_read_done_then_left_inside_a_stall_is_drawn_as_ended_not_as_left(
        tmp_path: Path) -> None:
    """A recording with a comment after `[DONE]`, replayed with a stall before that comment: the client that read
    `[DONE]` and timed out inside the stall did not leave early, so its lane ends as the replay did."""
    db = tmp_path / "done.db"
    raw = [chat_chunk({"role": "assistant", "content": "Hi"}), chat_chunk({}, "stop"), b"data: [DONE]\n\n",
           b": keep-alive\n\n"]
    await record(db, [Script(raw=raw, gap=0.01)], [chat("hi")], tape="done")
    async with ReplayServer(db, tape="done", faults=["stall:chunk=3,seconds=2"]) as server:
        await _read_until_a_quarter_second_of_silence(server, chat("hi"))
        await until(lambda: server.requests and server.requests[0].client_left_at_chunk is not None)
    (replayed,) = server.requests
    assert (replayed.delivered, replayed.total, replayed.done_delivered) == (3, 4, True)
    lane = replay_series(replayed, Store(db).chunks(1))
    assert lane.note == "3/4 chunks delivered · ended clean"
    assert [m.kind for m in lane.markers] == ["stall", "end"]
