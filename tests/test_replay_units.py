"""Replay's small parts without the server's routes in the way: the options and the miss policy they pick,
the request as matching reads it, a request's record and its log line, the recording sources and their
chunk cache, and the miss policies (404, record from an upstream). One test drives a real server."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streamreplay.bundled import bundled_dir
from streamreplay.cassette import import_cassette
from streamreplay.endcause import EndCause
from streamreplay.replay import ReplayServer
from streamreplay.replay import onmiss as onmiss_module
from streamreplay.replay import request as request_module
from streamreplay.replay.matching import Index, Miss
from streamreplay.replay.onmiss import (
    RECORD_SETTLE_TIMEOUT,
    NotFound,
    OnMiss,
    RecordFromUpstream,
    _same_file,
)
from streamreplay.replay.options import ReplayOptions, option
from streamreplay.replay.replayed import Replayed
from streamreplay.replay.request import IncomingRequest, Request
from streamreplay.replay.source import (
    CHUNK_OVERHEAD,
    DEFAULT_CACHE_BYTES,
    CassetteSource,
    ChunkCache,
    OneExchange,
    StoreSource,
    chunk_bytes,
    open_source,
)
from streamreplay.requestkey import NOT_JSON
from streamreplay.store import Chunk, Exchange, Store
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import chat, post, sha

TAPES = bundled_dir()
OPENAI_TAPE = TAPES / "openai-happy-path.jsonl"  # one exchange, 18 chunks
AGENT_TAPE = TAPES / "agent-multi-turn.jsonl"  # three exchanges
UPSTREAM = "http://127.0.0.1:9/v1"  # never connected to: the policies under test only keep it


@pytest.fixture
def two_tapes(tmp_path: Path) -> Path:
    """A DB holding the tapes openai-happy-path (imported first) and agent-multi-turn."""
    db = tmp_path / "two.db"
    import_cassette(OPENAI_TAPE, db)
    import_cassette(AGENT_TAPE, db)
    return db


def chunks_of(*sizes: int) -> list[Chunk]:
    return [Chunk(i, i * 1000, b"x" * size) for i, size in enumerate(sizes)]


# -- options: the field helper and the miss policy --------------------------------------------------------


def test_an_option_is_a_field_with_its_default_its_help_and_what_the_cli_reads():
    made = option(3, "Three of them.", min=0, choices=("a",))
    assert made.default == 3
    assert dict(made.metadata) == {"help": "Three of them.", "min": 0, "choices": ("a",)}


def test_no_upstream_and_no_policy_named_answers_404():
    assert type(ReplayOptions("x.db").miss_policy()) is NotFound
    assert type(ReplayOptions("x.db", on_miss="404").miss_policy()) is NotFound
    assert type(ReplayOptions("x.db", on_miss="").miss_policy()) is NotFound  # unset, as the CLI passes it


@pytest.mark.parametrize("named", [None, "record"])
def test_an_upstream_records_misses_with_every_option_it_needs(named: str | None):
    log: list[str] = []
    policy = ReplayOptions("x.db", upstream=UPSTREAM, on_miss=named, record_db="r.db", tape="t", log=log.append,
                           cache_bytes=4321).miss_policy()
    assert type(policy) is RecordFromUpstream
    assert (policy.upstream, policy.db, policy.tape, policy.cache_bytes) == (UPSTREAM, "r.db", "t", 4321)
    assert policy.errors == log.append


def test_a_policy_object_is_used_as_given():
    mine = NotFound()
    assert ReplayOptions("x.db", on_miss=mine).miss_policy() is mine


@pytest.mark.parametrize(("options", "message"), [
    (dict(on_miss="record"), "on_miss='record' needs an upstream, and an upstream is only used to record misses"),
    (dict(on_miss="404", upstream=UPSTREAM),
     "on_miss='record' needs an upstream, and an upstream is only used to record misses"),
    (dict(on_miss="ask"), "on_miss must be one of 404, record, not 'ask'"),
    (dict(on_miss="ask", upstream=UPSTREAM), "on_miss must be one of 404, record, not 'ask'"),
    (dict(on_miss=NotFound(), upstream=UPSTREAM),
     "an upstream is only used to record misses (on_miss='record'); a policy object takes its own"),
])
def test_a_policy_that_cannot_be_is_refused_with_why(options: dict[str, Any], message: str):
    with pytest.raises(ValueError) as refused:
        ReplayOptions("x.db", **options).miss_policy()
    assert str(refused.value) == message


# -- the request, as matching reads it ------------------------------------------------------------------


@dataclass
class KeyCountingRules:
    """Rules with a key of method and path that count how often they are asked for it."""

    ignore: tuple[str, ...] = ("stream", "user")
    mask: frozenset[tuple[str, ...]] = frozenset({("metadata", "id")})
    asked: int = 0

    def key(self, request: Request) -> tuple[str, str]:
        self.asked += 1
        return (request.method, request.path)


def incoming(body: bytes, path: str = "/chat/completions", rules: Any = None) -> IncomingRequest:
    return IncomingRequest("POST", path, body, rules or KeyCountingRules())


@pytest.mark.parametrize(("body", "parsed", "is_json"), [
    (b"", None, True),
    (b'{"a": [1, 2]}', {"a": [1, 2]}, True),
    (b"[3]", [3], True),
    (b"{not json", NOT_JSON, False),
    (b"  ", NOT_JSON, False),  # not empty: blanks are not a JSON document
])
def test_the_body_is_read_as_json(body: bytes, parsed: Any, is_json: bool):
    request = incoming(body)
    assert request.json is parsed if parsed is NOT_JSON else request.json == parsed
    assert request.is_json is is_json


def test_a_request_is_parsed_once_however_much_of_it_is_read(monkeypatch: pytest.MonkeyPatch):
    parsed: list[bytes] = []
    real = request_module.parse_body
    monkeypatch.setattr(request_module, "parse_body", lambda body: parsed.append(body) or real(body))
    request = IncomingRequest("POST", "/chat/completions", b'{"model": "m"}', KeyCountingRules())
    assert (request.query, request.faults, request.http) == ("", (), None)
    assert (request.json, request.is_json, request.canonical, request.stream) == ({"model": "m"}, True,
                                                                                  {"model": "m"}, False)
    assert (request.json, request.canonical) == ({"model": "m"}, {"model": "m"})
    assert parsed == [b'{"model": "m"}']


def test_the_canonical_body_leaves_out_ignored_fields_and_redacts_secrets_and_masked_paths():
    request = incoming(json.dumps({"model": "m", "stream": True, "user": "u", "api_key": "sk-live-1",
                                   "metadata": {"id": "run-7", "kept": 1}}).encode())
    assert request.canonical == {"model": "m", "api_key": "[redacted]", "metadata": {"id": "[redacted]", "kept": 1}}
    assert incoming(b"{not json").canonical == b"{not json"
    assert incoming(b"").canonical is None


def test_the_key_is_the_rules_key_of_this_request_asked_once():
    rules = KeyCountingRules()
    request = incoming(b"{}", "/embeddings", rules)
    assert request.key == ("POST", "/embeddings")
    assert request.key == ("POST", "/embeddings")
    assert rules.asked == 1


@pytest.mark.parametrize(("path", "body", "stream"), [
    ("/chat/completions", b'{"stream": true}', True),
    ("/chat/completions", b'{"model": "m"}', False),
    ("/api/chat", b'{"model": "m"}', True),  # Ollama streams unless told not to
    ("/api/chat", b'{"stream": false}', False),
    ("/chat/completions", b"[1]", None),
    ("/chat/completions", b"", None),
    ("/chat/completions", b"{not json", None),
])
def test_whether_the_body_asks_for_a_stream_is_read_in_its_dialect(path: str, body: bytes, stream: bool | None):
    assert incoming(body, path).stream is stream


# -- a request's record and its line ----------------------------------------------------------------------


def served(**fields: Any) -> Replayed:
    """The record of request #3, answered from exchange 5 with 4 chunks of a clean 200."""
    base: dict[str, Any] = dict(exchange_id=5, status=200, total=4, delivered=4, ending="clean")
    return Replayed(3, "POST", "/chat/completions", **{**base, **fields})


