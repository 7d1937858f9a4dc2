"""The scripted upstream (`streamreplay.testing`) speaks each provider's documented wire byte for byte and
follows its Script's chunking, timing, endings and queue; the demo, the bundled tapes, `jsonvalues` and the
event loop choice keep their small promises."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import anthropic
import ollama
import openai
import pytest
from click.testing import CliRunner

from streamreplay import eventloop
from streamreplay.bundled import bundled_tape, bundled_tapes, copy_bundled
from streamreplay.cli import main as cli
from streamreplay.jsonvalues import as_int
from streamreplay.scripted.azure import async_filter_events
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import MESSAGES, chat, post

TOOL = {"name": "f", "arguments": '{"a":1}'}
AZURE_PATH = "/openai/deployments/dep/chat/completions"
AZURE_API_VERSION = "2024-10-21"


def _chat_chunk(choices: str, usage: str | None = None) -> str:
    """One event of OpenAI's chat.completion.chunk object, members in the API's order, compact JSON."""
    tail = "" if usage is None else f',"usage":{usage}'
    return ('data: {"id":"chatcmpl-0001","object":"chat.completion.chunk","created":1732000000,'
            f'"model":"gpt-4o-mini","system_fingerprint":"fp_0ba0d124f1","choices":{choices}{tail}}}\n\n')


def _choice(delta: str, finish: str = "null") -> str:
    return f'[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]'


ROLE = '{"role":"assistant","content":"","refusal":null}'
# the chat.completions streaming reference: the role chunk, a chunk per piece, the finish chunk, with
# include_usage a last chunk whose choices are empty, then the `data: [DONE]` line, every event a blank line after
CHAT_TEXT = (_chat_chunk(_choice(ROLE), "null") + _chat_chunk(_choice('{"content":"Hi "}'), "null")
             + _chat_chunk(_choice('{"content":"there"}'), "null") + _chat_chunk(_choice("{}", '"stop"'), "null")
             + _chat_chunk("[]", '{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}')
             + "data: [DONE]\n\n").encode()
CHAT_TOOL = (_chat_chunk(_choice(ROLE))
             + _chat_chunk(_choice('{"tool_calls":[{"index":0,"id":"call_0","type":"function",'
                                   '"function":{"name":"f","arguments":""}}]}'))
             + _chat_chunk(_choice('{"tool_calls":[{"index":0,"function":{"arguments":"{\\"a\\":1}"}}]}'))
             + _chat_chunk(_choice("{}", '"tool_calls"')) + "data: [DONE]\n\n").encode()


def _anthropic(name: str, data: str) -> str:
    """One event as Anthropic's streaming reference writes it: its name, then data whose type repeats it."""
    return f'event: {name}\ndata: {{"type":"{name}"{data}}}\n\n'


def _message_start(n: int) -> str:
    return _anthropic("message_start", f',"message":{{"id":"msg_{n:04d}","type":"message","role":"assistant",'
                      '"content":[],"model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,'
                      '"usage":{"input_tokens":9,"output_tokens":1}}')


PING = 'event: ping\ndata: {"type": "ping"}\n\n'  # the API writes this one with spaces
ANTHROPIC_TEXT = (_message_start(1)
                  + _anthropic("content_block_start", ',"index":0,"content_block":{"type":"text","text":""}') + PING
                  + _anthropic("content_block_delta", ',"index":0,"delta":{"type":"text_delta","text":"Hi "}')
                  + _anthropic("content_block_delta", ',"index":0,"delta":{"type":"text_delta","text":"there"}')
                  + _anthropic("content_block_stop", ',"index":0')
                  + _anthropic("message_delta", ',"delta":{"stop_reason":"max_tokens","stop_sequence":null},'
                               '"usage":{"output_tokens":2}')
                  + _anthropic("message_stop", "")).encode()
ANTHROPIC_TOOL = (_message_start(2)
                  + _anthropic("content_block_start", ',"index":0,"content_block":{"type":"tool_use","id":"toolu_00",'
                               '"name":"f","input":{}}') + PING
                  + _anthropic("content_block_delta", ',"index":0,"delta":{"type":"input_json_delta",'
                               '"partial_json":""}')
                  + _anthropic("content_block_delta", ',"index":0,"delta":{"type":"input_json_delta",'
                               '"partial_json":"{\\"a\\":1}"}')
                  + _anthropic("content_block_stop", ',"index":0')
                  + _anthropic("message_delta", ',"delta":{"stop_reason":"tool_use","stop_sequence":null},'
                               '"usage":{"output_tokens":0}')
                  + _anthropic("message_stop", "")).encode()

