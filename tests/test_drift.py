"""`streamreplay drift`: record through the real proxy from the scripted upstream, change what the upstream does,
then run the real CLI against it and read what it says changed (and that the text is never part of it)."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from streamreplay.cassette import export_tape
from streamreplay.cli import main
from streamreplay.drift import Shape, Tolerance, compare, field_paths, request_for
from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.scripted.anthropic import anthropic_events
from streamreplay.store import Store
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import SECRET, chat, post
from tests.realmodel_server import real_upstream_url

#: seconds between events, so that each event is a network read of its own, recorded and live alike (at 5 ms a
#: busy machine joined two reads now and then, and the doubled chunk size read as drift)
GAP = 0.015
TEXT = "Hello! How can I help you today?"
ANTHROPIC_REQUEST = {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True,
                     "messages": [{"role": "user", "content": "Say hello"}]}
#: one request per dialect: its path under the upstream's origin, and its body
DIALECT_REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", chat(stream_options={"include_usage": True})),
    "responses": ("/v1/responses", {"model": "gpt-4o-mini", "input": "Say hello", "stream": True}),
    "anthropic": ("/v1/messages", ANTHROPIC_REQUEST),
    "azure": ("/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21", chat()),
    "ollama": ("/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "Say hello"}]}),
}


def record_tape(db_path: Path, upstream: ScriptedUpstream, requests: list[tuple[str, dict[str, Any]]],
                headers: dict[str, str] | None = None) -> None:
    """Each request through the recording proxy (upstream: the scripted one's origin), into tape t; both
    servers run on threads of their own, so the CLI runs in the main thread as a user's would."""
    options = RecordOptions(upstream=upstream.origin, db=str(db_path), tape="t")
    with RecordingProxy(options) as proxy:
        for path, payload in requests:
            status, _, error = asyncio.run(post(proxy.origin, payload, headers=headers, path=path))
            assert (status, error) == (200, None)
        proxy.call(proxy.settle())


def drift_cli(*args: Any) -> Result:
    return CliRunner().invoke(main, ["drift", *map(str, args)])


def drift_against(db_path: Path, upstream: ScriptedUpstream, live: Script, *options: Any) -> Result:
    upstream.script = live
    return drift_cli("t", "--db", db_path, "--upstream", upstream.origin, *options)


def differences(result: Result) -> list[str]:
    """The indented lines that name what drifted."""
    return [line.strip() for line in result.output.splitlines() if line.startswith("    ")]


@pytest.fixture
def chat_upstream(db_path: Path) -> Any:
    """A scripted upstream with one chat exchange recorded from it (tape t)."""
    with ScriptedUpstream(Script(gap=GAP)) as upstream:
        record_tape(db_path, upstream, [DIALECT_REQUESTS["chat"]])
        yield upstream


def test_the_same_answer_again_is_no_drift(db_path: Path, chat_upstream: ScriptedUpstream):
    result = drift_against(db_path, chat_upstream, Script(gap=GAP))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"drift: tape t, 1 exchange resent to {chat_upstream.origin}")
    assert lines[1] == "tolerance: timing 3x (and 100 ms first byte, 20 ms gap), chunks 2x (and 4 chunks, 64 bytes)"
    assert lines[2] == "t:0  POST /v1/chat/completions  gpt-4o-mini  no drift"
    assert lines[-1] == "no drift in 1 exchange"
    assert len(chat_upstream.sent) == 2 and chat_upstream.sent[1].request == chat_upstream.sent[0].request


def test_a_field_added_to_every_chunk_is_named(db_path: Path, chat_upstream: ScriptedUpstream):
    # OpenAI did add a field to its stream chunks (`obfuscation`); a client that validates strictly breaks
    result = drift_against(db_path, chat_upstream, Script(gap=GAP, chunk_fields={"obfuscation": "x9Kq"}))
    assert result.exit_code == 1, result.output
    assert "t:0  POST /v1/chat/completions  gpt-4o-mini  DRIFTED (1)" in result.output
    assert differences(result) == ["fields added: obfuscation"]
    assert result.output.splitlines()[-1] == "1 of 1 exchange drifted"
    assert "x9Kq" not in result.output  # a value, never shown


