"""Request matching, VCR-style: small named matchers composed in a list, and on a miss, the first field
that differs.

A matcher is a predicate on (recorded, incoming) that returns None when they agree and else why not,
and a key: what it compares, hashable, so that the index finds the recordings of a request in one dict
lookup whatever the matchers. `register_matcher` adds one; `match_on` (a list of names) composes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from streamreplay.redact import REDACTED, redact_query, redacted_paths
from streamreplay.replay.request import Request
from streamreplay.requestkey import DEFAULT_IGNORED, body_digest, canonical_body

__all__ = [
    "DEFAULT_MATCH_ON", "MATCHERS", "MATCH_MODES", "Index", "MatchRules", "Matcher", "Miss", "first_difference",
    "register_matcher",
]

REDACTED_JSON = f'"{REDACTED}"'.encode()
#: key: each request gets the recordings its matchers find the same; sequence: the tape in order
MATCH_MODES = ("key", "sequence")
#: the matchers of key mode unless told otherwise, in the order a miss is explained
DEFAULT_MATCH_ON = ("method", "path", "body")


def first_difference(recorded: Any, incoming: Any, where: str = "") -> str | None:
    """The first field where two JSON values differ, as `messages[2].content: 'hi' != 'hello'`."""
    if isinstance(recorded, dict) and isinstance(incoming, dict):
        for key in sorted(set(recorded) | set(incoming)):
            path = f"{where}.{key}" if where else key
            if key not in incoming:
                return f"{path}: recorded {_short(recorded[key])}, missing in the request"
            if key not in recorded:
                return f"{path}: {_short(incoming[key])} in the request, not in the recording"
            found = first_difference(recorded[key], incoming[key], path)
            if found:
                return found
        return None
    if isinstance(recorded, list) and isinstance(incoming, list):
        for i, (a, b) in enumerate(zip(recorded, incoming, strict=False)):
            found = first_difference(a, b, f"{where}[{i}]")
            if found:
                return found
        if len(recorded) != len(incoming):
            return f"{where or 'body'}: {len(incoming)} items in the request, {len(recorded)} recorded"
        return None
    if recorded != incoming or type(recorded) is not type(incoming):
        return f"{where or 'body'}: {_short(incoming)} != {_short(recorded)} (request != recording)"
    return None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def difference_count(recorded: Any, incoming: Any) -> int:
    """How many leaf fields differ: the measure of which recording came closest."""
    if isinstance(recorded, dict) and isinstance(incoming, dict):
        return sum(
            difference_count(recorded.get(k), incoming.get(k)) if k in recorded and k in incoming else 1
            for k in set(recorded) | set(incoming)
        )
    if isinstance(recorded, list) and isinstance(incoming, list):
        paired = sum(difference_count(a, b) for a, b in zip(recorded, incoming, strict=False))
        return paired + abs(len(recorded) - len(incoming))
    return 0 if recorded == incoming else 1


# -- the matchers ---------------------------------------------------------------------------------------

#: a matcher's predicate: None when the recorded and the incoming request agree, else why not
Test = Callable[[Request, Request], str | None]


@dataclass(frozen=True)
class Matcher:
    """One named test a recording must pass to answer a request.

    `key(request)` is what the matcher compares; `test(recorded, incoming)` says how two requests
    differ by it (None when their keys are equal; by default the two keys side by side); `distance`
    how far a difference puts a recording from the request, to name the closest one on a miss.
    """

    name: str
    key: Callable[[Request], Hashable]
    test: Test | None = None
    weight: int = 1  # the distance of any difference, unless `distance` measures it
    distance: Callable[[Request, Request], int] | None = None

    def __call__(self, recorded: Request, incoming: Request) -> str | None:
        """None when the two requests agree on this matcher, else why not."""
        if self.test is not None:
            return self.test(recorded, incoming)
        theirs, ours = self.key(recorded), self.key(incoming)
        return None if theirs == ours else f"{self.name}: {ours!r} != {theirs!r}"

    def how_far(self, recorded: Request, incoming: Request) -> int:
        if self.distance is not None:
            return self.distance(recorded, incoming)
        return self.weight if self.key(recorded) != self.key(incoming) else 0


#: every matcher `match_on` may name, by name
MATCHERS: dict[str, Matcher] = {}


def register_matcher(name: str, key: Callable[[Request], Hashable], test: Test | None = None, *,
                     weight: int = 1, distance: Callable[[Request, Request], int] | None = None) -> Matcher:
    """Make a matcher `match_on` can name (a later one of the same name replaces it)."""
    MATCHERS[name] = Matcher(name, key, test, weight, distance)
    return MATCHERS[name]


def matchers_named(names: Iterable[str]) -> tuple[Matcher, ...]:
    found = []
    for name in names:
        if name not in MATCHERS:
            raise ValueError(f"unknown matcher {name!r} (known: {', '.join(MATCHERS)})")
        found.append(MATCHERS[name])
    return tuple(found)


def method(recorded: Request, incoming: Request) -> str | None:
    theirs, ours = recorded.method.upper(), incoming.method.upper()
    return None if theirs == ours else f"method: {ours} != {theirs}"


def path(recorded: Request, incoming: Request) -> str | None:
    return None if recorded.path == incoming.path else f"path: {incoming.path} != {recorded.path}"


def body(recorded: Request, incoming: Request) -> str | None:
    """The first field of the canonical bodies (requestkey.canonical_body) that differs."""
    return first_difference(recorded.canonical, incoming.canonical)


def query_key(request: Request) -> tuple[tuple[str, str], ...]:
    """The query's parameters in order of name, secret values "[redacted]" as the recorder stores them."""
    stored = redact_query(parse_qsl(request.query, keep_blank_values=True))
    return tuple(sorted(parse_qsl(stored, keep_blank_values=True)))


