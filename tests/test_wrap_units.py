"""`record -- CMD` and `play -- CMD` in-process: which provider a route stands for, what a replay puts in
the app's environment, the command's exit status as a shell gives it, and the summaries said at the end.

Real `ReplayServer`s and real child processes (`sh -c`); tests/test_wrap.py runs the CLI around real apps."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from streamreplay.bundled import bundled_tape
from streamreplay.cassette import import_cassette
from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.replay import Replayed, ReplayServer
from streamreplay.store import Store
from streamreplay.wrap import (
    OFFLINE_KEYS,
    CommandNotRun,
    play_summary,
    provider_of,
    record_summary,
    run_command,
    server_environment,
)
from tests.helpers import until, write_exchange

HAPPY = bundled_tape("openai-happy-path")


@pytest.mark.parametrize(("name", "upstream", "provider"), [
    # a route's name says the provider, in any case, by its own name or a nickname
    ("anthropic", "http://127.0.0.1:9", "anthropic"), ("Claude", "http://127.0.0.1:9", "anthropic"),
    ("gpt", "http://127.0.0.1:9", "openai"), ("local", "http://127.0.0.1:9", "ollama"),
    ("azure", "http://127.0.0.1:9", "azure"), ("OLLAMA", "http://127.0.0.1:9", "ollama"),
    # else the upstream's host (or Ollama's port) does
    ("x", "https://api.anthropic.com", "anthropic"), ("x", "https://mine.openai.azure.com/openai", "azure"),
    ("x", "http://azure-proxy.internal", "azure"), ("x", "http://gpu-box:11434", "ollama"),
    ("x", "http://ollama.internal:8080", "ollama"), ("x", "http://gpu-box:11435", "openai"),
    ("x", "https://api.openai.com/v1", "openai"),
])
def test_a_route_stands_for_the_provider_its_name_or_its_upstream_says(name: str, upstream: str, provider: str):
    assert provider_of(name, upstream) == provider


def test_a_replay_points_every_client_at_itself_and_fills_only_the_keys_the_app_lacks(
        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-the-apps-own")
    for key in OFFLINE_KEYS[1:]:
        monkeypatch.delenv(key, raising=False)
    with ReplayServer(HAPPY, speed=0, prefix="/v1") as server:
        env = server_environment(server)
        origin = server.origin
    assert env["OPENAI_BASE_URL"] == f"{origin}/v1"
    assert env["ANTHROPIC_BASE_URL"] == env["AZURE_OPENAI_ENDPOINT"] == env["OLLAMA_HOST"] == origin
    assert "OPENAI_API_KEY" not in env  # the app's own key is left as it is
    assert env["ANTHROPIC_API_KEY"] == env["AZURE_OPENAI_API_KEY"] == "streamreplay-offline"


ROUTES = ("gpt=http://gateway.internal:8080", "claude=https://api.anthropic.com", "box=http://gpu-box:11434")


async def test_each_provider_s_clients_are_pointed_at_their_own_route_recording_and_replaying(tmp_path: Path):
    db = tmp_path / "r.db"
    # a recorder of named upstreams: each provider's variable at its route; an OpenAI-style upstream given without
    # a path serves under /v1; no placeholder keys (the real API needs the app's own)
    async with RecordingProxy(RecordOptions(upstream=ROUTES, db=str(db), tape="t")) as proxy:
        recording = server_environment(proxy)
        origin = proxy.origin
    assert recording == {"OPENAI_BASE_URL": f"{origin}/gpt/v1", "ANTHROPIC_BASE_URL": f"{origin}/claude",
                         "OLLAMA_HOST": f"{origin}/box"}
    # one unnamed upstream: every variable, the openai SDK's with /v1 unless the upstream has a path of its own
    for upstream, openai_base in (("http://127.0.0.1:9", "/v1"), ("http://127.0.0.1:9/v1", "/v1"),
                                  ("http://127.0.0.1:9/X", "/X")):
        async with RecordingProxy(RecordOptions(upstream=upstream, db=str(db), tape="t")) as proxy:
            env, origin = server_environment(proxy), proxy.origin
        assert env == {"OPENAI_BASE_URL": f"{origin}{openai_base}", "ANTHROPIC_BASE_URL": origin,
                       "AZURE_OPENAI_ENDPOINT": origin, "OLLAMA_HOST": origin}
    # a replay of named upstreams serves each under its name, as the recorder did, and fills the keys
    store = Store(db)
    for route in ROUTES:
        write_exchange(store, upstream=route, path=f"/{route.split('=')[0]}/chat/completions")
    async with ReplayServer(db, speed=0) as server:
        replaying, origin = server_environment(server), server.origin
    assert {k: v for k, v in replaying.items() if k not in OFFLINE_KEYS} == {
        "OPENAI_BASE_URL": f"{origin}/gpt/v1", "ANTHROPIC_BASE_URL": f"{origin}/claude", "OLLAMA_HOST": f"{origin}/box"}


async def _run(command: list[str]) -> int:
    server = ReplayServer(HAPPY, speed=0)
    return await run_command(server, command)


@pytest.mark.parametrize(("script", "status"), [("exit 0", 0), ("exit 3", 3), ("kill -TERM $$", 143),
                                                ("kill -KILL $$", 137)])
async def test_the_status_is_the_command_s_and_a_signal_is_128_plus_its_number(script: str, status: int):
    assert await _run(["sh", "-c", script]) == status


async def test_the_command_sees_the_server_running_and_it_stops_after(tmp_path: Path):
    seen = tmp_path / "seen"
    server = ReplayServer(HAPPY, speed=0)
    # the app reaches the replay at the URL it was given, while the command runs
    code = await run_command(server, ["sh", "-c", f'echo "$OPENAI_BASE_URL" > {seen}'])
    assert code == 0
    url = seen.read_text().strip()
    assert url.startswith("http://127.0.0.1:")
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):  # and no daemon is left once it has exited
            await client.get(url)


async def test_the_server_s_urls_beat_the_ones_the_caller_had_set_and_the_caller_s_key_stays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An app run under `play -- CMD` from a shell that already points at the real API must reach the
    replay, not the API; its own key is left as it is."""
    names = ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "AZURE_OPENAI_ENDPOINT", "OLLAMA_HOST")
    for name in names:
        monkeypatch.setenv(name, "https://api.example.invalid/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-the-apps-own")
    seen = tmp_path / "seen"
    server = ReplayServer(HAPPY, speed=0)
    printed = " ".join(f'"${name}"' for name in (*names, "OPENAI_API_KEY"))
    assert await run_command(server, ["sh", "-c", f"echo {printed} > {seen}"]) == 0
    *urls, key = seen.read_text().split()
    origin = server.origin
    assert urls == [f"{origin}/v1", origin, origin, origin] and key == "sk-the-apps-own"


