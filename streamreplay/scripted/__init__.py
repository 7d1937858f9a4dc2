"""The scripted upstream's wire formats, one module per provider dialect (`Wire`), and the `Script`
every one of them follows. `streamreplay.testing.ScriptedUpstream` serves them."""

from __future__ import annotations

from streamreplay.scripted.anthropic import AnthropicWire
from streamreplay.scripted.azure import AzureWire
from streamreplay.scripted.chat import ChatWire
from streamreplay.scripted.ollama import OllamaWire
from streamreplay.scripted.responses import ResponsesWire
from streamreplay.scripted.script import Wire

#: every wire the scripted upstream serves, by dialect name
WIRES: dict[str, Wire] = {wire.name: wire for wire in (ChatWire(), ResponsesWire(), AnthropicWire(), AzureWire(),
                                                        OllamaWire())}
