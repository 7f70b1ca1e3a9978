"""Wegman–Carter authentication of classical messages.

tag = (Poly1305_r(encode(direction, counter, parts)) + s) mod 2^128, with ``r`` the
direction's hash key and ``s`` a fresh 128-bit one-time pad from the :class:`KeyPool`,
computed by the ``cryptography`` package's Poly1305 (key = r ‖ s). Poly1305 is
ε-almost-Δ-universal for addition mod 2^128 with ε = 8⌈L/16⌉/2^106 for messages up to L
bytes (Bernstein 2005), so with truly random one-time pads the tags reveal nothing about
``r`` and each forgery attempt succeeds with probability at most ε, information-
theoretically (Wegman and Carter 1981) — this is Poly1305-AES with AES replaced by a
one-time pad.
"""

from __future__ import annotations

import hmac
import math
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.poly1305 import Poly1305

from postprocessing.auth.pool import PAD_BITS, AuthenticationError, Direction, KeyPool

if TYPE_CHECKING:
    from postprocessing.auth.transcript import Transcript

TAG_BYTES = PAD_BITS // 8
_DOMAIN = b"qkd-station/wegman-carter/v1\x00"
_DIRECTION_CODE = {Direction.GROUND_TO_SATELLITE: 1, Direction.SATELLITE_TO_GROUND: 2}
#: Largest message the MAC takes; bounds the forgery probability (see forgery_probability).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def encode_for_mac(parts: Sequence[bytes], direction: Direction, counter: int) -> bytes:
    """The unambiguous byte string the tag covers: domain, direction, counter, then each
    part length-prefixed (u64 big-endian), so no two (parts, direction, counter) collide."""
    if isinstance(parts, bytes | bytearray | memoryview):
        raise TypeError("message_parts must be a sequence of bytes objects, not one bytes object")
    chunks = [_DOMAIN, struct.pack(">BQI", _DIRECTION_CODE[Direction(direction)], counter, len(parts))]
    total = 0
    for i, part in enumerate(parts):
        if not isinstance(part, bytes | bytearray | memoryview):
            raise TypeError(f"message part {i} must be bytes, got {type(part).__name__}")
        part = bytes(part)
        total += len(part)
        chunks.append(struct.pack(">Q", len(part)))
        chunks.append(part)
    if total > MAX_MESSAGE_BYTES:
        raise ValueError(f"message of {total} bytes exceeds the MAC's limit of {MAX_MESSAGE_BYTES} bytes")
    return b"".join(chunks)


def forgery_probability(message_bytes: int) -> float:
    """Upper bound on one forgery attempt's success for a message of ``message_bytes``
    (with the encoding's 41 + 8·parts bytes of framing counted by the caller, or ignored:
    the bound grows by 2^-103 per 16 bytes)."""
    return 8 * math.ceil(max(1, message_bytes) / 16) / 2.0**106


class WegmanCarterMac:
    """Signs and verifies messages with pads from ``pool``, one pad per (direction, counter).

    The sender calls :meth:`sign` with ``pool.next_counter(direction)``; the receiver
    :meth:`verify` with the counter the message carries. Verification consumes the pad
    whether or not the tag is right (a pad is never used twice), so after a failure the
    session must end: the pass's key is discarded.
    """

    def __init__(self, pool: KeyPool) -> None:
        self._pool = pool

    @property
    def pool(self) -> KeyPool:
        return self._pool

    def sign(self, message_parts: Sequence[bytes], direction: Direction, counter: int,
             transcript: Transcript | None = None) -> bytes:
        """The 16-byte tag of the message ``counter`` in ``direction``; with ``transcript``,
        the tag covers the session's transcript before the message (closing a session)."""
        data = encode_for_mac(message_parts, direction, counter)
        pad = self._pool.take_pad(direction, counter)
        if transcript is not None:
            return transcript.tag(message_parts, direction, counter, pad)
        return _tag(self._pool.hash_key(direction), pad, data)

    def verify(self, message_parts: Sequence[bytes], direction: Direction, counter: int,
               tag: bytes, *, max_gap: int = 0, transcript: Transcript | None = None) -> None:
        """Return if ``tag`` authenticates the message, else raise :class:`AuthenticationError`.

        A replayed or out-of-order counter is refused before any pad is used. ``max_gap``:
        see :meth:`KeyPool.take_pad` (accept a counter that far ahead after a peer's crash).
        ``transcript``: the message closes a session whose untagged messages the tag covers
        too (a mismatch means the two ends saw different session messages).
        """
        d = Direction(direction)
        if not isinstance(tag, bytes) or len(tag) != TAG_BYTES:
            length = len(tag) if isinstance(tag, bytes) else type(tag).__name__
            raise AuthenticationError(f"{d.value} message {counter}: the tag must be {TAG_BYTES} bytes, got {length}")
        try:
            data = encode_for_mac(message_parts, d, counter)
        except (TypeError, ValueError, struct.error) as exc:
            raise AuthenticationError(f"{d.value} message {counter}: malformed message ({exc})") from None
        pad = self._pool.take_pad(d, counter, max_gap=max_gap)
        if transcript is not None:
            if not hmac.compare_digest(transcript.tag(message_parts, d, counter, pad), tag):
                raise AuthenticationError(
                    f"{d.value} message {counter}: the tag over the reconciliation session's transcript "
                    f"({transcript.records} messages) does not match: the two ends saw different session "
                    "messages (tampered, replayed, dropped or reordered)")
            return
        if not hmac.compare_digest(_tag(self._pool.hash_key(d), pad, data), tag):
            raise AuthenticationError(
                f"{d.value} message {counter}: the tag does not match (tampered message or wrong key)")

    def __repr__(self) -> str:
        return f"WegmanCarterMac({self._pool!r})"


def _tag(r: bytes, s: bytes, data: bytes) -> bytes:
    mac = Poly1305(r + s)
    mac.update(data)
    return mac.finalize()
