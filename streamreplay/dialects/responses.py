"""OpenAI's Responses API (`POST /v1/responses`, `stream: true`): SSE with `event:` lines, from
`response.created` to `response.completed` / `response.incomplete` / `response.failed`; no `[DONE]`.

Every event's data is a JSON object whose `type` repeats its `event:` name and which carries a
`sequence_number` counted from 0. The stop reason is the final response's `status` (with
`incomplete_details.reason` when it is `incomplete`); the summary maps it onto chat's words
(`streamreplay.sse.Assembler`: completed -> stop or tool_calls, max_output_tokens -> length).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from streamreplay.dialects.base import Assembler, Dialect, drop_sse_events, sse_blocks
from streamreplay.jsonvalues import as_list as _list
from streamreplay.sse import Assembler as OpenAIAssembler
from streamreplay.sse import Event, SSEParser

#: the event types that end a stream; exactly one of them ends a whole one
TERMINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")
#: the terminal event for a final `status`
TERMINAL_FOR_STATUS = {"completed": "response.completed", "incomplete": "response.incomplete",
                       "failed": "response.failed"}

_TERMINAL_WORDS = (b"response.completed", b"response.incomplete", b"response.failed")
# A terminal event, found without parsing: its `event:` line whole (a raw line break after it, which no
# JSON string holds), or `"type":"response.<end>"` as the first or the last member of a data line's
# object (OpenAI writes `type` first; pydantic-ordered servers write it last). Quotes inside a JSON
# string are escaped, so neither data form can match inside a string value; as the first member it
# cannot be a nested object's, and as the last one the line ends right after its closing brace. A line
# break before `event:` and `data:` keeps a comment holding those words from counting; so a body that
# began with its terminal event would not count either: none does (response.created comes first).
_TERMINAL = re.compile(
    rb"(?<=[\r\n])event: ?response\.(?:completed|incomplete|failed)[ \t]*[\r\n]"
    rb'|(?<=[\r\n])data: ?\{[ \t]*"type"[ \t]*:[ \t]*"response\.(?:completed|incomplete|failed)"'
    rb'|"type"[ \t]*:[ \t]*"response\.(?:completed|incomplete|failed)"[ \t]*\}[ \t]*[\r\n]'
)
_DATA_LINE = re.compile(rb"(?m)^(data: ?)([^\r\n]*)")
_WS = re.compile(r"[ \t\r\n]*")
_DECODER = json.JSONDecoder()


def event_type(ev: Event) -> str | None:
    """The event's type: its data's `type` (what the SDKs dispatch on), else its `event:` name."""
    try:
        data = json.loads(ev.data)
    except (ValueError, RecursionError):
        return ev.event
    kind = data.get("type") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else ev.event


def dumps(obj: Any) -> str:
    """Compact JSON as OpenAI writes it: UTF-8 as is; `\\u` escapes only when a lone surrogate (from a
    recorded escape) cannot be UTF-8."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":"))
    return text


def sse_event(obj: dict[str, Any]) -> bytes:
    """One event as the API writes it: the `event:` line naming its type, the data line, a blank line."""
    return f"event: {obj['type']}\ndata: {dumps(obj)}\n\n".encode()


def word_pieces(text: str) -> list[str]:
    """Token-like deltas: each word with the spaces after it."""
    return re.findall(r"\S*\s*", text)[:-1] if text else []


