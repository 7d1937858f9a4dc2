"""The names the README's "From Python" uses are importable from the package itself, and are the real ones."""

from __future__ import annotations

import subprocess
import sys

import pytest

import streamreplay


def test_every_exported_name_resolves_to_its_defining_object():
    for name in streamreplay.__all__:
        value = getattr(streamreplay, name)
        assert value is not None, name
    from streamreplay.proxy.recorder import RecordingProxy, RecordOptions
    from streamreplay.replay.server import ReplayServer

    assert (streamreplay.RecordingProxy, streamreplay.RecordOptions, streamreplay.ReplayServer) == (
        RecordingProxy, RecordOptions, ReplayServer)


def test_an_unknown_name_is_an_attribute_error():
    try:
        streamreplay.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("no AttributeError")


@pytest.mark.parametrize("module", ["streamreplay", "streamreplay.guard"])
def test_importing_the_package_loads_no_server_code(module: str):
    """Neither the package nor the guard an app imports loads aiohttp or a server, store or replay module."""
    code = (f"import sys, {module}; print(sorted(m for m in sys.modules if m == 'aiohttp' or m == 'sqlite_utils' "
            "or m.startswith(('streamreplay.proxy', 'streamreplay.replay', 'streamreplay.store', "
            "'streamreplay.serving'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
