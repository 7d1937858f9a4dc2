"""What a timeline draws, in-process on hand-built exchanges, replays and plans (timeline/model.py): one mark per
chunk with the first content, finish_reason and [DONE] marked; the client leaving where and when it happened and
the chunks it never read; the upstream's end as what it was; faults on a replay; where two lanes part."""

from __future__ import annotations

import json
from array import array

from streamreplay.dialects import dialect_for
from streamreplay.endcause import CAUSES, EndCause, Ending
from streamreplay.exchange import Chunk, Exchange
from streamreplay.replay.replayed import Replayed
from streamreplay.replay.schedule import Piece, Schedule
from streamreplay.timeline.model import (
    fmt_ns,
    overview_series,
    parting,
    recorded_series,
    replay_series,
    schedule_series,
)
from tests.helpers import chat_chunk

MS = 1_000_000
ROLE = chat_chunk({"role": "assistant", "content": ""})
HI = chat_chunk({"content": "Hi"})
THERE = chat_chunk({"content": " there"})
STOP = chat_chunk({}, finish="stop")
DONE = b"data: [DONE]\n\n"
SSE = [["Content-Type", "text/event-stream"]]


def _exchange(**columns: object) -> Exchange:
    fields: dict = {"id": 7, "tape": "t", "seq": 0, "method": "POST", "path": "/chat/completions", "status": 200,
                    "response_headers": SSE, "stream": True}
    return Exchange(**{**fields, **columns})


def _chunks(*datas: bytes, step: int = 10 * MS) -> list[Chunk]:
    return [Chunk(i, (i + 1) * step, d) for i, d in enumerate(datas)]


def test_durations_read_as_people_read_them():
    assert [fmt_ns(n) for n in (3.2 * MS, 9.96 * MS, 10 * MS, 372 * MS, 999 * MS, 1000 * MS, 1090 * MS)] == [
        "3.2 ms", "10.0 ms", "10 ms", "372 ms", "999 ms", "1.00 s", "1.09 s"]


def test_one_mark_per_chunk_with_the_first_content_the_finish_reason_and_done_marked():
    chunks = _chunks(ROLE, HI, THERE, STOP, DONE)
    s = recorded_series(_exchange(end_cause=EndCause.COMPLETE, duration_ns=60 * MS), chunks)
    assert [m.index for m in s.marks] == [0, 1, 2, 3, 4]
    assert [m.t_ns for m in s.marks] == [10 * MS, 20 * MS, 30 * MS, 40 * MS, 50 * MS]
    assert [set(m.kinds) for m in s.marks] == [set(), {"content", "first"}, {"content"}, {"finish"}, {"done"}]
    assert [m.delta for m in s.marks][1:3] == ["Hi", " there"]
    assert s.first_byte_ns == 10 * MS
    assert s.text == "Hi there"
    assert not any(m.unseen for m in s.marks)
    assert s.title == "recorded · exchange 7 · complete"
    (end,) = s.markers
    assert (end.kind, end.t_ns) == ("end", 60 * MS) and end.label.endswith(" · 60 ms")
    assert s.note == f"5 chunks · {sum(len(c.data) for c in chunks)} bytes · 60 ms"


def test_a_chunk_that_carries_only_a_tool_call_is_content_and_can_be_the_first():
    """An answer that starts with a tool call has its first content there: the call is what the model said."""
    call = chat_chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                       "function": {"name": "get_weather", "arguments": ""}}]})
    args = chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]})
    s = recorded_series(_exchange(end_cause=EndCause.COMPLETE), _chunks(ROLE, call, args, STOP, DONE))
    assert [set(m.kinds) for m in s.marks] == [set(), {"content", "first"}, {"content"}, {"finish"}, {"done"}]


def test_an_error_event_is_marked_as_an_error():
    err = b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
    s = recorded_series(_exchange(end_cause=EndCause.COMPLETE), _chunks(HI, err))
    assert "error" in s.marks[1].kinds and "error" not in s.marks[0].kinds