SAFE = '{"filtered":false,"severity":"safe"}'
VERDICTS = f'{{"hate":{SAFE},"self_harm":{SAFE},"sexual":{SAFE},"violence":{SAFE}}}'
# Azure's first event: no choices, empty metadata, the prompt's verdicts with prompt_index first
AZURE_PROMPT = ('data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":'
                f'[{{"prompt_index":0,"content_filter_results":{{"hate":{SAFE},'
                f'"jailbreak":{{"filtered":false,"detected":false}},"self_harm":{SAFE},"sexual":{SAFE},'
                f'"violence":{SAFE}}}}}]}}\n\n')


def _azure_chunk(choice: str) -> str:
    """A chunk as Azure re-serialises OpenAI's: every object's keys in alphabetical order."""
    return (f'data: {{"choices":[{choice}],"created":1732000000,"id":"chatcmpl-0001","model":"gpt-4o-mini-2024-07-18",'
            '"object":"chat.completion.chunk","system_fingerprint":"fp_0ba0d124f1"}\n\n')


def _azure_choice(delta: str, filters: str | None, finish: str = "null") -> str:
    judged = "" if filters is None else f'"content_filter_results":{filters},'
    return f'{{{judged}"delta":{delta},"finish_reason":{finish},"index":0,"logprobs":null}}'


AZURE_ROLE = '{"content":"","refusal":null,"role":"assistant"}'
AZURE_TEXT = (AZURE_PROMPT + _azure_chunk(_azure_choice(AZURE_ROLE, "{}"))
              + _azure_chunk(_azure_choice('{"content":"Hi "}', VERDICTS))
              + _azure_chunk(_azure_choice('{"content":"there"}', VERDICTS))
              + _azure_chunk(_azure_choice("{}", "{}", '"stop"')) + "data: [DONE]\n\n").encode()
# Microsoft's "Content filter streaming" page, Asynchronous Filter: the tokens without verdicts, then one
# annotation chunk (empty metadata, no delta) whose offsets cover the whole text
AZURE_ASYNC = (AZURE_PROMPT + _azure_chunk(_azure_choice(AZURE_ROLE, None))
               + _azure_chunk(_azure_choice('{"content":"Hi "}', None))
               + _azure_chunk(_azure_choice('{"content":"there"}', None))
               + _azure_chunk(_azure_choice("{}", None, '"stop"'))
               + 'data: {"choices":[{"content_filter_offsets":{"check_offset":8,"end_offset":8,"start_offset":0},'
               f'"content_filter_results":{VERDICTS},"finish_reason":null,"index":0}}],'
               '"created":0,"id":"","model":"","object":""}\n\n'
               + "data: [DONE]\n\n").encode()

# Ollama's /api/chat: one compact object a line in Go's struct order, created_at in RFC 3339 with its
# nanoseconds' trailing zeros cut, the done line with the counts; a zero eval_count is left out (omitempty)
OLLAMA_TEXT = (
    b'{"model":"smollm2","created_at":"2024-11-19T07:06:40.512346Z","message":{"role":"assistant","content":"Hi "},'
    b'"done":false}\n'
    b'{"model":"smollm2","created_at":"2024-11-19T07:06:40.533783613Z","message":{"role":"assistant",'
    b'"content":"there"},"done":false}\n'
    b'{"model":"smollm2","created_at":"2024-11-19T07:06:40.555221226Z","message":{"role":"assistant","content":""},'
    b'"done":true,"done_reason":"stop","total_duration":96779459,"load_duration":12875042,"prompt_eval_count":9,'
    b'"prompt_eval_duration":40318250,"eval_count":2,"eval_duration":42381750}\n')
OLLAMA_EMPTY = (
    b'{"model":"smollm2","created_at":"2024-11-19T07:06:40.512346Z","message":{"role":"assistant","content":""},'
    b'"done":true,"done_reason":"stop","total_duration":54397709,"load_duration":12875042,"prompt_eval_count":9,'
    b'"prompt_eval_duration":40318250}\n')


