"""The durable per-peer key store: blocks, levels, consumption once, restarts, privacy."""

from __future__ import annotations

import stat
import threading
from uuid import uuid4

import numpy as np
import pytest

from postprocessing.keystore import (
    BlockState,
    KeyNotAvailable,
    KeyStore,
    KeyStoreError,
    derive_key_ids,
)


def key(n_bits: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, n_bits, dtype=np.uint8)


@pytest.fixture
def store(tmp_path):
    with KeyStore(tmp_path / "keys") as s:
        yield s


def test_deposit_cuts_whole_blocks_and_reports_levels(store):
    bits = key(10 * 256 + 77)
    infos = store.deposit("sat", "p1", bits)
    assert len(infos) == 10 and all(i.size_bits == 256 for i in infos)
    assert [i.index for i in infos] == list(range(10))
    assert store.remainder_bits("sat", "p1") == 77
    lvl = store.level("sat")
    assert (lvl.available_blocks, lvl.available_bits, lvl.consumed_blocks) == (10, 2560, 0)
    assert store.level("nobody").available_blocks == 0
    assert [i.key_id for i in store.list("sat")] == [i.key_id for i in infos]
    assert store.info(infos[3].key_id).pass_id == "p1"
    taken = store.take("sat", 3, purpose="test")
    assert [t.key_id for t in taken] == [i.key_id for i in infos[:3]]  # oldest first
    assert np.array_equal(np.concatenate([t.bits() for t in taken]), bits[:768])
    assert store.level("sat").available_blocks == 7


def test_given_key_ids_are_used_and_checked(store):
    ids = derive_key_ids("sat/beijing", "p1", 4)
    assert ids == derive_key_ids("sat/beijing", "p1", 4)  # both ends compute the same
    assert ids != derive_key_ids("sat/stellenbosch", "p1", 4)
    infos = store.deposit("sat", "p1", key(4 * 256), key_ids=ids)
    assert [i.key_id for i in infos] == ids
    with pytest.raises(KeyStoreError, match="3 key ids given for 4"):
        store.deposit("sat", "p2", key(4 * 256), key_ids=ids[:3])
    with pytest.raises(KeyStoreError, match="already in the store"):
        store.deposit("other", "p2", key(256), key_ids=[ids[0]])
    with pytest.raises(KeyStoreError, match="duplicate"):
        store.deposit("other", "p3", key(512), key_ids=[ids[0], ids[0]])


def test_deposit_is_all_or_nothing_and_once_per_pass(store):
    store.deposit("sat", "p1", key(512))
    with pytest.raises(KeyStoreError, match="already deposited"):
        store.deposit("sat", "p1", key(512, 2))
    assert store.level("sat").available_blocks == 2
    for bad, why in [(np.array([0, 1, 2] * 200, dtype=np.uint8), "0 or 1"),
                     (key(512).astype(np.int64), "uint8"), (key(512).reshape(2, -1), "1-D")]:
        with pytest.raises(KeyStoreError, match=why):
            store.deposit("sat", "bad", bad)
    for peer in ["", "a b", "x" * 100, "../etc", "\x00"]:
        with pytest.raises(KeyStoreError, match="invalid peer"):
            store.deposit(peer, "p9", key(256))
    assert not store.has_pass("sat", "bad")


def test_take_is_all_or_nothing(store):
    store.deposit("sat", "p1", key(3 * 256))
    with pytest.raises(KeyNotAvailable, match="3 available key blocks, 4 asked"):
        store.take("sat", 4, purpose="t")
    assert store.level("sat").available_blocks == 3
    ids = [i.key_id for i in store.list("sat")]
    with pytest.raises(KeyNotAvailable):
        store.take_ids([ids[0], uuid4()], peer="sat", purpose="t")
    with pytest.raises(KeyNotAvailable):  # right id, wrong peer
        store.take_ids([ids[0]], peer="other", purpose="t")
    assert store.level("sat").available_blocks == 3
    store.take_ids([ids[1]], peer="sat", purpose="t")
    with pytest.raises(KeyNotAvailable, match="not available"):
        store.take_ids([ids[1]], peer="sat", purpose="t")


