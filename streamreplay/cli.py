"""The `streamreplay` command: a thin click layer over the Python API."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import signal
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from streamreplay import eventloop
from streamreplay.dialects import DIALECTS
from streamreplay.proxy.recorder import RecordOptions
from streamreplay.replay.options import ReplayOptions
from streamreplay.store import DEFAULT_DB, Store, StoreError, open_store, readable

db_option = click.option(
    "--db", default=DEFAULT_DB, envvar="STREAMREPLAY_DB", show_default=True, show_envvar=True,
    help="SQLite file of recordings, or a cassette (.jsonl) for the commands that only read.",
)
#: where `record` and `play` listen unless told otherwise (from Python, port 0: a free one)
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8900
host_option = click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to bind.")
port_option = click.option("--port", default=DEFAULT_PORT, show_default=True,
                           help="Port to bind; 0 picks a free one.")


def option_from(options: type, name: str, *decls: str, unit: int = 1) -> Callable[[Any], Any]:
    """A click option for the field `name` of an options dataclass (RecordOptions, ReplayOptions), passed
    to the command as `name`: its default, help and kind come from the field, so each is written once.

    A tuple field is repeatable, a bool field that is on by default is the flag that turns it off (its
    `off_help`), `choices` and `min` in the field's metadata restrict the values. `decls` name the option
    when it is not `--the-field-name`; with `unit`, the option counts in units of that many (`--cache-mb`
    of the `cache_bytes` field) and the command gets the field's value.
    """
    found = {f.name: f for f in dataclasses.fields(options)}[name]
    meta, kind = found.metadata, _base_type(typing.get_type_hints(options)[name])
    attrs: dict[str, Any] = {"help": meta["help"]}
    default = found.default
    if kind is bool:
        attrs.update(is_flag=True, default=default, flag_value=not default, help=meta.get("off_help", meta["help"]))
        decls = decls or (f"--no-{name.replace('_', '-')}" if default else f"--{name.replace('_', '-')}",)
    elif kind is tuple:
        attrs["multiple"] = True
    elif default is dataclasses.MISSING:
        attrs["required"] = True
    else:
        attrs["default"] = default // unit if default is not None and unit != 1 else default
        attrs["show_default"] = default not in (None, "")
    if "choices" in meta:
        attrs["type"] = click.Choice(list(meta["choices"]))
    elif "min" in meta:
        bounds = {"min": meta["min"], "min_open": meta.get("min_open", False)}
        attrs["type"] = click.IntRange(**bounds) if kind is int else Number(**bounds)
    elif kind is float:
        attrs["type"] = Number()
    elif kind is int:
        attrs["type"] = int
    if unit != 1:
        attrs["callback"] = lambda ctx, param, value: value * unit
    return click.option(*(decls or (f"--{name.replace('_', '-')}",)), name, **attrs)


class Number(click.FloatRange):
    """A float option's type: a finite number in its range. NaN compares false with every bound, so a range
    alone would take `--speed nan`."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def _base_type(hint: Any) -> Any:
    """int for `int`, `int | None`; tuple for `tuple[str, ...]`; the hint itself otherwise."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kinds = [h for h in typing.get_args(hint) if h is not type(None)]
        hint = kinds[0] if len(kinds) == 1 else hint
    return typing.get_origin(hint) or hint


def store_at(path: str) -> Store:
    """The store at `path` (a DB, or a cassette file read into memory), or a one-line error that says
    what is wrong with it."""
    if not os.path.exists(path):
        raise click.ClickException(f"no recordings at {path}")
    try:
        from streamreplay.cassette import CassetteError, cassette_store, is_cassette

        if is_cassette(path):
            try:
                return cassette_store(path)
            except CassetteError as exc:
                raise click.ClickException(str(exc)) from exc
        return open_store(path)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc


def exchange_at(store: Store, ref: str) -> int:
    """The id of the exchange REF names (ID, TAPE or TAPE:SEQ), or a one-line error."""
    try:
        return store.resolve(ref)
    except KeyError as exc:
        raise click.ClickException(exc.args[0]) from exc


#: the argument of every command that takes one exchange
exchange_argument = click.argument("exchange_ref", metavar="EXCHANGE")
EXCHANGE_HELP = ("EXCHANGE is an id, a TAPE (its last exchange) or TAPE:SEQ (as `ls` prints); --db may be a "
                 "cassette file.")


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def say(line: str) -> None:
    # text from recordings may hold bytes that were not UTF-8 (as surrogates): shown escaped, never a crash
    click.echo(readable(line))
    sys.stdout.flush()


def serve_until_signal(server: Any, banner: str, precise_timers: bool = False) -> None:
    """Run an AppServer until SIGINT/SIGTERM, then stop it cleanly (the store flushed). The banner may
    name `{base_url}`, `{origin}` and `{tape}`: what the server has once it is listening."""

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await server.start()
        say(banner.format(base_url=server.base_url, origin=server.origin, tape=getattr(server, "tape", "")))
        await stop.wait()
        await server.stop()

    try:
        eventloop.run(run(), precise_timers)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # the port is taken, the address is not ours
        raise click.ClickException(f"cannot listen: {exc}") from exc


def run_cancellable(coro: Any) -> Any:
    """Run a coroutine to its end; SIGINT or SIGTERM cancels it, so its `finally` blocks close servers
    and kill child processes before the command exits (130)."""

    async def main_task() -> Any:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await coro

    try:
        return asyncio.run(main_task())
    except asyncio.CancelledError:
        say("interrupted: servers closed, checks stopped")
        sys.exit(130)


class _Commands(click.Group):
    """Every command's DB trouble as one line: a corrupt, locked or unreadable DB is never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        import sqlite3

        try:
            return super().invoke(ctx)
        except StoreError as exc:
            raise click.ClickException(str(exc)) from exc
        except sqlite3.DatabaseError as exc:
            db = ctx.params.get("db") or (ctx.invoked_subcommand and "the DB") or "the DB"
            raise click.ClickException(f"{db} is not a usable streamreplay database: {exc}") from exc


