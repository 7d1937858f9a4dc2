"""How a repro script reads the stream as the recorded client did (streamreplay.repro_plan): its timeout,
where it stops, the deadline it gives up at; from the bundled recordings and their real diagnoses.

tests/test_repro.py runs the scripts themselves; these pin each inference and its boundary."""

from __future__ import annotations

from dataclasses import replace

import pytest

from streamreplay.bundled import bundled_tape
from streamreplay.cassette import read_cassette
from streamreplay.clientid import Client
from streamreplay.diagnose import Diagnosis, diagnose_exchange
from streamreplay.endcause import EndCause
from streamreplay.repro_plan import OPENAI_DEFAULT_TIMEOUT, is_async, plan_for
from streamreplay.store import Chunk, Exchange


def _recorded(tape: str) -> tuple[Exchange, list[Chunk], Diagnosis]:
    _, exchanges, chunks = read_cassette(bundled_tape(tape))
    ex = exchanges[0]
    return ex, chunks[ex.id], diagnose_exchange(ex, chunks[ex.id], exchanges, "rec.db")


def _with_timeout_header(ex: Exchange, value: str | None) -> Exchange:
    headers = [(k, v) for k, v in ex.request_headers if k.lower() != "x-stainless-read-timeout"]
    return replace(ex, request_headers=headers + ([("x-stainless-read-timeout", value)] if value else []))


def test_the_timeout_is_the_recorded_header_s_else_the_sdk_default():
    ex, chunks, d = _recorded("openai-happy-path")
    plan = plan_for(_with_timeout_header(ex, "42.5"), chunks, d, Client.OPENAI_SYNC, None)
    assert (plan.timeout, plan.stop_after, plan.deadline) == (42.5, None, None)
    assert plan.timeout_why == "the client's timeout, from the recorded x-stainless-read-timeout header"
    plan = plan_for(_with_timeout_header(ex, None), chunks, d, Client.OPENAI_SYNC, None)
    assert plan.timeout == OPENAI_DEFAULT_TIMEOUT == 600.0
    assert plan.timeout_why == "no timeout was recorded: 600 s, the openai SDK's default"
    assert plan.behaviour == "reads to the end"


@pytest.mark.parametrize(("header", "silence", "timeout", "agrees"), [
    ("2.5", 2.0, 2.5, True),     # 0.5 s apart: within a quarter of the recorded 2.5 s
    ("2.0", 1.5, 2.0, True),     # exactly a quarter apart still agrees
    ("2.5", 1.8, 1.8, False),    # 0.7 s apart: the recorded silence is the timeout that acted
    ("2.0", 2.6, 2.6, False),
    (None, 3.217, 3.22, False),  # nothing recorded: the silence, to the hundredth
])
def test_a_client_timeout_keeps_the_recorded_timeout_only_within_a_quarter_of_the_silence(
        header: str | None, silence: float, timeout: float, agrees: bool):
    ex, chunks, d = _recorded("consumer-break")
    d = replace(d, cause="client_timeout", gap_before_s=silence)
    plan = plan_for(_with_timeout_header(ex, header), chunks, d, Client.OPENAI_SYNC, None)
    assert plan.timeout == timeout
    assert ("and the recording agrees" in plan.timeout_why) is agrees
    if agrees:
        assert plan.timeout_why == ("the client's timeout, from the recorded x-stainless-read-timeout header, and the "
                                    f"recording agrees: the client left at chunk 2 of 63, 0.374 s in, after "
                                    f"{silence:.2f} s of silence")
    assert plan.timeout_why.startswith("inferred from the recording") is not agrees
    assert plan.behaviour == f"uses a {timeout:g} s timeout (the recorded silence)"
    assert plan.stop_after is None and plan.deadline is None


