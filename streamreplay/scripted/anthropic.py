"""anthropic, as the scripted upstream speaks it (following the provider's published reference)."""

from __future__ import annotations

from streamreplay.scripted.script import Wire


class AnthropicWire(Wire):
    name = "anthropic"
    paths: tuple[str, ...] = ()
