"""How the recorded client read the stream, so that a repro script reads it the same way: its read
timeout (TIMEOUT), where it stopped reading (STOP_AFTER) or the total deadline it gave up at (DEADLINE),
each taken from the recorded request or inferred from the recording and its diagnosis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from streamreplay.clientid import Client, request_header
from streamreplay.diagnose import COMMON_DEADLINES_S, Diagnosis
from streamreplay.endcause import EndCause
from streamreplay.sse import SSEParser
from streamreplay.store import Chunk, Exchange

OPENAI_DEFAULT_TIMEOUT = 600.0


@dataclass
class Plan:
    timeout: float
    timeout_why: str
    stop_after: int | None = None
    stop_why: str = ""
    deadline: float | None = None  # seconds from the request
    deadline_why: str = ""
    head_s: float = 0.0  # when the response head came
    left_s: float = 0.0  # when the client left
    note: str = ""
    behaviour: str = "reads to the end"


def is_async(client: Client, sdk: str | None) -> bool:
    asynchronous = client.info.asynchronous
    return sdk == "async" if asynchronous is None else asynchronous


def _events(chunks: list[Chunk]) -> list[dict[str, Any]]:
    parser, out = SSEParser(), []
    for chunk in chunks:
        for event in parser.feed(chunk.data):
            try:
                obj = json.loads(event.data)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


def _units(client: Client, chunks: list[Chunk]) -> int:
    """What the client counts as chunks in these network chunks: SSE events, or autogen's content deltas."""
    events = _events(chunks)
    if client is not Client.AUTOGEN_AGENTCHAT:
        return len(events)
    return sum(1 for e in events if ((e.get("choices") or [{}])[0].get("delta") or {}).get("content"))


def plan_for(ex: Exchange, chunks: list[Chunk], d: Diagnosis, client: Client, sdk: str | None) -> Plan:
    header = request_header(ex, "x-stainless-read-timeout")
    recorded = float(header) if header else None
    plan = Plan(recorded or OPENAI_DEFAULT_TIMEOUT,
                "the client's timeout, from the recorded x-stainless-read-timeout header" if recorded else
                "no timeout was recorded: 600 s, the openai SDK's default")
    if ex.end_cause != EndCause.CLIENT_LEFT:
        return plan
    k, left_s = ex.client_left_at_chunk or 0, (ex.client_left_ns or 0) / 1e9
    where = f"the client left at chunk {k} of {len(chunks)}, {left_s:.3f} s in"
    if d.cause == "client_timeout" and d.gap_before_s is not None:
        silence = d.gap_before_s
        if recorded and abs(recorded - silence) <= 0.25 * recorded:
            plan.timeout_why += f", and the recording agrees: {where}, after {silence:.2f} s of silence"
        else:
            plan.timeout = round(silence, 2)
            plan.timeout_why = f"inferred from the recording: {where}, after {silence:.2f} s of silence"
        plan.behaviour = f"uses a {plan.timeout:g} s timeout (the recorded silence)"
        return plan
    if client is Client.AG2:
        plan.note = (f"{where}, but AG2 reads every stream to its end: this script cannot leave there "
                     f"(--client {Client.OPENAI_SYNC} can stop early)")
        plan.behaviour = "reads to the end (AG2 cannot stop early)"
    elif d.cause == "client_deadline" and is_async(client, sdk):
        plan.deadline = min(COMMON_DEADLINES_S, key=lambda s: abs(s - left_s))
        plan.head_s, plan.left_s = (ex.headers_ns or 0) / 1e9, left_s
        plan.deadline_why = (f"inferred from the recording: {where}, mid-flow and without a silence before: "
                             f"a total deadline of about {plan.deadline:g} s (asyncio.wait_for or the like)")
        plan.behaviour = f"gives up after {plan.deadline:g} s (inferred deadline)"
    else:
        units = _units(client, chunks[:k])
        plan.stop_after = max(units, 1)
        what = "content deltas" if client is Client.AUTOGEN_AGENTCHAT else "chunks"
        why = (f"the app stopped reading (a break, a cancelled task, a returned handler) after {units} {what}"
               if d.cause != "client_deadline" else
               f"a total deadline of about {min(COMMON_DEADLINES_S, key=lambda s: abs(s - left_s)):g} s, "
               f"which this sync client cannot set: it stops after the same {units} {what}")
        plan.stop_why = (f"inferred from the recording: {where}, {(d.gap_before_s or 0) * 1000:.0f} ms after the "
                         f"chunk before: {why}")
        if units == 0:
            plan.stop_why += "; this client cannot stop before the first, so it stops after it"
        plan.behaviour = f"stops after {plan.stop_after} {what} (inferred from the recording)"
    return plan
