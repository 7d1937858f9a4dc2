"""diagnose on exchanges written down by hand: each cause, the numbers it quotes and the words a person reads.
No proxy and no DB: `diagnose_exchange` reads an exchange, its chunks and the facts of its tape."""

from __future__ import annotations

import pytest

from streamreplay.bundled import bundled_dir
from streamreplay.cassette import import_cassette
from streamreplay.diagnose import TapeFacts, diagnose, diagnose_exchange
from streamreplay.endcause import EndCause
from streamreplay.exchange import Chunk, Exchange
from streamreplay.store import Store

MS = 1_000_000
ALONE = TapeFacts(count=1, all_complete=True, last_id=7)
LEFT = {"end_cause": EndCause.CLIENT_LEFT, "upstream_end": EndCause.COMPLETE}
STOPPED = ("no silence before it left ({ms} ms after chunk {k}): the app, not the network, ended it (a break, "
           "a cancelled task, a web handler that returned)")


def exchange(**fields) -> Exchange:
    """Exchange 7, the third of tape t: a streamed chat answer, its head at 50 ms, 700 ms long."""
    base = {"id": 7, "tape": "t", "seq": 2, "method": "POST", "path": "/v1/chat/completions", "status": 200,
            "response_headers": [["Content-Type", "text/event-stream"]], "stream": True, "headers_ns": 50 * MS,
            "end_cause": EndCause.COMPLETE, "finish_reason": "stop", "done": True, "duration_ns": 700 * MS,
            "request_key": "k1"}
    return Exchange(**{**base, **fields})


def at(*ms: int) -> list[Chunk]:
    return [Chunk(i, t * MS, b"data: x\n\n") for i, t in enumerate(ms)]


def test_a_client_timeout_is_a_long_silence_well_above_the_usual_gap():
    d = diagnose_exchange(exchange(**LEFT, client_left_at_chunk=3, client_left_ns=900 * MS),
                          at(100, 200, 300, 1500, 1600), ALONE, "my db.sqlite")
    assert (d.cause, d.ended_by, d.chunk, d.chunks, d.at_s) == ("client_timeout", "client", 3, 5, 0.9)
    assert d.gap_before_s == pytest.approx(0.6) and d.upstream_complete
    assert d.lines() == [
        "exchange t:2 (id 7): a client timeout of about 0.6 s: the client left after 0.60 s of silence",
        "client     plain HTTP (no User-Agent)",
        "ended by   the client, at chunk 3 of 5, 0.900 s, 0.600 s after the chunk before",
        "upstream   answer complete: finish_reason stop, [DONE] seen",
        "cause      client_timeout",
        "evidence   the upstream went on to 5 chunks and ended: complete",
        "evidence   the client left 0.600 s after chunk 2 arrived; the stream's usual gap is 100 ms",
        "evidence   the next chunk came 1.200 s after chunk 2: longer than the client waited",
        "fix        raise the client's read timeout above the longest gap (here 1.2 s)",
        "replay     streamreplay play --db 'my db.sqlite' --tape t",
        "repro      streamreplay repro t:2 --db 'my db.sqlite' -o repro_t-2/",
    ]


def test_a_client_timeout_before_the_first_chunk_counts_from_the_response_head():
    d = diagnose_exchange(exchange(**LEFT, client_left_at_chunk=0, client_left_ns=900 * MS),
                          at(1500, 1600, 1700), ALONE, "db")
    assert (d.cause, d.chunk, d.gap_before_s) == ("client_timeout", 0, pytest.approx(0.85))
    assert d.evidence[1:] == [
        "the client left 0.850 s after the response head arrived; the stream's usual gap is 100 ms",
        "the next chunk came 1.450 s after the response head: longer than the client waited",
    ]
    assert d.lines()[2] == "ended by   the client, at chunk 0 of 3, 0.900 s, 0.850 s after the response head"


