#!/usr/bin/env bash
# The whole test suite, set-up included: the README's test command and what .ci/run calls.
#
#   scripts/test.sh [PYTEST_ARGS...]   set up what is missing, then python -m pytest -q -n 3 --dist worksteal PYTEST_ARGS
#   scripts/test.sh --setup-only       only steps 1 and 2 (.ci/run lints in between)
#
# 1. .venv with the project and its test extras (pip install -e ".[test]"; skipped while pyproject.toml
#    is unchanged since the last install, a stamp file inside .venv says so)
# 2. Debian's chromium for the timeline page's browser test: apt-get installs it when missing and we
#    are root; otherwise this prints the command to run and stops before any test runs
# 3. the real local model server the realmodel tier records from (scripts/real-upstream.sh acquire);
#    the first time it builds llama-cpp-python from source, usually 4-9 minutes on 2 cores, once,
#    cached in ~/.cache/streamreplay; a line every 30 s says how long it has been going.
#    STREAMREPLAY_REAL_UPSTREAM already set: that server is used instead and nothing is started.
# 4. python -m pytest -q -n 3 --dist worksteal PYTEST_ARGS, with STREAMREPLAY_REAL_UPSTREAM set (an INTERNALERROR in its output fails
#    the run even when pytest-xdist exits 0). Three workers on two cores:
#    about a third of a worker's time is spent waiting on the clock (streams replayed on their recorded
#    timing, timeouts run out), which a third worker fills (the whole suite: 235 s with -n 3; with -n 2 it
#    took 267 s before the last 900 of its tests were added). Worksteal: an idle worker takes tests queued for a
#    busy one, so the half-minute bisect and plugin tests do not leave two workers idle at the end (255 s against
#    294 s for the same 2289 tests, side by side on this machine)
# On exit the model server is stopped, unless it was running before (or another run still uses it).
# The exit status is pytest's (or 1 when the set-up failed).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "test.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

PY=.venv/bin/python

ensure_venv() {
    if [[ ! -x $PY ]]; then
        say "creating .venv"
        python3 -m venv .venv || die "python3 -m venv failed (on Debian/Ubuntu: apt-get install -y python3-venv)"
    fi
    # Keyed on what the install depends on: pyproject.toml, this checkout's path (the install is
    # editable), and the interpreter.
    local want stamp=.venv/.streamreplay-test-install
    want=$({ sha256sum pyproject.toml; pwd; "$PY" -VV; } | sha256sum | cut -d' ' -f1)
    [[ -f $stamp && $(<"$stamp") == "$want" ]] && return
    say "installing the project and its test extras into .venv (pip install -e \".[test]\"; 1-3 min the first time)"
    "$PY" -m pip install -q -e ".[test]" || die "pip install -e \".[test]\" failed"
    echo "$want" >"$stamp"
}

ensure_chromium() {
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 && return
    if ! command -v apt-get >/dev/null 2>&1; then
        say "the timeline page's browser test needs headless Chromium ('chromium' or 'chromium-browser' on PATH)"
        die "no apt-get here: install Chromium with this system's package manager, then run scripts/test.sh again"
    fi
    if [[ $(id -u) != 0 ]]; then
        say "the timeline page's browser test needs Debian's chromium, which is not installed."
        say "Install it (needs root), then run scripts/test.sh again:"
        say ""
        say "    sudo apt-get update && sudo apt-get install -y chromium"
        say ""
        exit 1
    fi
    say "installing Debian's chromium for the timeline page's browser test (apt-get; 1-3 min)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || die "apt-get update failed"
    apt-get install -y -q chromium || die "apt-get install -y chromium failed"
    command -v chromium >/dev/null 2>&1 || die "apt-get installed chromium but there is no 'chromium' on PATH"
}

ensure_venv
ensure_chromium
if [[ ${1:-} == --setup-only ]]; then exit 0; fi

if [[ -n ${STREAMREPLAY_REAL_UPSTREAM:-} ]]; then
    say "using the model server at STREAMREPLAY_REAL_UPSTREAM=$STREAMREPLAY_REAL_UPSTREAM"
else
    # Held by this shell's pid: the EXIT trap's release stops the server unless it was running before
    # (or another run still holds it). Set before acquire, so a start that fails half-way is cleaned too.
    trap 'bash scripts/real-upstream.sh release $$ || true' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    say "starting the real local model server (scripts/real-upstream.sh; the first run builds it, usually 4-9 min)"
    STREAMREPLAY_REAL_UPSTREAM=$(bash scripts/real-upstream.sh acquire $$ | tail -n 1) \
        || die "the real local model server did not start (see above); the realmodel tier needs it"
    export STREAMREPLAY_REAL_UPSTREAM
    say "model server: $STREAMREPLAY_REAL_UPSTREAM"
fi

start=$SECONDS
rc=0
log=$(mktemp)
"$PY" -m pytest -q -n 3 --dist worksteal "$@" 2>&1 | tee "$log" || rc=$?
# pytest-xdist exits 0 after an internal error in a worker (the failing test is never reported): not a pass
if [[ $rc == 0 ]] && grep -q '^INTERNALERROR>' "$log"; then
    say "pytest exited 0 but reported an INTERNALERROR (above): counted as a failure"
    rc=3
fi
rm -f "$log"
say "pytest exited $rc after $((SECONDS - start)) s"
exit "$rc"
