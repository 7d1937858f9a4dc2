"""Every fault spec that parses also runs; every one that does not is a 400 that says why.

Against a real replay server and UI server, by all three routes a spec can come: the
X-Streamreplay-Fault header, the /fault/<spec>/ base_url prefix, and the UI's ?fault= query.
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import math
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from streamreplay.replay import ReplayServer
from streamreplay.replay.faults import (
    CHUNKS,
    FAULTS,
    STATUS_CODES,
    Close,
    DelayFirst,
    Fault,
    FaultSpecError,
    GapScale,
    Range,
    Reset,
    Stall,
    Status,
    param,
    parse_faults,
    register,
)
from streamreplay.testing import Script
from streamreplay.ui import UIServer
from tests.helpers import chat, record

#: a client's read timeout: a stall or delay-first this long (or longer) may end a request in a ReadTimeout
TIMEOUT_S = 0.5

BAD_VALUES = [
    ("stall:seconds=inf", "stall: seconds must be a finite number between 0 and 3600, got inf"),
    ("stall:seconds=nan", "stall: seconds must be a finite number between 0 and 3600, got nan"),
    ("stall:seconds=1e300", "stall: seconds must be a finite number between 0 and 3600, got 1e300"),
    ("stall:seconds=-inf", "stall: seconds must be a finite number between 0 and 3600, got -inf"),
    ("stall:seconds=3600.5", "stall: seconds must be a finite number between 0 and 3600, got 3600.5"),
    ("delay-first:seconds=nan", "delay-first: seconds must be a finite number between 0 and 3600, got nan"),
    ("gap-scale:factor=inf", "gap-scale: factor must be a finite number between 0 and 1000, got inf"),
    ("gap-scale:factor=-1", "gap-scale: factor must be a finite number between 0 and 1000, got -1"),
    ("close:chunk=-1", "close: chunk must be an integer between 0 and 1000000, got -1"),
    ("reset:chunk=1000001", "reset: chunk must be an integer between 0 and 1000000, got 1000001"),
    ("rechunk:size=0",
     "rechunk: size must be an integer between 1 and 1000000000 (a piece holds at least 1 byte), got 0"),
    ("cut:byte=" + "9" * 5000,
     "cut: byte must be an integer between 0 and 1000000000, got 999999999999999999999999999999... (5000 characters)"),
    *[
        (f"status:code={code}",
         f"status: code must be an integer between 200 and 599 other than 204, 205 and 304 "
         f"(a status with a body), got {code}")
        for code in (0, 99, 1000, 100, 101, 204, 304)
    ],
]


@pytest.mark.parametrize(("spec", "message"), BAD_VALUES)
def test_out_of_range_values_are_refused_by_name(spec: str, message: str):
    with pytest.raises(FaultSpecError) as caught:
        parse_faults(spec)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "fault",
    [lambda: Stall(seconds=math.inf), lambda: DelayFirst(seconds=math.nan), lambda: GapScale(factor=1e300),
     lambda: Status(code=101), lambda: Close(chunk=-1), lambda: Reset(chunk=10**400), lambda: Stall(chunk=1.5)],
)
def test_a_fault_built_in_code_is_bounded_too(fault):
    with pytest.raises(FaultSpecError, match="must be"):
        fault()


def test_every_fault_states_its_ranges():
    for cls in FAULTS.values():
        for f in dataclasses.fields(cls):
            allowed = f.metadata.get("range")
            assert allowed is not None, f"{cls.name}: {f.name} has no stated range"
            assert str(allowed) in f"{cls.usage} {cls.help}", f"{cls.name}: {f.name}"


def test_the_edges_of_every_range_parse():
    for spec in ["stall:chunk=1000000,seconds=3600", "stall:chunk=0,seconds=0", "delay-first:seconds=3600",
                 "gap-scale:factor=0", "gap-scale:factor=1000", "cut:byte=1000000000", "rechunk:size=1000000000",
                 "status:code=200", "status:code=206", "status:code=599", "error-event:chunk=1000000"]:
        assert parse_faults(spec)


SPEC_ERRORS = [
    ("nope", "unknown fault 'nope' in 'nope'; known: close, corrupt, cut, delay-first, drop-done, drop-finish, "
             "error-event, gap-scale, rechunk, reset, stall, status"),
    ("stall:chunk", "stall: 'chunk' is not key=value"),
    ("stall:speed=2", "stall: unknown parameter 'speed' (takes chunk, seconds)"),
    ("drop-done:chunk=1", "drop-done: unknown parameter 'chunk' (takes no parameters)"),
    ("cut:chunk=abc", "cut: chunk='abc' is not an integer"),
    ("stall:seconds=soon", "stall: seconds='soon' is not a number"),
    ("stall:seconds==1", "stall: seconds='=1' is not a number"),  # the first "=" splits key from value
    ("cut:byte=X" + "9" * 40, "cut: byte='X" + "9" * 40 + "' is not an integer"),  # only a sign may lead
    ("cut", "cut: give exactly one of chunk=N or byte=B"),
    ("cut:chunk=1,byte=2", "cut: give exactly one of chunk=N or byte=B"),
    # too many digits for int(), and signed: still out of range, not "not an integer"
    ("cut:byte=-" + "9" * 5000,
     "cut: byte must be an integer between 0 and 1000000000, got -99999999999999999999999999999... (5001 characters)"),
    # a value is quoted whole up to 40 characters
    ("cut:byte=" + "9" * 40, "cut: byte must be an integer between 0 and 1000000000, got " + "9" * 40),
    ("cut:byte=" + "9" * 41,
     "cut: byte must be an integer between 0 and 1000000000, got " + "9" * 30 + "... (41 characters)"),
]


@pytest.mark.parametrize(("spec", "message"), SPEC_ERRORS)
def test_a_spec_that_cannot_be_read_is_refused_with_what_is_wrong(spec: str, message: str):
    with pytest.raises(FaultSpecError) as caught:
        parse_faults(spec)
    assert str(caught.value) == message


def test_a_fault_built_in_code_is_refused_in_the_same_words_as_its_spec():
    for make, message in [
        (lambda: Stall(seconds=math.inf), "stall: seconds must be a finite number between 0 and 3600, got inf"),
        (lambda: Status(code=204), "status: code must be an integer between 200 and 599 other than 204, 205 and 304 "
                                   "(a status with a body), got 204"),
    ]:
        with pytest.raises(FaultSpecError) as caught:
            make()
        assert str(caught.value) == message


def test_a_range_reads_as_the_help_states_it():
    assert str(CHUNKS) == "0..1000000"
    assert str(STATUS_CODES) == "200..599 but not 204, 205, 304"
    assert Status.help.endswith("; C 200..599 but not 204, 205, 304")


def test_a_new_fault_declared_with_param_has_its_default_its_range_and_its_name():
    """The extension point as a new fault uses it: param() for each parameter, register() for the name."""

    @dataclasses.dataclass(frozen=True)
    class Skip(Fault):
        name = "skip-test-only"
        usage = "skip-test-only:every=K"
        help = "test only"
        every: int = param(2, Range(1, 9, excluded=(5,), why="five is taken"))

        def apply(self, schedule):
            return schedule

    assert Skip().every == 2 and Skip(every=9).spec() == "skip-test-only:every=9"
    with pytest.raises(FaultSpecError) as caught:
        Skip(every=5)
    assert str(caught.value) == ("skip-test-only: every must be an integer between 1 and 9 other than 5 "
                                 "(five is taken), got 5")
    assert register(Skip) is Skip
    try:
        assert parse_faults("skip-test-only:every=3") == [Skip(every=3)]
    finally:
        del FAULTS[Skip.name]


# -- against real servers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One streamed answer, recorded through the proxy."""
    db: Path = tmp_path_factory.mktemp("faults") / "rec.db"
    asyncio.run(record(db, [Script(gap=0.015)], [chat()]))
    return db