def test_a_consumer_that_stopped_is_stopped_after_as_many_units_as_its_client_counts():
    ex, chunks, d = _recorded("consumer-break")
    assert (d.cause, ex.client_left_at_chunk) == ("consumer_stopped_reading", 2)
    sync = plan_for(ex, chunks, d, Client.OPENAI_SYNC, None)
    assert sync.stop_after == 2
    assert sync.behaviour == "stops after 2 chunks (inferred from the recording)"
    assert sync.stop_why.startswith("inferred from the recording: the client left at chunk 2 of 63, 0.374 s in, 2 ms "
                                    "after the chunk before: the app stopped reading")
    # autogen counts content deltas: the role chunk carries none
    agent = plan_for(ex, chunks, d, Client.AUTOGEN_AGENTCHAT, None)
    assert agent.stop_after == 1
    assert agent.behaviour == "stops after 1 content deltas (inferred from the recording)"
    later = replace(ex, client_left_at_chunk=6)
    assert plan_for(later, chunks, d, Client.OPENAI_SYNC, None).stop_after == 6
    assert plan_for(later, chunks, d, Client.AUTOGEN_AGENTCHAT, None).stop_after == 5
    # an event that is not JSON is no chunk the client counts; the count goes on after it, in the same read too
    odd = [*chunks[:2], Chunk(2, chunks[2].t_ns, b"data: not json\n\n" + chunks[2].data), *chunks[3:]]
    assert plan_for(replace(ex, client_left_at_chunk=3), odd, d, Client.OPENAI_SYNC, None).stop_after == 3
    # the silence before leaving, in ms, as the diagnosis measured it (none measured: 0)
    for gap, said in ((1.5, "1500 ms"), (None, "0 ms")):
        plan = plan_for(ex, chunks, replace(d, gap_before_s=gap), Client.OPENAI_SYNC, None)
        assert plan.stop_why == (f"inferred from the recording: the client left at chunk 2 of 63, 0.374 s in, {said} "
                                 "after the chunk before: the app stopped reading (a break, a cancelled task, a "
                                 "returned handler) after 2 chunks")
    # AG2 reads every stream to its end: the script says so instead of pretending
    ag2 = plan_for(ex, chunks, d, Client.AG2, None)
    assert ag2.stop_after is None and ag2.behaviour == "reads to the end (AG2 cannot stop early)"
    assert "AG2 reads every stream to its end" in ag2.note


@pytest.mark.parametrize("cause", [EndCause.COMPLETE, EndCause.UPSTREAM_CLOSED, EndCause.UPSTREAM_RESET,
                                   EndCause.EOF_WITHOUT_DONE, EndCause.HTTP_ERROR, EndCause.UPSTREAM_TIMEOUT])
@pytest.mark.parametrize("client", [Client.OPENAI_SYNC, Client.OPENAI_ASYNC, Client.AUTOGEN_AGENTCHAT])
def test_a_stream_the_client_did_not_leave_is_read_to_the_end_whoever_ended_it(cause: EndCause, client: Client):
    """Only a client that left stops early or gives up: when the upstream ended the stream, the script reads
    what the client read, to the end, and lets the upstream's ending happen."""
    ex, chunks, _ = _recorded("openai-happy-path")
    ended = replace(ex, end_cause=cause)
    d = diagnose_exchange(ended, chunks, [ended], "rec.db")
    plan = plan_for(ended, chunks, d, client, None)
    assert (plan.stop_after, plan.deadline, plan.note, plan.behaviour) == (None, None, "", "reads to the end")


def test_a_client_that_left_before_any_chunk_stops_after_the_first():
    ex, chunks, d = _recorded("consumer-break")
    plan = plan_for(replace(ex, client_left_at_chunk=0), chunks, d, Client.OPENAI_SYNC, None)
    assert plan.stop_after == 1
    assert plan.stop_why.endswith("after 0 chunks; this client cannot stop before the first, so it stops after it")


def test_a_deadline_is_the_nearest_common_one_for_an_async_client_and_a_stop_for_a_sync_one():
    ex, chunks, d = _recorded("client-timeout")
    assert (d.cause, ex.client_left_at_chunk) == ("client_deadline", 63)
    plan = plan_for(ex, chunks, d, Client.OPENAI_ASYNC, None)
    assert plan.deadline == 1 and plan.stop_after is None
    assert plan.left_s == ex.client_left_ns / 1e9 and plan.head_s == ex.headers_ns / 1e9
    assert plan.behaviour == "gives up after 1 s (inferred deadline)"
    assert plan.deadline_why == ("inferred from the recording: the client left at chunk 63 of 203, "
                                 f"{ex.client_left_ns / 1e9:.3f} s in, mid-flow and without a silence before: a total "
                                 "deadline of about 1 s (asyncio.wait_for or the like)")
    # a client that may be either gives up as the recorded SDK client was
    assert plan_for(ex, chunks, d, Client.LANGCHAIN, "async").deadline == 1
    assert plan_for(ex, chunks, d, Client.LANGCHAIN, "sync").stop_after == 63
    later = plan_for(replace(ex, client_left_ns=2_900_000_000), chunks, d, Client.OPENAI_ASYNC, None)
    assert later.deadline == 3
    sync = plan_for(ex, chunks, d, Client.OPENAI_SYNC, None)
    assert sync.deadline is None and sync.stop_after == 63
    assert "a total deadline of about 1 s, which this sync client cannot set: it stops after the same 63 chunks" \
        in sync.stop_why


def test_a_client_that_may_be_either_is_async_as_the_sdk_was():
    assert is_async(Client.LANGCHAIN, "async") is True
    assert is_async(Client.LANGCHAIN, "sync") is False
    assert is_async(Client.LANGCHAIN, None) is False
    # a client that is one or the other is that, whatever the SDK said
    assert is_async(Client.OPENAI_SYNC, "async") is False
    assert is_async(Client.OPENAI_ASYNC, "sync") is True
