"""redact.py on names, headers, queries and bodies written down by hand: which names look secret, what is
stored in their place, and that everything else keeps the bytes the client sent. No proxy and no DB."""

from __future__ import annotations

import json

import pytest

from streamreplay.redact import (
    BODY_ALLOWED,
    REDACTED,
    SECRET_PREFIXES,
    SECRET_SUFFIXES,
    SECRET_WORDS,
    FieldRule,
    looks_secret,
    mask_paths,
    redact_body,
    redact_headers,
    redact_query,
    redact_value,
    redacted_paths,
    replaceable,
    secret_field,
    words,
)

R = json.dumps(REDACTED).encode()


# -- the rule for names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "split"), [
    ("X-My-Token", ["x", "my", "token"]),
    ("maxOutputTokens", ["max", "output", "tokens"]),
    ("XMyToken", ["x", "my", "token"]),
    ("APIKey", ["api", "key"]),
    ("api_key.v2", ["api", "key", "v", "2"]),
    ("ABC", ["abc"]),
    ("", []),
])
def test_a_name_splits_into_lower_case_words_on_punctuation_and_camel_case(name: str, split: list[str]):
    assert words(name) == split


@pytest.mark.parametrize("word", sorted(SECRET_WORDS))
def test_each_secret_word_is_secret_alone_and_inside_a_longer_name(word: str):
    assert looks_secret(word) and looks_secret(f"x-{word}") and looks_secret(f"my_{word}_id")
    assert looks_secret(word.upper())


@pytest.mark.parametrize("suffix", SECRET_SUFFIXES)
def test_a_one_word_name_ending_with_a_secret_suffix_is_secret(suffix: str):
    assert looks_secret(f"my{suffix}") and looks_secret(f"x-client{suffix}")


def test_a_one_word_name_starting_with_session_is_secret():
    assert SECRET_PREFIXES == ("session",)
    assert looks_secret("sessionid") and looks_secret("X-Sessionref")


@pytest.mark.parametrize("name", [
    "max_tokens", "maxOutputTokens", "monkey", "keys", "author", "keywords", "top_k", "Content-Type",
    "api-version", "Keep-Alive", "tokenizer", "signatures", "mysession", "cookiejar",
])
def test_a_plural_or_a_word_merely_containing_a_secret_word_is_not_secret(name: str):
    assert not looks_secret(name)


@pytest.mark.parametrize("field", sorted(BODY_ALLOWED))
def test_a_known_request_parameter_is_no_secret_field(field: str):
    assert not secret_field(field)
    assert redact_value({field: "v"}) == {field: "v"}


@pytest.mark.parametrize("field", ["prompt_cache_key", "signature", "thought_signature", "thoughtSignature",
                                   "stop_token_ids", "allowed_token_ids", "return_tokens_as_token_ids",
                                   "token_ids"])
def test_the_allowed_body_parameters_look_secret_as_headers(field: str):
    # only the body exempts them: the same name as a header or query parameter is still hidden
    assert looks_secret(field)
    assert redact_headers([(field, "v")]) == [[field, REDACTED]]
    assert redact_query([(field, "v")]) == f"{field}=%5Bredacted%5D"


def test_a_secret_looking_body_field_is_a_secret_field():
    assert secret_field("api_key") and secret_field("accessToken") and not secret_field("model")


# -- headers and query ----------------------------------------------------------------------------------------


def test_headers_keep_their_order_repeats_and_non_secret_values():
    got = redact_headers([("Authorization", "Bearer sk-1"), ("Content-Type", "application/json"),
                          ("Cookie", "a=1"), ("Cookie", "b=2"), ("X-Trace", "t1"), ("idempotency-key", "k")])
    assert got == [["Authorization", REDACTED], ["Content-Type", "application/json"], ["Cookie", REDACTED],
                   ["Cookie", REDACTED], ["X-Trace", "t1"], ["idempotency-key", REDACTED]]


def test_a_redact_header_name_hides_that_header_whatever_its_case():
    assert redact_headers([("X-Trace", "t1"), ("x-other", "o")], ["x-TRACE"]) == [
        ["X-Trace", REDACTED], ["x-other", "o"]]
    assert redact_headers([("X-Trace", "t1")]) == [["X-Trace", "t1"]]


