"""bisect's search on its own: a real store, the real Bisector and its one replay server, and an oracle that
judges each run by a rule the test sets, read back from the fault in the URL the run is handed. Exact steps,
answers, boundaries and replay commands, in milliseconds where a check command takes seconds a run."""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from pathlib import Path

import httpx
import pytest

import streamreplay.bisect as bisect_module
from streamreplay.bisect import Bisector, ClientOracle, CommandOracle, chunk_text
from streamreplay.bundled import bundled_dir, bundled_tape
from streamreplay.cassette import import_cassette
from streamreplay.dialects import DIALECTS
from streamreplay.replay import ReplayServer
from streamreplay.replay.source import OneExchange
from streamreplay.store import Chunk, Store
from streamreplay.testing import Script
from tests.helpers import chat, post, record
from tests.test_bisect import STORY, _gone

GOOD, BAD, SKIP = "good", "bad", "skip"
ELSEWHERE = "http://127.0.0.1:9/fault/cut:chunk=3/v1"  # what a check is handed; nothing listens there


@pytest.fixture(scope="module")
def story(tmp_path_factory) -> Store:
    """The story of the slow bisect tests: 18 chunks (the role, 15 words, the finish, [DONE]), the longest
    silence before chunk 5. Read-only, so one recording serves every test."""
    db = tmp_path_factory.mktemp("story") / "rec.db"
    asyncio.run(record(db, [Script(text=STORY, gap=0.01, pauses={5: 0.15})], [chat("Tell me a story.")]))
    store = Store(db)
    assert store.exchange(1).chunk_count == 18
    return store


def bundled_store(tmp_path, name, retime=None):
    """A bundled tape as a DB (one exchange); `retime(line)` may rewrite its lines first, to set exact times,
    or leave one out (by returning False)."""
    lines = [json.loads(line) for line in (bundled_dir() / f"{name}.jsonl").read_text().splitlines()]
    lines = [line for line in lines if retime is None or retime(line)]
    cassette = tmp_path / f"{name}.jsonl"
    cassette.write_text("".join(json.dumps(line) + "\n" for line in lines))
    import_cassette(cassette, tmp_path / f"{name}.db")
    return Store(tmp_path / f"{name}.db")


def happy_path_at(tmp_path, head_ns, chunk_ns):
    """The bundled openai happy path, its response head at `head_ns` and its first chunks at `chunk_ns` (the
    others left out)."""

    def retime(line):
        if line.get("type") == "response":
            line["headers_ns"] = head_ns
        elif line.get("type") == "chunk":
            if line["i"] >= len(chunk_ns):
                return False
            line["t_ns"] = chunk_ns[line["i"]]
        return True

    return bundled_store(tmp_path, "openai-happy-path", retime)


class Fault:
    """One fault spec, read back: its numbers by name."""

    def __init__(self, spec):
        _, _, args = spec.partition(":")
        self.params = {key: float(value) for key, value in (arg.split("=") for arg in args.split(","))}

    def __getitem__(self, key):
        return self.params[key]


class ScriptedOracle:
    """Instead of running a check, judges a run by `rule(fault)`, the fault read back from the URL the run is
    handed; notes each fault and the server it came by. With a `clock`, each run takes `seconds` on it."""

    def __init__(self, rule, clock=None, seconds=10.0, most=40):
        self.rule, self.clock, self.seconds, self.most = rule, clock, seconds, most
        self.specs: list[str] = []
        self.servers: list[ReplayServer] = []

    def note(self, base_url, server):
        spec = base_url.removeprefix(f"{server.origin}/fault/").removesuffix(server.prefix)
        assert server.fault_url(spec) == base_url
        self.specs.append(spec)
        self.servers.append(server)
        # a search that does not end must fail its test, not hang it
        assert len(self.specs) <= self.most, f"still searching after {self.most} runs"
        if self.clock:
            self.clock.now += self.seconds
        return Fault(spec)

    async def judge(self, base_url, server):
        return self.rule(self.note(base_url, server))

    @property
    def speeds(self):
        return [server.speed for server in self.servers]


