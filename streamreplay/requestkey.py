"""The canonical key of a request: what makes two requests "the same" for matching and for diagnose."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from streamreplay.redact import mask_paths, redact_value

#: fields that change how an answer is delivered, not what it says
DEFAULT_IGNORED = ("stream", "stream_options")


def canonical_body(body: bytes, ignore: Iterable[str] = DEFAULT_IGNORED,
                   mask: Iterable[tuple[str, ...]] = ()) -> Any:
    """The request body as the matchers see it: parsed JSON minus ignored top-level fields, with its
    secret-looking fields "[redacted]" as the recorder stores them (streamreplay.redact), and those at the
    `mask` paths too (fields a recording's --redact-field hid), so a request matches its recording
    whatever secrets it carries.

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
    return mask_paths(redact_value(value), mask)


def request_key(method: str, path: str, body: bytes, ignore: Iterable[str] = DEFAULT_IGNORED,
                mask: Iterable[tuple[str, ...]] = ()) -> str:
    """A stable key for identical requests: method, path and the canonical body, sorted keys."""
    canon = canonical_body(body, ignore, mask)
    if isinstance(canon, bytes):
        blob = canon
    else:
        # surrogatepass: a lone surrogate escape ("\ud83d") is valid JSON; it keys as its own bytes
        blob = json.dumps(canon, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogatepass")
    digest = hashlib.sha256(blob).hexdigest()[:16]
    return f"{method.upper()} {path} {digest}"


def json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is empty, not JSON, or not an object."""
    try:
        value = json.loads(body) if body else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
