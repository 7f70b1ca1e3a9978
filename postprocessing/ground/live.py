"""Live distillation: consume the station's event stream during the pass.

The reference consumer :class:`station.events.client.StreamClient` (public API: it checks
and stores every batch in ``received_dir/<pass_id>.arrows``, acknowledges it, resumes from
what its file holds) runs in a process of its own, so that nothing this process does (BP
decoding holds the GIL) can starve its keep-alives; each batch it stored is handed over a
queue to this loop and fed to the pass's :class:`PassDistiller`, so sifting and EC keep
pace with the pass. A distiller restarted mid-pass resumes from its checkpoint and catches
up from the received file, which holds every batch the stream delivered before the crash.
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
    import multiprocessing as mp

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    await asyncio.to_thread(received_dir.mkdir, parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")  # never fork a process that holds ZeroMQ and threads
    mpq = ctx.Queue()
    halt = ctx.Event()
    child = ctx.Process(target=_receive, name="keys-stream", daemon=True,
                        args=(endpoint, str(received_dir), consumer or f"keys-{settings.station}",
                              pass_id, max_passes, mpq, halt))
    child.start()

    def pump() -> None:  # blocking reads off the loop
        while True:
            item = mpq.get()
            loop.call_soon_threadsafe(queue.put_nowait, item)
            if item[0] == "stopped":
                return

    pumper = threading.Thread(target=pump, name="keys-stream-pump", daemon=True)
    pumper.start()
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
            msg = getter.result()
            kind, item = msg[0], msg[1:]
            if kind == "stopped":
                break
            if kind == "error":
                raise RuntimeError(f"the event stream at {endpoint} failed: {item[0]}")
            try:
                if kind == "batch":
                    pid, seq, md, ts, ch = item
                    d = await distiller_for(pid)
                    if seq < d.next_seq:
                        continue
                    await catch_up(d, seq)
                    await d.feed(seq, ts, ch, md)
                elif kind == "end":
                    pid, batches, _ok = item
                    t_end = time.perf_counter()
                    d = await distiller_for(pid)
                    await catch_up(d, batches)
                    distillers.pop(pid, None)
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
        await asyncio.to_thread(child.join, 10.0)
        if child.is_alive():
            child.terminate()
            await asyncio.to_thread(child.join, 10.0)
    return reports


def _die_with_parent() -> None:
    """SIGTERM this process when the distiller dies, even by SIGKILL (Linux prctl)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _read_header(path: Path) -> dict[str, str]:
    from station.events.passfile import PassFileReader

    with PassFileReader(path) as reader:
        return dict(reader.header)


def _receive(endpoint: str, received_dir: str, consumer: str, pass_id: str | None,
             max_passes: int | None, out: Any, halt: Any) -> None:
    """The receiving process: the reference stream client, each stored batch put on
    ``out`` as ("batch", pass_id, seq, metadata, timestamps, channels); ("end", pass_id,
    batches, ok) at each pass's end; ("error", text); ("stopped", None) last."""
    from station.events.client import StreamClient, StreamError

    _die_with_parent()
    stop = threading.Event()

    def watch() -> None:
        while not halt.wait(0.2):
            pass
        stop.set()

    threading.Thread(target=watch, daemon=True).start()

    def on_batch(hdr: Any, ts: np.ndarray, ch: np.ndarray) -> None:
        md = {"start_ps": str(hdr.start_ps)}
        if hdr.start_time_s is not None:
            md["start_time_s"] = repr(float(hdr.start_time_s))
        out.put(("batch", hdr.pass_id, hdr.seq, md, ts.copy(), ch.copy()))

    def on_pass(rp: Any) -> bool:
        out.put(("end", rp.pass_id, rp.batches, rp.ok))
        return False

    client = StreamClient(endpoint, Path(received_dir), consumer=consumer, on_batch=on_batch)
    try:
        if pass_id is not None:
            on_pass(client.receive_pass(pass_id, stop=stop))
        else:
            client.follow(on_pass, stop=stop, max_passes=max_passes)
    except StreamError as exc:
        out.put(("error", str(exc)))
    finally:
        client.close()
        out.put(("stopped", None))


async def _deliver(report: KeyReport, reports: list[KeyReport], on_report: OnReport | None) -> None:
    reports.append(report)
    if on_report is not None:
        result = on_report(report)
        if asyncio.iscoroutine(result):
            await result


__all__ = ["follow_stream"]