class AskingOracle(ScriptedOracle):
    """Asks the replay a question of its own, not the recorded one (every request gets the one exchange):
    good when the answer it reads reaches its finish_reason."""

    def __init__(self):
        super().__init__(rule=None)
        self.statuses: list[int] = []

    async def judge(self, base_url, server):
        self.note(base_url, server)
        status, body, _ = await post(base_url, chat("Something else entirely."))
        self.statuses.append(status)
        return GOOD if b'"finish_reason":"stop"' in body else BAD


class HeadOracle(ScriptedOracle):
    """Judges by its rule, after asking the replay a question of its own and reading the answer's status."""

    def __init__(self, rule):
        super().__init__(rule)
        self.statuses: list[int] = []

    async def judge(self, base_url, server):
        async with httpx.AsyncClient(timeout=10) as client, client.stream(
                "POST", f"{base_url}/chat/completions", json=chat("Something else entirely.")) as answer:
            self.statuses.append(answer.status_code)
        return await super().judge(base_url, server)


def good_from_chunk(first_good, skip_at=None):
    return lambda fault: SKIP if fault["chunk"] == skip_at else GOOD if fault["chunk"] >= first_good else BAD


def good_below(key, limit, skip_at=None):
    return lambda fault: SKIP if fault[key] == skip_at else GOOD if fault[key] < limit else BAD


def always(verdict):
    return lambda fault: verdict


