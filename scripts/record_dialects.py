"""Record the bundled tapes of the other dialects (Responses API, Anthropic, Azure, Ollama) in streamreplay/tapes/.

    python scripts/record_dialects.py [TAPE ...]

No server here speaks these APIs natively, so the upstream is streamreplay's scripted one
(`streamreplay.testing.ScriptedUpstream`, each dialect's wire in `streamreplay/scripted/`, written to
the provider's published event reference). Each tape is made the way a user makes one: `streamreplay
record` runs as a subprocess in front of that upstream, the dialect's real client library sends the
request through it, and `streamreplay export` writes streamreplay/tapes/<tape>.jsonl.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from record_bundled import record  # noqa: E402

from streamreplay.clientid import Client  # noqa: E402
from streamreplay.clients import run_client  # noqa: E402
from streamreplay.testing import Script, ScriptedUpstream  # noqa: E402

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = "The capital of France is Paris. It lies on the Seine and is known for the Eiffel Tower."
#: an answer streamed the way a hosted model streams one: a word every 30 ms after a 0.2 s wait
SCRIPT = Script(text=ANSWER, first_delay=0.2, gap=0.03)

#: tape -> (the client that sends the request, what the tape's note says about it)
TAPES: dict[str, tuple[Client, str]] = {
    "responses-happy-path": (Client.OPENAI_RESPONSES, "openai OpenAI().responses.create(stream=True)"),
    "anthropic-happy-path": (Client.ANTHROPIC, "anthropic Anthropic().messages.create(stream=True)"),
    "azure-happy-path": (Client.AZURE_OPENAI, "openai AzureOpenAI().chat.completions.create(stream=True)"),
    "ollama-happy-path": (Client.OLLAMA, "ollama Client().chat(stream=True)"),
}


def main() -> None:
    only = set(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp, ScriptedUpstream(SCRIPT) as upstream:
        db = Path(tmp) / "dialects.db"
        for tape, (client, how) in TAPES.items():
            if only and tape not in only:
                continue
            print(f"== {tape}: {how}")
            note = f"recorded from streamreplay's scripted upstream ({client.info.dialect} wire); client: {how}"

            def send(base_url: str, client: Client = client, tape: str = tape) -> str:
                # the recorder's upstream has no base path, so its base URL is the origin; drivers take /v1
                outcome = asyncio.run(run_client(client, base_url.rstrip("/") + "/v1", QUESTION, timeout=10))
                if outcome.error:
                    raise SystemExit(f"{tape}: the client failed: {outcome.error}")
                return outcome.text

            got = record(tape, upstream.origin, db, note, send)
            print(f"   the client got: {got!r}")
            if got != ANSWER:
                raise SystemExit(f"{tape}: the client did not get the whole answer")
            subprocess.run([sys.executable, "-m", "streamreplay.cli", "export", tape, "--db", str(db),
                            "-o", str(ROOT / "streamreplay" / "tapes" / f"{tape}.jsonl")], check=True)


if __name__ == "__main__":
    main()
