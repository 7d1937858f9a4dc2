"""`bisect --by client` and `streamreplay client`'s judgement, in-process: the behaviours it tries for a
recording, how each is written and read back, and when a reference consumer left "like the recorded
client" (the same chunk, and about the same time). tests/test_bisect.py runs it against real clients."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest

from streamreplay.bundled import bundled_tape
from streamreplay.cassette import import_cassette, read_cassette
from streamreplay.clientcheck import (
    Behaviour,
    Observation,
    behaviours_for,
    main,
    matches,
    observe,
    run_one,
    silence_before_leaving,
)
from streamreplay.clientid import Client
from streamreplay.clients import Outcome
from streamreplay.endcause import EndCause
from streamreplay.replay import Replayed
from streamreplay.replay.source import OneExchange
from streamreplay.store import Exchange, Store
from tests.helpers import chat_chunk, write_exchange


def _exchange(tape: str) -> Exchange:
    return read_cassette(bundled_tape(tape))[1][0]


LEFT = _exchange("consumer-break")  # left at chunk 2, 0.374 s in
LEFT_CHUNKS = read_cassette(bundled_tape("consumer-break"))[2][LEFT.id]
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
    assert behaviours_for(LEFT, 1.234) == [Behaviour("reads-to-end"), Behaviour("stop:2", stop_after=2),
                                           Behaviour("timeout:1.23", timeout=1.23), Behaviour("slow:0.05", delay=0.05),
                                           Behaviour("stream-off", stream=False)]
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
    assert matches(late, _seen(2, 5.0))  # exactly a quarter is within it; a nanosecond more is not
    assert not matches(late, replace(_seen(2), client_left_ns=5_000_000_001))
    # a client that closed after [DONE] (the exchange kept the upstream's ending) read to the end
    assert matches(replace(LEFT, end_cause=EndCause.COMPLETE), _seen(None, None, done=True, delivered=63))
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


def _observed(behaviour: Behaviour, speed: float = 4.0) -> Observation:
    """The openai SDK (async) reading a replay of LEFT (at 4x: its first chunk 93 ms in) the way `behaviour` says."""
    runs = [(Client.OPENAI_ASYNC, behaviour)]
    (observation,) = asyncio.run(observe(LEFT, OneExchange(LEFT, LEFT_CHUNKS), runs, speed=speed))
    return observation


def test_a_consumer_that_reads_to_the_end_gets_the_whole_answer():
    whole = _observed(Behaviour("reads-to-end"))
    assert (whole.behaviour, whole.client, whole.left()) == ("reads to the end", "openai async", "read 63/63")
    assert whole.seen.offsets_ns[0] / 1e9 == pytest.approx(LEFT_CHUNKS[0].t_ns / 4e9, abs=0.05)  # at the speed asked
    assert (whole.outcome.text, whole.outcome.finish_reason, whole.outcome.error) == (LEFT.text, "length", None)


def test_a_consumer_that_stops_leaves_after_as_many_chunks():
    stopped = _observed(Behaviour.parse("stop:2"))
    assert (stopped.outcome.text, stopped.outcome.finish_reason, stopped.outcome.error) == ("The", None, None)
    assert not stopped.seen.finished and stopped.seen.delivered < 63  # the server saw it leave before the end


def test_a_consumer_with_a_read_timeout_gives_up_after_that_silence():
    timed_out = _observed(Behaviour.parse("timeout:0.05"))
    assert (timed_out.outcome.text, timed_out.outcome.error) == ("", "httpx.ReadTimeout: (no message)")
    assert timed_out.seen.client_left_at_chunk == 0


def test_a_consumer_with_streaming_off_gets_the_answer_as_one_json_body():
    off = _observed(Behaviour.parse("stream-off"))
    assert (off.outcome.text, off.outcome.finish_reason, off.outcome.error) == (LEFT.text, "length", None)
    assert (off.seen.applied, off.seen.total) == (["stream->json"], 1)


def test_a_slow_consumer_waits_its_delay_after_each_chunk():
    started = time.monotonic()
    slow = _observed(Behaviour("slow:0.2", stop_after=2, delay=0.2))  # sleeps 0.2 s after the first chunk
    assert time.monotonic() - started >= 0.2 and slow.outcome.text == "The"


@pytest.fixture
def left_db(tmp_path: Path) -> Store:
    db = tmp_path / "c.db"
    import_cassette(bundled_tape("consumer-break"), db, "t")
    return Store(db)


def test_one_reference_consumer_reads_a_replay_under_a_fault_and_says_what_it_got(left_db: Store):
    lines: list[str] = []
    o = run_one(left_db, 1, "openai async", Behaviour("reads-to-end"), "cut:chunk=3", 4.0, lines.append)
    assert (o.client, o.behaviour, o.outcome.text, o.outcome.finish_reason) == ("openai async", "reads to the end",
                                                                                "The moon", None)
    assert lines == ["client     openai async, reads to the end", "text       'The moon'", "finish     None",
                     "error      None", f"replay     {o.seen.line()}"]
    assert o.seen.line() == "#1 POST /chat/completions -> exchange 1 [cut:chunk=3] 200: 3/3 chunks, ended clean"
    # at the speed asked: the first chunk at a quarter of its recorded offset
    assert o.seen.offsets_ns[0] / 1e9 == pytest.approx(LEFT_CHUNKS[0].t_ns / 4e9, abs=0.05)


def test_another_reference_client_reads_the_replay_with_the_read_timeout_asked(left_db: Store):
    whole = run_one(left_db, 1, "openai sync", Behaviour("reads-to-end"), None, 4.0, lambda _: None)
    assert (whole.client, whole.outcome.text, whole.outcome.finish_reason) == ("openai sync", LEFT.text, "length")
    assert whole.seen.line() == "#1 POST /chat/completions -> exchange 1 200: 63/63 chunks, ended clean"
    # the first chunk comes 93 ms in: a 50 ms read timeout gives up, once (no retry), in each client
    for client in ("openai sync", "openai async"):
        timed_out = run_one(left_db, 1, client, Behaviour.parse("timeout:0.05"), None, 4.0, lambda _: None)
        assert timed_out.outcome.text == "" and timed_out.outcome.error.startswith("httpx.ReadTimeout: "), client
        assert timed_out.seen.line().startswith("#1 POST /chat/completions -> exchange 1 200: 0/63 chunks")


def test_a_client_of_another_api_is_refused_naming_those_of_the_recording_s(left_db: Store):
    with pytest.raises(ValueError) as raised:
        run_one(left_db, 1, "anthropic", Behaviour("reads-to-end"), None, 4.0, lambda _: None)
    assert str(raised.value) == "unknown client 'anthropic'; known: openai sync, openai async, autogen-agentchat, AG2"


def test_the_silence_before_leaving_is_from_the_last_chunk_read_or_the_head(left_db: Store):
    store = left_db
    ex = store.exchange(1)
    chunks = store.chunks(1)
    assert silence_before_leaving(ex, store) == (ex.client_left_ns - chunks[1].t_ns) / 1e9  # left at chunk 2
    assert silence_before_leaving(replace(ex, client_left_at_chunk=1), store) == \
        (ex.client_left_ns - chunks[0].t_ns) / 1e9
    last = replace(ex, client_left_at_chunk=63, client_left_ns=chunks[62].t_ns + 500_000_000)  # after the last one
    assert silence_before_leaving(last, store) == 0.5
    # before any chunk, or past the chunks stored: from the response head
    for k in (0, 64):
        assert silence_before_leaving(replace(ex, client_left_at_chunk=k), store) == \
            (ex.client_left_ns - ex.headers_ns) / 1e9
    # a client that did not leave, or left after the end, had no silence before leaving
    assert silence_before_leaving(replace(ex, end_cause=EndCause.COMPLETE), store) is None
    assert silence_before_leaving(replace(ex, client_left_at_chunk=None), store) is None


def _table(lines: list[str]) -> list[str]:
    """main's lines, with the moment a consumer left (it varies from run to run) masked."""
    return [re.sub(r"left at chunk (\d), 0\.\d\d\d s ", r"left at chunk \1, 0.XXX s ", line) for line in lines]


