"""The durable per-peer key store: final keys per pass, in blocks with UUIDs.

One store per party (each ground station, the simulated satellite). A *peer* names the
party a key is shared with (``"jinan1-sim"`` at a station; ``"beijing"`` at the satellite;
``"beijing"`` at Stellenbosch for a key relayed from Beijing). A pass's final key is cut
into blocks of ``block_bits`` bits, each with its own UUID; both ends of a link deposit the
same key under the same key IDs, so a block is named the same everywhere.

Storage: one SQLite database ``keys.sqlite3`` in ``directory`` (0700; the database and its
WAL/SHM files 0600, SQLite gives its side files the database's mode). Every change is one
transaction, committed with ``synchronous=FULL`` in WAL mode (fsynced before the call
returns), so a deposit is all or nothing and a consumption is durable before the key is
handed to anyone. ``secure_delete`` is on and a consumed block's bits are set to NULL in
the same transaction that marks it consumed: a consumed key leaves the store.

Lifecycle of a block::

    available ──take / take_ids──────────────► consumed   (bits erased)
        │                                          ▲
        └──reserve(holder)──► reserved ──take_reserved(holder)──┘

``reserve`` is for a KME whose master and slave SAE are both local: the master gets the
key now, the slave later, each exactly once. ``reassign`` moves available blocks to another
peer (the relay: a key shared with the satellite becomes the key shared with the partner
station). Nothing here ever puts key bits in a log, a repr or an exception message.

Thread-safe: one connection behind a lock; async callers run the calls in a thread
(``asyncio.to_thread``), they each take at most one fsync. :meth:`KeyStore.batch` runs
many consuming operations in one transaction and one fsync (the KME's group commit), each
still all or nothing. Several processes may share one store: every write transaction is
``BEGIN IMMEDIATE``, so SQLite's write lock serialises them and a block leaves once.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import re
import sqlite3
import stat
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar
from uuid import UUID

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from station.clock import Clock, RealClock, from_epoch_s

__all__ = [
    "DEFAULT_BLOCK_BITS",
    "BlockState",
    "KeyBlock",
    "KeyBlockInfo",
    "KeyNotAvailable",
    "KeyStore",
    "KeyStoreError",
    "StoreLevel",
    "Transaction",
    "derive_key_ids",
]

DEFAULT_BLOCK_BITS = 256
T = TypeVar("T")
DB_NAME = "keys.sqlite3"
#: Lock file of :meth:`KeyStore.batch` writers across processes (see there).
BATCH_LOCK_NAME = "keys.sqlite3.batch-lock"
_PEER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_PASS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")
_TEXT_RE = re.compile(r"^[\x21-\x7e]{1,200}$")  # holder / purpose: printable, no spaces
#: Namespace of :func:`derive_key_ids` (a fixed random UUID of this project).
KEY_ID_NAMESPACE = UUID("5b0e7c1e-3c55-4c3e-9d4e-0f1a6a1d2b14")


class KeyStoreError(Exception):
    """A key-store operation refused or failed; the message names what and why (no bits)."""


class KeyNotAvailable(KeyStoreError):
    """Fewer blocks than asked are available, or a named block is unknown/not available."""


class BlockState(enum.StrEnum):
    available = "available"
    reserved = "reserved"
    consumed = "consumed"


class KeyBlockInfo(BaseModel):
    """Metadata of one key block. Never carries key bits."""

    model_config = ConfigDict(frozen=True)

    key_id: UUID
    peer: str
    pass_id: str
    index: int = Field(ge=0, description="block number within the pass deposit")
    size_bits: int = Field(gt=0)
    origin: str = Field(description='"distilled" (from a pass) or "relayed"')
    deposited_utc: datetime
    state: BlockState
    holder: str | None = Field(default=None, description="who reserved it (reserved only)")
    reserved_size_bits: int | None = None
    purpose: str | None = Field(default=None, description="why it was consumed")
    state_utc: datetime | None = None


class StoreLevel(BaseModel):
    """How much key is available for one peer (numbers only)."""

    model_config = ConfigDict(frozen=True)

    peer: str
    available_blocks: int
    available_bits: int
    reserved_blocks: int
    consumed_blocks: int


class KeyBlock:
    """One block's metadata and its bits. The repr and str never show the bits."""

    __slots__ = ("_packed", "info")

    def __init__(self, info: KeyBlockInfo, packed: bytes):
        self.info = info
        self._packed = packed

    @property
    def key_id(self) -> UUID:
        return self.info.key_id

    @property
    def size_bits(self) -> int:
        return self.info.size_bits

    def bits(self) -> np.ndarray:
        """The block as a uint8 array of 0/1, ``size_bits`` long."""
        return np.unpackbits(np.frombuffer(self._packed, dtype=np.uint8))[: self.info.size_bits]

    def packed(self) -> bytes:
        """The block packed big-endian (``np.packbits``), zero-padded to whole bytes."""
        return self._packed

    def __repr__(self) -> str:
        return f"KeyBlock(key_id={self.info.key_id}, size_bits={self.info.size_bits}, <bits hidden>)"

    __str__ = __repr__

    def __reduce__(self):  # no pickling key bits into some cache or queue by accident
        raise TypeError("KeyBlock holds key bits and is not picklable")


