"""The provider dialects streamreplay understands, by name, and which one a request path is.

See `streamreplay.dialects.base.Dialect` for what a dialect answers, and docs/DESIGN.md ("Dialects")
for how to add one.
"""

from __future__ import annotations

from streamreplay.dialects.anthropic import Anthropic
from streamreplay.dialects.azure import Azure
from streamreplay.dialects.base import Dialect
from streamreplay.dialects.chat import Chat
from streamreplay.dialects.ollama import Ollama
from streamreplay.dialects.responses import Responses

__all__ = ["CHAT", "DIALECTS", "Dialect", "dialect_for", "dialect_named"]

CHAT = Chat()

#: every dialect, in the order paths are tried; chat last, as the fallback
DIALECTS: dict[str, Dialect] = {d.name: d for d in (Azure(), Responses(), Anthropic(), Ollama(), CHAT)}


def dialect_for(path: str | None) -> Dialect:
    """The dialect of a request path (relative to the upstream's base, query excluded); chat when
    no dialect claims it."""
    path = (path or "").split("?", 1)[0]
    for dialect in DIALECTS.values():
        if dialect is not CHAT and dialect.recognises(path):
            return dialect
    return CHAT


def dialect_named(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown dialect {name!r}; known: {', '.join(DIALECTS)}") from None