def query(recorded: Request, incoming: Request) -> str | None:
    theirs, ours = query_key(recorded), query_key(incoming)
    if theirs == ours:
        return None
    shown = [redact_query(q) or "(none)" for q in (ours, theirs)]
    return f"query: {shown[0]} != {shown[1]}"


register_matcher("method", lambda r: r.method.upper(), method, weight=1000)
register_matcher("path", lambda r: r.path, path, weight=100)
register_matcher("body", lambda r: body_digest(r.canonical), body,
                 distance=lambda recorded, incoming: difference_count(recorded.canonical, incoming.canonical))
register_matcher("query", query_key, query, weight=10)


@dataclass(frozen=True)
class MatchRules:
    """How requests are compared: the matchers, in the order a miss is explained, and what the body
    matcher leaves out (top-level fields ignored, paths masked as a recording's --redact-field hid them)."""

    matchers: tuple[Matcher, ...] = field(default_factory=lambda: matchers_named(DEFAULT_MATCH_ON))
    ignore: tuple[str, ...] = DEFAULT_IGNORED
    mask: frozenset[tuple[str, ...]] = frozenset()

    def request(self, method: str, path: str, body: bytes = b"", query: str = "") -> Request:
        return Request(method, path, body, self, query)

    def recorded(self, ex: Any) -> Request:
        """An Exchange's request, to compare with incoming ones."""
        return Request(ex.method, ex.path, ex.request_body, self, ex.query)

    def key(self, request: Request) -> tuple[Hashable, ...]:
        """Each matcher's key: equal for requests every matcher finds the same."""
        return tuple(matcher.key(request) for matcher in self.matchers)

    def explain(self, recorded: Request, incoming: Request) -> str | None:
        """None when the requests match, else the first matcher's account of the difference."""
        for matcher in self.matchers:
            why = matcher(recorded, incoming)
            if why:
                return f"{matcher.name} differs: {why}"
        return None

    def distance(self, recorded: Request, incoming: Request) -> int:
        return sum(matcher.how_far(recorded, incoming) for matcher in self.matchers)


@dataclass
class Miss:
    """No recording to serve, and why, for the 404 and the log."""

    reason: str
    closest: Any = None  # the Exchange that came closest


