"""The canonical key of a request: what makes two requests "the same" for matching and for diagnose."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from streamreplay.redact import mask_paths, redact_value

#: fields that change how an answer is delivered, not what it says
DEFAULT_IGNORED = ("stream", "stream_options")


class NotJson:
    """The parsed value of a body that is not JSON (`parse_body`): compared as its bytes."""

    def __repr__(self) -> str:
        return "NOT_JSON"


NOT_JSON = NotJson()


def parse_body(body: bytes) -> Any:
    """The body as JSON: None when it is empty, NOT_JSON when it is not JSON."""
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # nested past Python's recursion limit: compared as its bytes
        return NOT_JSON


def canonical_value(body: bytes, value: Any, ignore: Iterable[str] = DEFAULT_IGNORED,
                    mask: Iterable[tuple[str, ...]] = ()) -> Any:
    """`canonical_body` of a body already parsed (`value`, from `parse_body(body)`)."""
    if not body:
        return None
    if value is NOT_JSON:
        return body
    if isinstance(value, dict):
        dropped = set(ignore)
        value = {k: v for k, v in value.items() if k not in dropped}
    return mask_paths(redact_value(value), mask)


def canonical_body(body: bytes, ignore: Iterable[str] = DEFAULT_IGNORED,
                   mask: Iterable[tuple[str, ...]] = ()) -> Any:
    """The request body as the matchers see it: parsed JSON minus ignored top-level fields, with its
    secret-looking fields "[redacted]" as the recorder stores them (streamreplay.redact), and those at the
    `mask` paths too (fields a recording's --redact-field hid), so a request matches its recording
    whatever secrets it carries.

    A body that is not JSON is compared as its bytes.
    """
    return canonical_value(body, parse_body(body), ignore, mask)


def body_digest(canon: Any) -> str:
    """A short stable digest of a canonical body (sorted keys): equal for equal bodies."""
    if isinstance(canon, bytes):
        blob = canon
    else:
        # surrogatepass: a lone surrogate escape ("\ud83d") is valid JSON; it keys as its own bytes
        blob = json.dumps(canon, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogatepass")
    return hashlib.sha256(blob).hexdigest()[:16]


def request_key(method: str, path: str, body: bytes, ignore: Iterable[str] = DEFAULT_IGNORED,
                mask: Iterable[tuple[str, ...]] = ()) -> str:
    """A stable key for identical requests: method, path and the canonical body, sorted keys."""
    return f"{method.upper()} {path} {body_digest(canonical_body(body, ignore, mask))}"


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is empty, not JSON, or not an object."""
    value = parse_body(body)
    return value if isinstance(value, dict) else None
