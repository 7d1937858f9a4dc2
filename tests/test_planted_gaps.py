"""Promises that planted bugs (a mutation round) broke while every test went on passing.

Each test pins one promise at the place a small slip would break it, with real servers and clients.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from aiohttp import web

import streamreplay.store.writer as writer_module
from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.replay import ReplayServer
from streamreplay.replay.storeindex import StoreIndex
from streamreplay.store import Store
from streamreplay.store.writer import StoreWriter
from streamreplay.testing import Script
from tests.helpers import chat, chat_upstream, post, record, sha


async def test_the_db_index_serves_the_tape_played_not_another_with_the_same_request(tmp_path: Path):
    """A DB replayed in place (StoreIndex) answers from the tape asked for, even when an earlier tape of the
    same DB recorded the very same request."""
    db = tmp_path / "two-tapes.db"
    first = await record(db, [Script(text="from the first tape")], [chat("a")], tape="first")
    second = await record(db, [Script(text="from the second tape")], [chat("a")], tape="second")
    assert sha(first[0]) != sha(second[0])
    for tape, sent in (("second", second[0]), ("first", first[0])):
        async with ReplayServer(db, tape=tape, speed=0) as srv:
            assert isinstance(srv.index, StoreIndex)
            status, body, error = await post(srv.base_url, chat("a"))
        assert (status, error, sha(body)) == (200, None, sha(sent)), tape


def test_chunks_the_writer_dropped_mark_their_exchange_not_stored_whole(tmp_path: Path, monkeypatch):
    """A chunk dropped while the store fails with its backlog full leaves its exchange marked `store_error`
    (and listed as a loss) even once storing works again: nothing partial is presented as whole."""
    db = tmp_path / "dropped.db"
    writer = StoreWriter(db, "t")
    writer.start()
    try:
        handle = writer.begin({"method": "POST", "path": "/chat/completions",
                               "request_body": json.dumps(chat("a")).encode()})
        writer.chunk(handle, 0, 1_000, b"data: one\n\n")
        writer.flush()
        # storing fails (a full disk, say) with a backlog past the bound: the next chunk is dropped, not held
        writer.failure = "sqlite: database or disk is full"
        monkeypatch.setattr(writer_module, "STORE_BACKLOG", -1)
        writer.chunk(handle, 1, 2_000, b"data: two\n\n")
        assert handle.dropped == 1
        # the disk has room again: the end is stored
        writer.failure = None
        writer.end(handle, {"end_cause": "complete", "chunk_count": 2})
        writer.flush()
    finally:
        writer.close()
    (ex,) = Store(db).exchanges()
    assert [c.data for c in Store(db).chunks(ex.id)] == [b"data: one\n\n"]
    assert ex.store_error is not None and "1 chunks were forwarded but not stored" in ex.store_error
    assert [why for _, why in writer.losses] == [ex.store_error]


async def test_the_upstreams_set_cookie_is_forwarded_but_stored_redacted(tmp_path: Path):
    """README: the upstream's `Set-Cookie` is stored `[redacted]` in the response; the client still gets it."""
    cookie = "session=sk-cookie-0123456789abcdef; Path=/"

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": True}, headers={"Set-Cookie": cookie})

    db = tmp_path / "cookie.db"
    async with chat_upstream(answer) as url, \
            RecordingProxy(RecordOptions(upstream=url, db=str(db), tape="t")) as proxy, \
            httpx.AsyncClient() as client:
        resp = await client.post(f"{proxy.base_url}/chat/completions", json=chat("a"))
        await proxy.settle()
    assert resp.headers["set-cookie"] == cookie
    (ex,) = Store(db).exchanges()
    assert ex.response_header("set-cookie") == "[redacted]"
    for path in (db, db.with_name(db.name + "-wal")):  # the write-ahead log too, if one is left
        assert not path.exists() or b"sk-cookie-0123456789abcdef" not in path.read_bytes()
