"""The end-cause table: one entry per EndCause, and every command reads it (no second copy)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from streamreplay.diagnose import diagnose_exchange
from streamreplay.endcause import CAUSES, ENDED_BY, TONES, EndCause, Ending, known_cause, wire_ending
from streamreplay.replay.schedule import recorded_ending
from streamreplay.store import Chunk, Exchange
from streamreplay.timeline import BADGE_COLORS, COLORS, CSS, UPSTREAM_ENDS, badge, recorded_series

ROOT = Path(__file__).resolve().parent.parent


def test_every_end_cause_has_one_entry():
    assert list(CAUSES) == list(EndCause)
    for cause, info in CAUSES.items():
        assert info.ended_by in ENDED_BY and info.tone in TONES, cause
        assert isinstance(info.wire, Ending) and info.meaning and info.label, cause
        assert info.marker in COLORS, f"{cause}: the timeline has no colour for marker {info.marker!r}"
        if info.upstream_broke:  # diagnose says what the table says, and nothing else
            assert info.summary and info.fix, cause


def test_causes_are_the_strings_stored():
    assert EndCause.CLIENT_LEFT == "client_left" and f"{EndCause.UPSTREAM_RESET}" == "upstream_reset"
    assert known_cause("client_left") is EndCause.CLIENT_LEFT
    assert known_cause("from_a_newer_version") is None and known_cause(None) is None


def ended(cause: str | None, upstream_end: str | None = None, **fields: object) -> Exchange:
    return Exchange(id=1, tape="t", seq=0, method="POST", path="/chat/completions", status=200,
                    end_cause=cause, upstream_end=upstream_end, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("cause", "ending"), [
    ("complete", Ending.CLEAN), ("eof_without_done", Ending.CLEAN), ("upstream_closed", Ending.CLOSE),
    ("upstream_reset", Ending.RESET), ("upstream_malformed", Ending.CLOSE), ("upstream_timeout", Ending.CLOSE),
    ("upstream_unreachable", Ending.CLEAN), ("http_error", Ending.CLEAN), ("client_left", Ending.CLOSE),
    ("interrupted", Ending.CLOSE), (None, Ending.CLEAN), ("from_a_newer_version", Ending.CLEAN),
])
def test_replay_gives_the_wire_ending_of_the_table(cause: str | None, ending: Ending):
    assert wire_ending(cause) is ending
    assert recorded_ending(ended(cause)) is ending


def test_a_client_that_left_replays_the_upstreams_ending():
    assert recorded_ending(ended("client_left", "upstream_reset")) is Ending.RESET
    assert recorded_ending(ended("client_left", "complete")) is Ending.CLEAN
    proxy_error = ended("upstream_timeout", response_headers=[["x-streamreplay-error", "upstream_timeout"]])
    assert recorded_ending(proxy_error) is Ending.CLEAN  # the proxy's own answer, whole


@pytest.mark.parametrize("cause", list(EndCause))
def test_diagnose_says_who_ended_it_from_the_table(cause: EndCause):
    ex = ended(cause.value, "complete" if cause is EndCause.CLIENT_LEFT else None, duration_ns=10**9,
               client_left_at_chunk=1 if cause is EndCause.CLIENT_LEFT else None,
               client_left_ns=5 * 10**8 if cause is EndCause.CLIENT_LEFT else None)
    chunks = [Chunk(0, 10**8, b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'),
              Chunk(1, 9 * 10**8, b"data: [DONE]\n\n")]
    d = diagnose_exchange(ex, chunks, [ex], "db")
    assert d.ended_by == cause.info.ended_by
    if cause.info.upstream_broke:
        assert (d.cause, d.summary, d.fix) == (cause.value, cause.info.summary, cause.info.fix)


def test_the_timeline_draws_every_cause_from_the_table():
    for cause, info in CAUSES.items():
        assert f".b-{cause.value}{{background:{BADGE_COLORS[info.tone]}}}" in CSS
        assert f'class="badge b-{cause.value}"' in badge(cause)
        if cause is not EndCause.CLIENT_LEFT:  # drawn as the client's marker, the upstream's end beside it
            assert UPSTREAM_ENDS[cause] == (info.marker, info.label)
    left = ended("client_left", "complete", client_left_at_chunk=1, client_left_ns=5 * 10**8, duration_ns=10**9)
    kinds = [m.kind for m in recorded_series(left, [Chunk(0, 10**8, b"x"), Chunk(1, 9 * 10**8, b"y")]).markers]
    assert kinds == ["client-left", "end"]


def test_the_readme_table_says_what_the_code_says():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### End causes", 1)[1].split("\n\n", 2)[1]
    rows = dict(re.findall(r"^\| `(\w+)` \| (.*) \|$", section, re.M))
    assert rows == {cause.value: info.meaning for cause, info in CAUSES.items()}


def test_stored_end_causes_are_compared_with_members_not_literals():
    """`ex.end_cause == "client_left"` spells the vocabulary a second time: compare with EndCause members."""
    values = {c.value for c in EndCause}
    found = []
    for path in sorted((ROOT / "streamreplay").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            about_end = any(isinstance(s, ast.Attribute) and s.attr in ("end_cause", "upstream_end") for s in sides)
            literals = [s.value for s in sides if isinstance(s, ast.Constant) and s.value in values]
            if about_end and literals:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {literals[0]!r}")
    assert not found, "compare with EndCause members:\n" + "\n".join(found)


#: docs/DESIGN.md's "End causes" table: who ended each exchange, and the wire ending replay gives it
WHO_AND_WIRE = {
    EndCause.COMPLETE: ("nobody", Ending.CLEAN),
    EndCause.EOF_WITHOUT_DONE: ("upstream", Ending.CLEAN),
    EndCause.UPSTREAM_CLOSED: ("upstream", Ending.CLOSE),
    EndCause.UPSTREAM_RESET: ("upstream", Ending.RESET),
    EndCause.UPSTREAM_MALFORMED: ("upstream", Ending.CLOSE),
    EndCause.UPSTREAM_TIMEOUT: ("upstream", Ending.CLOSE),
    EndCause.UPSTREAM_UNREACHABLE: ("upstream", Ending.CLEAN),  # the proxy's own 502, whole
    EndCause.HTTP_ERROR: ("upstream", Ending.CLEAN),  # the recorded error status, whole
    EndCause.CLIENT_LEFT: ("client", Ending.CLOSE),  # unless upstream_end says how the upstream ended
    EndCause.INTERRUPTED: ("daemon", Ending.CLOSE),
}


def test_each_cause_is_ended_by_whom_the_design_table_says_and_replays_its_wire_ending():
    assert {cause: (info.ended_by, info.wire) for cause, info in CAUSES.items()} == WHO_AND_WIRE
    assert {cause: cause.info for cause in EndCause} == CAUSES


def test_only_an_upstream_that_cut_the_body_counts_as_broken():
    broken = {cause for cause in EndCause if cause.info.upstream_broke}
    assert broken == {EndCause.UPSTREAM_CLOSED, EndCause.UPSTREAM_RESET, EndCause.UPSTREAM_MALFORMED,
                      EndCause.UPSTREAM_TIMEOUT}


def test_the_badge_tone_says_how_bad_the_ending_looks():
    tones = {cause: info.tone for cause, info in CAUSES.items()}
    assert tones == {EndCause.COMPLETE: "ok", EndCause.EOF_WITHOUT_DONE: "warning", EndCause.CLIENT_LEFT: "client",
                     EndCause.INTERRUPTED: "neutral",
                     **{c: "failed" for c in EndCause if c.value.startswith(("upstream_", "http_"))}}


def test_every_cause_and_ending_prints_as_its_stored_string():
    assert [str(c) for c in EndCause] == ["complete", "eof_without_done", "upstream_closed", "upstream_reset",
                                          "upstream_malformed", "upstream_timeout", "upstream_unreachable",
                                          "http_error", "client_left", "interrupted"]
    assert [e.value for e in Ending] == ["clean", "close", "reset"]
    assert all(known_cause(c.value) is c for c in EndCause)
    assert known_cause("") is None and known_cause("COMPLETE") is None
