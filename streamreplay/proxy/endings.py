"""Telling how an upstream response stopped, from what aiohttp raised while reading it."""

from __future__ import annotations

import asyncio
import errno

import aiohttp

from streamreplay.endcause import EndCause


def classify_read_error(exc: BaseException, protocol: object | None) -> EndCause:
    """The end cause of a body read that raised `exc`.

    aiohttp reports a reset and a plain close mid-body as the same ClientPayloadError; the
    connection's protocol keeps the OS error that tells them apart.
    """
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return EndCause.UPSTREAM_TIMEOUT
    lost = protocol.exception() if protocol is not None and hasattr(protocol, "exception") else None
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
