"""`bisect --by client` and `streamreplay client`: reference consumers against a replay of one exchange.

A behaviour is how an app reads a stream (to the end, stopping after k chunks, with a read timeout,
slowly, or with streaming off). Replaying the recording into each and comparing where each left
with where the recorded client left tells whether the consumer or the stream was at fault.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamreplay.clientid import Client, client_name
from streamreplay.clients import Outcome, chat_messages, clients_of, describe, run_client
from streamreplay.endcause import EndCause
from streamreplay.replay import Replayed, ReplayServer
from streamreplay.replay.source import OneExchange
from streamreplay.store import Exchange, Store


@dataclass(frozen=True)
class Behaviour:
    name: str  # reads-to-end | stop:K | timeout:S | slow:S | stream-off
    stop_after: int | None = None
    timeout: float | None = None
    delay: float = 0.0
    stream: bool = True

    @classmethod
    def parse(cls, spec: str) -> Behaviour:
        kind, _, value = spec.partition(":")
        try:
            if kind == "reads-to-end":
                return cls(spec)
            if kind == "stop":
                return cls(spec, stop_after=int(value))
            if kind == "timeout":
                return cls(spec, timeout=float(value))
            if kind == "slow":
                return cls(spec, delay=float(value))
            if kind == "stream-off":
                return cls(spec, stream=False)
        except ValueError:
            raise ValueError(f"behaviour {spec!r}: {value!r} is not a number") from None
        raise ValueError(f"unknown behaviour {spec!r}: reads-to-end, stop:K, timeout:S, slow:S or stream-off")

    def describe(self) -> str:
        if self.stop_after is not None:
            return f"stops after {self.stop_after} chunks"
        if self.timeout is not None:
            return f"read timeout {self.timeout:g} s"
        if self.delay:
            return f"slow reader ({self.delay:g} s a chunk)"
        return "streaming off" if not self.stream else "reads to the end"


async def openai_consumer(base_url: str, messages: list[dict[str, Any]], behaviour: Behaviour) -> Outcome:
    """The openai SDK (async) reading the way `behaviour` says."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="not-needed", max_retries=0,
                                timeout=behaviour.timeout or 600.0)
    out = Outcome("")
    try:
        if not behaviour.stream:
            reply = await client.chat.completions.create(model="smollm2", messages=messages, stream=False)
            out.text, out.finish_reason = reply.choices[0].message.content or "", reply.choices[0].finish_reason
            return out
        stream = await client.chat.completions.create(model="smollm2", messages=messages, stream=True)
        count = 0
        async for chunk in stream:
            count += 1
            if chunk.choices:
                out.text += chunk.choices[0].delta.content or ""
                out.finish_reason = chunk.choices[0].finish_reason or out.finish_reason
            if behaviour.stop_after is not None and count >= behaviour.stop_after:
                break
            if behaviour.delay:
                await asyncio.sleep(behaviour.delay)
        await stream.close()
    except Exception as exc:  # what the app sees
        out.error = describe(exc)
    finally:
        await client.close()
    return out


@dataclass
class Observation:
    behaviour: str
    client: str  # the client's label, as the table shows it: "openai async"
    outcome: Outcome
    seen: Replayed

    def left(self) -> str:
        if self.seen.client_left_at_chunk is None or self.seen.done_delivered:
            return f"read {self.seen.delivered}/{self.seen.total}"
        return f"left at chunk {self.seen.client_left_at_chunk}, {self.seen.client_left_ns / 1e9:.3f} s"


def matches(ex: Exchange, seen: Replayed) -> bool:
    """Left where and (about) when the recorded client left."""
    recorded_left = ex.client_left_at_chunk is not None and ex.end_cause == EndCause.CLIENT_LEFT
    observed_left = seen.client_left_at_chunk is not None and not seen.done_delivered
    if recorded_left != observed_left:
        return False
    if not recorded_left:
        return True
    close_in_time = abs((seen.client_left_ns or 0) - (ex.client_left_ns or 0)) / 1e9 <= max(
        0.15, 0.25 * (ex.client_left_ns or 0) / 1e9)
    return seen.client_left_at_chunk == ex.client_left_at_chunk and close_in_time


def behaviours_for(ex: Exchange, silence: float | None) -> list[Behaviour]:
    found = [Behaviour("reads-to-end")]
    if ex.client_left_at_chunk is not None and ex.end_cause == EndCause.CLIENT_LEFT:
        found.append(Behaviour(f"stop:{ex.client_left_at_chunk}", stop_after=ex.client_left_at_chunk))
    if silence is not None and silence > 0.05:
        found.append(Behaviour(f"timeout:{silence:.2f}", timeout=round(silence, 2)))
    found += [Behaviour("slow:0.05", delay=0.05), Behaviour("stream-off", stream=False)]
    return found


async def _consume(client: Client, base_url: str, messages: list[dict[str, Any]], behaviour: Behaviour) -> Outcome:
    """The openai SDK (async) reads any way; the other reference clients read to the end."""
    if client is Client.OPENAI_ASYNC:
        return await openai_consumer(base_url, messages, behaviour)
    return await run_client(client, base_url, messages, behaviour.timeout or 600.0)


