"""Live distillation: consume the station's event stream during the pass.

The reference consumer :class:`station.events.client.StreamClient` (public API: it checks
and stores every batch in ``received_dir/<pass_id>.arrows``, acknowledges it, resumes from
what its file holds) runs in a thread; each batch it stored is handed to this loop and fed
to the pass's :class:`PassDistiller`, so sifting and EC keep pace with the pass. (The BP
decoder holds the GIL while it decodes a block; a block decodes in well under a second,
far inside the stream's 10 s consumer timeout, and the client resumes if it is dropped.) A
distiller restarted mid-pass resumes from its checkpoint and catches up from the received
file, which holds every batch the stream delivered before the crash.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from postprocessing.channel.link import SatelliteLink
from postprocessing.ground.distiller import GroundSettings, PassAborted, PassDistiller
from postprocessing.keystore import KeyStore
from postprocessing.report import KeyReport

log = logging.getLogger(__name__)

OnReport = Callable[[KeyReport], Awaitable[None] | None]


async def follow_stream(endpoint: str, settings: GroundSettings, link: SatelliteLink,
                        keystore: KeyStore, *, received_dir: Path, pass_id: str | None = None,
                        stop: asyncio.Event | None = None, max_passes: int | None = None,
                        on_report: OnReport | None = None, consumer: str | None = None) -> list[KeyReport]:
    """Distil passes from the stream at ``endpoint`` (one named pass, or follow mode)."""
    from station.events.client import StreamClient

    inbox = _Inbox(asyncio.get_running_loop())
    halt = threading.Event()
    await asyncio.to_thread(received_dir.mkdir, parents=True, exist_ok=True)
    client = StreamClient(endpoint, received_dir, consumer=consumer or f"keys-{settings.station}",
                          on_batch=inbox.on_batch)
    thread = threading.Thread(target=_run_client, args=(client, inbox, halt, pass_id, max_passes),
                              name="keys-stream", daemon=True)
    thread.start()
    feeder = _PassFeeder(settings, link, keystore, received_dir, on_report)
    waiter = asyncio.create_task(stop.wait()) if stop is not None else None
    try:
        while True:
            event = await _next_event(inbox.queue, waiter)
            if event is None:
                break
            kind, item = event
            if kind == "stopped":
                break
            if kind == "error":
                raise item
            if not await feeder.handle(kind, item):
                continue
            if max_passes is not None and len(feeder.reports) >= max_passes:
                break
            if pass_id is not None and any(r.pass_id == pass_id for r in feeder.reports):
                break  # the named pass is done
    finally:
        halt.set()
        if waiter is not None:
            waiter.cancel()
        await asyncio.to_thread(thread.join, 30.0)
        client.close()
    return feeder.reports


class _Inbox:
    """Events from the client thread to the loop, in order: ``(kind, item)`` with kind
    ``"batch"``, ``"end"``, ``"error"`` or ``"stopped"``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def post(self, kind: str, item: Any) -> None:
        self._loop.call_soon_threadsafe(self.queue.put_nowait, (kind, item))

    def on_batch(self, hdr: Any, ts: np.ndarray, ch: np.ndarray) -> None:
        self.post("batch", (hdr, ts.copy(), ch.copy()))

    def on_pass(self, rp: Any) -> bool:
        self.post("end", (rp, time.perf_counter()))
        return False


def _run_client(client: Any, inbox: _Inbox, halt: threading.Event, pass_id: str | None,
                max_passes: int | None) -> None:
    """The client thread: receive one named pass or follow, then post ``"stopped"``."""
    from station.events.client import StreamError

    try:
        if pass_id is not None:
            inbox.on_pass(client.receive_pass(pass_id, stop=halt))
        else:
            client.follow(inbox.on_pass, stop=halt, max_passes=max_passes)
    except StreamError as exc:
        inbox.post("error", exc)
    finally:
        inbox.post("stopped", None)


