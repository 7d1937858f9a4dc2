"""The guard's checks alone, fed the items a client yields (parsed wire events as dicts, or the SDKs' own
objects): what each dialect counts as a whole stream, and the words TruncatedStream says when one was not."""

from __future__ import annotations

from typing import Any

import pytest
from anthropic.types import ErrorResponse, RawMessageStreamEvent
from ollama import ChatResponse
from openai.types.chat import ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter

from streamreplay.dialects import dialect_named
from streamreplay.guard.check import (
    CHECKS,
    AnthropicCheck,
    ChatCheck,
    OllamaCheck,
    ResponsesCheck,
    StreamCheck,
    TruncatedStream,
    check_for,
    field,
)
from streamreplay.guard.cutoffs import Unnoticed, _call, cutoffs, unnoticed_cutoffs


def chunk(content: str | None = None, finish: str | None = None, index: int | None = 0, **extra: Any) -> dict:
    """A chat.completion.chunk as the wire carries it, parsed."""
    delta = {} if content is None else {"content": content}
    return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}], **extra}


def sdk(item: dict[str, Any]) -> ChatCompletionChunk:
    return ChatCompletionChunk.model_validate(item)


def fed(check: StreamCheck, *items: Any) -> StreamCheck:
    for item in items:
        check.item(item)
    return check


# -- the exception


def test_truncated_stream_says_the_dialect_what_was_missing_and_how_much_came():
    exc = TruncatedStream("anthropic", "no message_stop after the stop_reason", 7, 42, 1.234)
    assert str(exc) == ("anthropic stream truncated: no message_stop after the stop_reason (7 chunks, "
                        "42 characters of text, 1.23 s)")
    assert (exc.dialect, exc.missing, exc.chunks, exc.chars, exc.elapsed_s) == (
        "anthropic", "no message_stop after the stop_reason", 7, 42, 1.234)


def test_field_reads_a_dict_key_or_an_attribute_and_none_for_neither():
    assert field({"type": "x"}, "type") == "x"
    assert field(sdk(chunk("a")), "model") == "m"
    assert field({"type": "x"}, "delta") is None
    assert field(sdk(chunk("a")), "nope") is None
    assert field(None, "type") is None


def test_the_verdict_is_none_for_a_whole_stream_and_the_exception_for_a_cut_one():
    check = fed(check_for("chat"), chunk("Hello"), chunk(", world"))
    exc = check.verdict()
    assert isinstance(exc, TruncatedStream)
    assert (exc.dialect, exc.missing, exc.chunks, exc.chars) == (
        "chat", "no finish_reason for choice 0, no [DONE]", 2, 12)
    assert 0 <= exc.elapsed_s < 5
    check.item(chunk(None, "stop"))
    check.terminal()
    assert check.verdict() is None


@pytest.mark.parametrize("shape", [dict, sdk], ids=["wire", "sdk"])
def test_a_cut_stream_s_chunks_and_text_are_counted_alike_from_wire_dicts_and_sdk_chunks(shape):
    """`TruncatedStream` names how much came: the SDK's chunk objects take their own path through the
    check, and must count as the parsed wire events do."""
    items = [chunk("Hel"), chunk("lo"), chunk(None, index=1), chunk(", world")]
    exc = fed(check_for("chat", expect_done=False), *map(shape, items)).verdict()
    assert isinstance(exc, TruncatedStream)
    assert (exc.missing, exc.chunks, exc.chars) == ("no finish_reason for choice 0, 1", 4, 12)


def test_the_base_check_leaves_each_dialect_to_say_what_whole_is():
    base = StreamCheck()
    assert (base.chunks, base.chars, base.error) == (0, 0, None)
    base.terminal()  # a no-op: only chat's wire has a marker no item shows
    with pytest.raises(NotImplementedError):
        base.item({})
    with pytest.raises(NotImplementedError):
        _ = base.ended
    with pytest.raises(NotImplementedError):
        base.missing()


# -- chat