def _sse_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each event of a named-event stream."""
    events = []
    for block in body.split(b"\n\n"):
        if block:
            name, data = block.split(b"\n", 1)
            events.append((name.removeprefix(b"event: ").decode(), json.loads(data.removeprefix(b"data: "))))
    return events


async def test_a_chat_stream_is_openai_s_chunks_then_usage_then_done_and_the_sdk_reads_it() -> None:
    """A scripted chat stream is OpenAI's documented chunks byte for byte, and the openai SDK reads its text,
    finish_reason and usage."""
    async with ScriptedUpstream(Script(text="Hi there")) as up:
        status, body, error = await post(up.base_url, chat(stream_options={"include_usage": True}))
        assert (status, error) == (200, None) and body == CHAT_TEXT
        client = openai.AsyncOpenAI(base_url=up.base_url, api_key="k", max_retries=0)
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                      stream_options={"include_usage": True})
        chunks = [c async for c in stream]
        await client.close()
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 11


async def test_a_chat_tool_call_streams_its_arguments_and_finishes_with_tool_calls() -> None:
    """A scripted tool call streams as OpenAI's tool_calls deltas and its answer finishes with `tool_calls`,
    as the openai SDK reads it."""
    async with ScriptedUpstream(Script(text="", tool_calls=[TOOL])) as up:
        _, body, _ = await post(up.base_url, chat())
        assert body == CHAT_TOOL
        client = openai.AsyncOpenAI(base_url=up.base_url, api_key="k", max_retries=0)
        chunks = [c async for c in await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)]
        await client.close()
    calls = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
    assert calls[0].function and calls[0].function.name == "f"
    assert "".join(t.function.arguments or "" for t in calls if t.function) == TOOL["arguments"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_an_anthropic_stream_is_the_documented_event_sequence_and_the_sdk_reads_it() -> None:
    """A scripted Messages stream is Anthropic's documented events byte for byte (a text answer cut by the
    token limit, a tool call), and the anthropic SDK assembles each message."""
    scripts = [Script(text="Hi there", finish_reason="length"), Script(text="", tool_calls=[TOOL])]
    async with ScriptedUpstream() as up:
        up.queue(*scripts, *scripts)
        payload = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": MESSAGES, "stream": True}
        assert [(await post(up.origin, payload, path="/v1/messages"))[1] for _ in scripts] == [ANTHROPIC_TEXT,
                                                                                               ANTHROPIC_TOOL]
        client = anthropic.AsyncAnthropic(base_url=up.origin, api_key="k", max_retries=0)
        messages = []
        for _ in scripts:
            async with client.messages.stream(model="claude-sonnet-4-5", max_tokens=10, messages=MESSAGES) as s:
                messages.append(await s.get_final_message())
        await client.close()
    text, tool = messages
    assert (text.content[0].type, getattr(text.content[0], "text", None), text.stop_reason) == ("text", "Hi there",
                                                                                              "max_tokens")
    assert text.usage.output_tokens == 2
    assert (tool.content[0].type, getattr(tool.content[0], "input", None), tool.stop_reason) == ("tool_use", {"a": 1},
                                                                                               "tool_use")


async def test_an_azure_stream_leads_with_the_prompt_s_verdicts_and_judges_each_piece() -> None:
    """A scripted Azure stream is Azure's wire byte for byte (the prompt's filter results first, alphabetical
    keys, verdicts on each piece, `{}` elsewhere), and the openai SDK's Azure client reads its text."""
    async with ScriptedUpstream(Script(text="Hi there")) as up:
        _, body, _ = await post(up.origin, chat(), path=f"{AZURE_PATH}?api-version={AZURE_API_VERSION}")
        assert body == AZURE_TEXT
        client = openai.AsyncAzureOpenAI(azure_endpoint=up.origin, api_key="k", api_version=AZURE_API_VERSION,
                                         max_retries=0)
        chunks = [c async for c in await client.chat.completions.create(model="dep", messages=MESSAGES, stream=True)]
        await client.close()
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi there"


def test_an_azure_async_filter_stream_sends_the_tokens_then_one_annotation_over_the_whole_text() -> None:
    """Under Azure's Asynchronous Filter the tokens come without verdicts, then one annotation whose offsets
    cover the whole text, then [DONE]."""
    assert b"".join(async_filter_events(Script(text="Hi there"), "chatcmpl-0001")) == AZURE_ASYNC


