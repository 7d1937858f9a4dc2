"""Telling how an upstream response stopped, from what aiohttp raised while reading it."""

from __future__ import annotations

import asyncio
import errno

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError

from streamreplay.endcause import EndCause


class MalformedBody(aiohttp.ClientPayloadError):
    """The upstream's body framing could not be parsed (e.g. `zz\\r\\n` where a chunk size belongs)."""


def end_body_when_connection_drops(upstream: aiohttp.ClientResponse, protocol: object | None) -> None:
    """Make a body read fail as soon as the upstream connection is gone with the body unfinished.

    When aiohttp's client cannot parse the body's framing it closes the connection and cancels the read
    timeout, but leaves the body reader waiting: the client through the proxy would hang forever while
    a direct client errors at once. So when the connection closes, an unfinished body is ended here.
    """
    closed = getattr(protocol, "closed", None)
    if not isinstance(closed, asyncio.Future):
        return
    content = upstream.content

    def ended(_: object) -> None:
        if content.is_eof() or content.exception() is not None:
            return  # finished, or aiohttp said why itself
        why = protocol.exception() if hasattr(protocol, "exception") else None
        content.set_exception(MalformedBody(f"the upstream's body could not be parsed: {why}"))

    closed.add_done_callback(ended)


def classify_read_error(exc: BaseException, protocol: object | None) -> EndCause:
    """The end cause of a body read that raised `exc`.

    aiohttp reports a reset and a plain close mid-body as the same ClientPayloadError; the
    connection's protocol keeps the OS error that tells them apart.
    """
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return EndCause.UPSTREAM_TIMEOUT
    lost = protocol.exception() if protocol is not None and hasattr(protocol, "exception") else None
    if isinstance(exc, MalformedBody) or isinstance(lost, HttpProcessingError):
        return EndCause.UPSTREAM_MALFORMED
    for err in (lost, exc, exc.__cause__):
        if isinstance(err, OSError) and err.errno in (errno.ECONNRESET, errno.EPIPE):
            return EndCause.UPSTREAM_RESET
        if isinstance(err, ConnectionResetError):
            return EndCause.UPSTREAM_RESET
    if "ConnectionResetError" in str(exc):
        return EndCause.UPSTREAM_RESET
    return EndCause.UPSTREAM_CLOSED


def clean_end_cause(status: int, stream: bool, saw_done: bool) -> EndCause:
    """The end cause of a body that ended cleanly."""
    if status >= 400:
        return EndCause.HTTP_ERROR
    if stream and not saw_done:
        return EndCause.EOF_WITHOUT_DONE
    return EndCause.COMPLETE
