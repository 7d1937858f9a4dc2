"""Anthropic Messages (`POST /v1/messages`, `stream: true`): `message_start`, `content_block_*`, `ping`,
`message_delta` (stop_reason, usage), `message_stop`, `error`."""

from __future__ import annotations

from streamreplay.dialects.base import Dialect


class Anthropic(Dialect):
    name = "anthropic"
    label = "Anthropic Messages"
    terminal = "message_stop"
    stop_field = "stop_reason"
    length_reasons = frozenset({"max_tokens"})

    def recognises(self, path: str) -> bool:
        return path.rstrip("/").endswith("/messages")
