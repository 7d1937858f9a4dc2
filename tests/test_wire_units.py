"""The HTTP details every streamreplay server shares, pinned one by one: which headers are forwarded
(hop-by-hop ones dropped whatever their case), OpenAI's error JSON (its four fields, its code in a
header), what is refused before any handler (CONNECT, absolute URIs, dot segments, escaped ones too),
an unreadable request answered as a 400 in that shape, the head deadline not cutting a kept-alive
connection between requests, a reset that is a reset, and log lines that never wait for their reader
(wire.py, timeouts.py, linelog.py). Real aiohttp servers on 127.0.0.1, raw sockets as clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time

import pytest
from aiohttp import web

from streamreplay.linelog import LineLog
from streamreplay.serving import AppServer
from streamreplay.wire import close_mid_body, forwardable, openai_error, openai_errors, reset_connection
from tests.helpers import raw_answer


class Wired(AppServer):
    """A tiny server behind `openai_errors`: echoes, fails, resets and cuts on demand."""

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[openai_errors])

        async def any_path(request: web.Request) -> web.StreamResponse:
            tail = request.match_info["tail"]
            if tail == "boom":
                raise RuntimeError("kaput")
            if tail == "bad":
                raise web.HTTPBadRequest(reason="nope")
            if tail == "cutbig":  # a big chunk, then the close at once: the chunk still arrives whole
                response = web.StreamResponse()
                await response.prepare(request)
                await response.write(b"y" * 8_000_000)
                close_mid_body(request)
                return response
            if tail in ("reset", "cut"):
                response = web.StreamResponse()
                await response.prepare(request)
                await response.write(b"data: one\n\n")
                await asyncio.sleep(0.05)
                (reset_connection if tail == "reset" else close_mid_body)(request)
                return response
            body = await request.read()
            return web.Response(text=f"ok {request.method} {request.path} {len(body)}")

        app.router.add_route("*", "/{tail:.*}", any_path)
        return app


async def exchange(port: int, raw: bytes, timeout: float = 3) -> bytes:
    """`raw_answer`, which the server must close within `timeout` s."""
    return await asyncio.wait_for(raw_answer(port, raw), timeout)


def split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_hop_by_hop_headers_are_not_forwarded_whatever_their_case():
    sent = [("Connection", "close"), ("Keep-Alive", "5"), ("TE", "trailers"), ("Transfer-Encoding", "chunked"),
            ("Upgrade", "h2c"), ("Proxy-Authorization", "x"), ("Proxy-Authenticate", "Basic"),
            ("proxy-connection", "keep-alive"), ("Trailer", "y"), ("Host", "a"),
            ("Authorization", "Bearer k"), ("X-Custom", "1"), ("x-custom", "2")]
    assert list(forwardable(sent, drop=("host",)).items()) == [
        ("Authorization", "Bearer k"), ("X-Custom", "1"), ("x-custom", "2")]
    # a header the Connection header names is this hop's too (RFC 9110 7.6.1), whatever either's case
    named = [("Connection", "close, X-Trace-Hop , x-debug"), ("x-trace-hop", "a"), ("X-Debug", "b"), ("X-Kept", "c")]
    assert list(forwardable(named).items()) == [("X-Kept", "c")]


def test_an_openai_error_has_its_four_fields_and_names_its_code_in_a_header():
    r = openai_error(429, "slow down", code="rate_limit", param="model")
    assert (r.status, r.content_type) == (429, "application/json")
    assert json.loads(r.body) == {"error": {"message": "slow down", "type": "invalid_request_error",
                                            "param": "model", "code": "rate_limit"}}
    assert r.headers["x-streamreplay-error"] == "rate_limit"
    plain = openai_error(400, "no")
    assert json.loads(plain.body) == {"error": {"message": "no", "type": "invalid_request_error",
                                                "param": None, "code": None}}
    assert plain.headers["x-streamreplay-error"] == "invalid_request_error"


async def test_what_no_server_serves_is_refused_in_openai_s_shape():
    async with Wired() as srv:
        refused = {
            b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n": "not_a_proxy",
            b"GET http://example.com/v1/models HTTP/1.1\r\nHost: example.com\r\n\r\n": "not_a_proxy",
            b"GET /v1/./models HTTP/1.1\r\nHost: h\r\n\r\n": "bad_path",
            b"GET /v1/../etc HTTP/1.1\r\nHost: h\r\n\r\n": "bad_path",
            b"GET /v1/%2E%2E/etc HTTP/1.1\r\nHost: h\r\n\r\n": "bad_path",
            b"GET /v1/%2e%2e/etc HTTP/1.1\r\nHost: h\r\n\r\n": "bad_path",
            b"GET /v1/%2E%2E%2Fetc HTTP/1.1\r\nHost: h\r\n\r\n": "bad_path",  # an upstream may decode it to ../
        }
        for raw, code in refused.items():
            closing = raw.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
            status, headers, body = split(await exchange(srv.port, closing))
            assert (status, json.loads(body)["error"]["code"], headers["x-streamreplay-error"]) == (400, code, code)
        ok = b"GET /v1/models HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        status, _, body = split(await exchange(srv.port, ok))
        assert (status, body) == (200, b"ok GET /v1/models 0")


async def test_a_handler_s_4xx_and_a_bug_of_ours_reach_the_client_as_openai_errors():
    async with Wired() as srv:
        status, _, body = split(await exchange(srv.port, b"GET /bad HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"))
        assert (status, json.loads(body)["error"]["code"]) == (400, "http_400")
        status, _, body = split(await exchange(srv.port, b"GET /boom HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"))
        error = json.loads(body)["error"]
        assert (status, error["type"], error["code"]) == (500, "server_error", "streamreplay_internal_error")
        assert "RuntimeError: kaput" in error["message"]


async def test_an_unreadable_request_is_a_400_in_openai_s_shape_and_the_connection_closes():
    async with Wired() as srv:
        answer = await exchange(srv.port, b"POST /v1/x HTTP/1.1\r\nHost: h\r\nContent-Length: " + b"9z" * 400
                                + b"\r\n\r\n")
        status, _, body = split(answer)  # read to the end: the server closed the connection
        error = json.loads(body)["error"]
        assert (status, error["code"]) == (400, "bad_http_request")
        assert error["message"].startswith("bad HTTP request: ") and len(error["message"]) <= 18 + 300


async def test_the_head_deadline_does_not_cut_a_kept_alive_connection_between_requests():
    # a POST whose body comes in two packets, then a pause longer than the header timeout, then a GET
    async with Wired(header_timeout=0.3, keepalive_timeout=5) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            writer.write(b"POST /v1/a HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nabc")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"def")
            await writer.drain()
            first = await asyncio.wait_for(reader.readuntil(b"ok POST /v1/a 6"), 3)
            assert first.startswith(b"HTTP/1.1 200")
            await asyncio.sleep(0.6)
            writer.write(b"GET /v1/b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            await writer.drain()
            second = await asyncio.wait_for(reader.read(), 3)
            assert second.startswith(b"HTTP/1.1 200") and second.endswith(b"ok GET /v1/b 0"), second
        finally:
            writer.close()


async def test_a_reset_is_a_tcp_reset_and_a_cut_is_a_clean_close_mid_body():
    async with Wired() as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            writer.write(b"GET /reset HTTP/1.1\r\nHost: h\r\n\r\n")
            got, reset = b"", False
            try:
                while chunk := await asyncio.wait_for(reader.read(65536), 3):
                    got += chunk
            except ConnectionResetError:
                reset = True
            assert reset, got
        finally:
            writer.close()
        cut = await exchange(srv.port, b"GET /cut HTTP/1.1\r\nHost: h\r\n\r\n")  # ends with a FIN, no reset
        assert b"data: one" in cut and not cut.endswith(b"0\r\n\r\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            writer.write(b"GET /cutbig HTTP/1.1\r\nHost: h\r\n\r\n")
            await asyncio.sleep(0.3)  # a slow reader: part of the chunk still waits in the server's buffer
            big = await asyncio.wait_for(reader.read(), 5)
            assert big.partition(b"\r\n\r\n")[2].count(b"y") == 8_000_000 and not big.endswith(b"0\r\n\r\n")
        finally:
            writer.close()


@pytest.mark.parametrize(("limit", "lines"), [(100, 1_000), (None, 12_000)])  # None: the default bound, 10,000
def test_a_log_nobody_reads_never_waits_and_counts_what_it_dropped(limit: int | None, lines: int):
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:  # fill the pipe: nobody reads it
            os.write(write_end, b"x" * 65536)
    os.set_blocking(write_end, True)
    log = LineLog(write_end) if limit is None else LineLog(write_end, limit=limit)
    try:
        def chatty() -> None:
            for i in range(lines):  # far more than the queue holds
                log(f"line {i}")

        talker = threading.Thread(target=chatty, daemon=True)
        talker.start()
        talker.join(2)
        assert not talker.is_alive(), "a log line waited for a reader that never comes"
        # what the queue holds (and the one line the writer thread took) is kept; the rest is dropped and counted
        assert lines - (limit or 10_000) - 1 <= log.dropped <= lines - (limit or 10_000) and log.flush(0.2) is False
    finally:
        os.close(read_end)  # the reader goes away: the writer thread sees EPIPE and stops waiting
    deadline = time.monotonic() + 3
    while not log.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.closed
    before = log.dropped
    log("after the reader left")
    assert log.dropped == before + 1
    os.close(write_end)


def test_a_line_that_is_not_valid_unicode_is_written_escaped():
    read_end, write_end = os.pipe()
    try:
        log = LineLog(write_end)
        log("bad \udcff byte")
        log("next")
        assert log.flush(2)
        assert os.read(read_end, 1000) == b"bad \\udcff byte\nnext\n"
    finally:
        os.close(read_end)
        os.close(write_end)