def derive_key_ids(link: str, pass_id: str, count: int) -> list[UUID]:
    """Deterministic block UUIDs for ``count`` blocks of one pass on one link.

    Both ends can compute them without exchanging IDs: ``link`` must name the link the same
    way on both sides (e.g. ``"jinan1-sim/beijing"``), ``pass_id`` the pass. Key IDs are
    not secret; they only need to be unique, which the link and pass names make them.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return [uuid.uuid5(KEY_ID_NAMESPACE, f"{link}\x00{pass_id}\x00{i}") for i in range(count)]


def _check_name(kind: str, value: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise KeyStoreError(
            f"invalid {kind} {value!r:.80}: must match {pattern.pattern} (letters, digits, ._:-)"
        )
    return value


class KeyStore:
    """A durable per-peer key store in ``directory``; see the module docstring."""

    def __init__(self, directory: Path | str, *, clock: Clock | None = None):
        self.directory = Path(directory)
        self._clock = clock or RealClock()
        self._lock = threading.Lock()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        self.path = self.directory / DB_NAME
        # Create the database file 0600 ourselves: SQLite gives -wal/-shm the same mode.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(self.path, 0o600)
        # Several KME worker processes may share the store: wait up to 30 s for the write lock.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._batch_lock_fd: int | None = None
        for side in ("-wal", "-shm"):
            p = Path(str(self.path) + side)
            if p.exists() and stat.S_IMODE(p.stat().st_mode) != 0o600:
                os.chmod(p, 0o600)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Checkpoint the WAL into the database and close."""
        with self._lock:
            if self._db is None:
                return
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._db.close()
                self._db = None  # type: ignore[assignment]
                if self._batch_lock_fd is not None:
                    os.close(self._batch_lock_fd)
                    self._batch_lock_fd = None

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KeyStore({str(self.directory)!r})"

    # -- deposit ---------------------------------------------------------------------------

    def deposit(
        self,
        peer: str,
        pass_id: str,
        key_bits: np.ndarray,
        *,
        block_bits: int = DEFAULT_BLOCK_BITS,
        key_ids: Sequence[UUID] | None = None,
        origin: str = "distilled",
    ) -> list[KeyBlockInfo]:
        """Store a pass's final key for ``peer``, cut into blocks; all or nothing.

        ``key_bits`` is a uint8 array of 0/1. Only whole blocks are stored: the last
        ``len(key_bits) % block_bits`` bits are dropped (see :meth:`remainder_bits`).
        ``key_ids`` (one per whole block) are used when given (relayed keys, or IDs both
        ends agreed); otherwise random UUIDs. A ``(peer, pass_id)`` deposited before is
        refused, so a resumed consumer cannot store a pass twice.
        """
        rows, infos, meta = self._prepare_deposit(peer, pass_id, key_bits, block_bits, key_ids,
                                                  origin)
        with self._lock, self._tx() as db:
            self._insert_deposit(db, peer, pass_id, rows, meta)
        return infos

    def _prepare_deposit(self, peer, pass_id, key_bits, block_bits, key_ids, origin):
        _check_name("peer", peer, _PEER_RE)
        _check_name("pass id", pass_id, _PASS_RE)
        if origin not in ("distilled", "relayed"):
            raise KeyStoreError(f"invalid origin {origin!r}: 'distilled' or 'relayed'")
        if not isinstance(block_bits, int) or not 8 <= block_bits <= 1 << 20 or block_bits % 8:
            raise KeyStoreError(f"block_bits must be a multiple of 8 in 8..2**20, got {block_bits}")
        bits = np.asarray(key_bits)
        if bits.ndim != 1 or bits.dtype != np.uint8:
            raise KeyStoreError(
                f"key bits must be a 1-D uint8 array of 0/1, got {bits.ndim}-D {bits.dtype}"
            )
        if bits.size and int(bits.max()) > 1:
            raise KeyStoreError("key bits must be 0 or 1 (got larger values)")
        n_blocks = bits.size // block_bits
        if key_ids is None:
            ids = [uuid.uuid4() for _ in range(n_blocks)]
        else:
            ids = [UUID(str(k)) for k in key_ids]
            if len(ids) != n_blocks:
                raise KeyStoreError(
                    f"{len(ids)} key ids given for {n_blocks} whole blocks of {block_bits} bits"
                )
            if len(set(ids)) != len(ids):
                raise KeyStoreError("duplicate key ids in one deposit")
        now = self._now_iso()
        packed = np.packbits(bits[: n_blocks * block_bits]).tobytes()
        step = block_bits // 8
        rows = [
            (str(k), peer, pass_id, i, block_bits, origin, now, packed[i * step : (i + 1) * step])
            for i, k in enumerate(ids)
        ]
        infos = [
            KeyBlockInfo(
                key_id=k, peer=peer, pass_id=pass_id, index=i, size_bits=block_bits,
                origin=origin, deposited_utc=datetime.fromisoformat(now),
                state=BlockState.available,
            )
            for i, k in enumerate(ids)
        ]
        return rows, infos, (now, int(bits.size), n_blocks, block_bits, ids)

    def _insert_deposit(self, db, peer, pass_id, rows, meta) -> None:
        now, total_bits, n_blocks, block_bits, ids = meta
        if db.execute(
            "SELECT 1 FROM passes WHERE peer=? AND pass_id=?", (peer, pass_id)
        ).fetchone():
            raise KeyStoreError(f"pass {pass_id!r} was already deposited for peer {peer!r}")
        clash = _first_existing(db, ids)
        if clash is not None:
            raise KeyStoreError(f"key id {clash} is already in the store")
        db.execute(
            "INSERT INTO passes(peer, pass_id, deposited_utc, total_bits, blocks, block_bits)"
            " VALUES (?,?,?,?,?,?)",
            (peer, pass_id, now, total_bits, n_blocks, block_bits),
        )
        db.executemany(
            "INSERT INTO blocks(key_id, peer, pass_id, block_index, size_bits, origin,"
            " deposited_utc, state, bits) VALUES (?,?,?,?,?,?,?,'available',?)",
            rows,
        )

    def has_pass(self, peer: str, pass_id: str) -> bool:
        """Whether ``(peer, pass_id)`` has been deposited."""
        with self._lock:
            return bool(self._db.execute(
                "SELECT 1 FROM passes WHERE peer=? AND pass_id=?", (peer, pass_id)
            ).fetchone())

    def remainder_bits(self, peer: str, pass_id: str) -> int:
        """Bits of a pass's key dropped because they did not fill a whole block."""
        with self._lock:
            row = self._db.execute(
                "SELECT total_bits - blocks*block_bits FROM passes WHERE peer=? AND pass_id=?",
                (peer, pass_id),
            ).fetchone()
        if row is None:
            raise KeyStoreError(f"no pass {pass_id!r} for peer {peer!r}")
        return int(row[0])

    # -- metadata --------------------------------------------------------------------------

    def peers(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT peer FROM blocks ORDER BY peer")]

    def level(self, peer: str) -> StoreLevel:
        """Blocks and bits available for ``peer`` (zeros for an unknown peer)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT state, COUNT(*), COALESCE(SUM(size_bits),0) FROM blocks"
                " WHERE peer=? GROUP BY state", (peer,),
            ).fetchall()
        by = {s: (int(n), int(b)) for s, n, b in rows}
        return StoreLevel(
            peer=peer,
            available_blocks=by.get("available", (0, 0))[0],
            available_bits=by.get("available", (0, 0))[1],
            reserved_blocks=by.get("reserved", (0, 0))[0],
            consumed_blocks=by.get("consumed", (0, 0))[0],
        )

    def levels(self) -> list[StoreLevel]:
        return [self.level(p) for p in self.peers()]

    def list(
        self, peer: str | None = None, *, state: BlockState | None = None, limit: int | None = None
    ) -> list[KeyBlockInfo]:
        """Block metadata in deposit order, optionally for one peer and/or state."""
        sql = f"SELECT {_INFO_COLS} FROM blocks"
        cond, args = [], []
        if peer is not None:
            cond.append("peer=?")
            args.append(peer)
        if state is not None:
            cond.append("state=?")
            args.append(BlockState(state).value)
        if cond:
            sql += " WHERE " + " AND ".join(cond)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._lock:
            return [_info(r) for r in self._db.execute(sql, args)]

    def info(self, key_id: UUID | str) -> KeyBlockInfo:
        """Metadata of one block; :class:`KeyNotAvailable` if unknown."""
        kid = _as_uuid(key_id)
        with self._lock:
            row = self._db.execute(
                f"SELECT {_INFO_COLS} FROM blocks WHERE key_id=?", (str(kid),)
            ).fetchone()
        if row is None:
            raise KeyNotAvailable(f"no key block {kid} in the store")
        return _info(row)

    # -- consumption -----------------------------------------------------------------------

    def take(self, peer: str, count: int, *, purpose: str) -> list[KeyBlock]:
        """Consume the ``count`` oldest available blocks of ``peer``; all or nothing.

        Durable before it returns: the blocks are marked consumed and their bits erased from
        the store in the same committed transaction, so they are never handed out again.
        """
        with self._lock, self._tx() as db:
            return self._take(db, peer, count, purpose)

    def _take(self, db: sqlite3.Connection, peer: str, count: int, purpose: str) -> list[KeyBlock]:
        _check_text("purpose", purpose)
        count = _check_count(count)
        rows = self._oldest_available(db, peer, count)
        return self._consume(db, rows, purpose)

    @staticmethod
    def _oldest_available(db: sqlite3.Connection, peer: str, count: int) -> list[tuple]:
        """The ``count`` oldest available rows of ``peer`` (info columns, then bits), or
        :class:`KeyNotAvailable` when there are fewer."""
        rows = db.execute(
            f"SELECT {_INFO_COLS}, bits FROM blocks WHERE peer=? AND state='available'"
            " ORDER BY seq LIMIT ?", (peer, count),
        ).fetchall()
        if len(rows) < count:
            raise KeyNotAvailable(
                f"peer {peer!r} has {len(rows)} available key blocks, {count} asked"
            )
        return rows

    def take_ids(
        self, key_ids: Sequence[UUID | str], *, peer: str, purpose: str
    ) -> list[KeyBlock]:
        """Consume the named available blocks of ``peer``, in the order given; all or nothing."""
        with self._lock, self._tx() as db:
            return self._take_ids(db, key_ids, peer, purpose)

    def _take_ids(self, db: sqlite3.Connection, key_ids: Sequence[UUID | str], peer: str,
                  purpose: str) -> list[KeyBlock]:
        _check_text("purpose", purpose)
        ids = _unique_ids(key_ids)
        rows = self._available_rows(db, ids, peer)
        return self._consume(db, rows, purpose)

    def reserve(
        self, peer: str, count: int, *, holder: str, size_bits: int | None = None
    ) -> list[KeyBlock]:
        """Reserve the ``count`` oldest available blocks of ``peer`` for ``holder``.

        Returns them with their bits (a KME hands them to the master SAE); they stay in the
        store, reserved, until :meth:`take_reserved` by the same holder. ``size_bits``
        (default the block size) is recorded so the second taker gets the same key length.
        """
        with self._lock, self._tx() as db:
            return self._reserve(db, peer, count, holder, size_bits)

    def _reserve(self, db: sqlite3.Connection, peer: str, count: int, holder: str,
                 size_bits: int | None) -> list[KeyBlock]:
        _check_text("holder", holder)
        count = _check_count(count)
        rows = self._oldest_available(db, peer, count)
        now = self._now_iso()
        out = []
        for r in rows:
            size = r[4] if size_bits is None else int(size_bits)
            if not 0 < size <= r[4]:
                raise KeyStoreError(f"size {size} bits is outside 1..{r[4]} of a block")
            db.execute(
                "UPDATE blocks SET state='reserved', holder=?, reserved_size_bits=?,"
                " state_utc=? WHERE key_id=?", (holder, size, now, r[0]),
            )
            out.append(KeyBlock(_info(r[:-1], state="reserved", holder=holder,
                                      reserved_size_bits=size, state_utc=now), r[-1]))
        return out

    def take_reserved(
        self, key_ids: Sequence[UUID | str], *, holder: str, purpose: str
    ) -> list[KeyBlock]:
        """Consume blocks reserved for ``holder``, in the order given; all or nothing.

        A block reserved for someone else, not reserved, consumed or unknown is refused
        with :class:`KeyNotAvailable`, and nothing is consumed.
        """
        with self._lock, self._tx() as db:
            return self._take_reserved(db, key_ids, holder, purpose)

    def _take_reserved(self, db: sqlite3.Connection, key_ids: Sequence[UUID | str], holder: str,
                       purpose: str) -> list[KeyBlock]:
        _check_text("holder", holder)
        _check_text("purpose", purpose)
        ids = _unique_ids(key_ids)
        rows = self._rows_by_id(db, ids)
        for kid, row in zip(ids, rows, strict=True):
            if row is None or row[7] != "reserved" or row[8] != holder:
                raise KeyNotAvailable(f"no key {kid} reserved for {holder!r}")
        return self._consume(db, rows, purpose)

    # -- group commit ----------------------------------------------------------------------

    def batch(self, ops: Sequence[Callable[[Transaction], T]]) -> list[T | KeyStoreError]:
        """Run ``ops`` in ONE transaction with one fsync (group commit); all-or-nothing each.

        Each op runs in a SAVEPOINT of its own: an op that raises :class:`KeyStoreError`
        (e.g. :class:`KeyNotAvailable`) is rolled back alone and its exception is its
        result; the others stand. Nothing is durable, and so no result may be handed out,
        before this returns: if the final COMMIT fails, every result becomes that
        :class:`KeyStoreError` and nothing of the batch happened. An exception that is not
        a :class:`KeyStoreError` rolls back the whole batch and propagates.
        """
        results: list[T | KeyStoreError] = []
        with self._lock, self._across_processes(), self._tx() as db:
            tx = Transaction(self, db)
            for op in ops:
                db.execute("SAVEPOINT op")
                try:
                    value = op(tx)
                except KeyStoreError as exc:
                    db.execute("ROLLBACK TO op")
                    db.execute("RELEASE op")
                    results.append(exc)
                    continue
                except sqlite3.Error as exc:
                    db.execute("ROLLBACK TO op")
                    db.execute("RELEASE op")
                    results.append(KeyStoreError(f"key store failed: {exc}"))
                    continue
                db.execute("RELEASE op")
                results.append(value)
        return results

    def reassign(
        self, key_ids: Sequence[UUID | str], *, from_peer: str, to_peer: str
    ) -> list[KeyBlockInfo]:
        """Move named available blocks from ``from_peer`` to ``to_peer``; all or nothing."""
        _check_name("peer", to_peer, _PEER_RE)
        ids = _unique_ids(key_ids)
        with self._lock, self._tx() as db:
            rows = self._rows_by_id(db, ids)
            for kid, row in zip(ids, rows, strict=True):
                if row is None or row[1] != from_peer or row[7] != "available":
                    raise KeyNotAvailable(f"no available key block {kid} for peer {from_peer!r}")
            now = self._now_iso()
            db.executemany(
                "UPDATE blocks SET peer=?, state_utc=? WHERE key_id=?",
                [(to_peer, now, str(k)) for k in ids],
            )
            return [_info(r[:-1], peer=to_peer, state_utc=now) for r in rows]

    def take_many(
        self, wants: Sequence[tuple[str, int]], *, purpose: str
    ) -> list[list[KeyBlock]]:
        """Consume the oldest ``count`` available blocks of each ``(peer, count)`` in one
        transaction; all or nothing (the relay takes both links' blocks together)."""
        _check_text("purpose", purpose)
        with self._lock, self._tx() as db:
            out = []
            for peer, count in wants:
                rows = self._oldest_available(db, peer, _check_count(count))
                out.append(self._consume(db, rows, purpose))
            return out

    def convert(
        self,
        key_ids: Sequence[UUID | str],
        *,
        peer: str,
        purpose: str,
        transform: Callable[[list[KeyBlock]], np.ndarray],
        to_peer: str,
        pass_id: str,
        new_key_ids: Sequence[UUID],
        origin: str = "relayed",
    ) -> list[KeyBlockInfo]:
        """Consume the named available blocks of ``peer`` and deposit ``transform(blocks)``
        (uint8 0/1 bits) for ``to_peer`` under ``new_key_ids``, in one transaction.

        The relay's receiving station: its own blocks shared with the satellite become the
        partner's key (own ⊕ announced), and nothing is left half done after a crash.
        If ``transform`` raises, nothing changes.
        """
        _check_text("purpose", purpose)
        ids = _unique_ids(key_ids)
        with self._lock, self._tx() as db:
            rows = self._available_rows(db, ids, peer)
            block_bits = {r[4] for r in rows}
            if len(block_bits) != 1:
                raise KeyStoreError("the named blocks differ in size")
            taken = self._consume(db, rows, purpose)
            new_bits = transform(taken)
            new_rows, infos, meta = self._prepare_deposit(
                to_peer, pass_id, new_bits, block_bits.pop(), new_key_ids, origin)
            self._insert_deposit(db, to_peer, pass_id, new_rows, meta)
            return infos

    # -- internals -------------------------------------------------------------------------

    def _consume(self, db: sqlite3.Connection, rows: list, purpose: str) -> list[KeyBlock]:
        now = self._now_iso()
        db.executemany(
            "UPDATE blocks SET state='consumed', bits=NULL, purpose=?, state_utc=? WHERE key_id=?",
            [(purpose, now, r[0]) for r in rows],
        )
        return [KeyBlock(_info(r[:-1], state="consumed", purpose=purpose, state_utc=now), r[-1])
                for r in rows]

    def _available_rows(self, db: sqlite3.Connection, ids: list[UUID], peer: str) -> list:
        """The rows of ``ids``, each ``peer``'s and available, or KeyNotAvailable naming the
        first that is not (so a request is served whole or not at all)."""
        rows = self._rows_by_id(db, ids)
        for kid, row in zip(ids, rows, strict=True):
            if row is None or row[1] != peer:
                raise KeyNotAvailable(f"no key block {kid} for peer {peer!r}")
            if row[7] != "available":
                raise KeyNotAvailable(f"key block {kid} is not available ({row[7]})")
        return rows

    def _rows_by_id(self, db: sqlite3.Connection, ids: list[UUID]) -> list:
        out = []
        for k in ids:
            out.append(db.execute(
                f"SELECT {_INFO_COLS}, bits FROM blocks WHERE key_id=?", (str(k),)
            ).fetchone())
        return out

    @contextlib.contextmanager
    def _across_processes(self):
        """An exclusive ``flock`` shared by the batch writers of every process on this store.

        SQLite alone serialises them too, but a process that finds the write lock taken
        polls for it with sleeps of up to 100 ms; several KME workers then wait far longer
        than the transaction they wait for. A blocking ``flock`` wakes as soon as it is free.
        """
        if self._batch_lock_fd is None:
            self._batch_lock_fd = os.open(self.directory / BATCH_LOCK_NAME,
                                          os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._batch_lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._batch_lock_fd, fcntl.LOCK_UN)

    def _now_iso(self) -> str:
        return from_epoch_s(self._clock.now_s()).isoformat()

    def _tx(self) -> _Transaction:
        if self._db is None:
            raise KeyStoreError(f"key store {self.directory} is closed")
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT (fsynced), ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise KeyStoreError(f"key store unavailable: {exc}") from None
        return self.db

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                self.db.execute("ROLLBACK")
                raise KeyStoreError(f"key store commit failed: {exc}") from None
            return False
        self.db.execute("ROLLBACK")
        if issubclass(exc_type, sqlite3.Error):
            raise KeyStoreError(f"key store failed: {exc}") from None
        return False


class Transaction:
    """The consuming operations of a :class:`KeyStore`, inside one :meth:`KeyStore.batch`.

    Same semantics and arguments as the store's methods of the same names; durable only
    when the batch has returned.
    """

    __slots__ = ("_db", "_store")

    def __init__(self, store: KeyStore, db: sqlite3.Connection):
        self._store = store
        self._db = db

    def take(self, peer: str, count: int, *, purpose: str) -> list[KeyBlock]:
        return self._store._take(self._db, peer, count, purpose)

    def take_ids(self, key_ids: Sequence[UUID | str], *, peer: str,
                 purpose: str) -> list[KeyBlock]:
        return self._store._take_ids(self._db, key_ids, peer, purpose)

    def reserve(self, peer: str, count: int, *, holder: str,
                size_bits: int | None = None) -> list[KeyBlock]:
        return self._store._reserve(self._db, peer, count, holder, size_bits)

    def take_reserved(self, key_ids: Sequence[UUID | str], *, holder: str,
                      purpose: str) -> list[KeyBlock]:
        return self._store._take_reserved(self._db, key_ids, holder, purpose)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS passes(
    peer TEXT NOT NULL, pass_id TEXT NOT NULL, deposited_utc TEXT NOT NULL,
    total_bits INTEGER NOT NULL, blocks INTEGER NOT NULL, block_bits INTEGER NOT NULL,
    PRIMARY KEY (peer, pass_id));
CREATE TABLE IF NOT EXISTS blocks(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id TEXT NOT NULL UNIQUE, peer TEXT NOT NULL, pass_id TEXT NOT NULL,
    block_index INTEGER NOT NULL, size_bits INTEGER NOT NULL, origin TEXT NOT NULL,
    deposited_utc TEXT NOT NULL, state TEXT NOT NULL, holder TEXT,
    reserved_size_bits INTEGER, purpose TEXT, state_utc TEXT, bits BLOB);
CREATE INDEX IF NOT EXISTS blocks_by_peer_state ON blocks(peer, state, seq);
"""
_INFO_COLS = (
    "key_id, peer, pass_id, block_index, size_bits, origin, deposited_utc, state, holder,"
    " reserved_size_bits, purpose, state_utc"
)


def _info(row: Iterable, **override: object) -> KeyBlockInfo:
    names = ("key_id", "peer", "pass_id", "index", "size_bits", "origin", "deposited_utc",
             "state", "holder", "reserved_size_bits", "purpose", "state_utc")
    d = dict(zip(names, row, strict=True))
    d.update(override)
    return KeyBlockInfo.model_validate(d)


def _first_existing(db: sqlite3.Connection, ids: list[UUID]) -> UUID | None:
    for k in ids:
        if db.execute("SELECT 1 FROM blocks WHERE key_id=?", (str(k),)).fetchone():
            return k
    return None


def _as_uuid(key_id: UUID | str) -> UUID:
    if isinstance(key_id, UUID):
        return key_id
    try:
        return UUID(str(key_id))
    except ValueError:
        raise KeyNotAvailable(f"{str(key_id)[:60]!r} is not a UUID") from None


def _unique_ids(key_ids: Sequence[UUID | str]) -> list[UUID]:
    ids = [_as_uuid(k) for k in key_ids]
    if not ids:
        raise KeyStoreError("no key ids given")
    if len(set(ids)) != len(ids):
        raise KeyStoreError("the same key id is named twice")
    return ids


def _check_count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise KeyStoreError(f"block count must be a positive integer, got {count!r:.40}")
    return count


def _check_text(kind: str, value: str) -> None:
    if not isinstance(value, str) or not _TEXT_RE.fullmatch(value):
        raise KeyStoreError(f"invalid {kind} {value!r:.80}: 1-200 printable ASCII, no spaces")