def test_a_silence_no_longer_than_the_stream_s_own_gaps_is_no_timeout():
    # 300 ms of silence, past TIMEOUT_SILENCE_S, but the stream's usual gap is 200 ms: not 3 times longer
    d = diagnose_exchange(exchange(**LEFT, client_left_at_chunk=2, client_left_ns=600 * MS),
                          at(100, 300, 500, 700, 900), ALONE, "db")
    assert d.cause == "consumer_stopped_reading"
    # exactly TIMEOUT_SILENCE_S, with too few gaps to tell a usual one: a timeout
    d = diagnose_exchange(exchange(**LEFT, client_left_at_chunk=1, client_left_ns=750 * MS), at(500, 1000), ALONE, "db")
    assert (d.cause, d.gap_before_s, d.evidence[2:]) == ("client_timeout", 0.25, [
        "the next chunk came 0.500 s after chunk 0: longer than the client waited"])
    # with three gaps the usual one is known (300 ms), and 300 ms of silence is no more than it
    d = diagnose_exchange(exchange(**LEFT, client_left_at_chunk=1, client_left_ns=400 * MS), at(100, 400, 700),
                          ALONE, "db")
    assert d.cause == "consumer_stopped_reading"
    # 3.5 times the usual gap (100 ms), and past TIMEOUT_SILENCE_S: a timeout
    d = diagnose_exchange(exchange(**LEFT, client_left_at_chunk=3, client_left_ns=650 * MS),
                          at(100, 200, 300, 1000), ALONE, "db")
    assert d.cause == "client_timeout"


def test_a_timeout_after_the_last_chunk_and_usual_gaps_in_whole_milliseconds():
    d = diagnose_exchange(exchange(**LEFT, client_left_at_chunk=3, client_left_ns=3700 * MS),
                          at(100, 700, 1300), ALONE, "db")
    assert d.evidence == ["the upstream went on to 3 chunks and ended: complete",  # no chunk came after it
                          "the client left 2.400 s after chunk 2 arrived; the stream's usual gap is 600 ms"]


def test_a_deadline_is_leaving_mid_flow_at_a_common_total_time_limit():
    d = diagnose_exchange(exchange(**LEFT, client_left_at_chunk=9, client_left_ns=1010 * MS, duration_ns=2500 * MS),
                          at(*range(100, 2500, 100)), ALONE, "db")
    assert (d.cause, d.chunk, d.at_s) == ("client_deadline", 9, 1.01)
    assert d.summary == ("a total time limit of about 1 s: the client left 1.010 s into a stream that needed 2.50 s, "
                         "in the middle of steady chunks")
    assert d.evidence == ["the upstream went on to 24 chunks and ended: complete",
                          "no silence before it left (110 ms after chunk 8), and it left 1.010 s after the request: "
                          "within 3% of 1 s"]
    assert d.fix == ("raise the overall deadline (asyncio.wait_for, the request's total timeout) above the stream's "
                     "length (2.5 s), or bound silence with a read timeout instead")


@pytest.mark.parametrize(("left_ms", "cause"), [
    (1029, "client_deadline"), (971, "client_deadline"),  # within 3% of 1 s
    (1031, "consumer_stopped_reading"), (969, "consumer_stopped_reading"),
    (30 * 1000 + 5, "client_deadline"),  # a deadline further down the list
    # 3% of the deadline, not 3% of a second: 10 s takes 9.7-10.3 s
    (10_250, "client_deadline"), (9_750, "client_deadline"),
    (10_350, "consumer_stopped_reading"), (9_650, "consumer_stopped_reading"),
])
def test_a_deadline_is_within_3_percent_of_it(left_ms: int, cause: str):
    chunks = at(*range(100, left_ms, 100))  # a chunk every 100 ms, all of them read, up to leaving
    d = diagnose_exchange(exchange(**LEFT, client_left_at_chunk=len(chunks), client_left_ns=left_ms * MS),
                          chunks, ALONE, "db")
    assert d.cause == cause


def test_a_consumer_that_stops_reading_early_or_later_without_a_silence():
    early = diagnose_exchange(exchange(**LEFT, client_left_at_chunk=2, client_left_ns=210 * MS),
                              at(100, 200, 300, 400), ALONE, "db")
    assert early.summary == ("a consumer that stopped reading: the client closed the stream right after the first "
                             "chunk(s) while the upstream went on")
    assert early.evidence == ["the upstream went on to 4 chunks and ended: complete", STOPPED.format(ms=10, k=1)]
    assert early.fix == ("consume the stream to the end (or to finish_reason); await the task; keep the handler "
                         "until it ends")
    # a deadline needs more than EARLY_CHUNKS chunks: leaving at 1 s after 3 chunks is a consumer that stopped
    three = diagnose_exchange(exchange(**LEFT, client_left_at_chunk=3, client_left_ns=1000 * MS),
                              at(800, 900, 990, 1100), ALONE, "db")
    assert (three.cause, three.summary) == ("consumer_stopped_reading", early.summary)
    # leaving before any chunk: the silence counts from the response head, and nobody knows how the upstream ended
    first = diagnose_exchange(exchange(end_cause=EndCause.CLIENT_LEFT, client_left_ns=60 * MS), at(100, 200),
                              ALONE, "db")
    assert (first.cause, first.chunk, first.gap_before_s) == ("consumer_stopped_reading", 0, pytest.approx(0.01))
    # no chunk came before it: the words name the response head, never a "chunk -1"
    assert first.evidence == ["the upstream went on to 2 chunks and ended: unknown",
                              STOPPED.format(ms=10, k=1).replace("chunk 1", "the response head")]
    assert first.lines()[2:4] == ["ended by   the client, at chunk 0 of 2, 0.060 s, 0.010 s after the response head",
                                  "upstream   answer not complete: finish_reason stop, [DONE] seen"]
    later = diagnose_exchange(exchange(**LEFT, client_left_at_chunk=6, client_left_ns=610 * MS),
                              at(*range(100, 1600, 100)), ALONE, "db")
    assert later.summary == ("a consumer that stopped reading: the client closed the stream after 6 of 15 chunks "
                             "while the upstream went on")
    assert later.gap_before_s == pytest.approx(0.01)


