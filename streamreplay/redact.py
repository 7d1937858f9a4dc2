"""What never reaches disk: secret-looking request headers, query parameters and JSON body fields.

One rule says whether a name looks secret (`looks_secret`): the name is split into words on every
character that is not a letter or digit (`_ - .` and the rest) and on camelCase (`XMyToken`, `APIKey`),
the words are lower-cased, and the name is secret when one of its words

* is one of SECRET_WORDS (token, secret, key, session, password, auth, authorization, cookie, ...), or
* ends with one of SECRET_SUFFIXES, for names written as one word (`accesstoken`, `clientsecret`), or
* starts with `session` (`sessionid`).

Plurals are not the singular: `tokens` is not `token`, so `max_tokens` is a count, not a secret.

Headers and query parameters follow the rule as it is (an `Idempotency-Key` is redacted too: its value is
no secret, but hiding it costs nothing, since replay does not match on headers). Body fields follow it
except for BODY_ALLOWED, request parameters of the OpenAI, Anthropic and Gemini APIs (and common
OpenAI-compatible servers) whose names have such a word and whose values are not secrets; and except
the names of JSON Schema properties (the keys of an object under `properties`, as in a tool's parameters),
which name a parameter rather than hold a value. A secret field's value is replaced by "[redacted]"
whatever its type (a string, a number, an object, a list); null and booleans are kept: they hold no secret.

The body is stored as received when nothing in it is secret; otherwise only the redacted values' bytes
change (key order, spacing and escapes stay as the client wrote them).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlencode

REDACTED = "[redacted]"

#: a name with one of these words looks secret
SECRET_WORDS = frozenset({
    "token", "secret", "secrets", "key", "apikey", "session", "password", "passwords", "passwd", "passphrase",
    "pwd", "signature", "sig", "auth", "authn", "authz", "oauth", "authorization", "authentication",
    "cookie", "cookies", "credential", "credentials", "bearer", "jwt", "csrf", "xsrf",
})
#: ... or a word ending so (names written as one word: accesstoken, clientsecret, xapikey, privatekey)
SECRET_SUFFIXES = ("token", "secret", "password", "passwd", "apikey", "accesskey", "secretkey", "privatekey",
                   "authkey", "sessionkey", "signingkey", "subscriptionkey")
#: ... or a word starting so (sessionid, sessiontoken)
SECRET_PREFIXES = ("session",)

#: headers always redacted (the rule above covers them all; listed for the reader)
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "api-key", "x-api-key",
                            "openai-api-key"})
#: query parameters always redacted (idem)
SECRET_QUERY_PARAMS = frozenset({"key", "api-key", "api_key", "apikey", "access_token", "token"})

#: body fields whose names have a secret word but are known request parameters, not secrets:
#: OpenAI chat completions and responses (`prompt_cache_key`), Anthropic messages (the `signature` of a
#: thinking block, which the client sends back and the API verifies), Gemini (`thought_signature`), and
#: vLLM's token-id lists. The counts and samplers (`max_tokens`, `max_completion_tokens`,
#: `max_output_tokens`, `budget_tokens`, `top_k`, `stop_sequences`, `logit_bias`, ...) need no entry:
#: the rule does not catch them (a plural is not the singular), and they are listed all the same.
BODY_ALLOWED = frozenset({
    "prompt_cache_key", "signature", "thought_signature", "thoughtSignature",
    "stop_token_ids", "allowed_token_ids", "return_tokens_as_token_ids", "token_ids",
    "max_tokens", "max_completion_tokens", "max_output_tokens", "budget_tokens", "max_new_tokens",
    "min_tokens", "skip_special_tokens", "truncate_prompt_tokens", "top_k", "top_p", "stop_sequences",
    "logit_bias", "logprobs", "top_logprobs", "keywords", "keep_alive", "num_keep",
})

_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def words(name: str) -> list[str]:
    """`X-My-Token` -> ['x', 'my', 'token']; `maxOutputTokens` -> ['max', 'output', 'tokens']."""
    return [w.lower() for w in _WORDS.findall(name)]


@functools.lru_cache(maxsize=4096)
def looks_secret(name: str) -> bool:
    """Whether a header, query parameter or field with this name holds a secret (see the module doc)."""
    return any(
        w in SECRET_WORDS or w.endswith(SECRET_SUFFIXES) or w.startswith(SECRET_PREFIXES) for w in words(name)
    )


def secret_field(name: str) -> bool:
    """The rule for a JSON body field's own name: `looks_secret` minus BODY_ALLOWED."""
    return name not in BODY_ALLOWED and looks_secret(name)


# -- headers and query ---------------------------------------------------------------------------------------


