"""The benchmark runs at a tiny size so it cannot rot. Nothing here asserts a time: only that every
figure is produced and that no chunk was lost, reordered or stored differently."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_bench_runs_tiny_and_loses_nothing(tmp_path: Path):
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--tiny", "--no-peers", "--out", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert set(results["targets"]) == {"direct", "streamreplay record"}
    assert results["checks"][0]["mismatched"] == 0 and results["checks"][0]["streams"] > 0
    for target in results["targets"].values():
        assert all(scenario["lost_or_reordered"] == 0 for scenario in target.values())
    assert results["replay"]["speed0_events"] > 0 and results["memory"]["big_stream_mb"] > 0
    assert "PASS  chunks lost or reordered" in done.stdout


def test_the_big_db_bench_runs_tiny_and_every_figure_is_there(tmp_path: Path):
    out = tmp_path / "bigdb.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bigdb.py"), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert [r["exchanges"] for r in results["sizes"]] == [20, 100]
    for r in results["sizes"]:  # every lookup answered (a miss raises in the bench), every command ran
        assert r["play"]["lookup_p99_ms"] > 0 and r["ls20_rss_mb"] > 0 and r["import_rss_mb"] > 0
    assert done.stdout.count("PASS") + done.stdout.count("MISS") == 6


def test_the_guard_bench_runs_tiny_and_prints_its_verdict():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "guard.py"), "--tiny"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "guard(stream) adds" in done.stdout and "guard(stream) cost per chunk" in done.stdout
