"""The assembled message of an exchange, for listing: built on the store's thread, never on the hot path."""

from __future__ import annotations

import json
from typing import Any

from streamreplay.sse import Assembler, SSEParser, assemble_json

#: body bytes fed to the summary; past this the listing notes that it was cut, memory stays flat
SUMMARY_LIMIT = 1024 * 1024
_SSE_STARTS = (b"data:", b"event:", b"id:", b"retry:", b":")


class Summarizer:
    """Fed each chunk as it is stored; gives the exchange's summary columns at the end."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.parser = SSEParser()
        self.assembler = Assembler()
        self.body = bytearray()  # only for non-stream bodies
        self.fed = 0
        self.sse = False

    def feed(self, data: bytes) -> None:
        if self.fed == 0:
            # the request's stream flag can lie (an error body answers a stream request)
            self.sse = data.lstrip().startswith(_SSE_STARTS)
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

    def columns(self, status: int | None) -> dict[str, Any]:
        if self.sse:
            for event in self.parser.close():
                self.assembler.feed_event(event)
            result = self.assembler.result()
            problems = list(self.parser.problems) + list(result.problems)
        else:
            result = assemble_json(bytes(self.body))
            problems = list(result.problems)
        if self.fed > SUMMARY_LIMIT:
            problems.append(f"summary built from the first {SUMMARY_LIMIT} bytes only")
        if self.fed == 0:
            problems = []
        return {
            "text": result.text,
            "finish_reason": result.finish_reason,
            "tool_calls": json.dumps(result.tool_calls) if result.tool_calls else None,
            "usage": json.dumps(result.usage) if result.usage else None,
            "problems": json.dumps(problems[:20]) if problems else None,
        }
