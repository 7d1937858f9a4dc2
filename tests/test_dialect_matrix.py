"""`streamreplay matrix` on each dialect's bundled tape, into that dialect's real clients: the verdicts the
README's tables quote for the endings that matter (a whole answer, no terminal event, a clean cut)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamreplay.bundled import bundled_dir
from streamreplay.cassette import load_cassette
from streamreplay.cli import main
from streamreplay.clientid import recognise_client
from streamreplay.clients import clients_of
from streamreplay.dialects import dialect_named
from streamreplay.matrix import DEFAULT_TAPES, run_matrix
from streamreplay.repro import write_repro
from streamreplay.store import Store

RECORDINGS = bundled_dir()
WHOLE = "The capital of France is Paris. It lies on the Seine and is known for the Eiffel Tower."

#: per dialect: what a clean cut mid-answer gives each client that does not take it silently
NOTICES_A_CUT = {"responses": {"openai responses.stream": "raises builtins.RuntimeError"}}
NOTICES_NO_TERMINAL = {"responses": {"openai responses.stream": "raises builtins.RuntimeError"}}


@pytest.mark.parametrize("dialect", ["responses", "anthropic", "azure", "ollama"])
async def test_each_dialect_s_clients_take_a_clean_cut_silently(dialect: str):
    tape = RECORDINGS / f"{DEFAULT_TAPES[dialect]}.jsonl"
    clients = [c.label for c in clients_of(dialect_named(dialect))]
    rows, results = await run_matrix(tape, clients, timeout=2.0, faults=["", "drop-done", "cut"])
    complete, no_terminal, cut = rows
    assert cut.spec and cut.spec.startswith("cut:chunk=")
    assert dialect_named(dialect).terminal in no_terminal.label
    for client in clients:
        assert results[(complete.label, client)] == "completes"
        assert results[(no_terminal.label, client)] == NOTICES_NO_TERMINAL.get(dialect, {}).get(client, "completes")
        partial = f"partial text, no error (43/{len(WHOLE)} chars)"
        assert results[(cut.label, client)] == NOTICES_A_CUT.get(dialect, {}).get(client, partial), client


@pytest.mark.parametrize("dialect", ["responses", "anthropic", "azure", "ollama"])
def test_repro_sends_each_dialect_s_recording_through_its_recorded_client(dialect: str, tmp_path: Path):
    """`repro` on a bundled tape of each dialect: the script replays it into the client that recorded it
    (recognised from the request), and under a cut that client gets part of the answer and no error."""
    tape = DEFAULT_TAPES[dialect]
    store = Store(tmp_path / "r.db")
    load_cassette(store, RECORDINGS / f"{tape}.jsonl")
    (ex,) = store.exchanges()
    client = recognise_client(ex)
    assert client.info.dialect == dialect
    info = write_repro(store, ex.id, tmp_path / "repro")
    assert info.script_client is client
    done = subprocess.run([sys.executable, "repro.py", "--speed", "0", "--fault", "cut:chunk=12"],
                          cwd=info.script.parent, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    printed = {line[:11].strip(): line[11:] for line in done.stdout.splitlines()}
    assert printed["client"] == client.value
    assert printed["error"] == "None"
    assert WHOLE.startswith(eval(printed["text"])) and 0 < len(eval(printed["text"])) < len(WHOLE)
    assert printed["ending"].startswith("clean [cut:chunk=12]")


def test_bisect_by_client_plays_an_anthropic_recording_into_the_anthropic_clients(tmp_path: Path):
    store = Store(tmp_path / "r.db")
    load_cassette(store, RECORDINGS / "anthropic-happy-path.jsonl")
    out = CliRunner().invoke(main, ["bisect", "anthropic-happy-path:0", "--db", str(tmp_path / "r.db"),
                                    "--by", "client"])
    assert out.exit_code == 0, out.output
    rows = [line for line in out.output.splitlines() if line.startswith("reads to the end")]
    labels = sorted(c.label for c in clients_of(dialect_named("anthropic")))
    assert len(rows) == len(labels) == 4
    # each client once, reading the whole answer
    assert sorted(row[len("reads to the end"):].split(" read ")[0].strip() for row in rows) == labels, out.output
    assert all(f" {len(WHOLE)} chars, " in row for row in rows), out.output