def redact_headers(headers: Iterable[tuple[str, str]], secret: Iterable[str] = ()) -> list[list[str]]:
    """Headers as stored: secret-looking ones and those named in `secret` replaced, order and repeats kept."""
    extra = {s.lower() for s in secret}

    def hidden(name: str) -> bool:
        lower = name.lower()
        return lower in SECRET_HEADERS or lower in extra or looks_secret(name)

    return [[k, REDACTED if hidden(k) else v] for k, v in headers]


def redact_query(query: Mapping[str, str] | Iterable[tuple[str, str]], secret: Iterable[str] = ()) -> str:
    """A query string as stored: values of secret-looking parameters replaced, URL-encoded."""
    extra = {s.lower() for s in secret}

    def hidden(name: str) -> bool:
        lower = name.lower()
        return lower in SECRET_QUERY_PARAMS or lower in extra or looks_secret(name)

    items = query.items() if isinstance(query, Mapping) else query
    return urlencode([(k, REDACTED if hidden(k) else v) for k, v in items])


# -- JSON bodies ----------------------------------------------------------------------------------------------


class FieldRule:
    """Which body fields are redacted: secret-looking names (outside JSON Schema `properties`), and the
    `--redact-field` specs, each a dotted path from the top (`metadata.user_id`; a list stands for each of
    its items, so `messages.name` is every message's name) or a bare name matched at any depth (`user`)."""

    def __init__(self, fields: Iterable[str] = ()) -> None:
        fields = [f.strip() for f in fields if f and f.strip()]
        self.names = frozenset(f for f in fields if "." not in f)
        self.paths = frozenset(tuple(f.split(".")) for f in fields if "." in f)

    def hit(self, path: tuple[str, ...], schema_names: bool) -> bool:
        """Whether the field at `path` (object keys from the top) is redacted; `schema_names`: its name is
        a JSON Schema property's."""
        name = path[-1]
        if name in self.names or path in self.paths:
            return True
        return not schema_names and secret_field(name)

    def apply(self, value: Any, path: tuple[str, ...] = (), schema_names: bool = False) -> Any:
        """A parsed JSON value with the rule applied; the very same object when nothing was redacted."""
        if isinstance(value, dict):
            out: dict[str, Any] | None = None
            for key, item in value.items():
                child = (*path, key)
                if self.hit(child, schema_names) and replaceable(item):
                    new: Any = REDACTED
                else:
                    new = self.apply(item, child, key == "properties" and isinstance(item, dict))
                if new is not item:
                    if out is None:
                        out = dict(value)
                    out[key] = new
            return value if out is None else out
        if isinstance(value, list):
            items: list[Any] | None = None
            for i, item in enumerate(value):
                new = self.apply(item, path)
                if new is not item:
                    if items is None:
                        items = list(value)
                    items[i] = new
            return value if items is None else items
        return value


def replaceable(value: Any) -> bool:
    """A secret field's value is replaced unless it holds nothing: null, true, false (and "[redacted]")."""
    return value is not None and not isinstance(value, bool) and value != REDACTED


def redact_value(value: Any, fields: Iterable[str] = ()) -> Any:
    """A parsed JSON body with secret fields set to "[redacted]", as `redact_body` stores it; the very same
    object when nothing was redacted. The replay matches incoming requests through this."""
    return FieldRule(fields).apply(value)


def redact_body(body: bytes, fields: Iterable[str] = ()) -> bytes:
    """The request body as stored: the same bytes when no field is secret, else the received bytes with
    each secret value's text replaced by "[redacted]" (see FieldRule for `fields`). A body that is not
    JSON is stored as received."""
    if not body:
        return body
    rule = FieldRule(fields)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        # JSON in UTF-16 or UTF-32 (json.loads reads those too): read in its own encoding, by the same
        # loop as UTF-8 (however deep, and up to a fault), and written back as UTF-8 when redacted
        try:
            text = body.decode(json.detect_encoding(body))
        except (UnicodeDecodeError, LookupError):
            return body
    start = 1 if text.startswith("\ufeff") else 0
    spans: list[tuple[int, int]] = []
    # not JSON, or not all of it: what was found before the fault is still redacted
    with contextlib.suppress(ValueError, IndexError, RecursionError):
        _find_spans(text, _skip_ws(text, start), rule, spans)
    if not spans:
        return body
    pieces, last = [], 0
    for begin, end in spans:
        pieces += [text[last:begin], json.dumps(REDACTED)]
        last = end
    pieces.append(text[last:])
    return "".join(pieces).encode("utf-8")


_WS = re.compile(r"[ \t\n\r]*")
_scan_once = json.JSONDecoder().scan_once
_scanstring = json.decoder.scanstring  # type: ignore[attr-defined]


def _skip_ws(text: str, i: int) -> int:
    if i < len(text) and text[i] not in " \t\n\r":
        return i  # the usual case, without the regex
    return _WS.match(text, i).end()  # type: ignore[union-attr]


def _scalar(text: str, i: int) -> tuple[Any, int]:
    try:
        return _scan_once(text, i)
    except StopIteration:
        raise ValueError(f"no JSON value at {i}") from None


