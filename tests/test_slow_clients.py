"""Slow and idle clients are timed out; requests in progress are not.

Every server (recording proxy, replay server, ui, scripted upstream) closes a connection whose request
head is not complete `header_timeout` seconds after it opened (or after the head's first byte, on a
kept-alive connection), and a kept-alive connection idle `keepalive_timeout` seconds after its last
response. Neither ever cuts a request whose head has arrived: a slow body, or a streamed answer silent
for longer than both times, goes on. Real servers on 127.0.0.1, raw sockets; only upper bounds on time.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.replay import ReplayServer
from streamreplay.serving import AppServer
from streamreplay.store import Store
from streamreplay.testing import Script, ScriptedUpstream
from streamreplay.ui import UIServer
from tests.helpers import Hello, chat, post, record

SHORT = 0.5  # seconds: the timeout under test
LONG = 30.0  # seconds: the other timeout, out of the way
BOUND = 8.0  # seconds: generous upper bound for a close that should come after SHORT
STORY = "Once upon a time a small robot learned to read streams to the very end."
HEAD = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\nAccept: */*\r\n\r\n"


def timed(server: AppServer, header: float = SHORT, keepalive: float = LONG) -> AppServer:
    """The subclasses do not take the timeouts in their constructors; AppServer reads the attributes at start."""
    server.header_timeout, server.keepalive_timeout = header, keepalive
    return server


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("slow") / "slow.db"
    asyncio.run(record(db, [Script(text=STORY)], [chat("story")], tape="slow"))
    return db


@contextmanager
def serving(kind: str, db: Path, header: float = SHORT, keepalive: float = LONG) -> Iterator[AppServer]:
    """One of the four servers, on a thread of its own (sync mode), with the given timeouts."""
    with ExitStack() as stack:
        if kind == "upstream":
            yield stack.enter_context(timed(ScriptedUpstream(Script(text=STORY)), header, keepalive))
        elif kind == "proxy":
            upstream = stack.enter_context(ScriptedUpstream(Script(text=STORY)))
            options = RecordOptions(upstream=upstream.base_url, db=str(db.parent / f"proxy-{time.time_ns()}.db"),
                                    tape="p")
            yield stack.enter_context(timed(RecordingProxy(options), header, keepalive))
        elif kind == "replay":
            yield stack.enter_context(timed(ReplayServer(db, tape="slow"), header, keepalive))
        else:
            yield stack.enter_context(timed(UIServer(db), header, keepalive))


KINDS = ["proxy", "replay", "ui", "upstream"]


def readable(socks: list[socket.socket], wait: float) -> list[socket.socket]:
    """The sockets with data or an EOF to read within `wait` s. poll, not select: a worker that has run many
    tests holds many descriptors, and select() refuses any numbered 1024 or more."""
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(wait * 1000)]


def closed_by_peer(sock: socket.socket, wait: float) -> bool:
    """True once the server closed the connection (EOF or reset) within `wait` seconds; data is skipped."""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        if not readable([sock], left):
            return False
        try:
            if sock.recv(65536) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def connect(server: AppServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=BOUND)


def normal_request(kind: str, server: AppServer) -> None:
    """What an ordinary client gets while others misbehave: a full answer."""
    if kind == "ui":
        resp = httpx.get(f"{server.origin}/exchange/1", timeout=BOUND)
        assert resp.status_code == 200 and "</html>" in resp.text
        return
    resp = httpx.post(f"{server.base_url}/chat/completions", json=chat("story"), timeout=BOUND)
    assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n"), resp.text[-200:]
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                   for line in resp.text.splitlines() if line.startswith("data: {"))
    assert text == STORY


@pytest.mark.parametrize("kind", KINDS)
def test_a_head_sent_a_byte_at_a_time_is_cut_after_the_header_timeout(kind, recorded):
    with serving(kind, recorded, header=SHORT, keepalive=LONG) as server:
        sock = connect(server)
        start, sent, closed = time.monotonic(), 0, False
        with sock:
            for byte in HEAD:  # a byte every 0.2 s: the whole head would take ~16 s
                try:
                    sock.sendall(bytes([byte]))
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
                    break
                sent += 1
                if closed_by_peer(sock, 0.2):
                    closed = True
                    break
                assert time.monotonic() - start < BOUND, "still open long after the header timeout"
        took = time.monotonic() - start
        assert closed and sent < len(HEAD) and took < BOUND, (closed, sent, took)
        normal_request(kind, server)  # and the server goes on serving


@pytest.mark.parametrize("kind", ["proxy", "replay"])
def test_300_silent_connections_are_closed_and_others_are_served_meanwhile(kind, recorded):
    header = 3.0  # long enough that the ordinary request surely runs while all 300 are open
    with serving(kind, recorded, header=header, keepalive=LONG) as server:
        start = time.monotonic()
        socks = [connect(server) for _ in range(300)]
        try:
            normal_request(kind, server)
            assert time.monotonic() - start < header, "the machine is too slow for this test's premise"
            assert not readable(socks, 0), "silent connections were closed before the header timeout"
            deadline = start + header + BOUND
            still_open = [s for s in socks if not closed_by_peer(s, max(deadline - time.monotonic(), 0.01))]
            assert not still_open, f"{len(still_open)} of 300 silent connections still open"
            normal_request(kind, server)
        finally:
            for s in socks:
                s.close()


def keepalive_request(server: AppServer) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=BOUND)
    conn.request("GET", "/v1/models")
    resp = conn.getresponse()
    resp.read()
    assert not resp.will_close  # kept alive
    return conn


@pytest.mark.parametrize("kind", KINDS)
def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(kind, recorded):
    with serving(kind, recorded, header=LONG, keepalive=SHORT) as server:
        conn = keepalive_request(server)
        # a second request inside the keep-alive time uses the same connection
        sock = conn.sock
        conn.request("GET", "/v1/models")
        conn.getresponse().read()
        assert conn.sock is sock
        start = time.monotonic()
        assert closed_by_peer(conn.sock, BOUND), "an idle kept-alive connection was never closed"
        assert time.monotonic() - start < BOUND
        conn.close()


@pytest.mark.parametrize("kind", ["proxy", "upstream"])
def test_a_slow_head_on_a_kept_alive_connection_is_cut_after_the_header_timeout(kind, recorded):
    """The header deadline is re-armed by the first byte of the next head, apart from the keep-alive time."""
    with serving(kind, recorded, header=SHORT, keepalive=LONG) as server:
        conn = keepalive_request(server)
        time.sleep(SHORT * 2)  # idle longer than the header timeout: idle time is keep-alive time
        sock, start, closed = conn.sock, time.monotonic(), False
        for byte in HEAD:
            try:
                sock.sendall(bytes([byte]))
            except (ConnectionResetError, BrokenPipeError):
                closed = True
                break
            if closed_by_peer(sock, 0.2):
                closed = True
                break
            assert time.monotonic() - start < BOUND
        assert closed, "a slow second head was never cut"
        conn.close()


def test_the_timeouts_are_constructor_parameters_of_app_server():
    assert (AppServer.header_timeout, AppServer.keepalive_timeout) == (10.0, 75.0)
    with Hello(header_timeout=SHORT, keepalive_timeout=LONG) as server:
        assert (server.header_timeout, server.keepalive_timeout) == (SHORT, LONG)
        with connect(server) as sock:  # says nothing at all
            start = time.monotonic()
            assert closed_by_peer(sock, BOUND) and time.monotonic() - start < BOUND
        assert httpx.get(f"{server.origin}/").text == "hello on /"


class Impatient(Hello):
    """A server class with a short header deadline of its own, for 0 to turn off."""

    header_timeout = 0.1


def test_a_header_timeout_of_zero_turns_the_head_deadline_off():
    """README, Slow and idle clients: `header_timeout=0` turns the header deadline off, passed to the
    constructor (over the class's own default, which a 0 read as "not given" would keep) or set as the
    attribute before start. A head 0.35 s late is cut under the class's 0.1 s, and answered under 0."""
    head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with Impatient(keepalive_timeout=LONG) as timed_out, connect(timed_out) as sock:
        sock.sendall(head[:8])
        assert closed_by_peer(sock, 0.35), "a 0.1 s header deadline did not cut a head 0.35 s late"
    by_attribute = Impatient(keepalive_timeout=LONG)
    by_attribute.header_timeout = 0  # None does the same
    for how, off in (("constructor", Impatient(header_timeout=0, keepalive_timeout=LONG)),
                     ("attribute", by_attribute)):
        with off, connect(off) as sock:
            sock.sendall(head[:8])
            assert not closed_by_peer(sock, 0.35), f"header_timeout=0 (the {how}) cut a slow head"
            sock.sendall(head[8:])
            answer = b""
            while not answer.endswith(b"hello on /"):
                data = sock.recv(65536)
                assert data, "the connection was closed before the answer"
                answer += data
            assert answer.startswith(b"HTTP/1.1 200")


def test_a_slow_request_body_is_not_cut(recorded):
    """Once the head is complete the request is its handler's: bodies are not timed (documented)."""
    with serving("upstream", recorded, header=0.3, keepalive=0.3) as server, connect(server) as sock:
        body = b'{"slowly": "' + b"x" * 8 + b'"}'
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        for i in range(0, len(body), 4):  # 6 pieces, 0.25 s apart: ~1.5 s, five header timeouts
            time.sleep(0.25)
            sock.sendall(body[i:i + 4])
        answer = b""
        while b"xxxxxxxx" not in answer:  # the echo of the body
            data = sock.recv(65536)
            assert data, "the server closed a request whose body was still coming"
            answer += data
        assert answer.startswith(b"HTTP/1.1 200") and b'slowly' in answer


async def test_a_stream_silent_for_longer_than_both_timeouts_is_not_cut(tmp_path):
    """The recording proxy and the scripted upstream, both on 0.3 s timeouts, relay a stream that pauses
    1.2 s in the middle; then the replay server, on the same timeouts, replays that pause."""
    pause = 1.2
    db = tmp_path / "pause.db"
    async with timed(ScriptedUpstream(), 0.3, 0.3) as upstream:
        upstream.queue(Script(text=STORY, pauses={4: pause}))
        proxy = RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db), tape="pause"))
        async with timed(proxy, 0.3, 0.3):
            start = time.monotonic()
            status, body, error = await post(proxy.base_url, chat("pause"))
            assert time.monotonic() - start >= pause
            await proxy.settle()
    assert (status, error) == (200, None) and body == upstream.sent[0].body
    assert body.endswith(b"data: [DONE]\n\n")
    (ex,) = Store(db).exchanges()
    assert ex.end_cause == "complete"

    async with timed(ReplayServer(db, tape="pause"), 0.3, 0.3) as replay:
        start = time.monotonic()
        status, replayed, error = await post(replay.base_url, chat("pause"))
        assert time.monotonic() - start >= pause * 0.9
    assert (status, error) == (200, None) and replayed == body
