"""`streamreplay ui`: a local web page over a recordings DB: tapes, exchanges, timelines, comparisons.

Plain server-rendered HTML (the timeline package draws it); no scripts, nothing fetched from elsewhere.
The DB is opened afresh for every request, on a worker thread, so the page shows what a running
recording has committed so far (WAL readers never block the writer) without stalling the loop.

Recorded prompts are private: the ui answers only requests whose Host is its own address (a page on
another site that rebinds its DNS name to 127.0.0.1 sends its own name as Host, and is refused). And a
page's size does not grow with the exchange's: an exchange over FULL_CHUNKS chunks or FULL_BYTES bytes
is drawn as an overview, its chunk table a page at a time, its bytes a streamed download.
"""

from __future__ import annotations

import asyncio
import html
import shlex
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from streamreplay.diagnose import TapeFacts, diagnose, diagnose_exchange
from streamreplay.endcause import EndCause
from streamreplay.replay.faults import FaultSpecError, apply_faults, parse_faults
from streamreplay.replay.schedule import recorded_schedule
from streamreplay.serving import AppServer
from streamreplay.store import Chunk, Exchange, Store, StoreError, open_store
from streamreplay.timeline import (
    badge,
    chunk_page,
    exchange_page,
    fmt_ns,
    html_page,
    overview_series,
    schedule_series,
)
from streamreplay.wire import openai_error

#: seconds between reloads of a page that shows an exchange still being recorded
REFRESH_S = 2
LIST_LIMIT = 500
#: an exchange up to these sizes is drawn whole: a bar and a table row per chunk. A bigger one is drawn
#: as an overview (a bar per time slice, no chunk data read) with one page of its chunk table; the rest
#: is reached page by page (/exchange/ID/chunks?from=N) or as a streamed download (/exchange/ID/raw).
#: So neither the page (well under 2 MB) nor the ui's memory grows with the exchange's bytes.
FULL_CHUNKS = 1000
FULL_BYTES = 512 * 1024
#: one page of a chunk table: at most this many rows, holding at most this many bytes of chunk data
PAGE_ROWS = 200
PAGE_BYTES = 256 * 1024


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _short(text: str | None, limit: int = 70) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _end(ex: Exchange) -> str:
    left = ex.end_cause == EndCause.CLIENT_LEFT and ex.client_left_at_chunk is not None
    at = f"@{ex.client_left_at_chunk}" if left else ""
    return badge(ex.end_cause) + _esc(at)


def _page_of(store: Store, tape: str | None, cause: str | None, page: int) -> list[Exchange]:
    """One page of the list, newest first, read from the DB: a page costs the same in a DB of any size."""
    where, params = store.filter_sql(tape, cause)
    return list(store.query_exchanges(
        f"select * from exchanges{where} order by id desc limit {LIST_LIMIT} offset {page * LIST_LIMIT}", params))


def index_html(store: Store, *, cause: str | None = None, tape: str | None = None, label: str = "",
               page: int = 0) -> str:
    """Tapes, end-cause filters and the exchanges (newest first, LIST_LIMIT a page), each linking to its
    timeline."""
    where, params = store.filter_sql(tape)
    counted = store.db.execute(f"select coalesce(end_cause, 'open'), count(*) from exchanges{where} group by 1", params)
    counts = Counter(dict(counted.fetchall()))
    shown = _page_of(store, tape, cause, page)
    total = counts[cause] if cause else sum(counts.values())

    def link(**query: str | None) -> str:
        q = {k: v for k, v in {"tape": tape, "cause": cause, **query}.items() if v}
        return "/" + (f"?{urlencode(q)}" if q else "")

    pages = [f'<a href="{_esc(link(page=str(page - 1) if page > 1 else None))}">newer</a>'] if page else []
    if (page + 1) * LIST_LIMIT < total:
        pages.append(f'<a href="{_esc(link(page=str(page + 1)))}">older</a>')
    paging = (f"<nav>exchanges {page * LIST_LIMIT + 1}-{page * LIST_LIMIT + len(shown)} of {total} · "
              + " · ".join(pages) + "</nav>") if pages else ""

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
        f"<tbody>{rows}</tbody></table>{paging}"
        + ("" if shown else "<p>no exchanges here yet</p>")
    )
    still_open = counts["open"] > 0
    return html_page("streamreplay", body, refresh_s=REFRESH_S if still_open else None)


def _nav(store: Store, ex: Exchange, fault: str | None) -> str:
    # the exchanges just before and after it in its tape, asked of the DB, not read whole
    near = [row[0] for row in (
        store.db.execute("select max(id) from exchanges where tape = ? and id < ?", [ex.tape, ex.id]).fetchone(),
        store.db.execute("select min(id) from exchanges where tape = ? and id > ?", [ex.tape, ex.id]).fetchone(),
    ) if row[0] is not None]
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


