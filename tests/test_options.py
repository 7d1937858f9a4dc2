"""Options are declared once, on their types: `record` and `play` take their defaults and help from
RecordOptions and ReplayOptions, the replay server takes either those options or their fields as keywords,
and the miss policy is chosen from them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
import pytest

from streamreplay import cli, wire
from streamreplay.bundled import bundled_tape
from streamreplay.proxy import recorder
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.replay import ReplayServer
from streamreplay.replay.onmiss import NotFound, OnMiss, RecordFromUpstream
from streamreplay.replay.options import ReplayOptions

ROOT = Path(__file__).resolve().parent.parent
CASSETTE = bundled_tape("openai-happy-path")
#: the command's parameters that are not fields of its options type
NOT_FIELDS = {"db", "host", "port", "command"}


def fields_of(options: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(options)}


@pytest.mark.parametrize(("command", "options"), [(cli.record, RecordOptions), (cli.play, ReplayOptions)])
def test_each_option_shows_the_help_of_its_field(command: click.Command, options: type):
    fields = fields_of(options)
    params = [p for p in command.params if isinstance(p, click.Option) and p.name not in NOT_FIELDS | {"help"}]
    assert params
    for param in params:
        meta = fields[param.name].metadata
        assert param.help == meta.get("off_help", meta["help"]), param.name


@pytest.mark.parametrize("options", [RecordOptions, ReplayOptions])
def test_every_field_has_one_line_of_help(options: type):
    for name, found in fields_of(options).items():
        help_text = found.metadata.get("help")
        assert help_text and "\n" not in help_text and help_text.endswith((".", ")")), name


def test_play_without_options_is_replay_options_defaults(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("STREAMREPLAY_DB", raising=False)
    ctx = cli.play.make_context("play", [])
    params = {k: v for k, v in ctx.params.items() if k not in NOT_FIELDS}
    assert ReplayOptions("x.db", **params) == ReplayOptions("x.db")
    assert ctx.params["db"] == cli.DEFAULT_DB and (ctx.params["host"], ctx.params["port"]) == ("127.0.0.1", 8900)


def test_record_without_options_is_record_options_defaults():
    ctx = cli.record.make_context("record", ["--upstream", "http://127.0.0.1:9/v1"])
    params = {k: v for k, v in ctx.params.items() if k not in NOT_FIELDS}
    (params["upstream"],) = params["upstream"]  # one --upstream is the URL itself, as record passes it on
    assert RecordOptions(db=ctx.params["db"], **params) == RecordOptions("http://127.0.0.1:9/v1")


def test_options_reach_their_fields_under_the_names_the_cli_gives_them():
    ctx = cli.play.make_context("play", ["--no-repeat", "--cache-mb", "2", "--fault", "cut:chunk=1", "--fault",
                                         "drop-done", "--ignore-field", "user", "--match", "sequence"])
    options = ReplayOptions("x.db", **{k: v for k, v in ctx.params.items() if k not in NOT_FIELDS})
    assert (options.repeat, options.cache_bytes, options.faults) == (False, 2 * 2**20, ("cut:chunk=1", "drop-done"))
    assert (options.ignore_fields, options.match) == (("user",), "sequence")
    ctx = cli.record.make_context("record", ["--upstream", "http://u/v1", "--redact-header", "X-Key", "--note", "n",
                                             "--max-db-size", "1000", "--on-client-disconnect", "abort"])
    options = RecordOptions(**{k: v for k, v in ctx.params.items() if k not in NOT_FIELDS})
    assert (options.redact_headers, options.note, options.max_db_bytes) == (("X-Key",), "n", 1000)
    assert options.on_client_disconnect == "abort"


def test_choices_and_requirements_come_from_the_fields():
    with pytest.raises(click.BadParameter):
        cli.play.make_context("play", ["--match", "fuzzy"])
    with pytest.raises(click.BadParameter):
        cli.record.make_context("record", ["--upstream", "http://u/v1", "--on-client-disconnect", "ignore"])
    with pytest.raises(click.MissingParameter):
        cli.record.make_context("record", [])
    with pytest.raises(click.BadParameter):
        cli.play.make_context("play", ["--keep-requests", "-1"])


def test_the_largest_body_is_defined_once():
    assert recorder.DEFAULT_MAX_BODY is wire.DEFAULT_MAX_BODY
    assert RecordOptions("http://u").max_body == ReplayOptions("x.db").max_body == wire.DEFAULT_MAX_BODY
    sources = [p.read_text() for p in (ROOT / "streamreplay").rglob("*.py")]
    assert sum(text.count("32 * 1024 * 1024") for text in sources) == 1


def test_the_server_takes_options_or_their_fields_as_keywords():
    by_keywords = ReplayServer(CASSETTE, speed=0, match="sequence", faults=["cut:chunk=2"], keep_requests=3)
    by_options = ReplayServer(ReplayOptions(CASSETTE, speed=0, match="sequence", faults=("cut:chunk=2",),
                                            keep_requests=3))
    assert dataclasses.replace(by_keywords.options, faults=()) == dataclasses.replace(by_options.options, faults=())
    assert [f.spec() for f in by_keywords.faults] == [f.spec() for f in by_options.faults] == ["cut:chunk=2"]
    assert by_keywords.requests.maxlen == 3 and by_keywords.index.mode == "sequence"
    overridden = ReplayServer(ReplayOptions(CASSETTE, speed=2), speed=0)
    assert overridden.speed == 0
    with pytest.raises(TypeError):
        ReplayServer(CASSETTE, sped=0)


def test_the_miss_policy_is_chosen_from_the_options(tmp_path: Path):
    assert isinstance(ReplayOptions("x.db").miss_policy(), NotFound)
    recording = ReplayOptions("x.db", upstream="http://u/v1", tape="t", record_db="r.db").miss_policy()
    assert isinstance(recording, RecordFromUpstream)
    assert (recording.upstream, recording.db, recording.tape) == ("http://u/v1", "r.db", "t")

    class Teapot(OnMiss):
        name = "teapot"

    mine = Teapot()
    assert ReplayOptions("x.db", on_miss=mine).miss_policy() is mine
    for options, why in [
        (ReplayOptions("x.db", on_miss="record"), "needs an upstream"),
        (ReplayOptions("x.db", on_miss="404", upstream="http://u/v1"), "only used to record misses"),
        (ReplayOptions("x.db", on_miss="ask"), "on_miss must be one of 404, record, not 'ask'"),
        (ReplayOptions("x.db", on_miss=mine, upstream="http://u/v1"), "a policy object takes its own"),
    ]:
        with pytest.raises(ValueError, match=why):
            options.miss_policy()
    server = ReplayServer(CASSETTE, on_miss=mine)
    assert server.on_miss is mine and mine.index is server.index and mine.source is server.source


def test_the_defaults_are_the_ones_the_readme_states(monkeypatch: pytest.MonkeyPatch):
    """README, Record and Replay: `--db recordings/streamreplay.db`, `--host 127.0.0.1`, 600 s of upstream
    silence, `--on-client-disconnect drain`; play at the recorded speed, matching by key, repeating the
    last recording, keeping the last 1000 request records and caching up to 64 MB of chunks."""
    record = RecordOptions("http://127.0.0.1:9/v1")
    assert (record.db, record.upstream_timeout, record.on_client_disconnect) == (
        "recordings/streamreplay.db", 600.0, "drain")
    assert record.tape is None and record.max_db_bytes is None
    play = ReplayOptions("x.db")
    assert (play.speed, play.match, play.repeat) == (1.0, "key", True)
    assert (play.keep_requests, play.cache_bytes) == (1000, 64 * 2**20)
    monkeypatch.delenv("STREAMREPLAY_DB", raising=False)
    ctx = cli.record.make_context("record", ["--upstream", "http://127.0.0.1:9/v1"])
    assert (ctx.params["host"], ctx.params["db"]) == ("127.0.0.1", "recordings/streamreplay.db")
    assert ctx.params["upstream_timeout"] == 600.0 and ctx.params["on_client_disconnect"] == "drain"
    ctx = cli.play.make_context("play", [])
    assert (ctx.params["speed"], ctx.params["keep_requests"], ctx.params["cache_bytes"]) == (1.0, 1000, 64 * 2**20)
    assert ReplayServer(CASSETTE).requests.maxlen == 1000


@pytest.mark.parametrize("command", ["record", "play"])
def test_around_a_command_the_server_takes_a_free_port_unless_port_is_given(command: str):
    """`record -- CMD` and `play -- CMD` listen on a free port (CMD is told it), so two at once, or one beside
    a daemon on 8900, never collide; `--port` given on the command line is kept, and a daemon keeps 8900."""
    upstream = ["--upstream", "http://127.0.0.1:9/v1"] if command == "record" else []
    for args, cmd, port in (([], ("app",), 0), (["--port", "8123"], ("app",), 8123), ([], (), 8900)):
        with getattr(cli, command).make_context(command, [*upstream, *args]) as ctx:
            assert cli._free_port_for(cmd, ctx.params["port"]) == port, (args, cmd)
