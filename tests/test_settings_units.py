"""settings.py on pyproject.toml files written in a temporary folder: which table is found, how each value is
checked and shown, what beats what, and the one-line errors. No CLI: the functions the CLI and the plugin call."""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from streamreplay.settings import (
    DB_COMMANDS,
    KEYS,
    Setting,
    Settings,
    SettingsError,
    click_default_map,
    default_mode,
    find_table,
    load_settings,
)

ENV: dict[str, str] = {}  # an environment with nothing set


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working folder: paths are shown relative to it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(text, encoding="utf-8")
    return folder / "pyproject.toml"


def load(folder: Path, table: str) -> Settings:
    write(folder, f'[project]\nname = "app"\n\n[tool.streamreplay]\n{table}\n')
    return load_settings(folder)


def refusal(folder: Path, table: str) -> str:
    with pytest.raises(SettingsError) as caught:
        load(folder, table)
    return str(caught.value)


# -- finding the table ------------------------------------------------------------------------------------


def test_the_nearest_pyproject_with_the_table_wins_and_one_without_it_is_passed_over(here: Path):
    write(here, '[tool.streamreplay]\ndb = "top.db"\n')
    write(here / "app", '[tool.streamreplay]\ndb = "app.db"\n')
    write(here / "app" / "pkg", '[project]\nname = "pkg"\n[tool.ruff]\nline-length = 1\n')
    (here / "app" / "pkg" / "src").mkdir()
    file, table = find_table(here / "app" / "pkg" / "src")  # type: ignore[misc]
    assert (file, table) == (here / "app" / "pyproject.toml", {"db": "app.db"})
    assert find_table(Path("app/pkg"))[0] == here / "app" / "pyproject.toml"  # type: ignore[index]
    assert find_table(here)[1] == {"db": "top.db"}  # type: ignore[index]


def test_no_table_anywhere_is_no_settings(here: Path):
    write(here, '[tool.ruff]\nline-length = 1\n')
    found = load_settings(here)
    assert found == Settings(searched_from=here) and found.values == {} and found.file is None
    assert found.header() == "no pyproject.toml with a [tool.streamreplay] table in . or above"


def test_a_folder_named_pyproject_toml_is_no_file(here: Path):
    (here / "sub" / "pyproject.toml").mkdir(parents=True)
    write(here, '[tool.streamreplay]\nspeed = 2\n')
    assert load_settings(here / "sub").values == {"speed": 2.0}


def test_a_file_that_is_not_toml_or_not_text_is_one_line_naming_it(here: Path):
    write(here / "a", "[tool.streamreplay]\ndb = \n")
    with pytest.raises(SettingsError, match=r"^a/pyproject\.toml is not valid TOML: .*\(at line 2, column 6\)$"):
        load_settings(here / "a")
    (here / "b").mkdir()
    (here / "b" / "pyproject.toml").write_bytes(b'[tool.streamreplay]\ndb = "\xff"\n')
    with pytest.raises(SettingsError, match=r"^cannot read b/pyproject\.toml: 'utf-8' codec can't decode"):
        load_settings(here / "b")


# -- checking the values ----------------------------------------------------------------------------------


def test_each_key_is_taken_as_the_commands_take_it(here: Path):
    got = load(here / "app", 'db = "rec/../recordings/team.db"\ncassette_dir = "tests/cassettes"\n'
                             'redact_headers = ["X-Team-Token"]\nredact_fields = []\nspeed = 0\n'
                             'match = "sequence"\nignore_fields = ["user", "seed"]\nmode = "new_episodes"\n'
                             'upstream = "https://api.openai.com/v1"')
    assert got.values == {"db": str(here / "app" / "recordings" / "team.db"),
                          "cassette_dir": str(here / "app" / "tests" / "cassettes"),
                          "redact_headers": ("X-Team-Token",), "redact_fields": (), "speed": 0.0,
                          "match": "sequence", "ignore_fields": ("user", "seed"), "mode": "new_episodes",
                          "upstream": "https://api.openai.com/v1"}
    assert isinstance(got.values["speed"], float)
    assert got.file == here / "app" / "pyproject.toml" and got.searched_from == here / "app"
    assert got.get("speed") == 0.0 and got.get("nope", 7) == 7 and got.get("nope") is None


