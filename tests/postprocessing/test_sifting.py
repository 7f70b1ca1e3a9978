"""Sifting: announcements checked, matching bases kept, counts per basis and class."""

from __future__ import annotations

import numpy as np
import pytest

from postprocessing.sifting import (
    AliceAnnouncement,
    BobAnnouncement,
    SiftingError,
    SiftTally,
    answer,
    keep,
    sift_mask,
)


def test_matching_bases_are_kept_and_counted() -> None:
    rng = np.random.default_rng(3)
    n = 10_000
    idx = np.cumsum(rng.integers(1, 100, n)).astype(np.int64)
    bob = BobAnnouncement(pulse_index=idx, basis=rng.integers(0, 2, n).astype(np.uint8)).check()
    alice = answer(bob, rng.integers(0, 2, n), rng.integers(0, 3, n))
    mask = sift_mask(bob, alice)
    assert mask.mean() == pytest.approx(0.5, abs=0.02)
    chunk = keep(mask, idx, alice.basis, alice.intensity_class, rng.integers(0, 2, n))
    tally = SiftTally()
    tally.add_sifted(chunk.basis, chunk.intensity_class)
    assert tally.sifted_bits == chunk.size == mask.sum()
    counts = tally.counts()
    assert counts.sifted_bits == chunk.size
    assert counts.Z.signal.sifted_bits == int(((chunk.basis == 0) & (chunk.intensity_class == 0)).sum())
    assert "bits" not in repr(chunk) and str(chunk.size) in repr(chunk)


@pytest.mark.parametrize("idx, basis, match", [
    ([3, 2], [0, 1], "strictly increasing"),
    ([1, 1], [0, 1], "strictly increasing"),
    ([-1, 5], [0, 1], "non-negative"),
    ([1, 2], [0, 2], "neither 0"),
    ([1, 2, 3], [0, 1], "3 pulse indices but 2 bases"),
])
def test_a_malformed_announcement_is_refused(idx: list[int], basis: list[int], match: str) -> None:
    with pytest.raises(SiftingError, match=match):
        BobAnnouncement(pulse_index=np.array(idx, np.int64), basis=np.array(basis, np.uint8)).check()


def test_alices_answer_must_fit_the_announcement() -> None:
    bob = BobAnnouncement(pulse_index=np.arange(3, dtype=np.int64), basis=np.zeros(3, np.uint8))
    with pytest.raises(SiftingError, match="for 3 announced"):
        sift_mask(bob, AliceAnnouncement(basis=np.zeros(2, np.uint8), intensity_class=np.zeros(2, np.uint8)))
    with pytest.raises(SiftingError, match="class > 2"):
        answer(bob, np.zeros(3), np.array([0, 3, 0]))