@pytest.mark.parametrize(("live", "said"), [
    (Script(gap=GAP, finish_reason="length"), "finish_reason: stop -> length"),
    (Script(gap=GAP, pieces=list(TEXT)), "chunks: "),
    (Script(gap=GAP, first_delay=0.4), "time to first byte: "),
    (Script(gap=0.1), "typical gap: "),
], ids=["finish-reason", "more-chunks", "slower-first-byte", "slower-gaps"])
def test_a_changed_stop_reason_chunking_or_timing_is_drift(db_path: Path, chat_upstream: ScriptedUpstream,
                                                                  live: Script, said: str):
    result = drift_against(db_path, chat_upstream, live)
    assert result.exit_code == 1, result.output
    assert "DRIFTED (1)" in result.output, result.output  # that one thing, nothing else
    [difference] = differences(result)
    assert difference.startswith(said)
    if said == "chunks: ":  # one read an event (a busy machine may join two): 7 words -> 32 characters
        recorded, live_count = map(int, re.findall(r"\d+", difference)[:2])
        assert recorded <= 11 and live_count > 2 * recorded
    assert TEXT not in result.output and "Hello" not in result.output


def test_a_timing_within_tolerance_or_under_the_floor_is_not_drift(db_path: Path,
                                                                    chat_upstream: ScriptedUpstream):
    # gaps of 15 ms -> 100 ms are drift at the default 3x ...
    slower = drift_against(db_path, chat_upstream, Script(gap=0.1))
    assert slower.exit_code == 1 and differences(slower)[0].startswith("typical gap: ")
    # ... and not when the user allows 40x
    allowed = drift_against(db_path, chat_upstream, Script(gap=0.1), "--tolerance", 40)
    assert allowed.exit_code == 0, allowed.output
    assert "tolerance: timing 40x (and 100 ms first byte, 20 ms gap)" in allowed.output
    # a first byte 1 ms -> 90 ms is 90x, but under the 100 ms floor: one sample on a busy machine, not drift
    shape = Shape("chat", 200, "text/event-stream", True, ["role", "content", "finish", "[DONE]"], ["id"], "stop",
                  "complete", 10, {"p50": 200, "p90": 210, "max": 260}, 1.0, 1.0)
    noisy = Shape(**{**shape.to_json(), "ttfb_ms": 90.0, "gap_ms": 15.0, "chunk_count": 13})
    assert compare(shape, noisy) == []
    later = Shape(**{**shape.to_json(), "ttfb_ms": 120.0})
    assert [(d.field, d.words) for d in compare(shape, later)] == [
        ("ttfb_ms", "time to first byte: 1 -> 120 ms (120.0x; tolerance 3x and 100 ms)")]
    assert compare(shape, later, Tolerance(ttfb_floor_ms=200)) == []
    assert compare(shape, later, Tolerance(timing=200)) == []


def test_fewer_chunks_drift_as_much_as_more():
    shape = Shape("chat", 200, "text/event-stream", True, ["role", "content", "finish", "[DONE]"], ["id"], "stop",
                  "complete", 26, {"p50": 200, "p90": 210, "max": 260}, 1.0, 1.0)
    fewer = Shape(**{**shape.to_json(), "chunk_count": 6})
    assert [(d.field, d.recorded, d.live, d.words) for d in compare(shape, fewer)] == [
        ("chunk_count", 26, 6, "chunks: 26 -> 6 (4.3x; tolerance 2x and 4)")]
    assert [d.words for d in compare(fewer, shape)] == ["chunks: 6 -> 26 (4.3x; tolerance 2x and 4)"]


def test_other_text_in_the_same_shape_is_not_drift(db_path: Path, chat_upstream: ScriptedUpstream):
    other = "Rivers carve slow paths through old stone valleys."
    result = drift_against(db_path, chat_upstream, Script(gap=GAP, text=other))
    assert result.exit_code == 0, result.output
    assert "no drift" in result.output
    assert chat_upstream.sent[-1].body.count(b'"content":"') == 1 + len(other.split())  # it did say other words
    for word in (*TEXT.split(), *other.split()):
        assert word not in result.output


