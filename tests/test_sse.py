import json

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
