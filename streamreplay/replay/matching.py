"""Request matching, VCR-style: small named matchers, and on a miss, the first field that differs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from streamreplay.redact import REDACTED, redacted_paths
from streamreplay.requestkey import DEFAULT_IGNORED, canonical_body, request_key

REDACTED_JSON = f'"{REDACTED}"'.encode()


@dataclass(frozen=True)
class Request:
    """What the matchers compare: an incoming request or a recorded one."""

    method: str
    path: str
    body: Any  # canonical body


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


Matcher = Callable[[Request, Request], str | None]


def method(recorded: Request, incoming: Request) -> str | None:
    return None if recorded.method == incoming.method else f"method: {incoming.method} != {recorded.method}"


def path(recorded: Request, incoming: Request) -> str | None:
    return None if recorded.path == incoming.path else f"path: {incoming.path} != {recorded.path}"


def body(recorded: Request, incoming: Request) -> str | None:
    return first_difference(recorded.body, incoming.body)


#: the default matchers, in the order a miss is explained
MATCHERS: list[Matcher] = [method, path, body]


def explain(recorded: Request, incoming: Request, matchers: list[Matcher] = MATCHERS) -> str | None:
    """None when the requests match, else the first matcher's account of the difference."""
    for matcher in matchers:
        why = matcher(recorded, incoming)
        if why:
            return f"{matcher.__name__} differs: {why}"
    return None


@dataclass
class Miss:
    """No recording to serve, and why, for the 404 and the log."""

    reason: str
    closest: Any = None  # the Exchange that came closest


class Index:
    """Finds the recording for a request.

    `key` mode: identical requests (canonical key) are served in recorded order, the last one
    repeating once all were used unless `repeat` is off. `sequence` mode: the tape's exchanges
    in order, whatever the request says.
    """

    def __init__(self, exchanges: list[Any], ignore: Iterable[str] = (), mode: str = "key",
                 repeat: bool = True) -> None:
        if mode not in ("key", "sequence"):
            raise ValueError(f"match mode must be key or sequence, not {mode!r}")
        self.ignore = tuple(DEFAULT_IGNORED) + tuple(ignore)
        self.mode = mode
        self.repeat = repeat
        self.exchanges = list(exchanges)
        #: fields stored as "[redacted]" beyond the default rule's (a --redact-field of the recording, which
        #: replay is not told): a request matches there whatever its value (see streamreplay.redact)
        self.masks = frozenset(path for ex in self.exchanges if REDACTED_JSON in ex.request_body
                               for path in redacted_paths(canonical_body(ex.request_body, self.ignore)))
        self._by_key: dict[str, list[Any]] = {}
        for ex in self.exchanges:
            self._by_key.setdefault(self.key(ex.method, ex.path, ex.request_body), []).append(ex)
        self._used: dict[str, int] = {}
        self._next = 0
        #: id() of each exchange served: the exchanges recorded while serving may come from another DB than
        #: the rest (a cassette played, misses recorded into a DB), so their `id`s may repeat
        self.served: set[int] = set()

    def add(self, recorded: list[Any]) -> None:
        """Exchanges recorded while serving (a miss forwarded upstream): matched from now on, and
        counted as used, since the request that missed got them. Identical requests get them in the
        order they were added, after the ones recorded before, as with any recording."""
        for ex in recorded:
            used_up = self._next >= len(self.exchanges)
            self.exchanges.append(ex)
            if used_up:  # sequence mode: the request that missed got this one; the next gets the one after
                self._next = len(self.exchanges)
            key = self.key(ex.method, ex.path, ex.request_body)
            self._by_key.setdefault(key, []).append(ex)
            self._used[key] = self._used.get(key, 0) + 1
            self.served.add(id(ex))

    def key(self, method: str, path: str, body: bytes) -> str:
        return request_key(method, path, body, self.ignore, self.masks)

    def lookup(self, method: str, path: str, body: bytes, key: str | None = None) -> Any:
        """The Exchange to serve, or a Miss (`key`: the request's `key()`, when the caller has it)."""
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
        key = key or self.key(method, path, body)
        candidates = self._by_key.get(key)
        if not candidates:
            return self.closest(method, path, body)
        used = self._used.get(key, 0)
        if used >= len(candidates) and not self.repeat:
            return Miss(f"all {len(candidates)} recordings of this request were used, and repeat is off",
                        candidates[-1])
        self._used[key] = used + 1
        ex = candidates[min(used, len(candidates) - 1)]
        self.served.add(id(ex))
        return ex

    def closest(self, method: str, path: str, body: bytes) -> Miss:
        incoming = Request(method.upper(), path, canonical_body(body, self.ignore, self.masks))
        if not self.exchanges:
            return Miss(f"no recording matches {method} {path}: the tape is empty")
        best, best_score, best_why = None, None, ""
        for ex in self.exchanges:
            recorded = Request(ex.method.upper(), ex.path, canonical_body(ex.request_body, self.ignore, self.masks))
            score = (1000 if recorded.method != incoming.method else 0) + (100 if recorded.path != incoming.path else 0)
            score += difference_count(recorded.body, incoming.body)
            if best_score is None or score < best_score:
                best, best_score, best_why = ex, score, explain(recorded, incoming) or ""
        return Miss(f"no recording matches {method} {path}; closest is exchange {best.id} "
                    f"(tape {best.tape}, #{best.seq}): {best_why}", best)

    def unused(self) -> list[Any]:
        return [ex for ex in self.exchanges if id(ex) not in self.served]
