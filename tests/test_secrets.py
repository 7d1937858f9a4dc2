"""Secrets stay off disk: thirteen secrets in thirteen places of one request, recorded through the real proxy,
then looked for in every file and every output streamreplay makes. The upstream still gets them all, the
request's other fields are stored as sent, and replay matches the request whatever secrets it carries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from streamreplay.cli import main
from streamreplay.proxy import RecordingProxy
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.redact import BODY_ALLOWED, looks_secret, redact_body, redact_headers, redact_query, redact_value
from streamreplay.replay import ReplayServer
from streamreplay.store import Store
from streamreplay.testing import ScriptedUpstream
from streamreplay.ui import UIServer

PLACES = ["authorization", "api-key", "x-api-key", "cookie", "proxy-authorization", "x-my-token",
          "query key", "query apikey", "query access_token", "body api_key", "body metadata.token",
          "body metadata.user_id (--redact-field)", "body messages[0].token"]


def secrets_for(run: str) -> dict[str, str]:
    """A distinct secret for each place: letters and digits only, so no escaping (URL, JSON, HTML) hides it."""
    return {place: "S" + hashlib.sha256(f"{run} {place}".encode()).hexdigest()[:23] for place in PLACES}


# the request body as a client might write it: its own spacing, key order and escapes, kept on disk
BODY = """{"model": "gpt-4o-mini",  "stream": true,
  "messages": [{"role": "user", "content": "Say h\\u00e9llo", "token": "%(body messages[0].token)s"}],
  "api_key": "%(body api_key)s",
  "metadata": {"topic": "greeting", "token": "%(body metadata.token)s",
               "user_id": "%(body metadata.user_id (--redact-field))s"},
  "max_tokens": 64, "max_completion_tokens": 64, "top_k": 5, "logit_bias": {"50256": -100},
  "prompt_cache_key": "cache-bucket-7", "stop_sequences": ["\\n\\nHuman:"], "keywords": ["kept"],
  "tools": [{"type": "function", "function": {"name": "login", "parameters": {"type": "object",
            "properties": {"password": {"type": "string", "description": "the user's password"}}}}}]}"""
BODY_SECRETS = ["body api_key", "body metadata.token", "body metadata.user_id (--redact-field)",
                "body messages[0].token"]


def request_parts(secret: dict[str, str]) -> tuple[str, dict[str, str], bytes]:
    """The query, headers and body carrying `secret`."""
    query = (f"api-version=2024-10-21&key={secret['query key']}&apikey={secret['query apikey']}"
             f"&access_token={secret['query access_token']}")
    headers = {
        "Authorization": f"Bearer {secret['authorization']}",
        "api-key": secret["api-key"],
        "x-api-key": secret["x-api-key"],
        "Cookie": f"session={secret['cookie']}; theme=dark",
        "Proxy-Authorization": f"Basic {secret['proxy-authorization']}",
        "X-My-Token": secret["x-my-token"],
        "Idempotency-Key": "idem-1",
        "X-Request-Tag": "kept-tag",
        "Content-Type": "application/json",
    }
    return query, headers, (BODY % secret).encode()


def leaks(text: str | bytes, secret: dict[str, str]) -> list[str]:
    """The places whose secret is in `text`, whole or its first or last 12 characters."""
    data = text.encode() if isinstance(text, str) else text
    return [place for place, value in secret.items()
            if any(part.encode() in data for part in (value, value[:12], value[-12:]))]


class WitnessUpstream(ScriptedUpstream):
    """The scripted upstream, also keeping the query and headers of every request it got."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, dict[str, str]]] = []

    def build_app(self) -> web.Application:
        app = super().build_app()

        @web.middleware
        async def witness(request: web.Request, handler: Any) -> web.StreamResponse:
            self.seen.append((request.query_string, {k.lower(): v for k, v in request.headers.items()}))
            return await handler(request)

        app.middlewares.append(witness)
        return app