def test_an_upstream_that_broke_is_named_with_what_it_said():
    d = diagnose_exchange(exchange(end_cause=EndCause.UPSTREAM_RESET, end_detail="Connection reset by peer",
                                   finish_reason=None, done=False), at(100, 250), ALONE, "db")
    assert (d.cause, d.ended_by, d.chunk, d.at_s, d.upstream_complete) == ("upstream_reset", "upstream", 2, 0.7, False)
    assert d.gap_before_s == pytest.approx(0.15)
    assert (d.summary, d.evidence, d.fix) == ("the upstream reset the connection mid-stream",
                                              ["Connection reset by peer"],
                                              "clients raise httpx.ReadError; retry the request")
    assert diagnose_exchange(exchange(end_cause=EndCause.UPSTREAM_CLOSED), [], ALONE, "db").gap_before_s is None
    assert d.lines()[3] == "upstream   answer not complete: finish_reason None, no [DONE]"


@pytest.mark.parametrize("fields", [
    {"end_cause": EndCause.COMPLETE},  # ended complete: the cause is no_finish_reason
    {"end_cause": EndCause.CLIENT_LEFT, "upstream_end": EndCause.COMPLETE, "client_left_at_chunk": 1,
     "client_left_ns": 150 * MS},  # the client left; the upstream went on to its end
])
def test_an_upstream_answer_is_complete_only_with_its_stop_reason(fields):
    """The terminal event alone is not a whole answer: the `upstream` line says so in the dialect's words."""
    cut = diagnose_exchange(exchange(**fields, finish_reason=None), at(100, 200), ALONE, "db")
    assert cut.upstream_complete is False
    assert cut.lines()[3] == "upstream   answer not complete: finish_reason None, [DONE] seen"
    whole = diagnose_exchange(exchange(**fields, finish_reason="stop"), at(100, 200), ALONE, "db")
    assert whole.upstream_complete is True
    assert whole.lines()[3] == "upstream   answer complete: finish_reason stop, [DONE] seen"


def test_a_stream_without_its_terminal_event():
    truncated = diagnose_exchange(exchange(end_cause=EndCause.EOF_WITHOUT_DONE, finish_reason=None, done=False),
                                  at(100, 200), ALONE, "db")
    assert (truncated.cause, truncated.chunk, truncated.at_s) == ("upstream_no_done", 2, 0.7)
    assert truncated.summary == "the upstream ended the stream cleanly but early: no finish_reason, no [DONE]"
    assert truncated.evidence == ["clients take a clean end as the end of the answer: the app got a truncated "
                                  "answer and no error (see streamreplay matrix)"]
    assert truncated.fix == "check finish_reason in the app; treat a stream without it as failed, and retry"
    finished = diagnose_exchange(exchange(end_cause=EndCause.EOF_WITHOUT_DONE, done=False), at(100), ALONE, "db")
    assert (finished.summary, finished.evidence, finished.fix) == (
        "the upstream finished the answer (finish_reason stop) but never sent [DONE]", [],
        "nothing is lost; a client that waits for [DONE] would hang or fail")
    anthropic = diagnose_exchange(exchange(path="/v1/messages", end_cause=EndCause.EOF_WITHOUT_DONE, done=False,
                                           finish_reason=None), [], ALONE, "db")
    assert anthropic.summary == "the upstream ended the stream cleanly but early: no stop_reason, no message_stop"
    assert anthropic.dialect == "anthropic"
    assert anthropic.lines()[3] == "upstream   answer not complete: stop_reason None, no message_stop"


