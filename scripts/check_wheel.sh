#!/usr/bin/env bash
# Install streamreplay as a user does, from its wheel, into a fresh virtual environment outside the
# checkout, and run what the README promises there: --version, the demo, a record/play round trip
# around an app, and a pytest run of a tiny project with the plugin. A package-data line missing from
# pyproject.toml fails here, not on a user's machine.
#
#     scripts/check_wheel.sh            (.ci/run runs it after the tests)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
WORK="$(mktemp -d)"
trap 'kill "${UPSTREAM_PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
say() { echo "check_wheel: $*"; }

say "building the sdist and the wheel (python -m build)"
[ -e "$ROOT/build" ] && had_build=1 || had_build=0
"$PYTHON" -m build --sdist --wheel --outdir "$WORK/dist" "$ROOT" > "$WORK/build.log" 2>&1 \
    || { cat "$WORK/build.log"; exit 1; }
[ "$had_build" = 1 ] || rm -rf "$ROOT/build"  # setuptools' scratch folder: leave the checkout as it was
WHEEL="$(ls "$WORK"/dist/streamreplay-*.whl)"
ls "$WORK"/dist/streamreplay-*.tar.gz > /dev/null
say "built $(basename "$WHEEL") and its sdist"

say "installing the wheel with its autogen extra into a fresh venv outside the checkout"
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q "$WHEEL[autogen]" pytest 2>&1 | grep -v "^WARNING: Location" || true
export PATH="$WORK/venv/bin:$PATH"
cd "$WORK"  # no checkout here: everything must come from the installed package
unset PYTHONPATH STREAMREPLAY_DB OPENAI_API_KEY OPENAI_BASE_URL

want="$(grep -o '__version__ = "[^"]*"' "$ROOT/streamreplay/__init__.py" | cut -d'"' -f2)"
got="$(streamreplay --version)"
[[ "$got" == *"version $want" ]] || { say "--version says '$got', the source says $want"; exit 1; }
[[ "$(python -c 'from importlib.metadata import version; print(version("streamreplay"))')" == "$want" ]]
say "--version: $got"

streamreplay demo > demo.log || { cat demo.log; exit 1; }
grep -q "Replay any fault yourself" demo.log
say "demo ran from the bundled tapes"

python - > upstream.url <<'EOF' &
import time
from streamreplay.testing import Script, ScriptedUpstream
with ScriptedUpstream(Script(text="Hello from the scripted upstream", gap=0.01)) as upstream:
    print(upstream.base_url, flush=True)
    time.sleep(600)
EOF
UPSTREAM_PID=$!
until [ -s upstream.url ]; do sleep 0.1; done
cat > app.py <<'EOF'
import openai
stream = openai.OpenAI(max_retries=0).chat.completions.create(
    model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "Say hello"}])
print("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
EOF
OPENAI_API_KEY=sk-check streamreplay record --upstream "$(cat upstream.url)" --db round.db --tape round \
    -- python app.py > recorded.out 2> recorded.err
kill "$UPSTREAM_PID"
streamreplay play --db round.db -- python app.py > played.out 2> played.err
cmp recorded.out played.out
grep -q "Hello from the scripted upstream" played.out
grep -q "served 1 request" played.err
say "record -- app, then play -- app offline: the same answer ($(cat played.out))"

mkdir -p project
(cd project && streamreplay tapes --copy recordings > /dev/null)  # recordings/ is the plugin's default
cat > project/test_app.py <<'EOF'
import openai
import pytest


@pytest.mark.streamreplay("openai-happy-path", fault="cut:chunk=5")
def test_a_cut_answer_arrives_short(streamreplay):
    client = openai.OpenAI(base_url=streamreplay.base_url, api_key="unused", max_retries=0)
    stream = client.chat.completions.create(model="smollm2", temperature=0, max_tokens=60, stream=True,
                                            messages=[{"role": "user", "content": "Name three colors of the rainbow."}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert 0 < len(text) < 40
EOF
(cd project && CI=1 python -m pytest -q -p no:cacheprovider) > pytest.out \
    || { cat pytest.out; exit 1; }
grep -q "1 passed" pytest.out
say "a user project's test replayed a bundled tape through the plugin"
say "ok"