def test_anthropic_event_types_gone_or_added(db_path: Path):
    recorded_raw = [e for e in anthropic_events(Script(), "claude-sonnet-4-5", "msg_0001")
                    if not e.startswith(b"event: ping")]  # an answer that came without Anthropic's ping
    with ScriptedUpstream(Script(gap=GAP)) as upstream:
        upstream.queue(Script(gap=GAP), Script(gap=GAP, raw=recorded_raw))
        record_tape(db_path, upstream, [DIALECT_REQUESTS["anthropic"]] * 2)
        # the live API stops sending message_stop (on the first), and now pings (on the second)
        upstream.queue(Script(gap=GAP, ending="no_done"), Script(gap=GAP))
        result = drift_cli("t", "--db", db_path, "--upstream", upstream.origin)
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    first = lines.index("t:0  POST /v1/messages  claude-sonnet-4-5  DRIFTED (2)")
    assert lines[first + 1:first + 3] == ["    event types gone: message_stop",
                                          "    ending: complete -> eof_without_done"]
    second = lines.index("t:1  POST /v1/messages  claude-sonnet-4-5  DRIFTED (1)")
    assert lines[second + 1] == "    event types added: ping"


def test_json_report_has_both_shapes_and_the_differences(db_path: Path, chat_upstream: ScriptedUpstream):
    result = drift_against(db_path, chat_upstream, Script(gap=GAP, finish_reason="length",
                                                                chunk_fields={"service_tier": "default"}), "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["drifted"] is True and report["tape"] == "t"
    assert report["tolerance"] == {"timing": 3.0, "ttfb_floor_ms": 100.0, "gap_floor_ms": 20.0, "count": 2.0,
                                   "count_floor": 4, "size_floor": 64}
    [exchange] = report["exchanges"]
    assert (exchange["ref"], exchange["drifted"]) == ("t:0", True)
    assert [(d["field"], d["recorded"], d["live"]) for d in exchange["differences"]] == [
        ("fields_added", None, ["service_tier"]), ("stop_reason", "stop", "length")]
    recorded, live = exchange["recorded"], exchange["live"]
    assert recorded["events"] == live["events"] == ["role", "content", "finish", "usage", "[DONE]"]
    assert "choices[].delta.content" in recorded["fields"] and "usage.completion_tokens" in recorded["fields"]
    assert recorded["ending"] == live["ending"] == "complete"
    assert 5 < recorded["chunk_count"] <= 11 and recorded["chunk_bytes"]["p50"] > 100  # 11 events, about a read each
    assert TEXT not in result.output and "Hello" not in result.output


@pytest.mark.parametrize("dialect", list(DIALECT_REQUESTS))
def test_each_dialect_read_in_its_own_terms(db_path: Path, dialect: str):
    with ScriptedUpstream(Script(gap=GAP)) as upstream:
        record_tape(db_path, upstream, [DIALECT_REQUESTS[dialect]])
        same = drift_cli("t", "--db", db_path, "--upstream", upstream.origin, "--json")
        upstream.script = Script(gap=GAP, ending="no_done")
        cut = drift_cli("t", "--db", db_path, "--upstream", upstream.origin, "--json")
    assert same.exit_code == 0, same.output
    recorded = json.loads(same.output)["exchanges"][0]["recorded"]
    assert recorded["dialect"] == dialect
    first, *_, last = recorded["events"]
    assert (first, last) == {
        "chat": ("role", "[DONE]"),
        "azure": ("prompt_filter", "[DONE]"),
        "responses": ("response.created", "response.completed"),
        "anthropic": ("message_start", "message_stop"),
        "ollama": ("content", "done"),
    }[dialect]
    # the live API stops sending its terminal event: named in the dialect's words
    assert cut.exit_code == 1
    said = {d["field"]: d["words"] for d in json.loads(cut.output)["exchanges"][0]["differences"]}
    assert said["events"] == f"event types gone: {last}"
    assert said["ending"] == "ending: complete -> eof_without_done"


def test_redacted_headers_are_replaced_by_the_given_ones_and_never_shown(db_path: Path):
    with ScriptedUpstream(Script(gap=GAP)) as upstream:
        record_tape(db_path, upstream, [("/v1/chat/completions?key=" + SECRET + "&trace=1", chat())],
                    headers={"Authorization": f"Bearer {SECRET}", "X-Api-Key": SECRET, "X-Trace": "abc"})
        live_key = "sk-live-KEY-4411"
        result = drift_cli("t", "--db", db_path, "--upstream", upstream.origin,
                                 "--header", f"Authorization: Bearer {live_key}")
        sent = upstream.sent[-1].headers
    assert result.exit_code == 0, result.output
    assert sent["authorization"] == f"Bearer {live_key}"
    assert "x-api-key" not in sent  # recorded as [redacted], nothing given: left out, never sent as "[redacted]"
    assert sent["x-trace"] == "abc" and sent["accept-encoding"] == "identity"
    assert "note: sent without the headers the recording redacted: X-Api-Key (give them with --header" in result.output
    assert "note: sent without the query parameters the recording redacted: key" in result.output
    assert live_key not in result.output and SECRET not in result.output
    [exchange] = Store(db_path).exchanges()
    request = request_for(exchange, "http://127.0.0.1:9/v1", [("Authorization", "Bearer x")])
    assert str(request.url) == "http://127.0.0.1:9/v1/v1/chat/completions?trace=1"
    assert (request.unsent_headers, request.unsent_query) == (["X-Api-Key"], ["key"])


def test_set_changes_a_body_field_of_every_request_and_its_effect_is_shown(db_path: Path,
                                                                           chat_upstream: ScriptedUpstream):
    result = drift_against(db_path, chat_upstream, Script(gap=GAP), "--set", "max_tokens=3",
                           "--set", "stream_options.include_usage=false", "--set", "user=ci")
    # the recording asked for usage; without it the live answer has no usage chunk, and drift says so
    assert result.exit_code == 1, result.output
    assert differences(result) == ["event types gone: usage",
                                   "fields gone: usage, usage.completion_tokens, usage.prompt_tokens, "
                                   "usage.total_tokens"]
    sent = chat_upstream.sent[-1].request
    assert sent is not None
    assert (sent["max_tokens"], sent["stream_options"], sent["user"]) == (3, {"include_usage": False}, "ci")
    assert sent["messages"] == chat_upstream.sent[0].request["messages"]  # type: ignore[index]


def test_a_cassette_is_a_tape_too(db_path: Path, chat_upstream: ScriptedUpstream, tmp_path: Path):
    cassette = tmp_path / "t.jsonl"
    export_tape(db_path, "t", cassette)
    result = drift_cli(cassette, "--upstream", chat_upstream.origin)
    assert result.exit_code == 0, result.output
    assert "t:0  POST /v1/chat/completions  gpt-4o-mini  no drift" in result.output


def test_what_cannot_be_checked_exits_2_in_one_line(db_path: Path, tmp_path: Path):
    with ScriptedUpstream(Script(gap=GAP)) as upstream:
        record_tape(db_path, upstream, [DIALECT_REQUESTS["chat"]])
        gone = upstream.origin
    unreachable = drift_cli("t", "--db", db_path, "--upstream", gone)
    unknown = drift_cli("nope", "--db", db_path, "--upstream", gone)
    no_db = drift_cli("t", "--db", tmp_path / "none.db", "--upstream", gone)
    bad_header = drift_cli("t", "--db", db_path, "--upstream", gone, "--header", f"Bearer {SECRET}")
    bad_url = drift_cli("t", "--db", db_path, "--upstream", "ftp://example.invalid/v1")
    for result in (unreachable, unknown, no_db, bad_header, bad_url):
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and SECRET not in result.output
    assert unreachable.output.splitlines()[-1].startswith(f"Error: cannot reach the upstream {gone}")
    assert "nope" in unknown.output.splitlines()[-1]
    assert unknown.output.count("\n") == 1 and no_db.output == f"Error: no recordings at {tmp_path / 'none.db'}\n"
    assert "'Name: value'" in bad_header.output


def test_field_paths_collapse_lists_and_stop_at_content():
    chunk = {"choices": [{"delta": {"tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}},
                         {"delta": {"content": "x"}}],
             "message": {"tool_calls": [{"function": {"arguments": {"city": "Oslo"}}}]}, "metadata": {"user": "u"}}
    assert field_paths(chunk) == {
        "choices", "choices[].delta", "choices[].delta.tool_calls", "choices[].delta.tool_calls[].function",
        "choices[].delta.tool_calls[].function.name", "choices[].delta.tool_calls[].function.arguments",
        "choices[].delta.content", "message", "message.tool_calls", "message.tool_calls[].function",
        "message.tool_calls[].function.arguments", "metadata"}


@pytest.mark.realmodel
def test_real_model_drift_names_what_a_changed_setting_did(db_path: Path):
    """Recorded from the real model server, then resent to it: the same request has the same shape (the
    model is greedy at temperature 0), and the same request with `--set max_tokens=3` comes back cut at
    the limit. The setting is changed through the request because that is what changes this server's
    answers; what drift reports is read from the real server's real answer."""
    import openai

    # as tests/test_realmodel.py gets it: the server scripts/test.sh started, else started (and leased) here
    upstream = os.environ.get("STREAMREPLAY_REAL_UPSTREAM") or real_upstream_url()
    with RecordingProxy(RecordOptions(upstream=upstream, db=str(db_path), tape="real")) as proxy:
        client = openai.OpenAI(base_url=proxy.base_url, api_key="none", max_retries=0)
        stream = client.chat.completions.create(
            model="smollm2", temperature=0, max_tokens=40, stream=True,
            messages=[{"role": "user", "content": "Name a fruit."}])
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        proxy.call(proxy.settle())
    [recorded] = Store(db_path).exchanges()
    assert recorded.finish_reason == "stop" and recorded.chunk_count > 10
    # timing is not this test's subject: the tier's tests share the one server in parallel, and it keeps
    # the last prompt cached, so a first byte can come 10x sooner or seconds later for other reasons
    timing = ("--tolerance", 1000)
    same = drift_cli("real", "--db", db_path, "--upstream", upstream, *timing)
    assert same.exit_code == 0, same.output
    changed = drift_cli("real", "--db", db_path, "--upstream", upstream, "--set", "max_tokens=3", *timing)
    assert changed.exit_code == 1, changed.output
    said = differences(changed)
    assert said[0] == "finish_reason: stop -> length"
    assert said[1].startswith(f"chunks: {recorded.chunk_count} -> ")
    assert text.strip() and text.strip() not in changed.output


def test_json_report_holds_the_tolerances_asked_and_each_side_s_own_shape(db_path: Path,
                                                                          chat_upstream: ScriptedUpstream):
    """`--json` carries the tolerances given on the command line, and the recorded and live shapes each as they
    were: a field, a stop reason and an ending only the live answer has are under `live`, not `recorded`."""
    result = drift_against(db_path, chat_upstream, Script(gap=GAP, finish_reason="length", ending="no_done",
                                                          chunk_fields={"service_tier": "default"}),
                           "--json", "--tolerance", 5, "--count-tolerance", 4)
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert (report["tolerance"]["timing"], report["tolerance"]["count"]) == (5.0, 4.0)
    [exchange] = report["exchanges"]
    recorded, live = exchange["recorded"], exchange["live"]
    assert (recorded["stop_reason"], recorded["ending"]) == ("stop", "complete")
    assert (live["stop_reason"], live["ending"]) == ("length", "eof_without_done")
    assert "service_tier" in live["fields"] and "service_tier" not in recorded["fields"]


def test_count_tolerance_on_the_command_line_judges_the_chunks_instead_of_2x(db_path: Path,
                                                                             chat_upstream: ScriptedUpstream):
    """`drift --count-tolerance N` judges chunk counts and sizes by N times, not the default 2x."""
    # a word a chunk recorded, a character a chunk live: far past 2x, within 1000x
    more = Script(gap=GAP, pieces=list(TEXT))
    assert drift_against(db_path, chat_upstream, more, "--tolerance", 1000).exit_code == 1
    allowed = drift_against(db_path, chat_upstream, more, "--tolerance", 1000, "--count-tolerance", 1000)
    assert allowed.exit_code == 0, allowed.output
    assert "tolerance: timing 1000x (and 100 ms first byte, 20 ms gap), chunks 1000x (and 4 chunks, 64 bytes)" in \
        allowed.output