def chunk_sizes(store: Store, exchange_id: int) -> tuple[int, int, int]:
    """(chunks, bytes, last t_ns) of an exchange; SQLite's length() of a blob does not read the blob."""
    count, nbytes, span = store.db.conn.execute(
        "select count(*), coalesce(sum(length(data)), 0), coalesce(max(t_ns), 0) from chunks where exchange_id = ?",
        [exchange_id]).fetchone()
    return count, nbytes, span


def is_big(store: Store, exchange_id: int) -> bool:
    count, nbytes, _ = chunk_sizes(store, exchange_id)
    return count > FULL_CHUNKS or nbytes > FULL_BYTES


def chunk_window(store: Store, exchange_id: int, start: int) -> tuple[list[Chunk], list[int], int | None, int]:
    """One page of chunks from index `start`: (chunks, their recorded sizes, the next page's start or None,
    the t_ns of the chunk before). At most PAGE_ROWS rows and PAGE_BYTES bytes of data are read (always one
    row at least, cut to PAGE_BYTES if it is bigger)."""
    conn = store.db.conn
    before = conn.execute("select t_ns from chunks where exchange_id = ? and idx < ? order by idx desc limit 1",
                          [exchange_id, start]).fetchone()
    rows = conn.execute("select idx, t_ns, length(data), substr(data, 1, ?) from chunks "
                        "where exchange_id = ? and idx >= ? order by idx", [PAGE_BYTES, exchange_id, start])
    chunks: list[Chunk] = []
    sizes: list[int] = []
    room = PAGE_BYTES
    for idx, t_ns, size, data in rows:
        if len(chunks) >= PAGE_ROWS or (chunks and room <= 0):
            return chunks, sizes, idx, before[0] if before else 0
        data = bytes(data or b"")[:max(room, 0)]
        chunks.append(Chunk(idx, t_ns, data))
        sizes.append(size or 0)
        room -= len(data)
    return chunks, sizes, None, before[0] if before else 0


def _pager(ex: Exchange, chunks: list[Chunk], next_start: int | None, count: int, nbytes: int, links: bool) -> str:
    if not chunks:
        return "<p>no chunks here</p>"
    first, last = chunks[0].index, chunks[-1].index
    words = f"chunks {first}–{last} of {count}"
    if not links:
        return f'<nav class="pager">{words} · <code>streamreplay show {ex.id}</code> prints them all</nav>'
    base = f"/exchange/{ex.id}/chunks?from="
    parts = [words]
    if first > 0:
        parts.append(f'<a href="{base}0">first</a> · <a href="{base}{max(first - PAGE_ROWS, 0)}">previous</a>')
    if next_start is not None:
        parts.append(f'<a class="next" href="{base}{next_start}">next chunks</a>')
    parts.append(f'<a class="raw" href="/exchange/{ex.id}/raw">all {nbytes} bytes as recorded (download)</a>')
    return f'<nav class="pager">{" · ".join(parts)}</nav>'


def _big_exchange(store: Store, ex: Exchange, db_label: str, fault: str | None, links: bool) -> str:
    """The page of an exchange too big to draw whole: overview, diagnosis from chunk times, first table page."""
    count, nbytes, span = chunk_sizes(store, ex.id)
    light: list[Chunk] = []  # index and time of every chunk, no data: what the diagnosis reads

    def rows() -> Iterator[tuple[int, int, int]]:
        for idx, t_ns, size in store.db.conn.execute(
                "select idx, t_ns, length(data) from chunks where exchange_id = ? order by idx", [ex.id]):
            light.append(Chunk(idx, t_ns, b""))
            yield idx, t_ns, size or 0

    link = f"/exchange/{ex.id}/chunks?from={{index}}#{{anchor}}" if links else "#{anchor}"
    lane = overview_series(ex, rows(), span_ns=span, chunk_link=link)
    lines: list[str] = []
    replay = f"streamreplay play --db {shlex.quote(db_label)} --tape {shlex.quote(ex.tape)}"
    if ex.end_cause is not None:
        try:
            if light:  # the diagnosis quotes the first 300 bytes of an error body
                head = b"".join(bytes(d) for (d,) in store.db.conn.execute(
                    "select substr(data, 1, 300) from chunks where exchange_id = ? order by idx limit 300", [ex.id]))
                light[0] = Chunk(light[0].index, light[0].t_ns, head[:300])
            found = diagnose_exchange(ex, light, TapeFacts.in_store(store, ex), db_label)
            lines, replay = found.lines(), found.replay
        except Exception as exc:  # as in render_exchange: the page still shows
            lines = [f"exchange {ex.id}: diagnose failed ({type(exc).__name__}: {exc})"]
    chunks, sizes, next_start, prev_ns = chunk_window(store, ex.id, 0)
    note = (f'<p class="lead big">{count} chunks, {nbytes} bytes: drawn as an overview (a bar per time slice), '
            f"the chunk table {PAGE_ROWS} rows or {PAGE_BYTES // 1024} KiB at a time.")
    if fault:
        note += (f" Replays under a fault are drawn for exchanges up to {FULL_CHUNKS} chunks and "
                 f"{FULL_BYTES // 1024} KiB; play it with <code>--fault {_esc(fault)}</code> instead.")
        replay += f" --fault {shlex.quote(fault)}"
    note += "</p>"
    table = _pager(ex, chunks, next_start, count, nbytes, links) + chunk_page(ex, chunks, sizes, prev_ns)
    return exchange_page(ex, [], lines or None, replay_command=replay,
                         nav_html=(_nav(store, ex, fault) if links else "") + note, lane=lane, chunks_html=table,
                         refresh_s=REFRESH_S if ex.end_cause is None else None)


