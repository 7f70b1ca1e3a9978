"""The detection-event pipeline: tagger batches -> pass file -> stream, off the event loop.

``EventPipeline`` is what the daemon holds; ``open_pass`` gives a :class:`PassRecorder`
per pass (segment). ``await recorder.push(batch)`` only enqueues: a writer thread
serialises, compresses and appends the batch to the pass file, fsyncs it within the flush
bound, and hands it to the stream server thread. The queue is bounded: when the disk
cannot keep up, ``push`` waits (backpressure on the tagger side only, where the tagger's own
buffer and overflow accounting take over). A slow or absent consumer never slows recording:
it is served from the pass file when it catches up.

Every loss is counted and kept: events the tagger reports missed (per batch, in the file),
batches the disk refused (ENOSPC; listed in the sidecar and the end-of-pass message).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field

from drivers.timetagger.base import Batch
from station.config import StationConfig
from station.config.events import EventsConfig
from station.events import passfile
from station.events.passfile import PassHeader
from station.events.protocol import Lost
from station.events.source import Entry, PassSource, build_pass_end, channel_counts
from station.events.stream_server import StreamServer, lower_priority
from station.files import make_dirs

log = logging.getLogger(__name__)

_PS_PER_S = 1_000_000_000_000
_CLOSE = object()


class _Item:
    """A batch on its way: encoded by any encoder thread, written in push order."""

    __slots__ = ("batch", "done", "result")

    def __init__(self, batch: Batch):
        self.batch = batch
        self.done = threading.Event()
        self.result: tuple[Any, ...] = ()


class PassTotals(BaseModel):
    """What one recorded pass (segment) amounts to."""

    pass_id: str = Field(description="Stream pass id (file stem).")
    path: Path
    outcome: str = ""
    reason: str = ""
    batches_recorded: int = 0
    events_recorded: int = 0
    counts_by_channel: dict[int, int] = Field(default_factory=dict)
    events_streamed: int = Field(0, description="Events acknowledged by a consumer so far.")
    events_lost: int = Field(0, description="missed_by_tagger + lost_disk.")
    events_missed_by_tagger: int = 0
    overflow_batches: int = 0
    events_lost_disk: int = 0
    batches_lost_disk: int = 0
    lost_batches: list[Lost] = Field(default_factory=list)
    tagger_seq_gaps: int = 0
    first_tagger_seq: int | None = None
    last_tagger_seq: int | None = None
    start_ps: int | None = None
    end_ps: int | None = None
    bytes_written: int = 0
    syncs: int = 0
    disk_errors: list[str] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RecorderStats:
    """Live progress of a pass, cheap to take (for MQTT)."""

    events_recorded: int
    batches_recorded: int
    events_streamed: int
    events_lost: int
    queue_depth: int
    bytes_written: int
    consumer_connected: bool
    disk_error: str | None


class PassRecorder:
    """Records one pass (segment): obtained from :meth:`EventPipeline.open_pass`."""

    def __init__(self, pipeline: EventPipeline, header: PassHeader, path: Path,
                 on_loss: Callable[[str], None] | None = None):
        cfg = pipeline.events_cfg
        self.header = header
        self.path = path
        self.pass_id = header.stem
        self._pipeline = pipeline
        self._on_loss = on_loss
        self._flush_interval_s = cfg.flush_interval_s
        # Room to finish the pass on a full disk (loss record, end marker, sidecar), taken
        # now and given back at close.
        self._reserve = path.with_name(f".{path.stem}.reserve")
        if not passfile.reserve_space(self._reserve):
            log.warning("pass %s: cannot reserve %d bytes to close the pass on a full disk",
                        self.pass_id, passfile.CLOSE_RESERVE_BYTES)
        self._writer = passfile.PassFileWriter(path, header.schema_metadata(),
                                               compression=cfg.compression)
        self.source = PassSource(self.pass_id, path, self._writer.schema, recording=True,
                                 cache_batches=cfg.cache_batches)
        self._loop = asyncio.get_running_loop()
        self._max_queue = cfg.max_queue_batches
        self._slots = asyncio.Semaphore(cfg.max_queue_batches)
        self._depth = 0
        self._closing = False
        self._done: Future[PassTotals] = Future()
        self._t = PassTotals(pass_id=self.pass_id, path=path)
        self._counts = np.zeros(256, np.int64)
        self._disk_error: str | None = None
        self._last_sync_end_ps: int | None = None
        #: UTC (Unix s) of tagger time 0, from the first batch that says.
        self._epoch_s: float | None = None
        self._unsynced_since: float | None = None
        # Encoders compress batches in parallel while the writer appends them in order:
        # the pool takes every item, _order gives the writer the items in push order.
        self._order: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._encoders = _EncoderPool(self.pass_id, self._writer.schema, cfg.compression,
                                      cfg.encoder_threads)
        self._thread = threading.Thread(target=self._run, name=f"pass-writer-{self.pass_id}",
                                        daemon=True)
        self._thread.start()

    # -- loop side ----------------------------------------------------------------------
    async def push(self, batch: Batch) -> None:
        """Queue a batch for the file and the stream. Waits only when the writer is
        ``max_queue_batches`` behind (the disk is the bottleneck); never drops."""
        if self._closing:
            raise RuntimeError(f"pass {self.pass_id} is closed; batch {batch.info.seq} refused")
        await self._slots.acquire()
        if self._closing or self._done.done():
            # Closed while we waited, or the writer died: nothing would record this batch.
            self._slots.release()
            why = "is closed" if self._closing else \
                f"cannot record: its writer stopped ({self._done.exception()})"
            raise RuntimeError(f"pass {self.pass_id} {why}; batch {batch.info.seq} refused")
        self._depth += 1
        item = _Item(batch)
        self._order.put(item)
        self._encoders.put(item)

    async def close(self, outcome: str = "completed", reason: str = "") -> PassTotals:
        """Write what is queued, close the file (end-of-stream marker, fsync, sidecar) and
        return the totals. The stream keeps serving the file to consumers afterwards."""
        if not self._closing:
            self._closing = True
            self._t.outcome, self._t.reason = outcome, reason
            self._order.put(_CLOSE)
            self._encoders.close()
        totals = await asyncio.wrap_future(self._done)
        if self._pipeline.recorders.get(self.pass_id) is self:
            del self._pipeline.recorders[self.pass_id]
        totals.events_streamed = self.source.events_acked()
        return totals

    def stats(self) -> RecorderStats:
        t = self._t
        return RecorderStats(
            events_recorded=t.events_recorded, batches_recorded=t.batches_recorded,
            events_streamed=self.source.events_acked(),
            events_lost=t.events_missed_by_tagger + t.events_lost_disk,
            queue_depth=self._depth, bytes_written=self._writer.offset,
            consumer_connected=self._pipeline.consumer_connected, disk_error=self._disk_error)

    # -- writer thread ----------------------------------------------------------------------
    def _release(self) -> None:
        self._depth -= 1
        self._slots.release()

    def _run(self) -> None:
        lower_priority()
        try:
            self._sidecar("recording")
            while True:
                timeout = None
                if self._unsynced_since is not None:
                    # Durability deadline in wall time: data at risk on a power cut.
                    timeout = max(0.0, self._unsynced_since + self._flush_interval_s
                                  - time.monotonic())
                try:
                    item = self._order.get(timeout=timeout)
                except queue.Empty:
                    self._sync()
                    continue
                if item is _CLOSE:
                    break
                item.done.wait()
                try:
                    self._record(item.result)
                finally:
                    self._call_loop(self._release)
            self._finish()
            self._done.set_result(self._t)
        except BaseException as exc:  # report to close()/push(), never hang them
            log.exception("pass %s writer failed", self.pass_id)
            self._done.set_exception(exc)
            self._call_loop(lambda: [self._slots.release() for _ in range(self._max_queue)])

    def _call_loop(self, fn: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn)
        except RuntimeError:
            pass  # the loop is gone (shutdown); nobody is waiting any more

    def _record(self, item: tuple[Any, ...]) -> None:
        info, ts, ch, md, parts = item
        t = self._t
        if t.last_tagger_seq is not None and info.seq != t.last_tagger_seq + 1:
            t.tagger_seq_gaps += 1
            log.warning("pass %s: tagger batch sequence jumps from %d to %d",
                        self.pass_id, t.last_tagger_seq, info.seq)
        if t.first_tagger_seq is None:
            t.first_tagger_seq = info.seq
            t.start_ps = info.start_ps
        if self._epoch_s is None and info.start_time_s is not None:
            self._epoch_s = info.start_time_s - info.start_ps / _PS_PER_S
        t.last_tagger_seq, t.end_ps = info.seq, info.end_ps
        t.events_missed_by_tagger += info.missed_events
        if info.lossy:
            t.overflow_batches += 1
        if isinstance(parts, Exception):
            self._lost(info, len(ts), parts)
            return
        try:
            offset, length = self._writer.append(parts)
        except OSError as exc:
            self._lost(info, len(ts), exc)
            return
        counts = channel_counts(ch)
        for k, v in counts.items():
            self._counts[int(k)] += v
        t.batches_recorded += 1
        t.events_recorded += len(ts)
        t.bytes_written = self._writer.offset
        self.source.append(Entry(offset, length, len(ts), t.events_recorded, counts, md), ts, ch)
        self._pipeline.server_notify()
        if self._unsynced_since is None:
            self._unsynced_since = time.monotonic()
        if self._last_sync_end_ps is None:
            self._last_sync_end_ps = info.start_ps
        # Durability bound in tagger time too: at most flush_interval_s of recorded data.
        if (info.end_ps - self._last_sync_end_ps >= self._flush_interval_s * _PS_PER_S
                or time.monotonic() - self._unsynced_since >= self._flush_interval_s):
            self._sync()

    def _lost(self, info: Any, n: int, exc: Exception) -> None:
        t = self._t
        if isinstance(exc, OSError):
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            reason = f"not recorded: {name}: {exc.strerror or exc}"
        else:
            reason = f"not recorded: {type(exc).__name__}: {exc}"
        t.lost_batches.append(Lost(tagger_seq=info.seq, n_events=n, start_ps=info.start_ps,
                                   end_ps=info.end_ps, reason=reason))
        t.events_lost_disk += n
        t.batches_lost_disk += 1
        if self._disk_error != reason:
            log.error("pass %s: batch %d (%d events) %s; counted as lost, recording goes on",
                      self.pass_id, info.seq, n, reason)
            t.disk_errors.append(reason)
            self._report_loss(f"pass {self.pass_id}: batch {info.seq} ({n} events) {reason}; "
                              "the events are lost and counted, recording goes on")
        self._disk_error = reason

    def _report_loss(self, message: str) -> None:
        """Tell the daemon (on its loop) the moment the disk starts refusing."""
        if self._on_loss is not None:
            on_loss = self._on_loss
            self._call_loop(lambda: on_loss(message))

    def _sync(self) -> None:
        try:
            self._writer.sync()
            self._t.syncs += 1
        except OSError as exc:
            msg = f"fsync of {self.path} failed: {exc}"
            if msg not in self._t.disk_errors:
                log.error("pass %s: %s", self.pass_id, msg)
                self._t.disk_errors.append(msg)
                self._report_loss(f"pass {self.pass_id}: {msg}")
            self._disk_error = msg
        self._unsynced_since = None
        self._last_sync_end_ps = self._t.end_ps

    def _finish(self) -> None:
        t = self._t
        # Give back the reserved space first: on a full disk it is what lets the loss
        # record, the end marker and the sidecar be written.
        self._reserve.unlink(missing_ok=True)
        if t.lost_batches:
            self._write_loss_record()
        try:
            self._writer.close(end_of_stream=True)
        except OSError as exc:
            t.disk_errors.append(f"closing {self.path}: {exc}")
            log.error("pass %s: closing the file: %s", self.pass_id, exc)
        t.bytes_written = self._writer.offset
        t.counts_by_channel = {c: int(n) for c, n in enumerate(self._counts) if n}
        t.events_lost = t.events_missed_by_tagger + t.events_lost_disk
        self.source.finish(build_pass_end(self.pass_id, self.source.entries, t.lost_batches,
                                          outcome=t.outcome, reason=t.reason, complete=True))
        self._pipeline.server_notify()
        self._sidecar("closed")
        log.info("pass %s closed: %d batches, %d events, %d lost; %s", self.pass_id,
                 t.batches_recorded, t.events_recorded, t.events_lost, self.path)

    def _write_loss_record(self) -> None:
        """The file's own account of the refused batches: a last, zero-row record batch."""
        t = self._t
        record, md = _loss_record(t, self._epoch_s, self.header.tagger_resolution_ps)
        empty_ts, empty_ch = np.empty(0, np.int64), np.empty(0, np.uint8)
        try:
            offset, length = self._writer.write(empty_ts, empty_ch, md)
        except OSError as exc:
            msg = f"cannot write the loss record to {self.path}: {exc}"
            log.error("pass %s: %s", self.pass_id, msg)
            t.disk_errors.append(msg)
            return
        self.source.append(Entry(offset, length, 0, t.events_recorded, {}, md), empty_ts, empty_ch)
        t.bytes_written = self._writer.offset
        log.warning("pass %s: loss record written: %d batches, %d events not recorded",
                    self.pass_id, record.batches, record.events)

    def _sidecar(self, state: str) -> None:
        msg = write_status_sidecar(self.path, self.pass_id, self.header, state,
                                   self._t if state == "closed" else None)
        if msg is not None:
            log.error("pass %s: %s", self.pass_id, msg)
            self._t.disk_errors.append(msg)


