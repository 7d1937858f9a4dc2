"""What an exchange's page and its timeline show, in-process from hand-built exchanges (timeline/page.py and
timeline/svg.py): the chunk table's notes (first content, the rows the client never read, a row cut short on
its page), a long delta or message clipped with how many characters more, line breaks on one line, the
badge and its colour; the SVG's first-byte and long-gap brackets, the legend of what is drawn, each bar's
colour, hover text and fading after the client left, the axis steps and unit, and escaping of names."""

from __future__ import annotations

import re

from streamreplay.endcause import EndCause
from streamreplay.exchange import Chunk, Exchange
from streamreplay.timeline.model import recorded_series
from streamreplay.timeline.page import CSS, badge, chunk_page, chunk_table, exchange_page
from streamreplay.timeline.svg import COLORS, esc, series_svg
from tests.helpers import chat_chunk
from tests.test_timeline_units import DONE, HI, MS, ROLE, STOP, THERE
from tests.test_timeline_units import _exchange as _stream


def _exchange(**columns: object) -> Exchange:
    """The timeline tests' recorded stream, ended complete unless said otherwise."""
    return _stream(**{"end_cause": EndCause.COMPLETE, **columns})


def _chunks(*datas: bytes, step: int = 10 * MS) -> list[Chunk]:
    return [Chunk(i, (i + 1) * step, d) for i, d in enumerate(datas)]


def _rows(table: str) -> list[tuple[str, str, str, str]]:
    """(index, class, delta, notes) of each row of a chunk table."""
    return re.findall(r'<tr id="a-(\d+)"( class=unseen)?>.*?<td class="d">(.*?)</td><td class="n">(.*?)</td></tr>',
                      table)


def _left_exchange() -> tuple[Exchange, list[Chunk]]:
    chunks = _chunks(ROLE, HI, THERE, STOP, DONE)
    ex = _exchange(end_cause=EndCause.CLIENT_LEFT, upstream_end=EndCause.COMPLETE, client_left_at_chunk=2,
                   client_left_ns=25 * MS, duration_ns=70 * MS)
    return ex, chunks


# the chunk table


def test_the_table_notes_the_first_content_the_finish_reason_and_done():
    ex, chunks = _exchange(duration_ns=60 * MS), _chunks(ROLE, HI, THERE, STOP, DONE)
    notes = [(i, n) for i, _, _, n in _rows(chunk_table(recorded_series(ex, chunks))) if n]
    assert notes == [("1", "first content"), ("3", "finish_reason"), ("4", "[DONE]")]


def test_a_table_page_from_chunk_0_notes_the_first_content_and_a_later_page_does_not():
    ex, chunks = _exchange(duration_ns=60 * MS), _chunks(HI, THERE, STOP, DONE)
    first = chunk_page(ex, chunks, [len(c.data) for c in chunks])
    assert [(i, n) for i, _, _, n in _rows(first) if n] == [("0", "first content"), ("2", "finish_reason"),
                                                             ("3", "[DONE]")]
    later = chunk_page(ex, chunks[1:], [len(c.data) for c in chunks[1:]], prev_ns=chunks[0].t_ns)
    assert [(i, n) for i, _, _, n in _rows(later) if n] == [("2", "finish_reason"), ("3", "[DONE]")]


def test_the_rows_the_client_never_read_are_greyed_and_say_so():
    ex, chunks = _left_exchange()
    for table in (chunk_table(recorded_series(ex, chunks)), chunk_page(ex, chunks, [len(c.data) for c in chunks])):
        rows = _rows(table)
        assert [(i, cls) for i, cls, _, _ in rows] == [("0", ""), ("1", ""), ("2", " class=unseen"),
                                                      ("3", " class=unseen"), ("4", " class=unseen")]
        assert [n for *_, n in rows] == ["", "first content", "after the client left",
                                         "finish_reason, after the client left", "[DONE], after the client left"]


