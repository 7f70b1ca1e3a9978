"""What the Micius validation pass's counts give, next to Liao et al. 2017's 300,939 bits.

The counts are the simulated pass's (config/sim.toml, seed 2016, 2 ns gate), sifted by the
ground pipeline against the satellite's announcements: 1,542,675 sifted bits, per basis and
class below, with the QBER per class the reconciliation measured (given to 0.01 %, so the
error counts here are rounded from it). They are the whole sifted key; λ_EC is modelled as
f · n · h(QBER) for one reconciliation over all of it (overall QBER 1.24 %).

Run with ``-s`` to see the table. The figures are in docs/postprocessing.md ("Security analysis").
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

SIM_SIFTED = {"Z": (720_171, 47_641, 3_083), "X": (721_110, 47_622, 3_048)}
SIM_QBER = {"Z": (0.0093, 0.0291, 0.5010), "X": (0.0093, 0.0282, 0.4894)}


def sim_counts(scale: float = 1.0) -> SiftedCounts:
    def basis(b: str) -> BasisCounts:
        return BasisCounts(**{k: ClassCounts(sifted_bits=round(n * scale), errors=round(n * scale * q))
                              for k, n, q in zip(("signal", "decoy", "vacuum"), SIM_SIFTED[b],
                                                 SIM_QBER[b], strict=True)})
    return SiftedCounts(Z=basis("Z"), X=basis("X"))


def leakage(counts: SiftedCounts, f: float) -> int:
    """λ_EC = f · n · h(QBER) for one reconciliation over all sifted bits (all classes)."""
    n = counts.sifted_bits
    qber = (counts.Z.errors + counts.X.errors) / n
    return round(f * n * binary_entropy(qber))


def test_counts_are_the_simulated_pass() -> None:
    c = sim_counts()
    assert c.sifted_bits == 1_542_675
    assert (c.Z.errors + c.X.errors) / c.sifted_bits == pytest.approx(0.01243, abs=1e-4)


@pytest.mark.parametrize("f", [1.05, 1.1, 1.16, 1.2, 1.3])
def test_micius_final_key_is_within_15_percent_of_liao(f: float) -> None:
    counts = sim_counts()
    result = secret_key_length(counts, leakage(counts, f), SecurityParameters())
    assert abs(result.key_length_bits / LIAO_FINAL_BITS - 1) <= 0.15


def test_micius_table(capsys: pytest.CaptureFixture[str]) -> None:
    rows = []
    for tail in ("hoeffding", "chernoff"):
        for scale, label in ((1.0, "sim"), (LIAO_SIFTED_BITS / 1_542_675, "Liao")):
            counts = sim_counts(scale)
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
    # Chernoff's per-class deviations are tighter on the small decoy and vacuum classes.
    assert by[("hoeffding", "sim", 1.16)].key_length_bits < by[("chernoff", "sim", 1.16)].key_length_bits
    # Key grows with the sifted bits and falls with f.
    assert by[("hoeffding", "Liao", 1.16)].key_length_bits > by[("hoeffding", "sim", 1.16)].key_length_bits
    assert by[("hoeffding", "sim", 1.5)].key_length_bits < by[("hoeffding", "sim", 1.1)].key_length_bits
