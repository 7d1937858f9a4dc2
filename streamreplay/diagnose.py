"""`streamreplay diagnose`: what ended an exchange, the evidence, the command that replays it, the usual fix."""

from __future__ import annotations

import shlex
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from streamreplay.clientid import describe_client
from streamreplay.dialects import Dialect, dialect_named
from streamreplay.endcause import CAUSES, EndCause, known_cause
from streamreplay.store import Chunk, Exchange, Store

#: a silence this long (and well above the stream's usual gaps) before the client left reads as a timeout
TIMEOUT_SILENCE_S = 0.25
#: leaving within this many chunks, with no long silence, reads as a consumer that stopped reading
EARLY_CHUNKS = 3
#: total time limits people set (asyncio.wait_for, request deadlines); leaving mid-flow this long
#: after the request, within DEADLINE_TOLERANCE, reads as a deadline shorter than the stream
COMMON_DEADLINES_S = (0.5, 1, 2, 3, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600)
DEADLINE_TOLERANCE = 0.03


@dataclass
class Diagnosis:
    exchange_id: int
    tape: str
    cause: str  # a short name: consumer_stopped_reading, client_timeout, upstream_reset, ...
    summary: str  # one sentence in plain words
    ended_by: str  # client | upstream | daemon | nobody (endcause.ENDED_BY)
    chunk: int | None  # chunks delivered when it ended
    chunks: int
    at_s: float | None
    gap_before_s: float | None
    upstream_complete: bool
    finish_reason: str | None
    done: bool
    evidence: list[str] = field(default_factory=list)
    fix: str = ""
    dialect: str = "chat"
    replay: str = ""
    repro: str = ""
    client: str | None = None
    seq: int = 0  # its place in the tape: TAPE:SEQ names it in any DB

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [f"exchange {self.tape}:{self.seq} (id {self.exchange_id}): {self.summary}"]
        if self.client:
            out.append(f"client     {self.client}")
        if self.chunk is not None and self.at_s is not None:
            before = "the chunk before" if self.chunk else "the response head"
            gap = f", {self.gap_before_s:.3f} s after {before}" if self.gap_before_s is not None else ""
            who = "ended      normally" if self.ended_by == "nobody" else f"ended by   the {self.ended_by}"
            out.append(f"{who}, at chunk {self.chunk} of {self.chunks}, {self.at_s:.3f} s{gap}")
        answer = "complete" if self.upstream_complete else "not complete"
        dialect = dialect_named(self.dialect)
        out.append(f"upstream   answer {answer}: {dialect.stop_said(self.finish_reason)}, "
                   f"{dialect.terminal + ' seen' if self.done else 'no ' + dialect.terminal}")
        out.append(f"cause      {self.cause}")
        out += [f"evidence   {e}" for e in self.evidence]
        if self.fix:
            out.append(f"fix        {self.fix}")
        out.append(f"replay     {self.replay}")
        if self.repro:
            out.append(f"repro      {self.repro}")
        return out


def _gaps(chunks: list[Chunk], head_ns: int) -> list[float]:
    previous, gaps = head_ns, []
    for chunk in chunks:
        gaps.append((chunk.t_ns - previous) / 1e9)
        previous = chunk.t_ns
    return gaps


@dataclass(frozen=True)
class TapeFacts:
    """What a diagnosis reads of an exchange's tape: how many exchanges it has, whether every one ended
    complete, its last one, and the one right after this exchange. Asked of the DB (`in_store`), so a
    tape recorded for a month is never read whole to diagnose one exchange."""

    count: int
    all_complete: bool
    last_id: int | None
    next_id: int | None = None
    next_key: str | None = None

    @classmethod
    def of(cls, ex: Exchange, tape: list[Exchange]) -> TapeFacts:
        later = [e for e in tape if e.seq > ex.seq]
        return cls(len(tape), all(e.end_cause == EndCause.COMPLETE for e in tape), tape[-1].id if tape else None,
                   later[0].id if later else None, later[0].request_key if later else None)

    @classmethod
    def in_store(cls, store: Store, ex: Exchange) -> TapeFacts:
        db = store.db
        count, complete, last = db.execute(
            "select count(*), sum(end_cause = ?), max(id) from exchanges where tape = ?",
            [EndCause.COMPLETE.value, ex.tape]).fetchone()
        after = db.execute("select id, request_key from exchanges where tape = ? and seq > ? order by seq limit 1",
                           [ex.tape, ex.seq]).fetchone()
        return cls(count, complete == count, last, *(after or (None, None)))


def diagnose(store: Store, exchange_id: int, db_label: str = "recordings/streamreplay.db") -> Diagnosis:
    ex = store.exchange(exchange_id)
    chunks = store.chunks(exchange_id)
    return diagnose_exchange(ex, chunks, TapeFacts.in_store(store, ex), db_label)


