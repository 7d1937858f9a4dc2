"""`streamreplay repro`'s folder (repro.py), written from small stores in-process: which client the script sends
through and what it says of the recording, which tape's source the cassette keeps, and what it refuses."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from streamreplay.bundled import bundled_tape
from streamreplay.cassette import load_cassette
from streamreplay.repro import write_repro
from streamreplay.store import Store
from tests.helpers import parse_python, write_exchange

SDK_SYNC = json.dumps([["User-Agent", "OpenAI/Python 2.54.0"]])


def docstring(script: Path) -> str:
    return ast.get_docstring(parse_python(script.read_text())) or ""


def test_a_request_the_chat_script_cannot_send_goes_through_plain_http_to_its_own_path(tmp_path: Path):
    """An openai SDK request to a path other than /chat/completions (the legacy /completions) is sent by plain HTTP
    to that path, and the folder says so; one to /chat/completions goes through the client that sent it."""
    store = Store(str(tmp_path / "rec.db"))
    legacy = write_exchange(store, [(1000, b'data: {"choices":[{"index":0,"text":"Hi","finish_reason":"stop"}]}\n\n'),
                                    (2000, b"data: [DONE]\n\n")],
                            path="/completions", request_headers=SDK_SYNC, end_cause="complete",
                            request_body=json.dumps({"model": "m", "prompt": "Say hi", "stream": True}))
    info = write_repro(store, legacy, tmp_path / "legacy")
    assert (info.client, info.script_client) == ("openai-sync", "http")
    assert info.lines()[1] == "client openai-sync, sent through http; the script reads to the end"
    script = info.script.read_text()
    assert 'CLIENT = "http"' in script and "PATH = '/completions'" in script and "import openai" not in script

    load_cassette(store, bundled_tape("consumer-break"))
    chat = store.exchanges(tape="consumer-break")[0].id
    info = write_repro(store, chat, tmp_path / "chat")
    assert info.client == info.script_client == "openai-async"
    assert info.lines()[1].startswith("client openai-async; the script stops after 2 chunks")


def test_the_script_says_what_the_client_had_when_it_left(tmp_path: Path):
    """consumer-break's client left at chunk 2 (a role chunk, then "The"): the docstring says it had 'The', the text
    of the chunks before the one it left at."""
    store = Store(":memory:")
    load_cassette(store, bundled_tape("consumer-break"))
    ex = store.exchanges()[0]
    info = write_repro(store, ex.id, tmp_path)
    assert f"Ended: the client left at chunk 2 of 63, {ex.client_left_ns / 1e9:.3f} s in " in docstring(info.script)
    assert 0 < ex.client_left_ns / 1e9 < 10  # the recorded moment, in seconds
    assert docstring(info.script).endswith("(the upstream went on: complete); it had 'The'.\n"
                                           "Run: python repro.py [--client NAME] [--fault SPEC] [--speed S]; "
                                           "with neither, the recorded outcome.")


def test_a_recorded_text_with_backslashes_is_quoted_in_the_docstring_as_recorded(tmp_path: Path):
    r"""A LaTeX answer's `\frac` stays two characters in the script's docstring, not a form feed."""
    store = Store(str(tmp_path / "rec.db"))
    text = r"\frac{1}{2} \n"
    eid = write_exchange(store, request_headers=SDK_SYNC, end_cause="complete", text=text, finish_reason="stop",
                         request_body=json.dumps({"model": "m", "messages": [{"role": "user", "content": "half?"}],
                                                  "stream": True}))
    info = write_repro(store, eid, tmp_path / "repro")
    assert f"text {text!r}, finish_reason stop." in docstring(info.script)



def test_a_tape_name_with_a_backslash_or_triple_quote_is_quoted_in_the_docstring_as_named(tmp_path: Path):
    r"""`record` takes any tape name: one like `C:\Nightly` or holding three double quotes still gives a script
    that parses, whose docstring names the tape as it is."""
    store = Store(str(tmp_path / "rec.db"))
    for n, tape in enumerate((r"C:\Nightly", 'say """hi"""')):
        eid = write_exchange(store, tape=tape, request_headers=SDK_SYNC, end_cause="complete", text="Hi",
                             finish_reason="stop", request_body=json.dumps({"model": "m", "stream": True,
                                                                            "messages": [{"role": "user",
                                                                                          "content": "hi"}]}))
        info = write_repro(store, eid, tmp_path / f"repro{n}")
        assert docstring(info.script).startswith(f"Exchange {eid} of tape {tape}, replayed offline into ")

def test_the_cassette_keeps_the_source_of_the_exchange_s_own_tape(tmp_path: Path):
    """With two tapes in the store, the folder's cassette names the source its exchange's tape was recorded from."""
    store = Store(str(tmp_path / "rec.db"))
    load_cassette(store, bundled_tape("openai-happy-path"))
    load_cassette(store, bundled_tape("consumer-break"))
    with store.db.conn:  # the second tape is the newer one whatever the clock's resolution
        store.db.conn.execute("update tapes set created_at = '2999-01-01' where name = 'consumer-break'")
    info = write_repro(store, store.exchanges(tape="consumer-break")[0].id, tmp_path / "repro")
    header = json.loads(info.cassette.read_text().splitlines()[0])
    assert header["tape"] == "consumer-break"
    assert header["source"] == json.loads(bundled_tape("consumer-break").read_text().splitlines()[0])["source"]


@pytest.mark.parametrize("body", ["[1, 2]", "not json"])
def test_an_exchange_whose_request_is_not_a_json_object_is_refused(tmp_path: Path, body: str):
    """There is nothing to resend: `write_repro` raises ValueError saying so and writes no folder."""
    store = Store(str(tmp_path / "rec.db"))
    eid = write_exchange(store, request_headers=SDK_SYNC, request_body=body, end_cause="complete")
    with pytest.raises(ValueError, match="the request body is not a JSON object, there is nothing to resend"):
        write_repro(store, eid, tmp_path / "repro")
    assert not (tmp_path / "repro").exists()