def test_http_errors_and_an_unreachable_upstream_quote_the_body():
    body = b'{"error": {"message": "slow down"}}' + b"x" * 400
    limited = diagnose_exchange(exchange(end_cause=EndCause.HTTP_ERROR, status=429, finish_reason=None, done=False,
                                         response_headers=[["Content-Type", "application/json"]]),
                                [Chunk(0, 80 * MS, body)], ALONE, "db")
    assert (limited.cause, limited.chunk, limited.at_s) == ("http_error", 1, 0.7)
    assert limited.summary == "the upstream answered HTTP 429 before any stream"
    assert limited.evidence[0] == "body: " + body[:300].decode()  # the first 300 bytes
    assert limited.fix == "slow down or retry with backoff (429)"
    failed = diagnose_exchange(exchange(end_cause=EndCause.HTTP_ERROR, status=500, stream=False),
                               [Chunk(0, 1, b"\xff")], ALONE, "db")
    assert (failed.evidence, failed.fix) == (["body: \ufffd"], "retry; the upstream failed before streaming")
    unreachable = diagnose_exchange(exchange(end_cause=EndCause.UPSTREAM_UNREACHABLE, status=502, stream=False),
                                    [Chunk(0, MS, b"ref"), Chunk(1, MS, b"used")], ALONE, "db")
    assert (unreachable.cause, unreachable.summary, unreachable.evidence, unreachable.fix) == (
        "upstream_unreachable", "the upstream could not be reached; the client got HTTP 502 from streamreplay",
        ["body: refused"], "check the upstream URL and that it is up; clients retry this (the openai SDK twice)")


def test_an_interrupted_recording_ends_at_its_last_chunk():
    d = diagnose_exchange(exchange(end_cause=EndCause.INTERRUPTED), at(100, 300), ALONE, "db")
    assert (d.cause, d.ended_by, d.chunk, d.at_s) == ("interrupted", "daemon", 2, 0.3)
    assert d.summary == "the recording daemon stopped mid-exchange; the recording holds what had arrived"
    assert diagnose_exchange(exchange(end_cause=EndCause.INTERRUPTED), [], ALONE, "db").at_s == 0.0


def test_completed_answers_cut_by_the_token_limit_without_a_stop_reason_or_whole():
    cut = diagnose_exchange(exchange(finish_reason="length"), at(100), ALONE, "db")
    assert (cut.cause, cut.ended_by, cut.chunk, cut.at_s) == ("max_tokens", "nobody", 1, 0.7)
    assert cut.summary == "the stream completed, but the answer was cut by the token limit (finish_reason length)"
    assert cut.fix == "raise max_tokens (or max_completion_tokens, max_output_tokens, num_predict)"
    bare = diagnose_exchange(exchange(finish_reason=None), at(100), ALONE, "db")
    assert (bare.cause, bare.summary, bare.fix) == (
        "no_finish_reason", "the stream completed with [DONE], but no event carried a finish_reason",
        "an upstream quirk; AG2 raises on it (see streamreplay matrix)")
    assert diagnose_exchange(exchange(finish_reason=None, stream=False), at(100), ALONE, "db").cause == "complete"
    whole = diagnose_exchange(exchange(client_left_ns=720 * MS), at(100), ALONE, "db")
    assert (whole.cause, whole.summary, whole.evidence, whole.fix) == (
        "complete", "the exchange completed: the client read the whole answer",
        ["the client closed the connection after [DONE], at 0.720 s (the openai SDK does this)"], "")
    assert whole.lines()[2] == "ended      normally, at chunk 1 of 1, 0.700 s"


@pytest.mark.parametrize(("path", "reason", "words", "other"), [
    ("/v1/messages", "max_tokens", "stop_reason max_tokens", "length"),  # Anthropic's own word for it
    ("/v1/responses", "length", "status incomplete: max_output_tokens", "max_tokens"),  # as the recorder stores it
    ("/v1/chat/completions", "length", "finish_reason length", "max_tokens"),
])
def test_the_token_limit_is_read_in_each_api_s_own_words(path: str, reason: str, words: str, other: str):
    d = diagnose_exchange(exchange(path=path, finish_reason=reason), at(100), ALONE, "db")
    assert (d.cause, d.summary) == ("max_tokens", f"the stream completed, but the answer was cut by the token limit "
                                                  f"({words})")
    # another API's word for it is no limit here
    assert diagnose_exchange(exchange(path=path, finish_reason=other), at(100), ALONE, "db").cause != "max_tokens"


