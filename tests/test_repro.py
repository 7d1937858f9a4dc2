"""`streamreplay repro`: real clients recorded through the proxy; the generated script, run as a user runs it,
gets what the recorded client got."""

from __future__ import annotations

import ast
import asyncio
import builtins
import json
import re
import subprocess
import symtable
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from streamreplay.clientid import AUTOGEN_SYSTEM, describe_client, recognise_client
from streamreplay.clients import Outcome, ag2_generate_reply, autogen_create_stream, describe
from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.repro import Plan, render_script, write_repro
from streamreplay.store import Exchange, Store
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import parse_python

SECRET = "sk-test-SECRET-repro-41c7"
MESSAGES = [{"role": "user", "content": "Tell me a story."}]
STORY = "Once upon a time a small robot learned to read streams to the very end."
CLIENT_LIBRARIES = {"openai-sync": {"openai"}, "openai-async": {"openai"}, "ag2": {"autogen"},
                    "autogen-agentchat": {"autogen_core", "autogen_ext"}, "langchain": {"langchain_openai"},
                    "http": set()}


def reads_to_the_end_sync(base_url: str) -> Outcome:
    client = openai.OpenAI(base_url=base_url, api_key=SECRET, max_retries=0, timeout=5.0)
    out = Outcome("")
    # top_k is no parameter of the SDK's create(): a local server's, sent in extra_body
    for chunk in client.chat.completions.create(model="smollm2", messages=MESSAGES, stream=True, temperature=0,
                                                extra_body={"top_k": 40}):
        out.text += chunk.choices[0].delta.content or ""
        out.finish_reason = chunk.choices[0].finish_reason or out.finish_reason
    return out


async def breaks_after_first_content(base_url: str) -> Outcome:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=SECRET, max_retries=0)
    out = Outcome("")
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                  temperature=0, max_tokens=40)
    async for chunk in stream:
        out.text += chunk.choices[0].delta.content or ""
        if chunk.choices[0].delta.content:
            break
    await stream.close()
    return out


async def reads_with_timeout(base_url: str) -> Outcome:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=SECRET, max_retries=0, timeout=0.4)
    out = Outcome("")
    try:
        async for chunk in await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
            out.text += chunk.choices[0].delta.content or ""
    except Exception as exc:  # the outcome under test
        out.error = describe(exc)
    return out


async def gives_up_after_a_second(base_url: str) -> Outcome:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=SECRET, max_retries=0)
    out = Outcome("")

    async def consume() -> None:
        async for chunk in await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
            out.text += chunk.choices[0].delta.content or ""

    try:
        await asyncio.wait_for(consume(), 1.0)
    except Exception as exc:  # the outcome under test
        out.error = describe(exc)
    return out


async def langchain_reads_to_the_end(base_url: str) -> Outcome:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="gpt-4o-mini", base_url=base_url, api_key=SECRET, max_retries=0, streaming=True)
    out = Outcome("")
    async for chunk in llm.astream([("user", MESSAGES[0]["content"])]):
        out.text += chunk.content
        out.finish_reason = chunk.response_metadata.get("finish_reason") or out.finish_reason
    return out


App = Callable[[str], Awaitable[Outcome]]


def driver(run: Callable[[str, list[dict[str, Any]], float], Awaitable[Outcome]]) -> App:
    return lambda base_url: run(base_url, MESSAGES, 5.0)


# name: (what the upstream does, the real client as the app ran it, the client repro should recognise)
CASES: dict[str, tuple[Script, App, str]] = {
    "sync-complete": (Script(text=STORY, gap=0.005), lambda url: asyncio.to_thread(reads_to_the_end_sync, url),
                      "openai-sync"),
    "async-break": (Script(text=STORY, gap=0.05), breaks_after_first_content, "openai-async"),
    "async-timeout": (Script(text=STORY, gap=0.01, pauses={4: 0.8}), reads_with_timeout, "openai-async"),
    # chunks 85 ms apart: none within 30 ms of where the deadline falls, so a few ms of jitter changes nothing
    "async-deadline": (Script(text=STORY, gap=0.085), gives_up_after_a_second, "openai-async"),
    # 30 ms apart: a reset discards what the client has not read yet, so the client must have read the last
    # chunk before the reset comes, live and replayed, even on a loaded machine
    "autogen-reset": (Script(text=STORY, gap=0.03, ending="reset"), driver(autogen_create_stream),
                      "autogen-agentchat"),
    "ag2-complete": (Script(text=STORY, gap=0.005), driver(ag2_generate_reply), "ag2"),
    "langchain-complete": (Script(text=STORY, gap=0.005), langchain_reads_to_the_end, "langchain"),
}