def test_the_client_leaving_is_drawn_where_and_when_with_the_chunks_it_never_read():
    chunks = _chunks(ROLE, HI, THERE, STOP, DONE)
    ex = _exchange(end_cause=EndCause.CLIENT_LEFT, upstream_end=EndCause.COMPLETE, client_left_at_chunk=2,
                   client_left_ns=25 * MS, duration_ns=70 * MS)
    s = recorded_series(ex, chunks)
    assert [m.unseen for m in s.marks] == [False, False, True, True, True]
    left, end = s.markers
    assert left.kind == "client-left" and left.t_ns == 25 * MS
    assert left.label.endswith(" at 25.0 ms · after 2 of 5 chunks")
    assert (end.kind, end.t_ns) == ("end", 70 * MS)  # what the upstream did meanwhile: it completed
    assert s.seen_text == "Hi"  # what the client had read when it left
    assert s.text == "Hi there"


def test_a_client_that_left_while_the_proxy_stopped_reading_too_is_drawn_as_an_abort():
    ex = _exchange(end_cause=EndCause.CLIENT_LEFT, client_left_at_chunk=1, client_left_ns=15 * MS,
                   duration_ns=90 * MS)
    s = recorded_series(ex, _chunks(HI, THERE))
    end = s.markers[-1]
    assert end.kind == "stop" and "abort" in end.label
    assert end.t_ns == 90 * MS


def test_an_upstream_reset_close_and_error_status_are_drawn_as_what_they_were():
    chunks = _chunks(HI, THERE)
    reset = recorded_series(_exchange(end_cause=EndCause.UPSTREAM_RESET, duration_ns=5 * MS), chunks)
    assert reset.markers[-1].kind == "reset"
    assert reset.markers[-1].t_ns == 20 * MS  # never before the last chunk
    closed = recorded_series(_exchange(end_cause=EndCause.UPSTREAM_CLOSED, duration_ns=33 * MS), chunks)
    assert closed.markers[-1].kind == "closed" and closed.markers[-1].t_ns == 33 * MS
    status = recorded_series(_exchange(end_cause=EndCause.HTTP_ERROR, status=503, duration_ns=1 * MS), [])
    assert status.markers[-1].kind == "error" and status.markers[-1].label.startswith("HTTP 503 · ")
    assert status.first_byte_ns is None and status.marks == []
    still = recorded_series(_exchange(duration_ns=80 * MS), chunks)
    assert still.markers[-1].kind == "open" and still.markers[-1].t_ns == 20 * MS  # open: drawn to its last chunk
    assert still.title == "recorded · exchange 7 · open"


def test_an_overview_keeps_one_bar_per_time_slice_and_never_one_bar_across_the_client_leaving():
    rows = [(i, i * MS, 10) for i in range(100)]
    ex = _exchange(end_cause=EndCause.COMPLETE, duration_ns=99 * MS)
    s = overview_series(ex, rows, span_ns=100 * MS, bars=10)
    assert len(s.marks) == 10 and sum(m.size for m in s.marks) == 1000
    assert s.marks[0].index == 0 and s.marks[-1].last_index == 99
    assert s.first_byte_ns == 0 and s.note.endswith(" · 10 bars")
    assert s.note.startswith("100 chunks · 1000 bytes · ")
    left = _exchange(end_cause=EndCause.CLIENT_LEFT, upstream_end=EndCause.COMPLETE, client_left_at_chunk=5,
                     client_left_ns=5 * MS, duration_ns=99 * MS)
    s = overview_series(left, rows, span_ns=100 * MS, bars=10)
    assert [(m.index, m.last_index) for m in s.marks[:2]] == [(0, 4), (5, 9)]
    assert [m.unseen for m in s.marks[:2]] == [False, True]
    assert s.title.endswith(" · overview")


