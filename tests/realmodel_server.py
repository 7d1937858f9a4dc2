"""Start and stop the real local model server (scripts/real-upstream.sh) for the `realmodel` test tier.

Not a test module: a fixture imports these. The script builds and caches everything outside the repo
(first run: up to ~5 minutes to build llama-cpp-python), reuses a server that is already running, and
fails loudly; a failure here raises instead of skipping, so a broken build fails the tier.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "real-upstream.sh"


def _run(command: str, timeout: float) -> str:
    # stderr is not captured: the script's progress (and a build's pip output) shows up under pytest -s
    # and in CI logs; a failure raises CalledProcessError with the exit code.
    done = subprocess.run(
        ["bash", str(SCRIPT), command], stdout=subprocess.PIPE, text=True, check=True, timeout=timeout
    )
    return done.stdout


def real_upstream_url() -> str:
    """Start the server if it is not running and return its base_url, e.g. http://127.0.0.1:N/v1."""
    lines = _run("start", timeout=1800).strip().splitlines()
    if not lines or not lines[-1].startswith("http://"):
        raise RuntimeError(f"{SCRIPT} start printed no base_url: {lines!r}")
    return lines[-1]


def stop_real_upstream() -> None:
    """Stop the server started by real_upstream_url() (no-op if none is running)."""
    _run("stop", timeout=60)