def repro_command(exchange: Exchange, db_label: str) -> str:
    """The command that writes the repro folder, naming the exchange as TAPE:SEQ (which, unlike an id,
    is the same in every DB the tape is imported into)."""
    ref = f"{exchange.tape}:{exchange.seq}"
    return f"streamreplay repro {ref} --db {shlex.quote(db_label)} -o repro_{exchange.tape}-{exchange.seq}/"


def diagnose_exchange(ex: Exchange, chunks: list[Chunk], tape: list[Exchange] | TapeFacts, db_label: str) -> Diagnosis:
    """The diagnosis of `ex`, read with its chunks and its tape (the exchanges, or `TapeFacts` of them)."""
    tape = tape if isinstance(tape, TapeFacts) else TapeFacts.of(ex, tape)
    head_ns = ex.headers_ns or 0
    gaps = _gaps(chunks, head_ns)
    upstream_end = ex.upstream_end or ex.end_cause
    upstream_complete = upstream_end == EndCause.COMPLETE and ex.finish_reason is not None
    cause = known_cause(ex.end_cause)
    api = ex.dialect
    info = CAUSES[cause if cause is not None else EndCause.COMPLETE]  # an open exchange reads as it stands
    d = Diagnosis(
        exchange_id=ex.id, tape=ex.tape, cause="", summary="", ended_by=info.ended_by, chunk=None,
        chunks=len(chunks), at_s=None, gap_before_s=None, upstream_complete=upstream_complete,
        finish_reason=ex.finish_reason, done=ex.done, client=describe_client(ex),
        replay=f"streamreplay play --db {shlex.quote(db_label)} --tape {shlex.quote(ex.tape)}",
        repro=repro_command(ex, db_label), seq=ex.seq, dialect=api.name,
    )
    if cause is EndCause.CLIENT_LEFT:
        _client_left(d, ex, chunks, gaps)
    elif cause is not None and info.upstream_broke:
        _upstream_broke(d, ex, cause, chunks, gaps)
    elif cause is EndCause.EOF_WITHOUT_DONE:
        d.chunk, d.at_s = len(chunks), (ex.duration_ns or 0) / 1e9
        d.cause = "upstream_no_done"
        if ex.finish_reason is None:
            d.summary = (f"the upstream ended the stream cleanly but early: no {api.stop_field}, "
                         f"no {api.terminal}")
            d.evidence.append("clients take a clean end as the end of the answer: the app got a truncated "
                              "answer and no error (see streamreplay matrix)")
            d.fix = f"check {api.stop_field} in the app; treat a stream without it as failed, and retry"
        else:
            d.summary = (f"the upstream finished the answer ({api.stop_said(ex.finish_reason)}) but never sent "
                         f"{api.terminal}")
            d.fix = f"nothing is lost; a client that waits for {api.terminal} would hang or fail"
    elif cause in (EndCause.HTTP_ERROR, EndCause.UPSTREAM_UNREACHABLE):
        d.chunk, d.at_s = len(chunks), (ex.duration_ns or 0) / 1e9
        d.cause = cause.value
        body = b"".join(c.data for c in chunks)[:300].decode("utf-8", "replace")
        if cause is EndCause.UPSTREAM_UNREACHABLE:
            d.summary = f"the upstream could not be reached; the client got HTTP {ex.status} from streamreplay"
            d.fix = info.fix or ""
        else:
            d.summary = f"the upstream answered HTTP {ex.status} before any stream"
            d.fix = ("slow down or retry with backoff (429)" if ex.status == 429
                     else "retry; the upstream failed before streaming")
        d.evidence.append(f"body: {body}")
    elif cause is EndCause.INTERRUPTED:
        d.cause, d.summary = cause.value, info.summary or ""
        d.chunk, d.at_s = len(chunks), (chunks[-1].t_ns / 1e9 if chunks else 0.0)
    else:
        _completed(d, ex, chunks, tape, api)
    _retries(d, ex, tape)
    _malformed(d, ex)
    if ex.store_error:
        # first: whatever else it says is read from a recording that is missing a part
        d.evidence.insert(0, f"THIS RECORDING IS PARTIAL ({ex.store_error}): what follows is read from what "
                             "was stored, not from all the client got")
    return d


def _malformed(d: Diagnosis, ex: Exchange) -> None:
    """What the upstream sent that a client would choke on, whatever ended the exchange."""
    content_type = ex.response_header("content-type") or ""
    if ex.stream and ex.status and 200 <= ex.status < 300 and "text/event-stream" not in content_type:
        d.evidence.append(f"the request asked for a stream; the answer is {content_type or 'untyped'}, not SSE")
    for problem in ex.problems[:3]:
        d.evidence.append(f"malformed upstream output: {problem}")


