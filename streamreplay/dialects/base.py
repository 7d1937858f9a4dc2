"""What the rest of streamreplay asks a dialect: the one place a provider's wire format is understood.

A dialect is one provider's streaming API (OpenAI chat.completions, the Responses API, Anthropic
Messages, Azure OpenAI, Ollama). Recording is byte-level and needs none of this; everything that
*reads* a stream does: the recorder's terminal-event check, the summary `ls` and `show` print, the
timeline, `diagnose`, the faults that rewrite events (`drop-done`, `drop-finish`, `error-event`,
`corrupt`) and the stream <-> non-stream conversion. Each dialect is one subclass of `Dialect`,
registered by name in `streamreplay.dialects`; nothing else branches on the provider.

Recordings hold whatever an upstream sent, so no method here raises on malformed input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from streamreplay.sse import Assembled, Event, SSEParser

#: bytes of the previous read kept to find a terminal marker split across two reads
SEAM = 48


class Parser(Protocol):
    """Bytes in, events out (`SSEParser`, `LineParser`)."""

    problems: list[str]

    def feed(self, data: bytes) -> list[Event]: ...

    def close(self) -> list[Event]: ...


class Assembler(Protocol):
    """Events in, one `Assembled` answer out."""

    def feed_event(self, ev: Event) -> None: ...

    def feed_json(self, obj: Any) -> None: ...

    def result(self) -> Assembled: ...


class LineParser:
    """Newline-delimited JSON (Ollama's stream): each non-empty line is one event, its `data` the line.

    A last line without its newline is still an event (a client reads it too) but is noted in
    `problems`, as an unterminated SSE event is."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.bytes_seen = 0
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Event]:
        self.bytes_seen += len(data)
        start = len(self._buf)
        self._buf += data
        origin = self.bytes_seen - len(self._buf)  # where the buffer starts in the stream
        out: list[Event] = []
        pos = 0
        nl = self._buf.find(b"\n", start)
        while nl != -1:
            self._line(bytes(self._buf[pos:nl]), origin + pos, out)
            pos = nl + 1
            nl = self._buf.find(b"\n", pos)
        del self._buf[:pos]
        return out

    def close(self) -> list[Event]:
        out: list[Event] = []
        if self._buf.strip():
            self.problems.append(f"trailing unterminated line at end of stream (byte {self.bytes_seen})")
            self._line(bytes(self._buf), self.bytes_seen - len(self._buf), out)
        self._buf.clear()
        return out

    def _line(self, raw: bytes, at: int, out: list[Event]) -> None:
        """One line, `at` its offset in the stream."""
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            # the bad byte's own offset, as SSEParser gives it (not the end of the read, less the line)
            self.problems.append(f"undecodable UTF-8 in line at byte {at + e.start}: {e.reason}")
            text = raw.decode("utf-8", errors="replace")
        out.append(Event(text))


_SSE_BLOCK = re.compile(rb"(?s).*?(?:\r\n\r\n|\n\n|\r\r|\r\n\n|\n\r\n|\Z)")
_SSE_STARTS = (b"data:", b"event:", b"id:", b"retry:", b":")
_BOM = b"\xef\xbb\xbf"


def sse_blocks(body: bytes) -> list[bytes]:
    """An SSE body split into its event blocks, each with its blank line; joined they give the body back."""
    return [m.group(0) for m in _SSE_BLOCK.finditer(body) if m.group(0)]


def drop_sse_events(body: bytes, drop: Callable[[Event], bool]) -> bytes:
    """The body without the events `drop` picks; every other byte as it was."""
    kept = []
    for block in sse_blocks(body):
        events = SSEParser().feed(block)
        if not (events and all(drop(e) for e in events)):
            kept.append(block)
    return b"".join(kept)


def _json_type(data: str) -> str | None:
    """The `type` member of an event's JSON object, if it has one."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    kind = obj.get("type") if isinstance(obj, dict) else None
    return kind if isinstance(kind, str) else None


def openai_error_json(message: str, code: int | None = None) -> bytes:
    """OpenAI's error object, as its API sends it in a body or an event."""
    return json.dumps({"error": {"message": message, "type": "server_error", "param": None,
                                 "code": str(code) if code else None}}).encode()


