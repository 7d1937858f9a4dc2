"""The replay server's options, declared once: `ReplayServer` takes them, `streamreplay play` shows them.

Each field's metadata holds its one-line help (what `play --help` says) and what else the command line
needs to know: `choices`, a `min`imum, and for a switch that is on by default, `off_help` (the help of
the flag that turns it off).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamreplay.replay.faults import Fault
from streamreplay.replay.matching import DEFAULT_MATCH_ON, MATCH_MODES
from streamreplay.replay.onmiss import ON_MISS, NotFound, OnMiss, RecordFromUpstream
from streamreplay.replay.source import DEFAULT_CACHE_BYTES, TapeSource
from streamreplay.wire import DEFAULT_MAX_BODY

__all__ = ["DEFAULT_KEEP_REQUESTS", "ReplayOptions"]

#: `Replayed` records kept on `ReplayServer.requests`: a server that runs for days must not grow with
#: every request it answers (each record holds an offset per chunk); `counts` keeps the totals
DEFAULT_KEEP_REQUESTS = 1000


def option(default: Any, help: str, **cli: Any) -> Any:
    """A field with its help text and what the command line reads of it (see the module's docstring)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class ReplayOptions:
    """Options of `ReplayServer` and `streamreplay play`, each with the help text the CLI shows."""

    source: str | Path | TapeSource = field(metadata={
        "help": "The recordings: a SQLite DB, a .jsonl cassette, or a TapeSource."})
    tape: str | None = option(None, "Serve only this tape (default: every exchange in the DB, or the cassette).")
    speed: float = option(1.0, "1 recorded timing, 2 twice as fast, 0 no waits.", min=0)
    faults: tuple[Fault | str, ...] = option((), "A fault for every request, e.g. cut:chunk=3 (repeatable).")
    match: str = option("key", "key: by method, path and body; sequence: the tape's exchanges in order, "
                               "whatever the body.", choices=MATCH_MODES)
    match_on: tuple[str, ...] = option(DEFAULT_MATCH_ON, "The matchers of key mode, by name, in the order a miss "
                                                         "is explained (streamreplay.replay.matching.MATCHERS).")
    ignore_fields: tuple[str, ...] = option((), "A request body field matching ignores (repeatable).")
    repeat: bool = option(True, "Serve the last recording again once identical requests have used up theirs.",
                          off_help="Answer a miss once identical requests have used up their recordings.")
    upstream: str | None = option(None, "Forward a miss to this upstream and record it (VCR's new_episodes).")
    record_db: str | Path | None = option(None, "The DB misses are recorded into (default: the DB played).")
    on_miss: str | OnMiss | None = option(None, f"What a miss gets: one of {', '.join(ON_MISS)}, or an OnMiss "
                                                "policy (default: record when there is an upstream, else 404).")
    prefix: str = option("/v1", "Base path the clients use.")
    max_body: int = option(DEFAULT_MAX_BODY, "Largest request body, bytes.")
    keep_requests: int = option(DEFAULT_KEEP_REQUESTS, "Requests whose full record (offsets, ending) stays in "
                                                       "memory; totals count them all.", min=0)
    cache_bytes: int = option(DEFAULT_CACHE_BYTES, "Memory for recordings' chunks read from the DB (least "
                                                   "recently replayed dropped first).", min=0)
    log: Callable[[str], None] | None = option(None, "Called with each request's line as it ends.")

    def miss_policy(self) -> OnMiss:
        """The policy `on_miss` names (None: "record" when there is an upstream, else "404")."""
        chosen = self.on_miss
        if isinstance(chosen, OnMiss):
            if self.upstream is not None:
                raise ValueError("an upstream is only used to record misses (on_miss='record'); a policy object "
                                 "takes its own")
            return chosen
        chosen = chosen or ("record" if self.upstream is not None else "404")
        if chosen not in ON_MISS:
            raise ValueError(f"on_miss must be one of {', '.join(ON_MISS)}, not {chosen!r}")
        if (chosen == "record") != (self.upstream is not None):
            raise ValueError("on_miss='record' needs an upstream, and an upstream is only used to record misses")
        if self.upstream is None:
            return NotFound()
        return RecordFromUpstream(self.upstream, self.record_db, self.tape, self.log, self.cache_bytes)