@pytest.mark.parametrize(("fields", "finished", "broken"), [
    (dict(), True, False),
    (dict(status=399), True, False),
    (dict(status=400), True, True),
    (dict(ending="close"), True, True),
    (dict(ending=""), True, True),
    (dict(miss="no recording matches"), False, True),
    (dict(client_left_at_chunk=2), False, True),
    (dict(client_left_at_chunk=0, delivered=0), False, True),  # left before the first chunk
    (dict(client_left_at_chunk=4, done_delivered=True), True, False),
])
def test_finished_and_broken(fields: dict[str, Any], finished: bool, broken: bool):
    rec = served(**fields)
    assert (rec.finished, rec.broken) == (finished, broken)


@pytest.mark.parametrize(("rec", "line"), [
    (served(), "#3 POST /chat/completions -> exchange 5 200: 4/4 chunks, ended clean"),
    (served(applied=["cut:chunk=2", "drop-done"], delivered=2, ending="close"),
     "#3 POST /chat/completions -> exchange 5 [cut:chunk=2 + drop-done] 200: 2/4 chunks, ended close"),
    (Replayed(4, "GET", "/models", status=404, ending="miss", miss="no recording matches GET /models"),
     "#4 GET /models -> no match 404: no recording matches GET /models"),
    (Replayed(4, "POST", "/x", status=400, ending="refused", miss="bad fault spec: nope"),
     "#4 POST /x -> refused 400: bad fault spec: nope"),
    (served(total=10, delivered=3, client_left_at_chunk=3, client_left_ns=1_000_500_001),
     "#3 POST /chat/completions -> exchange 5 200: 3/10 chunks, the client left at chunk 3 (1.001s)"),
    (served(delivered=0, client_left_at_chunk=0),
     "#3 POST /chat/completions -> exchange 5 200: 0/4 chunks, the client left at chunk 0 (0.000s)"),
    (served(client_left_at_chunk=4, client_left_ns=5, done_delivered=True),
     "#3 POST /chat/completions -> exchange 5 200: 4/4 chunks, ended clean"),
    (served(exchange_id=9, total=7, delivered=7, ending="recorded", recorded="complete"),
     "#3 POST /chat/completions -> upstream, recorded as exchange 9 200: 7/7 chunks, ended complete"),
    (served(exchange_id=9, total=7, delivered=2, ending="recorded", recorded="client_left", client_left_at_chunk=2,
            client_left_ns=250_000_000),
     "#3 POST /chat/completions -> upstream, recorded as exchange 9 200: 2/7 chunks, the client left at chunk 2 "
     "(0.250s), ended client_left"),
    (served(exchange_id=None, status=502, ending="recorded", recorded="", miss="kept from before"),
     "#3 POST /chat/completions -> upstream 502: forwarded, but its recording never joined the index (see any "
     "storing errors above)"),
    (served(retry_of=2, partial="disk full"),
     "#3 POST /chat/completions -> exchange 5 200: 4/4 chunks, ended clean, repeats #2 after it was cut (a retry)"
     " (a PARTIAL recording: not all the upstream sent was stored)"),
])
def test_the_line_of_a_request(rec: Replayed, line: str):
    assert rec.line() == line


