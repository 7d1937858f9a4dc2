"""OpenAI's Responses API (`POST /v1/responses`, `stream: true`): SSE with `event:` lines, from
`response.created` to `response.completed` / `response.incomplete` / `response.failed`; no `[DONE]`."""

from __future__ import annotations

from streamreplay.dialects.base import Dialect


class Responses(Dialect):
    name = "responses"
    label = "OpenAI Responses API"
    terminal = "response.completed"
    stop_field = "status"
    length_reasons = frozenset({"length", "max_output_tokens"})

    def recognises(self, path: str) -> bool:
        return path.rstrip("/").endswith("/responses")
