"""Messages of the event stream (``docs/stream-protocol.md``), as pydantic models.

Every ZeroMQ message's first frame is one UTF-8 JSON object with a ``type``; a ``batch``
message has two more frames: the timestamps (``n_events`` little-endian int64) and the
channels (``n_events`` uint8). The consumer talks through a DEALER socket, the station
serves a ROUTER socket (which adds/strips the routing identity frame).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

PROTOCOL_VERSION = 1


class _Msg(BaseModel):
    # Unknown keys are ignored, so a newer peer may add fields within a protocol version.
    model_config = ConfigDict(extra="ignore")


# -- consumer -> station -----------------------------------------------------------------
class Hello(_Msg):
    """Start (or restart) receiving one pass from ``resume_seq`` on."""

    type: Literal["hello"] = "hello"
    protocol: int = Field(PROTOCOL_VERSION, description="Protocol version the consumer speaks.")
    pass_id: str | None = Field(
        None, description="Stream pass id (file stem); null = the pass being recorded, "
        "or the next one, and every later one.")
    resume_seq: int = Field(0, ge=0, description="First stream sequence number wanted.")
    window: int = Field(64, ge=1, description="Batches the consumer accepts unacknowledged.")
    consumer: str = Field("", max_length=200, description="Free-form consumer name for logs.")


class Ack(_Msg):
    """Every batch of ``pass_id`` up to and including ``seq`` has been stored."""

    type: Literal["ack"] = "ack"
    pass_id: str
    seq: int = Field(ge=-1)


class Ping(_Msg):
    type: Literal["ping"] = "ping"


class ListPasses(_Msg):
    type: Literal["list"] = "list"


class Bye(_Msg):
    type: Literal["bye"] = "bye"


ConsumerMessage = Annotated[Hello | Ack | Ping | ListPasses | Bye, Field(discriminator="type")]
_consumer_adapter: TypeAdapter[Hello | Ack | Ping | ListPasses | Bye] = TypeAdapter(ConsumerMessage)


# -- station -> consumer -----------------------------------------------------------------
class PassBegin(_Msg):
    """Answer to a hello: which pass follows, from which sequence number, and its header."""

    type: Literal["pass_begin"] = "pass_begin"
    protocol: int = PROTOCOL_VERSION
    pass_id: str
    resume_seq: int
    recording: bool = Field(description="True while the station is still recording the pass.")
    batches_available: int = Field(description="Batches in the pass file right now.")
    header: dict[str, str] = Field(description="The pass file's header (schema metadata).")


class BatchHeader(_Msg):
    """Frame 0 of a batch message; frames 1 and 2 carry the arrays."""

    type: Literal["batch"] = "batch"
    pass_id: str
    seq: int = Field(description="Stream sequence number: 0, 1, 2 ... within the pass.")
    tagger_seq: int = Field(description="The tagger's own batch sequence number.")
    n_events: int
    start_ps: int
    end_ps: int
    resolution_ps: float
    start_time_s: float | None = None
    counts: dict[str, int] = Field(description="Events per channel in this batch (str keys).")
    overflow_begin: bool = False
    overflow_end: bool = False
    in_overflow: bool = False
    missed_events: int = 0


class Lost(_Msg):
    """A batch the station could not record (e.g. disk full): known, counted, gone."""

    tagger_seq: int
    n_events: int
    start_ps: int
    end_ps: int
    reason: str


class PassEnd(_Msg):
    """After the last batch: totals the consumer checks against what it received."""

    type: Literal["pass_end"] = "pass_end"
    pass_id: str
    batches: int
    events: int
    counts: dict[str, int]
    missed_events: int = Field(description="Events the tagger reported dropped (overflow).")
    events_lost: int = Field(description="Every event known lost: tagger + not recorded.")
    lost_batches: list[Lost] = Field(default_factory=list)
    overflow_batches: int = 0
    tagger_seq_gaps: int = 0
    start_ps: int | None = None
    end_ps: int | None = None
    outcome: str = ""
    reason: str = ""
    complete: bool = Field(True, description="False when the file was cut (daemon crash).")


class Waiting(_Msg):
    """Follow mode: no pass is being recorded; a pass_begin comes when one opens."""

    type: Literal["waiting"] = "waiting"


class Pong(_Msg):
    type: Literal["pong"] = "pong"
    consumer_timeout_s: float


class PassInfo(_Msg):
    pass_id: str
    recording: bool
    batches: int
    events: int


class Passes(_Msg):
    type: Literal["passes"] = "passes"
    passes: list[PassInfo]


ErrorCode = Literal["bad_request", "protocol_version", "unknown_pass", "bad_resume",
                    "superseded", "no_session", "internal"]


class Error(_Msg):
    """The request was refused; ``code`` is machine-readable, ``message`` for humans."""

    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    pass_id: str | None = None


StationMessage = Annotated[PassBegin | BatchHeader | PassEnd | Waiting | Pong | Passes | Error,
                           Field(discriminator="type")]
_station_adapter: TypeAdapter[PassBegin | BatchHeader | PassEnd | Waiting | Pong | Passes | Error] = (
    TypeAdapter(StationMessage))


class ProtocolError(ValueError):
    """A frame that is not a valid message."""


def parse_consumer(frame: bytes) -> Hello | Ack | Ping | ListPasses | Bye:
    try:
        return _consumer_adapter.validate_json(frame)
    except ValidationError as exc:
        raise ProtocolError(_short(exc)) from None


def parse_station(frame: bytes) -> PassBegin | BatchHeader | PassEnd | Waiting | Pong | Passes | Error:
    try:
        return _station_adapter.validate_json(frame)
    except ValidationError as exc:
        raise ProtocolError(_short(exc)) from None


def _short(exc: ValidationError) -> str:
    errs = exc.errors()[:3]
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in errs)


def encode(msg: _Msg) -> bytes:
    return msg.model_dump_json().encode()
