"""Every daemon binds to 127.0.0.1 unless told otherwise: checked in the kernel's own table of listening
sockets, not only in the URL the daemon prints."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from streamreplay.bundled import bundled_tape

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")


def _listening_addresses(port: int) -> set[str]:
    """The local IPv4/IPv6 addresses a socket listens on at `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # the kernel prints each 32-bit word in host order
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, words))
    return found


@pytest.mark.parametrize("command", [
    ["play", "--db", str(bundled_tape("openai-happy-path"))],
    ["record", "--upstream", "http://127.0.0.1:9/v1", "--db", "{tmp}/rec.db"],
    ["ui", "--db", "{tmp}/rec.db"],
], ids=["play", "record", "ui"])
def test_each_daemon_listens_on_loopback_only_by_default(command: list[str], tmp_path: Path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    if args[0] == "ui":
        subprocess.run([sys.executable, "-m", "streamreplay.cli", "import", str(bundled_tape("openai-happy-path")),
                        "--db", str(tmp_path / "rec.db")], check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "streamreplay.cli", *args, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the line that gives the URL
        match = re.search(r"http://([^/:]+):(\d+)/", first)
        assert match, first
        assert match.group(1) == "127.0.0.1"
        assert _listening_addresses(int(match.group(2))) == {"127.0.0.1"}
    finally:
        proc.terminate()
        proc.wait(timeout=20)
