"""Properties of the key length for arbitrary counts (hypothesis)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from postprocessing.estimation import (
    BasisCounts,
    ClassCounts,
    SecurityParameters,
    SiftedCounts,
    secret_key_length,
)


@st.composite
def class_counts(draw: st.DrawFn, max_bits: int) -> ClassCounts:
    n = draw(st.integers(0, max_bits))
    return ClassCounts(sifted_bits=n, errors=draw(st.integers(0, n)))


@st.composite
def sifted_counts(draw: st.DrawFn) -> SiftedCounts:
    def basis() -> BasisCounts:
        return BasisCounts(signal=draw(class_counts(2_000_000)), decoy=draw(class_counts(200_000)),
                           vacuum=draw(class_counts(20_000)))
    return SiftedCounts(Z=basis(), X=basis())


@settings(max_examples=300, deadline=None)
@given(counts=sifted_counts(), lam=st.integers(0, 500_000),
       tail=st.sampled_from(["chernoff", "hoeffding"]), bases=st.sampled_from(["both", "Z", "X"]))
def test_key_never_exceeds_what_the_bounds_allow(counts: SiftedCounts, lam: int, tail: str,
                                                 bases: str) -> None:
    params = SecurityParameters(tail_bound=tail, key_bases=bases)
    r = secret_key_length(counts, lam, params)
    assert 0 <= r.key_length_bits <= max(0, r.sifted_bits - lam)
    assert r.key_length_bits == max(0, math.floor(r.raw_key_length_bits))
    assert (r.key_length_bits == 0) == (r.reason is not None)
    for b in r.per_basis:
        assert 0.0 <= b.phase_error_upper <= 0.5
        assert b.v1_upper <= b.m_test_errors
        # Single-photon and vacuum events are at most the key basis's detections.
        assert max(0.0, b.s0_lower) + max(0.0, b.s1_lower) <= b.n_key_bits * (1 + 1e-9) + 1e-6
        assert b.entropy_bits <= b.n_key_bits + 1e-6
    more = secret_key_length(counts, lam + 1000, params)
    assert more.key_length_bits <= r.key_length_bits