class Index:
    """Finds the recording for a request.

    `key` mode: requests its matchers (`match_on`) find identical are served their recordings in
    recorded order, the last one repeating once all were used unless `repeat` is off. `sequence`
    mode: the tape's exchanges in order, whatever the request says.
    """

    def __init__(self, exchanges: list[Any], ignore: Iterable[str] = (), mode: str = "key",
                 repeat: bool = True, match_on: Iterable[str] = DEFAULT_MATCH_ON) -> None:
        if mode not in MATCH_MODES:
            raise ValueError(f"match mode must be key or sequence, not {mode!r}")
        self.ignore = tuple(DEFAULT_IGNORED) + tuple(ignore)
        self.mode = mode
        self.repeat = repeat
        self.exchanges = list(exchanges)
        #: fields stored as "[redacted]" beyond the default rule's (a --redact-field of the recording, which
        #: replay is not told): a request matches there whatever its value (see streamreplay.redact)
        self.masks = frozenset(path for ex in self.exchanges if REDACTED_JSON in ex.request_body
                               for path in redacted_paths(canonical_body(ex.request_body, self.ignore)))
        #: what every request this index is asked about is read with (`request`, IncomingRequest's rules)
        self.rules = MatchRules(matchers_named(match_on), self.ignore, self.masks)
        self._by_key: dict[Hashable, list[Any]] = {}
        #: every recorded path: a tape recorded against an upstream with no base path stores /v1/messages
        self.paths: set[str] = {ex.path for ex in self.exchanges}
        for ex in self.exchanges:
            self._by_key.setdefault(self.key_of(ex), []).append(ex)
        self._used: dict[Hashable, int] = {}
        self._next = 0
        #: id() of each exchange served: the exchanges recorded while serving may come from another DB than
        #: the rest (a cassette played, misses recorded into a DB), so their `id`s may repeat
        self.served: set[int] = set()

    def request(self, method: str, path: str, body: bytes = b"", query: str = "") -> Request:
        """A request as this index compares it."""
        return self.rules.request(method, path, body, query)

    def key_of(self, ex: Any) -> Hashable:
        """The key of a recorded exchange: the key of every request it answers."""
        return self.rules.recorded(ex).key

    def add(self, recorded: list[Any]) -> None:
        """Exchanges recorded while serving (a miss forwarded upstream): matched from now on, and
        counted as used, since the request that missed got them. Identical requests get them in the
        order they were added, after the ones recorded before, as with any recording."""
        for ex in recorded:
            used_up = self._next >= len(self.exchanges)
            self.exchanges.append(ex)
            if used_up:  # sequence mode: the request that missed got this one; the next gets the one after
                self._next = len(self.exchanges)
            key = self.key_of(ex)
            self._by_key.setdefault(key, []).append(ex)
            self.paths.add(ex.path)
            self._used[key] = self._used.get(key, 0) + 1
            self.served.add(id(ex))

    def lookup(self, request: Request) -> Any:
        """The Exchange to serve, or a Miss."""
        if self.mode == "sequence":
            if self._next < len(self.exchanges):
                ex = self.exchanges[self._next]
                self._next += 1
            elif self.repeat and self.exchanges:
                ex = self.exchanges[-1]
            else:
                return Miss(f"the tape's {len(self.exchanges)} exchanges were all served (sequence mode)")
            self.served.add(id(ex))
            return ex
        request = self._ours(request)
        candidates = self._by_key.get(request.key)
        if not candidates:
            return self.closest(request)
        used = self._used.get(request.key, 0)
        if used >= len(candidates) and not self.repeat:
            return Miss(f"all {len(candidates)} recordings of this request were used, and repeat is off",
                        candidates[-1])
        self._used[request.key] = used + 1
        ex = candidates[min(used, len(candidates) - 1)]
        self.served.add(id(ex))
        return ex

    def closest(self, request: Request) -> Miss:
        """The miss of a request no recording matches, naming the recording that came closest."""
        request = self._ours(request)
        if not self.count:
            return Miss(f"no recording matches {request.method} {request.path}: the tape is empty")
        best, best_score, best_why = None, None, ""
        for ex in self._nearby():
            recorded = self.rules.recorded(ex)
            score = self.rules.distance(recorded, request)
            if best_score is None or score < best_score:
                best, best_score, best_why = ex, score, self.rules.explain(recorded, request) or ""
        return Miss(f"no recording matches {request.method} {request.path}; closest is exchange {best.id} "
                    f"(tape {best.tape}, #{best.seq}): {best_why}", best)

    def _nearby(self) -> Iterable[Any]:
        """The recordings a miss is compared with, in recorded order (of two equally close, the earlier
        is named): all of them."""
        return self.exchanges

    def _ours(self, request: Request) -> Request:
        """The request read with this index's rules (those it was made with, unless from elsewhere)."""
        if request.rules is self.rules:
            return request
        return self.rules.request(request.method, request.path, request.body, request.query)

    def unused(self) -> list[Any]:
        return [ex for ex in self.exchanges if id(ex) not in self.served]

    @property
    def count(self) -> int:
        """How many recordings the index serves from."""
        return len(self.exchanges)

    def upstreams(self) -> list[str]:
        """The upstream each recording was made from (routes.recorded_routes reads the names)."""
        return [ex.upstream for ex in self.exchanges]