def _rows(rows: list[tuple[str, str, str, str, str]]) -> list[str]:
    return [f"{'behaviour':<28}  {'client':<18} {'observed':<28} matches  what the app got",
            *(f"{b:<28}  {c:<18} {seen:<28} {verdict:<8} {got}" for b, c, seen, verdict, got in rows)]


def _left_at_chunk_2(tmp_path: Path, client_left_ns: int) -> tuple[Store, int]:
    """Four chat chunks 95, 30 and 100 ms apart after the head, of which an unnamed client read two."""
    store = Store(tmp_path / "c.db")
    chunks = [(100_000_000, chat_chunk({"role": "assistant", "content": "Hel"})),
              (130_000_000, chat_chunk({"content": "lo"})), (230_000_000, chat_chunk({"content": " you"})),
              (260_000_000, chat_chunk({}, "stop") + b"data: [DONE]\n\n")]
    eid = write_exchange(store, chunks, request_body=LEFT.request_body, end_cause="client_left",
                         upstream_end="complete", client_left_at_chunk=2, client_left_ns=client_left_ns, chunk_count=4,
                         headers_ns=5_000_000)
    return store, eid


def test_the_verdict_names_the_consumer_that_left_where_the_recorded_one_did(tmp_path: Path):
    # the first chunk 95 ms after the head, then 30 ms and 100 ms apart; an unnamed client left at chunk 2, 60 ms
    # after it: a 0.06 s read timeout is tried, and gives up before the first chunk
    store, eid = _left_at_chunk_2(tmp_path, 190_000_000)
    lines: list[str] = []
    observations = main(store, eid, lines.append)
    rows = [("reads to the end", "openai async", "read 4/4", "no", "9 chars, finish_reason stop"),
            ("stops after 2 chunks", "openai async", "left at chunk 2, 0.XXX s", "yes", "5 chars, finish_reason None"),
            ("read timeout 0.06 s", "openai async", "left at chunk 0, 0.XXX s", "no", "httpx.ReadTimeout"),
            ("slow reader (0.05 s a chunk)", "openai async", "read 4/4", "no", "9 chars, finish_reason stop"),
            ("streaming off", "openai async", "read 1/1", "no", "9 chars, finish_reason stop"),
            ("reads to the end", "openai sync", "read 4/4", "no", "9 chars, finish_reason stop"),
            ("reads to the end", "autogen-agentchat", "read 4/4", "no", "9 chars, finish_reason stop"),
            ("reads to the end", "AG2", "read 4/4", "no", "9 chars, finish_reason None")]
    assert [(o.behaviour, o.client) for o in observations] == [row[:2] for row in rows]
    assert _table(lines) == [
        "recorded: the recorded client left at chunk 2 of 4, 0.190 s, 0.060 s after the chunk before", *_rows(rows),
        "verdict: a consumer that stops after 2 chunks leaves where the recorded one did, while one that reads to the "
        "end gets the whole answer: the consumer, not the stream, ended it"]


