"""`streamreplay matrix`'s table, its parts pinned: the rows (each ending and fault, sized to the recording and
the timeout, in the words of the recording's dialect), the verdict words a cell says, the plain and the
markdown rendering, and `faults` keeping only the rows asked for (through a real replay and a real client)."""

from __future__ import annotations

from streamreplay.bundled import bundled_tape
from streamreplay.dialects import DIALECTS
from streamreplay.matrix import DEFAULT_TAPES, Row, render, rows, run_matrix, verdict
from streamreplay.outcome import Outcome


def test_the_rows_are_each_ending_and_fault_at_the_middle_chunk_and_past_the_timeout():
    assert [(r.label, r.spec) for r in rows(11, 1.0)] == [
        ("complete (as recorded)", None),
        ("eof_without_done: no [DONE] (drop-done)", "drop-done"),
        ("no finish_reason (drop-finish)", "drop-finish"),
        ("clean end mid-answer (cut:chunk=5)", "cut:chunk=5"),
        ("upstream_closed (close:chunk=5)", "close:chunk=5"),
        ("upstream_reset (reset:chunk=5)", "reset:chunk=5"),
        ("error event (error-event:chunk=5)", "error-event:chunk=5"),
        ("corrupt JSON (corrupt:chunk=5)", "corrupt:chunk=5"),
        ("http_error 429 (status:code=429)", "status:code=429"),
        ("http_error 500 (status:code=500)", "status:code=500"),
        ("2 s gap mid-stream (stall:chunk=5)", "stall:chunk=5,seconds=2"),
        ("2 s before the head (delay-first)", "delay-first:seconds=2"),
    ]
    # a recording of 0 or 1 chunks still faults at chunk 1; a timeout of 0.5 s stalls 1.5 s
    assert {r.spec for r in rows(1, 0.5)} >= {"cut:chunk=1", "stall:chunk=1,seconds=1.5", "delay-first:seconds=1.5"}
    assert [r.label for r in rows(0, 0.5)][-2:] == ["1.5 s gap mid-stream (stall:chunk=1)",
                                                    "1.5 s before the head (delay-first)"]


def test_the_rows_name_the_terminal_event_and_the_stop_field_of_the_recording_s_dialect():
    anthropic, ollama = rows(4, 1.0, DIALECTS["anthropic"]), rows(4, 1.0, DIALECTS["ollama"])
    assert [r.label for r in anthropic[1:3]] == ["eof_without_done: no message_stop (drop-done)",
                                                 "no stop_reason (drop-finish)"]
    assert [r.label for r in ollama[1:3]] == ["eof_without_done: no done: true (drop-done)",
                                              "no done_reason (drop-finish)"]
    assert (DEFAULT_TAPES["chat"], DEFAULT_TAPES["anthropic"], DEFAULT_TAPES["ollama"]) == (
        "openai-happy-path", "anthropic-happy-path", "ollama-happy-path")


def test_a_cell_says_completes_partial_text_with_its_counts_raises_or_times_out_after_how_long():
    full = "Hello there"
    assert verdict(Outcome(text=full, finish_reason="stop"), full) == "completes"
    assert verdict(Outcome(text=full), full) == "completes"  # the text decides, not finish_reason
    assert verdict(Outcome(text="Hel"), full) == "partial text, no error (3/11 chars)"
    assert verdict(Outcome(text=""), full) == "partial text, no error (0/11 chars)"
    assert verdict(Outcome(text=full, error="httpx.RemoteProtocolError: peer closed"), full) == \
        "raises httpx.RemoteProtocolError"
    assert verdict(Outcome(text="", error="httpx.ReadTimeout: ", seconds=1.26), full) == \
        "times out after 1.3 s (httpx.ReadTimeout)"
    assert verdict(Outcome(text="", error="openai.APITimeoutError: Request timed out.", seconds=2.0), full) == \
        "times out after 2.0 s (openai.APITimeoutError)"
    assert verdict(Outcome(text="", error=": no type"), full) == "raises error"


TABLE_ROWS = [Row("complete (as recorded)", None), Row("clean end mid-answer (cut:chunk=5)", "cut:chunk=5")]
RESULTS = {("complete (as recorded)", "openai"): "completes", ("complete (as recorded)", "AG2"): "completes",
           ("clean end mid-answer (cut:chunk=5)", "openai"): "partial text, no error (3/11 chars)",
           ("clean end mid-answer (cut:chunk=5)", "AG2"): "raises pydantic_core.ValidationError"}


def test_the_table_lines_up_its_columns_two_spaces_apart_with_no_trailing_space():
    assert render(TABLE_ROWS, ["openai", "AG2"], RESULTS).split("\n") == [
        "ending or fault                     openai                               AG2",
        "complete (as recorded)              completes                            completes",
        "clean end mid-answer (cut:chunk=5)  partial text, no error (3/11 chars)  raises pydantic_core.ValidationError",
    ]


def test_the_markdown_table_has_a_header_a_rule_and_a_row_per_ending_in_the_clients_order():
    assert render(TABLE_ROWS, ["AG2", "openai"], RESULTS, markdown=True).split("\n") == [
        "| ending or fault | AG2 | openai |",
        "| --- | --- | --- |",
        "| complete (as recorded) | completes | completes |",
        "| clean end mid-answer (cut:chunk=5) | raises pydantic_core.ValidationError | "
        "partial text, no error (3/11 chars) |",
    ]


async def test_faults_keeps_only_the_rows_named_and_an_empty_name_is_the_recording_as_it_is():
    table_rows, results = await run_matrix(bundled_tape("openai-happy-path"), ["openai async"], timeout=0.5,
                                           faults=["", "cut"])
    assert len(table_rows) == 2 and table_rows[0].spec is None and (table_rows[1].spec or "").startswith("cut:chunk=")
    assert results[(table_rows[0].label, "openai async")] == "completes"
    assert results[(table_rows[1].label, "openai async")].startswith("partial text, no error (")
    assert len(results) == 2