@dataclass
class Recording:
    db: Path
    tape: str
    secret: dict[str, str]
    sent_body: bytes
    exchange_id: int
    stored: Any  # the Exchange
    during: dict[str, bytes]  # DB and WAL files read while the proxy still ran
    log: list[str]
    upstream_query: str
    upstream_headers: dict[str, str]
    upstream_body: dict[str, Any]


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recording]:
    db = tmp_path_factory.mktemp("secrets") / "rec.db"
    secret = secrets_for("recorded")
    query, headers, body = request_parts(secret)
    log: list[str] = []
    options = RecordOptions(upstream="", db=str(db), tape="sec", log=log.append,
                            redact_fields=("metadata.user_id",))
    with WitnessUpstream() as upstream:
        options.upstream = upstream.base_url
        with RecordingProxy(options) as proxy:
            with httpx.Client(timeout=10) as client:
                resp = client.post(f"{proxy.base_url}/chat/completions?{query}", content=body, headers=headers)
            assert resp.status_code == 200 and "Hello!" in resp.text
            proxy.call(proxy.settle())
            # before any checkpoint: the WAL holds what was just written
            during = {p.name: p.read_bytes() for p in db.parent.iterdir() if p.name.startswith(db.name)}
        (upstream_query, upstream_headers), sent = upstream.seen[-1], upstream.sent[-1]
    (ex,) = Store(db).exchanges()
    yield Recording(db, "sec", secret, body, ex.id, ex, during, log, upstream_query, upstream_headers,
                    sent.request or {})


def test_no_secret_reaches_disk_while_recording_or_after(recording: Recording):
    during = recording.during
    assert f"{recording.db.name}-wal" in during and during[f"{recording.db.name}-wal"]
    # the request was stored (its other fields are there): the files read are the right ones
    assert b"cache-bucket-7" in b"".join(during.values())
    for name, data in during.items():
        assert not leaks(data, recording.secret), f"{name} while recording"
    for path in recording.db.parent.iterdir():
        assert not leaks(path.read_bytes(), recording.secret), f"{path.name} after recording"
    assert recording.log and not leaks("\n".join(recording.log), recording.secret)


def test_no_secret_in_any_output(recording: Recording, tmp_path: Path):
    db, eid, secret = str(recording.db), str(recording.exchange_id), recording.secret
    runner = CliRunner()
    html, cassette, repro_dir = tmp_path / "x.html", tmp_path / "sec.jsonl", tmp_path / "repro"
    outputs = {}
    for name, args in {
        "ls": ["ls", "--db", db],
        "ls --json": ["ls", "--json", "--db", db],
        "show": ["show", eid, "--db", db],
        "show --json": ["show", eid, "--json", "--db", db],
        "show --html": ["show", eid, "--html", str(html), "--db", db],
        "export": ["export", recording.tape, "--db", db, "-o", str(cassette)],
        "repro": ["repro", eid, "--db", db, "-o", str(repro_dir)],
    }.items():
        result = runner.invoke(main, args)
        assert result.exit_code == 0, (name, result.output)
        outputs[name] = result.output
    assert "[redacted]" in outputs["show --json"]  # the stored request is shown: redacted, not left out
    files = [html, cassette, *repro_dir.rglob("*")]
    assert html.stat().st_size and cassette.stat().st_size and len(files) > 3
    outputs.update({str(p): p.read_text() for p in files if p.is_file()})
    with UIServer(recording.db) as ui, httpx.Client(timeout=10) as client:
        for page in ("/", f"/exchange/{eid}", f"/?tape={recording.tape}"):
            resp = client.get(f"{ui.origin}{page}")
            assert resp.status_code == 200, page
            outputs[f"ui {page}"] = resp.text
    for name, text in outputs.items():
        assert not leaks(text, secret), name


def test_the_upstream_gets_every_secret(recording: Recording):
    secret, headers, query = recording.secret, recording.upstream_headers, recording.upstream_query
    assert headers["authorization"] == f"Bearer {secret['authorization']}"
    assert headers["api-key"] == secret["api-key"] and headers["x-api-key"] == secret["x-api-key"]
    assert headers["cookie"] == f"session={secret['cookie']}; theme=dark"
    assert headers["x-my-token"] == secret["x-my-token"]
    assert "proxy-authorization" not in headers  # hop-by-hop: meant for the proxy, never forwarded
    for name in ("key", "apikey", "access_token"):
        assert f"{name}={secret['query ' + name]}" in query.split("&")
    body = recording.upstream_body
    assert body["api_key"] == secret["body api_key"]
    assert body["metadata"]["token"] == secret["body metadata.token"]
    assert body["metadata"]["user_id"] == secret["body metadata.user_id (--redact-field)"]


