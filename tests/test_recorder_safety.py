"""The recorder never loses data silently and never holds a client hostage.

Bad bytes in a request, a full disk, a bug in the writer, a log nobody reads, an upstream whose
framing breaks: each is thrown at a real recorder on 127.0.0.1, and each test checks that every
client still got its stream untouched and that what was not stored is said, not hidden.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamreplay.bundled import bundled_tape
from streamreplay.cli import main
from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.replay import ReplayServer
from streamreplay.store import Store, StoreWriter
from streamreplay.store import writer as writer_module
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import bad_chunk_size, chat, chat_upstream, gzip_sse, post, serve_raw, sha

# -- 1. any request is storable -------------------------------------------------------------------

#: what HTTP lets through in a header value (aiohttp answers 400 for control bytes): tab, visible
#: ASCII, and every byte from 0x80, so most values are not UTF-8
HEADER_BYTES = st.binary(min_size=1, max_size=24).map(
    lambda b: bytes(c if c in (9,) or 32 <= c < 127 or c >= 128 else 65 for c in b).strip() or b"x")
BODIES = st.one_of(
    st.binary(max_size=200),  # not JSON, not UTF-8, NUL bytes
    st.just(b'{"model":"m","stream":true,"messages":[{"role":"user","content":"\\ud83d"}]}'),
    st.just(b'{"model":"\\udce9\\u0000","stream":true}'),
    st.text(max_size=40).map(lambda t: json.dumps({"model": "m", "messages": [{"role": "user", "content": t}]},
                                                  ensure_ascii=False).encode("utf-8", "surrogatepass")),
    st.just(b'{"model": "m", "stream": tru'),  # invalid JSON
)


def raw_request(port: int, header: bytes, body: bytes, path: bytes = b"/v1/chat/completions") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Odd: " + header +
                     b"\r\nUser-Agent: " + header + b"\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        out = bytearray()
        while data := sock.recv(65536):
            out += data
    return bytes(out)


def test_any_request_is_stored_losslessly_shown_and_matched(tmp_path: Path):
    db = tmp_path / "any.db"
    sent: list[tuple[bytes, bytes]] = []
    with ScriptedUpstream() as upstream, \
            RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db), tape="any")) as proxy:

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        @given(header=HEADER_BYTES, body=BODIES)
        def throw(header: bytes, body: bytes) -> None:
            answer = raw_request(proxy.port, header, body)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            sent.append((header, body))

        throw()
        proxy.call(proxy.settle())
    exchanges = Store(db).exchanges(tape="any")
    assert len(exchanges) == len(sent)
    for ex, (header, body) in zip(exchanges, sent, strict=True):
        assert ex.end_cause == "complete" and ex.store_error is None
        assert ex.request_body == body  # the bytes received
        value = next(v for k, v in ex.request_headers if k == "X-Odd")
        assert value.encode("utf-8", "surrogateescape") == header  # header text that round-trips
    runner = CliRunner()
    for args in (["ls", "--db", str(db)], ["ls", "--json", "--db", str(db)],
                 ["export", "any", "--db", str(db), "-o", str(tmp_path / "any.jsonl")]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0 and result.exception is None, (args, result.output)
    for ex in exchanges:
        for args in (["show", str(ex.id), "--db", str(db)], ["show", str(ex.id), "--json", "--db", str(db)]):
            result = runner.invoke(main, args)
            assert result.exit_code == 0 and result.exception is None, (args, result.output)
    # replay matches each request on the bytes as they were sent
    with ReplayServer(str(db), tape="any", speed=0) as replay:
        for header, body in sent:
            answer = raw_request(replay.port, header, body)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


# -- 2. the store failing never stops forwarding -----------------------------------------------------

# ~2000 events, ~400 KB a stream: more than the --max-db-size of these tests, so the DB only ever holds an
# exchange in flight, which --max-db-size never prunes (it prunes complete ones): storing must fail
BIG = Script(text="word " * 2000, gap=0)


async def test_a_full_disk_never_stops_forwarding_and_is_said(tmp_path: Path):
    db = tmp_path / "full.db"
    said: list[str] = []
    async with ScriptedUpstream(BIG) as upstream:
        options = RecordOptions(upstream=upstream.base_url, db=str(db), tape="full", max_db_bytes=300_000,
                                log=said.append, errors=said.append)
        async with RecordingProxy(options) as proxy:
            results = [await post(proxy.base_url, chat()) for _ in range(12)]
            await proxy.settle()
            losses = list(proxy.losses)
        sent = [s.body for s in upstream.sent]
    for (status, body, error), upstream_body in zip(results, sent, strict=True):
        assert (status, error) == (200, None)
        assert sha(body) == sha(upstream_body)  # every client got its stream, untouched
    assert losses, "a 300 KB DB cannot hold a stream of 400 KB"
    failure = [line for line in said if "STORING FAILED" in line]
    assert len(failure) >= 1 and "database or disk is full" in failure[0]
    assert sum("not stored whole" in line for line in said) >= len(losses)
    # nothing partial is presented as whole: each stored exchange is whole, or says it is not
    store = Store(db)
    for ex in store.exchanges():
        stored = b"".join(c.data for c in store.chunks(ex.id))
        if ex.store_error is None:
            assert ex.end_cause == "complete" and sha(stored) in {sha(b) for b in sent}
    listing = CliRunner().invoke(main, ["ls", "--db", str(db)]).output
    assert listing.count("partial") == sum(1 for ex in store.exchanges() if ex.store_error)


async def test_an_exception_in_the_writer_loses_only_its_exchange(tmp_path: Path, monkeypatch):
    real_key = writer_module.request_key

    def key(method: str, path: str, body: bytes) -> str:
        if b"poison" in body:
            raise RuntimeError("injected: a bug in the writer")
        return real_key(method, path, body)

    monkeypatch.setattr(writer_module, "request_key", key)
    db = tmp_path / "bug.db"
    said: list[str] = []
    async with ScriptedUpstream() as upstream, \
            RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db), tape="b", log=said.append)) as proxy:
        results = await asyncio.gather(*(post(proxy.base_url, chat("poison" if i == 3 else f"q{i}"))
                                         for i in range(8)))
        await proxy.settle()
        losses = list(proxy.losses)
    assert all(status == 200 and error is None for status, _, error in results), results
    assert len(losses) == 1 and "RuntimeError: injected" in losses[0][1], (losses, said)
    texts = sorted(json.loads(ex.request_body)["messages"][0]["content"] for ex in Store(db).exchanges())
    assert texts == [f"q{i}" for i in range(8) if i != 3]
    assert any("STORING FAILED (RuntimeError: injected" in line for line in said)


# the writer thread is made to die: that its exception goes unhandled is the case under test
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_dead_writer_holds_no_client_back(tmp_path: Path, monkeypatch):
    """Past the backlog bound (16 MB) a client would wait for a writer that will never come back."""

    def die(self, conn, messages):
        raise SystemExit("the writer thread dies")

    db = tmp_path / "dead.db"
    said: list[str] = []
    async with ScriptedUpstream(Script(text="x" * 2000 + " ", pieces=["y" * 60_000] * 400, gap=0)) as upstream:
        async with RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db), tape="d",
                                                log=said.append)) as proxy:
            monkeypatch.setattr(StoreWriter, "_write", die)
            status, body, error = await asyncio.wait_for(post(proxy.base_url, chat()), 60)
            await asyncio.sleep(0.1)
            assert not proxy.writer.alive
            status2, body2, error2 = await asyncio.wait_for(post(proxy.base_url, chat()), 60)
            losses = list(proxy.losses)
        sent = upstream.sent
    assert len(body) > 20_000_000
    assert (status, error, sha(body)) == (200, None, sent[0].sha256)
    assert (status2, error2, sha(body2)) == (200, None, sent[1].sha256)
    assert len(losses) == 2


def test_record_exits_non_zero_when_anything_was_not_stored(tmp_path: Path):
    db = tmp_path / "cli-full.db"
    with ScriptedUpstream(BIG) as upstream:
        proc = subprocess.Popen([sys.executable, "-m", "streamreplay.cli", "record", "--upstream", upstream.base_url,
                                 "--db", str(db), "--port", "0", "--max-db-size", "200000"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        base_url = re.search(r"base_url (\S+) ", proc.stdout.readline()).group(1)
        for _ in range(6):
            with httpx.stream("POST", f"{base_url}/chat/completions", json=chat(), timeout=10) as resp:
                assert sum(len(d) for d in resp.iter_raw()) > 50_000
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1, (out, err)
    assert "STORING FAILED (sqlite: database or disk is full)" in err
    assert re.search(r"\d+ exchanges were forwarded but not stored whole: ", err)
    assert "Traceback" not in err


@pytest.mark.parametrize(("app_status", "record_status"), [(0, 1), (3, 3)])
def test_record_around_a_command_exits_non_zero_when_anything_was_not_stored(tmp_path: Path, app_status: int,
                                                                               record_status: int):
    """`record -- CMD` exits with CMD's status, except that a clean exit becomes 1 when storing lost anything."""
    db = tmp_path / "cmd-full.db"
    app = ("import os, httpx\n"
           "for _ in range(6):\n"
           "    with httpx.stream('POST', os.environ['OPENAI_BASE_URL'] + '/chat/completions',\n"
           f"                      json={chat()!r}, timeout=10) as r:\n"
           "        assert sum(len(d) for d in r.iter_raw()) > 50_000\n"
           f"raise SystemExit({app_status})\n")
    with ScriptedUpstream(BIG) as upstream:
        done = subprocess.run([sys.executable, "-m", "streamreplay.cli", "record", "--upstream", upstream.base_url,
                               "--db", str(db), "--max-db-size", "200000", "--", sys.executable, "-c", app],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == record_status, (done.stdout, done.stderr)
    assert re.search(r"\d+ exchanges were forwarded but not stored whole", done.stderr)
    assert "Traceback" not in done.stderr


# -- 3. the log never blocks or kills recording --------------------------------------------------------

async def _hammer(base_url: str, count: int) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        queue = list(range(count))

        async def worker() -> None:
            while queue:
                queue.pop()
                resp = await client.post(f"{base_url}/chat/completions", json=chat(stream=False))
                assert resp.status_code == 200

        await asyncio.gather(*(worker() for _ in range(16)))


@pytest.mark.parametrize("reader", ["head -1", "nobody reads"])
async def test_a_log_nobody_reads_never_stops_recording(tmp_path: Path, reader: str):
    db = tmp_path / "log.db"
    async with ScriptedUpstream() as upstream:
        command = [sys.executable, "-m", "streamreplay.cli", "record", "--upstream", upstream.base_url,
                   "--db", str(db), "--port", "0", "--tape", "log"]
        if reader == "head -1":
            banner_file = tmp_path / "banner"
            proc = subprocess.Popen(f"{' '.join(command)} | head -1 > {banner_file}", shell=True,
                                    start_new_session=True)
            for _ in range(200):
                if banner_file.exists() and banner_file.read_text():
                    break
                await asyncio.sleep(0.05)
            banner = banner_file.read_text()
        else:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            banner = (await asyncio.to_thread(proc.stdout.readline)).decode()
        base_url = re.search(r"base_url (\S+) ", banner).group(1)
        await _hammer(base_url, 2000)
        pid = proc.pid if reader == "nobody reads" else _recorder_pid(proc.pid)
        os.kill(pid, signal.SIGTERM)
        await asyncio.wait_for(asyncio.to_thread(proc.wait), 20)
    assert Store(db).db["exchanges"].count == 2000


def _recorder_pid(shell_pid: int) -> int:
    """The python process of a `... | head -1` pipeline (same session as the shell)."""
    out = subprocess.run(["ps", "-o", "pid=,args=", "-s", str(os.getsid(shell_pid))], capture_output=True,
                         text=True).stdout
    return next(int(line.split()[0]) for line in out.splitlines() if "streamreplay.cli" in line
                and "/bin/sh" not in line)


# -- 4. a malformed upstream body ends at once -------------------------------------------------------

async def _one_chunk_then_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"6\r\ndata: \r\n")
    await writer.drain()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(5)
    writer.close()


