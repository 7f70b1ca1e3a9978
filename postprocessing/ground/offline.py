"""Distil a recorded pass: a pass file (docs/passfile.md) through :class:`PassDistiller`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from postprocessing.auth import KeyPool
from postprocessing.channel.link import SatelliteLink
from postprocessing.ground.distiller import GroundSettings, PassDistiller
from postprocessing.keystore import KeyStore
from postprocessing.report import KeyReport


async def distill_pass_file(path: Path | str, settings: GroundSettings, *,
                            link: SatelliteLink | None = None, keystore: KeyStore | None = None,
                            on_chunk: Callable[[PassDistiller], None] | None = None) -> KeyReport:
    """The pass's key report (raises :class:`~postprocessing.ground.PassAborted`).

    Resumes from a checkpoint of an earlier, interrupted run of the same pass. The file is
    read batch by batch in a thread; the whole pass never sits in memory as events.
    """
    from station.events.passfile import PassFileReader

    own_link = link is None
    pool = KeyPool(settings.auth_pool) if own_link else None
    if link is None:
        assert pool is not None
        link = SatelliteLink(settings.satellite_endpoint, station=settings.station, pool=pool,
                             timeout_s=settings.timeout_s)
    store = keystore if keystore is not None else KeyStore(settings.keystore_dir)
    reader = await asyncio.to_thread(PassFileReader, path)
    try:
        header = reader.header
        pass_id = header.get("stream_pass_id") or header.get("pass_id") or Path(path).stem
        distiller = PassDistiller(settings, link, store, pass_id, header)
        await distiller.open()
        batches = iter(reader)
        while True:
            b = await asyncio.to_thread(next, batches, None)
            if b is None:
                break
            if b.index < distiller.next_seq:
                continue
            chunks = distiller.p.chunks
            await distiller.feed(b.index, b.timestamp_ps, b.channel, b.metadata)
            if on_chunk is not None and distiller.p.chunks != chunks:
                on_chunk(distiller)
        return await distiller.finish(end_of_stream_s=time.perf_counter())
    finally:
        reader.close()
        if own_link:
            link.close()
            if pool is not None:
                pool.close()
        if keystore is None:
            store.close()