def test_a_record_starts_empty():
    rec = Replayed(1, "POST", "/chat/completions")
    assert (rec.applied, list(rec.offsets_ns), rec.offsets_ns.typecode) == ([], [], "q")
    assert rec.applied is not Replayed(2, "POST", "/").applied


# -- the chunk cache -------------------------------------------------------------------------------------


def test_a_chunk_costs_its_data_and_an_overhead():
    assert CHUNK_OVERHEAD == 100
    assert chunk_bytes(chunks_of(3, 0, 10)) == 3 + 10 + 3 * CHUNK_OVERHEAD
    assert chunk_bytes([]) == 0


def test_the_cache_starts_empty_with_its_bound():
    cache = ChunkCache()
    assert (cache.max_bytes, cache.bytes, len(cache), cache.get(1)) == (DEFAULT_CACHE_BYTES, 0, 0, None)
    assert DEFAULT_CACHE_BYTES == 64 * 1024 * 1024


def test_the_cache_drops_the_least_recently_used_first_and_counts_its_bytes():
    cache = ChunkCache(max_bytes=300)
    one, two, three = chunks_of(0), chunks_of(0), chunks_of(0)
    cache.put(1, one)
    cache.put(2, two)
    cache.put(3, three)  # exactly the bound: nothing dropped
    assert (len(cache), cache.bytes) == (3, 300)
    assert cache.get(1) is one  # 1 is now the most recently used: 2 goes first
    cache.put(4, chunks_of(0))
    assert (cache.get(2), len(cache), cache.bytes) == (None, 3, 300)
    cache.put(5, chunks_of(50))  # 150 bytes: drops 3 and then 1, the least recently used
    assert [cache.get(n) is not None for n in (1, 3, 4, 5)] == [False, False, True, True]
    assert (len(cache), cache.bytes) == (2, 250)


def test_the_cache_keeps_the_first_chunks_of_an_exchange():
    cache = ChunkCache(max_bytes=1000)
    first = chunks_of(5)
    cache.put(1, first)
    cache.put(1, chunks_of(7))
    assert (cache.get(1), cache.bytes, len(cache)) == (first, 105, 1)
    assert cache.get(1) is first


def test_an_exchange_over_the_bound_is_not_kept_and_drops_nothing():
    cache = ChunkCache(max_bytes=200)
    cache.put(1, chunks_of(0))
    cache.put(2, chunks_of(101))
    assert (cache.get(2), cache.get(1) is not None, cache.bytes) == (None, True, 100)
    whole = ChunkCache(max_bytes=100)
    whole.put(1, chunks_of(0))  # as large as the bound: kept
    assert (len(whole), whole.bytes) == (1, 100)


# -- the sources -------------------------------------------------------------------------------------------


def test_a_store_source_serves_its_tape_or_every_tape(two_tapes: Path):
    agent = StoreSource(str(two_tapes), "agent-multi-turn", cache_bytes=4096)
    assert (agent.path, agent.tape, agent.cache.max_bytes) == (two_tapes, "agent-multi-turn", 4096)
    assert [(ex.tape, ex.seq) for ex in agent.exchanges()] == [("agent-multi-turn", n) for n in range(3)]
    every = StoreSource(two_tapes)
    assert (every.tape, every.cache.max_bytes) == (None, DEFAULT_CACHE_BYTES)
    assert [ex.tape for ex in every.exchanges()] == ["openai-happy-path"] + ["agent-multi-turn"] * 3


