"""[tool.streamreplay] in pyproject.toml, through the real CLI and a real pytest run of a small project.

Every CLI run here is the `streamreplay` command itself (click's CliRunner in a temporary working folder,
or a subprocess for `record`, which serves until a signal); the project's settings are only ever written
as pyproject.toml files, as a user writes them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import click
import openai
import pytest
from click.testing import CliRunner

from streamreplay.bundled import bundled_tape
from streamreplay.cli import main
from streamreplay.settings import DB_COMMANDS, Settings, click_default_map, load_settings
from streamreplay.store import DEFAULT_DB, Store
from streamreplay.testing import Script, ScriptedUpstream
from tests.helpers import SECRET

pytest_plugins = ["pytester"]

CASSETTE = bundled_tape("openai-happy-path")
HELLO = "Hello! How can I help you today?"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # the settings under test must be the only ones: none from the caller's shell
    for name in ("STREAMREPLAY_DB", "CI"):
        monkeypatch.delenv(name, raising=False)


def project(root: Path, table: str, *subfolders: str) -> Path:
    """A project folder whose pyproject.toml has `table` under [tool.streamreplay]; returns its deepest subfolder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(f'[project]\nname = "app"\n\n[tool.streamreplay]\n{table}\n')
    deepest = root.joinpath(*subfolders)
    deepest.mkdir(parents=True, exist_ok=True)
    return deepest