async def _client_outcome(url: str) -> tuple[str, float]:
    start = time.monotonic()
    try:
        async with httpx.AsyncClient(timeout=4) as client, \
                client.stream("POST", f"{url}/chat/completions", json=chat()) as resp:
            async for _ in resp.aiter_raw():
                pass
    except httpx.HTTPError as exc:
        return type(exc).__name__, time.monotonic() - start
    return "clean end", time.monotonic() - start


@pytest.mark.parametrize(("handler", "cause"), [(bad_chunk_size, "upstream_malformed"),
                                                (_one_chunk_then_silence, "upstream_timeout")])
async def test_a_broken_upstream_body_ends_at_once_as_it_would_direct(tmp_path: Path, handler, cause: str):
    server, url = await serve_raw(handler)
    db = tmp_path / "bad.db"
    async with server, RecordingProxy(RecordOptions(upstream=url, db=str(db), tape="bad",
                                                    upstream_timeout=0.5)) as proxy:
        proxied, took = await _client_outcome(proxy.base_url)
        await proxy.settle()
        direct, _ = await _client_outcome(url)
    if cause == "upstream_malformed":
        assert proxied == direct == "RemoteProtocolError"
        assert took < 3  # not the client's own 4 s timeout: the proxy ended it
    else:
        assert proxied == "RemoteProtocolError" and took < 3  # bounded by --upstream-timeout, not the client's
    (ex,) = Store(db).exchanges()
    assert ex.end_cause == cause and ex.chunk_count == 1


