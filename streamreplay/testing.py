"""A scripted OpenAI upstream: exact SSE wire format, with chunking, timing and endings on demand.

Used by the tests, the demo and the benchmark. Each request takes the next queued `Script`
(or the default one) and the server keeps what it sent in `sent`, so a test can compare the
hash of what a client got with what the upstream wrote.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from streamreplay.exchange import json_text
from streamreplay.serving import AppServer
from streamreplay.wire import close_mid_body, reset_connection

CREATED = 1732000000  # fixed, so that every run sends the same bytes
FINGERPRINT = "fp_0ba0d124f1"


@dataclass
class Script:
    """What the upstream does with one request."""

    text: str = "Hello! How can I help you today?"
    #: the content deltas; by default the text split after each space
    pieces: list[str] | None = None
    #: seconds before the response head
    first_delay: float = 0.0
    #: seconds between events
    gap: float = 0.0
    #: extra seconds before event i (events count from 0: the role chunk is event 0)
    pauses: dict[int, float] = field(default_factory=dict)
    #: events per network write; 0 writes the whole stream at once
    events_per_write: int = 1
    #: split every event in two writes (an event across reads), half a gap apart
    split_events: bool = False
    #: "done", "no_done" (clean end without [DONE]), "close" (mid-body), "reset" (TCP reset)
    ending: str = "done"
    #: for close/reset: events written before the ending (default: all but the finish chunk)
    stop_after: int | None = None
    finish_reason: str | None = "stop"
    #: non-2xx answers an OpenAI error body before any stream
    status: int = 200
    #: [{"name": ..., "arguments": "..."}]: streamed as tool_call deltas, arguments in pieces
    tool_calls: list[dict[str, str]] | None = None
    #: raw bytes to send instead of a generated body (malformed upstream output)
    raw: list[bytes] | None = None
    content_type: str | None = None
    #: spaces after colons, as llama.cpp's server writes JSON
    spaced_json: bool = False


@dataclass
class Sent:
    """What the upstream wrote for one request."""

    path: str
    request: dict[str, Any] | None
    headers: dict[str, str]
    writes: list[bytes] = field(default_factory=list)
    write_times: list[float] = field(default_factory=list)  # time.monotonic() after each write
    finished: bool = False

    @property
    def body(self) -> bytes:
        return b"".join(self.writes)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


def _dumps(obj: Any, spaced: bool) -> str:
    # json_text: a lone surrogate echoed from the request's model still makes valid UTF-8
    return json_text(obj, separators=(", ", ": ") if spaced else (",", ":"))


def split_pieces(text: str) -> list[str]:
    """Split text into token-like pieces, each word keeping its trailing space."""
    pieces, current = [], ""
    for ch in text:
        current += ch
        if ch == " ":
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces


def chat_events(script: Script, model: str, completion_id: str, include_usage: bool) -> list[bytes]:
    """A chat.completions stream in OpenAI's wire format, one element per SSE event."""

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        obj: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            obj["usage"] = None
        obj.update(extra)
        return f"data: {_dumps(obj, script.spaced_json)}\n\n".encode()

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    pieces = script.pieces if script.pieces is not None else split_pieces(script.text)
    for piece in pieces:
        events.append(chunk({"content": piece}))
    for i, call in enumerate(script.tool_calls or []):
        events.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": f"call_{i}",
                            "type": "function",
                            "function": {"name": call["name"], "arguments": ""},
                        }
                    ]
                }
            )
        )
        args = call.get("arguments", "")
        for j in range(0, len(args), 8):
            events.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": args[j : j + 8]}}]}))
    finish = script.finish_reason
    if finish == "stop" and script.tool_calls:
        finish = "tool_calls"
    events.append(chunk({}, finish))
    if include_usage:
        usage = {"prompt_tokens": 9, "completion_tokens": len(pieces), "total_tokens": 9 + len(pieces)}
        obj = json.loads(chunk({})[6:])
        obj["choices"], obj["usage"] = [], usage
        events.append(f"data: {_dumps(obj, script.spaced_json)}\n\n".encode())
    if script.ending == "done":
        events.append(b"data: [DONE]\n\n")
    return events


def chat_completion(script: Script, model: str, completion_id: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": script.text, "refusal": None}
    if script.tool_calls:
        message["content"] = None
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": dict(c)} for i, c in enumerate(script.tool_calls)
        ]
    n = len(split_pieces(script.text))
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if script.tool_calls else script.finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": n, "total_tokens": 9 + n},
    }


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
        app.router.add_post("/v1/chat/completions", self._chat)
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

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            payload = json.loads(await request.read())
        except (ValueError, RecursionError):  # garbage still gets an answer: the recorder's tests send it
            payload = None
        if not isinstance(payload, dict):
            payload = {}
        script = self.script_for(payload) if self.script_for else self._next()
        sent = Sent(request.path, payload, {k.lower(): v for k, v in request.headers.items()})
        self.sent.append(sent)
        model = payload.get("model") if isinstance(payload.get("model"), str) else "gpt-4o-mini"
        completion_id = f"chatcmpl-{next(self._ids):04d}"
        if script.first_delay:
            await asyncio.sleep(script.first_delay)

        if script.status >= 400:
            error = {"error": {"message": f"scripted error {script.status}", "type": "server_error",
                               "param": None, "code": None}}
            data = json.dumps(error).encode()
            sent.writes.append(data)
            sent.finished = True
            return web.Response(status=script.status, body=data, content_type="application/json")

        stream = bool(payload.get("stream"))
        if script.raw is not None:
            events = list(script.raw)
        elif stream:
            include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
            events = chat_events(script, model, completion_id, include_usage)
        else:
            data = _dumps(chat_completion(script, model, completion_id), script.spaced_json).encode()
            sent.writes.append(data)
            sent.finished = True
            return web.Response(body=data, content_type="application/json",
                                headers={"x-request-id": f"req_{completion_id}"})

        content_type = script.content_type or "text/event-stream; charset=utf-8"
        resp = web.StreamResponse(headers={"Content-Type": content_type, "x-request-id": f"req_{completion_id}"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)

        stop_after = script.stop_after
        if stop_after is None and script.ending in ("close", "reset"):
            stop_after = len(events) - 2  # the finish chunk and [DONE] never come
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
