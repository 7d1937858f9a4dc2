"""`streamreplay demo`: a real AutoGen agent fed a bundled recording offline, then the same under faults.

No key, no network: the cassette, bundled in the package, was recorded from a real local model server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from streamreplay.bundled import bundled_dir
from streamreplay.clients import MODEL_INFO
from streamreplay.replay import ReplayServer
from streamreplay.replay.source import CassetteSource

DEMO_TAPE = "agent-happy-path"
TASK = "Write a haiku about the sea."


def find_recordings(directory: str | None = None) -> Path:
    """`directory` if given, else the tapes bundled in the package (streamreplay.bundled), from any install."""
    candidates = [Path(directory)] if directory else [bundled_dir()]
    for path in candidates:
        if (path / f"{DEMO_TAPE}.jsonl").exists():
            return path
    raise FileNotFoundError(f"no {DEMO_TAPE}.jsonl in {' or '.join(str(p) for p in candidates)}")


async def run_agent(base_url: str) -> tuple[str, str, str | None]:
    """(what streamed, the agent's final answer, the exception) for one AutoGen run."""
    from autogen_agentchat.agents import AssistantAgent
    from autogen_agentchat.messages import ModelClientStreamingChunkEvent
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    client = OpenAIChatCompletionClient(model="smollm2", base_url=base_url, api_key="not-needed", temperature=0,
                                        max_retries=0, model_info=MODEL_INFO)
    agent = AssistantAgent("assistant", model_client=client, model_client_stream=True)
    streamed, final = "", ""
    try:
        async for item in agent.run_stream(task=TASK):
            if isinstance(item, ModelClientStreamingChunkEvent):
                streamed += item.content
            elif hasattr(item, "messages"):
                final = str(item.messages[-1].content)
    except Exception as exc:  # the exception is what the demo shows
        return streamed, final, f"{type(exc).__module__.split('.')[0]}.{type(exc).__name__}: {exc}"
    finally:
        await client.close()
    return streamed, final, None


async def demo(directory: str | None = None, say: Callable[[str], None] = print) -> None:
    cassette = find_recordings(directory) / f"{DEMO_TAPE}.jsonl"
    source = CassetteSource(cassette)
    (recorded,) = source.exchanges()
    total = len(source.chunks(recorded))
    cut = total // 2
    # a path inside site-packages says nothing to a reader: the bundled tape is named as such
    say(f"cassette  {cassette if directory else f'{DEMO_TAPE} (bundled: streamreplay tapes)'}")
    say(f"          {source.header.get('source')}")
    say(f"          {total} chunks over {recorded.duration_ns / 1e9:.2f} s, recorded end cause: {recorded.end_cause}")
    runs = [
        (None, "no fault: the recording as it happened"),
        (f"close:chunk={cut}", f"the upstream closes the connection mid-body after {cut} chunks"),
        (f"cut:chunk={cut}", f"a clean end after {cut} chunks: no finish_reason, no [DONE]"),
    ]
    async with ReplayServer(source, speed=1) as server:
        for n, (spec, what) in enumerate(runs, 1):
            base_url = server.fault_url(spec) if spec else server.base_url
            say("")
            say(f"{n}) AutoGen AssistantAgent(model_client_stream=True), base_url {base_url}")
            say(f"   {what}")
            streamed, final, error = await run_agent(base_url)
            replayed = server.requests[-1]
            say(f"   streamed     {streamed!r}")
            if error:
                say(f"   agent raised {error}")
            else:
                say(f"   agent answer {final!r}")
            say(f"   replay       {replayed.delivered}/{replayed.total} chunks delivered, ended {replayed.ending}"
                + (f" [{' + '.join(replayed.applied)}]" if replayed.applied else ""))
            if spec and spec.startswith("cut") and not error:
                say("   => AutoGen accepted a truncated answer without any error.")
    say("")
    where = cassette if directory else f"recordings/{DEMO_TAPE}.jsonl"
    copy = "" if directory else "streamreplay tapes --copy recordings, then "
    say(f"Replay any fault yourself: {copy}streamreplay play --db {where} --fault close:chunk={cut}")


def main(directory: str | None = None, say: Callable[[str], None] = print) -> None:
    asyncio.run(demo(directory, say))
