"""The stream guard (streamreplay.guard), driven by the real client libraries over real replays: every
item passes unchanged, a stream that is whole passes (tool calls, a usage-only last chunk, n > 1), and
each way a stream can end early and cleanly raises TruncatedStream where the app reads."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from streamreplay import guard
from streamreplay.bundled import bundled_tape
from streamreplay.guard import GuardedChatCompletionClient, TruncatedStream, guard_agent
from streamreplay.matrix import run_matrix
from streamreplay.outcome import QuietIO
from streamreplay.replay import ReplayServer
from streamreplay.replay.source import CassetteSource
from streamreplay.testing import Script, ScriptedUpstream

pytest_plugins = ["pytester"]

MESSAGES = [{"role": "user", "content": "What are the colours of the rainbow?"}]
MODEL_INFO = {"vision": False, "function_calling": True, "json_output": False, "family": "unknown",
              "structured_output": False}


@pytest.fixture(scope="module")
def chat_replay():
    with ReplayServer(CassetteSource(bundled_tape("openai-happy-path")), speed=0, match="sequence") as server:
        yield server


def url(server: ReplayServer, spec: str | None) -> str:
    return server.fault_url(spec) if spec else server.base_url


def read_sync(base_url: str, guarded: bool) -> tuple[list[dict[str, Any]], BaseException | None]:
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=5)
    items: list[dict[str, Any]] = []
    try:
        stream = client.chat.completions.create(model="smollm2", messages=MESSAGES, stream=True)
        for chunk in guard.guard(stream) if guarded else stream:
            items.append(chunk.model_dump())
    except Exception as exc:
        return items, exc
    finally:
        client.close()
    return items, None


async def read_async(base_url: str) -> tuple[str, BaseException | None]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=5)
    text = ""
    try:
        stream = await client.chat.completions.create(model="smollm2", messages=MESSAGES, stream=True)
        async for chunk in guard.guard(stream):
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    except Exception as exc:
        return text, exc
    finally:
        await client.close()
    return text, None


def test_a_whole_stream_passes_item_for_item_unchanged(chat_replay: ReplayServer):
    plain, error = read_sync(chat_replay.base_url, guarded=False)
    guarded, guarded_error = read_sync(chat_replay.base_url, guarded=True)
    assert error is None and guarded_error is None
    assert guarded == plain and len(plain) == 17


@pytest.mark.parametrize(("spec", "missing", "chunks"), [
    ("drop-done", "no [DONE] after the last chunk", 17),
    ("drop-finish", "no finish_reason for choice 0", 17),
    ("cut:chunk=5", "no finish_reason for choice 0, no [DONE]", 5),
])
def test_each_clean_early_end_raises_where_the_app_reads(chat_replay: ReplayServer, spec: str, missing: str,
                                                         chunks: int):
    items, plain_error = read_sync(url(chat_replay, spec), guarded=False)
    assert plain_error is None  # what the app gets without the guard: no error at all
    got, error = read_sync(url(chat_replay, spec), guarded=True)
    assert isinstance(error, TruncatedStream)
    assert got == items  # every item still reached the app first
    assert (error.dialect, error.missing, error.chunks) == ("chat", missing, chunks)
    text = "".join(i["choices"][0]["delta"]["content"] or "" for i in items if i["choices"])
    assert error.chars == len(text) and error.elapsed_s >= 0
    assert str(error).startswith(f"chat stream truncated: {missing} ({chunks} chunks, {len(text)} characters")


def test_the_async_sdk_stream_is_guarded_the_same(chat_replay: ReplayServer):
    whole, error = asyncio.run(read_async(chat_replay.base_url))
    assert error is None and whole.startswith("The rainbow")
    cut, error = asyncio.run(read_async(url(chat_replay, "cut:chunk=5")))
    assert isinstance(error, TruncatedStream) and whole.startswith(cut) and len(cut) < len(whole)


@pytest.mark.parametrize("spec", ["cut:chunk=5", "drop-done", "drop-finish", None])
def test_a_guard_used_as_a_context_manager_gives_itself_sync_and_async(chat_replay: ReplayServer, spec: str | None):
    """`with guard(stream) as s:` is how the SDK's streams are read: `s` must be the guard, not the SDK's
    stream it wraps, or the cutoff passes unseen."""
    expected = 5 if spec == "cut:chunk=5" else 17
    sync = openai.OpenAI(base_url=url(chat_replay, spec), api_key="unused", max_retries=0, timeout=5)
    guarded = guard.guard(sync.chat.completions.create(model="smollm2", messages=MESSAGES, stream=True))
    items: list[Any] = []
    with guarded as stream:
        assert stream is guarded
        with pytest.raises(TruncatedStream) if spec else contextlib.nullcontext():
            items.extend(stream)
    assert len(items) == expected
    sync.close()

    async def read() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=url(chat_replay, spec), api_key="unused", max_retries=0, timeout=5)
        guarded = guard.guard(await client.chat.completions.create(model="smollm2", messages=MESSAGES, stream=True))
        items: list[Any] = []
        async with guarded as stream:
            assert stream is guarded
            with pytest.raises(TruncatedStream) if spec else contextlib.nullcontext():
                async for item in stream:
                    items.append(item)
        await client.close()
        return items

    assert len(asyncio.run(read())) == expected


def test_errors_that_already_raise_pass_through_untouched(chat_replay: ReplayServer):
    _, error = read_sync(url(chat_replay, "close:chunk=5"), guarded=True)
    assert isinstance(error, httpx.RemoteProtocolError)


def sse(*objects: dict[str, Any], done: bool = True) -> list[bytes]:
    """OpenAI's wire format, one event per write."""
    events = [f"data: {json.dumps(o, separators=(',', ':'))}\n\n".encode() for o in objects]
    return events + ([b"data: [DONE]\n\n"] if done else [])


