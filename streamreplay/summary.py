"""The assembled message of an exchange, for listing: built on the store's thread, never on the hot path."""

from __future__ import annotations

import zlib
from typing import Any

from streamreplay.dialects import CHAT, Dialect
from streamreplay.exchange import exchange_row

#: body bytes fed to the summary; past this the listing notes that it was cut, memory stays flat
SUMMARY_LIMIT = 1024 * 1024


class Decoder:
    """A body's `Content-Encoding` undone read by read (gzip, deflate), for reading what it says; the
    stored and forwarded bytes stay as the upstream sent them. Other encodings pass through unread."""

    def __init__(self, content_encoding: str | None) -> None:
        encoding = (content_encoding or "").strip().lower()
        wbits = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
        self._zlib = zlib.decompressobj(wbits) if wbits else None
        self.failed = False

    @property
    def active(self) -> bool:
        return self._zlib is not None

    def feed(self, data: bytes) -> bytes:
        if self._zlib is None or self.failed:
            return data if self._zlib is None else b""
        try:
            # bounded per read: a small compressed read cannot inflate into gigabytes in one call
            out = self._zlib.decompress(data, SUMMARY_LIMIT)
        except zlib.error:
            self.failed = True
            return b""
        return out


class Summarizer:
    """Fed each chunk as it is stored; gives the exchange's summary columns at the end."""

    def __init__(self, stream: bool, content_encoding: str | None = None, dialect: Dialect = CHAT,
                 content_type: str | None = None) -> None:
        self.stream = stream
        self.dialect = dialect
        self.content_type = (content_type or "").lower()
        self.decoder = Decoder(content_encoding)
        self.parser = dialect.parser()
        self.assembler = dialect.assembler()
        self.body = bytearray()  # only for non-stream bodies
        self.fed = 0
        self.sse = False

    def feed(self, data: bytes) -> None:
        data = self.decoder.feed(data)
        if self.fed == 0:
            # the request's stream flag can lie (an error body answers a stream request); the content type
            # says it when there is one, else the first bytes (a whole answer may span several reads)
            if self.dialect.is_stream(self.content_type):
                self.sse = True
            elif "json" in self.content_type:
                self.sse = False
            else:
                self.sse = self.dialect.looks_like_stream(data)
        room = SUMMARY_LIMIT - self.fed
        self.fed += len(data)
        if room <= 0:
            return
        data = data[:room]
        if self.sse:
            for event in self.parser.feed(data):
                self.assembler.feed_event(event)
        else:
            self.body += data

    @property
    def full(self) -> bool:
        """Fed past the limit: more bytes would change nothing."""
        return self.fed > SUMMARY_LIMIT

    def columns(self) -> dict[str, Any]:
        if self.sse:
            for event in self.parser.close():
                self.assembler.feed_event(event)
            result = self.assembler.result()
            problems = list(self.parser.problems) + list(result.problems)
        else:
            result = self.dialect.assemble_json(bytes(self.body))
            problems = list(result.problems)
        if self.fed > SUMMARY_LIMIT:
            problems.append(f"summary built from the first {SUMMARY_LIMIT} bytes only")
        if self.decoder.failed:
            problems.append("the body's Content-Encoding could not be decoded")
        if self.fed == 0 and not self.decoder.failed:  # an empty body; one that could not be decoded says so
            problems = []
        # nothing to say is NULL, not an empty list
        return exchange_row(text=result.text, finish_reason=result.finish_reason, tool_calls=result.tool_calls or None,
                            usage=result.usage or None, problems=problems[:20] or None)
