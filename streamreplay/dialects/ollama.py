"""Ollama's native chat API (`POST /api/chat`): newline-delimited JSON, streamed unless `stream` is
false, ending with a `done: true` line that carries `done_reason`.

The wire, as Ollama's server writes it (api/types.go `ChatResponse`, server/routes.go): one compact JSON
object per line, each `{"model", "created_at", "message": {"role", "content"[, "thinking"][, "tool_calls"]},
"done": false}`; the last `"done": true, "done_reason": "stop"` with `total_duration`, `load_duration`,
`prompt_eval_count`, `prompt_eval_duration`, `eval_count`, `eval_duration` (each left out when zero). A tool
call comes whole in one line, its arguments a JSON object. An error mid-stream is a line `{"error": "..."}`;
an error before the stream, or a non-stream answer, is one JSON object with no newline after it.
`/api/generate` is the same with a `response` string instead of `message`; its text is read too.
"""

from __future__ import annotations

import json
import re
from typing import Any

from streamreplay.dialects.base import Assembler, Dialect, LineParser, Parser
from streamreplay.jsonvalues import as_int as _int
from streamreplay.jsonvalues import as_str as _str
from streamreplay.sse import Assembled, Event

# The top-level `done` key: a quote inside a JSON string is escaped (`\"done\"`), so a key is a quote
# right after `{` or `,`. A `"done": true` inside a tool call's arguments object still matches.
_DONE_TRUE = re.compile(rb'[{,][ \t\r\n]*"done"[ \t\r\n]*:[ \t\r\n]*true')
_DONE_REASON = re.compile(rb'(?<=[{,])([ \t\r\n]*"done_reason"[ \t\r\n]*:[ \t\r\n]*)"(?:[^"\\]|\\.)*"')
_LINE = re.compile(rb"[^\n]*(?:\n|\Z)")
_LINE_JSON = re.compile(rb"(?:\A|(?<=\n))[ \t]*(\{[^\r\n]*)")
_BOM = b"\xef\xbb\xbf"
# what Go's encoding/json escapes that Python's json.dumps(ensure_ascii=False) writes as is
_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_ESCAPED = re.compile("[<>&\u2028\u2029]")
# message keys in the order Go writes them (api/types.go `Message`)
_MESSAGE_ORDER = ("role", "content", "thinking", "images", "tool_calls", "tool_name", "tool_call_id")


def go_json(obj: Any, spaced: bool = False) -> bytes:
    """JSON as Ollama's Go server writes it: compact, UTF-8 as is, `<`, `>`, `&`, U+2028 and U+2029 escaped.
    (`spaced` puts spaces after separators, as some Ollama-compatible servers do.)"""
    text = json.dumps(obj, ensure_ascii=False, separators=(", ", ": ") if spaced else (",", ":"))
    text = _GO_ESCAPED.sub(lambda m: _GO_ESCAPES[m.group(0)], text)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: \u escapes carry it where UTF-8 cannot
        return json.dumps(obj, separators=(",", ":")).encode()


def _lines(body: bytes) -> list[bytes]:
    """The body's lines, each with its newline; joined they give the body back."""
    return [m.group(0) for m in _LINE.finditer(body) if m.group(0)]


