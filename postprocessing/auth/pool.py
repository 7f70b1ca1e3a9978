"""The pre-shared authentication key pool: durable, 0600, consumed in lockstep.

Both ends hold a pool file made from the same pre-shared bits. The pool keeps, per
direction, a Poly1305 hash key (128 bits, drawn once at creation, reused by Wegman–Carter
design) and a stream of one-time pads, 128 bits each. The pad for message ``counter`` in a
direction is the ``counter``-th pad of that direction's stream, so the two ends agree on it
whatever the interleaving of the two directions. Replenishment appends to both streams.

Every consumption is written (temp file, fsync, atomic rename, fsync of the directory)
before the pad is used, so a crash can lose a pad but never reuse one.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
from enum import StrEnum
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from postprocessing.bits import as_bits, pack_bits
from station.files import write_durably

#: Bits of one one-time pad (one Poly1305 ``s``) and of one hash key (Poly1305 ``r``).
PAD_BITS = 128
HASH_KEY_BITS = 128
#: Replenishment comes in whole pairs of pads (one per direction).
REPLENISH_UNIT_BITS = 2 * PAD_BITS
#: Initial pool: the two hash keys plus at least one pad per direction.
MIN_INITIAL_BITS = 2 * HASH_KEY_BITS + REPLENISH_UNIT_BITS

_FORMAT = "qkd-station-auth-pool"
_VERSION = 1
_MAX_POOL_FILE_BYTES = 256 * 1024 * 1024  # a pool larger than this is not ours


class Direction(StrEnum):
    """Who sends a message: each direction has its own counter and pad stream."""

    GROUND_TO_SATELLITE = "ground_to_satellite"
    SATELLITE_TO_GROUND = "satellite_to_ground"


class AuthenticationError(Exception):
    """A message failed authentication (wrong tag, replayed or out-of-order counter).

    The message names the direction, the counter and the reason, never a tag or key bit.
    """


class KeyPoolError(Exception):
    """The pool file is missing, malformed, locked by another process or not ours."""


class KeyPoolExhaustedError(KeyPoolError):
    """No pad is left in a direction: replenish the pool from distilled key first."""


class PoolLevel(BaseModel):
    """Counts of the pool, never its bits."""

    model_config = ConfigDict(frozen=True)

    available_bits: dict[Direction, int]  # pad bits left per direction
    next_counter: dict[Direction, int]
    consumed_bits: int = Field(ge=0)  # hash keys + pads used or burnt
    replenished_bits: int = Field(ge=0)  # added after creation
    initial_bits: int = Field(ge=0)


class KeyPool:
    """The durable pool at ``path`` (made by :meth:`create`), locked for this process.

    ``take_pad(direction, counter)`` hands out the pad of that message, once: a counter
    below the next one is a replay, above it a reordered or lost message; both raise
    :class:`AuthenticationError`. Close with :meth:`close` or use as a context manager.
    """

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock_fd = _lock(self._path)
        try:
            self._state = _read(self._path)
        except BaseException:
            os.close(self._lock_fd)
            raise

    @classmethod
    def create(cls, path: Path, initial_bits: np.ndarray) -> KeyPool:
        """Make a new pool file from the pre-shared bits (both ends use the same bits).

        The first 256 bits become the two directions' hash keys; the rest, a whole number
        of 256-bit units, the pads (alternately: first half to ground→satellite, second half
        to satellite→ground). Refuses to overwrite an existing pool.
        """
        bits = as_bits(initial_bits, name="initial_bits")
        if bits.size < MIN_INITIAL_BITS or (bits.size - 2 * HASH_KEY_BITS) % REPLENISH_UNIT_BITS:
            raise ValueError(
                f"initial_bits must be 256 + a positive multiple of {REPLENISH_UNIT_BITS} bits, "
                f"got {bits.size}")
        path = Path(path)
        if path.exists():
            raise KeyPoolError(f"refusing to overwrite the existing authentication pool {path}")
        raw = pack_bits(bits)
        keys, pads = raw[:32], raw[32:]
        half = len(pads) // 2
        state = {
            "format": _FORMAT, "version": _VERSION,
            "hash_keys": {Direction.GROUND_TO_SATELLITE.value: _b64(keys[:16]),
                          Direction.SATELLITE_TO_GROUND.value: _b64(keys[16:])},
            "pads": {Direction.GROUND_TO_SATELLITE.value: _b64(pads[:half]),
                     Direction.SATELLITE_TO_GROUND.value: _b64(pads[half:])},
            "next_counter": {d.value: 0 for d in Direction},
            "consumed_bits": 2 * HASH_KEY_BITS,
            "replenished_bits": 0,
            "initial_bits": int(bits.size),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, state)
        return cls(path)

    # -- queries -------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    def level(self) -> PoolLevel:
        """Bits left per direction, next counters, bits consumed and replenished."""
        s = self._state
        return PoolLevel(
            available_bits={d: len(_unb64(s["pads"][d.value])) * 8 for d in Direction},
            next_counter={d: int(s["next_counter"][d.value]) for d in Direction},
            consumed_bits=int(s["consumed_bits"]), replenished_bits=int(s["replenished_bits"]),
            initial_bits=int(s["initial_bits"]),
        )

    def next_counter(self, direction: Direction) -> int:
        """The counter the next message in ``direction`` must carry."""
        return int(self._state["next_counter"][Direction(direction).value])

    # -- consumption (used by the MAC) ---------------------------------------------------

    def hash_key(self, direction: Direction) -> bytes:
        """The direction's 16-byte Poly1305 hash key ``r`` (secret; reused by design)."""
        return _unb64(self._state["hash_keys"][Direction(direction).value])

    def take_pad(self, direction: Direction, counter: int, *, max_gap: int = 0) -> bytes:
        """The 16-byte one-time pad of message ``counter`` in ``direction``, consumed durably.

        Raises :class:`AuthenticationError` for a replayed (already used) or out-of-order
        counter, :class:`KeyPoolExhaustedError` when the direction has no pad left.
        ``max_gap`` > 0 (receivers only) accepts a counter up to that far ahead, burning the
        skipped pads: for a peer that consumed a pad and crashed before sending. A pad is
        still never used twice and no older message is accepted afterwards; the limit keeps
        a forged counter from burning the pool.
        """
        d = Direction(direction)
        expected = self.next_counter(d)
        if not isinstance(counter, int) or isinstance(counter, bool):
            raise AuthenticationError(f"{d.value} message counter must be an integer, got {type(counter).__name__}")
        if counter < expected:
            raise AuthenticationError(
                f"{d.value} message {counter} is a replay: counters up to {expected - 1} are used")
        if counter > expected + max(0, max_gap):
            raise AuthenticationError(
                f"{d.value} message {counter} is out of order: expected message {expected}")
        pads = _unb64(self._state["pads"][d.value])
        pad_bytes = PAD_BITS // 8
        skip = counter - expected
        if len(pads) < (skip + 1) * pad_bytes:
            raise KeyPoolExhaustedError(
                f"the authentication pool {self._path} has no pad left for {d.value} "
                f"(message {counter}); replenish it from distilled key")
        pad, rest = pads[skip * pad_bytes:(skip + 1) * pad_bytes], pads[(skip + 1) * pad_bytes:]
        new_state = dict(self._state)
        new_state["pads"] = {**self._state["pads"], d.value: _b64(rest)}
        new_state["next_counter"] = {**self._state["next_counter"], d.value: counter + 1}
        new_state["consumed_bits"] = int(self._state["consumed_bits"]) + (skip + 1) * PAD_BITS
        _write(self._path, new_state)  # durable before the pad is used: never reused
        self._state = new_state
        return pad

    def replenish(self, bits: np.ndarray) -> None:
        """Append distilled key to the pads: first half to ground→satellite, second half to
        satellite→ground. ``bits`` is a multiple of 256 bits; both ends add the same bits."""
        b = as_bits(bits, name="replenishment bits")
        if b.size == 0 or b.size % REPLENISH_UNIT_BITS:
            raise ValueError(f"replenishment must be a positive multiple of {REPLENISH_UNIT_BITS} bits, got {b.size}")
        raw = pack_bits(b)
        half = len(raw) // 2
        g2s, s2g = Direction.GROUND_TO_SATELLITE.value, Direction.SATELLITE_TO_GROUND.value
        new_state = dict(self._state)
        new_state["pads"] = {
            g2s: _b64(_unb64(self._state["pads"][g2s]) + raw[:half]),
            s2g: _b64(_unb64(self._state["pads"][s2g]) + raw[half:]),
        }
        new_state["replenished_bits"] = int(self._state["replenished_bits"]) + int(b.size)
        _write(self._path, new_state)
        self._state = new_state

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> KeyPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        lvl = self.level()
        left = ", ".join(f"{d.value}={n}" for d, n in lvl.available_bits.items())
        return f"KeyPool({str(self._path)!r}, bits left: {left}, consumed={lvl.consumed_bits})"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _lock(path: Path) -> int:
    lock_path = path.with_name(path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise KeyPoolError(f"the authentication pool {path} is in use by another process") from None
    return fd


def _read(path: Path) -> dict:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyPoolError(f"no authentication pool at {path}: create it from pre-shared key first") from None
    if st.st_size > _MAX_POOL_FILE_BYTES:
        raise KeyPoolError(f"{path} is {st.st_size} bytes, too large to be an authentication pool")
    if st.st_mode & 0o077:
        raise KeyPoolError(f"{path} is readable by others (mode {st.st_mode & 0o777:o}); it must be 0600")
    try:
        state = json.loads(path.read_text(encoding="ascii"))
        ok = (isinstance(state, dict) and state.get("format") == _FORMAT
              and state.get("version") == _VERSION)
        if ok:
            for field in ("hash_keys", "pads", "next_counter"):
                for d in Direction:
                    _ = state[field][d.value]  # presence check
            for d in Direction:
                _unb64(state["pads"][d.value])
                if len(_unb64(state["hash_keys"][d.value])) != 16 or not _count(state["next_counter"][d.value]):
                    ok = False
            if not all(_count(state[f]) for f in ("consumed_bits", "replenished_bits", "initial_bits")):
                ok = False
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise KeyPoolError(f"{path} is not a valid authentication pool (format {_FORMAT} v{_VERSION})")
    return state


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _write(path: Path, state: dict) -> None:
    write_durably(path, json.dumps(state, separators=(",", ":")).encode("ascii"), 0o600)
