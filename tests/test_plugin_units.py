"""The pytest plugin's decisions, each in-process and fast: the mode, the cassette's place and name, where
each setting comes from, when a miss fails a test and what `assert_all_used` says.

The requests here are the tests' own real `FixtureRequest`s (with a `streamreplay` marker where a test
needs one) and the servers real `ReplayServer`s; tests/test_plugin.py runs the same plugin end to end
in pytester subprocesses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from streamreplay.bundled import bundled_dir, bundled_tape
from streamreplay.pytest_plugin import (
    _ACTIVE,
    _PROJECT,
    CONFIG_KEYS,
    SessionReport,
    StreamReplay,
    _cassette,
    _normal_mode,
    _project,
    _recording,
    _settings,
    _test_name,
)
from streamreplay.replay import ReplayServer
from streamreplay.settings import default_mode, load_settings
from streamreplay.store import Exchange
from streamreplay.testing import Script, ScriptedUpstream

pytest_plugins = ["pytester"]

HAPPY = bundled_tape("openai-happy-path")


@pytest.fixture
def no_dir_option(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The outer run's own plugin options are not these tests' input: as if none were given."""
    for name in ("streamreplay_dir", "streamreplay_mode", "streamreplay_upstream"):
        monkeypatch.setattr(request.config.option, name, None)


# -- modes ---------------------------------------------------------------------------------------------

def test_vcr_s_mode_names_are_the_plugin_s_own_and_nothing_else_is_a_mode():
    assert [_normal_mode(m) for m in ("none", "once", "new", "all")] == ["none", "once", "new", "all"]
    assert _normal_mode("new_episodes") == "new"
    assert _normal_mode("rewrite") == "all"
    with pytest.raises(pytest.fail.Exception) as failed:
        _normal_mode("sometimes")
    assert str(failed.value) == \
        "streamreplay: mode 'sometimes' is not one of none, once, new, all, new_episodes, rewrite"
    assert failed.value.pytrace is False  # the one line, without a traceback


def test_ci_replays_only_and_a_laptop_records_what_is_missing():
    assert default_mode({"CI": "true"}) == "none"
    assert default_mode({"CI": "1"}) == "none"
    assert default_mode({}) == "once"
    assert default_mode({"CI": ""}) == "once"  # set but empty, as some shells leave it: not CI


# -- the cassette's name and place -----------------------------------------------------------------------

def test_an_unnamed_cassette_is_named_after_the_test(request: pytest.FixtureRequest):
    assert _test_name(request.node) == "test_an_unnamed_cassette_is_named_after_the_test"


@pytest.mark.parametrize("case", ["a b/c", "x", "X", pytest.param("y" * 150, id="y" * 150)])
def test_a_parametrized_test_s_name_keeps_only_safe_characters(request: pytest.FixtureRequest, case: str):
    assert _test_name(request.node) == {
        "a b/c": "test_a_parametrized_test_s_name_keeps_only_safe_characters-a-b-c",
        "x": "test_a_parametrized_test_s_name_keeps_only_safe_characters-x",
        "X": "test_a_parametrized_test_s_name_keeps_only_safe_characters-X",
        # at most 120 characters
        "y" * 150: "test_a_parametrized_test_s_name_keeps_only_safe_characters-" + "y" * 61,
    }[case]


class TestInAClass:
    def test_a_method_is_named_with_its_class(self, request: pytest.FixtureRequest):
        assert _test_name(request.node) == "TestInAClass.test_a_method_is_named_with_its_class"


@pytest.mark.usefixtures("no_dir_option")
def test_where_a_cassette_lives_without_options(request: pytest.FixtureRequest):
    root = Path(request.config.rootpath)
    here = Path(__file__).parent
    # a named tape: recordings/<tape>.jsonl under the rootdir
    assert _cassette(request, "greeting", None) == root / "recordings" / "greeting.jsonl"
    # an unnamed one: pytest-recording's place, next to the test file
    assert _cassette(request, None, None) == \
        here / "cassettes" / "test_plugin_units" / "test_where_a_cassette_lives_without_options.jsonl"
    # cassette_dir wins for both, relative to the rootdir; an absolute one is taken as it is
    assert _cassette(request, "greeting", "fixtures") == root / "fixtures" / "greeting.jsonl"
    assert _cassette(request, None, "/abs/place") == \
        Path("/abs/place") / "test_where_a_cassette_lives_without_options.jsonl"