def test_a_row_cut_short_on_its_page_says_how_many_of_its_bytes_were_read_there():
    ex, chunks = _exchange(duration_ns=30 * MS), _chunks(HI, THERE)
    cut = [chunks[0], Chunk(1, chunks[1].t_ns, chunks[1].data[:10])]
    rows = re.findall(r"<td>(\d+)</td><td class=\"d\">.*?<td class=\"n\">(.*?)</td>",
                      chunk_page(ex, cut, [len(chunks[0].data), len(chunks[1].data)]))
    assert rows == [(str(len(HI)), "first content"), (str(len(THERE)), "only its first 10 bytes read here")]


def test_each_row_gives_its_time_its_gap_from_the_row_before_and_its_bytes():
    ex, chunks = _exchange(duration_ns=60 * MS), _chunks(HI, THERE, step=12_340_000)
    table = chunk_table(recorded_series(ex, chunks))
    assert f'<tr id="a-0"><td>0</td><td>12.3</td><td>12.3</td><td>{len(HI)}</td>' in table
    assert f'<tr id="a-1"><td>1</td><td>24.7</td><td>12.3</td><td>{len(THERE)}</td>' in table


def test_a_delta_over_2000_characters_is_cut_there_and_says_how_many_more():
    long, edge = "x" * 2000 + "y" * 5, "z" * 2000
    ex = _exchange(duration_ns=30 * MS)
    rows = _rows(chunk_table(recorded_series(ex, _chunks(chat_chunk({"content": long}),
                                                         chat_chunk({"content": edge})))))
    assert rows[0][2] == "x" * 2000 + " … [5 more characters]"
    assert rows[1][2] == edge  # 2000 exactly: whole


def test_a_delta_s_line_breaks_show_on_one_line():
    ex = _exchange(duration_ns=30 * MS)
    rows = _rows(chunk_table(recorded_series(ex, _chunks(chat_chunk({"content": "a\nb\r\nc\rd"})))))
    assert rows[0][2] == "a⏎b⏎c⏎d"


# the page


def test_a_message_over_100000_characters_is_cut_there_and_says_how_many_more():
    text = "m" * 100_000 + "n" * 7
    page = exchange_page(_exchange(duration_ns=30 * MS, text=text), _chunks(chat_chunk({"content": text})))
    assert f"<pre>{'m' * 100_000} … [7 more characters]</pre>" in page
    whole = "w" * 100_000
    page = exchange_page(_exchange(duration_ns=30 * MS, text=whole), _chunks(chat_chunk({"content": whole})))
    assert f"<pre>{whole}</pre>" in page


def test_a_client_that_left_shows_what_it_read_and_what_the_upstream_sent():
    ex, chunks = _left_exchange()
    page = exchange_page(ex, chunks)
    assert ("<h3>what the client read before it left</h3><pre>Hi</pre>"
            "<h3>what the upstream sent (recorded whole)</h3><pre>Hi there</pre>") in page


def test_a_badge_names_its_end_cause_or_open_in_its_tone_s_colour():
    assert badge("complete") == '<span class="badge b-complete">complete</span>'
    assert badge(None) == '<span class="badge b-open">open</span>'
    for cause, colour in (("complete", "#1f8a3a"), ("eof_without_done", "#c77700"), ("upstream_reset", "#b3261e"),
                          ("client_left", "#d62828"), ("interrupted", "#6b7280"), ("open", "#2563eb")):
        assert f".b-{cause}{{background:{colour}}}" in CSS


# the timeline


def _svg(ex: Exchange, chunks: list[Chunk], width: int = 1000) -> str:
    return series_svg([recorded_series(ex, chunks)], width=width)


def _legend(svg: str) -> list[str]:
    return re.findall(r'<g class="legend">.*?<text[^>]*>([^<]*)</text></g>', svg)


def test_the_wait_for_the_first_byte_is_bracketed_with_its_duration():
    svg = _svg(_exchange(duration_ns=60 * MS), _chunks(HI, THERE, step=37 * MS))
    assert re.search(r'<g class="bracket first-byte">.*?>first byte after 37 ms</text></g>', svg)