async def test_an_error_status_is_each_provider_s_error_body() -> None:
    """A Script's status of 400 or more answers that status with the dialect's error body: Azure's code is the
    status as a string, OpenAI's a typed error, Ollama's a bare message."""
    async with ScriptedUpstream() as up:
        up.queue(Script(status=429), Script(status=400), Script(status=503))
        azure = await post(up.origin, chat(), path=f"{AZURE_PATH}?api-version={AZURE_API_VERSION}")
        openai_400 = await post(up.base_url, chat())
        ollama_503 = await post(up.origin, {"model": "smollm2", "messages": MESSAGES}, path="/api/chat")
    assert azure[0] == 429 and json.loads(azure[1]) == {"error": {"code": "429", "message": "scripted error 429"}}
    assert openai_400[0] == 400 and json.loads(openai_400[1])["error"]["type"] == "server_error"
    assert ollama_503[0] == 503 and json.loads(ollama_503[1]) == {"error": "scripted error 503"}


async def test_an_ollama_chat_streams_ndjson_lines_unless_asked_not_to_and_the_client_reads_them() -> None:
    """Ollama's /api/chat streams unless the request says `"stream": false`, as NDJSON lines byte for byte
    (the done line leaves out a zero eval_count), and ollama-python reads the text and the done line."""
    async with ScriptedUpstream() as up:
        up.queue(Script(text="Hi there"), Script(text=""), Script(text="Hi there"))
        payload = {"model": "smollm2", "messages": MESSAGES}  # no "stream": Ollama's default is to stream
        assert [(await post(up.origin, payload, path="/api/chat"))[1] for _ in range(2)] == [OLLAMA_TEXT,
                                                                                              OLLAMA_EMPTY]
        parts = [p async for p in await ollama.AsyncClient(host=up.origin).chat(model="smollm2", messages=MESSAGES,
                                                                                   stream=True)]
    assert "".join(p.message.content or "" for p in parts) == "Hi there"
    assert (parts[-1].done, parts[-1].done_reason, parts[-1].eval_count) == (True, "stop", 2)


