"""SSE framing and OpenAI stream assembly. Pure: no I/O.

Two layers:

* `SSEParser` turns arbitrary byte pieces into `Event`s by the WHATWG EventSource rules.
* `Assembler` turns the data events of an OpenAI-style stream (chat.completions, legacy
  completions, responses API) into one `Assembled` result, as the non-stream call would give.

Recordings hold whatever an upstream sent, so nothing here raises on malformed input: it is
written down in `problems` instead. Events are numbered from 0, like chunks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from streamreplay.jsonvalues import as_dict as _dict
from streamreplay.jsonvalues import as_int as _int
from streamreplay.jsonvalues import as_list as _list
from streamreplay.jsonvalues import as_str as _str

_BOM = b"\xef\xbb\xbf"
_EOL = re.compile(rb"\r\n|\r|\n")
# A `[DONE]` inside a JSON string must not count, so it has to start a line.
_DONE_LINE = re.compile(rb"(?:\A|(?<=[\r\n]))data: ?\[DONE\]")
_TERMINAL_RESPONSE_EVENTS = ("response.completed", "response.incomplete", "response.failed")


@dataclass
class Event:
    """One SSE event. `id` is the last event ID seen so far, as EventSource reports it;
    `retry` is a retry field seen in this event's own block."""

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None


def _strip_one_space(value: str) -> str:
    return value[1:] if value.startswith(" ") else value


class SSEParser:
    """Incremental: feed arbitrary byte pieces (events split anywhere across reads, several in one read)."""

    def __init__(self) -> None:
        self.comments: list[str] = []
        self.problems: list[str] = []
        self.bytes_seen = 0
        self.trailing: Event | None = None  # the unterminated event found by close(), if any
        self._buf = bytearray()  # the current line, not yet terminated
        self._buf_at = 0  # stream offset of _buf[0], so problems name the same byte however split
        self._after_cr = False  # the last piece ended in CR: a leading LF in the next one is its CRLF
        self._data: list[str] = []
        self._event: str | None = None
        self._last_id: str | None = None
        self._retry: int | None = None
        self._closed = False

    def feed(self, data: bytes) -> list[Event]:
        """Returns the events completed by this piece."""
        out: list[Event] = []
        if not data:
            return out
        self.bytes_seen += len(data)
        if self._after_cr:
            self._after_cr = False
            if data[:1] == b"\n":
                data = data[1:]
                self._buf_at += 1
        # The remainder from earlier pieces holds no line end, so only the new bytes need scanning;
        # that keeps a long line arriving in many small reads linear.
        start = len(self._buf)
        self._buf += data
        pos = 0
        for m in _EOL.finditer(self._buf, start):
            self._line(bytes(self._buf[pos : m.start()]), self._buf_at + pos, out)
            pos = m.end()
        self._after_cr = self._buf.endswith(b"\r")
        del self._buf[:pos]
        self._buf_at += pos
        return out

    def close(self) -> list[Event]:
        """End of stream. Per spec an event needs its blank line, so an unterminated one is not
        returned; it is kept in `trailing` and noted in `problems`."""
        if self._closed:
            return []
        self._closed = True
        partial = bool(self._buf)
        if partial:
            # Read the partial line as if it ended, only to record what was cut off.
            self._line(bytes(self._buf), self._buf_at, [])
            self._buf.clear()
        if self._data:
            self.trailing = Event("\n".join(self._data), self._event, self._last_id, self._retry)
            self.problems.append(f"trailing unterminated event at end of stream (byte {self.bytes_seen})")
        elif partial:
            self.problems.append(f"trailing unterminated line at end of stream (byte {self.bytes_seen})")
        self._data = []
        return []

    def _line(self, raw: bytes, at: int, out: list[Event]) -> None:
        if at == 0 and raw.startswith(_BOM):
            raw, at = raw[len(_BOM) :], at + len(_BOM)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self.problems.append(f"undecodable UTF-8 at byte {at + e.start}")
            text = raw.decode("utf-8", errors="replace")
        if not text:
            self._dispatch(out)
            return
        if text.startswith(":"):
            self.comments.append(_strip_one_space(text[1:]))
            return
        name, _, value = text.partition(":")
        value = _strip_one_space(value)
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value or None
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            try:
                self._retry = int(value)
            except ValueError:  # longer than Python's int-from-str digit limit
                self.problems.append(f"retry value too long at byte {at}")

    def _dispatch(self, out: list[Event]) -> None:
        if self._data:
            out.append(Event("\n".join(self._data), self._event, self._last_id, self._retry))
        self._data = []
        self._event = None
        self._retry = None


