"""Which event loop a daemon runs on.

The recording proxy runs on uvloop when it is installed: the benchmark measured more throughput and
lower added latency with it. Replay runs on asyncio's own loop: its timers read the clock when they
are set, while uvloop's use the time cached at the start of the loop's iteration, which made replay
offsets late by tens of milliseconds under 100 concurrent streams. STREAMREPLAY_UVLOOP=0 turns
uvloop off everywhere (for comparing the two).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any


def uvloop_wanted() -> bool:
    if os.environ.get("STREAMREPLAY_UVLOOP", "1") == "0":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run(coro: Coroutine[Any, Any, Any], precise_timers: bool = False) -> Any:
    if not precise_timers and uvloop_wanted():
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)
