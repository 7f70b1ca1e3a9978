"""Cascade's messages between Bob (ground, asks) and Alice (satellite, answers).

Message flow of one session (one sifted-key string both sides index alike)::

    Bob -> Alice  CascadeSetupRequest(key_bits, block_sizes)   Alice -> Bob  CascadeSetupReply(seed)
    Bob -> Alice  ParityRequest(index 1, ranges)               Alice -> Bob  ParityReply(parities)
    ...           ParityRequest(index 2, 3, ...)               ...
    Bob -> Alice  CascadeFinishRequest(requests, leaked)       Alice -> Bob  CascadeFinishReply(leaked)

Each request/reply pair is one round trip. Bob sends no bit of his key. Alice reveals
one parity per requested range, each counted as exactly one bit of leakage λ_EC.

Ranges are half-open ``[start, end)`` in the *permuted* order of pass ``p``: position
``j`` of pass ``p`` is key bit ``permutation_p[j]`` (see :mod:`.permutations`). A range's
parity is the XOR of Alice's key bits at those positions.

Binary payloads are ``bytes``: ``passes`` one uint8 per range, ``starts``/``ends`` one
little-endian uint32 per range, ``parities`` packed bits (``np.packbits``, big-endian bit
order, the padding bits of the last byte zero). The models validate sizes and caps so a
hostile message is refused with a clear reason; what a request may ask relative to the
session (pass and range inside the key, request index in sequence, total leakage cap) is
checked by Alice.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Passes a session may have (each needs one permutation of the key on both sides).
MAX_PASSES = 32
#: Ranges one ParityRequest may carry: bounds the work and the reply size of one message
#: (a pass's top level at 1 % QBER over 10^6 bits is ~14 k ranges).
MAX_RANGES_PER_REQUEST = 1 << 20
#: Longest key one session reconciles (ranges are uint32; Alice holds a permutation per pass).
MAX_KEY_BITS = 1 << 26
#: Length of the public permutation seed Alice sends.
SEED_BYTES = 32
#: The permutation derivation both sides use (see permutations.py).
PERMUTATION_SCHEME = "pcg64-permutation-v1"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class CascadeSetupRequest(_Message):
    """Bob opens a session: the key length both sides hold and the block size per pass.

    Bob picks ``block_sizes`` from his QBER estimate (they are public). Alice answers once
    per session; a second setup is refused.
    """

    key_bits: Annotated[int, Field(ge=2, le=MAX_KEY_BITS)]
    block_sizes: Annotated[list[Annotated[int, Field(ge=2, le=MAX_KEY_BITS)]],
                           Field(min_length=1, max_length=MAX_PASSES)]

    @model_validator(mode="after")
    def _sizes(self) -> CascadeSetupRequest:
        for p, k in enumerate(self.block_sizes):
            if k > self.key_bits:
                raise ValueError(f"block_sizes[{p}] = {k} exceeds key_bits {self.key_bits}")
        return self


class CascadeSetupReply(_Message):
    """Alice's fresh public seed of the passes' permutations (32 bytes)."""

    scheme: Annotated[str, Field(pattern=r"^[a-z0-9\-]{1,32}$")] = PERMUTATION_SCHEME
    seed: Annotated[bytes, Field(min_length=SEED_BYTES, max_length=SEED_BYTES)]


def _check_array_field(name: str, data: bytes, count: int, width: int) -> None:
    if len(data) != count * width:
        raise ValueError(f"{name} must be {count * width} bytes for {count} ranges "
                         f"({width} per range), got {len(data)}")


class ParityRequest(_Message):
    """Bob asks for the parities of ``range_count`` ranges (one round trip).

    ``request_index`` numbers the session's parity requests 1, 2, 3, ...: Alice answers
    each index once and only in order, so a replayed or reordered request is refused (a
    replay must not make her disclose more, and the leakage count stays exact).
    """

    request_index: Annotated[int, Field(ge=1, lt=1 << 31)]
    range_count: Annotated[int, Field(ge=1, le=MAX_RANGES_PER_REQUEST)]
    passes: bytes
    starts: bytes
    ends: bytes

    @model_validator(mode="after")
    def _sizes(self) -> ParityRequest:
        _check_array_field("passes", self.passes, self.range_count, 1)
        _check_array_field("starts", self.starts, self.range_count, 4)
        _check_array_field("ends", self.ends, self.range_count, 4)
        return self

    @classmethod
    def build(cls, request_index: int, passes: np.ndarray, starts: np.ndarray,
              ends: np.ndarray) -> ParityRequest:
        """A request from arrays (pass indices, starts, ends; equal lengths)."""
        return cls(request_index=request_index, range_count=int(passes.size),
                   passes=np.asarray(passes, dtype=np.uint8).tobytes(),
                   starts=np.asarray(starts, dtype="<u4").tobytes(),
                   ends=np.asarray(ends, dtype="<u4").tobytes())

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(passes uint8, starts int64, ends int64) decoded from the payload."""
        return (np.frombuffer(self.passes, dtype=np.uint8),
                np.frombuffer(self.starts, dtype="<u4").astype(np.int64),
                np.frombuffer(self.ends, dtype="<u4").astype(np.int64))


class ParityReply(_Message):
    """Alice's parities of the ranges of request ``request_index``, packed, in order."""

    request_index: Annotated[int, Field(ge=1, lt=1 << 31)]
    range_count: Annotated[int, Field(ge=1, le=MAX_RANGES_PER_REQUEST)]
    parities: bytes

    @model_validator(mode="after")
    def _size(self) -> ParityReply:
        expected = (self.range_count + 7) // 8
        if len(self.parities) != expected:
            raise ValueError(f"parities must be {expected} bytes for {self.range_count} "
                             f"ranges, got {len(self.parities)}")
        pad = (-self.range_count) % 8
        if pad and self.parities[-1] & ((1 << pad) - 1):
            raise ValueError("the padding bits after the last parity are not zero")
        return self

    def bits(self) -> np.ndarray:
        """The parities as a uint8 0/1 array of ``range_count``."""
        return np.unpackbits(np.frombuffer(self.parities, dtype=np.uint8))[: self.range_count]


class CascadeFinishRequest(_Message):
    """Bob ends the session: how many parity requests he sent and parities he counts.

    Alice refuses a count other than hers (the two sides' λ_EC must agree) and answers no
    parity request after it.
    """

    parity_requests: Annotated[int, Field(ge=0, lt=1 << 31)]
    leaked_bits: Annotated[int, Field(ge=0, le=MAX_KEY_BITS)]


class CascadeFinishReply(_Message):
    """Alice's count of the parities she revealed (λ_EC), equal to Bob's."""

    leaked_bits: Annotated[int, Field(ge=0, le=MAX_KEY_BITS)]


__all__ = [
    "MAX_KEY_BITS",
    "MAX_PASSES",
    "MAX_RANGES_PER_REQUEST",
    "PERMUTATION_SCHEME",
    "SEED_BYTES",
    "CascadeFinishReply",
    "CascadeFinishRequest",
    "CascadeSetupReply",
    "CascadeSetupRequest",
    "ParityReply",
    "ParityRequest",
]
