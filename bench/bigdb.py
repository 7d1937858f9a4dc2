"""A DB that grew for weeks: what `play`, `ls`, `export` and `import` cost at 1,000, 10,000 and 100,000
exchanges, side by side with an empty DB's.

    python bench/bigdb.py               # 1,000, 10,000 and 100,000 exchanges (about two minutes)
    python bench/bigdb.py --tiny        # 20 and 100: seconds (the suite runs this)

Each DB is one real recording (a bundled tape's exchange, 10 chunks) copied N times with a different
prompt each, its request key computed as the writer computes it, so every copy is a distinct request
replay can be asked for. Measured, each in a fresh process:
- play: seconds from start to its banner, and its RSS then, against an empty DB's (the figure that
  must not grow with the DB); then the time from each request to its first byte (speed 0, random
  recordings), whose p99 bounds a lookup;
- ls --limit 20, and ls of everything (wall seconds and peak RSS);
- export of the whole tape, and import of that cassette into a new DB (peak RSS).
The start-up of a Python CLI alone (`streamreplay --version`) is printed as the floor under every time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLI = [PY, "-m", "streamreplay.cli"]
TAPE = "grown"

#: (what, limit): start-up times are what the DB adds to a CLI's own start (an empty DB's, `--version`),
#: which on a busy 2-core machine is itself 0.4-1.5 s and does not depend on the DB
TARGETS = [("play start over an empty DB's, s", 0.5), ("play RSS over an empty DB's, MB", 20),
           ("lookup p99 (request to first byte), ms", 5), ("ls --limit 20 over --version, s", 0.3),
           ("export peak RSS, MB", 100), ("import peak RSS, MB", 100)]


def make_db(path: Path, n: int) -> None:
    """`n` copies of one recorded exchange, each asking something else."""
    from streamreplay.bundled import bundled_tapes
    from streamreplay.cassette import import_cassette
    from streamreplay.requestkey import request_key
    from streamreplay.store import Store

    cassette = next(p for p in bundled_tapes() if p.name.startswith("ag2-happy-path"))
    import_cassette(cassette, path, TAPE)
    store = Store(path)
    db = store.db
    row = dict(next(db.query("select * from exchanges")))
    chunks = list(db.execute("select idx, t_ns, data from chunks where exchange_id = ?", [row["id"]]))
    body = json.loads(row["request_body"])
    with db.conn:
        for k in range(1, n):
            body["messages"][-1]["content"] = f"question {k}"
            text = json.dumps(body)
            new = {**row, "id": None, "seq": k, "request_body": text,
                   "request_key": request_key(row["method"], row["path"], text.encode())}
            cur = db.conn.execute(f"insert into exchanges ({', '.join(new)}) values ({', '.join('?' * len(new))})",
                                  list(new.values()))
            db.conn.executemany("insert into chunks (exchange_id, idx, t_ns, data) values (?, ?, ?, ?)",
                                [(cur.lastrowid, *c) for c in chunks])
    store.db.conn.close()


def peak_rss_mb(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of a command, run alone in a fresh process that measures it."""
    probe = ("import resource, subprocess, sys, time; t = time.monotonic(); "
             "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True); "
             "print(time.monotonic() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([PY, "-c", probe, *argv], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), int(out[1]) / 1024


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def play(db: Path, n: int, requests: int) -> dict[str, float]:
    started = time.monotonic()
    proc = subprocess.Popen([*CLI, "play", "--db", str(db), "--port", "0", "--speed", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        start_s = time.monotonic() - started
        match = re.search(r"base_url (http://\S+)", line)
        if not match:
            raise RuntimeError(f"play did not start: {line!r}")
        rss = rss_mb(proc.pid)
        lookups = asyncio.run(_lookups(match.group(1), n, requests)) if n else []
        return {"start_s": start_s, "rss_mb": rss, "lookup_p99_ms": _p99(lookups), "rss_after_mb": rss_mb(proc.pid)}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _lookups(base_url: str, n: int, requests: int) -> list[float]:
    import aiohttp

    from streamreplay.bundled import bundled_tapes
    from streamreplay.cassette import read_cassette

    cassette = next(p for p in bundled_tapes() if p.name.startswith("ag2-happy-path"))
    body = json.loads(read_cassette(cassette)[1][0].request_body)
    rnd = random.Random(1)
    times = []
    async with aiohttp.ClientSession() as session:
        for _ in range(requests):
            k = rnd.randrange(1, n) if n > 1 else 0
            body["messages"][-1]["content"] = f"question {k}" if k else body["messages"][-1]["content"]
            t = time.monotonic()
            async with session.post(f"{base_url}/chat/completions", json=body) as resp:
                await resp.content.readany()
                times.append((time.monotonic() - t) * 1e3)
                if resp.status != 200:
                    raise RuntimeError(f"request {k} got {resp.status}: {await resp.text()}")
                await resp.read()
    return times


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan")


def measure(work: Path, n: int, requests: int) -> dict[str, Any]:
    db = work / f"grown-{n}.db"
    if n:
        make_db(db, n)
    else:
        from streamreplay.store import Store

        Store(db).db.conn.close()
    size = sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    out: dict[str, Any] = {"exchanges": n, "db_mb": size / 1e6, "play": play(db, n, requests)}
    if n:
        out["ls20_s"], out["ls20_rss_mb"] = peak_rss_mb([*CLI, "ls", "--db", str(db), "--limit", "20"])
        out["ls_s"], out["ls_rss_mb"] = peak_rss_mb([*CLI, "ls", "--db", str(db)])
        cassette = work / f"grown-{n}.jsonl"
        out["export_s"], out["export_rss_mb"] = peak_rss_mb([*CLI, "export", TAPE, "--db", str(db),
                                                             "-o", str(cassette)])
        out["import_s"], out["import_rss_mb"] = peak_rss_mb([*CLI, "import", str(cassette), "--db",
                                                             str(work / f"again-{n}.db")])
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="20 and 100 exchanges: seconds")
    parser.add_argument("--out", help="also write the figures here as JSON")
    args = parser.parse_args()
    sizes = (20, 100) if args.tiny else (1000, 10_000, 100_000)
    work = Path(tempfile.mkdtemp(prefix="streamreplay-bigdb-"))
    try:
        floor, _ = peak_rss_mb([*CLI, "--version"])
        empty = measure(work, 0, 0)
        rows = []
        for n in sizes:
            print(f"measuring {n} exchanges ...", file=sys.stderr)
            rows.append(measure(work, n, 10 if args.tiny else 300))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(render(floor, empty, rows))
    if args.out:
        report = {"cli_floor_s": floor, "empty": empty, "sizes": rows}
        Path(args.out).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


def render(floor: float, empty: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [f"`streamreplay --version` alone: {floor:.2f} s; play of an empty DB: starts in "
             f"{empty['play']['start_s']:.2f} s, RSS {empty['play']['rss_mb']:.1f} MB", ""]
    head = ("exchanges", "DB MB", "play start s", "play RSS MB", "lookup p99 ms", "ls -l 20 s", "ls all s",
            "ls all MB", "export MB", "import MB")
    lines.append("  ".join(f"{h:>13}" for h in head))
    for r in rows:
        p = r["play"]
        cells = (r["exchanges"], r["db_mb"], p["start_s"], p["rss_mb"], p["lookup_p99_ms"], r["ls20_s"], r["ls_s"],
                 r["ls_rss_mb"], r["export_rss_mb"], r["import_rss_mb"])
        lines.append("  ".join(f"{c:>13,}" if isinstance(c, int) else f"{c:>13.2f}" for c in cells))
    big = rows[-1]
    got = [big["play"]["start_s"] - empty["play"]["start_s"], big["play"]["rss_mb"] - empty["play"]["rss_mb"],
           big["play"]["lookup_p99_ms"], big["ls20_s"] - floor, big["export_rss_mb"], big["import_rss_mb"]]
    lines.append("")
    for (what, limit), value in zip(TARGETS, got, strict=True):
        lines.append(f"{'PASS' if value < limit else 'MISS'}  {what:<40} at {big['exchanges']:,} exchanges: "
                     f"{value:.2f} (target < {limit:g})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
