"""The pytest plugin, driven through pytester: record modes, replay, misses, xdist, async tests.

Each inner run is a subprocess: an in-process run drops the modules it imported when it ends, and
the outer process then imports a second copy of httpcore whose exceptions httpx no longer maps.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
def upstream_url() -> str:
    # 10 ms between events: one event per network read, so chunk numbers in the tests are stable
    with ScriptedUpstream(Script(gap=0.01)) as upstream:
        yield upstream.base_url


def test_once_records_a_missing_cassette_then_none_replays_it(
    pytester: pytest.Pytester, upstream_url: str, monkeypatch
):
    monkeypatch.delenv("CI", raising=False)
    pytester.makeini(INI)
    pytester.makepyfile(test_sync=SYNC_TEST)
    result = pytester.runpytest_subprocess("--streamreplay-upstream", upstream_url)
    result.assert_outcomes(passed=1)
    cassette = Path(pytester.path, "recordings", "greeting.jsonl")
    assert cassette.exists() and "Hello! " in cassette.read_text()
    result.stdout.fnmatch_lines(["*greeting: recorded into*greeting.jsonl*"])

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
    result.assert_outcomes(failed=1, errors=1)  # the app sees a 404; teardown names the miss
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
