"""Faults: Toxiproxy-style named transforms of a chunk schedule.

Each fault is a small dataclass: its fields are the spec's parameters, `apply` its one method.
Specs read `name` or `name:key=value,key=value`, several joined with `+`; chunks count from 0
and `chunk=N` means "after N chunks have been delivered". Every parameter has a stated `Range`
(in its field's metadata and in the fault's help), checked when the fault is made, so a spec that
parses is one the server can play.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, get_type_hints

from streamreplay.endcause import Ending
from streamreplay.replay.schedule import Piece, Schedule

FAULTS: dict[str, type[Fault]] = {}


class FaultSpecError(ValueError):
    """A fault spec that cannot be read; the message names the part."""


def register(cls: type[Fault]) -> type[Fault]:
    FAULTS[cls.name] = cls
    return cls


@dataclass(frozen=True)
class Range:
    """The values one fault parameter takes, both ends included.

    Bounded so that every fault that can be made can be played: no wait a sleep or an int cannot hold
    (inf, nan, 1e300), no status line HTTP does not have, no count past any real recording.
    """

    low: int | float
    high: int | float
    excluded: tuple[int, ...] = ()
    why: str = ""  # the reason for a bound that is not plain sanity, for the error message

    def __str__(self) -> str:  # as the help text states it
        text = f"{self.low}..{self.high}"
        return f"{text} but not {', '.join(map(str, self.excluded))}" if self.excluded else text

    def holds(self, value: float) -> bool:
        # isfinite only for floats: it would convert an int, and overflow on one past 1e308
        finite = math.isfinite(value) if isinstance(value, float) else True
        return finite and self.low <= value <= self.high and value not in self.excluded


CHUNKS = Range(0, 1_000_000)  # a chunk index or count; recordings have hundreds, rarely thousands
BYTES = Range(0, 1_000_000_000)  # 1 GB: past any recorded answer
PIECE_BYTES = Range(1, 1_000_000_000, why="a piece holds at least 1 byte")
SECONDS = Range(0, 3600)  # wall-clock waits: an hour is past every client timeout worth testing
FACTOR = Range(0, 1000)  # 0 takes the gaps out; 1000 turns a 10 ms gap into 10 s
# 1xx is no final answer and 204/205/304 carry no body, but this fault answers with an error body
STATUS_CODES = Range(200, 599, excluded=(204, 205, 304), why="a status with a body")

#: offsets past this (about 31 years) are saturated: chained gap-scales multiply, and the server
#: divides offsets as floats, which overflow past 1e308
MAX_OFFSET_NS = 10**18


def param(default: Any, allowed: Range) -> Any:
    """A fault parameter: its default and the range it takes (read back by `_check`)."""
    return dataclasses.field(default=default, metadata={"range": allowed})


@functools.cache
def _kinds(cls: type[Fault]) -> dict[str, str]:
    """Each parameter's kind, "int" or "float", from its annotation."""
    hints = get_type_hints(cls)
    return {f.name: "int" if "int" in str(hints[f.name]) else "float" for f in dataclasses.fields(cls)}


def _shown(value: object) -> str:
    text = str(value)
    # a 5000-digit number says nothing more than its first digits and its length
    return text if len(text) <= 40 else f"{text[:30]}... ({len(text)} characters)"


def _check(fault: str, key: str, kind: str, allowed: Range, value: object, text: str | None = None) -> None:
    """The one place a parameter's value is held to its range; `text` is the value as the spec wrote it."""
    wanted = "an integer" if kind == "int" else "a finite number"
    number = isinstance(value, int if kind == "int" else (int, float)) and not isinstance(value, bool)
    if not (number and allowed.holds(value)):  # type: ignore[arg-type]
        but = ""
        if allowed.excluded:
            *rest, last = map(str, allowed.excluded)
            but = f" other than {', '.join(rest)} and {last}" if rest else f" other than {last}"
        why = f" ({allowed.why})" if allowed.why else ""
        raise FaultSpecError(f"{fault}: {key} must be {wanted} between {allowed.low} and {allowed.high}{but}{why}, "
                             f"got {_shown(value if text is None else text)}")


