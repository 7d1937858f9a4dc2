"""StoreIndex on small DBs written row by row: the same answers as the in-memory Index, a tape served from its own
recordings, the closest of the most recent 2,000 named on a miss, and what is recorded while serving counted once.
Real SQLite files, no proxy: each row is stored with the request key the writer stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streamreplay.exchange import Exchange
from streamreplay.replay.matching import Index, Miss
from streamreplay.replay.storeindex import CLOSEST_SCAN, StoreIndex, use_store_index
from streamreplay.requestkey import request_key
from streamreplay.store import Store
from streamreplay.store.database import KEY_INDEX

CHAT = "/chat/completions"


def body(prompt: str, **extra: Any) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}], "stream": True,
                       **extra}).encode()


def put(store: Store, prompt: str, tape: str = "t", path: str = CHAT, upstream: str = "http://up/v1",
        raw: bytes | None = None, **extra: Any) -> int:
    """Store one exchange as the writer would (its request key from the stored body); returns its id."""
    data = body(prompt, **extra) if raw is None else raw
    seq = store.db.execute("select count(*) from exchanges where tape = ?", [tape]).fetchone()[0]
    row = Exchange(id=0, tape=tape, seq=seq, method="POST", path=path, request_body=data, upstream=upstream,
                   request_key=request_key("POST", path, data), status=200, end_cause="complete").to_row()
    del row["id"]
    with store.db.conn:
        return store.db["exchanges"].insert(row).last_pk


def ask(index: Index, prompt: str, path: str = CHAT, **extra: Any) -> Any:
    return index.lookup(index.request("POST", path, body(prompt, **extra)))


def answers(index: Index, prompts: list[str]) -> list[object]:
    """Each prompt's answer in turn (see answers_one)."""
    return [answers_one(index, prompt) for prompt in prompts]


def answers_one(index: Index, prompt: str, **extra: Any) -> object:
    """A prompt's answer: the exchange's id, or the miss's reason and the id it names closest."""
    found = ask(index, prompt, **extra)
    return (found.reason, found.closest and found.closest.id) if isinstance(found, Miss) else found.id


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "rec.db")


@pytest.fixture
def filled(store: Store) -> Store:
    """Tape t: a, b, a, c, a (ids 1-5); tape other: a (id 6), recorded after."""
    for prompt in "abaca":
        put(store, prompt)
    put(store, "a", tape="other", upstream="http://other/v1")
    return store


# -- when play may look a DB up in place ---------------------------------------------------------------------

def test_a_keyed_and_indexed_db_in_key_mode_with_the_default_matchers_is_looked_up_in_place(filled: Store):
    assert use_store_index(filled, "key", (), ("method", "path", "body")) is True


@pytest.mark.parametrize(("match", "ignore", "match_on"), [
    ("sequence", (), ("method", "path", "body")),
    ("key", ("user",), ("method", "path", "body")),
    ("key", (), ("method", "path")),
    ("key", (), ("method", "path", "body", "query")),
])
def test_rules_the_stored_key_does_not_hold_are_not_looked_up_in_place(filled: Store, match: str,
                                                                        ignore: tuple[str, ...],
                                                                        match_on: tuple[str, ...]):
    assert use_store_index(filled, match, ignore, match_on) is False


def test_a_db_without_the_key_index_is_not_looked_up_in_place(filled: Store):
    filled.db.execute(f"drop index {KEY_INDEX}")
    assert use_store_index(filled, "key", (), ("method", "path", "body")) is False


@pytest.mark.parametrize("stored_key", [None, ""])
def test_a_db_with_one_unkeyed_row_is_not_looked_up_in_place(filled: Store, stored_key: str | None):
    with filled.db.conn:
        filled.db.execute("update exchanges set request_key = ? where id = 3", [stored_key])
    assert use_store_index(filled, "key", (), ("method", "path", "body")) is False


# -- the same answers as the in-memory Index -----------------------------------------------------------------

