"""How an exchange ended: the vocabulary every command speaks (DESIGN.md, "End causes")."""

from __future__ import annotations

from enum import Enum


class EndCause(str, Enum):
    COMPLETE = "complete"
    EOF_WITHOUT_DONE = "eof_without_done"
    UPSTREAM_CLOSED = "upstream_closed"
    UPSTREAM_RESET = "upstream_reset"
    UPSTREAM_MALFORMED = "upstream_malformed"  # the body's framing could not be parsed (a bad chunk-size line)
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    HTTP_ERROR = "http_error"
    CLIENT_LEFT = "client_left"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value


class Ending(str, Enum):
    """How the bytes of a response stop on the wire; what replay must reproduce.

    Three endings reach httpx-based clients as three different outcomes (a normal end,
    RemoteProtocolError, ReadError), so they are never merged.
    """

    CLEAN = "clean"  # the body is finished (chunked terminator or full content-length), then EOF
    CLOSE = "close"  # the connection is closed with the body unfinished
    RESET = "reset"  # TCP reset

