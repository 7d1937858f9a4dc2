"""Which event loop the daemons run on: uvloop when it is installed (the benchmark measured it faster),
asyncio's own otherwise, or when STREAMREPLAY_UVLOOP=0 asks for it (for comparing the two)."""

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


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    if uvloop_wanted():
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)