def test_query_parameters_from_a_mapping_or_pairs_are_url_encoded_with_secrets_hidden():
    assert redact_query({"key": "k 1", "q": "a b&c"}) == "key=%5Bredacted%5D&q=a+b%26c"
    assert redact_query([("q", "1"), ("access_token", "t"), ("q", "2")]) == (
        "q=1&access_token=%5Bredacted%5D&q=2")
    assert redact_query([("Tenant", "t"), ("v", "1")], ["TENANT"]) == "Tenant=%5Bredacted%5D&v=1"
    assert redact_query([("Tenant", "t")]) == "Tenant=t"


@pytest.mark.parametrize("name", ["key", "apikey", "access_token", "sig", "signature", "token", "api-key"])
def test_every_secret_query_parameter_the_readme_names_is_stored_redacted(name: str):
    # the README's list: ?key=, ?apikey=, ?access_token=, ?sig= (a signed URL's signature)
    assert redact_query([(name, "s3cr3t"), ("q", "1")]) == f"{name}=%5Bredacted%5D&q=1"


# -- parsed bodies ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "replaced"), [
    ("s", True), (0, True), (1.5, True), ({"a": 1}, True), ([1], True), ("", True),
    (None, False), (True, False), (False, False), (REDACTED, False),
])
def test_a_secret_value_is_replaced_unless_it_holds_nothing(value: object, replaced: bool):
    assert replaceable(value) is replaced
    assert redact_value({"token": value}) == {"token": REDACTED if replaced else value}


def test_a_body_with_nothing_secret_is_the_very_same_object():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "metadata": {"a": [1, {"b": 2}]}}
    assert redact_value(body) is body
    assert redact_value(body, ["user"]) is body


def test_only_the_changed_containers_are_copied_and_the_input_is_left_alone():
    body = {"a": {"token": "t"}, "b": {"x": 1}, "c": [{"x": 1}, {"password": "p"}]}
    got = redact_value(body)
    assert got == {"a": {"token": REDACTED}, "b": {"x": 1}, "c": [{"x": 1}, {"password": REDACTED}]}
    assert body == {"a": {"token": "t"}, "b": {"x": 1}, "c": [{"x": 1}, {"password": "p"}]}
    assert got["b"] is body["b"] and got["c"][0] is body["c"][0]


def test_field_specs_are_stripped_and_blank_ones_ignored():
    rule = FieldRule([" user ", "", "  ", " metadata.user_id"])
    assert rule.names == frozenset({"user"})
    assert rule.paths == frozenset({("metadata", "user_id")})


def test_a_bare_field_name_matches_at_any_depth_and_a_dotted_path_only_there():
    body = {"user": "u", "x": {"user": "v", "id": "i"}, "list": [{"user": "w"}]}
    assert redact_value(body, ["user"]) == {"user": REDACTED, "x": {"user": REDACTED, "id": "i"},
                                            "list": [{"user": REDACTED}]}
    assert redact_value(body, ["x.user"]) == {"user": "u", "x": {"user": REDACTED, "id": "i"},
                                              "list": [{"user": "w"}]}
    # a list stands for each of its items
    assert redact_value(body, ["list.user"]) == {"user": "u", "x": {"user": "v", "id": "i"},
                                                 "list": [{"user": REDACTED}]}


def test_a_field_rule_hits_by_name_by_path_or_by_the_secret_rule_outside_schema_names():
    rule = FieldRule(["user", "a.b"])
    assert rule.hit(("x", "user"), False) and rule.hit(("x", "user"), True)
    assert rule.hit(("a", "b"), True) and not rule.hit(("c", "b"), False)
    assert rule.hit(("api_key",), False) and not rule.hit(("api_key",), True)
    assert not rule.hit(("model",), False)