def parse_events(data: bytes) -> list[Event]:
    """Whole-body convenience."""
    parser = SSEParser()
    return parser.feed(data) + parser.close()


def find_done(data: bytes) -> bool:
    """Fast hot-path check: does this buffer hold a `data: [DONE]` line? A marker split across
    two buffers is not seen; callers that care keep the tail of the previous one."""
    return b"[DONE]" in data and _DONE_LINE.search(data) is not None


@dataclass
class Assembled:
    """The OpenAI result assembled from a stream (or from a non-stream JSON body)."""

    kind: str  # "chat.completion" | "text_completion" | "response" | "unknown"
    id: str | None
    model: str | None
    text: str
    finish_reason: str | None
    tool_calls: list[dict]
    usage: dict | None
    done: bool
    error: dict | None
    events: int
    problems: list[str]
    role: str | None = "assistant"
    refusal: str | None = None
    created: int | None = None
    system_fingerprint: str | None = None

    def to_chat_completion(self) -> dict:
        """A `chat.completion` object as OpenAI returns it for stream=false."""
        message: dict[str, Any] = {
            "role": self.role or "assistant",
            # OpenAI sends null content, not "", when the answer is only tool calls or a refusal.
            "content": self.text or (None if self.tool_calls or self.refusal else ""),
            "refusal": self.refusal,
        }
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c["id"], "type": c["type"], "function": dict(c["function"])} for c in self.tool_calls
            ]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created if self.created is not None else 0,
            "model": self.model,
            "system_fingerprint": self.system_fingerprint,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}],
            "usage": self.usage,
        }


def _error_of(value: Any) -> dict:
    return value if isinstance(value, dict) else {"message": str(value)}


def _response_finish(resp: dict, has_tool_calls: bool) -> str | None:
    # The responses API has a status, not a finish_reason; map it onto chat's vocabulary.
    status = resp.get("status")
    if status == "completed":
        return "tool_calls" if has_tool_calls else "stop"
    if status == "incomplete":
        reason = _str(_dict(resp.get("incomplete_details")).get("reason"))
        return {"max_output_tokens": "length"}.get(reason or "", reason)
    return None


