"""`bisect --by client` and `streamreplay client`'s judgement, in-process: the behaviours it tries for a
recording, how each is written and read back, and when a reference consumer left "like the recorded
client" (the same chunk, and about the same time). tests/test_bisect.py runs it against real clients."""

from __future__ import annotations

from dataclasses import replace

import pytest

from streamreplay.bundled import bundled_tape
from streamreplay.cassette import read_cassette
from streamreplay.clientcheck import Behaviour, Observation, behaviours_for, matches
from streamreplay.clients import Outcome
from streamreplay.endcause import EndCause
from streamreplay.replay import Replayed
from streamreplay.store import Exchange


def _exchange(tape: str) -> Exchange:
    return read_cassette(bundled_tape(tape))[1][0]


LEFT = _exchange("consumer-break")  # left at chunk 2, 0.374 s in
WHOLE = _exchange("openai-happy-path")


def _seen(left_at: int | None = None, left_s: float | None = None, done: bool = False, delivered: int = 0,
          total: int = 63) -> Replayed:
    return Replayed(1, "POST", "/chat/completions", total=total, delivered=delivered, client_left_at_chunk=left_at,
                    client_left_ns=None if left_s is None else int(left_s * 1e9), done_delivered=done)


@pytest.mark.parametrize(("spec", "expected", "said"), [
    ("reads-to-end", Behaviour("reads-to-end"), "reads to the end"),
    ("stop:3", Behaviour("stop:3", stop_after=3), "stops after 3 chunks"),
    ("timeout:1.5", Behaviour("timeout:1.5", timeout=1.5), "read timeout 1.5 s"),
    ("slow:0.05", Behaviour("slow:0.05", delay=0.05), "slow reader (0.05 s a chunk)"),
    ("stream-off", Behaviour("stream-off", stream=False), "streaming off"),
])
def test_each_behaviour_is_read_from_its_spec_and_said_in_words(spec: str, expected: Behaviour, said: str):
    assert Behaviour.parse(spec) == expected
    assert expected.describe() == said


@pytest.mark.parametrize(("spec", "message"), [
    ("stop:x", "behaviour 'stop:x': 'x' is not a number"),
    ("timeout:", "behaviour 'timeout:': '' is not a number"),
    ("sprint", "unknown behaviour 'sprint': reads-to-end, stop:K, timeout:S, slow:S or stream-off"),
])
def test_a_bad_behaviour_says_what_is_wrong(spec: str, message: str):
    with pytest.raises(ValueError) as raised:
        Behaviour.parse(spec)
    assert str(raised.value) == message


def test_the_behaviours_tried_follow_the_recording():
    assert [b.name for b in behaviours_for(WHOLE, None)] == ["reads-to-end", "slow:0.05", "stream-off"]
    # a client that left: also stopping where it left; a silence before: also a timeout that long
    assert [b.name for b in behaviours_for(LEFT, 1.234)] == ["reads-to-end", "stop:2", "timeout:1.23", "slow:0.05",
                                                             "stream-off"]
    assert behaviours_for(LEFT, 1.234)[2].timeout == 1.23
    # a silence of 50 ms or less is a stream's ordinary pace, not a timeout to try
    assert "timeout:0.05" not in [b.name for b in behaviours_for(LEFT, 0.05)]
    assert "timeout:0.06" in [b.name for b in behaviours_for(LEFT, 0.06)]
    # a client noted leaving on an exchange that ended otherwise is not tried as a stop
    assert "stop:2" not in [b.name for b in behaviours_for(replace(LEFT, end_cause=EndCause.COMPLETE), None)]


def test_a_consumer_matches_when_it_leaves_at_the_recorded_chunk_about_when_it_did():
    assert (LEFT.client_left_at_chunk, round(LEFT.client_left_ns / 1e9, 3)) == (2, 0.374)
    assert matches(LEFT, _seen(2, 0.374))
    assert matches(LEFT, _seen(2, 0.374 + 0.149))   # within 0.15 s
    assert not matches(LEFT, _seen(2, 0.374 + 0.151))
    assert not matches(LEFT, _seen(3, 0.374))       # another chunk
    assert not matches(LEFT, _seen(None, None, done=True, delivered=63))  # read to the end
    # leaving after [DONE] is reading to the end
    assert not matches(LEFT, _seen(2, 0.374, done=True))
    # later in a long stream a quarter of the time is allowed
    late = replace(LEFT, client_left_ns=4_000_000_000)
    assert matches(late, _seen(2, 4.99)) and not matches(late, _seen(2, 5.01))
    # a recording read to its end matches a consumer that read to its end, not one that left
    assert matches(WHOLE, _seen(None, None, done=True, delivered=12))
    assert matches(WHOLE, _seen(5, 0.2, done=True))
    assert not matches(WHOLE, _seen(5, 0.2))


def test_where_a_consumer_left_is_said_in_chunks_and_seconds():
    def left(seen: Replayed) -> str:
        return Observation("reads-to-end", "openai async", Outcome(""), seen).left()

    assert left(_seen(2, 0.3746)) == "left at chunk 2, 0.375 s"  # rounded, not cut
    assert left(_seen(None, None, delivered=63)) == "read 63/63"
    assert left(_seen(7, 0.5, done=True, delivered=63)) == "read 63/63"
