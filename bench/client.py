"""The bench's client: N concurrent streams against one base_url, timed on arrival.

Prints one JSON object: per stream the time to first byte, each read's offset and size, each
event's delivery latency (arrival minus the upstream's stamp), a sha256 of the body, and whether
the event indices arrived complete and in order.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import time

import aiohttp

STAMP = re.compile(rb'"t":(\d+),"i":(\d+)')


async def one(session: aiohttp.ClientSession, url: str, body: dict, keep_reads: bool) -> dict:
    sent = time.monotonic_ns()
    trace: dict = {}
    digest, latencies, reads, indices = hashlib.sha256(), [], [], []
    ttfb = None
    pending = b""
    async with session.post(url, json=body, trace_request_ctx=trace) as resp:
        status = resp.status
        sent = trace.get("sent", sent)
        async for data in resp.content.iter_any():
            now = time.monotonic_ns()
            if ttfb is None:
                ttfb = now - sent
            digest.update(data)
            if keep_reads:
                reads.append((now - sent, len(data)))
            pending += data
            *events, pending = pending.split(b"\n\n")
            for event in events:
                match = STAMP.search(event)
                if match:
                    latencies.append(now - int(match.group(1)))
                    indices.append(int(match.group(2)))
    return {"status": status, "ttfb_ns": ttfb, "latencies_ns": latencies, "reads": reads, "sha256": digest.hexdigest(),
            "in_order": status == 200 and indices == list(range(len(indices))), "events": len(indices),
            "total_ns": time.monotonic_ns() - sent}


def timed_session(timeout: float = 300) -> aiohttp.ClientSession:
    """A session that notes when each request's body has been written. Times count from then, not from
    when the request was made: 100 requests made at once leave this one process over tens of
    milliseconds (connecting, writing), which is the client's cost, for direct and proxy alike."""
    traces = aiohttp.TraceConfig()

    async def body_sent(session: aiohttp.ClientSession, ctx: object, params: object) -> None:
        ctx.trace_request_ctx["sent"] = time.monotonic_ns()  # type: ignore[attr-defined]

    traces.on_request_chunk_sent.append(body_sent)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False,
                                 timeout=aiohttp.ClientTimeout(total=timeout), trace_configs=[traces])


async def run(args: argparse.Namespace) -> dict:
    url = f"{args.base_url}/chat/completions"
    async with timed_session(args.timeout) as session:
        started = time.monotonic_ns()
        bodies = [{"chunks": args.chunks, "gap_ms": args.gap_ms, "jitter_ms": args.jitter_ms, "size": args.size,
                   "id": k, "seed": args.seed, "stream": True, "model": "bench",
                   "messages": [{"role": "user", "content": str(k if args.distinct else 0)}]}
                  for k in range(args.streams)]
        results = []
        for _ in range(args.rounds):  # rounds one after the other, each `streams` streams at once
            results += await asyncio.gather(*(one(session, url, b, args.reads) for b in bodies))
        elapsed = time.monotonic_ns() - started
    return {"elapsed_ns": elapsed, "streams": results}


async def ttfb_probe(urls: list[str], requests: int, warmup: int, chunks: int) -> dict:
    """Time to first byte of `requests` sequential streams per target, the targets taken in turn (so a
    busy moment of the shared machine hits each alike), each over its own keep-alive connection as a
    client holds one. The first `warmup` rounds (connection setup, first-call paths) are not counted."""
    sessions = [timed_session() for _ in urls]
    ttfb: dict[str, list[int]] = {url: [] for url in urls}
    ok = True
    try:
        for n in range(warmup + requests):
            # the order alternates, so neither target always runs right after the other's request
            order = list(zip(urls, sessions, strict=True))
            for url, session in order if n % 2 else order[::-1]:
                body = {"chunks": chunks, "gap_ms": 0, "size": 64, "id": n, "stream": True, "model": "bench",
                        "messages": [{"role": "user", "content": str(n)}]}
                got = await one(session, f"{url}/chat/completions", body, False)
                ok = ok and got["in_order"] and got["events"] == chunks
                if n >= warmup:
                    ttfb[url].append(got["ttfb_ns"])
    finally:
        for session in sessions:
            await session.close()
    return {"ttfb_ns": ttfb, "in_order": ok}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base_url", nargs="+", help="one; or, with --ttfb, every target probed in turn")
    parser.add_argument("--ttfb", type=int, default=0, help="only TTFB: this many sequential streams per target")
    parser.add_argument("--warmup", type=int, default=20, help="with --ttfb: rounds not counted")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--gap-ms", type=float, default=0)
    parser.add_argument("--jitter-ms", type=float, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--rounds", type=int, default=1, help="run the streams this many times, one after another")
    parser.add_argument("--reads", action="store_true", help="keep every read's offset and size")
    parser.add_argument("--distinct", action="store_true", help="a different prompt per stream")
    args = parser.parse_args()
    if args.ttfb:
        print(json.dumps(asyncio.run(ttfb_probe(args.base_url, args.ttfb, args.warmup, args.chunks))))
        return
    args.base_url = args.base_url[0]
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
