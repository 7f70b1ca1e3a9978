"""Key delivery logic of ETSI GS QKD 014, independent of HTTP.

Who may take what:

- ``enc_keys`` is called by the master SAE for a slave SAE: the pair must be a configured
  link. If the slave is served by this KME too, the keys are *reserved* for the pair (the
  master gets them now, the slave later by ``dec_keys``, each exactly once). If the slave
  is at another KME, the keys are *consumed* here: the partner KME holds the same blocks
  under the same key IDs (the QKD link, or the relay, put them there).
- ``dec_keys`` is called by the slave SAE naming the master: the keys must have been
  reserved for exactly this (master, slave) pair here, or, for a remote master, be
  available blocks of the link's peer store.

Every consumption is durable (fsynced) before a key leaves this module: the store writes
of concurrent requests are group-committed (:mod:`postprocessing.kme.groupcommit`), one
transaction and one fsync for all requests waiting, each request still all or nothing. Errors are
:class:`DeliveryError` with the HTTP status the spec gives them (400, 401, 503) and a
message that names the thing and the reason, never key material.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from uuid import UUID

from postprocessing.keystore import KeyBlock, KeyNotAvailable, KeyStore, KeyStoreError
from postprocessing.kme.config import KmeConfig, LinkConfig
from postprocessing.kme.groupcommit import GroupCommitter
from postprocessing.kme.models import Key, KeyContainer, KeyIds, KeyRequest, Status

log = logging.getLogger("postprocessing.kme")


class DeliveryError(Exception):
    """A refused request: ``status`` (HTTP), ``message`` and ``details`` (no key bits)."""

    def __init__(self, status: int, message: str, details: list[dict] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


@dataclass
class DeliveryCounters:
    """Numbers only, for logs and monitoring."""

    keys_delivered: int = 0
    requests_refused: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


class KeyDelivery:
    """ETSI 014 semantics over one :class:`KeyStore`. Async methods run the store in a thread.

    Call :meth:`close` when done (it stops the group-commit writer thread).
    """

    def __init__(self, config: KmeConfig, store: KeyStore):
        self.config = config
        self.store = store
        self.counters = DeliveryCounters()
        self.writer = GroupCommitter(store)
        #: Called after every delivery (the levels publisher wakes on it).
        self.on_change: Callable[[], None] | None = None

    def close(self) -> None:
        """Commit what is queued and stop the writer thread."""
        self.writer.close()

    # -- endpoints -------------------------------------------------------------------------

    async def status(self, caller: str, slave: str) -> Status:
        link = self._link(caller, slave)
        level = await asyncio.to_thread(self.store.level, link.peer)
        return Status(
            source_KME_ID=link.source_kme_id or self.config.kme_id,
            target_KME_ID=self._target_kme(link),
            master_SAE_ID=caller,
            slave_SAE_ID=slave,
            key_size=self.config.key_size_bits,
            stored_key_count=level.available_blocks,
            max_key_count=self.config.max_key_count,
            max_key_per_request=self.config.max_key_per_request,
            max_key_size=self.config.key_size_bits,
            min_key_size=self._min_size(link),
            max_SAE_ID_count=0,
        )

    async def enc_keys(self, caller: str, slave: str, req: KeyRequest) -> KeyContainer:
        link = self._link(caller, slave)
        if not self.config.is_local(caller):
            raise DeliveryError(401, f"SAE {caller!r} is not a master SAE of this KME")
        number = 1 if req.number is None else req.number
        size = self.config.key_size_bits if req.size is None else req.size
        if req.additional_slave_SAE_IDs:
            raise DeliveryError(400, "additional_slave_SAE_IDs is not supported "
                                "(max_SAE_ID_count is 0)")
        if req.extension_mandatory:
            names = sorted({k for ext in req.extension_mandatory for k in ext})[:8]
            raise DeliveryError(400, "mandatory extensions are not supported",
                                [{"extension_mandatory": n} for n in names])
        if not 1 <= number <= self.config.max_key_per_request:
            raise DeliveryError(400, f"number {number} is outside 1..{self.config.max_key_per_request}"
                                " (max_key_per_request)")
        lo, hi = self._min_size(link), self.config.key_size_bits
        if size % 8:
            raise DeliveryError(400, f"size {size} bits is not a multiple of 8")
        if not lo <= size <= hi:
            raise DeliveryError(400, f"size {size} bits is outside {lo}..{hi}"
                                " (min_key_size..max_key_size)")
        pair = f"{caller}>{slave}"
        try:
            if self.config.is_local(slave):
                blocks = await self.writer.run(
                    lambda tx: tx.reserve(link.peer, number, holder=pair, size_bits=size))
            else:
                blocks = await self.writer.run(
                    lambda tx: tx.take(link.peer, number, purpose=f"enc_keys:{pair}"))
        except KeyNotAvailable:
            level = await asyncio.to_thread(self.store.level, link.peer)
            raise DeliveryError(
                400, f"{number} keys requested, {level.available_blocks} stored for "
                f"{caller} -> {slave}", [{"stored_key_count": level.available_blocks}],
            ) from None
        except KeyStoreError as exc:
            raise DeliveryError(503, f"key store error: {exc}") from None
        log.info("enc_keys %s -> %s: %d keys of %d bits: %s", caller, slave, len(blocks), size,
                 _ids(blocks))
        return self._container(blocks, [size] * len(blocks))

    async def dec_keys(self, caller: str, master: str, req: KeyIds) -> KeyContainer:
        link = self._link(master, caller)
        if not self.config.is_local(caller):
            raise DeliveryError(401, f"SAE {caller!r} is not a slave SAE of this KME")
        if len(req.key_IDs) > self.config.max_key_per_request:
            raise DeliveryError(400, f"{len(req.key_IDs)} key IDs exceed max_key_per_request "
                                f"{self.config.max_key_per_request}")
        ids: list[UUID] = []
        for i, item in enumerate(req.key_IDs):
            try:
                ids.append(UUID(item.key_ID))
            except ValueError:
                raise DeliveryError(400, f"key_IDs[{i}].key_ID is not a UUID",
                                    [{"key_ID": item.key_ID[:64]}]) from None
        if len(set(ids)) != len(ids):
            raise DeliveryError(400, "the same key_ID is asked twice")
        pair = f"{master}>{caller}"
        try:
            if self.config.is_local(master):
                blocks = await self.writer.run(
                    lambda tx: tx.take_reserved(ids, holder=pair, purpose=f"dec_keys:{pair}"))
                sizes = [b.info.reserved_size_bits or b.size_bits for b in blocks]
            else:
                blocks = await self.writer.run(
                    lambda tx: tx.take_ids(ids, peer=link.peer, purpose=f"dec_keys:{pair}"))
                sizes = [self.config.key_size_bits] * len(blocks)
        except KeyNotAvailable as exc:
            raise DeliveryError(
                400, f"key not available to {caller} from {master}: {exc}",
            ) from None
        except KeyStoreError as exc:
            raise DeliveryError(503, f"key store error: {exc}") from None
        log.info("dec_keys %s <- %s: %d keys: %s", caller, master, len(blocks), _ids(blocks))
        return self._container(blocks, sizes)

    # -- helpers ---------------------------------------------------------------------------

    def _link(self, master: str, slave: str) -> LinkConfig:
        link = self.config.link(master, slave)
        if link is None:
            raise DeliveryError(401, f"no key link from master SAE {master!r} to slave SAE "
                                f"{slave!r} at this KME")
        return link

    def _target_kme(self, link: LinkConfig) -> str:
        if self.config.is_local(link.slave_sae_id):
            return self.config.kme_id
        assert link.target_kme_id is not None  # the config validator requires it
        return link.target_kme_id

    def _min_size(self, link: LinkConfig) -> int:
        # A remote partner KME cannot learn a shortened length: whole blocks only.
        if self.config.is_local(link.master_sae_id) and self.config.is_local(link.slave_sae_id):
            return self.config.min_key_size_bits
        return self.config.key_size_bits

    def _container(self, blocks: list[KeyBlock], sizes: list[int]) -> KeyContainer:
        keys = []
        for block, size in zip(blocks, sizes, strict=True):
            raw = block.packed()[: size // 8]
            keys.append(Key(key_ID=str(block.key_id), key=base64.b64encode(raw).decode()))
        self.counters.keys_delivered += len(keys)
        if self.on_change is not None:
            self.on_change()
        return KeyContainer(keys=keys)


def _ids(blocks: list[KeyBlock], shown: int = 4) -> str:
    """The first key IDs for a log line (IDs are not secret; a full list is noise)."""
    text = ",".join(str(b.key_id) for b in blocks[:shown])
    return text + (f",... ({len(blocks) - shown} more)" if len(blocks) > shown else "")
