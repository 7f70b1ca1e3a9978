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
#: Largest frame the station accepts from a consumer; a bigger one makes libzmq drop the
#: connection before the frame is read (ZMQ_MAXMSGSIZE), so it is never parsed.
MAX_CONSUMER_FRAME_BYTES = 1024 * 1024
#: Largest window a consumer may ask for; the station lowers it to its own cap
#: (``[events] stream_max_window_batches``, default 256) and says so in ``pass_begin``.
MAX_WINDOW_BATCHES = 65536
#: Most catch-up entries in one follow-mode hello.
MAX_CATCH_UP = 10000
_SEQ_MAX = 2**62
PASS_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,159}$"
PassId = Annotated[str, Field(pattern=PASS_ID_PATTERN)]


class _Msg(BaseModel):
    # Unknown keys are ignored, so a newer peer may add fields within a protocol version.
    model_config = ConfigDict(extra="ignore")


# -- consumer -> station -----------------------------------------------------------------
class CatchUp(_Msg):
    """A pass a follow-mode consumer still needs, and the first seq it needs of it."""

    pass_id: PassId
    resume_seq: int = Field(0, ge=0, le=_SEQ_MAX)


class Hello(_Msg):
    """Start (or restart) a session: one pass from ``resume_seq`` on, or follow mode."""

    type: Literal["hello"] = "hello"
    protocol: int = Field(PROTOCOL_VERSION, description="Protocol version the consumer speaks.")
    pass_id: PassId | None = Field(
        None, description="Stream pass id (file stem); null = follow mode (catch_up, then "
        "the pass being recorded or every pass opened after cursor, then every later one).")
    resume_seq: int = Field(0, ge=0, le=_SEQ_MAX,
                            description="First stream sequence number wanted (named mode; "
                            "must be 0 in follow mode, which resumes through catch_up).")
    window: int = Field(64, ge=1, le=MAX_WINDOW_BATCHES,
                        description="Batches the consumer accepts unacknowledged.")
    consumer: str = Field("", max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$",
                          description="Consumer name: for logs, and a newer session of the "
                          "same name supersedes an older one.")
    catch_up: list[CatchUp] = Field(default_factory=list, max_length=MAX_CATCH_UP,
                                    description="Follow mode: passes to serve first, in order.")
    cursor: str | None = Field(None, max_length=100,
                               description="Follow mode: the `cursor` of the `passes` answer "
                               "the catch-up list was made from.")


class Ack(_Msg):
    """Every batch of ``pass_id`` up to and including ``seq`` is held by the consumer."""

    type: Literal["ack"] = "ack"
    pass_id: PassId
    seq: int = Field(ge=-1, le=_SEQ_MAX)


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
    window: int | None = Field(None, description="The window in force: the consumer's, "
                               "capped by the station's stream_max_window_batches.")
    follow: bool = Field(False, description="True when this pass is served in follow mode.")


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
    batches: int = Field(description="Batches in the file; -1 when unknown.")
    events: int = Field(description="Events in the file; -1 when unknown.")


class Passes(_Msg):
    type: Literal["passes"] = "passes"
    passes: list[PassInfo]
    cursor: str = Field("", description="Give it in a follow-mode hello with the catch-up "
                        "list made from this answer: passes opened after it are served too.")


ErrorCode = Literal["bad_request", "protocol_version", "unknown_pass", "bad_resume",
                    "superseded", "no_session", "stale_cursor", "internal"]


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
    """A frame that is not a valid message. ``msg_type`` is its ``type`` when that was
    known and valid (e.g. ``"hello"`` with a bad field), else ``None``."""

    def __init__(self, message: str, msg_type: str | None = None):
        super().__init__(message)
        self.msg_type = msg_type


def parse_consumer(frame: bytes) -> Hello | Ack | Ping | ListPasses | Bye:
    """Strict: a number is not a string, ``true`` is not 1, ``1.0`` is not an int."""
    if len(frame) > MAX_CONSUMER_FRAME_BYTES:
        raise ProtocolError(f"a {len(frame)}-byte frame; the limit is {MAX_CONSUMER_FRAME_BYTES}")
    try:
        return _consumer_adapter.validate_json(frame, strict=True)
    except ValidationError as exc:
        errs = exc.errors(include_input=False, include_url=False)
        loc = errs[0]["loc"] if errs else ()
        tag = str(loc[0]) if len(loc) > 1 and errs[0]["type"] != "union_tag_invalid" else None
        raise ProtocolError(_short(exc), tag) from None
    except ValueError as exc:  # never seen from pydantic-core; still a bad frame, not a crash
        raise ProtocolError(str(exc)[:200]) from None


def parse_station(frame: bytes) -> PassBegin | BatchHeader | PassEnd | Waiting | Pong | Passes | Error:
    try:
        return _station_adapter.validate_json(frame)
    except ValidationError as exc:
        raise ProtocolError(_short(exc)) from None


def _short(exc: ValidationError) -> str:
    # Never echo the input: a hostile frame could be large or hold control characters.
    errs = exc.errors(include_input=False, include_url=False)[:3]
    text = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}"
                     for e in errs)
    return text[:500].encode("ascii", "backslashreplace").decode()


def encode(msg: _Msg) -> bytes:
    return msg.model_dump_json().encode()
