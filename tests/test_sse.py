import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion

from streamreplay.sse import (
    Assembler,
    Event,
    SSEParser,
    assemble,
    assemble_json,
    assemble_stream,
    find_done,
    parse_events,
    synthesize_chat_stream,
)

# Exactly what api.openai.com sends for stream=true with stream_options.include_usage.
OPENAI_CHAT = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    b'"system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
    b'"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    b'"system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":"Hel"},'
    b'"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    b'"system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":"lo!"},'
    b'"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    b'"system_fingerprint":"fp_1","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],'
    b'"usage":null}\n\n'
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    b'"system_fingerprint":"fp_1","choices":[],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}\n\n'
    b"data: [DONE]\n\n"
)
USAGE = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}


def chunk(delta: dict, finish_reason: str | None = None, **extra: object) -> bytes:
    obj = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m", **extra}
    obj["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def feed_all(pieces: list[bytes]) -> tuple[list[Event], SSEParser]:
    parser = SSEParser()
    events = [ev for piece in pieces for ev in parser.feed(piece)]
    return events + parser.close(), parser


# -- SSE framing


def test_openai_chat_stream_assembles_to_the_non_stream_answer() -> None:
    result = assemble_stream(OPENAI_CHAT)
    assert result.problems == []
    assert (result.kind, result.text, result.finish_reason, result.done, result.events) == (
        "chat.completion",
        "Hello!",
        "stop",
        True,
        6,
    )
    assert result.to_chat_completion() == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
    ChatCompletion.model_validate(result.to_chat_completion())  # the SDK accepts it as a real answer


def test_every_byte_split_gives_the_same_events() -> None:
    whole, _ = feed_all([OPENAI_CHAT])
    one_by_one, _ = feed_all([OPENAI_CHAT[i : i + 1] for i in range(len(OPENAI_CHAT))])
    assert one_by_one == whole and len(whole) == 6


def test_llama_cpp_style_spaces_and_no_space_after_data() -> None:
    body = (
        b'data: {"choices": [{"finish_reason": null, "index": 0, "delta": {"content": "Hi"}}], '
        b'"created": 5, "id": "chatcmpl-x", "model": "llama", "object": "chat.completion.chunk"}\n\n'
        b'data:{"choices": [{"finish_reason": "length", "index": 0, "delta": {}}], '
        b'"created": 5, "id": "chatcmpl-x", "model": "llama", "object": "chat.completion.chunk", '
        b'"usage": {"completion_tokens": 1, "prompt_tokens": 3, "total_tokens": 4}}\n\n'
        b"data: [DONE]\n\n"
    )
    result = assemble_stream(body)
    assert (result.text, result.finish_reason, result.model, result.done) == ("Hi", "length", "llama", True)
    assert result.usage == {"completion_tokens": 1, "prompt_tokens": 3, "total_tokens": 4}


def test_crlf_cr_and_a_crlf_split_across_reads() -> None:
    body = b"data: a\r\ndata: b\r\n\r\ndata: c\r\rdata: d\n\n"
    expected = [Event("a\nb"), Event("c"), Event("d")]
    assert parse_events(body) == expected
    # A CR ending one read and the LF starting the next are one line end, not an extra blank line.
    events, _ = feed_all([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\ndata: c\r\r", b"data: d\n\n"])
    assert events == expected


def test_comments_fields_and_multiline_data() -> None:
    body = (
        b": ping - 2025-01-01 00:00:00\n"
        b":\n"
        b"id: 7\nretry: 1500\nevent: delta\nfoo: ignored\ndata: line one\ndata\ndata:  two spaces\n\n"
        b"data: next\n\n"  # the last event ID carries over, as EventSource reports it
        b"event: only-a-type\n\n"  # no data: nothing is dispatched
    )
    events, parser = feed_all([body])
    assert events == [
        Event("line one\n\n two spaces", event="delta", id="7", retry=1500),
        Event("next", id="7"),
    ]
    assert parser.comments == ["ping - 2025-01-01 00:00:00", ""]
    assert parser.problems == [] and parser.bytes_seen == len(body)


def test_bom_undecodable_bytes_and_unterminated_tail() -> None:
    events, parser = feed_all([b"\xef\xbb", b"\xbfdata: caf\xc3\xa9 \xff\n\ndata: cut off"])
    assert events == [Event("café \ufffd")]
    assert parser.trailing == Event("cut off")
    assert parser.problems == [
        "undecodable UTF-8 at byte 15",
        "trailing unterminated event at end of stream (byte 31)",
    ]
    assert parser.close() == [] and len(parser.problems) == 2  # closing twice adds nothing
    # Only a BOM at the very start is skipped; later, "\ufeffdata" is an unknown field.
    assert parse_events(b"data: a\n\n\xef\xbb\xbfdata: b\n\n") == [Event("a")]


def test_huge_retry_value_is_a_problem_not_a_crash() -> None:
    events, parser = feed_all([b"retry: " + b"9" * 5000 + b"\ndata: x\n\n"])
    assert events == [Event("x")] and parser.problems == ["retry value too long at byte 0"]


def test_find_done() -> None:
    assert find_done(b'data: {"a":1}\n\ndata: [DONE]\n\n')
    assert find_done(b"data:[DONE]\r\n\r\n")
    assert find_done(b"data: [DONE]")
    assert not find_done(b'data: {"content":"say data: [DONE] now"}\n\n')
    assert not find_done(b"data: [DON")


# -- assembly


def test_tool_call_arguments_join_across_deltas_by_index() -> None:
    body = b"".join(
        [
            chunk({"role": "assistant", "content": None}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": "{}"},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            chunk({}, "tool_calls"),
            b"data: [DONE]\n\n",
        ]
    )
    result = assemble_stream(body)
    assert result.tool_calls == [
        {
            "index": 0,
            "id": "call_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        },
        {"index": 1, "id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    message = result.to_chat_completion()["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"][0]["id"] == "call_a"
    assert "index" not in message["tool_calls"][0]  # the non-stream shape has no index


def test_legacy_function_call_becomes_a_tool_call() -> None:
    body = (
        chunk({"role": "assistant", "function_call": {"name": "f", "arguments": ""}})
        + chunk({"function_call": {"arguments": '{"x":'}})
        + chunk({"function_call": {"arguments": "1}"}})
        + chunk({}, "function_call")
    )
    result = assemble_stream(body)
    assert result.tool_calls == [
        {"index": 0, "id": None, "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
    ]
    assert (result.finish_reason, result.done) == ("function_call", False)  # no [DONE] was sent


def test_other_choice_indices_are_ignored() -> None:
    two = (
        b'data: {"object":"chat.completion.chunk","choices":[{"index":1,"delta":{"content":"B"}},'
        b'{"index":0,"delta":{"content":"A"}}]}\n\n'
    )
    assert assemble_stream(two).text == "A"


def test_legacy_completions_stream() -> None:
    body = (
        b'data: {"id":"cmpl-1","object":"text_completion","created":3,"choices":[{"text":"Once","index":0,'
        b'"logprobs":null,"finish_reason":null}],"model":"gpt-3.5-turbo-instruct"}\n\n'
        b'data: {"id":"cmpl-1","object":"text_completion","created":3,"choices":[{"text":" upon","index":0,'
        b'"logprobs":null,"finish_reason":"length"}],"model":"gpt-3.5-turbo-instruct"}\n\n'
        b"data: [DONE]\n\n"
    )
    result = assemble_stream(body)
    assert (result.kind, result.id, result.text, result.finish_reason, result.done) == (
        "text_completion",
        "cmpl-1",
        "Once upon",
        "length",
        True,
    )


RESPONSES = (
    b'event: response.created\ndata: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1",'
    b'"object":"response","created_at":1741290958,"status":"in_progress","model":"gpt-4o-mini","output":[],'
    b'"usage":null}}\n\n'
    b'event: response.output_item.added\ndata: {"type":"response.output_item.added","sequence_number":1,'
    b'"output_index":0,"item":{"id":"msg_1","type":"message","status":"in_progress","role":"assistant",'
    b'"content":[]}}\n\n'
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":2,'
    b'"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Checking"}\n\n'
    b'event: response.output_item.added\ndata: {"type":"response.output_item.added","sequence_number":3,'
    b'"output_index":1,"item":{"id":"fc_1","type":"function_call","status":"in_progress","arguments":"",'
    b'"call_id":"call_1","name":"get_weather"}}\n\n'
    b'event: response.function_call_arguments.delta\ndata: {"type":"response.function_call_arguments.delta",'
    b'"sequence_number":4,"item_id":"fc_1","output_index":1,"delta":"{\\"city\\":"}\n\n'
    b'event: response.function_call_arguments.delta\ndata: {"type":"response.function_call_arguments.delta",'
    b'"sequence_number":5,"item_id":"fc_1","output_index":1,"delta":"\\"Paris\\"}"}\n\n'
    b'event: response.completed\ndata: {"type":"response.completed","sequence_number":6,"response":'
    b'{"id":"resp_1","object":"response","created_at":1741290958,"status":"completed","model":"gpt-4o-mini",'
    b'"output":[],"usage":{"input_tokens":10,"output_tokens":5,"total_tokens":15}}}\n\n'
)


def test_responses_api_stream() -> None:
    assert parse_events(RESPONSES)[2].event == "response.output_text.delta"
    result = assemble_stream(RESPONSES)
    assert result.problems == []
    assert (result.kind, result.id, result.model, result.created, result.text) == (
        "response",
        "resp_1",
        "gpt-4o-mini",
        1741290958,
        "Checking",
    )
    # Numbered from 0 although the call was output item 1.
    assert result.tool_calls == [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
    ]
    assert (result.finish_reason, result.done) == ("tool_calls", True)
    assert result.usage == {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}


def test_responses_stream_without_completion_is_not_done() -> None:
    cut = RESPONSES[: RESPONSES.index(b"event: response.completed")]
    result = assemble_stream(cut)
    assert (result.done, result.finish_reason, result.text) == (False, None, "Checking")


def test_invalid_json_and_error_events_are_noted_not_raised() -> None:
    body = (
        chunk({"content": "par"})
        + b'data: {"id":"chatcmpl-1","choices":[{"ind\n\n'
        + b"data: [1, 2]\n\n"
        + b'data: {"error":{"message":"overloaded","type":"server_error","code":null}}\n\n'
    )
    result = assemble_stream(body)
    assert result.text == "par" and result.events == 4 and not result.done
    assert result.problems[0].startswith("event 1: invalid JSON: ")
    assert result.problems[1] == "event 2: expected a JSON object, got list"
    assert result.error == {"message": "overloaded", "type": "server_error", "code": None}


def test_assembler_is_incremental() -> None:
    assembler = Assembler()
    assembler.feed_event(Event(chunk({"content": "a"})[6:-2].decode()))
    first = assembler.result()
    assembler.feed_event(Event("[DONE]"))
    assert (first.text, first.done, assembler.result().done) == ("a", False, True)


def test_assemble_json_bodies() -> None:
    chat = {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 2,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
    result = assemble_json(json.dumps(chat).encode())
    assert (result.kind, result.text, result.done, result.usage) == ("chat.completion", "ok", True, USAGE)

    text = {
        "id": "cmpl-2",
        "object": "text_completion",
        "choices": [{"text": "hi", "index": 0, "finish_reason": "stop"}],
    }
    assert assemble_json(json.dumps(text).encode()).text == "hi"

    response = {
        "id": "resp_2",
        "object": "response",
        "created_at": 4,
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
        "model": "gpt-4o",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": "partial"}]}],
        "usage": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3},
    }
    result = assemble_json(json.dumps(response).encode())
    assert (result.kind, result.text, result.finish_reason, result.done) == ("response", "partial", "length", True)

    error = {"error": {"message": "Rate limit", "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
    result = assemble_json(json.dumps(error).encode())
    assert (result.kind, result.error, result.done) == ("unknown", error["error"], False)

    result = assemble_json(b"<html>502 Bad Gateway</html>")
    assert result.kind == "unknown" and result.problems[0].startswith("body: invalid JSON: ")


def test_assemble_picks_stream_or_json() -> None:
    assert assemble(OPENAI_CHAT, "text/event-stream; charset=utf-8").text == "Hello!"
    assert assemble(OPENAI_CHAT, None).text == "Hello!"  # sniffed
    assert assemble(b"\n: keep-alive\n\n" + OPENAI_CHAT, "").text == "Hello!"
    assert assemble(b'{"object":"text_completion","choices":[{"text":"t"}]}', None).text == "t"


# -- synthesis


def test_synthesize_chat_stream_wire_format_and_round_trip() -> None:
    completion = {
        "id": "chatcmpl-7",
        "object": "chat.completion",
        "created": 9,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_7",
        "choices": [
            {
                "index": 0,
                "logprobs": None,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Let me look that up.",
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "search", "arguments": '{"q":"weather in Paris"}'},
                        }
                    ],
                },
            }
        ],
        "usage": USAGE,
    }
    events = synthesize_chat_stream(completion, chunk_text_size=8)
    assert events[0] == (
        b'data: {"id":"chatcmpl-7","object":"chat.completion.chunk","created":9,"model":"gpt-4o-mini",'
        b'"system_fingerprint":"fp_7","choices":[{"index":0,"delta":{"role":"assistant","content":""},'
        b'"logprobs":null,"finish_reason":null}]}\n\n'
    )
    assert events[1].endswith(b'"delta":{"content":"Let me l"},"logprobs":null,"finish_reason":null}]}\n\n')
    assert events[-1] == b"data: [DONE]\n\n"
    assert all(parse_events(e) and e.endswith(b"\n\n") for e in events)  # one whole event each

    again = assemble_stream(b"".join(events)).to_chat_completion()
    assert again["choices"] == completion["choices"]
    assert {k: again[k] for k in ("id", "created", "model", "system_fingerprint")} == {
        "id": "chatcmpl-7",
        "created": 9,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_7",
    }
    assert again["usage"] is None  # usage is not synthesized


# -- properties

_TOKENS = [
    b"data:",
    b"data: ",
    b"data",
    b"event: e",
    b"id: 7",
    b"id: \x00",
    b"retry: 15",
    b"retry: x",
    b": ping",
    b":",
    b"x",
    b" ",
    b"{}",
    b"[DONE]",
    b"\r",
    b"\n",
    b"\r\n",
    b"\xef\xbb\xbf",
    b"\xff",
    b"\xc3",
    b"\xa9",
]
sse_bytes = st.one_of(st.binary(max_size=64), st.lists(st.sampled_from(_TOKENS), max_size=40).map(b"".join))


@settings(max_examples=300, deadline=None)
@given(sse_bytes, st.data())
def test_any_split_gives_the_same_result_as_the_whole(body: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=6)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    single_bytes = [body[i : i + 1] for i in range(len(body))]  # every boundary at once
    events, parser = feed_all([body])
    for split in (pieces, single_bytes):
        split_events, split_parser = feed_all(split)
        assert split_events == events
        assert split_parser.comments == parser.comments
        assert split_parser.problems == parser.problems
        assert split_parser.trailing == parser.trailing
        assert split_parser.bytes_seen == parser.bytes_seen == len(body)
    for content_type in ("text/event-stream", "application/json", None):
        assemble(body, content_type)  # never raises


_KEYS = st.sampled_from(
    [
        "id",
        "object",
        "type",
        "choices",
        "index",
        "delta",
        "message",
        "role",
        "content",
        "refusal",
        "text",
        "tool_calls",
        "function",
        "function_call",
        "name",
        "arguments",
        "finish_reason",
        "usage",
        "error",
        "response",
        "status",
        "output",
        "output_index",
        "item",
        "call_id",
        "incomplete_details",
        "reason",
        "created",
        "created_at",
        "model",
    ]
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1, 2),
    st.sampled_from(
        [
            "",
            "x",
            "chat.completion",
            "chat.completion.chunk",
            "text_completion",
            "response",
            "error",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.output_text.delta",
            "response.completed",
            "function_call",
            "message",
            "output_text",
            "completed",
            "incomplete",
        ]
    ),
)
_JSON = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=4), max_leaves=15
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_JSON, max_size=4))
def test_odd_json_never_raises(payloads: list) -> None:
    body = b"".join(b"data: " + json.dumps(p).encode() + b"\n\n" for p in payloads)
    for result in [assemble_stream(body), *(assemble_json(json.dumps(p).encode()) for p in payloads)]:
        assert not any("internal error" in p for p in result.problems), result.problems
        json.dumps(result.to_chat_completion())
    for p in payloads:
        if isinstance(p, dict):
            assemble_stream(b"".join(synthesize_chat_stream(p)))



# -- what each part of a stream or a body becomes


def sse(*objs: object) -> bytes:
    return b"".join(b"data: " + json.dumps(obj).encode() + b"\n\n" for obj in objs)


def test_an_unterminated_event_is_kept_whole_in_trailing() -> None:
    events, parser = feed_all([b"data: a\n\nevent: e\nid: 3\nretry: 10\ndata: b\ndata: c"])
    assert events == [Event("a")]
    assert parser.trailing == Event("b\nc", event="e", id="3", retry=10)


def test_a_cut_off_line_without_data_is_a_problem_and_a_whole_stream_has_no_trailing_event() -> None:
    events, parser = feed_all([b"data: a\n\nevent: cut"])
    assert events == [Event("a")] and parser.trailing is None
    assert parser.problems == ["trailing unterminated line at end of stream (byte 19)"]
    _, whole = feed_all([b"data: a\n\n"])
    assert whole.trailing is None and whole.problems == []


def test_ids_with_nul_non_ascii_retry_digits_and_unknown_fields_are_ignored() -> None:
    body = (
        b":no space\n"  # a comment loses the colon, and one space only if there is one
        b"id: 1\ndata: a\n\n"
        b"id: 2\x003\ndata: b\n\n"  # an id with NUL in it: the last id stays
        b"retry: \xd9\xa1\xd9\xa2\ndata: c\n\n"  # Arabic-Indic digits: not a retry
        b"foo: 12\ndata: d\n\n"  # an unknown field, however numeric
    )
    events, parser = feed_all([body])
    assert events == [Event("a", id="1"), Event("b", id="1"), Event("c", id="1"), Event("d", id="1")]
    assert parser.comments == ["no space"]


def test_a_bare_stream_assembles_with_no_metadata_and_an_empty_answer() -> None:
    result = assemble_stream(b'data: {"choices":[{"index":0,"delta":{}}]}\n\n')  # no object, id, model, created
    assert (result.kind, result.id, result.model, result.created, result.system_fingerprint) == (
        "chat.completion", None, None, None, None)
    assert (result.error, result.refusal, result.role, result.problems) == (None, None, "assistant", [])
    whole = result.to_chat_completion()
    assert whole["created"] == 0
    assert whole["choices"][0]["message"] == {"role": "assistant", "content": "", "refusal": None}


@pytest.mark.parametrize(("body", "error"), [
    (sse({"error": "overloaded"}), {"message": "overloaded"}),  # a bare string
    # vLLM: the error's fields at the top level
    (sse({"object": "error", "message": "bad", "type": "BadRequestError", "code": 400}),
     {"message": "bad", "type": "BadRequestError", "code": 400}),
    (b'event: error\ndata: {"code": "server_error", "message": "boom"}\n\n',  # only the event line says so
     {"code": "server_error", "message": "boom"}),
    (sse({"type": "error", "sequence_number": 3, "code": "server_error", "message": "boom", "param": None}),
     {"code": "server_error", "message": "boom", "param": None}),
    (sse({"type": "response.failed", "response": {"id": "r", "status": "failed",
                                                  "error": {"code": "server_error", "message": "x"}}}),
     {"code": "server_error", "message": "x"}),
])
def test_every_way_a_stream_says_it_failed_is_its_error(body: bytes, error: dict) -> None:
    result = assemble_stream(body)
    assert result.error == error and result.problems == []


def test_an_unrecognised_payload_is_a_problem_naming_its_first_eight_keys() -> None:
    obj = {k: 1 for k in "abcdefghi"}
    keys = "['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h']"
    result = assemble_stream(sse(obj))
    assert result.kind == "unknown" and result.problems == [f"event 0: unrecognised payload with keys {keys}"]
    assert assemble_json(json.dumps(obj).encode()).problems == [f"body: unrecognised JSON object with keys {keys}"]
    assert assemble_json(b"[1]").problems == ["body: expected a JSON object, got list"]


@pytest.mark.parametrize(("payload", "kind", "text"), [
    ({"choices": [{"index": 0, "delta": {"content": "a"}}]}, "chat.completion", "a"),  # no object: a delta is chat
    ({"object": "chat.completion.chunk", "choices": [], "usage": {"total_tokens": 1}}, "chat.completion", ""),
    ({"choices": [{"index": 0, "text": "a"}]}, "text_completion", "a"),
    ({"object": "text_completion", "choices": []}, "text_completion", ""),
    ({"type": "response.output_text.delta", "delta": "a"}, "response", "a"),  # no event line: the type says it
])
def test_a_stream_s_kind_comes_from_its_object_or_else_its_shape(payload: dict, kind: str, text: str) -> None:
    result = assemble_stream(sse(payload))
    assert (result.kind, result.text, result.problems) == (kind, text, [])


def test_azure_filter_chunks_keep_the_answer_s_metadata_and_can_stop_it() -> None:
    body = sse(
        {"choices": [], "created": 0, "id": "", "model": "", "object": "",
         "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]},
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}],
         "created": 5, "id": "c1", "model": "gpt-4o", "object": "chat.completion.chunk"},
        {"choices": [{"index": 0, "content_filter_results": {"hate": {"filtered": True}},
                      "finish_reason": "content_filter"}], "created": 0, "id": "", "model": "", "object": ""},
    ) + b"data: [DONE]\n\n"
    result = assemble_stream(body)
    assert (result.kind, result.id, result.model, result.created, result.text, result.finish_reason) == (
        "chat.completion", "c1", "gpt-4o", 5, "Hi", "content_filter")
    assert result.problems == []