def run(*args: str, env: dict[str, str] | None = None) -> click.testing.Result:
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def in_force(env: dict[str, str] | None = None, *flags: str) -> dict[str, dict]:
    result = run(*flags, "config", "--json", env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["settings"]


def test_found_from_a_subfolder_past_a_pyproject_without_the_table_with_paths_relative_to_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    deep = project(tmp_path / "app", 'db = "data/team.db"', "src", "pkg")
    # a pyproject.toml between them without the table is passed over, as ruff passes over one without [tool.ruff]
    (tmp_path / "app" / "src" / "pyproject.toml").write_text('[project]\nname = "inner"\n')
    monkeypatch.chdir(deep)
    team_db = tmp_path / "app" / "data" / "team.db"
    assert in_force()["db"] == {"value": str(team_db), "source": "pyproject", "origin": "../../pyproject.toml",
                                "used_by": "--db of every command"}
    shown = run("config").output.splitlines()
    assert shown[0] == "[tool.streamreplay] from ../../pyproject.toml"
    assert re.match(r"db +\.\./\.\./data/team\.db +\.\./\.\./pyproject\.toml +--db of every command$", shown[2])

    # real commands, no --db: import writes into the project's DB, ls in another subfolder reads it back
    imported = run("import", CASSETTE, "--tape", "shared")
    assert imported.exit_code == 0, imported.output
    assert imported.output.strip() == "imported 1 exchange into ../../data/team.db as tape shared"
    (tmp_path / "app" / "docs").mkdir()
    monkeypatch.chdir(tmp_path / "app" / "docs")
    listing = run("ls", "--json")
    assert listing.exit_code == 0, listing.output
    assert [json.loads(line)["tape"] for line in listing.output.splitlines()] == ["shared"]
    assert [ex.tape for ex in Store(team_db).exchanges()] == ["shared"]


def test_flag_beats_environment_beats_pyproject_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = project(tmp_path, 'db = "from-pyproject.db"\nspeed = 0')
    monkeypatch.chdir(folder)
    for tape in ("from-pyproject", "from-env", "from-flag"):
        assert run("import", CASSETTE, "--db", f"{tape}.db", "--tape", tape).exit_code == 0
    env = {"STREAMREPLAY_DB": "from-env.db"}

    def tapes_listed(*flags: str, env: dict[str, str] | None = None) -> list[str]:
        result = run("ls", "--json", *flags, env=env)
        assert result.exit_code == 0, result.output
        return [json.loads(line)["tape"] for line in result.output.splitlines()]

    assert tapes_listed() == ["from-pyproject"]
    assert tapes_listed(env=env) == ["from-env"]
    assert tapes_listed("--db", "from-flag.db", env=env) == ["from-flag"]
    # without the table (--no-config), the built-in default, which does not exist here
    default = run("--no-config", "ls")
    assert default.exit_code == 1 and default.output.strip() == f"Error: no recordings at {DEFAULT_DB}"

    # `config` says the same, and where each value came from
    assert (in_force()["db"]["value"], in_force()["db"]["source"]) == (str(tmp_path / "from-pyproject.db"), "pyproject")
    assert in_force(env)["db"] == {"value": "from-env.db", "source": "environment", "origin": "STREAMREPLAY_DB",
                                   "used_by": "--db of every command"}
    assert in_force(None, "--no-config")["db"]["value"] == DEFAULT_DB
    assert in_force(None, "--no-config")["db"]["source"] == "default"
    assert (in_force()["speed"]["value"], in_force()["match"]["source"]) == (0.0, "default")
    text = run("config", env=env).output.splitlines()
    assert text[0] == "[tool.streamreplay] from pyproject.toml"
    assert re.match(r"db +from-env\.db +environment STREAMREPLAY_DB +--db of every command$", text[2])
    assert re.match(r"speed +0 +pyproject\.toml +play --speed$", text[6])
    assert re.match(r"mode +once +default \(CI is not set\) +pytest plugin", text[-1])
    # a flag beats the table in a command's own defaults too: play --help shows the table's speed
    assert "[default: 0.0; x>=0]" in run("play", "--help").output


def test_record_takes_its_upstream_db_and_redactions_from_the_pyproject(tmp_path: Path):
    with ScriptedUpstream(Script(gap=0.002)) as upstream:
        folder = project(tmp_path / "app", f'upstream = "{upstream.base_url}"\ndb = "rec/team.db"\n'
                                           'redact_headers = ["X-Team-Token"]\nredact_fields = ["team_ref"]', "src")
        proc = subprocess.Popen([sys.executable, "-m", "streamreplay.cli", "record", "--port", "0", "--tape", "t"],
                                cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={k: v for k, v in os.environ.items() if k != "STREAMREPLAY_DB"})
        try:
            banner = proc.stdout.readline()
            found = re.search(r"base_url (http://127\.0\.0\.1:\d+/v1) ", banner)
            assert found, (banner, proc.stderr.read() if proc.poll() is not None else "")
            client = openai.OpenAI(base_url=found.group(1), api_key="test", max_retries=0,
                                   default_headers={"X-Team-Token": SECRET})
            stream = client.chat.completions.create(model="gpt-4o-mini", stream=True, extra_body={"team_ref": SECRET},
                                                    messages=[{"role": "user", "content": "Say hello"}])
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == HELLO
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    team_db = tmp_path / "app" / "rec" / "team.db"
    assert f"recording {upstream.base_url} into ../rec/team.db" in banner
    (ex,) = Store(team_db).exchanges()
    assert {name.lower(): value for name, value in ex.request_headers}["x-team-token"] == "[redacted]"
    assert json.loads(ex.request_body)["team_ref"] == "[redacted]"
    assert SECRET not in team_db.read_bytes().decode("latin-1") + out + err


def test_unknown_keys_are_all_named_with_the_file_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(project(tmp_path, 'db = "x.db"\ndbb = "y.db"\nrecord_mode = "once"', "sub"))
    result = run("ls")
    assert result.exit_code == 1
    assert result.output == ("Error: ../pyproject.toml: [tool.streamreplay] has unknown keys dbb, record_mode "
                             "(known: db, upstream, redact_headers, redact_fields, speed, match, ignore_fields, "
                             "cassette_dir, mode)\n")
    assert run("config").output == result.output
    # with a wrong type as well, the same line names it too: one edit fixes everything
    (tmp_path / "pyproject.toml").write_text('[tool.streamreplay]\nrecord_mode = "once"\nspeed = "fast"\n')
    assert run("ls").output == ("Error: ../pyproject.toml: [tool.streamreplay] has unknown key record_mode (known: "
                                "db, upstream, redact_headers, redact_fields, speed, match, ignore_fields, "
                                "cassette_dir, mode); in [tool.streamreplay], speed must be a number of at least 0, "
                                "not a string ('fast')\n")
    # a command that reads no settings still runs, and --no-config runs them all
    assert run("faults").exit_code == 0
    assert run("--no-config", "config").exit_code == 0


@pytest.mark.parametrize(("table", "named"), [
    ('speed = "fast"', "speed must be a number of at least 0, not a string ('fast')"),
    ('redact_headers = "X-Key"', "redact_headers must be an array of strings, not a string ('X-Key')"),
    ('mode = "sometimes"', "mode must be one of none, once, new, all, new_episodes, rewrite, not a string "
                           "('sometimes')"),
    ('db = 3\nmatch = ["key"]', "db must be a path (a non-empty string), not an integer (3); match must be one of "
                                "key, sequence, not an array"),
    ('upstream = "ftp://me:pw@files.example/v1"', "upstream must be an http(s) URL, not "
                                                   "'ftp://[redacted]@files.example/v1'"),
    ('upstream = "http://[me:pw@files.example/v1"', "upstream must be an http(s) URL, not '[redacted]'"),
    ('upstream = { openai = 1 }', "upstream must map names (without '=') to URLs; openai = an integer (1)"),
])
def test_wrong_types_name_the_key_the_type_expected_and_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 table: str, named: str):
    monkeypatch.chdir(project(tmp_path, table))
    result = run("config")
    assert result.exit_code == 1
    assert result.output == f"Error: pyproject.toml: in [tool.streamreplay], {named}\n"