# -- 10. every DB command gives one-line errors ---------------------------------------------------------

async def test_two_recorders_on_one_tape_never_share_a_seq(tmp_path: Path):
    db = tmp_path / "two.db"
    async with ScriptedUpstream() as upstream:
        async with RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db), tape="same")) as a, \
                RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db), tape="same")) as b:
            await asyncio.gather(*(post(p.base_url, chat(f"q{i}")) for i in range(20) for p in (a, b)))
            await a.settle()
            await b.settle()
        async with RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db))) as c, \
                RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db))) as d:
            assert c.tape != d.tape  # both default names, made in the same second
    seqs = [ex.seq for ex in Store(db).exchanges(tape="same")]
    assert sorted(seqs) == list(range(40))


def test_a_taken_default_tape_name_gets_the_next_free_suffix_and_a_named_tape_is_shared(tmp_path: Path):
    """The default name is only unique to the second: a taken one becomes NAME-2, NAME-3 (as the README says);
    a tape the user named is recorded into, whoever else records there."""
    db = tmp_path / "names.db"
    writers = [StoreWriter(db, "rec-x", unique_tape=True) for _ in range(3)] + [StoreWriter(db, "rec-x")]
    for writer in writers:
        writer.start()
        writer.close()
    assert [w.tape for w in writers] == ["rec-x", "rec-x-2", "rec-x-3", "rec-x"]
    assert sorted(Store(db).db["tapes"].rows_where(select="name"), key=str) == [
        {"name": "rec-x"}, {"name": "rec-x-2"}, {"name": "rec-x-3"}]