@pytest.mark.parametrize("as_sdk", [False, True], ids=["wire", "sdk"])
def test_a_chat_stream_is_whole_with_a_finish_reason_and_done(as_sdk: bool):
    items = [chunk("Hi"), chunk(" there"), chunk(None, "stop")]
    check = fed(check_for("chat"), *[sdk(i) if as_sdk else i for i in items])
    assert (check.chunks, check.chars, check.ended) == (3, 8, False)
    assert check.missing() == "no [DONE] after the last chunk"
    check.terminal()
    assert (check.ended, check.missing()) == (True, None)


@pytest.mark.parametrize("as_sdk", [False, True], ids=["wire", "sdk"])
def test_every_choice_that_appeared_needs_its_own_finish_reason(as_sdk: bool):
    items = [chunk("a", index=0), chunk("b", index=3), chunk("c", index=1), chunk(None, "stop", index=0)]
    check = fed(check_for("chat"), *[sdk(i) if as_sdk else i for i in items])
    assert check.missing() == "no finish_reason for choice 1, 3, no [DONE]"
    check.terminal()
    assert check.missing() == "no finish_reason for choice 1, 3"
    fed(check, *[sdk(i) if as_sdk else i for i in (chunk(None, "length", index=3), chunk(None, "stop", index=1))])
    assert check.missing() is None


@pytest.mark.parametrize("as_sdk", [False, True], ids=["wire", "sdk"])
def test_a_chat_stream_without_any_finish_reason_names_choice_0(as_sdk: bool):
    usage_only = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
                  "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
    check = fed(check_for("chat"), sdk(usage_only) if as_sdk else usage_only)
    assert (check.chunks, check.chars) == (1, 0)
    assert check.missing() == "no finish_reason for choice 0, no [DONE]"
    assert check_for("chat").missing() == "no finish_reason for choice 0, no [DONE]"


@pytest.mark.parametrize("as_sdk", [False, True], ids=["wire", "sdk"])
def test_a_choice_without_an_index_is_choice_0(as_sdk: bool):
    items: list[Any] = [chunk("a", index=None), chunk(None, "stop", index=0)]
    if as_sdk:  # some OpenAI-compatible servers leave the index out; the SDK builds the chunk anyway
        first = Choice.model_construct(index=None, delta=ChoiceDelta(content="a"), finish_reason=None)
        items = [ChatCompletionChunk.model_construct(choices=[first]), sdk(items[1])]
    check = fed(check_for("chat"), *items)
    check.terminal()
    assert (check.missing(), check.seen, check.chars) == (None, {0}, 1)


def test_a_server_known_to_omit_done_is_whole_with_finish_reasons_alone():
    check = fed(check_for("chat", expect_done=False), chunk("a"))
    assert check.missing() == "no finish_reason for choice 0"
    check.item(chunk(None, "stop"))
    assert (check.missing(), check.ended) == (None, False)
    assert check_for("azure", expect_done=False).expect_done is False
    assert check_for("azure").expect_done is True


def test_an_empty_finish_reason_is_no_finish_reason():
    check = fed(check_for("chat"), chunk("a", ""))
    check.terminal()
    assert check.missing() == "no finish_reason for choice 0"


def test_chat_counts_only_text_content_and_skips_what_is_not_a_choice():
    check = fed(check_for("chat"),
                {"choices": ["junk", {"index": 0, "delta": "junk"}, {"index": 0, "delta": {"content": 5}}]},
                {"choices": None}, {"choices": [{"index": 0, "delta": {"content": "héllo"}, "finish_reason": "stop"}]})
    assert (check.chunks, check.chars, check.seen, check.finished) == (3, 5, {0}, {0})
    sdk_check = fed(check_for("chat"), sdk(chunk(None)), sdk({**chunk(""), "choices": []}))
    assert (sdk_check.chunks, sdk_check.chars) == (2, 0)


@pytest.mark.parametrize(("error", "said"), [
    ({"message": "The server had an error", "type": "server_error"}, "The server had an error"),
    ({"type": "server_error"}, "{'type': 'server_error'}"),
    ("overloaded", "overloaded"),
])
def test_a_chat_error_event_is_never_whole(error: Any, said: str):
    check = fed(check_for("chat"), chunk("a", "stop"), {"error": error})
    check.terminal()
    assert check.missing() == f"an error event ({said})"
    assert fed(check_for("chat"), {"error": None, "choices": []}).error is None


