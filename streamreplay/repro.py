"""`streamreplay repro`: one exchange as a folder a bug report can carry, its cassette and a short script.

The script replays the cassette offline and sends the recorded request through the same kind of client
that sent it (recognised from the User-Agent and the request's shape), consuming the stream the way that
client does; when the recorded client left early, the script leaves at the same point, the same way.
"""

from __future__ import annotations

import asyncio
import json
import re
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any

from streamreplay.cassette import cassette_lines
from streamreplay.clientid import Client, recognise_client, request_header, sdk_mode
from streamreplay.clients import DRIVERS, Outcome, describe, run_client
from streamreplay.diagnose import COMMON_DEADLINES_S, Diagnosis, diagnose_exchange
from streamreplay.endcause import EndCause
from streamreplay.replay import Replayed, ReplayServer
from streamreplay.sse import SSEParser, assemble_stream
from streamreplay.store import Chunk, Exchange, Store

#: what `repro.py --client` can switch to: the drivers of `streamreplay.clients`, and plain HTTP; as plain
#: strings, the ids, since repro.py's argparse prints the repr of its choices
REFERENCE_CLIENTS: tuple[str, ...] = tuple(client.value for client in (*DRIVERS, Client.HTTP))
OPENAI_DEFAULT_TIMEOUT = 600.0
#: the parameters of the openai SDK's chat.completions.create() (2.54); others go in extra_body
SDK_PARAMETERS = frozenset({
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs", "max_completion_tokens",
    "max_tokens", "messages", "metadata", "modalities", "model", "moderation", "n", "parallel_tool_calls",
    "prediction", "presence_penalty", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
    "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier", "stop", "store", "stream",
    "stream_options", "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity",
    "web_search_options"
})
_TAG = re.compile(r"^(.*?)\s*#\?([!\w,]+)$")


@dataclass
class ReproInfo:
    exchange_id: int
    client: Client  # the client recognised
    script_client: Client  # the client repro.py sends through (plain HTTP for paths other than /chat/completions)
    behaviour: str  # how repro.py reads the stream, e.g. "stops after 2 chunks (inferred from the recording)"
    cassette: Path
    script: Path

    @property
    def paths(self) -> list[Path]:
        return [self.cassette, self.script]

    def lines(self) -> list[str]:
        via = f", sent through {self.script_client}" if self.script_client != self.client else ""
        return [f"wrote {self.cassette} and {self.script}",
                f"client {self.client}{via}; the script {self.behaviour}",
                f"run: python {self.script}"]


# -- how it read the stream ----------------------------------------------------------------------------


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


def _is_async(client: Client, sdk: str | None) -> bool:
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
    elif d.cause == "client_deadline" and _is_async(client, sdk):
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


# -- the folder ------------------------------------------------------------------------------------------


def _template(name: str) -> str:
    return files("streamreplay").joinpath("repro_templates", f"{name}.tmpl").read_text(encoding="utf-8")


def _keep(text: str, tags: set[str]) -> str:
    """Keep a line tagged `#?a,!b` only when tag a is active and b is not; without its tag."""
    out = []
    for line in text.splitlines():
        tagged = _TAG.match(line)
        if tagged is None:
            out.append(line)
        elif all((t.lstrip("!") in tags) != t.startswith("!") for t in tagged.group(2).split(",")):
            out.append(tagged.group(1))
    return "\n".join(out) + "\n"


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, 116, initial_indent="# ", subsequent_indent="# ")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _short(text: str | None, limit: int = 70) -> str:
    text = text or ""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _docstring(ex: Exchange, chunks: list[Chunk], client: Client, script_client: Client) -> tuple[str, str]:
    title = f"Exchange {ex.id} of tape {ex.tape}, replayed offline into {script_client.info.script}."
    body = ex.request_json() or {}
    lines = [f"Recorded: {ex.method} {ex.path}, model {body.get('model')}, {_n(len(chunks), 'chunk')}, "
             f"from {ex.client or 'an unnamed client'}, recognised as {client}."]
    if script_client != client:
        lines.append(f"Sent here as plain HTTP: the {client} script knows only /chat/completions.")
    if ex.end_cause == EndCause.CLIENT_LEFT:
        k = ex.client_left_at_chunk or 0
        got = assemble_stream(b"".join(c.data for c in chunks[:k])).text if ex.stream else ""
        lines.append(f"Ended: the client left at chunk {k} of {len(chunks)}, {(ex.client_left_ns or 0) / 1e9:.3f} s "
                     f"in (the upstream went on: {ex.upstream_end}); it had {_short(got)}.")
    else:
        lines.append(f"Ended: {ex.end_cause} after {_n(len(chunks), 'chunk')}, {(ex.duration_ns or 0) / 1e9:.3f} s; "
                     f"text {_short(ex.text)}, finish_reason {ex.finish_reason}.")
    wrapped = [w for line in lines for w in textwrap.wrap(line, 116)]
    return title, "\n".join(wrapped).replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def _tags(script_client: Client, asynchronous: bool, stream: bool, stop: bool, deadline: bool) -> set[str]:
    base = {"stream", "stop"} if stop else {"stream" if stream else "nostream"}
    mode = "async" if asynchronous else "sync"
    tags = base | {f"{mode}_{t}" for t in base} | {mode}
    tags |= {"asyncio"} if asynchronous else set()
    tags |= {"deadline"} if deadline else set()
    tags |= {"contextlib"} if script_client in (Client.AG2, Client.LANGCHAIN) else set()
    return tags | {Client.AG2: {"io"}, Client.HTTP: {"urllib"}}.get(script_client, set())


