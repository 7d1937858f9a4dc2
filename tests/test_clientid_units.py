"""Which client sent an exchange (clientid.py), on hand-built exchanges shaped as each client sends them: the
User-Agent (or X-Stainless-Async) says whether the openai SDK sent it, sync or async; the request's shape says
which framework drove it (autogen names its user messages, AG2 sends its system message first, langchain
writes content before role); the other dialects' clients by their User-Agent; ids and labels both parse."""

from __future__ import annotations

import json

import pytest

from streamreplay.clientid import (
    AG2_SYSTEM_MESSAGES,
    AUTOGEN_SYSTEM,
    CLIENT_INFO,
    Client,
    client_name,
    describe_client,
    recognise_client,
    request_header,
    sdk_mode,
)
from streamreplay.exchange import Exchange

SYNC_UA = "OpenAI/Python 2.54.0"
ASYNC_UA = "AsyncOpenAI/Python 2.54.0"


def _ex(body: object = None, *, ua: str | None = None, headers: list[list[str]] | None = None,
        path: str = "/chat/completions", raw: bytes | None = None, client: str | None = None) -> Exchange:
    hdrs = list(headers or [])
    if ua is not None:
        hdrs.append(["User-Agent", ua])
    data = raw if raw is not None else json.dumps(body if body is not None else {"messages": []}).encode()
    return Exchange(id=1, tape="t", seq=0, method="POST", path=path, request_headers=hdrs, request_body=data,
                    client=client)


def _user(text: str = "hi", **extra: str) -> dict:
    return {"role": "user", "content": text, **extra}


def test_every_client_has_an_entry_and_parses_by_its_id_or_its_label():
    assert set(CLIENT_INFO) == set(Client)
    for c in Client:
        assert Client.parse(c.value) is c and Client.parse(c.label) is c
        assert str(c) == c.value and c.info is CLIENT_INFO[c]
    assert Client.parse("openai async") is Client.OPENAI_ASYNC
    with pytest.raises(ValueError, match=r"unknown client 'nope'; known: openai sync, AG2$"):
        Client.parse("nope", among=[Client.OPENAI_SYNC, Client.AG2])
    with pytest.raises(ValueError):
        Client.parse("openai-async", among=[Client.OPENAI_SYNC])


def test_the_sdk_says_sync_or_async_in_its_user_agent_or_its_stainless_header():
    assert sdk_mode(_ex(ua=SYNC_UA)) == "sync"
    assert sdk_mode(_ex(ua=ASYNC_UA)) == "async"
    assert sdk_mode(_ex(client=ASYNC_UA)) == "async"  # the recorded client column first
    assert sdk_mode(_ex(ua="my-app/1.0", headers=[["X-Stainless-Async", "false"]])) == "sync"
    assert sdk_mode(_ex(ua="my-app/1.0", headers=[["x-stainless-async", "async:asyncio"]])) == "async"
    assert sdk_mode(_ex(ua="curl/8.0")) is None
    assert sdk_mode(_ex()) is None
    assert request_header(_ex(headers=[["X-Stainless-Async", "false"]]), "x-stainless-async") == "false"
    assert request_header(_ex(), "user-agent") is None


def test_a_user_agent_names_the_sdk_client_and_its_version():
    assert client_name("AsyncOpenAI/Python 2.54.0") == "openai-python 2.54.0, AsyncOpenAI"
    assert client_name("OpenAI/Python 1.2.3 extra") == "openai-python 1.2.3, OpenAI"
    assert client_name("AzureOpenAI/Python 1.9.0") == "openai-python 1.9.0, AzureOpenAI"
    assert client_name("AsyncAzureOpenAI/Python 1.9.0") == "openai-python 1.9.0, AsyncAzureOpenAI"
    assert client_name("curl/8.0") == "curl/8.0"
    assert client_name(None) is None and client_name("") is None


def test_the_plain_sdk_and_plain_http():
    plain = {"messages": [_user()], "model": "m", "stream": True}
    assert recognise_client(_ex(plain, ua=SYNC_UA)) is Client.OPENAI_SYNC
    assert recognise_client(_ex(plain, ua=ASYNC_UA)) is Client.OPENAI_ASYNC
    assert recognise_client(_ex(plain, ua="python-urllib/3.11")) is Client.HTTP
    assert recognise_client(_ex(raw=b"not json", ua=SYNC_UA)) is Client.OPENAI_SYNC
    assert recognise_client(_ex([1, 2], ua=ASYNC_UA)) is Client.OPENAI_ASYNC  # a body that is no object


