"""The canonical key of a request: what makes two requests "the same" for matching and for diagnose."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

#: fields that change how an answer is delivered, not what it says
DEFAULT_IGNORED = ("stream", "stream_options")


def canonical_body(body: bytes, ignore: Iterable[str] = DEFAULT_IGNORED) -> Any:
    """The request body as the matchers see it: parsed JSON minus ignored top-level fields.

    A body that is not JSON is compared as its bytes.
    """
    if not body:
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return body
    if isinstance(value, dict):
        dropped = set(ignore)
        value = {k: v for k, v in value.items() if k not in dropped}
    return value


def request_key(method: str, path: str, body: bytes, ignore: Iterable[str] = DEFAULT_IGNORED) -> str:
    """A stable key for identical requests: method, path and the canonical body, sorted keys."""
    canon = canonical_body(body, ignore)
    if isinstance(canon, bytes):
        blob = canon
    else:
        blob = json.dumps(canon, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    digest = hashlib.sha256(blob).hexdigest()[:16]
    return f"{method.upper()} {path} {digest}"


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is empty, not JSON, or not an object."""
    try:
        value = json.loads(body) if body else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
