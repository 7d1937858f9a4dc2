"""What the stream guard costs per chunk, measured side by side with the same stream unguarded.

    python bench/guard.py            # 200,000 chunks each way, best of five
    python bench/guard.py --tiny     # seconds (the suite runs this)

The chunks are a bundled recording's, parsed by the openai SDK into its own ChatCompletionChunk objects
(what an app iterates), repeated. `guard(stream)` runs its chat check on each; the HTTP-level guard
(an httpx transport) parses a copy of the bytes instead, with the dialect's SSE parser and json, which
costs more and is what an agent framework's client gets.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL_NS = 2000


def chunks_of_tape() -> tuple[list[object], list[bytes]]:
    from openai.types.chat import ChatCompletionChunk

    from streamreplay.bundled import bundled_tape
    from streamreplay.cassette import read_cassette
    from streamreplay.dialects import CHAT

    _, (exchange,), chunks = read_cassette(bundled_tape("openai-happy-path"))
    reads = [c.data for c in chunks[exchange.id]]
    events = CHAT.parser().feed(b"".join(reads))
    items = [ChatCompletionChunk.model_validate(json.loads(e.data)) for e in events if e.data != "[DONE]"]
    return items, reads


def best_ns(run: object, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter_ns()
        run()  # type: ignore[operator]
        best = min(best, time.perf_counter_ns() - started)
    return best


def measure(n: int, rounds: int) -> dict[str, float]:
    from streamreplay.dialects import CHAT
    from streamreplay.guard import check_for, guard
    from streamreplay.guard.transport import _Reader

    items, reads = chunks_of_tape()
    copies = n // len(items) + 1
    stream = (items * copies)[:n]

    def plain() -> None:
        for _ in iter(stream):
            pass

    def guarded() -> None:
        try:
            for _ in guard(iter(stream), dialect="chat", expect_done=False):
                pass
        except Exception:  # the repeated tape has one finish per copy: whole, but judged only at the end
            pass

    def transport() -> None:
        for _ in range(copies):  # a reader per stream: it stops reading at the stream's [DONE]
            reader = _Reader(CHAT, check_for("chat"), None)
            for data in reads:
                reader.feed(data)
            reader.end()

    base = best_ns(plain, rounds)
    return {"chunks": n, "plain_ns": base / n, "guard_ns": (best_ns(guarded, rounds) - base) / n,
            "transport_ns": best_ns(transport, rounds) / (copies * len(reads))}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="2,000 chunks, best of two")
    args = parser.parse_args()
    found = measure(2000 if args.tiny else 200_000, 2 if args.tiny else 5)
    print(f"{found['chunks']:,} ChatCompletionChunk objects, best of runs:")
    print(f"  iterating them alone                   {found['plain_ns']:8.0f} ns a chunk")
    print(f"  guard(stream) adds                     {found['guard_ns']:8.0f} ns a chunk")
    print(f"  the HTTP-level guard (transport) takes {found['transport_ns']:8.0f} ns a read (SSE parse + json + check)")
    ok = found["guard_ns"] < GOAL_NS
    print(f"{'PASS' if ok else 'MISS'}  guard(stream) cost per chunk   target < {GOAL_NS} ns   "
          f"measured {found['guard_ns']:.0f} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