def test_the_verdict_blames_a_stream_that_fails_even_a_consumer_reading_to_the_end(tmp_path: Path):
    store = Store(tmp_path / "c.db")
    chunks = [(10_000_000, chat_chunk({"role": "assistant", "content": "Hel"})),
              (20_000_000, chat_chunk({"content": "lo"}))]
    eid = write_exchange(store, chunks, request_body=LEFT.request_body, client=LEFT.client,
                         end_cause="upstream_closed", chunk_count=2, headers_ns=5_000_000)
    lines: list[str] = []
    main(store, eid, lines.append)
    cut = "httpx.RemoteProtocolError"
    rows = [("reads to the end", "openai async", "read 2/2", "yes", cut),
            ("slow reader (0.05 s a chunk)", "openai async", "read 2/2", "yes", cut),
            ("streaming off", "openai async", "read 1/1", "yes", "openai.APIConnectionError"),
            ("reads to the end", "openai sync", "read 2/2", "yes", cut),
            ("reads to the end", "autogen-agentchat", "read 2/2", "yes", cut),
            ("reads to the end", "AG2", "read 2/2", "yes", cut)]
    assert lines == ["recorded: openai-python 2.54.0, AsyncOpenAI, upstream_closed, 2 chunks", *_rows(rows),
                     "verdict: even a consumer that reads to the end fails on this stream: the stream is at fault"]