async def test_a_command_that_cannot_start_says_so_and_stops_the_server():
    server = ReplayServer(HAPPY, speed=0)
    with pytest.raises(CommandNotRun, match="^cannot run 'no-such-command-here': No such file or directory$"):
        await run_command(server, ["no-such-command-here"])
    origin = server.origin
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(origin)


async def _signalled(tmp_path: Path, sig: int, script_waits: float) -> tuple[int, bool, float]:
    """Run a command that notes `sig` and exits 7 on it (else 0 after `script_waits` s), send `sig` to this process
    (streamreplay alone, as `kill` does) once it runs: its status, whether it got the signal, and how long after."""
    ready, got = tmp_path / "ready", tmp_path / "got"
    steps = int(script_waits / 0.02)
    script = (f'trap "echo got > {got}; exit 7" {signal.Signals(sig).name[3:]}; touch {ready}; '
              f'i=0; while [ $i -lt {steps} ]; do sleep 0.02; i=$((i+1)); done')
    task = asyncio.create_task(run_command(ReplayServer(HAPPY, speed=0), ["sh", "-c", script]))
    await until(ready.exists)
    sent = time.monotonic()
    os.kill(os.getpid(), sig)
    code = await task
    return code, got.exists(), time.monotonic() - sent


async def test_a_sigterm_to_streamreplay_reaches_the_command_at_once(tmp_path: Path):
    code, got, took = await _signalled(tmp_path, signal.SIGTERM, script_waits=2.0)
    assert (code, got) == (7, True)
    assert took < 0.5  # passed on at once, not after the command would have ended by itself


