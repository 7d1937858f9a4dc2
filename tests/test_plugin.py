"""The pytest plugin, driven through pytester: record modes, replay, misses, xdist, async tests.

Each inner run is a subprocess: an in-process run drops the modules it imported when it ends, and
the outer process then imports a second copy of httpcore whose exceptions httpx no longer maps.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streamreplay.bundled import bundled_tape
from streamreplay.testing import Script, ScriptedUpstream

pytest_plugins = ["pytester"]

SYNC_TEST = """
import openai, pytest

@pytest.mark.streamreplay("greeting")
def test_greeting(streamreplay):
    client = openai.OpenAI(base_url=streamreplay.base_url, api_key="test", max_retries=0)
    stream = client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                            messages=[{"role": "user", "content": "Say hello"}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello! How can I help you today?"
"""

ASYNC_TEST = """
import openai, pytest

@pytest.mark.streamreplay("greeting", fault="cut:chunk=3")
async def test_greeting_cut(streamreplay):
    client = openai.AsyncOpenAI(base_url=streamreplay.base_url, api_key="test", max_retries=0)
    stream = await client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                  messages=[{"role": "user", "content": "Say hello"}])
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello! How "
    assert streamreplay.requests[0].applied == ["cut:chunk=3"]
"""

INI = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"


@pytest.fixture
def upstream() -> ScriptedUpstream:
    # 50 ms between events: one event per network read even on a loaded machine (at 10 ms, two events
    # were seen to arrive in one read under the full suite), so chunk numbers in the tests are stable
    with ScriptedUpstream(Script(gap=0.05)) as server:
        yield server


@pytest.fixture
def upstream_url(upstream: ScriptedUpstream) -> str:
    return upstream.base_url


def test_once_records_a_missing_cassette_then_none_replays_it(
    pytester: pytest.Pytester, upstream: ScriptedUpstream, upstream_url: str, monkeypatch
):
    monkeypatch.delenv("CI", raising=False)
    pytester.makeini(INI)
    pytester.makepyfile(test_sync=SYNC_TEST)
    result = pytester.runpytest_subprocess("--streamreplay-upstream", upstream_url)
    result.assert_outcomes(passed=1)
    cassette = Path(pytester.path, "recordings", "greeting.jsonl")
    assert cassette.exists() and "Hello! " in cassette.read_text()
    result.stdout.fnmatch_lines(["*greeting: recorded into*greeting.jsonl*"])
    assert len(upstream.sent) == 1

    # once, with the cassette there: replayed, even with an upstream to record from
    recorded = cassette.read_bytes()
    result = pytester.runpytest_subprocess("--streamreplay-mode", "once", "--streamreplay-upstream", upstream_url)
    result.assert_outcomes(passed=1)
    assert len(upstream.sent) == 1
    assert cassette.read_bytes() == recorded
    assert [line for line in result.outlines if "recorded into" in line] == []

    monkeypatch.setenv("CI", "true")  # default mode none: no upstream needed any more
    pytester.makepyfile(test_async=ASYNC_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_none_mode_fails_on_a_missing_cassette_and_on_a_miss(pytester: pytest.Pytester, upstream_url: str, monkeypatch):
    monkeypatch.setenv("CI", "1")
    pytester.makeini(INI)
    pytester.makepyfile(test_sync=SYNC_TEST)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no cassette*greeting.jsonl (mode none)*--streamreplay-upstream*"])

    pytester.runpytest_subprocess(
        "--streamreplay-mode", "once", "--streamreplay-upstream", upstream_url
    ).assert_outcomes(passed=1)
    pytester.makepyfile(test_sync=SYNC_TEST.replace("Say hello", "Say goodbye"))
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)  # the app sees a 404: one failure, which names the miss
    result.stdout.fnmatch_lines(["*messages[[]0[]].content: 'Say goodbye' != 'Say hello'*"])


def test_new_mode_adds_misses_and_the_summary_lists_unused(pytester: pytest.Pytester, upstream_url: str, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    pytester.makeini(INI)
    pytester.makepyfile(test_sync=SYNC_TEST)
    pytester.runpytest_subprocess("--streamreplay-upstream", upstream_url).assert_outcomes(passed=1)
    pytester.makepyfile(test_sync=SYNC_TEST.replace("Say hello", "Say hi"))
    result = pytester.runpytest_subprocess("--streamreplay-mode", "new", "--streamreplay-upstream", upstream_url)
    result.assert_outcomes(passed=1)
    cassette = Path(pytester.path, "recordings", "greeting.jsonl").read_text()
    assert "Say hello" in cassette and "Say hi" in cassette
    result.stdout.fnmatch_lines(["*greeting: 1 recorded exchange(s) never requested*"])


def test_each_xdist_worker_gets_its_own_server(pytester: pytest.Pytester, upstream_url: str, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    pytester.makeini(INI)
    pytester.makepyfile(test_sync=SYNC_TEST)
    pytester.runpytest_subprocess("--streamreplay-upstream", upstream_url).assert_outcomes(passed=1)
    many = "\n".join(SYNC_TEST.replace("def test_greeting", f"def test_greeting_{i}") for i in range(4))
    pytester.makepyfile(test_sync=many + "\n" + ASYNC_TEST)
    result = pytester.runpytest_subprocess("-n", "2", "--streamreplay-mode", "none")
    result.assert_outcomes(passed=5)


ASK = """
import openai, pytest