def test_json_schema_property_names_are_not_secret_but_their_own_fields_are():
    tool = {"parameters": {"type": "object", "properties": {
        "password": {"type": "string"}, "api_key": {"type": "string"}}}}
    assert redact_value(tool) is tool
    schema = {"properties": {"password": {"type": "string", "secret": "s"}}}
    assert redact_value(schema) == {"properties": {"password": {"type": "string", "secret": REDACTED}}}
    # `properties` that is not an object is an ordinary field: its secret-named items are hidden
    odd = {"properties": [{"token": "t"}], "x": {"properties": "p", "token": "t"}}
    assert redact_value(odd) == {"properties": [{"token": REDACTED}], "x": {"properties": "p", "token": REDACTED}}


def test_a_redact_field_name_wins_even_among_schema_property_names():
    tool = {"properties": {"user": {"type": "string"}, "password": {"type": "string"}}}
    assert redact_value(tool, ["user"]) == {"properties": {"user": REDACTED, "password": {"type": "string"}}}


def test_a_list_keeps_its_items_and_its_path():
    body = [{"token": "a"}, 1, [{"password": "b"}], {"model": "m"}]
    assert redact_value(body) == [{"token": REDACTED}, 1, [{"password": REDACTED}], {"model": "m"}]
    assert redact_value({"m": [{"n": "x"}, {"n": "y"}]}, ["m.n"]) == {"m": [{"n": REDACTED}, {"n": REDACTED}]}


# -- the stored bytes -----------------------------------------------------------------------------------------


def test_only_the_secret_values_bytes_change_spacing_order_and_escapes_stay():
    body = b'{ "z" : 1 ,\n\t"api_key"  :\r\n "sk-1" , "m":"caf\\u00e9", "meta":{"token":{"a":[1,2]}}}  '
    assert redact_body(body) == (b'{ "z" : 1 ,\n\t"api_key"  :\r\n ' + R + b' , "m":"caf\\u00e9", "meta":{"token":'
                                 + R + b"}}  ")


def test_values_of_every_type_are_replaced_whole_and_empty_values_kept():
    body = b'{"token": 12.5e3, "password": [1, {"a": "b"}], "secret": {}, "auth": null, "key": true, ' \
           b'"sig": false, "cookie": "[redacted]", "x": 1}'
    assert redact_body(body) == (b'{"token": ' + R + b', "password": ' + R + b', "secret": ' + R
                                 + b', "auth": null, "key": true, "sig": false, "cookie": "[redacted]", "x": 1}')


def test_a_body_with_nothing_secret_is_stored_as_the_very_same_bytes():
    for body in (b'{"model": "m", "messages": [{"role": "user", "content": "token"}], "e": {}, "l": []}',
                 b'  [ ]  ', b'{}', b'"token"', b'[1, 2, {"model": "m"}]', b"", b"not json"):
        assert redact_body(body) is body, body
    assert redact_body(b'{"user": "u"}', ["other"]) == b'{"user": "u"}'


def test_secrets_inside_lists_and_nested_objects_are_found():
    body = b'[ {"model": "m"} , [ [], {"k": [{"api_key": "a"}, {"x": {}} ]} ], {"password":"b"} ]'
    assert redact_body(body) == (b'[ {"model": "m"} , [ [], {"k": [{"api_key": ' + R + b'}, {"x": {}} ]} ], '
                                 b'{"password":' + R + b'} ]')


def test_a_list_item_after_a_comma_keeps_the_lists_path_not_the_last_keys():
    # a list after a key: its items have the key's path, so `m.n` hits the second item too
    body = b'{"m": [{"n": "a"}, {"n": "b"}], "o": [{"n": "c"}]}'
    assert redact_body(body, ["m.n"]) == b'{"m": [{"n": ' + R + b'}, {"n": ' + R + b'}], "o": [{"n": "c"}]}'


def test_the_members_after_the_first_keep_their_containers_path():
    body = b'{"a": {"x": 1, "b": "s", "c": {"y": 2, "b": "t"}}, "b": "u"}'
    assert redact_body(body, ["a.b"]) == b'{"a": {"x": 1, "b": ' + R + b', "c": {"y": 2, "b": "t"}}, "b": "u"}'
    assert redact_body(body, ["a.c.b"]) == b'{"a": {"x": 1, "b": "s", "c": {"y": 2, "b": ' + R + b'}}, "b": "u"}'