def _client_left(d: Diagnosis, ex: Exchange, chunks: list[Chunk], gaps: list[float]) -> None:
    k = ex.client_left_at_chunk or 0
    left_s = (ex.client_left_ns or 0) / 1e9
    last_s = chunks[k - 1].t_ns / 1e9 if 0 < k <= len(chunks) else (ex.headers_ns or 0) / 1e9
    silence = left_s - last_s
    usual = statistics.median(gaps[1:]) if len(gaps) > 2 else 0.0
    d.chunk, d.at_s, d.gap_before_s = k, left_s, silence
    since = f"chunk {k - 1}" if k > 0 else "the response head"  # k == 0: it left before any chunk
    went_on = ex.upstream_end or "unknown"
    d.evidence.append(f"the upstream went on to {len(chunks)} chunks and ended: {went_on}")
    if silence >= TIMEOUT_SILENCE_S and silence > 3 * usual:
        d.cause = "client_timeout"
        d.summary = f"a client timeout of about {silence:.1f} s: the client left after {silence:.2f} s of silence"
        d.evidence.append(f"the client left {silence:.3f} s after {since} arrived; the stream's usual gap "
                          f"is {usual * 1000:.0f} ms")
        if k < len(gaps):
            d.evidence.append(f"the next chunk came {gaps[k]:.3f} s after {since}: longer than the client waited")
        d.fix = f"raise the client's read timeout above the longest gap (here {max(gaps):.1f} s)"
    elif k > EARLY_CHUNKS and (deadline := _deadline_near(left_s)) is not None:
        total = (ex.duration_ns or 0) / 1e9
        d.cause = "client_deadline"
        d.summary = (f"a total time limit of about {deadline:g} s: the client left {left_s:.3f} s into a stream "
                     f"that needed {total:.2f} s, in the middle of steady chunks")
        d.evidence.append(f"no silence before it left ({silence * 1000:.0f} ms after {since}), and it left "
                          f"{left_s:.3f} s after the request: within {DEADLINE_TOLERANCE:.0%} of {deadline:g} s")
        d.fix = (f"raise the overall deadline (asyncio.wait_for, the request's total timeout) above the stream's "
                 f"length ({total:.1f} s), or bound silence with a read timeout instead")
    else:
        d.cause = "consumer_stopped_reading"
        where = "right after the first chunk(s)" if k <= EARLY_CHUNKS else f"after {k} of {len(chunks)} chunks"
        d.summary = f"a consumer that stopped reading: the client closed the stream {where} while the upstream went on"
        d.evidence.append(f"no silence before it left ({silence * 1000:.0f} ms after {since}): the app, "
                          "not the network, ended it (a break, a cancelled task, a web handler that returned)")
        d.fix = "consume the stream to the end (or to finish_reason); await the task; keep the handler until it ends"


def _deadline_near(seconds: float) -> float | None:
    for deadline in COMMON_DEADLINES_S:
        if abs(seconds - deadline) <= DEADLINE_TOLERANCE * deadline:
            return deadline
    return None


def _upstream_broke(d: Diagnosis, ex: Exchange, cause: EndCause, chunks: list[Chunk], gaps: list[float]) -> None:
    d.chunk, d.at_s = len(chunks), (ex.duration_ns or 0) / 1e9
    d.gap_before_s = gaps[-1] if gaps else None
    d.cause, d.summary, d.fix = cause.value, cause.info.summary or "", cause.info.fix or ""
    if ex.end_detail:
        d.evidence.append(ex.end_detail)


def _completed(d: Diagnosis, ex: Exchange, chunks: list[Chunk], tape: TapeFacts, api: Dialect) -> None:
    d.chunk, d.at_s = len(chunks), (ex.duration_ns or 0) / 1e9
    if ex.finish_reason in api.length_reasons:
        d.cause = "max_tokens"
        d.summary = (f"the stream completed, but the answer was cut by the token limit "
                     f"({api.stop_said(ex.finish_reason)})")
        d.fix = "raise max_tokens (or max_completion_tokens, max_output_tokens, num_predict)"
        return
    if ex.stream and ex.finish_reason is None:
        d.cause = "no_finish_reason"
        d.summary = f"the stream completed with {api.terminal}, but no event carried a {api.stop_field}"
        d.fix = "an upstream quirk; AG2 raises on it (see streamreplay matrix)"
        return
    d.cause = "complete"
    d.summary = "the exchange completed: the client read the whole answer"
    if ex.client_left_ns is not None:
        d.evidence.append(f"the client closed the connection after {api.terminal}, at "
                          f"{ex.client_left_ns / 1e9:.3f} s (the openai SDK does this)")
    if tape.count > 1 and tape.all_complete and ex.id == tape.last_id:
        d.cause = "round_limit"
        d.summary = (f"every exchange completed; the tape ends after exactly {tape.count} complete exchanges: "
                     "if the conversation stopped short, a round or turn limit ended it, not the stream")
        d.fix = "raise max_round / max_turns / the termination condition's message count"


def _retries(d: Diagnosis, ex: Exchange, tape: TapeFacts) -> None:
    if tape.next_id is not None and tape.next_key == ex.request_key and d.cause not in ("complete", "round_limit"):
        d.evidence.append(f"the same request came again right after (exchange {tape.next_id}): the client retried")