def test_autogen_names_every_user_message_or_sends_its_system_message():
    named = {"messages": [{"role": "system", "content": "s"}, _user(name="user"), _user("again", name="user")]}
    assert recognise_client(_ex(named, ua=ASYNC_UA)) is Client.AUTOGEN_AGENTCHAT
    assert recognise_client(_ex(named, ua=SYNC_UA)) is not Client.AUTOGEN_AGENTCHAT  # autogen is async only
    half = {"messages": [_user(name="user"), _user("again")]}
    assert recognise_client(_ex(half, ua=ASYNC_UA)) is Client.OPENAI_ASYNC
    system = {"messages": [{"role": "system", "content": AUTOGEN_SYSTEM}, _user()]}
    assert recognise_client(_ex(system, ua=ASYNC_UA)) is Client.AUTOGEN_AGENTCHAT
    assert recognise_client(_ex({"messages": []}, ua=ASYNC_UA)) is Client.OPENAI_ASYNC


def test_ag2_sends_its_system_message_first_content_first_and_asks_for_usage():
    for default in AG2_SYSTEM_MESSAGES:
        body = {"messages": [{"role": "system", "content": default + " more"}, _user()]}
        assert recognise_client(_ex(body, ua=SYNC_UA)) is Client.AG2
        assert recognise_client(_ex(body, ua=ASYNC_UA)) is not Client.AG2  # AG2 drives the sync client
    own = {"messages": [{"content": "You plan trips.", "role": "system"}, {"role": "user", "content": "hi"}],
           "stream": True, "stream_options": {"include_usage": True}}
    assert recognise_client(_ex(own, ua=SYNC_UA)) is Client.AG2
    assert recognise_client(_ex({**own, "stream_options": {"include_usage": False}}, ua=SYNC_UA)) is Client.OPENAI_SYNC
    assert recognise_client(_ex({**own, "stream": False}, ua=SYNC_UA)) is Client.OPENAI_SYNC
    role_first = {**own, "messages": [{"role": "system", "content": "You plan trips."}, _user()]}
    assert recognise_client(_ex(role_first, ua=SYNC_UA)) is Client.OPENAI_SYNC
    no_system = {**own, "messages": [_user()]}
    assert recognise_client(_ex(no_system, ua=SYNC_UA)) is Client.OPENAI_SYNC


def test_langchain_writes_every_message_content_first():
    body = {"model": "m", "messages": [{"content": "You plan trips.", "role": "system"},
                                       {"content": "hi", "role": "user"}],
            "stream": True, "stream_options": {"include_usage": True}}
    assert recognise_client(_ex(body, ua=SYNC_UA)) is Client.LANGCHAIN  # all content-first: not AG2
    assert recognise_client(_ex(body, ua=ASYNC_UA)) is Client.LANGCHAIN
    mixed = {**body, "messages": [{"content": "hi", "role": "user"}, _user()]}
    assert recognise_client(_ex(mixed, ua=ASYNC_UA)) is Client.OPENAI_ASYNC


def test_key_order_says_nothing_once_a_cassette_sorted_the_keys():
    body = {"model": "m", "messages": [{"content": "hi", "role": "user"}]}
    sorted_body = json.dumps(body, sort_keys=True).encode()  # as an imported cassette writes it back
    assert recognise_client(_ex(raw=sorted_body, ua=ASYNC_UA)) is Client.OPENAI_ASYNC
    assert recognise_client(_ex(raw=json.dumps(body).encode() + b" ", ua=ASYNC_UA)) is Client.LANGCHAIN


