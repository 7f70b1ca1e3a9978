"""The satellite's ground truth: what it sent, and the QBER of detections against it.

Only the simulated satellite (Alice) and simulator checks (``qkd-station rehearse``, the
simulator's validation tests) use this module: it reads what was sent
(:func:`drivers.timetagger.bb84.sent_pulses`) with the simulator's seed. Ground-side
post-processing never imports it (tests/postprocessing/test_satellite_isolation.py).
"""

from __future__ import annotations

import numpy as np

from drivers.timetagger.bb84 import Intensity, sent_pulses
from postprocessing.pulses import anchor_sync_index, pulse_index_from_sync


def sift_qber(
    channels: np.ndarray,
    pulse_index: np.ndarray,
    offset_ps: np.ndarray,
    *,
    seed: int,
    intensity_probs: tuple[float, ...] = (0.5, 0.25, 0.25),
    gate_ps: float = 1000.0,
) -> dict[str, float]:
    """Sift detections against what was sent and measure the QBER.

    ``channels`` are detector channels (H=1, V=2, D=3, A=4); ``pulse_index``/``offset_ps``
    from :func:`postprocessing.pulses.pulse_index_from_sync`. Detections with
    ``|offset_ps| >= gate_ps`` are discarded (time gating, e.g. the 2 ns window of Liao
    2017). Returns counts and the QBER over all intensity classes and per class, in
    matching bases.
    """
    ch = np.asarray(channels)
    gated = np.abs(np.asarray(offset_ps)) < gate_ps
    ch, n = ch[gated], np.asarray(pulse_index)[gated]
    rx_basis = ((ch - 1) >> 1).astype(np.uint8)
    rx_bit = ((ch - 1) & 1).astype(np.uint8)
    basis, bit, klass = sent_pulses(seed, n, intensity_probs)
    sifted = rx_basis == basis
    errors = sifted & (rx_bit != bit)
    result: dict[str, float] = {
        "detections": float(ch.size + (~gated).sum()),
        "gated": float(ch.size),
        "sifted": float(sifted.sum()),
        "errors": float(errors.sum()),
        "qber": float(errors.sum() / max(1, sifted.sum())),
    }
    for k in Intensity:
        sel = sifted & (klass == k)
        result[f"sifted_{k.name.lower()}"] = float(sel.sum())
        result[f"errors_{k.name.lower()}"] = float((errors & sel).sum())
        result[f"qber_{k.name.lower()}"] = float((errors & sel).sum() / max(1, sel.sum()))
    return result


def qber_from_events(
    events: np.ndarray,
    *,
    seed: int,
    tagger_epoch_utc_ps: int,
    first_sync_tof_ps: float,
    period_ps: int,
    pulses_per_sync: int,
    intensity_probs: tuple[float, ...] = (0.5, 0.25, 0.25),
    gate_ps: float = 1000.0,
    sync_channel: int = 5,
    detector_channels: tuple[int, ...] = (1, 2, 3, 4),
    chunk_events: int = 500_000,
) -> dict[str, float]:
    """Sift a recorded pass against what was sent, and measure its QBER (simulator check).

    ``events`` is the pass's :data:`~drivers.timetagger.base.EVENT_DTYPE` array in time
    order. The first sync pulse is identified from the tagger's UTC time base and the
    predicted time of flight at that moment (``first_sync_tof_ps``); the detections are
    then numbered from the sync train, gated, and compared with ``sent_pulses`` in
    matching bases (see :func:`sift_qber`), ``chunk_events`` at a time.
    """
    sync = events["timestamp_ps"][events["channel"] == sync_channel]
    detectors = events[np.isin(events["channel"], detector_channels)]
    if sync.size == 0 or detectors.size == 0:
        raise ValueError("the events hold no sync or no detections: no QBER can be measured")
    first = anchor_sync_index(int(sync[0]), tagger_epoch_utc_ps=tagger_epoch_utc_ps,
                              predicted_tof_ps=first_sync_tof_ps, period_ps=period_ps,
                              pulses_per_sync=pulses_per_sync)
    totals: dict[str, float] = {}
    for lo in range(0, detectors.size, chunk_events):
        chunk = detectors[lo:lo + chunk_events]
        index, offset = pulse_index_from_sync(chunk["timestamp_ps"], sync,
                                              first_sync_pulse_index=first, period_ps=period_ps,
                                              pulses_per_sync=pulses_per_sync)
        part = sift_qber(chunk["channel"], index, offset, seed=seed,
                         intensity_probs=intensity_probs, gate_ps=gate_ps)
        for key, value in part.items():
            if not key.startswith("qber"):
                totals[key] = totals.get(key, 0.0) + value
    totals["qber"] = totals["errors"] / max(1.0, totals["sifted"])
    for k in Intensity:
        name = k.name.lower()
        errors = totals.pop(f"errors_{name}", 0.0)
        totals[f"qber_{name}"] = errors / max(1.0, totals[f"sifted_{name}"])
    return totals


__all__ = ["qber_from_events", "sift_qber"]
