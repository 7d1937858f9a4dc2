"""Replay memory is bounded: the server keeps the most recent request records and totals of all of them,
and a chunk cache bounded by bytes, however many requests it answers. Real servers on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

from streamreplay.replay import ReplayServer
from streamreplay.replay.server import Replayed, RetryMemory
from streamreplay.replay.source import chunk_bytes
from streamreplay.store import Store
from streamreplay.testing import Script
from tests.helpers import chat, post, record, recorded_body, sha

REQUESTS = 50
KEEP = 5


async def test_keeps_the_most_recent_records_and_counts_every_request(db_path: Path):
    await record(db_path, [Script()], [chat("hello")])
    async with ReplayServer(db_path, speed=0, keep_requests=KEEP) as srv:
        for n in range(REQUESTS):
            # every fifth request asks for something never recorded: a miss
            status, _, _ = await post(srv.base_url, chat("hello" if n % 5 else f"unrecorded {n}"))
            assert status == (200 if n % 5 else 404)
    assert len(srv.requests) == KEEP
    assert [r.n for r in srv.requests] == list(range(REQUESTS - KEEP + 1, REQUESTS + 1))
    assert srv.counts.requests == REQUESTS
    assert srv.counts.endings == {"clean": 40, "miss": 10}
    assert srv.counts.misses == 10 and srv.counts.unfinished == 10
    assert srv.counts.first_miss is not None and "no recording matches" in srv.counts.first_miss
    assert srv.since(REQUESTS - 2) == list(srv.requests)[-2:]
    assert srv.unused() == []  # the unused report comes from the index, not from the records


async def test_retry_detection_works_after_the_broken_request_left_the_records(db_path: Path):
    await record(db_path, [Script(), Script()], [chat("flaky"), chat("other")])
    async with ReplayServer(db_path, speed=0, keep_requests=KEEP) as srv:
        _, _, error = await post(srv.fault_url("close:chunk=2"), chat("flaky"))
        assert error is not None  # the connection closed mid-body: broken
        broken_n = srv.counts.requests
        for _ in range(KEEP * 3):  # enough others that the broken request's record is dropped
            await post(srv.base_url, chat("other"))
        assert all(r.n != broken_n for r in srv.requests)
        status, _, _ = await post(srv.base_url, chat("flaky"))
        assert status == 200
        retry = srv.requests[-1]
        assert retry.retry_of == broken_n
        assert f"repeats #{broken_n} after it was cut" in retry.line()
        await post(srv.base_url, chat("flaky"))  # repeats one that ended cleanly: no retry
        assert srv.requests[-1].retry_of is None
    assert srv.counts.retries == 1 and srv.counts.requests == KEEP * 3 + 3


def test_retry_memory_forgets_the_oldest_broken_keys_first():
    memory = RetryMemory(max_keys=3)
    for n, key in enumerate("abcde", 1):
        rec = Replayed(n, "POST", "/chat/completions", status=500)  # an error status: broken
        assert memory.arrived(key, rec) is None
        memory.ended(key, rec)
    assert [memory.arrived(key, Replayed(9, "POST", "/")) for key in "abcde"] == [None, None, 3, 4, 5]


async def test_chunk_cache_never_exceeds_its_bound(db_path: Path):
    payloads = [chat(f"question {i}") for i in range(12)]
    await record(db_path, [Script(text=f"answer number {i} " * 20) for i in range(12)], payloads)
    store = Store(db_path)
    exchanges = store.exchanges()
    sizes = [chunk_bytes(store.chunks(ex.id)) for ex in exchanges]
    bound = 3 * max(sizes)  # room for three of the twelve
    async with ReplayServer(db_path, speed=0, cache_bytes=bound) as srv:
        cache = srv.source.cache
        for _ in range(2):
            for ex, payload in zip(exchanges, payloads, strict=True):
                status, body, _ = await post(srv.base_url, payload)
                assert status == 200 and sha(body) == sha(recorded_body(db_path, ex.id))
                assert 0 < cache.bytes <= cache.max_bytes == bound
    assert 3 <= len(cache) < len(exchanges)


async def test_an_exchange_larger_than_the_cache_is_served_whole_and_not_kept(db_path: Path):
    big = Script(pieces=["x" * 1000] * 200)  # about 220 KB of events
    await record(db_path, [big, Script()], [chat("big"), chat("small")])
    store = Store(db_path)
    big_ex, small_ex = store.exchanges()
    bound = 64 * 1024
    assert chunk_bytes(store.chunks(big_ex.id)) > bound > chunk_bytes(store.chunks(small_ex.id))
    async with ReplayServer(db_path, speed=0, cache_bytes=bound) as srv:
        cache = srv.source.cache
        await post(srv.base_url, chat("small"))
        for _ in range(2):
            status, body, error = await post(srv.base_url, chat("big"))
            assert (status, error) == (200, None)
            assert sha(body) == sha(recorded_body(db_path, big_ex.id))
            assert cache.bytes <= bound
    assert cache.get(big_ex.id) is None and cache.get(small_ex.id) is not None
