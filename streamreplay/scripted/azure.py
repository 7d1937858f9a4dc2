"""Azure OpenAI chat.completions, as the scripted upstream speaks it.

Followed: Azure's streams as captured from its default content filter and quoted in client test suites
(a gpt-4o-2024-11-20 stream; Microsoft's "Content filter streaming" page shows the same first event). Azure
re-serialises OpenAI's chunks, so what differs from OpenAI's wire is:

* every object's keys in alphabetical order (top level, each choice, each delta), except the items of
  `prompt_filter_results`, which lead with `prompt_index`;
* a first event with no choices and empty metadata (`"created":0,"id":"","model":"","object":""`) that
  carries the prompt's `prompt_filter_results`;
* `content_filter_results` in every choice: the four category verdicts on a chunk with content, `{}` on the
  role, tool-call and finish chunks;
* the model's own name in `model` (not the deployment's), and `"usage":null` in each chunk only when the
  request asked for usage, whose chunk comes last with no choices;
* errors as Azure's `{"error": {"code": "429", "message": ...}}`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from streamreplay.scripted.script import CREATED, FINGERPRINT, Script, Wire, dumps, split_pieces

#: what Azure answers in `model`: the deployed model's name and version
AZURE_MODEL = "gpt-4o-mini-2024-07-18"

_SAFE = {"filtered": False, "severity": "safe"}
#: the verdicts on a chunk of the answer
CONTENT_FILTER_RESULTS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
#: the verdicts on the prompt, first event of every stream and in every whole answer
PROMPT_FILTER_RESULTS = [{"prompt_index": 0, "content_filter_results": {
    "hate": _SAFE, "jailbreak": {"filtered": False, "detected": False}, "self_harm": _SAFE, "sexual": _SAFE,
    "violence": _SAFE}}]


def azure_events(script: Script, completion_id: str, include_usage: bool) -> list[bytes]:
    """A chat.completions stream in Azure's wire format, one element per SSE event."""

    def event(obj: dict[str, Any]) -> bytes:
        return f"data: {dumps(obj, script.spaced_json)}\n\n".encode()

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        obj: dict[str, Any] = {"choices": choices, "created": CREATED, "id": completion_id, "model": AZURE_MODEL,
                               "object": "chat.completion.chunk", "system_fingerprint": FINGERPRINT}
        if include_usage:
            obj["usage"] = None
        obj.update(extra)
        return event(obj)

    def choice(delta: dict[str, Any], filters: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"content_filter_results": filters, "delta": delta, "finish_reason": finish, "index": 0,
                 "logprobs": None}]

    events = [event({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                     "prompt_filter_results": PROMPT_FILTER_RESULTS})]
    events.append(chunk(choice({"content": "", "refusal": None, "role": "assistant"}, {})))
    pieces = script.pieces if script.pieces is not None else split_pieces(script.text)
    events += [chunk(choice({"content": piece}, CONTENT_FILTER_RESULTS)) for piece in pieces]
    for i, call in enumerate(script.tool_calls or []):
        start = {"function": {"arguments": "", "name": call["name"]}, "id": f"call_{i}", "index": i, "type": "function"}
        events.append(chunk(choice({"tool_calls": [start]}, {})))
        args = call.get("arguments", "")
        events += [chunk(choice({"tool_calls": [{"function": {"arguments": args[j : j + 8]}, "index": i}]}, {}))
                   for j in range(0, len(args), 8)]
    finish = "tool_calls" if script.finish_reason == "stop" and script.tool_calls else script.finish_reason
    events.append(chunk(choice({}, {}, finish)))
    if include_usage:
        events.append(chunk([], usage=_usage(len(pieces))))
    if script.ending == "done":
        events.append(b"data: [DONE]\n\n")
    return events