@pytest.mark.usefixtures("no_dir_option")
def test_where_a_cassette_lives_with_the_dir_option(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    root = Path(request.config.rootpath)
    monkeypatch.setattr(request.config.option, "streamreplay_dir", "cas")
    assert _cassette(request, "greeting", None) == root / "cas" / "greeting.jsonl"
    # unnamed: a folder per test module inside it
    assert _cassette(request, None, None) == \
        root / "cas" / "test_plugin_units" / "test_where_a_cassette_lives_with_the_dir_option.jsonl"
    assert _cassette(request, "greeting", "fixtures") == root / "fixtures" / "greeting.jsonl"


# -- where each setting comes from ------------------------------------------------------------------------

# above another marker: the closest marker of its name counts, not the closest of all
@pytest.mark.streamreplay("from-marker", speed=2, mode="rewrite")
@pytest.mark.usefixtures("no_dir_option")
def test_the_marker_beats_the_config_and_the_config_fills_the_rest(request: pytest.FixtureRequest):
    settings = _settings(request, {"tape": "from-config", "speed": 1, "fault": "cut:chunk=2", "mode": "none"})
    assert settings["tape"] == "from-marker"
    assert settings["speed"] == 2
    assert settings["fault"] == "cut:chunk=2"
    assert settings["mode"] == "all"  # the marker's mode, under its own name


@pytest.mark.usefixtures("no_dir_option")
@pytest.mark.streamreplay("t", mode="none", upstream="http://127.0.0.1:9/marker")
def test_the_command_line_s_mode_and_upstream_beat_the_marker(request: pytest.FixtureRequest,
                                                              monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(request.config.option, "streamreplay_mode", "new_episodes")
    monkeypatch.setattr(request.config.option, "streamreplay_upstream", "http://127.0.0.1:9/cli")
    settings = _settings(request, {"mode": "all", "upstream": "http://127.0.0.1:9/config"})
    assert (settings["mode"], settings["upstream"]) == ("new", "http://127.0.0.1:9/cli")


@pytest.mark.usefixtures("no_dir_option")
def test_with_nothing_given_the_mode_follows_ci(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CI", "true")
    assert _settings(request, {})["mode"] == "none"
    monkeypatch.delenv("CI")
    assert _settings(request, {})["mode"] == "once"


@pytest.mark.usefixtures("no_dir_option")
@pytest.mark.streamreplay("t", sped=0)
def test_an_unknown_key_fails_naming_where_it_is_and_what_is_known(request: pytest.FixtureRequest):
    with pytest.raises(pytest.fail.Exception) as failed:
        _settings(request, {})
    assert str(failed.value) == ("streamreplay: the streamreplay marker has unknown key(s) sped; known: "
                                 + ", ".join(CONFIG_KEYS))
    with pytest.raises(pytest.fail.Exception) as failed:
        _settings(request, {"cassete_dir": "x", "allow_miss": True})
    assert str(failed.value).startswith("streamreplay: streamreplay_config has unknown key(s) allow_miss, cassete_dir;")
    assert failed.value.pytrace is False


@pytest.mark.usefixtures("no_dir_option")
@pytest.mark.streamreplay("t", ignore_fields=["from-marker"])
def test_the_project_s_settings_are_the_plugin_s_defaults(request: pytest.FixtureRequest,
                                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.streamreplay]\nmode = "new"\nmatch = "sequence"\nignore_fields = ["user"]\ncassette_dir = "tapes"\n')
    monkeypatch.setitem(request.config.stash, _PROJECT, load_settings(tmp_path))
    settings = _settings(request, {"match": "key"})
    assert (settings["mode"], settings["match"], settings["ignore_fields"]) == ("new", "key", ["from-marker"])
    assert _settings(request, {})["match"] == "sequence"
    # the project's cassette_dir, relative to its pyproject.toml, stands for --streamreplay-dir
    assert _cassette(request, "greeting", None) == tmp_path / "tapes" / "greeting.jsonl"
    assert _cassette(request, None, None) == \
        tmp_path / "tapes" / "test_plugin_units" / "test_the_project_s_settings_are_the_plugin_s_defaults.jsonl"


@pytest.mark.usefixtures("no_dir_option")
def test_the_dir_option_beats_the_project_s_cassette_dir(request: pytest.FixtureRequest,
                                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The project's settings sit below the command line: `--streamreplay-dir` wins over `cassette_dir`."""
    (tmp_path / "pyproject.toml").write_text('[tool.streamreplay]\ncassette_dir = "from-project"\n')
    monkeypatch.setitem(request.config.stash, _PROJECT, load_settings(tmp_path))
    monkeypatch.setattr(request.config.option, "streamreplay_dir", str(tmp_path / "from-option"))
    assert _cassette(request, "greeting", None) == tmp_path / "from-option" / "greeting.jsonl"
    assert _cassette(request, None, None) == tmp_path / "from-option" / "test_plugin_units" / \
        "test_the_dir_option_beats_the_project_s_cassette_dir.jsonl"


def test_each_project_setting_the_plugin_takes_reaches_a_test_without_a_marker(request: pytest.FixtureRequest,
                                                                               monkeypatch: pytest.MonkeyPatch,
                                                                               tmp_path: Path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.streamreplay]\nmode = "new"\nmatch = "sequence"\nignore_fields = ["user", "seed"]\n')
    monkeypatch.setitem(request.config.stash, _PROJECT, load_settings(tmp_path))
    monkeypatch.setattr(request.config.option, "streamreplay_mode", None)
    settings = _settings(request, {})
    assert (settings["mode"], settings["match"], settings["ignore_fields"]) == ("new", "sequence", ("user", "seed"))


def test_a_bad_settings_table_fails_with_its_one_line(pytester: pytest.Pytester):
    pytester.makepyprojecttoml('[tool.streamreplay]\nspeed = "fast"\n')
    with pytest.raises(pytest.fail.Exception) as failed:
        _project(pytester.parseconfig())
    assert str(failed.value) == (
        "streamreplay: pyproject.toml: in [tool.streamreplay], speed must be a number of at least 0, "
        "not a string ('fast')")
    assert failed.value.pytrace is False


# -- misses and unused recordings ----------------------------------------------------------------------------

def _ask(base_url: str, exchange: Exchange | None = None) -> int:
    body = exchange.request_body if exchange else b'{"model": "gpt-4o-mini", "messages": [], "stream": true}'
    return httpx.post(f"{base_url}/chat/completions", content=body,
                      headers={"content-type": "application/json"}).status_code


def _fixture(server: ReplayServer, **kw: bool) -> StreamReplay:
    return StreamReplay(server.base_url, "openai-happy-path", HAPPY, "none", server, **kw)


def test_a_miss_fails_a_replay_only_test_unless_misses_are_allowed():
    with ReplayServer(HAPPY, speed=0) as server:
        assert _fixture(server, replay_only=True).miss_failure() is None  # no miss yet
        assert _ask(server.base_url) == 404
        assert _ask(server.base_url) == 404
        failure = _fixture(server, replay_only=True).miss_failure()
        assert failure is not None
        first_line = failure.splitlines()[0]
        assert first_line.startswith(f"streamreplay: 2 request(s) matched no recording in {HAPPY} (mode none); "
                                     "the first: ")
        assert first_line.endswith(server.counts.first_miss)
        assert "--streamreplay-mode new --streamreplay-upstream URL" in failure
        assert "streamreplay(allow_misses=True)" in failure
        assert _fixture(server, replay_only=True, allow_misses=True).miss_failure() is None
        # a miss that can still be recorded (mode new, an upstream) is not the test's failure
        assert _fixture(server, replay_only=False).miss_failure() is None
        assert _fixture(server).miss_count == 2
        assert [r.ending for r in _fixture(server).misses] == ["miss", "miss"]


def test_assert_all_used_names_each_recording_never_asked_for():
    with ReplayServer(HAPPY, speed=0) as server:
        fixture = _fixture(server)
        (recorded,) = server.unused()
        # while recording there is no tape to have left unused
        assert _fixture(server, recording=True).unused() == []
        with pytest.raises(AssertionError) as failed:
            fixture.assert_all_used()
        text = (recorded.text or "")[:30]
        assert str(failed.value).startswith(
            f"recorded exchanges never requested: #0 {recorded.method} {recorded.path} ({text!r})")
        assert _ask(server.base_url, recorded) == 200
        fixture.assert_all_used()
        assert fixture.unused() == []


# -- the fixture itself, on a bundled cassette ---------------------------------------------------------------

@pytest.mark.streamreplay("openai-happy-path", cassette_dir=str(bundled_dir()))
def test_the_fixture_replays_with_no_waits_unless_told(streamreplay: StreamReplay):
    assert streamreplay.server.speed == 0  # CI: the recorded timing is not waited for
    assert streamreplay.server.faults == []
    assert _ask(streamreplay.base_url, streamreplay.server.source.exchanges()[0]) == 200


@pytest.mark.streamreplay("openai-happy-path", cassette_dir=str(bundled_dir()), speed=1, fault="cut:chunk=2")
def test_the_marker_s_speed_and_fault_reach_the_server(streamreplay: StreamReplay):
    assert streamreplay.server.speed == 1
    assert [f.spec() for f in streamreplay.server.faults] == ["cut:chunk=2"]


# -- recording through the fixture ------------------------------------------------------------------------------

CHAT = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "%s"}], "stream": true}'
OPTIONS = dict(speed=0, faults=[], match="key", ignore_fields=())


def _finish(steps) -> None:
    """The fixture's teardown: the generator's code after its `yield`."""
    with pytest.raises(StopIteration):
        next(steps)


def _chat(base_url: str, content: str) -> str:
    with httpx.stream("POST", f"{base_url}/chat/completions", content=CHAT % content.encode(),
                      headers={"content-type": "application/json"}) as response:
        assert response.status_code == 200
        return response.read().decode()


def test_recording_writes_what_the_test_asked_into_its_cassette_and_says_so(request: pytest.FixtureRequest,
                                                                          tmp_path: Path):
    cassette = tmp_path / "cas" / "greeting.jsonl"
    properties = list(request.node.user_properties)
    try:
        with ScriptedUpstream(Script()) as upstream:
            steps = _recording(request, "greeting", cassette, "all", upstream.base_url, tmp_path / "rec.db",
                               dict(OPTIONS), False)
            fixture = next(steps)
            assert (fixture.tape, fixture.cassette, fixture.mode) == ("greeting", cassette, "all")
            assert fixture.recording and not fixture.replay_only and not fixture.allow_misses
            assert fixture.base_url == fixture.server.base_url
            assert request.node.stash[_ACTIVE] is fixture
            assert fixture.requests == [] and fixture.unused() == []  # a recording replays nothing
            assert "Hello! " in _chat(fixture.base_url, "hi")
            assert httpx.get(f"{fixture.base_url}/models").status_code == 200  # an answer with no text
            _finish(steps)
            assert len(upstream.sent) == 1
        shown = os.path.relpath(cassette, request.config.rootpath)
        assert request.node.user_properties[len(properties):] == [
            ("streamreplay", f"greeting: recorded into {shown}")]
        with ReplayServer(cassette, speed=0) as replay:
            recorded, models = replay.source.exchanges()
            assert (recorded.method, recorded.path, json.loads(recorded.request_body)) == (
                "POST", "/chat/completions", json.loads(CHAT % b"hi"))
            # assert_all_used names each recording never asked for, one after the other
            with pytest.raises(AssertionError) as failed:
                _fixture(replay).assert_all_used()
            assert str(failed.value).splitlines()[0] == (
                f"recorded exchanges never requested: #0 POST /chat/completions ({recorded.text[:30]!r}); "
                "#1 GET /models ('')")
    finally:
        request.node.user_properties[:] = properties


def test_recording_nothing_writes_no_cassette(request: pytest.FixtureRequest, tmp_path: Path):
    cassette = tmp_path / "quiet.jsonl"
    properties = list(request.node.user_properties)
    with ScriptedUpstream(Script()) as upstream:
        steps = _recording(request, "quiet", cassette, "once", upstream.base_url, tmp_path / "rec.db",
                           dict(OPTIONS), True)
        assert next(steps).allow_misses is True  # as the marker said
        _finish(steps)
    assert not cassette.exists()
    assert request.node.user_properties == properties


def test_mode_new_replays_the_cassette_and_adds_what_it_lacked_and_all_records_it_again(
        request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cassette = tmp_path / "grow.jsonl"
    properties = list(request.node.user_properties)
    monkeypatch.chdir(tmp_path)  # the cassette is named as the project (its rootdir) names it, not the cwd
    shown = os.path.relpath(cassette, request.config.rootpath)
    try:
        with ScriptedUpstream(Script()) as upstream:
            # recorded under another tape name: the file's name is the tape now
            first = _recording(request, "old-name", cassette, "all", upstream.base_url, tmp_path / "one.db",
                               dict(OPTIONS), False)
            recorder = next(first)
            _chat(recorder.base_url, "first")
            _chat(recorder.base_url, "unused")
            _finish(first)
            steps = _recording(request, "grow", cassette, "new", upstream.base_url, tmp_path / "two.db",
                               dict(OPTIONS, speed=0.5, ignore_fields=("user",)), False)
            fixture = next(steps)
            assert not fixture.recording and not fixture.replay_only and not fixture.allow_misses
            assert (fixture.server.speed, fixture.server.options.tape) == (0.5, "grow")
            assert fixture.server.options.ignore_fields == ("user",)
            assert "Hello! " in _chat(fixture.base_url, "first")  # replayed
            assert len(upstream.sent) == 2
            assert "Hello! " in _chat(fixture.base_url, "second")  # a miss, recorded from the upstream
            assert len(upstream.sent) == 3
            _finish(steps)
            with ReplayServer(cassette, speed=0) as replay:
                assert [json.loads(ex.request_body) for ex in replay.source.exchanges()] == [
                    json.loads(CHAT % b"first"), json.loads(CHAT % b"unused"), json.loads(CHAT % b"second")]
            assert request.node.user_properties[len(properties):] == [
                ("streamreplay", f"old-name: recorded into {shown}"),
                ("streamreplay", "grow: 1 recorded exchange(s) never requested"),  # noted as when replaying
                ("streamreplay", f"grow: recorded into {shown}")]
            # mode all records everything again, though the cassette is there
            again = _recording(request, "grow", cassette, "all", upstream.base_url, tmp_path / "three.db",
                               dict(OPTIONS), False)
            recorder = next(again)
            assert recorder.recording
            assert "Hello! " in _chat(recorder.base_url, "third")
            _finish(again)
            assert len(upstream.sent) == 4
        with ReplayServer(cassette, speed=0) as replay:
            assert [json.loads(ex.request_body) for ex in replay.source.exchanges()] == [json.loads(CHAT % b"third")]
    finally:
        request.node.user_properties[:] = properties


# -- does the app notice a cutoff ------------------------------------------------------------------------------

def _app(careful: bool, body: bytes):
    """An app pointed at a base URL: reads a chat stream and returns its text; a careful one raises unless the
    stream ended with a finish_reason and `[DONE]`. Either raises when the connection breaks."""

    def app(base_url: str) -> str:
        with httpx.stream("POST", f"{base_url}/chat/completions", content=body,
                          headers={"content-type": "application/json"}) as response:
            wire = response.read().decode()
        if careful and not ('"finish_reason":"stop"' in wire.replace(" ", "") and "data: [DONE]" in wire):
            raise RuntimeError("cut off")
        return "answer"

    return app


def test_assert_notices_cutoffs_fails_naming_each_cutoff_the_app_took_as_whole():
    with ReplayServer(HAPPY, speed=0) as server:
        fixture = _fixture(server)
        body = server.source.exchanges()[0].request_body
        with pytest.raises(pytest.fail.Exception) as failed:
            fixture.assert_notices_cutoffs(_app(False, body))
        assert str(failed.value) == (
            "streamreplay: the app took 3 of 5 cutoffs as a whole answer:\n"
            "  drop-done: returned 'answer' without an error\n"
            "  drop-finish: returned 'answer' without an error\n"
            "  cut:chunk=9: returned 'answer' without an error\n"
            "Guard its stream (streamreplay.guard) or check the finish_reason yourself.")
        assert failed.value.pytrace is False
        fixture.assert_notices_cutoffs(_app(True, body))  # noticed every one: passes
        assert [r.applied for r in fixture.requests] == [["drop-done"], ["drop-finish"], ["cut:chunk=9"],
                                                         ["close:chunk=9"], ["reset:chunk=9"]] * 2


# -- the plugin's place in a pytest run --------------------------------------------------------------------------


def test_the_command_line_options_the_marker_and_the_session_report_are_registered(pytester: pytest.Pytester,
                                                                                  monkeypatch: pytest.MonkeyPatch):
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    config = pytester.parseconfigure("--streamreplay-mode", "rewrite", "--streamreplay-upstream", "http://u/v1",
                                     "--streamreplay-dir", "cas")
    assert [config.getoption(o) for o in ("--streamreplay-mode", "--streamreplay-upstream", "--streamreplay-dir")] \
        == ["rewrite", "http://u/v1", "cas"]
    assert isinstance(config.pluginmanager.get_plugin("streamreplay-session-report"), SessionReport)
    assert [line for line in config.getini("markers") if line.startswith("streamreplay")] == [
        "streamreplay(tape=None, *, fault=None, speed=0, match='key', ignore_fields=(), allow_misses=False, "
        "mode=None, upstream=None, cassette_dir=None): serve the cassette <cassette_dir>/<tape or test name>.jsonl "
        "to this test through the `streamreplay` fixture; keywords override `streamreplay_config`"]
    config = pytester.parseconfigure()
    assert [config.getoption(o) for o in ("streamreplay_mode", "streamreplay_upstream", "streamreplay_dir")] \
        == [None, None, None]
    with pytest.raises(pytest.UsageError):
        pytester.parseconfig("--streamreplay-mode", "sometimes")
    monkeypatch.setenv("COLUMNS", "400")  # one line of help an option
    shown = pytester.runpytest_inprocess("--help").stdout.lines
    start = shown.index("offline replays of recorded LLM streams:")
    assert [line.strip() for line in shown[start + 1:start + 7]] == [
        "--streamreplay-mode={none,once,new,all,new_episodes,rewrite}",
        "none: replay only; once: record missing cassettes; new (new_episodes): record misses; all (rewrite): "
        "re-record. Default: none when CI is set, else once. Beats the marker and streamreplay_config.",
        "--streamreplay-upstream=STREAMREPLAY_UPSTREAM",
        "The API to record from (modes once/new/all). Beats the marker and streamreplay_config.",
        "--streamreplay-dir=STREAMREPLAY_DIR",
        "Where cassettes live: <dir>/<tape>.jsonl for a named tape (default: recordings/), <dir>/<module>/<test>.jsonl "
        "for an unnamed one (default: <test dir>/cassettes/<module>/)."]


SUMMARY_TESTS = """
import httpx, pytest

@pytest.mark.streamreplay("openai-happy-path", cassette_dir=CASSETTES)
def test_asks_nothing(streamreplay):
    pass

@pytest.mark.streamreplay("openai-happy-path", cassette_dir=CASSETTES)
def test_misses_twice(streamreplay):
    for _ in range(2):
        httpx.post(streamreplay.base_url + "/chat/completions", json={"model": "m", "messages": []})
"""


def test_the_session_summary_lists_each_test_s_unused_recordings_and_misses(pytester: pytest.Pytester,
                                                                              monkeypatch: pytest.MonkeyPatch):
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_summary=SUMMARY_TESTS.replace("CASSETTES", repr(str(bundled_dir()))))
    monkeypatch.setenv("COLUMNS", "300")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    summary = result.stdout.lines[result.stdout.lines.index(next(
        line for line in result.stdout.lines if " streamreplay " in line and line.startswith("=="))) + 1:][:3]
    assert summary == ["test_summary.py::test_asks_nothing: openai-happy-path: 1 recorded exchange(s) never requested",
                       "test_summary.py::test_misses_twice: openai-happy-path: 1 recorded exchange(s) never requested",
                       "test_summary.py::test_misses_twice: openai-happy-path: 2 miss(es)"]


def test_assert_all_used_names_every_recording_never_asked_for_and_not_those_asked_for():
    """With three recordings of which the middle one was asked for, `assert_all_used()` names the first and the
    last, each once, and not the one served."""
    multi = bundled_tape("agent-multi-turn")
    with ReplayServer(multi, speed=0) as server:
        fixture = StreamReplay(server.base_url, "agent-multi-turn", multi, "none", server)
        first, middle, last = server.unused()
        assert _ask(server.base_url, middle) == 200
        with pytest.raises(AssertionError) as failed:
            fixture.assert_all_used()
    # pytest adds its own explanation under the message's line
    assert str(failed.value).splitlines()[0] == "recorded exchanges never requested: " + "; ".join(
        f"#{ex.seq} {ex.method} {ex.path} ({(ex.text or '')[:30]!r})" for ex in (first, last))


USED_AND_UNUSED_TESTS = """
import httpx, pytest

ASKED = {"max_tokens": 60, "messages": [{"content": "Name three colors of the rainbow.", "role": "user"}],
         "model": "smollm2", "stream": True, "temperature": 0}

@pytest.mark.streamreplay("openai-happy-path", cassette_dir=CASSETTES)
def test_asks_its_recording(streamreplay):
    assert httpx.post(streamreplay.base_url + "/chat/completions", json=ASKED).status_code == 200

@pytest.mark.streamreplay("openai-happy-path", cassette_dir=CASSETTES)
def test_asks_nothing(streamreplay):
    pass
"""


def test_the_session_summary_leaves_out_a_test_that_asked_for_its_recording(pytester: pytest.Pytester,
                                                                            monkeypatch: pytest.MonkeyPatch):
    """Only the recordings no request asked for are listed: a test that replayed its cassette's one exchange has
    no note, the test beside it that asked nothing has one."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_used=USED_AND_UNUSED_TESTS.replace("CASSETTES", repr(str(bundled_dir()))))
    monkeypatch.setenv("COLUMNS", "300")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    notes = [line for line in result.stdout.lines if line.startswith("test_used.py::")]
    assert notes == ["test_used.py::test_asks_nothing: openai-happy-path: 1 recorded exchange(s) never requested"]


@pytest.mark.streamreplay("openai-happy-path", cassette_dir=str(bundled_dir()), match="sequence")
def test_the_marker_s_match_reaches_the_server(streamreplay: StreamReplay):
    """`match="sequence"` on the marker serves the recordings in order, whatever a request's body says."""
    assert _ask(streamreplay.base_url) == 200  # a body the recording never had: a miss by key
    assert streamreplay.miss_count == 0