def test_an_empty_store_is_a_source_with_no_exchanges(tmp_path: Path):
    Store(tmp_path / "empty.db")
    assert StoreSource(tmp_path / "empty.db").exchanges() == []


def test_a_store_source_names_what_is_missing(two_tapes: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError) as missing:
        StoreSource(tmp_path / "none.db")
    assert str(missing.value) == f"no recordings at {tmp_path / 'none.db'}"
    with pytest.raises(LookupError) as unknown:
        StoreSource(two_tapes, "nope")
    assert str(unknown.value) == f"no tape 'nope' in {two_tapes} (tapes: openai-happy-path, agent-multi-turn)"


def test_naming_a_tape_reads_one_of_its_rows_not_the_whole_tape(two_tapes: Path, monkeypatch: pytest.MonkeyPatch):
    read: list[int] = []
    real = Store.exchanges

    def counted(store: Store, *args: Any, **kwargs: Any) -> list[Exchange]:
        found = real(store, *args, **kwargs)
        read.append(len(found))
        return found

    monkeypatch.setattr(Store, "exchanges", counted)
    StoreSource(two_tapes, "agent-multi-turn")  # a tape of three
    assert read == [1]


def test_a_store_source_reads_an_exchange_s_chunks_once(two_tapes: Path, monkeypatch: pytest.MonkeyPatch):
    source = StoreSource(two_tapes, "agent-multi-turn")
    reads: list[int] = []
    real = source.store.chunks
    monkeypatch.setattr(source.store, "chunks", lambda exchange_id: reads.append(exchange_id) or real(exchange_id))
    first, second, _ = source.exchanges()
    chunks = source.chunks(second)
    assert [c.index for c in chunks] == list(range(79)) and reads == [second.id]
    assert source.chunks(second) is chunks and source.cache.get(second.id) is chunks and reads == [second.id]
    assert len(source.chunks(first)) == 19 and reads == [second.id, first.id]


def test_a_store_source_with_no_cache_reads_each_time(two_tapes: Path, monkeypatch: pytest.MonkeyPatch):
    source = StoreSource(two_tapes, cache_bytes=0)
    reads: list[int] = []
    real = source.store.chunks
    monkeypatch.setattr(source.store, "chunks", lambda exchange_id: reads.append(exchange_id) or real(exchange_id))
    (ex, *_) = source.exchanges()
    assert len(source.chunks(ex)) == len(source.chunks(ex)) == 18
    assert reads == [ex.id, ex.id]


def test_a_cassette_source_holds_the_cassette():
    source = CassetteSource(str(AGENT_TAPE))
    assert (source.path, source.tape, source.header["format"]) == (AGENT_TAPE, "agent-multi-turn",
                                                                   "streamreplay-cassette")
    exchanges = source.exchanges()
    assert [(ex.id, ex.seq) for ex in exchanges] == [(1, 0), (2, 1), (3, 2)]
    exchanges.clear()  # a copy: the caller's to change
    assert [len(source.chunks(ex)) for ex in source.exchanges()] == [19, 79, 77]


def test_one_exchange_is_served_whatever_is_asked():
    ex = Exchange(id=4, tape="t", seq=0, method="POST", path="/chat/completions")
    chunks = chunks_of(1, 2)
    source = OneExchange(ex, chunks)
    assert source.exchanges() == [ex] and source.exchanges()[0] is ex
    assert source.chunks(Exchange(id=99, tape="u", seq=3, method="GET", path="/models")) is chunks


def test_open_source_tells_a_cassette_from_a_db(two_tapes: Path):
    cassette = open_source(str(OPENAI_TAPE), None, 10)
    assert type(cassette) is CassetteSource and cassette.tape == "openai-happy-path"
    assert open_source(str(OPENAI_TAPE), "openai-happy-path").tape == "openai-happy-path"
    db = open_source(two_tapes, "agent-multi-turn", 1234)
    assert type(db) is StoreSource
    assert (db.path, db.tape, db.cache.max_bytes, len(db.exchanges())) == (two_tapes, "agent-multi-turn", 1234, 3)
    assert open_source(two_tapes).cache.max_bytes == DEFAULT_CACHE_BYTES


def test_a_cassette_asked_for_a_tape_it_does_not_hold_says_so_instead_of_serving_its_own():
    """A cassette holds one tape: `play --db it.jsonl --tape other` must not replay what was not asked for."""
    with pytest.raises(LookupError) as refused:
        open_source(str(OPENAI_TAPE), "agent-multi-turn")
    assert str(refused.value) == f"no tape 'agent-multi-turn' in {OPENAI_TAPE} (tapes: openai-happy-path)"


# -- the miss policies -----------------------------------------------------------------------------------


@pytest.fixture
def index() -> Index:
    """An index of the openai-happy-path tape's one exchange."""
    return Index(CassetteSource(OPENAI_TAPE).exchanges())


