"""OpenAI's Responses API, as the scripted upstream speaks it: the response object as the API reference
and recorded API streams show it (member order included), streamed as the documented event sequence
(`streamreplay.dialects.responses.response_events`)."""

from __future__ import annotations

from typing import Any

from streamreplay.dialects.responses import chunk_pieces, response_events
from streamreplay.scripted.chat import model_of
from streamreplay.scripted.script import CREATED, Script, Wire, split_pieces


def status_for(finish_reason: str | None) -> tuple[str | None, str | None]:
    """A Script's finish_reason (chat's words) as the response's status and incomplete reason."""
    if finish_reason is None:
        return None, None
    if finish_reason in ("stop", "tool_calls"):
        return "completed", None
    return "incomplete", {"length": "max_output_tokens"}.get(finish_reason, finish_reason)


def response_object(script: Script, payload: dict[str, Any], n: int, pieces: list[str]) -> dict[str, Any]:
    """The final response for a script: a message whose text is the pieces (none when there are none),
    then a function_call item per tool call; usage counts the pieces. A finish_reason of None leaves
    the status null (a response that says nothing about why it stopped)."""
    status, reason = status_for(script.finish_reason)
    item_status = "incomplete" if status == "incomplete" else "completed"
    output: list[dict[str, Any]] = []
    if pieces:
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": "".join(pieces)}
        output.append({"id": f"msg_{n:04d}", "type": "message", "status": item_status, "content": [part],
                       "role": "assistant"})
    for i, call in enumerate(script.tool_calls or []):
        output.append({"id": f"fc_{n:04d}_{i}", "type": "function_call", "status": item_status,
                       "arguments": call.get("arguments", ""), "call_id": f"call_{i}", "name": call["name"]})
    arguments = sum(len(chunk_pieces(c.get("arguments", ""))) for c in script.tool_calls or [])
    output_tokens = len(pieces) + arguments
    usage = {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": output_tokens,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 9 + output_tokens}

    def asked(key: str, default: Any) -> Any:
        return payload[key] if payload.get(key) is not None else default

    return {
        "id": f"resp_{n:04d}",
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": reason} if reason else None,
        "instructions": asked("instructions", None),
        "max_output_tokens": asked("max_output_tokens", None),
        "max_tool_calls": asked("max_tool_calls", None),
        "model": model_of(payload, "gpt-4.1-mini"),
        "output": output,
        "parallel_tool_calls": asked("parallel_tool_calls", True),
        "previous_response_id": asked("previous_response_id", None),
        "prompt_cache_key": asked("prompt_cache_key", None),
        "reasoning": asked("reasoning", {"effort": None, "summary": None}),
        "safety_identifier": asked("safety_identifier", None),
        "service_tier": "default",
        "store": asked("store", True),
        "temperature": asked("temperature", 1.0),
        "text": asked("text", {"format": {"type": "text"}}),
        "tool_choice": asked("tool_choice", "auto"),
        "tools": asked("tools", []),
        "top_p": asked("top_p", 1.0),
        "truncation": asked("truncation", "disabled"),
        "usage": usage,
        "user": asked("user", None),
        "metadata": asked("metadata", {}),
    }


class ResponsesWire(Wire):
    name = "responses"
    paths = ("/v1/responses",)

    def stream_events(self, script: Script, payload: dict[str, Any], n: int) -> list[bytes]:
        pieces = script.pieces if script.pieces is not None else split_pieces(script.text)
        response = response_object(script, payload, n, pieces)
        obfuscate = (payload.get("stream_options") or {}).get("include_obfuscation") is not False
        # a null status has no terminal event of its own: that stream ends with response.completed
        events = response_events(response, text_pieces=lambda _text: list(pieces), obfuscate=obfuscate,
                                 terminal=script.ending != "no_done",
                                 ends_with=None if response["status"] else "response.completed")
        return events or []

    def body(self, script: Script, payload: dict[str, Any], n: int) -> dict[str, Any]:
        return response_object(script, payload, n, split_pieces(script.text))

    def default_stop_after(self, events: list[bytes]) -> int:
        """Every delta, then the ending: the .done events and the terminal event never come."""
        deltas = [i for i, e in enumerate(events) if e.split(b"\n", 1)[0].endswith(b".delta")]
        return deltas[-1] + 1 if deltas else len(events) - 1