def test_the_verdict_on_a_whole_stream_is_that_reference_consumers_read_it_to_its_end(tmp_path: Path):
    store = Store(tmp_path / "c.db")
    chunks = [(10_000_000, chat_chunk({"role": "assistant", "content": "Hel"})),
              (20_000_000, chat_chunk({"content": "lo"}, "stop") + b"data: [DONE]\n\n")]
    eid = write_exchange(store, chunks, request_body=LEFT.request_body, client=LEFT.client, end_cause="complete",
                         chunk_count=2, headers_ns=5_000_000)
    lines: list[str] = []
    main(store, eid, lines.append)
    whole = "5 chars, finish_reason stop"
    rows = [("reads to the end", "openai async", "read 2/2", "yes", whole),
            ("slow reader (0.05 s a chunk)", "openai async", "read 2/2", "yes", whole),
            ("streaming off", "openai async", "read 1/1", "yes", whole),
            ("reads to the end", "openai sync", "read 2/2", "yes", whole),
            ("reads to the end", "autogen-agentchat", "read 2/2", "yes", whole),
            ("reads to the end", "AG2", "read 2/2", "yes", "5 chars, finish_reason None")]
    assert lines == ["recorded: openai-python 2.54.0, AsyncOpenAI, complete, 2 chunks", *_rows(rows),
                     "verdict: reference consumers read this stream to its end; what they got is what the stream "
                     "holds"]


def test_a_consumer_with_streaming_off_reads_an_answer_without_content_as_no_text(tmp_path: Path):
    store = Store(tmp_path / "c.db")
    chunks = [(10_000_000, chat_chunk({"role": "assistant"})),
              (20_000_000, chat_chunk({}, "stop") + b"data: [DONE]\n\n")]
    eid = write_exchange(store, chunks, request_body=LEFT.request_body, end_cause="complete", chunk_count=2,
                         headers_ns=5_000_000)
    lines: list[str] = []
    off = run_one(store, eid, "openai async", Behaviour.parse("stream-off"), None, 4.0, lines.append)
    assert (off.outcome.text, off.outcome.finish_reason, off.outcome.error) == ("", "stop", None)
    assert lines == ["client     openai async, streaming off", "text       ''", "finish     stop", "error      None",
                     f"replay     #1 POST /chat/completions -> exchange {eid} [stream->json] 200: 1/1 chunks, "
                     "ended clean"]


def test_a_reference_consumer_asks_once_even_when_the_answer_is_an_error_status(tmp_path: Path):
    # the openai SDK retries a 500 twice by default; a reference consumer is the app reading once
    store = Store(tmp_path / "c.db")
    body = b'{"error": {"message": "The server had an error", "type": "server_error"}}'
    eid = write_exchange(store, [(10_000_000, body)], request_body=LEFT.request_body, status=500,
                         response_headers='[["Content-Type", "application/json"]]', end_cause="http_error",
                         chunk_count=1, headers_ns=5_000_000)
    lines: list[str] = []
    run_one(store, eid, "openai async", Behaviour("reads-to-end"), None, 4.0, lines.append)
    assert lines == ["client     openai async, reads to the end", "text       ''", "finish     None",
                     "error      openai.InternalServerError: Error code: 500 - {'error': {'message': 'The server had "
                     "an error', 'type': 'server_error'}}",
                     f"replay     #1 POST /chat/completions -> exchange {eid} 500: 1/1 chunks, ended clean"]