def miss_request(index: Index, body: bytes) -> IncomingRequest:
    return IncomingRequest("POST", "/chat/completions", body, index.rules)


async def test_the_base_policy_does_nothing_and_answers_nothing(index: Index):
    policy, source, reports = OnMiss(), OneExchange(index.exchanges[0], []), []
    policy.bind(index, source, reports.append)
    assert (policy.name, policy.index, policy.source, policy.report) == ("", index, source, reports.append)
    request = miss_request(index, b"{}")
    assert [await policy.start(), await policy.stop(), await policy.settle(), await policy.pending(request)] == \
        [None] * 4
    assert policy.chunks(index.exchanges[0]) is None
    with pytest.raises(NotImplementedError):
        await policy.answer(request, Miss("why"), Replayed(1, "POST", "/chat/completions"))


@pytest.mark.parametrize("body", [b"", b'{"model": "m"}'])
async def test_not_found_answers_openai_s_404_naming_the_miss(index: Index, body: bytes):
    policy, reports = NotFound(), []
    policy.bind(index, OneExchange(index.exchanges[0], []), reports.append)
    rec = Replayed(1, "POST", "/chat/completions")
    response = await policy.answer(miss_request(index, body), Miss("no recording matches, closest is 1"), rec)
    assert (policy.name, response.status, response.headers["x-streamreplay-error"]) == ("404", 404,
                                                                                        "no_recording_match")
    assert json.loads(response.body) == {"error": {"message": "no recording matches, closest is 1",
                                                   "type": "invalid_request_error", "param": None,
                                                   "code": "no_recording_match"}}
    assert (rec.status, rec.ending, rec.miss) == (404, "miss", "no recording matches, closest is 1")
    assert reports == [rec]


async def test_not_found_answers_a_body_that_is_not_json_with_a_400(index: Index):
    policy, reports = NotFound(), []
    policy.bind(index, OneExchange(index.exchanges[0], []), reports.append)
    rec = Replayed(2, "POST", "/chat/completions")
    body = b"model=m&" + b"x" * 40
    response = await policy.answer(miss_request(index, body), Miss("closest is 1"), rec)
    message = f"request body is not JSON ({body[:40]!r}...); closest is 1"
    assert message == "request body is not JSON (b'model=m&xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'...); closest is 1"
    assert (response.status, response.headers["x-streamreplay-error"]) == (400, "body_not_json")
    assert json.loads(response.body)["error"] == {"message": message, "type": "invalid_request_error",
                                                  "param": None, "code": "body_not_json"}
    assert (rec.status, rec.ending, rec.miss) == (400, "refused", message)
    assert reports == [rec]


async def test_not_found_answers_a_miss_with_no_body_with_the_404_not_the_400(index: Index):
    """A request with no body (`GET /v1/models`) that matches nothing is a miss, not a body that is not JSON."""
    policy, reports = NotFound(), []
    policy.bind(index, OneExchange(index.exchanges[0], []), reports.append)
    rec = Replayed(2, "GET", "/models")
    response = await policy.answer(miss_request(index, b""), Miss("closest is 1"), rec)
    assert (response.status, json.loads(response.body)["error"]["code"]) == (404, "no_recording_match")
    assert (rec.status, rec.ending, rec.miss) == (404, "miss", "closest is 1") and reports == [rec]


@pytest.mark.parametrize(("body", "quoted"), [(b"model=m", "b'model=m'"), (b"x" * 40, repr(b"x" * 40)),
                                              (b"x" * 41, repr(b"x" * 40) + "...")])
async def test_the_400_s_quote_of_a_body_that_is_not_json_ends_in_dots_only_when_it_was_cut(
        index: Index, body: bytes, quoted: str):
    policy = NotFound()
    policy.bind(index, OneExchange(index.exchanges[0], []), lambda rec: None)
    response = await policy.answer(miss_request(index, body), Miss("closest is 1"), Replayed(2, "POST", "/x"))
    assert json.loads(response.body)["error"]["message"] == f"request body is not JSON ({quoted}); closest is 1"


def test_a_recording_policy_keeps_what_it_was_given_and_needs_a_server():
    errors: list[str] = []
    policy = RecordFromUpstream(UPSTREAM, "r.db", "t", errors.append, 77)
    assert (policy.name, policy.upstream, policy.db, policy.tape, policy.cache_bytes) == ("record", UPSTREAM,
                                                                                         "r.db", "t", 77)
    assert policy.errors == errors.append
    defaults = RecordFromUpstream(UPSTREAM)
    assert (defaults.db, defaults.tape, defaults.errors, defaults.cache_bytes) == (None, None, None,
                                                                                  DEFAULT_CACHE_BYTES)
    with pytest.raises(RuntimeError) as unbound:
        policy.recorder  # noqa: B018  # the property is what is tested
    assert str(unbound.value) == "RecordFromUpstream is used before a server bound it"


