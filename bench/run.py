"""The benchmark: streamreplay's proxy and replay measured side by side with the direct connection and
with the proxies a user would otherwise pick (mitmproxy, aimock), in one run on this machine.

    python bench/run.py                   # full size; installs the peers into ~/.cache/streamreplay
    python bench/run.py --tiny            # seconds; what the test suite runs so this cannot rot
    python bench/run.py --replay-memory   # only `play`'s RSS while it serves the same exchanges round after round
    python bench/run.py --cost-curve      # only the daemons' CPU per chunk and per MB, 1 to 500 streams; draws an SVG

Upstream, clients and daemons run in separate processes. Loopback only; every load is bounded.
Prints a table with PASS/MISS against the targets and writes bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = Path(os.environ.get("STREAMREPLAY_CACHE", Path.home() / ".cache" / "streamreplay"))
PY = sys.executable
sys.path.insert(0, str(ROOT))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


class Daemon:
    """A process started for the bench, its address, and its memory sampled while it runs."""

    def __init__(self, name: str, argv: list[str], parse: str, env: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        self.name = name
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env={**os.environ, **(env or {})})
        if port is None:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            match = re.search(parse, line)
            if not match:
                self.stop()
                raise RuntimeError(f"{name} did not start: {line!r}")
            self.base_url = match.group(1) if "http" in parse else f"http://127.0.0.1:{match.group(1)}/v1"
        else:
            self.base_url = f"http://127.0.0.1:{port}/v1"
            _wait_port(port)
        # a daemon logs a line per exchange: unread, the pipe fills and the daemon blocks on its next print
        threading.Thread(target=_drain, args=(self.proc.stdout,), daemon=True).start()
        self.peak_rss = 0
        self.samples: list[tuple[float, int]] = []
        self._sampling = False

    def rss(self) -> int:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text(encoding="utf-8").splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except FileNotFoundError:
            pass
        return 0

    def sample(self) -> _Sampler:
        return _Sampler(self)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Sampler:
    """Samples a daemon's RSS every 20 ms while a block runs."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon, self.samples, self._stop = daemon, [], threading.Event()

    def __enter__(self) -> _Sampler:
        started = time.monotonic()

        def loop() -> None:
            while not self._stop.is_set():
                self.samples.append((time.monotonic() - started, self.daemon.rss()))
                self._stop.wait(0.02)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max((r for _, r in self.samples), default=0)


def _drain(stream: Any) -> None:
    for _ in stream:
        pass


def _wait_port(port: int, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client(base_url: str, streams: int, chunks: int, gap_ms: float = 0, size: int = 64, jitter_ms: float = 0,
           reads: bool = False, distinct: bool = True, seed: int = 0, rounds: int = 1) -> dict[str, Any]:
    argv = [PY, str(HERE / "client.py"), base_url, "--streams", str(streams), "--chunks", str(chunks),
            "--gap-ms", str(gap_ms), "--size", str(size), "--jitter-ms", str(jitter_ms), "--seed", str(seed)]
    argv += ["--rounds", str(rounds)] if rounds != 1 else []
    argv += ["--reads"] if reads else []
    argv += ["--distinct"] if distinct else []
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout)


def ttfb_probe(targets: dict[str, str], requests: int, warmup: int) -> dict[str, dict[str, float]]:
    """Time to first byte at 1 stream, many samples: `requests` sequential streams per target after
    `warmup` rounds, the targets taken in turn within one client process. One sample per run (the
    daemon's first request) moved by a millisecond from run to run; the median of hundreds does not."""
    argv = [PY, str(HERE / "client.py"), *targets.values(), "--ttfb", str(requests), "--warmup", str(warmup),
            "--chunks", "5"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True)
    probe = json.loads(done.stdout)
    out = {}
    for name, url in targets.items():
        ms = [x / 1e6 for x in probe["ttfb_ns"][url]]
        out[name] = {"p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "samples": len(ms),
                     "lost_or_reordered": 0 if probe["in_order"] else 1}
    return out


def latency_stats(run: dict[str, Any]) -> dict[str, float]:
    lat = [x / 1e6 for s in run["streams"] for x in s["latencies_ns"]]
    ttfb = [s["ttfb_ns"] / 1e6 for s in run["streams"]]
    return {"ttfb_p50_ms": pct(ttfb, 50), "ttfb_p99_ms": pct(ttfb, 99), "chunk_p50_ms": pct(lat, 50),
            "chunk_p99_ms": pct(lat, 99), "lost_or_reordered": sum(not s["in_order"] for s in run["streams"])}


def throughput_stats(run: dict[str, Any], size: int) -> dict[str, float]:
    events = sum(s["events"] for s in run["streams"])
    seconds = run["elapsed_ns"] / 1e9
    return {"chunks_per_s": events / seconds, "mb_per_s": events * size / seconds / 1e6,
            "lost_or_reordered": sum(not s["in_order"] for s in run["streams"])}


