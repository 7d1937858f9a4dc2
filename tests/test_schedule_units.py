"""The schedule and the faults alone: plain objects in, plain objects out, no server, no socket."""

from __future__ import annotations

import json

import pytest

from streamreplay.dialects import CHAT, DIALECTS
from streamreplay.endcause import EndCause, Ending
from streamreplay.exchange import Chunk, Exchange
from streamreplay.replay.faults import apply_faults, parse_faults
from streamreplay.replay.schedule import (
    Piece,
    Schedule,
    as_completion,
    as_stream,
    convert_for_request,
    recorded_ending,
    recorded_schedule,
)

EVENTS = [b'data: {"choices":[{"delta":{"content":"%d "}}]}\n\n' % i for i in range(5)] + [b"data: [DONE]\n\n"]
CHUNKS = [Chunk(i, 1_000_000 * (i + 1), data) for i, data in enumerate(EVENTS)]


def exchange(**fields) -> Exchange:
    base = {"id": 1, "tape": "t", "seq": 0, "method": "POST", "path": "/chat/completions", "status": 200,
            "response_headers": [["Content-Type", "text/event-stream"], ["Date", "x"],
                                 ["Transfer-Encoding", "chunked"]],
            "end_cause": EndCause.COMPLETE, "stream": True}
    return Exchange(**{**base, **fields})


def test_the_recorded_schedule_is_the_chunks_at_their_offsets_minus_the_framing_headers():
    schedule = recorded_schedule(exchange(), CHUNKS)
    assert [p.data for p in schedule.pieces] == EVENTS
    assert [p.t_ns for p in schedule.pieces] == [c.t_ns for c in CHUNKS]
    assert [k.lower() for k, _ in schedule.headers] == ["content-type"]  # no Date, no Transfer-Encoding
    assert schedule.ending is Ending.CLEAN and schedule.status == 200


@pytest.mark.parametrize(("cause", "upstream_end", "ending"), [
    (EndCause.COMPLETE, None, Ending.CLEAN),
    (EndCause.EOF_WITHOUT_DONE, None, Ending.CLEAN),
    (EndCause.UPSTREAM_CLOSED, None, Ending.CLOSE),
    (EndCause.UPSTREAM_MALFORMED, None, Ending.CLOSE),
    (EndCause.UPSTREAM_RESET, None, Ending.RESET),
    (EndCause.CLIENT_LEFT, EndCause.COMPLETE, Ending.CLEAN),  # replay gives what the upstream sent
    (EndCause.CLIENT_LEFT, EndCause.UPSTREAM_RESET, Ending.RESET),
])
def test_the_recorded_ending_is_the_upstreams(cause: EndCause, upstream_end: EndCause | None, ending: Ending):
    assert recorded_ending(exchange(end_cause=cause, upstream_end=upstream_end)) is ending


@pytest.mark.parametrize(("spec", "bodies", "ending"), [
    ("cut:chunk=2", EVENTS[:2], Ending.CLEAN),
    ("close:chunk=3", EVENTS[:3], Ending.CLOSE),
    ("reset:chunk=0", [], Ending.RESET),
    ("drop-done", EVENTS[:5], Ending.CLEAN),
    ("cut:chunk=4+close:chunk=1", EVENTS[:1], Ending.CLOSE),  # left to right
])
def test_faults_cut_the_schedule_and_set_its_ending(spec: str, bodies: list[bytes], ending: Ending):
    schedule = apply_faults(recorded_schedule(exchange(), CHUNKS), parse_faults(spec))
    assert [p.data for p in schedule.pieces] == bodies and schedule.ending is ending


def test_timing_faults_keep_the_bytes_and_move_the_times():
    base = recorded_schedule(exchange(), CHUNKS)
    stalled = apply_faults(base, parse_faults("stall:chunk=2,seconds=1.5"))
    assert stalled.body == base.body
    assert [p.extra_ns for p in stalled.pieces] == [0, 0] + [1_500_000_000] * 4  # wall time, from chunk 2 on
    scaled = apply_faults(base, parse_faults("gap-scale:factor=2"))
    gaps = [b.t_ns - a.t_ns for a, b in zip(scaled.pieces, scaled.pieces[1:], strict=False)]
    assert scaled.body == base.body and set(gaps) == {2_000_000}
    rechunked = apply_faults(base, parse_faults("rechunk:size=7"))
    assert rechunked.body == base.body and all(len(p.data) <= 7 for p in rechunked.pieces)


