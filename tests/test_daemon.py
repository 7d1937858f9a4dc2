"""The daemons as a user runs them: real subprocesses, signals, kill -9."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
from click.testing import CliRunner

from streamreplay.cli import main
from streamreplay.store import Store, StoreWriter
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import SECRET, chat


def start_daemon(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "streamreplay.cli", *args, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    banner = proc.stdout.readline()
    match = re.search(r"base_url (http://127\.0\.0\.1:\d+/v1) ", banner)
    assert match, (banner, proc.stderr.read() if proc.poll() is not None else "")
    return proc, match.group(1)


def test_record_daemon_prints_its_base_url_and_stops_cleanly_on_sigterm(tmp_path: Path):
    db = tmp_path / "d.db"
    with ScriptedUpstream(Script(gap=0.002)) as upstream:
        proc, base_url = start_daemon("record", "--upstream", upstream.base_url, "--db", str(db), "--tape", "d")
        client = openai.OpenAI(base_url=base_url, api_key=SECRET, max_retries=0)
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=chat()["messages"], stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert text == "Hello! How can I help you today?"
    assert re.search(r"#1 POST /chat/completions gpt-4o-mini 200 stream \d+ chunks [\d.]+s complete", out)
    (ex,) = Store(db).exchanges()
    assert ex.end_cause == "complete" and ex.tape == "d"
    assert SECRET not in out + err


def test_kill_9_mid_stream_keeps_what_arrived_and_marks_it_interrupted(tmp_path: Path):
    db = tmp_path / "k.db"
    with ScriptedUpstream(Script(text="tick " * 60, gap=0.03)) as upstream:
        proc, base_url = start_daemon("record", "--upstream", upstream.base_url, "--db", str(db), "--tape", "k")
        received = bytearray()

        def client() -> None:
            try:
                with httpx.stream("POST", f"{base_url}/chat/completions", json=chat(), timeout=10) as resp:
                    for data in resp.iter_raw():
                        received.extend(data)
            except httpx.HTTPError:
                pass  # the daemon died under it

        reader = threading.Thread(target=client)
        reader.start()
        time.sleep(0.8)
        killed_at = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join()
        sent = upstream.sent[0]
        settled = [data for data, at in zip(sent.writes, sent.write_times, strict=True) if at < killed_at - 0.1]

    store = Store(db)
    assert store.integrity_ok()
    (ex,) = store.exchanges()
    assert ex.end_cause is None  # open: nobody has looked since the kill
    on_disk = b"".join(c.data for c in store.chunks(ex.id))
    assert len(settled) > 10 and on_disk.startswith(b"".join(settled))
    assert bytes(received).startswith(on_disk)

    writer = StoreWriter(db, "next")  # the next daemon to start
    writer.start()
    writer.close()
    ex = Store(db).exchange(ex.id)
    assert ex.end_cause == "interrupted" and ex.chunk_count == len(Store(db).chunks(ex.id))
    assert ex.text and ex.text.startswith("tick tick")  # summarized like any other exchange
    assert ex.store_error  # its end never reached the disk: never presented as whole
    listing = CliRunner().invoke(main, ["ls", "--db", str(db)]).output
    assert "interrupted (partial)" in listing
    assert Store(db).integrity_ok()


def test_play_daemon_serves_and_refuses_a_bad_fault_at_start(tmp_path: Path):
    db = tmp_path / "p.db"
    with ScriptedUpstream(Script(gap=0.002)) as upstream:
        rec, base_url = start_daemon("record", "--upstream", upstream.base_url, "--db", str(db), "--tape", "p")
        openai.OpenAI(base_url=base_url, api_key=SECRET).chat.completions.create(
            model="gpt-4o-mini", messages=chat()["messages"])
        rec.send_signal(signal.SIGINT)
        rec.communicate(timeout=10)
    proc, base_url = start_daemon("play", "--db", str(db), "--speed", "0", "--fault", "status:code=503")
    try:
        response = httpx.post(f"{base_url}/chat/completions", json=chat(stream=False))
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    assert response.status_code == 503 and response.json()["error"]["code"] == "503"
    assert "#1 POST /chat/completions -> exchange 1 [status:code=503] 503" in out

    bad = CliRunner().invoke(main, ["play", "--db", str(db), "--fault", "cut:chnk=3"])
    assert bad.exit_code == 2 and "cut: unknown parameter 'chnk'" in bad.output
    missing = CliRunner().invoke(main, ["play", "--db", str(tmp_path / "none.db")])
    assert missing.exit_code == 1 and "no recordings at" in missing.output
    unknown = CliRunner().invoke(main, ["play", "--db", str(db), "--tape", "nope"])
    assert unknown.exit_code == 1 and "no tape 'nope'" in unknown.output and "(tapes: p)" in unknown.output