@pytest.fixture(scope="module")
def servers(recording: Path) -> Iterator[tuple[ReplayServer, UIServer]]:
    """One replay server (speed 0: only the faults' own waits take time) and one UI server for the whole module."""
    with ReplayServer(recording, speed=0) as replay, UIServer(recording) as ui:
        yield replay, ui


def _wall_seconds(faults: list[Fault]) -> float:
    return sum(f.seconds for f in faults if isinstance(f, (Stall, DelayFirst)))


def _check_replay(client: httpx.Client, url: str, spec: str, headers: dict[str, str]) -> None:
    """The answer by one replay route: what the spec asked for, or a 400 that names the problem."""
    try:
        faults: list[Fault] | None = parse_faults(spec)
    except FaultSpecError as exc:
        faults, problem = None, str(exc)
    error, resp, body = None, None, b""
    try:
        with client.stream("POST", url, json=chat(), headers=headers) as resp:
            body = resp.read()
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout) as exc:
        error = exc
    if resp is None:  # no response head: only a wait the spec asked for may keep it from coming
        assert isinstance(error, httpx.ReadTimeout) and faults and _wall_seconds(faults) >= TIMEOUT_S / 2, (
            f"{spec!r}: no response, {error!r}")
        return
    if faults is None:
        assert error is None, f"{spec!r}: {error!r}"
        assert resp.status_code == 400, (spec, resp.status_code, body[:300])
        assert resp.json()["error"]["message"] == f"bad fault spec: {problem}"
        return
    statuses = [f.code for f in faults if isinstance(f, Status)]
    expected = statuses[-1] if statuses else 200
    assert resp.status_code == expected, (spec, resp.status_code)  # only a status fault makes a 4xx or 5xx
    assert resp.headers.get("x-streamreplay-error") is None, (spec, resp.headers)
    if isinstance(error, httpx.ReadTimeout):
        assert _wall_seconds(faults) >= TIMEOUT_S / 2, f"{spec!r} timed out"
    elif error is not None:  # a deliberate broken ending, and only that
        assert any(isinstance(f, (Close, Reset)) for f in faults), f"{spec!r}: {error!r}"