@click.group(cls=_Commands)
@click.version_option(package_name="streamreplay")
@click.option("--no-config", is_flag=True,
              help="Ignore [tool.streamreplay] in pyproject.toml: flags, environment variables and defaults only.")
@click.pass_context
def main(ctx: click.Context, no_config: bool) -> None:
    """Record streamed OpenAI-compatible answers chunk by chunk, replay them byte-exact, explain cutoffs.

    Defaults come from the [tool.streamreplay] table of the nearest pyproject.toml (`streamreplay config`)."""
    if ctx.default_map is None:  # a default_map the caller gave (an app embedding the CLI) is kept
        ctx.default_map = project_defaults(ctx, no_config)


#: where the group leaves the project's Settings for `config`
SETTINGS_META = "streamreplay.settings"


def project_defaults(ctx: click.Context, no_config: bool) -> dict[str, Any]:
    """The default_map from the nearest pyproject.toml's [tool.streamreplay] (streamreplay.settings), below
    flags and environment variables as click ranks them. A bad table stops a command that reads settings
    with its one line; one that reads none (faults, demo) runs."""
    from pathlib import Path

    from streamreplay.settings import KEYS, Settings, SettingsError, click_default_map, load_settings

    try:
        settings = Settings() if no_config else load_settings(Path.cwd())
        ctx.meta[SETTINGS_META] = settings
        return click_default_map(settings, main.commands)
    except SettingsError as exc:
        command = main.commands.get(ctx.invoked_subcommand or "")
        names = {key.name for key in KEYS}
        if command is None or command.name == "config" or any(p.name in names for p in command.params):
            raise click.ClickException(str(exc)) from exc
        return {}


WRAP_HELP = ("With `-- CMD ...`: start on a free port, run CMD with OPENAI_BASE_URL, ANTHROPIC_BASE_URL, "
             "AZURE_OPENAI_ENDPOINT and OLLAMA_HOST pointing at it, stop when CMD ends, say what happened, and exit "
             "with CMD's status.")


def command_argument(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD ...]")(f)


@main.command(epilog=WRAP_HELP, context_settings={"allow_interspersed_args": False})
@click.option("--upstream", "upstream", multiple=True, required=True,
              help=dataclasses.fields(RecordOptions)[0].metadata["help"])
