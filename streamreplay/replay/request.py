"""A request as replay reads it: parsed once, then read by matching, faults, the schedule and recording."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from streamreplay.dialects import dialect_for
from streamreplay.requestkey import NOT_JSON, canonical_value, parse_body

if TYPE_CHECKING:
    from aiohttp import web

    from streamreplay.replay.faults import Fault

__all__ = ["IncomingRequest", "Request", "Rules"]


class Rules(Protocol):
    """What a request is read with (matching.MatchRules): the fields its canonical body leaves out, the
    paths it masks, and the key of the matchers."""

    ignore: tuple[str, ...]
    mask: frozenset[tuple[str, ...]]

    def key(self, request: Request) -> tuple[Hashable, ...]: ...


@dataclass(eq=False)
class Request:
    """What the matchers compare: a recorded request, or the base of an incoming one.

    Each derived part (the parsed body, its canonical form, the key) is computed when first read and
    kept: however many matchers, faults and the schedule read it, a body is parsed once.
    """

    method: str
    #: relative to the server's base URL, as sent (percent-encoding kept)
    path: str
    body: bytes
    #: how requests are compared: the matchers, the fields the body matcher ignores, the masked paths
    rules: Rules
    #: the query string, without its "?"
    query: str = ""

    @cached_property
    def json(self) -> Any:
        """The body parsed as JSON: None when it is empty, NOT_JSON (requestkey) when it is not JSON."""
        return parse_body(self.body)

    @property
    def is_json(self) -> bool:
        """The body is empty or JSON."""
        return self.json is not NOT_JSON

    @cached_property
    def canonical(self) -> Any:
        """The body as the body matcher compares it (requestkey.canonical_body): ignored fields left out,
        secret-looking and masked fields "[redacted]"; a body that is not JSON as its bytes."""
        return canonical_value(self.body, self.json, self.rules.ignore, self.rules.mask)

    @cached_property
    def key(self) -> Hashable:
        """Equal for two requests every matcher of `rules` finds the same: the replay index's key."""
        return self.rules.key(self)

    @property
    def stream(self) -> bool | None:
        """Whether the body asks for a stream (in its dialect: Ollama streams unless told not to), or None
        when the body is not a JSON object."""
        payload = self.json
        return dialect_for(self.path).wants_stream(payload) if isinstance(payload, dict) else None


@dataclass(eq=False)
class IncomingRequest(Request):
    """A request the replay server is answering, built once in its handler from the HTTP request."""

    #: the faults the request itself asks for: its /fault/<spec>/ prefix, then its X-Streamreplay-Fault header
    faults: tuple[Fault, ...] = ()
    #: the HTTP request (None in tests that match without a server): what a miss forwarded upstream sends
    http: web.Request | None = None