def render_chunks(store: Store, exchange_id: int, start: int) -> str:
    """A page of an exchange's chunk table, from chunk `start` on."""
    ex = store.exchange(exchange_id)
    count, nbytes, _ = chunk_sizes(store, exchange_id)
    chunks, sizes, next_start, prev_ns = chunk_window(store, exchange_id, start)
    pager = _pager(ex, chunks, next_start, count, nbytes, links=True)
    body = (f'<h1>exchange {ex.id} {badge(ex.end_cause)} · chunks</h1>'
            f'<nav><a href="/exchange/{ex.id}">the exchange</a> · <a href="/">all exchanges</a></nav>'
            f"{pager}{chunk_page(ex, chunks, sizes, prev_ns)}{pager}")
    return html_page(f"streamreplay · exchange {ex.id} · chunks from {start}", body)


def render_exchange(store: Store, exchange_id: int, db_label: str, *, fault: str | None = None,
                    links: bool = False) -> str:
    """One exchange's page: timeline, diagnosis, the command that replays it; with `fault`, the replay's
    plan under that fault as lane B. `links=False` leaves out the UI's navigation (for `show --html`).
    An exchange over FULL_CHUNKS chunks or FULL_BYTES bytes gets a page of bounded size (_big_exchange).

    Raises KeyError for an unknown id and FaultSpecError for a bad fault spec.
    """
    ex = store.exchange(exchange_id)
    faults = parse_faults(fault)
    if is_big(store, exchange_id):
        return _big_exchange(store, ex, db_label, fault, links)
    chunks = store.chunks(exchange_id)
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
    big = [e.id for e in (ex_a, ex_b) if is_big(store, e.id)]
    if big:
        ids = " and ".join(f'<a href="/exchange/{i}">exchange {i}</a>' if links else f"exchange {i}" for i in big)
        return html_page("compare", f"<h1>compare {a} with {b}</h1><p>{ids}: over {FULL_CHUNKS} chunks or "
                                    f"{FULL_BYTES // 1024} KiB, too big to draw chunk by chunk on one axis; "
                                    "its own page draws it as an overview.</p>")
    nav = (f'<nav><a href="/">all exchanges</a> · A is <a href="/exchange/{a}">exchange {a}</a>, '
           f'B is <a href="/exchange/{b}">exchange {b}</a> · <a href="/compare/{b}/{a}">swap</a></nav>')
    still_open = ex_a.end_cause is None or ex_b.end_cause is None
    return exchange_page(ex_a, store.chunks(a), None, (ex_b, store.chunks(b)), nav_html=nav if links else "",
                         refresh_s=REFRESH_S if still_open else None)


def _raw_batch(store: Store, exchange_id: int, after: int, budget: int = PAGE_BYTES) -> list[tuple[int, bytes]]:
    """The chunks after index `after`, as many as fit in `budget` bytes (one at least): a download's step."""
    out, size = [], 0
    for idx, data in store.db.conn.execute(
            "select idx, data from chunks where exchange_id = ? and idx > ? order by idx", [exchange_id, after]):
        out.append((idx, bytes(data or b"")))
        size += len(out[-1][1])
        if size >= budget:
            break
    return out


