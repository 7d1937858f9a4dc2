"""The `streamreplay` command's own words, defaults and exit statuses, run in-process through click's CliRunner."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamreplay.bundled import bundled_dir
from streamreplay.cli import main
from streamreplay.store import Store

RECORDINGS = bundled_dir()
MULTI = RECORDINGS / "agent-multi-turn.jsonl"
CASSETTE = RECORDINGS / "consumer-break.jsonl"
APPS = Path(__file__).resolve().parent / "apps"


def run(*args: object) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, (args, result.output)
    return result.output


@contextlib.contextmanager
def play_daemon(*args: object) -> Iterator[str]:
    """`streamreplay play ARGS --port 0` as a real daemon: the first line it prints, then Ctrl-C stops it."""
    proc = subprocess.Popen([sys.executable, "-m", "streamreplay.cli", "play", *map(str, args), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        yield proc.stdout.readline() if proc.stdout else ""
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)


def play_banner(*args: object) -> str:
    """The first line `streamreplay play ARGS --port 0` prints, from a real daemon then stopped with Ctrl-C."""
    with play_daemon(*args) as banner:
        return banner


def test_play_listens_on_the_host_given_and_only_there() -> None:
    """`--host` reaches the server: `play --host 127.0.0.2` answers there, and nothing listens on 127.0.0.1."""
    with play_daemon("--db", CASSETTE, "--host", "127.0.0.2") as banner:
        found = re.search(r"base_url http://127\.0\.0\.2:(\d+)/v1 ", banner)
        assert found, banner
        port = int(found[1])
        with socket.create_connection(("127.0.0.2", port), timeout=5):
            pass
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
            pass


def test_a_command_that_reads_a_db_that_is_not_there_says_so_and_makes_none(tmp_path: Path) -> None:
    """`ls --db` naming no file is the one-line error "no recordings at PATH", not a new empty DB."""
    missing = tmp_path / "typo.db"
    result = CliRunner().invoke(main, ["ls", "--db", str(missing)])
    assert result.exit_code == 1 and result.output == f"Error: no recordings at {missing}\n"
    assert not missing.exists()


def test_ls_of_an_empty_db_counts_zero_in_the_plural(tmp_path: Path) -> None:
    """An empty DB's `ls` ends "0 exchanges, 0 tapes": the counts read as English at zero too."""
    Store(tmp_path / "empty.db").close()
    assert run("ls", "--db", tmp_path / "empty.db").splitlines()[-1].startswith("0 exchanges, 0 tapes, DB ")


def test_ls_gives_a_file_under_1000_bytes_in_bytes_not_0_kb(tmp_path: Path) -> None:
    """A cassette that is only its header line is some 250 bytes: `ls` says how many, not "0 KB"."""
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text((RECORDINGS / "consumer-break.jsonl").read_text().splitlines()[0] + "\n")
    size = tiny.stat().st_size
    assert size < 500 and run("ls", "--db", tiny).splitlines()[-1] == f"0 exchanges, 1 tape, cassette {size} B"


@pytest.mark.parametrize(("size", "said"), [(999, "999 B"), (1000, "1 KB"), (1999, "1 KB"), (999_999, "999 KB"),
                                            (1_000_000, "1.0 MB"), (1_250_000, "1.2 MB")])
def test_ls_gives_a_cassette_s_size_in_bytes_whole_kb_or_mb_at_each_boundary(tmp_path: Path, size: int,
                                                                              said: str) -> None:
    """A header-only cassette padded to the byte: bytes under 1,000, whole KB (cut) under 1,000,000, MB from there."""
    header = json.loads((RECORDINGS / "consumer-break.jsonl").read_text().splitlines()[0])
    line = json.dumps({**header, "source": ""}) + "\n"
    header["source"] = "x" * (size - len(line.encode()))
    cassette = tmp_path / "sized.jsonl"
    cassette.write_text(json.dumps(header) + "\n")
    assert cassette.stat().st_size == size
    assert run("ls", "--db", cassette).splitlines()[-1] == f"0 exchanges, 1 tape, cassette {said}"


