"""Delayed Wegman–Carter authentication of a reconciliation session's transcript.

A Cascade session is ~100–160 round trips. Tagging each message costs a 128-bit pad per
message; instead the messages inside the session travel untagged and both ends feed every
one of them, in order, with its direction and every frame length-prefixed, into a
:class:`Transcript`. The session's last exchange (``cascade_finish`` and its reply) is
tagged as usual, but each tag covers the whole transcript followed by the message itself:

    tag = (Poly1305_r( T ‖ 0x00 ‖ >Q records ‖ encode_for_mac(parts, direction, counter) ) + s)
          mod 2^128,  with  T = "qkd-station/ec-transcript/v1\\0" ‖ record ‖ record ‖ …
    record = >B direction code (1 ground→satellite, 2 satellite→ground) ‖ >I frame count ‖
             (>Q frame length ‖ frame bytes) per frame (every frame but the empty tag)

with ``r`` the direction's hash key and ``s`` the pad of the message's counter, so the
session costs one pad per direction whatever its length. This is the ordinary
Wegman–Carter MAC of one (long) message: the polynomial hash is computed incrementally as
the records arrive, which is exact because Poly1305 is (Σ blocks · r^i mod 2^130 − 5) + s;
running it with s = 0 and adding the pad at the end gives the same tag
(:func:`tests.postprocessing.test_auth` checks against a one-shot Poly1305). The encoding is
injective (records are self-delimiting, the 0x00 marker ends them, and the domain string
differs from :func:`~postprocessing.auth.mac.encode_for_mac`'s), so the forgery bound is
Poly1305's for the transcript's length L: 8⌈L/16⌉/2^106 per attempt (2^-77 at the 1 GiB
limit below).

Nothing of the session may be used before both tags have been checked: the caller keeps
the session's bits in memory only and discards them (and the pass) on a mismatch.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from cryptography.hazmat.primitives.poly1305 import Poly1305

from postprocessing.auth.mac import _DIRECTION_CODE, encode_for_mac
from postprocessing.auth.pool import AuthenticationError, Direction, KeyPool

TRANSCRIPT_DOMAIN = b"qkd-station/ec-transcript/v1\x00"
#: Largest transcript accepted (the forgery bound grows with it): 1 GiB, ε ≤ 2^-77.
MAX_TRANSCRIPT_BYTES = 1 << 30
_MOD = 1 << 128


class Transcript:
    """The running Wegman–Carter hash of one session's untagged messages, both directions.

    ``record(direction, frames)`` for every untagged message sent or received, in the
    order of the conversation; then :meth:`tag` once per direction for the closing
    message. Holds one Poly1305 state per direction (keyed by that direction's ``r``),
    never the messages themselves. Never shows a key or a hash in its repr.
    """

    def __init__(self, pool: KeyPool, label: str = "") -> None:
        self.label = label
        self._states = {d: Poly1305(pool.hash_key(d) + bytes(16)) for d in Direction}
        for state in self._states.values():
            state.update(TRANSCRIPT_DOMAIN)
        self._closed: set[Direction] = set()
        self.records = 0
        self.bytes = len(TRANSCRIPT_DOMAIN)

    def record(self, direction: Direction, frames: Sequence[bytes]) -> None:
        """Add one untagged message (its frames, without the empty tag frame)."""
        if self._closed:
            raise AuthenticationError(f"transcript {self.label}: a message after the session was closed")
        d = Direction(direction)
        chunks = [struct.pack(">BI", _DIRECTION_CODE[d], len(frames))]
        for f in frames:
            chunks.append(struct.pack(">Q", len(f)))
            chunks.append(bytes(f))
        data = b"".join(chunks)
        if self.bytes + len(data) > MAX_TRANSCRIPT_BYTES:
            raise AuthenticationError(f"transcript {self.label} would exceed {MAX_TRANSCRIPT_BYTES} bytes")
        for state in self._states.values():
            state.update(data)
        self.records += 1
        self.bytes += len(data)

    def tag(self, message_parts: Sequence[bytes], direction: Direction, counter: int, pad: bytes) -> bytes:
        """The closing message's tag in ``direction`` (each direction closes once)."""
        d = Direction(direction)
        if d in self._closed:
            raise AuthenticationError(f"transcript {self.label}: {d.value} was already closed")
        self._closed.add(d)
        state = self._states[d]
        state.update(b"\x00" + struct.pack(">Q", self.records))
        state.update(encode_for_mac(message_parts, d, counter))
        h = int.from_bytes(state.finalize(), "little")
        return ((h + int.from_bytes(pad, "little")) % _MOD).to_bytes(16, "little")

    def __repr__(self) -> str:
        return f"Transcript({self.label!r}, {self.records} records, {self.bytes} bytes)"


__all__ = ["MAX_TRANSCRIPT_BYTES", "TRANSCRIPT_DOMAIN", "Transcript"]
