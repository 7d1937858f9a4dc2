"""OpenAI chat.completions, as the scripted upstream speaks it."""

from __future__ import annotations

import json
from typing import Any

from streamreplay.scripted.script import CREATED, FINGERPRINT, Script, Wire, dumps, split_pieces


def chat_events(script: Script, model: str, completion_id: str, include_usage: bool) -> list[bytes]:
    """A chat.completions stream in OpenAI's wire format, one element per SSE event."""

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        obj: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            obj["usage"] = None
        obj.update(script.chunk_fields)
        obj.update(extra)
        return f"data: {dumps(obj, script.spaced_json)}\n\n".encode()

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    pieces = script.pieces if script.pieces is not None else split_pieces(script.text)
    for piece in pieces:
        events.append(chunk({"content": piece}))
    for i, call in enumerate(script.tool_calls or []):
        events.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": f"call_{i}",
                            "type": "function",
                            "function": {"name": call["name"], "arguments": ""},
                        }
                    ]
                }
            )
        )
        args = call.get("arguments", "")
        for j in range(0, len(args), 8):
            events.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": args[j : j + 8]}}]}))
    finish = script.finish_reason
    if finish == "stop" and script.tool_calls:
        finish = "tool_calls"
    events.append(chunk({}, finish))
    if include_usage:
        usage = {"prompt_tokens": 9, "completion_tokens": len(pieces), "total_tokens": 9 + len(pieces)}
        obj = json.loads(chunk({})[6:])
        obj["choices"], obj["usage"] = [], usage
        events.append(f"data: {dumps(obj, script.spaced_json)}\n\n".encode())
    if script.ending == "done":
        events.append(b"data: [DONE]\n\n")
    return events


def chat_completion(script: Script, model: str, completion_id: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": script.text, "refusal": None}
    if script.tool_calls:
        message["content"] = None
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": dict(c)} for i, c in enumerate(script.tool_calls)
        ]
    n = len(split_pieces(script.text))
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if script.tool_calls else script.finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": n, "total_tokens": 9 + n},
    }


class ChatWire(Wire):
    name = "chat"
    paths = ("/v1/chat/completions",)

    def stream_events(self, script: Script, payload: dict[str, Any], n: int) -> list[bytes]:
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        return chat_events(script, model_of(payload), f"chatcmpl-{n:04d}", include_usage)

    def body(self, script: Script, payload: dict[str, Any], n: int) -> dict[str, Any]:
        return chat_completion(script, model_of(payload), f"chatcmpl-{n:04d}")


def model_of(payload: dict[str, Any], default: str = "gpt-4o-mini") -> str:
    model = payload.get("model")
    return model if isinstance(model, str) else default
