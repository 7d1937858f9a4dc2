"""Anthropic Messages, as the scripted upstream speaks it, following the published streaming reference:
`event: message_start` (the Message with empty content, output_tokens 1), then each content block as
`content_block_start`, its `content_block_delta`s and `content_block_stop` (a `ping` after the first
block's start), `message_delta` (stop_reason, stop_sequence, cumulative usage) and `message_stop`. Each
event is its `event:` line, its `data:` line whose "type" repeats the name, and a blank line.

Written apart from `streamreplay.dialects.anthropic` on purpose: the tests hold the dialect's synthesized
streams to these bytes, which a shared generator could not catch out.
"""

from __future__ import annotations

import json
from typing import Any

from streamreplay.dialects.anthropic import error_json, error_type
from streamreplay.scripted.chat import model_of
from streamreplay.scripted.script import Script, Wire, dumps, split_pieces

#: a Script's finish_reason (chat's words) as Anthropic's stop_reason
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
INPUT_TOKENS = 9
DEFAULT_MODEL = "claude-sonnet-4-5"


def stop_reason(script: Script) -> str | None:
    if script.tool_calls and script.finish_reason == "stop":
        return "tool_use"
    return STOP_REASONS.get(script.finish_reason or "", script.finish_reason)


def tool_id(i: int) -> str:
    return f"toolu_{i:02d}"


def _has_text_block(script: Script, pieces: list[str]) -> bool:
    # an answer that is only tool calls has no text block; an empty answer still has one
    return bool(pieces) or not script.tool_calls


def anthropic_events(script: Script, model: str, message_id: str) -> list[bytes]:
    """A Messages stream in Anthropic's wire format, one element per event."""

    def event(name: str, payload: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {dumps({'type': name, **payload}, script.spaced_json)}\n\n".encode()

    pieces = _pieces(script)
    message = {"id": message_id, "type": "message", "role": "assistant", "content": [], "model": model,
               "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1}}
    events = [event("message_start", {"message": message})]
    blocks: list[tuple[dict[str, Any], list[dict[str, str]]]] = []
    if _has_text_block(script, pieces):
        blocks.append(({"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in pieces]))
    for i, call in enumerate(script.tool_calls or []):
        args = call.get("arguments", "")
        # the API opens every tool input with an empty piece
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *_eights(args)]]
        blocks.append(({"type": "tool_use", "id": tool_id(i), "name": call["name"], "input": {}}, deltas))
    for index, (block, deltas) in enumerate(blocks):
        events.append(event("content_block_start", {"index": index, "content_block": block}))
        if index == 0:
            events.append(b'event: ping\ndata: {"type": "ping"}\n\n')  # spaced, as the API writes it
        events += [event("content_block_delta", {"index": index, "delta": d}) for d in deltas]
        events.append(event("content_block_stop", {"index": index}))
    events.append(event("message_delta", {"delta": {"stop_reason": stop_reason(script), "stop_sequence": None},
                                          "usage": {"output_tokens": len(pieces)}}))
    if script.ending != "no_done":
        events.append(event("message_stop", {}))
    return events


def _pieces(script: Script) -> list[str]:
    """The text deltas; one output token each."""
    return script.pieces if script.pieces is not None else split_pieces(script.text)


def _eights(text: str) -> list[str]:
    return [text[j : j + 8] for j in range(0, len(text), 8)]


def anthropic_message(script: Script, model: str, message_id: str) -> dict[str, Any]:
    """The Message a non-stream request gets."""
    pieces = _pieces(script)
    content: list[dict[str, Any]] = []
    if _has_text_block(script, pieces):
        content.append({"type": "text", "text": script.text})
    for i, call in enumerate(script.tool_calls or []):
        content.append({"type": "tool_use", "id": tool_id(i), "name": call["name"],
                        "input": json.loads(call.get("arguments") or "{}")})
    return {"id": message_id, "type": "message", "role": "assistant", "content": content, "model": model,
            "stop_reason": stop_reason(script), "stop_sequence": None,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": len(pieces)}}


class AnthropicWire(Wire):
    name = "anthropic"
    paths = ("/v1/messages",)

    def stream_events(self, script: Script, payload: dict[str, Any], n: int) -> list[bytes]:
        return anthropic_events(script, model_of(payload, DEFAULT_MODEL), f"msg_{n:04d}")

    def body(self, script: Script, payload: dict[str, Any], n: int) -> dict[str, Any]:
        return anthropic_message(script, model_of(payload, DEFAULT_MODEL), f"msg_{n:04d}")

    def error(self, status: int) -> dict[str, Any]:
        return error_json(error_type(status), f"scripted error {status}")

    def default_stop_after(self, events: list[bytes]) -> int:
        # every delta written; the last block's stop, message_delta and message_stop never come
        return len(events) - 3
