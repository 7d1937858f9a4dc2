"""A scripted upstream that speaks each provider's exact wire format, with chunking, timing and endings
on demand.

Used by the tests, the demo and the benchmark. Each request takes the next queued `Script`
(or the default one) and the server keeps what it sent in `sent`, so a test can compare the
hash of what a client got with what the upstream wrote. The wire formats are in
`streamreplay.scripted`, one module per dialect.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from streamreplay.scripted import WIRES
from streamreplay.scripted.chat import chat_completion, chat_events
from streamreplay.scripted.script import CREATED, FINGERPRINT, Script, Sent, Wire, dumps, split_pieces
from streamreplay.serving import AppServer
from streamreplay.wire import close_mid_body, reset_connection

__all__ = ["CREATED", "FINGERPRINT", "Script", "ScriptedUpstream", "Sent", "chat_completion", "chat_events",
           "split_pieces"]

class ScriptedUpstream(AppServer):
    """An OpenAI-compatible server that follows scripts. `queue()` scripts, read `sent`."""

    def __init__(self, script: Script | None = None, host: str = "127.0.0.1", port: int = 0,
                 script_for: Callable[[dict[str, Any]], Script] | None = None) -> None:
        super().__init__(host, port)
        self.script = script or Script()
        self.scripts: deque[Script] = deque()
        #: picks the script from the request body, when many requests run at once
        self.script_for = script_for
        self.sent: list[Sent] = []
        self._ids = itertools.count(1)

    def queue(self, *scripts: Script) -> None:
        self.scripts.extend(scripts)

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self._models)
        for wire in WIRES.values():
            for path in wire.paths:
                app.router.add_post(path, functools.partial(self._answer, wire))
        app.router.add_route("*", "/{tail:.*}", self._echo)
        return app

    def _next(self) -> Script:
        return self.scripts.popleft() if self.scripts else self.script

    async def _models(self, request: web.Request) -> web.StreamResponse:
        body = {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "created": CREATED,
                                            "owned_by": "system"}]}
        return web.json_response(body)

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        """Anything else: report what arrived, so forwarding of paths, queries and bodies can be checked."""
        body = await request.read()
        echo = {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "body": body.decode("utf-8", "replace"),
            "headers": {k.lower(): v for k, v in request.headers.items()},
        }
        return web.json_response(echo)

    async def _answer(self, wire: Wire, request: web.Request) -> web.StreamResponse:
        try:
            payload = json.loads(await request.read())
        except (ValueError, RecursionError):  # garbage still gets an answer: the recorder's tests send it
            payload = None
        if not isinstance(payload, dict):
            payload = {}
        script = self.script_for(payload) if self.script_for else self._next()
        sent = Sent(request.path, payload, {k.lower(): v for k, v in request.headers.items()})
        self.sent.append(sent)
        n = next(self._ids)
        if script.first_delay:
            await asyncio.sleep(script.first_delay)

        if script.status >= 400:
            data = json.dumps(wire.error(script.status)).encode()
            sent.writes.append(data)
            sent.finished = True
            return web.Response(status=script.status, body=data, content_type="application/json")

        if script.raw is not None:
            events = list(script.raw)
        elif wire.wants_stream(payload):
            events = wire.stream_events(script, payload, n)
        else:
            data = dumps(wire.body(script, payload, n), script.spaced_json).encode()
            sent.writes.append(data)
            sent.finished = True
            return web.Response(body=data, content_type="application/json", headers={"x-request-id": f"req_{n:04d}"})

        content_type = script.content_type or wire.stream_content_type
        resp = web.StreamResponse(headers={"Content-Type": content_type, "x-request-id": f"req_{n:04d}"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)

        stop_after = script.stop_after
        if stop_after is None and script.ending in ("close", "reset"):
            stop_after = wire.default_stop_after(events)
        if stop_after is not None:
            events = events[:stop_after]
        for pause, data in self._writes(events, script):
            if pause:
                await asyncio.sleep(pause)
            await resp.write(data)
            sent.writes.append(data)
            sent.write_times.append(time.monotonic())

        if script.ending == "close":
            await asyncio.sleep(0.02)  # let the written bytes leave before the FIN
            close_mid_body(request)
        elif script.ending == "reset":
            await asyncio.sleep(0.02)  # an RST discards unsent bytes; these must arrive first
            reset_connection(request)
        else:
            await resp.write_eof()
            sent.finished = True
        return resp

    @staticmethod
    def _writes(events: list[bytes], script: Script) -> list[tuple[float, bytes]]:
        """(seconds to wait before, bytes) for each network write."""
        if script.events_per_write == 0:
            return [(script.pauses.get(0, 0.0), b"".join(events))] if events else []
        writes = []
        for i in range(0, len(events), script.events_per_write):
            pause = script.pauses.get(i, 0.0) + (script.gap if i else 0.0)
            data = b"".join(events[i : i + script.events_per_write])
            if script.split_events and len(data) > 1:
                half = len(data) // 2
                writes += [(pause, data[:half]), (script.gap / 2, data[half:])]
            else:
                writes.append((pause, data))
        return writes
