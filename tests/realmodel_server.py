"""Start and stop the real local model server (scripts/real-upstream.sh) for the `realmodel` test tier.

Not a test module: a fixture imports these. The script builds and caches everything outside the repo
(first run: usually 4-9 minutes to build llama-cpp-python), reuses a server that is already running, and
fails loudly; a failure here raises instead of skipping, so a broken build fails the tier.

Inside a pytest run the server is leased, not just started: tests/conftest.py puts the pid of the run's
main process (the xdist controller, or pytest itself without xdist) in HOLDER_ENV, every worker acquires
the server for that pid, and the main process releases it when the run ends. The release stops the
server unless it was running before the run (or another live run still holds it), so a test run never
leaves a server behind that it started. scripts/test.sh leases it the same way for its own pid.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "real-upstream.sh"

#: the pid the server is acquired for inside a test run (set by tests/conftest.py)
HOLDER_ENV = "STREAMREPLAY_REAL_UPSTREAM_HOLDER"


def _run(*args: str, timeout: float) -> str:
    # stderr is not captured: the script's progress (and a failed build's log tail) shows up under
    # pytest -s and in CI logs; a failure raises CalledProcessError with the exit code.
    done = subprocess.run(
        ["bash", str(SCRIPT), *args], stdout=subprocess.PIPE, text=True, check=True, timeout=timeout
    )
    return done.stdout


def _lease(holder: int | str) -> Path:
    """The script's lease file for holder (scripts/real-upstream.sh: $CACHE/leases/PID)."""
    cache = os.environ.get("STREAMREPLAY_CACHE") or Path.home() / ".cache" / "streamreplay"
    return Path(cache) / "leases" / str(holder)


def real_upstream_url() -> str:
    """Start the server if it is not running and return its base_url, e.g. http://127.0.0.1:N/v1.

    In a test run (HOLDER_ENV set) the server is acquired for the run's main process; elsewhere (e.g.
    scripts/record_bundled.py) it is started and left running, as `real-upstream.sh start` does."""
    holder = os.environ.get(HOLDER_ENV)
    command = ("acquire", holder) if holder else ("start",)
    lines = _run(*command, timeout=1800).strip().splitlines()
    if not lines or not lines[-1].startswith("http://"):
        raise RuntimeError(f"{SCRIPT} {' '.join(command)} printed no base_url: {lines!r}")
    return lines[-1]


def release_real_upstream(holder: int) -> None:
    """holder is done with the server: stop it unless it was running before or is still held elsewhere.

    A no-op, without running the script, when holder never acquired it (no realmodel test ran)."""
    if _lease(holder).exists():
        _run("release", str(holder), timeout=60)


def stop_real_upstream() -> None:
    """Stop the server, whoever started it (no-op if none is running)."""
    _run("stop", timeout=60)