def _loss_record(t: PassTotals, epoch_s: float | None,
                 resolution_ps: float) -> tuple[passfile.LossRecord, dict[str, str]]:
    """The loss record of a pass's refused batches, and its batch metadata (a seq after
    every batch of the pass, at its end)."""
    record = passfile.LossRecord(batches=t.batches_lost_disk, events=t.events_lost_disk,
                                 ranges=loss_ranges(t.lost_batches, epoch_s))
    last_seq = max(x.tagger_seq for x in t.lost_batches)
    seq = max(last_seq, t.last_tagger_seq if t.last_tagger_seq is not None else last_seq) + 1
    at_ps = t.end_ps if t.end_ps is not None else 0
    md = passfile.loss_record_metadata(record, seq=seq, at_ps=at_ps, resolution_ps=resolution_ps)
    return record, md


def write_status_sidecar(path: Path, pass_id: str, header: PassHeader, state: str,
                         totals: PassTotals | None) -> str | None:
    """The pass file's status sidecar (``qkd-station-pass-status``); the problem, if it
    could not be written."""
    obj: dict[str, Any] = {"format": "qkd-station-pass-status", "version": 1,
                           "pass_id": pass_id, "file": path.name, "state": state,
                           "header": header.model_dump(mode="json")}
    if totals is not None:
        obj["totals"] = totals.model_dump(mode="json")
    try:
        passfile.write_json_atomic(passfile.sidecar_path(path), obj)
    except OSError as exc:
        return f"cannot write {passfile.sidecar_path(path)}: {exc}"
    return None