class Clock:
    """The clock bisect reads for the step times and the time left, moved only by the oracle's runs, so the
    progress lines are exact (it starts far from 0 so that a sum and a difference of two readings differ)."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(bisect_module, "time", clock)
    return clock


# -- by chunk ----------------------------------------------------------------------------------------------------


async def test_by_chunk_halves_to_the_smallest_good_cut_and_replays_the_last_bad_one(story, clock):
    oracle = ScriptedOracle(good_from_chunk(7), clock)
    progress = []
    result = await Bisector(story, 1, oracle, progress=progress.append).by_chunk()
    assert result.axis == "chunk"
    assert [(s.value, s.spec, s.verdict, s.seconds) for s in result.steps] == [
        (18, "cut:chunk=18", GOOD, 10.0), (0, "cut:chunk=0", BAD, 10.0), (9, "cut:chunk=9", GOOD, 10.0),
        (4, "cut:chunk=4", BAD, 10.0), (6, "cut:chunk=6", BAD, 10.0), (7, "cut:chunk=7", GOOD, 10.0)]
    assert result.runs == 6 and oracle.specs == [s.spec for s in result.steps]
    assert result.boundary == {"bad": 6, "good": 7, "needed_chunk": 6, "chunk": "'small '"}
    assert result.answer == "bad for cut at or before chunk 6, good from 7: the app needs chunk 6 ('small ')"
    assert result.replay == f"streamreplay play --db {story.path} --tape t --speed 0 --fault cut:chunk=6"
    assert progress == [
        "step 1: cut:chunk=18                 good  (10.0 s)",
        "step 2: cut:chunk=0                  bad  (10.0 s)",
        "step 3: cut:chunk=9                  good  (10.0 s)",
        "step 4: cut:chunk=4                  bad  (10.0 s)",
        "step 5: cut:chunk=6                  bad  (10.0 s)",
        "step 6: cut:chunk=7                  good  (10.0 s)",
    ]
    # one server for every run, at the speed asked (0 by default: no waits)
    assert len(set(map(id, oracle.servers))) == 1 and oracle.speeds == [0.0] * 6


@pytest.mark.parametrize("kind", ["close", "reset", "error-event"])
async def test_by_chunk_searches_every_cut_kind(story, kind):
    result = await Bisector(story, 1, ScriptedOracle(good_from_chunk(12)), db_label="my.db").by_chunk(kind)
    assert [s.spec for s in result.steps] == [f"{kind}:chunk={k}" for k in (18, 0, 9, 13, 11, 12)]
    assert result.boundary == {"bad": 11, "good": 12, "needed_chunk": 11, "chunk": "'streams '"}
    assert result.answer == (f"bad for {kind} at or before chunk 11, good from 12: the app needs chunk 11 "
                             "('streams ')")
    assert result.replay == f"streamreplay play --db my.db --tape t --speed 0 --fault {kind}:chunk=11"


@pytest.mark.parametrize(("first_good", "specs", "needed"), [
    (1, [18, 0, 9, 4, 2, 1], "(no text)"),  # the role chunk: no text, no finish
    (18, [18, 0, 9, 13, 15, 16, 17], "[DONE]"),
    (17, [18, 0, 9, 13, 15, 16, 17], "finish_reason=stop"),
])
async def test_by_chunk_at_either_end_of_the_stream(story, first_good, specs, needed):
    result = await Bisector(story, 1, ScriptedOracle(good_from_chunk(first_good))).by_chunk()
    assert [s.value for s in result.steps] == specs
    assert result.boundary == {"bad": first_good - 1, "good": first_good, "needed_chunk": first_good - 1,
                               "chunk": needed}


async def test_by_chunk_bad_even_with_every_chunk_stops_after_one_run(story):
    result = await Bisector(story, 1, ScriptedOracle(always(BAD))).by_chunk()
    assert result.answer == "bad even with all 18 chunks delivered (cut:chunk=18): the cut is not what breaks it"
    assert [(s.spec, s.verdict) for s in result.steps] == [("cut:chunk=18", BAD)]
    assert (result.boundary, result.replay) == ({}, "")


async def test_by_chunk_good_even_with_no_chunk_stops_after_two_runs(story):
    result = await Bisector(story, 1, ScriptedOracle(always(GOOD))).by_chunk("reset")
    assert result.answer == ("good even with no chunk delivered (reset:chunk=0): the app does not depend on this "
                             "stream")
    assert [(s.spec, s.verdict) for s in result.steps] == [("reset:chunk=18", GOOD), ("reset:chunk=0", GOOD)]
    assert (result.boundary, result.replay) == ({}, "")


async def test_by_chunk_stops_at_a_skipped_run_and_names_the_range_left(story):
    result = await Bisector(story, 1, ScriptedOracle(good_from_chunk(7, skip_at=4))).by_chunk()
    assert result.answer == "the check skipped cut:chunk=4: cannot tell between 0 and 9"
    assert [(s.value, s.verdict) for s in result.steps] == [(18, GOOD), (0, BAD), (9, GOOD), (4, SKIP)]
    assert (result.boundary, result.replay) == ({}, "")


@pytest.mark.parametrize(("skip_at", "specs"), [(18, ["cut:chunk=18"]), (0, ["cut:chunk=18", "cut:chunk=0"])])
async def test_by_chunk_says_a_skip_at_an_end_as_a_skip_not_as_good_or_bad(story, skip_at, specs):
    result = await Bisector(story, 1, ScriptedOracle(good_from_chunk(7, skip_at=skip_at))).by_chunk()
    assert result.answer == f"the check skipped cut:chunk={skip_at}, an end of the range: nothing to search between"
    assert [s.spec for s in result.steps] == specs
    assert (result.boundary, result.replay) == ({}, "")


async def test_a_bisector_used_twice_counts_each_search_s_runs_on_their_own(story):
    bisector = Bisector(story, 1, ScriptedOracle(good_from_chunk(7)))
    first = await bisector.by_chunk()
    second = await bisector.by_chunk()
    assert [s.spec for s in second.steps] == [s.spec for s in first.steps] and second.runs == first.runs == 6
    timing = await bisector.by_timing(maximum=2.0)
    assert [s.spec for s in timing.steps] == ["stall:chunk=5,seconds=0"]  # bad at once: one run, its own


async def test_by_chunk_refuses_a_kind_that_is_not_a_cut(story):
    oracle = ScriptedOracle(always(GOOD))
    with pytest.raises(ValueError) as refused:
        await Bisector(story, 1, oracle).by_chunk("stall")
    assert str(refused.value) == "--fault must be one of cut, close, reset, error-event"
    assert oracle.specs == []


async def test_by_chunk_names_the_needed_chunk_in_the_exchange_s_own_dialect(tmp_path):
    store = bundled_store(tmp_path, "anthropic-happy-path")
    result = await Bisector(store, 1, ScriptedOracle(good_from_chunk(4))).by_chunk()
    assert result.boundary == {"bad": 3, "good": 4, "needed_chunk": 3, "chunk": "'The '"}
    assert result.replay == (f"streamreplay play --db {store.path} --tape anthropic-happy-path "
                             "--speed 0 --fault cut:chunk=3")


async def test_by_chunk_serves_the_exchange_to_whatever_the_app_asks_under_the_fault_in_its_url(story):
    """What the runs are told is real: a request unlike the recorded one gets the recording, cut as the URL
    says (the finish chunk is chunk 16)."""
    oracle = AskingOracle()
    result = await Bisector(story, 1, oracle).by_chunk()
    assert result.boundary["good"] == 17 and result.boundary["bad"] == 16
    assert set(oracle.statuses) == {200}


# -- by timing ---------------------------------------------------------------------------------------------------


async def test_by_timing_stalls_before_the_longest_silence_and_halves_to_the_resolution(story, clock):
    oracle = ScriptedOracle(good_below("seconds", 1.234), clock)
    progress = []
    result = await Bisector(story, 1, oracle, progress=progress.append).by_timing(maximum=2.0, resolution=0.1)
    assert result.axis == "timing"
    assert [(s.value, s.spec, s.verdict) for s in result.steps] == [
        (0.0, "stall:chunk=5,seconds=0", GOOD), (2.0, "stall:chunk=5,seconds=2", BAD),
        (1.0, "stall:chunk=5,seconds=1", GOOD), (1.5, "stall:chunk=5,seconds=1.5", BAD),
        (1.25, "stall:chunk=5,seconds=1.25", BAD), (1.125, "stall:chunk=5,seconds=1.125", GOOD),
        (1.1875, "stall:chunk=5,seconds=1.188", GOOD)]
    assert result.boundary == {"good_s": 1.1875, "bad_s": 1.25, "at_chunk": 5}
    assert result.answer == ("good at 1.19 s, bad at 1.25 s of silence before chunk 5: the client gives up after "
                             "about 1.2 s of silence")
    assert result.replay == f"streamreplay play --db {story.path} --tape t --speed 0 --fault stall:chunk=5,seconds=1.25"
    # ceil(log2(2 / 0.1)) + 2 = 7 runs planned, each 10 s: the time left is what the runs so far took a run
    assert progress == [
        "step 1: stall:chunk=5,seconds=0      good  (10.0 s)",
        "step 2: stall:chunk=5,seconds=2      bad  (10.0 s)",
        "  trying 1.000 s; about 50 s left",
        "step 3: stall:chunk=5,seconds=1      good  (10.0 s)",
        "  trying 1.500 s; about 40 s left",
        "step 4: stall:chunk=5,seconds=1.5    bad  (10.0 s)",
        "  trying 1.250 s; about 30 s left",
        "step 5: stall:chunk=5,seconds=1.25   bad  (10.0 s)",
        "  trying 1.125 s; about 20 s left",
        "step 6: stall:chunk=5,seconds=1.125  good  (10.0 s)",
        "  trying 1.188 s; about 10 s left",
        "step 7: stall:chunk=5,seconds=1.188  good  (10.0 s)",
    ]
    assert len(set(map(id, oracle.servers))) == 1 and oracle.speeds == [0.0] * 7


async def test_by_timing_replays_at_the_speed_asked_and_stalls_where_told(story):
    oracle = ScriptedOracle(good_below("seconds", 0.3))
    result = await Bisector(story, 1, oracle, speed=3.0).by_timing(at_chunk=0, maximum=1.0, resolution=0.25)
    assert [s.spec for s in result.steps] == ["stall:chunk=0,seconds=0", "stall:chunk=0,seconds=1",
                                              "stall:chunk=0,seconds=0.5", "stall:chunk=0,seconds=0.25"]
    # the width is now exactly the resolution: no fifth run
    assert result.boundary == {"good_s": 0.25, "bad_s": 0.5, "at_chunk": 0}
    assert oracle.speeds == [3.0] * 4
    # the command printed replays the run judged bad, at its speed
    assert result.replay == f"streamreplay play --db {story.path} --tape t --speed 3 --fault stall:chunk=0,seconds=0.5"
    at_one = await Bisector(story, 1, ScriptedOracle(good_from_chunk(7)), speed=1.0).by_chunk()
    assert at_one.replay == f"streamreplay play --db {story.path} --tape t --fault cut:chunk=6"


async def test_by_timing_by_default_searches_a_minute_to_a_tenth_of_a_second(story):
    result = await Bisector(story, 1, ScriptedOracle(good_below("seconds", 7.0))).by_timing()
    assert [s.spec for s in result.steps[:3]] == ["stall:chunk=5,seconds=0", "stall:chunk=5,seconds=60",
                                                  "stall:chunk=5,seconds=30"]
    assert result.runs == 12  # ceil(log2(60 / 0.1)) + 2
    assert result.boundary == {"good_s": 6.97265625, "bad_s": 7.03125, "at_chunk": 5}


async def test_by_timing_bad_even_without_a_stall(story):
    result = await Bisector(story, 1, ScriptedOracle(always(BAD))).by_timing(maximum=2.0)
    assert result.answer == "bad even at 0 s (stall:chunk=5,seconds=0): something else breaks it"
    assert (result.runs, result.boundary, result.replay) == (1, {}, "")


async def test_by_timing_good_even_at_the_longest_stall(story):
    result = await Bisector(story, 1, ScriptedOracle(always(GOOD))).by_timing(maximum=2.5)
    assert result.answer == "good even at 2.5 s (stall:chunk=5,seconds=2.5): raise --max to find a limit"
    assert [s.verdict for s in result.steps] == [GOOD, GOOD]
    assert (result.boundary, result.replay) == ({}, "")


async def test_by_timing_stops_at_a_skipped_run(story):
    result = await Bisector(story, 1, ScriptedOracle(good_below("seconds", 1.234, skip_at=1.5))).by_timing(
        maximum=2.0, resolution=0.1)
    assert result.answer == "the check skipped stall:chunk=5,seconds=1.5: cannot tell between 1.000 and 2.000 s"
    assert [s.verdict for s in result.steps] == [GOOD, BAD, GOOD, SKIP]
    assert (result.boundary, result.replay) == ({}, "")


@pytest.mark.parametrize(("resolution", "said"), [(0.0, "0"), (-0.1, "-0.1")])
async def test_a_resolution_that_is_not_above_zero_is_refused_before_any_run(story, resolution, said):
    """A resolution of 0 divided by zero, a negative one searched for ever."""
    for search in ("by_timing", "by_slowdown"):
        oracle = ScriptedOracle(good_below("seconds" if search == "by_timing" else "factor", 1.5))
        with pytest.raises(ValueError) as refused:
            await getattr(Bisector(story, 1, oracle), search)(maximum=2.0, resolution=resolution)
        assert str(refused.value) == f"--resolution must be more than 0, not {said}"
        assert oracle.specs == []


# -- by slowdown -------------------------------------------------------------------------------------------------


async def test_by_slowdown_halves_the_gap_factor_at_the_recorded_speed(story, clock):
    oracle = ScriptedOracle(good_below("factor", 2.5), clock)
    progress = []
    # whatever --speed says: the gaps are what is searched, so they are played as recorded
    bisector = Bisector(story, 1, oracle, speed=0.0, progress=progress.append)
    result = await bisector.by_slowdown(maximum=4.0, resolution=0.25)
    assert result.axis == "slowdown"
    assert [(s.value, s.spec, s.verdict) for s in result.steps] == [
        (1.0, "gap-scale:factor=1", GOOD), (4.0, "gap-scale:factor=4", BAD), (2.5, "gap-scale:factor=2.5", BAD),
        (1.75, "gap-scale:factor=1.75", GOOD), (2.125, "gap-scale:factor=2.125", GOOD),
        (2.3125, "gap-scale:factor=2.312", GOOD)]
    assert result.boundary == {"good_factor": 2.3125, "bad_factor": 2.5}
    assert result.answer == ("good with gaps x2.31, bad with gaps x2.50: the app fails when the stream runs about "
                             "2.5 times slower than recorded")
    assert result.replay == f"streamreplay play --db {story.path} --tape t --fault gap-scale:factor=2.5"
    # ceil(log2(3 / 0.25)) + 2 = 6 runs planned
    assert [line for line in progress if line.startswith("  ")] == [
        "  trying 2.500x; about 40 s left", "  trying 1.750x; about 30 s left",
        "  trying 2.125x; about 20 s left", "  trying 2.312x; about 10 s left"]
    assert progress[-1] == "step 6: gap-scale:factor=2.312       good  (10.0 s)"
    assert oracle.speeds == [1.0] * 6


async def test_by_slowdown_by_default_searches_up_to_twenty_times_to_a_tenth(story):
    oracle = ScriptedOracle(good_below("factor", 3.0))
    result = await Bisector(story, 1, oracle, speed=5.0).by_slowdown()
    assert [s.spec for s in result.steps[:3]] == ["gap-scale:factor=1", "gap-scale:factor=20",
                                                  "gap-scale:factor=10.5"]
    assert result.runs == 10  # ceil(log2(19 / 0.1)) + 2
    assert result.boundary == {"good_factor": 2.9296875, "bad_factor": 3.00390625}
    assert set(oracle.speeds) == {1.0}
    assert result.replay == f"streamreplay play --db {story.path} --tape t --fault gap-scale:factor=3.004"


async def test_by_slowdown_bad_even_as_recorded_or_good_even_at_the_most(story):
    result = await Bisector(story, 1, ScriptedOracle(always(BAD))).by_slowdown(maximum=3.0)
    assert result.answer == "bad even at 1x (gap-scale:factor=1): something else breaks it"
    assert (result.runs, result.boundary, result.replay) == (1, {}, "")
    result = await Bisector(story, 1, ScriptedOracle(always(GOOD))).by_slowdown(maximum=3.0)
    assert result.answer == "good even at 3x (gap-scale:factor=3): raise --max to find a limit"
    assert (result.runs, result.boundary, result.replay) == (2, {}, "")


async def test_by_slowdown_stops_at_a_skipped_run(story):
    result = await Bisector(story, 1, ScriptedOracle(good_below("factor", 2.0, skip_at=2.5))).by_slowdown(
        maximum=4.0, resolution=0.25)
    assert result.answer == "the check skipped gap-scale:factor=2.5: cannot tell between 1.000 and 4.000x"
    assert (result.runs, result.boundary, result.replay) == (3, {}, "")


@pytest.mark.parametrize(("search", "skip_at", "spec"), [
    ("by_timing", 0.0, "stall:chunk=5,seconds=0"), ("by_timing", 2.0, "stall:chunk=5,seconds=2"),
    ("by_slowdown", 1.0, "gap-scale:factor=1"), ("by_slowdown", 2.0, "gap-scale:factor=2")])
async def test_a_threshold_search_says_a_skip_at_an_end_as_a_skip_not_as_good_or_bad(story, search, skip_at, spec):
    key = "seconds" if search == "by_timing" else "factor"
    oracle = ScriptedOracle(good_below(key, 1.5, skip_at=skip_at))
    result = await getattr(Bisector(story, 1, oracle), search)(maximum=2.0)
    assert result.answer == f"the check skipped {spec}, an end of the range: nothing to search between"
    assert result.steps[-1].spec == spec and (result.boundary, result.replay) == ({}, "")


async def test_by_slowdown_serves_the_exchange_to_whatever_the_app_asks(story):
    oracle = HeadOracle(good_below("factor", 1.5))
    await Bisector(story, 1, oracle).by_slowdown(maximum=2.0, resolution=1.0)
    assert oracle.statuses == [200, 200]


# -- the chunk with the longest silence before it -----------------------------------------------------------------


def test_the_longest_silence_of_a_recording(story):
    assert Bisector(story, 1, ScriptedOracle(always(GOOD))).largest_gap_chunk() == 5


MS = 1_000_000


@pytest.mark.parametrize(("head_ns", "chunk_ns", "longest"), [
    # equal silences: the first of them
    (None, [10 * MS * (i + 1) for i in range(18)], 0),
    # no head time: the first silence counts from 0
    (None, [10 * MS, 20 * MS] + [20 * MS + i for i in range(1, 17)], 0),
    # the first silence counts from the response head
    (50 * MS, [100 * MS, 190 * MS] + [190 * MS + i for i in range(1, 17)], 1),
    # a silence of 1 ns beats none at all
    (10 * MS, [10 * MS] + [10 * MS + 1] * 17, 1),
    # no chunk at all (an answer that ended at its head): the stall goes before the end, chunk 0
    (10 * MS, [], 0),
])
def test_the_longest_silence_at_exact_times(tmp_path, head_ns, chunk_ns, longest):
    store = happy_path_at(tmp_path, head_ns, chunk_ns)
    assert Bisector(store, 1, ScriptedOracle(always(GOOD))).largest_gap_chunk() == longest


# -- what a chunk carries ------------------------------------------------------------------------------------------


def event(delta=None, finish=None):
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"


def chunks(*datas):
    return [Chunk(i, i * MS, data) for i, data in enumerate(datas)]


def test_chunk_text_says_what_each_chunk_carries():
    words = event({"content": "Once "})
    stream = chunks(event({"role": "assistant"}), words, event({"content": "a"}) + event({"content": "b"}),
                    words[:20], words[20:], event(finish="length"), b"data: [DONE]\n\n",
                    b'data: {"error": {"message": "quota X"}}\n\n')
    assert [chunk_text(stream, i) for i in range(len(stream))] == [
        "(no text)", "'Once '", "'a', 'b'", "20 bytes, no whole event", "'Once '", "finish_reason=length", "[DONE]",
        "error quota X"]


def test_chunk_text_reads_the_dialect_it_is_given():
    anthropic = DIALECTS["anthropic"]
    stream = chunks(b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                    b'"delta":{"type":"text_delta","text":"Paris"}}\n\n',
                    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"}}\n\n',
                    b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert [chunk_text(stream, i, anthropic) for i in range(3)] == ["'Paris'", "stop_reason=end_turn",
                                                                    "message_stop"]
    assert chunk_text(stream, 0) == "(no text)"  # as chat, it carries nothing


# -- the check command as oracle -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "verdict"), [(0, GOOD), (125, SKIP), (3, BAD), (1, BAD), (124, BAD), (126, BAD)])
async def test_a_check_s_exit_status_is_its_verdict_as_git_bisect_run_reads_it(code, verdict):
    assert await CommandOracle(f"exit {code}").judge(ELSEWHERE, None) == verdict


async def test_a_check_runs_with_both_base_urls_and_a_placeholder_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("BISECT_UNITS_MARK", "inherited")
    check = (f"[ \"$OPENAI_BASE_URL\" = '{ELSEWHERE}' ] && [ \"$STREAMREPLAY_BASE_URL\" = '{ELSEWHERE}' ] && "
             "[ \"$OPENAI_API_KEY\" = streamreplay-replay ] && [ \"$BISECT_UNITS_MARK\" = inherited ]")
    assert await CommandOracle(check).judge(ELSEWHERE, None) == GOOD
    monkeypatch.setenv("OPENAI_API_KEY", "sk-own")
    assert await CommandOracle('[ "$OPENAI_API_KEY" = sk-own ]').judge(ELSEWHERE, None) == GOOD


async def test_a_check_s_output_is_not_mixed_into_bisect_s(capfd):
    assert await CommandOracle("echo out; echo err >&2").judge(ELSEWHERE, None) == GOOD
    assert capfd.readouterr() == ("", "")


async def test_a_check_past_its_timeout_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    oracle = CommandOracle(f"sleep 5 & echo $! > {pid_file}; wait", timeout=0.2)
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await oracle.judge(ELSEWHERE, None)
    assert time.monotonic() - started < 2.0, "waited for the check rather than killing it"
    assert _gone(int(pid_file.read_text())), "the check's child survived"


async def test_a_cancelled_check_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    running = asyncio.create_task(CommandOracle(f"sleep 5 & echo $! > {pid_file}; wait").judge(ELSEWHERE, None))
    while not pid_file.exists() or not pid_file.read_text().strip():
        await asyncio.sleep(0.01)
    started = time.monotonic()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert time.monotonic() - started < 2.0
    assert _gone(int(pid_file.read_text()))


# -- the client oracle ---------------------------------------------------------------------------------------------


def reader(read, question="Hi"):
    """A check that asks the replay `question` and reads the answer with `read` (a call on the response)."""
    return shlex.join([sys.executable, "-c", (
        "import json, os, urllib.request as u\n"
        f"ask = u.Request(os.environ['OPENAI_BASE_URL'] + '/chat/completions', {json.dumps(chat(question)).encode()!r},"
        " {'Content-Type': 'application/json'})\n"
        f"u.urlopen(ask, timeout=10).{read}")])


# another question for the one that leaves, or the next to ask the same would be a retry of it
READ_TO_END, READ_A_LITTLE = reader("read()"), reader("read(50)", "Hello")


@pytest.fixture
async def replay(story):
    async with ReplayServer(OneExchange(story.exchange(1), story.chunks(1)), speed=0, match="sequence") as server:
        yield server


async def test_the_client_oracle_judges_each_run_by_what_the_server_saw_of_it(replay):
    oracle = ClientOracle(READ_TO_END)
    assert await oracle.judge(replay.base_url, replay) == GOOD
    # the server stalls before chunk 3: the client has left long before it goes on
    assert await ClientOracle(READ_A_LITTLE).judge(replay.fault_url("stall:chunk=3,seconds=5"), replay) == BAD
    assert await oracle.judge(replay.base_url, replay) == GOOD  # this run's requests, not all so far


def ask_twice(question: str) -> str:
    """A check that asks the replay `question` twice, reading each answer to its end, broken or not."""
    return shlex.join([sys.executable, "-c", (
        "import json, os, urllib.request as u\n"
        f"ask = u.Request(os.environ['OPENAI_BASE_URL'] + '/chat/completions', {json.dumps(chat(question)).encode()!r},"
        " {'Content-Type': 'application/json'})\n"
        "for _ in range(2):\n"
        "    try:\n"
        "        u.urlopen(ask, timeout=10).read()\n"
        "    except Exception:\n"
        "        pass\n")])


async def test_the_client_oracle_calls_a_run_that_retried_a_broken_answer_bad(replay):
    """README, Bisect: with `--oracle client`, good means the client read the stream to its end without
    leaving early or retrying. A client that reads each broken answer to its end and asks again retried."""
    assert await ClientOracle(ask_twice("Again")).judge(replay.fault_url("close:chunk=2"), replay) == BAD
    assert replay.counts.retries == 1 and replay.counts.unfinished == 0
    # another question twice, each answer whole: asking again after a whole answer is no retry
    assert await ClientOracle(ask_twice("Once more")).judge(replay.base_url, replay) == GOOD


async def test_the_client_oracle_skips_a_run_that_asked_nothing_and_says_so_at_once(replay):
    await ClientOracle(READ_TO_END).judge(replay.base_url, replay)
    started = time.monotonic()
    assert await ClientOracle("exit 0").judge(replay.base_url, replay) == SKIP
    # it waits a moment for the server's notes, no more: a bisect runs it a dozen times
    assert time.monotonic() - started < 0.5


def test_the_cli_refuses_a_resolution_that_is_not_above_zero_as_a_usage_error():
    from click.testing import CliRunner

    from streamreplay.cli import main

    tape = bundled_tape("openai-happy-path")
    out = CliRunner().invoke(main, ["bisect", "openai-happy-path", "--db", str(tape), "--by", "timing",
                                    "--check", "true", "--resolution", "0"])
    assert out.exit_code == 2 and "Invalid value for '--resolution': 0.0 is not in the range x>0." in out.output


async def test_the_printed_command_quotes_a_db_path_with_a_space_so_it_runs_as_printed(story):
    """A DB path (or tape) a shell would split is quoted in the command bisect prints, as `diagnose` quotes it."""
    result = await Bisector(story, 1, ScriptedOracle(good_from_chunk(12)), db_label="my recordings/rec.db").by_chunk()
    assert result.replay == "streamreplay play --db 'my recordings/rec.db' --tape t --speed 0 --fault cut:chunk=11"


async def test_the_printed_command_quotes_a_tape_name_a_shell_would_split(tmp_path: Path):
    """`record --tape` takes any name ("night run"): the command bisect prints quotes it, as it quotes the DB."""
    db = tmp_path / "rec.db"
    await record(db, [Script(text=STORY, gap=0.001)], [chat("Tell me a story.")], tape="night run")
    with Store(db) as store:
        result = await Bisector(store, 1, ScriptedOracle(good_from_chunk(12))).by_chunk()
    assert result.replay.startswith(f"streamreplay play --db {db} --tape 'night run' --speed 0 --fault cut:chunk=")
    assert shlex.split(result.replay)[4:6] == ["--tape", "night run"]
