"""How an upstream body stopped, told from what aiohttp raised: the endings alone, with aiohttp's own
connection protocol and body reader, and no socket."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import BadHttpMessage

from streamreplay.endcause import EndCause
from streamreplay.proxy.endings import (
    MalformedBody,
    classify_read_error,
    clean_end_cause,
    end_body_when_connection_drops,
)

PAYLOAD = aiohttp.ClientPayloadError("Response payload is not completed")


def lost(exc: BaseException | None) -> Callable[[], ResponseHandler]:
    """A connection's protocol after the connection went with `exc` (None: a plain close)."""
    def make() -> ResponseHandler:
        protocol = ResponseHandler(asyncio.get_running_loop())
        protocol.connection_lost(exc)
        return protocol
    return make


def kept(value: object) -> Callable[[], object]:
    return lambda: value


NO_PROTOCOL = kept(None)


def caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(("exc", "protocol", "cause"), [
    (asyncio.TimeoutError(), NO_PROTOCOL, EndCause.UPSTREAM_TIMEOUT),
    (aiohttp.ServerTimeoutError("Timeout on reading data from socket"), NO_PROTOCOL, EndCause.UPSTREAM_TIMEOUT),
    (MalformedBody("the upstream's body could not be parsed"), NO_PROTOCOL, EndCause.UPSTREAM_MALFORMED),
    (PAYLOAD, kept(SimpleNamespace(exception=lambda: BadHttpMessage("bad chunk size"))), EndCause.UPSTREAM_MALFORMED),
    # aiohttp says the same thing for a reset and a close: the protocol keeps the OS error that tells them apart
    (PAYLOAD, lost(ConnectionResetError(errno.ECONNRESET, "reset by peer")), EndCause.UPSTREAM_RESET),
    (PAYLOAD, lost(BrokenPipeError(errno.EPIPE, "broken pipe")), EndCause.UPSTREAM_RESET),
    (PAYLOAD, lost(None), EndCause.UPSTREAM_CLOSED),
    (PAYLOAD, lost(OSError(errno.ETIMEDOUT, "timed out")), EndCause.UPSTREAM_CLOSED),
    (PAYLOAD, NO_PROTOCOL, EndCause.UPSTREAM_CLOSED),
    (PAYLOAD, kept(object()), EndCause.UPSTREAM_CLOSED),  # a protocol that keeps no error
    # without the protocol's word: the error itself, then what caused it, then its text
    (aiohttp.ClientOSError(errno.ECONNRESET, "reset by peer"), NO_PROTOCOL, EndCause.UPSTREAM_RESET),
    (ConnectionResetError("reset"), NO_PROTOCOL, EndCause.UPSTREAM_RESET),  # no errno at all
    (caused(aiohttp.ClientPayloadError("lost"), OSError(errno.EPIPE, "pipe")), NO_PROTOCOL, EndCause.UPSTREAM_RESET),
    (caused(aiohttp.ClientPayloadError("lost"), ConnectionResetError()), NO_PROTOCOL, EndCause.UPSTREAM_RESET),
    (aiohttp.ClientPayloadError("... <ConnectionResetError: reset by peer>"), NO_PROTOCOL, EndCause.UPSTREAM_RESET),
])
async def test_a_read_error_is_told_apart_by_what_aiohttp_and_the_connection_kept(exc, protocol, cause: EndCause):
    assert classify_read_error(exc, protocol()) is cause


@pytest.mark.parametrize(("status", "stream", "saw_done", "cause"), [
    (200, True, True, EndCause.COMPLETE),
    (200, True, False, EndCause.EOF_WITHOUT_DONE),
    (399, True, False, EndCause.EOF_WITHOUT_DONE),
    (200, False, False, EndCause.COMPLETE),  # a JSON answer has no [DONE] to wait for
    (400, True, True, EndCause.HTTP_ERROR),  # whatever the body says
    (503, False, False, EndCause.HTTP_ERROR),
])
def test_a_clean_end_is_complete_an_http_error_or_a_stream_without_its_done(status, stream, saw_done, cause):
    assert clean_end_cause(status, stream, saw_done) is cause


async def body_after_the_connection_goes(feed: bytes, *, eof: bool = False,
                                         error: BaseException | None = None) -> tuple[bytes, BaseException | None]:
    """What reading an upstream body gives when its connection closes after `feed` (then EOF, or `error`)."""
    protocol = ResponseHandler(asyncio.get_running_loop())
    content = aiohttp.StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
    end_body_when_connection_drops(SimpleNamespace(content=content), protocol)
    content.feed_data(feed)
    if eof:
        content.feed_eof()
    if error is not None:
        content.set_exception(error)
    protocol.connection_lost(None)
    await asyncio.sleep(0)  # the closed future's callbacks
    try:
        return await asyncio.wait_for(content.read(), 1), None
    except Exception as exc:  # the outcome under test
        return b"", exc


async def test_a_body_left_unfinished_by_a_dropped_connection_fails_at_once_and_says_why():
    _, exc = await body_after_the_connection_goes(b"data: 1\n\n")
    assert isinstance(exc, MalformedBody)
    assert str(exc) == "the upstream's body could not be parsed: Server disconnected"


async def test_a_finished_body_or_one_aiohttp_already_failed_is_left_as_it_is():
    assert await body_after_the_connection_goes(b"data: 1\n\n", eof=True) == (b"data: 1\n\n", None)
    _, exc = await body_after_the_connection_goes(b"", error=aiohttp.ClientPayloadError("aiohttp's own"))
    assert type(exc) is aiohttp.ClientPayloadError and str(exc) == "aiohttp's own"


async def test_without_a_connection_to_watch_nothing_is_done():
    loop = asyncio.get_running_loop()
    content = aiohttp.StreamReader(ResponseHandler(loop), 2**16, loop=loop)
    for protocol in (None, SimpleNamespace(closed=None)):
        end_body_when_connection_drops(SimpleNamespace(content=content), protocol)
    assert content.exception() is None and not content.is_eof()
