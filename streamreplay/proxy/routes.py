"""Where the recorder forwards a request: one upstream, or several by name (`--upstream NAME=URL`).

One unnamed upstream keeps the paths it always had: the local base path mirrors the upstream's
(`--upstream http://host/v1` serves `/v1/...`). Named upstreams are served under their name:
`--upstream openai=http://host/v1 --upstream claude=https://api.anthropic.com` forwards
`/openai/chat/completions` to `http://host/v1/chat/completions` and `/claude/v1/messages` to
`https://api.anthropic.com/v1/messages`, and the recording keeps the name in its path
(`/claude/v1/messages`), so replay serves each route from its own recordings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from yarl import URL

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,39}")


@dataclass(frozen=True)
class Route:
    """One upstream: its name ("" for the single unnamed one) and its base URL."""

    name: str
    url: URL

    @property
    def prefix(self) -> str:
        """The local base path requests for this upstream come under."""
        return f"/{self.name}" if self.name else self.url.path.rstrip("/")

    def __str__(self) -> str:
        return f"{self.name}={self.url}" if self.name else str(self.url)


def parse_route(spec: str) -> Route:
    """`URL` or `NAME=URL`; a ValueError that says what is wrong otherwise."""
    name, eq, rest = spec.partition("=")
    if eq and _NAME.fullmatch(name) and rest.startswith(("http://", "https://")):
        name, url = name, rest
    else:
        name, url = "", spec
    parsed = URL(url.rstrip("/"))
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"--upstream must be an http(s) URL or NAME=URL, got {spec!r}")
    return Route(name, parsed)


def parse_routes(specs: str | Iterable[str]) -> list[Route]:
    """Every upstream of a recorder: one unnamed, or one or more named, each name once."""
    routes = [parse_route(specs)] if isinstance(specs, str) else [parse_route(s) for s in specs]
    if not routes:
        raise ValueError("give an --upstream")
    names = [r.name for r in routes]
    if len(routes) > 1 and "" in names:
        raise ValueError("with several --upstream, name each one: --upstream NAME=URL")
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise ValueError(f"--upstream names must differ: {', '.join(doubled)} given twice")
    return routes


def recorded_routes(upstreams: Iterable[str | None]) -> dict[str, str]:
    """The named upstreams recordings went to (their `upstream` column holds NAME=URL), by name."""
    named: dict[str, str] = {}
    for upstream in upstreams:
        try:
            route = parse_route(upstream or "")
        except ValueError:
            continue
        if route.name:
            named[route.name] = str(route.url)
    return named


def route_for(routes: list[Route], raw_path: str) -> tuple[Route, str] | None:
    """The route a raw request path belongs to and the path relative to it, or None."""
    for route in routes:
        prefix = route.prefix
        if not prefix or raw_path == prefix or raw_path.startswith(prefix + "/"):
            return route, raw_path[len(prefix):]
    return None