@pytest.mark.parametrize("repeat", [True, False])
def test_every_request_repeat_and_miss_is_answered_as_the_in_memory_index_answers_it(filled: Store, repeat: bool):
    prompts = ["a", "b", "a", "a", "a", "b", "zzz", "b"]
    in_db = StoreIndex(filled, "t", repeat)
    in_memory = Index(filled.exchanges(tape="t"), repeat=repeat)
    assert answers(in_db, prompts) == answers(in_memory, prompts)
    assert [ex.id for ex in in_db.unused()] == [ex.id for ex in in_memory.unused()] == [4]
    assert in_db.count == in_memory.count == 5


def test_a_request_gets_its_recordings_in_recorded_order_then_the_last_again(filled: Store):
    index = StoreIndex(filled, "t")
    assert (index.mode, index.repeat) == ("key", True)  # an Index in key mode, as use_store_index requires
    assert answers(index, ["a", "a", "a", "a", "b", "b"]) == [1, 3, 5, 5, 2, 2]


def test_with_repeat_off_a_used_up_request_misses_naming_its_last_recording(filled: Store):
    index = StoreIndex(filled, "t", repeat=False)
    assert answers(index, ["b", "b", "a", "a", "a", "a", "b"]) == [
        2, ("all 1 recordings of this request were used, and repeat is off", 2),
        1, 3, 5, ("all 3 recordings of this request were used, and repeat is off", 5),
        ("all 1 recordings of this request were used, and repeat is off", 2),
    ]


def test_a_miss_names_the_closest_recording_and_the_first_difference(filled: Store):
    miss = ask(StoreIndex(filled, "t"), "c", temperature=1)
    assert isinstance(miss, Miss) and miss.closest.id == 4
    assert miss.reason == ("no recording matches POST /chat/completions; closest is exchange 4 (tape t, #3): "
                           "body differs: temperature: 1 in the request, not in the recording")


def test_of_two_equally_close_recordings_a_miss_names_the_earlier(store: Store):
    put(store, "x", temperature=1)
    put(store, "x", temperature=2)
    miss = ask(StoreIndex(store, "t"), "x", temperature=3)
    assert isinstance(miss, Miss) and miss.closest.id == 1


def test_an_empty_tape_misses_saying_so(store: Store):
    put(store, "a", tape="other")
    miss = ask(StoreIndex(store, "t"), "a")
    assert isinstance(miss, Miss) and miss.closest is None
    assert miss.reason == "no recording matches POST /chat/completions: the tape is empty"


# -- a tape is served from its own recordings ----------------------------------------------------------------

def test_a_tape_is_served_from_its_own_recordings_only(filled: Store):
    assert answers(StoreIndex(filled, "other"), ["a", "a"]) == [6, 6]
    other = StoreIndex(filled, "other")
    assert ([ex.id for ex in other.exchanges], other.count, other.upstreams()) == ([6], 1, ["http://other/v1"])
    assert ask(other, "b").closest.id == 6


def test_without_a_tape_every_tape_is_served(filled: Store):
    index = StoreIndex(filled)
    assert answers(index, ["a", "a", "a", "a", "a"]) == [1, 3, 5, 6, 6]
    assert index.count == 6 and sorted(index.upstreams()) == ["http://other/v1", "http://up/v1"]


def test_the_paths_are_those_the_tape_recorded(store: Store):
    put(store, "a")
    put(store, "a", path="/responses")
    put(store, "a", tape="other", path="/messages")
    assert StoreIndex(store, "t").paths == {CHAT, "/responses"}
    assert StoreIndex(store).paths == {CHAT, "/responses", "/messages"}


def test_a_stored_redacted_field_matches_whatever_the_request_sends_there(store: Store):
    """A field the recording's --redact-field hid is stored "[redacted]": replay masks it in every request."""
    put(store, "a", user="[redacted]")
    put(store, "a", user="alice", tape="other")  # another tape's bodies say nothing about this one's
    index = StoreIndex(store, "t")
    assert index.masks == frozenset({("user",)})
    assert ask(index, "a", user="bob").id == 1
    assert StoreIndex(store, "other").masks == frozenset()