def test_an_overview_keeps_at_most_its_bars_when_the_last_chunk_ends_the_span():
    rows = [(i, i * MS, 10) for i in range(100)]
    s = overview_series(_exchange(end_cause=EndCause.COMPLETE), rows, span_ns=99 * MS, bars=10)
    assert len(s.marks) <= 10  # "keeps at most `bars` marks": the page's size is bounded by it


def test_an_overview_draws_900_bars_by_default():
    """The README's "at most its 900 bars": 3,000 evenly spread chunks fill each of 900 slices, no more."""
    rows = [(i, i * MS, 10) for i in range(3000)]
    s = overview_series(_exchange(end_cause=EndCause.COMPLETE), rows, span_ns=3000 * MS)
    assert len(s.marks) == 900 and sum(m.size for m in s.marks) == 30_000 and s.note.endswith(" · 900 bars")


def _replayed(**fields: object) -> Replayed:
    offsets = fields.pop("offsets", [10 * MS, 20 * MS, 30 * MS])
    base: dict = {"n": 1, "method": "POST", "path": "/chat/completions", "total": 3, "delivered": 3,
                  "ending": "clean", "done_delivered": True, "offsets_ns": array("q", offsets)}
    return Replayed(**{**base, **fields})


def test_a_replay_is_drawn_with_its_faults_and_its_ending():
    chunks = _chunks(HI, STOP, DONE)
    s = replay_series(_replayed(), chunks)
    assert [set(m.kinds) for m in s.marks] == [{"content", "first"}, {"finish"}, {"done"}]
    assert s.title == "replay #1 · no fault"
    (end,) = s.markers
    assert (end.kind, end.t_ns) == ("end", 30 * MS) and end.label == "end · complete · 30 ms"
    assert s.note == "3/3 chunks delivered · ended clean"
    reset = replay_series(_replayed(ending="reset", applied=["reset:after=3"]), chunks)
    assert [m.kind for m in reset.markers] == ["fault"]  # the fault says how it ended: no second ending
    assert reset.markers[0].label == "fault reset:after=3: TCP reset after 3 chunks"
    assert reset.title == "replay #1 · reset:after=3"
    nodone = replay_series(_replayed(ending="clean", done_delivered=False), _chunks(HI, STOP, b""))
    assert nodone.markers[-1].kind == "stop" and nodone.markers[-1].label.startswith("clean end, no [DONE]")
    closed = replay_series(_replayed(ending="close", done_delivered=False), chunks)
    assert closed.markers[-1].kind == "closed"


def test_a_stall_on_a_replay_is_drawn_as_a_span_from_its_chunk_to_the_next():
    s = replay_series(_replayed(applied=["stall:chunk=2,ms=500"], offsets=[10 * MS, 20 * MS, 520 * MS]),
                      _chunks(HI, STOP, DONE))
    stall = s.markers[0]
    assert (stall.kind, stall.t_ns, stall.until_ns) == ("stall", 20 * MS, 520 * MS)
    assert stall.label == "fault stall:chunk=2,ms=500: stalled 500 ms"
    held = replay_series(_replayed(applied=["delay-first:ms=100"]), _chunks(HI, STOP, DONE))
    assert (held.markers[0].kind, held.markers[0].t_ns, held.markers[0].until_ns) == ("stall", 0, 10 * MS)
    still = replay_series(_replayed(applied=["stall:chunk=3,ms=900"], client_left_at_chunk=3, client_left_ns=900 * MS,
                                    done_delivered=False), _chunks(HI, STOP, DONE))
    assert still.markers[0].until_ns == 900 * MS and still.markers[0].label.endswith(", still stalled at the end")


def test_a_client_leaving_a_replay_is_drawn_and_a_cut_it_never_reached_is_not():
    s = replay_series(_replayed(applied=["cut:after=3"], delivered=1, client_left_at_chunk=1, client_left_ns=15 * MS,
                                done_delivered=False), _chunks(HI, STOP, DONE))
    assert [m.kind for m in s.markers] == ["client-left"]
    assert s.markers[0].t_ns == 15 * MS and s.markers[0].label.endswith(" at 15.0 ms · after 1 of 3 chunks")
    assert s.note == "1/3 chunks delivered · the client left"
    # the client read [DONE] and then left: that is no leaving early
    done = replay_series(_replayed(client_left_at_chunk=3, client_left_ns=40 * MS), _chunks(HI, STOP, DONE))
    assert [m.kind for m in done.markers] == ["end"]