def test_only_a_silence_over_100_ms_and_5_times_the_usual_gap_is_labelled_the_3_longest_of_them():
    times = [10, 20, 30, 40, 50, 150, 160, 170, 280, 290, 300, 900, 910, 1310, 1320, 1470]
    chunks = [Chunk(i, t * MS, HI if i == 0 else THERE) for i, t in enumerate(times)]
    svg = _svg(_exchange(duration_ns=1500 * MS), chunks)
    # gaps: 10 ms usually; 100 ms (not over 100 ms), 110, 600, 400 and 150 ms over it: the three longest drawn
    assert sorted(re.findall(r'<g class="bracket gap">.*?>gap ([^<]*)</text></g>', svg)) == [
        "150 ms", "400 ms", "600 ms"]

    def gaps(*times_ms: float) -> list[str]:
        chunks = [Chunk(i, int(t * MS), THERE) for i, t in enumerate(times_ms)]
        svg = _svg(_exchange(duration_ns=int(times_ms[-1] * MS) + MS), chunks)
        return re.findall(r'<g class="bracket gap">.*?>(gap [^<]*)</text></g>', svg)

    assert gaps(10, 20, 30, 40, 140) == []  # 100 ms: not over 100 ms
    assert gaps(10, 20, 30, 40, 141) == ["gap 101 ms"]
    assert gaps(200, 400, 600, 800, 1800) == []  # 1 s: only 5 times the usual 200 ms
    assert gaps(200, 400, 600, 800, 1801) == ["gap 1.00 s"]


def test_a_client_that_left_before_the_first_chunk_is_shown_to_have_read_nothing():
    chunks = _chunks(HI, THERE)
    ex = _exchange(end_cause=EndCause.CLIENT_LEFT, upstream_end=EndCause.COMPLETE, client_left_at_chunk=0,
                   client_left_ns=5 * MS, duration_ns=30 * MS)
    assert ("<h3>what the client read before it left</h3><pre></pre>"
            "<h3>what the upstream sent (recorded whole)</h3><pre>Hi there</pre>") in exchange_page(ex, chunks)


def test_the_legend_names_what_is_drawn_and_nothing_else():
    svg = _svg(_exchange(duration_ns=60 * MS), _chunks(ROLE, HI, STOP, DONE))
    assert _legend(svg) == ["chunk (height = bytes)", "first content", "finish_reason", "[DONE]",
                            "no text (role, usage)", "upstream end"]
    ex, chunks = _left_exchange()
    assert _legend(_svg(ex, chunks)) == ["chunk (height = bytes)", "first content", "finish_reason", "[DONE]",
                                         "no text (role, usage)", "sent after the client left", "client left",
                                         "upstream end"]
    closed = _svg(_exchange(end_cause=EndCause.UPSTREAM_CLOSED, duration_ns=30 * MS), _chunks(HI, THERE))
    assert _legend(closed) == ["chunk (height = bytes)", "first content", "reset / closed"]
    abort = _exchange(end_cause=EndCause.CLIENT_LEFT, client_left_at_chunk=1, client_left_ns=15 * MS,
                      duration_ns=90 * MS)  # the proxy stopped reading too: drawn as a stop, an end
    assert _legend(_svg(abort, _chunks(HI, THERE))) == ["chunk (height = bytes)", "first content",
                                                        "sent after the client left", "client left", "upstream end"]


def test_each_bar_s_colour_says_what_its_chunk_carries():
    error = b'data: {"error": {"message": "overloaded"}}\n\n' + DONE  # an error outranks the [DONE] after it
    both = chat_chunk({}, finish="stop") + DONE  # and [DONE] the finish_reason before it
    svg = _svg(_exchange(duration_ns=90 * MS), _chunks(ROLE, HI, THERE, STOP, both, error))
    fills = re.findall(r'<g class="chunk[^"]*" data-index="\d+"[^>]*><title>.*?</title><rect [^>]*fill="([^"]+)"',
                       svg, re.S)
    assert fills == [COLORS["none"], COLORS["first"], COLORS["content"], COLORS["finish"], COLORS["done"],
                     COLORS["error"]]
    assert (COLORS["none"], COLORS["first"], COLORS["content"], COLORS["finish"], COLORS["done"],
            COLORS["error"]) == ("#a3acb9", "#8b3fd9", "#4f7cff", "#e08a00", "#0f8a7e", "#d62828")