def test_a_password_in_the_upstream_is_never_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(project(tmp_path, f'upstream = "https://me:{SECRET}@llm.example/v1?api-key={SECRET}&x=1"'))
    shown = run("config").output + run("config", "--json").output
    assert SECRET not in shown
    assert "https://[redacted]@llm.example/v1?api-key=[redacted]&x=1" in shown


def test_a_file_that_is_not_toml_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "pyproject.toml").write_text("[tool.streamreplay]\ndb = \n")
    monkeypatch.chdir(tmp_path)
    result = run("ls")
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1
    assert result.output.startswith("Error: pyproject.toml is not valid TOML: ") and "line 2" in result.output


#: an app that asks its OpenAI route and its Ollama route once each, as `record -- CMD` points them
TWO_ROUTES_APP = """
import json, os, urllib.request
for variable in ("OPENAI_BASE_URL", "OLLAMA_HOST"):
    body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "Say hello"}]})
    request = urllib.request.Request(os.environ[variable] + "/chat/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    assert b"[DONE]" in urllib.request.urlopen(request, timeout=10).read()
"""


def test_a_table_of_upstreams_is_record_s_name_equals_url_routes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with ScriptedUpstream(Script(gap=0.002)) as hosted, ScriptedUpstream(Script(gap=0.002)) as local:
        folder = project(tmp_path, f'db = "team.db"\n[tool.streamreplay.upstream]\nopenai = "{hosted.base_url}"\n'
                                   f'local = "{local.base_url}"')
        wanted = (f"openai={hosted.base_url}", f"local={local.base_url}")
        assert click_default_map(load_settings(folder))["record"]["upstream"] == wanted
        monkeypatch.chdir(folder)
        assert in_force()["upstream"]["value"] == list(wanted)
        # a real session: no --upstream given, each route of the table served and recorded
        result = run("record", "--tape", "team", "--", sys.executable, "-c", TWO_ROUTES_APP)
        assert result.exit_code == 0, result.output
        assert (len(hosted.sent), len(local.sent)) == (1, 1)
    assert sorted(ex.path.split("/")[1] for ex in Store(tmp_path / "team.db").exchanges(tape="team")) == [
        "local", "openai"]


