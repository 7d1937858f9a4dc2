"""bisect finds the known threshold of an app, in the expected number of runs, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamreplay.bisect import Bisector, ClientOracle, CommandOracle
from streamreplay.cli import main
from streamreplay.clientcheck import main as client_main
from streamreplay.clientcheck import matches
from streamreplay.store import Store
from streamreplay.testing import Script
from tests.helpers import chat, record

#: the searches run an app a step: agent.py's judgements on the standard library, which starts in a tenth of
#: the SDK's time (the README's bisect transcripts run agent.py itself, on the openai SDK)
APP = Path(__file__).resolve().parent / "apps" / "plain_agent.py"
STORY = "Once upon a time a small robot learned to read streams to the very end."


def check(*args: str) -> str:
    return " ".join([sys.executable, str(APP), *args])


@pytest.fixture
async def story(db_path: Path) -> Store:
    """One recorded stream: a role chunk, 15 words, the finish chunk, [DONE]: 18 chunks."""
    await record(db_path, [Script(text=STORY, gap=0.01)], [chat("Tell me a story.")])
    store = Store(db_path)
    assert store.exchange(1).chunk_count == 18
    return store


def bound(n: int) -> int:
    return math.ceil(math.log2(n)) + 2


async def test_by_chunk_finds_the_finish_chunk(story: Store):
    result = await Bisector(story, 1, CommandOracle(check("needs-finish"))).by_chunk()
    assert result.boundary == {"bad": 16, "good": 17, "needed_chunk": 16, "chunk": "finish_reason=stop"}
    assert result.answer == ("bad for cut at or before chunk 16, good from 17: the app needs chunk 16 "
                             "(finish_reason=stop)")
    # 2 end checks + the halvings of (0, 18]: 9, 13, 15, 16, 17 -> 7 runs
    assert result.runs == 7 <= bound(18)
    assert [s.spec for s in result.steps][:3] == ["cut:chunk=18", "cut:chunk=0", "cut:chunk=9"]


def test_by_chunk_prints_a_boundary_that_replays_the_failure(story: Store):
    """The "replay the boundary" command `bisect --by chunk` prints replays the failing side: run as printed,
    the app fails, and one chunk more it passes, so it is the last failing cut, not the first good one."""
    runner = CliRunner()
    out = runner.invoke(main, ["bisect", "1", "--db", str(story.path), "--check", check("needs-finish")])
    assert out.exit_code == 0, out.output
    assert "bad for cut at or before chunk 16, good from 17" in out.output
    (printed,) = re.findall(r"^replay the boundary: (.*)$", out.output, re.M)
    argv = shlex.split(printed)
    assert argv[:2] == ["streamreplay", "play"] and argv[-2] == "--fault", printed
    # at the speed the search ran (0 by default): `play`'s own default, 1, would replay another run
    assert "--speed" in argv and argv[argv.index("--speed") + 1] == "0", printed
    kind, k = re.fullmatch(r"(cut):chunk=(\d+)", argv[-1]).groups()

    def app_under(args: list[str]) -> int:  # `streamreplay play ... -- APP`: the app's exit status
        return runner.invoke(main, [*args, "--", sys.executable, str(APP), "needs-finish"]).exit_code

    assert app_under(argv[1:]) == 1, f"the app passes under {printed}"
    assert app_under([*argv[1:-1], f"{kind}:chunk={int(k) + 1}"]) == 0


async def test_by_chunk_finds_a_word_count_and_other_cut_kinds(story: Store):
    result = await Bisector(story, 1, CommandOracle(check("needs-words", "5"))).by_chunk()
    assert (result.boundary["bad"], result.boundary["good"]) == (5, 6)  # the role chunk + 5 words
    assert result.boundary["chunk"] == "'a '" and result.runs <= bound(18)  # Once upon a time a
    # under a reset the same app fails unless it reads [DONE] first (it stops reading there, as the SDK does)
    result = await Bisector(story, 1, CommandOracle(check("needs-words", "5"))).by_chunk("reset")
    assert result.boundary == {"bad": 17, "good": 18, "needed_chunk": 17, "chunk": "[DONE]"}


async def test_by_chunk_with_the_client_oracle(story: Store):
    # the app reads to the end whatever it gets: under a close the client cannot read to the end
    result = await Bisector(story, 1, ClientOracle(check("needs-finish"))).by_chunk("close")
    assert result.boundary["good"] == 18 and result.runs <= bound(18)


async def test_by_timing_finds_the_client_timeout(story: Store):
    progress: list[str] = []
    bisector = Bisector(story, 1, CommandOracle(check("timeout", "0.5")), progress=progress.append)
    result = await bisector.by_timing(at_chunk=4, maximum=2.0, resolution=0.1)
    # the client's timer starts a little after the stall does, so the flip sits just above 0.5 s
    assert 0.4 <= result.boundary["good_s"] < result.boundary["bad_s"] <= 0.65
    assert result.boundary["bad_s"] - result.boundary["good_s"] <= 0.1
    assert result.runs == math.ceil(math.log2(2.0 / 0.1)) + 2
    assert "the client gives up after about" in result.answer
    assert any("s left" in line for line in progress)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_ctrl_c_leaves_no_server_and_no_child(story: Store, tmp_path: Path):
    marker = tmp_path / "child.pid"
    slow = f"sh -c 'echo $$ > {marker}; sleep 30'"
    proc = subprocess.Popen([sys.executable, "-m", "streamreplay.cli", "bisect", "1", "--db", str(story.path),
                             "--check", slow], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(marker.read_text())
    ports = [int(p) for p in re.findall(r":(\d+)/", _listening(proc.pid))]
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)
    assert "interrupted: servers closed, checks stopped" in proc.stdout.read()
    assert _gone(child), "the check's child survived"
    assert ports and not any(_port_open(p) for p in ports)


def _gone(pid: int, within: float = 3.0) -> bool:
    """Dead: no such process, or a zombie waiting for init (its parent, the check's shell, is dead)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def _listening(pid: int) -> str:
    """The replay's address, from the daemon's open sockets (ss is not everywhere; /proc is)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
            found.append(f"127.0.0.1:{int(fields[1].split(':')[1], 16)}/")
    return " ".join(found)


async def test_by_client_names_the_consumer_that_left_like_the_recorded_one(db_path: Path):
    from tests.test_diagnose import recorded

    store = await recorded(db_path, [Script(text=STORY, gap=0.01, pauses={5: 1.0})], timeout=0.4)
    lines: list[str] = []
    observations = await asyncio.to_thread(client_main, store, 1, lines.append)
    matching = [o.behaviour for o in observations if matches(store.exchange(1), o.seen)]
    # the timeout tried is the recorded silence (about the client's 0.4 s), to the hundredth
    assert len(matching) == 1 and re.fullmatch(r"read timeout 0\.(3[5-9]|4\d?|5\d?) s", matching[0]), lines
    assert lines[-1].startswith(f"verdict: a consumer that {matching[0]} leaves where the recorded one did")
    whole = [o for o in observations if o.behaviour == "reads to the end"]
    assert len(whole) == 4 and all(o.outcome.text == STORY for o in whole if o.client != "AG2")


async def test_client_command_runs_one_reference_consumer(story: Store):
    from click.testing import CliRunner

    from streamreplay.cli import main

    out = await asyncio.to_thread(CliRunner().invoke, main, [
        # at speed 0 all is sent at once; a quarter speed leaves ~0.25 s between chunks, so the client's hang-up
        # reaches the replay before the next chunk even on a loaded machine
        "client", "1", "--db", str(story.path), "--behaviour", "stop:3", "--speed", "0.25"])
    assert out.exit_code == 0, out.output
    assert "text       'Once upon '" in out.output
    assert "the client left at chunk 3" in out.output


async def test_by_slowdown_finds_how_much_slower_the_stream_may_run(db_path: Path):
    # the largest gap is 0.21 s; a client with a 0.5 s read timeout fails once gaps grow past ~2.4x
    await record(db_path, [Script(text=STORY, gap=0.01, pauses={4: 0.2})], [chat("Tell me a story.")])
    bisector = Bisector(Store(db_path), 1, CommandOracle(check("timeout", "0.5")))
    result = await bisector.by_slowdown(maximum=4.0, resolution=0.25)
    assert 2.0 <= result.boundary["good_factor"] < result.boundary["bad_factor"] <= 3.0, result.answer
    assert result.runs <= math.ceil(math.log2((4.0 - 1.0) / 0.25)) + 2
    # the command replays the very run judged bad (its spec is written to 3 decimals: 2.3125 runs as 2.312)
    (bad_run,) = [step for step in result.steps if step.value == result.boundary["bad_factor"]]
    assert bad_run.verdict == "bad" and result.replay.endswith(f"--fault {bad_run.spec}")