async def observe(ex: Exchange, source: OneExchange, runs: list[tuple[Client, Behaviour]],
                  speed: float = 1.0) -> list[Observation]:
    messages = chat_messages(ex.request_json()) or [{"role": "user", "content": "hi"}]
    observations = []
    async with ReplayServer(source, speed=speed, match="sequence") as server:
        for client, behaviour in runs:
            before = server.counts.requests
            outcome = await _consume(client, server.base_url, messages, behaviour)
            await asyncio.sleep(0.05)  # the server sees the connection go
            observations.append(Observation(behaviour.describe(), client.label, outcome, server.since(before)[0]))
    return observations


def silence_before_leaving(ex: Exchange, store: Store) -> float | None:
    if ex.client_left_at_chunk is None or ex.end_cause != EndCause.CLIENT_LEFT:
        return None
    chunks = store.chunks(ex.id)
    k = ex.client_left_at_chunk
    last = chunks[k - 1].t_ns if 0 < k <= len(chunks) else (ex.headers_ns or 0)
    return ((ex.client_left_ns or 0) - last) / 1e9


def main(store: Store, exchange_id: int, say: Callable[[str], None] = print) -> list[Observation]:
    ex = store.exchange(exchange_id)
    source = OneExchange(ex, store.chunks(exchange_id))
    silence = silence_before_leaving(ex, store)
    speak = clients_of(ex.dialect)
    # the openai SDK reads a chat stream every way a consumer does; other dialects' clients read to the end
    runs = [(Client.OPENAI_ASYNC, b) for b in behaviours_for(ex, silence)] if Client.OPENAI_ASYNC in speak else []
    runs += [(c, Behaviour("reads-to-end")) for c in speak if c is not Client.OPENAI_ASYNC]
    who = client_name(ex.client) or "the recorded client"
    if ex.end_cause == EndCause.CLIENT_LEFT:
        after = f", {silence:.3f} s after the chunk before" if silence else ""
        say(f"recorded: {who} left at chunk {ex.client_left_at_chunk} of {ex.chunk_count}, "
            f"{(ex.client_left_ns or 0) / 1e9:.3f} s{after}")
    else:
        say(f"recorded: {who}, {ex.end_cause}, {ex.chunk_count} chunks")
    observations = asyncio.run(observe(ex, source, runs))
    width = max(len(o.behaviour) for o in observations)
    named = max(18, *(len(o.client) for o in observations))
    say(f"{'behaviour'.ljust(width)}  {'client'.ljust(named)} {'observed':<28} matches  what the app got")
    for o in observations:
        got = o.outcome.error.split(":")[0] if o.outcome.error else f"{len(o.outcome.text)} chars, " \
            f"finish_reason {o.outcome.finish_reason}"
        verdict = "yes" if matches(ex, o.seen) else "no"
        say(f"{o.behaviour.ljust(width)}  {o.client.ljust(named)} {o.left():<28} {verdict:<8} {got}")
    matching = [o for o in observations if matches(ex, o.seen)]
    whole = [o for o in observations if o.behaviour == "reads to the end" and not o.outcome.error]
    if ex.end_cause == EndCause.CLIENT_LEFT and matching and whole:
        say(f"verdict: a consumer that {matching[0].behaviour} leaves where the recorded one did, while one that "
            f"reads to the end gets the whole answer: the consumer, not the stream, ended it")
    elif whole and ex.end_cause != EndCause.CLIENT_LEFT:
        say("verdict: reference consumers read this stream to its end; what they got is what the stream holds")
    elif not whole:
        say("verdict: even a consumer that reads to the end fails on this stream: the stream is at fault")
    return observations


def run_one(store: Store, exchange_id: int, client: Client | str, behaviour: Behaviour, fault: str | None,
            speed: float, say: Callable[[str], None] = print) -> Observation:
    """`streamreplay client`: one reference consumer (by `Client`, id or label) against a replay of the exchange."""
    ex = store.exchange(exchange_id)
    chosen = Client.parse(client, among=clients_of(ex.dialect))
    source = OneExchange(ex, store.chunks(exchange_id))

    async def go() -> Observation:
        messages = chat_messages(ex.request_json()) or [{"role": "user", "content": "hi"}]
        async with ReplayServer(source, speed=speed, match="sequence", faults=[fault] if fault else []) as server:
            outcome = await _consume(chosen, server.base_url, messages, behaviour)
            await asyncio.sleep(0.05)
            return Observation(behaviour.describe(), chosen.label, outcome, server.requests[-1])

    o = asyncio.run(go())
    say(f"client     {o.client}, {o.behaviour}")
    say(f"text       {o.outcome.text!r}")
    say(f"finish     {o.outcome.finish_reason}")
    say(f"error      {o.outcome.error}")
    say(f"replay     {o.seen.line()}")
    return o