class _EncoderPool:
    """Threads that serialise and compress batches in parallel (any order); each item's
    ``done`` is set when its ``result`` is ready for the writer."""

    def __init__(self, pass_id: str, schema: pa.Schema, compression: str, n_threads: int):
        self.pass_id = pass_id
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, args=(passfile.BatchEncoder(schema, compression),),
                             name=f"pass-encoder{i}-{pass_id}", daemon=True)
            for i in range(n_threads)]
        for t in self._threads:
            t.start()

    def put(self, item: _Item) -> None:
        self._q.put(item)

    def close(self) -> None:
        """Every thread ends once the items queued before are encoded."""
        for _ in self._threads:
            self._q.put(_CLOSE)

    def _run(self, encoder: passfile.BatchEncoder) -> None:
        lower_priority()
        while True:
            item = self._q.get()
            if item is _CLOSE:
                return
            info = item.batch.info
            try:
                ts, ch = passfile.columns_of(item.batch.events)
                md = passfile.batch_metadata(info)
                item.result = (info, ts, ch, md, encoder.encode(ts, ch, md))
            except Exception as exc:  # never seen; but a batch that cannot be encoded is
                # counted as lost like one the disk refused, and recording goes on
                log.exception("pass %s: cannot encode batch %d", self.pass_id, info.seq)
                item.result = (info, np.empty(len(item.batch.events), np.int64), None, None, exc)
            finally:
                item.done.set()


