"""`streamreplay ui`: a local web page over a recordings DB: tapes, exchanges, timelines, comparisons.

Plain server-rendered HTML (timeline.py draws it); no scripts, nothing fetched from elsewhere.
The DB is opened afresh for every request, on a worker thread, so the page shows what a running
recording has committed so far (WAL readers never block the writer) without stalling the loop.
"""

from __future__ import annotations

import asyncio
import html
import shlex
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlencode

from aiohttp import web

from streamreplay.diagnose import diagnose
from streamreplay.replay.faults import FaultSpecError, apply_faults, parse_faults
from streamreplay.replay.schedule import recorded_schedule
from streamreplay.serving import AppServer
from streamreplay.store import Exchange, Store, StoreError, open_store
from streamreplay.timeline import badge, exchange_page, fmt_ns, html_page, schedule_series

#: seconds between reloads of a page that shows an exchange still being recorded
REFRESH_S = 2
LIST_LIMIT = 500


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _short(text: str | None, limit: int = 70) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _end(ex: Exchange) -> str:
    at = f"@{ex.client_left_at_chunk}" if ex.end_cause == "client_left" and ex.client_left_at_chunk is not None else ""
    return badge(ex.end_cause) + _esc(at)


def index_html(store: Store, *, cause: str | None = None, tape: str | None = None, label: str = "") -> str:
    """Tapes, end-cause filters and the exchanges (newest first), each linking to its timeline."""
    every = store.exchanges(tape=tape)
    counts = Counter(ex.end_cause or "open" for ex in every)
    shown = [ex for ex in every if cause is None or (ex.end_cause or "open") == cause][::-1][:LIST_LIMIT]

    def link(**query: str | None) -> str:
        q = {k: v for k, v in {"tape": tape, "cause": cause, **query}.items() if v}
        return "/" + (f"?{urlencode(q)}" if q else "")

    tapes = "".join(
        f'<tr><td class="d"><a href="{_esc(link(tape=t["name"], cause=None))}">{_esc(t["name"])}</a></td>'
        f'<td>{_esc(t["created_at"] or "")}</td><td class="d">{_esc(_short(t["source"], 90))}</td>'
        f'<td>{t["exchanges"]}</td></tr>'
        for t in store.tapes()
    )
    filters = [f'<a href="{_esc(link(cause=None))}">all ({sum(counts.values())})</a>']
    filters += [f'<a href="{_esc(link(cause=c))}">{badge(c)} {n}</a>' for c, n in sorted(counts.items())]
    rows = "".join(
        f'<tr><td><a href="/exchange/{ex.id}">{ex.id}</a></td><td class="d">{_esc(ex.tape)}</td><td>{ex.seq}</td>'
        f'<td>{_esc((ex.started_at or "")[11:19])}</td><td class="d">{_esc(ex.method)} {_esc(ex.path)}</td>'
        f'<td class="d">{_esc(ex.model or "-")}</td><td>{ex.chunk_count}</td>'
        f'<td>{_esc(fmt_ns(ex.ttfb_ns) if ex.ttfb_ns is not None else "-")}</td>'
        f'<td>{_esc(fmt_ns(ex.duration_ns) if ex.duration_ns is not None else "-")}</td>'
        f'<td class="d">{_end(ex)}</td><td class="d">{_esc(_short(ex.text))}</td></tr>'
        for ex in shown
    )
    scope = " · ".join(_esc(s) for s in (f"tape {tape}" if tape else "", f"cause {cause}" if cause else "") if s)
    body = (
        f'<h1>streamreplay</h1><div class="meta">{_esc(label)}{" · " + scope if scope else ""} · '
        f'<a href="/">everything</a></div>'
        '<h2>tapes</h2><table class="tapes"><thead><tr><th>tape</th><th>created</th><th>source</th>'
        f"<th>exchanges</th></tr></thead><tbody>{tapes}</tbody></table>"
        f'<h2>exchanges</h2><nav class="causes">end cause: {" · ".join(filters)}</nav>'
        '<nav><form action="/compare">compare exchange <input name="a" size="4"> with <input name="b" size="4"> '
        "<button>on one time axis</button></form></nav>"
        '<table class="exchanges"><thead><tr><th>id</th><th>tape</th><th>#</th><th>started</th><th>request</th>'
        "<th>model</th><th>chunks</th><th>first byte</th><th>took</th><th>end</th><th>text</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        + ("" if shown else "<p>no exchanges here yet</p>")
    )
    still_open = any(ex.end_cause is None for ex in every)
    return html_page("streamreplay", body, refresh_s=REFRESH_S if still_open else None)


def _nav(store: Store, ex: Exchange, fault: str | None) -> str:
    tape = store.exchanges(tape=ex.tape)
    ids = [e.id for e in tape]
    pos = ids.index(ex.id)
    near = [i for i in (ids[pos - 1] if pos else None, ids[pos + 1] if pos + 1 < len(ids) else None) if i]
    compare = " ".join(f'<a href="/compare/{ex.id}/{i}">#{i}</a>' for i in near)
    n = max(ex.chunk_count, 1)
    examples = [f"cut:chunk={n // 2}", f"stall:chunk={n // 2},seconds=1", f"reset:chunk={n // 2}", "drop-done"]
    links = " ".join(f'<a href="/exchange/{ex.id}?fault={quote(s)}">{_esc(s)}</a>' for s in examples)
    return (
        f'<nav><a href="/">all exchanges</a> · <a href="/?tape={quote(ex.tape)}">tape {_esc(ex.tape)}</a>'
        + (f" · compare with {compare}" if compare else "")
        + f'</nav><nav><form action="/exchange/{ex.id}">see it replayed under a fault: '
        f'<input name="fault" size="34" value="{_esc(fault or "")}" placeholder="{_esc(examples[1])}"> '
        f"<button>draw</button></form> e.g. {links}</nav>"
    )