def test_a_path_may_start_from_home_or_be_absolute(here: Path):
    assert load(here, 'db = "~/x.db"').values["db"] == os.path.expanduser("~/x.db")
    assert load(here, f'db = "{here / "abs.db"}"').values["db"] == str(here / "abs.db")


def test_a_table_of_upstreams_is_name_equals_url_in_order(here: Path):
    got = load(here, '[tool.streamreplay.upstream]\nopenai = "https://api.openai.com/v1"\nlocal = "http://h:1"')
    assert got.values["upstream"] == ("openai=https://api.openai.com/v1", "local=http://h:1")


@pytest.mark.parametrize(("table", "says"), [
    ('db = ""', "db must be a path (a non-empty string), not a string ('')"),
    ("db = 3", "db must be a path (a non-empty string), not an integer (3)"),
    ('redact_headers = "X-Key"', "redact_headers must be an array of strings, not a string ('X-Key')"),
    ('redact_fields = ["a", 1]', "redact_fields must be an array of strings, not an array"),
    ("speed = true", "speed must be a number of at least 0, not a boolean (True)"),
    ("speed = -0.5", "speed must be a number of at least 0, not a float (-0.5)"),
    ("speed = nan", "speed must be a number of at least 0, not a float (nan)"),
    ("speed = inf", "speed must be a number of at least 0, not a float (inf)"),
    ("speed = 1979-05-27", "speed must be a number of at least 0, not a date or time (datetime.date(1979, 5, 27))"),
    ('match = ["key"]', "match must be one of key, sequence, not an array"),
    ("mode = 1", "mode must be one of none, once, new, all, new_episodes, rewrite, not an integer (1)"),
    ('upstream = "ftp://me:pw@files.example/v1"', "upstream must be an http(s) URL, not "
                                                   "'ftp://[redacted]@files.example/v1'"),
    ('upstream = "https:///v1"', "upstream must be an http(s) URL, not 'https:///v1'"),
    ('upstream = "http://[me:pw@h/v1"', "upstream must be an http(s) URL, not '[redacted]'"),
    ("upstream = {}", "upstream must be a URL (a string) or a table of NAME = URL, not a table"),
    ("upstream = 3", "upstream must be a URL (a string) or a table of NAME = URL, not an integer (3)"),
    ("upstream = { openai = 1 }", "upstream must map names (without '=') to URLs; openai = an integer (1)"),
    ('upstream = { "a=b" = "http://h" }', "upstream must map names (without '=') to URLs; a=b = a string "
                                          "('http://h')"),
    ('upstream = { "" = "http://h" }', "upstream must map names (without '=') to URLs;  = a string ('http://h')"),
    ('upstream = { a = "h:1" }', "upstream must be an http(s) URL, not 'h:1'"),
])
def test_a_wrong_value_names_the_key_what_it_must_be_and_what_it_is(here: Path, table: str, says: str):
    assert refusal(here, table) == f"pyproject.toml: in [tool.streamreplay], {says}"


def test_every_problem_is_in_the_one_line(here: Path):
    assert refusal(here / "app", 'record_mode = "once"\nspeed = "fast"\ndb = 1\nspeedy = 2') == (
        "app/pyproject.toml: [tool.streamreplay] has unknown keys record_mode, speedy (known: db, upstream, "
        "redact_headers, redact_fields, speed, match, ignore_fields, cassette_dir, mode); in [tool.streamreplay], "
        "speed must be a number of at least 0, not a string ('fast'); db must be a path (a non-empty string), "
        "not an integer (1)")
    assert refusal(here, "dbs = 1") == (
        "pyproject.toml: [tool.streamreplay] has unknown key dbs (known: db, upstream, redact_headers, "
        "redact_fields, speed, match, ignore_fields, cassette_dir, mode)")


def test_a_tool_streamreplay_that_is_no_table_is_refused(here: Path):
    write(here, "[tool]\nstreamreplay = 3\n")
    with pytest.raises(SettingsError, match=r"^pyproject\.toml: \[tool\.streamreplay\] must be a table, not an "
                                            r"integer \(3\)$"):
        load_settings(here)


# -- what is in force, and how it is shown -------------------------------------------------------------