class Assembler:
    """Incremental assembly: feed data events' payloads."""

    def __init__(self) -> None:
        self.kind = "unknown"
        self.id: str | None = None
        self.model: str | None = None
        self.created: int | None = None
        self.system_fingerprint: str | None = None
        self.role: str | None = "assistant"
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.done = False
        self.error: dict | None = None
        self.events = 0
        self.problems: list[str] = []
        self._text: list[str] = []
        self._refusal: list[str] = []
        self._calls: dict[int, dict] = {}  # by chat tool call index, or by responses output_index
        self._legacy_call: dict | None = None  # chat's old `function_call`

    def feed_event(self, ev: Event) -> None:
        n = self.events
        self.events += 1
        if ev.data.startswith("[DONE]"):  # the same test the OpenAI SDK makes
            self.done = True
            return
        try:
            obj = json.loads(ev.data)
        except (ValueError, RecursionError) as e:
            self.problems.append(f"event {n}: invalid JSON: {e}")
            return
        try:
            self._payload(n, obj, ev.event)
        except Exception as e:  # upstream output is arbitrary; a diagnosis must still come out
            self.problems.append(f"event {n}: internal error: {type(e).__name__}: {e}")

    def feed_json(self, obj: Any) -> None:
        """A whole non-stream body, already parsed."""
        try:
            self._body(obj)
        except Exception as e:  # see feed_event
            self.problems.append(f"body: internal error: {type(e).__name__}: {e}")

    def result(self) -> Assembled:
        ordered = sorted(self._calls.values(), key=lambda c: c["index"])
        calls = [{**c, "function": dict(c["function"])} for c in ordered]
        if not calls and self._legacy_call is not None:
            calls = [{"index": 0, "id": None, "type": "function", "function": dict(self._legacy_call)}]
        return Assembled(
            kind=self.kind,
            id=self.id,
            model=self.model,
            text="".join(self._text),
            finish_reason=self.finish_reason,
            tool_calls=calls,
            usage=self.usage,
            done=self.done,
            error=self.error,
            events=self.events,
            problems=list(self.problems),
            role=self.role,
            refusal="".join(self._refusal) if self._refusal else None,
            created=self.created,
            system_fingerprint=self.system_fingerprint,
        )

    # -- streams

    def _payload(self, n: int, obj: Any, event_name: str | None) -> None:
        if not isinstance(obj, dict):
            self.problems.append(f"event {n}: expected a JSON object, got {type(obj).__name__}")
            return
        etype = _str(obj.get("type")) or event_name or ""
        obj_kind = obj.get("object")
        choices = _list(obj.get("choices"))
        if obj.get("error") is not None:
            self.error = _error_of(obj["error"])
        elif obj_kind == "error":  # vLLM puts its error fields at the top level
            self.error = {k: v for k, v in obj.items() if k != "object"}
        elif obj_kind == "chat.completion.chunk" or any("delta" in _dict(c) for c in choices):
            self._chat_chunk(obj)
        elif obj_kind == "text_completion" or any("text" in _dict(c) for c in choices):
            self._text_chunk(obj)
        elif etype.startswith("response.") or etype == "error":
            self._response_event(etype, obj)
        elif "choices" in obj:
            # Nothing to assemble in the choices (Azure's prompt_filter_results chunk, a usage-only
            # chunk without `object`), but the metadata and usage still count.
            self._meta(obj)
            # Azure's Asynchronous Filter annotations: a choice with verdicts and no delta, whose
            # finish_reason is "content_filter" when the filter stops the answer.
            choice = self._first_choice(obj)
            if choice is not None:
                self.finish_reason = _str(choice.get("finish_reason")) or self.finish_reason
        else:
            self.problems.append(f"event {n}: unrecognised payload with keys {sorted(obj)[:8]}")

    def _set_kind(self, kind: str) -> None:
        if self.kind == "unknown":
            self.kind = kind

    def _meta(self, obj: dict, created_key: str = "created") -> None:
        # Azure's first chunk carries empty id and model, so only non-empty values count.
        self.id = _str(obj.get("id")) or self.id
        self.model = _str(obj.get("model")) or self.model
        created = _int(obj.get(created_key))
        # ... nor Azure's created 0 on those chunks, once the answer's own time is known
        if created is not None and (created or self.created is None):
            self.created = created
        self.system_fingerprint = _str(obj.get("system_fingerprint")) or self.system_fingerprint
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]

    def _first_choice(self, obj: dict) -> dict | None:
        for choice in _list(obj.get("choices")):
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                return choice
        return None

    def _chat_chunk(self, obj: dict) -> None:
        self._set_kind("chat.completion")
        self._meta(obj)
        choice = self._first_choice(obj)
        if choice is None:
            return
        delta = _dict(choice.get("delta"))
        self.role = _str(delta.get("role")) or self.role
        if _str(delta.get("content")):
            self._text.append(delta["content"])
        if _str(delta.get("refusal")):
            self._refusal.append(delta["refusal"])
        for tc in _list(delta.get("tool_calls")):
            if isinstance(tc, dict):
                self._merge_tool_call(tc)
        if isinstance(delta.get("function_call"), dict):
            fc = delta["function_call"]
            legacy = self._legacy_call = self._legacy_call or {"name": "", "arguments": ""}
            legacy["name"] = _str(fc.get("name")) or legacy["name"]
            legacy["arguments"] += _arguments(fc.get("arguments"))
        self.finish_reason = _str(choice.get("finish_reason")) or self.finish_reason

    def _merge_tool_call(self, tc: dict) -> None:
        index = _int(tc.get("index"))
        if index is None:
            # Some OpenAI-compatible servers omit `index`: a new id starts a call, else continue the last.
            known_ids = {c["id"] for c in self._calls.values()}
            if not self._calls or (tc.get("id") is not None and tc.get("id") not in known_ids):
                index = len(self._calls)
            else:
                index = max(self._calls)
        call = self._call(index)
        call["id"] = _str(tc.get("id")) or call["id"]
        call["type"] = _str(tc.get("type")) or call["type"]
        fn = _dict(tc.get("function"))
        call["function"]["name"] = _str(fn.get("name")) or call["function"]["name"]
        call["function"]["arguments"] += _arguments(fn.get("arguments"))

    def _call(self, key: int, index: int | None = None) -> dict:
        if key not in self._calls:
            self._calls[key] = {
                "index": key if index is None else index,
                "id": None,
                "type": "function",
                "function": {"name": "", "arguments": ""},
            }
        return self._calls[key]

    def _text_chunk(self, obj: dict) -> None:
        self._set_kind("text_completion")
        self._meta(obj)
        choice = self._first_choice(obj)
        if choice is not None:
            if _str(choice.get("text")):
                self._text.append(choice["text"])
            self.finish_reason = _str(choice.get("finish_reason")) or self.finish_reason

    def _response_event(self, etype: str, obj: dict) -> None:
        if etype == "error":  # also a bare `event: error`, which says nothing about the API in use
            self.error = {k: v for k, v in obj.items() if k not in ("type", "sequence_number")}
            return
        self._set_kind("response")
        if isinstance(obj.get("response"), dict):
            self._response_meta(obj["response"])
        if etype == "response.output_text.delta" and _str(obj.get("delta")):
            self._text.append(obj["delta"])
        elif etype == "response.refusal.delta" and _str(obj.get("delta")):
            self._refusal.append(obj["delta"])
        elif etype in ("response.output_item.added", "response.output_item.done"):
            item = _dict(obj.get("item"))
            if item.get("type") == "function_call":
                call = self._response_call(obj.get("output_index"))
                call["id"] = _str(item.get("call_id")) or call["id"]
                call["function"]["name"] = _str(item.get("name")) or call["function"]["name"]
                # Only a stream whose argument deltas went missing needs the item's final arguments.
                if not call["function"]["arguments"]:
                    call["function"]["arguments"] = _arguments(item.get("arguments"))
        elif etype == "response.function_call_arguments.delta":
            self._response_call(obj.get("output_index"))["function"]["arguments"] += _arguments(obj.get("delta"))
        elif etype in _TERMINAL_RESPONSE_EVENTS:
            self.done = True

    def _response_call(self, output_index: Any) -> dict:
        # Keyed by output_index (a reasoning item may take slot 0), numbered 0.. in arrival order.
        key = _int(output_index)
        key = key if key is not None else -1
        return self._call(key, index=len(self._calls) if key not in self._calls else None)

    def _response_meta(self, resp: dict) -> None:
        self._meta(resp, created_key="created_at")
        self.finish_reason = _response_finish(resp, bool(self._calls)) or self.finish_reason
        if resp.get("error") is not None:
            self.error = _error_of(resp["error"])

    # -- non-stream bodies

    def _body(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            self.problems.append(f"body: expected a JSON object, got {type(obj).__name__}")
            return
        obj_kind = obj.get("object")
        choice = self._first_choice(obj)
        if obj.get("error") is not None:
            self.error = _error_of(obj["error"])
        elif obj_kind == "chat.completion" or (choice is not None and "message" in choice):
            self._set_kind("chat.completion")
            self._chat_body(obj, _dict(choice))
        elif obj_kind == "text_completion" or (choice is not None and "text" in choice):
            self._text_chunk(obj)
            self.done = True
        elif obj_kind == "response" or isinstance(obj.get("output"), list):
            self._set_kind("response")
            self._response_body(obj)
        else:
            self.problems.append(f"body: unrecognised JSON object with keys {sorted(obj)[:8]}")

    def _chat_body(self, obj: dict, choice: dict) -> None:
        self._meta(obj)
        message = _dict(choice.get("message"))
        self.role = _str(message.get("role")) or self.role
        if _str(message.get("content")):
            self._text.append(message["content"])
        if _str(message.get("refusal")):
            self._refusal.append(message["refusal"])
        for i, tc in enumerate(_list(message.get("tool_calls"))):
            if isinstance(tc, dict):
                self._merge_tool_call({"index": i, **tc})
        if isinstance(message.get("function_call"), dict):
            fc = message["function_call"]
            self._legacy_call = {
                "name": _str(fc.get("name")) or "",
                "arguments": _arguments(fc.get("arguments")),
            }
        self.finish_reason = _str(choice.get("finish_reason"))
        self.done = True

    def _response_body(self, obj: dict) -> None:
        for output_index, item in enumerate(_list(obj.get("output"))):
            item = _dict(item)
            if item.get("type") == "message":
                for part in _list(item.get("content")):
                    part = _dict(part)
                    if part.get("type") == "output_text" and _str(part.get("text")):
                        self._text.append(part["text"])
                    elif part.get("type") == "refusal" and _str(part.get("refusal")):
                        self._refusal.append(part["refusal"])
            elif item.get("type") == "function_call":
                added = {"output_index": output_index, "item": item}
                self._response_event("response.output_item.done", added)
        self._response_meta(obj)
        self.done = obj.get("status") in ("completed", "incomplete", "failed")


def _arguments(value: Any) -> str:
    if value is None:
        return ""
    # Some servers send arguments as a JSON object rather than the string OpenAI sends.
    return value if isinstance(value, str) else json.dumps(value)


def assemble_stream(body: bytes) -> Assembled:
    """Parse an SSE body and assemble it; SSE problems come first in `problems`."""
    parser = SSEParser()
    assembler = Assembler()
    for ev in parser.feed(body) + parser.close():
        assembler.feed_event(ev)
    result = assembler.result()
    result.problems[:0] = parser.problems
    return result


def assemble_json(body: bytes) -> Assembled:
    """A non-stream body: chat.completion, text_completion, response, or an error body."""
    assembler = Assembler()
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as e:
        assembler.problems.append(f"body: invalid JSON: {e}")
    else:
        assembler.feed_json(obj)
    return assembler.result()


_SSE_STARTS = (b"data:", b"event:", b"id:", b"retry:", b":")


def assemble(body: bytes, content_type: str | None) -> Assembled:
    """Stream or JSON, by content type, else by sniffing the start of the body."""
    ctype = (content_type or "").lower()
    if "text/event-stream" in ctype:
        return assemble_stream(body)
    if "json" in ctype:
        return assemble_json(body)
    head = bytes(body[:64]).removeprefix(_BOM).lstrip()
    return assemble_stream(body) if head.startswith(_SSE_STARTS) else assemble_json(body)


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def synthesize_chat_stream(completion: dict, *, chunk_text_size: int = 16) -> list[bytes]:
    """OpenAI wire-format SSE events (one per element) for a non-stream chat.completion."""
    if chunk_text_size < 1:
        raise ValueError("chunk_text_size must be at least 1")
    base = {k: completion.get(k) for k in ("id", "object", "created", "model")}
    base["object"] = "chat.completion.chunk"
    if "system_fingerprint" in completion:
        base["system_fingerprint"] = completion["system_fingerprint"]
    choice = _dict((_list(completion.get("choices")) or [{}])[0])
    message = _dict(choice.get("message"))

    def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
        c = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({**base, "choices": [c]})

    def pieces(text: str) -> list[str]:
        return [text[i : i + chunk_text_size] for i in range(0, len(text), chunk_text_size)]

    out = [chunk({"role": _str(message.get("role")) or "assistant", "content": ""})]
    out += [chunk({"content": p}) for p in pieces(_str(message.get("content")) or "")]
    out += [chunk({"refusal": p}) for p in pieces(_str(message.get("refusal")) or "")]
    for i, tc in enumerate(_list(message.get("tool_calls"))):
        tc, fn = _dict(tc), _dict(_dict(tc).get("function"))
        head = {"name": _str(fn.get("name")) or "", "arguments": ""}
        start = {"index": i, "id": tc.get("id"), "type": tc.get("type", "function"), "function": head}
        out.append(chunk({"tool_calls": [start]}))
        out += [
            chunk({"tool_calls": [{"index": i, "function": {"arguments": p}}]})
            for p in pieces(_arguments(fn.get("arguments")))
        ]
    out.append(chunk({}, _str(choice.get("finish_reason"))))
    out.append(b"data: [DONE]\n\n")
    return out
