"""pytest plugin: recorded tapes as offline CI fixtures.

    @pytest.mark.streamreplay("agent-happy-path")       # recordings/agent-happy-path.jsonl
    def test_agent(streamreplay):
        client = OpenAI(base_url=streamreplay.base_url, api_key="test")

Record modes follow VCR.py: `none` replays only (the default when CI is set), `once` records a
missing cassette, `new` records requests the cassette lacks, `all` records everything again.
Recording needs `--streamreplay-upstream URL`.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streamreplay.cassette import export_tape, import_cassette
from streamreplay.replay import Replayed, ReplayServer
from streamreplay.store import Store

MODES = ("none", "once", "new", "all")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("streamreplay", "offline replays of recorded LLM streams")
    group.addoption("--streamreplay-mode", choices=MODES, default=None,
                    help="none: replay only; once: record missing cassettes; new: record misses; all: re-record. "
                         "Default: none when CI is set, else once.")
    group.addoption("--streamreplay-upstream", default=None, help="The API to record from (modes once/new/all).")
    group.addoption("--streamreplay-dir", default="recordings", help="Where cassettes live (default: recordings/).")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "streamreplay(tape, fault=None, speed=0, match='key', ignore_fields=()): serve the cassette "
        "<streamreplay-dir>/<tape>.jsonl to this test through the `streamreplay` fixture",
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


def _mode(config: pytest.Config) -> str:
    mode = config.getoption("--streamreplay-mode")
    if mode:
        return mode
    return "none" if os.environ.get("CI") else "once"


def _default_tape(node: pytest.Item) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{node.module.__name__}-{node.name}").strip("-")[:120]


@pytest.fixture
def streamreplay(request: pytest.FixtureRequest) -> Iterator[StreamReplay]:
    """A running replay (or recording) of the test's cassette; see the `streamreplay` marker."""
    config = request.config
    marker = request.node.get_closest_marker("streamreplay")
    args = dict(marker.kwargs) if marker else {}
    tape = (marker.args[0] if marker and marker.args else None) or args.pop("tape", None) or _default_tape(request.node)
    args.pop("tape", None)
    directory = Path(config.getoption("--streamreplay-dir"))
    if not directory.is_absolute():
        directory = Path(config.rootpath) / directory
    cassette = directory / f"{tape}.jsonl"
    mode = _mode(config)
    upstream = config.getoption("--streamreplay-upstream")
    records = mode in ("new", "all") or (mode == "once" and not cassette.exists())
    if records and not upstream:
        records = False
    if not records and not cassette.exists():
        pytest.fail(f"streamreplay: no cassette {cassette} (mode {mode}); record it with "
                    f"--streamreplay-upstream URL, or add the file", pytrace=False)
    faults = args.get("fault") or ()
    options = dict(speed=args.get("speed", 0), faults=[faults] if isinstance(faults, str) else list(faults),
                   match=args.get("match", "key"), ignore_fields=args.get("ignore_fields", ()))
    with tempfile.TemporaryDirectory(prefix="streamreplay-") as tmp:
        db = Path(tmp) / "rec.db"
        if records:
            yield from _recording(request, tape, cassette, mode, upstream, db, options)
        else:
            with ReplayServer(cassette, **options) as server:
                fixture = StreamReplay(server.base_url, tape, cassette, mode, server)
                yield fixture
                _report(request, fixture)


def _recording(request: pytest.FixtureRequest, tape: str, cassette: Path, mode: str, upstream: str, db: Path,
               options: dict[str, Any]) -> Iterator[StreamReplay]:
    if mode == "new" and cassette.exists():
        import_cassette(cassette, db, tape)
        server: Any = ReplayServer(db, tape=tape, upstream=upstream, **options)
    else:
        from streamreplay.proxy import RecordingProxy
        from streamreplay.proxy.recorder import RecordOptions

        server = RecordingProxy(RecordOptions(upstream=upstream, db=str(db), tape=tape))
    with server:
        fixture = StreamReplay(server.base_url, tape, cassette, mode, server,
                               recording=not isinstance(server, ReplayServer))
        yield fixture
        recorder = server if fixture.recording else server._recorder
        server.call(recorder.settle())
        if not fixture.recording:
            _report(request, fixture)
    if Store(db).exchanges(tape=tape, limit=1):
        export_tape(db, tape, cassette)
        request.node.user_properties.append(("streamreplay", f"{tape}: recorded into {cassette}"))


def _report(request: pytest.FixtureRequest, fixture: StreamReplay) -> None:
    unused = fixture.unused()
    if unused:
        request.node.user_properties.append(
            ("streamreplay", f"{fixture.tape}: {len(unused)} recorded exchange(s) never requested"))
    if fixture.miss_count:
        # from the server's totals: the records of early misses may have left its bounded `requests`
        first = fixture.server.counts.first_miss
        request.node.user_properties.append(("streamreplay", f"{fixture.tape}: {fixture.miss_count} miss(es)"))
        if fixture.mode == "none":
            pytest.fail(f"streamreplay: {first}", pytrace=False)


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