def test_the_environment_beats_the_table_which_beats_the_default(here: Path):
    got = load(here / "app", 'db = "team.db"\nspeed = 2.5')
    force = {s.name: s for s in got.in_force({"STREAMREPLAY_DB": "env.db"})}
    assert force["db"] == Setting("db", "env.db", "environment", "STREAMREPLAY_DB", "--db of every command")
    assert force["speed"] == Setting("speed", 2.5, "pyproject", "app/pyproject.toml", "play --speed")
    assert force["match"] == Setting("match", "key", "default", "", "play --match, pytest plugin")
    assert force["upstream"] == Setting("upstream", None, "default", "", "record --upstream")
    # an empty variable sets nothing
    assert {s.name: s for s in got.in_force({"STREAMREPLAY_DB": ""})}["db"].source == "pyproject"
    empty = {s.name: s for s in Settings().in_force(ENV)}
    assert (empty["db"].value, empty["db"].source) == ("recordings/streamreplay.db", "default")
    assert [s.name for s in Settings().in_force(ENV)] == [k.name for k in KEYS]


def test_the_plugin_mode_defaults_to_none_on_ci_and_once_elsewhere(monkeypatch: pytest.MonkeyPatch):
    assert default_mode({"CI": "true"}) == "none" and default_mode({}) == "once" and default_mode({"CI": ""}) == "once"
    mode = {s.name: s for s in Settings().in_force({"CI": "1"})}["mode"]
    assert (mode.value, mode.source, mode.origin, mode.where()) == ("none", "default", "CI is set",
                                                                    "default (CI is set)")
    assert {s.name: s for s in Settings().in_force(ENV)}["mode"].where() == "default (CI is not set)"
    monkeypatch.setenv("CI", "yes")
    assert default_mode() == "none" and {s.name: s for s in Settings().in_force()}["mode"].value == "none"
    monkeypatch.delenv("CI")
    assert default_mode() == "once"


def test_config_prints_the_file_and_a_row_per_setting(here: Path, monkeypatch: pytest.MonkeyPatch):
    (here / "app").mkdir()
    monkeypatch.chdir(here / "app")
    got = load(here / "app", 'db = "../recordings/team.db"\nupstream = "https://me:pw@llm.example/v1?key=k&x=1"\n'
                             'redact_headers = ["X-Team-Token", "X-Other"]\nspeed = 0\n'
                             'cassette_dir = "tests/cassettes"\nmode = "none"')
    assert got.lines({"CI": "1"}) == LINES


def row(*cells: str) -> str:
    """A row of `config`'s table: columns 16, 54 and 16 wide (the widest value is the upstream's)."""
    return "".join(c.ljust(w) for c, w in zip(cells, (16, 54, 16, 0), strict=True)).rstrip()


LINES = [
    "[tool.streamreplay] from pyproject.toml",
    row("setting", "value", "from", "used by"),
    row("db", "../recordings/team.db", "pyproject.toml", "--db of every command"),
    row("upstream", "https://[redacted]@llm.example/v1?key=[redacted]&x=1", "pyproject.toml", "record --upstream"),
    row("redact_headers", "X-Team-Token, X-Other", "pyproject.toml", "record --redact-header"),
    row("redact_fields", "-", "default", "record --redact-field"),
    row("speed", "0", "pyproject.toml", "play --speed"),
    row("match", "key", "default", "play --match, pytest plugin"),
    row("ignore_fields", "-", "default", "play --ignore-field, pytest plugin"),
    row("cassette_dir", "tests/cassettes", "pyproject.toml", "pytest plugin (--streamreplay-dir)"),
    row("mode", "none", "pyproject.toml", "pytest plugin (--streamreplay-mode)"),
]


@pytest.mark.parametrize(("setting", "shown"), [
    (Setting("upstream", None, "default", "", ""), "- (none: record needs --upstream)"),
    (Setting("cassette_dir", None, "default", "", ""),
     "- (recordings/, or <test dir>/cassettes/<module>/ for an unnamed tape)"),
    (Setting("mode", None, "default", "", ""), "-"),
    (Setting("redact_fields", (), "default", "", ""), "-"),
    (Setting("redact_fields", ("a", "b.c"), "pyproject", "", ""), "a, b.c"),
    (Setting("upstream", ("a=http://u:p@h/v1?api_key=s", "b=http://h"), "pyproject", "", ""),
     "a=http://[redacted]@h/v1?api_key=[redacted], b=http://h"),
    (Setting("speed", 1.0, "default", "", ""), "1"),
    (Setting("speed", 0.25, "pyproject", "", ""), "0.25"),
    (Setting("db", "x/y.db", "environment", "", ""), "x/y.db"),
    (Setting("upstream", "http://u:p@h/v1?token=s&t=1#f", "pyproject", "", ""),
     "http://[redacted]@h/v1?token=[redacted]&t=1#f"),
    (Setting("upstream", "http://[bad", "pyproject", "", ""), "[redacted]"),
    (Setting("match", "key", "default", "", ""), "key"),
])
def test_a_value_is_shown_joined_with_what_a_default_means_and_no_credentials(setting: Setting, shown: str):
    assert setting.shown() == shown