def test_request_parameters_and_the_rest_of_the_body_are_stored_as_sent(recording: Recording):
    ex = recording.stored
    expected = recording.sent_body
    for place in BODY_SECRETS:  # the secret values' text replaced; every other byte as the client sent it
        expected = expected.replace(f'"{recording.secret[place]}"'.encode(), b'"[redacted]"')
    assert ex.request_body == expected
    body = json.loads(ex.request_body)
    assert body["max_tokens"] == body["max_completion_tokens"] == 64 and body["top_k"] == 5
    assert body["logit_bias"] == {"50256": -100} and body["prompt_cache_key"] == "cache-bucket-7"
    assert body["stop_sequences"] == ["\n\nHuman:"] and body["keywords"] == ["kept"]
    assert body["tools"][0]["function"]["parameters"]["properties"]["password"]["type"] == "string"
    assert body["metadata"]["topic"] == "greeting"
    headers = {k.lower(): v for k, v in ex.request_headers}
    for name in ("authorization", "api-key", "x-api-key", "cookie", "proxy-authorization", "x-my-token",
                 "idempotency-key"):
        assert headers[name] == "[redacted]", name
    assert headers["x-request-tag"] == "kept-tag" and headers["content-type"] == "application/json"
    assert ex.query == ("api-version=2024-10-21&key=%5Bredacted%5D&apikey=%5Bredacted%5D"
                        "&access_token=%5Bredacted%5D")


def test_a_body_without_secrets_is_stored_byte_identical():
    body = b'{ "model":"m" ,"messages" : [ {"role":"user","content":"h\\u00e9 \\"token\\": x"} ],\n "max_tokens":5}  '
    assert redact_body(body) is body and redact_body(body, ["user", "metadata.user_id"]) is body
    for not_json in (b"", b"key=secret-value", b"\xff\xfe\x00", b"[1, 2"):
        assert redact_body(not_json) is not_json


def test_secrets_in_odd_bodies_are_found_too():
    deep = ('{"a":' * 5000 + '[{"api_key": "s1"}]' + "}" * 5000).encode()  # past Python's recursion limit
    odd = {
        "deep": deep,
        "duplicate keys": b'{"metadata": {"token": "s1"}, "metadata": {}}',  # json.loads keeps the last only
        "cut short": b'{"api_key": "s1", "messages": [',
        "UTF-8 with a BOM": b'\xef\xbb\xbf{"api_key": "s1"}',
        "UTF-16": '{"api_key": "s1"}'.encode("utf-16"),
    }
    for name, body in odd.items():
        stored = redact_body(body)
        assert b"s1" not in stored and "s1".encode("utf-16-le") not in stored, name
    assert redact_body(deep) == deep.replace(b'"s1"', b'"[redacted]"')


def test_replay_matches_a_request_that_carries_other_secrets(recording: Recording):
    other = secrets_for("replayed")
    query, headers, body = request_parts(other)
    headers.pop("Proxy-Authorization")
    with ReplayServer(recording.db, tape=recording.tape, speed=0) as server, httpx.Client(timeout=10) as client:
        resp = client.post(f"{server.base_url}/chat/completions?{query}", content=body, headers=headers)
        assert resp.status_code == 200, resp.text
        assert "Hello!" in resp.text and server.requests[-1].exchange_id == recording.exchange_id
        # a field that is not secret still tells requests apart, and the miss shows no secret either
        changed = body.replace(b'"max_tokens": 64', b'"max_tokens": 65')
        miss = client.post(f"{server.base_url}/chat/completions?{query}", content=changed, headers=headers)
        assert miss.status_code == 404 and "max_tokens" in miss.text
        assert not leaks(miss.text, other)


