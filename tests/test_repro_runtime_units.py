"""What a generated repro.py prints about the replayed stream (streamreplay.repro_runtime.report): how it ended,
and where, told from the replay server's record of the request.

tests/test_repro.py runs whole scripts against real replays; at speed 0 their clients read every byte before
they close, so these pin the report's other branches: a client that left early, or only after [DONE]."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from streamreplay.clients import Outcome
from streamreplay.replay import Replayed, ReplayServer
from streamreplay.repro_runtime import REFERENCE_CLIENTS, report, run_reference
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import chat, chat_chunk, record, until


@dataclass
class _Server:
    """The one thing `report` reads of a ReplayServer: its records of the requests it answered."""
    requests: list[Replayed] = field(default_factory=list)


def _ending(rec: Replayed | None) -> list[str]:
    text = report("openai", Outcome("Hello"), _Server([rec] if rec else []), wait=0.0)
    return [line for line in text.splitlines() if line.startswith(("ending", "ended at"))]


def _chat(**fields) -> Replayed:
    fields = {"ending": "clean", **fields}
    return Replayed(1, "POST", "/chat/completions", exchange_id=7, status=200, total=10, **fields)


def test_a_client_that_left_after_done_was_delivered_is_a_clean_ending_not_a_client_that_left():
    # the openai SDK stops at [DONE] and closes: the bytes after it are not a cutoff
    rec = _chat(delivered=9, client_left_at_chunk=9, client_left_ns=120_000_000, done_delivered=True)
    assert _ending(rec) == ["ending     clean", "ended at   chunk 9 of 10"]


def test_a_client_that_left_before_done_is_named_with_the_chunk_and_time_it_left_at():
    rec = _chat(delivered=3, client_left_at_chunk=3, client_left_ns=250_000_000, applied=["cut:chunk=5"])
    assert _ending(rec) == ["ending     the client left (the replay was to end clean) [cut:chunk=5]",
                            "ended at   chunk 3 of 10, 0.250 s in"]


def test_a_stream_read_to_its_end_says_how_the_replay_ended_it():
    assert _ending(_chat(delivered=10, ending="reset", applied=["reset:chunk=10"])) == [
        "ending     reset [reset:chunk=10]", "ended at   chunk 10 of 10"]


def test_no_request_and_a_miss_are_said_as_such():
    assert _ending(None) == ["ending     no request reached the replay"]
    miss = Replayed(1, "POST", "/chat/completions", status=404, ending="miss", miss="no recording matches")
    assert _ending(miss) == ["ending     miss: no recording matches"]


def test_the_report_says_which_client_ran_what_text_it_got_how_it_finished_and_its_error():
    got = Outcome("Hello", finish_reason="stop", error="APIConnectionError: gone")
    head = report("openai-async", got, _Server([_chat(delivered=10)]), wait=0.0).splitlines()[:4]
    assert head == ["client     openai-async", "text       'Hello'", "finish     stop",
                    "error      APIConnectionError: gone"]


def test_an_unknown_reference_client_is_refused_with_the_ones_there_are():
    assert "http" in REFERENCE_CLIENTS and "openai-async" in REFERENCE_CLIENTS and "openai-sync" in REFERENCE_CLIENTS
    with pytest.raises(ValueError, match=r"unknown reference client 'curl': .*openai-async.*http"):
        run_reference("curl", "http://127.0.0.1:9/v1", {"messages": []})


def _upstream(body: bytes, content_type: str) -> ScriptedUpstream:
    """An upstream that answers every request with `body` in one write; `sent` keeps each request."""
    return ScriptedUpstream(Script(raw=[body], content_type=content_type))


def test_plain_http_reads_a_stream_to_its_end_and_a_whole_answer():
    stream = (chat_chunk({"role": "assistant", "content": ""}) + b": a comment\n\n" + chat_chunk({"content": "Hel"})
              + chat_chunk({"content": "lo"}) + chat_chunk({}, finish="stop") + b"data: [DONE]\n\n")
    with _upstream(stream, "text/event-stream") as upstream:
        request = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
        got = run_reference("http", upstream.base_url, request, timeout=5)
    assert (got.text, got.finish_reason, got.error) == ("Hello", "stop", None)
    whole = json.dumps({"choices": [{"message": {"content": None}, "finish_reason": "length"}]}).encode()
    with _upstream(whole, "application/json") as upstream:
        got = run_reference("http", upstream.base_url, {"messages": [], "stream": False}, timeout=5)
    assert (got.text, got.finish_reason, got.error) == ("", "length", None)
    got = run_reference("http", "http://127.0.0.1:9/v1", {"messages": [], "stream": True}, timeout=5)
    assert got.error and got.text == ""  # what the app sees: the error, no traceback


def test_plain_http_keeps_the_finish_reason_past_a_usage_chunk_after_it():
    """With `stream_options.include_usage` the API sends one more chunk after the finish: `choices` empty,
    the usage alone. The report still says how the answer finished."""
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}\n\n'
    stream = chat_chunk({"content": "Hi"}) + chat_chunk({}, finish="stop") + usage + b"data: [DONE]\n\n"
    with _upstream(stream, "text/event-stream") as upstream:
        got = run_reference("http", upstream.base_url, {"messages": [], "stream": True}, timeout=5)
    assert (got.text, got.finish_reason, got.error) == ("Hi", "stop", None)


def test_the_report_waits_for_a_replay_still_in_flight_but_not_past_its_wait():
    in_flight = _chat(delivered=4)
    start = time.monotonic()
    lines = report("openai", Outcome("Hel"), _Server([in_flight]), wait=0.3).splitlines()
    assert 0.25 <= time.monotonic() - start < 1.5  # its wait, not the 2 s default nor for ever
    assert lines[-1] == "ended at   chunk 4 of 10"
    start = time.monotonic()
    report("openai", Outcome("Hello"), _Server([_chat(delivered=10)]), wait=5.0)
    assert time.monotonic() - start < 2  # an ended one is reported at once, not after its 5 s wait


def test_plain_http_posts_the_recorded_request_as_json_and_reads_data_lines_with_no_space():
    stream = b'data:{"choices": [{"delta": {"content": "Hi"}, "finish_reason": "stop"}]}\n\ndata:[DONE]\n\n'
    request = {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True}
    with _upstream(stream, "text/event-stream") as upstream:
        got = run_reference("http", upstream.base_url, request, timeout=5)
    assert (got.text, got.finish_reason, got.error) == ("Hi", "stop", None)
    # a POST: the upstream answers only POSTs on its API paths (anything else is echoed, not kept in `sent`)
    assert [(s.path, s.headers["content-type"], s.request) for s in upstream.sent] == [
        ("/v1/chat/completions", "application/json", request)]
    refused = run_reference("http", "http://127.0.0.1:9/v1", request, timeout=5)
    assert "URLError" in refused.error or "Connection" in refused.error


def test_a_reference_sdk_client_sends_the_recorded_messages_or_a_hi():
    stream = chat_chunk({"content": "Yo"}) + chat_chunk({}, finish="stop") + b"data: [DONE]\n\n"
    for request, messages in (({"messages": [{"role": "user", "content": "q"}]}, [{"role": "user", "content": "q"}]),
                              ({}, [{"role": "user", "content": "hi"}])):
        with _upstream(stream, "text/event-stream") as upstream:
            got = run_reference("openai-sync", upstream.base_url, request, timeout=5)
        assert (got.text, got.finish_reason, got.error) == ("Yo", "stop", None)
        assert [s.path for s in upstream.sent] == ["/v1/chat/completions"]
        assert upstream.sent[0].request["messages"] == messages


def test_the_report_names_every_fault_and_the_moment_the_client_left():
    rec = _chat(delivered=3, client_left_at_chunk=3, client_left_ns=10**12, applied=["stall:chunk=1", "cut:chunk=5"])
    assert _ending(rec) == ["ending     the client left (the replay was to end clean) [stall:chunk=1 + cut:chunk=5]",
                            "ended at   chunk 3 of 10, 1000.000 s in"]


def test_a_reference_client_gives_up_after_the_timeout_it_is_given_and_waits_that_long():
    """The script's TIMEOUT reaches the client, plain HTTP or SDK: an answer held back past it is an error, one held
    back less than it (and longer than the SDK driver's own 2 s default) is read."""
    stream = chat_chunk({"content": "Yo"}) + chat_chunk({}, finish="stop") + b"data: [DONE]\n\n"
    request = {"messages": [{"role": "user", "content": "q"}], "stream": True}
    with ScriptedUpstream(Script(raw=[stream], content_type="text/event-stream", first_delay=2.4)) as upstream:
        for client in ("http", "openai-sync"):
            got = run_reference(client, upstream.base_url, request, timeout=0.3)
            assert got.error and got.text == "", client
        got = run_reference("openai-sync", upstream.base_url, request, timeout=10)
    assert (got.text, got.finish_reason, got.error) == ("Yo", "stop", None)


def test_an_unknown_reference_client_s_refusal_lists_the_ones_there_are_comma_separated():
    """The refusal names the client asked for and every one `--client` can switch to, as words to read."""
    with pytest.raises(ValueError) as refused:
        run_reference("curl", "http://127.0.0.1:9/v1", {"messages": []})
    assert str(refused.value) == ("unknown reference client 'curl': "
                                  "openai-sync, openai-async, autogen-agentchat, ag2, http")


class _EndsOnSecondLook:
    """A replay whose one request is still in flight the first time the report looks, and ended after that."""

    def __init__(self, rec: Replayed) -> None:
        self.rec, self.looks = rec, 0

    @property
    def requests(self) -> list[Replayed]:
        self.looks += 1
        if self.looks > 2:  # the report reads `requests` twice a look
            self.rec.delivered = self.rec.total
        return [self.rec]


def test_the_report_is_given_as_soon_as_the_replay_ends_or_its_client_leaves_not_after_its_wait():
    """A report waits for a replay in flight by looking again every few milliseconds; a client that left early is
    reported at once."""
    start = time.monotonic()
    ending = _EndsOnSecondLook(_chat(delivered=4))
    assert report("openai", Outcome("Hello"), ending, wait=30.0).splitlines()[-1] == "ended at   chunk 10 of 10"
    left = _chat(delivered=3, client_left_at_chunk=3, client_left_ns=250_000_000)
    lines = report("openai", Outcome("Hel"), _Server([left]), wait=30.0).splitlines()
    assert lines[-1] == "ended at   chunk 3 of 10, 0.250 s in"
    assert time.monotonic() - start < 0.9  # a second look comes 10 ms after the first, not a second later


_ANSWER_THEN_A_COMMENT = [chat_chunk({"role": "assistant", "content": ""}), chat_chunk({"content": "Hi"}),
                          chat_chunk({}, finish="stop"), b"data: [DONE]\n\n", b": bye\n\n"]


async def _report_of_a_client_that_closes_at(db: Path, marker: bytes, fault: str) -> list[str]:
    """The report's two ending lines for a real replay of the tape's one exchange, read by a client that closes as
    soon as it has `marker` while `fault` holds back the rest."""
    async with ReplayServer(db, speed=0) as srv:
        async with httpx.AsyncClient() as client, client.stream(
                "POST", f"{srv.base_url}/chat/completions", json=chat(),
                headers={"X-Streamreplay-Fault": fault}) as resp:
            got = b""
            async for data in resp.aiter_raw():
                got += data
                if marker in got:
                    break
        await until(lambda: srv.requests and srv.requests[0].client_left_at_chunk is not None)
        return report("openai", Outcome("Hi"), srv, wait=0.0).splitlines()[-2:]


async def test_a_real_replay_reports_a_client_that_closed_after_done_as_a_clean_ending(tmp_path: Path):
    """Through a real ReplayServer, not a hand-made record: a client that closes right after `[DONE]` (one piece
    still to come) is the replay's clean ending at the chunk it reached; one that closes before it is "the client
    left" at its chunk."""
    db = tmp_path / "after-done.db"
    await record(db, [Script(raw=_ANSWER_THEN_A_COMMENT, gap=0.02, content_type="text/event-stream")], [chat()])
    assert await _report_of_a_client_that_closes_at(db, b"[DONE]", "stall:chunk=4,seconds=5") == [
        "ending     clean [stall:chunk=4,seconds=5.0]", "ended at   chunk 4 of 5"]
    ending, where = await _report_of_a_client_that_closes_at(db, b'"stop"', "stall:chunk=3,seconds=5")
    assert ending == "ending     the client left (the replay was to end clean) [stall:chunk=3,seconds=5.0]"
    assert where.startswith("ended at   chunk 3 of 5, ")


def test_plain_http_reads_a_recorded_request_with_no_stream_flag_as_a_whole_answer() -> None:
    """A recorded request that leaves `stream` out asked for a whole answer (the API's default): plain HTTP reads
    the JSON body, not `data:` lines."""
    whole = json.dumps({"choices": [{"message": {"content": "Hi"}, "finish_reason": "stop"}]}).encode()
    with _upstream(whole, "application/json") as upstream:
        got = run_reference("http", upstream.base_url, {"messages": [{"role": "user", "content": "q"}]}, timeout=5)
    assert (got.text, got.finish_reason, got.error) == ("Hi", "stop", None)


def test_a_reference_sdk_client_sends_a_recorded_system_prompt_or_input_as_its_chat_messages() -> None:
    """An SDK client replays another API's recorded conversation as chat messages: Anthropic's `system` first,
    a Responses `input` string as the user's turn."""
    stream = chat_chunk({"content": "Yo"}) + chat_chunk({}, finish="stop") + b"data: [DONE]\n\n"
    question = {"role": "user", "content": "q"}
    for request, messages in (({"system": "Be brief.", "messages": [question], "max_tokens": 9},
                               [{"role": "system", "content": "Be brief."}, question]),
                              ({"input": "q", "model": "m"}, [question])):
        with _upstream(stream, "text/event-stream") as upstream:
            got = run_reference("openai-sync", upstream.base_url, request, timeout=5)
        assert (got.text, got.error) == ("Yo", None)
        assert upstream.sent[0].request["messages"] == messages
