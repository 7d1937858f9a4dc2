"""Matching without a server: each matcher alone (its match and its reason), the composed list, the
index built on it (keys, ignored fields, closest recording, sequence mode), and the request parsed once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streamreplay.replay import request as request_module
from streamreplay.replay.matching import (
    DEFAULT_MATCH_ON,
    MATCHERS,
    Index,
    Matcher,
    MatchRules,
    Miss,
    difference_count,
    first_difference,
    matchers_named,
    query_key,
    register_matcher,
)
from streamreplay.replay.request import IncomingRequest
from streamreplay.requestkey import NOT_JSON, body_digest, canonical_body, json_object, request_key
from streamreplay.store import Exchange

RULES = MatchRules()


def body(content: str = "Say hello in five words.", **extra: Any) -> bytes:
    return json.dumps({"model": "smollm2", "messages": [{"role": "user", "content": content}], **extra}).encode()


def exchange(n: int, payload: bytes = b"", method: str = "POST", path: str = "/chat/completions", query: str = "",
             tape: str = "t") -> Exchange:
    return Exchange(id=n, tape=tape, seq=n - 1, method=method, path=path, query=query, request_body=payload)


def req(payload: bytes = b"", method: str = "POST", path: str = "/chat/completions", query: str = "",
        rules: MatchRules = RULES) -> IncomingRequest:
    return IncomingRequest(method, path, payload, rules, query)


def recorded(payload: bytes = b"", method: str = "POST", path: str = "/chat/completions", query: str = ""):
    return RULES.recorded(exchange(1, payload, method, path, query))


# -- each matcher alone -----------------------------------------------------------------------------------


def test_method_matches_whatever_the_case_and_names_both_sides():
    method = MATCHERS["method"]
    assert method(recorded(method="POST"), req(method="post")) is None
    assert method(recorded(method="POST"), req(method="GET")) == "method: GET != POST"


@pytest.mark.parametrize("match_on", [("method", "path", "body"), ("method", "path")])
def test_a_recording_is_found_whatever_the_case_of_either_method(match_on: tuple[str, ...]):
    """The index looks a request up by the matchers' keys: a method's case changes neither the key nor the find."""
    index = Index([exchange(1, body(), method="POST"), exchange(2, body(), method="get")], match_on=match_on)
    assert index.lookup(index.request("post", "/chat/completions", body())).id == 1
    assert index.lookup(index.request("GET", "/chat/completions", body())).id == 2
    assert index.request("post", "/chat/completions", body()).key == index.request("POST", "/chat/completions",
                                                                                   body()).key


def test_path_matches_exactly_and_names_both_sides():
    path = MATCHERS["path"]
    assert path(recorded(path="/chat/completions"), req(path="/chat/completions")) is None
    assert path(recorded(path="/chat/completions"), req(path="/completions")) == \
        "path: /completions != /chat/completions"


def test_body_names_the_first_field_that_differs():
    match = MATCHERS["body"]
    assert match(recorded(body()), req(body())) is None
    assert match(recorded(body()), req(body("Say hi in five words."))) == \
        "messages[0].content: 'Say hi in five words.' != 'Say hello in five words.' (request != recording)"
    assert match(recorded(body()), req(body(temperature=0.5))) == \
        "temperature: 0.5 in the request, not in the recording"
    assert match(recorded(body(temperature=0)), req(body())) == "temperature: recorded 0, missing in the request"


def test_body_leaves_out_how_the_answer_is_delivered_and_secrets():
    match = MATCHERS["body"]
    assert match(recorded(body(stream=True)), req(body(stream=False, stream_options={"x": 1}))) is None
    # the recorder stores a secret-looking field as [redacted]: a request carrying the real one matches it
    assert match(recorded(body(api_key="[redacted]")), req(body(api_key="sk-live-123"))) is None


def test_body_that_is_not_json_is_compared_as_bytes():
    match = MATCHERS["body"]
    assert match(recorded(b"{not json"), req(b"{not json")) is None
    assert match(recorded(b"{not json"), req(b"{not json!")) == \
        "body: b'{not json!' != b'{not json' (request != recording)"


def test_query_matches_in_any_order_with_secrets_as_stored():
    query = MATCHERS["query"]
    assert query(recorded(query="a=1&b=2"), req(query="b=2&a=1")) is None
    assert query(recorded(query="api_key=%5Bredacted%5D"), req(query="api_key=sk-123")) is None
    assert query(recorded(query="a=1"), req(query="a=2")) == "query: a=2 != a=1"
    assert query(recorded(query="a=1"), req()) == "query: (none) != a=1"


@pytest.mark.parametrize("name", sorted(MATCHERS))
@pytest.mark.parametrize(("theirs", "ours"), [
    (dict(), dict()),
    (dict(method="POST"), dict(method="GET")),
    (dict(path="/a"), dict(path="/b")),
    (dict(payload=body()), dict(payload=body("other"))),
    (dict(payload=body(stream=True)), dict(payload=body())),
    (dict(query="a=1"), dict(query="a=2")),
])
def test_a_matcher_gives_a_reason_exactly_when_its_keys_differ(name: str, theirs: dict, ours: dict):
    matcher = MATCHERS[name]
    a, b = recorded(**theirs), req(**ours)
    assert (matcher(a, b) is None) == (matcher.key(a) == matcher.key(b))


# -- the composed list ---------------------------------------------------------------------------------------


def test_the_list_explains_with_its_first_matcher_that_differs():
    rules = MatchRules()
    assert [m.name for m in rules.matchers] == list(DEFAULT_MATCH_ON)
    theirs = rules.recorded(exchange(1, body()))
    assert rules.explain(theirs, req(body())) is None
    assert rules.explain(theirs, req(body("x"), path="/completions")) == \
        "path differs: path: /completions != /chat/completions"
    assert rules.explain(theirs, req(body("x"), method="GET", path="/x")) == "method differs: method: GET != POST"
    assert rules.key(req(body())) == rules.key(theirs)


def test_the_default_key_is_the_stored_request_key():
    """The index's key and the request_key the store keeps for diagnose say "the same request" alike."""
    key = req(body(stream=True), method="post").key
    assert " ".join(key) == request_key("post", "/chat/completions", body(stream=True))