async def test_a_sigterm_while_the_command_is_being_started_reaches_it_once_it_runs(
        monkeypatch: pytest.MonkeyPatch):
    real_exec = asyncio.create_subprocess_exec

    async def signalled_while_starting(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.05)  # the handler and its forward run before the command exists
        return await real_exec(*args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", signalled_while_starting)
    started = time.monotonic()
    code = await run_command(ReplayServer(HAPPY, speed=0), ["sleep", "5"])
    assert code == 128 + signal.SIGTERM and time.monotonic() - started < 2  # not dropped: sleep was ended by it


async def test_a_sigint_to_streamreplay_is_not_passed_on_at_once(tmp_path: Path):
    # Ctrl-C in a terminal reaches the command by itself; streamreplay passes SIGINT on only a second later
    code, got, took = await _signalled(tmp_path, signal.SIGINT, script_waits=0.3)
    assert (code, got) == (0, False)
    assert took < 0.9


def test_the_play_summary_counts_each_ending_and_gives_the_first_miss_in_full():
    lines: list[str] = []
    exchange = ReplayServer(HAPPY).source.exchanges()[0]
    with ReplayServer(HAPPY, speed=0) as server:
        for body in (exchange.request_body, b'{"model": "other", "stream": true}', exchange.request_body):
            httpx.post(f"{server.base_url}/chat/completions", content=body,
                       headers={"content-type": "application/json"})
        play_summary(server, "my.jsonl", lines.append)
        first_miss = [r for r in server.requests if r.miss][0]
    assert lines[0] == "streamreplay: served 3 requests from my.jsonl (clean 2, miss 1)"
    assert lines[1] == f"  first miss: POST /chat/completions: {first_miss.miss}"
    assert len(lines) == 2

    lines.clear()
    with ReplayServer(HAPPY, speed=0) as server:
        play_summary(server, "my.jsonl", lines.append)
    assert lines == ["streamreplay: served 0 requests from my.jsonl"]


def test_a_client_that_left_counts_as_the_app_leaving_not_as_the_recorded_ending():
    lines: list[str] = []
    exchange = ReplayServer(HAPPY).source.exchanges()[0]

    async def leave_after_the_head(base_url: str) -> None:
        async with httpx.AsyncClient() as client, \
                client.stream("POST", f"{base_url}/chat/completions", content=exchange.request_body) as r:
            async for _ in r.aiter_raw():
                break

    with ReplayServer(HAPPY, speed=1) as server:
        server.call(leave_after_the_head(server.base_url))
        # once the server has noticed the client has gone (at its next write)
        server.call(until(lambda: server.counts.unfinished == 1, timeout=10))
        play_summary(server, "t", lines.append)
    assert lines == ["streamreplay: served 1 request from t (client left 1)"]


def test_the_record_summary_lists_each_exchange_that_did_not_end_complete_with_how_to_look_closer(tmp_path: Path):
    db = tmp_path / "r.db"
    import_cassette(bundled_tape("consumer-break"), db, "mixed")
    lines: list[str] = []
    record_summary(str(db), "mixed", lines.append)
    ex = Store(db).exchanges(tape="mixed")[0]
    assert lines[0] == f"streamreplay: recorded 1 exchange into {db}, tape mixed: 1 did not end complete"
    assert lines[1].startswith(f"  mixed:0 POST {ex.path} client_left: ")
    assert lines[2] == f"    streamreplay diagnose mixed:0 --db {db}"
    assert lines[3] == f"    streamreplay repro mixed:0 --db {db} -o repro_mixed-0/"
    assert len(lines) == 4

    whole = tmp_path / "whole.db"
    import_cassette(HAPPY, whole, "fine")
    import_cassette(bundled_tape("ollama-happy-path"), whole, "fine-2")
    lines.clear()
    record_summary(str(whole), "fine", lines.append)
    assert lines == [f"streamreplay: recorded 1 exchange into {whole}, tape fine: all complete"]
    # any end but complete is listed, not only a client that left
    with sqlite3.connect(whole) as conn:
        conn.execute("update exchanges set end_cause = 'eof_without_done' where tape = 'fine'")
    lines.clear()
    record_summary(str(whole), "fine", lines.append)
    assert lines[0] == f"streamreplay: recorded 1 exchange into {whole}, tape fine: 1 did not end complete"
    assert lines[1].startswith("  fine:0 POST /chat/completions eof_without_done: ")
    # an app that made no request: none recorded, in the plural
    lines.clear()
    record_summary(str(whole), "unused", lines.append)
    assert lines == [f"streamreplay: recorded 0 exchanges into {whole}, tape unused: all complete"]


def test_a_client_that_closed_after_the_terminal_event_read_the_answer_to_its_end():
    # the openai SDK closes as soon as it reads [DONE], before the body's terminator: that is the answer
    # read whole, counted under its ending; only leaving before the terminal event is the app leaving
    def record(n: int, left_at: int | None, done: bool, ending: str = "clean") -> Replayed:
        return Replayed(n, "POST", "/chat/completions", ending=ending, total=12, delivered=12 if done else 3,
                        client_left_at_chunk=left_at, done_delivered=done)

    lines: list[str] = []
    served = SimpleNamespace(requests=[record(1, 12, True), record(2, None, True), record(3, 3, False),
                                       record(4, 12, True, "close")])
    play_summary(served, "t", lines.append)
    assert lines == ["streamreplay: served 4 requests from t (clean 2, client left 1, close 1)"]
