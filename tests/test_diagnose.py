"""diagnose names the right cause for each ending recorded for real through the proxy."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
from pathlib import Path

import openai
import pytest
from click.testing import CliRunner

from streamreplay.bundled import bundled_tape
from streamreplay.cli import main
from streamreplay.diagnose import diagnose
from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.store import Store
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import chat, record

MESSAGES = [{"role": "user", "content": "Tell me a story."}]
STORY = "Once upon a time a small robot learned to read streams to the very end."


async def read(base_url: str, *, stop_after: int | None = None, **kw) -> None:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", **{"max_retries": 0, **kw})
    try:
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        async for n, _chunk in _enumerate(stream):
            if stop_after is not None and n + 1 >= stop_after:
                break
        await stream.close()
    except Exception:  # the recording is under test, not the client
        pass


async def _enumerate(aiterable):
    n = 0
    async for item in aiterable:
        yield n, item
        n += 1


async def recorded(db_path: Path, scripts: list[Script], runs: int = 1, **kw) -> Store:
    async with ScriptedUpstream() as upstream:
        upstream.queue(*scripts)
        async with RecordingProxy(RecordOptions(upstream=upstream.base_url, db=str(db_path), tape="d")) as proxy:
            for _ in range(runs):
                await read(proxy.base_url, **kw)
            await proxy.settle()
    return Store(db_path)


@pytest.mark.parametrize(
    ("scripts", "kw", "cause", "ended_by"),
    [
        ([Script(text=STORY, gap=0.02)], {"stop_after": 2}, "consumer_stopped_reading", "client"),
        ([Script(text=STORY, gap=0.01, pauses={5: 1.0})], {"timeout": 0.4}, "client_timeout", "client"),
        ([Script(text=STORY, ending="no_done")], {}, "upstream_no_done", "upstream"),
        ([Script(text=STORY, ending="reset", gap=0.01)], {}, "upstream_reset", "upstream"),
        ([Script(text=STORY, ending="close", gap=0.01)], {}, "upstream_closed", "upstream"),
        ([Script(status=500)], {}, "http_error", "upstream"),
        ([Script(text=STORY, finish_reason="length")], {}, "max_tokens", "nobody"),
        ([Script(text=STORY)], {}, "complete", "nobody"),
    ],
)
async def test_diagnose_names_the_cause(db_path: Path, scripts, kw, cause: str, ended_by: str):
    store = await recorded(db_path, scripts, **kw)
    found = diagnose(store, 1)
    assert (found.cause, found.ended_by) == (cause, ended_by), found.lines()
    if cause == "client_timeout":
        assert "a client timeout of about 0.4 s" in found.summary and found.chunk == 5
        assert 0.35 < found.gap_before_s < 0.6
        await asyncio.sleep(0.7)
    if cause == "consumer_stopped_reading":
        assert found.chunk == 2 and "right after the first chunk(s)" in found.summary
        assert found.upstream_complete and "ended: complete" in found.evidence[0]
    if cause == "complete":
        assert found.summary == "the exchange completed: the client read the whole answer"


@pytest.mark.parametrize(
    ("script", "timeout", "left_at", "silence", "over_usual", "cause"),
    [
        # a slow stream (a chunk every 0.2 s) left 0.3 s into a gap: past 0.25 s, but short of 3 usual gaps
        (Script(text="Hi", gap=0.2, pauses={2: 0.5}), 0.3, 2, (0.25, 0.6), False, "consumer_stopped_reading"),
        # a fast stream (10 ms) left after 0.1 s of silence: past 3 usual gaps, but short of 0.25 s
        (Script(text=STORY, gap=0.01, pauses={5: 0.4}), 0.1, 5, (0.1, 0.25), True, "consumer_stopped_reading"),
        # the converse, both past: a fast stream left after 0.3 s, a 0.1 s stream left after 0.5 s
        (Script(text=STORY, gap=0.01, pauses={5: 0.7}), 0.3, 5, (0.3, 0.7), True, "client_timeout"),
        (Script(text="Hi", gap=0.1, pauses={2: 0.8}), 0.5, 2, (0.5, 0.9), True, "client_timeout"),
    ],
    ids=["slow-stream-0.3s", "fast-stream-0.1s", "fast-stream-0.3s", "slow-stream-0.5s"],
)
async def test_a_timeout_is_a_silence_both_long_and_well_above_the_usual_gap(
    db_path: Path, script: Script, timeout: float, left_at: int, silence: tuple[float, float], over_usual: bool,
    cause: str,
):
    """A client timeout is read from a silence of at least TIMEOUT_SILENCE_S (0.25 s) that is also over 3 usual
    gaps; either alone is a consumer that stopped. Each case is a real client with a read timeout leaving mid-gap."""
    store = await recorded(db_path, [script], timeout=timeout)
    found = diagnose(store, 1)
    # the scenario is the one meant: where the client left, how long after the chunk before, the stream's usual gap
    assert found.chunk == left_at and silence[0] <= found.gap_before_s < silence[1], found.lines()
    times = [store.exchange(1).headers_ns] + [c.t_ns for c in store.chunks(1)]
    usual = statistics.median([(later - earlier) / 1e9 for earlier, later in itertools.pairwise(times)][1:])
    assert (found.gap_before_s > 3 * usual) == over_usual, (usual, found.lines())
    assert (found.cause, found.ended_by) == (cause, "client"), found.lines()


async def test_truncated_without_finish_reason_is_called_truncated(db_path: Path):
    store = await recorded(db_path, [Script(text=STORY, ending="no_done", stop_after=5)])
    found = diagnose(store, 1)
    assert found.cause == "upstream_no_done" and not found.upstream_complete
    assert "cleanly but early" in found.summary and "check finish_reason" in found.fix


async def test_round_limit_and_retry(db_path: Path):
    store = await recorded(db_path, [Script(text="one"), Script(text="two"), Script(text="three")], runs=3)
    assert diagnose(store, 3).cause == "round_limit"
    assert "exactly 3 complete exchanges" in diagnose(store, 3).summary
    store = await recorded(db_path.with_name("retry.db"), [Script(status=429), Script(status=429)], max_retries=1)
    found = diagnose(store, 1)
    assert found.cause == "http_error" and "HTTP 429" in found.summary
    assert any("the client retried" in e for e in found.evidence), found.evidence


async def test_diagnose_cli_text_and_json(db_path: Path):
    await recorded(db_path, [Script(text=STORY, gap=0.02)], stop_after=2)
    runner = CliRunner()
    out = runner.invoke(main, ["diagnose", "1", "--db", str(db_path)])
    assert out.exit_code == 0, out.output
    assert "exchange d:0 (id 1): a consumer that stopped reading" in out.output
    assert "client     openai-python 2." in out.output and "AsyncOpenAI" in out.output
    assert f"replay     streamreplay play --db {db_path} --tape d" in out.output
    data = json.loads(runner.invoke(main, ["diagnose", "1", "--db", str(db_path), "--json"]).output)
    assert data["cause"] == "consumer_stopped_reading" and data["chunk"] == 2
    assert runner.invoke(main, ["diagnose", "9", "--db", str(db_path)]).exit_code == 1


def test_a_deadline_on_a_bundled_real_recording(tmp_path: Path):
    from streamreplay.cassette import import_cassette

    db = tmp_path / "b.db"
    import_cassette(bundled_tape("client-timeout"), db)
    found = diagnose(Store(db), 1)
    assert found.cause == "client_deadline" and "a total time limit of about 1 s" in found.summary
    assert found.chunk == 63 and found.upstream_complete


async def test_unreachable_timeout_and_interrupted(tmp_path: Path):
    from streamreplay.store import StoreWriter

    async with ScriptedUpstream() as dead:
        port = dead.port
    db = tmp_path / "u.db"
    async with RecordingProxy(RecordOptions(upstream=f"http://127.0.0.1:{port}/v1", db=str(db), tape="u")) as proxy:
        await read(proxy.base_url)
        await proxy.settle()
    found = diagnose(Store(db), 1)
    assert found.cause == "upstream_unreachable" and "could not be reached" in found.summary

    db = tmp_path / "t.db"
    async with ScriptedUpstream(Script(text=STORY, gap=0.01, pauses={3: 1.0})) as upstream:
        options = RecordOptions(upstream=upstream.base_url, db=str(db), tape="t", upstream_timeout=0.3)
        async with RecordingProxy(options) as proxy:
            await read(proxy.base_url)
            await proxy.settle()
    found = diagnose(Store(db), 1)
    assert (found.cause, found.ended_by, found.chunk) == ("upstream_timeout", "upstream", 3)

    db = tmp_path / "i.db"
    writer = StoreWriter(db, "i")
    writer.start()
    handle = writer.begin({"method": "POST", "path": "/chat/completions", "stream": 1, "request_body": b"{}"})
    writer.chunk(handle, 0, 1000, b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n')
    writer.close()  # the daemon died before the exchange ended
    with Store(db).db.conn:
        Store(db).db.execute("update exchanges set recorder_pid = 999999999")
    reopened = StoreWriter(db, "next")
    reopened.start()
    reopened.close()
    found = diagnose(Store(db), 1)
    assert found.cause == "interrupted" and found.ended_by == "daemon"


async def test_a_round_limit_is_read_from_a_db_only_when_every_exchange_of_that_tape_completed(tmp_path: Path):
    """Recorded through the proxy, diagnosed from the DB: the last of two complete exchanges points at a round limit;
    the last of a tape with a failed exchange before it, or beside a tape in the same DB that failed, does not."""
    db = tmp_path / "rounds.db"
    await record(db, [Script(ending="reset"), Script()], [chat("one"), chat("two")], tape="broken")
    await record(db, [Script(), Script()], [chat("one"), chat("two")], tape="whole")
    store = Store(db)
    broken, whole = store.exchanges(tape="broken"), store.exchanges(tape="whole")
    assert [ex.end_cause for ex in broken + whole] == ["upstream_reset", "complete", "complete", "complete"]
    assert diagnose(store, broken[-1].id).cause == "complete"
    assert diagnose(store, whole[-1].id).cause == "round_limit"
    assert "after exactly 2 complete exchanges" in diagnose(store, whole[-1].id).summary


async def test_diagnose_says_the_upstream_ended_it_at_its_last_chunk_and_names_the_exchange_by_tape_and_seq(
        tmp_path: Path) -> None:
    """An upstream reset recorded through the proxy: the `ended by` line names the upstream, at chunk n of n,
    and the replay and repro commands name the exchange as TAPE:SEQ (not its id) and quote the DB's path."""
    db = tmp_path / "my recordings" / "s.db"
    db.parent.mkdir()
    store = await recorded(db, [Script(text=STORY, ending="reset", gap=0.01)])
    n = len(store.chunks(1))
    out = CliRunner().invoke(main, ["diagnose", "1", "--db", str(db)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == "exchange d:0 (id 1): the upstream reset the connection mid-stream"
    ended = next(line for line in lines if line.startswith("ended"))
    assert ended.startswith(f"ended by   the upstream, at chunk {n} of {n}, "), ended
    assert f"replay     streamreplay play --db '{db}' --tape d" in lines
    assert f"repro      streamreplay repro d:0 --db '{db}' -o repro_d-0/" in lines