def test_reserve_then_take_reserved_by_the_holder_only(store):
    bits = key(2 * 256)
    store.deposit("sat", "p1", bits)
    [r] = store.reserve("sat", 1, holder="a>b", size_bits=96)
    assert store.info(r.key_id).state == BlockState.reserved
    assert store.level("sat").reserved_blocks == 1
    assert store.take("sat", 1, purpose="t")[0].key_id != r.key_id  # not offered again
    with pytest.raises(KeyNotAvailable):
        store.take_reserved([r.key_id], holder="a>c", purpose="t")
    [t] = store.take_reserved([r.key_id], holder="a>b", purpose="t")
    assert t.info.reserved_size_bits == 96 and np.array_equal(t.bits(), bits[:256])
    with pytest.raises(KeyNotAvailable):
        store.take_reserved([r.key_id], holder="a>b", purpose="t")


def test_reassign_moves_available_blocks_to_another_peer(store):
    store.deposit("sat", "p1", key(3 * 256))
    ids = [i.key_id for i in store.list("sat")][:2]
    store.reassign(ids, from_peer="sat", to_peer="stellenbosch")
    assert store.level("sat").available_blocks == 1
    assert store.level("stellenbosch").available_blocks == 2
    with pytest.raises(KeyNotAvailable):
        store.reassign(ids, from_peer="sat", to_peer="x")


def test_consumption_survives_a_restart(tmp_path):
    bits = key(4 * 256)
    with KeyStore(tmp_path / "k") as s:
        s.deposit("sat", "p1", bits)
        first = s.take("sat", 1, purpose="t")[0]
        reserved = s.reserve("sat", 1, holder="a>b")[0]
    # No clean close this time: the transactions are durable on their own.
    s = KeyStore(tmp_path / "k")
    s.take("sat", 1, purpose="t")
    s2 = KeyStore(tmp_path / "k")
    assert s2.info(first.key_id).state == BlockState.consumed
    assert s2.info(reserved.key_id).state == BlockState.reserved
    assert s2.level("sat").available_blocks == 1
    assert s2.has_pass("sat", "p1")
    s.close()
    s2.close()


def test_concurrent_takers_never_get_the_same_block(store):
    store.deposit("sat", "p1", key(400 * 256))
    got: list = []
    lock = threading.Lock()

    def worker():
        for _ in range(50):
            blocks = store.take("sat", 2, purpose="t")
            with lock:
                got.extend(b.key_id for b in blocks)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 400 and len(set(got)) == 400


def test_files_are_private_and_bits_leave_with_consumption(tmp_path):
    bits = key(8 * 256)
    d = tmp_path / "keys"
    with KeyStore(d) as s:
        s.deposit("sat", "p1", bits)
        taken = s.take("sat", 8, purpose="t")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    files = list(d.iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    blob = b"".join(f.read_bytes() for f in files)
    for t in taken:
        assert t.packed() not in blob  # secure_delete: consumed bits are gone from the files


def test_reprs_and_errors_never_show_bits(store):
    bits = key(256)
    [info] = store.deposit("sat", "p1", bits)
    [block] = store.take("sat", 1, purpose="t")
    packed = block.packed()
    for text in (repr(block), str(block), repr(info), repr(store.info(info.key_id))):
        assert packed.hex() not in text and str(list(bits[:32])) not in text
        assert "hidden" in repr(block)
    with pytest.raises(TypeError):
        import pickle
        pickle.dumps(block)
    try:
        store.take_ids([info.key_id], peer="sat", purpose="t")
    except KeyNotAvailable as exc:
        assert packed.hex() not in str(exc)