@pytest.mark.parametrize(("name", "secret"), [
    ("Authorization", True), ("Proxy-Authorization", True), ("Cookie", True), ("api-key", True),
    ("x-api-key", True), ("X-My-Token", True), ("X-Amz-Security-Token", True), ("X-Goog-Api-Key", True),
    ("Ocp-Apim-Subscription-Key", True), ("Idempotency-Key", True), ("key", True), ("apikey", True),
    ("access_token", True), ("accessToken", True), ("APIKey", True), ("client_secret", True),
    ("sessionId", True), ("password", True), ("X-Amz-Signature", True), ("sig", True),
    ("Content-Type", False), ("User-Agent", False), ("anthropic-version", False), ("openai-organization", False),
    ("api-version", False), ("Keep-Alive", False), ("max_tokens", False), ("maxOutputTokens", False),
    ("top_k", False), ("keywords", False), ("author", False), ("monkey", False), ("logit_bias", False),
])
def test_the_one_rule_for_secret_names(name: str, secret: bool):
    assert looks_secret(name) is secret


@pytest.mark.parametrize("field", [
    # chat completions, responses, anthropic messages (and a few OpenAI-compatible servers' own)
    "max_tokens", "max_completion_tokens", "max_output_tokens", "budget_tokens", "top_k", "top_p",
    "stop_sequences", "logit_bias", "logprobs", "top_logprobs", "prompt_cache_key", "signature",
    "thought_signature", "keywords", "stop_token_ids", "keep_alive", "service_tier", "safety_identifier",
    "previous_response_id", "parallel_tool_calls", "cache_control", "tool_choice", "metadata", "user",
])
def test_request_parameters_are_not_secret_fields(field: str):
    assert redact_value({field: 1}) == {field: 1}


def test_secret_fields_at_any_depth_and_redact_field_paths():
    body = {"api_key": "a", "metadata": {"token": "b", "user_id": "c", "n": {"session": {"x": 1}}},
            "messages": [{"role": "user", "name": "d", "auth": None, "password": True}],
            "mcp_servers": [{"url": "u", "authorization_token": "e"}], "user": "f"}
    got = redact_value(body, ["metadata.user_id", "messages.name", "user"])
    assert got == {"api_key": "[redacted]",
                   "metadata": {"token": "[redacted]", "user_id": "[redacted]", "n": {"session": "[redacted]"}},
                   "messages": [{"role": "user", "name": "[redacted]", "auth": None, "password": True}],
                   "mcp_servers": [{"url": "u", "authorization_token": "[redacted]"}], "user": "[redacted]"}
    nested = {"user": "f", "x": {"user": "g"}}
    assert redact_value(nested, ["user"]) == {"user": "[redacted]", "x": {"user": "[redacted]"}}  # any depth
    assert redact_value(nested, ["x.user"]) == {"user": "f", "x": {"user": "[redacted]"}}  # that path only
    assert redact_headers([("X-Session-Id", "s"), ("X-Trace", "t")], ["x-trace"]) == [
        ["X-Session-Id", "[redacted]"], ["X-Trace", "[redacted]"]]
    assert redact_query([("sig", "s"), ("api-version", "v")]) == "sig=%5Bredacted%5D&api-version=v"
    assert "max_tokens" in BODY_ALLOWED and "prompt_cache_key" in BODY_ALLOWED


_names = st.sampled_from(["model", "api_key", "token", "max_tokens", "messages", "properties", "password",
                          "content", "metadata", "user", "accessToken", "top_k", "signature"])
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_names, inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(_json, st.sampled_from([None, 2]), st.booleans(), st.lists(st.sampled_from(["user", "metadata.user"])))
def test_the_stored_body_is_the_sent_one_with_the_same_fields_redacted(value: Any, indent: int | None,
                                                                       ascii_only: bool, fields: list[str]):
    body = json.dumps(value, indent=indent, ensure_ascii=ascii_only).encode()
    stored = redact_body(body, fields)
    expected = redact_value(value, fields)
    assert json.loads(stored) == expected
    if expected is value:
        assert stored is body  # nothing secret: the bytes as received
