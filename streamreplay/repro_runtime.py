"""What a generated repro.py imports at run time: the reference clients it can switch to (`--client`),
`run_reference`, which sends the recorded request through one of them, and `report`, what it prints.

It holds only what the scripts call: not the plan inference nor the templates that wrote them. Scripts
generated before it existed import the same names from `streamreplay.repro`, which re-exports them.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

from streamreplay.clientid import Client
from streamreplay.clients import DRIVERS, Outcome, chat_messages, clients_of, describe, run_client
from streamreplay.replay import Replayed, ReplayServer

#: what `repro.py --client` can switch to: the drivers of `streamreplay.clients`, and plain HTTP; as plain
#: strings, the ids, since repro.py's argparse prints the repr of its choices
REFERENCE_CLIENTS: tuple[str, ...] = tuple(client.value for client in (*clients_of("chat"), Client.HTTP))


def run_reference(client: Client | str, base_url: str, request: dict[str, Any], timeout: float = 600.0) -> Outcome:
    """Send the recorded messages through a reference client (reading to the end); what the app got."""
    if client not in REFERENCE_CLIENTS and client not in {c.value for c in DRIVERS}:
        raise ValueError(f"unknown reference client {client!r}: {', '.join(REFERENCE_CLIENTS)}")
    if client == Client.HTTP:
        return _http_reference(base_url, request, timeout)
    messages = chat_messages(request) or [{"role": "user", "content": "hi"}]
    return asyncio.run(run_client(Client(client), base_url, messages, timeout))


def _http_reference(base_url: str, request: dict[str, Any], timeout: float) -> Outcome:
    out = Outcome("")
    post = urllib.request.Request(f"{base_url}/chat/completions", data=json.dumps(request).encode(), method="POST",
                                  headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(post, timeout=timeout) as response:
            if not request.get("stream"):
                choice = json.load(response)["choices"][0]
                out.text, out.finish_reason = choice["message"]["content"] or "", choice["finish_reason"]
                return out
            for line in response:
                if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                    continue
                choice = (json.loads(line[5:]).get("choices") or [{}])[0]
                out.text += (choice.get("delta") or {}).get("content") or ""
                out.finish_reason = choice.get("finish_reason") or out.finish_reason
    except Exception as exc:  # what the app sees
        out.error = describe(exc)
    return out


def _settled(server: ReplayServer, wait: float) -> Replayed | None:
    """The last request, once the replay has seen it end or the client leave (or `wait` seconds passed)."""
    give_up = time.monotonic() + wait
    while True:
        seen = server.requests[-1] if server.requests else None
        if (seen is None or seen.miss or seen.client_left_at_chunk is not None or seen.delivered >= seen.total
                or time.monotonic() > give_up):
            return seen
        time.sleep(0.01)


def report(client: str, got: Outcome, server: ReplayServer, wait: float = 2.0) -> str:
    """What the client got and how the replayed stream ended, as repro.py prints it."""
    seen = _settled(server, wait)
    lines = [f"client     {client}", f"text       {got.text!r}", f"finish     {got.finish_reason}",
             f"error      {got.error}"]
    if seen is None:
        return "\n".join([*lines, "ending     no request reached the replay"])
    if seen.miss:
        return "\n".join([*lines, f"ending     {seen.ending}: {seen.miss}"])
    faults = f" [{' + '.join(seen.applied)}]" if seen.applied else ""
    if seen.client_left_at_chunk is not None and not seen.done_delivered:
        lines.append(f"ending     the client left (the replay was to end {seen.ending}){faults}")
        lines.append(f"ended at   chunk {seen.client_left_at_chunk} of {seen.total}, "
                     f"{(seen.client_left_ns or 0) / 1e9:.3f} s in")
    else:
        lines.append(f"ending     {seen.ending}{faults}")
        lines.append(f"ended at   chunk {seen.delivered} of {seen.total}")
    return "\n".join(lines)