async def record_all(db: Path) -> dict[str, Outcome]:
    live = {}
    async with ScriptedUpstream() as upstream:
        for name, (script, app, _) in CASES.items():
            upstream.queue(script)
            async with RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db), tape=name)) as proxy:
                live[name] = await app(proxy.base_url)
                await proxy.settle()  # the proxy reads on after a client leaves: the recording is whole
    return live


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, dict[str, Outcome], dict[str, Exchange]]:
    db = tmp_path_factory.mktemp("repro") / "rec.db"
    live = asyncio.run(record_all(db))
    store = Store(db)
    return store, live, {ex.tape: ex for ex in store.exchanges()}


def run_script(folder: Path, *args: str) -> dict[str, str]:
    done = subprocess.run([sys.executable, "repro.py", *args], cwd=folder, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return {line[:11].strip(): line[11:] for line in done.stdout.splitlines()}


def error_type(error: str | None) -> str | None:
    return error.split(":", 1)[0] if error and error != "None" else None


def check_script(path: Path, client: str) -> None:
    source = path.read_text()
    assert len(source.splitlines()) < 80
    modules = set()
    for node in ast.walk(parse_python(source)):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add((node.module or "").split(".")[0])
    assert modules - set(sys.stdlib_module_names) - {"streamreplay"} <= CLIENT_LIBRARIES[client]


@pytest.mark.parametrize("case", list(CASES))
def test_the_script_reproduces_the_recorded_outcome(recorded, tmp_path: Path, case: str):
    store, live, exchanges = recorded
    info = write_repro(store, exchanges[case].id, tmp_path / case)
    assert info.client == recognise_client(exchanges[case]) == CASES[case][2]
    check_script(info.script, info.client)
    got = run_script(tmp_path / case)
    assert got["client"] == info.client
    assert ast.literal_eval(got["text"]) == live[case].text
    assert error_type(got["error"]) == error_type(live[case].error)
    if live[case].finish_reason is not None:
        assert got["finish"] == live[case].finish_reason
    ex = exchanges[case]
    if case == "async-break":  # stopped where the recorded client stopped, the same way
        assert ex.end_cause == "client_left" and ex.client_left_at_chunk == 2
        assert got["ended at"].startswith("chunk 2 of ") and "the client left" in got["ending"]
        assert "STOP_AFTER = 2" in info.script.read_text()
    elif case == "async-timeout":  # the recorded client's own timeout, which the recorded silence confirms
        assert ex.end_cause == "client_left" and ex.client_left_at_chunk == 4
        assert got["error"].startswith("httpx.ReadTimeout") and got["ended at"].startswith("chunk 4 of ")
        assert "TIMEOUT = 0.4" in info.script.read_text()
    elif case == "async-deadline":  # the same total deadline, inferred from where and when the client left
        assert ex.end_cause == "client_left" and got["error"].startswith("builtins.TimeoutError")
        deadline = float(re.search(r"^DEADLINE = (.+)$", info.script.read_text(), re.M).group(1))
        # 1 s from the request, counted from the response head; the recorder sees the client go a few ms after
        assert 0.9 < deadline <= 1.05
        recorded_k, replayed_k = ex.client_left_at_chunk, int(got["ended at"].split()[1])
        assert abs(recorded_k - replayed_k) <= 1
    elif case == "sync-complete":
        assert 'EXTRA = {k: REQUEST[k] for k in ("top_k",)}' in info.script.read_text()
    elif case == "autogen-reset":
        assert got["ending"] == "reset" and live[case].error.startswith("httpx.ReadError")


def test_another_client_and_a_fault(recorded, tmp_path: Path):
    store, _, exchanges = recorded
    write_repro(store, exchanges["async-break"].id, tmp_path)
    for client in ("ag2", "http", "openai-sync"):  # read to the end: the whole answer
        got = run_script(tmp_path, "--client", client, "--speed", "0")
        assert got["client"] == client and ast.literal_eval(got["text"]) == STORY and got["error"] == "None"
    got = run_script(tmp_path, "--fault", "cut:chunk=3", "--speed", "0")
    assert ast.literal_eval(got["text"]) == "Once "  # the recorded client still stops after its first word
    got = run_script(tmp_path, "--client", "http", "--fault", "cut:chunk=3", "--speed", "0")
    assert ast.literal_eval(got["text"]) == "Once upon " and got["finish"] == "None" and got["error"] == "None"
    assert got["ending"] == "clean [cut:chunk=3]" and got["ended at"] == "chunk 3 of 3"


def test_the_folder_holds_no_secret(recorded, tmp_path: Path):
    store, _, exchanges = recorded
    info = write_repro(store, exchanges["async-break"].id, tmp_path)
    for path in info.paths:
        assert SECRET not in path.read_text()
    assert "[redacted]" in info.cassette.read_text()  # the key was sent, and is stored redacted
    assert len(info.cassette.read_text().splitlines()) == 1 + 2 + exchanges["async-break"].chunk_count + 1


def shaped(agent: str, body: str, headers: list[list[str]] | None = None) -> Exchange:
    return Exchange(id=1, tape="t", seq=0, method="POST", path="/chat/completions", client=agent,
                    request_headers=[["User-Agent", agent], *(headers or [])], request_body=body.encode(), stream=True)


def test_recognised_from_user_agent_and_shape():
    # as langchain-openai 1.7 sends it (recorded through the proxy): every message content-first
    langchain = '{"model":"m","stream":true,"messages":[{"content":"Be brief.","role":"system"},' \
                '{"content":"Say hi","role":"user"}]}'
    assert recognise_client(shaped("OpenAI/Python 3.57.0", langchain)) == "langchain"
    assert recognise_client(shaped("AsyncOpenAI/Python 3.57.0", langchain)) == "langchain"
    plain = '{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say hi"}],"model":"m"}'
    assert recognise_client(shaped("OpenAI/Python 2.54.0", plain)) == "openai-sync"
    assert recognise_client(shaped("my-app/1.0", plain, [["X-Stainless-Async", "async:asyncio"]])) == "openai-async"
    assert recognise_client(shaped("python-httpx/0.28.1", plain)) == "http"
    ag2 = '{"messages":[{"content":"You are a helpful AI Assistant.","role":"system"},{"role":"user",' \
          '"content":"Say hi"}],"model":"m","stream":true,"stream_options":{"include_usage":true}}'
    assert recognise_client(shaped("OpenAI/Python 2.54.0", ag2)) == "ag2"
    assert describe_client(shaped("OpenAI/Python 2.54.0", ag2)) == "AG2 on openai-python 2.54.0, OpenAI"
    assert describe_client(shaped("OpenAI/Python 2.54.0", plain)) == "openai-python 2.54.0, OpenAI"
    assert describe_client(shaped("python-httpx/0.28.1", plain)) == "plain HTTP (python-httpx/0.28.1)"


@pytest.mark.parametrize("client", ["openai-sync", "openai-async", "autogen-agentchat", "ag2", "langchain", "http"])
@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("how", ["reads", "stop", "deadline", "cannot"])
def test_every_variant_is_short_and_parses(client: str, stream: bool, how: str):
    agent = "AsyncOpenAI/Python 2.54.0" if client in ("openai-async", "autogen-agentchat") else "OpenAI/Python 2.54.0"
    # top_k needs extra_body: the longest script of each kind
    body = {"messages": [{"role": "user", "content": "hi"}], "model": "m", "stream": stream, "top_k": 1}
    ex = shaped(agent, json.dumps(body))
    ex.stream, ex.end_cause, ex.client_left_at_chunk, ex.client_left_ns = stream, "client_left", 2, 10**9
    plan = Plan(1.0, "the client's timeout, from the recorded x-stainless-read-timeout header " * 2,
                stop_after=2 if how == "stop" else None, stop_why="inferred from the recording: " * 5,
                deadline=1.0 if how == "deadline" else None, deadline_why="inferred from the recording: " * 5,
                note="AG2 reads every stream to its end: " * 4 if how == "cannot" else "")
    source = render_script(ex, [], client, plan, "async" if "Async" in agent else "sync")
    tree = parse_python(source)
    assert len(source.splitlines()) < 80 and max(len(line) for line in source.splitlines()) <= 120
    asynchronous = client in ("openai-async", "autogen-agentchat")  # a sync client has no deadline to give
    assert ("STOP_AFTER" in source) == (how == "stop" and stream)
    assert ("DEADLINE" in source) == (how == "deadline" and asynchronous)
    assert any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == "send" for n in tree.body)
    assert unbound_globals(source) == set()  # parsing alone would pass a script missing an import


