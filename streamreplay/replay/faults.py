"""Faults: Toxiproxy-style named transforms of a chunk schedule.

Each fault is a small dataclass: its fields are the spec's parameters, `apply` its one method.
Specs read `name` or `name:key=value,key=value`, several joined with `+`; chunks count from 0
and `chunk=N` means "after N chunks have been delivered".
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, get_type_hints

from streamreplay.endcause import Ending
from streamreplay.replay.schedule import Piece, Schedule

FAULTS: dict[str, type[Fault]] = {}


class FaultSpecError(ValueError):
    """A fault spec that cannot be read; the message names the part."""


def register(cls: type[Fault]) -> type[Fault]:
    FAULTS[cls.name] = cls
    return cls


@dataclass(frozen=True)
class Fault:
    name: ClassVar[str]
    usage: ClassVar[str]  # the spec as users write it
    help: ClassVar[str]

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
    help = "deliver N chunks (or B bytes), then a clean end"
    chunk: int | None = None
    byte: int | None = None

    def __post_init__(self) -> None:
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
    help = "deliver N chunks, then close the connection without ending the body"
    chunk: int = 0

    def apply(self, schedule: Schedule) -> Schedule:
        return _truncate(schedule, self.chunk, Ending.CLOSE, self.spec())


@register
@dataclass(frozen=True)
class Reset(Fault):
    name = "reset"
    usage = "reset:chunk=N"
    help = "deliver N chunks, then a TCP reset"
    chunk: int = 0

    def apply(self, schedule: Schedule) -> Schedule:
        return _truncate(schedule, self.chunk, Ending.RESET, self.spec())


@register
@dataclass(frozen=True)
class Stall(Fault):
    name = "stall"
    usage = "stall:chunk=N,seconds=S"
    help = "pause S seconds (wall time, whatever the speed) before chunk N, then go on"
    chunk: int = 0
    seconds: float = 30.0

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
    help = "S more seconds before the first byte (the response head included)"
    seconds: float = 5.0

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
    help = "every gap between chunks multiplied by F"
    factor: float = 2.0

    def apply(self, schedule: Schedule) -> Schedule:
        pieces, prev_old, prev_new = [], schedule.head_ns, schedule.head_ns
        for p in schedule.pieces:
            prev_new = prev_new + int((p.t_ns - prev_old) * self.factor)
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
    help = "the same bytes, written B bytes at a time (each piece when its last byte was recorded)"
    size: int = 1

    def __post_init__(self) -> None:
        if self.size < 1:
            raise FaultSpecError("rechunk: size must be at least 1")

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


_DONE_EVENT = re.compile(rb"(?m)^data: ?\[DONE\][ \t]*(\r\n|\r|\n)(\r\n|\r|\n)?")


@register
@dataclass(frozen=True)
class DropDone(Fault):
    name = "drop-done"
    usage = "drop-done"
    help = "the data: [DONE] event removed (the upstream ends without [DONE])"

    def apply(self, schedule: Schedule) -> Schedule:
        return _splice(schedule, lambda body: _DONE_EVENT.sub(b"", body), self.spec())


_FINISH = re.compile(rb'("finish_reason"\s*:\s*)"[^"]*"')


@register
@dataclass(frozen=True)
class DropFinish(Fault):
    name = "drop-finish"
    usage = "drop-finish"
    help = "every finish_reason in the stream set to null"

    def apply(self, schedule: Schedule) -> Schedule:
        return _splice(schedule, lambda body: _FINISH.sub(rb"\1null", body), self.spec())


def error_body(message: str, code: int | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": "server_error", "param": None,
                                 "code": str(code) if code else None}}).encode()


@register
@dataclass(frozen=True)
class Status(Fault):
    name = "status"
    usage = "status:code=C"
    help = "HTTP C with an OpenAI error JSON body instead of the recorded answer"
    code: int = 500

    def apply(self, schedule: Schedule) -> Schedule:
        body = error_body(f"streamreplay fault: status {self.code}", self.code)
        headers = [("Content-Type", "application/json")]
        if self.code == 429:
            headers.append(("Retry-After", "0"))  # let clients retry at once, as a recording should
        out = Schedule(status=self.code, headers=headers, pieces=[Piece(schedule.head_ns, body)],
                       ending=Ending.CLEAN, head_ns=schedule.head_ns, head_extra_ns=schedule.head_extra_ns,
                       applied=[*schedule.applied, self.spec()])
        return out


@register
@dataclass(frozen=True)
class ErrorEvent(Fault):
    name = "error-event"
    usage = "error-event:chunk=N"
    help = 'deliver N chunks, then data: {"error": {...}}, then a clean end'
    chunk: int = 0

    def apply(self, schedule: Schedule) -> Schedule:
        kept = schedule.pieces[: self.chunk]
        at = schedule.pieces[self.chunk].t_ns if self.chunk < len(schedule.pieces) else (
            kept[-1].t_ns if kept else schedule.head_ns)
        extra = kept[-1].extra_ns if kept else 0
        event = b"data: " + error_body("streamreplay fault: error event mid-stream") + b"\n\n"
        out = schedule.copy(pieces=[*kept, Piece(at, event, extra)], ending=Ending.CLEAN)
        out.applied.append(self.spec())
        return out


_DATA_JSON = re.compile(rb"data: ?(\{[^\r\n]*)")


@register
@dataclass(frozen=True)
class Corrupt(Fault):
    name = "corrupt"
    usage = "corrupt:chunk=N"
    help = "chunk N's JSON cut in half, the rest as recorded"
    chunk: int = 0

    def apply(self, schedule: Schedule) -> Schedule:
        if self.chunk >= len(schedule.pieces):
            return schedule
        piece = schedule.pieces[self.chunk]
        match = _DATA_JSON.search(piece.data)
        if match is None:  # no JSON starts in this chunk: cut the chunk's bytes instead
            data = piece.data[: len(piece.data) // 2]
        else:
            start, end = match.span(1)
            data = piece.data[: start + (end - start) // 2] + piece.data[end:]
        pieces = list(schedule.pieces)
        pieces[self.chunk] = Piece(piece.t_ns, data, piece.extra_ns)
        out = schedule.copy(pieces=pieces)
        out.applied.append(self.spec())
        return out


def _convert(fault: str, key: str, value: str, kind: object) -> object:
    text = str(kind)
    try:
        if "int" in text:
            return int(value)
        if "float" in text:
            return float(value)
    except ValueError:
        wanted = "an integer" if "int" in text else "a number"
        raise FaultSpecError(f"{fault}: {key}={value!r} is not {wanted}") from None
    return value


def parse_fault(spec: str) -> Fault:
    """One fault from `name` or `name:key=value,...`."""
    name, _, params = spec.strip().partition(":")
    cls = FAULTS.get(name)
    if cls is None:
        raise FaultSpecError(f"unknown fault {name!r} in {spec!r}; known: {', '.join(sorted(FAULTS))}")
    hints = get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, object] = {}
    for part in filter(None, params.split(",")):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq:
            raise FaultSpecError(f"{name}: {part!r} is not key=value")
        if key not in fields:
            takes = ", ".join(sorted(fields)) or "no parameters"
            raise FaultSpecError(f"{name}: unknown parameter {key!r} (takes {takes})")
        kwargs[key] = _convert(name, key, value.strip(), hints[key])
    try:
        fault = cls(**kwargs)  # type: ignore[arg-type]
    except TypeError as exc:
        raise FaultSpecError(f"{name}: {exc}") from None
    for key, value in kwargs.items():
        if isinstance(value, (int, float)) and value < 0:
            raise FaultSpecError(f"{name}: {key} must not be negative")
    return fault


def parse_faults(spec: str | None) -> list[Fault]:
    """Several faults joined with `+`."""
    if not spec or not spec.strip():
        return []
    return [parse_fault(part) for part in spec.split("+")]


def apply_faults(schedule: Schedule, faults: list[Fault]) -> Schedule:
    for fault in faults:
        schedule = fault.apply(schedule)
    return schedule
