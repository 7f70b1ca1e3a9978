"""The finite-key decoy-state estimate (Lim et al. PRA 89, 022307 (2014)).

Checked against SatQuMA (cnqo-qcomms/SatQuMA, commit f2b9229, MIT) for stated inputs,
against an independent re-derivation in this file through per-pulse gains and yields
(Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005) style) instead of rescaled counts, and for its
own invariants.
"""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from postprocessing.estimation import (
    BasisCounts,
    ClassCounts,
    SecurityParameters,
    SiftedCounts,
    basis_bounds,
    binary_entropy,
    gamma,
    secret_key_length,
)
from postprocessing.verification import verification_tag_bits


def basis(bits: tuple[int, int, int], errors: tuple[int, int, int]) -> BasisCounts:
    return BasisCounts(**{k: ClassCounts(sifted_bits=n, errors=e)
                          for k, n, e in zip(("signal", "decoy", "vacuum"), bits, errors, strict=True)})


# Input A: a biased-basis link (key basis X), μ = 0.5/0.1/0, p = 0.7/0.2/0.1, λ_EC = 10⁶.
A_PARAMS = dict(mu_signal=0.5, mu_decoy=0.1, mu_vacuum=0.0, p_signal=0.7, p_decoy=0.2, p_vacuum=0.1)
A_COUNTS = SiftedCounts(X=basis((4_000_000, 220_000, 6_000), (40_000, 3_000, 3_000)),
                        Z=basis((400_000, 22_000, 600), (4_400, 550, 300)))
# Input B: one basis of a Micius-like pass, μ = 0.8/0.1/0, p = 0.5/0.25/0.25, λ_EC = 90,000.
B_COUNTS = SiftedCounts(X=basis((726_939, 48_034, 2_972), (7_633, 1_777, 1_486)),
                        Z=basis((726_939, 48_034, 2_972), (7_633, 1_777, 1_486)))

# SatQuMA's numbers for these inputs: its functions nXZpm/nXZpm_HB, mXZpm/mXZpm_HB, s0, s1,
# vxz1 and maths.gamma, h, combined as in key_efficient_BB84 (ε_s = 1e-9, ε_c = 1e-15),
# run on the stated counts. (SatQuMA subtracts log2(2/ε_c) = 50.83; we subtract the
# 51-bit tag, so ours is 0.17 bit lower.)
SATQUMA = {
    ("A", "hoeffding"): dict(l=390434.52754585445, sx0=0.0, sx1=1924104.5933062346,
                             sz1=123482.09790975197, vz1=5250.0, phi=0.047857911138160424),
    ("A", "chernoff"): dict(l=799189.8393126987, sx0=38479.60092804825, sx1=2177686.1673038094,
                            sz1=201521.53489809323, vz1=5250.0, phi=0.029397001354491453),
    ("B", "hoeffding"): dict(l=128209.9443207007, sx0=0.0, sx1=286953.8657165565,
                             sz1=286953.8657165565, vz1=9999.610205788409, phi=0.03921259860918188),
    ("B", "chernoff"): dict(l=178641.32749349027, sx0=7244.404785387043, sx1=326804.2668295698,
                            sz1=326804.2668295698, vz1=8938.80874956582, phi=0.03099494556253916),
}


@pytest.mark.parametrize(("case", "tail"), sorted(SATQUMA))
def test_key_length_matches_satquma(case: str, tail: str) -> None:
    counts, lam, extra = (A_COUNTS, 1_000_000, A_PARAMS) if case == "A" else (B_COUNTS, 90_000, {})
    params = SecurityParameters(**extra, key_bases="X", tail_bound=tail)
    result = secret_key_length(counts, lam, params)
    ref = SATQUMA[(case, tail)]
    b = result.bounds("X")
    assert result.raw_key_length_bits == pytest.approx(ref["l"], rel=1e-2)
    # In fact they agree to the rounding of the correctness term.
    assert result.raw_key_length_bits == pytest.approx(ref["l"] - (51 - math.log2(2e15)), abs=1e-3)
    assert result.key_length_bits == math.floor(result.raw_key_length_bits)
    assert b.s0_lower == pytest.approx(ref["sx0"], rel=1e-9, abs=1e-6)
    assert b.s1_lower == pytest.approx(ref["sx1"], rel=1e-9)
    assert b.test_s1_lower == pytest.approx(ref["sz1"], rel=1e-9)
    assert b.v1_upper == pytest.approx(ref["vz1"], rel=1e-9)
    assert b.phase_error_upper == pytest.approx(ref["phi"], rel=1e-9)