@dataclass(frozen=True)
class Fault:
    name: ClassVar[str]
    usage: ClassVar[str]  # the spec as users write it
    help: ClassVar[str]  # ends with the range of each parameter

    def __post_init__(self) -> None:
        # here as well as in parse_fault: faults made in code (ReplayServer(faults=[Stall(...)])) are held too
        kinds = _kinds(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                _check(self.name, f.name, kinds[f.name], f.metadata["range"], value)

    def apply(self, schedule: Schedule) -> Schedule:
        raise NotImplementedError

    def spec(self) -> str:
        params = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                  if getattr(self, f.name) is not None]
        return self.name + (":" + ",".join(params) if params else "")


def _seconds(s: float) -> int:
    return int(s * 1e9)


def _truncate(schedule: Schedule, chunks: int, ending: Ending, name: str) -> Schedule:
    out = schedule.copy(pieces=schedule.pieces[:chunks], ending=ending)
    out.applied.append(name)
    return out


@register
@dataclass(frozen=True)
class Cut(Fault):
    name = "cut"
    usage = "cut:chunk=N  or  cut:byte=B"
    help = f"deliver N chunks (or B bytes), then a clean end; N {CHUNKS}, B {BYTES}"
    chunk: int | None = param(None, CHUNKS)
    byte: int | None = param(None, BYTES)

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.chunk is None) == (self.byte is None):
            raise FaultSpecError("cut: give exactly one of chunk=N or byte=B")

    def apply(self, schedule: Schedule) -> Schedule:
        if self.chunk is not None:
            return _truncate(schedule, self.chunk, Ending.CLEAN, self.spec())
        kept, size = [], 0
        for piece in schedule.pieces:
            if size >= self.byte:  # type: ignore[operator]
                break
            room = self.byte - size  # type: ignore[operator]
            kept.append(Piece(piece.t_ns, piece.data[:room], piece.extra_ns))
            size += len(kept[-1].data)
        out = schedule.copy(pieces=kept, ending=Ending.CLEAN)
        out.applied.append(self.spec())
        return out


@register
@dataclass(frozen=True)
class Close(Fault):
    name = "close"
    usage = "close:chunk=N"
    help = f"deliver N chunks, then close the connection without ending the body; N {CHUNKS}"
    chunk: int = param(0, CHUNKS)

    def apply(self, schedule: Schedule) -> Schedule:
        return _truncate(schedule, self.chunk, Ending.CLOSE, self.spec())


@register
@dataclass(frozen=True)
class Reset(Fault):
    name = "reset"
    usage = "reset:chunk=N"
    help = f"deliver N chunks, then a TCP reset; N {CHUNKS}"
    chunk: int = param(0, CHUNKS)

    def apply(self, schedule: Schedule) -> Schedule:
        return _truncate(schedule, self.chunk, Ending.RESET, self.spec())


@register
@dataclass(frozen=True)
class Stall(Fault):
    name = "stall"
    usage = "stall:chunk=N,seconds=S"
    help = f"pause S seconds (wall time, whatever the speed) before chunk N, then go on; N {CHUNKS}, S {SECONDS}"
    chunk: int = param(0, CHUNKS)
    seconds: float = param(30.0, SECONDS)

    def apply(self, schedule: Schedule) -> Schedule:
        extra = _seconds(self.seconds)
        pieces = [Piece(p.t_ns, p.data, p.extra_ns + (extra if i >= self.chunk else 0))
                  for i, p in enumerate(schedule.pieces)]
        out = schedule.copy(pieces=pieces)
        out.applied.append(self.spec())
        return out


@register
@dataclass(frozen=True)
class DelayFirst(Fault):
    name = "delay-first"
    usage = "delay-first:seconds=S"
    help = f"S more seconds before the first byte (the response head included); S {SECONDS}"
    seconds: float = param(5.0, SECONDS)

    def apply(self, schedule: Schedule) -> Schedule:
        extra = _seconds(self.seconds)
        out = schedule.copy(pieces=[Piece(p.t_ns, p.data, p.extra_ns + extra) for p in schedule.pieces],
                            head_extra_ns=schedule.head_extra_ns + extra)
        out.applied.append(self.spec())
        return out