def test_a_bar_s_hover_text_gives_its_chunk_time_gap_bytes_and_delta():
    svg = _svg(_exchange(duration_ns=60 * MS), _chunks(HI, THERE, step=12_340_000))
    tips = re.findall(r"<title>(chunk [^<]*)</title>", svg)
    assert tips == [f"chunk 0 · at 12.3 ms · gap 12.3 ms · {len(HI)} bytes\n&#x27;Hi&#x27;",
                    f"chunk 1 · at 24.7 ms · gap 12.3 ms · {len(THERE)} bytes\n&#x27; there&#x27;"]


def test_the_bars_the_client_never_read_are_faded_over_a_hatched_zone():
    ex, chunks = _left_exchange()
    svg = _svg(ex, chunks)
    opacity = re.findall(r'<g class="chunk[^"]*" data-index="(\d+)" data-t-ms="[^"]*" opacity="([^"]*)"', svg)
    assert opacity == [("0", "1"), ("1", "1"), ("2", "0.35"), ("3", "0.35"), ("4", "0.35")]
    assert '<rect class="unseen-zone"' in svg and 'fill="url(#hatch)"' in svg
    assert '<rect class="unseen-zone"' not in _svg(_exchange(duration_ns=60 * MS), chunks)


def test_the_axis_steps_in_round_numbers_in_ms_under_2_s_and_in_s_from_there():
    def ticks(end_ms: float) -> list[str]:
        svg = _svg(_exchange(duration_ns=int(end_ms * MS)), _chunks(HI))
        return re.findall(r'text-anchor="middle">([\d.]+ m?s)</text>', svg)

    assert ticks(100) == ["0 ms", "20 ms", "40 ms", "60 ms", "80 ms", "100 ms"]  # 103 ms / 8: 12.9 -> 20
    assert ticks(60) == ["0 ms", "10 ms", "20 ms", "30 ms", "40 ms", "50 ms", "60 ms"]  # 61.8 / 8: 7.7 -> 10
    assert ticks(30) == ["0 ms", "5 ms", "10 ms", "15 ms", "20 ms", "25 ms", "30 ms"]  # 30.9 / 8: 3.9 -> 5
    assert ticks(200) == [f"{t} ms" for t in range(0, 201, 50)]  # 206 / 8: 25.75 -> 50 (2.5 x 10 falls short)
    assert ticks(1900) == [f"{t} ms" for t in range(0, 1751, 250)]  # 1957 ms / 8: 245 -> 250, still in ms
    assert ticks(3000) == ["0 s", "0.5 s", "1 s", "1.5 s", "2 s", "2.5 s", "3 s"]  # 3.09 s: in s


def test_names_and_recorded_text_leave_escaped_with_control_characters_made_visible():
    assert esc('say "hi" <b>&\x1b\x00\n\t') == "say &quot;hi&quot; &lt;b&gt;&amp;\\x1b\\x00\n\t"
    svg = series_svg([recorded_series(_exchange(duration_ns=30 * MS), _chunks(HI), title='<i>"A"\x07</i>')])
    assert "&lt;i&gt;&quot;A&quot;\\x07&lt;/i&gt;" in svg and "<i>" not in svg


def test_two_lanes_are_lettered_a_and_b_and_one_lane_is_not():
    ex, chunks = _exchange(duration_ns=30 * MS), _chunks(HI, THERE)
    one = series_svg([recorded_series(ex, chunks, title="rec")])
    two = series_svg([recorded_series(ex, chunks, title="rec"), recorded_series(ex, chunks, title="again")])
    lane_titles = r'<text x="14" y="[\d.]+" font-size="13" font-weight="600" fill="#1f2937">([^<]*)</text>'
    assert re.findall(lane_titles, one) == ["rec"]
    assert re.findall(lane_titles, two) == ["A  rec", "B  again"]