def test_a_path_from_the_table_is_shown_from_the_working_folder_when_shorter(here: Path):
    assert Setting("db", str(here / "r" / "a.db"), "pyproject", "", "").shown() == "r/a.db"
    assert Setting("db", "/a.db", "pyproject", "", "").shown() == "/a.db"
    assert Setting("db", str(here / "r" / "a.db"), "environment", "", "").shown() == str(here / "r" / "a.db")


def test_where_a_setting_came_from():
    assert Setting("db", "x", "pyproject", "app/pyproject.toml", "").where() == "app/pyproject.toml"
    assert Setting("db", "x", "environment", "STREAMREPLAY_DB", "").where() == "environment STREAMREPLAY_DB"
    assert Setting("db", "x", "default", "", "").where() == "default"
    assert Setting("db", "x", "default", "CI is set", "").where() == "default (CI is set)"


def test_the_header_says_where_the_settings_come_from(here: Path):
    assert Settings(file=here / "app" / "pyproject.toml").header() == "[tool.streamreplay] from app/pyproject.toml"
    assert Settings().header() == "pyproject.toml not read (--no-config)"
    assert Settings(searched_from=here / "a").header() == (
        "no pyproject.toml with a [tool.streamreplay] table in a or above")


def test_config_json_has_every_setting_with_lists_and_no_credentials(here: Path):
    got = load(here, '[tool.streamreplay.upstream]\nopenai = "https://u:pw@h/v1?key=k"')
    out = got.to_json(ENV)
    assert out["file"] == str(here / "pyproject.toml") and list(out["settings"]) == [k.name for k in KEYS]
    assert out["settings"]["upstream"] == {"value": ["openai=https://[redacted]@h/v1?key=[redacted]"],
                                           "source": "pyproject", "origin": "pyproject.toml",
                                           "used_by": "record --upstream"}
    assert out["settings"]["redact_headers"] == {"value": [], "source": "default", "origin": "",
                                                 "used_by": "record --redact-header"}
    one = load(here, 'upstream = "https://u:pw@h/v1"').to_json(ENV)["settings"]["upstream"]["value"]
    assert one == "https://[redacted]@h/v1"
    nothing = Settings().to_json(ENV)
    assert nothing["file"] is None and nothing["settings"]["upstream"]["value"] is None


# -- click's default_map -----------------------------------------------------------------------------------


def option(name: str, multiple: bool = False) -> Any:
    return SimpleNamespace(name=name, multiple=multiple)


def test_without_commands_the_db_goes_to_every_command_with_a_db_and_the_rest_to_theirs(here: Path):
    got = load(here, 'db = "sub/team.db"\nspeed = 0\nredact_headers = ["X-A"]\nmode = "none"')
    defaults = click_default_map(got)
    assert list(defaults) == [*DB_COMMANDS]
    assert all(defaults[c]["db"] == "sub/team.db" for c in DB_COMMANDS)
    assert defaults["play"] == {"db": "sub/team.db", "speed": 0.0}
    assert defaults["record"] == {"db": "sub/team.db", "redact_headers": ("X-A",)}
    assert click_default_map(Settings()) == {}


def test_with_commands_only_options_they_have_get_a_value_shaped_for_the_option(here: Path):
    got = load(here, 'db = "team.db"\nupstream = "http://h/v1"\nredact_fields = ["a"]\nignore_fields = ["u"]')
    commands = {"record": SimpleNamespace(params=[option("db"), option("upstream", multiple=True),
                                                  option("redact_fields", multiple=True)]),
                "play": SimpleNamespace(params=[option("db"), option("ignore_fields", multiple=True)]),
                "faults": SimpleNamespace(params=[])}
    assert click_default_map(got, commands) == {
        "record": {"db": "team.db", "upstream": ("http://h/v1",), "redact_fields": ("a",)},
        "play": {"db": "team.db", "ignore_fields": ("u",)}}


