"""What a generated repro.py prints about the replayed stream (streamreplay.repro_runtime.report): how it ended,
and where, told from the replay server's record of the request.

tests/test_repro.py runs whole scripts against real replays; at speed 0 their clients read every byte before
they close, so these pin the report's other branches: a client that left early, or only after [DONE]."""

from __future__ import annotations

from dataclasses import dataclass, field

from streamreplay.clients import Outcome
from streamreplay.replay import Replayed
from streamreplay.repro_runtime import report


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