def _object(line: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _pieces(text: str) -> list[str]:
    """Token-like pieces: each word with the space after it."""
    return re.findall(r"[^ ]+ ?| ", text)


class OllamaAssembler:
    """Ollama lines (or one whole answer) in, one `Assembled` out: kind "ollama.chat" ("ollama.generate"
    for /api/generate), the stop reason `done_reason`, `done` from the `done: true` line, and usage as
    OpenAI names it: prompt_tokens = `prompt_eval_count`, completion_tokens = `eval_count` (Ollama leaves
    out a count of zero, so a missing one is 0), total_tokens their sum."""

    def __init__(self) -> None:
        self.kind = "unknown"
        self.model: str | None = None
        self.role: str | None = "assistant"
        self.finish_reason: str | None = None
        self.usage: dict[str, int] | None = None
        self.done = False
        self.error: dict[str, Any] | None = None
        self.events = 0
        self.problems: list[str] = []
        self._text: list[str] = []
        self._calls: list[dict[str, Any]] = []

    def feed_event(self, ev: Event) -> None:
        n = self.events
        self.events += 1
        try:
            obj = json.loads(ev.data)
        except (ValueError, RecursionError) as e:
            self.problems.append(f"line {n}: invalid JSON: {e}")
            return
        self._read(obj, f"line {n}")

    def feed_json(self, obj: Any) -> None:
        """A whole non-stream body, already parsed."""
        self._read(obj, "body")

    def result(self) -> Assembled:
        return Assembled(
            kind=self.kind, id=None, model=self.model, text="".join(self._text), finish_reason=self.finish_reason,
            tool_calls=[{**c, "function": dict(c["function"])} for c in self._calls], usage=self.usage,
            done=self.done, error=self.error, events=self.events, problems=list(self.problems), role=self.role,
        )

    def _read(self, obj: Any, where: str) -> None:
        try:
            self._object(obj, where)
        except Exception as e:  # upstream output is arbitrary; a summary must still come out
            self.problems.append(f"{where}: internal error: {type(e).__name__}: {e}")

    def _object(self, obj: Any, where: str) -> None:
        if not isinstance(obj, dict):
            self.problems.append(f"{where}: expected a JSON object, got {type(obj).__name__}")
            return
        if obj.get("error") is not None:
            error = obj["error"]
            self.error = error if isinstance(error, dict) else {"message": str(error)}
            return
        message = obj.get("message")
        if isinstance(message, dict):
            self._set_kind("ollama.chat")
            self.role = _str(message.get("role")) or self.role
            if _str(message.get("content")):
                self._text.append(message["content"])
            for call in message.get("tool_calls") or []:
                if isinstance(call, dict):
                    self._call(call)
        elif isinstance(obj.get("response"), str):
            self._set_kind("ollama.generate")
            self._text.append(obj["response"])
        elif "done" not in obj:
            self.problems.append(f"{where}: unrecognised object with keys {sorted(obj)[:8]}")
            return
        self.model = _str(obj.get("model")) or self.model
        prompt, completion = _int(obj.get("prompt_eval_count")), _int(obj.get("eval_count"))
        if prompt is not None or completion is not None:
            prompt, completion = prompt or 0, completion or 0
            self.usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion}
        if obj.get("done") is True:
            self.done = True
            self.finish_reason = _str(obj.get("done_reason")) or self.finish_reason

    def _set_kind(self, kind: str) -> None:
        if self.kind == "unknown":
            self.kind = kind

    def _call(self, call: dict[str, Any]) -> None:
        # Ollama sends each call whole; in chat's shape the arguments are a JSON string
        fn = call.get("function") if isinstance(call.get("function"), dict) else {}
        args = fn.get("arguments")
        arguments = "" if args is None else args if isinstance(args, str) else json.dumps(args)
        self._calls.append({"index": len(self._calls), "id": _str(call.get("id")), "type": "function",
                            "function": {"name": _str(fn.get("name")) or "", "arguments": arguments}})


