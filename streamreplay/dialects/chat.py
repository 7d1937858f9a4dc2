"""OpenAI chat.completions (and the legacy completions): `data:` events, `finish_reason`, `data: [DONE]`.

Also the fallback for a path no dialect claims: an OpenAI-compatible server is the common case.
"""

from __future__ import annotations

import json
import re
from typing import Any

from streamreplay.dialects.base import Assembler, Dialect, openai_error_json
from streamreplay.sse import Assembler as OpenAIAssembler
from streamreplay.sse import Event, assemble_stream, find_done, synthesize_chat_stream

# At the body's start or after any line end: SSE lets a line end with CR alone, and find_done sees [DONE] there
_DONE_EVENT = re.compile(rb"(?:\A|(?<=[\r\n]))data: ?\[DONE\][ \t]*(\r\n|\r|\n)(\r\n|\r|\n)?")
_FINISH = re.compile(rb'("finish_reason"\s*:\s*)"[^"]*"')


class Chat(Dialect):
    name = "chat"
    label = "OpenAI chat.completions"
    terminal = "[DONE]"
    stop_field = "finish_reason"

    def recognises(self, path: str) -> bool:
        return path.rstrip("/").endswith("/completions")

    def find_terminal(self, data: bytes) -> bool:
        return find_done(data)

    def assembler(self) -> Assembler:
        return OpenAIAssembler()

    def event_kind(self, ev: Event) -> str:
        """`[DONE]`, `error`, or what a chunk carries: `role`, `content`, `reasoning`, `refusal`, `tool_calls`,
        `finish`, `usage`, `prompt_filter` (Azure's), joined by + when it carries several; `empty` for none."""
        if ev.data.startswith("[DONE]"):
            return "[DONE]"
        try:
            obj = json.loads(ev.data)
        except (ValueError, RecursionError):
            return "data"
        if not isinstance(obj, dict):
            return "data"
        if obj.get("error") is not None:
            return "error"
        parts: list[str] = []
        choices = obj.get("choices") if isinstance(obj.get("choices"), list) else []
        for choice in (c for c in choices if isinstance(c, dict)):
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            parts += [name for name, present in (
                ("role", delta.get("role")),
                ("content", delta.get("content") or choice.get("text")),  # legacy completions: `text`
                ("reasoning", delta.get("reasoning_content") or delta.get("reasoning")),
                ("refusal", delta.get("refusal")),
                ("tool_calls", delta.get("tool_calls") or delta.get("function_call")),
                ("finish", choice.get("finish_reason")),
            ) if present]
        if obj.get("usage"):
            parts.append("usage")
        if obj.get("prompt_filter_results"):
            parts.append("prompt_filter")
        return "+".join(dict.fromkeys(parts)) or "empty"

    def drop_terminal(self, body: bytes) -> bytes:
        return _DONE_EVENT.sub(b"", body)

    def drop_stop(self, body: bytes) -> bytes:
        return _FINISH.sub(rb"\1null", body)

    def error_event(self, message: str) -> bytes:
        return b"data: " + openai_error_json(message) + b"\n\n"

    def whole_body(self, stream_body: bytes) -> dict[str, Any] | None:
        result = assemble_stream(stream_body)
        return result.to_chat_completion() if result.kind == "chat.completion" else None

    def stream_events(self, whole: dict[str, Any]) -> list[bytes] | None:
        return synthesize_chat_stream(whole) if whole.get("object") == "chat.completion" else None