def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices,
            **({"usage": usage} if usage else {})}


def delta(index: int, content: str | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"index": index, "delta": {"content": content, **extra}, "finish_reason": finish}


WHOLE = {
    "usage-only last chunk": sse(chunk([delta(0, "Hi")]), chunk([delta(0, None, "stop")]),
                                 chunk([], {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})),
    "n=2": sse(chunk([delta(0, "A"), delta(1, "B")]), chunk([delta(1, None, "stop")]),
               chunk([delta(0, None, "length")])),
    "tool call": sse(chunk([delta(0, None, tool_calls=[{"index": 0, "id": "c1", "type": "function",
                                                         "function": {"name": "f", "arguments": "{}"}}])]),
                     chunk([delta(0, None, "tool_calls")])),
}


@pytest.mark.parametrize("case", list(WHOLE))
def test_no_false_alarm_on_whole_streams_of_every_shape(case: str):
    with ScriptedUpstream(Script(raw=WHOLE[case])) as upstream:
        items, error = read_sync(upstream.base_url, guarded=True)
    assert error is None and items


def test_n_2_with_one_choice_unfinished_is_truncated():
    events = sse(chunk([delta(0, "A"), delta(1, "B")]), chunk([delta(0, None, "stop")]))
    with ScriptedUpstream(Script(raw=events)) as upstream:
        _, error = read_sync(upstream.base_url, guarded=True)
    assert isinstance(error, TruncatedStream) and error.missing == "no finish_reason for choice 1"


@pytest.mark.parametrize("as_objects", [False, True], ids=["dicts", "ChatCompletionChunk"])
def test_a_plain_iterator_of_chat_chunks_is_judged_by_finish_reason_alone(as_objects: bool):
    """An app's own iterator of chat chunks never carries [DONE] (the SDK keeps it): whole with a finish_reason
    on every choice, truncated without one."""
    from openai.types.chat import ChatCompletionChunk

    def items(*chunks: dict[str, Any]) -> list[Any]:
        return [ChatCompletionChunk.model_validate(c) for c in chunks] if as_objects else list(chunks)

    whole = items(chunk([delta(0, "Hi")]), chunk([delta(0, None, "stop")]))
    assert list(guard.guard(iter(whole))) == whole
    with pytest.raises(TruncatedStream) as cut:
        list(guard.guard(iter(whole[:1])))
    assert cut.value.missing == "no finish_reason for choice 0"