def test_a_replay_plan_is_drawn_on_the_clock_of_its_speed_with_no_client():
    pieces = [Piece(10 * MS, HI), Piece(20 * MS, STOP), Piece(30 * MS, DONE, extra_ns=5 * MS)]
    plan = Schedule(200, [("Content-Type", "text/event-stream")], pieces, Ending.CLEAN, applied=["stall:chunk=2"])
    s = schedule_series(plan, speed=2.0)
    assert [m.t_ns for m in s.marks] == [5 * MS, 10 * MS, 20 * MS]
    assert s.has_client is False and s.text == "Hi"
    assert s.title == "replay plan · stall:chunk=2"
    assert s.markers[-1].kind == "end" and s.note == "3 chunks · ends clean"
    assert [m.t_ns for m in schedule_series(plan, speed=0).marks] == [0, 0, 5 * MS]
    cut = Schedule(200, [], [Piece(10 * MS, HI)], Ending.CLEAN)
    assert schedule_series(cut).markers[-1].kind == "stop"  # no [DONE] in the plan


def test_two_lanes_part_at_the_first_chunk_a_reader_would_tell_apart():
    def lane(*marks: tuple[int, bytes], has_client: bool = True) -> object:
        s = recorded_series(_exchange(end_cause=EndCause.COMPLETE), [Chunk(i, t, d) for i, (t, d) in enumerate(marks)])
        s.has_client = has_client
        return s

    a = lane((10 * MS, HI), (20 * MS, THERE))
    assert parting(a, lane((10 * MS, HI), (20 * MS, THERE))) is None
    assert parting(a, lane((10 * MS, HI), (20 * MS, STOP)))[:2] == (1, 20 * MS)
    assert parting(a, lane((10 * MS, HI))) == (1, 20 * MS, "B stops after 1 chunks; A goes on to 2")
    assert parting(lane((10 * MS, HI)), a) == (1, 20 * MS, "A stops after 1 chunks; B goes on to 2")
    # timing: within 50 ms (or 5 % of the span) is the same; beyond it, they part
    assert parting(a, lane((10 * MS, HI), (70 * MS, THERE))) is None
    late = parting(a, lane((10 * MS, HI), (71 * MS, THERE)))
    assert late == (1, 20 * MS, "chunk 1 comes at 20 ms in A, 71 ms in B")
    slow = lane((10 * MS, HI), (2000 * MS, THERE))
    assert parting(slow, lane((10 * MS, HI), (2090 * MS, THERE))) is None  # 5 % of 2.09 s is 104 ms
    assert parting(slow, lane((10 * MS, HI), (2120 * MS, THERE))) is not None
    b = lane((10 * MS, HI), (20 * MS, THERE))
    b.marks[1].unseen = True
    assert parting(a, b) == (1, 20 * MS, "the client of B had left before chunk 1")
    b.has_client = False  # a plan: nobody read it, so a client leaving is no difference
    assert parting(a, b) is None


def _anthropic_events() -> list[bytes]:
    def ev(name: str, data: dict) -> bytes:
        return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()

    return [ev("message_start", {"message": {"id": "m", "role": "assistant", "content": []}}),
            ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            ev("message_delta", {"delta": {"stop_reason": "end_turn"}}),
            ev("message_stop", {})]


