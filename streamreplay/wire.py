"""HTTP details shared by the recording proxy, the replay server and the scripted upstream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

# the redaction rules live in streamreplay.redact; these names stay importable from here
from streamreplay.redact import REDACTED as REDACTED
from streamreplay.redact import SECRET_HEADERS as SECRET_HEADERS
from streamreplay.redact import SECRET_QUERY_PARAMS as SECRET_QUERY_PARAMS
from streamreplay.redact import redact_headers as redact_headers
from streamreplay.redact import redact_query as redact_query

# RFC 9110 section 7.6.1, plus headers whose value stops being true once a hop re-frames the body.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

FAULT_HEADER = "X-Streamreplay-Fault"
#: the largest request body the recording proxy and the replay server accept unless told otherwise
DEFAULT_MAX_BODY = 32 * 1024 * 1024

log = logging.getLogger("streamreplay")


def forwardable(headers: Iterable[tuple[str, str]], drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """Headers minus hop-by-hop ones (the standard ones, and those a `Connection` header names: RFC 9110
    7.6.1) and any named in `drop` (lower case)."""
    headers = list(headers)
    named = {token.strip().lower() for k, v in headers if k.lower() == "connection" for token in v.split(",")}
    dropped = HOP_BY_HOP | named | frozenset(drop)
    return CIMultiDict((k, v) for k, v in headers if k.lower() not in dropped)


def openai_error(
    status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
    param: str | None = None,
) -> web.Response:
    """An error answered by streamreplay itself, in the shape OpenAI clients parse."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={"x-streamreplay-error": code or type},
    )


def refuse_request(request: web.BaseRequest) -> web.Response | None:
    """The answer to a request no streamreplay server serves: absolute URIs and CONNECT (it is not an
    open proxy) and paths with dot segments (they would leave the base)."""
    if request.method == "CONNECT" or not request.raw_path.startswith("/"):
        return openai_error(400, "streamreplay is not an open proxy: only paths under its base URL are served",
                            code="not_a_proxy")
    raw_path = request.raw_path.split("?", 1)[0]
    if any(seg in ("..", ".") for seg in request.path.split("/")) or "%2e" in raw_path.lower():
        return openai_error(400, "path leaves the base URL", code="bad_path")
    return None


def reset_connection(request: web.BaseRequest) -> None:
    """Abort the client's connection with a TCP reset (SO_LINGER 0), never a clean FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def close_mid_body(request: web.BaseRequest) -> None:
    """Close the connection after what was written, without ending the body (no chunked terminator)."""
    transport = request.transport
    if transport is not None:
        transport.close()


@web.middleware
async def openai_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every answer streamreplay makes itself is in OpenAI's error shape: refusals before routing
    (CONNECT has no path to route), aiohttp's own 4xx, and anything unexpected as a 500.

    This is where `refuse_request` runs, once for every route: the handlers behind it never see a request
    it refuses."""
    refusal = refuse_request(request)
    if refusal is not None:
        return refusal
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return openai_error(exc.status, exc.reason or "error", code=f"http_{exc.status}")
    except (ConnectionError, asyncio.CancelledError):
        raise
    except Exception as exc:  # a bug of ours must still reach the client as an API error, and be logged
        log.exception("streamreplay failed on %s %s", request.method, request.path)
        return openai_error(500, f"streamreplay internal error: {type(exc).__name__}: {exc}", type="server_error",
                            code="streamreplay_internal_error")
