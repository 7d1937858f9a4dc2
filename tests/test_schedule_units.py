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
