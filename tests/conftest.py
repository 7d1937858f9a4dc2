"""Fixtures: a scripted OpenAI upstream and the recording proxy in front of it, on real sockets."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.testing import ScriptedUpstream

# The tests import tests.helpers and tests.realmodel_server from the checkout: `python -m pytest` puts it
# on sys.path, a bare `pytest` does not.
if (_root := str(Path(__file__).resolve().parent.parent)) not in sys.path:
    sys.path.insert(0, _root)

from tests.realmodel_server import HOLDER_ENV, release_real_upstream  # noqa: E402


def _import_rewritten_modules() -> None:
    """Import now, on this one thread, the modules pytest rewrites (the packages that ship a pytest plugin:
    ours, and langsmith under langchain) and the tests import lazily. Rewriting parses a module with `ast`,
    and CPython 3.11 keeps the parser's recursion count per interpreter: a parse on a server's thread while
    another runs could fail with "SystemError: AST constructor recursion depth mismatch" (gh-106905), which
    a whole-suite run met as errors in a fixture that imported langchain."""
    import contextlib
    import importlib
    import pkgutil

    import streamreplay

    for module in pkgutil.walk_packages(streamreplay.__path__, "streamreplay."):
        importlib.import_module(module.name)
    for optional in ("langchain_openai", "langsmith.run_trees"):  # the langchain test extra
        with contextlib.suppress(ImportError):
            importlib.import_module(optional)


_import_rewritten_modules()


def _main_process(config: pytest.Config) -> bool:
    """The xdist controller, or pytest itself without xdist (not an xdist worker)."""
    return not hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    # The realmodel tier starts the real model server lazily, in whichever worker needs it first, and
    # holds it for this process (the workers inherit the variable; xdist starts them after configure).
    if _main_process(config):
        os.environ[HOLDER_ENV] = str(os.getpid())
    if getattr(config.option, "maxschedchunk", 0) is None:  # xdist's scheduler, when not given on the command line
        config.option.maxschedchunk = 1


def pytest_unconfigure(config: pytest.Config) -> None:
    # After every worker is done: stop the server if this run started it and no one else holds it.
    if _main_process(config) and os.environ.get(HOLDER_ENV) == str(os.getpid()):
        del os.environ[HOLDER_ENV]
        release_real_upstream(os.getpid())


#: seconds a realmodel test may take (pyproject's `timeout` bounds the others)
REALMODEL_TIMEOUT = 1200

#: the modules whose tests run longest (subprocesses, real time), in that order. With xdist handing tests out
#: one at a time in collection order (maxschedchunk 1, set below), starting with them is longest-first
#: scheduling: no 30 s test starts last and runs alone at the end. (xdist's default first hands each worker a
#: quarter of its share at once, which put all of these on one worker.)
LONGEST_FIRST = ("test_readme_blocks.py", "test_bisect.py", "test_plugin.py", "test_wrap.py", "test_repro.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each module keeps its own order
    for item in items:  # a real model on 2 cores answers in minutes, not seconds
        if item.get_closest_marker("realmodel"):
            item.add_marker(pytest.mark.timeout(REALMODEL_TIMEOUT))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "rec.db"


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as server:
        yield server


@pytest.fixture
def proxy_log() -> list[str]:
    return []


@pytest.fixture
async def proxy(upstream: ScriptedUpstream, db_path: Path, proxy_log: list[str]) -> AsyncIterator[RecordingProxy]:
    options = RecordOptions(upstream=upstream.base_url, db=str(db_path), tape="t", log=proxy_log.append)
    async with RecordingProxy(options) as server:
        yield server


@pytest.fixture(autouse=True)
def _lean_inner_pytest(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pytest run inside a test (pytester) loads no plugin its project does not use: langsmith's (from
    langchain-openai) and hypothesis's cost 1.5 s a start, and the plugin tests start pytest 30 times."""
    if "pytester" in request.fixturenames:
        request.getfixturevalue("pytester")  # which clears PYTEST_ADDOPTS as it starts: set it after
        monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:langsmith_plugin -p no:hypothesispytest")


@pytest.fixture
def streamreplay_config() -> dict[str, object]:
    """This suite's own plugin tests replay the tapes bundled in the package (a user's default is recordings/)."""
    from streamreplay.bundled import bundled_dir

    return {"cassette_dir": str(bundled_dir())}