def test_the_other_dialects_clients_are_told_from_their_user_agent():
    msgs = "/v1/messages"
    assert recognise_client(_ex({"max_tokens": 5}, path=msgs, ua="Anthropic/Python 0.1")) is Client.ANTHROPIC
    assert recognise_client(_ex({}, path=msgs, ua="AsyncAnthropic/Python 0.1")) is Client.ANTHROPIC_STREAM
    assert recognise_client(_ex({"temperature": 1}, path=msgs, ua="AsyncAnthropic/Python 0.1")) is \
        Client.AUTOGEN_ANTHROPIC
    assert recognise_client(_ex({"temperature": 1}, path=msgs, ua="Anthropic/Python 0.1")) is Client.ANTHROPIC
    assert recognise_client(_ex({}, path=msgs, ua="ag2/0.14.0 Anthropic/Python 0.125.0")) is Client.AG2_ANTHROPIC
    helper = [["X-Stainless-Helper-Method", "stream"]]
    assert recognise_client(_ex({}, path=msgs, ua="Anthropic/Python 0.1", headers=helper)) is Client.ANTHROPIC_STREAM
    stainless = [["X-Stainless-Async", "async:asyncio"]]
    assert recognise_client(_ex({}, path=msgs, ua="x", headers=stainless)) is Client.ANTHROPIC_STREAM
    assert recognise_client(_ex({}, path=msgs, ua="x", headers=[["X-Stainless-Async", "false"]])) is Client.ANTHROPIC

    resp = "/v1/responses"
    assert recognise_client(_ex({"input": "hi"}, path=resp, ua=SYNC_UA)) is Client.OPENAI_RESPONSES
    assert recognise_client(_ex({"input": "hi"}, path=resp, ua=ASYNC_UA)) is Client.OPENAI_RESPONSES_STREAM
    typed = {"input": [{"content": "hi", "role": "user", "type": "message"}]}
    assert recognise_client(_ex(typed, path=resp, ua=SYNC_UA)) is Client.LANGCHAIN_RESPONSES
    untyped = {"input": [{"content": "hi", "role": "user"}]}
    assert recognise_client(_ex(untyped, path=resp, ua=SYNC_UA)) is Client.OPENAI_RESPONSES
    assert recognise_client(_ex({"input": []}, path=resp, ua=SYNC_UA)) is Client.OPENAI_RESPONSES

    az = "/openai/deployments/gpt/chat/completions"
    assert recognise_client(_ex({}, path=az, ua="AzureOpenAI/Python 1.0")) is Client.AZURE_OPENAI
    assert recognise_client(_ex({}, path=az, ua="AsyncAzureOpenAI/Python 1.0")) is Client.AZURE_OPENAI
    assert recognise_client(_ex({}, path=az, ua="my-app", headers=[["X-Stainless-Lang", "python"]])) is \
        Client.AZURE_OPENAI
    assert recognise_client(_ex({}, path=az, ua="autogen-python/0.4")) is Client.AUTOGEN_AZURE
    assert recognise_client(_ex({}, path=az, ua="curl/8")) is Client.HTTP
    assert recognise_client(_ex({}, path="/api/chat", ua="ollama-python/0.4")) is Client.OLLAMA


def test_diagnose_names_the_framework_on_the_sdk_client_or_plain_http():
    named = {"messages": [_user(name="user")]}
    assert describe_client(_ex(named, client=ASYNC_UA)) == "autogen-agentchat on openai-python 2.54.0, AsyncOpenAI"
    assert describe_client(_ex({"messages": [_user()]}, client=SYNC_UA)) == "openai-python 2.54.0, OpenAI"
    assert describe_client(_ex({"messages": [_user()]}, client="curl/8")) == "plain HTTP (curl/8)"
    assert describe_client(_ex({"messages": [_user()]})) == "plain HTTP (no User-Agent)"
    stainless = _ex({"messages": [_user()]}, headers=[["X-Stainless-Async", "false"]])
    assert describe_client(stainless) == "openai-python, sync"


def test_ag2_names_its_agents_messages_where_langchain_does_not():
    body = {"model": "m", "messages": [{"content": "You plan trips.", "role": "system"},
                                       {"content": "hi", "role": "user", "name": "planner"}],
            "stream": True, "stream_options": {"include_usage": True}}
    assert recognise_client(_ex(body, ua=SYNC_UA)) is Client.AG2


def test_a_responses_body_with_no_input_or_no_object_is_the_sdk_s():
    resp = "/v1/responses"
    assert recognise_client(_ex({"model": "m"}, path=resp, ua=SYNC_UA)) is Client.OPENAI_RESPONSES
    assert recognise_client(_ex([1], path=resp, ua=ASYNC_UA)) is Client.OPENAI_RESPONSES_STREAM
