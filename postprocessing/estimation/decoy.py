"""Decoy-state bounds with finite-key statistics (Lim, Curty, Walenta, Xu, Zbinden,
"Concise security bounds for practical decoy-state quantum key distribution",
PRA 89, 022307 (2014), arXiv:1311.7129).

Pure functions of floats. Notation is the paper's: X is the key basis, Z the test basis,
k runs over the intensities μ1 > μ2 + μ3, μ2 > μ3 >= 0 with probabilities p_k.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def binary_entropy(p: float) -> float:
    """h(p) = −p log2 p − (1 − p) log2(1 − p), with h(0) = h(1) = 0."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def tau(n: int, mu: Sequence[float], p: Sequence[float]) -> float:
    """τ_n = Σ_k p_k e^{−μk} μk^n / n!: probability that Alice sends n photons."""
    return sum(pk * math.exp(-mk) * mk**n for mk, pk in zip(mu, p, strict=True)) / math.factorial(n)


def hoeffding_delta(total: float, epsilon: float) -> float:
    """δ = sqrt(total/2 · ln(1/ε)): Hoeffding's deviation for ``total`` events (ε = ε_sec/21)."""
    return math.sqrt(total / 2.0 * math.log(1.0 / epsilon))


def chernoff_deltas(count: float, epsilon: float) -> tuple[float, float]:
    """(δ⁻, δ⁺) of the multiplicative Chernoff bound inverted for an observed ``count``.

    For a sum X of independent Bernoulli trials with mean μ, P[X ≥ μ + t] ≤ e^{−t²/(2μ+t)}
    and P[X ≤ μ − t] ≤ e^{−t²/(2μ)}. Solving for μ with L = ln(1/ε) gives, except with
    probability ε each, μ ≥ X − δ⁻ with δ⁻ = L/2 + sqrt(2XL + L²/4) (this is L more
    conservative than the exact root, as in SatQuMA) and μ ≤ X + δ⁺ with
    δ⁺ = L + sqrt(2XL + L²).
    """
    log_term = math.log(1.0 / epsilon)
    minus = 0.5 * log_term + math.sqrt(2.0 * count * log_term + 0.25 * log_term**2)
    plus = log_term + math.sqrt(2.0 * count * log_term + log_term**2)
    return minus, plus


def rescaled_bounds(
    counts: Sequence[float], total: float, mu: Sequence[float], p: Sequence[float], epsilon: float,
    tail_bound: str = "hoeffding",
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """n±_k = e^{μk}/p_k (n_k ± δ) for each intensity k (Lim et al. below Eq. 2).

    ``tail_bound="hoeffding"``: δ = sqrt(total/2 · ln(1/ε)) for every class, Lim et al.
    exactly; ``"chernoff"``: the class's own (δ⁻, δ⁺) from :func:`chernoff_deltas`.
    Both hold because, given the photon numbers of the detected events, each event's
    intensity label is an independent draw (Eve cannot tell the intensities apart), so
    n_k is a sum of independent Bernoulli trials. The lower bounds are clipped at 0: they
    bound expected counts, which are never negative, so the clip keeps them valid.
    """
    if tail_bound == "hoeffding":
        delta = hoeffding_delta(total, epsilon)
        deltas = [(delta, delta) for _ in counts]
    elif tail_bound == "chernoff":
        deltas = [chernoff_deltas(nk, epsilon) for nk in counts]
    else:
        raise ValueError(f"tail_bound must be 'hoeffding' or 'chernoff', got {tail_bound!r}")
    minus = tuple(max(0.0, math.exp(mk) / pk * (nk - dm))
                  for nk, mk, pk, (dm, _) in zip(counts, mu, p, deltas, strict=True))
    plus = tuple(math.exp(mk) / pk * (nk + dp)
                 for nk, mk, pk, (_, dp) in zip(counts, mu, p, deltas, strict=True))
    return minus, plus


def vacuum_lower(n_minus: Sequence[float], n_plus: Sequence[float], mu: Sequence[float], tau0: float) -> float:
    """s_{X,0} >= τ0 (μ2 n⁻_{μ3} − μ3 n⁺_{μ2}) / (μ2 − μ3)   (Lim et al. Eq. 2)."""
    _, mu2, mu3 = mu
    return tau0 * (mu2 * n_minus[2] - mu3 * n_plus[1]) / (mu2 - mu3)


def single_photon_lower(
    n_minus: Sequence[float], n_plus: Sequence[float], mu: Sequence[float], tau0: float, tau1: float,
    s0: float,
) -> float:
    """s_{X,1} >= τ1 μ1 [n⁻_{μ2} − n⁺_{μ3} − (μ2² − μ3²)/μ1² (n⁺_{μ1} − s_{X,0}/τ0)]
    / [μ1 (μ2 − μ3) − μ2² + μ3²]   (Lim et al. Eq. 3)."""
    mu1, mu2, mu3 = mu
    numerator = n_minus[1] - n_plus[2] - (mu2**2 - mu3**2) / mu1**2 * (n_plus[0] - s0 / tau0)
    return tau1 * mu1 * numerator / (mu1 * (mu2 - mu3) - mu2**2 + mu3**2)


def single_photon_errors_upper(m_minus: Sequence[float], m_plus: Sequence[float], mu: Sequence[float], tau1: float) -> float:
    """v_{Z,1} <= τ1 (m⁺_{Z,μ2} − m⁻_{Z,μ3}) / (μ2 − μ3)   (Lim et al. Eq. 4)."""
    _, mu2, mu3 = mu
    return tau1 * (m_plus[1] - m_minus[2]) / (mu2 - mu3)


def gamma(a: float, b: float, c: float, d: float) -> float:
    """γ(a, b, c, d) = sqrt( (c+d)(1−b)b / (c d ln 2) · log2( (c+d) / (c d (1−b) b) · 21²/a² ) ).

    The random-sampling correction of Lim et al. Eq. 5, with a = ε_sec, b = v_{Z,1}/s_{Z,1},
    c = s_{Z,1}, d = s_{X,1}. Returns 0 when b is 0 or 1 (the paper's formula degenerates
    there; the caller caps φ at 1/2 anyway) and +inf when c or d is not positive.
    """
    if c <= 0.0 or d <= 0.0:
        return math.inf
    if b <= 0.0 or b >= 1.0:
        return 0.0
    inner = (c + d) / (c * d * (1.0 - b) * b) * 21.0**2 / a**2
    log_term = math.log2(inner)
    if log_term <= 0.0:
        return 0.0
    return math.sqrt((c + d) * (1.0 - b) * b / (c * d * math.log(2.0)) * log_term)
