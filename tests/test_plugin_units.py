"""The pytest plugin's decisions, each in-process and fast: the mode, the cassette's place and name, where
each setting comes from, when a miss fails a test and what `assert_all_used` says.

The requests here are the tests' own real `FixtureRequest`s (with a `streamreplay` marker where a test
needs one) and the servers real `ReplayServer`s; tests/test_plugin.py runs the same plugin end to end
in pytester subprocesses."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from streamreplay.bundled import bundled_dir, bundled_tape
from streamreplay.pytest_plugin import CONFIG_KEYS, StreamReplay, _cassette, _normal_mode, _settings, _test_name
from streamreplay.replay import ReplayServer
from streamreplay.settings import default_mode
from streamreplay.store import Exchange

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


def test_ci_replays_only_and_a_laptop_records_what_is_missing():
    assert default_mode({"CI": "true"}) == "none"
    assert default_mode({"CI": "1"}) == "none"
    assert default_mode({}) == "once"
    assert default_mode({"CI": ""}) == "once"  # set but empty, as some shells leave it: not CI


# -- the cassette's name and place -----------------------------------------------------------------------

def test_an_unnamed_cassette_is_named_after_the_test(request: pytest.FixtureRequest):
    assert _test_name(request.node) == "test_an_unnamed_cassette_is_named_after_the_test"


@pytest.mark.parametrize("case", ["a b/c", "x"])
def test_a_parametrized_test_s_name_keeps_only_safe_characters(request: pytest.FixtureRequest, case: str):
    assert _test_name(request.node) == {
        "a b/c": "test_a_parametrized_test_s_name_keeps_only_safe_characters-a-b-c",
        "x": "test_a_parametrized_test_s_name_keeps_only_safe_characters-x",
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

@pytest.mark.usefixtures("no_dir_option")
@pytest.mark.streamreplay("from-marker", speed=2, mode="rewrite")
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