def loss_ranges(lost: list[Lost], epoch_s: float | None = None) -> list[passfile.LossRange]:
    """Refused batches folded into ranges of consecutive tagger seqs with one reason."""
    out: list[passfile.LossRange] = []
    for x in sorted(lost, key=lambda x: x.tagger_seq):
        cur = out[-1] if out else None
        if cur is not None and x.tagger_seq == cur.last_seq + 1 and x.reason == cur.reason:
            cur.last_seq, cur.end_ps = x.tagger_seq, x.end_ps
            cur.batches += 1
            cur.events += x.n_events
            continue
        out.append(passfile.LossRange(
            first_seq=x.tagger_seq, last_seq=x.tagger_seq, batches=1, events=x.n_events,
            start_ps=x.start_ps, end_ps=x.end_ps, reason=x.reason,
            start_time_s=None if epoch_s is None else epoch_s + x.start_ps / _PS_PER_S))
    return out


@dataclass(frozen=True, slots=True)
class RecoveryInfo:
    """What :func:`recover_interrupted` found and did."""

    path: Path
    batches: int
    events: int
    kept_bytes: int
    discarded_bytes: int
    was_closed: bool
    reason: str

    def __str__(self) -> str:
        if self.was_closed:
            return f"closed cleanly, {self.batches} batches, {self.events} events"
        return (f"{self.batches} complete batches ({self.events} events) kept, "
                f"{self.discarded_bytes} bytes of an incomplete batch discarded; {self.reason}")


