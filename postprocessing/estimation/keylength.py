"""The secret key length of a pass: Lim et al. Eq. 1 over one or both key bases."""

from __future__ import annotations

import math

from postprocessing.estimation.decoy import (
    binary_entropy,
    gamma,
    rescaled_bounds,
    single_photon_errors_upper,
    single_photon_lower,
    tau,
    vacuum_lower,
)
from postprocessing.estimation.models import (
    BasisKeyBounds,
    KeyLengthResult,
    SecurityParameters,
    SiftedCounts,
)
from postprocessing.verification import verification_tag_bits


def basis_bounds(counts: SiftedCounts, key_basis: str, params: SecurityParameters,
                 epsilon_sec: float) -> BasisKeyBounds:
    """All of Lim et al.'s bounds with ``key_basis`` as X and the other basis as Z.

    ``epsilon_sec`` is this basis's share of the secrecy parameter; every one of the
    paper's 21 estimation and smoothing events gets ε/21 of it.
    """
    test_basis = "X" if key_basis == "Z" else "Z"
    mu, p = params.intensities, params.probabilities
    eps_each = epsilon_sec / 21.0
    key, test = counts.basis(key_basis), counts.basis(test_basis)
    n_k = [c.sifted_bits for c in key.by_class()]
    nz_k = [c.sifted_bits for c in test.by_class()]
    mz_k = [c.errors for c in test.by_class()]
    n_x, n_z, m_z = sum(n_k), sum(nz_k), sum(mz_k)
    tau0, tau1 = tau(0, mu, p), tau(1, mu, p)

    n_minus, n_plus = rescaled_bounds(n_k, n_x, mu, p, eps_each, params.tail_bound)
    nz_minus, nz_plus = rescaled_bounds(nz_k, n_z, mu, p, eps_each, params.tail_bound)
    m_minus, m_plus = rescaled_bounds(mz_k, m_z, mu, p, eps_each, params.tail_bound)

    # The bounds are on expectations; the events they count are subsets of the basis's
    # detections, so s0 <= n and s0 + s1 <= n (capping a lower bound keeps it valid).
    s0 = min(float(n_x), vacuum_lower(n_minus, n_plus, mu, tau0))
    s1 = min(n_x - max(0.0, s0), single_photon_lower(n_minus, n_plus, mu, tau0, tau1, s0))
    sz0 = min(float(n_z), vacuum_lower(nz_minus, nz_plus, mu, tau0))
    sz1 = min(n_z - max(0.0, sz0), single_photon_lower(nz_minus, nz_plus, mu, tau0, tau1, sz0))
    # Single-photon errors are a subset of the test basis's observed errors: v ≤ m_Z.
    v1 = min(float(m_z), max(0.0, single_photon_errors_upper(m_minus, m_plus, mu, tau1)))

    ratio: float | None = None
    g: float | None = None
    phi = 0.5
    if sz1 > 0.0 and s1 > 0.0:
        ratio = v1 / sz1
        g = gamma(epsilon_sec, ratio, sz1, s1)
        phi = min(0.5, ratio + g)
    h_phi = binary_entropy(phi)
    entropy = max(0.0, s0) + max(0.0, s1) * (1.0 - h_phi)
    return BasisKeyBounds(
        key_basis=key_basis, test_basis=test_basis, epsilon_sec=epsilon_sec,
        n_key_bits=n_x, n_test_bits=n_z, m_test_errors=m_z,
        tail_bound=params.tail_bound,
        n_minus=n_minus, n_plus=n_plus, test_n_minus=nz_minus, test_n_plus=nz_plus,
        m_minus=m_minus, m_plus=m_plus, tau0=tau0, tau1=tau1,
        s0_lower=s0, s1_lower=s1, test_s0_lower=sz0, test_s1_lower=sz1, v1_upper=v1,
        phase_error_ratio=ratio, gamma=g, phase_error_upper=phi, h_phase_error=h_phi,
        entropy_bits=entropy, secrecy_penalty_bits=6.0 * math.log2(21.0 / epsilon_sec),
    )