def _independent_key_length(counts: SiftedCounts, lam: int, mu: tuple[float, float, float],
                            p: tuple[float, float, float], eps_sec: float, eps_cor: float) -> float:
    """Lim et al.'s Hoeffding bound with X the key basis, re-derived through gains and yields.

    Gains per pulse sent are replaced by counts per intensity: Q_k = n_k / p_k (up to the
    common factor of pulses sent, which cancels). Y0 ≥ (μ2 Q3 e^{μ3} − μ3 Q2 e^{μ2})/(μ2 − μ3);
    Y1 ≥ μ1 [Q2 e^{μ2} − Q3 e^{μ3} − (μ2² − μ3²)/μ1² (Q1 e^{μ1} − Y0)] / (μ1(μ2 − μ3) − μ2² + μ3²);
    the events in the key are s_n = Y_n Σ_k p_k e^{−μk} μk^n / n!.
    """
    mu1, mu2, mu3 = mu
    L = math.log(21.0 / eps_sec)

    def gains(bits: list[int], total: int, sign: int) -> list[float]:
        d = math.sqrt(total / 2 * L)
        return [max(0.0, (n + sign * d)) / pk * math.exp(m) for n, pk, m in zip(bits, p, mu, strict=True)]

    def yields(b: BasisCounts) -> tuple[float, float]:
        bits = [c.sifted_bits for c in b.by_class()]
        lo, hi = gains(bits, sum(bits), -1), gains(bits, sum(bits), +1)
        y0 = (mu2 * lo[2] - mu3 * hi[1]) / (mu2 - mu3)
        y1 = mu1 * (lo[1] - hi[2] - (mu2**2 - mu3**2) / mu1**2 * (hi[0] - y0)) / (
            mu1 * (mu2 - mu3) - mu2**2 + mu3**2)
        return y0, y1

    p0 = sum(pk * math.exp(-m) for pk, m in zip(p, mu, strict=True))
    p1 = sum(pk * math.exp(-m) * m for pk, m in zip(p, mu, strict=True))
    y0x, y1x = yields(counts.X)
    _, y1z = yields(counts.Z)
    sx0, sx1, sz1 = max(0.0, y0x * p0), y1x * p1, y1z * p1
    errs = [c.errors for c in counts.Z.by_class()]
    d = math.sqrt(sum(errs) / 2 * L)
    e_hi = (errs[1] + d) / p[1] * math.exp(mu2)
    e_lo = max(0.0, errs[2] - d) / p[2] * math.exp(mu3)
    vz1 = min(sum(errs), p1 * (e_hi - e_lo) / (mu2 - mu3))
    b = vz1 / sz1
    g = math.sqrt((sz1 + sx1) * (1 - b) * b / (sz1 * sx1 * math.log(2))
                  * math.log2((sz1 + sx1) / (sz1 * sx1 * (1 - b) * b) * 441 / eps_sec**2))
    phi = min(0.5, b + g)
    return (sx0 + sx1 * (1 - binary_entropy(phi)) - lam - 6 * math.log2(21 / eps_sec)
            - math.log2(2 / eps_cor))


@pytest.mark.parametrize("case", ["A", "B"])
def test_key_length_matches_an_independent_derivation(case: str) -> None:
    counts, lam, extra = (A_COUNTS, 1_000_000, A_PARAMS) if case == "A" else (B_COUNTS, 90_000, {})
    params = SecurityParameters(**extra, key_bases="X", tail_bound="hoeffding")
    ours = secret_key_length(counts, lam, params).raw_key_length_bits
    theirs = _independent_key_length(counts, lam, params.intensities, params.probabilities,
                                     params.epsilon_sec, params.epsilon_cor)
    assert ours == pytest.approx(theirs, rel=1e-2)
    assert ours == pytest.approx(theirs, abs=1.0)


def test_both_bases_is_the_sum_of_two_lim_instances_with_half_the_epsilon() -> None:
    params = SecurityParameters()
    counts = B_COUNTS
    result = secret_key_length(counts, 100_000, params)
    assert result.key_bases == ("Z", "X")
    parts = [basis_bounds(counts, b, params, params.epsilon_sec / 2) for b in ("Z", "X")]
    expected = (sum(b.entropy_bits for b in parts) - 100_000
                - sum(6 * math.log2(21 / (params.epsilon_sec / 2)) for _ in parts)
                - verification_tag_bits(params.epsilon_cor))
    assert result.raw_key_length_bits == pytest.approx(expected, abs=1e-6)
    assert result.sifted_bits == counts.sifted_bits
    assert {b.key_basis: b.test_basis for b in result.per_basis} == {"Z": "X", "X": "Z"}
    assert result.correctness_penalty_bits == 51