def test_several_values_for_an_option_that_takes_one_is_an_error_naming_the_file(here: Path):
    got = load(here / "app", '[tool.streamreplay.upstream]\na = "http://h"\nb = "http://i"')
    commands = {"record": SimpleNamespace(params=[option("upstream")])}
    with pytest.raises(SettingsError) as caught:
        click_default_map(got, commands)
    assert str(caught.value) == ("app/pyproject.toml: [tool.streamreplay] upstream has 2 entries; "
                                 "`streamreplay record` takes one --upstream")
    odd = Settings(values={"redact_fields": ("a", "b")})
    with pytest.raises(SettingsError, match=r"^pyproject\.toml: \[tool\.streamreplay\] redact_fields has 2 entries; "
                                            r"`streamreplay record` takes one --redact-fields$"):
        click_default_map(odd, {"record": SimpleNamespace(params=[option("redact_fields")])})


def test_a_date_is_named_as_such():
    from streamreplay.settings import _toml_type
    assert _toml_type(date(2024, 1, 2)) == "a date or time (datetime.date(2024, 1, 2))"
    assert _toml_type(1.5) == "a float (1.5)" and _toml_type({}) == "a table" and _toml_type([1]) == "an array"


def test_the_real_cli_gets_each_value_where_its_option_is(here: Path):
    from streamreplay.cli import main
    got = load(here, 'db = "team.db"\nupstream = "http://h/v1"\nspeed = 2\nignore_fields = ["user"]\n'
                     'redact_headers = ["X-A"]\nmatch = "sequence"\nmode = "all"')
    defaults = click_default_map(got, main.commands)
    assert sorted(defaults) == sorted(DB_COMMANDS)  # only the commands with a --db, here all of them
    assert defaults["record"] == {"db": "team.db", "upstream": ("http://h/v1",), "redact_headers": ("X-A",)}
    assert defaults["play"] == {"db": "team.db", "speed": 2.0, "match": "sequence", "ignore_fields": ("user",)}
    assert defaults["prune"] == {"db": "team.db"} and "faults" not in defaults


def test_a_group_of_other_commands_gets_the_db_on_each_that_has_one(here: Path):
    got = load(here, 'db = "team.db"\nspeed = 1')
    commands = {"faults": SimpleNamespace(params=[]), "mine": SimpleNamespace(params=[option("db")]),
                "ls": SimpleNamespace(params=[option("db")])}
    assert click_default_map(got, commands) == {"mine": {"db": "team.db"}, "ls": {"db": "team.db"}}


def test_a_bad_choice_string_is_refused(here: Path):
    assert refusal(here, 'match = "fuzzy"') == ("pyproject.toml: in [tool.streamreplay], match must be one of key, "
                                                "sequence, not a string ('fuzzy')")


def test_only_the_upstream_is_read_as_a_url_when_shown():
    assert Setting("db", "rec?token=x.db", "environment", "", "").shown() == "rec?token=x.db"
    assert Setting("match", "key", "pyproject", "", "").shown() == "key"


def test_every_secret_of_an_upstream_url_is_hidden_and_blank_parameters_kept():
    shown = Setting("upstream", "https://me:p@ss@h/v1?a=&api-key=s&b=2", "pyproject", "", "").shown()
    assert shown == "https://[redacted]@h/v1?a=&api-key=[redacted]&b=2"


def test_what_is_in_force_follows_the_given_environment_not_the_process_one(here: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("STREAMREPLAY_DB", raising=False)
    monkeypatch.delenv("CI", raising=False)
    got = load(here, 'speed = 2')
    env = {"STREAMREPLAY_DB": "env.db", "CI": "1"}
    cells = [re.split(r"\s{2,}", line) for line in got.lines(env)[2:]]
    assert cells[0] == ["db", "env.db", "environment STREAMREPLAY_DB", "--db of every command"]
    assert cells[-1] == ["mode", "none", "default (CI is set)", "pytest plugin (--streamreplay-mode)"]
    out = got.to_json(env)["settings"]
    assert out["db"] == {"value": "env.db", "source": "environment", "origin": "STREAMREPLAY_DB",
                         "used_by": "--db of every command"}
    assert out["mode"] == {"value": "none", "source": "default", "origin": "CI is set",
                           "used_by": "pytest plugin (--streamreplay-mode)"}
