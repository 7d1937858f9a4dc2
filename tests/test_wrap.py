"""`streamreplay record -- CMD`, `streamreplay play -- CMD` and several upstreams in one recorder.

The commands run as a user runs them (a subprocess of the real CLI) around real apps (tests/apps/: the
openai and anthropic SDKs, an autogen-agentchat agent) configured only by their environment.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import anthropic
import openai
import pytest

from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.replay import ReplayServer
from streamreplay.store import Store
from streamreplay.testing import Script, ScriptedUpstream
from streamreplay.wrap import client_environment, provider_of
from tests.helpers import sha

APPS = Path(__file__).resolve().parent / "apps"
TEXT = "Hello there, this is a scripted answer for the wrapper"
SLOW = Script(text=TEXT, gap=0.03)


def streamreplay(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamreplay.cli", *args], capture_output=True, text=True,
                          timeout=90, env={**os.environ, **(env or {})}, **kw)  # type: ignore[call-overload]


def app(name: str, *args: str) -> list[str]:
    return [sys.executable, str(APPS / name), *args]


@pytest.fixture
def upstream():
    with ScriptedUpstream(SLOW) as up:
        yield up


def test_record_runs_the_app_and_says_what_happened(upstream: ScriptedUpstream, tmp_path: Path):
    db = tmp_path / "w.db"
    done = streamreplay("record", "--upstream", upstream.base_url, "--db", str(db), "--tape", "run",
                        "--", *app("two_providers.py", "openai"), env={"OPENAI_API_KEY": "sk-test-wrap"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"openai: {TEXT!r}\n"  # the app's own output, and nothing of ours
    assert done.stderr.splitlines()[-1] == f"streamreplay: recorded 1 exchange into {db}, tape run: all complete"
    (ex,) = Store(db).exchanges(tape="run")
    assert (ex.end_cause, ex.text) == ("complete", TEXT)
    assert b"".join(c.data for c in Store(db).chunks(ex.id)) == upstream.sent[0].body


def test_an_app_that_breaks_out_and_fails_keeps_its_status_and_gets_a_diagnosis(upstream: ScriptedUpstream,
                                                                                 tmp_path: Path):
    db = tmp_path / "w.db"
    done = streamreplay("record", "--upstream", upstream.base_url, "--db", str(db), "--tape", "cut",
                        "--", *app("two_providers.py", "break", "3"), env={"OPENAI_API_KEY": "sk-test-wrap"})
    assert done.returncode == 3, done.stderr
    assert done.stdout.startswith("openai: left after 3 chunks")
    lines = done.stderr.splitlines()
    assert lines[0] == f"streamreplay: recorded 1 exchange into {db}, tape cut: 1 did not end complete"
    assert lines[1].startswith("  cut:0 POST /chat/completions client_left: a consumer that stopped reading")
    assert lines[2] == f"    streamreplay diagnose cut:0 --db {db}"
    assert lines[3].startswith(f"    streamreplay repro cut:0 --db {db} -o ")
    # the recorder read the answer to its end while the app had left
    (ex,) = Store(db).exchanges(tape="cut")
    assert ex.upstream_end == "complete" and ex.client_left_at_chunk is not None


def test_an_autogen_agent_as_the_command_then_played_offline(upstream: ScriptedUpstream, tmp_path: Path):
    db = tmp_path / "w.db"
    done = streamreplay("record", "--upstream", upstream.base_url, "--db", str(db), "--tape", "agent",
                        "--", *app("autogen_agent.py"), env={"OPENAI_API_KEY": "sk-test-wrap"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"agent: {TEXT!r}\n"
    # offline: no key in the environment, no upstream; the replay's faults reach the same agent
    offline = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    played = subprocess.run([sys.executable, "-m", "streamreplay.cli", "play", "--db", str(db), "--speed", "0",
                             "--", *app("autogen_agent.py")], capture_output=True, text=True, timeout=90, env=offline)
    assert played.returncode == 0, played.stderr
    assert played.stdout == f"agent: {TEXT!r}\n"
    assert played.stderr.splitlines()[-1] == f"streamreplay: served 1 request from {db} (clean 1)"
    cut = subprocess.run([sys.executable, "-m", "streamreplay.cli", "play", "--db", str(db), "--speed", "0",
                          "--fault", "cut:chunk=4", "--", *app("autogen_agent.py")], capture_output=True, text=True,
                         timeout=90, env=offline)
    assert cut.returncode == 0, cut.stderr  # a clean cut: the agent takes part of the answer, silently
    assert cut.stdout == "agent: 'Hello there, this '\n"


def test_a_command_that_cannot_start_exits_127_and_leaves_no_daemon(upstream: ScriptedUpstream, tmp_path: Path):
    done = streamreplay("record", "--upstream", upstream.base_url, "--db", str(tmp_path / "w.db"),
                        "--", str(tmp_path / "no-such-app"))
    assert done.returncode == 127
    assert "streamreplay: cannot run" in done.stderr and "Traceback" not in done.stderr


def test_ctrl_c_reaches_the_command_and_leaves_no_daemon(upstream: ScriptedUpstream, tmp_path: Path):
    """Ctrl-C in a terminal: SIGINT to the whole foreground process group."""
    upstream.script = Script(text=TEXT, gap=0.5)  # a long stream, interrupted in its middle
    db = tmp_path / "w.db"
    waiter = ("import os, sys, openai\n"
              "print(os.environ['OPENAI_BASE_URL'], flush=True)\n"
              "for chunk in openai.OpenAI(max_retries=0).chat.completions.create(model='m', stream=True,"
              " messages=[{'role': 'user', 'content': 'hi'}]):\n"
              "    print('chunk', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-m", "streamreplay.cli", "record", "--upstream", upstream.base_url,
                             "--db", str(db), "--tape", "ctrl-c", "--", sys.executable, "-c", waiter],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OPENAI_API_KEY": "sk-test-wrap"})
    base_url = proc.stdout.readline().strip()  # type: ignore[union-attr]
    assert proc.stdout.readline() == "chunk\n"  # type: ignore[union-attr]
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err  # the app died of the SIGINT; its status is passed on
    assert "KeyboardInterrupt" in err
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # nobody listens there any more
    (ex,) = Store(db).exchanges(tape="ctrl-c")
    assert ex.end_cause == "client_left"  # and the recording says how it ended


async def test_two_upstreams_in_one_recorder_each_replayed_from_its_own_recordings(tmp_path: Path):
    db = tmp_path / "two.db"
    question = [{"role": "user", "content": "Say hello"}]
    async with ScriptedUpstream(Script(text="from the chat model")) as chat, \
            ScriptedUpstream(Script(text="from claude")) as claude:
        routes = (f"openai={chat.base_url}", f"claude={claude.origin}")
        async with RecordingProxy(RecordOptions(upstream=routes, db=str(db), tape="two")) as proxy:
            assert proxy.base_urls == {"openai": f"{proxy.origin}/openai", "claude": f"{proxy.origin}/claude"}
            got_chat = await _openai_text(proxy.base_urls["openai"], question)
            got_claude = await _anthropic_text(proxy.base_urls["claude"], question)
            await proxy.settle()
        assert (got_chat, got_claude) == ("from the chat model", "from claude")
        sent = {"chat": chat.sent[0].body, "claude": claude.sent[0].body}
    exchanges = {ex.path: ex for ex in Store(db).exchanges(tape="two")}
    assert set(exchanges) == {"/openai/chat/completions", "/claude/v1/messages"}
    assert exchanges["/openai/chat/completions"].upstream == f"openai={chat.base_url}"
    assert exchanges["/claude/v1/messages"].upstream == f"claude={claude.origin}"
    assert exchanges["/claude/v1/messages"].dialect.name == "anthropic"
    store = Store(db)
    assert sha(b"".join(c.data for c in store.chunks(exchanges["/claude/v1/messages"].id))) == sha(sent["claude"])
    async with ReplayServer(db, speed=0) as srv:
        assert await _openai_text(f"{srv.origin}/openai", question) == "from the chat model"
        assert await _anthropic_text(f"{srv.origin}/claude", question) == "from claude"
        assert [r.exchange_id for r in srv.requests] == [exchanges[p].id for p in
                                                        ("/openai/chat/completions", "/claude/v1/messages")]


def test_the_wrapper_points_each_provider_s_client_at_its_own_route(tmp_path: Path):
    db = tmp_path / "w.db"
    with ScriptedUpstream(Script(text="from the chat model")) as chat, \
            ScriptedUpstream(Script(text="from claude")) as claude:
        done = streamreplay("record", "--upstream", f"openai={chat.base_url}", "--upstream",
                            f"claude={claude.origin}", "--db", str(db), "--tape", "both", "--",
                            *app("two_providers.py"), env={"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-a"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "openai: 'from the chat model'\nanthropic: 'from claude'\n"
    assert sorted(ex.path for ex in Store(db).exchanges(tape="both")) == ["/claude/v1/messages",
                                                                          "/openai/chat/completions"]
    # and offline, each client again at its own route, from its own recordings
    offline = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    played = subprocess.run([sys.executable, "-m", "streamreplay.cli", "play", "--db", str(db), "--speed", "0",
                             "--", *app("two_providers.py")], capture_output=True, text=True, timeout=90, env=offline)
    assert played.returncode == 0, played.stderr
    assert played.stdout == done.stdout
    assert played.stderr.splitlines()[-1] == f"streamreplay: served 2 requests from {db} (clean 2)"


def test_client_environment_for_one_upstream_and_for_named_ones():
    one = client_environment({"": "http://127.0.0.1:9/v1"}, {"": "https://api.openai.com/v1"})
    assert one == {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "ANTHROPIC_BASE_URL": "http://127.0.0.1:9",
                   "AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9", "OLLAMA_HOST": "http://127.0.0.1:9"}
    bare = client_environment({"": "http://127.0.0.1:9"}, {"": "http://localhost:11434"})
    assert bare["OPENAI_BASE_URL"] == "http://127.0.0.1:9/v1"  # Ollama's OpenAI-compatible API is under /v1
    named = client_environment({"gpt": "http://h:9/gpt", "claude": "http://h:9/claude", "box": "http://h:9/box"},
                               {"gpt": "https://api.openai.com/v1", "claude": "https://api.anthropic.com",
                                "box": "http://gpu-box:11434"})
    assert named == {"OPENAI_BASE_URL": "http://h:9/gpt", "ANTHROPIC_BASE_URL": "http://h:9/claude",
                     "OLLAMA_HOST": "http://h:9/box"}
    assert provider_of("x", "https://my.openai.azure.com") == "azure"


def test_several_upstreams_must_be_named_once_each(tmp_path: Path):
    for routes, says in ((("http://a/v1", "http://b/v1"), "name each one"),
                         (("a=http://a/v1", "a=http://b/v1"), "a given twice")):
        done = streamreplay("record", "--db", str(tmp_path / "x.db"), *[f"--upstream={r}" for r in routes])
        assert done.returncode == 2 and says in done.stderr, done.stderr


async def _openai_text(base_url: str, messages: list[dict[str, str]]) -> str:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)  # type: ignore[arg-type]
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    await client.close()
    return text


async def _anthropic_text(base_url: str, messages: list[dict[str, str]]) -> str:
    client = anthropic.AsyncAnthropic(base_url=base_url, api_key="sk-test", max_retries=0)
    async with client.messages.stream(model="claude-test", max_tokens=64, messages=messages) as stream:  # type: ignore[arg-type]
        text = "".join([t async for t in stream.text_stream])
    await client.close()
    return text
