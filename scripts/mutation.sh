#!/usr/bin/env bash
# Mutation testing of one core module with mutmut 3.x, on a scratch copy of the checkout.
#
#   scripts/mutation.sh MODULE [MUTMUT_RUN_ARGS...]    e.g. scripts/mutation.sh streamreplay/requestkey.py
#   scripts/mutation.sh --list                         the modules it knows and the tests each runs
#
# - mutmut is NOT a project dependency: when .venv lacks it, this installs it into .venv with pip (said on stderr).
# - The checkout is never mutated: its files (tracked and untracked-but-not-ignored, as they are in the work tree)
#   are copied to a scratch directory; mutmut's config is a setup.cfg written there (pyproject.toml has no
#   [tool.mutmut]); mutmut itself works in that copy's mutants/ directory.
# - Only the fast tests aimed at MODULE run against its mutants (the TESTS map below), with mutmut's per-mutant
#   timeout: (the mutant's tests' clean time + MUTATION_TIMEOUT_CONSTANT s) * MUTATION_TIMEOUT_MULTIPLIER.
# - Prints the killed / survived / timeout / no-tests counts, the score (killed + timeout) / (all - skipped),
#   the wall time, and the surviving mutants' names; `mutmut show NAME` in the scratch directory shows one.
# - MUTATION_KEEP=1 keeps the scratch directory (its path is printed); MUTATION_JOBS (default: CPU count) sets
#   mutmut's --max-children.
# It is slow (minutes per module), so it is not part of the per-commit CI; run it by hand after changing the core.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
say() { echo "mutation.sh: $*" >&2; }

# module -> the fast tests that target it (space-separated, relative to the checkout)
declare -A TESTS=(
    [streamreplay/requestkey.py]="tests/test_matching_units.py"
    [streamreplay/replay/matching.py]="tests/test_matching_units.py"
    [streamreplay/replay/request.py]="tests/test_replay_units.py tests/test_matching_units.py"
    [streamreplay/replay/schedule.py]="tests/test_schedule_units.py tests/test_endcause.py"
    [streamreplay/replay/faults.py]="tests/test_fault_specs.py tests/test_schedule_units.py"
    [streamreplay/replay/options.py]="tests/test_replay_units.py tests/test_options.py"
    [streamreplay/replay/onmiss.py]="tests/test_replay_units.py tests/test_options.py tests/test_record_on_miss.py"
    [streamreplay/replay/source.py]="tests/test_replay_units.py tests/test_cassette.py tests/test_replay_memory.py"
    [streamreplay/replay/replayed.py]="tests/test_replay_units.py tests/test_replay.py"
    [streamreplay/replay/server.py]="tests/test_replay_server_units.py"
    [streamreplay/proxy/endings.py]="tests/test_endings_units.py tests/test_causes.py tests/test_record.py"
    [streamreplay/proxy/recorder.py]="tests/test_recorder_units.py"
    [streamreplay/proxy/routes.py]="tests/test_routes_units.py tests/test_record.py tests/test_replay.py"
    [streamreplay/sse.py]="tests/test_sse.py"
    [streamreplay/cassette.py]="tests/test_cassette_units.py tests/test_cassette.py"
    [streamreplay/diagnose.py]="tests/test_diagnose_units.py tests/test_diagnose.py"
    [streamreplay/bisect.py]="tests/test_bisect_units.py tests/test_bisect.py"
    [streamreplay/dialects/base.py]="tests/test_dialect_units.py"
    [streamreplay/dialects/chat.py]="tests/test_dialect_units.py"
    [streamreplay/dialects/anthropic.py]="tests/test_dialect_units.py"
    [streamreplay/dialects/responses.py]="tests/test_dialect_units.py"
    [streamreplay/dialects/ollama.py]="tests/test_dialect_units.py"
    [streamreplay/dialects/azure.py]="tests/test_dialect_units.py"
    [streamreplay/guard/check.py]="tests/test_guard_units.py"
    [streamreplay/guard/cutoffs.py]="tests/test_guard_units.py"
    [streamreplay/drift.py]="tests/test_drift_units.py"
    [streamreplay/prune.py]="tests/test_prune_units.py"
    [streamreplay/settings.py]="tests/test_settings_units.py"
    [streamreplay/redact.py]="tests/test_redact_units.py"
    [streamreplay/endcause.py]="tests/test_endcause.py"
    [streamreplay/exchange.py]="tests/test_exchange_model.py"
    [streamreplay/replay/storeindex.py]="tests/test_storeindex_units.py"
    [streamreplay/report.py]="tests/test_report_units.py"
    [streamreplay/pytest_plugin.py]="tests/test_plugin_units.py"
    [streamreplay/guard/transport.py]="tests/test_guard_transport_units.py"
    [streamreplay/guard/wrap.py]="tests/test_guard_transport_units.py tests/test_guard.py"
    [streamreplay/wrap.py]="tests/test_wrap_units.py"
    [streamreplay/repro_plan.py]="tests/test_repro_plan_units.py"
    [streamreplay/summary.py]="tests/test_summary_units.py"
    [streamreplay/clientcheck.py]="tests/test_clientcheck_units.py"
    [streamreplay/ui.py]="tests/test_ui_units.py"
    [streamreplay/store/maintenance.py]="tests/test_maintenance_units.py"
    [streamreplay/timeline/model.py]="tests/test_timeline_units.py tests/test_endcause.py tests/test_ui_units.py"
    [streamreplay/store/writer.py]="tests/test_writer_units.py tests/test_prune_units.py"
    [streamreplay/serving.py]="tests/test_serving_units.py"
    [streamreplay/clientid.py]="tests/test_clientid_units.py tests/test_repro_plan_units.py"
    [streamreplay/store/database.py]="tests/test_database_units.py tests/test_storeindex_units.py"
    [streamreplay/repro_runtime.py]="tests/test_repro_runtime_units.py"
)