def test_leakage_costs_exactly_its_bits_and_errors_cost_key() -> None:
    params = SecurityParameters()
    a = secret_key_length(B_COUNTS, 100_000, params)
    b = secret_key_length(B_COUNTS, 100_123, params)
    assert a.raw_key_length_bits - b.raw_key_length_bits == pytest.approx(123)
    noisier = SiftedCounts(X=basis((726_939, 48_034, 2_972), (9_000, 2_500, 1_486)), Z=B_COUNTS.Z)
    assert secret_key_length(noisier, 100_000, params).key_length_bits < a.key_length_bits
    # More decoy statistics never lowers the single-photon bound.
    more = SiftedCounts(X=basis((1_453_878, 96_068, 5_944), (15_266, 3_554, 2_972)),
                        Z=basis((1_453_878, 96_068, 5_944), (15_266, 3_554, 2_972)))
    assert secret_key_length(more, 0, params).bounds("X").s1_lower > a.bounds("X").s1_lower


def test_a_pass_too_short_gives_no_key_and_says_why() -> None:
    tiny = SiftedCounts(X=basis((900, 40, 3), (9, 2, 1)), Z=basis((900, 40, 3), (9, 2, 1)))
    result = secret_key_length(tiny, 100, SecurityParameters())
    assert result.key_length_bits == 0
    assert result.raw_key_length_bits < 0
    assert result.reason and "basis" in result.reason
    # Every figure survives a JSON round trip (no infinities for a report or MQTT).
    again = type(result).model_validate_json(result.model_dump_json())
    assert again == result
    big_leak = secret_key_length(B_COUNTS, 10_000_000, SecurityParameters())
    assert big_leak.key_length_bits == 0
    assert big_leak.reason and "leakage" in big_leak.reason


def test_all_errors_gives_no_key() -> None:
    bad = SiftedCounts(X=basis((700_000, 48_000, 3_000), (350_000, 24_000, 1_500)),
                       Z=basis((700_000, 48_000, 3_000), (350_000, 24_000, 1_500)))
    # At 50 % QBER error correction discloses (at least) every bit.
    result = secret_key_length(bad, bad.sifted_bits, SecurityParameters())
    assert result.key_length_bits == 0
    assert all(b.phase_error_upper == 0.5 and b.h_phase_error == 1.0 for b in result.per_basis)
    # Only the vacuum events carry entropy then: Eve learns nothing from an empty pulse.
    assert result.entropy_bits == pytest.approx(sum(b.s0_lower for b in result.per_basis))


@pytest.mark.parametrize("bad", [
    dict(mu_signal=0.1, mu_decoy=0.1),  # μ1 must exceed μ2 + μ3
    dict(mu_decoy=0.5, mu_vacuum=0.4),
    dict(p_signal=0.5, p_decoy=0.3, p_vacuum=0.3),
    dict(epsilon_sec=0.0), dict(epsilon_cor=1.5), dict(key_bases="Y"), dict(tail_bound="chebyshev"),
    dict(mu_signal=-1.0), dict(surprise=1),
])
def test_bad_parameters_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        SecurityParameters(**bad)


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ValidationError, match="exceed"):
        ClassCounts(sifted_bits=10, errors=11)
    with pytest.raises(ValidationError):
        ClassCounts(sifted_bits=-1, errors=0)
    with pytest.raises(ValueError, match="leaked_ec_bits"):
        secret_key_length(B_COUNTS, -1, SecurityParameters())
    with pytest.raises(KeyError, match="no key drawn"):
        secret_key_length(B_COUNTS, 0, SecurityParameters(key_bases="X")).bounds("Z")


def test_gamma_degenerates_cleanly() -> None:
    assert gamma(1e-9, 0.0, 1e5, 1e5) == 0.0
    assert gamma(1e-9, 0.02, 0.0, 1e5) == math.inf
    assert 0 < gamma(1e-9, 0.02, 1e5, 1e5) < 0.01


def test_defaults_are_the_micius_source_and_stated_epsilons() -> None:
    p = SecurityParameters()
    assert (p.epsilon_sec, p.epsilon_cor) == (1e-9, 1e-15)
    assert p.intensities == (0.8, 0.1, 0.0) and p.probabilities == (0.5, 0.25, 0.25)
    assert p.key_bases == "both" and p.tail_bound == "hoeffding"


def test_discarded_bits_are_subtracted_in_full() -> None:
    params = SecurityParameters()
    whole = secret_key_length(B_COUNTS, 100_000, params)
    part = secret_key_length(B_COUNTS, 100_000, params, discarded_bits=40_000)
    assert whole.raw_key_length_bits - part.raw_key_length_bits == pytest.approx(40_000)
    assert part.sifted_bits == B_COUNTS.sifted_bits - 40_000
    assert part.discarded_bits == 40_000
    with pytest.raises(ValueError, match="discarded_bits"):
        secret_key_length(B_COUNTS, 0, params, discarded_bits=-1)
    with pytest.raises(ValueError, match="exceed"):
        secret_key_length(B_COUNTS, 0, params, discarded_bits=B_COUNTS.sifted_bits + 1)