def test_the_stored_request_key_does_not_change_between_versions():
    """The store keeps request_key per exchange (diagnose compares them): its bytes are pinned, sorted keys,
    compact separators, UTF-8 not \\u escapes, 16 hex digits: sha256('{"messages":[{"content":"héllo",
    "role":"user"}],"model":"m"}')[:16]."""
    payload = json.dumps({"model": "m", "messages": [{"role": "user", "content": "héllo"}]}).encode()
    assert request_key("post", "/chat/completions", payload) == "POST /chat/completions c179fdcf375b0afd"
    assert body_digest({"b": 1, "a": 2}) == body_digest({"a": 2, "b": 1})


def test_the_digest_of_a_body_that_is_not_json_is_of_its_bytes():
    assert body_digest(b"not json") == "7ccfa1fbf3940e6f"


def test_a_lone_surrogate_escape_keys_as_its_own_bytes():
    assert body_digest(json.loads(b'{"a":"\\ud83d"}')) == "4f8fc98dff346e9c"


def test_the_key_masks_the_fields_a_recording_redacted():
    mask = [("metadata", "user_id")]
    assert canonical_body(body(metadata={"user_id": "u-42"}), mask=mask) == \
        canonical_body(body(metadata={"user_id": "[redacted]"}))
    assert request_key("POST", "/p", body(metadata={"user_id": "u-42"}), mask=mask) == \
        request_key("POST", "/p", body(metadata={"user_id": "[redacted]"}))


def test_json_object_is_the_body_only_when_it_is_a_json_object():
    assert json_object(b'{"a": 1}') == {"a": 1}
    assert json_object(b"[1]") is None
    assert json_object(b"{not json") is None
    assert json_object(b"") is None
    assert repr(NOT_JSON) == "NOT_JSON"