# -- responses


RESPONSE_EVENTS = TypeAdapter(ResponseStreamEvent)


def responses_item(as_sdk: bool, obj: dict[str, Any]) -> Any:
    return RESPONSE_EVENTS.validate_python(obj) if as_sdk else obj


def response(status: str, **extra: Any) -> dict[str, Any]:
    return {"id": "r", "object": "response", "created_at": 1, "model": "m", "output": [], "parallel_tool_calls": True,
            "tool_choice": "auto", "tools": [], "status": status, **extra}


def text_delta(text: str, n: int) -> dict[str, Any]:
    return {"type": "response.output_text.delta", "sequence_number": n, "item_id": "m", "output_index": 0,
            "content_index": 0, "delta": text, "logprobs": []}


@pytest.mark.parametrize("as_sdk", [False, True], ids=["wire", "sdk"])
@pytest.mark.parametrize("end", ["response.completed", "response.incomplete"])
def test_a_responses_stream_is_whole_when_completed_or_cut_by_its_own_limit(as_sdk: bool, end: str):
    check = fed(check_for("responses"), responses_item(as_sdk, text_delta("Hello", 0)),
                responses_item(as_sdk, text_delta(" you", 1)))
    assert (check.chunks, check.chars, check.ended, check.missing()) == (2, 9, False, "no response.completed")
    status = "completed" if end == "response.completed" else "incomplete"
    check.item(responses_item(as_sdk, {"type": end, "sequence_number": 2, "response": response(status)}))
    assert (check.chunks, check.ended, check.missing()) == (3, True, None)


@pytest.mark.parametrize("as_sdk", [False, True], ids=["wire", "sdk"])
def test_a_failed_response_or_an_error_event_is_never_whole(as_sdk: bool):
    failed = {"type": "response.failed", "sequence_number": 1,
              "response": response("failed", error={"code": "server_error", "message": "The model failed"})}
    check = fed(check_for("responses"), responses_item(as_sdk, failed))
    assert check.ended
    assert check.missing() == "an error event (The model failed)"
    error = {"type": "error", "sequence_number": 1, "code": "server_error", "message": "boom", "param": None}
    check = fed(check_for("responses"), responses_item(as_sdk, text_delta("a", 0)), responses_item(as_sdk, error))
    assert (check.ended, check.missing()) == (True, "an error event (boom)")


def test_a_responses_error_without_a_message_is_named_by_its_type():
    assert fed(check_for("responses"), {"type": "error"}).missing() == "an error event (error)"
    assert fed(check_for("responses"), {"type": "response.failed", "response": {}}).missing() == (
        "an error event (response.failed)")
    assert fed(check_for("responses"), {"type": "response.failed", "response": {"error": "quota"}}).missing() == (
        "an error event (quota)")


def test_an_error_after_the_end_still_makes_a_responses_stream_not_whole():
    check = fed(check_for("responses"), {"type": "response.completed"}, {"type": "error", "message": "late"})
    assert check.missing() == "an error event (late)"


def test_responses_counts_only_output_text_deltas():
    check = fed(check_for("responses"), {"type": "response.function_call_arguments.delta", "delta": "{}"},
                {"type": "response.refusal.delta", "delta": "no"}, {"type": "response.output_text.delta"},
                {"type": "response.output_text.delta", "delta": "abc"})
    assert (check.chunks, check.chars) == (4, 3)


# -- anthropic