def test_the_masks_are_every_stored_bodys_redacted_fields(store: Store):
    put(store, "a", user="[redacted]", metadata={"key": "[redacted]"})
    put(store, "b", metadata={"key": "[redacted]"})
    put(store, "c")
    index = StoreIndex(store, "t")
    assert index.masks == frozenset({("user",), ("metadata", "key")})
    assert ask(index, "a", user="eve", metadata={"key": "k-1"}).id == 1


def test_recordings_made_with_and_without_a_redaction_are_served_as_the_in_memory_index_serves_them(store: Store):
    """One recording stored its `user` "[redacted]", others of the same request kept theirs: the mask applies to
    every recording played, so each answers any `user`, in recorded order, as the in-memory index has it."""
    put(store, "a", user="[redacted]")
    put(store, "a", user="alice", tape="other")
    put(store, "a", user="carol", metadata={"team": "x"}, tape="other")
    put(store, "b", user="dave")
    in_db, in_memory = StoreIndex(store), Index(store.exchanges())
    requests = [("a", "bob"), ("a", "eve"), ("a", "bob"), ("a", "bob"), ("b", "zed"), ("c", "bob")]
    answered = [answers_one(index, prompt, user=user) for index in (in_db, in_memory) for prompt, user in requests]
    assert answered[:len(requests)] == answered[len(requests):]
    assert answered[:4] == [1, 2, 2, 2]  # "a" with metadata is another request
    assert answered[4] == 4
    assert [ex.id for ex in in_db.unused()] == [ex.id for ex in in_memory.unused()] == [3]


@pytest.mark.parametrize("field", [("metadata", "team"), ("we\"ird",), ("a.b",), ("it's",)])
def test_a_nested_or_oddly_named_field_redacted_in_one_recording_is_masked_in_the_others(store: Store, field):
    def at(value: str) -> dict[str, Any]:
        return {field[0]: {field[1]: value}} if len(field) == 2 else {field[0]: value}
    put(store, "a", **at("[redacted]"))
    put(store, "a", tape="other", **at("alice"))
    put(store, "a", tape="other", **at("alice"), **{"user" if field[0] != "user" else "u": "x"})
    index = StoreIndex(store)
    assert index.masks == frozenset({field})
    assert [answers_one(index, "a", **at("bob")) for _ in range(3)] == [1, 2, 2]


def test_a_redacted_field_in_a_body_stored_as_a_blob_is_masked_too(store: Store):
    """A body that is not UTF-8 is stored as a blob (exchange.body_for_db); one holding a lone surrogate's
    bytes is still JSON, and its "[redacted]" field is still masked."""
    put(store, "", raw=b'{"model": "m", "note": "\xed\xa0\x80", "user": "[redacted]"}')
    assert store.db.execute("select typeof(request_body) from exchanges").fetchone() == ("blob",)
    assert StoreIndex(store, "t").masks == frozenset({("user",)})


# -- the tape as replay found it -----------------------------------------------------------------------------

def test_rows_stored_after_the_index_was_made_are_not_served(filled: Store):
    index = StoreIndex(filled, "t")
    late = put(filled, "late")
    put(filled, "a")
    assert ask(index, "late").closest.id != late
    assert answers(index, ["a", "a", "a", "a"]) == [1, 3, 5, 5]
    assert index.count == 5 and len(index.exchanges) == 5 and index.paths == {CHAT}


def test_an_index_of_an_empty_db_stays_empty(store: Store):
    index = StoreIndex(store, "t")
    put(store, "a")
    assert index.count == 0 and index.exchanges == []
    assert ask(index, "a").reason == "no recording matches POST /chat/completions: the tape is empty"


def test_the_last_row_at_start_is_served(filled: Store):
    index = StoreIndex(filled)
    assert ask(index, "c").id == 4 and [ex.id for ex in index.exchanges] == [1, 2, 3, 4, 5, 6]


# -- what is recorded while serving --------------------------------------------------------------------------

def recorded_while_serving(store: Store, prompt: str, path: str = CHAT, **extra: Any) -> Exchange:
    """A miss forwarded upstream and recorded into this very DB: the row exists, and `add` hands it over."""
    return store.exchange(put(store, prompt, upstream="http://live/v1", path=path, **extra))