@pytest.mark.parametrize(("tape", "cause"), [
    (TapeFacts(3, True, 7), "round_limit"),  # the last of several, all complete
    (TapeFacts(3, True, 8), "complete"),  # not the last
    (TapeFacts(3, False, 7), "complete"),  # not all complete
    (TapeFacts(1, True, 7), "complete"),  # alone
])
def test_the_last_of_a_tape_of_complete_exchanges_points_at_a_round_limit(tape: TapeFacts, cause: str):
    d = diagnose_exchange(exchange(), at(100), tape, "db")
    assert d.cause == cause
    if cause == "round_limit":
        assert d.summary == ("every exchange completed; the tape ends after exactly 3 complete exchanges: if the "
                             "conversation stopped short, a round or turn limit ended it, not the stream")
        assert d.fix == "raise max_round / max_turns / the termination condition's message count"


@pytest.mark.parametrize(("tape", "end_cause", "retried"), [
    (TapeFacts(2, False, 8, 8, "k1"), EndCause.UPSTREAM_RESET, True),
    (TapeFacts(2, False, 8, 8, "k2"), EndCause.UPSTREAM_RESET, False),  # another request
    (TapeFacts(2, True, 8, 8, "k1"), EndCause.COMPLETE, False),  # asked again after a whole answer: no retry
    (TapeFacts(1, False, 7), EndCause.UPSTREAM_RESET, False),  # nothing after it
])
def test_the_same_request_right_after_a_failure_is_a_retry(tape: TapeFacts, end_cause: EndCause, retried: bool):
    d = diagnose_exchange(exchange(end_cause=end_cause), at(100), tape, "db")
    retry = "the same request came again right after (exchange 8): the client retried"
    assert (retry in d.evidence) is retried


def test_tape_facts_read_from_the_exchanges_themselves():
    tape = [exchange(id=i, seq=i, request_key=f"k{i}", end_cause=cause)
            for i, cause in [(1, EndCause.COMPLETE), (2, EndCause.COMPLETE), (3, EndCause.UPSTREAM_RESET)]]
    assert TapeFacts.of(tape[0], tape) == TapeFacts(3, False, 3, 2, "k2")
    assert TapeFacts.of(tape[2], tape) == TapeFacts(3, False, 3, None, None)
    assert TapeFacts.of(tape[0], tape[:2]) == TapeFacts(2, True, 2, 2, "k2")
    assert diagnose_exchange(tape[1], at(100), tape[:2], "db").cause == "round_limit"


def test_what_a_client_would_choke_on_and_a_partial_recording_come_first():
    d = diagnose_exchange(exchange(response_headers=[["Content-Type", "application/json"]],
                                   problems=["p1", "p2", "p3", "p4"], store_error="disk full"), at(100), ALONE, "db")
    assert d.evidence == [
        "THIS RECORDING IS PARTIAL (disk full): what follows is read from what was stored, not from all the client got",
        "the request asked for a stream; the answer is application/json, not SSE",
        "malformed upstream output: p1", "malformed upstream output: p2", "malformed upstream output: p3",
    ]
    untyped = diagnose_exchange(exchange(response_headers=[]), at(100), ALONE, "db")
    assert untyped.evidence == ["the request asked for a stream; the answer is untyped, not SSE"]
    for fields in [{"stream": False}, {"status": 500}, {"status": 199}, {"status": 300}]:  # no stream was to come
        assert diagnose_exchange(exchange(response_headers=[], **fields), at(100), ALONE, "db").evidence == []


def test_a_cause_this_version_does_not_know_reads_as_the_exchange_stands():
    d = diagnose_exchange(exchange(end_cause="from_a_newer_version"), at(100), ALONE, "db")
    assert (d.cause, d.ended_by, d.upstream_complete) == ("complete", "nobody", False)


def test_an_exchange_of_a_db_is_diagnosed_with_its_tape_s_facts_and_the_default_db_in_its_commands(tmp_path):
    tapes = bundled_dir()
    db = tmp_path / "db.db"
    import_cassette(tapes / "agent-multi-turn.jsonl", db)
    store = Store(db)
    last = store.exchanges()[-1]
    d = diagnose(store, last.id)
    assert d.cause == "round_limit" and f"after exactly {len(store.exchanges())} complete" in d.summary
    assert d.replay == "streamreplay play --db recordings/streamreplay.db --tape agent-multi-turn"
    assert diagnose(store, store.exchanges()[0].id).cause == "complete"  # not the last one


