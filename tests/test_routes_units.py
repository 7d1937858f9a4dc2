"""Where the recorder forwards a request: `--upstream` specs read, and request paths given to their upstream."""

from __future__ import annotations

import pytest
from yarl import URL

from streamreplay.proxy.routes import Route, parse_route, parse_routes, recorded_routes, route_for


@pytest.mark.parametrize(("spec", "name", "url", "prefix"), [
    ("http://host:8000/v1", "", "http://host:8000/v1", "/v1"),  # one unnamed upstream: its own base path
    ("https://host/v1/", "", "https://host/v1", "/v1"),  # a trailing slash is not part of it
    ("http://host", "", "http://host", ""),
    ("openai=http://host/v1", "openai", "http://host/v1", "/openai"),  # a named one: under its name
    ("claude=https://api.anthropic.com", "claude", "https://api.anthropic.com", "/claude"),
    ("A1_b-c=http://h", "A1_b-c", "http://h", "/A1_b-c"),
    ("x" * 40 + "=http://h", "x" * 40, "http://h", "/" + "x" * 40),  # 40 characters at most
    ("http://h/?a=http://b", "", "http://h/?a=http://b", ""),  # an "=" in the URL: what comes before is no name
    # the name ends at the first "=": the URL may have its own (Azure's api-version)
    ("azure=https://x.openai.azure.com/openai?api-version=2024-10-21", "azure",
     "https://x.openai.azure.com/openai?api-version=2024-10-21", "/azure"),
    ("http://h/BOX/", "", "http://h/BOX", "/BOX"),  # only slashes come off the end
])
def test_an_upstream_spec_is_a_url_or_a_name_and_a_url(spec: str, name: str, url: str, prefix: str):
    route = parse_route(spec)
    assert (route.name, route.url, route.prefix) == (name, URL(url), prefix)
    assert str(route) == (f"{name}={url}" if name else url)


# no scheme, another scheme, no host; a name that is no name (starts with a digit, has a dot, is too long)
@pytest.mark.parametrize("spec", [
    "host:8000/v1", "ftp://host/v1", "http://", "name=ftp://host", "1abc=http://h", "a.b=http://h",
    "x" * 41 + "=http://h", "name=host/v1", "",
])
def test_anything_else_is_refused_with_the_spec_quoted(spec: str):
    with pytest.raises(ValueError) as caught:
        parse_route(spec)
    assert str(caught.value) == f"--upstream must be an http(s) URL or NAME=URL, got {spec!r}"


def test_several_upstreams_must_each_be_named_and_named_once():
    assert parse_routes("http://h/v1") == [Route("", URL("http://h/v1"))]  # one spec as a plain string
    assert [r.name for r in parse_routes(["a=http://h", "b=http://h"])] == ["a", "b"]
    assert parse_routes(["http://h"]) == [Route("", URL("http://h"))]
    for specs, message in [
        ([], "give an --upstream"),
        (["a=http://h", "http://h"], "with several --upstream, name each one: --upstream NAME=URL"),
        (["a=http://h", "b=http://h", "a=http://i", "b=http://j", "c=http://k"],
         "--upstream names must differ: a, b given twice"),
    ]:
        with pytest.raises(ValueError) as caught:
            parse_routes(specs)
        assert str(caught.value) == message


def test_the_named_upstreams_recordings_went_to_by_name():
    assert recorded_routes(["a=http://h/v1", "http://unnamed", None, "not a url", "b=https://x/", "a=http://h2"]) == {
        "a": "http://h2", "b": "https://x"}  # the last word for a name counts


@pytest.mark.parametrize(("raw_path", "expected"), [
    ("/openai/chat/completions", ("openai", "/chat/completions")),
    ("/openai", ("openai", "")),
    ("/openaix/chat", None),  # a name is a whole path segment
    ("/claude/v1/messages", ("claude", "/v1/messages")),
    ("/other", None),
])
def test_a_request_path_goes_to_the_upstream_it_is_under(raw_path: str, expected):
    routes = parse_routes(["openai=http://h/v1", "claude=https://api.anthropic.com"])
    found = route_for(routes, raw_path)
    assert (found and (found[0].name, found[1])) == expected


def test_one_unnamed_upstream_keeps_its_paths():
    routes = parse_routes("http://h/v1")
    assert route_for(routes, "/v1/chat/completions") == (routes[0], "/chat/completions")
    assert route_for(routes, "/v1") == (routes[0], "")
    assert route_for(routes, "/v2/chat") is None
    at_root = parse_routes("http://h")
    assert route_for(at_root, "/chat/completions") == (at_root[0], "/chat/completions")  # no prefix: every path
