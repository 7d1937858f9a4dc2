"""What "the stream was whole" means in each dialect, checked one item at a time.

An item is what a client library yields (an SDK object) or one parsed event of the wire (a dict):
`field` reads either. A check never changes an item and never holds more than counters, so it can
ride along any stream. `missing()` says what a whole stream would have had and this one lacked:
- chat (and Azure): a `finish_reason` on every choice that appeared, and `[DONE]` (unless the server is
  known to omit it);
- responses: `response.completed` (or `response.incomplete`, a whole stream cut short by a limit);
- anthropic: a `message_delta` with a `stop_reason`, then `message_stop`;
- ollama: a line with `done: true`.
An `error` event is never whole, whatever came before it.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar


class TruncatedStream(Exception):
    """A stream that ended without what a whole one has: raised where the stream ends."""

    def __init__(self, dialect: str, missing: str, chunks: int, chars: int, elapsed_s: float) -> None:
        self.dialect, self.missing, self.chunks, self.chars, self.elapsed_s = dialect, missing, chunks, chars, elapsed_s
        super().__init__(f"{dialect} stream truncated: {missing} ({chunks} chunks, {chars} characters of text, "
                         f"{elapsed_s:.2f} s)")


def field(item: Any, name: str) -> Any:
    """`item[name]` for a dict, else the attribute (an SDK object), else None."""
    if isinstance(item, dict):
        return item.get(name)
    return getattr(item, name, None)


class StreamCheck:
    """Counts a stream's items and text, and notes what makes it whole. One subclass per dialect."""

    dialect: ClassVar[str]

    def __init__(self) -> None:
        self.chunks = 0
        self.chars = 0
        self.started = time.monotonic()
        self.error: str | None = None

    def item(self, item: Any) -> None:
        raise NotImplementedError

    def terminal(self) -> None:
        """The wire's own end marker was seen (`[DONE]`), which no item shows."""

    @property
    def ended(self) -> bool:
        """The dialect's last event has come: a client may stop reading here, so judge now."""
        raise NotImplementedError

    def missing(self) -> str | None:
        """What a whole stream has and this one lacked; None when it is whole."""
        raise NotImplementedError

    def verdict(self) -> TruncatedStream | None:
        """The exception to raise at the end of the stream, or None when it was whole."""
        missing = self.missing()
        if missing is None:
            return None
        return TruncatedStream(self.dialect, missing, self.chunks, self.chars, time.monotonic() - self.started)

    def _error(self, item: Any) -> None:
        error = field(item, "error")
        message = field(error, "message") if error is not None else None
        self.error = str(message or error or "an error event")


class ChatCheck(StreamCheck):
    """Chat completions: every choice that appeared gets a finish_reason, and `[DONE]` closes the stream."""

    dialect = "chat"

    def __init__(self, expect_done: bool = True) -> None:
        super().__init__()
        self.expect_done = expect_done
        self.done = False
        self.seen: set[int] = set()
        self.finished: set[int] = set()

    def item(self, item: Any) -> None:
        if isinstance(item, dict):
            self._wire_item(item)
            return
        # an SDK chunk (the openai SDK raises on an error event itself): attributes read directly, as
        # this runs once per chunk of every guarded stream
        self.chunks += 1
        for choice in item.choices or ():  # a usage-only last chunk has none
            index = choice.index or 0
            self.seen.add(index)
            if choice.finish_reason:
                self.finished.add(index)
            delta = choice.delta
            if delta is not None and delta.content:
                self.chars += len(delta.content)

    def _wire_item(self, item: dict[str, Any]) -> None:
        self.chunks += 1
        if item.get("error") is not None:
            self._error(item)
        for choice in item.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index") or 0
            self.seen.add(index)
            if choice.get("finish_reason"):
                self.finished.add(index)
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str):
                self.chars += len(content)

    def terminal(self) -> None:
        self.done = True

    @property
    def ended(self) -> bool:
        return self.done

    def missing(self) -> str | None:
        if self.error is not None:
            return f"an error event ({self.error})"
        if not self.finished or self.seen - self.finished:
            unfinished = sorted(self.seen - self.finished) or [0]
            which = "choice " + ", ".join(map(str, unfinished))
            return f"no finish_reason for {which}" + ("" if self.done or not self.expect_done else ", no [DONE]")
        if self.expect_done and not self.done:
            return "no [DONE] after the last chunk"
        return None


class ResponsesCheck(StreamCheck):
    dialect = "responses"
    WHOLE = frozenset({"response.completed", "response.incomplete"})

    def __init__(self) -> None:
        super().__init__()
        self.ended_by: str | None = None

    def item(self, item: Any) -> None:
        self.chunks += 1
        kind = field(item, "type")
        if kind == "response.output_text.delta":
            self.chars += len(field(item, "delta") or "")
        elif kind in self.WHOLE:
            self.ended_by = kind
        elif kind in ("error", "response.failed"):
            # a failed response carries its error object: say its message, as the other dialects do
            error = field(field(item, "response"), "error")
            self.error = str(field(item, "message") or field(error, "message") or error or kind)

    @property
    def ended(self) -> bool:
        return self.ended_by is not None or self.error is not None

    def missing(self) -> str | None:
        if self.error is not None:
            return f"an error event ({self.error})"
        return None if self.ended_by else "no response.completed"


class AnthropicCheck(StreamCheck):
    dialect = "anthropic"

    def __init__(self) -> None:
        super().__init__()
        self.stop_reason: str | None = None
        self.stopped = False

    def item(self, item: Any) -> None:
        self.chunks += 1
        kind = field(item, "type")
        if kind == "content_block_delta":
            self.chars += len(field(field(item, "delta"), "text") or "")
        elif kind == "message_delta":
            self.stop_reason = field(field(item, "delta"), "stop_reason") or self.stop_reason
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "error":
            self._error(item)

    @property
    def ended(self) -> bool:
        return self.stopped or self.error is not None

    def missing(self) -> str | None:
        if self.error is not None:
            return f"an error event ({self.error})"
        if self.stop_reason is None:
            return "no stop_reason" + ("" if self.stopped else ", no message_stop")
        return None if self.stopped else "no message_stop after the stop_reason"


class OllamaCheck(StreamCheck):
    dialect = "ollama"

    def __init__(self) -> None:
        super().__init__()
        self.done = False

    def item(self, item: Any) -> None:
        self.chunks += 1
        message = field(item, "message")
        content = field(message, "content") if message is not None else None
        if isinstance(content, str):
            self.chars += len(content)
        if field(item, "done") is True:
            self.done = True
        if field(item, "error") is not None:
            self._error(item)

    @property
    def ended(self) -> bool:
        return self.done or self.error is not None

    def missing(self) -> str | None:
        if self.error is not None:
            return f"an error line ({self.error})"
        return None if self.done else "no line with done: true"


#: the check of each dialect, by its name (streamreplay.dialects); Azure speaks chat
CHECKS: dict[str, type[StreamCheck]] = {"chat": ChatCheck, "azure": ChatCheck, "responses": ResponsesCheck,
                                         "anthropic": AnthropicCheck, "ollama": OllamaCheck}


def check_for(dialect: str, expect_done: bool = True) -> StreamCheck:
    """A fresh check for a stream of `dialect` (`expect_done` only matters to chat: False for a server
    known to end without `[DONE]`)."""
    if dialect not in CHECKS:
        raise ValueError(f"no stream check for dialect {dialect!r} (known: {', '.join(CHECKS)})")
    kind = CHECKS[dialect]
    return kind(expect_done) if kind is ChatCheck else kind()  # type: ignore[call-arg]
