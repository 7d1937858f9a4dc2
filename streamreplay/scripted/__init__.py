"""The scripted upstream's wire formats, one module per provider dialect (`Wire`), and the `Script`
every one of them follows. `streamreplay.testing.ScriptedUpstream` serves them."""

from __future__ import annotations

from streamreplay.scripted.chat import ChatWire
from streamreplay.scripted.script import Wire

#: every wire the scripted upstream serves, by dialect name
WIRES: dict[str, Wire] = {wire.name: wire for wire in (ChatWire(),)}