def test_recording_misses_needs_a_db(index: Index):
    for source, named in [(CassetteSource(OPENAI_TAPE), str(OPENAI_TAPE)),
                          (OneExchange(index.exchanges[0], []), "the source")]:
        with pytest.raises(ValueError) as refused:
            RecordFromUpstream(UPSTREAM).bind(index, source, print)
        assert str(refused.value) == (f"recording misses needs a DB, and {named} is not one: import the cassette "
                                      "into a DB (streamreplay import), or give record_db")


def test_the_recorder_records_into_the_db_played_or_the_one_given(two_tapes: Path, tmp_path: Path, index: Index):
    errors: list[str] = []
    played = RecordFromUpstream(UPSTREAM, tape="t", errors=errors.append)
    played.bind(index, StoreSource(two_tapes), print)
    options = played.recorder.options
    assert (options.upstream, options.db, options.tape, options.errors) == (UPSTREAM, str(two_tapes), "t",
                                                                            errors.append)
    given = RecordFromUpstream(UPSTREAM, db=tmp_path / "misses.db")
    given.bind(index, CassetteSource(OPENAI_TAPE), print)
    assert (given.recorder.options.db, given.recorder.options.tape) == (str(tmp_path / "misses.db"), None)
    assert (given.index, given.report) == (index, print)


async def test_started_a_policy_reads_recorded_chunks_from_the_db_it_records_into(two_tapes: Path, tmp_path: Path,
                                                                                   index: Index):
    source = StoreSource(two_tapes)
    same = RecordFromUpstream(UPSTREAM)
    same.bind(index, source, print)
    await same.start()
    try:
        assert same._record_source is source and same._loop is asyncio.get_running_loop()
        assert same.recorder.writer.on_end == same._committed
    finally:
        await same.stop()
    other = RecordFromUpstream(UPSTREAM, db=tmp_path / "misses.db", cache_bytes=4096)
    other.bind(index, source, print)
    await other.start()
    try:
        record_source = other._record_source
        assert type(record_source) is StoreSource
        assert (record_source.path, record_source.tape, record_source.cache.max_bytes) == (tmp_path / "misses.db",
                                                                                          None, 4096)
    finally:
        await other.stop()


async def test_stop_waits_a_bounded_time_for_the_misses_still_settling(index: Index, two_tapes: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):
    policy = RecordFromUpstream(UPSTREAM)
    policy.bind(index, StoreSource(two_tapes), print)
    await policy.start()
    settled = asyncio.ensure_future(asyncio.sleep(0.02))
    policy._settling.add(settled)
    began = time.monotonic()
    await asyncio.wait_for(policy.stop(), 2)
    assert settled.done() and time.monotonic() - began < 0.5

    monkeypatch.setattr(onmiss_module, "RECORD_SETTLE_TIMEOUT", 0.05)
    stuck = RecordFromUpstream(UPSTREAM)
    stuck.bind(index, StoreSource(two_tapes), print)
    await stuck.start()
    never = asyncio.ensure_future(asyncio.Event().wait())
    stuck._settling.add(never)
    try:
        await asyncio.wait_for(stuck.stop(), 2)
        assert not never.done()
    finally:
        never.cancel()


async def test_settle_returns_once_every_miss_is_settled(index: Index):
    policy = RecordFromUpstream(UPSTREAM)
    tasks = [asyncio.ensure_future(asyncio.sleep(delay)) for delay in (0.01, 0.03)]
    for task in tasks:
        policy._settling.add(task)
        task.add_done_callback(policy._settling.discard)
    await asyncio.wait_for(policy.settle(), 2)
    assert all(task.done() for task in tasks) and policy._settling == set()


async def test_a_request_waits_while_an_identical_one_is_being_recorded(index: Index):
    policy = RecordFromUpstream(UPSTREAM)
    request, other = miss_request(index, b'{"a": 1}'), miss_request(index, b'{"a": 2}')
    await asyncio.wait_for(policy.pending(request), 1)  # nothing being recorded
    policy._recording[request.key] = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(policy.pending(request))
    await asyncio.wait_for(policy.pending(other), 1)
    await asyncio.sleep(0.01)
    assert not waiting.done()
    policy._release(request.key)
    await asyncio.wait_for(waiting, 1)
    assert policy._recording == {}


def test_release_lets_go_once(index: Index):
    policy = RecordFromUpstream(UPSTREAM)
    loop = asyncio.new_event_loop()
    try:
        done = policy._recording["k"] = loop.create_future()
        policy._release("k")
        assert done.result() is None and policy._recording == {}
        finished = policy._recording["k"] = loop.create_future()
        finished.set_result("earlier")
        policy._release("k")
        policy._release("never recorded")
        assert finished.result() == "earlier" and policy._recording == {}
    finally:
        loop.close()


