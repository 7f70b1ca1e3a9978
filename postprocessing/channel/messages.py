"""The classical channel's messages (docs/classical-channel.md is their wire spec).

Every message is an :class:`Envelope` (frame 0, JSON) naming its ``type``, the ground
station, the pass and the message counter, with a ``body`` whose model the type selects,
followed by the binary frames the type lists (``FRAMES``) and, last, the 16-byte
Wegman–Carter tag. Ground → satellite types are requests; each gets exactly one reply
from the satellite (the matching ``*_reply``, or :class:`ErrorReply`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL_VERSION = 1
NAME_PATTERN = r"^[a-z0-9][a-z0-9._\-]{0,63}$"
PASS_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,95}$"

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
PassId = Annotated[str, Field(pattern=PASS_ID_PATTERN)]
Count = Annotated[int, Field(ge=0, lt=1 << 48)]
Text = Annotated[str, Field(max_length=2000)]

# Per message: at most this many announced detections (a 5 s chunk of the Micius pass
# holds ~70,000; a Jinan-1 chunk a few hundred thousand).
MAX_DETECTIONS_PER_CHUNK = 4_000_000
# At most this many bits in a seed (Toeplitz seeds are n + ℓ − 1 bits).
MAX_SEED_BITS = 1 << 28


class Body(BaseModel):
    """Base of every message body: strict, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    TYPE: ClassVar[str]
    FRAMES: ClassVar[tuple[str, ...]] = ()


class Counters(Body):
    """Next message counters per direction, as the sender's pool has them."""

    ground_to_satellite: Count
    satellite_to_ground: Count


# -- requests (ground → satellite) ------------------------------------------------------

class Hello(Body):
    """Open (or resume) the pass session; carries what both sides must agree on."""

    TYPE: ClassVar[str] = "hello"
    protocol: Literal[1] = PROTOCOL_VERSION
    rep_rate_hz: Annotated[float, Field(gt=0, le=1e11)]
    sync_rate_hz: Annotated[float, Field(gt=0, le=1e9)]
    counters: Counters


class Sift(Body):
    """Bob's detections of one chunk: frames ``pulse_index`` (int64 LE, strictly
    increasing) and ``basis`` (packed bits, 1 = X)."""

    TYPE: ClassVar[str] = "sift"
    FRAMES: ClassVar[tuple[str, ...]] = ("pulse_index", "basis")
    chunk: Annotated[int, Field(ge=0, lt=1 << 31)]
    first_batch: Count
    last_batch: Count
    detections: Annotated[int, Field(ge=0, le=MAX_DETECTIONS_PER_CHUNK)]


#: EC ops: LDPC (``syndromes``, ``reveal``, ``finish``; postprocessing.reconciliation) and
#: Cascade (``cascade_setup``, ``cascade_parities``, ``cascade_finish``;
#: postprocessing.reconciliation.cascade). A session's first op fixes its method.
#: ``cascade_vacuum`` (Cascade sessions only): Alice discloses her bits of the session's
#: vacuum-class pulses outright (each counted as one leaked bit); Cascade runs over the rest.
EcOpName = Literal["syndromes", "reveal", "finish", "cascade_setup", "cascade_parities", "cascade_finish",
                   "cascade_vacuum"]


#: Delayed authentication (docs/classical-channel.md, "Session transcripts"): these ops of a
#: Cascade session travel untagged and are covered by the transcript tags of the session's
#: closing op; the opening op starts (or restarts) the session's transcript.
TRANSCRIPT_OPS: frozenset[str] = frozenset({"cascade_vacuum", "cascade_setup", "cascade_parities"})
TRANSCRIPT_OPENING = "cascade_vacuum"
TRANSCRIPT_CLOSING = "cascade_finish"


class VacuumDiscloseRequest(BaseModel):
    """Bob asks for Alice's bits of the session's vacuum-class pulses, in sifted order:
    with a ~50 % error rate they cost Cascade far more parities (about log2 of the block
    per error) than disclosing them (one bit each, f = 1 at h(0.5) = 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    vacuum_bits: Annotated[int, Field(ge=0, lt=1 << 32)]


class VacuumDiscloseReply(BaseModel):
    """Alice's vacuum-class bits of the session, packed (``np.packbits``, big-endian)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    vacuum_bits: Annotated[int, Field(ge=0, lt=1 << 32)]
    bits: Annotated[bytes, Field(max_length=1 << 29)]


class EcOp(Body):
    """One reconciliation round trip of EC session ``session`` over the sifted-key range
    ``[offset_bits, offset_bits + length_bits)``. ``request`` is the reconciliation
    stage's request model (``op`` names it) dumped to JSON, each ``bytes`` field replaced
    by ``{"$frame": i}``, the i-th binary frame after frame 0."""

    TYPE: ClassVar[str] = "ec"
    session: Annotated[int, Field(ge=0, lt=1 << 20)]
    offset_bits: Count
    length_bits: Annotated[int, Field(ge=1, lt=1 << 32)]
    op: EcOpName
    request: dict[str, Any]


class ClassCountsMsg(Body):
    sifted_bits: Count
    errors: Count