def async_filter_events(script: Script, completion_id: str, blocked: bool = False) -> list[bytes]:
    """A stream under Azure's Asynchronous Filter (Microsoft's "Content filter streaming" page): the tokens
    come at once and without verdicts, and the verdicts follow in annotation chunks (empty metadata, a choice
    with no `delta`, `content_filter_offsets`). `blocked`: the last annotation stops the answer with
    `finish_reason: "content_filter"` (protected material) after the tokens already sent, and no finish chunk
    comes. `script.ending == "no_done"` leaves out [DONE], as ever."""
    events = azure_events(replace(script, ending="done"), completion_id, include_usage=False)
    spaced = script.spaced_json

    def without_verdicts(event: bytes) -> bytes:
        obj = json.loads(event[6:])
        for choice in obj["choices"]:
            del choice["content_filter_results"]
        return f"data: {dumps(obj, spaced)}\n\n".encode()

    def annotation(finish: str | None, verdicts: dict[str, Any], check_offset: int) -> bytes:
        offsets = {"check_offset": check_offset, "end_offset": len(script.text), "start_offset": 0}
        choice = {"content_filter_offsets": offsets, "content_filter_results": verdicts, "finish_reason": finish,
                  "index": 0}
        obj = {"choices": [choice], "created": 0, "id": "", "model": "", "object": ""}
        return f"data: {dumps(obj, spaced)}\n\n".encode()

    out = [events[0], *(without_verdicts(e) for e in events[1:-2])]
    if blocked:
        out += [annotation(None, CONTENT_FILTER_RESULTS, 0),
                annotation("content_filter", {"protected_material_text": {"detected": True, "filtered": True}}, 0)]
    else:
        out += [without_verdicts(events[-2]), annotation(None, CONTENT_FILTER_RESULTS, len(script.text))]
    return out + ([events[-1]] if script.ending == "done" else [])


def azure_completion(script: Script, completion_id: str) -> dict[str, Any]:
    """The whole (non-stream) answer, as Azure sends it."""
    message: dict[str, Any] = {"content": script.text, "refusal": None, "role": "assistant"}
    if script.tool_calls:
        message["content"] = None
        message["tool_calls"] = [{"function": {"arguments": c.get("arguments", ""), "name": c["name"]},
                                  "id": f"call_{i}", "type": "function"} for i, c in enumerate(script.tool_calls)]
    finish = "tool_calls" if script.tool_calls else script.finish_reason
    return {
        "choices": [{"content_filter_results": CONTENT_FILTER_RESULTS, "finish_reason": finish, "index": 0,
                     "logprobs": None, "message": message}],
        "created": CREATED,
        "id": completion_id,
        "model": AZURE_MODEL,
        "object": "chat.completion",
        "prompt_filter_results": PROMPT_FILTER_RESULTS,
        "system_fingerprint": FINGERPRINT,
        "usage": _usage(len(split_pieces(script.text))),
    }


def _usage(completion_tokens: int) -> dict[str, int]:
    return {"completion_tokens": completion_tokens, "prompt_tokens": 9, "total_tokens": 9 + completion_tokens}


class AzureWire(Wire):
    name = "azure"
    paths = ("/openai/deployments/{deployment}/chat/completions",)

    def stream_events(self, script: Script, payload: dict[str, Any], n: int) -> list[bytes]:
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        return azure_events(script, f"chatcmpl-{n:04d}", include_usage)

    def body(self, script: Script, payload: dict[str, Any], n: int) -> dict[str, Any]:
        return azure_completion(script, f"chatcmpl-{n:04d}")

    def error(self, status: int) -> dict[str, Any]:
        # as Azure's gateway writes a 429 or a 401: the status as a string code, no type or param
        return {"error": {"code": str(status), "message": f"scripted error {status}"}}

    def default_stop_after(self, events: list[bytes]) -> int:
        # all before the finish chunk (the last with a choice): it and what follows (usage, [DONE]) never come
        with_choices = [i for i, e in enumerate(events) if _has_choices(e)]
        return with_choices[-1] if with_choices else super().default_stop_after(events)


def _has_choices(event: bytes) -> bool:
    try:  # `raw` scripts send anything
        obj = json.loads(event.removeprefix(b"data: "))
    except ValueError:
        return False
    return isinstance(obj, dict) and bool(obj.get("choices"))
