"""`streamreplay repro`: one exchange as a folder a bug report can carry, its cassette and a short script.

The script replays the cassette offline and sends the recorded request through the same kind of client
that sent it (recognised from the User-Agent and the request's shape), consuming the stream the way that
client does; when the recorded client left early, the script leaves at the same point, the same way.

The plan (how the recorded client read the stream) is inferred in `repro_plan.py`; this module fills the
templates of `repro_templates/` with it and writes the folder. What the script imports when it runs is in
`repro_runtime.py`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template

from streamreplay.cassette import cassette_lines
from streamreplay.clientid import Client, recognise_client, sdk_mode
from streamreplay.diagnose import TapeFacts, diagnose_exchange
from streamreplay.endcause import EndCause
from streamreplay.repro_plan import Plan, is_async, plan_for

# a published import path: repro.py scripts generated before repro_runtime.py import these from here
from streamreplay.repro_runtime import REFERENCE_CLIENTS as REFERENCE_CLIENTS
from streamreplay.repro_runtime import report as report
from streamreplay.repro_runtime import run_reference as run_reference
from streamreplay.store import Chunk, Exchange, Store

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
        got = ex.dialect.assemble_stream(b"".join(c.data for c in chunks[:k])).text if ex.stream else ""
        lines.append(f"Ended: the client left at chunk {k} of {len(chunks)}, {(ex.client_left_ns or 0) / 1e9:.3f} s "
                     f"in (the upstream went on: {ex.upstream_end}); it had {_short(got)}.")
    else:
        lines.append(f"Ended: {ex.end_cause} after {_n(len(chunks), 'chunk')}, {(ex.duration_ns or 0) / 1e9:.3f} s; "
                     f"text {_short(ex.text)}, finish_reason {ex.finish_reason}.")
    wrapped = [w for line in lines for w in textwrap.wrap(line, 116)]
    return _in_docstring(title), _in_docstring("\n".join(wrapped))


def _in_docstring(text: str) -> str:
    """`text` as it reads inside a triple-quoted docstring: a tape name or a recorded text may hold a
    backslash or a triple quote."""
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


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
    """The client repro.py sends through: the templates of chat SDK clients know only /chat/completions; the
    other dialects' templates send through the client's reference driver, which knows its own path."""
    if client.info.dialect != "chat":
        return client
    return client if ex.path == "/chat/completions" else Client.HTTP


def render_script(ex: Exchange, chunks: list[Chunk], client: Client | str, plan: Plan, sdk: str | None) -> str:
    """The text of repro.py."""
    client = Client(client)
    script_client = _script_client(ex, client)
    # a reference driver's template is a plain call that runs its own loop
    asynchronous = is_async(script_client, sdk) and script_client.info.dialect == "chat"
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
    d = diagnose_exchange(ex, chunks, TapeFacts.in_store(store, ex), "")
    plan = plan_for(ex, chunks, d, client, sdk)
    if client.info.dialect != "chat":  # its reference driver reads to the end, whatever the app did
        plan = dataclasses.replace(plan, stop_after=None, deadline=None, note="", behaviour="reads to the end")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = next((t["source"] for t in store.tapes() if t["name"] == ex.tape), "") or ""
    cassette = out_dir / "cassette.jsonl"
    cassette.write_text("".join(line + "\n" for line in cassette_lines(ex.tape, [ex], lambda _: chunks, source)),
                        encoding="utf-8")
    script = out_dir / "repro.py"
    script.write_text(render_script(ex, chunks, client, plan, sdk), encoding="utf-8")
    return ReproInfo(ex.id, client, _script_client(ex, client), plan.behaviour, cassette, script)