@pytest.mark.parametrize("dialect", [None, "chat", "ollama", "anthropic", "responses"])
async def test_a_stream_of_no_items_at_all_is_truncated_sync_and_async(dialect: str | None):
    """Nothing arrived, so nothing said the stream was whole (an iterator cut at chunk 0, say)."""
    with pytest.raises(TruncatedStream) as cut:
        list(guard.guard(iter([]), dialect=dialect))
    assert (cut.value.chunks, cut.value.chars) == (0, 0) and cut.value.missing

    async def nothing() -> AsyncIterator[Any]:
        return
        yield

    with pytest.raises(TruncatedStream) as cut_async:
        async for _ in guard.guard(nothing(), dialect=dialect):
            pass
    assert (cut_async.value.dialect, cut_async.value.missing, cut_async.value.chunks) == \
        (cut.value.dialect, cut.value.missing, 0)


def test_expect_done_false_accepts_a_server_that_omits_it(chat_replay: ReplayServer):
    client = openai.OpenAI(base_url=url(chat_replay, "drop-done"), api_key="unused", max_retries=0)
    stream = client.chat.completions.create(model="smollm2", messages=MESSAGES, stream=True)
    assert len(list(guard.guard(stream, expect_done=False))) == 17


@pytest.mark.parametrize(("last", "missing"), [
    ({"type": "response.completed"}, None),
    ({"type": "response.incomplete", "response": {"incomplete_details": {"reason": "max_output_tokens"}}}, None),
    ({"type": "response.output_text.done"}, "no response.completed"),
])
def test_a_responses_stream_cut_by_its_token_limit_is_whole(last: dict[str, Any], missing: str | None):
    """response.incomplete is the API's own end of a whole answer cut by max_output_tokens, not a cutoff."""
    from streamreplay.guard.check import check_for

    check = check_for("responses")
    for event in ({"type": "response.output_text.delta", "delta": "Hi"}, last):
        check.item(event)
    assert check.missing() == missing and check.ended == (missing is None)


@pytest.mark.parametrize(("tape", "spec"), [("responses-happy-path", "cut:chunk=5"),
                                             ("anthropic-happy-path", "drop-done"),
                                             ("anthropic-happy-path", "cut:chunk=5"),
                                             ("ollama-happy-path", "drop-done")])
def test_other_dialects_sdk_streams_are_guarded(tape: str, spec: str):
    import anthropic
    import ollama

    with ReplayServer(CassetteSource(bundled_tape(tape)), speed=0, match="sequence") as server:
        def read(base_url: str) -> BaseException | None:
            try:
                if tape.startswith("responses"):
                    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
                    stream = client.responses.create(model="smollm2", input="hi", stream=True)
                elif tape.startswith("ollama"):  # a plain generator: the dialect is told by its items
                    stream = ollama.Client(host=base_url.removesuffix("/v1")).chat(
                        model="smollm2", messages=[{"role": "user", "content": "hi"}], stream=True)
                else:
                    client = anthropic.Anthropic(base_url=base_url.removesuffix("/v1"), api_key="unused",
                                                 max_retries=0)
                    stream = client.messages.create(model="smollm2", max_tokens=64, stream=True,
                                                    messages=[{"role": "user", "content": "hi"}])
                list(guard.guard(stream))
            except Exception as exc:
                return exc
            return None

        assert read(server.base_url) is None
        error = read(url(server, spec))
    assert isinstance(error, TruncatedStream) and error.dialect == tape.split("-")[0]