@register
@dataclass(frozen=True)
class GapScale(Fault):
    name = "gap-scale"
    usage = "gap-scale:factor=F"
    help = f"every gap between chunks multiplied by F; F {FACTOR}"
    factor: float = param(2.0, FACTOR)

    def apply(self, schedule: Schedule) -> Schedule:
        pieces, prev_old, prev_new = [], schedule.head_ns, schedule.head_ns
        for p in schedule.pieces:
            prev_new = min(prev_new + int((p.t_ns - prev_old) * self.factor), MAX_OFFSET_NS)
            prev_old = p.t_ns
            pieces.append(Piece(prev_new, p.data, p.extra_ns))
        out = schedule.copy(pieces=pieces)
        out.applied.append(self.spec())
        return out


@register
@dataclass(frozen=True)
class Rechunk(Fault):
    name = "rechunk"
    usage = "rechunk:size=B"
    help = f"the same bytes, written B bytes at a time (each piece when its last byte was recorded); B {PIECE_BYTES}"
    size: int = param(1, PIECE_BYTES)

    def apply(self, schedule: Schedule) -> Schedule:
        pieces: list[Piece] = []
        buf = b""
        for p in schedule.pieces:
            buf += p.data
            while len(buf) >= self.size:
                pieces.append(Piece(p.t_ns, buf[: self.size], p.extra_ns))
                buf = buf[self.size :]
        if buf:
            last = schedule.pieces[-1]
            pieces.append(Piece(last.t_ns, buf, last.extra_ns))
        out = schedule.copy(pieces=pieces)
        out.applied.append(self.spec())
        return out


def _splice(schedule: Schedule, edit: Callable[[bytes], bytes | None], name: str) -> Schedule:
    """Apply a byte edit to the whole body while keeping every chunk boundary the edit leaves alone.

    `edit` returns the new body, or None when it does not apply; the bytes before the first change
    and after the last keep their pieces.
    """
    body = schedule.body
    new = edit(body)
    if new is None or new == body:
        out = schedule.copy()
        out.applied.append(name)
        return out
    head = 0
    while head < min(len(body), len(new)) and body[head] == new[head]:
        head += 1
    tail = 0
    while tail < min(len(body), len(new)) - head and body[-1 - tail] == new[-1 - tail]:
        tail += 1
    old_end, new_end = len(body) - tail, len(new) - tail
    pieces, pos = [], 0
    inserted = False
    for p in schedule.pieces:
        start, end = pos, pos + len(p.data)
        pos = end
        before = p.data[: max(0, min(end, head) - start)]
        after = p.data[max(0, old_end - start):] if end > old_end else b""
        middle = b""
        if not inserted and (end > head or end == len(body)):
            middle = new[head:new_end]
            inserted = True
        data = before + middle + after
        if data:
            pieces.append(Piece(p.t_ns, data, p.extra_ns))
    out = schedule.copy(pieces=pieces)
    out.applied.append(name)
    return out


@register
@dataclass(frozen=True)
class DropDone(Fault):
    name = "drop-done"
    usage = "drop-done"
    help = ("the stream's terminal event removed (the upstream ends without it): [DONE], response.completed, "
            "message_stop, the done line")

    def apply(self, schedule: Schedule) -> Schedule:
        return _splice(schedule, schedule.dialect.drop_terminal, self.spec())



@register
@dataclass(frozen=True)
class DropFinish(Fault):
    name = "drop-finish"
    usage = "drop-finish"
    help = "every stop reason in the stream set to null: finish_reason, status, stop_reason, done_reason"

    def apply(self, schedule: Schedule) -> Schedule:
        return _splice(schedule, schedule.dialect.drop_stop, self.spec())


@register
@dataclass(frozen=True)
class Status(Fault):
    name = "status"
    usage = "status:code=C"
    help = f"HTTP C with the API's error JSON body instead of the recorded answer; C {STATUS_CODES}"
    code: int = param(500, STATUS_CODES)

    def apply(self, schedule: Schedule) -> Schedule:
        body = schedule.dialect.error_body(f"streamreplay fault: status {self.code}", self.code)
        headers = [("Content-Type", "application/json")]
        if self.code == 429:
            headers.append(("Retry-After", "0"))  # let clients retry at once, as a recording should
        out = Schedule(status=self.code, headers=headers, pieces=[Piece(schedule.head_ns, body)],
                       ending=Ending.CLEAN, head_ns=schedule.head_ns, head_extra_ns=schedule.head_extra_ns,
                       applied=[*schedule.applied, self.spec()], dialect=schedule.dialect)
        return out