def recover_interrupted(path: Path | str) -> RecoveryInfo:
    """Close a pass file left open by a crash: cut it after its last complete batch, add
    the end-of-stream marker, and mark it ``interrupted`` in its sidecar. Idempotent.

    Blocking (reads the file): call it with ``asyncio.to_thread``.
    """
    path = Path(path)
    # The dead recorder's reserve: giving it back is what lets the end be written on a
    # full disk.
    path.with_name(f".{path.stem}.reserve").unlink(missing_ok=True)
    try:
        scan = passfile.scan_pass_file(path)
    except OSError as exc:
        # Nothing to recover (never created, or removed): say so, don't raise at start-up.
        return RecoveryInfo(path, 0, 0, 0, 0, False, f"cannot read {path}: {exc}")
    events = sum(n for *_, n in scan.index)
    side = passfile.read_sidecar(path) or {}
    if scan.stop.complete:
        return RecoveryInfo(path, scan.batches, events, scan.stop.file_size_bytes, 0, True,
                            scan.stop.reason)
    good = scan.stop.last_good_offset_bytes
    discarded = scan.stop.file_size_bytes - good
    if scan.schema is not None:
        with open(path, "r+b") as f:
            f.truncate(good)
            f.seek(good)
            f.write(passfile.EOS)
            f.flush()
            os.fsync(f.fileno())
    reason = scan.stop.reason
    info = RecoveryInfo(path, scan.batches, events, good, discarded, False, reason)
    entries, cum = [], 0
    for off, ln, md, n in scan.index:
        cum += n
        entries.append(Entry(off, ln, n, cum, {}, md))
    end = build_pass_end(path.stem, entries, [], outcome="interrupted", reason=reason,
                         complete=False)
    obj = {"format": "qkd-station-pass-status", "version": 1, "pass_id": path.stem,
           "file": path.name, "state": "interrupted", "header": side.get("header"),
           "recovery": {"batches": scan.batches, "events": events, "kept_bytes": good,
                        "discarded_bytes": discarded, "reason": reason},
           "totals": {"outcome": "interrupted", "reason": reason,
                      "batches_recorded": scan.batches, "events_recorded": events,
                      "events_missed_by_tagger": end.missed_events,
                      "overflow_batches": end.overflow_batches, "lost_batches": []}}
    passfile.write_json_atomic(passfile.sidecar_path(path), obj)
    log.warning("recovered %s: %s", path, info)
    return info