class Dialect:
    """One provider's streaming API. Subclasses set the class attributes and override what differs
    from an OpenAI-style SSE stream."""

    #: the registry key, shown by `ls` and `show`: "chat", "responses", "anthropic", "azure", "ollama"
    name: ClassVar[str]
    #: how people name it: "OpenAI chat.completions"
    label: ClassVar[str]
    #: its terminal marker, as messages name it: "[DONE]", "message_stop"
    terminal: ClassVar[str]
    #: the field that says why the answer stopped, as messages name it: "finish_reason", "stop_reason"
    stop_field: ClassVar[str]
    #: stop values that mean a token limit cut the answer
    length_reasons: ClassVar[frozenset[str]] = frozenset({"length"})
    #: the response content type of its streams
    stream_content_type: ClassVar[str] = "text/event-stream"
    #: the default client that reads it in `matrix` (a `Client` id); set by each dialect
    matrix_tape: ClassVar[str] = ""

    # -- which requests

    def recognises(self, path: str) -> bool:
        """Whether a request path (relative to the upstream's base) is this dialect's."""
        raise NotImplementedError

    def stop_said(self, reason: str | None) -> str:
        """A stored stop reason in this API's own words: "finish_reason length"."""
        return f"{self.stop_field} {reason}"

    def wants_stream(self, request: dict[str, Any]) -> bool:
        """Whether a request body asks for a stream."""
        return bool(request.get("stream"))

    def stream_and_model(self, request: dict[str, Any]) -> tuple[bool, str | None]:
        """What an exchange's row says of its request body: whether it asked for a stream, and its model.
        The recorder and a cassette's reader both ask this, so a recording reads back as it was stored."""
        model = request.get("model")
        return self.wants_stream(request), model if isinstance(model, str) else None

    def is_stream(self, content_type: str | None) -> bool:
        """Whether a response with this content type is a stream of this dialect."""
        return self.stream_content_type in (content_type or "").lower()

    def looks_like_stream(self, head: bytes) -> bool:
        """Whether the first bytes of a body read as a stream (a content type can lie)."""
        return head.removeprefix(_BOM).lstrip().startswith(_SSE_STARTS)

    # -- the hot path: called on every read while recording and replaying; keep it a byte search

    def find_terminal(self, data: bytes) -> bool:
        """Whether these bytes hold the stream's terminal marker. A marker split across two reads is
        found by calling again on the previous read's last `SEAM` bytes plus the next read's first."""
        raise NotImplementedError

    # -- reading

    def parser(self) -> Parser:
        return SSEParser()

    def assembler(self) -> Assembler:
        raise NotImplementedError

    def event_kind(self, ev: Event) -> str:
        """What one event of a stream is, in this API's own terms, for comparing the shape of two answers
        (`streamreplay.drift`): by default its data's `type`, else its `event:` name. Never its text."""
        kind = _json_type(ev.data)
        return kind or ev.event or "data"

    def assemble_stream(self, body: bytes) -> Assembled:
        parser, assembler = self.parser(), self.assembler()
        for ev in parser.feed(body) + parser.close():
            assembler.feed_event(ev)
        result = assembler.result()
        result.problems[:0] = parser.problems
        return result

    def assemble_json(self, body: bytes) -> Assembled:
        assembler = self.assembler()
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError) as e:
            result = assembler.result()
            result.problems.append(f"body: invalid JSON: {e}")
            return result
        assembler.feed_json(obj)
        return assembler.result()

    def assemble(self, body: bytes, content_type: str | None) -> Assembled:
        """Stream or whole body, by content type, else by the look of its first bytes."""
        ctype = (content_type or "").lower()
        if self.is_stream(ctype):
            return self.assemble_stream(body)
        if "json" in ctype:
            return self.assemble_json(body)
        return self.assemble_stream(body) if self.looks_like_stream(bytes(body[:64])) else self.assemble_json(body)

    # -- faults

    def drop_terminal(self, body: bytes) -> bytes:
        """`drop-done`: the body without its terminal event(s)."""
        raise NotImplementedError

    def drop_stop(self, body: bytes) -> bytes:
        """`drop-finish`: the body with every stop reason set to null."""
        raise NotImplementedError

    def error_event(self, message: str) -> bytes:
        """`error-event`: the event this API sends when it fails mid-stream."""
        raise NotImplementedError

    def error_body(self, message: str, status: int) -> bytes:
        """`status`: the JSON body this API answers an HTTP error with."""
        return openai_error_json(message, status)

    _PAYLOAD = re.compile(rb"data: ?(\{[^\r\n]*)")

    def payload_span(self, data: bytes) -> tuple[int, int] | None:
        """`corrupt`: where the first JSON payload in these bytes starts and ends."""
        match = self._PAYLOAD.search(data)
        return match.span(1) if match else None

    # -- stream <-> whole answer

    def whole_body(self, stream_body: bytes) -> dict[str, Any] | None:
        """The non-stream answer a streamed recording stands for (None: this recording cannot be one)."""
        return None

    def stream_events(self, whole: dict[str, Any]) -> list[bytes] | None:
        """A whole answer as this API's stream, one element per event (None: it cannot be one)."""
        return None