ANTHROPIC_EVENTS = TypeAdapter(RawMessageStreamEvent)
MESSAGE_START = {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude", "stop_reason": None,
    "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 1}}}


def message_delta(stop_reason: str | None) -> dict[str, Any]:
    return {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": 18}}


def anthropic_item(as_sdk: bool, obj: dict[str, Any]) -> Any:
    return ANTHROPIC_EVENTS.validate_python(obj) if as_sdk else obj


@pytest.mark.parametrize("as_sdk", [False, True], ids=["wire", "sdk"])
def test_an_anthropic_stream_is_whole_with_a_stop_reason_then_message_stop(as_sdk: bool):
    items = [MESSAGE_START,
             {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
             {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Paris"}},
             {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
             {"type": "content_block_stop", "index": 0}]
    check = fed(check_for("anthropic"), *[anthropic_item(as_sdk, i) for i in items])
    assert (check.chunks, check.chars, check.ended) == (5, 5, False)
    assert check.missing() == "no stop_reason, no message_stop"
    check.item(anthropic_item(as_sdk, message_delta("max_tokens")))
    assert (check.ended, check.missing()) == (False, "no message_stop after the stop_reason")
    check.item(anthropic_item(as_sdk, {"type": "message_stop"}))
    assert (check.ended, check.missing()) == (True, None)


def test_a_later_message_delta_without_a_stop_reason_keeps_the_earlier_one():
    check = fed(check_for("anthropic"), message_delta("end_turn"), message_delta(None), {"type": "message_stop"})
    assert (check.stop_reason, check.missing()) == ("end_turn", None)


def test_message_stop_without_a_stop_reason_is_not_whole():
    check = fed(check_for("anthropic"), message_delta(None), {"type": "message_stop"})
    assert (check.ended, check.missing()) == (True, "no stop_reason")


@pytest.mark.parametrize("as_sdk", [False, True], ids=["wire", "sdk"])
def test_an_anthropic_error_event_is_never_whole(as_sdk: bool):
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    check = fed(check_for("anthropic"), message_delta("end_turn"), {"type": "message_stop"})
    # the anthropic SDK raises on an error event rather than yielding one; ErrorResponse is the object it parses
    check.item(ErrorResponse.model_validate(error) if as_sdk else error)
    assert (check.ended, check.missing()) == (True, "an error event (Overloaded)")
    assert fed(check_for("anthropic"), {"type": "error"}).missing() == "an error event (an error event)"


# -- ollama


def ollama_line(content: str, done: Any = False, **extra: Any) -> dict[str, Any]:
    return {"model": "smollm2", "created_at": "2024-11-19T07:06:40.512346Z",
            "message": {"role": "assistant", "content": content}, "done": done, **extra}


@pytest.mark.parametrize("as_sdk", [False, True], ids=["wire", "sdk"])
def test_an_ollama_stream_is_whole_with_a_done_true_line(as_sdk: bool):
    lines = [ollama_line("The "), ollama_line("capital")]
    check = fed(check_for("ollama"), *[ChatResponse.model_validate(li) if as_sdk else li for li in lines])
    assert (check.chunks, check.chars, check.ended, check.missing()) == (2, 11, False, "no line with done: true")
    last = ollama_line("", True, done_reason="length", eval_count=18)
    check.item(ChatResponse.model_validate(last) if as_sdk else last)
    assert (check.chunks, check.ended, check.missing()) == (3, True, None)


def test_only_done_true_itself_ends_an_ollama_stream():
    check = fed(check_for("ollama"), ollama_line("a", "true"), ollama_line("b", 1), {"response": "c", "done": None})
    assert (check.done, check.chars, check.missing()) == (False, 2, "no line with done: true")


def test_an_ollama_error_line_is_never_whole():
    check = fed(check_for("ollama"), ollama_line("a", True), {"error": "model not found"})
    assert (check.ended, check.missing()) == (True, "an error line (model not found)")
    check = fed(check_for("ollama"), {"error": {"message": "out of memory"}})
    assert (check.ended, check.missing()) == (True, "an error line (out of memory)")
    assert fed(check_for("ollama"), {"error": None, "done": True}).missing() is None


def test_ollama_counts_message_content_only():
    check = fed(check_for("ollama"), {"message": {"content": 5}}, {"message": None}, {"message": {"content": "ab"}})
    assert (check.chunks, check.chars) == (3, 2)


# -- the registry


def test_each_dialect_has_its_check_and_azure_speaks_chat():
    assert {"chat": ChatCheck, "azure": ChatCheck, "responses": ResponsesCheck,
                      "anthropic": AnthropicCheck, "ollama": OllamaCheck} == CHECKS
    for name, kind in CHECKS.items():
        check = check_for(name)
        assert type(check) is kind and check.dialect == ("chat" if name == "azure" else name)
        assert (check.chunks, check.chars, check.error) == (0, 0, None)


def test_an_unknown_dialect_has_no_check():
    with pytest.raises(ValueError, match=r"^no stream check for dialect 'grpc' \(known: chat, azure, responses, "
                                         r"anthropic, ollama\)$"):
        check_for("grpc")


def test_a_chat_check_built_directly_expects_done():
    check = fed(ChatCheck(), chunk("a", "stop"))
    assert (check.expect_done, check.missing()) == (True, "no [DONE] after the last chunk")


def test_a_choice_after_one_that_is_not_an_object_still_counts():
    choice = {"index": 1, "delta": {"content": "ab"}, "finish_reason": "stop"}
    check = fed(check_for("chat"), {"choices": ["junk", choice]})
    assert (check.seen, check.finished, check.chars) == ({1}, {1}, 2)


# -- "does my app notice?": the cutoffs and the runs that took them silently


@pytest.mark.parametrize(("dialect", "chunks", "specs"), [
    ("chat", 10, ["drop-done", "drop-finish", "cut:chunk=5", "close:chunk=5", "reset:chunk=5"]),
    ("azure", 7, ["drop-done", "drop-finish", "cut:chunk=3", "close:chunk=3", "reset:chunk=3"]),
    ("anthropic", 3, ["drop-done", "drop-finish", "cut:chunk=1", "close:chunk=1", "reset:chunk=1"]),
    # a Responses or Ollama stream is whole without a stop field, so dropping it is no cutoff
    ("responses", 26, ["drop-done", "cut:chunk=13", "close:chunk=13", "reset:chunk=13"]),
    ("ollama", 1, ["drop-done", "cut:chunk=1", "close:chunk=1", "reset:chunk=1"]),
    ("chat", 0, ["drop-done", "drop-finish", "cut:chunk=1", "close:chunk=1", "reset:chunk=1"]),
    ("chat", 2, ["drop-done", "drop-finish", "cut:chunk=1", "close:chunk=1", "reset:chunk=1"]),
])
def test_the_cutoffs_of_a_dialect_end_its_stream_mid_answer(dialect: str, chunks: int, specs: list[str]):
    assert cutoffs(dialect_named(dialect), chunks) == specs


def test_an_unnoticed_cutoff_shows_what_the_app_returned_in_at_most_80_characters():
    assert str(Unnoticed("drop-done", "Paris")) == "drop-done: returned 'Paris' without an error"
    assert str(Unnoticed("cut:chunk=3", "x" * 78)) == f"cut:chunk=3: returned '{'x' * 78}' without an error"
    assert str(Unnoticed("cut:chunk=3", "x" * 79)) == f"cut:chunk=3: returned '{'x' * 76}... without an error"
    assert Unnoticed("drop-done", None).returned is None


def test_only_the_runs_that_returned_normally_are_unnoticed():
    seen: list[str] = []

    def app(base_url: str) -> str:
        seen.append(base_url)
        if "cut" in base_url:
            raise TruncatedStream("chat", "no [DONE] after the last chunk", 3, 10, 0.1)
        return f"answer from {base_url}"

    missed = unnoticed_cutoffs(lambda spec: f"http://replay/{spec}/v1", app, ["drop-done", "cut:chunk=2", "reset"])
    assert seen == ["http://replay/drop-done/v1", "http://replay/cut:chunk=2/v1", "http://replay/reset/v1"]
    assert missed == [Unnoticed("drop-done", "answer from http://replay/drop-done/v1"),
                      Unnoticed("reset", "answer from http://replay/reset/v1")]


async def test_an_async_app_is_run_to_its_end_even_from_a_running_loop():
    async def app(base_url: str) -> str:
        if base_url.endswith("close"):
            raise ConnectionError("closed early")
        return base_url.upper()

    assert unnoticed_cutoffs(lambda spec: spec, app, ["drop-done", "close"]) == [Unnoticed("drop-done", "DROP-DONE")]


def test_an_async_app_s_error_reaches_the_caller_as_its_own():
    async def app(base_url: str) -> str:
        raise TruncatedStream("ollama", "no line with done: true", 1, 2, 0.0)

    with pytest.raises(TruncatedStream, match="no line with done: true"):
        _call(app, "u")
    assert _call(lambda url: url + "!", "u") == "u!"