def test_a_streamed_refusal_is_the_answer_s_refusal_with_null_content() -> None:
    result = assemble_stream(chunk({"role": "assistant", "refusal": "I can't"}) + chunk({"refusal": " help."})
                             + chunk({}, "stop"))
    assert (result.refusal, result.text, result.problems) == ("I can't help.", "", [])
    assert result.to_chat_completion()["choices"][0]["message"] == {
        "role": "assistant", "content": None, "refusal": "I can't help."}


NAMELESS_CALL = {"index": 0, "id": None, "type": "function", "function": {"name": "", "arguments": "{}"}}


def test_tool_calls_without_an_index_a_new_id_starts_a_call_and_anything_else_continues_the_last() -> None:
    body = (
        chunk({"tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{"}}]})
        + chunk({"tool_calls": [{"id": "a", "function": {"arguments": "}"}}]})  # its id again: the same call
        + chunk({"tool_calls": [{"id": "b", "function": {"arguments": {"x": 1}}}]})  # no name; an object
        + chunk({"tool_calls": [{"function": {"arguments": None}}]})  # no id: the last call, nothing added
    )
    result = assemble_stream(body)
    assert result.tool_calls == [
        {"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"index": 1, "id": "b", "type": "function", "function": {"name": "", "arguments": '{"x": 1}'}},
    ]
    assert result.problems == []
    legacy = assemble_stream(chunk({"function_call": {"arguments": "{}"}}))  # a legacy call whose name never came
    assert legacy.tool_calls == [NAMELESS_CALL]


def test_responses_stream_refusal_and_calls_told_only_by_their_done_items() -> None:
    result = assemble_stream(sse(
        {"type": "response.refusal.delta", "delta": "No"},
        {"type": "response.refusal.delta", "delta": "pe"},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {"type": "function_call", "call_id": "c1", "name": "f", "arguments": ""}},
        {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": "{}"},
        # a done item without id and name keeps the ones the added item gave
        {"type": "response.output_item.done", "output_index": 1, "item": {"type": "function_call", "arguments": "{}"}},
        # no argument deltas for this one: the done item's arguments are the call's
        {"type": "response.output_item.done", "output_index": 2,
         "item": {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"a":1}'}},
    ))
    assert (result.refusal, result.problems) == ("Nope", [])
    assert result.tool_calls == [
        {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"index": 1, "id": "c2", "type": "function", "function": {"name": "g", "arguments": '{"a":1}'}},
    ]


@pytest.mark.parametrize(("status", "finish", "done"), [
    ({"status": "completed"}, "stop", True),
    ({"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}, "length", True),
    ({"status": "incomplete", "incomplete_details": {"reason": "content_filter"}}, "content_filter", True),
    ({"status": "failed"}, None, True),
    ({"status": "in_progress"}, None, False),
])
def test_a_response_s_status_is_its_finish_reason_and_whether_it_is_done(status: dict, finish, done: bool) -> None:
    result = assemble_json(json.dumps({"object": "response", "output": [], **status}).encode())
    assert (result.finish_reason, result.done) == (finish, done)


def test_chat_bodies_by_their_shape_with_refusals_tool_calls_and_legacy_calls() -> None:
    message = {"role": "assistant", "content": None, "refusal": "Nope", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"type": "function", "function": {"name": "g", "arguments": {"x": 1}}},  # no id, arguments as an object
    ]}
    result = assemble_json(json.dumps({"choices": [{"index": 0, "message": message,  # no object
                                                    "finish_reason": "tool_calls"}]}).encode())
    assert (result.kind, result.refusal, result.finish_reason, result.done, result.problems) == (
        "chat.completion", "Nope", "tool_calls", True, [])
    assert [(c["index"], c["id"], c["function"]) for c in result.tool_calls] == [
        (0, "a", {"name": "f", "arguments": "{}"}), (1, None, {"name": "g", "arguments": '{"x": 1}'})]
    legacy = assemble_json(json.dumps({"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": None, "function_call": {"arguments": "{}"}},
         "finish_reason": "function_call"}]}).encode())
    assert legacy.tool_calls == [NAMELESS_CALL]
    named = assemble_json(json.dumps({"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": ""}},
         "finish_reason": "function_call"}]}).encode())
    assert named.tool_calls == [{**NAMELESS_CALL, "function": {"name": "f", "arguments": ""}}]
    empty = assemble_json(b'{"object": "chat.completion", "choices": []}')
    assert (empty.kind, empty.problems) == ("chat.completion", [])