def _find_spans(text: str, i: int, rule: FieldRule, spans: list[tuple[int, int]]) -> None:
    """Append the text spans of the values to redact in the JSON value at `i`, read as the client wrote
    it. A loop with a stack, not recursion: however deep the body, its secrets are found."""
    stack: list[tuple[bool, tuple[str, ...], bool]] = []  # (an object?, its path, its keys name schema props)
    path: tuple[str, ...] = ()
    schema_names = False  # whether the keys of the object about to be read name JSON Schema properties
    need_value = True
    while True:
        if need_value:
            c = text[i]
            if c == "{":
                i = _skip_ws(text, i + 1)
                if text[i] == "}":
                    i += 1
                else:
                    stack.append((True, path, schema_names))
                    i, path, schema_names, need_value = _member(text, i, path, schema_names, rule, spans)
                    continue
            elif c == "[":
                try:
                    end = _scalar(text, i)[1]
                    flat = text.find("{", i, end) < 0  # no object in it, so no field (a list of numbers, say)
                except (ValueError, RecursionError):  # too deep, or broken further on: read up to the fault
                    flat = False
                if flat:
                    i = end
                else:
                    i = _skip_ws(text, i + 1)
                    if text[i] == "]":
                        i += 1
                    else:
                        stack.append((False, path, False))  # a list's items have the list's path
                        schema_names = False
                        continue
            else:
                i = _scalar(text, i)[1]
        # just past a value: what follows it in its container
        if not stack:
            return
        in_object, container, container_schema = stack[-1]
        i = _skip_ws(text, i)
        if text[i] == ",":
            i = _skip_ws(text, i + 1)
            if in_object:
                i, path, schema_names, need_value = _member(text, i, container, container_schema, rule, spans)
            else:
                path, schema_names, need_value = container, False, True
        elif text[i] == ("}" if in_object else "]"):
            stack.pop()
            i += 1
            need_value = False
        else:
            raise ValueError(f"unexpected {text[i]!r} at {i}")


def _member(text: str, i: int, container: tuple[str, ...], schema_names: bool, rule: FieldRule,
            spans: list[tuple[int, int]]) -> tuple[int, tuple[str, ...], bool, bool]:
    """Read `"key":` at `i`. A redacted field's value is read too and its span kept: (past it, path, False,
    False); else (the value's start, its path, whether its keys name schema properties, True)."""
    if text[i] != '"':
        raise ValueError(f"expected a key at {i}")
    key, i = _scanstring(text, i + 1)
    i = _skip_ws(text, i)
    if text[i] != ":":
        raise ValueError(f"expected : at {i}")
    i = _skip_ws(text, i + 1)
    path = (*container, key)
    if rule.hit(path, schema_names):
        try:
            parsed, end = _secret_value(text, i)
        except (ValueError, IndexError):
            # its value is cut short or broken: where it ends is unknown, so everything from it on is hidden
            if i < len(text) and text[i] not in ",}]":
                spans.append((i, len(text)))
            raise
        if replaceable(parsed):
            spans.append((i, end))
        return end, path, False, False
    return i, path, key == "properties" and text[i] == "{", True


def _secret_value(text: str, i: int) -> tuple[Any, int]:
    """The JSON value at `i` and where it ends; a list or object deeper than Python recurses is read as a
    list (it is replaced whatever it holds)."""
    try:
        return _scalar(text, i)
    except RecursionError:
        return [], _container_end(text, i)


def _container_end(text: str, i: int) -> int:
    """Just past the list or object at `i`, found by counting brackets outside strings (no recursion)."""
    depth = 0
    while True:
        c = text[i]
        if c == '"':
            i = _scanstring(text, i + 1)[1]
            continue
        i += 1
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if not depth:
                return i


# -- matching a request against redacted recordings ---------------------------------------------------------


def redacted_paths(value: Any, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Where a stored body holds "[redacted]": the object keys from the top, outside lists (a field the
    recording's --redact-field hid, which replay cannot know otherwise)."""
    found: set[tuple[str, ...]] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if item == REDACTED:
                found.add((*path, key))
            elif isinstance(item, dict):
                found |= redacted_paths(item, (*path, key))
    return found


def mask_paths(value: Any, paths: Iterable[tuple[str, ...]]) -> Any:
    """A parsed body with the fields at `paths` (see redacted_paths) set to "[redacted]" where present;
    the very same object when none is."""
    for path in paths:
        value = _mask(value, path)
    return value


def _mask(value: Any, path: tuple[str, ...]) -> Any:
    if not path or not isinstance(value, dict) or path[0] not in value:
        return value
    item = value[path[0]]
    new = (REDACTED if replaceable(item) else item) if len(path) == 1 else _mask(item, path[1:])
    return value if new is item else {**value, path[0]: new}
