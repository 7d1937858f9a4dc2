"""Each dialect alone, on bytes in its provider's exact wire format: which requests it claims, what ends a
stream whole, what each cutoff fault removes, which stop reasons are a token limit. No proxy and no socket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import streamreplay
from streamreplay.dialects import dialect_for, dialect_named
from streamreplay.dialects.anthropic import AnthropicAssembler, message_events
from streamreplay.dialects.base import SEAM, Dialect, LineParser, drop_sse_events, openai_error_json, sse_blocks
from streamreplay.dialects.ollama import OllamaAssembler, go_json
from streamreplay.dialects.responses import (
    chunk_pieces,
    dumps,
    event_type,
    obfuscation,
    response_events,
    sse_event,
    word_pieces,
)
from streamreplay.scripted.azure import async_filter_events
from streamreplay.sse import Event, SSEParser
from streamreplay.testing import Script
from tests.helpers import chat_chunk, sse_data

CHAT = dialect_named("chat")


CHAT_BODY = chat_chunk({"role": "assistant", "content": "Hi"}) + chat_chunk({}, "length") + b"data: [DONE]\n\n"


# -- chat: which requests


@pytest.mark.parametrize(("path", "claimed"), [
    ("/v1/chat/completions", True),
    ("/v1/chat/completions/", True),  # a trailing slash is the same route
    ("/v1/completions", True),  # the legacy completions
    ("/chat/completions//", True),
    ("/v1/embeddings", False),
    ("/v1/chat/completions/x", False),
    ("/v1/completionsx", False),
    ("/v1/completionsX/", False),
])
def test_chat_claims_the_completions_paths_with_or_without_a_trailing_slash(path: str, claimed: bool):
    assert CHAT.recognises(path) is claimed


def test_chat_is_the_fallback_for_a_path_no_dialect_claims():
    assert dialect_for("/v1/chat/completions?api-version=1").name == "chat"
    assert dialect_for("/whatever").name == "chat"
    assert dialect_for(None).name == "chat"


# -- chat: what ends a stream whole


def test_chat_terminal_is_the_done_line_not_a_done_inside_text():
    assert CHAT.find_terminal(b"data: [DONE]\n\n")
    assert CHAT.find_terminal(b"data:[DONE]\n")
    assert not CHAT.find_terminal(chat_chunk({"content": "[DONE]"}))
    assert not CHAT.find_terminal(chat_chunk({"content": "x"}, "stop"))


def test_chat_names_its_terminal_stop_field_and_token_limit():
    assert (CHAT.name, CHAT.label, CHAT.terminal, CHAT.stop_field) == (
        "chat", "OpenAI chat.completions", "[DONE]", "finish_reason")
    assert CHAT.length_reasons == frozenset({"length"})


# -- chat: event kinds


@pytest.mark.parametrize(("data", "kind"), [
    ("[DONE]", "[DONE]"),
    ("[DONE] ", "[DONE]"),
    ("not json", "data"),
    ("[1, 2]", "data"),
    ('{"error": {"message": "boom"}}', "error"),
    ('{"error": null, "choices": []}', "empty"),
    ('{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}', "role"),
    ('{"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]}', "role+content"),
    ('{"choices": [{"index": 0, "delta": {"content": ""}}]}', "empty"),
    ('{"choices": [{"index": 0, "text": "legacy", "finish_reason": null}]}', "content"),
    ('{"choices": [{"index": 0, "delta": {"reasoning_content": "hm"}}]}', "reasoning"),
    ('{"choices": [{"index": 0, "delta": {"reasoning": "hm"}}]}', "reasoning"),
    ('{"choices": [{"index": 0, "delta": {"refusal": "no"}}]}', "refusal"),
    ('{"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}}]}', "tool_calls"),
    ('{"choices": [{"index": 0, "delta": {"function_call": {"name": "f"}}}]}', "tool_calls"),
    ('{"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}', "finish"),
    ('{"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": "length"}], '
     '"usage": {"total_tokens": 3}}', "content+finish+usage"),
    ('{"choices": [], "usage": {"total_tokens": 3}}', "usage"),
    ('{"choices": [], "usage": {}}', "empty"),
    ('{"choices": null, "usage": {"total_tokens": 3}}', "usage"),  # some servers' usage-only last chunk
    ('{"choices": [], "prompt_filter_results": [{"prompt_index": 0}]}', "prompt_filter"),
    # n=2: each part named once, in the order the first choice gave them
    ('{"choices": [{"index": 0, "delta": {"content": "a"}}, {"index": 1, "delta": {"role": "assistant", '
     '"content": "b"}}]}', "content+role"),
    ('{"choices": ["junk", {"index": 0, "delta": "junk", "text": "t"}]}', "content"),
    ('{"choices": {"0": {"delta": {"content": "a"}}}}', "empty"),
])
def test_chat_event_kind_names_what_a_chunk_carries(data: str, kind: str):
    assert CHAT.event_kind(Event(data)) == kind


# -- chat: faults


@pytest.mark.parametrize(("body", "without"), [
    (b"data: {}\n\ndata: [DONE]\n\n", b"data: {}\n\n"),
    (b"data: [DONE]\n\n", b""),
    (b"data: {}\r\n\r\ndata:[DONE]\r\n\r\n", b"data: {}\r\n\r\n"),
    (b"data: {}\n\ndata: [DONE] \t\n", b"data: {}\n\n"),
    (b"data: {}\r\rdata: [DONE]\r\r", b"data: {}\r\r"),
    (b'data: {"x":"data: [DONE]"}\n\n', b'data: {"x":"data: [DONE]"}\n\n'),  # not at a line start
])
def test_drop_done_removes_the_done_event_and_its_blank_line_only(body: bytes, without: bytes):
    assert CHAT.drop_terminal(body) == without


def test_drop_finish_nulls_every_finish_reason_and_keeps_every_other_byte():
    body = (b'data: {"choices":[{"index":0,"delta":{},"finish_reason" : "length"},'
            b'{"index":1,"delta":{},"finish_reason":"stop"}]}\n\ndata: {"choices":[{"finish_reason":null}]}\n\n')
    assert CHAT.drop_stop(body) == (
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason" : null},'
        b'{"index":1,"delta":{},"finish_reason":null}]}\n\ndata: {"choices":[{"finish_reason":null}]}\n\n')


def test_chat_error_event_is_openai_s_error_object_in_one_data_event():
    assert CHAT.error_event("boom") == (
        b'data: {"error": {"message": "boom", "type": "server_error", "param": null, "code": null}}\n\n')


def test_chat_error_body_carries_the_status_as_a_string_code():
    assert json.loads(CHAT.error_body("slow down", 429)) == {
        "error": {"message": "slow down", "type": "server_error", "param": None, "code": "429"}}


# -- chat: stream <-> whole answer


def test_a_chat_stream_stands_for_the_chat_completion_it_assembles():
    assert CHAT.whole_body(CHAT_BODY) == {
        "id": "c1", "object": "chat.completion", "created": 1, "model": "m", "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi", "refusal": None},
                     "logprobs": None, "finish_reason": "length"}], "usage": None}


def test_a_stream_that_is_not_chat_stands_for_no_chat_completion():
    assert CHAT.whole_body(b'event: response.created\ndata: {"type":"response.created","response":'
                           b'{"id":"r","object":"response","status":"in_progress","output":[]}}\n\n') is None


def test_a_chat_completion_streams_as_chunks_then_done():
    whole = CHAT.whole_body(CHAT_BODY)
    assert whole is not None
    events = CHAT.stream_events(whole)
    assert events is not None and events[-1] == b"data: [DONE]\n\n"
    assert CHAT.whole_body(b"".join(events)) == whole
    assert CHAT.stream_events({**whole, "object": "response"}) is None
    assert CHAT.stream_events({"choices": []}) is None


# -- anthropic

ANTHROPIC = dialect_named("anthropic")
TOOL_MESSAGE: dict[str, Any] = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
    "content": [{"type": "text", "text": "Paris is the capital."},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"city": "Paris"}}],
    "stop_reason": "tool_use", "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 18}}
# TOOL_MESSAGE as the Messages API streams it, event for event
TOOL_STREAM = [
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message","role":'
    b'"assistant","content":[],"model":"claude","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":9,'
    b'"output_tokens":1}}}\n\n',
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text",'
    b'"text":""}}\n\n',
    b'event: ping\ndata: {"type": "ping"}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
    b'"text":"Paris is the cap"}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
    b'"text":"ital."}}\n\n',
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
    b'event: content_block_start\ndata: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use",'
    b'"id":"toolu_1","name":"lookup","input":{}}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
    b'"partial_json":""}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
    b'"partial_json":"{\\"city\\":\\"Paris\\"}"}}\n\n',
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":1}\n\n',
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},'
    b'"usage":{"output_tokens":18}}\n\n',
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]
TOOL_BODY = b"".join(TOOL_STREAM)


def anthropic_events(*events: bytes) -> Any:
    """An AnthropicAssembler fed these SSE events."""
    assembler = AnthropicAssembler()
    for ev in SSEParser().feed(b"".join(events)):
        assembler.feed_event(ev)
    return assembler


@pytest.mark.parametrize(("path", "claimed"), [
    ("/v1/messages", True), ("/v1/messages/", True), ("/messages", True),
    ("/v1/messages/count_tokens", False), ("/v1/messagesX/", False), ("/v1/chat/completions", False),
])
def test_anthropic_claims_the_messages_path(path: str, claimed: bool):
    assert ANTHROPIC.recognises(path) is claimed
    assert (dialect_for(path).name == "anthropic") is claimed


def test_anthropic_names_message_stop_stop_reason_and_max_tokens():
    assert (ANTHROPIC.name, ANTHROPIC.label, ANTHROPIC.terminal, ANTHROPIC.stop_field) == (
        "anthropic", "Anthropic Messages", "message_stop", "stop_reason")
    assert ANTHROPIC.length_reasons == frozenset({"max_tokens"})


@pytest.mark.parametrize(("data", "found"), [
    (b'event: message_stop\ndata: {"type":"message_stop"}\n\n', True),
    (b'event:message_stop\r\ndata: {}\r\n\r\n', True),
    (b'event: message_stop \n', True),
    (b'\nevent: message_stop\n', True),
    (b'\revent: message_stop\r', True),
    (b'data: {"type" : "message_stop"}\n\n', True),  # the data's type alone, with no event line
    (b'data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"message_stop"}}\n\n', False),
    (b'data: {"type":"content_block_delta","delta":{"text":"event: message_stop"}}\n\n', False),
    (b'event: message_stop', False),  # its line not yet ended: the next read holds the rest
    (b'event: message_delta\n', False),
    (b'xevent: message_stop\n', False),
])
def test_anthropic_terminal_is_a_message_stop_event_never_the_words_in_text(data: bytes, found: bool):
    assert ANTHROPIC.find_terminal(data) is found


@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (402, "billing_error"),
    (403, "permission_error"), (404, "not_found_error"), (413, "request_too_large"), (429, "rate_limit_error"),
    (500, "api_error"), (504, "timeout_error"), (529, "overloaded_error"),
    (418, "invalid_request_error"), (499, "invalid_request_error"), (503, "api_error"), (399, "api_error"),
    (500, "api_error"),
])
def test_anthropic_error_body_names_the_error_type_its_reference_gives_the_status(status: int, kind: str):
    assert ANTHROPIC.error_body("no", status) == (
        b'{"type":"error","error":{"type":"' + kind.encode() + b'","message":"no"}}')


def test_anthropic_error_event_is_an_overloaded_error_event():
    assert ANTHROPIC.error_event("busy \u00e9") == (
        'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"busy \u00e9"}}\n\n'
    ).encode()


@pytest.mark.parametrize(("event", "kind"), [
    (Event('{"type":"ping"}', event="content_block_delta"), "content_block_delta"),  # the event line wins
    (Event('{"type":"message_stop"}'), "message_stop"),
    (Event('{"type":7}'), "data"),
    (Event('["message_stop"]'), "data"),
    (Event("not json"), "data"),
])
def test_anthropic_event_kind_is_the_event_line_then_the_data_type(event: Event, kind: str):
    assert ANTHROPIC.event_kind(event) == kind


def test_drop_done_removes_only_the_message_stop_event():
    assert ANTHROPIC.drop_terminal(TOOL_BODY) == b"".join(TOOL_STREAM[:-1])
    # named by its data alone, it still goes; an event line naming another event keeps it
    assert ANTHROPIC.drop_terminal(b'data: {"type":"message_stop"}\n\n') == b""
    kept = b'event: ping\ndata: {"type":"message_stop"}\n\n'
    assert ANTHROPIC.drop_terminal(kept) == kept


def test_drop_finish_nulls_the_stop_reason_and_keeps_message_stop():
    body = ANTHROPIC.drop_stop(TOOL_BODY)
    assert body == TOOL_BODY.replace(b'"stop_reason":"tool_use"', b'"stop_reason":null')
    assert ANTHROPIC.drop_stop(b'{"stop_reason" : "max_tokens"}') == b'{"stop_reason" : null}'
    assert ANTHROPIC.find_terminal(body)


def test_an_anthropic_stream_assembles_text_tool_calls_stop_reason_and_usage():
    result = ANTHROPIC.assemble(TOOL_BODY, "text/event-stream; charset=utf-8")
    assert (result.kind, result.id, result.model, result.role, result.text) == (
        "message", "msg_1", "claude", "assistant", "Paris is the capital.")
    assert (result.finish_reason, result.done, result.error, result.events, result.problems) == (
        "tool_use", True, None, 12, [])
    assert result.usage == {"input_tokens": 9, "output_tokens": 18}
    assert result.tool_calls == [{"index": 0, "id": "toolu_1", "type": "function",
                                  "function": {"name": "lookup", "arguments": '{"city":"Paris"}'}}]


def test_an_anthropic_stream_without_message_stop_is_not_done():
    result = ANTHROPIC.assemble_stream(b"".join(TOOL_STREAM[:-1]))
    assert (result.done, result.finish_reason) == (False, "tool_use")
    assert ANTHROPIC.assemble_stream(ANTHROPIC.drop_stop(TOOL_BODY)).finish_reason is None


def test_message_stop_ends_an_anthropic_stream_with_or_without_a_stop_reason_and_read_alone():
    """`message_stop` is the terminal event by itself: a stream whose stop reason was dropped is still done
    (only its reason is missing), and the event read alone, as show, the timeline and bisect read them, is done."""
    dropped = ANTHROPIC.assemble_stream(ANTHROPIC.drop_stop(TOOL_BODY))
    assert (dropped.done, dropped.finish_reason, dropped.text) == (True, None, "Paris is the capital.")
    alone = ANTHROPIC.assemble_stream(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert (alone.done, alone.finish_reason, alone.problems) == (True, None, [])


def test_a_streamed_message_stands_for_the_whole_message_and_back():
    assert ANTHROPIC.whole_body(TOOL_BODY) == TOOL_MESSAGE
    assert ANTHROPIC.stream_events(TOOL_MESSAGE) == TOOL_STREAM
    assert ANTHROPIC.stream_events({**TOOL_MESSAGE, "type": "error"}) is None


def test_a_message_without_content_streams_a_ping_and_its_stop():
    assert ANTHROPIC.stream_events({"id": "m", "type": "message", "role": "assistant", "model": "x", "content": [],
                                    "stop_reason": "max_tokens", "stop_sequence": None}) == [
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message","role":'
        b'"assistant","content":[],"model":"x","stop_reason":null,"stop_sequence":null,"usage":{}}}\n\n',
        b'event: ping\ndata: {"type": "ping"}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"max_tokens",'
        b'"stop_sequence":null},"usage":{}}\n\n',
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n']


def test_text_streams_in_pieces_of_sixteen_characters():
    events = message_events({"id": "m", "type": "message", "role": "assistant", "model": "x",
                             "content": [{"type": "text", "text": "a" * 33}], "stop_reason": "end_turn"})
    deltas = [json.loads(e.split(b"data: ", 1)[1])["delta"]["text"] for e in events if b"text_delta" in e]
    assert deltas == ["a" * 16, "a" * 16, "a"]


def test_a_whole_message_body_assembles_as_a_stream_does():
    result = ANTHROPIC.assemble(json.dumps(TOOL_MESSAGE).encode(), "application/json")
    assert (result.kind, result.id, result.text, result.finish_reason, result.done, result.problems) == (
        "message", "msg_1", "Paris is the capital.", "tool_use", True, [])
    assert result.tool_calls[0]["function"] == {"name": "lookup", "arguments": '{"city":"Paris"}'}


@pytest.mark.parametrize(("body", "error", "problems"), [
    (b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}',
     {"type": "overloaded_error", "message": "busy"}, []),
    (b'{"error":"busy"}', {"message": "busy"}, []),
    (b'{"type":"error","error":null}', {"message": "None"}, []),
    (b'[1]', None, ["body: expected a JSON object, got list"]),
    (b'{"type":"completion","b":1,"a":2}', None, ["body: unrecognised JSON object with keys ['a', 'b', 'type']"]),
])
def test_a_whole_anthropic_body_that_is_no_message(body: bytes, error: dict | None, problems: list[str]):
    result = ANTHROPIC.assemble_json(body)
    assert (result.error, result.problems, result.done, result.kind) == (error, problems, False, "unknown")


def test_anthropic_events_that_say_nothing_are_noted_or_skipped():
    a = anthropic_events(b"data: {oops\n\n", b"data: [1]\n\n", b'data: {"b":1,"a":2}\n\n',
                         b'event: ping\ndata: {"type": "ping"}\n\n', b'event: future_event\ndata: {}\n\n',
                         b'event: message_start\ndata: {"message": "x"}\n\n',
                         b'event: content_block_start\ndata: {"content_block": {"type": "text"}}\n\n',
                         b'event: content_block_start\ndata: {"index": 0, "content_block": "x"}\n\n',
                         b'event: content_block_delta\ndata: {"delta": {"type": "text_delta", "text": "x"}}\n\n',
                         b'event: content_block_delta\ndata: {"index": 0, "delta": "x"}\n\n')
    assert a.problems[0].startswith("event 0: invalid JSON: ")
    assert a.problems[1:] == [
        "event 1: expected a JSON object, got list",
        "event 2: no event name and no \"type\" (keys ['a', 'b'])",
        "event 5: message_start without a message object",
        "event 6: content_block_start without an index or a content_block",
        "event 7: content_block_start without an index or a content_block",
        "event 8: content_block_delta without an index or a delta",
        "event 9: content_block_delta without an index or a delta",
    ]
    assert (a.events, a.text, a.blocks) == (10, "", {})


def test_ping_and_unknown_events_do_not_make_a_message():
    a = anthropic_events(b'event: ping\ndata: {"type": "ping"}\n\n', b'event: future_event\ndata: {}\n\n')
    assert (a.kind, a.problems, a.events) == ("unknown", [], 2)
    assert a.message() is None


@pytest.mark.parametrize(("event", "error"), [
    (b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"busy"}}\n\n',
     {"type": "overloaded_error", "message": "busy"}),
    (b'data: {"type":"error","error":"busy"}\n\n', {"message": "busy"}),
])
def test_an_anthropic_error_event_is_the_stream_s_error(event: bytes, error: dict):
    a = anthropic_events(TOOL_STREAM[0], event)
    assert a.result().error == error
    assert a.message() is None


def test_odd_values_in_an_anthropic_event_are_read_as_absent_not_as_errors():
    a = anthropic_events(b'event: message_delta\ndata: {"delta": {}, "usage": {"1": 1}}\n\n',
                         b'event: content_block_start\ndata: {"index": 0, "content_block": {"type": "tool_use", '
                         b'"id": "t", "name": {"x": 1}}}\n\n')
    assert (a.problems, a.blocks[0]["name"], a.usage) == ([], "", {"1": 1})


def test_an_internal_error_is_a_problem_not_a_crash():
    # no well-formed input is known to reach the safety net, so the assembler's own state is broken here
    b = AnthropicAssembler()
    b.blocks = None  # type: ignore[assignment]
    b.feed_event(Event('{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}'))
    b.feed_json({"type": "message", "content": [{"type": "text", "text": "x"}]})
    assert b.problems == [
        "event 0: internal error: AttributeError: 'NoneType' object has no attribute 'setdefault'",
        "body: internal error: AttributeError: 'NoneType' object has no attribute 'setdefault'"]


def test_message_delta_usage_is_cumulative_and_a_null_keeps_the_start_value():
    a = anthropic_events(
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","role":"assistant","model":"x",'
        b'"usage":{"input_tokens":9,"output_tokens":1,"cache_read_input_tokens":4}}}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"max_tokens",'
        b'"stop_sequence":"END"},"usage":{"output_tokens":40,"cache_read_input_tokens":null}}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","delta":{},"usage":"none"}\n\n')
    assert a.usage == {"input_tokens": 9, "output_tokens": 40, "cache_read_input_tokens": 4}
    assert (a.stop_reason, a.stop_sequence, a.done) == ("max_tokens", "END", False)


def test_message_start_keeps_what_an_earlier_start_said_when_a_later_one_leaves_it_out():
    a = anthropic_events(
        b'data: {"type":"message_start","message":{"id":"m1","model":"x","role":"assistant"}}\n\n',
        b'data: {"type":"message_start","message":{"id":null,"model":null,"role":null}}\n\n')
    assert (a.id, a.model, a.role, a.kind) == ("m1", "x", "assistant", "message")


def test_a_text_block_starting_with_text_and_a_delta_to_a_tool_block_are_kept_apart():
    a = anthropic_events(
        b'data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":"B"}}\n\n',
        b'data: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f",'
        b'"input":{"q":1}}}\n\n',
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lost"}}\n\n',
        b'data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"C"}}\n\n',
        b'data: {"type":"content_block_delta","index":1,"delta":{"type":"thinking_delta","thinking":"x"}}\n\n')
    assert (a.text, a.problems) == ("BC", [])
    # a tool block that streamed no piece keeps the input of its start
    assert a.tool_calls() == [{"index": 0, "id": "t", "type": "function",
                               "function": {"name": "f", "arguments": '{"q":1}'}}]
    assert a.message()["content"] == [{"type": "tool_use", "id": "t", "name": "f", "input": {"q": 1}},
                                      {"type": "text", "text": "BC"}]


def test_an_input_json_delta_read_alone_is_a_tool_call_and_its_empty_opening_piece_is_nothing():
    a = anthropic_events(
        b'data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}\n\n')
    assert a.blocks == {}
    a = anthropic_events(
        b'data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\\"a\\""}}'
        b'\n\n',
        b'data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":":1}"}}\n\n')
    assert a.tool_calls() == [{"index": 0, "id": None, "type": "function",
                               "function": {"name": "", "arguments": '{"a":1}'}}]


def test_tool_calls_are_numbered_in_block_order_and_a_tool_without_input_has_no_arguments():
    a = anthropic_events(
        b'data: {"type":"content_block_start","index":3,"content_block":{"type":"tool_use","id":"b","name":"g",'
        b'"input":{}}}\n\n',
        b'data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"a","name":"f"}}\n\n',
        b'data: {"type":"content_block_start","index":2,"content_block":{"type":"text","text":""}}\n\n')
    assert [(c["index"], c["id"], c["function"]["arguments"]) for c in a.tool_calls()] == [(0, "a", ""), (1, "b", "")]
    # as a whole Message, a tool that takes nothing has the empty object for its input
    assert [b.get("input") for b in a.message()["content"]] == [{}, None, {}]


@pytest.mark.parametrize("pieces", [[b'{\\"a\\":'], [b"[1]"]])
def test_a_stream_whose_tool_input_is_no_json_object_stands_for_no_message(pieces: list[bytes]):
    events = [TOOL_STREAM[0],
              b'data: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f",'
              b'"input":{}}}\n\n']
    events += [b'data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"'
               + p + b'"}}\n\n' for p in pieces]
    assert ANTHROPIC.whole_body(b"".join(events)) is None


def test_a_message_with_no_usage_or_role_gets_the_api_s_defaults():
    a = anthropic_events(b'data: {"type":"message_start","message":{"id":"m","model":"x"}}\n\n')
    a.role = None
    assert a.message() == {"id": "m", "type": "message", "role": "assistant", "content": [], "model": "x",
                           "stop_reason": None, "stop_sequence": None, "usage": {}}


def test_an_assembler_that_saw_no_message_start_has_no_id_model_or_usage_and_speaks_as_the_assistant():
    result = anthropic_events(b'event: ping\ndata: {"type": "ping"}\n\n').result()
    assert (result.id, result.model, result.usage, result.role, result.finish_reason) == (
        None, None, None, "assistant", None)


def test_the_role_is_the_message_s_own():
    a = anthropic_events(b'data: {"type":"message_start","message":{"id":"m","role":"user"}}\n\n')
    assert a.result().role == "user"


def test_a_problem_names_at_most_eight_keys():
    keys = {k: 1 for k in "abcdefghij"}
    a = anthropic_events(b"data: " + json.dumps(keys).encode() + b"\n\n")
    assert a.problems == ["event 0: no event name and no \"type\" (keys ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'])"]
    result = ANTHROPIC.assemble_json(json.dumps({**keys, "type": "x"}).encode())
    assert result.problems == ["body: unrecognised JSON object with keys ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h']"]


def test_text_without_its_text_field_is_empty_not_invented():
    a = anthropic_events(
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta"}}\n\n',
        b'data: {"type":"content_block_start","index":1,"content_block":{"type":"text"}}\n\n')
    assert a.text == ""
    result = ANTHROPIC.assemble_json(b'{"type":"message","content":[{"type":"text"},{"type":"text","text":"x"}]}')
    assert result.text == "x"


def test_a_stop_sequence_survives_the_round_trip_between_a_message_and_its_stream():
    message = {**TOOL_MESSAGE, "content": [{"type": "text"}], "stop_reason": "stop_sequence", "stop_sequence": "END"}
    events = ANTHROPIC.stream_events(message)
    assert events is not None and not any(b"text_delta" in e for e in events)
    assert events[-2] == (b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"stop_sequence",'
                          b'"stop_sequence":"END"},"usage":{"output_tokens":18}}\n\n')
    whole = AnthropicAssembler()
    whole.feed_json(message)
    assert whole.message()["stop_sequence"] == "END"
    assert ANTHROPIC.whole_body(b"".join(events))["stop_sequence"] == "END"


# -- responses

RESPONSES = dialect_named("responses")
TAPES = Path(streamreplay.__file__).parent / "tapes"


def tape_chunks(name: str) -> list[bytes]:
    """The response chunks of a bundled tape, as the upstream sent them."""
    lines = (json.loads(line) for line in (TAPES / f"{name}.jsonl").read_text().splitlines())
    return [line["text"].encode() for line in lines if "i" in line and "text" in line]


RESPONSES_TAPE = tape_chunks("responses-happy-path")
RESPONSES_BODY = b"".join(RESPONSES_TAPE)
CUT_RESPONSE: dict[str, Any] = {
    "id": "r1", "object": "response", "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
    "output": [{"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "lookup",
                "arguments": '{"city":"Paris"}', "status": "completed"},
               {"id": "msg_1", "type": "message", "role": "assistant", "status": "incomplete",
                "content": [{"type": "refusal", "refusal": "No way"},
                            {"type": "output_text", "text": "Hi there", "annotations": []}]},
               {"id": "rs_1", "type": "reasoning", "summary": []}, "junk"],
    "usage": None}
START = {"id": "r1", "object": "response", "status": "in_progress", "incomplete_details": None, "output": [],
         "usage": None, "error": None}
FC = {"item_id": "fc_1", "output_index": 0}
REFUSAL = {"item_id": "msg_1", "output_index": 1, "content_index": 0}
TEXT = {"item_id": "msg_1", "output_index": 1, "content_index": 1}
# CUT_RESPONSE as the documented stream: (event, its data without "type"), sequence numbers from 0
CUT_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("response.created", {"response": START}),
    ("response.in_progress", {"response": START}),
    ("response.output_item.added", {"output_index": 0, "item": {**CUT_RESPONSE["output"][0], "arguments": "",
                                                                "status": "in_progress"}}),
    ("response.function_call_arguments.delta", {**FC, "delta": '{"city":'}),
    ("response.function_call_arguments.delta", {**FC, "delta": '"Paris"}'}),
    ("response.function_call_arguments.done", {**FC, "name": "lookup", "arguments": '{"city":"Paris"}'}),
    ("response.output_item.done", {"output_index": 0, "item": CUT_RESPONSE["output"][0]}),
    ("response.output_item.added", {"output_index": 1, "item": {**CUT_RESPONSE["output"][1], "status": "in_progress",
                                                                "content": []}}),
    ("response.content_part.added", {**REFUSAL, "part": {"type": "refusal", "refusal": ""}}),
    ("response.refusal.delta", {**REFUSAL, "delta": "No "}),
    ("response.refusal.delta", {**REFUSAL, "delta": "way"}),
    ("response.refusal.done", {**REFUSAL, "refusal": "No way"}),
    ("response.content_part.done", {**REFUSAL, "part": {"type": "refusal", "refusal": "No way"}}),
    ("response.content_part.added", {**TEXT, "part": {"type": "output_text", "text": "", "annotations": []}}),
    ("response.output_text.delta", {**TEXT, "delta": "Hi ", "logprobs": []}),
    ("response.output_text.delta", {**TEXT, "delta": "there", "logprobs": []}),
    ("response.output_text.done", {**TEXT, "text": "Hi there", "logprobs": []}),
    ("response.content_part.done", {**TEXT, "part": {"type": "output_text", "text": "Hi there", "annotations": []}}),
    ("response.output_item.done", {"output_index": 1, "item": CUT_RESPONSE["output"][1]}),
    ("response.output_item.added", {"output_index": 2, "item": CUT_RESPONSE["output"][2]}),
    ("response.output_item.done", {"output_index": 2, "item": CUT_RESPONSE["output"][2]}),
    ("response.incomplete", {"response": CUT_RESPONSE}),
]


def read_events(events: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    """Each event's `event:` name and data, checking the data's type repeats the name and the sequence numbers
    count from 0."""
    out = []
    for n, event in enumerate(events):
        head, data, blank = event.split(b"\n", 2)
        obj = json.loads(data.removeprefix(b"data: "))
        name = head.removeprefix(b"event: ").decode()
        assert (obj.pop("type"), obj.pop("sequence_number"), blank) == (name, n, b"\n")
        out.append((name, obj))
    return out


@pytest.mark.parametrize(("path", "claimed"), [
    ("/v1/responses", True), ("/v1/responses/", True), ("/responses", True),
    ("/v1/responses/resp_1", False), ("/v1/responsesX/", False), ("/v1/chat/completions", False),
])
def test_responses_claims_the_responses_path(path: str, claimed: bool):
    assert RESPONSES.recognises(path) is claimed
    assert (dialect_for(path).name == "responses") is claimed


def test_responses_names_its_end_status_and_two_token_limit_words():
    assert (RESPONSES.name, RESPONSES.label, RESPONSES.terminal, RESPONSES.stop_field) == (
        "responses", "OpenAI Responses API", "response.completed", "status")
    assert RESPONSES.length_reasons == frozenset({"length", "max_output_tokens"})


@pytest.mark.parametrize(("data", "found"), [
    (b'\nevent: response.completed\n', True),
    (b'\revent:response.incomplete \r', True),
    (b'\nevent: response.failed\t\n', True),
    (b'\nevent: response.completed', False),  # its line not ended yet
    (b'\ndata: {"type":"response.completed","response":{}}\n', True),  # type first, as OpenAI writes it
    (b'\ndata:{ "type" : "response.failed"', True),
    (b'data: {"response":{},"type":"response.incomplete"}\n', True),  # type last, as pydantic servers write it
    (b'data: {"response":{},"type":"response.incomplete"} \r\n', True),
    (b'data: {"response":{},"type":"response.incomplete"}', False),  # the line may go on
    (b'\ndata: {"type":"response.output_text.delta","delta":"response.completed"}\n', False),
    (b'\ndata: {"type":"response.output_text.delta","delta":"\\"type\\":\\"response.completed\\"}"}\n', False),
    (b'\ndata: {"x":{"type":"response.completed","y":1}}\n', False),  # a nested object's type
    (b'\nevent: response.created\n', False),
    (b'\n: event: response.completed\n', False),  # a comment
    (b'\nevent: response.in_progress\n', False),
])
def test_responses_terminal_is_a_completed_incomplete_or_failed_event_only(data: bytes, found: bool):
    assert RESPONSES.find_terminal(data) is found


def test_responses_finds_the_terminal_event_of_a_recorded_stream_in_its_last_read():
    assert RESPONSES.find_terminal(RESPONSES_TAPE[-1])
    assert not any(RESPONSES.find_terminal(c) for c in RESPONSES_TAPE[:-1])


@pytest.mark.parametrize(("event", "kind"), [
    (Event('{"type":"response.completed"}', event="message"), "response.completed"),  # the data's type wins
    (Event('{"type":1}', event="response.failed"), "response.failed"),
    (Event("[1]", event="response.failed"), "response.failed"),
    (Event("nope", event="error"), "error"),
    (Event("nope"), None),
])
def test_responses_event_type_is_the_data_s_type_then_the_event_name(event: Event, kind: str | None):
    assert event_type(event) == kind


def test_a_whole_response_streams_as_the_documented_events():
    events = response_events(CUT_RESPONSE)
    assert events is not None and read_events(events) == CUT_EVENTS
    assert RESPONSES.stream_events(CUT_RESPONSE) == events


def test_a_recorded_stream_stands_for_its_final_response_and_streams_back_byte_for_byte():
    whole = RESPONSES.whole_body(RESPONSES_BODY)
    assert whole is not None and whole["id"] == "resp_0001" and whole["status"] == "completed"
    assert response_events(whole, obfuscate=True) == RESPONSES_TAPE
    last = RESPONSES.stream_events(whole)[-1]
    assert last.startswith(b'event: response.completed\ndata: {"type":"response.completed","sequence_number":25,')


@pytest.mark.parametrize(("status", "ends_with", "terminal"), [
    ("completed", None, "response.completed"), ("failed", None, "response.failed"),
    ("incomplete", None, "response.incomplete"), ("in_progress", "response.failed", "response.failed"),
    ("completed", "response.incomplete", "response.incomplete"),
])
def test_a_response_stream_ends_with_the_event_its_status_names(status: str, ends_with: str | None, terminal: str):
    events = response_events({"id": "r", "object": "response", "status": status, "output": []}, ends_with=ends_with)
    assert [name for name, _ in read_events(events)] == ["response.created", "response.in_progress", terminal]
    cut = response_events({"id": "r", "object": "response", "status": status, "output": []}, terminal=False,
                          ends_with=ends_with)
    assert [name for name, _ in read_events(cut)] == ["response.created", "response.in_progress"]


@pytest.mark.parametrize("whole", [{"status": "in_progress"}, {"status": None}, {}, {"status": ["completed"]}])
def test_a_response_with_no_status_a_stream_ends_with_streams_as_nothing(whole: dict[str, Any]):
    assert response_events({"object": "response", **whole}) is None


def test_only_a_response_object_becomes_a_stream():
    assert RESPONSES.stream_events({**CUT_RESPONSE, "object": "chat.completion"}) is None


def test_a_message_part_with_text_that_is_no_string_streams_no_delta():
    events = response_events({"id": "r", "object": "response", "status": "completed", "output": [
        {"id": "m", "type": "message", "content": [{"type": "output_text", "text": 7, "logprobs": [{"t": 1}]},
                                                   {"type": "output_image", "text": "x"}, "junk"]},
        {"id": "f", "type": "function_call", "name": "g", "arguments": {"a": 1}}]})
    names = [(name, obj.get("text"), obj.get("logprobs"), obj.get("arguments")) for name, obj in read_events(events)]
    assert names[2:-1] == [
        ("response.output_item.added", None, None, None),
        ("response.content_part.added", None, None, None),
        ("response.output_text.done", "", [{"t": 1}], None),
        ("response.content_part.done", None, None, None),
        ("response.content_part.added", None, None, None),  # a part that is neither text nor refusal: no deltas
        ("response.content_part.done", None, None, None),
        ("response.output_item.done", None, None, None),
        ("response.output_item.added", None, None, None),
        ("response.function_call_arguments.done", None, None, ""),
        ("response.output_item.done", None, None, None)]


def test_obfuscation_pads_each_delta_event_to_sixteen_characters_the_same_every_run():
    assert obfuscation("The ", 4) == "sFS5ivIV8lyL"  # as in the recorded tape
    assert obfuscation("capital ", 5) == "zMZcpCP2"
    assert obfuscation("x" * 15, 0) == "0"
    assert obfuscation("x" * 40, 1) == "7"  # never empty


def test_text_streams_a_word_a_delta_and_arguments_eight_characters_a_delta():
    assert word_pieces("The  capital of") == ["The  ", "capital ", "of"]
    assert word_pieces(" lead") == [" ", "lead"]
    assert word_pieces("") == []
    assert chunk_pieces("abcdefghijklmnopq") == ["abcdefgh", "ijklmnop", "q"]
    assert chunk_pieces("abc", 2) == ["ab", "c"]


def test_responses_json_is_compact_utf8_with_escapes_only_for_a_lone_surrogate():
    assert dumps({"a": "é", "b": [1, 2]}) == '{"a":"é","b":[1,2]}'
    assert dumps({"a": "\ud800é", "b": [1, 2]}) == '{"a":"\\ud800\\u00e9","b":[1,2]}'
    assert sse_event({"type": "x", "v": "é"}) == 'event: x\ndata: {"type":"x","v":"é"}\n\n'.encode()


def test_responses_error_event_is_the_documented_error_event():
    assert RESPONSES.error_event("boom") == (
        b'event: error\ndata: {"type":"error","code":"server_error","message":"boom","param":null,'
        b'"sequence_number":0}\n\n')


def test_drop_done_removes_the_terminal_event_only():
    assert RESPONSES.drop_terminal(RESPONSES_BODY) == b"".join(RESPONSES_TAPE[:-1])
    for terminal in ("response.failed", "response.incomplete"):
        event = f'event: {terminal}\ndata: {{"type":"{terminal}","response":{{}}}}\n\n'.encode()
        assert RESPONSES.drop_terminal(RESPONSES_TAPE[0] + event) == RESPONSES_TAPE[0]


def test_a_stream_without_its_terminal_event_stands_for_no_whole_response():
    assert RESPONSES.whole_body(b"".join(RESPONSES_TAPE[:-1])) is None
    assert RESPONSES.whole_body(b'event: response.completed\ndata: [1]\n\n') is None
    assert RESPONSES.whole_body(b'event: response.completed\ndata: {oops\n\n') is None
    assert RESPONSES.whole_body(b'event: response.completed\ndata: {"type":"response.completed",'
                                b'"response":"x"}\n\n') is None


def test_the_last_terminal_event_s_response_is_the_whole_answer():
    events = (b'event: response.completed\ndata: {torn\n\n'
              b'data: {"type":"response.failed","response":{"id":"a"}}\n\n'
              b'data: {"type":"response.completed","response":{"id":"b"}}\n\n'
              b'data: {"type":"response.completed","response":null}\n\n'
              b'data: {"type":"response.output_text.delta","response":{"id":"c"}}\n\n')
    assert RESPONSES.whole_body(events) == {"id": "b"}


@pytest.mark.parametrize("terminal", ["response.incomplete", "response.failed"])
def test_a_stream_that_ended_incomplete_or_failed_stands_for_that_whole_response(terminal: str):
    """Asked with `stream: false`, a stream that ended `response.incomplete` or `response.failed` is answered
    with that final response object, its status saying how it ended, as the API answers it whole."""
    status = terminal.split(".")[1]
    final = {"id": "resp_1", "object": "response", "status": status,
             "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None}
    ended = b"".join(RESPONSES_TAPE[:-1]) + sse_data({"type": terminal, "response": final})
    assert RESPONSES.whole_body(ended) == final


def test_drop_finish_nulls_the_final_status_and_reason_and_keeps_the_event():
    body = RESPONSES.drop_stop(RESPONSES_BODY)
    # only the response's own status: the items in its output keep theirs
    last = RESPONSES_TAPE[-1].replace(b'"status":"completed","background"', b'"status":null,"background"')
    assert last != RESPONSES_TAPE[-1] and last.count(b'"status":"completed"') == 1
    assert body == b"".join(RESPONSES_TAPE[:-1]) + last
    assert RESPONSES.find_terminal(body)
    assert RESPONSES.whole_body(body)["status"] is None


@pytest.mark.parametrize(("event", "after"), [
    (b'event: response.incomplete\ndata: {"type":"response.incomplete","response":{"status":"incomplete",'
     b'"incomplete_details":{"reason":"max_output_tokens"},"output":[{"status":"incomplete"}]}}\n\n',
     b'event: response.incomplete\ndata: {"type":"response.incomplete","response":{"status":null,'
     b'"incomplete_details":null,"output":[{"status":"incomplete"}]}}\n\n'),
    # spaces and a pydantic-ordered object: every other byte as it was
    (b'data: { "response" : { "id" : "r" , "status" : "failed" } , "type" : "response.failed" }\r\n\r\n',
     b'data: { "response" : { "id" : "r" , "status" : null } , "type" : "response.failed" }\r\n\r\n'),
    (b'data: {"type":"response.completed","response":{}}\n\n',
     b'data: {"type":"response.completed","response":{}}\n\n'),
    (b'data: {"type":"response.completed"}\n\n', b'data: {"type":"response.completed"}\n\n'),
    (b'data: {"type":"response.completed","response":{"status":"completed"}\n\n',  # torn: left as sent
     b'data: {"type":"response.completed","response":{"status":"completed"}\n\n'),
    (b'data: {"type":"response.completed","response":{"status":"completed"}}\xff\n\n',
     b'data: {"type":"response.completed","response":{"status":"completed"}}\xff\n\n'),
    # JSON with a key that is no string: named terminal by its event line, but left as sent
    (b'event: response.completed\ndata: {7:1,"response":{"status":"completed"}}\n\n',
     b'event: response.completed\ndata: {7:1,"response":{"status":"completed"}}\n\n'),
    (b'event: response.completed\ndata: {"response":{"status":"completed"}}\n\n',
     b'event: response.completed\ndata: {"response":{"status":null}}\n\n'),
    (b'data: {"type":"response.completed","response":["status"]}\n\n',
     b'data: {"type":"response.completed","response":["status"]}\n\n'),
    (b'data: {"type":"response.output_text.done","response":{"status":"completed"}}\n\n',
     b'data: {"type":"response.output_text.done","response":{"status":"completed"}}\n\n'),
])
def test_drop_finish_rewrites_only_a_terminal_event_s_response(event: bytes, after: bytes):
    assert RESPONSES.drop_stop(event) == after


def test_drop_finish_leaves_a_block_of_two_events_alone():
    two = (b'data: {"type":"response.completed","response":{"status":"completed"}}\n'
           b'event: x\ndata: {"type":"response.completed","response":{"status":"completed"}}\n\n')
    assert RESPONSES.drop_stop(two) == two


# -- ollama

OLLAMA = dialect_named("ollama")
OLLAMA_TAPE = tape_chunks("ollama-happy-path")
OLLAMA_BODY = b"".join(OLLAMA_TAPE)
OLLAMA_TEXT = "The capital of France is Paris. It lies on the Seine and is known for the Eiffel Tower."


def ollama_lines(*objs: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(o, separators=(",", ":")).encode() + b"\n" for o in objs)


def ollama_assembled(*lines: bytes) -> Any:
    assembler = OllamaAssembler()
    for line in lines:
        assembler.feed_event(Event(line.decode()))
    return assembler.result()


@pytest.mark.parametrize(("path", "claimed"), [
    ("/api/chat", True), ("/api/chat/", True), ("/api/generate", True), ("/ollama/api/generate/", True),
    ("/api/tags", False), ("/api/chatX/", False), ("/v1/chat/completions", False), ("/api/chat/x", False),
])
def test_ollama_claims_its_chat_and_generate_paths(path: str, claimed: bool):
    assert OLLAMA.recognises(path) is claimed
    assert (dialect_for(path).name == "ollama") is claimed


def test_ollama_names_its_done_line_done_reason_and_ndjson():
    assert (OLLAMA.name, OLLAMA.label, OLLAMA.terminal, OLLAMA.stop_field, OLLAMA.stream_content_type) == (
        "ollama", "Ollama /api/chat", "done: true", "done_reason", "application/x-ndjson")
    assert OLLAMA.length_reasons == frozenset({"length"})
    assert OLLAMA.is_stream("application/x-ndjson; charset=utf-8") and not OLLAMA.is_stream("text/event-stream")


@pytest.mark.parametrize(("request_body", "stream"), [({}, True), ({"stream": None}, True), ({"stream": True}, True),
                                                      ({"stream": False}, False), ({"stream": 0}, True)])
def test_ollama_streams_unless_told_not_to(request_body: dict[str, Any], stream: bool):
    assert OLLAMA.wants_stream(request_body) is stream


@pytest.mark.parametrize(("data", "found"), [
    (OLLAMA_TAPE[-1], True),
    (b'{"done" : true}\n', True),
    (b'{"model":"m",\n "done":\ttrue}', True),
    (b'{"model":"m","done":false}\n', False),
    (b'{"message":{"content":"\\"done\\":true"},"done":false}\n', False),  # the words inside text
    (b'{"message":{"content":"done: true"},"done":false}\n', False),
    (b'{"done":"true"}\n', False),
])
def test_ollama_terminal_is_a_done_true_key_never_the_words_in_text(data: bytes, found: bool):
    assert OLLAMA.find_terminal(data) is found
    assert not any(OLLAMA.find_terminal(c) for c in OLLAMA_TAPE[:-1])


def test_an_ollama_stream_assembles_its_text_done_reason_and_usage_in_openai_s_names():
    result = OLLAMA.assemble(OLLAMA_BODY, "application/x-ndjson")
    assert (result.kind, result.id, result.model, result.role, result.text, result.finish_reason, result.done) == (
        "ollama.chat", None, "smollm2", "assistant", OLLAMA_TEXT, "stop", True)
    assert (result.usage, result.events, result.error, result.problems, result.tool_calls) == (
        {"prompt_tokens": 9, "completion_tokens": 18, "total_tokens": 27}, 19, None, [], [])
    cut = OLLAMA.assemble_stream(b"".join(OLLAMA_TAPE[:-1]))
    assert (cut.done, cut.finish_reason, cut.usage, cut.text) == (False, None, None, OLLAMA_TEXT)
    # a cached prompt leaves prompt_eval_count out of the done line: the count there is still the usage
    for counts, (prompt, completion) in (({"eval_count": 18}, (0, 18)), ({"prompt_eval_count": 9}, (9, 0))):
        done = json.dumps({"model": "smollm2", "message": {"role": "assistant", "content": ""}, "done": True,
                           "done_reason": "stop", **counts}).encode() + b"\n"
        result = OLLAMA.assemble_stream(b"".join(OLLAMA_TAPE[:-1]) + done)
        assert result.usage == {"prompt_tokens": prompt, "completion_tokens": completion,
                                "total_tokens": prompt + completion}


def test_an_ollama_body_is_told_a_stream_or_a_whole_answer_by_its_lines_when_its_type_does_not_say():
    whole = json.dumps({"model": "m", "message": {"role": "assistant", "content": "Hi"}, "done": True,
                        "done_reason": "length", "eval_count": 3}).encode()
    for content_type in (None, "text/plain", "application/json"):
        result = OLLAMA.assemble(whole, content_type)
        assert (result.text, result.finish_reason, result.events, result.usage) == (
            "Hi", "length", 0, {"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3})
        stream = OLLAMA.assemble(OLLAMA_BODY, None if content_type == "application/json" else content_type)
        assert (stream.text, stream.events) == (OLLAMA_TEXT, 19)
    # a first line longer than 64 bytes is still a line of a stream
    assert OLLAMA.assemble(b'\xef\xbb\xbf  ' + OLLAMA_BODY, "").events == 19


@pytest.mark.parametrize(("head", "stream"), [
    (b'{"a":1}\n{"b"', True), (b'{"model":"m","message":{"content":"Hi', True), (b'{"model":"m"}', False),
    (b'\xef\xbb\xbf {"a":1}\n', True), (b"data: {}\n\n", False), (b"", False), (b'  {"a":1} ', False),
])
def test_ollama_takes_json_lines_or_a_cut_first_line_for_a_stream(head: bytes, stream: bool):
    assert OLLAMA.looks_like_stream(head) is stream


def test_an_ollama_generate_stream_reads_its_response_text():
    result = OLLAMA.assemble_stream(ollama_lines({"model": "m", "response": "Pa", "done": False},
                                                 {"model": "m", "response": "ris", "done": False},
                                                 {"model": "m", "response": "", "done": True, "done_reason": "stop",
                                                  "prompt_eval_count": 4}))
    assert (result.kind, result.text, result.done, result.finish_reason, result.usage) == (
        "ollama.generate", "Paris", True, "stop", {"prompt_tokens": 4, "completion_tokens": 0, "total_tokens": 4})


def test_the_first_kind_of_line_names_the_answer():
    result = OLLAMA.assemble_stream(ollama_lines({"message": {"content": "a"}}, {"response": "b"}))
    assert (result.kind, result.text) == ("ollama.chat", "ab")


@pytest.mark.parametrize(("error", "said"), [("model not found", {"message": "model not found"}),
                                             ({"code": 500}, {"code": 500}), (0, {"message": "0"})])
def test_an_ollama_error_line_is_the_stream_s_error(error: Any, said: dict[str, Any]):
    result = OLLAMA.assemble_stream(OLLAMA_TAPE[0] + ollama_lines({"error": error}))
    assert (result.error, result.text, result.done) == (said, "The ", False)
    assert OLLAMA.whole_body(OLLAMA_TAPE[0] + ollama_lines({"error": error})) is None


def test_ollama_lines_that_say_nothing_are_noted():
    keys = {k: 1 for k in "jihgfedcba"}
    result = ollama_assembled(b"{oops", b"[1]", json.dumps(keys).encode(), b'{"done":false,"model":"m"}',
                              b'{"error":null,"done":false}')
    assert result.problems[0].startswith("line 0: invalid JSON: ")
    assert result.problems[1:] == ["line 1: expected a JSON object, got list",
                                   "line 2: unrecognised object with keys ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h']"]
    assert (result.kind, result.model, result.events, result.error) == ("unknown", "m", 5, None)
    assert OLLAMA.assemble_json(b"[1]").problems == ["body: expected a JSON object, got list"]


def test_an_internal_error_in_an_ollama_line_is_a_problem_not_a_crash():
    result = ollama_assembled(b'{"message":{"content":"a","tool_calls":5}}')
    assert result.problems == ["line 0: internal error: TypeError: 'int' object is not iterable"]
    assert result.text == "a"


def test_a_done_line_without_a_done_reason_keeps_the_earlier_one_and_the_model_its_last_name():
    result = ollama_assembled(b'{"model":"a","done":true,"done_reason":"length"}', b'{"model":null,"done":true}',
                              b'{"message":{"role":null,"content":7},"done":"true","done_reason":"stop"}')
    assert (result.done, result.finish_reason, result.model, result.role, result.text) == (
        True, "length", "a", "assistant", "")


def test_ollama_tool_calls_come_whole_and_read_in_chat_s_shape():
    result = ollama_assembled(
        b'{"message":{"role":"assistant","content":"","tool_calls":[{"id":"call_1","function":{"name":"lookup",'
        b'"arguments":{"city":"Paris"}}},"junk",{"function":{"arguments":"{}"}},{"function":"x"}]}}',
        b'{"message":{"role":"tool","content":"","tool_calls":[{"function":{"name":"g","arguments":null}}]}}')
    assert result.role == "tool"
    assert result.tool_calls == [
        {"index": 0, "id": "call_1", "type": "function",
         "function": {"name": "lookup", "arguments": '{"city": "Paris"}'}},
        {"index": 1, "id": None, "type": "function", "function": {"name": "", "arguments": "{}"}},
        {"index": 2, "id": None, "type": "function", "function": {"name": "", "arguments": ""}},
        {"index": 3, "id": None, "type": "function", "function": {"name": "g", "arguments": ""}}]


@pytest.mark.parametrize(("data", "kind"), [
    ('{"error":"x"}', "error"), ('{"done":true,"message":{"content":"a"}}', "done"),
    ('{"message":{"content":"a","thinking":"b","tool_calls":[{}]},"done":false}', "content+thinking+tool_calls"),
    ('{"response":"a","thinking":"b"}', "content+thinking"), ('{"message":{"content":""},"done":false}', "empty"),
    ('{"message":"x","done":"true"}', "empty"), ("nope", "data"), ("[1]", "data"), ('{"error":null}', "empty"),
])
def test_ollama_event_kind_names_what_a_line_carries(data: str, kind: str):
    assert OLLAMA.event_kind(Event(data)) == kind


def test_drop_done_removes_the_done_line_whole_and_keeps_every_other_byte():
    assert OLLAMA.drop_terminal(OLLAMA_BODY) == b"".join(OLLAMA_TAPE[:-1])
    torn = b'{"done":true'
    assert OLLAMA.drop_terminal(b'[1]\n7\n{"done":true}\n') == b"[1]\n7\n"
    assert OLLAMA.drop_terminal(OLLAMA_TAPE[0] + b"\n" + torn) == OLLAMA_TAPE[0] + b"\n" + torn
    assert OLLAMA.drop_terminal(OLLAMA_TAPE[0] + b'{"done":true}') == OLLAMA_TAPE[0]


def test_drop_finish_nulls_the_done_reason_only_as_a_key():
    body = OLLAMA.drop_stop(OLLAMA_BODY)
    assert body == OLLAMA_BODY.replace(b'"done_reason":"stop"', b'"done_reason":null')
    assert OLLAMA.assemble_stream(body).finish_reason is None and OLLAMA.find_terminal(body)
    assert OLLAMA.drop_stop(b'{"done":true, "done_reason" : "le\\"n"}') == b'{"done":true, "done_reason" : null}'
    text = b'{"message":{"content":"\\"done_reason\\":\\"stop\\""}}'
    assert OLLAMA.drop_stop(text) == text


def test_ollama_errors_are_its_error_objects():
    assert OLLAMA.error_event("boom <x>") == b'{"error":"boom \\u003cx\\u003e"}\n'
    assert OLLAMA.error_body("model 'x' not found", 404) == b'{"error":"model \'x\' not found"}'


def test_corrupt_hits_the_first_line_s_json():
    assert OLLAMA.payload_span(b'{"a":1}\n{"b":2}\n') == (0, 7)
    assert OLLAMA.payload_span(b'tail"}\n  {"b":2}\r\n') == (9, 16)
    assert OLLAMA.payload_span(b"no json here\n") is None


def test_go_json_escapes_what_go_escapes():
    assert go_json({"a": "<&>\u2028\u2029é"}) == '{"a":"\\u003c\\u0026\\u003e\\u2028\\u2029é"}'.encode()
    assert go_json({"a": [1, 2]}, spaced=True) == b'{"a": [1, 2]}'
    assert go_json({"a": "\ud800", "b": [1, 2]}) == b'{"a":"\\ud800","b":[1,2]}'


def test_an_ollama_stream_stands_for_its_last_line_with_the_whole_text_and_back():
    whole = OLLAMA.whole_body(OLLAMA_BODY)
    assert whole == {**json.loads(OLLAMA_TAPE[-1]), "message": {"role": "assistant", "content": OLLAMA_TEXT}}
    events = OLLAMA.stream_events(whole)
    # the last line as Ollama wrote it, byte for byte; the others carry its model and time
    assert events is not None and len(events) == 19 and events[-1] == OLLAMA_TAPE[-1]
    assert events[0] == (b'{"model":"smollm2","created_at":"2024-11-19T07:06:40.898223034Z",'
                         b'"message":{"role":"assistant","content":"The "},"done":false}\n')
    assert OLLAMA.whole_body(b"".join(events)) == whole


def test_a_whole_ollama_answer_streams_thinking_then_content_then_its_tool_calls():
    whole = {"model": "m", "created_at": "t", "remote_model": "big", "remote_host": "h", "message": {
        "role": "assistant", "content": "a  b", "thinking": "hm ok",
        "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]}, "done": True, "done_reason": "stop"}
    head = (b'{"model":"m","created_at":"t","remote_model":"big","remote_host":"h",'
            b'"message":{"role":"assistant","content":"')
    assert OLLAMA.stream_events(whole) == [
        head + b'","thinking":"hm "},"done":false}\n',
        head + b'","thinking":"ok"},"done":false}\n',
        head + b'a "},"done":false}\n',
        head + b' "},"done":false}\n',
        head + b'b"},"done":false}\n',
        head + b'","tool_calls":[{"function":{"name":"f","arguments":{"x":1}}}]},"done":false}\n',
        b'{"model":"m","created_at":"t","remote_model":"big","remote_host":"h","message":{"role":"assistant",'
        b'"content":""},"done":true,"done_reason":"stop"}\n']
    back = OLLAMA.whole_body(b"".join(OLLAMA.stream_events(whole)))
    assert back == whole


def test_a_whole_ollama_answer_keeps_its_role_and_a_message_without_one_speaks_as_the_assistant():
    events = OLLAMA.stream_events({"message": {"role": "user", "content": "x"}, "done": True})
    assert events == [b'{"message":{"role":"user","content":"x"},"done":false}\n',
                      b'{"message":{"role":"user","content":""},"done":true}\n']
    assert OLLAMA.stream_events({"message": {}, "done": True}) == [
        b'{"message":{"role":"assistant","content":""},"done":true}\n']
    assert OLLAMA.stream_events({"message": "x"}) is None
    assert OLLAMA.stream_events({"message": {}, "error": "boom"}) is None


def test_the_whole_answer_gathers_thinking_tool_calls_and_logprobs_from_every_line():
    body = ollama_lines(
        {"model": "m", "message": {"role": "assistant", "content": "", "thinking": "hm "}, "logprobs": [{"t": 1}],
         "done": False},
        {"model": "m", "message": {"role": "assistant", "content": "Hi", "tool_calls": [{"function": {"name": "f"}}],
                                   "thinking": "ok"}, "done": False},
        {"model": "m", "response": "ignored"},
        {"model": "m", "message": {"role": "assistant", "content": None, "images": None, "zeta": 1,
                                   "tool_calls": [{"function": {"name": "g"}}]}, "logprobs": [{"t": 2}], "done": True})
    whole = OLLAMA.whole_body(b"not json\n[1]\n7\n" + body)
    assert whole == {"model": "m", "message": {
        "role": "assistant", "content": "Hi", "thinking": "hm ok", "images": None,
        "tool_calls": [{"function": {"name": "f"}}, {"function": {"name": "g"}}], "zeta": 1},
        "logprobs": [{"t": 1}, {"t": 2}], "done": True}
    assert list(whole["message"]) == ["role", "content", "thinking", "images", "tool_calls", "zeta"]
    assert OLLAMA.whole_body(ollama_lines({"message": {"content": "a"}, "logprobs": None}, {"message": {}})) == {
        "message": {"content": "a"}}
    assert OLLAMA.whole_body(ollama_lines({"model": "m", "response": "x", "done": True})) is None


def test_a_body_its_content_type_calls_json_is_read_whole_whatever_it_looks_like():
    result = OLLAMA.assemble(OLLAMA_BODY, "Application/JSON")
    assert (result.events, result.text, result.model) == (0, "", None)
    assert result.problems[0].startswith("body: invalid JSON: Extra data")


def test_the_whole_answer_has_no_empty_thinking_or_tool_calls():
    body = ollama_lines({"message": {"role": "assistant", "content": "a"}},
                        {"message": {"role": "assistant", "content": "", "thinking": "", "tool_calls": []}})
    assert OLLAMA.whole_body(body) == {"message": {"role": "assistant", "content": "a"}}


# -- what every dialect shares (base)


def test_a_line_parser_reads_each_json_line_across_reads_and_skips_blank_ones():
    parser = LineParser()
    assert parser.feed(b'{"a":1}\r\n\n  \n{"b"') == [Event('{"a":1}')]
    assert parser.feed(b"") == []
    assert parser.feed(b':2}\n') == [Event('{"b":2}')]
    assert (parser.close(), parser.problems, parser.bytes_seen) == ([], [], 21)


def test_a_line_parser_gives_the_whole_body_s_events_at_every_split_and_byte_by_byte():
    """However a body is cut into reads (a read that starts with the newline ending the line before, a CRLF cut
    in two, one byte at a time), the events and the problems are those of the whole body in one read."""
    body = b'{"a":1}\n{"b":2}\r\n\n{"c":"\xc3\xa9"}\n{"d":\xff}\n{"done":true}'

    def parsed(reads: list[bytes]) -> tuple[list[Event], list[str]]:
        parser = LineParser()
        events = [event for read in reads for event in parser.feed(read)] + parser.close()
        return events, parser.problems

    whole = parsed([body])
    assert len(whole[0]) == 5 and len(whole[1]) == 2  # the bad byte, the last line without its newline
    for cut in range(len(body) + 1):
        assert parsed([body[:cut], body[cut:]]) == whole, cut
    assert parsed([body[i:i + 1] for i in range(len(body))]) == whole


def test_a_line_parser_reads_a_last_line_without_its_newline_and_says_so():
    parser = LineParser()
    assert parser.feed(b'{"a":1}\n{"done":true}') == [Event('{"a":1}')]
    assert parser.close() == [Event('{"done":true}')]
    assert parser.problems == ["trailing unterminated line at end of stream (byte 21)"]
    assert parser.close() == [] and len(parser.problems) == 1  # closing twice adds nothing
    blank = LineParser()
    blank.feed(b'{"a":1}\n \r\t')
    assert (blank.close(), blank.problems) == ([], [])


def test_a_line_parser_names_the_offset_of_an_undecodable_byte():
    parser = LineParser()
    events = parser.feed(b'{"a":1}\n\xff\n') + parser.feed(b'{"b":"\xc3\xa9"}\nx\xc3')
    assert events + parser.close() == [Event('{"a":1}'), Event("\ufffd"), Event('{"b":"é"}'), Event("x\ufffd")]
    assert parser.problems == ["undecodable UTF-8 in line at byte 8: invalid start byte",
                               "trailing unterminated line at end of stream (byte 23)",
                               "undecodable UTF-8 in line at byte 22: unexpected end of data"]


@pytest.mark.parametrize("body", [
    b"data: a\n\ndata: b\n\n", b"event: x\r\ndata: a\r\n\r\ndata: b\r\n\r\n", b"data: a\r\rdata: b\r\r",
    b"data: a\r\n\ndata: b\n\r\n", b"data: a\n\ndata: cut",
])
def test_an_sse_body_splits_into_its_events_and_joins_back(body: bytes):
    blocks = sse_blocks(body)
    assert b"".join(blocks) == body and len(blocks) == 2
    assert sse_blocks(b"") == []


def test_dropping_sse_events_keeps_every_other_byte_and_blocks_with_no_event():
    body = b": keep-alive\n\ndata: drop\n\ndata: keep\n\nevent: x\ndata: drop\n\n"
    assert drop_sse_events(body, lambda ev: ev.data == "drop") == b": keep-alive\n\ndata: keep\n\n"
    assert drop_sse_events(body, lambda ev: False) == body


def test_openai_s_error_object_has_its_status_as_a_string_code_or_none():
    assert openai_error_json("x", 500) == (
        b'{"error": {"message": "x", "type": "server_error", "param": null, "code": "500"}}')
    assert json.loads(openai_error_json("x"))["error"]["code"] is None
    assert json.loads(openai_error_json("x", 0))["error"]["code"] is None


def test_the_base_dialect_leaves_the_wire_specific_answers_to_each_dialect():
    base = Dialect()
    for call in (lambda: base.recognises("/x"), lambda: base.find_terminal(b""), base.assembler,
                 lambda: base.drop_terminal(b""), lambda: base.drop_stop(b""), lambda: base.error_event("x")):
        with pytest.raises(NotImplementedError):
            call()
    assert (base.whole_body(b"data: x\n\n"), base.stream_events({"object": "chat.completion"})) == (None, None)
    assert (base.length_reasons, base.stream_content_type, base.matrix_tape) == (
        frozenset({"length"}), "text/event-stream", "")
    assert json.loads(base.error_body("slow", 429))["error"] == {
        "message": "slow", "type": "server_error", "param": None, "code": "429"}


@pytest.mark.parametrize(("request_body", "stream"), [({"stream": True}, True), ({}, False), ({"stream": False}, False),
                                                      ({"stream": None}, False), ({"stream": 1}, True)])
def test_an_sse_dialect_streams_only_when_asked(request_body: dict[str, Any], stream: bool):
    assert CHAT.wants_stream(request_body) is stream
    assert RESPONSES.wants_stream(request_body) is stream


@pytest.mark.parametrize(("content_type", "stream"), [
    ("text/event-stream", True), ("Text/Event-Stream; charset=utf-8", True), ("application/json", False),
    (None, False), ("", False),
])
def test_an_sse_stream_is_told_by_its_content_type(content_type: str | None, stream: bool):
    assert CHAT.is_stream(content_type) is stream


@pytest.mark.parametrize(("head", "stream"), [
    (b"data: {}", True), (b"event: x", True), (b"id: 1", True), (b"retry: 5", True), (b": ping", True),
    (b"\xef\xbb\xbf\r\n data:", True), (b'{"data": 1}', False), (b"", False), (b"\xef\xbb\xbf{", False),
])
def test_an_sse_stream_is_told_by_its_first_bytes_when_its_type_lies(head: bytes, stream: bool):
    assert CHAT.looks_like_stream(head) is stream


@pytest.mark.parametrize(("event", "kind"), [
    (Event('{"type":"response.created"}', event="x"), "response.created"),
    (Event('{"type":5}', event="x"), "x"), (Event("[1]", event="x"), "x"), (Event("nope"), "data"),
    (Event('{"a":1}'), "data"), (Event("[[[" * 2000), "data"),
])
def test_an_event_s_kind_is_its_data_s_type_then_its_name(event: Event, kind: str):
    assert RESPONSES.event_kind(event) == kind


def test_assembling_a_stream_puts_the_parser_s_problems_first():
    body = chat_chunk({"content": "a"}) + b"data: nope\n\ndata: {\"x\""
    result = CHAT.assemble_stream(body)
    assert result.problems == [f"trailing unterminated event at end of stream (byte {len(body)})",
                               "event 1: invalid JSON: Expecting value: line 1 column 1 (char 0)"]
    assert (result.text, result.events) == ("a", 2)


def test_a_body_that_is_no_json_says_so():
    result = CHAT.assemble_json(b"{oops")
    assert result.problems == [
        "body: invalid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"]
    assert result.kind == "unknown"
    assert CHAT.assemble_json(b"[" * 100_000).problems[0].startswith("body: invalid JSON: ")


WHOLE_CHAT = (b'{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant",'
              b'"content":"Hi"},"finish_reason":"stop"}]}')


@pytest.mark.parametrize(("body", "content_type", "kind", "events"), [
    (CHAT_BODY, "text/event-stream", "chat.completion", 3),
    (CHAT_BODY, None, "chat.completion", 3),  # no type: by the look of its first bytes
    (CHAT_BODY, "text/plain", "chat.completion", 3),
    (WHOLE_CHAT, "Application/JSON", "chat.completion", 0),
    (WHOLE_CHAT, None, "chat.completion", 0),
    (CHAT_BODY, "application/json", "unknown", 0),  # a type that says JSON is believed
])
def test_a_body_is_read_as_a_stream_or_whole_by_its_type_then_its_look(body: bytes, content_type: str | None,
                                                                       kind: str, events: int):
    result = CHAT.assemble(body, content_type)
    assert (result.kind, result.events) == (kind, events)
    assert result.text == ("Hi" if kind != "unknown" else "")


def test_a_whole_body_whose_first_64_bytes_look_like_sse_is_read_as_a_stream():
    assert CHAT.assemble(b"\n" * 59 + b"data: {}\n\n", None).events == 1
    assert CHAT.assemble(b"\n" * 60 + b"data: {}\n\n", None).events == 0


def test_corrupt_hits_the_first_data_payload():
    assert CHAT.payload_span(b'event: x\ndata: {"a":1}\n\ndata:{"b":2}\n\n') == (15, 22)
    assert CHAT.payload_span(b'data:{"b":2}\r\n') == (5, 12)
    assert CHAT.payload_span(b"data: [DONE]\n\n") is None


# -- azure

AZURE = dialect_named("azure")
AZURE_TAPE = tape_chunks("azure-happy-path")
SAFE = {"filtered": False, "severity": "safe"}


def azure_chunk(filters: Any, content: str | None = "x", index: int | None = 0, **extra: Any) -> bytes:
    choice: dict[str, Any] = {"delta": {} if content is None else {"content": content}, "finish_reason": None,
                              "content_filter_results": filters, **extra}
    if index is not None:
        choice["index"] = index
    return sse_data({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]})


AZURE_END = sse_data({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                      "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "content_filter_results": {}}]})


@pytest.mark.parametrize(("path", "claimed"), [
    ("/openai/deployments/gpt-4o/chat/completions", True),
    ("/openai/deployments/gpt-4o/chat/completions/", True),
    ("/openai/deployments/davinci/completions", True),
    ("/openai/deployments//chat/completions", False),
    ("/openai/deployments/a/chat/completionsX", False),
    ("/openai/deployments/a/b/chat/completions", False),
    ("/openai/deployments/gpt-4o/embeddings", False),
    ("/v1/chat/completions", False),
])
def test_azure_claims_only_a_deployment_s_completions_path(path: str, claimed: bool):
    assert AZURE.recognises(path) is claimed
    assert dialect_for(path + "?api-version=2024-10-21").name == ("azure" if claimed else "chat")


def test_azure_speaks_chat_on_the_wire():
    assert (AZURE.name, AZURE.label, AZURE.matrix_tape, AZURE.terminal, AZURE.stop_field) == (
        "azure", "Azure OpenAI chat.completions", "azure-openai", "[DONE]", "finish_reason")
    body = b"".join(AZURE_TAPE)
    assert AZURE.find_terminal(AZURE_TAPE[-1]) and AZURE.drop_terminal(body) == b"".join(AZURE_TAPE[:-1])
    assert AZURE.event_kind(Event(AZURE_TAPE[0][6:].decode())) == "prompt_filter"


def test_azure_s_error_body_is_its_gateway_s():
    assert AZURE.error_body("Rate limit is exceeded.", 429) == (
        b'{"error": {"code": "429", "message": "Rate limit is exceeded."}}')


def test_an_azure_stream_stands_for_an_answer_that_keeps_its_filter_verdicts_in_azure_s_order():
    whole = AZURE.whole_body(b"".join(AZURE_TAPE))
    prompt = json.loads(AZURE_TAPE[0][6:])["prompt_filter_results"]
    verdict = {"hate": SAFE, "self_harm": SAFE, "sexual": SAFE, "violence": SAFE}
    assert whole == {
        "choices": [{"content_filter_results": verdict, "finish_reason": "stop", "index": 0, "logprobs": None,
                     "message": {"content": "The capital of France is Paris. It lies on the Seine and is known for "
                                            "the Eiffel Tower.", "refusal": None, "role": "assistant"}}],
        "created": 1732000000, "id": "chatcmpl-0003", "model": "gpt-4o-mini-2024-07-18", "object": "chat.completion",
        "prompt_filter_results": prompt, "system_fingerprint": "fp_0ba0d124f1", "usage": None}
    assert list(whole) == sorted(whole)
    assert list(whole["choices"][0]) == sorted(whole["choices"][0])
    assert list(whole["choices"][0]["message"]) == ["content", "refusal", "role"]


def test_a_filtered_verdict_is_kept_over_any_later_one_and_only_choice_0_counts():
    body = (azure_chunk({"hate": {"filtered": True, "severity": "high"}, "sexual": SAFE})
            + azure_chunk({"hate": SAFE, "sexual": {"filtered": False, "severity": "low"}})
            + azure_chunk({"violence": {"filtered": True}}, index=1)
            + azure_chunk({"self_harm": SAFE}, index=None)  # no index: choice 0
            + azure_chunk("not verdicts") + b"data: [1]\n\ndata: {torn\n\n"
            + sse_data({"choices": None, "usage": {"total_tokens": 1}})
            # a choice that is not choice 0, and one with no verdicts, come before choice 0's in one chunk
            + sse_data({"choices": ["junk", {"index": 1, "content_filter_results": {"jailbreak": SAFE}},
                                    {"index": 0, "content_filter_results": "x"},
                                    {"index": 0, "delta": {}, "content_filter_results": {"profanity": SAFE}}]})
            + AZURE_END + b"data: [DONE]\n\n")
    whole = AZURE.whole_body(body)
    assert whole["choices"][0]["content_filter_results"] == {
        "hate": {"filtered": True, "severity": "high"}, "sexual": {"filtered": False, "severity": "low"},
        "self_harm": SAFE, "profanity": SAFE}
    assert "prompt_filter_results" not in whole


def test_the_first_prompt_filter_verdicts_are_the_prompt_s():
    first = sse_data({"choices": [], "prompt_filter_results": [{"prompt_index": 0, "n": 1}]})
    later = sse_data({"choices": [], "prompt_filter_results": [{"prompt_index": 0, "n": 2}]})
    odd = sse_data({"choices": [], "prompt_filter_results": {"prompt_index": 0}})
    whole = AZURE.whole_body(odd + first + later + azure_chunk(None) + chat_chunk({}, "stop"))
    assert whole["prompt_filter_results"] == [{"prompt_index": 0, "n": 1}]
    assert "content_filter_results" not in whole["choices"][0]


def test_a_stream_that_is_not_chat_stands_for_no_azure_answer():
    assert AZURE.whole_body(b'data: {"type":"response.created","response":{"object":"response"}}\n\n') is None
    assert AZURE.stream_events({"object": "response"}) is None


def test_an_azure_answer_streams_with_its_verdicts_where_azure_puts_them():
    whole = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop",
                          "content_filter_results": {"hate": {"filtered": False}}}],
             "prompt_filter_results": [{"prompt_index": 0}]}
    assert AZURE.stream_events(whole) == [
        b'data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0}]}'
        b'\n\n',
        b'data: {"choices":[{"content_filter_results":{},"delta":{"content":"","role":"assistant"},'
        b'"finish_reason":null,"index":0,"logprobs":null}],"created":1,"id":"c","model":"m","object":"chat.completion.chunk"}\n\n',
        b'data: {"choices":[{"content_filter_results":{"hate":{"filtered":false}},"delta":{"content":"Hi"},'
        b'"finish_reason":null,"index":0,"logprobs":null}],"created":1,"id":"c","model":"m",'
        b'"object":"chat.completion.chunk"}\n\n',
        b'data: {"choices":[{"content_filter_results":{},"delta":{},"finish_reason":"stop","index":0,"logprobs":null}],'
        b'"created":1,"id":"c","model":"m","object":"chat.completion.chunk"}\n\n',
        b"data: [DONE]\n\n"]
    back = AZURE.whole_body(b"".join(AZURE.stream_events(whole)))
    assert back["prompt_filter_results"] == [{"prompt_index": 0}]
    assert back["choices"][0]["content_filter_results"] == {"hate": {"filtered": False}}


def test_an_answer_with_only_one_kind_of_verdict_streams_only_that_kind():
    base = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}]}
    prompt_only = AZURE.stream_events({**base, "prompt_filter_results": []})
    assert prompt_only[0] == (b'data: {"choices":[],"created":0,"id":"","model":"","object":"",'
                              b'"prompt_filter_results":[]}\n\n')
    assert json.loads(prompt_only[2][6:])["choices"][0]["content_filter_results"] == {}
    choice = {**base["choices"][0], "content_filter_results": {"a": 1}}
    content_only = AZURE.stream_events({**base, "choices": [choice]})
    assert b"prompt_filter_results" not in content_only[0]
    filters = [json.loads(e[6:])["choices"][0]["content_filter_results"] for e in content_only[:-1]]
    assert filters == [{}, {"a": 1}, {}]  # the verdict on the chunk with content only


def test_an_answer_without_verdicts_behind_an_azure_path_streams_as_plain_chat():
    whole = {"id": "c", "object": "chat.completion", "created": 1, "model": "m",
             "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}]}
    assert AZURE.stream_events(whole) == CHAT.stream_events(whole)
    for choices in ("x", None, []):  # no choice at all: no verdict either
        assert AZURE.stream_events({**whole, "choices": choices}) == CHAT.stream_events({**whole, "choices": choices})


def test_a_line_keeps_its_trailing_spaces_and_loses_only_its_carriage_return():
    assert LineParser().feed(b'{"a":1} \r\nX\r\n') == [Event('{"a":1} '), Event("X")]


# -- a terminal marker split across two reads


def ends_split_at_every_byte(dialect_name: str, body: bytes) -> list[int]:
    """The split points of `body` at which the recorder, reading it as two reads, would miss its terminal
    marker: it looks in each read and in the previous read's last SEAM bytes plus the next read's first."""
    dialect = dialect_named(dialect_name)
    return [k for k in range(1, len(body)) if not (
        dialect.find_terminal(body[:k]) or dialect.find_terminal(body[k:])
        or dialect.find_terminal(body[:k][-SEAM:] + body[k:][:SEAM]))]


@pytest.mark.parametrize(("dialect", "body"), [
    ("chat", CHAT_BODY),
    ("azure", b"".join(AZURE_TAPE[-2:])),
    ("anthropic", TOOL_BODY),
    ("anthropic", TOOL_BODY.replace(b"event: message_stop\n", b"")),  # the data's type alone
    ("responses", b"".join(RESPONSES_TAPE[-2:])),
    ("responses", RESPONSES_TAPE[0] + b'event: response.incomplete\r\ndata: {"response":{},'
                                      b'"type":"response.incomplete"}\r\n\r\n'),
    ("ollama", OLLAMA_BODY),
    ("ollama", OLLAMA_TAPE[0] + b'{"model":"m","message":{"role":"assistant","content":""},\t"done" :  true}\n'),
])
def test_a_terminal_marker_split_anywhere_between_two_reads_is_found_within_the_seam(dialect: str, body: bytes):
    assert ends_split_at_every_byte(dialect, body) == []


def test_a_count_of_the_wrong_type_in_a_stream_is_read_as_absent_never_raising() -> None:
    """Where a count goes, a bool or a string is read as absent, never raising: Ollama's token counts, a chat
    tool call's index (so the call goes on as one without an index would), an Anthropic content block's index."""
    counts = json.dumps({"model": "m", "message": {"role": "assistant", "content": "Hi"}, "done": True,
                         "done_reason": "stop", "prompt_eval_count": True, "eval_count": "7"}).encode() + b"\n"
    ollama = dialect_named("ollama").assemble_stream(counts)
    assert (ollama.text, ollama.finish_reason, ollama.usage, ollama.problems) == ("Hi", "stop", None, [])
    # an index of true or "0" is no index: the first piece starts the call, the second continues it
    calls = (chat_chunk({"tool_calls": [{"index": True, "id": "call_a", "type": "function",
                                         "function": {"name": "f", "arguments": '{"a"'}}]})
             + chat_chunk({"tool_calls": [{"index": "0", "function": {"arguments": ":1}"}}]}, "tool_calls")
             + b"data: [DONE]\n\n")
    chat = CHAT.assemble_stream(calls)
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in chat.tool_calls] == [
        ("call_a", "f", '{"a":1}')]
    assert chat.problems == []
    blocks = (sse_event({"type": "content_block_start", "index": True,
                         "content_block": {"type": "text", "text": "Hi"}})
              + sse_event({"type": "content_block_delta", "index": "0",
                           "delta": {"type": "text_delta", "text": " there"}}))
    anthropic = dialect_named("anthropic").assemble_stream(blocks)
    assert anthropic.text == ""
    assert anthropic.problems == ["event 0: content_block_start without an index or a content_block",
                                  "event 1: content_block_delta without an index or a delta"]


def test_an_azure_filter_annotation_after_the_finish_chunk_keeps_the_answer_s_stop_reason_and_metadata() -> None:
    """Under Azure's Asynchronous Filter the verdicts come after the finish chunk, in an annotation with a null
    `finish_reason` and empty metadata: the assembled answer still stopped with `stop`, under its own id, model,
    fingerprint and time."""
    events = async_filter_events(Script(text="Hi there"), "chatcmpl-0001")
    result = dialect_named("azure").assemble(b"".join(events), "text/event-stream")
    assert (result.text, result.finish_reason, result.done, result.problems) == ("Hi there", "stop", True, [])
    assert (result.id, result.model, result.system_fingerprint, result.created) == (
        "chatcmpl-0001", "gpt-4o-mini-2024-07-18", "fp_0ba0d124f1", 1732000000)