def render_exchange(store: Store, exchange_id: int, db_label: str, *, fault: str | None = None,
                    links: bool = False) -> str:
    """One exchange's page: timeline, diagnosis, the command that replays it; with `fault`, the replay's
    plan under that fault as lane B. `links=False` leaves out the UI's navigation (for `show --html`).

    Raises KeyError for an unknown id and FaultSpecError for a bad fault spec.
    """
    ex = store.exchange(exchange_id)
    chunks = store.chunks(exchange_id)
    faults = parse_faults(fault)
    lines: list[str] = []
    replay = f"streamreplay play --db {shlex.quote(db_label)} --tape {shlex.quote(ex.tape)}"
    if ex.end_cause is not None:
        try:
            found = diagnose(store, exchange_id, db_label)
            lines, replay = found.lines(), found.replay
        except Exception as exc:  # a page without a diagnosis beats no page: the timeline still shows it
            lines = [f"exchange {ex.id}: diagnose failed ({type(exc).__name__}: {exc})"]
    compare = None
    if faults:
        # the replay's plan at speed 1: what `play --fault` would write and when, without running it
        compare = schedule_series(apply_faults(recorded_schedule(ex, chunks), faults),
                                  title=f"replay · {fault}")
        replay += f" --fault {shlex.quote(fault or '')}"
    return exchange_page(ex, chunks, lines or None, compare, replay_command=replay,
                         nav_html=_nav(store, ex, fault) if links else "",
                         refresh_s=REFRESH_S if ex.end_cause is None else None)


def render_compare(store: Store, a: int, b: int, *, links: bool = False) -> str:
    """Exchanges `a` and `b` as lanes A and B on one time axis, with where they part."""
    ex_a, ex_b = store.exchange(a), store.exchange(b)
    nav = (f'<nav><a href="/">all exchanges</a> · A is <a href="/exchange/{a}">exchange {a}</a>, '
           f'B is <a href="/exchange/{b}">exchange {b}</a> · <a href="/compare/{b}/{a}">swap</a></nav>')
    still_open = ex_a.end_cause is None or ex_b.end_cause is None
    return exchange_page(ex_a, store.chunks(a), None, (ex_b, store.chunks(b)), nav_html=nav if links else "",
                         refresh_s=REFRESH_S if still_open else None)


class UIServer(AppServer):
    """The local UI over one DB: `/`, `/?cause=...&tape=...`, `/exchange/{id}[?fault=SPEC]`, `/compare/{a}/{b}`."""

    def __init__(self, db: str | Path, host: str = "127.0.0.1", port: int = 0, db_label: str | None = None) -> None:
        super().__init__(host, port)
        self.db = Path(db)
        self.db_label = db_label or str(db)

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_get(r"/exchange/{id:\d+}", self.exchange)
        app.router.add_get(r"/compare/{a:\d+}/{b:\d+}", self.compare)
        app.router.add_get("/compare", self.compare_form)
        return app

    @contextmanager
    def _store(self) -> Iterator[Store]:
        store = open_store(self.db)
        try:
            yield store
        finally:
            store.db.close()

    async def _page(self, render: Callable[[Store], str]) -> web.Response:
        def run() -> tuple[int, str]:
            if not self.db.exists():  # do not create it: a recording started later will
                return 200, html_page("streamreplay", f"<h1>streamreplay</h1><p>no recordings yet in "
                                                      f"{_esc(self.db_label)}</p>", refresh_s=REFRESH_S)
            try:
                with self._store() as store:
                    return 200, render(store)
            except KeyError as exc:
                return 404, html_page("not found", f'<h1>not found</h1><p>{_esc(exc.args[0])}</p><a href="/">back</a>')
            except FaultSpecError as exc:
                return 400, html_page("bad fault", f'<h1>bad fault spec</h1><p>{_esc(exc)}</p><a href="/">back</a>')
            except StoreError as exc:
                return 500, html_page("unusable DB", f"<h1>cannot read the DB</h1><p>{_esc(exc)}</p>")

        status, text = await asyncio.to_thread(run)
        return web.Response(status=status, text=text, content_type="text/html", charset="utf-8")

    async def index(self, request: web.Request) -> web.Response:
        cause, tape = request.query.get("cause") or None, request.query.get("tape") or None
        return await self._page(lambda store: index_html(store, cause=cause, tape=tape, label=self.db_label))

    async def exchange(self, request: web.Request) -> web.Response:
        eid, fault = int(request.match_info["id"]), request.query.get("fault") or None
        return await self._page(lambda store: render_exchange(store, eid, self.db_label, fault=fault, links=True))

    async def compare(self, request: web.Request) -> web.Response:
        a, b = int(request.match_info["a"]), int(request.match_info["b"])
        return await self._page(lambda store: render_compare(store, a, b, links=True))

    async def compare_form(self, request: web.Request) -> web.Response:
        a, b = request.query.get("a", "").strip(), request.query.get("b", "").strip()
        if not (a.isdigit() and b.isdigit()):
            return web.Response(status=400, text=html_page("compare", "<p>give two exchange ids</p>"),
                                content_type="text/html")
        raise web.HTTPFound(f"/compare/{a}/{b}")
