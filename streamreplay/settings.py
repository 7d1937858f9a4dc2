"""Settings where Python projects keep them: the `[tool.streamreplay]` table of the nearest pyproject.toml.

    [tool.streamreplay]
    db = "recordings/team.db"              # every command's --db
    upstream = "https://api.openai.com/v1" # record's --upstream; or a table, one NAME = "URL" per upstream
    redact_headers = ["X-Team-Token"]      # record's --redact-header
    redact_fields = ["metadata.user_id"]   # record's --redact-field
    speed = 0                              # play's --speed
    match = "key"                          # play's --match, and the pytest plugin's `match`
    ignore_fields = ["user"]               # play's --ignore-field, and the pytest plugin's `ignore_fields`
    cassette_dir = "tests/cassettes"       # the pytest plugin's --streamreplay-dir
    mode = "none"                          # the pytest plugin's --streamreplay-mode

The table is looked for as ruff looks for its own: in the start folder's pyproject.toml, then in its
parent's, up to the root; a pyproject.toml without the table is passed over. Relative paths in the
table are relative to its file's folder, whichever subfolder a command runs in.

Precedence, highest first: a flag, an environment variable (STREAMREPLAY_DB), the table, the built-in
default. click applies it itself, given `click_default_map(settings)` as the group's `default_map`;
the pytest plugin puts the table below its command line, its markers and `streamreplay_config`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

from streamreplay.redact import REDACTED, redact_query
from streamreplay.replay.matching import MATCH_MODES
from streamreplay.replay.options import ReplayOptions
from streamreplay.report import table
from streamreplay.store import DEFAULT_DB

__all__ = ["KEYS", "MODES", "MODE_ALIASES", "Setting", "Settings", "SettingsError", "click_default_map",
           "default_mode", "find_table", "load_settings"]

#: the pytest plugin's record modes (VCR.py's, by shorter names), and VCR.py's names for two of them
MODES = ("none", "once", "new", "all")
MODE_ALIASES = {"new_episodes": "new", "rewrite": "all"}

#: `commands` of a key that is the default of that option in every command that has one
EVERY_COMMAND = ("*",)
#: the commands that take --db, for `click_default_map` called without the group's commands
DB_COMMANDS = ("record", "ls", "show", "play", "export", "import", "diagnose", "bisect", "client", "ui", "repro",
               "drift", "prune")


class SettingsError(ValueError):
    """A pyproject.toml that cannot be used, in one line that names the file (and the keys at fault)."""


@dataclass(frozen=True)
class Key:
    """One key of the table: what its value must be, who uses it, and the environment variable above it."""

    name: str
    #: path, upstream, strings, number or choice (`_checked` says what each takes)
    kind: str
    #: who takes it, as `streamreplay config` shows it
    used_by: str
    #: the CLI commands whose option of the same name it is the default of
    commands: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    envvar: str | None = None


KEYS = (
    Key("db", "path", "--db of every command", EVERY_COMMAND, envvar="STREAMREPLAY_DB"),
    Key("upstream", "upstream", "record --upstream", ("record",)),
    Key("redact_headers", "strings", "record --redact-header", ("record",)),
    Key("redact_fields", "strings", "record --redact-field", ("record",)),
    Key("speed", "number", "play --speed", ("play",)),
    Key("match", "choice", "play --match, pytest plugin", ("play",), choices=MATCH_MODES),
    Key("ignore_fields", "strings", "play --ignore-field, pytest plugin", ("play",)),
    Key("cassette_dir", "path", "pytest plugin (--streamreplay-dir)"),
    Key("mode", "choice", "pytest plugin (--streamreplay-mode)", choices=MODES + tuple(MODE_ALIASES)),
)
_KEYS = {key.name: key for key in KEYS}

_REPLAY_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ReplayOptions)}
#: the built-in defaults, and what a default of None means where that is not obvious
DEFAULTS: dict[str, Any] = {
    "db": DEFAULT_DB, "upstream": None, "redact_headers": (), "redact_fields": (),
    "speed": _REPLAY_DEFAULTS["speed"], "match": _REPLAY_DEFAULTS["match"],
    "ignore_fields": _REPLAY_DEFAULTS["ignore_fields"], "cassette_dir": None, "mode": None,
}
DEFAULT_MEANS = {
    "upstream": "none: record needs --upstream",
    "cassette_dir": "recordings/, or <test dir>/cassettes/<module>/ for an unnamed tape",
}


def default_mode(environ: Mapping[str, str] | None = None) -> str:
    """The plugin's mode when nothing sets one: `none` (replay only) when CI is set, else `once`."""
    return "none" if (os.environ if environ is None else environ).get("CI") else "once"