class EventPipeline:
    """The daemon's event pipeline: pass recorders and the stream server."""

    def __init__(self, cfg: StationConfig | EventsConfig, state_dir: Path | None = None):
        if isinstance(cfg, EventsConfig):
            if state_dir is None:
                raise ValueError("EventPipeline(EventsConfig) needs state_dir")
            self.events_cfg, self.state_dir = cfg, Path(state_dir)
        else:
            self.events_cfg, self.state_dir = cfg.events, Path(cfg.state_dir)
        self.passes_dir = self.state_dir / self.events_cfg.passes_dir
        self.server: StreamServer | None = None
        self.recorders: dict[str, PassRecorder] = {}

    async def start(self) -> None:
        """Create the passes directory and start serving the stream (raises if the
        endpoint cannot be bound)."""
        cfg = self.events_cfg
        await asyncio.to_thread(make_dirs, self.passes_dir)
        server = StreamServer(cfg.stream_endpoint, self.passes_dir,
                              max_window_batches=cfg.stream_max_window_batches,
                              consumer_timeout_s=cfg.consumer_timeout_s,
                              curve_secret_key_file=cfg.curve_secret_key_file,
                              curve_consumer_key_files=cfg.curve_consumer_key_files)
        await asyncio.to_thread(server.start)
        self.server = server
        log.info("event stream served on %s; pass files in %s", server.bound_endpoint,
                 self.passes_dir)

    async def stop(self) -> None:
        """Close any pass still open (outcome ``interrupted``) and stop the stream."""
        for rec in list(self.recorders.values()):
            if not rec._closing:
                await rec.close("interrupted", "the daemon stopped during the pass")
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
            self.server = None

    @property
    def endpoint(self) -> str:
        """The endpoint actually bound (a ``tcp://host:*`` config gets its port here)."""
        return self.server.bound_endpoint if self.server else self.events_cfg.stream_endpoint

    @property
    def consumer_connected(self) -> bool:
        """Whether a post-processing consumer is connected (heard from recently)."""
        return self.server is not None and self.server.consumers > 0

    def path_for(self, header: PassHeader) -> Path:
        return self.passes_dir / f"{header.stem}{passfile.SUFFIX}"

    def open_pass(self, header: PassHeader,
                  on_loss: Callable[[str], None] | None = None) -> PassRecorder:
        """Create the pass file (header written at once) and start its writer thread.

        ``on_loss(message)`` is called on the event loop the moment the disk starts
        refusing batches (and when the reason changes), for the alarm.

        Raises ``OSError`` if the file cannot be created, ``ValueError`` if a pass with this
        id and segment is already recorded (never overwritten).
        """
        path = self.path_for(header)
        if header.stem in self.recorders and not self.recorders[header.stem]._closing:
            raise ValueError(f"pass {header.stem} is already being recorded")
        if path.exists():
            raise ValueError(f"{path} exists already; pass files are never overwritten")
        make_dirs(self.passes_dir)
        server = self.server
        if server is not None:
            # Named as recording before its file exists: a consumer never sees it as a
            # finished, empty file (the pass-open race, issue 12).
            server.reserve(header.stem)
        try:
            rec = PassRecorder(self, header, path, on_loss)
        except BaseException:
            if server is not None:
                server.unreserve(header.stem)
            raise
        self.recorders[header.stem] = rec
        if server is not None:
            server.register(rec.source)
        return rec

    def server_notify(self) -> None:
        if self.server is not None:
            self.server.notify()

    @staticmethod
    def recover_interrupted(path: Path | str) -> RecoveryInfo:
        """See :func:`recover_interrupted` (blocking; run it in a thread)."""
        return recover_interrupted(path)