def new_exchange(**fields: Any) -> Exchange:
    """An exchange recorded for a miss: the agent tape's first request, a 201 of 5 chunks that completed."""
    agent = CassetteSource(AGENT_TAPE).exchanges()[0]
    base: dict[str, Any] = dict(id=7, tape="t", seq=1, method="POST", path="/chat/completions",
                                request_body=agent.request_body, status=201, chunk_count=5,
                                end_cause=EndCause.COMPLETE)
    return Exchange(**{**base, **fields})


def awaiting_policy(index: Index, ex: Exchange, rec: Replayed | None,
                    reports: list[Replayed]) -> tuple[RecordFromUpstream, asyncio.Future[None]]:
    """A policy bound to `index` whose miss for `ex`'s request is being recorded, `rec` waiting for it."""
    policy = RecordFromUpstream(UPSTREAM)
    OnMiss.bind(policy, index, OneExchange(index.exchanges[0], []), reports.append)
    key = index.key_of(ex)
    done = policy._recording[key] = asyncio.get_running_loop().create_future()
    if rec is not None:
        policy._awaiting[key] = rec
    return policy, done


@pytest.mark.parametrize(("fields", "status", "recorded", "delivered", "left", "done_delivered", "partial"), [
    (dict(), 201, "complete", 5, (None, None), False, None),
    (dict(status=None, end_cause=None, store_error="disk full"), 299, "?", 5, (None, None), False, "disk full"),
    (dict(client_left_at_chunk=3, client_left_ns=1500, end_cause=EndCause.CLIENT_LEFT), 201, "client_left", 3,
     (3, 1500), False, None),
    (dict(client_left_at_chunk=4, client_left_ns=2500), 201, "complete", 4, (4, 2500), True, None),
])
async def test_a_recorded_miss_joins_the_index_and_logs_its_request(
        index: Index, fields: dict[str, Any], status: int, recorded: str, delivered: int,
        left: tuple[int | None, int | None], done_delivered: bool, partial: str | None):
    ex, rec, reports = new_exchange(**fields), Replayed(1, "POST", "/chat/completions", status=299), []
    policy, done = awaiting_policy(index, ex, rec, reports)
    policy._add_recorded(ex)
    assert (rec.exchange_id, rec.status, rec.recorded, rec.total, rec.delivered) == (7, status, recorded, 5,
                                                                                      delivered)
    assert ((rec.client_left_at_chunk, rec.client_left_ns), rec.done_delivered, rec.partial) == (left,
                                                                                              done_delivered,
                                                                                              partial)
    assert reports == [rec] and policy._awaiting == {} and policy._recording == {} and done.done()
    assert index.unused() == [index.exchanges[0]]  # the recorded one counts as used: its request got it
    assert index.lookup(miss_request(index, ex.request_body)) is ex
    assert policy.chunks(ex) is None  # recorded here, but with no DB to read it from


async def test_a_recorded_exchange_no_request_waits_for_is_indexed_and_lets_go(index: Index):
    ex, reports = new_exchange(), []
    policy, done = awaiting_policy(index, ex, None, reports)
    policy._add_recorded(ex)
    assert reports == [] and done.done() and index.lookup(miss_request(index, ex.request_body)) is ex


async def test_the_chunks_of_a_recorded_exchange_come_from_the_db_it_was_recorded_into(two_tapes: Path,
                                                                                      index: Index):
    source = StoreSource(two_tapes, "agent-multi-turn")
    ex = source.exchanges()[1]
    policy, _ = awaiting_policy(index, ex, None, [])
    policy._record_source = source
    assert policy.chunks(ex) is None  # not recorded here
    policy._add_recorded(ex)
    cached = source.cache.get(ex.id)
    assert cached is not None and len(cached) == 79 and policy.chunks(ex) is cached
    assert policy.chunks(source.exchanges()[1]) is None  # the same row, read again, was not recorded here


async def test_a_committed_row_is_handed_to_the_server_s_loop(index: Index):
    ex, reports = new_exchange(), []
    rec = Replayed(1, "POST", "/chat/completions")
    policy, done = awaiting_policy(index, ex, rec, reports)
    policy._committed(ex.to_row())  # before start: no loop to hand it to
    assert not done.done() and reports == []
    closed = asyncio.new_event_loop()
    closed.close()
    policy._loop = closed
    policy._committed(ex.to_row())  # the server has stopped: dropped
    policy._loop = asyncio.get_running_loop()
    policy._committed(ex.to_row())
    await asyncio.wait_for(done, 1)
    assert reports == [rec] and rec.exchange_id == 7 and index.count == 2


@dataclass
class ScriptedRecorder:
    """Stands in for the recording proxy: answers `status` once `go` is set, and notes each settle."""

    status: int
    go: asyncio.Event
    settled: list[float]

    async def forward(self, http: object, path: str, body: bytes) -> Any:
        from aiohttp import web

        await self.go.wait()
        return web.Response(status=self.status)

    async def settle(self, timeout: float) -> None:
        self.settled.append(timeout)