def test_db_commands_say_one_line_on_a_corrupt_db(tmp_path: Path):
    bad = tmp_path / "corrupt.db"
    bad.write_bytes(b"SQLite format 3\x00" + os.urandom(4000))
    cassette = tmp_path / "c.jsonl"
    CliRunner().invoke(main, ["export", "openai-happy-path", "--db", str(bad), "-o", str(cassette)])
    ok = bundled_tape("openai-happy-path")
    for args in (["ls", "--db", str(bad)], ["show", "1", "--db", str(bad)], ["diagnose", "1", "--db", str(bad)],
                 ["export", "t", "--db", str(bad), "-o", str(cassette)], ["import", str(ok), "--db", str(bad)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, (args, result.output)
        assert isinstance(result.exception, SystemExit), (args, result.exception)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, args


def test_a_db_in_a_read_only_directory_can_be_listed(tmp_path: Path):
    """No -wal/-shm can be made beside it: it is opened read-only."""
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "r.db"
    bundled = bundled_tape("openai-happy-path")
    subprocess.run([sys.executable, "-m", "streamreplay.cli", "import", str(bundled), "--db", str(db)], check=True,
                   capture_output=True)
    # a recorded DB as it is left: WAL mode, its -wal and -shm gone with the last connection, which a reader
    # would have to make again beside it
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert sorted(p.name for p in folder.iterdir()) == ["r.db"]
    folder.chmod(0o555)
    # root writes anyway: it runs the command without the capabilities that override file permissions,
    # so the directory is read-only for it too (and the checkout stays readable, whoever owns it)
    caps = "-dac_override,-dac_read_search"
    as_user = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"] if os.geteuid() == 0 else []
    try:
        denied = subprocess.run([*as_user, "touch", str(folder / "probe")], capture_output=True)
        assert denied.returncode != 0, "the folder must really be read-only for the command"
        result = subprocess.run([*as_user, sys.executable, "-m", "streamreplay.cli", "ls", "--db", str(db)],
                                capture_output=True, text=True, timeout=30, cwd=folder)
        assert result.returncode == 0, result.stderr
        assert "openai-happy-path" in result.stdout
        assert sorted(p.name for p in folder.iterdir()) == ["r.db"]
    finally:
        folder.chmod(0o755)


def test_record_that_cannot_listen_leaves_no_db(tmp_path: Path):
    db = tmp_path / "never.db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "streamreplay.cli", "record", "--upstream",
                                 "http://127.0.0.1:9/v1", "--db", str(db), "--port", str(port)],
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "cannot listen" in result.stderr
    assert not db.exists() and not Path(f"{db}-wal").exists()


# -- 11. endings are said as they were -----------------------------------------------------------------

async def test_a_stop_mid_exchange_is_said_as_a_stop(tmp_path: Path):
    said: list[str] = []
    async with ScriptedUpstream(Script(text="tick " * 200, gap=0.05)) as upstream:
        proxy = RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(tmp_path / "s.db"), tape="s",
                                             log=said.append))
        await proxy.start()
        client = asyncio.ensure_future(post(proxy.base_url, chat()))
        await asyncio.sleep(0.5)
        await proxy.stop()
        await client
    (line,) = said
    assert "interrupted (the daemon stopped at chunk" in line and "client left" not in line
    (ex,) = Store(tmp_path / "s.db").exchanges()
    assert ex.end_cause == "interrupted" and ex.text and ex.text.startswith("tick tick")


