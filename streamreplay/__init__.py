"""streamreplay: record streamed OpenAI-compatible answers chunk by chunk, replay them byte-exact.

The names users script with, all importable from here:

    from streamreplay import RecordingProxy, RecordOptions, ReplayServer, ReplayOptions

They load on first use (PEP 562), so `import streamreplay` and the CLI stay quick to start.
"""

from __future__ import annotations

import importlib
from typing import Any

from streamreplay.endcause import EndCause

__version__ = "0.1.0"

#: name -> module that defines it
_EXPORTS = {
    "RecordingProxy": "streamreplay.proxy.recorder",
    "RecordOptions": "streamreplay.proxy.recorder",
    "ReplayServer": "streamreplay.replay.server",
    "ReplayOptions": "streamreplay.replay.options",
    "Replayed": "streamreplay.replay.replayed",
    "Store": "streamreplay.store",
    "StoreError": "streamreplay.store",
    "open_store": "streamreplay.store",
    "Exchange": "streamreplay.exchange",
    "Chunk": "streamreplay.exchange",
    "Fault": "streamreplay.replay.faults",
    "FaultSpecError": "streamreplay.replay.faults",
    "parse_faults": "streamreplay.replay.faults",
    "register_matcher": "streamreplay.replay.matching",
    "ScriptedUpstream": "streamreplay.testing",
    "Script": "streamreplay.testing",
}

__all__ = ["EndCause", "__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'streamreplay' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