@db_option
@option_from(RecordOptions, "tape")
@host_option
@port_option
@option_from(RecordOptions, "upstream_timeout")
@option_from(RecordOptions, "on_client_disconnect")
@option_from(RecordOptions, "redact_headers", "--redact-header")
@option_from(RecordOptions, "redact_fields", "--redact-field")
@option_from(RecordOptions, "max_body")
@option_from(RecordOptions, "max_db_bytes", "--max-db-size")
@option_from(RecordOptions, "note", "--note")
@command_argument
def record(host: str, port: int, upstream: tuple[str, ...], command: tuple[str, ...], **fields: Any) -> None:
    """Forward every request to UPSTREAM untouched and store each chunk with its timing.

    Exits 1 if any exchange could not be stored whole (each is named on stderr as it happens)."""
    from streamreplay.proxy import RecordingProxy

    # the per-exchange lines go through threads of their own: a log nobody reads never stops recording
    out, err = _line_log(sys.stdout), _line_log(sys.stderr)
    given = upstream[0] if len(upstream) == 1 else upstream
    port = _free_port_for(command, port)
    options = RecordOptions(upstream=given, **fields, log=None if command else out, errors=err)
    try:
        proxy = RecordingProxy(options, host=host, port=port)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if command:
        _record_command(proxy, command, err)
        return
    upstreams = ", ".join(map(str, proxy.routes))
    serve_until_signal(proxy, f"streamreplay: base_url {{base_url}} (recording {upstreams} into {options.db}, "
                              "tape {tape})")
    out.flush()
    if out.dropped:
        err(f"streamreplay: {out.dropped} log lines were not written (stdout was closed or not read)")
    if proxy.losses:
        refs = ", ".join(ref for ref, _ in proxy.losses[:20]) + (" ..." if len(proxy.losses) > 20 else "")
        err(f"streamreplay: {len(proxy.losses)} exchanges were forwarded but not stored whole: {refs}")
        err.flush()
        sys.exit(1)
    err.flush()


def _free_port_for(command: tuple[str, ...], port: int) -> int:
    """Around a command, a port of its own (any free one) unless --port was given."""
    source = click.get_current_context().get_parameter_source("port")
    return 0 if command and source is not click.core.ParameterSource.COMMANDLINE else port


def _run_command(server: Any, command: tuple[str, ...], settle: Any = None, precise_timers: bool = False) -> int:
    """Run CMD against `server` (streamreplay.wrap); its exit status, or 127 when it could not start."""
    from streamreplay.wrap import CommandNotRun, run_command

    try:
        return eventloop.run(run_command(server, command, settle), precise_timers)
    except CommandNotRun as exc:
        click.echo(f"streamreplay: {exc}", err=True)
        return 127
    except OSError as exc:
        raise click.ClickException(f"cannot listen: {exc}") from exc


def _record_command(proxy: Any, command: tuple[str, ...], err: Any) -> None:
    from streamreplay.wrap import record_summary

    code = _run_command(proxy, command, proxy.settle)
    record_summary(proxy.options.db, proxy.tape, err)
    if proxy.losses:
        err(f"streamreplay: {len(proxy.losses)} exchanges were forwarded but not stored whole")
        code = code or 1
    err.flush()
    sys.exit(code)


def _line_log(stream: Any) -> Any:
    """A LineLog on the stream's file descriptor; a stream without one (a test runner's) is written directly."""
    import io

    from streamreplay.linelog import LineLog

    try:
        return LineLog(stream.fileno())
    except (io.UnsupportedOperation, AttributeError, ValueError):
        return _DirectLog(stream)


class _DirectLog:
    dropped = 0

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def __call__(self, line: str) -> None:
        click.echo(readable(line), file=self.stream)

    def flush(self, timeout: float = 1.0) -> bool:
        return True


