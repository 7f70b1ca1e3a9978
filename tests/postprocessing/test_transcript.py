"""Delayed authentication of a reconciliation session: the transcript's Wegman–Carter tag
(postprocessing/auth/transcript.py) against the encoding docs/classical-channel.md states,
and against every way of altering the conversation."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.poly1305 import Poly1305

from postprocessing.auth import (
    AuthenticationError,
    Direction,
    KeyPool,
    Transcript,
    WegmanCarterMac,
    encode_for_mac,
)
from postprocessing.auth.transcript import TRANSCRIPT_DOMAIN
from postprocessing.bits import pack_bits

G2S, S2G = Direction.GROUND_TO_SATELLITE, Direction.SATELLITE_TO_GROUND
CODE = {G2S: 1, S2G: 2}

SESSION = [(G2S, [b'{"type":"ec","op":"cascade_vacuum"}', b"\x01\x02"]),
           (S2G, [b'{"type":"ec_reply"}', b"\xff" * 40]),
           (G2S, [b'{"op":"cascade_parities","i":1}', b"\x00" * 9, b"\x07" * 36, b"\x09" * 36]),
           (S2G, [b'{"op":"cascade_parities","i":1}', b"\xa5\x5a"]),
           (G2S, [b'{"op":"cascade_parities","i":2}', b"\x01" * 3]),
           (S2G, [b'{"op":"cascade_parities","i":2}', b"\x80"])]
FINISH = [b'{"type":"ec","op":"cascade_finish"}']


@pytest.fixture
def pools(tmp_path: Path):
    bits = np.random.default_rng(3).integers(0, 2, 256 + 256 * 8, dtype=np.uint8)
    ground = KeyPool.create(tmp_path / "g" / "pool", bits)
    sat = KeyPool.create(tmp_path / "s" / "pool", bits)
    yield ground, sat, pack_bits(bits)
    ground.close()
    sat.close()


def _close(pool: KeyPool, records, direction: Direction = G2S) -> bytes:
    t = Transcript(pool, "test")
    for d, frames in records:
        t.record(d, frames)
    return WegmanCarterMac(pool).sign(FINISH, direction, pool.next_counter(direction), t)


def _verify(pool: KeyPool, records, tag: bytes, direction: Direction = G2S) -> None:
    t = Transcript(pool, "test")
    for d, frames in records:
        t.record(d, frames)
    WegmanCarterMac(pool).verify(FINISH, direction, pool.next_counter(direction), tag, transcript=t)


def test_the_tag_is_one_shot_poly1305_of_the_documented_encoding(pools) -> None:
    ground, _, raw = pools
    r_g2s, pad0 = raw[:16], raw[32:48]  # ground→satellite hash key, then its first pad
    tag = _close(ground, SESSION)
    data = bytearray(TRANSCRIPT_DOMAIN)
    for d, frames in SESSION:
        data += struct.pack(">BI", CODE[d], len(frames))
        for f in frames:
            data += struct.pack(">Q", len(f)) + f
    data += b"\x00" + struct.pack(">Q", len(SESSION)) + encode_for_mac(FINISH, G2S, 0)
    mac = Poly1305(r_g2s + pad0)
    mac.update(bytes(data))
    assert tag == mac.finalize()


def test_both_ends_agree_on_the_same_conversation(pools) -> None:
    ground, sat, _ = pools
    _verify(sat, SESSION, _close(ground, SESSION))
    _verify(ground, SESSION, _close(sat, SESSION, S2G), S2G)


def _flip(records):
    out = [list(fr) for _, fr in records]
    b = bytearray(out[3][1])
    b[0] ^= 0x01
    out[3][1] = bytes(b)
    return [(d, fr) for (d, _), fr in zip(records, out, strict=True)]


@pytest.mark.parametrize("alter", [
    pytest.param(_flip, id="flipped-byte"),
    pytest.param(lambda r: r[:3] + r[5:], id="dropped-exchange"),
    pytest.param(lambda r: r[:5], id="dropped-reply"),
    pytest.param(lambda r: r[:4] + [r[1]] + r[4:], id="replayed-reply"),
    pytest.param(lambda r: r[:2] + r[4:6] + r[2:4], id="reordered"),
    pytest.param(lambda r: [(S2G if d == G2S else G2S, f) for d, f in r], id="directions-swapped"),
    pytest.param(lambda r: [(r[0][0], r[0][1][:1]), (r[0][0], r[0][1][1:])] + r[1:], id="frames-resplit"),
])
def test_any_altered_conversation_fails_the_check(pools, alter) -> None:
    ground, sat, _ = pools
    tag = _close(ground, SESSION)
    with pytest.raises(AuthenticationError, match="transcript"):
        _verify(sat, alter(SESSION), tag)
    # The pad was consumed: the same tag cannot be tried again.
    assert sat.next_counter(G2S) == 1


def test_each_direction_closes_once_and_nothing_follows(pools) -> None:
    ground, _, _ = pools
    t = Transcript(ground, "test")
    t.record(G2S, [b"x"])
    WegmanCarterMac(ground).sign(FINISH, G2S, 0, t)
    with pytest.raises(AuthenticationError, match="already closed"):
        WegmanCarterMac(ground).sign(FINISH, G2S, 1, t)
    with pytest.raises(AuthenticationError, match="after the session was closed"):
        t.record(S2G, [b"y"])
    assert "x" not in repr(t) and "records" in repr(t)
