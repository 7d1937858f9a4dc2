"""Reliability: concurrency, malformed upstream output, bad client input, the store under stress.

Loopback only; every load is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from streamreplay.cli import main
from streamreplay.endcause import Ending
from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.replay import FaultSpecError, ReplayServer, parse_faults
from streamreplay.replay.faults import DropDone, DropFinish
from streamreplay.replay.schedule import Piece, Schedule
from streamreplay.store import Store
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import ABSOLUTE_URI_REQUEST, chat, post, raw_answer, recorded_body, sha

STREAMS = 200


def random_script(payload: dict) -> Script:
    n = int(payload["messages"][0]["content"])
    rnd = random.Random(n)
    pieces = [f"s{n}w{i}" + " " * rnd.randint(0, 3) for i in range(rnd.randint(3, 25))]
    return Script(
        pieces=pieces, gap=rnd.uniform(0, 0.01), events_per_write=rnd.randint(1, 3), split_events=rnd.random() < 0.3
    )


async def test_200_concurrent_streams_recorded_and_replayed_byte_exact(db_path: Path):
    limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=STREAMS + 10)
    async with ScriptedUpstream(script_for=random_script) as upstream:
        async with RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db_path), tape="load")) as proxy:
            async with httpx.AsyncClient(limits=limits, timeout=30) as client:
                received = await asyncio.wait_for(
                    asyncio.gather(*(_read(client, proxy.base_url, n) for n in range(STREAMS))), 60
                )
            await proxy.settle()
        sent = {s.request["messages"][0]["content"]: s.body for s in upstream.sent}
    store = Store(db_path)
    exchanges = store.exchanges()
    assert len(exchanges) == len(sent) == STREAMS
    for ex in exchanges:
        n = json.loads(ex.request_body)["messages"][0]["content"]
        assert ex.end_cause == "complete"
        assert sha(recorded_body(db_path, ex.id)) == sha(sent[n]) == sha(received[int(n)]), n

    async with ReplayServer(db_path, speed=1) as srv, httpx.AsyncClient(limits=limits, timeout=30) as client:
        replayed = await asyncio.wait_for(asyncio.gather(*(_read(client, srv.base_url, n) for n in range(STREAMS))), 60)
    assert all(sha(replayed[n]) == sha(sent[str(n)]) for n in range(STREAMS))
    assert len({r.exchange_id for r in srv.requests}) == STREAMS


async def _read(client: httpx.AsyncClient, base_url: str, n: int) -> bytes:
    async with client.stream("POST", f"{base_url}/chat/completions", json=chat(str(n))) as resp:
        return b"".join([data async for data in resp.aiter_raw()])


BAD_OUTPUTS = {
    "invalid JSON": Script(raw=[b'data: {"id": "x", broken\n\n', b"data: [DONE]\n\n"]),
    "10 MB line": Script(raw=[b"data: " + b"x" * 10_000_000 + b"\n\n"]),
    "not UTF-8": Script(raw=[b'data: {"text": "\xff\xfe\xfd"}\n\n', b"data: [DONE]\n\n"]),
    "no SSE framing": Script(raw=[b"just some text, no data: lines\n", b"more text"]),
    "HTML with 200": Script(raw=[b"<html><body><h1>502 Bad Gateway</h1></body></html>"], content_type="text/html"),
}


@pytest.mark.parametrize("name", BAD_OUTPUTS)
async def test_bad_upstream_output_is_forwarded_stored_and_reported(db_path: Path, name: str):
    async with ScriptedUpstream() as upstream:
        upstream.queue(BAD_OUTPUTS[name], Script())
        async with RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db_path), tape="bad")) as proxy:
            status, body, error = await post(proxy.base_url, chat())
            after = await post(proxy.base_url, chat())  # the daemon is still serving
            await proxy.settle()
        sent = upstream.sent[0].body
    assert (status, error) == (200, None) and sha(body) == sha(sent) == sha(recorded_body(db_path, 1))
    assert after[0] == 200 and b"[DONE]" in after[1]
    runner = CliRunner()
    shown = runner.invoke(main, ["show", "1", "--db", str(db_path)])
    diagnosed = runner.invoke(main, ["diagnose", "1", "--db", str(db_path)])
    assert shown.exit_code == 0 and diagnosed.exit_code == 0, shown.output + diagnosed.output
    if name == "invalid JSON":
        assert "problem   event 0: invalid JSON" in shown.output
        assert "malformed upstream output: event 0: invalid JSON" in diagnosed.output
    if name == "HTML with 200":
        assert "the request asked for a stream; the answer is text/html" in diagnosed.output
    if name == "not UTF-8":
        assert "malformed upstream output" in diagnosed.output and "UTF-8" in diagnosed.output


async def test_a_content_length_that_lies(db_path: Path):
    """An upstream that promises 100 bytes and sends 20: the client sees the same unfinished body."""

    async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"id": "short body"'
        )
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()

    server = await asyncio.start_server(liar, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with (
        server,
        RecordingProxy(RecordOptions(upstream=f"http://127.0.0.1:{port}/v1", db=str(db_path), tape="liar")) as proxy,
    ):
        status, body, error = await post(proxy.base_url, chat(stream=False))
        await proxy.settle()
    assert error == "RemoteProtocolError" and body == b'{"id": "short body"'
    (ex,) = Store(db_path).exchanges()
    assert ex.end_cause == "upstream_closed" and recorded_body(db_path, ex.id) == body


@pytest.mark.parametrize("mode", ["record", "play"])
async def test_bad_client_input_gets_openai_errors(db_path: Path, mode: str):
    async with (
        ScriptedUpstream() as upstream,
        RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db_path), tape="t", max_body=1000)) as proxy,
    ):
        await post(proxy.base_url, chat())
        await proxy.settle()
        server = proxy if mode == "record" else ReplayServer(db_path, max_body=1000)
        async with server if mode == "play" else contextlib.nullcontext():
            async with httpx.AsyncClient() as client:
                big = await client.post(f"{server.base_url}/chat/completions", content=b"x" * 5000)
                escape = await client.get(f"{server.origin}/v1/..%2f..%2fetc/passwd")
            connect = await raw_answer(server.port, b"CONNECT example.com:443 HTTP/1.1\r\n"
                                                    b"Host: example.com:443\r\n\r\n", 4096)
            absolute = await raw_answer(server.port, ABSOLUTE_URI_REQUEST)
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    assert escape.status_code == 400 and escape.json()["error"]["code"] == "bad_path"
    assert connect.startswith(b"HTTP/1.1 400") and b"not an open proxy" in connect
    assert absolute.startswith(b"HTTP/1.1 400") and b'"code": "not_a_proxy"' in absolute


async def test_secrets_are_absent_from_exports_too(db_path: Path, tmp_path: Path):
    secret = "sk-export-SECRET-42"
    async with ScriptedUpstream() as upstream:
        options = RecordOptions(upstream=upstream.base_url, db=str(db_path), tape="s")
        async with RecordingProxy(options) as proxy, httpx.AsyncClient() as client:
            await client.post(
                f"{proxy.base_url}/chat/completions?api-key={secret}",
                json=chat(stream=False),
                headers={"Authorization": f"Bearer {secret}", "x-api-key": secret},
            )
            await proxy.settle()
    out = CliRunner().invoke(main, ["export", "s", "--db", str(db_path), "-o", str(tmp_path / "s.jsonl")])
    assert out.exit_code == 0
    assert secret not in (tmp_path / "s.jsonl").read_text()
    assert "api-key=%5Bredacted%5D" in (tmp_path / "s.jsonl").read_text()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_the_fault_spec_parser_only_ever_says_what_is_wrong(spec: str):
    try:
        faults = parse_faults(spec)
    except FaultSpecError as exc:
        assert str(exc)
    else:
        assert parse_faults("+".join(f.spec() for f in faults)) == faults


# The random prefix must not hold the markers itself: the faults edit only whole SSE lines (a
# "data: [DONE]" after a NUL byte is not an event), and the expected body below is a plain replace.
_NO_MARKERS = st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=8).filter(
    lambda pieces: b"[DONE]" not in b"".join(pieces) and b"finish_reason" not in b"".join(pieces)
)


@settings(max_examples=200, deadline=None)
@given(_NO_MARKERS, st.sampled_from([DropDone(), DropFinish()]))
def test_byte_edits_keep_every_boundary_they_do_not_touch(pieces: list[bytes], fault):
    body_events = b"".join(pieces) + b'data: {"finish_reason":"stop"}\n\ndata: [DONE]\n\n'
    cut = sorted({len(body_events) * i // 5 for i in range(1, 5)})
    split = [body_events[a:b] for a, b in zip([0, *cut], [*cut, len(body_events)], strict=True) if body_events[a:b]]
    schedule = Schedule(200, [], [Piece(i, data) for i, data in enumerate(split)], Ending.CLEAN)
    edited = fault.apply(schedule)
    expected = (
        body_events.replace(b"data: [DONE]\n\n", b"")
        if isinstance(fault, DropDone)
        else body_events.replace(b'"finish_reason":"stop"', b'"finish_reason":null')
    )
    assert edited.body == expected
    assert all(p.data for p in edited.pieces)


async def test_ls_and_show_while_a_recording_runs(db_path: Path):
    upstream = ScriptedUpstream(Script(text="tick " * 30, gap=0.03))
    async with (
        upstream,
        RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db_path), tape="live")) as proxy,
    ):
        task = asyncio.create_task(post(proxy.base_url, chat()))
        await asyncio.sleep(0.4)
        listing = await asyncio.to_thread(CliRunner().invoke, main, ["ls", "--db", str(db_path)])
        shown = await asyncio.to_thread(CliRunner().invoke, main, ["show", "1", "--db", str(db_path)])
        await task
        await proxy.settle()
    assert "open" in listing.output and listing.exit_code == 0
    assert shown.exit_code == 0 and "end       open" in shown.output and "tick" in shown.output


def test_an_older_schema_is_migrated_on_open(tmp_path: Path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("create table tapes (name text primary key, created_at text, source text)")
    conn.execute(
        "create table exchanges (id integer primary key, tape text not null, seq integer, method text not null,"
        " path text not null, end_cause text)"
    )
    conn.execute(
        "create table chunks (exchange_id integer, idx integer, t_ns integer, data blob,"
        " primary key (exchange_id, idx))"
    )
    conn.execute(
        "insert into exchanges (tape, seq, method, path, end_cause) values ('old', 0, 'POST', '/x', 'complete')"
    )
    conn.commit()
    conn.close()
    store = Store(path)
    assert "upstream_end" in store.db["exchanges"].columns_dict
    assert store.exchange(1).end_cause == "complete"
    assert store.db.execute("pragma user_version").fetchone()[0] >= 1


def test_a_corrupt_or_locked_db_gets_a_clear_message(tmp_path: Path):
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not sqlite" * 100)
    out = CliRunner().invoke(main, ["ls", "--db", str(corrupt)])
    assert out.exit_code == 1 and "is not a usable streamreplay database" in out.output
    assert "Traceback" not in out.output

    locked = tmp_path / "locked.db"
    Store(locked)
    holder = sqlite3.connect(locked)
    holder.execute("begin exclusive")
    started = time.monotonic()
    out = CliRunner().invoke(
        main, ["record", "--upstream", "http://127.0.0.1:9/v1", "--db", str(locked), "--port", "0"]
    )
    holder.rollback()
    assert out.exit_code == 1 and "is locked by another process" in out.output, out.output
    assert time.monotonic() - started < 15
    assert threading.active_count() < 50
