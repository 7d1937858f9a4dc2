"""responses, as the scripted upstream speaks it (following the provider's published reference)."""

from __future__ import annotations

from streamreplay.scripted.script import Wire


class ResponsesWire(Wire):
    name = "responses"
    paths: tuple[str, ...] = ()