# -- the peers -----------------------------------------------------------------------------------------

def mitmproxy_argv(upstream_origin: str, port: int) -> list[str] | None:
    venv = CACHE / "mitm-venv"
    exe = venv / "bin" / "mitmdump"
    if not exe.exists():
        print("installing mitmproxy 11.0.2 into", venv, file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        result = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "mitmproxy==11.0.2"])
        if result.returncode != 0:
            return None
    return [str(exe), "--mode", f"reverse:{upstream_origin}", "-p", str(port), "--set", "stream_large_bodies=1",
            "-q"]


def aimock_argv(upstream_origin: str, port: int, fixtures: Path) -> list[str] | None:
    if not shutil.which("node") or not shutil.which("npm"):
        print("node is not installed: aimock skipped", file=sys.stderr)
        return None
    prefix = CACHE / "aimock"
    cli = prefix / "node_modules" / "@copilotkit" / "aimock" / "dist" / "cli.js"
    if not cli.exists():
        print("installing @copilotkit/aimock 1.43.0 into", prefix, file=sys.stderr)
        result = subprocess.run(["npm", "install", "--silent", "--prefix", str(prefix), "@copilotkit/aimock@1.43.0"])
        if result.returncode != 0 or not cli.exists():
            return None
    fixtures.mkdir(parents=True, exist_ok=True)
    return ["node", str(cli), "-p", str(port), "-f", str(fixtures), "--proxy-only", "--provider-openai",
            upstream_origin]