@main.command("ls")
@db_option
@click.option("--tape", help="Only this tape.")
@click.option("--cause", help="Only this end cause, e.g. client_left; open: no end stored yet.")
@click.option("--limit", type=int, help="At most this many exchanges.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
def ls_command(db: str, tape: str | None, cause: str | None, limit: int | None, as_json: bool) -> None:
    """List recorded exchanges."""
    from streamreplay.report import LS_COLUMNS, exchange_json, iter_ls_rows, table_lines

    store = store_at(db)
    if tape and not any(t["name"] == tape for t in store.tapes()):
        raise click.ClickException(store.unknown_tape(tape, db))
    exchanges = store.iter_exchanges(tape=tape, cause=cause, limit=limit)
    if as_json:
        for ex in exchanges:
            say(json.dumps(exchange_json(ex)))
        return
    shown = 0
    for n, line in enumerate(table_lines(LS_COLUMNS, iter_ls_rows(exchanges))):
        say(line)
        shown = n
    say(ls_summary(store, shown, db))


def ls_summary(store: Store, shown: int, db: str) -> str:
    """The line `ls` ends with: how much it showed of how much there is, and what the DB (or the cassette
    read in its place) takes on disk."""
    from streamreplay.cassette import is_cassette

    total, tapes = store.count(), len(store.tapes())
    what = plural(total, "exchange") if shown == total else f"{shown} of {plural(total, 'exchange')}"
    size, kind = (Path(db).stat().st_size, "cassette") if is_cassette(db) else (store.size_bytes(), "DB")
    # whole KB cut, not rounded: 999,999 bytes is "999 KB", never "1000 KB"
    shown_size = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size // 1000} KB" if size >= 1000 else f"{size} B"
    return f"{what}, {plural(tapes, 'tape')}, {kind} {shown_size}"


@main.command(epilog=EXCHANGE_HELP)
@exchange_argument
@db_option
@click.option("--json", "as_json", is_flag=True, help="The exchange and its chunks as JSON.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False),
              help="Write the exchange's timeline as a self-contained page to this file.")
@click.option("--fault", help="With --html: draw the replay under this fault beside the recording.")
def show(exchange_ref: str, db: str, as_json: bool, html_file: str | None, fault: str | None) -> None:
    """One exchange, chunk by chunk: offsets, gaps, bytes, the text each chunk added, and the ending."""
    from streamreplay.report import chunk_deltas, exchange_json, show_lines

    store = store_at(db)
    exchange_id = exchange_at(store, exchange_ref)
    ex = store.exchange(exchange_id)
    if html_file:
        from pathlib import Path

        from streamreplay.replay import FaultSpecError
        from streamreplay.ui import render_exchange

        try:
            Path(html_file).write_text(render_exchange(store, exchange_id, db, fault=fault), encoding="utf-8")
        except FaultSpecError as exc:
            raise click.BadParameter(str(exc), param_hint="--fault") from exc
        say(f"wrote {html_file}")
        return
    chunks = store.chunks(exchange_id)
    if as_json:
        data = exchange_json(ex)
        data["chunks"] = [
            {"index": c.index, "t_ns": c.t_ns, "bytes": len(c.data), "delta": d,
             "data": c.data.decode("utf-8", "replace")}
            for c, d in zip(chunks, chunk_deltas(chunks, ex.dialect), strict=False)
        ]
        say(json.dumps(data, indent=2))
        return
    for line in show_lines(ex, chunks):
        say(line)


@main.command(epilog=WRAP_HELP, context_settings={"allow_interspersed_args": False})
@db_option
@option_from(ReplayOptions, "tape")
@option_from(ReplayOptions, "speed")
@option_from(ReplayOptions, "faults", "--fault")
@option_from(ReplayOptions, "match")
@option_from(ReplayOptions, "ignore_fields", "--ignore-field")
@option_from(ReplayOptions, "repeat")
@option_from(ReplayOptions, "upstream")
@host_option
@port_option
@option_from(ReplayOptions, "prefix")
@option_from(ReplayOptions, "keep_requests")
@option_from(ReplayOptions, "cache_bytes", "--cache-mb", unit=2**20)
@command_argument
def play(db: str, host: str, port: int, command: tuple[str, ...], **fields: Any) -> None:
    """Serve recordings offline: same bytes, same chunk boundaries, same (or scaled) timing, same ending."""
    from streamreplay.replay import FaultSpecError, ReplayServer

    options = ReplayOptions(db, **fields, log=None if command else say)
    port = _free_port_for(command, port)
    try:
        server = ReplayServer(options, host=host, port=port)
    except FaultSpecError as exc:
        raise click.BadParameter(str(exc), param_hint="--fault") from exc
    except (FileNotFoundError, LookupError, ValueError, StoreError) as exc:
        raise click.ClickException(str(exc)) from exc
    if command:
        from streamreplay.wrap import play_summary

        code = _run_command(server, command, precise_timers=True)
        play_summary(server, db, lambda line: click.echo(line, err=True))
        sys.exit(code)
    count = server.index.count
    extra = f", faults {' + '.join(f.spec() for f in server.faults)}" if server.faults else ""
    tape = f", tape {options.tape}" if options.tape else ""
    serve_until_signal(server, f"streamreplay: base_url {{base_url}} (playing {plural(count, 'exchange')} from {db}"
                               f"{tape}, speed {options.speed:g}{extra})", precise_timers=True)


@main.command("export")
@click.argument("tape")
@db_option
@click.option("-o", "--output", help="Cassette file to write (default: recordings/TAPE.jsonl).")
def export_command(tape: str, db: str, output: str | None) -> None:
    """Write TAPE as a JSONL cassette: text, diff-friendly, secrets already absent."""
    from streamreplay.cassette import CassetteError, export_tape

    try:
        path = output or f"recordings/{tape}.jsonl"
        count = export_tape(db, tape, path)
    except (CassetteError, LookupError) as exc:
        raise click.ClickException(str(exc)) from exc
    say(f"exported {plural(count, 'exchange')} of tape {tape} to {path}")


@main.command("import")
@click.argument("cassette", type=click.Path(exists=True, dir_okay=False))
@db_option
@click.option("--tape", help="Tape name in the DB (default: the cassette's).")
def import_command(cassette: str, db: str, tape: str | None) -> None:
    """Load a JSONL cassette into the DB."""
    from streamreplay.cassette import CassetteError, import_cassette

    try:
        name, count = import_cassette(cassette, db, tape)
    except CassetteError as exc:
        raise click.ClickException(str(exc)) from exc
    say(f"imported {plural(count, 'exchange')} into {db} as tape {name}")


@main.command("diagnose", epilog=EXCHANGE_HELP)
@exchange_argument
@db_option
@click.option("--json", "as_json", is_flag=True, help="The diagnosis as JSON.")
def diagnose_command(exchange_ref: str, db: str, as_json: bool) -> None:
    """Say who ended an exchange and when, which known cause it matches, and how to replay and fix it."""
    from streamreplay.diagnose import diagnose

    store = store_at(db)
    found = diagnose(store, exchange_at(store, exchange_ref), db)
    if as_json:
        say(json.dumps(found.to_json(), indent=2))
        return
    for line in found.lines():
        say(line)


@main.command("bisect", epilog=EXCHANGE_HELP)
@exchange_argument
@db_option
@click.option("--by", "axis", type=click.Choice(["chunk", "timing", "client"]), default="chunk", show_default=True,
              help="chunk: where a cut flips it; timing: how long a stall it takes; client: which consumer matches.")
@click.option("--check", help="Command that judges a run: exit 0 good, 125 skip, other bad (as git bisect run).")
@click.option("--oracle", type=click.Choice(["exit", "client"]), default="exit", show_default=True,
              help="exit: the check's exit status; client: good if the client read to the end and did not retry.")
@click.option("--fault", "kind", type=click.Choice(["cut", "close", "reset", "error-event"]), default="cut",
              show_default=True, help="The kind of cut for --by chunk.")
@click.option("--at-chunk", type=int, help="Where to stall for --by timing (default: before the largest gap).")
@click.option("--over", type=click.Choice(["stall", "speed"]), default="stall", show_default=True,
              help="--by timing searches a stall's length, or (speed) how much slower the whole stream may run.")
@click.option("--max", "maximum", type=Number(min=0, min_open=True), show_default="60 s; with --over speed 20",
              help="Longest stall to try (s); with --over speed, the largest slowdown factor.")
@click.option("--resolution", default=0.1, show_default=True, type=Number(min=0, min_open=True),
              help="Stop when the threshold is this narrow (s).")
@click.option("--speed", default=0.0, show_default=True, type=Number(min=0),
              help="Replay speed during the search (0: no waits).")
@click.option("--check-timeout", type=Number(min=0, min_open=True),
              help="Kill a check that runs longer than this (s): bad.")
def bisect_command(exchange_ref: str, db: str, axis: str, check: str | None, oracle: str, kind: str,
                   at_chunk: int | None, over: str, maximum: float | None, resolution: float, speed: float,
                   check_timeout: float | None) -> None:
    """Find the chunk, the timing threshold or the client behaviour at which an app flips from good to bad."""
    from streamreplay.bisect import Bisector, ClientOracle, CommandOracle

    store = store_at(db)
    exchange_id = exchange_at(store, exchange_ref)
    if axis == "client":
        from streamreplay.clientcheck import main as by_client

        by_client(store, exchange_id, say)
        return
    if not check:
        raise click.UsageError("--by chunk and --by timing need --check COMMAND")
    judge = (ClientOracle if oracle == "client" else CommandOracle)(check, check_timeout)
    try:
        bisector = Bisector(store, exchange_id, judge, speed=speed, progress=say, db_label=db)
    except KeyError as exc:
        raise click.ClickException(exc.args[0]) from exc
    from streamreplay.replay import FaultSpecError

    limit = {} if maximum is None else {"maximum": maximum}  # else each search's own default
    try:
        if axis == "chunk":
            result = run_cancellable(bisector.by_chunk(kind))
        elif over == "speed":
            result = run_cancellable(bisector.by_slowdown(resolution=resolution, **limit))
        else:
            result = run_cancellable(bisector.by_timing(at_chunk, resolution=resolution, **limit))
    except FaultSpecError as exc:  # --max or --at-chunk past what a fault takes
        raise click.UsageError(str(exc)) from exc
    say(f"{result.runs} runs: {result.answer}")
    if result.replay:
        say(f"replay the boundary: {result.replay}")


@main.command("client", epilog=EXCHANGE_HELP)
@exchange_argument
@db_option
@click.option("--client", "client", default="openai async", show_default=True,
              help="A reference client of the exchange's dialect: openai sync, openai async, autogen-agentchat or "
                   "AG2 for chat (`streamreplay clients` lists them all).")
@click.option("--behaviour", default="reads-to-end", show_default=True,
              help="reads-to-end, stop:K, timeout:S, slow:S or stream-off (the other clients read to the end).")
@click.option("--fault", help="A fault spec for the replay, e.g. cut:chunk=3.")
@click.option("--speed", default=1.0, show_default=True, type=Number(min=0), help="Replay speed.")
def client_command(exchange_ref: str, db: str, client: str, behaviour: str, fault: str | None, speed: float) -> None:
    """Run one reference consumer against a replay of an exchange and print what it got."""
    from streamreplay.clientcheck import Behaviour, run_one
    from streamreplay.clientid import Client
    from streamreplay.clients import clients_of
    from streamreplay.replay import FaultSpecError, parse_faults

    store = store_at(db)
    exchange_id = exchange_at(store, exchange_ref)
    try:
        Client.parse(client, among=clients_of(store.exchange(exchange_id).dialect))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--client") from exc
    try:
        chosen = Behaviour.parse(behaviour)
        parse_faults(fault)
    except (ValueError, FaultSpecError) as exc:
        raise click.BadParameter(str(exc)) from exc
    run_one(store, exchange_id, client, chosen, fault, speed, say)


@main.command()
@db_option
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to bind.")
@click.option("--port", default=8901, show_default=True, help="Port to bind; 0 picks a free one.")
def ui(db: str, host: str, port: int) -> None:
    """A local page listing tapes and exchanges, each with its timeline, diagnosis and replay command."""
    from streamreplay.ui import UIServer

    server = UIServer(db, host=host, port=port)
    serve_until_signal(server, f"streamreplay: timeline pages on {{origin}}/ (reading {db})")


@main.command(epilog=EXCHANGE_HELP)
@exchange_argument
@db_option
@click.option("-o", "--output", help="Folder to write (default: repro_ID/).")
def repro(exchange_ref: str, db: str, output: str | None) -> None:
    """Write a folder with the exchange's cassette and a short repro.py that replays it into the same client."""
    from pathlib import Path

    from streamreplay.repro import write_repro

    store = store_at(db)
    exchange_id = exchange_at(store, exchange_ref)
    try:
        info = write_repro(store, exchange_id, Path(output or f"repro_{exchange_id}"))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in info.lines():
        say(line)


@main.command("faults")
def faults_command() -> None:
    """The faults `play --fault`, the X-Streamreplay-Fault header and /fault/<spec>/ take."""
    from streamreplay.replay import FAULTS

    width = max(len(cls.usage) for cls in FAULTS.values())
    for cls in FAULTS.values():
        say(f"{cls.usage.ljust(width)}  {cls.help}")


@main.command()
@click.option("--cassette", type=click.Path(exists=True, dir_okay=False),
              help="The recording to replay (default: the bundled openai-happy-path).")
@click.option("--client", "clients", multiple=True,
              help="Only these clients (repeatable); default: every reference client of the tape's dialect.")
@click.option("--dialect", type=click.Choice(list(DIALECTS)), default="chat", show_default=True,
              help="Without a cassette: play this dialect's bundled tape.")
@click.option("--timeout", default=1.0, show_default=True, type=Number(min=0, min_open=True),
              help="Each client's timeout, in seconds.")
@click.option("--markdown", is_flag=True, help="A Markdown table.")
@click.option("--guard", "guarded", is_flag=True,
              help="With the stream guard on in every client (streamreplay.guard): a cutoff raises TruncatedStream.")
def matrix(cassette: str | None, clients: tuple[str, ...], dialect: str, timeout: float, markdown: bool,
           guarded: bool) -> None:
    """Replay each ending and fault into each reference client and tabulate what the app got."""
    from streamreplay.clientid import Client
    from streamreplay.clients import versions
    from streamreplay.demo import find_recordings
    from streamreplay.dialects import dialect_named
    from streamreplay.matrix import DEFAULT_TAPES, clients_of
    from streamreplay.matrix import main as run_matrix
    from streamreplay.replay.source import CassetteSource

    path = cassette or str(find_recordings() / f"{DEFAULT_TAPES[dialect]}.jsonl")
    speaks = CassetteSource(path).exchanges()[0].dialect if cassette else dialect_named(dialect)
    for name in clients:
        try:
            Client.parse(name, among=clients_of(speaks))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--client") from exc
    say("clients: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    run_matrix(path, list(clients) or None, timeout, markdown, say, guarded=guarded)


@main.command("tapes")
@click.option("--copy", "destination", metavar="DIR",
              help="Copy them into DIR (e.g. recordings), leaving files already there as they are.")
def tapes_command(destination: str | None) -> None:
    """The tapes bundled with streamreplay (real recordings, one per dialect): their names and notes."""
    import json as json_module

    from streamreplay.bundled import bundled_tapes, copy_bundled

    if destination:
        written, kept = copy_bundled(destination), len(bundled_tapes())
        there = f" ({kept - len(written)} there already)" if len(written) < kept else ""
        say(f"copied {plural(len(written), 'bundled tape')} into {destination}{there}")
        return
    for tape in bundled_tapes():
        with tape.open(encoding="utf-8") as f:
            note = json_module.loads(f.readline()).get("source", "")
        say(f"{tape.stem:<22} {note}")


@main.command("clients")
def clients_command() -> None:
    """The reference clients, by dialect: what `matrix`, `client`, `bisect --by client` and repro.py run."""
    from streamreplay.clients import DRIVERS, clients_of
    from streamreplay.report import table

    rows = [(name, c.value, c.label, c.info.script) for name in sorted(DIALECTS, key=lambda n: n != "chat")
            for c in clients_of(name) if c in DRIVERS]
    say(table(("dialect", "id", "label", "runs"), rows))


@main.command()
@click.option("--dir", "directory", help="A folder holding agent-happy-path.jsonl (default: the bundled tapes).")
def demo(directory: str | None) -> None:
    """Offline, no key: a real AutoGen agent replayed from a bundled recording, then under cutoff faults."""
    from streamreplay.demo import main as run_demo

    try:
        run_demo(directory, say)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("config")
@click.option("--json", "as_json", is_flag=True, help="The settings as JSON: each one's value, source and origin.")
@click.pass_context
def config_command(ctx: click.Context, as_json: bool) -> None:
    """The settings in force and where each came from: an environment variable, the [tool.streamreplay] table
    of the nearest pyproject.toml, or the built-in default. A flag given to a command beats them all."""
    from pathlib import Path

    from streamreplay.settings import SettingsError, load_settings

    settings = ctx.meta.get(SETTINGS_META)
    if settings is None:  # run on its own, not through the group
        try:
            settings = load_settings(Path.cwd())
        except SettingsError as exc:
            raise click.ClickException(str(exc)) from exc
    if as_json:
        say(json.dumps(settings.to_json(os.environ), indent=2))
        return
    for line in settings.lines(os.environ):
        say(line)


class _CannotCheck(click.ClickException):
    """drift could not run: exit 2, so that a scheduled job tells it from drift (1)."""

    exit_code = 2


def _header_pair(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, sep, rest = value.partition(":")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            raise click.BadParameter("give a header as 'Name: value'", ctx, param)  # not echoed: it may be a secret
        pairs.append((name.strip(), rest.strip()))
    return pairs


def _setting(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for value in values:
        path, sep, raw = value.partition("=")
        if not sep or not path or any(not part for part in path.split(".")):
            raise click.BadParameter(f"give a field as FIELD=VALUE (a dotted path), got {value!r}", ctx, param)
        try:
            settings[path] = json.loads(raw)
        except ValueError:
            settings[path] = raw  # not JSON: a string (--set model=gpt-4.1-mini)
    return settings


@main.command("drift")
@click.argument("tape")
@db_option
@click.option("--upstream", required=True, help="The live API's base URL, e.g. https://api.openai.com/v1.")
@click.option("--header", "headers", multiple=True, callback=_header_pair,
              help="'Name: value' sent with every request (repeatable), e.g. the Authorization the recording "
                   "redacted; never shown.")
@click.option("--tolerance", default=3.0, show_default=True, type=Number(min=1),
              help="How many times slower or faster the first byte and the typical gap may get before they count "
                   "as drift (and at least 100 ms apart for the first byte, 20 ms for the gap).")
@click.option("--count-tolerance", default=2.0, show_default=True, type=Number(min=1),
              help="How many times more or fewer chunks (at least 4 apart), or larger or smaller chunks (at least "
                   "64 bytes apart), count as drift.")
@click.option("--set", "settings", multiple=True, callback=_setting, metavar="FIELD=VALUE",
              help="Set a body field of every request (repeatable; VALUE is JSON, else a string), e.g. "
                   "--set max_tokens=8 or --set model=NEW, to see what that change does to the answers' shape.")
@click.option("--timeout", default=120.0, show_default=True, type=Number(min=0, min_open=True),
              help="Seconds of upstream silence before a live answer counts as upstream_timeout.")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON: both shapes and the differences.")
def drift_command(tape: str, db: str, upstream: str, headers: list[tuple[str, str]], tolerance: float,
                  count_tolerance: float, settings: dict[str, Any], timeout: float, as_json: bool) -> None:
    """Resend each request of TAPE to the live upstream and say what changed in the shape of the answers.

    Event types and their order, JSON fields added or gone, stop reasons, how the body ended, chunk count
    and sizes, time to first byte and the typical gap; never the text. TAPE is a tape in --db, or a
    cassette file. Exits 0 when nothing drifted, 1 when something did, 2 when it could not check."""
    from streamreplay.cassette import is_cassette
    from streamreplay.drift import DriftError, Tolerance, drift

    source, name = (tape, None) if is_cassette(tape) else (db, tape)
    if not os.path.exists(source):
        raise _CannotCheck(f"no recordings at {source}")
    try:
        report = run_cancellable(drift(
            source, name, upstream, headers, Tolerance(timing=tolerance, count=count_tolerance), settings, timeout,
            on_start=None if as_json else lambda r: [say(line) for line in r.head()],
            on_exchange=None if as_json else lambda e: [say(line) for line in e.lines()],
        ))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    except (DriftError, StoreError) as exc:
        raise _CannotCheck(str(exc)) from exc
    say(json.dumps(report.to_json(), indent=2) if as_json else report.tail())
    if report.drifted:
        sys.exit(1)


@main.command("prune")
@db_option
@click.option("--older-than", "older_than", metavar="AGE",
              help="Remove the exchanges recorded longer ago than AGE: 7d, 12h, 30m, 45s, or seconds.")
@click.option("--tape", help="Only this tape. Alone: the whole tape, and the tape itself once it is empty.")
@click.option("--max-size", "max_size", metavar="SIZE",
              help="Remove the oldest exchanges until the DB is under SIZE: 50MB, 500KB, 2GB, 64MiB, or bytes.")
@click.option("--keep-cutoffs", is_flag=True, help="Keep every exchange whose end cause is not complete.")
@click.option("--dry-run", is_flag=True, help="Say what would go (per tape: exchanges and bytes); change nothing.")
def prune_command(db: str, older_than: str | None, tape: str | None, max_size: str | None, keep_cutoffs: bool,
                  dry_run: bool) -> None:
    """Remove recorded exchanges with their chunks, by age, by tape or down to a size, then compact the DB.

    An exchange goes when --older-than or --max-size chooses it; --tape and --keep-cutoffs narrow what they may
    choose. Safe while `record` writes to the same DB: an exchange still being recorded always stays."""
    from streamreplay.cassette import is_cassette
    from streamreplay.prune import PruneError, parse_age, parse_size, prune

    # each error is one line naming what it is about, not click's usage block
    try:
        age = parse_age(older_than) if older_than is not None else None
    except PruneError as exc:
        raise click.ClickException(f"--older-than: {exc}") from exc
    try:
        size = parse_size(max_size) if max_size is not None else None
    except PruneError as exc:
        raise click.ClickException(f"--max-size: {exc}") from exc
    if os.path.isfile(db) and is_cassette(db):
        raise click.ClickException(f"{db} is a cassette: prune works on a DB (import it, or re-export the tape)")
    try:
        report = prune(db, older_than=age, tape=tape, max_size=size, keep_cutoffs=keep_cutoffs, dry_run=dry_run)
    except PruneError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in report.lines():
        say(line)


if __name__ == "__main__":
    main()