class UIServer(AppServer):
    """The local UI over one DB: `/`, `/?cause=...&tape=...`, `/exchange/{id}[?fault=SPEC]`, `/compare/{a}/{b}`,
    `/exchange/{id}/chunks?from=N` (the chunk table a page at a time), `/exchange/{id}/raw` (the bytes)."""

    def __init__(self, db: str | Path, host: str = "127.0.0.1", port: int = 0, db_label: str | None = None) -> None:
        super().__init__(host, port)
        self.db = Path(db)
        self.db_label = db_label or str(db)
        # a cassette is read once into memory; its one connection serves one page at a time
        self._cassette: Store | None = None
        self._cassette_lock = threading.Lock()

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._own_host_only])
        app.router.add_get("/", self.index)
        app.router.add_get(r"/exchange/{id:\d+}", self.exchange)
        app.router.add_get(r"/exchange/{id:\d+}/chunks", self.chunks)
        app.router.add_get(r"/exchange/{id:\d+}/raw", self.raw)
        app.router.add_get(r"/compare/{a:\d+}/{b:\d+}", self.compare)
        app.router.add_get("/compare", self.compare_form)
        return app

    def allowed_hosts(self) -> set[str]:
        """Host headers the ui answers: its bound address, localhost, 127.0.0.1 and [::1], with its port
        (and without, on port 80, where browsers leave it out)."""
        hosts = set()
        for name in {self.host, "localhost", "127.0.0.1", "::1"}:
            name = f"[{name}]" if ":" in name else name
            hosts.add(f"{name}:{self.port}".lower())
            if self.port == 80:
                hosts.add(name.lower())
        return hosts

    @web.middleware
    async def _own_host_only(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        """DNS rebinding: a page on evil.example can point its name at 127.0.0.1 and read the ui from the
        victim's browser, same-origin. The browser still sends `Host: evil.example[:port]`, so anything but
        the ui's own names is refused before it can read a recording."""
        host = request.headers.get("Host", "").strip().lower()
        if host not in self.allowed_hosts():
            return openai_error(403, f"the streamreplay ui answers only requests for its own address "
                                     f"({self.origin}); Host {host[:100]!r} is refused (DNS rebinding)",
                                type="permission_error", code="host_not_allowed")
        return await handler(request)

    @contextmanager
    def _store(self) -> Iterator[Store]:
        from streamreplay.cassette import cassette_store, is_cassette

        if is_cassette(self.db):
            with self._cassette_lock:
                if self._cassette is None:
                    self._cassette = cassette_store(self.db)
                yield self._cassette
            return
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
        page = int(request.query["page"]) if request.query.get("page", "").isdigit() else 0
        return await self._page(lambda store: index_html(store, cause=cause, tape=tape, label=self.db_label,
                                                         page=page))

    async def exchange(self, request: web.Request) -> web.Response:
        eid, fault = int(request.match_info["id"]), request.query.get("fault") or None
        return await self._page(lambda store: render_exchange(store, eid, self.db_label, fault=fault, links=True))

    async def chunks(self, request: web.Request) -> web.Response:
        eid, start = int(request.match_info["id"]), request.query.get("from", "0")
        first = int(start) if start.isdigit() else 0
        return await self._page(lambda store: render_chunks(store, eid, first))

    async def raw(self, request: web.Request) -> web.StreamResponse:
        """An exchange's response body as recorded, streamed from the DB a chunk at a time (any size)."""
        eid = int(request.match_info["id"])
        if not self.db.exists():
            raise web.HTTPNotFound()
        store = await asyncio.to_thread(open_store, self.db)
        try:
            try:
                ex = await asyncio.to_thread(store.exchange, eid)
            except KeyError:
                raise web.HTTPNotFound() from None
            ctype = ex.response_header("content-type") or "application/octet-stream"
            ext = "sse" if "event-stream" in ctype else "bin"
            resp = web.StreamResponse(headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="exchange-{eid}.{ext}"',
                "X-Recorded-Content-Type": ctype,
            })
            await resp.prepare(request)
            after = -1
            while batch := await asyncio.to_thread(_raw_batch, store, eid, after):
                for _, data in batch:
                    await resp.write(data)
                after = batch[-1][0]
            await resp.write_eof()
            return resp
        finally:
            store.db.close()

    async def compare(self, request: web.Request) -> web.Response:
        a, b = int(request.match_info["a"]), int(request.match_info["b"])
        return await self._page(lambda store: render_compare(store, a, b, links=True))

    async def compare_form(self, request: web.Request) -> web.Response:
        a, b = request.query.get("a", "").strip(), request.query.get("b", "").strip()
        if not (a.isdigit() and b.isdigit()):
            return web.Response(status=400, text=html_page("compare", "<p>give two exchange ids</p>"),
                                content_type="text/html")
        raise web.HTTPFound(f"/compare/{a}/{b}")