def test_the_recorded_schedule_starts_at_the_recorded_head_else_at_the_first_chunk():
    assert recorded_schedule(exchange(headers_ns=123), CHUNKS).head_ns == 123
    assert recorded_schedule(exchange(), CHUNKS[1:]).head_ns == CHUNKS[1].t_ns
    assert recorded_schedule(exchange(), []).head_ns == 0


def test_a_recording_without_a_status_replays_as_bad_gateway_in_its_path_s_dialect():
    schedule = recorded_schedule(exchange(status=None, path="/api/chat"), CHUNKS)
    assert schedule.status == 502 and schedule.dialect is DIALECTS["ollama"]


WHOLE = {"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "stop"}]}


def json_schedule(body: bytes = json.dumps(WHOLE).encode(), status: int = 200,
                  content_type: str = "application/json") -> Schedule:
    return Schedule(status=status, headers=[("content-type", content_type), ("x-id", "1")],
                    pieces=[Piece(5_000, body)], ending=Ending.CLEAN, head_ns=2_000)


def stream_schedule(pieces: list[Piece] | None = None) -> Schedule:
    return Schedule(status=200, headers=[("content-type", "text/event-stream")], ending=Ending.CLEAN, head_ns=500,
                    pieces=pieces if pieces is not None else [Piece(1_000 * (i + 1), e) for i, e in
                                                              enumerate(CHAT.stream_events(WHOLE))])


def test_a_json_recording_asked_as_a_stream_is_its_events_spread_from_the_head_to_the_answer():
    recorded = json_schedule()
    out = convert_for_request(recorded, True)
    events = CHAT.stream_events(WHOLE)
    assert [p.data for p in out.pieces] == events and len(events) == 4
    assert [p.t_ns for p in out.pieces] == [2_000, 3_000, 4_000, 5_000]
    assert out.headers == [("x-id", "1"), ("Content-Type", "text/event-stream; charset=utf-8")]
    assert out.applied == ["json->stream"] and out.status == 200
    assert recorded.applied == [] and recorded.pieces[0].t_ns == 5_000  # the recording's schedule is untouched


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/json;charset=UTF-8"])
def test_a_json_recording_with_a_charset_is_asked_as_a_stream_all_the_same(content_type: str):
    # Ollama and many servers name a charset: the answer is still JSON, and a streaming client gets its events
    out = convert_for_request(json_schedule(content_type=content_type), True)
    assert out.applied == ["json->stream"] and [p.data for p in out.pieces] == CHAT.stream_events(WHOLE)


def test_a_single_event_is_written_at_the_head_and_ndjson_has_no_charset():
    one = as_stream(json_schedule(), [b"only"])
    assert [(p.t_ns, p.data) for p in one.pieces] == [(2_000, b"only")]
    ndjson = as_stream(json_schedule().copy(dialect=DIALECTS["ollama"]), [b"a", b"b"])
    assert ndjson.header("content-type") == "application/x-ndjson"
    assert [p.t_ns for p in ndjson.pieces] == [2_000, 5_000]  # two events: the head and the answer's time


def test_events_are_spread_in_whole_nanoseconds_and_an_empty_recording_writes_them_at_its_head():
    spread = as_stream(json_schedule(), [b"e"] * 8)
    assert [p.t_ns for p in spread.pieces] == [2_000 + 428 * i for i in range(8)]  # 3_000 // 7
    assert all(type(p.t_ns) is int for p in spread.pieces)
    assert [p.t_ns for p in as_stream(json_schedule().copy(pieces=[]), [b"a", b"b"]).pieces] == [2_000, 2_000]


def test_a_streamed_recording_asked_as_json_is_the_whole_answer_at_the_last_chunk_s_time():
    recorded = stream_schedule()
    out = convert_for_request(recorded, False)
    assert [(p.t_ns, p.data) for p in out.pieces] == [(4_000, json.dumps(CHAT.whole_body(recorded.body)).encode())]
    assert out.head_ns == 4_000 and out.applied == ["stream->json"]
    assert out.headers == [("Content-Type", "application/json")]
    assert recorded.applied == [] and len(recorded.pieces) == 4


def test_an_empty_schedule_answered_as_json_is_written_at_its_head():
    out = as_completion(stream_schedule([]), {"a": 1})
    assert [(p.t_ns, p.data) for p in out.pieces] == [(500, b'{"a": 1}')] and out.head_ns == 500


@pytest.mark.parametrize(("schedule", "want_stream"), [
    (json_schedule(), None),  # the request does not say
    (json_schedule(status=404), True),  # only a success is converted
    (json_schedule(status=199), True),
    (json_schedule(status=300), True),
    (json_schedule(), False),  # already what is asked
    (stream_schedule(), True),
    (json_schedule(content_type="text/plain"), True),  # not JSON
    (json_schedule(b"{not json"), True),
    (json_schedule(b"[1, 2]"), True),  # JSON but not an object
    (json_schedule(b'{"object": "list"}'), True),  # an object this dialect cannot stream
    (stream_schedule([Piece(1, b"data: nothing\n\n")]), False),  # a stream that is no answer
])
def test_what_cannot_or_need_not_be_converted_is_replayed_as_recorded(schedule: Schedule, want_stream: bool | None):
    assert convert_for_request(schedule, want_stream) is schedule


@pytest.mark.parametrize("status", [200, 299])
def test_any_success_is_converted(status: int):
    assert convert_for_request(json_schedule(status=status), True).applied == ["json->stream"]


# -- each fault, piece by piece ------------------------------------------------------------------


def timed(datas: list[bytes], dialect=CHAT) -> Schedule:
    """Pieces 1 ms apart, each with its own wall-time extra, after a head that has one too: a fault
    that moves a piece's time, drops its extra or takes another piece's shows in the triples."""
    return Schedule(status=200, headers=[("Content-Type", "text/event-stream")], ending=Ending.RESET,
                    pieces=[Piece(1_000_000 * (i + 1), d, 10 * (i + 1)) for i, d in enumerate(datas)],
                    head_ns=500, head_extra_ns=7, applied=["recorded"], dialect=dialect)


def triples(schedule: Schedule) -> list[tuple[int, bytes, int]]:
    return [(p.t_ns, p.data, p.extra_ns) for p in schedule.pieces]


def apply(schedule: Schedule, spec: str) -> Schedule:
    return apply_faults(schedule, parse_faults(spec))


@pytest.mark.parametrize(("spec", "name"), [
    ("cut:chunk=2", "cut:chunk=2"),
    ("cut:byte=5", "cut:byte=5"),
    ("close", "close:chunk=0"),
    ("reset:chunk=1", "reset:chunk=1"),
    ("stall:seconds=1.5,chunk=2", "stall:chunk=2,seconds=1.5"),  # in the fault's own order, defaults filled in
    ("delay-first", "delay-first:seconds=5.0"),
    ("gap-scale:factor=2", "gap-scale:factor=2.0"),
    ("rechunk:size=7", "rechunk:size=7"),
    ("drop-done", "drop-done"),
    ("drop-finish", "drop-finish"),
    ("status:code=503", "status:code=503"),
    ("error-event:chunk=1", "error-event:chunk=1"),
    ("corrupt:chunk=1", "corrupt:chunk=1"),
])
def test_each_fault_is_logged_as_its_full_spec_after_what_was_done_before(spec: str, name: str):
    out = apply(timed(EVENTS), spec)
    assert out.applied == ["recorded", name]
    assert parse_faults(name) == parse_faults(spec)  # the logged spec replays the same fault


@pytest.mark.parametrize(("byte", "expected"), [
    (0, []),
    (6, [(1_000_000, b"abcd", 10), (2_000_000, b"ef", 20)]),  # the cut piece keeps its time and its extra
    (8, [(1_000_000, b"abcd", 10), (2_000_000, b"efgh", 20)]),  # on a boundary: no empty piece after it
    (10, [(1_000_000, b"abcd", 10), (2_000_000, b"efgh", 20), (3_000_000, b"ij", 30)]),
    (99, [(1_000_000, b"abcd", 10), (2_000_000, b"efgh", 20), (3_000_000, b"ij", 30)]),
])
def test_cut_by_bytes_delivers_the_first_b_bytes_then_a_clean_end(byte: int, expected: list):
    out = apply(timed([b"abcd", b"efgh", b"ij"]), f"cut:byte={byte}")
    assert triples(out) == expected and out.ending is Ending.CLEAN  # the recording ended in a reset


def test_stall_keeps_every_piece_s_recorded_time():
    base = timed(EVENTS)
    stalled = apply(base, "stall:chunk=1,seconds=0.5")
    assert triples(stalled) == [(t, d, e + (500_000_000 if i >= 1 else 0)) for i, (t, d, e) in enumerate(triples(base))]


def test_delay_first_adds_its_wait_to_the_head_and_to_every_piece_and_keeps_the_rest():
    base = timed(EVENTS)
    out = apply(base, "delay-first:seconds=0.25+delay-first:seconds=0.5")
    assert triples(out) == [(t, d, e + 750_000_000) for t, d, e in triples(base)]
    assert out.head_extra_ns == 7 + 750_000_000 and out.head_ns == 500


def test_gap_scale_moves_the_times_only():
    base = timed(EVENTS)
    out = apply(base, "gap-scale:factor=3")
    assert triples(out) == [(500 + 3 * (t - 500), d, e) for t, d, e in triples(base)]


@pytest.mark.parametrize(("size", "expected"), [
    # each piece at the time (and with the extra) of the recorded chunk its last byte came in
    (3, [(1_000_000, b"abc", 10), (2_000_000, b"def", 20), (3_000_000, b"ghi", 30)]),
    (2, [(1_000_000, b"ab", 10), (2_000_000, b"cd", 20), (2_000_000, b"ef", 20), (3_000_000, b"gh", 30),
         (3_000_000, b"i", 30)]),  # what is left at the end goes with the last chunk
    (4, [(2_000_000, b"abcd", 20), (3_000_000, b"efgh", 30), (3_000_000, b"i", 30)]),
])
def test_rechunk_writes_the_same_bytes_b_at_a_time(size: int, expected: list):
    out = apply(timed([b"abc", b"defg", b"hi"]), f"rechunk:size={size}")
    assert triples(out) == expected and out.body == b"abcdefghi"


E_TEXT = b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
E_STOP = b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n'
E_NULL = b'data: {"choices":[{"delta":{},"finish_reason":null}]}\n\n'
E_DONE = b"data: [DONE]\n\n"


AT = E_STOP.index(b'"stop"')  # where the rewrite begins


@pytest.mark.parametrize(("datas", "expected"), [
    # the change inside one piece: the pieces before and after it are untouched
    ([E_TEXT, E_STOP, E_DONE], [E_TEXT, E_NULL, E_DONE]),
    # the changed bytes start a piece: the new bytes go out with that piece, not at the end of the one before
    ([E_TEXT + E_STOP[:AT], E_STOP[AT:], E_DONE], [E_TEXT + E_STOP[:AT], E_NULL[AT:], E_DONE]),
    # a change across two pieces: the new bytes go with the first, the second keeps its bytes after the change
    ([E_TEXT + E_STOP[:AT + 2], E_STOP[AT + 2:] + E_DONE], [E_TEXT + E_NULL[:AT + 4], E_NULL[AT + 4:] + E_DONE]),
])
def test_drop_finish_rewrites_the_stop_reason_in_place_and_keeps_every_chunk_boundary(datas, expected):
    out = apply(timed(datas), "drop-finish")
    assert triples(out) == [(1_000_000 * (i + 1), d, 10 * (i + 1)) for i, d in enumerate(expected)]
    assert out.body == b"".join(datas).replace(b'"stop"', b"null") and out.ending is Ending.RESET


def test_drop_finish_nulls_every_choice_s_stop_reason_with_n_2():
    two = [b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
           b'data: {"choices":[{"index":1,"delta":{},"finish_reason":"length"}]}\n\n', E_DONE]
    out = apply(timed(two), "drop-finish")
    assert out.body == b"".join(two).replace(b'"stop"', b"null").replace(b'"length"', b"null")
    # and two in one event
    both = [b'data: {"choices":[{"index":0,"finish_reason":"stop"},{"index":1,"finish_reason":"stop"}]}\n\n']
    assert apply(timed(both), "drop-finish").body == both[0].replace(b'"stop"', b"null")


@pytest.mark.parametrize(("datas", "expected"), [
    ([E_TEXT, E_STOP, E_DONE], [E_TEXT, E_STOP]),
    ([E_TEXT, E_STOP + E_DONE[:5], E_DONE[5:]], [E_TEXT, E_STOP]),  # [DONE] split over two pieces
    ([E_DONE], []),  # nothing but the terminal event: nothing is left
    ([E_TEXT, E_STOP], [E_TEXT, E_STOP]),  # no terminal event: the recording as it was
])
def test_drop_done_takes_out_the_terminal_event_and_nothing_else(datas, expected):
    out = apply(timed(datas), "drop-done")
    assert triples(out) == [(1_000_000 * (i + 1), d, 10 * (i + 1)) for i, d in enumerate(expected)]
    assert out.applied == ["recorded", "drop-done"]


@pytest.mark.parametrize(("code", "retry_after"), [(503, None), (429, "0"), (200, None)])
def test_status_answers_the_dialect_s_error_json_at_the_recorded_head(code: int, retry_after: str | None):
    base = apply(timed(EVENTS), "delay-first:seconds=1")
    out = apply(base, f"status:code={code}")
    assert out.status == code and out.ending is Ending.CLEAN and out.dialect is CHAT
    assert json.loads(out.body) == {"error": {"message": f"streamreplay fault: status {code}", "type": "server_error",
                                              "param": None, "code": str(code)}}
    assert out.header("content-type") == "application/json" and out.header("retry-after") == retry_after
    assert len(out.headers) == (2 if retry_after else 1)  # nothing of the recorded answer's headers
    assert [(p.t_ns, p.extra_ns) for p in out.pieces] == [(500, 0)]  # the body comes with the head
    assert (out.head_ns, out.head_extra_ns) == (500, 7 + 1_000_000_000)  # the head waits as it did


def test_a_recording_s_head_keeps_its_own_time_and_a_status_fault_answers_then():
    """The head (status and headers) came 0.3 s after the request and the first chunk 0.9 s after it: a
    replay writes the head at 0.3 s, `status` answers at 0.3 s, and `gap-scale` leaves the head alone."""
    late_body = [Chunk(i, 900_000_000 + 1_000_000 * i, data) for i, data in enumerate(EVENTS)]
    recorded = recorded_schedule(exchange(headers_ns=300_000_000), late_body)
    assert recorded.head_ns == 300_000_000 and recorded.pieces[0].t_ns == 900_000_000
    status = apply(recorded, "status:code=503")
    assert (status.head_ns, [p.t_ns for p in status.pieces]) == (300_000_000, [300_000_000])
    scaled = apply(recorded, "gap-scale:factor=2")
    assert scaled.head_ns == 300_000_000 and scaled.pieces[0].t_ns > 900_000_000


def test_status_speaks_the_recording_s_dialect():
    anthropic = DIALECTS["anthropic"]
    out = apply(timed(EVENTS, dialect=anthropic), "status:code=529")
    assert out.dialect is anthropic
    assert json.loads(out.body) == {"type": "error", "error": {"type": "overloaded_error",
                                                               "message": "streamreplay fault: status 529"}}


ERROR_EVENT = b'data: {"error": {"message": "streamreplay fault: error event mid-stream", "type": "server_error", ' \
              b'"param": null, "code": null}}\n\n'


@pytest.mark.parametrize(("chunk", "datas", "expected"), [
    # after chunk N-1, at the time chunk N was recorded, with the wall-time extra of the chunk before
    (1, [b"a", b"b", b"c"], [(1_000_000, b"a", 10), (2_000_000, ERROR_EVENT, 10)]),
    (0, [b"a", b"b"], [(1_000_000, ERROR_EVENT, 0)]),
    (3, [b"a", b"b", b"c"], [(1_000_000, b"a", 10), (2_000_000, b"b", 20), (3_000_000, b"c", 30),
                             (3_000_000, ERROR_EVENT, 30)]),  # past the end: after the last chunk
    (9, [], [(500, ERROR_EVENT, 0)]),  # an empty recording: at its head
])
def test_error_event_cuts_the_stream_with_the_api_s_error_event_and_a_clean_end(chunk: int, datas, expected):
    out = apply(timed(datas), f"error-event:chunk={chunk}")
    assert triples(out) == expected and out.ending is Ending.CLEAN


def test_corrupt_cuts_chunk_n_s_json_in_half_and_keeps_the_rest():
    base = timed([E_TEXT, E_STOP, E_DONE])
    out = apply(base, "corrupt:chunk=1")
    payload = E_STOP[len(b"data: "):-2]
    assert triples(out) == [(1_000_000, E_TEXT, 10), (2_000_000, b"data: " + payload[:len(payload) // 2] + b"\n\n", 20),
                            (3_000_000, E_DONE, 30)]
    assert triples(apply(base, "corrupt:chunk=2"))[2] == (3_000_000, b"data: [", 30)  # no JSON: half the bytes
    assert triples(apply(base, "corrupt:chunk=3")) == triples(base)  # no chunk 3: nothing to corrupt


def test_replay_leaves_out_hop_by_hop_headers_date_and_content_length_and_keeps_the_rest():
    """README, Replay: the recorded status and headers, minus hop-by-hop, `date` and `content-length`
    (replay frames the body itself, and a fault changes its length)."""
    recorded = [["Content-Type", "application/json"], ["Content-Length", "123"], ["Date", "Thu, 26 Nov 2026"],
                ["Connection", "keep-alive"], ["Keep-Alive", "timeout=5"], ["Transfer-Encoding", "chunked"],
                ["X-Request-Id", "req-1"], ["openai-processing-ms", "42"], ["Set-Cookie", "[redacted]"]]
    schedule = recorded_schedule(exchange(response_headers=recorded, stream=False), CHUNKS)
    assert schedule.headers == [("Content-Type", "application/json"), ("X-Request-Id", "req-1"),
                                ("openai-processing-ms", "42"), ("Set-Cookie", "[redacted]")]
