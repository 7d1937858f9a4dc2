"""Fixtures: a scripted OpenAI upstream and the recording proxy in front of it, on real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.testing import ScriptedUpstream


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "rec.db"


@pytest.fixture
async def upstream() -> AsyncIterator[ScriptedUpstream]:
    async with ScriptedUpstream() as server:
        yield server


@pytest.fixture
def proxy_log() -> list[str]:
    return []


@pytest.fixture
async def proxy(upstream: ScriptedUpstream, db_path: Path, proxy_log: list[str]) -> AsyncIterator[RecordingProxy]:
    options = RecordOptions(upstream=upstream.base_url, db=str(db_path), tape="t", log=proxy_log.append)
    async with RecordingProxy(options) as server:
        yield server