def chunk_pieces(text: str, size: int = 8) -> list[str]:
    """Argument deltas: `size` characters each."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def obfuscation(delta: str, n: int) -> str:
    """A deterministic stand-in for the API's random `obfuscation` padding (`stream_options.
    include_obfuscation`, on by default): it pads a delta's event to a steady size (16 characters of
    delta and padding together, as recorded API streams show), so a recording is the same every run."""
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "".join(alphabet[(n * 7 + i * 13) % len(alphabet)] for i in range(max(1, 16 - len(delta))))


def response_events(response: dict[str, Any], *, text_pieces: Callable[[str], list[str]] = word_pieces,
                    argument_pieces: Callable[[str], list[str]] = chunk_pieces, obfuscate: bool = False,
                    terminal: bool = True, ends_with: str | None = None) -> list[bytes] | None:
    """A whole `response` object as the documented stream, one element per event: response.created and
    response.in_progress (the response with status in_progress and no output yet), then for each output
    item output_item.added, its content (content_part.added, output_text.delta..., output_text.done,
    content_part.done for a message; function_call_arguments.delta..., .done for a function call) and
    output_item.done, then the terminal event its status names, or `ends_with` (left out when `terminal`
    is false). None when the object has no status a stream can end with and `ends_with` is not given."""
    status = response.get("status")
    end = ends_with or (TERMINAL_FOR_STATUS.get(status) if isinstance(status, str) else None)
    if end is None:
        return None
    out: list[bytes] = []

    def add(kind: str, **fields: Any) -> None:
        out.append(sse_event({"type": kind, "sequence_number": len(out), **fields}))

    def delta(kind: str, piece: str, **where: Any) -> None:
        padding = {"obfuscation": obfuscation(piece, len(out))} if obfuscate else {}
        logprobs = {"logprobs": []} if kind == "response.output_text.delta" else {}
        add(kind, **where, delta=piece, **logprobs, **padding)

    start = {**response, "status": "in_progress", "error": None, "incomplete_details": None, "output": [],
             "usage": None}
    add("response.created", response=start)
    add("response.in_progress", response=start)
    for index, item in enumerate(o for o in _list(response.get("output")) if isinstance(o, dict)):
        item_id = item.get("id")
        if item.get("type") == "message":
            add("response.output_item.added", output_index=index,
                item={**item, "status": "in_progress", "content": []})
            for part_index, part in enumerate(p for p in _list(item.get("content")) if isinstance(p, dict)):
                where = {"item_id": item_id, "output_index": index, "content_index": part_index}
                kind = part.get("type")
                field = "refusal" if kind == "refusal" else "text"
                text = part.get(field) if isinstance(part.get(field), str) else ""
                add("response.content_part.added", **where, part={**part, field: ""})
                if kind in ("output_text", "refusal"):
                    event = "response.output_text" if kind == "output_text" else "response.refusal"
                    for piece in text_pieces(text):
                        delta(f"{event}.delta", piece, **where)
                    logprobs = {"logprobs": part.get("logprobs") or []} if kind == "output_text" else {}
                    add(f"{event}.done", **where, **{field: text}, **logprobs)
                add("response.content_part.done", **where, part=part)
        elif item.get("type") == "function_call":
            arguments = item.get("arguments") if isinstance(item.get("arguments"), str) else ""
            add("response.output_item.added", output_index=index,
                item={**item, "status": "in_progress", "arguments": ""})
            for piece in argument_pieces(arguments):
                delta("response.function_call_arguments.delta", piece, item_id=item_id, output_index=index)
            add("response.function_call_arguments.done", item_id=item_id, output_index=index,
                name=item.get("name"), arguments=arguments)
        else:  # reasoning and the built-in tools' items: announced and finished whole
            add("response.output_item.added", output_index=index, item=item)
        add("response.output_item.done", output_index=index, item=item)
    if terminal:
        add(end, response=response)
    return out


def _members(text: str, at: int) -> Iterator[tuple[str, int, int]]:
    """(key, value start, value end) of each member of the JSON object that starts at `text[at]`, read
    in place so that an edit can keep every other character; ValueError when it is not one."""
    if text[at : at + 1] != "{":
        raise ValueError("not an object")
    i = _WS.match(text, at + 1).end()  # type: ignore[union-attr]
    if text[i : i + 1] == "}":
        return
    while True:
        key, i = _DECODER.raw_decode(text, i)
        i = _WS.match(text, i).end()  # type: ignore[union-attr]
        if not isinstance(key, str) or text[i : i + 1] != ":":
            raise ValueError("not an object member")
        start = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
        _, end = _DECODER.raw_decode(text, start)
        yield key, start, end
        i = _WS.match(text, end).end()  # type: ignore[union-attr]
        if text[i : i + 1] != ",":
            return
        i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]


def _null_stop(data: str) -> str:
    """A terminal event's data with its response's `status` and `incomplete_details` set to null."""
    response = next((start for key, start, _ in _members(data, 0) if key == "response"), None)
    if response is None:
        return data
    spans = [(start, end) for key, start, end in _members(data, response)
             if key in ("status", "incomplete_details")]
    for start, end in sorted(spans, reverse=True):
        data = data[:start] + "null" + data[end:]
    return data


class Responses(Dialect):
    name = "responses"
    label = "OpenAI Responses API"
    terminal = "response.completed"
    stop_field = "status"
    length_reasons = frozenset({"length", "max_output_tokens"})

    def stop_said(self, reason: str | None) -> str:
        # the stored reason is chat's word (see the module's docstring); say the status the wire carried
        if reason in ("stop", "tool_calls"):
            return "status completed"
        if reason is not None:
            return f"status incomplete: {'max_output_tokens' if reason == 'length' else reason}"
        return super().stop_said(reason)

    def recognises(self, path: str) -> bool:
        return path.rstrip("/").endswith("/responses")

    def find_terminal(self, data: bytes) -> bool:
        # the substring checks run at C speed and rule out nearly every read
        return any(word in data for word in _TERMINAL_WORDS) and _TERMINAL.search(data) is not None

    def assembler(self) -> Assembler:
        return OpenAIAssembler()

    def drop_terminal(self, body: bytes) -> bytes:
        return drop_sse_events(body, lambda ev: event_type(ev) in TERMINAL_EVENTS)

    def drop_stop(self, body: bytes) -> bytes:
        """No stop reason here means the terminal event's response has `"status": null` and
        `"incomplete_details": null`: the event stays (the stream still ends whole), and so do the
        output items' own statuses, which say how each item ended, not why the answer stopped."""
        out = []
        for block in sse_blocks(body):
            events = SSEParser().feed(block)
            if len(events) == 1 and event_type(events[0]) in TERMINAL_EVENTS:
                block = _DATA_LINE.sub(_null_stop_line, block, count=1)
            out.append(block)
        return b"".join(out)

    def error_event(self, message: str) -> bytes:
        """The documented `error` event. Its `sequence_number` cannot follow the stream's (this method
        does not see the stream), so it is 0."""
        error = {"type": "error", "code": "server_error", "message": message, "param": None, "sequence_number": 0}
        return sse_event(error)

    def whole_body(self, stream_body: bytes) -> dict[str, Any] | None:
        """The response object of the stream's last terminal event; None without one (a stream that did
        not end has no final response to stand for)."""
        parser = SSEParser()
        final = None
        for ev in parser.feed(stream_body) + parser.close():
            if event_type(ev) in TERMINAL_EVENTS:
                try:
                    response = json.loads(ev.data).get("response")
                except (ValueError, RecursionError, AttributeError):
                    continue
                final = response if isinstance(response, dict) else final
        return final

    def stream_events(self, whole: dict[str, Any]) -> list[bytes] | None:
        return response_events(whole) if whole.get("object") == "response" else None


def _null_stop_line(match: re.Match[bytes]) -> bytes:
    try:
        data = match.group(2).decode("utf-8")
        return match.group(1) + _null_stop(data).encode("utf-8")
    except (ValueError, RecursionError):  # not UTF-8, not JSON: left as the upstream sent it
        return match.group(0)