if [[ ${1:-} == --list ]]; then
    for m in "${!TESTS[@]}"; do echo "$m: ${TESTS[$m]}"; done | sort
    exit 0
fi
MODULE=${1:?usage: scripts/mutation.sh MODULE [MUTMUT_RUN_ARGS...]  (scripts/mutation.sh --list)}
shift
[[ -n ${TESTS[$MODULE]:-} ]] || { say "no tests mapped for $MODULE (scripts/mutation.sh --list)"; exit 2; }
[[ -f $MODULE ]] || { say "no such file: $MODULE"; exit 2; }

if ! "$PY" -c "import mutmut" 2>/dev/null; then
    say "mutmut is not installed in .venv: installing it (pip install 'mutmut>=3.8,<4'); not a project dependency"
    "$PY" -m pip install -q 'mutmut>=3.8,<4'
fi

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/streamreplay-mutation.XXXXXX")
if [[ ${MUTATION_KEEP:-0} == 1 ]]; then
    say "scratch copy kept in $SCRATCH"
else
    trap 'rm -rf "$SCRATCH"' EXIT
fi
git ls-files -z --cached --others --exclude-standard \
    | (while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done) \
    | tar --null -T - -cf - | tar -xf - -C "$SCRATCH"

{
    echo "[mutmut]"
    echo "source_paths = streamreplay"
    echo "only_mutate = $MODULE"
    echo "pytest_add_cli_args_test_selection ="
    for t in ${TESTS[$MODULE]}; do echo "    $t"; done
    echo "pytest_add_cli_args ="
    echo "    -p"
    echo "    no:cacheprovider"
    echo "also_copy ="  # what tests read besides tests/ and the package (the README's tables, docs, recordings)
    for f in README.md LICENSE docs recordings scripts bench; do [[ -e $f ]] && echo "    $f"; done
    echo "timeout_multiplier = ${MUTATION_TIMEOUT_MULTIPLIER:-10}"
    echo "timeout_constant = ${MUTATION_TIMEOUT_CONSTANT:-2}"
    echo "use_git_change_detection = false"
} >"$SCRATCH/setup.cfg"

cd "$SCRATCH"
say "mutating $MODULE with $(${PY} -m pip show mutmut 2>/dev/null | sed -n 's/^Version: /mutmut /p'), tests: ${TESTS[$MODULE]}"
start=$(date +%s)
status=0
"$ROOT/.venv/bin/mutmut" run --max-children "${MUTATION_JOBS:-$(nproc)}" "$@" >"$SCRATCH/mutmut-run.log" 2>&1 || status=$?
elapsed=$(( $(date +%s) - start ))
if (( status != 0 )); then
    tail -n 40 "$SCRATCH/mutmut-run.log" >&2
    say "mutmut run failed (exit $status); full log: $SCRATCH/mutmut-run.log"
    exit "$status"
fi
"$ROOT/.venv/bin/mutmut" export-cicd-stats >/dev/null
"$PY" - "$MODULE" "$elapsed" <<'EOF'
import json, sys
s = json.load(open("mutants/mutmut-cicd-stats.json"))
tested = s["total"] - s["skipped"]
score = 100.0 * (s["killed"] + s["timeout"]) / tested if tested else 0.0
print(f"{sys.argv[1]}: {s['total']} mutants: killed {s['killed']}, survived {s['survived']}, "
      f"timeout {s['timeout']}, no tests {s['no_tests']}, suspicious {s['suspicious']}, skipped {s['skipped']}; "
      f"score {score:.1f}% in {sys.argv[2]} s")
EOF
"$ROOT/.venv/bin/mutmut" results | sed 's/^ */survivor: /' | grep -v ': killed$' || true