@pytest.mark.parametrize("ignore", [(), ("user",)])
def test_the_index_matches_whatever_the_delivery_fields_say_with_or_without_more_ignored(ignore: tuple[str, ...]):
    # stream and stream_options are always left out, --ignore-field adds to them and replaces none
    index = Index([exchange(1, body(stream=True, stream_options={"include_usage": True}, user="a"))], ignore)
    asked = body(stream=False, user="a") if not ignore else body(stream=False, user="b")
    assert index.lookup(index.request("POST", "/chat/completions", asked)).id == 1
    assert index.lookup(index.request("POST", "/chat/completions", body(user="a"))).id == 1
    if ignore:
        assert index.lookup(index.request("POST", "/chat/completions", body(stream=True))).id == 1
    else:
        miss = index.lookup(index.request("POST", "/chat/completions", body(user="b")))
        assert isinstance(miss, Miss) and "user: 'b' != 'a'" in miss.reason


def test_a_list_without_body_matches_whatever_the_body():
    index = Index([exchange(1, body())], match_on=("method", "path"))
    assert index.lookup(index.request("POST", "/chat/completions", body("anything else"))).id == 1
    miss = index.lookup(index.request("POST", "/completions", body()))
    assert isinstance(miss, Miss) and miss.reason.endswith("path differs: path: /completions != /chat/completions")


def test_a_list_with_query_tells_queries_apart():
    exchanges = [exchange(1, body(), query="page=1"), exchange(2, body(), query="page=2")]
    index = Index(exchanges, match_on=("method", "path", "query", "body"))
    assert index.lookup(index.request("POST", "/chat/completions", body(), "page=2")).id == 2
    miss = index.lookup(index.request("POST", "/chat/completions", body(), "page=3"))
    assert isinstance(miss, Miss) and "query differs: query: page=3 != page=1" in miss.reason


def test_an_unknown_matcher_is_named():
    with pytest.raises(ValueError, match=r"unknown matcher 'modle' \(known: method, path, body, query"):
        matchers_named(["method", "modle"])