class Ollama(Dialect):
    name = "ollama"
    label = "Ollama /api/chat"
    terminal = "done: true"
    stop_field = "done_reason"
    stream_content_type = "application/x-ndjson"
    matrix_tape = "ollama"

    def recognises(self, path: str) -> bool:
        return path.rstrip("/").endswith(("/api/chat", "/api/generate"))

    def wants_stream(self, request: dict[str, Any]) -> bool:
        return request.get("stream") is not False  # Ollama streams unless told not to

    def looks_like_stream(self, head: bytes) -> bool:
        """A stream is JSON lines; a whole answer (or an error before the stream) is one JSON object with no
        newline after it. A first line cut short is taken for a stream, the common case."""
        head = head.removeprefix(_BOM).lstrip()
        if not head.startswith(b"{"):
            return False
        return b"\n" in head or _object(head) is None

    def find_terminal(self, data: bytes) -> bool:
        return b"true" in data and _DONE_TRUE.search(data) is not None

    def parser(self) -> Parser:
        return LineParser()

    def assembler(self) -> Assembler:
        return OllamaAssembler()

    def event_kind(self, ev: Event) -> str:
        """`content`, `thinking`, `tool_calls` (a line may be several, joined by +), `done`, `error`."""
        try:
            obj = json.loads(ev.data)
        except (ValueError, RecursionError):
            return "data"
        if not isinstance(obj, dict):
            return "data"
        if obj.get("error") is not None:
            return "error"
        if obj.get("done") is True:
            return "done"
        message = obj.get("message") if isinstance(obj.get("message"), dict) else {}
        parts = [name for name, present in (("content", message.get("content") or obj.get("response")),
                                            ("thinking", message.get("thinking") or obj.get("thinking")),
                                            ("tool_calls", message.get("tool_calls"))) if present]
        return "+".join(parts) or "empty"

    def assemble(self, body: bytes, content_type: str | None) -> Assembled:
        ctype = (content_type or "").lower()
        if not self.is_stream(ctype) and "json" not in ctype:
            # the base looks at 64 bytes, too few to tell a first line from a whole answer
            return self.assemble_stream(body) if self.looks_like_stream(bytes(body)) else self.assemble_json(body)
        return super().assemble(body, content_type)

    def drop_terminal(self, body: bytes) -> bytes:
        """Without its `done: true` line, whole: the done_reason, the counts and any text that line carried
        go with it, as when a server never sends it."""
        return b"".join(line for line in _lines(body) if (_object(line) or {}).get("done") is not True)

    def drop_stop(self, body: bytes) -> bytes:
        return _DONE_REASON.sub(rb"\1null", body)

    def error_event(self, message: str) -> bytes:
        return go_json({"error": message}) + b"\n"

    def error_body(self, message: str, status: int) -> bytes:
        return go_json({"error": message})

    def payload_span(self, data: bytes) -> tuple[int, int] | None:
        match = _LINE_JSON.search(data)
        return match.span(1) if match else None

    def whole_body(self, stream_body: bytes) -> dict[str, Any] | None:
        """What Ollama answers `stream: false` with (server/routes.go `writeChatResponse`): the last line,
        its message's content and thinking the whole stream's, its tool calls and logprobs all the stream's.
        None for a stream with an error line (Ollama answers that with an error status) or no chat line."""
        lines = [obj for obj in map(_object, _lines(stream_body)) if obj is not None]
        if any(obj.get("error") is not None for obj in lines):
            return None
        chat = [obj for obj in lines if isinstance(obj.get("message"), dict)]
        if not chat:
            return None
        merged: dict[str, Any] = dict(chat[-1]["message"])
        merged["content"] = "".join(_str(o["message"].get("content")) or "" for o in chat)
        thinking = "".join(_str(o["message"].get("thinking")) or "" for o in chat)
        calls = [c for o in chat for c in o["message"].get("tool_calls") or []]
        merged.pop("thinking", None)
        merged.pop("tool_calls", None)
        if thinking:
            merged["thinking"] = thinking
        if calls:
            merged["tool_calls"] = calls
        message = {k: merged[k] for k in _MESSAGE_ORDER if k in merged}
        message.update((k, v) for k, v in merged.items() if k not in message)
        whole = {**chat[-1], "message": message}
        logprobs = [p for o in chat for p in o.get("logprobs") or []]
        if logprobs:
            whole["logprobs"] = logprobs
        return whole

    def stream_events(self, whole: dict[str, Any]) -> list[bytes] | None:
        """A whole chat answer as Ollama streams it: its thinking, then its content, a piece a line, its tool
        calls in one line, then the last line (the answer's own fields, an empty message)."""
        message = whole.get("message")
        if not isinstance(message, dict) or whole.get("error") is not None:
            return None
        role = _str(message.get("role")) or "assistant"
        head = {k: v for k, v in whole.items() if k in ("model", "remote_model", "remote_host", "created_at")}

        def line(part: dict[str, Any]) -> bytes:
            return go_json({**head, "message": {"role": role, "content": "", **part}, "done": False}) + b"\n"

        out = [line({"thinking": p}) for p in _pieces(_str(message.get("thinking")) or "")]
        out += [line({"content": p}) for p in _pieces(_str(message.get("content")) or "")]
        if message.get("tool_calls"):
            out.append(line({"tool_calls": message["tool_calls"]}))
        out.append(go_json({**whole, "message": {"role": role, "content": ""}}) + b"\n")
        return out