def test_each_lane_reads_its_chunks_in_its_own_dialect():
    """An Anthropic answer is drawn with its own landmarks and text, not chat's, in a recording, a replay and a plan."""
    body = _anthropic_events()
    want = [set(), set(), {"content", "first"}, {"finish"}, {"done"}]
    rec = recorded_series(_exchange(path="/v1/messages", end_cause=EndCause.COMPLETE), _chunks(*body))
    assert [set(m.kinds) for m in rec.marks] == want and rec.text == "Hi"
    assert rec.marks[2].delta == "Hi"
    offsets = [(i + 1) * MS for i in range(5)]
    rep = replay_series(_replayed(path="/v1/messages", offsets=offsets, total=5, delivered=5), _chunks(*body))
    assert [set(m.kinds) for m in rep.marks] == want and rep.text == "Hi"
    cut = replay_series(_replayed(path="/v1/messages", offsets=offsets[:4], total=4, delivered=4,
                                  done_delivered=False), _chunks(*body))
    assert cut.markers[-1].label.startswith("clean end, no message_stop · ")
    pieces = [Piece(t, d) for t, d in zip(offsets, body, strict=True)]
    plan = Schedule(200, [("Content-Type", "text/event-stream")], pieces, Ending.CLEAN,
                    dialect=dialect_for("/v1/messages"))
    s = schedule_series(plan)
    assert [set(m.kinds) for m in s.marks] == want and s.text == "Hi"
    no_stop = Schedule(200, [], [Piece(t, d) for t, d in zip(offsets[:4], body[:4], strict=True)], Ending.CLEAN,
                       dialect=dialect_for("/v1/messages"))
    assert schedule_series(no_stop).markers[-1].label.startswith("clean end, no message_stop · ")


def test_a_whole_json_answer_is_read_by_its_content_type():
    whole = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Whole"},
                                     "finish_reason": "stop"}]}).encode()
    ex = _exchange(end_cause=EndCause.COMPLETE, response_headers=[["Content-Type", "application/json"]])
    assert recorded_series(ex, _chunks(whole[:10], whole[10:])).text == "Whole"
    left = _exchange(end_cause=EndCause.CLIENT_LEFT, upstream_end=EndCause.COMPLETE, client_left_at_chunk=2,
                     client_left_ns=25 * MS, response_headers=[["Content-Type", "application/json"]])
    assert recorded_series(left, _chunks(whole[:10], whole[10:])).seen_text == "Whole"
    plan = Schedule(200, [("Content-Type", "application/json")], [Piece(MS, whole)], Ending.CLEAN)
    assert schedule_series(plan).text == "Whole"


def test_each_fault_that_ends_a_replay_is_said_in_its_words():
    chunks = _chunks(HI, STOP, DONE)
    for spec, words in (("cut:after=3", "clean end"), ("close:after=3", "closed mid-body"),
                        ("error-event:after=3", "error event"), ("status:code=500", "an error status instead")):
        (marker,) = replay_series(_replayed(applied=[spec]), chunks).markers
        assert (marker.kind, marker.label) == ("fault", f"fault {spec}: {words} after 3 chunks")
        (marker,) = schedule_series(Schedule(200, [], [Piece(MS, HI)], Ending.CLEAN, applied=[spec])).markers
        assert marker.label == f"fault {spec}: {words} after 1 chunks" and marker.t_ns == MS
    closed = replay_series(_replayed(ending="close", done_delivered=False), chunks).markers[-1]
    assert closed.label == "closed mid-body · 30 ms"
    reset = replay_series(_replayed(ending="reset", done_delivered=False), chunks).markers[-1]
    assert (reset.kind, reset.label) == ("reset", "TCP reset · 30 ms")
    plan = Schedule(200, [], [Piece(MS, HI)], Ending.RESET)
    assert schedule_series(plan).markers[-1].label == "TCP reset · 1.0 ms"


