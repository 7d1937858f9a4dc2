""""Does my app notice?": an app's own code run against a replay under each cutoff, and the cutoffs it
took silently (returned normally, as if the answer were whole). What the pytest plugin's
`streamreplay.assert_notices_cutoffs(app)` runs; usable from any code with a `ReplayServer`."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamreplay.dialects import Dialect


def cutoffs(dialect: Dialect, chunks: int) -> list[str]:
    """The faults that end a stream of `dialect` early, as fault specs: the terminal event dropped, the stop
    field dropped (where a whole stream must carry one), a clean end, a close and a reset mid-answer."""
    middle = max(1, chunks // 2)
    specs = ["drop-done"]
    if dialect.name in ("chat", "azure", "anthropic"):  # a Responses or Ollama stream is whole without it
        specs.append("drop-finish")
    return [*specs, f"cut:chunk={middle}", f"close:chunk={middle}", f"reset:chunk={middle}"]


@dataclass
class Unnoticed:
    """A cutoff the app took as a whole answer: the fault, and what the app returned."""

    spec: str
    returned: Any

    def __str__(self) -> str:
        shown = repr(self.returned)
        return f"{self.spec}: returned {shown if len(shown) <= 80 else shown[:77] + '...'} without an error"


def _call(app: Callable[[str], Any], base_url: str) -> Any:
    """`app(base_url)`; an awaitable it returns is run to its end on a loop of its own, in a thread, so an
    async test (whose loop is running) can check an async app too."""
    result = app(base_url)
    if not inspect.isawaitable(result):
        return result
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = asyncio.run(_awaited(result))
        except BaseException as exc:  # handed to the caller's thread as the app's own error
            box["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def unnoticed_cutoffs(fault_url: Callable[[str], str], app: Callable[[str], Any], specs: list[str]) -> list[Unnoticed]:
    """Run `app(base_url)` once per fault spec (`fault_url(spec)` gives the base URL that applies it); the
    runs in which it returned normally. Raising anything counts as noticing."""
    missed = []
    for spec in specs:
        try:
            returned = _call(app, fault_url(spec))
        except Exception:
            continue
        missed.append(Unnoticed(spec, returned))
    return missed
