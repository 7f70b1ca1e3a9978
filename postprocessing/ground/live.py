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
    from station.events.client import StreamClient, StreamError

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    halt = threading.Event()
    await asyncio.to_thread(received_dir.mkdir, parents=True, exist_ok=True)

    def on_batch(hdr: Any, ts: np.ndarray, ch: np.ndarray) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, ("batch", (hdr, ts.copy(), ch.copy())))

    def on_pass(rp: Any) -> bool:
        loop.call_soon_threadsafe(queue.put_nowait, ("end", (rp, time.perf_counter())))
        return False

    client = StreamClient(endpoint, received_dir, consumer=consumer or f"keys-{settings.station}",
                          on_batch=on_batch)

    def run_client() -> None:
        try:
            if pass_id is not None:
                on_pass(client.receive_pass(pass_id, stop=halt))
            else:
                client.follow(on_pass, stop=halt, max_passes=max_passes)
        except StreamError as exc:
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, ("stopped", None))

    thread = threading.Thread(target=run_client, name="keys-stream", daemon=True)
    thread.start()
    distillers: dict[str, PassDistiller] = {}
    reports: list[KeyReport] = []

    async def distiller_for(pid: str) -> PassDistiller:
        d = distillers.get(pid)
        if d is None:
            path = received_dir / f"{pid}.arrows"
            header = await asyncio.to_thread(_read_header, path)
            d = distillers[pid] = PassDistiller(settings, link, keystore, pid, header)
            await d.open()
        return d

    async def catch_up(d: PassDistiller, upto: int) -> None:
        """Feed batches [next_seq, upto) from the received file."""
        if d.next_seq >= upto:
            return
        from station.events.passfile import PassFileReader

        reader = await asyncio.to_thread(PassFileReader, received_dir / f"{d.pass_id}.arrows")
        try:
            it = iter(reader)
            while d.next_seq < upto:
                b = await asyncio.to_thread(next, it, None)
                if b is None:
                    raise RuntimeError(f"pass {d.pass_id}: the received file ends at batch {b}, "
                                       f"batch {d.next_seq} is needed")
                if b.index >= d.next_seq:
                    await d.feed(b.index, b.timestamp_ps, b.channel, b.metadata)
        finally:
            reader.close()

    waiter = asyncio.create_task(stop.wait()) if stop is not None else None
    try:
        while True:
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait({getter, *([waiter] if waiter else [])},
                                         return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            kind, item = getter.result()
            if kind == "stopped":
                break
            if kind == "error":
                raise item
            try:
                if kind == "batch":
                    hdr, ts, ch = item
                    d = await distiller_for(hdr.pass_id)
                    if hdr.seq < d.next_seq:
                        continue
                    await catch_up(d, hdr.seq)
                    md = {"start_ps": str(hdr.start_ps)}
                    if hdr.start_time_s is not None:
                        md["start_time_s"] = repr(float(hdr.start_time_s))
                    await d.feed(hdr.seq, ts, ch, md)
                elif kind == "end":
                    rp, t_end = item
                    d = await distiller_for(rp.pass_id)
                    await catch_up(d, rp.batches)
                    distillers.pop(rp.pass_id, None)
                    report = await d.finish(end_of_stream_s=t_end)
                    await _deliver(report, reports, on_report)
            except PassAborted as exc:
                pid = exc.report.pass_id
                distillers.pop(pid, None)
                await _deliver(exc.report, reports, on_report)
            if max_passes is not None and len(reports) >= max_passes:
                break
            if pass_id is not None and any(r.pass_id == pass_id for r in reports):
                break  # the named pass is done
    finally:
        halt.set()
        if waiter is not None:
            waiter.cancel()
        await asyncio.to_thread(thread.join, 30.0)
        client.close()
    return reports


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
