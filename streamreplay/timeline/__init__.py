"""Timelines: an exchange (or a replay of it) drawn as inline SVG on a time axis, and as one HTML page.

Pure rendering: the store, the replay server and the diagnosis come in as arguments, so that
`show --html`, the UI server and the tests draw the same picture. Recorded text is untrusted
(an upstream can send any bytes), so every string leaves through `svg.esc`.

Three layers, each importing only the ones before it: `model` (what a timeline is: lanes of marks and
markers, built from an exchange and its chunks, a replay or a replay's plan), `svg` (the drawing) and
`page` (the HTML page: shell, CSS, badges, chunk tables). This package re-exports what the rest of
streamreplay imports.
"""

from streamreplay.timeline.model import (
    UPSTREAM_ENDS,
    fmt_ns,
    overview_series,
    recorded_series,
    replay_series,
    schedule_series,
)
from streamreplay.timeline.page import BADGE_COLORS, CSS, badge, chunk_page, exchange_page, html_page
from streamreplay.timeline.svg import COLORS, timeline_svg

__all__ = [
    "BADGE_COLORS",
    "COLORS",
    "CSS",
    "UPSTREAM_ENDS",
    "badge",
    "chunk_page",
    "exchange_page",
    "fmt_ns",
    "html_page",
    "overview_series",
    "recorded_series",
    "replay_series",
    "schedule_series",
    "timeline_svg",
]
