"""How every server of streamreplay runs (serving.py), on a tiny app of its own: on the current loop with
`async with`, on a thread of its own with plain `with` for sync code; a free port when asked for port 0; its
base URL; its hooks around the socket; a start that fails raised to the caller; its timeouts' defaults."""

from __future__ import annotations

import asyncio
import logging
import selectors
import socket
import threading
import time

import httpx
import pytest
from aiohttp import web

from streamreplay.serving import AppServer
from tests.helpers import Hello


async def test_async_with_serves_on_a_free_port_and_runs_its_hooks_around_the_socket():
    server = Hello()
    async with server as srv:
        assert srv is server and srv.port != 0
        assert srv.origin == f"http://127.0.0.1:{srv.port}" and srv.base_url == f"{srv.origin}/v1"
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{srv.base_url}/hi")
        assert (r.status_code, r.text) == (200, "hello on /v1/hi")
        assert server.events == ["start"]
    assert server.events == ["start", "stop"]
    with pytest.raises(httpx.ConnectError):  # the socket is closed once it stopped
        httpx.get(f"{server.base_url}/hi", timeout=2)


def test_plain_with_serves_sync_code_from_a_thread_of_its_own():
    with Hello() as srv:
        assert httpx.get(f"{srv.base_url}/hi", timeout=5).text == "hello on /v1/hi"

        async def on_its_loop() -> bool:
            return asyncio.get_running_loop() is srv._loop

        assert srv.call(on_its_loop()) is True
    assert srv.events == ["start", "stop"]
    assert srv._thread is None


def test_a_server_that_cannot_listen_raises_its_error_to_the_caller():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError), Hello(port=port):
            pass


def test_an_ipv6_host_is_bracketed_in_the_url():
    assert Hello("::1", 8123).origin == "http://[::1]:8123"
    assert Hello("::1", 8123).base_url == "http://[::1]:8123/v1"
    assert Hello("localhost", 5).origin == "http://localhost:5"


def test_the_timeouts_default_to_10_s_for_a_head_and_75_s_kept_alive_and_can_be_set_per_server():
    assert (AppServer.header_timeout, AppServer.keepalive_timeout) == (10.0, 75.0)
    default = Hello()
    assert (default.header_timeout, default.keepalive_timeout) == (10.0, 75.0)
    set_ = Hello(header_timeout=0.5, keepalive_timeout=3.0)
    assert (set_.header_timeout, set_.keepalive_timeout) == (0.5, 3.0)


async def test_a_silent_connection_is_closed_after_the_header_timeout():
    async with Hello(header_timeout=0.3) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the server, nothing sent
        finally:
            writer.close()


class Waiting(AppServer):
    """A handler that waits: what it learns when its client goes away mid-request."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = asyncio.Event()
        self.entered = asyncio.Event()

    def build_app(self) -> web.Application:
        app = web.Application()

        async def wait(request: web.Request) -> web.Response:
            self.entered.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return web.Response(text="late")

        app.router.add_get("/wait", wait)
        return app


async def test_a_client_that_goes_away_cancels_its_handler_at_once():
    """How the proxy and the replay learn the moment a client left, even inside a long gap."""
    async with Waiting() as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /wait HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(srv.entered.wait(), 3)
        writer.close()
        await asyncio.wait_for(srv.cancelled.wait(), 2)


async def test_it_listens_on_its_own_host_only():
    async with Hello() as srv:
        assert {host for host, *_ in srv._runner.addresses} == {"127.0.0.1"}


async def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout():
    async with Hello(keepalive_timeout=0.3) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            writer.write(b"GET /v1/hi HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"hello on /v1/hi"), 3)
            assert head.startswith(b"HTTP/1.1 200")
            assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the server once idle
        finally:
            writer.close()


async def test_stopping_gives_a_request_in_flight_its_shutdown_timeout_and_no_more():
    srv = Waiting()
    srv.shutdown_timeout = 0.2
    await srv.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(b"GET /wait HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(srv.entered.wait(), 3)
    start = time.monotonic()
    await asyncio.wait_for(srv.stop(), 10)
    writer.close()
    assert time.monotonic() - start < 3


async def test_it_writes_no_access_log(caplog):
    caplog.set_level(logging.DEBUG)
    async with Hello() as srv, httpx.AsyncClient() as client:
        assert (await client.get(f"{srv.base_url}/hi")).status_code == 200
    assert not [r for r in caplog.records if r.name == "aiohttp.access"]


async def test_servers_given_no_port_each_listen_on_a_free_port_of_their_own():
    """A server made without a port asks for a free one (port 0): two of them run side by side."""
    async with Waiting() as a, Waiting() as b:  # Waiting passes no port to AppServer
        assert a.port != b.port and 0 not in (a.port, b.port)


async def test_a_server_listens_again_on_its_port_at_once_after_closing_a_kept_alive_connection():
    """Stopping closes an idle kept-alive connection from the server's side, which leaves that port's socket in
    TIME_WAIT; a server started on the same port right after (a restarted `streamreplay replay --port`) still binds."""
    first = Hello()
    async with first:
        reader, writer = await asyncio.open_connection("127.0.0.1", first.port)
        writer.write(b"GET /v1/hi HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b"hello on /v1/hi"), 3)
    # the server closed first: the client reads the end only now
    assert await asyncio.wait_for(reader.read(), 3) == b""
    writer.close()
    async with Hello(port=first.port) as again, httpx.AsyncClient() as client:
        assert (await client.get(f"{again.base_url}/hi")).text == "hello on /v1/hi"


def test_hundreds_of_clients_connecting_in_the_same_instant_all_get_in():
    """The listening socket's backlog holds 300 connections made while the server's loop is busy (aiohttp's
    own default, 128, would leave the rest waiting for SYN retries)."""
    with Hello() as srv:
        busy = threading.Event()
        srv._loop.call_soon_threadsafe(busy.wait, 10)  # the loop accepts nothing until busy is set
        socks = [socket.socket() for _ in range(300)]
        try:
            with selectors.DefaultSelector() as sel:
                for s in socks:
                    s.setblocking(False)
                    s.connect_ex(("127.0.0.1", srv.port))
                    sel.register(s, selectors.EVENT_WRITE)
                connected = 0
                deadline = time.monotonic() + 5
                while connected < len(socks) and time.monotonic() < deadline:
                    for key, _ in sel.select(timeout=0.1):
                        sel.unregister(key.fileobj)
                        connected += key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            assert connected == len(socks)
        finally:
            for s in socks:
                s.close()
            busy.set()


def test_a_sync_server_runs_on_a_daemon_thread_named_after_it_and_leaves_nothing_running():
    """Its thread never keeps the interpreter alive and says in a thread dump which server it is; leaving the
    `with` ends that thread and closes its loop."""
    with Hello() as srv:
        thread, loop = srv._thread, srv._loop
        assert thread is not None and thread.name == "Hello" and thread.daemon
    assert not thread.is_alive() and loop.is_closed()


async def test_stopping_a_server_that_never_started_or_stopping_it_twice_is_harmless():
    """A cleanup that stops a server whose start failed before it listened, or stops it again, runs its hook
    and raises nothing."""
    never = Hello()
    await never.stop()
    assert never.events == ["stop"]
    twice = Hello()
    await twice.start()
    await twice.stop()
    await twice.stop()
    assert twice.events == ["start", "stop", "stop"]
