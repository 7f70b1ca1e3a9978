"""Key confirmation after error correction: a universal hash sized to ε_cor.

Both sides hash their corrected key with the same fresh, public, uniformly random seed and
compare tags; the key is kept only if they match. The hash is a composition of two
universal families:

1. Poly1305 with a fresh random ``r`` and ``s = 0`` (the ``cryptography`` package): for
   distinct inputs of at most L bytes, P_r[collision] ≤ 8⌈L/16⌉/2^106 (Bernstein 2005,
   Theorem 3.3 with g = 0);
2. a Toeplitz matrix (random seed of 128 + t − 1 bits) from 128 to t bits: 2-universal,
   P[collision] = 2^−t for distinct 128-bit inputs.

So two different keys give the same tag with probability ≤ 8⌈L/16⌉/2^106 + 2^−t. With
t = ⌈log2(2/ε_cor)⌉ the second term is ≤ ε_cor/2, and keys up to L bytes with the first
term ≤ ε_cor/2 are accepted (for ε_cor = 1e-15 that is L ≤ 8·10^16 bytes). The tag is
public: it reveals at most t bits about the key, which the key length subtracts (the
log2(2/ε_cor) term of Lim et al. Eq. 1, rounded up to t).
"""

from __future__ import annotations

import hmac
import math
import os
import struct
from collections.abc import Callable

import numpy as np
from cryptography.hazmat.primitives.poly1305 import Poly1305
from pydantic import BaseModel, ConfigDict, Field, model_validator

from postprocessing.amplification import toeplitz_hash
from postprocessing.bits import as_bits, pack_bits, unpack_bits

_DOMAIN = b"qkd-station/verification/v1\x00"
_POLY_BITS = 128
_POLY_KEY_BYTES = 16
#: ε_cor below this would need a tag longer than the Poly1305 stage can back (2^-100).
MIN_EPSILON_COR = 2.0**-100


def verification_tag_bits(epsilon_cor: float) -> int:
    """t = ⌈log2(2/ε_cor)⌉: the tag length (and the bits it leaks). 51 for ε_cor = 1e-15."""
    if not MIN_EPSILON_COR <= epsilon_cor < 1.0:
        raise ValueError(f"epsilon_cor must be in [2^-100, 1), got {epsilon_cor}")
    return math.ceil(math.log2(2.0 / epsilon_cor) - 1e-12)


def collision_probability(key_bits: int, tag_bits: int) -> float:
    """Upper bound on two different ``key_bits``-bit keys giving the same ``tag_bits`` tag."""
    message_bytes = len(_DOMAIN) + 8 + (key_bits + 7) // 8
    return 8 * math.ceil(message_bytes / 16) / 2.0**106 + 2.0**-tag_bits


class VerificationSeed(BaseModel):
    """The public randomness of one verification: Poly1305 ``r`` and the Toeplitz seed.

    Fresh for every verification, chosen after the keys are fixed (by Alice), sent in the
    clear. ``to_bytes``/``from_bytes`` give its wire form: 16 bytes of ``r`` then the
    packed Toeplitz seed of 127 + ``tag_bits`` bits.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tag_bits: int = Field(ge=1, le=101)
    poly_key: bytes = Field(min_length=_POLY_KEY_BYTES, max_length=_POLY_KEY_BYTES)
    toeplitz_seed: bytes

    @model_validator(mode="after")
    def _seed_length(self) -> VerificationSeed:
        expected = (_POLY_BITS + self.tag_bits - 1 + 7) // 8
        if len(self.toeplitz_seed) != expected:
            raise ValueError(f"toeplitz_seed must be {expected} bytes for a {self.tag_bits}-bit tag, "
                             f"got {len(self.toeplitz_seed)}")
        unpack_bits(self.toeplitz_seed, _POLY_BITS + self.tag_bits - 1)  # padding bits zero
        return self

    def to_bytes(self) -> bytes:
        return self.poly_key + self.toeplitz_seed

    @classmethod
    def from_bytes(cls, data: bytes, tag_bits: int) -> VerificationSeed:
        return cls(tag_bits=tag_bits, poly_key=data[:_POLY_KEY_BYTES], toeplitz_seed=data[_POLY_KEY_BYTES:])


def new_verification_seed(epsilon_cor: float, *,
                          random_bytes: Callable[[int], bytes] = os.urandom) -> VerificationSeed:
    """A fresh seed for a tag sized to ``epsilon_cor`` (from the OS's CSPRNG by default)."""
    t = verification_tag_bits(epsilon_cor)
    n_seed = _POLY_BITS + t - 1
    seed_bits = unpack_bits(random_bytes((n_seed + 7) // 8), ((n_seed + 7) // 8) * 8)[:n_seed]
    return VerificationSeed(tag_bits=t, poly_key=random_bytes(_POLY_KEY_BYTES),
                            toeplitz_seed=pack_bits(seed_bits))


def verification_tag(key_bits: np.ndarray, seed: VerificationSeed) -> bytes:
    """The packed ``seed.tag_bits``-bit tag of the corrected key (public; leaks ≤ t bits)."""
    bits = as_bits(key_bits, name="key_bits")
    mac = Poly1305(seed.poly_key + bytes(16))  # s = 0: a plain universal hash
    mac.update(_DOMAIN)
    mac.update(struct.pack(">Q", bits.size))
    mac.update(pack_bits(bits))
    digest = np.unpackbits(np.frombuffer(mac.finalize(), dtype=np.uint8))
    toeplitz = unpack_bits(seed.toeplitz_seed, _POLY_BITS + seed.tag_bits - 1)
    return pack_bits(toeplitz_hash(digest, toeplitz, seed.tag_bits))


def tags_match(tag_a: bytes, tag_b: bytes) -> bool:
    """Constant-time comparison of two tags."""
    return hmac.compare_digest(tag_a, tag_b)


__all__ = [
    "MIN_EPSILON_COR",
    "VerificationSeed",
    "collision_probability",
    "new_verification_seed",
    "tags_match",
    "verification_tag",
    "verification_tag_bits",
]
