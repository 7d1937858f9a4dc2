"""Record the bundled chat tapes (streamreplay/tapes/) from the real local model server, with the real clients.

    python scripts/record_bundled.py            # starts scripts/real-upstream.sh if needed

Each scenario runs a real client through `streamreplay record` (a subprocess, as a user would run
it) in front of llama.cpp's server, then the tape is exported as streamreplay/tapes/<tape>.jsonl.
Temperature 0 and a single-token batch on the server make the answers the same on every run.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamreplay.clients import MODEL_INFO  # noqa: E402
from tests.realmodel_server import real_upstream_url  # noqa: E402

MODEL = "smollm2"


def autogen_client(base_url: str, **kw: object):
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    return OpenAIChatCompletionClient(model=MODEL, base_url=base_url, api_key="none", temperature=0,
                                      model_info=MODEL_INFO, **kw)


async def openai_happy_path(base_url: str) -> str:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="none")
    stream = await client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=60, stream=True,
        messages=[{"role": "user", "content": "Name three colors of the rainbow."}])
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


async def agent_happy_path(base_url: str) -> str:
    from autogen_agentchat.agents import AssistantAgent

    client = autogen_client(base_url)
    agent = AssistantAgent("assistant", model_client=client, model_client_stream=True)
    result = await agent.run(task="Write a haiku about the sea.")
    await client.close()
    return result.messages[-1].content


async def agent_multi_turn(base_url: str) -> str:
    from autogen_agentchat.agents import AssistantAgent
    from autogen_agentchat.conditions import MaxMessageTermination
    from autogen_agentchat.teams import RoundRobinGroupChat

    client = autogen_client(base_url)
    writer = AssistantAgent("writer", model_client=client, model_client_stream=True,
                            system_message="You write one short sentence.")
    critic = AssistantAgent("critic", model_client=client, model_client_stream=True,
                            system_message="You suggest one improvement in one short sentence.")
    team = RoundRobinGroupChat([writer, critic], termination_condition=MaxMessageTermination(4))
    result = await team.run(task="A sentence about autumn.")
    await client.close()
    return f"{len(result.messages)} messages, stopped by: {result.stop_reason}"


async def consumer_break(base_url: str) -> str:
    """The app stops reading after the first content chunk (a `break` in the loop)."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="none")
    stream = await client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=60, stream=True,
        messages=[{"role": "user", "content": "Tell me about the moon."}])
    text = ""
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text = chunk.choices[0].delta.content
            break
    await stream.close()
    return text


async def client_timeout(base_url: str) -> str:
    """The app gives the whole answer one second (asyncio.wait_for), and the answer takes longer."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="none")
    parts: list[str] = []

    async def consume() -> None:
        stream = await client.chat.completions.create(
            model=MODEL, temperature=0, max_tokens=200, stream=True,
            messages=[{"role": "user", "content": "Explain how tides work, in detail."}])
        async for chunk in stream:
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")

    try:
        await asyncio.wait_for(consume(), timeout=1.0)
    except asyncio.TimeoutError:
        return "".join(parts) + " [timed out after 1.0 s]"
    return "".join(parts)


def ag2_happy_path(base_url: str) -> str:
    from autogen import ConversableAgent

    config = {"config_list": [{"model": MODEL, "base_url": base_url, "api_key": "none", "stream": True}],
              "temperature": 0, "cache_seed": None}
    agent = ConversableAgent("assistant", llm_config=config, human_input_mode="NEVER")
    reply = agent.generate_reply(messages=[{"role": "user", "content": "What is the capital of France?"}])
    return str(reply)


SCENARIOS: dict[str, tuple[Callable[[str], Awaitable[str] | str], str]] = {
    "openai-happy-path": (openai_happy_path, "openai AsyncOpenAI, a normal streamed answer"),
    "agent-happy-path": (agent_happy_path, "autogen-agentchat AssistantAgent(model_client_stream=True).run"),
    "agent-multi-turn": (agent_multi_turn, "autogen-agentchat RoundRobinGroupChat, MaxMessageTermination(4)"),
    "consumer-break": (consumer_break, "openai AsyncOpenAI, `break` after the first content chunk: a real client cut"),
    "client-timeout": (client_timeout, "openai AsyncOpenAI inside asyncio.wait_for(1.0 s): a real client timeout"),
    "ag2-happy-path": (ag2_happy_path, "AG2 ConversableAgent.generate_reply, stream in the config entry"),
}


def record(tape: str, upstream: str, db: Path, note: str, run: Callable[[str], Awaitable[str] | str]) -> str:
    cmd = [sys.executable, "-m", "streamreplay.cli", "record", "--upstream", upstream, "--db", str(db),
           "--tape", tape, "--port", "0", "--note", note]
    daemon = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        banner = daemon.stdout.readline()  # type: ignore[union-attr]
        base_url = re.search(r"base_url (\S+)", banner).group(1)  # type: ignore[union-attr]
        outcome = run(base_url)
        if asyncio.iscoroutine(outcome):
            outcome = asyncio.run(outcome)
        asyncio.run(asyncio.sleep(1.0))  # a client that left: let the proxy read the rest of the answer
    finally:
        daemon.terminate()
        for line in daemon.stdout:  # type: ignore[union-attr]
            print("   ", line.rstrip())
        daemon.wait(timeout=30)
    return str(outcome)


def main() -> None:
    upstream = os.environ.get("STREAMREPLAY_REAL_UPSTREAM") or real_upstream_url()
    server = "llama-cpp-python 0.3.36 server, SmolLM2-135M-Instruct Q4_1, temperature 0"
    only = set(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bundled.db"
        for tape, (run, how) in SCENARIOS.items():
            if only and tape not in only:
                continue
            print(f"== {tape}: {how}")
            outcome = record(tape, upstream, db, f"recorded from {server}; client: {how}", run)
            print(f"   the client got: {outcome!r}")
            subprocess.run([sys.executable, "-m", "streamreplay.cli", "export", tape, "--db", str(db),
                            "-o", str(ROOT / "streamreplay" / "tapes" / f"{tape}.jsonl")], check=True)


if __name__ == "__main__":
    main()