def test_every_command_with_a_db_option_gets_the_db(tmp_path: Path):
    settings = Settings(file=tmp_path / "pyproject.toml", values={"db": str(tmp_path / "x.db")})
    with_db = {name for name, command in main.commands.items() if any(p.name == "db" for p in command.params)}
    assert set(click_default_map(settings, main.commands)) == with_db
    assert set(DB_COMMANDS) == with_db, "DB_COMMANDS (the default without the group's commands) is out of date"


APP_TEST = """
import openai, pytest


def ask(base_url):
    client = openai.OpenAI(base_url=base_url, api_key="test", max_retries=0)
    stream = client.chat.completions.create(model="gpt-4o-mini", stream=True, user="USER",
                                            messages=[{"role": "user", "content": "Say hello"}])
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


@pytest.mark.streamreplay("greeting")
def test_named(streamreplay):
    assert ask(streamreplay.base_url) == "Hello! How can I help you today?"


@pytest.mark.streamreplay
def test_unnamed(streamreplay):
    assert ask(streamreplay.base_url) == "Hello! How can I help you today?"
"""

#: the inner runs load only the plugins the small project needs (streamreplay's, by its entry point, as a user's
#: run does): the others installed here cost seconds a run and play no part
LEAN = tuple(arg for name in ("langsmith_plugin", "hypothesispytest", "asyncio", "aiohttp", "anyio", "xdist",
                              "xdist.looponfail") for arg in ("-p", f"no:{name}"))

STRICT_TEST = """
import pytest
from test_app import ask


@pytest.fixture(scope="module")
def streamreplay_config():
    return {"ignore_fields": []}


@pytest.mark.streamreplay("greeting")
def test_strict(streamreplay):
    ask(streamreplay.base_url)
"""


def test_the_plugin_takes_its_cassette_dir_mode_and_ignored_fields_from_the_pyproject(pytester: pytest.Pytester):
    pytester.makefile(".toml", pyproject='[tool.streamreplay]\ncassette_dir = "tapes"\nmode = "none"\n'
                                         'ignore_fields = ["user"]\n')
    pytester.makepyfile(test_app=APP_TEST.replace("USER", "ann"))
    with ScriptedUpstream(Script(gap=0.002)) as upstream:
        # the command line's mode beats the table's; the cassettes go where the table says
        result = pytester.runpytest_subprocess(*LEAN, "--streamreplay-mode", "once", "--streamreplay-upstream",
                                               upstream.base_url)
        result.assert_outcomes(passed=2)
    assert "Hello! " in Path(pytester.path, "tapes", "greeting.jsonl").read_text()
    assert Path(pytester.path, "tapes", "test_app", "test_unnamed.jsonl").exists()

    # then the table's mode (none; the default here is once), replaying for another user: a match, since the
    # table ignores `user`; streamreplay_config, which ignores nothing, beats the table in its module: a miss
    pytester.makepyfile(test_app=APP_TEST.replace("USER", "bob"), test_strict=STRICT_TEST)
    result = pytester.runpytest_subprocess(*LEAN, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*matched no recording in */tapes/greeting.jsonl (mode none)*'bob' != 'ann'*"])


def test_the_plugin_names_a_bad_table_in_one_line(pytester: pytest.Pytester):
    pytester.makefile(".toml", pyproject='[tool.streamreplay]\nmode = "sometimes"\n')
    pytester.makepyfile(test_app=APP_TEST.replace("USER", "ann"))
    result = pytester.runpytest_subprocess(*LEAN)
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*streamreplay: pyproject.toml: in [[]tool.streamreplay[]], mode must be one of *"])
    assert "Traceback" not in result.stdout.str()