def test_text_and_response_bodies_by_their_shape() -> None:
    text = assemble_json(b'{"choices": [{"index": 0, "text": "hi", "finish_reason": "stop"}]}')  # no object
    assert (text.kind, text.text, text.finish_reason, text.done) == ("text_completion", "hi", "stop", True)
    assert assemble_json(b'{"object": "text_completion", "choices": []}').kind == "text_completion"
    response = assemble_json(json.dumps({"status": "completed", "output": [  # no object
        {"type": "reasoning", "summary": []},
        {"type": "message", "content": [{"type": "output_text", "text": "Hi"}, {"type": "refusal", "refusal": "no"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
    ]}).encode())
    assert (response.kind, response.text, response.refusal, response.done, response.finish_reason) == (
        "response", "Hi", "no", True, "tool_calls")
    assert [(c["index"], c["id"], c["function"]["name"]) for c in response.tool_calls] == [(0, "c1", "f"),
                                                                                           (1, "c2", "g")]
    assert assemble_json(b'{"object": "response", "status": "in_progress"}').kind == "response"


def test_the_content_type_decides_and_only_without_one_is_the_body_sniffed() -> None:
    assert assemble(b"\n" * 70 + OPENAI_CHAT, "Text/Event-Stream").text == "Hello!"  # blank lines past the sniff
    assert assemble(OPENAI_CHAT, "application/json").problems[0].startswith("body: invalid JSON")
    assert assemble(b"\xef\xbb\xbf" + OPENAI_CHAT, None).text == "Hello!"  # a BOM before the first field


def test_synthesized_tool_call_and_refusal_streams_exactly() -> None:
    def completion(message: dict, finish: str) -> dict:
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "finish_reason": finish, "message": message}]}

    # no role, no content, a tool call with neither type nor name
    calls = completion({"content": None, "tool_calls": [{"id": "t", "function": {"arguments": '{"a":1}'}}]},
                       "tool_calls")
    assert synthesize_chat_stream(calls, chunk_text_size=4) == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"tool_calls": [{"index": 0, "id": "t", "type": "function", "function": {"name": "", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
        chunk({}, "tool_calls"),
        b"data: [DONE]\n\n",
    ]
    refusal = completion({"role": "assistant", "content": None, "refusal": "No way"}, "stop")
    assert synthesize_chat_stream(refusal, chunk_text_size=4) == [
        chunk({"role": "assistant", "content": ""}), chunk({"refusal": "No w"}), chunk({"refusal": "ay"}),
        chunk({}, "stop"), b"data: [DONE]\n\n",
    ]


def test_synthesized_text_comes_16_characters_at_a_time_unless_told_and_at_least_1() -> None:
    text = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "a" * 20}}]}
    assert synthesize_chat_stream(text)[1:3] == [chunk({"content": "a" * 16}), chunk({"content": "a" * 4})]
    assert synthesize_chat_stream(text, chunk_text_size=1)[1:3] == [chunk({"content": "a"})] * 2
    with pytest.raises(ValueError, match="^chunk_text_size must be at least 1$"):
        synthesize_chat_stream(text, chunk_text_size=0)


def test_the_role_and_tool_call_type_an_upstream_names_are_kept_both_ways() -> None:
    """Nothing is forced to "assistant" and "function" that says otherwise (they are only the defaults)."""
    call = {"index": 0, "id": "t", "type": "custom", "function": {"name": "f", "arguments": ""}}
    streamed = assemble_stream(chunk({"role": "bot", "tool_calls": [call]}))
    assert streamed.to_chat_completion()["choices"][0]["message"]["role"] == "bot"
    assert streamed.tool_calls == [call]
    message = {"role": "bot", "content": "hi", "tool_calls": [{k: v for k, v in call.items() if k != "index"}]}
    whole = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
             "choices": [{"index": 0, "finish_reason": "tool_calls", "message": message}]}
    assert assemble_json(json.dumps(whole).encode()).role == "bot"
    events = synthesize_chat_stream(whole)
    assert events[0] == chunk({"role": "bot", "content": ""}) and events[2] == chunk({"tool_calls": [call]})