def test_a_recording_the_openai_sdk_cannot_read_is_read_to_the_end_by_its_own_api_s_clients(tmp_path: Path):
    db = tmp_path / "a.db"
    import_cassette(bundled_tape("anthropic-happy-path"), db, "t")
    lines: list[str] = []
    observations = main(Store(db), 1, lines.append)
    assert {o.behaviour for o in observations} == {"reads to the end"}  # no stop, timeout, slow or stream-off
    whole = "87 chars, finish_reason"
    assert lines == [
        "recorded: Anthropic/Python 0.125.0, complete, 24 chunks",
        "behaviour         client                    observed                     matches  what the app got",
        f"reads to the end  anthropic                 read 24/24                   yes      {whole} end_turn",
        f"reads to the end  anthropic messages.stream read 24/24                   yes      {whole} end_turn",
        f"reads to the end  autogen Anthropic         read 24/24                   yes      {whole} stop",
        f"reads to the end  AG2 Anthropic             read 24/24                   yes      {whole} None",
        "verdict: reference consumers read this stream to its end; what they got is what the stream holds"]


def test_a_client_that_left_with_no_silence_before_is_said_to_leave_at_its_chunk_and_time_only(tmp_path: Path):
    # the client left at the very moment chunk 1 (its second) arrived: no silence, so no timeout is tried either
    store, eid = _left_at_chunk_2(tmp_path, 130_000_000)
    lines: list[str] = []
    main(store, eid, lines.append)
    whole = "9 chars, finish_reason stop"
    rows = [("reads to the end", "openai async", "read 4/4", "no", whole),
            ("stops after 2 chunks", "openai async", "left at chunk 2, 0.XXX s", "yes", "5 chars, finish_reason None"),
            ("slow reader (0.05 s a chunk)", "openai async", "read 4/4", "no", whole),
            ("streaming off", "openai async", "read 1/1", "no", whole),
            ("reads to the end", "openai sync", "read 4/4", "no", whole),
            ("reads to the end", "autogen-agentchat", "read 4/4", "no", whole),
            ("reads to the end", "AG2", "read 4/4", "no", "9 chars, finish_reason None")]
    assert _table(lines) == [
        "recorded: the recorded client left at chunk 2 of 4, 0.130 s", *_rows(rows),
        "verdict: a consumer that stops after 2 chunks leaves where the recorded one did, while one that reads to the "
        "end gets the whole answer: the consumer, not the stream, ended it"]


def test_each_other_reference_client_reads_the_replay_to_its_end(left_db: Store):
    for client, finish in (("autogen-agentchat", "length"), ("AG2", None)):
        whole = run_one(left_db, 1, client, Behaviour("reads-to-end"), None, 4.0, lambda _: None)
        assert (whole.client, whole.outcome.text, whole.outcome.finish_reason, whole.outcome.error) == (
            client, LEFT.text, finish, None)
        assert whole.seen.line() == "#1 POST /chat/completions -> exchange 1 200: 63/63 chunks, ended clean"


def test_a_recording_whose_request_holds_no_conversation_is_replayed_to_a_client_asking_hi(tmp_path: Path):
    # AG2 fails on an empty conversation before it sends anything; the replay answers whatever is asked
    store = Store(tmp_path / "c.db")
    chunks = [(10_000_000, chat_chunk({"role": "assistant", "content": "Hel"})),
              (20_000_000, chat_chunk({"content": "lo"}, "stop") + b"data: [DONE]\n\n")]
    eid = write_exchange(store, chunks, request_body="{}", end_cause="complete", chunk_count=2, headers_ns=5_000_000)
    ex = store.exchange(eid)
    (seen,) = asyncio.run(observe(ex, OneExchange(ex, store.chunks(eid)), [(Client.AG2, Behaviour("reads-to-end"))]))
    alone = run_one(store, eid, "AG2", Behaviour("reads-to-end"), None, 4.0, lambda _: None)
    for o in (seen, alone):
        assert (o.outcome.text, o.outcome.error, o.left()) == ("Hello", None, "read 2/2")
