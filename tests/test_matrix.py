"""`streamreplay matrix`: real clients, real replays, and the verdicts the README quotes."""

from __future__ import annotations

from click.testing import CliRunner

from streamreplay.bundled import bundled_tape
from streamreplay.cli import main
from streamreplay.matrix import run_matrix

CASSETTE = bundled_tape("openai-happy-path")


async def test_the_matrix_tells_silent_truncation_from_errors():
    rows, results = await run_matrix(CASSETTE, ["openai async", "autogen-agentchat", "AG2"], timeout=0.5)
    by_spec = {row.spec: row.label for row in rows}
    cut = by_spec[next(s for s in by_spec if s and s.startswith("cut:"))]
    close = by_spec[next(s for s in by_spec if s and s.startswith("close:"))]
    stall = by_spec[next(s for s in by_spec if s and s.startswith("stall:"))]
    assert results[(by_spec[None], "openai async")] == "completes"
    assert results[(cut, "openai async")].startswith("partial text, no error")
    assert results[(cut, "autogen-agentchat")].startswith("partial text, no error")
    assert results[(cut, "AG2")] == "raises pydantic_core.ValidationError"
    assert results[(close, "autogen-agentchat")] == "raises httpx.RemoteProtocolError"
    assert results[(stall, "openai async")].startswith("times out after")
    assert results[(stall, "openai async")].endswith("(httpx.ReadTimeout)")
    assert results[(by_spec["status:code=429"], "AG2")] == "raises openai.RateLimitError"


def test_matrix_cli_names_unknown_clients():
    out = CliRunner().invoke(main, ["matrix", "--client", "langchain"])
    assert out.exit_code == 2 and "unknown client 'langchain'" in out.output