# -- the run --------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="a few seconds: the suite runs this")
    parser.add_argument("--no-peers", action="store_true", help="skip mitmproxy and aimock")
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument("--replay-memory", action="store_true",
                        help="only play's RSS over rounds of the same exchanges (prints; writes no results)")
    parser.add_argument("--cost-curve", action="store_true",
                        help="only CPU per chunk and per MB of each daemon at 1-500 streams (adds 'cost_curve' to "
                             "--out, writes docs/cost-curve.svg)")
    args = parser.parse_args()
    tiny = args.tiny
    if args.replay_memory:
        return replay_memory_only(tiny)
    if args.cost_curve:
        return cost_curve_only(Path(args.out), no_peers=args.no_peers)
    size = {
        "lat_chunks": 40 if tiny else 500, "lat_gap": 2 if tiny else 5, "lat_streams": (5,) if tiny else (50, 100),
        "fast_chunks": 500 if tiny else 10_000, "many": 10 if tiny else 200, "many_chunks": 50 if tiny else 500,
        "replay_chunks": 10 if tiny else 120, "replay_streams": 5 if tiny else 100,
        "mem_streams": (1, 5) if tiny else (1, 100, 500), "mem_chunks": 50 if tiny else 200,
        "big_chunks": 80 if tiny else 3200,
        "best_of": 1 if tiny else 3,
        "ttfb_requests": 20 if tiny else 200, "ttfb_warmup": 3 if tiny else 20,
        **replay_memory_size(tiny),
    }
    work = Path(tempfile.mkdtemp(prefix="streamreplay-bench-"))
    results: dict[str, Any] = {"tiny": tiny, "targets": {}, "replay": {}, "memory": {}, "checks": []}
    upstream = Daemon("upstream", [PY, str(HERE / "upstream.py")], r"^(\d+)")
    origin = upstream.base_url[: -len("/v1")]
    daemons: list[Daemon] = [upstream]
    try:
        targets: dict[str, str] = {"direct": upstream.base_url}
        record = Daemon("record", [PY, "-m", "streamreplay.cli", "record", "--upstream", upstream.base_url,
                                   "--db", str(work / "rec.db"), "--tape", "bench", "--port", "0"],
                        r"base_url (http://\S+)")
        daemons.append(record)
        targets["streamreplay record"] = record.base_url
        if not args.no_peers and not tiny:
            port = _free_port()
            argv = mitmproxy_argv(origin, port)
            if argv:
                daemons.append(Daemon("mitmproxy", argv, "", port=port))
                targets["mitmproxy"] = daemons[-1].base_url
            port = _free_port()
            argv = aimock_argv(origin, port, work / "aimock-fixtures")
            if argv:
                daemons.append(Daemon("aimock", argv, "", port=port))
                targets["aimock"] = daemons[-1].base_url

        for name, base_url in targets.items():
            print(f"measuring {name} ...", file=sys.stderr)
            one = client(base_url, 1, size["lat_chunks"], size["lat_gap"])
            loads = {n: client(base_url, n, size["lat_chunks"], size["lat_gap"]) for n in size["lat_streams"]}
            # throughput is noisy on a shared 2-core box: the best of three runs each (losses count in all);
            # --tiny takes one, as it asserts only that nothing was lost
            fasts = [client(base_url, 1, size["fast_chunks"], 0, size=100) for _ in range(size["best_of"])]
            wides = [client(base_url, size["many"], size["many_chunks"], 0, size=100) for _ in range(size["best_of"])]
            fast = min(fasts, key=lambda run: run["elapsed_ns"])
            wide = min(wides, key=lambda run: run["elapsed_ns"])
            results["targets"][name] = {
                "latency_1": latency_stats(one), **{f"latency_{n}": latency_stats(run) for n, run in loads.items()},
                "throughput_1": throughput_stats(fast, 100), "throughput_many": throughput_stats(wide, 100),
                "all_runs": {"lost_or_reordered": sum(not s["in_order"] for run in [*fasts, *wides]
                                                      for s in run["streams"])},
            }
            if name == "streamreplay record":
                results["checks"].append(_check_store(work / "rec.db", [one, *loads.values(), *fasts, *wides]))
        print("measuring TTFB, sequential requests ...", file=sys.stderr)
        results["ttfb"] = ttfb_probe(targets, size["ttfb_requests"], size["ttfb_warmup"])
        results["store_chunks_per_s"] = _store_rate(work, 20_000 if tiny else 200_000)

        results["replay"] = _replay_fidelity(record, work, size)
        results["memory"] = _memory(upstream, work, size)
        results["replay_memory"] = _replay_memory(upstream, work, size)
    finally:
        for daemon in daemons:
            daemon.stop()
    out = Path(args.out)
    if out.exists():  # the cost curve is its own mode: a full run keeps what it wrote
        kept = json.loads(out.read_text(encoding="utf-8")).get("cost_curve")
        if kept:
            results["cost_curve"] = kept
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(render(results))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _check_store(db: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every stream the client got through `record` is stored byte-identical."""
    import hashlib

    from streamreplay.store import Store

    time.sleep(0.3)  # the writer commits within 50 ms; the last exchanges end as the client closes
    store = Store(db)
    stored = {}
    for ex in store.exchanges(tape="bench"):
        body = b"".join(c.data for c in store.iter_chunks(ex.id))
        stored.setdefault(hashlib.sha256(body).hexdigest(), 0)
        stored[hashlib.sha256(body).hexdigest()] += 1
    received = [s["sha256"] for run in runs for s in run["streams"]]
    missing = [h for h in received if not stored.get(h)]
    return {"what": "client bytes == stored bytes (sha256), every stream through record", "streams": len(received),
            "mismatched": len(missing)}


def _store_rate(work: Path, chunks: int) -> float:
    """The writer thread's capacity: chunks queued as fast as possible, timed until committed."""
    from streamreplay.store import StoreWriter

    writer = StoreWriter(work / "store-rate.db", "rate")
    writer.start()
    data = b"data: " + b"x" * 94 + b"\n\n"
    started = time.monotonic()
    per = 1000
    for _ in range(0, chunks, per):
        handle = writer.begin({"method": "POST", "path": "/chat/completions", "stream": 1, "request_body": b"{}"})
        for i in range(per):
            writer.chunk(handle, i, i, data)
        writer.end(handle, {"end_cause": "complete"})
    writer.flush(timeout=120)
    elapsed = time.monotonic() - started
    writer.close()
    return chunks / elapsed


def _replay_fidelity(record: Daemon, work: Path, size: dict[str, Any]) -> dict[str, Any]:
    from streamreplay.store import Store

    db = work / "fidelity.db"
    rec = Daemon("record-fidelity", [PY, "-m", "streamreplay.cli", "record", "--upstream",
                                     _upstream_of(record), "--db", str(db), "--tape", "real", "--port", "0"],
                 r"base_url (http://\S+)")
    try:
        client(rec.base_url, 1, size["replay_chunks"], 20, jitter_ms=60, distinct=False, seed=7)  # 20-80 ms gaps
        client(rec.base_url, 1, size["fast_chunks"], 0, size=100, distinct=True)  # for the speed-0 replay
    finally:
        rec.stop()
    store = Store(db)
    realistic, fast = store.exchanges(tape="real")
    recorded = [c.t_ns for c in store.chunks(realistic.id)]
    sizes = [len(c.data) for c in store.chunks(realistic.id)]
    out: dict[str, Any] = {}
    # every bench request carries its stream number in "id": the recordings match whatever it is
    play = Daemon("play", [PY, "-m", "streamreplay.cli", "play", "--db", str(db), "--tape", "real", "--speed", "1",
                           "--port", "0", "--ignore-field", "id"], r"base_url (http://\S+)")
    try:
        for label, streams in (("1", 1), ("many", size["replay_streams"])):
            # the same request as recorded, so that every stream matches the realistic recording
            run = client(play.base_url, streams, size["replay_chunks"], 20, jitter_ms=60, reads=True,
                         distinct=False, seed=7)
            errors, first = [], []
            assert all(s["status"] == 200 for s in run["streams"]), "a replay did not match"
            for s in run["streams"]:
                errors += _offset_errors(recorded, sizes, s["reads"])
                first.append(abs(s["reads"][0][0] - recorded[0]) / 1e6)
            out[f"offset_error_{label}"] = {"p50_ms": pct(errors, 50), "p99_ms": pct(errors, 99),
                                            "max_ms": max(errors), "streams": streams,
                                            "first_chunk_p99_ms": pct(first, 99)}
    finally:
        play.stop()
    fast_play = Daemon("play-fast", [PY, "-m", "streamreplay.cli", "play", "--db", str(db), "--speed", "0",
                                     "--port", "0"], r"base_url (http://\S+)")
    try:
        run = client(fast_play.base_url, 1, size["fast_chunks"], 0, size=100, distinct=True)
        out["speed0_seconds"] = run["elapsed_ns"] / 1e9
        out["speed0_chunks"] = fast.chunk_count
        out["speed0_events"] = run["streams"][0]["events"]
    finally:
        fast_play.stop()
    return out


def _upstream_of(record: Daemon) -> str:
    argv = record.proc.args
    return argv[argv.index("--upstream") + 1]  # type: ignore[union-attr]


def _offset_errors(recorded: list[int], sizes: list[int], reads: list[list[int]]) -> list[float]:
    """|delivered - recorded| per chunk, after aligning the stream on its median lateness. A chunk is
    delivered with the read that holds its last byte."""
    ends, total = [], 0
    for n in sizes:
        total += n
        ends.append(total)
    errors, received, r = [], 0, 0
    for chunk_end, t_rec in zip(ends, recorded, strict=True):
        while r < len(reads) and received < chunk_end:
            received += reads[r][1]
            r += 1
        if received < chunk_end:
            break
        errors.append((reads[r - 1][0] - t_rec) / 1e6)
    # aligned on the stream's own median lateness: a stream that starts late (the client was busy
    # opening 99 other connections) is not a schedule error; that start is reported apart
    shift = statistics.median(errors) if errors else 0.0
    return [abs(e - shift) for e in errors]


def _memory(upstream: Daemon, work: Path, size: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for streams in size["mem_streams"]:
        daemon = Daemon("record-mem", [PY, "-m", "streamreplay.cli", "record", "--upstream", upstream.base_url,
                                       "--db", str(work / f"mem{streams}.db"), "--port", "0"], r"base_url (http://\S+)")
        try:
            with daemon.sample() as sampler:
                client(daemon.base_url, streams, size["mem_chunks"], 5, size=200)
            out[f"peak_rss_mb_{streams}_streams"] = sampler.peak / 2**20
        finally:
            daemon.stop()
    daemon = Daemon("record-big", [PY, "-m", "streamreplay.cli", "record", "--upstream", upstream.base_url,
                                   "--db", str(work / "big.db"), "--port", "0"], r"base_url (http://\S+)")
    try:
        with daemon.sample() as sampler:
            run = client(daemon.base_url, 1, size["big_chunks"], 0, size=65536)
        rss = [r for _, r in sampler.samples if r]
        # from halfway: the first half fills the store's bounded backlog and SQLite's page cache (the
        # point 20% in moved by 15 MB from run to run); a leak would still grow by half the stream
        early = rss[len(rss) // 2] if rss else 0
        out["big_stream_mb"] = run["streams"][0]["events"] * 65536 / 2**20
        out["big_stream_rss_mb_early"] = early / 2**20
        out["big_stream_rss_mb_peak"] = max(rss, default=0) / 2**20
        out["big_stream_growth_mb"] = (max(rss, default=0) - early) / 2**20
    finally:
        daemon.stop()
    return out


def replay_memory_size(tiny: bool) -> dict[str, int]:
    """300 exchanges served 20 times: enough rounds that a per-request leak shows over the noise."""
    return {"replay_mem_exchanges": 30 if tiny else 300, "replay_mem_rounds": 3 if tiny else 20,
            "replay_mem_chunks": 20 if tiny else 100}


def _replay_memory(upstream: Daemon, work: Path, size: dict[str, Any]) -> dict[str, Any]:
    """`play` at speed 0 serving the same exchanges round after round, its RSS read after each round.
    From round 2 on (the recordings are cached and every buffer sized by round 1) it must stay flat."""
    exchanges, rounds, chunks = size["replay_mem_exchanges"], size["replay_mem_rounds"], size["replay_mem_chunks"]
    db = work / "replay-mem.db"
    rec = Daemon("record-replay-mem", [PY, "-m", "streamreplay.cli", "record", "--upstream", upstream.base_url,
                                       "--db", str(db), "--tape", "mem", "--port", "0"], r"base_url (http://\S+)")
    try:
        # 1 ms gaps: the recorder reads each event on its own, so every exchange has `chunks` chunks
        client(rec.base_url, exchanges, chunks, 1, size=100)
    finally:
        rec.stop()
    play = Daemon("play-replay-mem", [PY, "-m", "streamreplay.cli", "play", "--db", str(db), "--speed", "0",
                                      "--port", "0"], r"base_url (http://\S+)")
    rss_mb: list[float] = []
    try:
        for n in range(1, rounds + 1):
            # the same requests as recorded, so each matches its own exchange
            run = client(play.base_url, exchanges, chunks, 1, size=100)
            assert all(s["status"] == 200 and s["in_order"] for s in run["streams"]), "a replay did not match"
            rss_mb.append(play.rss() / 2**20)
            print(f"replay memory: round {n}/{rounds}, {exchanges} exchanges, play RSS {rss_mb[-1]:.1f} MB",
                  file=sys.stderr)
    finally:
        play.stop()
    base = rss_mb[1] if len(rss_mb) > 1 else rss_mb[0]
    return {"exchanges": exchanges, "rounds": rounds, "chunks": chunks, "rss_mb": rss_mb,
            "growth_mb": rss_mb[-1] - base}


def render_replay_memory(m: dict[str, Any]) -> list[str]:
    rounds = ", ".join(f"{mb:.1f}" for mb in m["rss_mb"])
    flat = "flat" if m["growth_mb"] < REPLAY_GROWTH_MB else "GROWING"
    return [f"play RSS after each of {m['rounds']} rounds of the same {m['exchanges']} exchanges "
            f"({m['chunks']} chunks each, speed 0), MB: {rounds}",
            f"play RSS growth from round 2 to round {m['rounds']}: {m['growth_mb']:+.2f} MB ({flat}, "
            f"target < {REPLAY_GROWTH_MB} MB)"]


def replay_memory_only(tiny: bool) -> int:
    work = Path(tempfile.mkdtemp(prefix="streamreplay-bench-"))
    upstream = Daemon("upstream", [PY, str(HERE / "upstream.py")], r"^(\d+)")
    try:
        found = _replay_memory(upstream, work, replay_memory_size(tiny))
    finally:
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(render_replay_memory(found)))
    return 0 if found["growth_mb"] < REPLAY_GROWTH_MB else 1


REPLAY_GROWTH_MB = 2.0

# -- the cost curve -------------------------------------------------------------------------------------

COST_STREAMS = (1, 10, 50, 100, 200, 500)
COST_CHUNKS, COST_SIZE, COST_GAP_MS = 200, 64, 1  # per stream: 200 events of 64 bytes, 1 ms apart
COST_MIN_CHUNKS = 20_000  # fewer streams run in rounds, so that every point costs >= ~0.3 s of CPU (30+ ticks)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a process, all its threads (also those that ended), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": fields[0] is the state (field 3)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15


def _cost_points(daemon: Daemon, label: str) -> list[dict[str, Any]]:
    client(daemon.base_url, 10, 20, COST_GAP_MS, size=COST_SIZE)  # warm-up (imports, first connections), not counted
    points = []
    for streams in COST_STREAMS:
        rounds = max(1, -(-COST_MIN_CHUNKS // (streams * COST_CHUNKS)))
        before = cpu_seconds(daemon.proc.pid)
        run = client(daemon.base_url, streams, COST_CHUNKS, COST_GAP_MS, size=COST_SIZE, rounds=rounds, reads=True)
        cpu = cpu_seconds(daemon.proc.pid) - before
        chunks = sum(s["events"] for s in run["streams"])
        reads = sum(len(s["reads"]) for s in run["streams"])
        mb = chunks * COST_SIZE / 1e6
        lost = sum(not s["in_order"] or s["events"] != COST_CHUNKS for s in run["streams"])
        points.append({"streams": streams, "rounds": rounds, "chunks": chunks, "mb": mb, "cpu_s": cpu,
                       "us_per_chunk": cpu / chunks * 1e6 if chunks else float("nan"),
                       "ms_per_mb": cpu / mb * 1e3 if mb else float("nan"),
                       "chunks_per_client_read": chunks / reads if reads else float("nan"),
                       "wall_s": run["elapsed_ns"] / 1e9, "lost_or_reordered": lost})
        print(f"cost curve: {label:<22} {streams:>3} streams x {rounds:>2} rounds: {chunks} chunks, "
              f"{cpu:.2f} s CPU, {points[-1]['us_per_chunk']:.1f} us/chunk, "
              f"{points[-1]['chunks_per_client_read']:.2f} chunks/read, {points[-1]['wall_s']:.1f} s", file=sys.stderr)
    return points


def cost_curve(work: Path, no_peers: bool = False) -> dict[str, Any]:
    """Each daemon's own CPU time (utime + stime) per chunk and per MB delivered, at 1 to 500 concurrent
    streams. Recording for all; replay for streamreplay `play` only (speed 1, from what its record run stored)."""
    upstream = Daemon("upstream", [PY, str(HERE / "upstream.py")], r"^(\d+)")
    origin = upstream.base_url[: -len("/v1")]
    series: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    db = work / "cost.db"
    try:
        runs: list[tuple[str, Any]] = [
            ("streamreplay record", lambda: Daemon("record", [PY, "-m", "streamreplay.cli", "record", "--upstream",
                                                              upstream.base_url, "--db", str(db), "--tape", "cost",
                                                              "--port", "0"], r"base_url (http://\S+)")),
            ("streamreplay play", lambda: Daemon("play", [PY, "-m", "streamreplay.cli", "play", "--db", str(db),
                                                          "--tape", "cost", "--speed", "1", "--port", "0"],
                                                 r"base_url (http://\S+)")),
        ]
        if not no_peers:
            def mitm() -> Daemon | None:
                port = _free_port()
                argv = mitmproxy_argv(origin, port)
                return Daemon("mitmproxy", argv, "", port=port) if argv else None

            def aimock() -> Daemon | None:
                port = _free_port()
                argv = aimock_argv(origin, port, work / "aimock-fixtures")
                return Daemon("aimock", argv, "", port=port) if argv else None

            runs += [("mitmproxy", mitm), ("aimock", aimock)]
        for label, start in runs:
            try:
                daemon = start()
            except (OSError, RuntimeError) as exc:
                daemon, skipped[label] = None, str(exc)
            if daemon is None:
                skipped.setdefault(label, "not installed")
                print(f"cost curve: {label} skipped ({skipped[label]})", file=sys.stderr)
                continue
            try:
                series[label] = _cost_points(daemon, label)
            finally:
                daemon.stop()
    finally:
        upstream.stop()
    return {"load": {"chunks_per_stream": COST_CHUNKS, "chunk_bytes": COST_SIZE, "gap_ms": COST_GAP_MS,
                     "min_chunks_per_point": COST_MIN_CHUNKS, "streams": list(COST_STREAMS)},
            "measure": "daemon process utime+stime (/proc/PID/stat, all threads) over the run, / chunks and / MB "
                       "the client received (MB = chunks x chunk_bytes)",
            "series": series, "skipped": skipped}


def render_cost_curve(c: dict[str, Any]) -> str:
    streams = c["load"]["streams"]
    head = f"{'us CPU per chunk':<22}" + "".join(f"{n:>9}" for n in streams)
    lines = [head]
    for label, points in c["series"].items():
        lines.append(f"{label:<22}" + "".join(f"{p['us_per_chunk']:>9.1f}" for p in points))
    lines += ["", f"{'ms CPU per MB':<22}" + "".join(f"{n:>9}" for n in streams)]
    for label, points in c["series"].items():
        lines.append(f"{label:<22}" + "".join(f"{p['ms_per_mb']:>9.0f}" for p in points))
    lines += ["", f"{'chunks per client read':<22}" + "".join(f"{n:>9}" for n in streams)]
    for label, points in c["series"].items():
        lines.append(f"{label:<22}" + "".join(f"{p['chunks_per_client_read']:>9.2f}" for p in points))
    lost = sum(p["lost_or_reordered"] for points in c["series"].values() for p in points)
    lines.append(f"\nload: each stream {c['load']['chunks_per_stream']} chunks of {c['load']['chunk_bytes']} B, "
                 f"{c['load']['gap_ms']} ms apart; streams lost or short: {lost}")
    for label, why in c["skipped"].items():
        lines.append(f"skipped {label}: {why}")
    return "\n".join(lines)


def cost_curve_svg(c: dict[str, Any]) -> str:
    """A 600x300 line plot: log x (streams), linear y (us CPU per chunk), one polyline per series."""
    import math

    w, h, left, right, top, bottom = 600, 300, 56, 150, 16, 40
    streams = c["load"]["streams"]
    series = c["series"]
    ymax = max((p["us_per_chunk"] for pts in series.values() for p in pts), default=1.0)
    step = next(s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000) if ymax / s <= 6)
    ytop = step * math.ceil(ymax / step)
    x = lambda n: left + (w - left - right) * math.log10(n) / math.log10(max(streams))  # noqa: E731
    y = lambda v: h - bottom - (h - top - bottom) * v / ytop  # noqa: E731
    colors = ["#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#9467bd"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{w}" height="{h}" fill="white"/>']
    for n in streams:
        out.append(f'<line x1="{x(n):.1f}" y1="{top}" x2="{x(n):.1f}" y2="{h - bottom}" stroke="#eee"/>')
        out.append(f'<text x="{x(n):.1f}" y="{h - bottom + 14}" text-anchor="middle">{n}</text>')
    v = 0
    while v <= ytop:
        out.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{w - right}" y2="{y(v):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{v}</text>')
        v += step
    out.append(f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>')
    out.append(f'<text x="{(left + w - right) / 2:.0f}" y="{h - 6}" text-anchor="middle">'
               f'concurrent streams (log scale)</text>')
    out.append(f'<text transform="translate(14 {(top + h - bottom) / 2:.0f}) rotate(-90)" text-anchor="middle">'
               f'daemon CPU per chunk (us)</text>')
    for i, (label, points) in enumerate(series.items()):
        color = colors[i % len(colors)]
        dash = ' stroke-dasharray="5 3"' if "play" in label else ""
        pts = " ".join(f"{x(p['streams']):.1f},{y(p['us_per_chunk']):.1f}" for p in points)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        out += [f'<circle cx="{x(p["streams"]):.1f}" cy="{y(p["us_per_chunk"]):.1f}" r="2.5" fill="{color}"/>'
                for p in points]
        ly = top + 10 + 18 * i
        out.append(f'<line x1="{w - right + 12}" y1="{ly}" x2="{w - right + 36}" y2="{ly}" stroke="{color}" '
                   f'stroke-width="2"{dash}/>')
        out.append(f'<text x="{w - right + 40}" y="{ly + 4}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def cost_curve_only(out: Path, no_peers: bool = False) -> int:
    work = Path(tempfile.mkdtemp(prefix="streamreplay-bench-"))
    started = time.monotonic()
    try:
        found = cost_curve(work, no_peers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    found["wall_s"] = time.monotonic() - started
    results = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    results["cost_curve"] = found
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    svg = ROOT / "docs" / "cost-curve.svg"
    svg.parent.mkdir(exist_ok=True)
    svg.write_text(cost_curve_svg(found))
    print(render_cost_curve(found))
    print(f"\n{found['wall_s']:.0f} s; wrote {out} ('cost_curve') and {svg}")
    return 0 if all(p["lost_or_reordered"] == 0 for pts in found["series"].values() for p in pts) else 1

TARGETS = {
    "ttfb_1": ("added TTFB p50, 1 stream", "<= 1 ms"),
    "chunk_1": ("added per-chunk p99, 1 stream", "< 1 ms"),
    "chunk_n": ("per-chunk p99, {n} streams", "<= 2x direct"),
    "ttfb_n": ("TTFB p50, {n} streams", "<= direct + 5 ms"),
    "throughput": ("throughput vs direct", ">= 80%"),
    "peer": ("below the better peer, every column", "all lower"),
    "replay_1": ("replay offset error p99, 1 stream", "< 2 ms"),
    "replay_n": ("replay offset error p99, many streams", "<= 5 ms"),
    "replay_first": ("replay first chunk p99, many streams", "<= 10 ms"),
    "lost": ("chunks lost or reordered", "0"),
    "rss": ("RSS at the most streams", "< 150 MB"),
    "big": ("RSS growth, big stream's 2nd half", "flat (< 20 MB)"),
    "replay_rss": ("play RSS growth, rounds 2 to last", f"flat (< {REPLAY_GROWTH_MB:g} MB)"),
}


def loads_of(target: dict[str, Any]) -> list[int]:
    """The concurrent-stream counts a run measured latency at (50 and 100; 5 when tiny)."""
    return sorted(int(k.split("_")[1]) for k in target if k.startswith("latency_") and k != "latency_1")


def columns(r: dict[str, Any], name: str) -> dict[str, float]:
    """One target's figures as the table shows them: latencies in ms (lower is better), MB/s (higher)."""
    v, ttfb = r["targets"][name], r["ttfb"][name]
    cols = {"TTFB p50": ttfb["p50_ms"], "1: chunk p99": v["latency_1"]["chunk_p99_ms"]}
    for n in loads_of(v):
        cols[f"{n}: chunk p99"] = v[f"latency_{n}"]["chunk_p99_ms"]
        cols[f"{n}: TTFB p50"] = v[f"latency_{n}"]["ttfb_p50_ms"]
    cols["1: MB/s"] = v["throughput_1"]["mb_per_s"]
    cols["many: MB/s"] = v["throughput_many"]["mb_per_s"]
    return cols


def verdicts(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    t = r["targets"]
    direct, rec = t["direct"], t["streamreplay record"]
    add = lambda key, scen: rec[scen][key] - direct[scen][key]  # noqa: E731
    peers = [n for n in t if n not in ("direct", "streamreplay record")]
    rows: list[tuple[str, str, str, bool | None]] = []

    def row(key: str, got: str, ok: bool | None, n: int = 0) -> None:
        what, target = TARGETS[key]
        rows.append((what.format(n=n), target, got, ok))

    tt = r["ttfb"]
    ttfb_add = tt["streamreplay record"]["p50_ms"] - tt["direct"]["p50_ms"]
    ttfb_p99_add = tt["streamreplay record"]["p99_ms"] - tt["direct"]["p99_ms"]
    row("ttfb_1", f"{ttfb_add:.2f} ms (p99 {ttfb_p99_add:.2f} ms; {tt['direct']['samples']} requests each)",
        ttfb_add <= 1)
    row("chunk_1", f"{add('chunk_p99_ms', 'latency_1'):.2f} ms", add("chunk_p99_ms", "latency_1") < 1)
    for n in loads_of(rec):
        ours, base = rec[f"latency_{n}"]["chunk_p99_ms"], direct[f"latency_{n}"]["chunk_p99_ms"]
        row("chunk_n", f"{ours / base:.1f}x ({ours:.2f} vs {base:.2f} ms)", ours <= 2 * base, n)
    for n in loads_of(rec):
        ours, base = rec[f"latency_{n}"]["ttfb_p50_ms"], direct[f"latency_{n}"]["ttfb_p50_ms"]
        row("ttfb_n", f"+{ours - base:.1f} ms ({ours:.1f} vs {base:.1f} ms)", ours <= base + 5, n)
    ratio = min(rec[s]["mb_per_s"] / direct[s]["mb_per_s"] for s in ("throughput_1", "throughput_many"))
    row("throughput", f"{ratio:.0%} (the lower of 1 and many streams)", ratio >= 0.8)
    if peers:
        ours = columns(r, "streamreplay record")
        best = {c: (max if c.endswith("MB/s") else min)(columns(r, p)[c] for p in peers) for c in ours}
        behind = [c for c in ours if (ours[c] < best[c] if c.endswith("MB/s") else ours[c] >= best[c])]
        got = f"behind on {', '.join(behind)}" if behind else f"lower on all {len(ours)} columns"
        row("peer", got, not behind)
    else:
        row("peer", "no peer measured", None)
    rep = r["replay"]
    row("replay_1", f"{rep['offset_error_1']['p99_ms']:.2f} ms", rep["offset_error_1"]["p99_ms"] < 2)
    row("replay_n", f"{rep['offset_error_many']['p99_ms']:.2f} ms", rep["offset_error_many"]["p99_ms"] <= 5)
    first = rep["offset_error_many"]["first_chunk_p99_ms"]
    burst = direct.get(f"latency_{rep['offset_error_many']['streams']}")
    beside = f" (direct's own first byte in a burst as big: p99 {burst['ttfb_p99_ms']:.2f} ms)" if burst else ""
    row("replay_first", f"{first:.2f} ms{beside}", first <= 10)
    lost = sum(v[s]["lost_or_reordered"] for v in t.values() for s in v) + sum(c["mismatched"] for c in r["checks"])
    lost += sum(v["lost_or_reordered"] for v in tt.values())
    row("lost", str(lost), lost == 0)
    mem = r["memory"]
    most = max(k for k in mem if k.startswith("peak_rss_mb_"))
    row("rss", f"{mem[most]:.0f} MB ({most.split('_')[3]} streams)", mem[most] < 150)
    row("big", f"{mem['big_stream_growth_mb']:.1f} MB over {mem['big_stream_mb']:.0f} MB",
        mem["big_stream_growth_mb"] < 20)
    rmem = r["replay_memory"]
    row("replay_rss", f"{rmem['growth_mb']:+.2f} MB over {rmem['rounds']} rounds of {rmem['exchanges']}",
        rmem["growth_mb"] < REPLAY_GROWTH_MB)
    return rows


def render(r: dict[str, Any]) -> str:
    lines = []
    # TTFB from the sequential probe (hundreds of requests); the chunk columns from the timed streams
    names = list(r["targets"])
    heads = list(columns(r, names[0]))
    width = max(len(n) for n in [*names, "ms; MB/s (N: at N streams)"]) + 2
    lines.append("ms; MB/s (N: at N streams)".ljust(width) + "".join(f"{h:>{max(len(h), 7) + 2}}" for h in heads))
    for name in names:
        cols = columns(r, name)
        lines.append(name.ljust(width) + "".join(f"{cols[h]:>{max(len(h), 7) + 2}.2f}" for h in heads))
    rep, mem = r["replay"], r["memory"]
    lines.append("")
    lines.append(f"store: {r['store_chunks_per_s']:.0f} chunks/s committed")
    for key in ("offset_error_1", "offset_error_many"):
        e = rep[key]
        lines.append(f"replay at speed 1, {e['streams']} stream(s): |delivered - recorded| p50 {e['p50_ms']:.2f} ms, "
                     f"p99 {e['p99_ms']:.2f} ms, max {e['max_ms']:.2f} ms")
        lines.append(f"    first chunk vs its recorded offset (from the request's last byte sent): "
                     f"p99 {e['first_chunk_p99_ms']:.2f} ms")
    lines.append(f"replay at speed 0: {rep['speed0_events']} events in {rep['speed0_chunks']} recorded chunks, "
                 f"{rep['speed0_seconds']:.3f} s")
    lines.append("daemon peak RSS: " + ", ".join(f"{k.split('_')[3]} streams {v:.0f} MB"
                                                 for k, v in mem.items() if k.startswith("peak_rss_mb_")))
    lines.append(f"one {mem['big_stream_mb']:.0f} MB stream: RSS {mem['big_stream_rss_mb_early']:.0f} MB halfway, "
                 f"{mem['big_stream_rss_mb_peak']:.0f} MB peak")
    lines += render_replay_memory(r["replay_memory"])
    lines.append("")
    for what, target, got, ok in verdicts(r):
        mark = "PASS" if ok else ("n/a " if ok is None else "MISS")
        lines.append(f"{mark}  {what:<40} target {target:<16} measured {got}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
