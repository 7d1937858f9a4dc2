"""Anthropic Messages (`POST /v1/messages`, `stream: true`): `message_start`, `content_block_*`, `ping`,
`message_delta` (stop_reason, usage), `message_stop`, `error`.

Every event is an `event: <name>` line, a `data: <JSON>` line whose "type" repeats the name, and a blank
line. The SDK dispatches on the event line, so the event line is what counts when the two disagree.
"""

from __future__ import annotations

import json
import re
from typing import Any

from streamreplay.dialects.base import Assembler, Dialect, drop_sse_events
from streamreplay.jsonvalues import as_dict as _dict
from streamreplay.jsonvalues import as_int as _int
from streamreplay.jsonvalues import as_list as _list
from streamreplay.jsonvalues import as_str as _str
from streamreplay.sse import Assembled, Event

#: the `error.type` Anthropic's error reference gives each HTTP status; others by class (4xx, 5xx)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

# An `event: message_stop` line, or a "type" member set to "message_stop". Neither can match inside a
# JSON string value: a string holds no raw line end, and every quote in it is escaped.
_TERMINAL = re.compile(rb'(?:\A|[\r\n])event: ?message_stop[ \t]*[\r\n]|"type"\s*:\s*"message_stop"')
_STOP_REASON = re.compile(rb'("stop_reason"\s*:\s*)"[^"]*"')
_PING = b'event: ping\ndata: {"type": "ping"}\n\n'  # the API writes this one payload with spaces

_MESSAGE_EVENTS = frozenset({"message_start", "content_block_start", "content_block_delta", "content_block_stop",
                             "message_delta", "message_stop"})

#: characters of text (or tool input JSON) per synthesized delta
DELTA_SIZE = 16


def error_type(status: int) -> str:
    """The `error.type` Anthropic answers this HTTP status with."""
    return ERROR_TYPES.get(status) or ("invalid_request_error" if 400 <= status < 500 else "api_error")