@pytest.mark.parametrize(("args", "said"), [
    (["play", "--db", CASSETTE, "--speed", "nan"], "Invalid value for '--speed': 'nan' is not a finite number."),
    (["play", "--db", CASSETTE, "--speed", "-1"], "Invalid value for '--speed': -1.0 is not in the range x>=0."),
    (["record", "--upstream", "http://127.0.0.1:9/v1", "--upstream-timeout", "nan"],
     "Invalid value for '--upstream-timeout': 'nan' is not a finite number."),
    (["record", "--upstream", "http://127.0.0.1:9/v1", "--upstream-timeout", "0"],
     "Invalid value for '--upstream-timeout': 0.0 is not in the range x>0."),
    (["record", "--upstream", "http://127.0.0.1:9/v1", "--max-body", "-1"],
     "Invalid value for '--max-body': -1 is not in the range x>=1."),
    (["record", "--upstream", "http://127.0.0.1:9/v1", "--max-db-size", "0"],
     "Invalid value for '--max-db-size': 0 is not in the range x>=1."),
    (["client", "consumer-break:0", "--db", CASSETTE, "--speed", "inf"],
     "Invalid value for '--speed': 'inf' is not a finite number."),
    (["matrix", "--timeout", "nan"], "Invalid value for '--timeout': 'nan' is not a finite number."),
    (["bisect", "consumer-break:0", "--db", CASSETTE, "--check", "true", "--by", "timing", "--max", "nan"],
     "Invalid value for '--max': 'nan' is not a finite number."),
    (["bisect", "consumer-break:0", "--db", CASSETTE, "--check", "true", "--speed", "nan"],
     "Invalid value for '--speed': 'nan' is not a finite number."),
    (["bisect", "consumer-break:0", "--db", CASSETTE, "--check", "true", "--check-timeout", "-1"],
     "Invalid value for '--check-timeout': -1.0 is not in the range x>0."),
    (["drift", "consumer-break", "--db", CASSETTE, "--upstream", "http://127.0.0.1:9/v1", "--tolerance", "nan"],
     "Invalid value for '--tolerance': 'nan' is not a finite number."),
])
def test_a_number_option_refuses_nan_infinity_and_values_out_of_its_range_before_starting(args: list[str],
                                                                                          said: str) -> None:
    """NaN compares false with every bound: each number option refuses it (and infinity, and a value below its
    range) as a usage error naming the option, before any server starts or DB opens."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2 and said in result.output, result.output


@pytest.mark.parametrize("setting", ["max_tokens", "=3", "a..b=1", ".a=1"])
def test_drift_set_refuses_a_setting_that_is_no_field_equals_value_before_sending(setting: str) -> None:
    result = CliRunner().invoke(main, ["drift", "consumer-break", "--db", str(CASSETTE), "--upstream",
                                       "http://127.0.0.1:9/v1", "--set", setting])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--set': give a field as FIELD=VALUE (a dotted path), got '{setting}'" in result.output


def test_show_json_gives_each_chunk_its_index_time_bytes_and_the_text_it_added() -> None:
    """`show --json` lists each chunk with its index, offset, size, raw data and `delta`, the text it added."""
    shown = json.loads(run("show", "agent-multi-turn:0", "--db", MULTI, "--json"))
    chunks = shown["chunks"]
    assert [c["index"] for c in chunks] == list(range(shown["chunk_count"]))
    assert all(c["bytes"] == len(c["data"].encode()) and c["t_ns"] > 0 for c in chunks)
    assert "".join(c["delta"] for c in chunks).startswith(shown["text"])


def test_import_says_the_tape_it_made_named_after_the_cassette_or_as_asked(tmp_path: Path) -> None:
    """`import` ends "imported N exchanges into DB as tape NAME": the cassette's own tape name, or `--tape`'s."""
    db = tmp_path / "i.db"
    assert run("import", MULTI, "--db", db) == f"imported 3 exchanges into {db} as tape agent-multi-turn\n"
    assert run("import", MULTI, "--db", db, "--tape", "mine") == f"imported 3 exchanges into {db} as tape mine\n"


def test_play_says_its_speed_as_given_and_each_fault_joined_with_plus() -> None:
    """`play`'s first line names the speed as written (`speed 1`, not `speed 1.0`) and its faults as a `+` chain."""
    banner = play_banner("--db", MULTI, "--fault", "cut:chunk=3", "--fault", "close:chunk=1")
    said = f"(playing 3 exchanges from {MULTI}, speed 1, faults cut:chunk=3 + close:chunk=1)"
    assert banner.rstrip("\n").endswith(said), banner