def autogen_answer(base_url: str, expect_done: bool = True) -> Any:
    """An autogen-agentchat AssistantAgent on the guarded async client: its answer, or what it raised."""
    from autogen_agentchat.agents import AssistantAgent
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    async def run() -> Any:
        inner = OpenAIChatCompletionClient(model="smollm2", base_url=base_url, api_key="unused", max_retries=0,
                                           model_info=MODEL_INFO)
        agent = AssistantAgent("assistant", model_client=GuardedChatCompletionClient(inner, expect_done),
                               model_client_stream=True)
        try:
            return (await agent.run(task="What are the colours of the rainbow?")).messages[-1].content
        except Exception as exc:
            return exc
        finally:
            await inner.close()

    return asyncio.run(run())


def ag2_answer(base_url: str, expect_done: bool = True) -> Any:
    """An AG2 AssistantAgent, guarded (its sync client): its answer, or what it raised."""
    from autogen import AssistantAgent
    from autogen.io import IOStream

    entry = {"model": "smollm2", "base_url": base_url, "api_key": "unused", "stream": True, "max_retries": 0}
    agent = guard_agent(AssistantAgent("assistant", llm_config={"config_list": [entry], "cache_seed": None}),
                        expect_done)
    try:
        with IOStream.set_default(QuietIO()):
            return agent.generate_reply(messages=MESSAGES)
    except Exception as exc:
        return exc


def test_an_autogen_assistant_agent_raises_on_a_cutoff_with_the_guarded_client(chat_replay: ReplayServer):
    assert str(autogen_answer(chat_replay.base_url)).startswith("The rainbow")
    error = autogen_answer(url(chat_replay, "cut:chunk=5"))
    assert isinstance(error, TruncatedStream), error


def test_an_ag2_assistant_agent_raises_on_a_cutoff_once_guarded(chat_replay: ReplayServer):
    assert "rainbow" in str(ag2_answer(chat_replay.base_url))
    assert isinstance(ag2_answer(url(chat_replay, "drop-done")), TruncatedStream)


@pytest.mark.parametrize("answer", [autogen_answer, ag2_answer], ids=["autogen-async", "ag2-sync"])
def test_expect_done_false_reaches_the_guarded_agents_clients(chat_replay: ReplayServer, answer):
    """`expect_done=False` (a server that never sends [DONE]) is passed to the transport an agent's client reads
    through, async or sync: a stream without [DONE] passes, one without its finish_reason still raises."""
    assert "rainbow" in str(answer(url(chat_replay, "drop-done"), expect_done=False))
    error = answer(url(chat_replay, "drop-finish"), expect_done=False)
    assert isinstance(error, TruncatedStream) and error.missing == "no finish_reason for choice 0", error


@pytest.mark.parametrize("dialect", ["chat", "responses", "anthropic", "azure", "ollama"])
def test_matrix_guard_turns_every_silent_cutoff_into_truncated_stream(dialect: str):
    from streamreplay.clients import clients_of
    from streamreplay.matrix import DEFAULT_TAPES

    tape = bundled_tape(DEFAULT_TAPES[dialect])
    clients = [c.label for c in clients_of(dialect)]
    faults = ["", "drop-done", "cut", "error-event"]  # drop-finish: test_each_clean_early_end_raises_...
    rows, plain = asyncio.run(run_matrix(tape, clients, faults=faults))
    _, guarded = asyncio.run(run_matrix(tape, clients, faults=faults, guarded=True))
    missing_terminal = next(r.label for r in rows if r.spec == "drop-done")
    for key, verdict in plain.items():
        if key[0] == missing_terminal and verdict.startswith("completes"):
            # no [DONE], message_stop, response.completed, done: true: the text is all there, the stream is not
            assert guarded[key] == "raises streamreplay.TruncatedStream", key
        elif verdict.startswith("partial text, no error"):
            assert guarded[key] == "raises streamreplay.TruncatedStream", key
        elif verdict == "completes" and key[0] == rows[0].label:  # the recording as it is: no false alarm
            assert guarded[key] == "completes", key
        elif not verdict.startswith("completes"):
            assert guarded[key] == verdict or guarded[key] == "raises streamreplay.TruncatedStream", key
    assert any(v.startswith("partial text") for v in plain.values())


