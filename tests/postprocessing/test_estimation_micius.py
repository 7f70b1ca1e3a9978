"""What the Micius validation pass's counts give, next to Liao et al. 2017's 300,939 bits.

Representative per-class counts, derived (not measured here; the e2e test measures them):
the simulator's Micius pass (docs/simulator.md, seed 2016) sifts 1,555,882 bits with QBER
1.05 % on signal, 3.7 % on decoy, 50 % on vacuum states, 1.40 % overall. A detection model
with a noise yield y0 (dark counts + background, QBER ½) and a signal yield η·μ (optical
error e_opt) reproduces these with y0/η = 0.006595 and e_opt = 0.647 %: the sifted bits
split p_k (y0/η + μ_k) → 93.444 % signal, 6.1745 % decoy, 0.38202 % vacuum, and the overall
QBER comes out at 1.40 % as simulated. The two bases are split evenly (50/50 choice).

Run with ``-s`` to see the table. The figures are in docs/_security.md.
"""

from __future__ import annotations

import pytest

from postprocessing.estimation import (
    BasisCounts,
    ClassCounts,
    SecurityParameters,
    SiftedCounts,
    binary_entropy,
    secret_key_length,
)

LIAO_FINAL_BITS = 300_939
LIAO_SIFTED_BITS = 1_671_072
SIM_SIFTED_BITS = 1_555_882
CLASS_FRACTIONS = (0.93444, 0.061745, 0.0038202)
CLASS_QBER = (0.0105, 0.037, 0.5)


def micius_counts(total_sifted: int) -> SiftedCounts:
    per_basis = [round(total_sifted * f / 2) for f in CLASS_FRACTIONS]
    b = BasisCounts(**{k: ClassCounts(sifted_bits=n, errors=round(n * q))
                       for k, n, q in zip(("signal", "decoy", "vacuum"), per_basis, CLASS_QBER, strict=True)})
    return SiftedCounts(Z=b, X=b)


def leakage(counts: SiftedCounts, f: float) -> int:
    """λ_EC = f · n · h(QBER) for one reconciliation over all sifted bits (all classes)."""
    n = counts.sifted_bits
    qber = (counts.Z.errors + counts.X.errors) / n
    return round(f * n * binary_entropy(qber))


def test_counts_model_reproduces_the_simulated_pass() -> None:
    c = micius_counts(SIM_SIFTED_BITS)
    assert c.sifted_bits == pytest.approx(SIM_SIFTED_BITS, rel=1e-5)
    assert (c.Z.errors + c.X.errors) / c.sifted_bits == pytest.approx(0.0140, abs=0.0002)


@pytest.mark.parametrize("f", [1.16, 1.2])
def test_micius_final_key_is_within_15_percent_of_liao(f: float) -> None:
    counts = micius_counts(SIM_SIFTED_BITS)
    result = secret_key_length(counts, leakage(counts, f), SecurityParameters())
    assert abs(result.key_length_bits / LIAO_FINAL_BITS - 1) <= 0.15


def test_micius_table(capsys: pytest.CaptureFixture[str]) -> None:
    rows = []
    for tail in ("chernoff", "hoeffding"):
        for total, label in ((SIM_SIFTED_BITS, "sim"), (LIAO_SIFTED_BITS, "Liao")):
            counts = micius_counts(total)
            for f in (1.0, 1.1, 1.16, 1.2, 1.5):
                lam = leakage(counts, f)
                r = secret_key_length(counts, lam, SecurityParameters(tail_bound=tail))
                rows.append((tail, label, f, lam, r))
    with capsys.disabled():
        print("\ntail       sifted  f     λ_EC     s1(Z)    φ(Z)    final    vs 300,939")
        for tail, label, f, lam, r in rows:
            b = r.bounds("Z")
            print(f"{tail:<10} {label:<6} {f:<5} {lam:>7,} {b.s1_lower:>9,.0f} {b.phase_error_upper:.4f}"
                  f" {r.key_length_bits:>8,} {r.key_length_bits / LIAO_FINAL_BITS - 1:+.1%}")
    by = {(t, lab, f): r for t, lab, f, _, r in rows}
    # Lim et al.'s Hoeffding bound is looser on the small decoy and vacuum classes.
    assert by[("hoeffding", "sim", 1.16)].key_length_bits < by[("chernoff", "sim", 1.16)].key_length_bits
    # Key grows with the sifted bits and falls with f.
    assert by[("chernoff", "Liao", 1.16)].key_length_bits > by[("chernoff", "sim", 1.16)].key_length_bits
    assert by[("chernoff", "sim", 1.5)].key_length_bits < by[("chernoff", "sim", 1.1)].key_length_bits
