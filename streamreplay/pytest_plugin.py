"""pytest plugin: recorded tapes as offline CI fixtures, with pytest-recording's habits.

    @pytest.mark.streamreplay("agent-happy-path")       # recordings/agent-happy-path.jsonl
    def test_agent(streamreplay):
        client = OpenAI(base_url=streamreplay.base_url, api_key="test")

    @pytest.mark.streamreplay                           # tests/cassettes/test_mod/test_other.jsonl
    def test_other(streamreplay): ...

    @pytest.fixture(scope="module")                     # defaults for a module (or a conftest.py, a class)
    def streamreplay_config():
        return {"speed": 0, "ignore_fields": ["user"]}

Record modes follow VCR.py: `none` replays only (the default when CI is set), `once` records a
missing cassette, `new` (VCR's `new_episodes`) records requests the cassette lacks, `all` (`rewrite`)
records everything again. Recording needs an upstream (`--streamreplay-upstream URL`).

Where each setting comes from, the first that gives it:
- the run's own settings, `mode` and `upstream`: the command line (`--streamreplay-mode`,
  `--streamreplay-upstream`), the test's closest `streamreplay` marker, `streamreplay_config`, the
  project's settings (`mode` only), the default;
- everything else (`tape`, `cassette_dir`, `fault`, `speed`, `match`, `ignore_fields`, `allow_misses`):
  the marker, `streamreplay_config`, the command line (`--streamreplay-dir`), the project's settings
  (`cassette_dir` as `--streamreplay-dir`, `match`, `ignore_fields`), the default.
The project's settings are the [tool.streamreplay] table of the nearest pyproject.toml from the
rootdir up (streamreplay.settings), read once per run.

The cassette is `<cassette_dir>/<name>.jsonl`. Its name is the tape, else the test's name
(`TestClass.test_name[param]`). Its directory is `cassette_dir` (relative to the rootdir), else, for a
named tape, `--streamreplay-dir` (default `recordings/`), else, for an unnamed one,
`<--streamreplay-dir>/<module>` when that option is given and `<test file's dir>/cassettes/<module>`
when not (pytest-recording's place). The project's `cassette_dir` (relative to its pyproject.toml)
stands for `--streamreplay-dir` when that option is not given.

A request no recording matches, while the cassette is only replayed (mode `none`, or `once` with the
cassette there), fails the test once, with the closest recording and the first field that differs,
unless the marker or the config says `allow_misses=True` (a test of how the app takes a 404).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streamreplay.cassette import export_tape, import_cassette
from streamreplay.replay import Replayed, ReplayServer
from streamreplay.settings import MODE_ALIASES, MODES, Settings, SettingsError, default_mode, load_settings
from streamreplay.store import Store

#: what the marker's keyword arguments and `streamreplay_config` may set
CONFIG_KEYS = ("tape", "mode", "upstream", "cassette_dir", "fault", "speed", "match", "ignore_fields",
               "allow_misses")

_ACTIVE = pytest.StashKey["StreamReplay"]()
_PROJECT = pytest.StashKey[Settings]()
#: the keys of the project's settings that are defaults of the plugin's own (cassette_dir: `_cassette`)
PROJECT_KEYS = ("mode", "match", "ignore_fields")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("streamreplay", "offline replays of recorded LLM streams")
    group.addoption("--streamreplay-mode", choices=MODES + tuple(MODE_ALIASES), default=None,
                    help="none: replay only; once: record missing cassettes; new (new_episodes): record misses; "
                         "all (rewrite): re-record. Default: none when CI is set, else once. "
                         "Beats the marker and streamreplay_config.")
    group.addoption("--streamreplay-upstream", default=None,
                    help="The API to record from (modes once/new/all). Beats the marker and streamreplay_config.")
    group.addoption("--streamreplay-dir", default=None,
                    help="Where cassettes live: <dir>/<tape>.jsonl for a named tape (default: recordings/), "
                         "<dir>/<module>/<test>.jsonl for an unnamed one (default: <test dir>/cassettes/<module>/).")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "streamreplay(tape=None, *, fault=None, speed=0, match='key', ignore_fields=(), allow_misses=False, "
        "mode=None, upstream=None, cassette_dir=None): serve the cassette <cassette_dir>/<tape or test name>.jsonl "
        "to this test through the `streamreplay` fixture; keywords override `streamreplay_config`",
    )
    config.pluginmanager.register(SessionReport(), "streamreplay-session-report")


@dataclass
class StreamReplay:
    """What a test gets: the base_url to point its client at, and what the server saw."""

    base_url: str
    tape: str
    cassette: Path
    mode: str
    server: Any
    recording: bool = False
    #: misses are the test's business (it checks how the app takes a 404): they fail nothing
    allow_misses: bool = False
    #: the cassette is only replayed (no upstream to record a miss from): a miss fails the test
    replay_only: bool = False

    @property
    def requests(self) -> list[Replayed]:
        """Each request the replay answered, the most recent `keep_requests` of them (empty while recording)."""
        return list(getattr(self.server, "requests", []))

    @property
    def misses(self) -> list[Replayed]:
        """The misses among `requests`; `miss_count` counts them all."""
        return [r for r in self.requests if r.ending == "miss"]

    @property
    def miss_count(self) -> int:
        counts = getattr(self.server, "counts", None)
        return counts.misses if counts is not None else 0

    def fault_url(self, spec: str) -> str:
        """A base_url that applies a fault to every request, e.g. `cut:chunk=3`."""
        return self.server.fault_url(spec)

    def unused(self) -> list[Any]:
        return self.server.unused() if not self.recording else []

    def assert_all_used(self) -> None:
        """Fail unless every recorded exchange was asked for (a test that stopped calling the model)."""
        unused = self.unused()
        assert not unused, "recorded exchanges never requested: " + "; ".join(
            f"#{ex.seq} {ex.method} {ex.path} ({(ex.text or '')[:30]!r})" for ex in unused)

    def assert_notices_cutoffs(self, app: Callable[[str], Any]) -> None:
        """Fail unless `app(base_url)` (the app's own code, sync or async, pointed at a base URL) raises
        under every cutoff of the cassette's first recording: its terminal event dropped, its stop field
        dropped, a clean end, a close and a reset mid-answer (streamreplay.guard.cutoffs). An app that
        returns normally under one took a cut-off answer as whole; `streamreplay.guard` makes it raise."""
        from streamreplay.guard.cutoffs import cutoffs, unnoticed_cutoffs

        source = self.server.source
        first = source.exchanges()[0]
        specs = cutoffs(first.dialect, len(source.chunks(first)))
        missed = unnoticed_cutoffs(self.fault_url, app, specs)
        if missed:
            pytest.fail(f"streamreplay: the app took {len(missed)} of {len(specs)} cutoffs as a whole answer:\n"
                        + "\n".join(f"  {m}" for m in missed)
                        + "\nGuard its stream (streamreplay.guard) or check the finish_reason yourself.", pytrace=False)

    def miss_failure(self) -> str | None:
        """Why the test fails for its misses, or None when they fail nothing."""
        if not self.miss_count or self.allow_misses or not self.replay_only:
            return None
        # from the server's totals: the records of early misses may have left its bounded `requests`
        return (f"streamreplay: {self.miss_count} request(s) matched no recording in {self.cassette} "
                f"(mode {self.mode}); the first: {self.server.counts.first_miss}\n"
                f"Record them with --streamreplay-mode new --streamreplay-upstream URL, or, if the test means "
                f"to miss, mark it streamreplay(allow_misses=True).")


@pytest.fixture(scope="module")
def streamreplay_config() -> dict[str, Any]:
    """Defaults for every `streamreplay` fixture in scope, as pytest-recording's `vcr_config`: override it in
    a conftest.py, a module or a class. Keys: those of the marker (`CONFIG_KEYS`); the marker's win."""
    return {}


def _normal_mode(mode: str) -> str:
    """A mode by its own name: `new_episodes` is `new`, `rewrite` is `all`."""
    mode = MODE_ALIASES.get(mode, mode)
    if mode not in MODES:
        pytest.fail(f"streamreplay: mode {mode!r} is not one of {', '.join(MODES + tuple(MODE_ALIASES))}",
                    pytrace=False)
    return mode


def _project(config: pytest.Config) -> Settings:
    """The project's [tool.streamreplay] settings, read once per run: a bad table fails each test that uses
    the fixture, with its one line."""
    if _PROJECT not in config.stash:
        try:
            config.stash[_PROJECT] = load_settings(Path(config.rootpath))
        except SettingsError as exc:
            problem = str(exc)
        else:
            return config.stash[_PROJECT]
        pytest.fail(f"streamreplay: {problem}", pytrace=False)  # outside `except`: no chained exception shown
    return config.stash[_PROJECT]


def _settings(request: pytest.FixtureRequest, config_defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The test's settings: the marker's over `streamreplay_config`'s over the project's, the command line's
    mode and upstream over all (see the module's docstring)."""
    marker = request.node.get_closest_marker("streamreplay")
    from_marker = dict(marker.kwargs) if marker else {}
    if marker and marker.args:
        from_marker["tape"] = marker.args[0]
    for origin, given in (("streamreplay_config", config_defaults), ("the streamreplay marker", from_marker)):
        unknown = sorted(set(given) - set(CONFIG_KEYS))
        if unknown:
            pytest.fail(f"streamreplay: {origin} has unknown key(s) {', '.join(unknown)}; "
                        f"known: {', '.join(CONFIG_KEYS)}", pytrace=False)
    project = _project(request.config)
    settings = {**{k: project.get(k) for k in PROJECT_KEYS if k in project.values}, **config_defaults, **from_marker}
    options = request.config.option
    if options.streamreplay_mode:
        settings["mode"] = options.streamreplay_mode
    if options.streamreplay_upstream:
        settings["upstream"] = options.streamreplay_upstream
    settings["mode"] = _normal_mode(settings.get("mode") or default_mode())
    return settings


def _test_name(node: Any) -> str:
    name = f"{node.cls.__name__}.{node.name}" if getattr(node, "cls", None) else node.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:120] or "test"


def _cassette(request: pytest.FixtureRequest, tape: str | None, cassette_dir: str | Path | None) -> Path:
    """`<cassette_dir>/<tape or test name>.jsonl`; the module's docstring says which directory by default."""
    option_dir = request.config.getoption("--streamreplay-dir") or _project(request.config).get("cassette_dir")
    test_file = Path(str(request.node.path))
    if cassette_dir:
        directory = Path(cassette_dir)
    elif tape:
        directory = Path(option_dir or "recordings")
    elif option_dir:
        directory = Path(option_dir) / test_file.stem
    else:
        directory = test_file.parent / "cassettes" / test_file.stem  # pytest-recording's place
    if not directory.is_absolute():
        directory = Path(request.config.rootpath) / directory
    return directory / f"{tape or _test_name(request.node)}.jsonl"


@pytest.fixture
def streamreplay(request: pytest.FixtureRequest, streamreplay_config: dict[str, Any]) -> Iterator[StreamReplay]:
    """A running replay (or recording) of the test's cassette; see the `streamreplay` marker."""
    settings = _settings(request, streamreplay_config or {})
    cassette = _cassette(request, settings.get("tape"), settings.get("cassette_dir"))
    tape = settings.get("tape") or cassette.stem
    mode, upstream = settings["mode"], settings.get("upstream")
    records = bool(upstream) and (mode in ("new", "all") or (mode == "once" and not cassette.exists()))
    if not records and not cassette.exists():
        pytest.fail(f"streamreplay: no cassette {cassette} (mode {mode}); record it with "
                    f"--streamreplay-upstream URL, or add the file", pytrace=False)
    faults = settings.get("fault") or ()
    options = dict(speed=settings.get("speed", 0), faults=[faults] if isinstance(faults, str) else list(faults),
                   match=settings.get("match", "key"), ignore_fields=settings.get("ignore_fields", ()))
    allow_misses = bool(settings.get("allow_misses", False))
    with tempfile.TemporaryDirectory(prefix="streamreplay-") as tmp:
        db = Path(tmp) / "rec.db"
        if records:
            yield from _recording(request, tape, cassette, mode, upstream, db, options, allow_misses)
        else:
            with ReplayServer(cassette, **options) as server:
                fixture = StreamReplay(server.base_url, tape, cassette, mode, server, allow_misses=allow_misses,
                                       replay_only=True)
                request.node.stash[_ACTIVE] = fixture
                yield fixture
                _report(request, fixture)


def _recording(request: pytest.FixtureRequest, tape: str, cassette: Path, mode: str, upstream: str, db: Path,
               options: dict[str, Any], allow_misses: bool) -> Iterator[StreamReplay]:
    if mode == "new" and cassette.exists():
        import_cassette(cassette, db, tape)
        server: Any = ReplayServer(db, tape=tape, on_miss="record", upstream=upstream, **options)
    else:
        from streamreplay.proxy import RecordingProxy
        from streamreplay.proxy.recorder import RecordOptions

        server = RecordingProxy(RecordOptions(upstream=upstream, db=str(db), tape=tape))
    with server:
        fixture = StreamReplay(server.base_url, tape, cassette, mode, server,
                               recording=not isinstance(server, ReplayServer), allow_misses=allow_misses)
        request.node.stash[_ACTIVE] = fixture
        yield fixture
        server.call(server.settle())  # every exchange committed (and, replaying, every recorded miss indexed)
        if not fixture.recording:
            _report(request, fixture)
    if isinstance(server, ReplayServer):
        server.close()  # a test suite makes a server per test: its DB's descriptors go back now
    with Store(db) as store:
        recorded = bool(store.exchanges(tape=tape, limit=1))
    if recorded:
        export_tape(db, tape, cassette)
        shown = os.path.relpath(cassette, request.config.rootpath)  # the path as the project names it
        request.node.user_properties.append(("streamreplay", f"{tape}: recorded into {shown}"))


def _report(request: pytest.FixtureRequest, fixture: StreamReplay) -> None:
    """Notes for the session's summary (the failure for misses is the test's own: `pytest_runtest_call`)."""
    unused = fixture.unused()
    if unused:
        request.node.user_properties.append(
            ("streamreplay", f"{fixture.tape}: {len(unused)} recorded exchange(s) never requested"))
    if fixture.miss_count and not fixture.allow_misses:
        request.node.user_properties.append(("streamreplay", f"{fixture.tape}: {fixture.miss_count} miss(es)"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A miss fails the test itself, once: a test that passed fails with the miss's account; one that
    failed already (the app raised on the 404) keeps its own failure, the account added as a section."""
    try:
        result = yield
    except BaseException:
        fixture = item.stash.get(_ACTIVE, None)
        message = fixture.miss_failure() if fixture is not None else None
        if message:
            item.add_report_section("call", "streamreplay", message)
        raise
    fixture = item.stash.get(_ACTIVE, None)
    message = fixture.miss_failure() if fixture is not None else None
    if message:
        pytest.fail(message, pytrace=False)
    return result


class SessionReport:
    """Unused recordings and misses, listed at the end of the session as pytest-recording does.

    The notes travel in each report's user_properties, so workers of pytest-xdist report them too.
    """

    def __init__(self) -> None:
        self.notes: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "teardown":
            self.notes += [f"{report.nodeid}: {value}" for name, value in report.user_properties
                           if name == "streamreplay"]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.notes:
            terminalreporter.section("streamreplay")
            for note in dict.fromkeys(self.notes):
                terminalreporter.write_line(note)