async def test_a_forwarded_miss_holds_identical_requests_until_it_settles(index: Index):
    reports: list[Replayed] = []
    policy = RecordFromUpstream(UPSTREAM)
    OnMiss.bind(policy, index, OneExchange(index.exchanges[0], []), reports.append)
    recorder = policy._recorder = ScriptedRecorder(502, asyncio.Event(), [])  # type: ignore[assignment]
    request = miss_request(index, b'{"model": "new"}')
    request.http = object()  # type: ignore[assignment]  # only handed on to the recorder
    rec = Replayed(1, "POST", "/chat/completions")
    answering = asyncio.ensure_future(policy.answer(request, Miss("no match"), rec))
    await asyncio.sleep(0)
    assert (rec.ending, rec.recorded, policy._awaiting) == ("recorded", "", {request.key: rec})
    identical = asyncio.ensure_future(policy.pending(miss_request(index, b'{"model": "new"}')))
    await asyncio.sleep(0.01)
    assert not identical.done()
    recorder.go.set()
    assert (await asyncio.wait_for(answering, 1)).status == 502
    await asyncio.wait_for(policy.settle(), 1)
    await asyncio.wait_for(identical, 1)
    # its exchange never came: the request is logged as forwarded, and identical requests go on
    assert recorder.settled == [RECORD_SETTLE_TIMEOUT] == [30.0]
    assert reports == [rec] and (rec.status, rec.exchange_id) == (502, None)
    assert policy._awaiting == {} and policy._recording == {}
    assert rec.line() == ("#1 POST /chat/completions -> upstream 502: forwarded, but its recording never joined "
                          "the index (see any storing errors above)")


async def test_a_miss_without_its_http_request_is_not_forwarded(index: Index):
    policy = RecordFromUpstream(UPSTREAM)
    OnMiss.bind(policy, index, OneExchange(index.exchanges[0], []), print)
    with pytest.raises(AssertionError) as refused:
        await policy.answer(miss_request(index, b"{}"), Miss("no match"), Replayed(1, "POST", "/"))
    # pytest's assertion rewriting (the package is a pytest plugin) adds its own lines after the message
    assert str(refused.value).splitlines()[0] == "a miss is forwarded as the HTTP request it came as"
    assert (policy._recording, policy._awaiting, policy._settling) == ({}, {}, set())


async def test_a_settling_miss_leaves_a_later_request_s_wait_alone(index: Index):
    reports: list[Replayed] = []
    policy = RecordFromUpstream(UPSTREAM)
    OnMiss.bind(policy, index, OneExchange(index.exchanges[0], []), reports.append)
    policy._recorder = ScriptedRecorder(200, asyncio.Event(), [])  # type: ignore[assignment]
    earlier, later = Replayed(1, "POST", "/"), Replayed(2, "POST", "/")
    loop = asyncio.get_running_loop()
    earlier_done, later_done = loop.create_future(), loop.create_future()
    policy._awaiting["k"], policy._recording["k"] = later, later_done
    await policy._settle_recording("k", earlier, earlier_done)
    assert reports == [] and policy._awaiting == {"k": later} and policy._recording == {"k": later_done}
    await policy._settle_recording("k", later, later_done)
    assert reports == [later] and policy._awaiting == {} and policy._recording == {} and later_done.done()


def test_same_file_compares_resolved_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert _same_file(tmp_path / "a.db", tmp_path / "sub" / ".." / "a.db")
    assert not _same_file(tmp_path / "a.db", tmp_path / "b.db")
    assert not _same_file(tmp_path / "a.db", None)

    def unreadable(self: Path, strict: bool = False) -> Path:
        raise OSError("no such directory")

    monkeypatch.setattr(Path, "resolve", unreadable)
    assert not _same_file(tmp_path / "a.db", tmp_path / "a.db")


async def test_a_miss_is_recorded_once_then_served_from_the_db_it_was_recorded_into(tmp_path: Path):
    db, misses = tmp_path / "played.db", tmp_path / "misses.db"
    import_cassette(OPENAI_TAPE, db)
    lines: list[str] = []
    async with ScriptedUpstream(Script(text="A fresh answer.")) as upstream:
        async with ReplayServer(db, speed=0, upstream=upstream.base_url, record_db=misses,
                                log=lines.append) as srv:
            first = await post(srv.base_url, chat("never recorded"))
            await srv.settle()
            second = await post(srv.base_url, chat("never recorded"))
        assert len(upstream.sent) == 1
        sent = upstream.sent[0].body
    (new,) = Store(misses).exchanges()
    assert [(status, sha(body), error) for status, body, error in (first, second)] == [(200, sha(sent), None)] * 2
    n = new.chunk_count
    assert lines == [
        f"#1 POST /chat/completions -> upstream, recorded as exchange {new.id} 200: {n}/{n} chunks, ended complete",
        f"#2 POST /chat/completions -> exchange {new.id} 200: {n}/{n} chunks, ended clean",
    ]
    assert dict(srv.counts.endings) == {"recorded": 1, "clean": 1} and len(Store(db).exchanges()) == 1