def error_json(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def sse_event(name: str, payload: dict[str, Any]) -> bytes:
    """One event as the API writes it: the event line, the data line, a blank line."""
    return f"event: {name}\ndata: {_compact(payload)}\n\n".encode()


def _event_type(ev: Event) -> str | None:
    """The event's name: its event line, else the "type" of its data."""
    if ev.event:
        return ev.event
    try:
        obj = json.loads(ev.data)
    except (ValueError, RecursionError):
        return None
    return _str(obj.get("type")) if isinstance(obj, dict) else None


class AnthropicAssembler:
    """Messages stream events (or a whole Message) in, one `Assembled` out; tool_use blocks come out in
    the chat `tool_calls` shape, the stop reason in Anthropic's own words (end_turn, max_tokens, ...)."""

    def __init__(self) -> None:
        self.kind = "unknown"
        self.id: str | None = None
        self.model: str | None = None
        self.role: str | None = "assistant"
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.usage: dict | None = None
        self.done = False
        self.error: dict | None = None
        self.events = 0
        self.problems: list[str] = []
        #: content blocks by their index: {"type": "text", "text": [...]} or a tool_use with "id", "name",
        #: "input" (from its start) and "json" (its input_json_delta pieces)
        self.blocks: dict[int, dict[str, Any]] = {}

    # -- in

    def feed_event(self, ev: Event) -> None:
        n = self.events
        self.events += 1
        try:
            obj = json.loads(ev.data)
        except (ValueError, RecursionError) as e:
            self.problems.append(f"event {n}: invalid JSON: {e}")
            return
        if not isinstance(obj, dict):
            self.problems.append(f"event {n}: expected a JSON object, got {type(obj).__name__}")
            return
        name = ev.event or _str(obj.get("type"))
        if name is None:
            self.problems.append(f"event {n}: no event name and no \"type\" (keys {sorted(obj)[:8]})")
            return
        try:
            self._event(n, name, obj)
        except Exception as e:  # upstream output is arbitrary; a diagnosis must still come out
            self.problems.append(f"event {n}: internal error: {type(e).__name__}: {e}")

    def feed_json(self, obj: Any) -> None:
        """A whole non-stream body: a Message, or an error."""
        try:
            self._body(obj)
        except Exception as e:  # see feed_event
            self.problems.append(f"body: internal error: {type(e).__name__}: {e}")

    def _body(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            self.problems.append(f"body: expected a JSON object, got {type(obj).__name__}")
            return
        if obj.get("type") == "error" or obj.get("error") is not None:
            self.error = _dict(obj.get("error")) or {"message": str(obj.get("error"))}
            return
        if obj.get("type") != "message":
            self.problems.append(f"body: unrecognised JSON object with keys {sorted(obj)[:8]}")
            return
        self._message(obj)
        for index, block in enumerate(_list(obj.get("content"))):
            block = _dict(block)
            if block.get("type") == "text":
                self._text_block(index).append(_str(block.get("text")) or "")
            elif block.get("type") == "tool_use":
                self._tool_block(index, block)
        self.stop_reason = _str(obj.get("stop_reason"))
        self.stop_sequence = _str(obj.get("stop_sequence"))
        self.done = True

    def _event(self, n: int, name: str, obj: dict) -> None:
        if name == "ping":
            return
        if name == "error":
            error = obj.get("error")
            self.error = error if isinstance(error, dict) else {"message": str(error)}
            return
        if name not in _MESSAGE_EVENTS:
            return  # an event type this does not know is skipped, as the SDK skips it
        self.kind = "message"
        if name == "message_start":
            message = obj.get("message")
            if not isinstance(message, dict):
                self.problems.append(f"event {n}: message_start without a message object")
                return
            self._message(message)
        elif name == "content_block_start":
            index, block = _int(obj.get("index")), obj.get("content_block")
            if index is None or not isinstance(block, dict):
                self.problems.append(f"event {n}: content_block_start without an index or a content_block")
            elif block.get("type") == "text":
                self._text_block(index).append(_str(block.get("text")) or "")
            elif block.get("type") == "tool_use":
                self._tool_block(index, block)
        elif name == "content_block_delta":
            self._delta(n, _int(obj.get("index")), obj.get("delta"))
        elif name == "message_delta":
            delta = _dict(obj.get("delta"))
            self.stop_reason = _str(delta.get("stop_reason")) or self.stop_reason
            self.stop_sequence = _str(delta.get("stop_sequence")) or self.stop_sequence
            self._merge_usage(obj.get("usage"))
        elif name == "message_stop":
            self.done = True
        # content_block_stop carries nothing

    def _delta(self, n: int, index: int | None, delta: Any) -> None:
        if index is None or not isinstance(delta, dict):
            self.problems.append(f"event {n}: content_block_delta without an index or a delta")
            return
        kind = delta.get("type")
        if kind == "text_delta":
            self._text_block(index).append(_str(delta.get("text")) or "")
        elif kind == "input_json_delta":
            piece = _str(delta.get("partial_json")) or ""
            block = self.blocks.get(index)
            if block is None or block["type"] != "tool_use":
                if not piece:
                    return  # the empty piece every tool input opens with, read alone: nothing to show
                # a delta read alone (the timeline reads events one by one), or one for a block never started
                block = self._tool_block(index, {})
            block["json"].append(piece)

    def _message(self, message: dict) -> None:
        self.kind = "message"
        self.id = _str(message.get("id")) or self.id
        self.model = _str(message.get("model")) or self.model
        self.role = _str(message.get("role")) or self.role
        self._merge_usage(message.get("usage"))

    def _merge_usage(self, usage: Any) -> None:
        # message_delta's usage is cumulative and may leave fields out (or null): they keep their start value
        if isinstance(usage, dict):
            self.usage = {**(self.usage or {}), **{k: v for k, v in usage.items() if v is not None}}

    def _text_block(self, index: int) -> list[str]:
        block = self.blocks.setdefault(index, {"type": "text", "text": []})
        return block["text"] if block["type"] == "text" else []

    def _tool_block(self, index: int, start: dict) -> dict[str, Any]:
        block = {"type": "tool_use", "id": _str(start.get("id")), "name": _str(start.get("name")) or "",
                 "input": start.get("input"), "json": []}
        self.blocks[index] = block
        return block

    # -- out

    @property
    def text(self) -> str:
        return "".join("".join(b["text"]) for _, b in sorted(self.blocks.items()) if b["type"] == "text")

    def tool_calls(self) -> list[dict[str, Any]]:
        """The tool_use blocks in the chat `tool_calls` shape, numbered 0.. in block order."""
        calls = []
        for _, block in sorted(self.blocks.items()):
            if block["type"] == "tool_use":
                calls.append({"index": len(calls), "id": block["id"], "type": "function",
                              "function": {"name": block["name"], "arguments": _arguments(block)}})
        return calls

    def result(self) -> Assembled:
        return Assembled(
            kind=self.kind,
            id=self.id,
            model=self.model,
            text=self.text,
            finish_reason=self.stop_reason,
            tool_calls=self.tool_calls(),
            usage=self.usage,
            done=self.done,
            error=self.error,
            events=self.events,
            problems=list(self.problems),
            role=self.role,
        )

    def message(self) -> dict[str, Any] | None:
        """The Message the events stand for, as the API answers a non-stream request; None when they
        cannot be one (no message_start, an error, a tool input that is not a JSON object)."""
        if self.kind != "message" or self.error is not None:
            return None
        content: list[dict[str, Any]] = []
        for _, block in sorted(self.blocks.items()):
            if block["type"] == "text":
                content.append({"type": "text", "text": "".join(block["text"])})
                continue
            try:
                tool_input = json.loads(_arguments(block) or "{}")
            except (ValueError, RecursionError):
                return None
            if not isinstance(tool_input, dict):
                return None
            content.append({"type": "tool_use", "id": block["id"], "name": block["name"], "input": tool_input})
        return {"id": self.id, "type": "message", "role": self.role or "assistant", "content": content,
                "model": self.model, "stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence,
                "usage": self.usage or {}}


def _arguments(block: dict[str, Any]) -> str:
    # A stream sends the input as input_json_delta pieces after an empty `input` in the block's start; a
    # whole Message has it whole. A tool that takes nothing streams no piece: its arguments stay "".
    if block["json"]:
        return "".join(block["json"])
    return _compact(block["input"]) if isinstance(block["input"], dict) and block["input"] else ""


def message_events(message: dict[str, Any]) -> list[bytes]:
    """A Message as the API streams it: message_start (empty content, output_tokens 1), each block's
    start, a ping after the first, its deltas and stop, message_delta (stop reason, usage), message_stop."""
    usage = _dict(message.get("usage"))
    start = {k: message.get(k) for k in ("id", "type", "role")}
    start.update(content=[], model=message.get("model"), stop_reason=None, stop_sequence=None,
                 usage={**usage, "output_tokens": 1} if usage else {})
    events = [sse_event("message_start", {"type": "message_start", "message": start})]
    blocks = [b for b in _list(message.get("content")) if isinstance(b, dict)]
    for index, block in enumerate(blocks):
        if block.get("type") == "tool_use":
            head = {"type": "tool_use", "id": block.get("id"), "name": block.get("name"), "input": {}}
            key, kind, whole = "partial_json", "input_json_delta", _compact(block.get("input") or {})
            pieces = [""] + _pieces(whole)  # the API opens every tool input with an empty piece
        else:
            head, key, kind = {"type": "text", "text": ""}, "text", "text_delta"
            pieces = _pieces(_str(block.get("text")) or "")
        events.append(sse_event("content_block_start", {"type": "content_block_start", "index": index,
                                                         "content_block": head}))
        if index == 0:
            events.append(_PING)
        events += [sse_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                     "delta": {"type": kind, key: p}}) for p in pieces]
        events.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": index}))
    if not blocks:
        events.append(_PING)
    delta = {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")}
    output = {"output_tokens": usage["output_tokens"]} if "output_tokens" in usage else {}
    events.append(sse_event("message_delta", {"type": "message_delta", "delta": delta, "usage": output}))
    events.append(sse_event("message_stop", {"type": "message_stop"}))
    return events


def _pieces(text: str) -> list[str]:
    return [text[i : i + DELTA_SIZE] for i in range(0, len(text), DELTA_SIZE)]


class Anthropic(Dialect):
    name = "anthropic"
    label = "Anthropic Messages"
    terminal = "message_stop"
    stop_field = "stop_reason"
    length_reasons = frozenset({"max_tokens"})
    matrix_tape = "anthropic"

    def recognises(self, path: str) -> bool:
        return path.rstrip("/").endswith("/messages")

    def find_terminal(self, data: bytes) -> bool:
        return b"message_stop" in data and _TERMINAL.search(data) is not None

    def assembler(self) -> Assembler:
        return AnthropicAssembler()

    def event_kind(self, ev: Event) -> str:
        return _event_type(ev) or "data"  # the event line first, as the SDK dispatches

    def drop_terminal(self, body: bytes) -> bytes:
        return drop_sse_events(body, lambda ev: _event_type(ev) == "message_stop")

    def drop_stop(self, body: bytes) -> bytes:
        return _STOP_REASON.sub(rb"\1null", body)

    def error_event(self, message: str) -> bytes:
        # overloaded_error: the error the streaming reference names as the one a stream meets mid-answer
        # (a 529 before the stream begins); api_error is the unexpected internal one.
        return sse_event("error", error_json("overloaded_error", message))

    def error_body(self, message: str, status: int) -> bytes:
        return _compact(error_json(error_type(status), message)).encode()

    def whole_body(self, stream_body: bytes) -> dict[str, Any] | None:
        parser, assembler = self.parser(), AnthropicAssembler()
        for ev in parser.feed(stream_body) + parser.close():
            assembler.feed_event(ev)
        return assembler.message()

    def stream_events(self, whole: dict[str, Any]) -> list[bytes] | None:
        return message_events(whole) if whole.get("type") == "message" else None