def ask(base_url, prompt="Say hello"):
    client = openai.OpenAI(base_url=base_url, api_key="test", max_retries=0)
    stream = client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                            messages=[{"role": "user", "content": prompt}])
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
"""

CONFIGURED = ASK + """

@pytest.fixture(scope="module")
def streamreplay_config():
    return {"tape": "greeting", "fault": "cut:chunk=3", "mode": "none"}


@pytest.mark.streamreplay
def test_config_gives_the_defaults(streamreplay):
    assert ask(streamreplay.base_url) == "Hello! How "
    assert streamreplay.tape == "greeting" and streamreplay.cassette.name == "greeting.jsonl"


@pytest.mark.streamreplay(fault=None)
def test_the_marker_wins(streamreplay):
    assert ask(streamreplay.base_url) == "Hello! How can I help you today?"


@pytest.mark.streamreplay("farewell", fault=None)
def test_a_cassette_not_there_yet(streamreplay):
    assert ask(streamreplay.base_url, "Say goodbye") == "Hello! How can I help you today?"
"""


def test_streamreplay_config_gives_defaults_the_marker_wins_and_the_command_line_mode_wins(
    pytester: pytest.Pytester, upstream_url: str, monkeypatch
):
    monkeypatch.delenv("CI", raising=False)
    pytester.makeini(INI)
    pytester.makepyfile(test_sync=SYNC_TEST)
    pytester.runpytest_subprocess("--streamreplay-upstream", upstream_url).assert_outcomes(passed=1)
    pytester.makepyfile(test_sync=CONFIGURED)
    result = pytester.runpytest_subprocess()  # no CI: the default would be once; the config says none
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*no cassette *farewell.jsonl (mode none)*"])
    # the command line's mode (by VCR's name) beats the config's: the missing cassette is recorded
    result = pytester.runpytest_subprocess("--streamreplay-mode", "new_episodes", "--streamreplay-upstream",
                                           upstream_url)
    result.assert_outcomes(passed=3)
    assert "Say goodbye" in Path(pytester.path, "recordings", "farewell.jsonl").read_text()


PER_TEST = ASK + """

@pytest.mark.streamreplay
def test_greeting(streamreplay):
    assert ask(streamreplay.base_url) == "Hello! How can I help you today?"


class TestGroup:
    @pytest.mark.streamreplay
    def test_greeting(self, streamreplay):
        assert ask(streamreplay.base_url) == "Hello! How can I help you today?"


@pytest.mark.streamreplay(cassette_dir="fixtures")
def test_in_a_directory_of_its_own(streamreplay):
    assert ask(streamreplay.base_url) == "Hello! How can I help you today?"
