"""Group commit of the KME's key-store writes: one transaction for many requests, each
request still all or nothing, results only once durable."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from postprocessing.keystore import KeyNotAvailable, KeyStore, KeyStoreError
from postprocessing.kme.groupcommit import GroupCommitter


def fill(store: KeyStore, blocks: int, peer: str = "p") -> None:
    bits = np.random.default_rng(3).integers(0, 2, blocks * 256, dtype=np.uint8)
    store.deposit(peer, "pass-1", bits)


def test_batch_runs_each_op_all_or_nothing_in_one_transaction(tmp_path):
    with KeyStore(tmp_path / "keys") as store:
        fill(store, 10)

        def takes_then_fails(tx):
            tx.take("p", 2, purpose="spoilt")
            raise KeyNotAvailable("refused after taking two")

        results = store.batch([
            lambda tx: tx.take("p", 3, purpose="first"),
            takes_then_fails,
            lambda tx: tx.take("p", 20, purpose="too-many"),
            lambda tx: tx.reserve("p", 2, holder="a>b", size_bits=128),
        ])
        assert [len(r) for r in (results[0], results[3])] == [3, 2]
        assert isinstance(results[1], KeyNotAvailable)
        assert isinstance(results[2], KeyNotAvailable)
        # The failed op's two takes were rolled back alone: 10 - 3 taken - 2 reserved.
        level = store.level("p")
        assert (level.available_blocks, level.reserved_blocks, level.consumed_blocks) == (5, 2, 3)
    with KeyStore(tmp_path / "keys") as store:  # durable
        level = store.level("p")
        assert (level.available_blocks, level.reserved_blocks, level.consumed_blocks) == (5, 2, 3)
        infos = store.list("p")
        assert not any(i.purpose == "spoilt" for i in infos)


def test_batch_rolls_back_everything_on_an_unexpected_error(tmp_path):
    with KeyStore(tmp_path / "keys") as store:
        fill(store, 4)

        def bug(tx):
            raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            store.batch([lambda tx: tx.take("p", 2, purpose="x"), bug])
        assert store.level("p").available_blocks == 4


async def test_concurrent_requests_share_commits_and_each_gets_its_own_blocks(tmp_path):
    with KeyStore(tmp_path / "keys") as store:
        fill(store, 64)
        writer = GroupCommitter(store)
        try:
            # Hold the store while the requests queue, as a slow fsync would: they must
            # then go in far fewer transactions than requests.
            with store._lock:
                tasks = [asyncio.create_task(writer.run(
                    lambda tx: tx.take("p", 1, purpose="enc"))) for _ in range(40)]
                tasks.append(asyncio.create_task(writer.run(
                    lambda tx: tx.take("p", 1000, purpose="too-many"))))
                await asyncio.sleep(0)  # let every task queue its op
                assert not any(t.done() for t in tasks)  # nothing answered before the commit
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            writer.close()
        assert isinstance(results[-1], KeyNotAvailable)
        ids = [r[0].key_id for r in results[:-1]]
        assert len(set(ids)) == 40
        assert writer.ops == 41 and writer.batches <= 3
        assert store.level("p").consumed_blocks == 40


async def test_a_closed_writer_refuses_new_work(tmp_path):
    with KeyStore(tmp_path / "keys") as store:
        fill(store, 2)
        writer = GroupCommitter(store)
        assert len(await writer.run(lambda tx: tx.take("p", 1, purpose="x"))) == 1
        writer.close()
        with pytest.raises(KeyStoreError, match="stopped"):
            await writer.run(lambda tx: tx.take("p", 1, purpose="x"))