def _check_ui(client: httpx.Client, ui: UIServer, spec: str) -> None:
    try:
        faults: list[Fault] | None = parse_faults(spec)
    except FaultSpecError as exc:
        faults, problem = None, str(exc)
    resp = client.get(f"{ui.origin}/exchange/1", params={"fault": spec})
    if faults is None:
        # a page for a person: the same words as the API's error message, as HTML
        assert resp.status_code == 400, (spec, resp.status_code, resp.text[:300])
        assert html.escape(problem, quote=True) in resp.text
    else:
        assert resp.status_code == 200, (spec, resp.status_code, resp.text[:300])
        assert ('id="lane-b"' in resp.text) == bool(faults)


def check_every_route(replay: ReplayServer, ui: UIServer, spec: str) -> None:
    with httpx.Client(timeout=httpx.Timeout(5, read=TIMEOUT_S)) as client:
        if spec == spec.strip() and all(" " <= c <= "~" for c in spec):  # what fits in a header as it is
            _check_replay(client, f"{replay.base_url}/chat/completions", spec, {"X-Streamreplay-Fault": spec})
        # the server's catch-all route is /{tail:.*}, and "." stops at a newline: a 404; and a spec of "." or ".."
        # is a dot segment of the URL, which the client resolves before sending it (RFC 3986): no server sees it
        if "\n" not in spec and spec not in (".", ".."):
            url = f"{replay.origin}/fault/{quote(spec, safe='')}{replay.prefix}/chat/completions"
            _check_replay(client, url, spec, {})
        _check_ui(client, ui, spec)


# The values a parameter might be given: every edge of every range, what lies just past it, and worse.
FLOAT_EDGES = ["inf", "-inf", "nan", "NaN", "infinity", "1e300", "-1e300", "1e-300", "-1", "-0", "0", "0.0", "0.01",
               "3600", "3600.0001", "1000", "1000.5", "9" * 400]
INT_EDGES = ["-1", "0", "1", "999999", "1000000", "1000001", "1000000000", "1000000001", str(2**63), "9" * 40,
             "9" * 4400, "1_0", "0x10", "1.0", "inf", "nan"]
STATUSES = ["0", "99", "100", "101", "199", "200", "204", "205", "206", "299", "304", "399", "418", "429", "500",
            "503", "599", "600", "1000", "-200"]  # every status the issue names, and the edges of 200..599
GARBAGE = ["", " ", "abc", "1,2", "=", "+"]


def values(key: str) -> st.SearchStrategy[str]:
    edges = st.sampled_from({"code": STATUSES, "seconds": FLOAT_EDGES, "factor": FLOAT_EDGES}.get(key, INT_EDGES))
    return st.one_of(
        edges, edges, edges,  # weighted: 40 examples should meet the edges
        st.sampled_from(GARBAGE),
        st.integers(-3, 40).map(str),  # in range, mostly: so that many specs parse and run
        st.floats(0, 0.2).map(repr),
        st.integers(-(10**30), 10**30).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(string.printable, max_size=6),
    )


KEYS = sorted({f.name for cls in FAULTS.values() for f in dataclasses.fields(cls)})


