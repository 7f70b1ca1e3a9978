"""How the ground cuts the sifted key into EC sessions, and a session too small for
Cascade (fewer than two bits besides the vacuum class), against the real satellite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drivers.timetagger.bb84 import sent_pulses
from postprocessing.ground.distiller import _SIFTED, MIN_TAIL_BITS, next_session
from tests.postprocessing.conftest import (
    MICIUS,
    STATION,
    ground_settings,
    provision_pools,
    running_satellite,
    satellite_config,
)

SEG = 1_000_000


def _plan(sifted_steps: list[int], segment: int = SEG) -> list[tuple[int, int]]:
    """Sessions run as the sifted count grows through ``sifted_steps``, then at the end."""
    done, sessions = 0, []
    for i, sifted in enumerate(sifted_steps):
        final = i == len(sifted_steps) - 1
        while (nxt := next_session(done, sifted, segment, final=final)) is not None:
            assert nxt[0] == done and nxt[1] > nxt[0]
            sessions.append(nxt)
            done = nxt[1]
    assert done == sifted_steps[-1], "every sifted bit is in a session"
    return sessions


@pytest.mark.parametrize("total", [1, 3, 5_000, 999_999, 1_000_000, 1_000_001, 1_000_003, 1_008_191,
                                   1_008_192, 1_250_000, 1_542_633, 2_000_002, 3_100_007])
def test_no_stub_session_at_the_end_of_the_pass(total: int) -> None:
    # sifting in 70,000-bit chunks, exactly like a pass's 5 s rounds, ending at ``total``
    steps = [*range(70_000, total, 70_000), total]
    sessions = _plan(steps)
    sizes = [hi - lo for lo, hi in sessions]
    if total >= MIN_TAIL_BITS:
        assert min(sizes) >= MIN_TAIL_BITS, sizes  # a tiny tail joins the last session
    assert max(sizes) <= SEG + max(SEG // 4, MIN_TAIL_BITS), sizes
    assert all(s == SEG for s in sizes[:-1])


def test_a_tail_just_past_a_segment_is_folded_in() -> None:
    # Before: 1,000,003 sifted bits ended with a 3-bit Cascade session (the pass aborted).
    assert _plan([999_999, 1_000_003]) == [(0, 1_000_003)]
    assert _plan([1_000_003, 1_000_003]) == [(0, 1_000_003)]
    assert _plan([1_010_000, 1_300_000]) == [(0, 1_000_000), (1_000_000, 1_300_000)]


@pytest.mark.parametrize("non_vacuum", [0, 1])
async def test_a_pass_too_small_for_cascade_keeps_its_vacuum_bits_and_ends_empty(
        tmp_path: Path, non_vacuum: int) -> None:
    """A (whole) pass whose sifted key has fewer than two bits besides the vacuum class:
    the session discloses the vacuum-class bits, closes without Cascade, drops the other
    bit (counted as discarded: kept < sifted), and the pass ends empty, not aborted."""
    from postprocessing.auth import KeyPool
    from postprocessing.channel import SatelliteLink
    from postprocessing.channel.messages import Sift
    from postprocessing.ground.distiller import PassDistiller
    from postprocessing.keystore import KeyStore
    from postprocessing.satellite.service import SatelliteService

    sat_pool, ground_pool = provision_pools(tmp_path)
    service = SatelliteService(satellite_config(tmp_path, sat_pool))
    mu = tuple(service.cfg.source.mu_probs)
    cand = np.arange(5_000_000, 5_020_000, 7, dtype=np.int64)
    basis, bit, klass = sent_pulses(2016, cand, mu)  # the test plays a ground that measured well
    vac, other = np.flatnonzero(klass == 2)[:3], np.flatnonzero(klass != 2)[:non_vacuum]
    pick = np.sort(np.concatenate([vac, other]))
    idx, b, k, a_bits = cand[pick], basis[pick], klass[pick], bit[pick]
    bob_bits = a_bits ^ (k == 2).astype(np.uint8)  # every vacuum-class bit wrong
    settings = ground_settings(tmp_path, ground_pool, "tcp://127.0.0.1:1")
    header = {"elements": "unused", "site_latitude_deg": "40.4", "site_longitude_deg": "117.6",
              "channel_map": '{"1": "H", "2": "V", "3": "D", "4": "A", "5": "SYNC"}'}
    async with running_satellite(service) as endpoint:
        with KeyPool(ground_pool) as pool, KeyStore(settings.keystore_dir) as store:
            link = SatelliteLink(endpoint, station=STATION, pool=pool, timeout_s=60)
            try:
                d = PassDistiller(settings, link, store, MICIUS, header)
                await d.open()
                await link.request(MICIUS, Sift(chunk=0, first_batch=0, last_batch=0, detections=int(idx.size)),
                                   {"pulse_index": idx.astype("<i8").tobytes(), "basis": np.packbits(b).tobytes()})
                sifted = np.zeros(idx.size, dtype=_SIFTED)
                sifted["pulse"], sifted["basis"], sifted["klass"], sifted["bit"] = idx, b, k, bob_bits
                d._sifted = [sifted]
                d.p.sifted_tally.add_sifted(b, k)
                d.p.chunks, d.p.announced, d.p.sifted_bits = 1, int(idx.size), int(idx.size)
                report = await d.finish()
            finally:
                link.close()
        sess = service._passes[(STATION, MICIUS)]
    assert report.outcome == "empty", report.reason
    assert report.verification_passed
    assert report.sifted_bits == 3 + non_vacuum and report.ec.kept_bits == 3  # the other bit discarded
    assert report.discarded_bits == non_vacuum
    assert report.ec.leaked_bits == 3  # the disclosed vacuum-class bits
    assert sess.state == "stored"
    assert not (settings.work_dir / MICIUS).exists()
