"""Wegman–Carter authentication over the durable pre-shared key pool."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from postprocessing.auth import (
    MIN_INITIAL_BITS,
    AuthenticationError,
    Direction,
    KeyPool,
    KeyPoolError,
    KeyPoolExhaustedError,
    WegmanCarterMac,
    encode_for_mac,
    forgery_probability,
)
from postprocessing.bits import pack_bits

G2S, S2G = Direction.GROUND_TO_SATELLITE, Direction.SATELLITE_TO_GROUND


def preshared(n_pads_per_direction: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2, 256 + 256 * n_pads_per_direction, dtype=np.uint8)


@pytest.fixture
def pair(tmp_path: Path):
    bits = preshared(8)
    ground = KeyPool.create(tmp_path / "ground" / "auth.pool", bits)
    sat = KeyPool.create(tmp_path / "sat" / "auth.pool", bits)
    yield WegmanCarterMac(ground), WegmanCarterMac(sat), bits
    ground.close()
    sat.close()


def test_both_sides_agree_whatever_the_interleaving(pair) -> None:
    g, s, _ = pair
    # The ground signs two uplink messages before it reads the satellite's first downlink;
    # the satellite signs its downlink before it reads the uplink: pads still line up.
    t_up0 = g.sign([b"sift", b"\x00\x01"], G2S, 0)
    t_up1 = g.sign([b"ec", b"syndrome"], G2S, 1)
    t_down0 = s.sign([b"bases", b"\xff" * 100], S2G, 0)
    s.verify([b"sift", b"\x00\x01"], G2S, 0, t_up0)
    g.verify([b"bases", b"\xff" * 100], S2G, 0, t_down0)
    s.verify([b"ec", b"syndrome"], G2S, 1, t_up1)
    assert len(t_up0) == 16
    assert g.pool.next_counter(G2S) == s.pool.next_counter(G2S) == 2
    assert g.pool.next_counter(S2G) == s.pool.next_counter(S2G) == 1


def test_tampering_is_refused(pair) -> None:
    g, s, _ = pair
    parts = [b"header", b"payload bytes"]
    for counter, forged in enumerate([
        [b"header", b"payload bytez"],  # one byte changed
        [b"headerp", b"ayload bytes"],  # same bytes, parts split differently
        [b"header", b"payload bytes", b""],  # an extra empty part
        [b"header"],  # a part dropped
    ]):
        tag = g.sign(parts, G2S, counter)
        with pytest.raises(AuthenticationError, match=f"message {counter}: the tag does not match"):
            s.verify(forged, G2S, counter, tag)


def test_a_tag_for_one_direction_fails_in_the_other(pair) -> None:
    g, s, _ = pair
    tag = g.sign([b"x"], G2S, 0)
    with pytest.raises(AuthenticationError):
        g.verify([b"x"], S2G, 0, tag)


def test_flipped_tag_bits_and_bad_tags_are_refused(pair) -> None:
    g, s, _ = pair
    for counter in range(4):
        tag = bytearray(g.sign([b"m"], G2S, counter))
        tag[counter] ^= 1 << counter
        with pytest.raises(AuthenticationError):
            s.verify([b"m"], G2S, counter, bytes(tag))
    with pytest.raises(AuthenticationError, match="must be 16 bytes"):
        s.verify([b"m"], G2S, 4, b"short")
    with pytest.raises(AuthenticationError, match="must be 16 bytes"):
        s.verify([b"m"], G2S, 4, "not bytes")  # type: ignore[arg-type]
    with pytest.raises(AuthenticationError, match="malformed"):
        s.verify([b"m", 7], G2S, 4, b"\x00" * 16)  # type: ignore[list-item]
    with pytest.raises(AuthenticationError, match="malformed"):
        s.verify(b"m", G2S, 4, b"\x00" * 16)  # type: ignore[arg-type]


def test_replay_and_reorder_are_refused(pair) -> None:
    g, s, _ = pair
    t0 = g.sign([b"a"], G2S, 0)
    t1 = g.sign([b"b"], G2S, 1)
    with pytest.raises(AuthenticationError, match="message 1 is out of order: expected message 0"):
        s.verify([b"b"], G2S, 1, t1)
    s.verify([b"a"], G2S, 0, t0)
    with pytest.raises(AuthenticationError, match="message 0 is a replay"):
        s.verify([b"a"], G2S, 0, t0)
    s.verify([b"b"], G2S, 1, t1)
    with pytest.raises(AuthenticationError, match="replay"):
        s.verify([b"b"], G2S, 1, t1)
    with pytest.raises(AuthenticationError, match="replay"):
        g.sign([b"c"], G2S, 1)  # the sender cannot reuse a counter either


def test_a_bounded_gap_is_accepted_after_a_peer_crash(pair) -> None:
    g, s, _ = pair
    g.pool.take_pad(G2S, 0)  # the ground consumed pad 0, then crashed before sending
    t1 = g.sign([b"after restart"], G2S, 1)
    with pytest.raises(AuthenticationError, match="out of order"):
        s.verify([b"after restart"], G2S, 1, t1)
    s.verify([b"after restart"], G2S, 1, t1, max_gap=4)
    assert s.pool.next_counter(G2S) == 2
    t6 = g.sign([b"x"], G2S, 2)
    with pytest.raises(AuthenticationError, match="out of order"):
        s.verify([b"x"], G2S, 9, t6, max_gap=4)  # too far ahead: nothing burnt
    assert s.pool.next_counter(G2S) == 2


def test_exhaustion_then_replenishment(tmp_path: Path) -> None:
    bits = preshared(2)
    with KeyPool.create(tmp_path / "a", bits) as a, KeyPool.create(tmp_path / "b", bits) as b:
        ma, mb = WegmanCarterMac(a), WegmanCarterMac(b)
        for c in range(2):
            mb.verify([b"m"], G2S, c, ma.sign([b"m"], G2S, c))
        with pytest.raises(KeyPoolExhaustedError, match="no pad left for ground_to_satellite .*replenish"):
            ma.sign([b"m"], G2S, 2)
        assert a.next_counter(G2S) == 2  # nothing consumed by the refusal
        fresh = np.random.default_rng(9).integers(0, 2, 512, dtype=np.uint8)
        a.replenish(fresh)
        b.replenish(fresh)
        for c in range(2, 4):
            mb.verify([b"m"], G2S, c, ma.sign([b"m"], G2S, c))
        level = a.level()
        assert level.replenished_bits == 512
        assert level.consumed_bits == 256 + 4 * 128
        assert level.available_bits == {G2S: 0, S2G: 4 * 128}
        with pytest.raises(ValueError, match="multiple of 256"):
            a.replenish(fresh[:100])


def test_restart_keeps_counters_and_never_reuses_a_pad(tmp_path: Path) -> None:
    bits = preshared(4)
    path = tmp_path / "ground.pool"
    sat = KeyPool.create(tmp_path / "sat.pool", bits)
    pool = KeyPool.create(path, bits)
    t0 = WegmanCarterMac(pool).sign([b"before"], G2S, 0)
    pad1 = pool.take_pad(G2S, 1)  # taken, then the process dies
    pool.close()
    reopened = KeyPool(path)
    assert reopened.next_counter(G2S) == 2
    assert reopened.level().consumed_bits == 256 + 2 * 128
    assert reopened.take_pad(G2S, 2) != pad1
    with pytest.raises(AuthenticationError, match="replay"):
        reopened.take_pad(G2S, 1)
    # The satellite, restarted too, still verifies message 0 once and refuses its replay.
    ms = WegmanCarterMac(sat)
    ms.verify([b"before"], G2S, 0, t0)
    sat.close()
    ms = WegmanCarterMac(KeyPool(tmp_path / "sat.pool"))
    with pytest.raises(AuthenticationError, match="replay"):
        ms.verify([b"before"], G2S, 0, t0)
    ms.pool.close()
    reopened.close()


def test_pool_file_is_0600_refuses_others_and_is_locked(tmp_path: Path) -> None:
    path = tmp_path / "auth.pool"
    pool = KeyPool.create(path, preshared(1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(KeyPoolError, match="in use by another process"):
        KeyPool(path)
    with pytest.raises(KeyPoolError, match="refusing to overwrite"):
        KeyPool.create(path, preshared(1))
    pool.close()
    os.chmod(path, 0o644)
    with pytest.raises(KeyPoolError, match="must be 0600"):
        KeyPool(path)
    os.chmod(path, 0o600)
    KeyPool(path).close()


@pytest.mark.parametrize("content", [b"", b"not json", b"[]", b'{"format": "other"}',
                                     b"\xff\xfe", b'{"format": "qkd-station-auth-pool", "version": 1}'])
def test_malformed_pool_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "auth.pool"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyPoolError, match="not a valid authentication pool"):
        KeyPool(path)


def test_pool_file_with_bad_fields_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "auth.pool"
    KeyPool.create(path, preshared(1)).close()
    good = json.loads(path.read_text())
    for field, value in [("consumed_bits", -1), ("consumed_bits", "7"), ("initial_bits", None),
                         ("next_counter", {"ground_to_satellite": "0", "satellite_to_ground": 0}),
                         ("next_counter", {"ground_to_satellite": -1, "satellite_to_ground": 0}),
                         ("hash_keys", {"ground_to_satellite": "AAAA", "satellite_to_ground": "AAAA"}),
                         ("pads", {"ground_to_satellite": "not base64!", "satellite_to_ground": ""})]:
        path.write_text(json.dumps({**good, field: value}))
        with pytest.raises(KeyPoolError, match="not a valid authentication pool"):
            KeyPool(path)
    path.write_text(json.dumps(good))
    KeyPool(path).close()


def test_missing_pool_and_bad_initial_bits(tmp_path: Path) -> None:
    with pytest.raises(KeyPoolError, match="no authentication pool"):
        KeyPool(tmp_path / "absent")
    with pytest.raises(ValueError, match="initial_bits"):
        KeyPool.create(tmp_path / "p", np.zeros(MIN_INITIAL_BITS - 1, dtype=np.uint8))
    with pytest.raises(ValueError, match="initial_bits"):
        KeyPool.create(tmp_path / "p", np.zeros(MIN_INITIAL_BITS + 8, dtype=np.uint8))
    with pytest.raises(ValueError, match="only 0 and 1"):
        KeyPool.create(tmp_path / "p", np.full(MIN_INITIAL_BITS, 3, dtype=np.uint8))


def test_no_key_bits_in_reprs_or_errors(tmp_path: Path) -> None:
    bits = preshared(3, seed=42)
    pool = KeyPool.create(tmp_path / "p", bits)
    mac = WegmanCarterMac(pool)
    raw = pack_bits(bits)
    secrets_text = {raw.hex(), base64.b64encode(raw).decode()}
    # Every 8-byte window of the pool, in hex and base64: none may show up anywhere.
    windows = [raw[i:i + 8] for i in range(0, len(raw) - 8)]
    secrets_text |= {w.hex() for w in windows} | {base64.b64encode(w).decode()[:10] for w in windows}
    texts = [repr(pool), str(pool), repr(mac), repr(pool.level()), str(pool.level().model_dump())]
    tag = mac.sign([b"m"], G2S, 0)
    for call in (lambda: mac.verify([b"m"], G2S, 0, tag),
                 lambda: mac.verify([b"m"], S2G, 0, tag),
                 lambda: mac.verify([b"m"], S2G, 5, tag),
                 lambda: mac.sign([b"m"], G2S, 0)):
        with pytest.raises(AuthenticationError) as info:
            call()
        texts.append(str(info.value))
        texts.append(repr(info.value))
    for text in texts:
        assert tag.hex() not in text
        for secret in secrets_text:
            assert secret not in text
    pool.close()


def test_state_file_holds_no_used_pad(tmp_path: Path) -> None:
    bits = preshared(2)
    path = tmp_path / "p"
    pool = KeyPool.create(path, bits)
    pad = pool.take_pad(G2S, 0)
    state = json.loads(path.read_text())
    assert base64.b64decode(state["pads"]["ground_to_satellite"]).find(pad) == -1
    pool.close()


def test_encoding_is_unambiguous_and_bounded() -> None:
    a = encode_for_mac([b"ab", b"c"], G2S, 0)
    assert a != encode_for_mac([b"a", b"bc"], G2S, 0)
    assert a != encode_for_mac([b"ab", b"c"], G2S, 1)
    assert a != encode_for_mac([b"ab", b"c"], S2G, 0)
    assert forgery_probability(64 * 1024 * 1024) < 2.0**-80
    assert forgery_probability(16) == 8 / 2.0**106


def _poly1305_reference(key: bytes, msg: bytes) -> bytes:
    """RFC 8439 §2.5.1 Poly1305, written out: ((Σ c_i r^i) mod 2^130 − 5 + s) mod 2^128."""
    r = int.from_bytes(key[:16], "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    s = int.from_bytes(key[16:], "little")
    p = (1 << 130) - 5
    acc = 0
    for i in range(0, len(msg), 16):
        block = msg[i:i + 16] + b"\x01"
        acc = (acc + int.from_bytes(block, "little")) * r % p
    return ((acc + s) % (1 << 128)).to_bytes(16, "little")


def test_tag_is_poly1305_of_the_encoding_plus_the_pad(tmp_path: Path) -> None:
    # RFC 8439 §2.5.2 test vector through our reference, then the MAC through both.
    rfc_key = bytes.fromhex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
    rfc_tag = bytes.fromhex("a8061dc1305136c6c22b8baf0c0127a9")
    assert _poly1305_reference(rfc_key, b"Cryptographic Forum Research Group") == rfc_tag
    bits = preshared(2, seed=7)
    pool = KeyPool.create(tmp_path / "p", bits)
    mac = WegmanCarterMac(pool)
    raw = pack_bits(bits)
    r, pad0 = raw[:16], raw[32:48]  # ground→satellite hash key, then its first pad
    parts = [b"header", b"x" * 1000]
    tag = mac.sign(parts, G2S, 0)
    assert tag == _poly1305_reference(r + pad0, encode_for_mac(parts, G2S, 0))
    # The pad enters additively mod 2^128: the tag minus the pad is the hash, whatever pad.
    h = (int.from_bytes(tag, "little") - int.from_bytes(pad0, "little")) % (1 << 128)
    assert h.to_bytes(16, "little") == _poly1305_reference(r + bytes(16), encode_for_mac(parts, G2S, 0))
    pool.close()