def test_schema_property_names_in_the_bytes_are_exempt_but_not_their_siblings_later():
    body = (b'{"tools": [{"parameters": {"properties": {"token": "t", "a": {"type": "string"}, '
            b'"password": {"type": "string"}}, "password": "p"}}]}')
    assert redact_body(body) == (b'{"tools": [{"parameters": {"properties": {"token": "t", "a": {"type": '
                                 b'"string"}, "password": {"type": "string"}}, "password": ' + R + b'}}]}')
    # only an object under `properties` names schema properties; a string there is an ordinary value
    assert redact_body(b'{"properties": "x", "token": "t"}') == b'{"properties": "x", "token": ' + R + b'}'
    listed = b'{"properties": [{"token": "t"}]}'
    assert redact_body(listed) == b'{"properties": [{"token": ' + R + b'}]}'


def test_a_list_with_no_object_inside_is_skipped_whole_and_one_with_an_object_is_read():
    assert redact_body(b'{"token_ids": [1, 2], "a": ["x", ["{"]], "token": "t"}') == (
        b'{"token_ids": [1, 2], "a": ["x", ["{"]], "token": ' + R + b'}')
    assert redact_body(b'{"a": [ ], "b": [ {"secret": "s"} ]}') == b'{"a": [ ], "b": [ {"secret": ' + R + b'} ]}'


def test_empty_objects_with_spaces_inside_are_read_past():
    assert redact_body(b'{"a": { \n }, "b": [ \t ], "token": "t"}') == (
        b'{"a": { \n }, "b": [ \t ], "token": ' + R + b'}')


def test_a_body_that_breaks_off_keeps_the_redactions_found_before_the_fault():
    assert redact_body(b'{"api_key": "s1", "messages": [') == b'{"api_key": ' + R + b', "messages": ['
    assert redact_body(b'{"api_key": "s1" "x": 1}') == b'{"api_key": ' + R + b' "x": 1}'
    assert redact_body(b'{"api_key": "s1", 7: 1}') == b'{"api_key": ' + R + b', 7: 1}'
    assert redact_body(b'{"api_key": "s1", "a" 1}') == b'{"api_key": ' + R + b', "a" 1}'
    assert redact_body(b'{"api_key": "s1", "token": }') == b'{"api_key": ' + R + b', "token": }'
    assert redact_body(b'{"api_key": "s1"] ') == b'{"api_key": ' + R + b'] '


def test_a_body_that_ends_too_soon_keeps_the_redactions_found_before_the_end():
    for cut in (b'{"api_key": "s1"', b'{"api_key": "s1",', b'{"api_key": "s1", ', b'{"api_key": "s1", "a":',
                b'[{"api_key": "s1"}', b'{"a": {'):
        assert redact_body(cut) == cut.replace(b'"s1"', R), cut


def test_a_secret_value_cut_short_is_hidden_to_the_end_of_the_body():
    assert redact_body(b'{"model": "m", "api_key": "sk-12') == b'{"model": "m", "api_key": ' + R
    assert redact_body(b'{"api_key": ["sk-1", {"a"') == b'{"api_key": ' + R
    assert redact_body(b'{"token": sk-1, "x": 1}') == b'{"token": ' + R
    assert redact_body(b'{"token": Xs3cret') == b'{"token": ' + R
    deep_cut = b'{"token": ' + b"[" * 3000 + b'"sk-2"'
    assert redact_body(deep_cut) == b'{"token": ' + R
    # no value at all: nothing to hide, the bytes stay
    for nothing in (b'{"api_key": ', b'{"api_key": }', b'{"api_key": , "a": 1}', b'{"api_key": ]'):
        assert redact_body(nothing) is nothing, nothing


def test_compact_json_without_spaces_is_read_member_by_member():
    body = b'{"a":1,"token":"t","l":[{"x":1},{"password":"p"}],"o":{"b":2,"secret":"s"}}'
    assert redact_body(body) == (b'{"a":1,"token":' + R + b',"l":[{"x":1},{"password":' + R + b'}],'
                                 b'"o":{"b":2,"secret":' + R + b'}}')