async def test_a_responses_stream_ends_with_its_status_event_and_counts_its_usage() -> None:
    """A Responses stream cut by the token limit ends with `response.incomplete` (reason max_output_tokens), one
    with no finish reason with `response.completed` and a null status; total_tokens is input plus output."""
    async with ScriptedUpstream() as up:
        up.queue(Script(text="Hi there", finish_reason="length"), Script(text="Hi there", finish_reason=None))
        payload = {"model": "gpt-4.1-mini", "input": "Say hello", "stream": True}
        limited, unsaid = [_sse_events((await post(up.base_url, payload, path="/responses"))[1]) for _ in range(2)]
    name, last = limited[-1]
    response = last["response"]
    assert (name, response["status"], response["incomplete_details"]) == ("response.incomplete", "incomplete",
                                                                          {"reason": "max_output_tokens"})
    usage = response["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (9, 2, 11)
    assert (unsaid[-1][0], unsaid[-1][1]["response"]["status"]) == ("response.completed", None)


async def test_a_close_or_reset_by_default_stops_before_what_ends_the_answer() -> None:
    """An ending of close or reset without stop_after writes Anthropic's, Ollama's and Responses' every text piece
    and stops before what ends the answer (the last block's stop, the done line, the .done events); chat, without
    usage, also leaves out its last text piece before the finish chunk."""
    async with ScriptedUpstream() as up:
        up.queue(*(Script(text="Hi there", ending=ending) for ending in ("close", "close", "close", "reset")))
        anthropic_payload = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": MESSAGES, "stream": True}
        await post(up.origin, anthropic_payload, path="/v1/messages")
        await post(up.origin, {"model": "smollm2", "messages": MESSAGES}, path="/api/chat")
        await post(up.base_url, {"model": "gpt-4.1-mini", "input": "Say hello", "stream": True}, path="/responses")
        await post(up.base_url, chat())
        anthropic_sent, ollama_sent, responses_sent, chat_sent = (s.body for s in up.sent)
    assert anthropic_sent == ANTHROPIC_TEXT[:ANTHROPIC_TEXT.index(b"event: content_block_stop")]
    assert ollama_sent == OLLAMA_TEXT[:OLLAMA_TEXT.index(b'{"model":"smollm2","created_at":"2024-11-19T07:06:40.555')]
    names = [name for name, _ in _sse_events(responses_sent)]
    assert names[-1] == "response.output_text.delta" and names.count("response.output_text.delta") == 2
    assert b'"finish_reason":"stop"' not in chat_sent and b"[DONE]" not in chat_sent
    assert b'"content":"Hi "' in chat_sent and b'"content":"there"' not in chat_sent


async def test_queued_scripts_answer_requests_in_order_then_the_default() -> None:
    """`queue()` scripts answer the next requests first in, first out; then the default script answers."""
    async with ScriptedUpstream(Script(text="default")) as up:
        up.queue(Script(text="first"), Script(text="second"))
        answers = [json.loads((await post(up.base_url, chat(stream=False)))[1]) for _ in range(3)]
    assert [a["choices"][0]["message"]["content"] for a in answers] == ["first", "second", "default"]


def test_writes_wait_a_gap_between_them_and_a_pause_before_the_event_it_numbers() -> None:
    """Each network write waits `gap` after the previous one (none before the first) plus the pause of the
    event it starts with; `split_events` halves each write, half a gap apart; `events_per_write` groups."""
    events = [b"e0", b"e1", b"e2", b"e3", b"e4"]
    plan = ScriptedUpstream._writes
    assert plan(events, Script(gap=0.1, pauses={2: 0.5})) == [(0.0, b"e0"), (0.1, b"e1"), (0.6, b"e2"),
                                                              (0.1, b"e3"), (0.1, b"e4")]
    assert plan(events, Script(gap=0.1, pauses={2: 0.5}, events_per_write=2)) == [(0.0, b"e0e1"), (0.6, b"e2e3"),
                                                                                 (0.1, b"e4")]
    assert plan(events[:2], Script(gap=0.2, split_events=True)) == [(0.0, b"e"), (0.1, b"0"), (0.2, b"e"),
                                                                    (0.1, b"1")]
    assert plan(events, Script(gap=0.1, events_per_write=0, pauses={0: 0.3})) == [(0.3, b"e0e1e2e3e4")]


async def test_split_events_writes_each_event_in_two_halves() -> None:
    """With `split_events` the scripted upstream writes each event in two writes, its first half then the rest."""
    async with ScriptedUpstream(Script(text="Hi there", split_events=True)) as up:
        _, body, _ = await post(up.base_url, chat())
        (sent,) = up.sent
    events = [e + b"\n\n" for e in body.split(b"\n\n")[:-1]]
    assert sent.writes == [half for e in events for half in (e[:len(e) // 2], e[len(e) // 2:])]


def test_the_demo_without_its_tape_in_the_folder_exits_1_naming_what_it_looked_for(tmp_path: Path) -> None:
    """`streamreplay demo --dir DIR` with no agent-happy-path.jsonl in DIR fails with exit status 1, saying which
    file it looked for where."""
    result = CliRunner().invoke(cli, ["demo", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: no agent-happy-path.jsonl in {tmp_path}"


def test_an_unknown_bundled_tape_is_refused_listing_the_tape_names() -> None:
    """`bundled_tape(name)` finds a tape by its name; an unknown one is refused listing every tape name."""
    names = [p.stem for p in bundled_tapes()]
    assert "agent-happy-path" in names and bundled_tape("agent-happy-path").name == "agent-happy-path.jsonl"
    with pytest.raises(FileNotFoundError) as caught:
        bundled_tape("nope")
    assert str(caught.value) == f"no bundled tape 'nope'; bundled: {', '.join(names)}"


def test_copying_the_bundled_tapes_leaves_a_file_already_there_as_it_is(tmp_path: Path) -> None:
    """`copy_bundled(dir)` copies every bundled tape but one already in `dir`, which it leaves as it is."""
    (tmp_path / "agent-happy-path.jsonl").write_text("mine\n")
    written = copy_bundled(tmp_path)
    assert (tmp_path / "agent-happy-path.jsonl").read_text() == "mine\n"
    assert sorted(p.name for p in written) == sorted(p.name for p in bundled_tapes() if p.stem != "agent-happy-path")


def test_a_bool_is_not_read_as_an_int() -> None:
    """`as_int` keeps an int and reads a bool (an int to Python, not to JSON) as absent."""
    assert (as_int(3), as_int(True), as_int(False), as_int("3")) == (3, None, None, None)


def test_precise_timers_run_on_asyncio_s_own_loop_and_the_rest_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """With uvloop installed, `eventloop.run` runs on uvloop unless precise timers are asked for (replay), which
    run on asyncio's own loop."""
    monkeypatch.delenv("STREAMREPLAY_UVLOOP", raising=False)

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert eventloop.run(loop_module()).startswith("uvloop")
    assert eventloop.run(loop_module(), precise_timers=True).startswith("asyncio")