"""


def test_an_unnamed_cassette_is_cassettes_module_test_next_to_the_test_file(
    pytester: pytest.Pytester, upstream_url: str, monkeypatch
):
    monkeypatch.delenv("CI", raising=False)
    pytester.makeini(INI)
    sub = pytester.path / "sub"
    sub.mkdir()
    (sub / "test_mod.py").write_text(PER_TEST)
    result = pytester.runpytest_subprocess("--streamreplay-upstream", upstream_url)
    result.assert_outcomes(passed=3)
    cassettes = sub / "cassettes" / "test_mod"
    assert sorted(p.name for p in cassettes.iterdir()) == ["TestGroup.test_greeting.jsonl", "test_greeting.jsonl"]
    assert (pytester.path / "fixtures" / "test_in_a_directory_of_its_own.jsonl").exists()
    assert not (pytester.path / "recordings").exists()

    monkeypatch.setenv("CI", "1")
    pytester.runpytest_subprocess().assert_outcomes(passed=3)  # replayed from where they were recorded
    result = pytester.runpytest_subprocess("--streamreplay-dir", "elsewhere")
    result.assert_outcomes(passed=1, errors=2)  # the option's place: <dir>/<module>/<test>.jsonl
    result.stdout.fnmatch_lines(["*no cassette *elsewhere/test_mod/test_greeting.jsonl (mode none)*"])

    # rewrite (VCR's all): recorded again from scratch
    (sub / "test_mod.py").write_text(PER_TEST.replace('prompt="Say hello"', 'prompt="Say hi"'))
    result = pytester.runpytest_subprocess("--streamreplay-mode", "rewrite", "--streamreplay-upstream", upstream_url)
    result.assert_outcomes(passed=3)
    cassette = (cassettes / "test_greeting.jsonl").read_text()
    assert "Say hi" in cassette and "Say hello" not in cassette


MISSES = ASK + """

@pytest.mark.streamreplay("greeting", allow_misses=True)
def test_the_app_takes_a_404(streamreplay):
    with pytest.raises(openai.NotFoundError):
        ask(streamreplay.base_url, "Say goodbye")
    assert streamreplay.miss_count == 1


@pytest.mark.streamreplay("greeting")
def test_an_app_that_swallows_the_404(streamreplay):
    try:
        ask(streamreplay.base_url, "Say goodbye")
    except openai.NotFoundError:
        pass


@pytest.mark.streamreplay("greeting")
def test_an_app_that_raises_on_the_404(streamreplay):
    ask(streamreplay.base_url, "Say goodbye")
"""


def test_a_miss_fails_its_test_once_unless_allowed(pytester: pytest.Pytester, upstream_url: str, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    pytester.makeini(INI)
    pytester.makepyfile(test_sync=SYNC_TEST)
    pytester.runpytest_subprocess("--streamreplay-upstream", upstream_url).assert_outcomes(passed=1)
    pytester.makepyfile(test_sync=MISSES)
    # mode once, the cassette there: replayed only, so a miss is a failure (VCR's once)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, failed=2, errors=0)
    diff = "messages[[]0[]].content: 'Say goodbye' != 'Say hello'"
    account = f"*1 request(s) matched no recording in *greeting.jsonl (mode once); the first: *{diff}*"
    result.stdout.fnmatch_lines([
        "*_ test_an_app_that_swallows_the_404 _*", account,
        "*_ test_an_app_that_raises_on_the_404 _*", "*openai.NotFoundError*", "*Captured streamreplay call*", account,
    ])
    assert "ERROR" not in result.stdout.str()


PLAIN = """
import openai, pytest


@pytest.mark.streamreplay("openai-happy-path")
def test_answer(streamreplay):
    client = openai.OpenAI(base_url=streamreplay.base_url, api_key="test", max_retries=0)
    stream = client.chat.completions.create(model="smollm2", stream=True, temperature=0, max_tokens=60,
                                            messages=[{"role": "user", "content": "Name three colors of the rainbow."}])
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).startswith("The rainbow")
"""

ASYNCIO_WARNING = 'asyncio_default_fixture_loop_scope" is unset'


def test_a_plain_project_gets_no_asyncio_warning_from_the_plugin(pytester: pytest.Pytester, monkeypatch):
    monkeypatch.setenv("CI", "1")
    (pytester.path / "recordings").mkdir()
    bundled = bundled_tape("openai-happy-path")
    (pytester.path / "recordings" / "openai-happy-path.jsonl").write_bytes(bundled.read_bytes())
    pytester.makepyfile(test_plain=PLAIN)  # no ini, no asyncio settings, no conftest
    # a user project without pytest-asyncio installed
    result = pytester.runpytest_subprocess("-p", "no:asyncio", "-p", "no:aiohttp")
    result.assert_outcomes(passed=1)
    assert ASYNCIO_WARNING not in result.stdout.str() + result.stderr.str()
    assert "warnings summary" not in result.stdout.str()
    # with pytest-asyncio installed and unset, the warning is pytest-asyncio's own: the same without the plugin
    with_plugin = pytester.runpytest_subprocess("-k", "nothing")
    without_plugin = pytester.runpytest_subprocess("-k", "nothing", "-p", "no:streamreplay")
    count = [(r.stdout.str() + r.stderr.str()).count(ASYNCIO_WARNING) for r in (with_plugin, without_plugin)]
    assert count[0] == count[1]
