"""The bench's upstream: an OpenAI-style SSE server whose every event carries the moment it was written.

The request body says what to send: {"chunks": N, "gap_ms": G, "jitter_ms": J, "size": S, "id": K,
"seed": R}. Each event is `data: {"t": <monotonic ns at write>, "i": <index>, "s": <id>, "p": <pad>}`
so the client can compute each chunk's delivery latency (CLOCK_MONOTONIC is shared by processes).
"""

from __future__ import annotations

import asyncio
import random
import sys
import time

from aiohttp import web


async def stream(request: web.Request) -> web.StreamResponse:
    spec = await request.json()
    chunks, gap, jitter = int(spec.get("chunks", 100)), spec.get("gap_ms", 0) / 1e3, spec.get("jitter_ms", 0) / 1e3
    pad = "x" * max(0, int(spec.get("size", 64)) - 60)
    rnd = random.Random(spec.get("seed", 0))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for i in range(chunks):
        if i and (gap or jitter):
            await asyncio.sleep(gap + rnd.uniform(0, jitter))
        event = f'data: {{"t":{time.monotonic_ns()},"i":{i},"s":{spec.get("id", 0)},"p":"{pad}"}}\n\n'
        await resp.write(event.encode())
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def main() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", stream)

    async def start() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        print(site._server.sockets[0].getsockname()[1], flush=True)  # the port, for the orchestrator
        await asyncio.Event().wait()

    asyncio.run(start())


if __name__ == "__main__":
    sys.exit(main())
