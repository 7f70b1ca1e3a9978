"""Framing and authentication of classical-channel messages.

A message is ZeroMQ multipart: frame 0 the :class:`~.messages.Envelope` as JSON, then the
binary frames its body type lists, then the 16-byte Wegman–Carter tag over every frame
before it, with the sender's direction and the envelope's counter
(:class:`postprocessing.auth.WegmanCarterMac`). Size limits are checked before anything
is parsed; the tag is checked before the body is acted on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from postprocessing.auth import AuthenticationError, Direction, KeyPool, Transcript, WegmanCarterMac
from postprocessing.channel.messages import REPLIES, REQUESTS, Body, Envelope

TAG_BYTES = 16
MAX_FRAMES = 10
MAX_HEADER_BYTES = 1 << 20  # frame 0: JSON (an EC request of 4096 blocks is ~600 KiB)
MAX_FRAME_BYTES = 48 << 20  # one binary frame
MAX_MESSAGE_BYTES = 64 << 20  # the whole message (the MAC's own limit)
# A resuming peer may have burnt a few pads (consumed, then crashed before sending): a
# hello may skip at most this many counters; anything else must be the next counter.
MAX_COUNTER_SKIP = 16


class ChannelError(RuntimeError):
    """A message broke the framing rules, or the peer refused / went silent."""

    def __init__(self, message: str, code: str = "bad_message") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Message:
    """A decoded message: envelope, typed body, its binary frames by name, and the tag."""

    envelope: Envelope
    body: Body
    frames: dict[str, bytes]
    extra_frames: tuple[bytes, ...]  # frames referenced from ``body`` dicts ({"$frame": i})
    parts: tuple[bytes, ...]  # everything the tag covers
    tag: bytes

    def __repr__(self) -> str:
        return (f"Message({self.envelope.type} #{self.envelope.counter} from "
                f"{self.envelope.station} for {self.envelope.pass_id})")


def encode(body: Body, *, station: str, pass_id: str, mac: WegmanCarterMac | None,
           direction: Direction, frames: dict[str, bytes] | None = None,
           extra_frames: tuple[bytes, ...] = (), counter: int | None = None,
           transcript: Transcript | None = None) -> list[bytes]:
    """Frames of one message, signed with the next counter of ``direction``.

    ``mac=None`` sends an unauthenticated message (an :class:`ErrorReply` to a message
    that could not be authenticated, or a message inside a reconciliation session, whose
    transcript the session's closing tags cover; its tag frame is empty). ``transcript``
    (with ``mac``): the message closes that session, its tag covers the transcript too."""
    named = frames or {}
    if set(named) != set(body.FRAMES):
        raise ChannelError(f"{body.TYPE}: frames {sorted(named)} given, the type has "
                           f"{list(body.FRAMES)}", "internal")
    if counter is None:
        counter = mac.pool.next_counter(direction) if mac is not None else 0
    env = Envelope(type=body.TYPE, station=station, pass_id=pass_id, counter=counter,
                   body=body.model_dump(mode="json"))
    parts = [env.model_dump_json().encode()] + [bytes(named[n]) for n in body.FRAMES] + list(extra_frames)
    tag = mac.sign(parts, direction, counter, transcript) if mac is not None else b""
    return parts + [tag]


def decode(raw: list[bytes], *, replies: bool) -> Message:
    """Parse (not authenticate) one message; raises :class:`ChannelError` naming the rule."""
    if not 2 <= len(raw) <= MAX_FRAMES:
        raise ChannelError(f"a message has 2 to {MAX_FRAMES} frames, got {len(raw)}")
    if len(raw[0]) > MAX_HEADER_BYTES:
        raise ChannelError(f"frame 0 is {len(raw[0])} bytes, the limit is {MAX_HEADER_BYTES}")
    for i, f in enumerate(raw[1:-1], 1):
        if len(f) > MAX_FRAME_BYTES:
            raise ChannelError(f"frame {i} is {len(f)} bytes, the limit is {MAX_FRAME_BYTES}")
    if sum(map(len, raw)) > MAX_MESSAGE_BYTES:
        raise ChannelError(f"the message exceeds {MAX_MESSAGE_BYTES} bytes")
    try:
        env = Envelope.model_validate_json(raw[0])
    except ValidationError as exc:
        raise ChannelError(f"frame 0 is not a valid envelope: {_first_error(exc)}") from exc
    table = REPLIES if replies else REQUESTS
    model = table.get(env.type)
    if model is None:
        raise ChannelError(f"unknown message type {env.type!r}; expected one of {sorted(table)}")
    try:
        body = model.model_validate(env.body)
    except ValidationError as exc:
        raise ChannelError(f"{env.type}: invalid body: {_first_error(exc)}") from exc
    binary = raw[1:-1]
    if len(binary) < len(model.FRAMES):
        raise ChannelError(f"{env.type} carries {len(binary)} binary frames, needs "
                           f"{len(model.FRAMES)} ({', '.join(model.FRAMES)})")
    named = dict(zip(model.FRAMES, binary, strict=False))
    extra = tuple(binary[len(model.FRAMES):])
    tag = raw[-1]
    return Message(env, body, named, extra, tuple(raw[:-1]), tag)


def verify(msg: Message, mac: WegmanCarterMac, direction: Direction, *, allow_skip: bool = False,
           transcript: Transcript | None = None) -> None:
    """Check the tag (consuming the pad of the message's counter). With ``allow_skip``
    (a hello), first burn up to :data:`MAX_COUNTER_SKIP` pads the peer burnt in a crash.
    With ``transcript`` the message closes a reconciliation session: its tag must cover
    that session's transcript as well."""
    if len(msg.tag) != TAG_BYTES:
        raise AuthenticationError(f"{direction.value} message {msg.envelope.counter} "
                                  f"({msg.envelope.type}) has no {TAG_BYTES}-byte tag")
    if allow_skip:
        burn_to(mac.pool, direction, msg.envelope.counter)
    mac.verify(list(msg.parts), direction, msg.envelope.counter, msg.tag, transcript=transcript)


def burn_to(pool: KeyPool, direction: Direction, counter: int) -> int:
    """Consume (discard) pads until ``direction``'s next counter is ``counter``."""
    expected = pool.next_counter(direction)
    gap = counter - expected
    if gap <= 0:
        return 0
    if gap > MAX_COUNTER_SKIP:
        raise AuthenticationError(f"{direction.value} message {counter} skips {gap} counters "
                                  f"(expected {expected}; at most {MAX_COUNTER_SKIP} may be burnt)")
    for c in range(expected, counter):
        pool.take_pad(direction, c)
    return gap


# -- binary fields inside nested models ------------------------------------------------

def lift_bytes(obj: Any, frames: list[bytes]) -> Any:
    """``obj`` (a model's python dump) with every ``bytes`` value moved to ``frames``
    and replaced by ``{"$frame": index}``."""
    if isinstance(obj, bytes | bytearray | memoryview):
        frames.append(bytes(obj))
        return {"$frame": len(frames) - 1}
    if isinstance(obj, dict):
        return {k: lift_bytes(v, frames) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [lift_bytes(v, frames) for v in obj]
    return obj


def lower_bytes(obj: Any, frames: tuple[bytes, ...], used: set[int] | None = None) -> Any:
    """Inverse of :func:`lift_bytes`; every frame must be referenced exactly once."""
    top = used is None
    used = set() if used is None else used
    if isinstance(obj, dict):
        if set(obj) == {"$frame"}:
            i = obj["$frame"]
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(frames) or i in used:
                raise ChannelError(f"a binary reference {{'$frame': {i!r}}} is out of range or repeated")
            used.add(i)
            return frames[i]
        out: Any = {k: lower_bytes(v, frames, used) for k, v in obj.items()}
    elif isinstance(obj, list):
        out = [lower_bytes(v, frames, used) for v in obj]
    else:
        out = obj
    if top and len(used) != len(frames):
        raise ChannelError(f"{len(frames) - len(used)} binary frames are not referenced by the body")
    return out


def dump_model(model: BaseModel) -> tuple[dict[str, Any], tuple[bytes, ...]]:
    """A stage's message model as a JSON-able dict and its binary frames."""
    frames: list[bytes] = []
    lifted = lift_bytes(model.model_dump(), frames)
    json.dumps(lifted)  # fail here, not on the wire, if something is not JSON-able
    return lifted, tuple(frames)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
    return f"{loc}: {err.get('msg', 'invalid')} ({exc.error_count()} error(s))"


__all__ = [
    "MAX_COUNTER_SKIP",
    "MAX_FRAMES",
    "MAX_FRAME_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_MESSAGE_BYTES",
    "TAG_BYTES",
    "ChannelError",
    "Message",
    "burn_to",
    "decode",
    "dump_model",
    "encode",
    "lift_bytes",
    "lower_bytes",
    "verify",
]
