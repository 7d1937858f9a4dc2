"""Azure OpenAI chat.completions (`/openai/deployments/{name}/chat/completions?api-version=...`): the
chat format, with a first chunk that has no choices and carries `prompt_filter_results`, and a
`content_filter_results` verdict in every choice.

Everything that reads a stream is chat's: the terminal marker is `data: [DONE]`, the stop reason
`finish_reason`, and the metadata-only chunks (the prompt filter's, the usage chunk) add no text. What is
Azure's own: its error body (`{"error": {"code", "message"}}`) and the filter verdicts, which a whole
answer made from a stream keeps (`prompt_filter_results` at the top, the answer's `content_filter_results`
in its choice) and a stream made from a whole answer gives back where Azure puts them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from streamreplay.dialects.chat import Chat
from streamreplay.sse import SSEParser

_DEPLOYMENT = re.compile(r"/deployments/[^/]+/(?:chat/)?completions$")


class Azure(Chat):
    name = "azure"
    label = "Azure OpenAI chat.completions"
    matrix_tape = "azure-openai"

    def recognises(self, path: str) -> bool:
        return _DEPLOYMENT.search(path.rstrip("/")) is not None

    def error_body(self, message: str, status: int) -> bytes:
        # as Azure's gateway writes a 429 or a 401: the status as a string code, no type or param
        return json.dumps({"error": {"code": str(status), "message": message}}).encode()

    def whole_body(self, stream_body: bytes) -> dict[str, Any] | None:
        whole = super().whole_body(stream_body)
        if whole is None:
            return None
        prompt_filters, content_filters = _filter_results(stream_body)
        choice = whole["choices"][0]
        if content_filters is not None:
            choice["content_filter_results"] = content_filters
        choice["message"] = dict(sorted(choice["message"].items()))
        whole["choices"] = [dict(sorted(choice.items()))]
        if prompt_filters is not None:
            whole["prompt_filter_results"] = prompt_filters
        return dict(sorted(whole.items()))  # Azure writes every key in order

    def stream_events(self, whole: dict[str, Any]) -> list[bytes] | None:
        events = super().stream_events(whole)
        if events is None:
            return None
        choices = whole.get("choices")
        choice = next((c for c in choices if isinstance(c, dict)), {}) if isinstance(choices, list) else {}
        content_filters = choice.get("content_filter_results")
        prompt_filters = whole.get("prompt_filter_results")
        if content_filters is None and prompt_filters is None:
            return events  # not an Azure answer (an OpenAI-compatible server behind an Azure-style path)
        out = [_event({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                       "prompt_filter_results": prompt_filters})] if prompt_filters is not None else []
        return out + [_azure_chunk(event, content_filters) for event in events]


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _azure_chunk(event: bytes, content_filters: Any) -> bytes:
    """One of chat's synthesized chunks as Azure writes it: keys in order, a filter verdict in its choice
    (the answer's on a chunk with content, none on the others)."""
    if not event.startswith(b"data: {"):
        return event  # [DONE]
    obj = json.loads(event[6:])
    choices = []
    for choice in obj["choices"]:
        delta = dict(sorted(choice["delta"].items()))
        filters = content_filters if content_filters is not None and delta.get("content") else {}
        choices.append(dict(sorted({**choice, "delta": delta, "content_filter_results": filters}.items())))
    return _event(dict(sorted({**obj, "choices": choices}.items())))


def _filter_results(stream_body: bytes) -> tuple[list | None, dict | None]:
    """The prompt's filter verdicts (the first event that has them) and the answer's: each category's last
    verdict over the stream, a filtered one kept over any later."""
    prompt_filters: list | None = None
    content_filters: dict | None = None
    parser = SSEParser()
    for event in parser.feed(stream_body) + parser.close():
        try:
            obj = json.loads(event.data)
        except (ValueError, RecursionError):
            continue  # not JSON ([DONE], a torn event): the assembler has said so already
        if not isinstance(obj, dict):
            continue
        if prompt_filters is None and isinstance(obj.get("prompt_filter_results"), list):
            prompt_filters = obj["prompt_filter_results"]
        choices = obj.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not (isinstance(choice, dict) and choice.get("index", 0) == 0):
                continue
            verdicts = choice.get("content_filter_results")
            if not isinstance(verdicts, dict):
                continue
            content_filters = {} if content_filters is None else content_filters
            for category, verdict in verdicts.items():
                if not _filtered(content_filters.get(category)):
                    content_filters[category] = verdict
    return prompt_filters, content_filters


def _filtered(verdict: Any) -> bool:
    return isinstance(verdict, dict) and verdict.get("filtered") is True