def test_a_stall_starts_after_the_chunk_it_names():
    times = [10 * MS, 20 * MS, 520 * MS, 530 * MS]
    chunks = _chunks(HI, THERE, STOP, DONE)
    first = replay_series(_replayed(applied=["stall:chunk=1,ms=500"], offsets=times, total=4, delivered=4), chunks)
    assert (first.markers[0].t_ns, first.markers[0].until_ns) == (10 * MS, 20 * MS)
    second = replay_series(_replayed(applied=["stall:chunk=2,ms=500"], offsets=times, total=4, delivered=4), chunks)
    assert (second.markers[0].t_ns, second.markers[0].until_ns) == (20 * MS, 520 * MS)
    before = replay_series(_replayed(applied=["stall:chunk=0,ms=5"], offsets=times, total=4, delivered=4), chunks)
    assert (before.markers[0].t_ns, before.markers[0].until_ns) == (0, 10 * MS)
    unnamed = replay_series(_replayed(applied=["stall:ms=5"], offsets=times, total=4, delivered=4), chunks)
    assert (unnamed.markers[0].t_ns, unnamed.markers[0].until_ns) == (0, 10 * MS)
    at_end = replay_series(_replayed(applied=["stall:chunk=4,ms=900"], offsets=times, total=4, delivered=4), chunks)
    assert at_end.markers[0].t_ns == 530 * MS
    held = replay_series(_replayed(applied=["delay-first:ms=100"]), _chunks(HI, STOP, DONE)).markers[0]
    assert held.label == "fault delay-first:ms=100: first byte held back"
    plan = Schedule(200, [], [Piece(10 * MS, HI)], Ending.CLEAN, applied=["stall:chunk=1,ms=50"])
    stall = schedule_series(plan).markers[0]
    assert (stall.t_ns, stall.until_ns) == (10 * MS, 10 * MS)  # the plan's end: still stalled there
    assert stall.label.endswith(", still stalled at the end")


def test_a_client_that_left_before_any_chunk_never_read_one():
    ex = _exchange(end_cause=EndCause.CLIENT_LEFT, upstream_end=EndCause.COMPLETE, client_left_at_chunk=0,
                   client_left_ns=10**12, duration_ns=10**12)
    s = recorded_series(ex, _chunks(HI, THERE))
    assert [m.unseen for m in s.marks] == [True, True] and s.seen_text == ""
    assert s.markers[0].label.endswith(" at 1000000.0 ms · after 0 of 2 chunks")
    assert s.markers[-1].label.endswith(" · 1000.00 s")
    rep = replay_series(_replayed(delivered=0, client_left_at_chunk=0, client_left_ns=10**12, done_delivered=False),
                        _chunks(HI, STOP, DONE))
    assert rep.markers[0].label.endswith(" at 1000000.0 ms · after 0 of 3 chunks")
    gone = replay_series(_replayed(delivered=0, client_left_at_chunk=0, done_delivered=False), _chunks(HI))
    assert gone.markers[0].t_ns == 0 and " at 0.0 ms · " in gone.markers[0].label


def test_only_a_client_left_ending_with_its_moment_draws_the_client_leaving():
    chunks = _chunks(HI, THERE)
    # a complete exchange whose client closed after the end: no leaving drawn, every chunk read
    after = _exchange(end_cause=EndCause.COMPLETE, client_left_ns=5 * MS, client_left_at_chunk=1, duration_ns=30 * MS)
    for s in (recorded_series(after, chunks), overview_series(after, [(0, 10 * MS, 5), (1, 20 * MS, 5)],
                                                             span_ns=30 * MS, bars=1)):
        assert [m.kind for m in s.markers] == ["end"] and not any(m.unseen for m in s.marks)
    assert recorded_series(after, chunks).seen_text is None
    one_bar = overview_series(after, [(0, 10 * MS, 5), (1, 20 * MS, 5)], span_ns=30 * MS, bars=1)
    assert len(one_bar.marks) == 1
    no_moment = _exchange(end_cause=EndCause.CLIENT_LEFT, client_left_at_chunk=1, upstream_end=EndCause.COMPLETE)
    assert len(overview_series(no_moment, [(0, 10 * MS, 5), (1, 20 * MS, 5)], span_ns=30 * MS, bars=1).marks) == 1