def _constants(ex: Exchange, script_client: Client, plan: Plan, stop: bool, deadline: str | None,
               extra: list[str]) -> list[str]:
    constants = [f"PATH = {ex.path!r}"] if script_client is Client.HTTP else []
    if extra:
        constants += ["# not parameters of the SDK's create(): the app must have sent them in extra_body",
                      f"EXTRA = {{k: REQUEST[k] for k in ({''.join(json.dumps(k) + ', ' for k in extra).strip()})}}"]
    constants += [*_comment(plan.timeout_why), f"TIMEOUT = {plan.timeout!r}"]
    if stop:
        constants += [*_comment(plan.stop_why), f"STOP_AFTER = {plan.stop_after}"]
    if deadline == "head":
        from_head = round(max(plan.left_s - plan.head_s, 0.001), 3)
        why = (f"{plan.deadline_why}; here the recorded {from_head:g} s from the response head to leaving, as a "
               "cold client's first request starts later than the app's did")
        constants += [*_comment(why), f"DEADLINE = {from_head!r}"]
    elif deadline == "call":
        why = f"{plan.deadline_why}; a cold client's first request starts later, so this one may leave a little early"
        constants += [*_comment(why), f"DEADLINE = {plan.deadline!r}"]
    return constants + (_comment(plan.note) if plan.note else [])


def _script_client(ex: Exchange, client: Client) -> Client:
    """The client repro.py sends through: the templates of SDK clients know only /chat/completions."""
    return client if ex.path == "/chat/completions" else Client.HTTP


def render_script(ex: Exchange, chunks: list[Chunk], client: Client | str, plan: Plan, sdk: str | None) -> str:
    """The text of repro.py."""
    client = Client(client)
    script_client = _script_client(ex, client)
    asynchronous = _is_async(script_client, sdk)
    imports, _, code = _template(script_client).partition("# ---\n")
    stop = plan.stop_after is not None and ex.stream  # a whole JSON body cannot be left halfway
    deadline = None  # "head": the template applies it to the reading, from the response head; "call": to it all
    if plan.deadline is not None and asynchronous:
        deadline = "head" if "DEADLINE" in code and ex.stream else "call"
    call = "send(srv.base_url, got)"
    if asynchronous:
        call = f"asyncio.run(asyncio.wait_for({call}, DEADLINE))" if deadline == "call" else f"asyncio.run({call})"
    extra = sorted(set(ex.request_json()) - SDK_PARAMETERS) if "EXTRA" in code else []
    tags = _tags(script_client, asynchronous, bool(ex.stream), stop, deadline == "head") | (
        {"extra"} if extra else set())
    code = _keep(Template(code).substitute(stream=bool(ex.stream)), tags).strip()
    constants = _constants(ex, script_client, plan, stop, deadline, extra)
    body = "\n".join(constants) + ("\n\n\n" if code.startswith(("def ", "async def ")) else "\n") + code
    title, recorded = _docstring(ex, chunks, client, script_client)
    ours = "MODEL_INFO, Outcome, describe" if script_client is Client.AUTOGEN_AGENTCHAT else "Outcome, describe"
    text = Template(_template("script")).substitute(
        title=title, recorded=recorded, imports=imports, client=script_client, clients_imports=ours, body=body,
        call=call)
    return _keep(text, tags)


def write_repro(store: Store, exchange_id: int, out_dir: Path) -> ReproInfo:
    """Write `cassette.jsonl` (this one exchange) and `repro.py` into out_dir."""
    ex = store.exchange(exchange_id)
    if not isinstance(ex.request_json(), dict):
        raise ValueError(f"exchange {exchange_id}: the request body is not a JSON object, there is nothing to resend")
    chunks = store.chunks(exchange_id)
    client, sdk = recognise_client(ex), sdk_mode(ex)
    d = diagnose_exchange(ex, chunks, store.exchanges(tape=ex.tape), "")
    plan = plan_for(ex, chunks, d, client, sdk)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = next((t["source"] for t in store.tapes() if t["name"] == ex.tape), "") or ""
    cassette = out_dir / "cassette.jsonl"
    cassette.write_text("".join(line + "\n" for line in cassette_lines(ex.tape, [ex], lambda _: chunks, source)),
                        encoding="utf-8")
    script = out_dir / "repro.py"
    script.write_text(render_script(ex, chunks, client, plan, sdk), encoding="utf-8")
    return ReproInfo(ex.id, client, _script_client(ex, client), plan.behaviour, cassette, script)


# -- what repro.py calls ---------------------------------------------------------------------------------


def run_reference(client: Client | str, base_url: str, request: dict[str, Any], timeout: float = 600.0) -> Outcome:
    """Send the recorded messages through a reference client (reading to the end); what the app got."""
    if client not in REFERENCE_CLIENTS:
        raise ValueError(f"unknown reference client {client!r}: {', '.join(REFERENCE_CLIENTS)}")
    if client == Client.HTTP:
        return _http_reference(base_url, request, timeout)
    messages = request.get("messages") or [{"role": "user", "content": "hi"}]
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