async def _next_event(queue: asyncio.Queue[tuple[str, Any]],
                      waiter: asyncio.Task[Any] | None) -> tuple[str, Any] | None:
    """The next event from the client thread, or None once ``stop`` is set."""
    getter = asyncio.create_task(queue.get())
    done, _ = await asyncio.wait({getter, *([waiter] if waiter else [])},
                                 return_when=asyncio.FIRST_COMPLETED)
    if getter not in done:
        getter.cancel()
        return None
    return getter.result()


class _PassFeeder:
    """The distillers of the passes in flight, fed from the stream and the received files."""

    def __init__(self, settings: GroundSettings, link: SatelliteLink, keystore: KeyStore,
                 received_dir: Path, on_report: OnReport | None) -> None:
        self._settings = settings
        self._link = link
        self._keystore = keystore
        self._received_dir = received_dir
        self._on_report = on_report
        self._distillers: dict[str, PassDistiller] = {}
        self.reports: list[KeyReport] = []

    async def handle(self, kind: str, item: Any) -> bool:
        """Act on a ``"batch"`` or ``"end"`` event; False for a batch already fed (skipped)."""
        try:
            if kind == "batch":
                return await self._feed_batch(*item)
            if kind == "end":
                await self._finish_pass(*item)
        except PassAborted as exc:
            pid = exc.report.pass_id
            self._distillers.pop(pid, None)
            await _deliver(exc.report, self.reports, self._on_report)
        return True

    async def _feed_batch(self, hdr: Any, ts: np.ndarray, ch: np.ndarray) -> bool:
        d = await self._distiller_for(hdr.pass_id)
        if hdr.seq < d.next_seq:
            return False
        await self._catch_up(d, hdr.seq)
        md = {"start_ps": str(hdr.start_ps)}
        if hdr.start_time_s is not None:
            md["start_time_s"] = repr(float(hdr.start_time_s))
        await d.feed(hdr.seq, ts, ch, md)
        return True

    async def _finish_pass(self, rp: Any, t_end: float) -> None:
        d = await self._distiller_for(rp.pass_id)
        await self._catch_up(d, rp.batches)
        self._distillers.pop(rp.pass_id, None)
        report = await d.finish(end_of_stream_s=t_end)
        await _deliver(report, self.reports, self._on_report)

    async def _distiller_for(self, pid: str) -> PassDistiller:
        d = self._distillers.get(pid)
        if d is None:
            path = self._received_dir / f"{pid}.arrows"
            header = await asyncio.to_thread(_read_header, path)
            d = self._distillers[pid] = PassDistiller(self._settings, self._link, self._keystore,
                                                      pid, header)
            await d.open()
        return d

    async def _catch_up(self, d: PassDistiller, upto: int) -> None:
        """Feed batches [next_seq, upto) from the received file."""
        if d.next_seq >= upto:
            return
        from station.events.passfile import PassFileReader

        reader = await asyncio.to_thread(PassFileReader, self._received_dir / f"{d.pass_id}.arrows")
        try:
            it = iter(reader)
            last: int | None = None
            while d.next_seq < upto:
                b = await asyncio.to_thread(next, it, None)
                if b is None:
                    ends = "holds no batch" if last is None else f"ends at batch {last}"
                    raise RuntimeError(f"pass {d.pass_id}: the received file {ends}, "
                                       f"batch {d.next_seq} is needed")
                last = b.index
                if b.index >= d.next_seq:
                    await d.feed(b.index, b.timestamp_ps, b.channel, b.metadata)
        finally:
            reader.close()


def _read_header(path: Path) -> dict[str, str]:
    from station.events.passfile import PassFileReader

    with PassFileReader(path) as reader:
        return dict(reader.header)


async def _deliver(report: KeyReport, reports: list[KeyReport], on_report: OnReport | None) -> None:
    reports.append(report)
    if on_report is not None:
        result = on_report(report)
        if asyncio.iscoroutine(result):
            await result


__all__ = ["follow_stream"]