def test_an_end_cause_this_version_does_not_know_is_drawn_as_an_end_in_its_own_words():
    s = recorded_series(_exchange(end_cause="quantum_flux", duration_ns=40 * MS), _chunks(HI))
    assert (s.markers[-1].kind, s.markers[-1].label) == ("end", "quantum_flux · 40 ms")
    status = recorded_series(_exchange(end_cause=EndCause.HTTP_ERROR, status=None), [])
    assert status.markers[-1].label == f"{CAUSES[EndCause.HTTP_ERROR].label} · 0.0 ms"


def test_an_overview_bar_stands_for_its_chunks_bytes_and_nothing_else():
    ex = _exchange(end_cause=None, text="so far")
    s = overview_series(ex, [(0, 0, 0), (1, 1, 7), (2, 50 * MS, 3)], span_ns=100 * MS, bars=2)
    assert [(m.index, m.last_index, m.size) for m in s.marks] == [(0, 1, 7), (2, 2, 3)]
    assert all((m.data, m.delta, m.kinds) == (b"", "", frozenset({"content"})) for m in s.marks)
    assert s.text == "so far" and s.chunk_link == "#{anchor}"
    assert s.title == "recorded · exchange 7 · open · overview"
    assert overview_series(_exchange(), [], span_ns=0).text == ""


def test_a_lane_s_title_names_every_fault_and_its_first_byte_is_its_first_chunk():
    chunks = _chunks(HI, STOP, DONE)
    two = replay_series(_replayed(applied=["stall:chunk=1,ms=5", "cut:after=3"], offsets=[7 * MS, 20 * MS, 30 * MS]),
                        chunks)
    assert two.title == "replay #1 · stall:chunk=1,ms=5 + cut:after=3" and two.first_byte_ns == 7 * MS
    assert replay_series(_replayed(offsets=[], total=0, delivered=0), chunks).first_byte_ns is None
    plan = Schedule(200, [], [Piece(7 * MS, HI), Piece(9 * MS, STOP)], Ending.CLEAN, applied=["a", "b"])
    s = schedule_series(plan)
    assert s.title == "replay plan · a + b" and s.first_byte_ns == 7 * MS
    assert schedule_series(Schedule(200, [], [Piece(MS, HI)], Ending.CLEAN)).title == "replay plan · no fault"
    assert schedule_series(Schedule(200, [], [], Ending.CLEAN)).first_byte_ns is None


def test_where_lanes_part_names_the_lane_whose_client_had_left_and_quotes_30_characters():
    def lane(text: str) -> object:
        chunks = [Chunk(0, 10 * MS, chat_chunk({"content": text}))]
        return recorded_series(_exchange(end_cause=EndCause.COMPLETE), chunks)

    a, b = lane("x" * 40), lane("x" * 40)
    a.marks[0].unseen = True
    assert parting(a, b)[2] == "the client of A had left before chunk 0"
    long_a, long_b = lane("a" * 40), lane("b" * 40)
    assert parting(long_a, long_b)[2] == f"chunk 0 reads {'a' * 30!r} in A, {'b' * 30!r} in B"


def test_a_stream_is_read_by_its_content_type_even_when_its_first_bytes_do_not_look_like_one():
    """The recorded Content-Type says a body is a stream, whatever its first bytes: the lane's text, what a client
    that left had read, and a plan's text are read as a stream (in the lane's dialect), not as broken JSON."""
    odd = b"heartbeat\n\n"  # an SSE line with no colon: ignored by a stream reader, not JSON either
    chunks = _chunks(odd, HI, THERE, STOP, DONE)
    assert recorded_series(_exchange(end_cause=EndCause.COMPLETE), chunks).text == "Hi there"
    left = _exchange(end_cause=EndCause.CLIENT_LEFT, upstream_end=EndCause.COMPLETE, client_left_at_chunk=2,
                     client_left_ns=25 * MS)
    assert recorded_series(left, chunks).seen_text == "Hi"
    anthropic = _exchange(path="/v1/messages", end_cause=EndCause.CLIENT_LEFT, upstream_end=EndCause.COMPLETE,
                          client_left_at_chunk=3, client_left_ns=25 * MS)
    assert recorded_series(anthropic, _chunks(*_anthropic_events())).seen_text == "Hi"
    plan = Schedule(200, [("Content-Type", "text/event-stream")], [Piece(MS, odd), Piece(2 * MS, HI)], Ending.CLEAN)
    assert schedule_series(plan).text == "Hi"