class BasisCountsMsg(Body):
    signal: ClassCountsMsg
    decoy: ClassCountsMsg
    vacuum: ClassCountsMsg


class Finalize(Body):
    """End of the pass's quantum data: Bob's counts of the kept (reconciled) bits per
    basis and class, with the errors error correction found."""

    TYPE: ClassVar[str] = "finalize"
    chunks: Count
    sifted_bits: Count
    kept_bits: Count
    ec_sessions: Count
    leaked_ec_bits: Count
    counts_z: BasisCountsMsg
    counts_x: BasisCountsMsg


class Confirm(Body):
    """Bob's verdict after verification; on ``verified`` both store the key."""

    TYPE: ClassVar[str] = "confirm"
    verified: bool
    final_bits: Count
    reason: Text = ""


class Abort(Body):
    """Bob discards the pass (authentication failure, inconsistency, operator)."""

    TYPE: ClassVar[str] = "abort"
    reason: Text


# -- replies (satellite → ground) -------------------------------------------------------

class HelloReply(Body):
    TYPE: ClassVar[str] = "hello_reply"
    state: Literal["new", "open", "finalized", "stored", "aborted"]
    chunks_answered: Count
    sifted_bits: Count
    next_ec_session: Count
    counters: Counters
    reason: Text = ""


class SiftReply(Body):
    """Alice's bases and classes for the announced pulses: frames ``basis`` (packed bits)
    and ``intensity_class`` (one uint8 per pulse: 0 signal, 1 decoy, 2 vacuum)."""

    TYPE: ClassVar[str] = "sift_reply"
    FRAMES: ClassVar[tuple[str, ...]] = ("basis", "intensity_class")
    chunk: Annotated[int, Field(ge=0, lt=1 << 31)]
    detections: Annotated[int, Field(ge=0, le=MAX_DETECTIONS_PER_CHUNK)]
    sifted_bits_total: Count


class EcReply(Body):
    TYPE: ClassVar[str] = "ec_reply"
    session: Annotated[int, Field(ge=0, lt=1 << 20)]
    op: EcOpName
    reply: dict[str, Any]


class FinalizeReply(Body):
    """Alice's estimate and seeds: frames ``verification_seed``, ``verification_tag``
    (her tag of her kept key) and ``pa_seed`` (packed Toeplitz seed bits)."""

    TYPE: ClassVar[str] = "finalize_reply"
    FRAMES: ClassVar[tuple[str, ...]] = ("verification_seed", "verification_tag", "pa_seed")
    key_length_bits: Count
    leaked_ec_bits: Count
    kept_bits: Count
    pa_seed_bits: Annotated[int, Field(ge=0, le=MAX_SEED_BITS)]
    replenish_bits: Count
    epsilon_sec: Annotated[float, Field(gt=0, lt=1)]
    epsilon_cor: Annotated[float, Field(gt=0, lt=1)]
    reason: Text = ""


class ConfirmReply(Body):
    TYPE: ClassVar[str] = "confirm_reply"
    stored: bool
    stored_bits: Count
    replenished_bits: Count


class AbortReply(Body):
    TYPE: ClassVar[str] = "abort_reply"
    discarded: bool


class ErrorReply(Body):
    """A refusal. ``code``: ``bad_message``, ``auth_failed``, ``unknown_station``,
    ``bad_state``, ``refused`` (a stage refused the request), ``internal``."""

    TYPE: ClassVar[str] = "error"
    code: Literal["bad_message", "auth_failed", "unknown_station", "bad_state", "refused",
                  "internal", "aborted"]
    message: Text


REQUESTS: dict[str, type[Body]] = {m.TYPE: m for m in (Hello, Sift, EcOp, Finalize, Confirm, Abort)}
REPLIES: dict[str, type[Body]] = {m.TYPE: m for m in (HelloReply, SiftReply, EcReply, FinalizeReply,
                                                       ConfirmReply, AbortReply, ErrorReply)}
REPLY_OF: dict[str, str] = {"hello": "hello_reply", "sift": "sift_reply", "ec": "ec_reply",
                            "finalize": "finalize_reply", "confirm": "confirm_reply",
                            "abort": "abort_reply"}


class Envelope(BaseModel):
    """Frame 0 of every message (JSON, UTF-8)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    type: Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")]
    station: Name
    pass_id: PassId
    counter: Count
    body: dict[str, Any]


__all__ = [
    "MAX_DETECTIONS_PER_CHUNK",
    "TRANSCRIPT_CLOSING",
    "TRANSCRIPT_OPENING",
    "TRANSCRIPT_OPS",
    "PROTOCOL_VERSION",
    "REPLIES",
    "REPLY_OF",
    "REQUESTS",
    "Abort",
    "AbortReply",
    "BasisCountsMsg",
    "Body",
    "ClassCountsMsg",
    "Confirm",
    "ConfirmReply",
    "Counters",
    "EcOp",
    "EcReply",
    "Envelope",
    "ErrorReply",
    "Finalize",
    "FinalizeReply",
    "Hello",
    "HelloReply",
    "Sift",
    "SiftReply",
]