def secret_key_length(counts: SiftedCounts, leaked_ec_bits: int,
                      params: SecurityParameters | None = None, *,
                      discarded_bits: int = 0) -> KeyLengthResult:
    """ℓ = ⌊ Σ_b [s_b,0 + s_b,1 (1 − h(φ_b))] − λ_EC − Σ_b 6 log2(21/ε_b) − log2(2/ε_cor) ⌋.

    (with log2(2/ε_cor) rounded up to the verification tag's bits). Lim et al. Eq. 1, with ``leaked_ec_bits`` = λ_EC (every bit error correction disclosed,
    over the whole sifted key; verification's tag is counted by the correctness term).
    With ``params.key_bases == "both"`` the key is drawn from both bases, ε_b = ε_sec/2
    each; otherwise from the one basis named, ε_b = ε_sec. ``key_length_bits`` is what
    privacy amplification outputs from the key bases' corrected sifted bits (in the order
    the pipeline holds them; one Toeplitz hash over the lot). Clipped at 0 with a reason.

    ``discarded_bits``: sifted bits counted in ``counts`` but left out of the key (e.g.
    blocks error correction failed on, whose bits Alice then disclosed so their errors are
    counted exactly). They are subtracted in full: H(A_kept | E, A_discarded) ≥
    H(A_all | E) − |A_discarded|. ``sifted_bits`` in the result is then the PA input length.
    """
    params = params or SecurityParameters()
    if leaked_ec_bits < 0:
        raise ValueError(f"leaked_ec_bits must be >= 0, got {leaked_ec_bits}")
    if discarded_bits < 0:
        raise ValueError(f"discarded_bits must be >= 0, got {discarded_bits}")
    key_bases: tuple[str, ...] = ("Z", "X") if params.key_bases == "both" else (params.key_bases,)
    eps_b = params.epsilon_sec / len(key_bases)
    per_basis = tuple(basis_bounds(counts, b, params, eps_b) for b in key_bases)
    entropy = sum(b.entropy_bits for b in per_basis)
    secrecy = sum(b.secrecy_penalty_bits for b in per_basis)
    # The verification tag's length t = ⌈log2(2/ε_cor)⌉ (Lim et al.'s log2(2/ε_cor), rounded
    # up to the bits the tag actually reveals).
    correctness = float(verification_tag_bits(params.epsilon_cor))
    sifted = sum(counts.basis(b).sifted_bits for b in key_bases)
    if discarded_bits > sifted:
        raise ValueError(f"discarded_bits ({discarded_bits}) exceed the key bases' sifted bits ({sifted})")
    raw = entropy - leaked_ec_bits - discarded_bits - secrecy - correctness
    length = max(0, math.floor(raw))
    reason = None
    if length == 0:
        weak = [b.key_basis for b in per_basis if b.s1_lower <= 0.0 or b.phase_error_upper >= 0.5]
        if weak:
            reason = (f"no single-photon key could be bounded in basis {', '.join(weak)} "
                      "(too few decoy or vacuum detections, or too many errors)")
        else:
            reason = (f"the bounded entropy ({entropy:.0f} bits) does not cover the error-correction "
                      f"leakage ({leaked_ec_bits} bits) and the security terms "
                      f"({secrecy + correctness:.0f} bits)")
    return KeyLengthResult(
        key_length_bits=length, raw_key_length_bits=raw, key_bases=key_bases, per_basis=per_basis,
        sifted_bits=sifted - discarded_bits, leaked_ec_bits=leaked_ec_bits,
        discarded_bits=discarded_bits, entropy_bits=entropy,
        secrecy_penalty_bits=secrecy, correctness_penalty_bits=correctness,
        epsilon_sec=params.epsilon_sec, epsilon_cor=params.epsilon_cor, reason=reason,
    )