def test_a_lane_with_no_chunk_draws_its_ending_faults_and_stalls_at_its_start():
    """A recording that got no chunk (an error status, still open), a replay that wrote none and an empty plan
    put every marker at 0, where their first chunk would have been."""
    status = recorded_series(_exchange(end_cause=EndCause.HTTP_ERROR, status=503), [])
    assert [(m.kind, m.t_ns) for m in status.markers] == [("error", 0)]
    empty = overview_series(_exchange(end_cause=EndCause.COMPLETE), [], span_ns=0)
    assert [(m.kind, m.t_ns) for m in empty.markers] == [("end", 0)] and empty.marks == []
    none = _replayed(offsets=[], total=0, delivered=0, done_delivered=False)
    assert [(m.kind, m.t_ns) for m in replay_series(none, []).markers] == [("stop", 0)]
    faulted = replay_series(_replayed(offsets=[], total=0, delivered=0, applied=["stall:chunk=1", "reset"]), [])
    assert [(m.kind, m.t_ns, m.until_ns) for m in faulted.markers] == [("stall", 0, 0), ("fault", 0, None)]
    plan = schedule_series(Schedule(200, [], [], Ending.CLEAN, applied=["stall:chunk=1"]))
    assert [(m.kind, m.t_ns, m.until_ns) for m in plan.markers] == [("stall", 0, 0), ("stop", 0, None)]


def test_a_replay_s_and_a_plan_s_bars_are_numbered_by_their_piece_and_a_piece_past_the_recording_has_no_bytes():
    """Each bar of a replay or a plan links to its own row (its piece's index); a piece a fault added past the
    recording's chunks is drawn with no bytes rather than made-up ones."""
    rep = replay_series(_replayed(offsets=[10 * MS, 20 * MS, 30 * MS, 40 * MS], total=4, delivered=4),
                        _chunks(HI, STOP, DONE))
    assert [m.index for m in rep.marks] == [0, 1, 2, 3]
    assert rep.marks[3].data == b"" and rep.marks[3].size == 0
    plan = schedule_series(Schedule(200, [], [Piece(MS, HI), Piece(2 * MS, DONE)], Ending.CLEAN))
    assert [m.index for m in plan.marks] == [0, 1]


def test_a_client_that_read_done_and_left_before_the_last_bytes_still_shows_the_fault_that_ended_the_replay():
    """Leaving after [DONE] is no leaving early: the fault that ended the replay is drawn, even though fewer pieces
    were delivered than planned."""
    s = replay_series(_replayed(applied=["reset:chunk=3"], ending="reset", total=4, delivered=3,
                                client_left_at_chunk=3, client_left_ns=40 * MS), _chunks(HI, STOP, DONE))
    assert [m.kind for m in s.markers] == ["fault"]
    assert s.markers[0].label == "fault reset:chunk=3: TCP reset after 3 chunks"


def test_two_lanes_whose_chunk_comes_more_than_50_ms_apart_part_to_the_nanosecond():
    """The tolerance is 50 ms (for a span under a second): one nanosecond more and the lanes part."""
    def lane(t_ns: int) -> object:
        return recorded_series(_exchange(end_cause=EndCause.COMPLETE), [Chunk(0, 10 * MS, HI), Chunk(1, t_ns, THERE)])

    assert parting(lane(20 * MS), lane(70 * MS)) is None
    assert parting(lane(20 * MS), lane(70 * MS + 1)) == (1, 20 * MS, "chunk 1 comes at 20 ms in A, 70 ms in B")
