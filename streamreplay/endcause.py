"""How an exchange ended: the vocabulary every command speaks (DESIGN.md, "End causes").

`CAUSES` holds, for each `EndCause`, everything the commands say or do about it: the wire ending
replay gives it, who ended the exchange, how the timeline draws it and what `diagnose` says when the
cause alone decides. Adding an end cause is one member of `EndCause` and one entry in `CAUSES`.
"""

from __future__ import annotations

from dataclasses import dataclass
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

    @property
    def info(self) -> EndCauseInfo:
        return CAUSES[self]


class Ending(str, Enum):
    """How the bytes of a response stop on the wire; what replay must reproduce.

    Three endings reach httpx-based clients as three different outcomes (a normal end,
    RemoteProtocolError, ReadError), so they are never merged.
    """

    CLEAN = "clean"  # the body is finished (chunked terminator or full content-length), then EOF
    CLOSE = "close"  # the connection is closed with the body unfinished
    RESET = "reset"  # TCP reset


#: who ended an exchange, as `diagnose` says it ("ended by the client")
ENDED_BY = ("client", "upstream", "daemon", "nobody")
#: how bad an ending looks, for the colour of its badge
TONES = ("ok", "warning", "failed", "client", "neutral")


@dataclass(frozen=True)
class EndCauseInfo:
    meaning: str  # what the cause means, as the README's "End causes" table says it
    wire: Ending  # how the upstream's bytes stopped: the ending replay gives the recording
    ended_by: str  # one of ENDED_BY
    marker: str  # the timeline's marker kind: end stop closed reset timeout error client-left
    label: str  # the words beside that marker
    tone: str  # one of TONES
    #: what `diagnose` says when the cause alone decides it (else it reads the recording)
    summary: str | None = None
    fix: str | None = None

    @property
    def upstream_broke(self) -> bool:
        """The upstream cut the stream mid-body: `diagnose` reads nothing more from the recording."""
        return self.ended_by == "upstream" and self.wire is not Ending.CLEAN


CAUSES: dict[EndCause, EndCauseInfo] = {
    EndCause.COMPLETE: EndCauseInfo(
        "the stream's terminal event (`data: [DONE]`; `response.completed`, `message_stop`, `done: true` in the "
        "other dialects) or a whole non-stream body, then the end of the body",
        Ending.CLEAN, "nobody", "end", "upstream end · complete", "ok"),
    EndCause.EOF_WITHOUT_DONE: EndCauseInfo(
        "a clean end of the body, but the stream never sent its terminal event",
        Ending.CLEAN, "upstream", "stop", "clean end, no terminal event", "warning"),
    EndCause.UPSTREAM_CLOSED: EndCauseInfo(
        "the upstream closed the connection mid-body (no chunked terminator)",
        Ending.CLOSE, "upstream", "closed", "upstream closed mid-body", "failed",
        summary="the upstream closed the connection mid-body (no chunked end)",
        fix="clients raise httpx.RemoteProtocolError; retry the request"),
    EndCause.UPSTREAM_RESET: EndCauseInfo(
        "TCP reset mid-body",
        Ending.RESET, "upstream", "reset", "upstream reset (TCP RST)", "failed",
        summary="the upstream reset the connection mid-stream",
        fix="clients raise httpx.ReadError; retry the request"),
    EndCause.UPSTREAM_MALFORMED: EndCauseInfo(
        "the body's framing could not be parsed (e.g. a bad chunk-size line); the client's connection is closed "
        "mid-body there",
        Ending.CLOSE, "upstream", "closed", "upstream framing broke", "failed",
        summary="the upstream's body framing broke (an unreadable chunk header): the connection was dropped there",
        fix="clients raise httpx.RemoteProtocolError; look at the upstream or a proxy in front of it, then retry"),
    EndCause.UPSTREAM_TIMEOUT: EndCauseInfo(
        "no byte for `--upstream-timeout` seconds (before the head: a 504 in OpenAI's error shape)",
        Ending.CLOSE, "upstream", "timeout", "upstream went silent (timeout)", "failed",
        summary="the upstream went silent past --upstream-timeout",
        fix="raise the timeout, or find out why the upstream stalled"),
    EndCause.UPSTREAM_UNREACHABLE: EndCauseInfo(
        "no connection; the client got a 502 in OpenAI's error shape",
        Ending.CLEAN, "upstream", "error", "upstream unreachable", "failed",
        fix="check the upstream URL and that it is up; clients retry this (the openai SDK twice)"),
    EndCause.HTTP_ERROR: EndCauseInfo(
        "a 4xx or 5xx status from the upstream (a redirect is relayed and ends `complete`)",
        Ending.CLEAN, "upstream", "error", "HTTP error", "failed"),
    EndCause.CLIENT_LEFT: EndCauseInfo(
        "the client closed first; `client_left_at_chunk` and `client_left_ns` say where and when, `upstream_end` "
        "says how the upstream ended",
        # a recording whose upstream end is unknown (the proxy stopped reading too) stopped mid-body
        Ending.CLOSE, "client", "client-left", "client left", "client"),
    EndCause.INTERRUPTED: EndCauseInfo(
        "the daemon stopped (SIGTERM) or died (marked so at the next start) mid-exchange; what had arrived is kept "
        "and summarized",
        Ending.CLOSE, "daemon", "closed", "recording interrupted", "neutral",
        summary="the recording daemon stopped mid-exchange; the recording holds what had arrived"),
}


def known_cause(value: str | None) -> EndCause | None:
    """The EndCause a stored string names; None for None and for a cause this version does not know."""
    try:
        return EndCause(value) if value is not None else None
    except ValueError:
        return None


def wire_ending(cause: str | None) -> Ending:
    """The wire ending of a recorded cause (an unknown one, or none, ends clean)."""
    known = known_cause(cause)
    return CAUSES[known].wire if known is not None else Ending.CLEAN
