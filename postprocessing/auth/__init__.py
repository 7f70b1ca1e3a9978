"""Authentication of the classical channel (seam 2): Wegman–Carter MAC, pre-shared pool.

    pool = KeyPool.create(path, preshared_bits)   # once, the same bits at both ends
    pool = KeyPool(path)                          # after that
    mac = WegmanCarterMac(pool)
    c = pool.next_counter(Direction.GROUND_TO_SATELLITE)
    tag = mac.sign([header, payload], Direction.GROUND_TO_SATELLITE, c)
    # peer: mac.verify([header, payload], Direction.GROUND_TO_SATELLITE, c, tag)
    pool.replenish(distilled_bits[:256 * k])      # both ends, the same bits

Each message consumes 128 pad bits of its direction; the pool counts bits consumed and
replenished (``pool.level()``). Replays, reordering and tampering raise
:class:`AuthenticationError`; an empty pool :class:`KeyPoolExhaustedError`. A
reconciliation session's untagged messages are authenticated at its end by a
:class:`Transcript` (one pad per direction per session).
"""

from postprocessing.auth.mac import (
    MAX_MESSAGE_BYTES,
    TAG_BYTES,
    WegmanCarterMac,
    encode_for_mac,
    forgery_probability,
)
from postprocessing.auth.pool import (
    HASH_KEY_BITS,
    MIN_INITIAL_BITS,
    PAD_BITS,
    REPLENISH_UNIT_BITS,
    AuthenticationError,
    Direction,
    KeyPool,
    KeyPoolError,
    KeyPoolExhaustedError,
    PoolLevel,
)
from postprocessing.auth.transcript import MAX_TRANSCRIPT_BYTES, Transcript

__all__ = [
    "HASH_KEY_BITS",
    "MAX_MESSAGE_BYTES",
    "MAX_TRANSCRIPT_BYTES",
    "MIN_INITIAL_BITS",
    "PAD_BITS",
    "REPLENISH_UNIT_BITS",
    "TAG_BYTES",
    "AuthenticationError",
    "Direction",
    "KeyPool",
    "KeyPoolError",
    "KeyPoolExhaustedError",
    "PoolLevel",
    "Transcript",
    "WegmanCarterMac",
    "encode_for_mac",
    "forgery_probability",
]
