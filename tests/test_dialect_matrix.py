"""`streamreplay matrix` on each dialect's bundled tape, into that dialect's real clients: the verdicts the
README's tables quote for the endings that matter (a whole answer, no terminal event, a clean cut)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamreplay.clients import clients_of
from streamreplay.dialects import dialect_named
from streamreplay.matrix import DEFAULT_TAPES, run_matrix

RECORDINGS = Path(__file__).resolve().parent.parent / "recordings"
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