def test_a_deadline_applied_from_the_response_head_is_the_time_from_the_head_to_leaving():
    """The async template applies DEADLINE to the reading, from the response head: so it is the recorded time from
    the head to the client leaving (1.2 s - 0.5 s), not from the request (which a late head would make too long)."""
    body = {"messages": [{"role": "user", "content": "hi"}], "model": "m", "stream": True}
    ex = shaped("AsyncOpenAI/Python 2.54.0", json.dumps(body))
    ex.end_cause, ex.client_left_at_chunk, ex.client_left_ns = "client_left", 2, 1_200_000_000
    plan = Plan(600.0, "the SDK's default", deadline=1.0, deadline_why="inferred from the recording",
                head_s=0.5, left_s=1.2)
    source = render_script(ex, [], "openai-async", plan, "async")
    assert "DEADLINE = 0.7\n" in source and "0.7 s from the response head to leaving" in source


def unbound_globals(source: str) -> set[str]:
    """The global names a script reads that it neither imports nor defines, nor Python builds in."""
    top = symtable.symtable(source, "repro.py", "exec")
    bound = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    read: set[str] = set()
    tables = [top]
    while tables:
        table = tables.pop()
        tables += table.get_children()
        read |= {s.get_name() for s in table.get_symbols()
                 if s.is_referenced() and (table is top or s.is_global())}
    return read - bound - set(dir(builtins)) - {"__file__", "__name__"}


