"""Group commit: the KME's key-store writes, batched into one transaction and one fsync.

Every ``enc_keys``/``dec_keys`` must be durable before its answer is written. One fsynced
transaction per request, each in a thread of the default pool, costs a thread hand-off and
a GIL round trip per request, and under load the requests queue on the store's lock in no
particular order: that queueing, not the work, made the tail latency. Here one writer
thread takes every operation waiting, runs them in one :meth:`KeyStore.batch` (each op in
its own savepoint, so one refusal spoils nothing else), commits once, and only then settles
the waiting requests, all in one call back into the event loop. Once-only delivery is
unchanged: no result leaves before its batch is committed, and a failed commit fails the
whole batch (nothing is handed out).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from postprocessing.keystore import KeyStore, KeyStoreError, Transaction

log = logging.getLogger("postprocessing.kme")
T = TypeVar("T")
_Item = tuple[Callable[[Transaction], Any], asyncio.Future, asyncio.AbstractEventLoop]


class GroupCommitter:
    """One writer thread over ``store``; :meth:`run` awaits an op's committed result."""

    def __init__(self, store: KeyStore, *, max_batch: int = 256):
        self.store = store
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Numbers for the bench and logs: transactions committed and ops in them.
        self.batches = 0
        self.ops = 0

    def start(self) -> None:
        if self._thread is None:
            self._closed = False
            self._thread = threading.Thread(target=self._work, name="kme-group-commit",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        if self._thread is not None:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    async def run(self, op: Callable[[Transaction], T]) -> T:
        """Run ``op`` in the next batch; returns its result once durable, or raises its
        :class:`KeyStoreError`."""
        if self._closed:
            raise KeyStoreError("the key store writer is stopped")
        self.start()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._queue.put((op, fut, loop))
        return await fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            items = [item]
            stop = False
            while len(items) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                items.append(nxt)
            self._commit(items)
            if stop:
                return

    def _commit(self, items: list[_Item]) -> None:
        try:
            results: list[Any] = self.store.batch([op for op, _, _ in items])
        except KeyStoreError as exc:  # the commit failed: nothing of the batch happened
            results = [exc] * len(items)
        except Exception as exc:  # a bug: fail the batch, keep the writer alive
            log.exception("key store batch failed")
            results = [KeyStoreError(f"key store batch failed: {type(exc).__name__}")] * len(items)
        self.batches += 1
        self.ops += len(items)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
        for (_, fut, loop), result in zip(items, results, strict=True):
            by_loop.setdefault(loop, []).append((fut, result))
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, settled)
            except RuntimeError:  # that loop is closed: its requests are gone
                pass


def _settle(settled: list[tuple[asyncio.Future, Any]]) -> None:
    for fut, result in settled:
        if fut.done():  # the request was cancelled (client gone): its keys are spent, unsent
            continue
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)