def test_a_registered_matcher_is_composed_by_name(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("streamreplay.replay.matching.MATCHERS", dict(MATCHERS))

    def model(request: Any) -> Any:
        return request.json.get("model") if isinstance(request.json, dict) else None

    added = register_matcher("model", model)
    index = Index([exchange(1, body())], match_on=("method", "path", "model"))
    assert index.lookup(index.request("POST", "/chat/completions", body("other words"))).id == 1
    other = json.dumps({"model": "gpt-4o-mini", "messages": []}).encode()
    miss = index.lookup(index.request("POST", "/chat/completions", other))
    assert isinstance(miss, Miss)
    assert miss.reason.endswith("model differs: model: 'gpt-4o-mini' != 'smollm2'")
    assert added(index.rules.recorded(exchange(2, other)), req(other)) is None


# -- the index --------------------------------------------------------------------------------------------


def test_a_miss_names_the_closest_recording_and_the_field():
    index = Index([exchange(1, body(), tape="my-session")])
    miss = index.lookup(index.request("POST", "/chat/completions", body("Say hi in five words.")))
    assert isinstance(miss, Miss) and miss.closest.id == 1
    assert miss.reason == (
        "no recording matches POST /chat/completions; closest is exchange 1 (tape my-session, #0): body differs: "
        "messages[0].content: 'Say hi in five words.' != 'Say hello in five words.' (request != recording)")


def test_the_closest_recording_is_the_one_fewest_fields_away():
    exchanges = [exchange(1, body("far", temperature=1, top_p=1)), exchange(2, body("near")),
                 exchange(3, body("nearer"), path="/completions")]
    index = Index(exchanges)
    miss = index.lookup(index.request("POST", "/chat/completions", body("new")))
    assert miss.closest.id == 2  # a different path weighs more than any body field
    assert Index([]).lookup(req(body())).reason == "no recording matches POST /chat/completions: the tape is empty"


def test_a_list_of_another_length_counts_each_item_missing_or_extra_as_a_difference():
    m1, m2, m3 = ({"role": "user", "content": c} for c in ("one", "two", "three"))
    short = json.dumps({"model": "smollm2", "messages": [m1]}).encode()  # 2 items short of the request
    long = json.dumps({"model": "smollm2", "messages": [m1, m2, m3], "temperature": 1}).encode()  # 1 field off
    index = Index([exchange(1, short), exchange(2, long)])
    asked = json.dumps({"model": "smollm2", "messages": [m1, m2, m3]}).encode()
    miss = index.lookup(index.request("POST", "/chat/completions", asked))
    assert isinstance(miss, Miss) and miss.closest.id == 2
    assert difference_count(json.loads(short), json.loads(asked)) == 2


def test_a_miss_among_several_recordings_names_the_nearest_and_its_field():
    """Several recordings one to four fields away, the nearest neither first nor last: the miss names
    that one (one field off) and that field, not the one two fields off, nor the farthest."""
    exchanges = [exchange(1, body("far", temperature=1, top_p=1)),  # 3 fields away
                 exchange(2, body(temperature=0.5, seed=1)),  # 2
                 exchange(3, body(temperature=0.5)),  # 1: the nearest
                 exchange(4, body("farther", temperature=2, top_p=1, seed=7))]  # 4
    index = Index(exchanges)
    miss = index.lookup(index.request("POST", "/chat/completions", body(temperature=0.7)))
    assert isinstance(miss, Miss) and miss.closest.id == 3
    assert miss.reason == ("no recording matches POST /chat/completions; closest is exchange 3 (tape t, #2): "
                           "body differs: temperature: 0.7 != 0.5 (request != recording)")


def test_a_miss_names_a_field_whose_value_differs_only_in_its_json_type():
    """1 and 1.0, true and 1 are equal in Python but different requests on the wire: the miss still says where."""
    assert first_difference(1.0, 1) == "body: 1 != 1.0 (request != recording)"
    assert first_difference({"t": True}, {"t": 1}) == "t: 1 != True (request != recording)"
    assert first_difference({"t": [0]}, {"t": [False]}) == "t[0]: False != 0 (request != recording)"
    index = Index([exchange(1, body(temperature=1.0))])
    miss = index.lookup(index.request("POST", "/chat/completions", body(temperature=1)))
    assert isinstance(miss, Miss) and miss.closest.id == 1
    assert miss.reason.endswith("body differs: temperature: 1 != 1.0 (request != recording)"), miss.reason


def test_identical_requests_get_their_recordings_in_order_then_the_last_again():
    index = Index([exchange(1, body()), exchange(2, body("other")), exchange(3, body())])
    assert [index.lookup(index.request("POST", "/chat/completions", body())).id for _ in range(3)] == [1, 3, 3]
    assert index.unused() == [index.exchanges[1]]
    once = Index([exchange(1, body())], repeat=False)
    assert once.lookup(once.request("POST", "/chat/completions", body())).id == 1
    miss = once.lookup(once.request("POST", "/chat/completions", body()))
    assert miss.reason == "all 1 recordings of this request were used, and repeat is off" and miss.closest.id == 1


def test_ignored_fields_are_left_out_of_the_key_and_the_reason():
    index = Index([exchange(1, body(user="a"))], ignore=["user"])
    assert index.lookup(index.request("POST", "/chat/completions", body(user="b"))).id == 1
    assert index.lookup(index.request("POST", "/chat/completions", body())).id == 1
    miss = index.lookup(index.request("POST", "/chat/completions", body("x", user="b")))
    assert "user" not in miss.reason and "messages[0].content" in miss.reason


def test_fields_a_recording_redacted_match_any_value():
    """A --redact-field of the recording (unknown to replay) is seen in the stored body and masked."""
    index = Index([exchange(1, body(metadata={"user_id": "[redacted]"}))])
    assert index.lookup(index.request("POST", "/chat/completions", body(metadata={"user_id": "u-42"}))).id == 1


def test_a_request_read_with_other_rules_is_read_again_with_the_index_rules():
    index = Index([exchange(1, body(user="a"))], ignore=["user"])
    assert index.lookup(req(body(user="b"))).id == 1  # made with the default rules, which keep `user`


def test_sequence_mode_serves_the_tape_in_order_whatever_the_request():
    index = Index([exchange(1, body("one")), exchange(2, body("two"))], mode="sequence")
    assert [index.lookup(req(b"anything", method="GET", path="/x")).id for _ in range(3)] == [1, 2, 2]
    once = Index([exchange(1, body("one")), exchange(2, body("two"))], mode="sequence", repeat=False)
    assert [once.lookup(req()).id for _ in range(2)] == [1, 2]
    assert once.lookup(req()).reason == "the tape's 2 exchanges were all served (sequence mode)"
    with pytest.raises(ValueError, match="match mode must be key or sequence"):
        Index([], mode="random")


def test_sequence_mode_without_repeat_misses_once_every_exchange_was_served():
    tape = [exchange(1, body("one")), exchange(2, body("two")), exchange(3, body("three"))]
    once = Index(tape, mode="sequence", repeat=False)
    assert [once.lookup(req()).id for _ in range(3)] == [1, 2, 3]
    for _ in range(2):  # and stays a miss
        miss = once.lookup(req())
        assert isinstance(miss, Miss) and miss.reason == "the tape's 3 exchanges were all served (sequence mode)"
    repeating = Index(tape, mode="sequence")
    assert [repeating.lookup(req()).id for _ in range(5)] == [1, 2, 3, 3, 3]


def test_added_recordings_are_matched_and_count_as_used():
    index = Index([exchange(1, body())], repeat=False)
    new = exchange(2, body("new"))
    index.add([new])
    assert index.unused() == [index.exchanges[0]]
    assert isinstance(index.lookup(index.request("POST", "/chat/completions", body("new"))), Miss)  # used: by the miss
    index.add([exchange(3, body("new"))])
    assert isinstance(index.lookup(index.request("POST", "/chat/completions", body("new"))), Miss)
    assert index.key_of(new) == index.request("POST", "/chat/completions", body("new")).key


# -- the request, parsed once -------------------------------------------------------------------------------


def test_the_request_body_is_parsed_once_however_much_is_read(monkeypatch: pytest.MonkeyPatch):
    index = Index([exchange(1, body())])
    calls: list[bytes] = []
    real = request_module.parse_body
    monkeypatch.setattr(request_module, "parse_body", lambda raw: calls.append(raw) or real(raw))
    incoming = index.request("POST", "/chat/completions", body(stream=True))
    assert isinstance(incoming.key, tuple) and incoming.stream is True and incoming.is_json
    assert index.lookup(incoming).id == 1 and incoming.canonical == json.loads(body())
    assert calls == [body(stream=True)]


@pytest.mark.parametrize(("raw", "stream", "is_json"), [
    (body(stream=True), True, True),
    (body(), False, True),
    (b"[1, 2]", None, True),
    (b"", None, True),
    (b"{not json", None, False),
])
def test_what_the_body_asks_for(raw: bytes, stream: bool | None, is_json: bool):
    incoming = req(raw)
    assert (incoming.stream, incoming.is_json) == (stream, is_json)
    assert (incoming.json is NOT_JSON) == (not is_json)


# -- the parts, each alone (aimed at what mutation testing found unchecked) ------------------------------


def test_first_difference_between_values_of_different_shapes_and_lengths():
    assert first_difference({"a": 1}, 5) == 'body: 5 != {"a": 1} (request != recording)'
    assert first_difference([1], "x") == "body: 'x' != [1] (request != recording)"
    assert first_difference([1], [1, 2]) == "body: 2 items in the request, 1 recorded"
    assert first_difference({"a": [1, 2]}, {"a": [1]}) == "a: 1 items in the request, 2 recorded"


def test_a_shown_value_is_json_as_written_and_cut_to_sixty_characters():
    assert first_difference({"a": {"x": "é"}}, {}) == 'a: recorded {"x": "é"}, missing in the request'
    assert first_difference("x" * 58, "y" * 58) == f"body: '{'y' * 58}' != '{'x' * 58}' (request != recording)"
    cut = first_difference("x", "y" * 59)  # repr is 61 characters: 57 of them and "..."
    assert cut == f"body: '{'y' * 56}... != 'x' (request != recording)"


def test_difference_count_counts_each_leaf_that_differs():
    recorded = {"a": 1, "b": 2, "c": [1, 2, 3], "k": None}
    incoming = {"a": 1, "b": 3, "c": [1, 5], "d": 4}
    assert difference_count(recorded, incoming) == 5  # b, c[1], c's length, d, k
    assert difference_count(incoming, recorded) == 5
    assert difference_count([1], [1, 2, 3]) == 2 and difference_count([1, 2], [1]) == 1
    assert difference_count({"a": 1}, 5) == 1 and difference_count([1], 5) == 1
    assert difference_count("same", "same") == 0 and difference_count({"a": {"b": 1}}, {"a": {"b": 1}}) == 0


def test_a_matcher_without_distance_is_its_weight_away():
    far = Matcher("p", lambda r: r.path, weight=7)
    assert far.how_far(recorded(path="/a"), req(path="/b")) == 7
    assert far.how_far(recorded(path="/a"), req(path="/a")) == 0


def test_register_matcher_keeps_its_test_and_distance(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("streamreplay.replay.matching.MATCHERS", {})

    def test(a, b):
        return None

    def distance(a, b):
        return 3

    made = register_matcher("x", lambda r: r.path, test, distance=distance)
    assert made.test is test and made.distance is distance and made.weight == 1
    assert register_matcher("y", lambda r: r.path).weight == 1


def test_a_query_key_keeps_blank_values():
    assert query_key(req(query="b=1&a=")) == (("a", ""), ("b", "1"))
    assert RULES.request("GET", "/p").body == b"" and RULES.request("GET", "/p").query == ""
    index = Index([])
    assert index.request("GET", "/p").body == b"" and index.request("GET", "/p").query == ""


def test_a_request_read_again_keeps_its_query():
    index = Index([exchange(1, query="a=1")], match_on=("path", "query"))
    assert index.lookup(req(query="a=1")).id == 1


def test_fields_ignored_are_not_masked():
    index = Index([exchange(1, body(user="[redacted]", metadata={"k": "[redacted]"}))], ignore=["user"])
    assert index.masks == frozenset({("metadata", "k")})


def test_recordings_added_in_sequence_mode_come_after_those_served():
    index = Index([exchange(1)], mode="sequence", repeat=False)
    assert index.lookup(req()).id == 1
    index.add([exchange(2)])  # the request that missed got it: the tape is used up again
    assert isinstance(index.lookup(req()), Miss)
    fresh = Index([exchange(1)], mode="sequence", repeat=False)
    fresh.add([exchange(2)])  # nothing served yet: the tape goes on in order
    assert [fresh.lookup(req()).id for _ in range(2)] == [1, 2]


def test_recordings_added_in_key_mode_are_found_and_count_as_used():
    index = Index([exchange(1, body())], repeat=False)
    index.add([exchange(2, body(), path="/v1/chat/completions"), exchange(3, body())])
    assert "/v1/chat/completions" in index.paths
    assert isinstance(index.lookup(req(body(), path="/v1/chat/completions")), Miss)  # its request got it
    empty = Index([], repeat=True)
    empty.add([exchange(4, body())])
    assert empty.lookup(req(body())).id == 4


def test_sequence_mode_repeats_the_last_and_marks_what_it_served():
    index = Index([exchange(1), exchange(2), exchange(3)], mode="sequence")
    assert [index.lookup(req()).id for _ in range(4)] == [1, 2, 3, 3]
    assert index.unused() == []


def test_three_identical_requests_get_three_recordings_in_order():
    index = Index([exchange(1, body()), exchange(2, body()), exchange(3, body())])
    assert [index.lookup(req(body())).id for _ in range(4)] == [1, 2, 3, 3]


def test_the_closest_to_a_request_that_matches_names_no_field():
    index = Index([exchange(1, body())])
    assert index.closest(req(body())).reason.endswith("closest is exchange 1 (tape t, #0): ")


def test_a_recording_of_another_method_or_path_is_farther_than_several_body_fields():
    """A miss names the recording of the request's own method and path, three body fields off, before one
    with the very body on another path or with another method: method and path outweigh body fields."""
    same_body = body("new")
    exchanges = [exchange(1, same_body, path="/completions"), exchange(2, same_body, method="PUT"),
                 exchange(3, body("old", temperature=1, top_p=1))]
    index = Index(exchanges)
    miss = index.lookup(index.request("POST", "/chat/completions", same_body))
    assert isinstance(miss, Miss) and miss.closest.id == 3
    assert miss.reason.endswith("body differs: messages[0].content: 'new' != 'old' (request != recording)")