def test_an_autogen_agent_is_recognised_by_its_named_user_messages_or_its_default_system_message():
    """docs/DESIGN.md, Client identity: autogen-agentchat (on the async SDK) names every user message after its
    source, or sends its default system message; one unnamed user message, or the sync SDK, is not autogen."""
    agent = "AsyncOpenAI/Python 2.54.0"
    named = '{"messages":[{"role":"user","content":"Hi","name":"user"},{"role":"assistant","content":"Hey"},' \
            '{"role":"user","content":"More","name":"user"}],"model":"m","stream":true}'
    assert recognise_client(shaped(agent, named)) == "autogen-agentchat"
    assert describe_client(shaped(agent, named)) == "autogen-agentchat on openai-python 2.54.0, AsyncOpenAI"
    one_unnamed = named.replace(',"name":"user"}]', "}]")
    assert recognise_client(shaped(agent, one_unnamed)) == "openai-async"
    assert recognise_client(shaped("OpenAI/Python 2.54.0", named)) == "openai-sync"
    system = json.dumps({"messages": [{"role": "system", "content": AUTOGEN_SYSTEM},
                                      {"role": "user", "content": "Hi"}], "model": "m"})
    assert recognise_client(shaped(agent, system)) == "autogen-agentchat"
    no_user = '{"messages":[{"role":"system","content":"Be brief."}],"model":"m"}'
    assert recognise_client(shaped(agent, no_user)) == "openai-async"
