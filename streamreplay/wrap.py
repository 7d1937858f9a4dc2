"""`streamreplay record [options] -- CMD ...` and `streamreplay play [options] -- CMD ...`.

The daemon, the app and what happened, in one command and with no change to the app, as
`coverage run` and `py-spy record --` do it: start the server on a free port, run CMD with every
supported client's base-URL variable pointing at it, wait for CMD, let the server settle and stop,
then say what happened on stderr (CMD's own output is untouched) and exit with CMD's status.

Ctrl-C reaches CMD from the terminal (it is in the same process group); a SIGINT sent to
streamreplay alone is passed on to CMD after a second, and SIGTERM and SIGHUP at once. Either way
the server stops only after CMD has exited, so no daemon is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from yarl import URL

#: the variables each provider's clients read their base URL from
CLIENT_VARIABLES = {
    "openai": ("OPENAI_BASE_URL",),  # the openai SDK, and autogen-ext, AG2 and langchain-openai through it
    "anthropic": ("ANTHROPIC_BASE_URL",),
    "azure": ("AZURE_OPENAI_ENDPOINT",),
    "ollama": ("OLLAMA_HOST",),
}
#: names people give routes, as the provider they mean
_ALIASES = {"claude": "anthropic", "gpt": "openai", "local": "ollama"}
#: exit status of a command that could not be started, as a shell gives it
NOT_FOUND = 127


def provider_of(name: str, upstream: str) -> str:
    """The provider a route stands for: its name when that names one, else its upstream's host."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key in CLIENT_VARIABLES:
        return key
    url = URL(upstream)
    host = url.host or ""
    if "anthropic" in host:
        return "anthropic"
    if host.endswith(".azure.com") or "azure" in host:
        return "azure"
    if url.port == 11434 or "ollama" in host:
        return "ollama"
    return "openai"


def _openai_base(local: str, upstream: str) -> str:
    # the openai SDK wants the base with /v1; an upstream given without a path (Ollama's, a bare host)
    # serves its OpenAI-compatible API under /v1
    return local if URL(upstream).path.strip("/") else f"{local}/v1"


def client_environment(base_urls: Mapping[str, str], upstreams: Mapping[str, str]) -> dict[str, str]:
    """The variables that point every supported client at the server.

    `base_urls` and `upstreams` are by route name ("" for a single unnamed upstream). One unnamed
    upstream gets every variable (the Anthropic, Azure and Ollama clients add their own paths, so they
    get the server's origin); named routes each set the variables of the provider they stand for.
    """
    env: dict[str, str] = {}
    if set(base_urls) == {""}:
        local, upstream = base_urls[""], upstreams[""]
        origin = str(URL(local).origin())
        env["OPENAI_BASE_URL"] = _openai_base(local, upstream)
        for provider in ("anthropic", "azure", "ollama"):
            env.update(dict.fromkeys(CLIENT_VARIABLES[provider], origin))
        return env
    for name, local in base_urls.items():
        provider = provider_of(name, upstreams[name])
        value = _openai_base(local, upstreams[name]) if provider == "openai" else local
        env.update(dict.fromkeys(CLIENT_VARIABLES[provider], value))
    return env


#: what a replay puts in the key variables the app's clients insist on, when the app's environment has none
OFFLINE_KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AZURE_OPENAI_API_KEY")


def server_environment(server: Any) -> dict[str, str]:
    """`client_environment` for a started RecordingProxy (its routes) or ReplayServer (one base URL). A
    replay needs no key, but the SDKs refuse to start without one: it gets a placeholder where none is set."""
    from streamreplay.proxy.routes import recorded_routes

    routes = getattr(server, "routes", None)
    if routes:
        return client_environment(server.base_urls, {r.name: str(r.url) for r in routes})
    # a replay of named upstreams serves each under its name, as the recorder did
    named = recorded_routes(server.index.upstreams())
    if named:
        env = client_environment({name: f"{server.origin}/{name}" for name in named}, named)
    else:
        env = client_environment({"": server.base_url}, {"": server.base_url})
    env.update({key: "streamreplay-offline" for key in OFFLINE_KEYS if not os.environ.get(key)})
    return env


async def run_command(server: Any, command: Sequence[str], settle: Callable[[], Any] | None = None) -> int:
    """Start `server`, run `command` with the variables that point every client at it, and stop the server
    once the command has exited (after `settle`, for a recorder); the command's exit status, as a shell
    gives it."""
    await server.start()
    env = server_environment(server)
    loop = asyncio.get_running_loop()
    proc: asyncio.subprocess.Process | None = None
    early: list[int] = []  # signals due while CMD was still being started: passed on once it runs

    def forward(sig: int) -> None:
        if proc is None:
            early.append(sig)
        elif proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def on_signal(sig: int) -> None:
        # Ctrl-C in a terminal reaches CMD by itself: pass SIGINT on only if CMD has not ended a second later
        loop.call_later(1.0 if sig == signal.SIGINT else 0.0, forward, sig)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in handled:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        try:
            proc = await asyncio.create_subprocess_exec(*command, env={**os.environ, **env})
        except OSError as exc:
            raise CommandNotRun(f"cannot run {command[0]!r}: {exc.strerror or exc}") from exc
        for sig in early:
            forward(sig)
        code = await proc.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        try:
            if settle is not None:
                await settle()
        finally:
            await server.stop()
    return 128 - code if code < 0 else code


class CommandNotRun(Exception):
    """The command could not be started at all (not found, not executable)."""


def record_summary(db: str, tape: str, say: Callable[[str], None]) -> None:
    """What a wrapped recording holds: how many exchanges, which did not end complete, and for each a
    one-line diagnosis with the commands that explain and reproduce it."""
    from streamreplay.diagnose import diagnose_exchange
    from streamreplay.endcause import EndCause
    from streamreplay.store import Store

    store = Store(db)
    exchanges = store.exchanges(tape=tape)
    short = [ex for ex in exchanges if ex.end_cause != EndCause.COMPLETE]
    word = "exchange" if len(exchanges) == 1 else "exchanges"
    ended = f"{len(short)} did not end complete" if short else "all complete"
    say(f"streamreplay: recorded {len(exchanges)} {word} into {db}, tape {tape}: {ended}")
    for ex in short:
        d = diagnose_exchange(ex, store.chunks(ex.id), exchanges, db)
        say(f"  {ex.tape}:{ex.seq} {ex.method} {ex.path} {ex.end_cause}: {d.summary}")
        say(f"    streamreplay diagnose {ex.tape}:{ex.seq} --db {db}")
        say(f"    {d.repro}")


def play_summary(server: Any, source: str, say: Callable[[str], None]) -> None:
    """What a wrapped replay served: requests, how they ended, and the first miss in full."""
    requests = list(server.requests)
    # a client that left before the end is what the app did, whatever the replay was to end with
    endings = Counter("client left" if r.client_left_at_chunk is not None and not r.done_delivered else r.ending
                      for r in requests)
    how = ", ".join(f"{ending} {count}" for ending, count in sorted(endings.items()))
    word = "request" if len(requests) == 1 else "requests"
    say(f"streamreplay: served {len(requests)} {word} from {source}" + (f" ({how})" if how else ""))
    first_miss = next((r for r in requests if r.miss), None)
    if first_miss is not None:
        say(f"  first miss: {first_miss.method} {first_miss.path}: {first_miss.miss}")
