"""Record on miss (`play --upstream`, `ReplayServer(upstream=...)`, the plugin's `new` mode): a miss is
forwarded once, recorded, and from the next request on served from that recording, with one log line
per request."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import httpx
import pytest

from streamreplay.bundled import bundled_tape
from streamreplay.replay import ReplayServer
from streamreplay.store import Store
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import chat, record, recorded_body, sha
from tests.test_daemon import start_daemon

NEW = chat("Say something new")


def post_once(base_url: str) -> tuple[int, bytes]:
    """A client that opens a connection for one request and closes it as soon as it has the answer."""
    resp = httpx.post(f"{base_url}/chat/completions", json=NEW, timeout=10)
    return resp.status_code, resp.content


@pytest.fixture
async def tape(db_path: Path) -> Path:
    await record(db_path, [Script(text="old")], [chat("old")])
    return db_path


async def test_a_recorded_miss_is_served_from_its_recording_from_the_next_request_on(tape: Path):
    lines: list[str] = []
    async with ScriptedUpstream(Script(gap=0.01)) as upstream:
        async with ReplayServer(tape, tape="t", speed=0, upstream=upstream.base_url, log=lines.append) as srv:
            answers = [await asyncio.to_thread(post_once, srv.base_url) for _ in range(3)]
        assert len(upstream.sent) == 1
        sent = upstream.sent[0].body
    old, new = Store(tape).exchanges(tape="t")
    assert new.text == "Hello! How can I help you today?" and new.chunk_count > 5
    assert sha(recorded_body(tape, new.id)) == sha(sent)
    assert [(status, sha(body)) for status, body in answers] == [(200, sha(sent))] * 3
    assert [(r.status, r.exchange_id) for r in srv.requests] == [(200, new.id)] * 3
    n = new.chunk_count
    assert lines == [
        f"#1 POST /chat/completions -> upstream, recorded as exchange {new.id} 200: {n}/{n} chunks, ended complete",
        f"#2 POST /chat/completions -> exchange {new.id} 200: {n}/{n} chunks, ended clean",
        f"#3 POST /chat/completions -> exchange {new.id} 200: {n}/{n} chunks, ended clean",
    ]
    assert srv.counts.endings == {"recorded": 1, "clean": 2} and srv.unused() == [old]


async def test_a_forwarded_miss_the_client_left_is_logged_with_the_chunk_and_moment_it_left(tape: Path):
    lines: list[str] = []
    async with ScriptedUpstream(Script(gap=0.05)) as upstream, \
            ReplayServer(tape, tape="t", speed=0, upstream=upstream.base_url, log=lines.append) as srv:
        async with httpx.AsyncClient(timeout=10) as client, \
                client.stream("POST", f"{srv.base_url}/chat/completions", json=NEW) as resp:
            async for _ in resp.aiter_raw():
                break
        await srv.settle()
    new = Store(tape).exchanges(tape="t")[-1]
    assert new.end_cause == "client_left" and new.client_left_at_chunk is not None
    k = new.client_left_at_chunk
    assert 1 <= k < new.chunk_count
    assert lines == [f"#1 POST /chat/completions -> upstream, recorded as exchange {new.id} 200: {k}/{new.chunk_count} "
                     f"chunks, the client left at chunk {k} ({new.client_left_ns / 1e9:.3f}s), ended client_left"]


async def test_identical_misses_at_once_go_upstream_once(tape: Path):
    lines: list[str] = []
    async with ScriptedUpstream(Script(gap=0.01)) as upstream:
        async with ReplayServer(tape, tape="t", speed=0, upstream=upstream.base_url, log=lines.append) as srv:
            answers = await asyncio.gather(*[asyncio.to_thread(post_once, srv.base_url) for _ in range(3)])
        assert len(upstream.sent) == 1
        sent = upstream.sent[0].body
    assert [(status, sha(body)) for status, body in answers] == [(200, sha(sent))] * 3
    assert len(Store(tape).exchanges()) == 2
    # whichever of the three reaches the miss first goes upstream (threads race to the server); the other
    # two wait for its recording and get it
    assert len(lines) == 3 and re.fullmatch(r"#[123] POST /chat/completions -> upstream, recorded as exchange 2 200: "
                                            r".*ended complete", lines[0]), lines
    assert all(re.fullmatch(r"#[123] POST /chat/completions -> exchange 2 200: .*ended clean", line)
               for line in lines[1:]), lines
    assert sorted(line[1] for line in lines) == ["1", "2", "3"], lines


async def test_without_repeat_each_identical_miss_is_recorded(tape: Path):
    lines: list[str] = []
    async with ScriptedUpstream(Script(gap=0.002)) as upstream:
        async with ReplayServer(tape, tape="t", speed=0, upstream=upstream.base_url, repeat=False,
                                log=lines.append) as srv:
            for _ in range(3):
                assert (await asyncio.to_thread(post_once, srv.base_url))[0] == 200
        assert len(upstream.sent) == 3
    assert [ex.id for ex in Store(tape).exchanges()] == [1, 2, 3, 4]
    assert [line.split(" 200:")[0] for line in lines] == [
        f"#{n} POST /chat/completions -> upstream, recorded as exchange {n + 1}" for n in (1, 2, 3)]
    assert srv.unused() == [srv.index.exchanges[0]]


def test_record_on_miss_needs_an_upstream_and_a_db(tape: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="needs an upstream"):
        ReplayServer(tape, on_miss="record")
    with pytest.raises(ValueError, match="only used to record misses"):
        ReplayServer(tape, on_miss="404", upstream="http://127.0.0.1:9/v1")
    cassette = bundled_tape("openai-happy-path")
    with pytest.raises(ValueError, match="needs a DB"):
        ReplayServer(cassette, upstream="http://127.0.0.1:9/v1")


def test_play_upstream_records_a_miss_once_and_logs_each_request_once(tmp_path: Path):
    db = tmp_path / "p.db"
    asyncio.run(record(db, [Script(text="old")], [chat("old")]))
    with ScriptedUpstream(Script(gap=0.01)) as upstream:
        proc, base_url = start_daemon("play", "--db", str(db), "--tape", "t", "--upstream", upstream.base_url,
                                      "--speed", "0")
        try:
            answers = [post_once(base_url) for _ in range(3)]
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=10)
        assert len(upstream.sent) == 1
        sent = upstream.sent[0].body
    assert proc.returncode == 0, err
    assert [(status, sha(body)) for status, body in answers] == [(200, sha(sent))] * 3
    old, new = Store(db).exchanges()
    assert (new.tape, sha(recorded_body(db, new.id))) == ("t", sha(sent))
    n = new.chunk_count
    assert out.splitlines() == [  # the banner was read by start_daemon
        f"#1 POST /chat/completions -> upstream, recorded as exchange {new.id} 200: {n}/{n} chunks, ended complete",
        f"#2 POST /chat/completions -> exchange {new.id} 200: {n}/{n} chunks, ended clean",
        f"#3 POST /chat/completions -> exchange {new.id} 200: {n}/{n} chunks, ended clean",
    ]