async def test_a_gzip_upstream_is_forwarded_as_sent_and_read_decoded(tmp_path: Path):
    events = [b'data: {"choices":[{"index":0,"delta":{"content":"%s "}}]}\n\n' % w for w in (b"one", b"two")]
    events += [b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n', b"data: [DONE]\n\n"]
    writes, handler = gzip_sse(events)
    db = tmp_path / "gz.db"
    async with chat_upstream(handler) as url, \
            RecordingProxy(RecordOptions(upstream=url, db=str(db), tape="gz")) as proxy:
        status, body, error = await post(proxy.base_url, chat())
        await proxy.settle()
    assert (status, error) == (200, None)
    assert sha(body) == sha(b"".join(writes))  # forwarded as sent
    assert gzip.decompress(body) == b"".join(events)
    (ex,) = Store(db).exchanges()
    assert sha(b"".join(c.data for c in Store(db).chunks(ex.id))) == sha(body)  # stored as sent
    assert ex.end_cause == "complete" and ex.done and ex.text == "one two " and ex.finish_reason == "stop"


def test_odd_json_is_stored_and_unparseable_http_gets_an_openai_error_without_a_traceback(tmp_path: Path):
    db = tmp_path / "odd.db"
    odd = [b'{"model":"m","temperature":NaN,"stream":true}', b'{"model":"m","max_tokens":Infinity}',
           b'\xef\xbb\xbf{"model":"m"}', b'[1,2,3]', b'{"model":' + b"[" * 5000 + b"]" * 5000 + b"}"]
    broken = [b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\nConnection: close\r\n\r\n",
              b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close"
              b"\r\n\r\nzz\r\n"]
    with ScriptedUpstream() as upstream:
        proc = subprocess.Popen([sys.executable, "-m", "streamreplay.cli", "record", "--upstream", upstream.base_url,
                                 "--db", str(db), "--port", "0", "--tape", "odd"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        port = int(re.search(r":(\d+)/v1 ", proc.stdout.readline()).group(1))
        for body in odd:
            assert raw_request(port, b"x", body).startswith(b"HTTP/1.1 200")  # nested 5000 deep included
        for request in broken:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(request)
                answer = b""
                while data := sock.recv(65536):
                    answer += data
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.split(b" ")[1] == b"400", answer
            assert json.loads(body)["error"]["code"] == "bad_http_request", body
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert [ex.request_body for ex in Store(db).exchanges(tape="odd")] == odd
    with ReplayServer(str(db), tape="odd", speed=0) as replay:
        for body in odd:
            assert raw_request(replay.port, b"x", body).startswith(b"HTTP/1.1 200")
