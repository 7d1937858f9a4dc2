"""What happened to one request the replay server answered: its `Replayed` record and its log line."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from streamreplay.endcause import Ending

__all__ = ["Replayed"]


@dataclass
class Replayed:
    """What happened to one request the replay server answered: the client's behaviour, observed."""

    n: int
    method: str
    path: str
    exchange_id: int | None = None
    applied: list[str] = field(default_factory=list)
    status: int = 0
    total: int = 0  # chunks in the schedule
    delivered: int = 0
    ending: str = ""  # clean | close | reset, or miss / refused
    client_left_at_chunk: int | None = None
    client_left_ns: int | None = None
    done_delivered: bool = False
    retry_of: int | None = None  # the earlier request this one repeats after it broke
    # when each chunk was written, since arrival; 8 bytes an offset (a list of ints takes 40), as the
    # server keeps the most recent records and a record of a long stream is mostly its offsets
    offsets_ns: array[int] = field(default_factory=lambda: array("q"))
    miss: str | None = None
    partial: str | None = None  # the recording served is not whole (its store_error)
    #: a miss forwarded to the upstream (on_miss="record"): how its recording ended (an end cause), or
    #: "" while it is not in the index (not stored, or stored under another request key)
    recorded: str | None = None

    @property
    def finished(self) -> bool:
        """The client read the answer to its end (or to [DONE]) without leaving early."""
        return self.miss is None and (self.client_left_at_chunk is None or self.done_delivered)

    @property
    def broken(self) -> bool:
        return not self.finished or self.ending != Ending.CLEAN.value or self.status >= 400

    def _left(self) -> str:
        """", the client left at chunk K (its moment)" when it left before the answer's end, else ""."""
        if self.client_left_at_chunk is None or self.done_delivered:
            return ""
        return f", the client left at chunk {self.client_left_at_chunk} ({(self.client_left_ns or 0) / 1e9:.3f}s)"

    def line(self) -> str:
        if self.exchange_id is not None:
            target = f"exchange {self.exchange_id}"
        else:
            target = "refused" if self.ending == "refused" else "no match"
        faults = f" [{' + '.join(self.applied)}]" if self.applied else ""
        left = self._left()
        if self.recorded is not None:
            if self.exchange_id is not None:
                target = f"upstream, recorded as exchange {self.exchange_id}"
                how = f"{self.delivered}/{self.total} chunks{left}, ended {self.recorded}"
            else:
                target = "upstream"
                how = "forwarded, but its recording never joined the index (see any storing errors above)"
        elif self.miss:
            how = self.miss
        elif left:
            how = f"{self.delivered}/{self.total} chunks{left}"
        else:
            how = f"{self.delivered}/{self.total} chunks, ended {self.ending}"
        retry = f", repeats #{self.retry_of} after it was cut (a retry)" if self.retry_of else ""
        partial = " (a PARTIAL recording: not all the upstream sent was stored)" if self.partial else ""
        return f"#{self.n} {self.method} {self.path} -> {target}{faults} {self.status}: {how}{retry}{partial}"