def test_a_leading_byte_order_mark_and_whitespace_are_kept():
    body = b'\xef\xbb\xbf \n{"api_key": "s1"}'
    assert redact_body(body) == b'\xef\xbb\xbf \n{"api_key": ' + R + b'}'
    tight = b'\xef\xbb\xbf{"api_key": "s1"}'
    assert redact_body(tight) == b'\xef\xbb\xbf{"api_key": ' + R + b'}'


def test_a_secret_value_deeper_than_the_recursion_limit_is_replaced_whole():
    # brackets and escaped quotes inside strings do not end the value early
    deep_list = b'{"api_key": ' + b"[" * 5000 + b'"\\"]}", "", "sk-1"' + b"]" * 5000 + b', "model": "m"}'
    assert redact_body(deep_list) == b'{"api_key": ' + R + b', "model": "m"}'
    deep_object = b'{"a": 1, "token": ' + b'{"x": [' * 3000 + b'"sk-2"' + b"]}" * 3000 + b"}"
    assert redact_body(deep_object) == b'{"a": 1, "token": ' + R + b"}"


def test_a_body_deeper_than_the_recursion_limit_is_still_redacted():
    deep = ('{"a":' * 3000 + '[{"api_key": "s1"}, [' + "[" * 3000 + "1" + "]" * 3001 + ']' + "}" * 3000).encode()
    assert redact_body(deep) == deep.replace(b'"s1"', R)


def test_a_utf16_body_with_a_secret_is_stored_redacted_as_utf8():
    body = '{"api_key": "s1", "m": "café"}'.encode("utf-16")
    assert redact_body(body) == '{"api_key": "[redacted]", "m": "café"}'.encode()
    clean = '{"m": "café"}'.encode("utf-16")
    assert redact_body(clean) is clean
    broken = b"\xff\xfe{\x00"
    assert redact_body(broken) is broken
    assert redact_body('{"user": "u"}'.encode("utf-32"), ["user"]) == b'{"user": "[redacted]"}'


def test_a_utf16_body_deeper_than_the_recursion_limit_or_broken_is_still_redacted():
    deep = '{"api_key": "s1", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    assert redact_body(deep.encode("utf-16")) == deep.replace('"s1"', '"[redacted]"').encode()
    nested = '{"x": ' + '{"y": ' * 3000 + '{"api_key": "s2"}' + "}" * 3000 + "}"
    assert b"s2" not in redact_body(nested.encode("utf-16-le"))
    # cut short: what came before the fault is redacted all the same
    cut = '[{"api_key": "s3"}, {"m": "caf'
    assert redact_body(cut.encode("utf-32")) == cut.replace('"s3"', '"[redacted]"').encode()


# -- matching against redacted recordings -------------------------------------------------------------------


def test_redacted_paths_are_the_object_keys_outside_lists():
    stored = {"a": REDACTED, "m": {"user_id": REDACTED, "n": {"x": REDACTED, "y": 1}},
              "l": [{"b": REDACTED}], "s": "v"}
    assert redacted_paths(stored) == {("a",), ("m", "user_id"), ("m", "n", "x")}
    assert redacted_paths([{"a": REDACTED}]) == set()


def test_masking_sets_the_stored_redacted_paths_where_present():
    incoming = {"a": "secret", "m": {"user_id": 7, "k": 1}, "n": None, "t": True}
    paths = [("a",), ("m", "user_id"), ("gone",), ("m", "k", "deeper"), ("n",), ("t",), ()]
    assert mask_paths(incoming, paths) == {"a": REDACTED, "m": {"user_id": REDACTED, "k": 1}, "n": None, "t": True}
    assert incoming == {"a": "secret", "m": {"user_id": 7, "k": 1}, "n": None, "t": True}


def test_masking_nothing_present_gives_the_very_same_object():
    incoming = {"a": 1, "m": {"k": 1}, "r": REDACTED}
    assert mask_paths(incoming, [("b",), ("m", "x"), ("a", "x"), ("r",)]) is incoming
    assert mask_paths([1], [("a",)]) == [1]