APPS = """
import httpx, openai, pytest
from streamreplay.guard import guard

ASK = dict(model="smollm2", max_tokens=60, temperature=0, stream=True,
           messages=[{"role": "user", "content": "Name three colors of the rainbow."}])


def naive_app(base_url):
    with openai.OpenAI(base_url=base_url, api_key="test", max_retries=0) as client:
        try:
            stream = client.chat.completions.create(**ASK)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        except (openai.APIConnectionError, httpx.HTTPError):
            return "sorry, try again"  # swallows the errors it knows: a cutoff that raises is taken too


async def guarded_app(base_url):
    async with openai.AsyncOpenAI(base_url=base_url, api_key="test", max_retries=0) as client:
        stream = await client.chat.completions.create(**ASK)
        return "".join([c.choices[0].delta.content or "" async for c in guard(stream) if c.choices])


@pytest.mark.streamreplay("openai-happy-path")
def test_naive(streamreplay):
    streamreplay.assert_notices_cutoffs(naive_app)


@pytest.mark.streamreplay("openai-happy-path")
async def test_guarded(streamreplay):
    streamreplay.assert_notices_cutoffs(guarded_app)
"""


def test_the_cutoffs_an_app_is_put_through_in_each_dialect():
    from streamreplay.dialects import dialect_named
    from streamreplay.guard.cutoffs import cutoffs

    ends = ["cut:chunk=5", "close:chunk=5", "reset:chunk=5"]
    # the stop field is dropped only where a whole stream must carry one
    for name in ("chat", "azure", "anthropic"):
        assert cutoffs(dialect_named(name), 10) == ["drop-done", "drop-finish", *ends], name
    for name in ("responses", "ollama"):
        assert cutoffs(dialect_named(name), 10) == ["drop-done", *ends], name
    assert cutoffs(dialect_named("chat"), 1) == ["drop-done", "drop-finish", "cut:chunk=1", "close:chunk=1",
                                                "reset:chunk=1"]


def test_the_plugin_fails_an_app_that_takes_a_cutoff_as_whole_and_passes_a_guarded_one(pytester: pytest.Pytester):
    (pytester.path / "recordings").mkdir()
    (pytester.path / "recordings" / "openai-happy-path.jsonl").write_bytes(
        bundled_tape("openai-happy-path").read_bytes())
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_apps=APPS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*the app took 5 of 5 cutoffs as a whole answer:*",
        "*drop-done: returned 'The rainbow*without an error*",
        "*drop-finish: returned 'The rainbow*",
        "*cut:chunk=*: returned 'The rainbow*",
        "*close:chunk=*: returned 'sorry, try again' without an error*",
        "*reset:chunk=*: returned 'sorry, try again' without an error*",
    ])


@pytest.mark.parametrize("spec", [None, "drop-done", "cut:chunk=5"])
def test_the_http_client_guard_judges_sync_and_async_sdk_streams(chat_replay: ReplayServer, spec: str | None):
    def sync() -> BaseException | None:
        with openai.OpenAI(base_url=url(chat_replay, spec), api_key="unused", max_retries=0,
                           http_client=guard.guarded_client()) as client:
            try:
                list(client.chat.completions.create(model="smollm2", messages=MESSAGES, stream=True))
            except Exception as exc:
                return exc
        return None

    async def async_() -> BaseException | None:
        async with openai.AsyncOpenAI(base_url=url(chat_replay, spec), api_key="unused", max_retries=0,
                                      http_client=guard.guarded_async_client()) as client:
            try:
                stream = await client.chat.completions.create(model="smollm2", messages=MESSAGES, stream=True)
                async for _ in stream:
                    pass
            except Exception as exc:
                return exc
        return None

    for error in (sync(), asyncio.run(async_())):
        assert (error is None) if spec is None else isinstance(error, TruncatedStream), (spec, error)
