"""`streamreplay bisect`: find where an app flips from good to bad, by chunk, by timing, or by client.

Each step replays the one exchange under a candidate fault and asks an oracle: by default a
command's exit status, as `git bisect run` reads it (0 good, 125 skip, anything else bad), run
with OPENAI_BASE_URL and STREAMREPLAY_BASE_URL pointing at the replay; with the `client` oracle,
what the replay server saw the client do. One server serves every step; the fault rides in the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shlex
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streamreplay.dialects import CHAT, Dialect
from streamreplay.replay import ReplayServer
from streamreplay.replay.source import OneExchange
from streamreplay.report import chunk_events, describe_event
from streamreplay.store import Chunk, Store

GOOD, BAD, SKIP = "good", "bad", "skip"
CUT_KINDS = ("cut", "close", "reset", "error-event")


@dataclass
class Step:
    value: float
    spec: str
    verdict: str
    seconds: float


@dataclass
class Result:
    axis: str
    answer: str
    steps: list[Step] = field(default_factory=list)
    boundary: dict[str, Any] = field(default_factory=dict)
    replay: str = ""

    @property
    def runs(self) -> int:
        return len(self.steps)


class CommandOracle:
    """Runs the check command against the replay; its exit status is the verdict."""

    def __init__(self, command: str, timeout: float | None = None) -> None:
        self.command = command
        self.timeout = timeout

    async def judge(self, base_url: str, server: ReplayServer) -> str:
        env = dict(os.environ, OPENAI_BASE_URL=base_url, STREAMREPLAY_BASE_URL=base_url)
        env.setdefault("OPENAI_API_KEY", "streamreplay-replay")
        # its own process group, so that a timeout or a Ctrl-C takes the check's children down too
        proc = await asyncio.create_subprocess_shell(self.command, env=env, start_new_session=True,
                                                     stdout=asyncio.subprocess.DEVNULL,
                                                     stderr=asyncio.subprocess.DEVNULL)
        try:
            code = await asyncio.wait_for(proc.wait(), self.timeout)
        except BaseException:
            _kill_group(proc)
            await proc.wait()
            raise
        return GOOD if code == 0 else SKIP if code == 125 else BAD


class ClientOracle(CommandOracle):
    """Good when every request of the run was read to its end without leaving early or retrying."""

    async def judge(self, base_url: str, server: ReplayServer) -> str:
        # from the server's totals, not its records: a check may make more requests than it keeps
        before = server.counts.snapshot()
        await super().judge(base_url, server)
        await asyncio.sleep(0.05)  # the server notes a client that left as the connection drops
        after = server.counts
        if after.requests == before.requests:
            return SKIP
        clean = after.unfinished == before.unfinished and after.retries == before.retries
        return GOOD if clean else BAD


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _skipped_end(spec: str) -> str:
    # a skip (exit 125) says nothing about the app: calling it good or bad would send the search astray
    return f"the check skipped {spec}, an end of the range: nothing to search between"


def chunk_text(chunks: list[Chunk], index: int, dialect: Dialect = CHAT) -> str:
    """What chunk `index` carries, in words: its delta text, finish_reason or [DONE]."""
    events = chunk_events(chunks[: index + 1], dialect)[index]
    parts = [repr(r.text) if r.text else describe_event(r, dialect).strip("<>") or "(no text)" for r in events]
    return ", ".join(parts) or f"{len(chunks[index].data)} bytes, no whole event"


class Bisector:
    def __init__(self, store: Store, exchange_id: int, oracle: CommandOracle, speed: float = 0.0,
                 progress: Callable[[str], None] | None = None, db_label: str = "") -> None:
        self.exchange = store.exchange(exchange_id)
        self.chunks = store.chunks(exchange_id)
        self.oracle = oracle
        self.speed = speed
        self.progress = progress or (lambda line: None)
        self.db_label = db_label or str(store.path)
        self.steps: list[Step] = []

    async def _try(self, server: ReplayServer, value: float, spec: str) -> str:
        started = time.monotonic()
        verdict = await self.oracle.judge(server.fault_url(spec), server)
        self.steps.append(Step(value, spec, verdict, time.monotonic() - started))
        self.progress(f"step {len(self.steps)}: {spec:<28} {verdict}  ({time.monotonic() - started:.1f} s)")
        return verdict

    def _server(self) -> ReplayServer:
        return ReplayServer(OneExchange(self.exchange, self.chunks), speed=self.speed, match="sequence")

    def _replay(self, spec: str, speed: float) -> str:
        # at the speed the search ran: the printed command replays the very run that was judged bad
        at_speed = "" if speed == 1.0 else f" --speed {speed:g}"
        return (f"streamreplay play --db {shlex.quote(self.db_label)} --tape {shlex.quote(self.exchange.tape)}"
                f"{at_speed} --fault {spec}")

    async def by_chunk(self, kind: str = "cut") -> Result:
        """The smallest cut point at which the app is good: everything it needs is before it."""
        if kind not in CUT_KINDS:
            raise ValueError(f"--fault must be one of {', '.join(CUT_KINDS)}")
        n = len(self.chunks)
        result = Result("chunk", "")
        async with self._server() as server:

            def spec(k: int) -> str:
                return f"{kind}:chunk={k}"

            self.steps = []  # a reused Bisector counts each search's runs on their own
            top = await self._try(server, n, spec(n))
            bottom = await self._try(server, 0, spec(0)) if top == GOOD else None
            if SKIP in (top, bottom):
                result.answer = _skipped_end(spec(n) if top == SKIP else spec(0))
            elif top != GOOD:
                result.answer = f"bad even with all {n} chunks delivered ({spec(n)}): the cut is not what breaks it"
            elif bottom != BAD:
                result.answer = f"good even with no chunk delivered ({spec(0)}): the app does not depend on this stream"
            else:
                lo, hi = 0, n  # lo bad, hi good
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    verdict = await self._try(server, mid, spec(mid))
                    if verdict == SKIP:
                        result.answer = f"the check skipped {spec(mid)}: cannot tell between {lo} and {hi}"
                        break
                    lo, hi = (lo, mid) if verdict == GOOD else (mid, hi)
                else:
                    needed = hi - 1
                    what = chunk_text(self.chunks, needed, self.exchange.dialect)
                    result.answer = (f"bad for {kind} at or before chunk {lo}, good from {hi}: the app needs chunk "
                                     f"{needed} ({what})")
                    result.boundary = {"bad": lo, "good": hi, "needed_chunk": needed, "chunk": what}
                    result.replay = self._replay(spec(lo), self.speed)
        result.steps = self.steps
        return result

    def largest_gap_chunk(self) -> int:
        previous, best, best_gap = self.exchange.headers_ns or 0, 0, -1
        for chunk in self.chunks:
            if chunk.t_ns - previous > best_gap:
                best, best_gap = chunk.index, chunk.t_ns - previous
            previous = chunk.t_ns
        return best

    async def _threshold(self, server: ReplayServer, low: float, high: float, resolution: float,
                         spec: Callable[[float], str], unit: str) -> tuple[float, float] | str:
        """Binary search for the flip between `low` (expected good) and `high` (expected bad): the pair
        (last good, first bad), or why there is none. Real time, so it says how long is left."""
        if not resolution > 0:  # 0 would divide by zero below, a negative one would never stop searching
            raise ValueError(f"--resolution must be more than 0, not {resolution:g}")
        planned = math.ceil(math.log2(max((high - low) / resolution, 1))) + 2
        started = time.monotonic()
        self.steps = []  # a reused Bisector counts each search's runs on their own
        verdict = await self._try(server, low, spec(low))
        if verdict != GOOD:
            return _skipped_end(spec(low)) if verdict == SKIP else \
                f"bad even at {low:g}{unit} ({spec(low)}): something else breaks it"
        verdict = await self._try(server, high, spec(high))
        if verdict != BAD:
            return _skipped_end(spec(high)) if verdict == SKIP else \
                f"good even at {high:g}{unit} ({spec(high)}): raise --max to find a limit"
        lo, hi = low, high
        while hi - lo > resolution:
            mid = (lo + hi) / 2
            done = len(self.steps)
            left = (planned - done) * (time.monotonic() - started) / done
            self.progress(f"  trying {mid:.3f}{unit}; about {left:.0f} s left")
            verdict = await self._try(server, mid, spec(mid))
            if verdict == SKIP:
                return f"the check skipped {spec(mid)}: cannot tell between {lo:.3f} and {hi:.3f}{unit}"
            lo, hi = (mid, hi) if verdict == GOOD else (lo, mid)
        return lo, hi

    async def by_timing(self, at_chunk: int | None = None, maximum: float = 60.0, resolution: float = 0.1) -> Result:
        """The stall length at which the app flips: how long a silence it tolerates."""
        chunk = self.largest_gap_chunk() if at_chunk is None else at_chunk
        result = Result("timing", "")

        def spec(seconds: float) -> str:
            return f"stall:chunk={chunk},seconds={seconds:.3f}".rstrip("0").rstrip(".")

        async with self._server() as server:
            found = await self._threshold(server, 0.0, maximum, resolution, spec, " s")
        if isinstance(found, str):
            result.answer = found
        else:
            lo, hi = found
            result.answer = (f"good at {lo:.2f} s, bad at {hi:.2f} s of silence before chunk {chunk}: "
                             f"the client gives up after about {hi:.1f} s of silence")
            result.boundary = {"good_s": lo, "bad_s": hi, "at_chunk": chunk}
            result.replay = self._replay(spec(hi), self.speed)
        result.steps = self.steps
        return result

    async def by_slowdown(self, maximum: float = 20.0, resolution: float = 0.1) -> Result:
        """How much slower than recorded the stream may run (every gap times F) before the app flips.
        Replayed at the recorded timing whatever --speed says: the gaps are what is searched."""
        result = Result("slowdown", "")

        def spec(factor: float) -> str:
            return f"gap-scale:factor={factor:.3f}".rstrip("0").rstrip(".")

        server = ReplayServer(OneExchange(self.exchange, self.chunks), speed=1.0, match="sequence")
        async with server:
            found = await self._threshold(server, 1.0, maximum, resolution, spec, "x")
        if isinstance(found, str):
            result.answer = found
        else:
            lo, hi = found
            result.answer = (f"good with gaps x{lo:.2f}, bad with gaps x{hi:.2f}: the app fails when the stream "
                             f"runs about {hi:.1f} times slower than recorded")
            result.boundary = {"good_factor": lo, "bad_factor": hi}
            result.replay = self._replay(spec(hi), 1.0)
        result.steps = self.steps
        return result
