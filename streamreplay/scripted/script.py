"""What the scripted upstream does with one request (`Script`), what it wrote (`Sent`), and the
shape of one provider's wire format (`Wire`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from streamreplay.exchange import json_text

CREATED = 1732000000  # fixed, so that every run sends the same bytes
FINGERPRINT = "fp_0ba0d124f1"


@dataclass
class Script:
    """What the upstream does with one request."""

    text: str = "Hello! How can I help you today?"
    #: the content deltas; by default the text split after each space
    pieces: list[str] | None = None
    #: seconds before the response head
    first_delay: float = 0.0
    #: seconds between events
    gap: float = 0.0
    #: extra seconds before event i (events count from 0: the role chunk is event 0)
    pauses: dict[int, float] = field(default_factory=dict)
    #: events per network write; 0 writes the whole stream at once
    events_per_write: int = 1
    #: split every event in two writes (an event across reads), half a gap apart
    split_events: bool = False
    #: "done", "no_done" (clean end without [DONE]), "close" (mid-body), "reset" (TCP reset)
    ending: str = "done"
    #: for close/reset: events written before the ending (default: each wire's `default_stop_after`;
    #: chat leaves out its last two events: the finish chunk and the usage chunk, or without usage the
    #: last text piece, so a chat close cuts mid-text)
    stop_after: int | None = None
    finish_reason: str | None = "stop"
    #: non-2xx answers an OpenAI error body before any stream
    status: int = 200
    #: [{"name": ..., "arguments": "..."}]: streamed as tool_call deltas, arguments in pieces
    tool_calls: list[dict[str, str]] | None = None
    #: raw bytes to send instead of a generated body (malformed upstream output)
    raw: list[bytes] | None = None
    content_type: str | None = None
    #: spaces after colons, as llama.cpp's server writes JSON
    spaced_json: bool = False
    #: top-level fields every streamed chat chunk carries besides OpenAI's own (a provider adding a field)
    chunk_fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sent:
    """What the upstream wrote for one request."""

    path: str
    request: dict[str, Any] | None
    headers: dict[str, str]
    writes: list[bytes] = field(default_factory=list)
    write_times: list[float] = field(default_factory=list)  # time.monotonic() after each write
    finished: bool = False

    @property
    def body(self) -> bytes:
        return b"".join(self.writes)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


def dumps(obj: Any, spaced: bool) -> str:
    # json_text: a lone surrogate echoed from the request's model still makes valid UTF-8
    return json_text(obj, separators=(", ", ": ") if spaced else (",", ":"))


def split_pieces(text: str) -> list[str]:
    """Split text into token-like pieces, each word keeping its trailing space."""
    pieces, current = [], ""
    for ch in text:
        current += ch
        if ch == " ":
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces


class Wire:
    """One provider's wire format, as the scripted upstream speaks it: where it is served, how a
    streamed answer and a whole one look, and how an error body looks. Each follows the provider's
    published reference; `ScriptedUpstream` adds the timing, the chunking and the endings."""

    name: ClassVar[str]
    #: aiohttp route patterns (POST) this wire answers
    paths: ClassVar[tuple[str, ...]]
    stream_content_type: ClassVar[str] = "text/event-stream; charset=utf-8"

    def wants_stream(self, payload: dict[str, Any]) -> bool:
        return bool(payload.get("stream"))

    def stream_events(self, script: Script, payload: dict[str, Any], n: int) -> list[bytes]:
        """The streamed answer, one element per event; `n` numbers the request (for ids).
        `script.ending == "no_done"` leaves out the terminal event."""
        raise NotImplementedError

    def body(self, script: Script, payload: dict[str, Any], n: int) -> dict[str, Any]:
        """The whole (non-stream) answer."""
        raise NotImplementedError

    def error(self, status: int) -> dict[str, Any]:
        return {"error": {"message": f"scripted error {status}", "type": "server_error", "param": None,
                          "code": None}}

    def default_stop_after(self, events: list[bytes]) -> int:
        """For close/reset without `stop_after`: the events written before the ending. By default all but
        the last two never come; chat has no `[DONE]` then, so those are its finish chunk and either its
        usage chunk or its last text piece."""
        return len(events) - 2
