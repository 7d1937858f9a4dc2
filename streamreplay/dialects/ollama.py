"""Ollama's native chat API (`POST /api/chat`): newline-delimited JSON, streamed unless `stream` is
false, ending with a `done: true` line that carries `done_reason`."""

from __future__ import annotations

from streamreplay.dialects.base import Dialect


class Ollama(Dialect):
    name = "ollama"
    label = "Ollama /api/chat"
    terminal = "done: true"
    stop_field = "done_reason"
    stream_content_type = "application/x-ndjson"

    def recognises(self, path: str) -> bool:
        return path.rstrip("/").endswith(("/api/chat", "/api/generate"))