def test_tape_facts_read_from_the_db_are_those_of_the_exchanges_themselves(tmp_path):
    # one tape of four exchanges in a DB that holds another tape too: what comes right after each is the next
    # seq of its own tape, whatever the ids and however many come later
    store = Store(tmp_path / "facts.db")
    rows = [("other", 0, "k0", "complete"), ("t", 0, "k1", "upstream_reset"), ("other", 1, "k1", "complete"),
            ("t", 1, "k1", "complete"), ("t", 2, "k9", "complete"), ("t", 3, "k1", "client_left")]
    with store.db.conn:
        for tape, seq, key, cause in rows:
            store.db["exchanges"].insert({"tape": tape, "seq": seq, "method": "POST", "path": "/chat/completions",
                                          "request_key": key, "end_cause": cause})
    tape = store.exchanges(tape="t")
    for ex in tape:
        assert TapeFacts.in_store(store, ex) == TapeFacts.of(ex, tape), ex.seq
    first = tape[0]
    assert TapeFacts.in_store(store, first) == TapeFacts(4, False, tape[-1].id, tape[1].id, "k1")
    # and the diagnosis from the DB names the retry that came right after
    retry = f"the same request came again right after (exchange {tape[1].id}): the client retried"
    assert retry in diagnose(store, first.id, "db").evidence
    assert not any("came again" in line for line in diagnose(store, tape[2].id, "db").evidence)


def test_a_silence_past_the_floor_but_under_three_usual_gaps_is_no_timeout():
    """Well above the usual gap means more than three times it: 260 ms of silence in a stream of 100 ms gaps
    is past TIMEOUT_SILENCE_S yet no timeout, and 310 ms is one."""
    chunks = at(100, 200, 300, 400, 500, 600)
    under = diagnose_exchange(exchange(**LEFT, client_left_at_chunk=3, client_left_ns=560 * MS), chunks, ALONE, "db")
    assert (under.cause, under.gap_before_s) == ("consumer_stopped_reading", pytest.approx(0.26))
    over = diagnose_exchange(exchange(**LEFT, client_left_at_chunk=3, client_left_ns=610 * MS), chunks, ALONE, "db")
    assert over.cause == "client_timeout"


def test_a_silence_of_exactly_three_usual_gaps_is_no_timeout_and_a_millisecond_more_is():
    """"Over 3 times the usual gap" at its boundary, in values floating point holds exactly: 125 ms gaps, and
    375 ms of silence after chunk 3."""
    chunks = at(125, 250, 375, 500, 625, 750)
    exactly = diagnose_exchange(exchange(**LEFT, client_left_at_chunk=4, client_left_ns=875 * MS), chunks, ALONE, "db")
    assert (exactly.cause, exactly.gap_before_s) == ("consumer_stopped_reading", 0.375)
    past = diagnose_exchange(exchange(**LEFT, client_left_at_chunk=4, client_left_ns=876 * MS), chunks, ALONE, "db")
    assert past.cause == "client_timeout"


def test_the_usual_gap_leaves_out_the_wait_for_the_first_chunk():
    """The stream's usual gap is the median of the gaps between chunks, not counting the wait from the
    response head to the first chunk: a slow first chunk does not hide a timeout."""
    # gaps between chunks 100 and 300 ms (usual 200 ms); the first chunk came 1.95 s after the head
    chunks = at(2000, 2100, 2400)
    d = diagnose_exchange(exchange(**LEFT, client_left_at_chunk=3, client_left_ns=3100 * MS), chunks, ALONE, "db")
    assert d.cause == "client_timeout"
    assert d.evidence[1] == "the client left 0.700 s after chunk 2 arrived; the stream's usual gap is 200 ms"


@pytest.mark.parametrize(("k", "cause"), [(3, "consumer_stopped_reading"), (4, "client_deadline")])
def test_a_deadline_is_leaving_after_more_than_the_first_three_chunks(k: int, cause: str):
    """Mid-flow means after more than EARLY_CHUNKS (3) chunks: leaving exactly 1 s after the request with 3
    chunks read is a consumer that stopped, with 4 chunks read a deadline."""
    chunks = at(*range(1000 - 100 * k, 1500, 100))  # a chunk every 100 ms; k of them read before 1 s
    d = diagnose_exchange(exchange(**LEFT, client_left_at_chunk=k, client_left_ns=1000 * MS), chunks, ALONE, "db")
    assert d.cause == cause
