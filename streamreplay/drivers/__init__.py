"""Reference drivers for the dialects beyond OpenAI chat: one module per dialect, each a `DRIVERS`
dict keyed by `Client`. `streamreplay.clients.DRIVERS` holds them all."""

from __future__ import annotations

from streamreplay.clientid import Client
from streamreplay.drivers import anthropic, azure, ollama, responses
from streamreplay.outcome import Driver

DIALECT_DRIVERS: dict[Client, Driver] = {**responses.DRIVERS, **anthropic.DRIVERS, **azure.DRIVERS, **ollama.DRIVERS}