@st.composite
def one_fault(draw: st.DrawFn) -> str:
    """A fault as users write one: mostly a known name with its own parameters, sometimes neither."""
    known = draw(st.integers(0, 9)) > 0
    name = draw(st.sampled_from(sorted(FAULTS)) if known else st.text(string.ascii_lowercase + "-", max_size=8))
    cls = FAULTS.get(name)
    own = [f.name for f in dataclasses.fields(cls)] if cls else []
    pool = own if own and draw(st.integers(0, 4)) > 0 else KEYS
    keys = draw(st.lists(st.sampled_from(pool), min_size=1 if own else 0, max_size=2, unique=True))
    params = [f"{key}={draw(values(key))}" for key in keys]
    return name + (":" + ",".join(params) if params else "")


FAULT_SPECS = st.lists(one_fault(), min_size=1, max_size=3).map("+".join)
SPECS = st.one_of(
    FAULT_SPECS, FAULT_SPECS, FAULT_SPECS,
    st.text(max_size=30),  # garbage, unicode included
    st.text(string.printable, max_size=30),
)


ISSUE_SPECS = [spec for spec, _ in BAD_VALUES if len(spec) < 100]  # the ones the issue names, every run


def _with_issue_examples(test: Callable[..., None]) -> Callable[..., None]:
    for spec in ISSUE_SPECS:
        test = example(spec=spec)(test)
    return test


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@_with_issue_examples
@example(spec=".")  # a dot segment: by header and ui only (hypothesis found it through the base_url prefix)
@example(spec="..")
@given(spec=SPECS)
def test_every_spec_that_parses_runs_and_every_other_is_a_400(servers, spec: str):
    assume(len(quote(spec, safe="")) < 6000)  # a request line past aiohttp's 8 KB limit never reaches streamreplay
    replay, ui = servers
    check_every_route(replay, ui, spec)


@pytest.mark.parametrize("code", [200, 206, 299, 301, 404, 418, 429, 500, 503, 599])
def test_every_status_in_range_is_a_response_httpx_reads(servers, code: int):
    replay, ui = servers
    check_every_route(replay, ui, f"status:code={code}")
    answer = httpx.post(f"{replay.base_url}/chat/completions", json=chat(), headers={"X-Streamreplay-Fault":
                                                                                      f"status:code={code}"})
    assert answer.status_code == code and answer.json()["error"]["code"] == str(code)


def test_chained_gap_scales_stay_playable(recording: Path, servers):
    """Each factor is bounded, but a chain multiplies them: 1000**150 would overflow the server's float clock."""
    spec = "+".join(["gap-scale:factor=1000"] * 150)
    _, ui = servers
    with ReplayServer(recording, speed=1) as replay, httpx.Client(timeout=httpx.Timeout(5, read=TIMEOUT_S)) as client:
        url, headers = f"{replay.base_url}/chat/completions", {"X-Streamreplay-Fault": spec}
        # the first gap is now years long: the head comes, then nothing
        with pytest.raises(httpx.ReadTimeout), client.stream("POST", url, json=chat(), headers=headers) as resp:
            assert resp.status_code == 200
            resp.read()
        assert client.get(f"{ui.origin}/exchange/1", params={"fault": spec}).status_code == 200


def test_a_new_fault_s_bounds_are_both_included_and_the_parser_refuses_past_them_in_the_same_words():
    """A registered fault's parameter takes both ends of its `param()` range; the parser refuses a value past
    either end, or a fraction for an integer, naming the fault, the range and the value."""

    @dataclasses.dataclass(frozen=True)
    class Every(Fault):
        name = "every-test-only"
        usage = "every-test-only:every=K"
        help = "test only"
        every: int = param(3, Range(1, 9))

        def apply(self, schedule):
            return schedule

    register(Every)
    try:
        assert parse_faults("every-test-only:every=1") == [Every(every=1)]
        assert parse_faults("every-test-only:every=9") == [Every(every=9)]
        for value in ("0", "10"):
            with pytest.raises(FaultSpecError) as caught:
                parse_faults(f"every-test-only:every={value}")
            assert str(caught.value) == f"every-test-only: every must be an integer between 1 and 9, got {value}"
        with pytest.raises(FaultSpecError) as caught:
            parse_faults("every-test-only:every=2.5")
        assert str(caught.value) == "every-test-only: every='2.5' is not an integer"  # as cut:chunk=2.5 is
    finally:
        del FAULTS[Every.name]
