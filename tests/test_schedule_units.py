"""The schedule and the faults alone: plain objects in, plain objects out, no server, no socket."""

from __future__ import annotations

import pytest

from streamreplay.endcause import EndCause, Ending
from streamreplay.exchange import Chunk, Exchange
from streamreplay.replay.faults import apply_faults, parse_faults
from streamreplay.replay.schedule import recorded_ending, recorded_schedule

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