def test_repro_writes_into_repro_id_by_default_whatever_names_the_exchange(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `-o`, `repro` writes the folder `repro_ID/` (the exchange's id), named by id or by TAPE:SEQ."""
    monkeypatch.chdir(tmp_path)
    run("import", MULTI, "--db", "m.db")
    store = Store(tmp_path / "m.db")
    exchange_id, last_id = store.resolve("agent-multi-turn:1"), store.resolve("agent-multi-turn")
    store.close()
    assert exchange_id != last_id
    for named, expected in (("agent-multi-turn:1", exchange_id), (str(exchange_id), exchange_id),
                            ("agent-multi-turn", last_id)):  # a bare TAPE is its last exchange
        assert f"wrote repro_{expected}/cassette.jsonl" in run("repro", named, "--db", "m.db")
        assert (tmp_path / f"repro_{expected}" / "repro.py").is_file()


def test_tapes_copy_says_how_many_it_copied_and_how_many_were_there_already(tmp_path: Path) -> None:
    """`tapes --copy DIR` leaves the tapes already in DIR as they are and says how many it copied and kept."""
    total = len(list(RECORDINGS.glob("*.jsonl")))
    assert run("tapes", "--copy", tmp_path) == f"copied {total} bundled tapes into {tmp_path}\n"
    (tmp_path / "consumer-break.jsonl").unlink()
    assert run("tapes", "--copy", tmp_path) == f"copied 1 bundled tape into {tmp_path} ({total - 1} there already)\n"


def test_clients_lists_the_chat_clients_first() -> None:
    """`clients` is a table by dialect, chat (the OpenAI SDK's) first."""
    header, first = run("clients").splitlines()[:2]
    assert header.split() == ["dialect", "id", "label", "runs"] and first.split()[:2] == ["chat", "openai-sync"]


def test_client_runs_openai_async_at_the_recorded_speed_by_default() -> None:
    """`client` with no `--client` or `--speed` is the async OpenAI SDK at the recorded timing: a read
    timeout shorter than the recorded 240 ms to the first byte fires."""
    out = run("client", "agent-multi-turn:0", "--db", MULTI, "--behaviour", "timeout:0.1")
    assert out.startswith("client     openai async, read timeout 0.1 s\n"), out
    assert "httpx.ReadTimeout" in out and "the client left at chunk 0" in out, out


def test_bisect_by_default_cuts_chunks_judged_by_the_check_s_exit_at_speed_0() -> None:
    """`bisect EXCHANGE --check CMD` alone searches `--by chunk` with the check's exit status as judge, and
    prints the boundary to replay at `--speed 0`; without `--check` it is a usage error (exit 2)."""
    needs_finish = f"{sys.executable} {APPS / 'plain_agent.py'} needs-finish"
    out = run("bisect", "agent-multi-turn:0", "--db", MULTI, "--check", needs_finish)
    assert "runs: bad for cut at or before chunk 17, good from 18: the app needs chunk 17" in out, out
    assert out.endswith(f"replay the boundary: streamreplay play --db {MULTI} --tape agent-multi-turn --speed 0 "
                        "--fault cut:chunk=17\n"), out
    unchecked = CliRunner().invoke(main, ["bisect", "agent-multi-turn:0", "--db", str(MULTI)])
    assert unchecked.exit_code == 2 and "--by chunk and --by timing need --check COMMAND" in unchecked.output


def test_bisect_by_timing_searches_a_stall_s_length_unless_over_speed() -> None:
    """`--by timing` searches how long a stall the app survives (up to 60 s by default); `--over speed` a slowdown
    (up to 20x by default); `--max` raises either."""
    stall = run("bisect", "agent-multi-turn:0", "--db", MULTI, "--by", "timing", "--check", "true")
    assert stall.endswith("2 runs: good even at 60 s (stall:chunk=0,seconds=60): raise --max to find a limit\n"), stall
    slower = run("bisect", "agent-multi-turn:0", "--db", MULTI, "--by", "timing", "--over", "speed", "--check", "true")
    assert "step 1: gap-scale:factor=1 " in slower, slower
    assert slower.endswith("2 runs: good even at 20x (gap-scale:factor=20): raise --max to find a limit\n"), slower
    wider = run("bisect", "agent-multi-turn:0", "--db", MULTI, "--by", "timing", "--over", "speed", "--max", 30,
                "--check", "true")
    assert wider.endswith("good even at 30x (gap-scale:factor=30): raise --max to find a limit\n"), wider


def test_bisect_by_timing_stops_when_the_threshold_is_as_narrow_as_resolution() -> None:
    """`--resolution` reaches the search: with 0.4 s over a 1 s range it stops after halving twice (4 runs, the
    flip inside 0.25 s); the default 0.1 s would go on to 6 runs."""
    timeout = f"{sys.executable} {APPS / 'plain_agent.py'} timeout 0.3"
    out = run("bisect", "agent-multi-turn:0", "--db", MULTI, "--by", "timing", "--at-chunk", 1, "--max", 1,
              "--resolution", 0.4, "--check", timeout)
    found = re.search(r"\n(\d+) runs: good at ([\d.]+) s, bad at ([\d.]+) s of silence before chunk 1: ", out)
    assert found, out
    runs, good, bad = int(found[1]), float(found[2]), float(found[3])
    assert runs == sum(line.startswith("step ") for line in out.splitlines()) == 4, out
    assert 0 < bad - good == 0.25, out  # wherever the flip falls under load: 1 s halved twice


def test_show_json_reads_each_chunk_s_text_in_the_exchange_s_dialect() -> None:
    """`show --json` gives each chunk of an Anthropic exchange the text it added read in Anthropic's events (the
    answer's words, then `message_stop`), not as chat chunks that add nothing."""
    shown = json.loads(run("show", "anthropic-happy-path:0", "--db", RECORDINGS / "anthropic-happy-path.jsonl",
                           "--json"))
    deltas = [c["delta"] for c in shown["chunks"]]
    assert shown["text"] and "".join(deltas).startswith(shown["text"])
    assert deltas[-1].endswith("message_stop")


def test_ls_gives_a_db_of_a_megabyte_or_more_in_decimal_megabytes(tmp_path: Path) -> None:
    """`ls` ends with the DB's size in KB (1,000 bytes) under a million bytes and in MB (1,000,000 bytes,
    one decimal) from a million on."""
    db = tmp_path / "big.db"
    run("import", RECORDINGS / "consumer-break.jsonl", "--db", db)

    def size() -> int:
        store = Store(db)
        try:
            return store.size_bytes()
        finally:
            store.close()

    small = size()
    assert small < 1e6 and run("ls", "--db", db).splitlines()[-1] == f"1 exchange, 1 tape, DB {small // 1000} KB"
    # a stored text of 2.5 million bytes, which ls does not show, makes the file a few MB
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("update exchanges set end_detail = ?", ["x" * 2_500_000])
    conn.close()
    big = size()
    assert 2.5e6 < big < 3e6
    assert run("ls", "--db", db).splitlines()[-1] == f"1 exchange, 1 tape, DB {big / 1e6:.1f} MB"


def test_record_around_a_command_runs_on_uvloop_and_play_on_asyncio_s_own_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With uvloop installed, `record -- CMD` serves on uvloop and `play -- CMD` on asyncio's own loop, whose
    timers read the clock when set."""
    import asyncio

    import streamreplay.wrap

    monkeypatch.delenv("STREAMREPLAY_UVLOOP", raising=False)
    loops: dict[str, str] = {}
    served = streamreplay.wrap.run_command

    async def noting_the_loop(server: object, command: object, settle: object = None) -> int:
        # the loop the command's server is served on, then the command run as it is
        loops[type(server).__name__] = type(asyncio.get_running_loop()).__module__
        return await served(server, command, settle)

    monkeypatch.setattr(streamreplay.wrap, "run_command", noting_the_loop)
    quiet = [sys.executable, "-c", "pass"]
    for args in (["record", "--upstream", "http://127.0.0.1:9/v1", "--db", tmp_path / "r.db", "--", *quiet],
                 ["play", "--db", MULTI, "--", *quiet]):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, (args, result.output)
    assert loops["RecordingProxy"].startswith("uvloop") and loops["ReplayServer"].startswith("asyncio"), loops


def test_play_of_one_tape_says_that_tape_its_own_count_and_the_speed_as_given(tmp_path: Path) -> None:
    """`play --tape T --speed 2.5` on a DB of two tapes says T, the count of T's exchanges only and `speed 2.5`."""
    db = tmp_path / "two.db"
    run("import", MULTI, "--db", db)
    run("import", RECORDINGS / "openai-happy-path.jsonl", "--db", db)
    banner = play_banner("--db", db, "--tape", "openai-happy-path", "--speed", "2.5")
    said = f"(playing 1 exchange from {db}, tape openai-happy-path, speed 2.5)"
    assert banner.rstrip("\n").endswith(said), banner


def test_import_into_a_tape_that_holds_a_single_exchange_is_refused_and_leaves_it_as_it_was(tmp_path: Path) -> None:
    """`import` refuses a tape that holds one exchange as it refuses one that holds many, in one line."""
    db = tmp_path / "i.db"
    happy = RECORDINGS / "openai-happy-path.jsonl"
    run("import", happy, "--db", db)
    again = CliRunner().invoke(main, ["import", str(happy), "--db", str(db)])
    assert again.exit_code == 1 and again.output == (
        f"Error: tape 'openai-happy-path' already exists in {db}; import it under another name with --tape\n")
    assert Store(db).count("openai-happy-path") == 1
