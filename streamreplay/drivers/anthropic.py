"""Reference drivers for the anthropic dialect: its real client libraries, each reduced to an `Outcome`."""

from __future__ import annotations

from streamreplay.clientid import Client
from streamreplay.outcome import Driver

DRIVERS: dict[Client, Driver] = {}