@register
@dataclass(frozen=True)
class ErrorEvent(Fault):
    name = "error-event"
    usage = "error-event:chunk=N"
    help = f"deliver N chunks, then the API's error event, then a clean end; N {CHUNKS}"
    chunk: int = param(0, CHUNKS)

    def apply(self, schedule: Schedule) -> Schedule:
        kept = schedule.pieces[: self.chunk]
        at = schedule.pieces[self.chunk].t_ns if self.chunk < len(schedule.pieces) else (
            kept[-1].t_ns if kept else schedule.head_ns)
        extra = kept[-1].extra_ns if kept else 0
        event = schedule.dialect.error_event("streamreplay fault: error event mid-stream")
        out = schedule.copy(pieces=[*kept, Piece(at, event, extra)], ending=Ending.CLEAN)
        out.applied.append(self.spec())
        return out


@register
@dataclass(frozen=True)
class Corrupt(Fault):
    name = "corrupt"
    usage = "corrupt:chunk=N"
    help = f"chunk N's JSON cut in half, the rest as recorded; N {CHUNKS}"
    chunk: int = param(0, CHUNKS)

    def apply(self, schedule: Schedule) -> Schedule:
        if self.chunk >= len(schedule.pieces):
            return schedule
        piece = schedule.pieces[self.chunk]
        span = schedule.dialect.payload_span(piece.data)
        if span is None:  # no JSON starts in this chunk: cut the chunk's bytes instead
            data = piece.data[: len(piece.data) // 2]
        else:
            start, end = span
            data = piece.data[: start + (end - start) // 2] + piece.data[end:]
        pieces = list(schedule.pieces)
        pieces[self.chunk] = Piece(piece.t_ns, data, piece.extra_ns)
        out = schedule.copy(pieces=pieces)
        out.applied.append(self.spec())
        return out


def _convert(fault: str, key: str, value: str, kind: str) -> int | float:
    digits = value.lstrip("+-")
    if kind == "int" and len(digits) > 30 and digits.isdecimal():
        # past every range, and int() refuses strings over 4300 digits: let _check say it is too big
        return math.inf
    try:
        return int(value) if kind == "int" else float(value)
    except ValueError:
        wanted = "an integer" if kind == "int" else "a number"
        raise FaultSpecError(f"{fault}: {key}={value!r} is not {wanted}") from None


def parse_fault(spec: str) -> Fault:
    """One fault from `name` or `name:key=value,...`."""
    name, _, params = spec.strip().partition(":")
    cls = FAULTS.get(name)
    if cls is None:
        raise FaultSpecError(f"unknown fault {name!r} in {spec!r}; known: {', '.join(sorted(FAULTS))}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kinds = _kinds(cls)
    kwargs: dict[str, object] = {}
    for part in filter(None, params.split(",")):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq:
            raise FaultSpecError(f"{name}: {part!r} is not key=value")
        if key not in fields:
            takes = ", ".join(sorted(fields)) or "no parameters"
            raise FaultSpecError(f"{name}: unknown parameter {key!r} (takes {takes})")
        number = _convert(name, key, value, kinds[key])
        # checked here, not only in __post_init__, so the message quotes the value as it was written
        _check(name, key, kinds[key], fields[key].metadata["range"], number, value)
        kwargs[key] = number
    try:
        return cls(**kwargs)  # type: ignore[arg-type]
    except TypeError as exc:
        raise FaultSpecError(f"{name}: {exc}") from None


def parse_faults(spec: str | None) -> list[Fault]:
    """Several faults joined with `+`."""
    if not spec or not spec.strip():
        return []
    return [parse_fault(part) for part in spec.split("+")]


def apply_faults(schedule: Schedule, faults: list[Fault]) -> Schedule:
    for fault in faults:
        schedule = fault.apply(schedule)
    return schedule