def test_what_is_recorded_while_serving_is_counted_once_and_served_after_the_stored(filled: Store):
    index = StoreIndex(filled, "t")
    assert ask(index, "a").id == 1
    new = recorded_while_serving(filled, "a")
    index.add([new])
    assert index.count == 6 and [ex.id for ex in index.exchanges] == [1, 2, 3, 4, 5, new.id]
    assert index.upstreams() == ["http://up/v1", "http://live/v1"]
    # the request that missed got it: counted as used, so the next ones are the stored ones, then it again
    assert answers(index, ["a", "a", "a", "a"]) == [5, new.id, new.id, new.id]


@pytest.mark.parametrize("repeat", [True, False])
def test_after_an_add_the_answers_are_the_in_memory_index_answers(filled: Store, repeat: bool):
    in_db = StoreIndex(filled, "t", repeat)
    in_memory = Index(filled.exchanges(tape="t"), repeat=repeat)
    added = [recorded_while_serving(filled, p) for p in ("a", "b", "n", "n")]
    for index in (in_db, in_memory):
        assert answers(index, ["b"]) == [2]
        index.add(added[:2])
        index.add(added[2:])
    prompts = ["a", "a", "a", "a", "b", "b", "n", "n", "n", "zzz"]
    assert answers(in_db, prompts) == answers(in_memory, prompts)
    assert [ex.id for ex in in_db.unused()] == [ex.id for ex in in_memory.unused()]
    assert in_db.count == in_memory.count == 9


def test_a_recording_added_while_serving_answers_its_request_and_a_miss_may_name_it(store: Store):
    put(store, "a")
    index = StoreIndex(store, "t", repeat=False)
    new = recorded_while_serving(store, "b", path="/live/chat")
    index.add([new])
    assert index.paths == {CHAT, "/live/chat"}
    assert index.unused() == [store.exchange(1)]
    again = index.lookup(index.request("POST", "/live/chat", body("b")))
    assert isinstance(again, Miss) and again.closest is new
    assert again.reason == "all 1 recordings of this request were used, and repeat is off"
    near = index.lookup(index.request("POST", "/live/chat", body("b", temperature=1)))
    assert isinstance(near, Miss) and near.closest is new


def test_unused_lists_the_stored_then_the_added_not_yet_served(filled: Store):
    index = StoreIndex(filled, "t")
    assert [ex.id for ex in index.unused()] == [1, 2, 3, 4, 5]
    answers(index, ["a", "c"])
    assert [ex.id for ex in index.unused()] == [2, 3, 5]
    new = recorded_while_serving(filled, "n")
    index.add([new])
    assert [ex.id for ex in index.unused()] == [2, 3, 5]  # the request that missed got it
    # were it not counted as served, it would be listed after the stored ones, as Index lists it
    index.served.discard(id(new))
    assert [ex.id for ex in index.unused()] == [2, 3, 5, new.id]


# -- the closest of the most recent 2,000 --------------------------------------------------------------------

def test_a_miss_compares_only_the_most_recent_2000_recordings(store: Store):
    assert CLOSEST_SCAN == 2000
    put(store, "needle", temperature=1)  # the closest of all, but 2,000 recordings older than the last
    rows = [Exchange(id=0, tape="t", seq=k, method="POST", path="/other", request_body=body(f"hay {k}"),
                     request_key=request_key("POST", "/other", body(f"hay {k}"))).to_row()
            for k in range(1, CLOSEST_SCAN + 1)]
    for row in rows:
        del row["id"]
    with store.db.conn:
        store.db["exchanges"].insert_all(rows)
    index = StoreIndex(store, "t")
    miss = ask(index, "needle")
    assert isinstance(miss, Miss) and miss.closest.id == 2  # the oldest scanned: all the hay is alike
    store.db.execute("delete from exchanges where id = 2")
    assert ask(StoreIndex(store, "t"), "needle").closest.id == 1  # now within the 2,000