@dataclass(frozen=True)
class Setting:
    """One setting in force: its value, where it came from, and who uses it."""

    name: str
    value: Any
    #: pyproject, environment or default
    source: str
    #: the pyproject.toml (relative to the working folder), the variable's name, or what the default depends on
    origin: str
    used_by: str

    def where(self) -> str:
        if self.source == "pyproject":
            return self.origin
        if self.source == "environment":
            return f"environment {self.origin}"
        return f"default ({self.origin})" if self.origin else "default"

    def shown(self) -> str:
        """The value as `config` prints it: lists joined, paths from the working folder, upstream credentials
        hidden."""
        value = self.value
        if value is None:
            return f"- ({DEFAULT_MEANS[self.name]})" if self.name in DEFAULT_MEANS else "-"
        if self.name == "upstream":
            value = _hidden_upstream(value)
        if isinstance(value, tuple):
            return ", ".join(value) or "-"
        if isinstance(value, float):
            return f"{value:g}"
        if self.source == "pyproject" and _KEYS[self.name].kind == "path":
            return _shown_path(Path(value))  # as it would be typed here (--json has it absolute)
        return str(value)


@dataclass(frozen=True)
class Settings:
    """What the table says, checked: `values` holds the keys it sets (paths absolute), all from `file`.

    `searched_from` is the folder the search started in; None when no file was looked for (--no-config)."""

    file: Path | None = None
    values: Mapping[str, Any] = field(default_factory=dict)
    searched_from: Path | None = None

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def in_force(self, environ: Mapping[str, str] | None = None) -> list[Setting]:
        """Every key's value with where it came from: the environment, else the table, else the default.
        (A flag beats them all, but only the command it is given to knows it.)"""
        environ = os.environ if environ is None else environ
        found = []
        for key in KEYS:
            if key.envvar and environ.get(key.envvar):
                found.append(Setting(key.name, environ[key.envvar], "environment", key.envvar, key.used_by))
            elif key.name in self.values:
                assert self.file is not None
                found.append(Setting(key.name, self.values[key.name], "pyproject", _shown_path(self.file),
                                     key.used_by))
            elif key.name == "mode":
                ci = "CI is set" if environ.get("CI") else "CI is not set"
                found.append(Setting(key.name, default_mode(environ), "default", ci, key.used_by))
            else:
                found.append(Setting(key.name, DEFAULTS[key.name], "default", "", key.used_by))
        return found

    def header(self) -> str:
        """Which file the settings come from, in a line."""
        if self.file is not None:
            return f"[tool.streamreplay] from {_shown_path(self.file)}"
        if self.searched_from is None:
            return "pyproject.toml not read (--no-config)"
        return f"no pyproject.toml with a [tool.streamreplay] table in {_shown_path(self.searched_from)} or above"

    def lines(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """What `streamreplay config` prints: the file, then one row per setting."""
        rows = [(s.name, s.shown(), s.where(), s.used_by) for s in self.in_force(environ)]
        return [self.header(), *table(("setting", "value", "from", "used by"), rows).splitlines()]

    def to_json(self, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """What `streamreplay config --json` prints (secrets in an upstream URL hidden, as in `lines`)."""
        settings = {}
        for s in self.in_force(environ):
            value = s.value
            if s.name == "upstream" and value is not None:
                value = _hidden_upstream(value)
            settings[s.name] = {"value": list(value) if isinstance(value, tuple) else value, "source": s.source,
                                "origin": s.origin, "used_by": s.used_by}
        return {"file": str(self.file) if self.file else None, "settings": settings}


def find_table(start: Path) -> tuple[Path, Any] | None:
    """The nearest pyproject.toml with a [tool.streamreplay] table, in `start` or above, and the table."""
    folder = Path(os.path.abspath(start))
    for candidate in (folder / "pyproject.toml", *(parent / "pyproject.toml" for parent in folder.parents)):
        if not candidate.is_file():
            continue
        try:
            data = tomllib.loads(candidate.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{_shown_path(candidate)} is not valid TOML: {exc}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"cannot read {_shown_path(candidate)}: {exc}") from exc
        tool = data.get("tool")
        if isinstance(tool, dict) and "streamreplay" in tool:
            return candidate, tool["streamreplay"]
    return None


def load_settings(start: Path) -> Settings:
    """The settings of the nearest pyproject.toml's [tool.streamreplay] table from `start` up (none found: no
    values); a SettingsError, in one line naming the file, for a table with unknown keys or wrong types."""
    found = find_table(start)
    folder = Path(os.path.abspath(start))
    if found is None:
        return Settings(searched_from=folder)
    file, table = found
    shown = _shown_path(file)
    if not isinstance(table, dict):
        raise SettingsError(f"{shown}: [tool.streamreplay] must be a table, not {_toml_type(table)}")
    values, unknown, wrong = {}, [], []
    for name, value in table.items():
        if name not in _KEYS:
            unknown.append(name)
            continue
        try:
            values[name] = _checked(_KEYS[name], value, file.parent)
        except ValueError as exc:
            wrong.append(f"{name} {exc}")
    # everything wrong in one line, so that one edit fixes it all
    problems = [f"[tool.streamreplay] has unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                f"(known: {', '.join(_KEYS)})"] if unknown else []
    problems += [f"in [tool.streamreplay], {'; '.join(wrong)}"] if wrong else []
    if problems:
        raise SettingsError(f"{shown}: {'; '.join(problems)}")
    return Settings(file=file, values=values, searched_from=folder)


def click_default_map(settings: Settings, commands: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """click's `default_map` for the table's values: {command: {option: value}}.

    `db` goes to every command with a --db option (relative to the working folder when that is shorter), the
    other keys to the commands `KEYS` names. Given a group's `commands` (name: click.Command), only options
    those commands have get a value, shaped for the option: one value for a repeatable option is a tuple
    of one, and several for an option that takes one are an error. Without them, `DB_COMMANDS` are the
    commands with --db."""
    defaults: dict[str, dict[str, Any]] = {}
    for key in KEYS:
        if key.name not in settings.values:
            continue
        names = key.commands
        if names == EVERY_COMMAND:
            names = tuple(commands) if commands is not None else DB_COMMANDS
        for command_name in names:
            value = settings.values[key.name]
            if key.kind == "path":  # from the working folder when that is shorter: what the commands print
                value = _shown_path(Path(value))
            if commands is not None:
                command = commands.get(command_name)
                option = next((p for p in getattr(command, "params", ()) if p.name == key.name), None)
                if option is None:
                    continue
                value = _shaped(value, option, key.name, command_name, settings)
            defaults.setdefault(command_name, {})[key.name] = value
    return defaults


def _shaped(value: Any, option: Any, name: str, command: str, settings: Settings) -> Any:
    repeatable = getattr(option, "multiple", False)
    if repeatable and not isinstance(value, tuple):
        return (value,)
    if not repeatable and isinstance(value, tuple):
        shown = _shown_path(settings.file) if settings.file else "pyproject.toml"
        raise SettingsError(f"{shown}: [tool.streamreplay] {name} has {len(value)} entries; "
                            f"`streamreplay {command}` takes one --{name.replace('_', '-')}")
    return value


def _checked(key: Key, value: Any, folder: Path) -> Any:
    """The value as the commands take it (paths absolute, lists as tuples), or a ValueError saying what it
    must be."""
    if key.kind == "path":
        if not isinstance(value, str) or not value:
            raise ValueError(f"must be a path (a non-empty string), not {_toml_type(value)}")
        return os.path.normpath(folder / Path(value).expanduser())
    if key.kind == "strings":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"must be an array of strings, not {_toml_type(value)}")
        return tuple(value)
    if key.kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:  # nan too
            raise ValueError(f"must be a number of at least 0, not {_toml_type(value)}")
        return float(value)
    if key.kind == "choice":
        if not isinstance(value, str) or value not in key.choices:
            raise ValueError(f"must be one of {', '.join(key.choices)}, not {_toml_type(value)}")
        return value
    if isinstance(value, str):  # upstream: one URL
        return _url(value)
    if isinstance(value, dict) and value:  # upstream: NAME = URL, one per upstream
        for name, url in value.items():
            if not isinstance(url, str) or not name or "=" in name:
                raise ValueError(f"must map names (without '=') to URLs; {name} = {_toml_type(url)}")
        return tuple(f"{name}={_url(url)}" for name, url in value.items())
    raise ValueError(f"must be a URL (a string) or a table of NAME = URL, not {_toml_type(value)}")


def _url(value: str) -> str:
    try:
        parts = urlsplit(value)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # a bracketed host that is no IPv6 address
        usable = False
    if not usable:
        raise ValueError(f"must be an http(s) URL, not {_hidden_secrets(value)!r}")
    return value


def _hidden_secrets(url: str) -> str:
    """The URL with its user info and secret-looking query values replaced, to be shown."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not parsed, so where a secret would be is unknown: none of it is shown
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = unquote(redact_query(parse_qsl(parts.query, keep_blank_values=True))) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _hidden_upstream(value: str | tuple[str, ...]) -> str | tuple[str, ...]:
    """An upstream setting to show: one URL, or a table's `NAME=URL` routes, with their secrets hidden."""
    return tuple(_hidden_route(v) for v in value) if isinstance(value, tuple) else _hidden_secrets(value)


def _hidden_route(route: str) -> str:
    """A `NAME=URL` of a table of upstreams with the URL's secrets hidden (the name is no URL part)."""
    name, _, url = route.partition("=")
    return f"{name}={_hidden_secrets(url)}"


def _toml_type(value: Any) -> str:
    """The value's TOML type and the value, for an error: `a string ('fast')`."""
    kinds = ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"), (list, "an array"),
             (dict, "a table"))
    kind = next((name for python_type, name in kinds if isinstance(value, python_type)), "a date or time")
    return kind if isinstance(value, (list, dict)) else f"{kind} ({value!r})"


def _shown_path(path: Path) -> str:
    """The path as the user would type it from the working folder: relative when that is shorter."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return relative if len(relative) < len(str(path)) else str(path)
