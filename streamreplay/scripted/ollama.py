"""Ollama's native chat API (`POST /api/chat`), as the scripted upstream speaks it.

Follows Ollama's server (api/types.go, server/routes.go, v0.12.10 and later) and ollama-python's
`ChatResponse` (ollama/_types.py: `model`, `created_at`, `done`, `done_reason`, the four durations and two
counts, `message` with `role`, `content`, `thinking`, `tool_calls` of `{function: {name, arguments}}`):
content type `application/x-ndjson`, one compact JSON object a line, keys in Go's struct order (`done`
before `done_reason`), `created_at` in Go's RFC 3339 with nanoseconds (trailing zeros cut), a tool call
whole in one line (`{"id": "call_xxxxxxxx", "function": {"index", "name", "arguments": {...}}}`), no
`done_reason` "tool_calls" (Ollama says "stop"), and a non-stream answer with no newline after it.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from streamreplay.dialects.ollama import go_json
from streamreplay.scripted.chat import model_of
from streamreplay.scripted.script import CREATED, Script, Wire, split_pieces

PROMPT_EVAL_COUNT = 9
#: nanoseconds between two lines' created_at: fixed, so every run sends the same bytes
LINE_NS = 21_437_613
LOAD_NS, PROMPT_EVAL_NS, EVAL_NS_PER_TOKEN = 12_875_042, 40_318_250, 21_190_875


def created_at(i: int) -> str:
    """Line i's timestamp as Go writes a UTC time.Time (RFC 3339, nanoseconds without trailing zeros)."""
    ns = 512_346_000 + i * LINE_NS
    moment = datetime.fromtimestamp(CREATED, timezone.utc) + timedelta(seconds=ns // 10**9)
    fraction = f"{ns % 10**9:09d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def _tool_calls(script: Script, n: int) -> list[dict[str, Any]]:
    # Ollama makes ids of 8 random lowercase letters and digits; these are fixed by request and call
    return [{"id": f"call_{n:04x}{i:04x}",
             "function": {"index": i, "name": call["name"], "arguments": json.loads(call.get("arguments") or "{}")}}
            for i, call in enumerate(script.tool_calls or [])]


class OllamaWire(Wire):
    name = "ollama"
    paths: tuple[str, ...] = ("/api/chat",)
    stream_content_type = "application/x-ndjson"

    def wants_stream(self, payload: dict[str, Any]) -> bool:
        return payload.get("stream") is not False

    def stream_events(self, script: Script, payload: dict[str, Any], n: int) -> list[bytes]:
        model = model_of(payload, "smollm2")
        pieces = script.pieces if script.pieces is not None else split_pieces(script.text)

        def line(i: int, message: dict[str, Any]) -> bytes:
            obj = {"model": model, "created_at": created_at(i), "message": {"role": "assistant", **message},
                   "done": False}
            return go_json(obj, script.spaced_json) + b"\n"

        events = [line(i, {"content": piece}) for i, piece in enumerate(pieces)]
        if script.tool_calls:
            events.append(line(len(events), {"content": "", "tool_calls": _tool_calls(script, n)}))
        if script.ending != "no_done":
            done = self._answer(script, model, len(events), len(pieces), {"role": "assistant", "content": ""})
            events.append(go_json(done, script.spaced_json) + b"\n")
        return events

    def body(self, script: Script, payload: dict[str, Any], n: int) -> dict[str, Any]:
        # Ollama's non-stream answer is its stream's last line with the whole message (routes.go
        # writeChatResponse), so its created_at is the one the done line would have had
        pieces = script.pieces if script.pieces is not None else split_pieces(script.text)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces)}
        if script.tool_calls:
            message["tool_calls"] = _tool_calls(script, n)
        last = len(pieces) + (1 if script.tool_calls else 0)
        return self._answer(script, model_of(payload, "smollm2"), last, len(pieces), message)

    @staticmethod
    def _answer(script: Script, model: str, i: int, tokens: int, message: dict[str, Any]) -> dict[str, Any]:
        """The done line (line i), or with the whole message the non-stream answer."""
        obj: dict[str, Any] = {"model": model, "created_at": created_at(i), "message": message, "done": True}
        if script.finish_reason is not None:
            obj["done_reason"] = script.finish_reason
        eval_ns = tokens * EVAL_NS_PER_TOKEN
        obj.update(total_duration=LOAD_NS + PROMPT_EVAL_NS + eval_ns + 1_204_417, load_duration=LOAD_NS,
                   prompt_eval_count=PROMPT_EVAL_COUNT, prompt_eval_duration=PROMPT_EVAL_NS)
        if tokens:  # Go leaves out a zero count (omitempty)
            obj.update(eval_count=tokens, eval_duration=eval_ns)
        return obj

    def error(self, status: int) -> dict[str, Any]:
        return {"error": f"scripted error {status}"}

    def default_stop_after(self, events: list[bytes]) -> int:
        return len(events) - 1  # all but the done line, which carries done_reason and the counts
