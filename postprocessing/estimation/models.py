"""Inputs and outputs of the finite-key decoy-state estimate (seam 4).

Counts are what sifting and verified error correction give per basis and intensity
class; parameters are the source's intensities and probabilities and the security
parameters. The result carries every bound and term, so a key report can show them.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Names of the intensity classes, in order μ1 (signal) > μ2 (decoy) > μ3 (vacuum).
INTENSITY_CLASSES: tuple[str, str, str] = ("signal", "decoy", "vacuum")
#: Names of the bases, as in ``drivers.timetagger.bb84.Basis`` (Z = H/V, X = D/A).
BASES: tuple[str, str] = ("Z", "X")

KeyBases = Literal["both", "Z", "X"]
TailBound = Literal["hoeffding", "chernoff"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SecurityParameters(_Frozen):
    """The source and the security parameters of the finite-key analysis.

    Defaults are the Micius validation pass (Liao et al., Nature 549, 43 (2017)):
    μ = 0.8 / 0.1 / 0 sent with probabilities 0.5 / 0.25 / 0.25. ``epsilon_sec`` = 1e-9
    matches the failure probability Liao report for their final key; ``epsilon_cor`` =
    1e-15 makes a wrong key accepted by verification a million times less likely than a
    secrecy failure, at a cost of only log2(2/ε_cor) ≈ 51 bits of key. The protocol is
    ε-secure with ε = ε_sec + ε_cor (Lim et al., PRA 89, 022307 (2014)).

    ``key_bases``: ``"both"`` (default) distils key from the Z and the X basis, each
    basis's phase error estimated from the other basis's errors, ε_sec split evenly
    between them (see docs/postprocessing.md, "Security analysis"); ``"Z"`` or ``"X"`` is Lim et al.'s protocol
    exactly, with key from that basis alone and the other one as test basis.

    ``tail_bound``: how observed counts bound their expectations (the n± of Lim et al.):
    ``"hoeffding"`` (default) Lim et al.'s Hoeffding bound, one deviation
    sqrt(n/2 ln(21/ε)) for every class — the analysis the issue names, and the one that
    reproduces Liao's 300,939 bits from the simulated pass at f ≈ 1.16; ``"chernoff"`` the
    multiplicative Chernoff bound per intensity class, as SatQuMA does, tighter for the
    small decoy and vacuum classes (about +35 % key on the Micius pass). Both are
    rigorous; see docs/postprocessing.md, "Security analysis".
    """

    epsilon_sec: float = Field(1e-9, gt=0.0, lt=1.0)
    epsilon_cor: float = Field(1e-15, gt=0.0, lt=1.0)
    mu_signal: float = Field(0.8, gt=0.0)
    mu_decoy: float = Field(0.1, gt=0.0)
    mu_vacuum: float = Field(0.0, ge=0.0)
    p_signal: float = Field(0.5, gt=0.0, lt=1.0)
    p_decoy: float = Field(0.25, gt=0.0, lt=1.0)
    p_vacuum: float = Field(0.25, gt=0.0, lt=1.0)
    key_bases: KeyBases = "both"
    tail_bound: TailBound = "hoeffding"

    @model_validator(mode="after")
    def _check_decoy_conditions(self) -> SecurityParameters:
        # Lim et al. require μ1 > μ2 + μ3 and μ2 > μ3 >= 0 for their bounds to hold.
        if not self.mu_signal > self.mu_decoy + self.mu_vacuum:
            raise ValueError(
                f"intensities must satisfy mu_signal > mu_decoy + mu_vacuum, got "
                f"{self.mu_signal} <= {self.mu_decoy} + {self.mu_vacuum}")
        if not self.mu_decoy > self.mu_vacuum:
            raise ValueError(f"mu_decoy ({self.mu_decoy}) must exceed mu_vacuum ({self.mu_vacuum})")
        total = self.p_signal + self.p_decoy + self.p_vacuum
        if not math.isclose(total, 1.0, rel_tol=0.0, abs_tol=1e-9):
            raise ValueError(f"intensity probabilities must sum to 1, got {total}")
        return self

    @property
    def intensities(self) -> tuple[float, float, float]:
        """(μ1, μ2, μ3) in the order of :data:`INTENSITY_CLASSES`."""
        return (self.mu_signal, self.mu_decoy, self.mu_vacuum)

    @property
    def probabilities(self) -> tuple[float, float, float]:
        """(p_μ1, p_μ2, p_μ3) in the order of :data:`INTENSITY_CLASSES`."""
        return (self.p_signal, self.p_decoy, self.p_vacuum)


class ClassCounts(_Frozen):
    """Sifted detections of one basis and intensity class, and the errors among them.

    ``errors`` are known exactly once error correction is verified (Alice's and Bob's
    corrected strings agree, so the positions Bob flipped are the errors).
    """

    sifted_bits: int = Field(ge=0)
    errors: int = Field(ge=0)

    @model_validator(mode="after")
    def _errors_within_bits(self) -> ClassCounts:
        if self.errors > self.sifted_bits:
            raise ValueError(f"errors ({self.errors}) exceed sifted_bits ({self.sifted_bits})")
        return self


class BasisCounts(_Frozen):
    """One basis's sifted counts per intensity class."""

    signal: ClassCounts
    decoy: ClassCounts
    vacuum: ClassCounts

    def by_class(self) -> tuple[ClassCounts, ClassCounts, ClassCounts]:
        """Counts in the order of :data:`INTENSITY_CLASSES`."""
        return (self.signal, self.decoy, self.vacuum)

    @property
    def sifted_bits(self) -> int:
        return self.signal.sifted_bits + self.decoy.sifted_bits + self.vacuum.sifted_bits

    @property
    def errors(self) -> int:
        return self.signal.errors + self.decoy.errors + self.vacuum.errors


class SiftedCounts(_Frozen):
    """A pass's sifted counts: both bases, all intensity classes (the counts model)."""

    Z: BasisCounts
    X: BasisCounts

    def basis(self, name: str) -> BasisCounts:
        if name not in BASES:
            raise ValueError(f"basis must be one of {BASES}, got {name!r}")
        return self.Z if name == "Z" else self.X

    @property
    def sifted_bits(self) -> int:
        return self.Z.sifted_bits + self.X.sifted_bits


class BasisKeyBounds(_Frozen):
    """Every bound of one key basis (Lim et al. Eqs. 2–5, their notation in comments).

    ``n_*`` are the Hoeffding-corrected, intensity-rescaled detection counts of the key
    basis (n±_{X,k} = e^{μk}/p_k (n_{X,k} ± δ)); ``m_*`` the same for the test basis's
    errors. Bounds that came out negative are reported as computed; the entropy uses
    max(0, ·).
    """

    key_basis: str
    test_basis: str
    epsilon_sec: float  # this basis's share of ε_sec
    n_key_bits: int  # n_X
    n_test_bits: int  # n_Z
    m_test_errors: int  # m_Z
    tail_bound: str  # how the n± were bounded: "chernoff" or "hoeffding"
    n_minus: tuple[float, float, float]  # n⁻_{X,k}, k = signal, decoy, vacuum
    n_plus: tuple[float, float, float]  # n⁺_{X,k}
    test_n_minus: tuple[float, float, float]  # n⁻_{Z,k}
    test_n_plus: tuple[float, float, float]  # n⁺_{Z,k}
    m_minus: tuple[float, float, float]  # m⁻_{Z,k}
    m_plus: tuple[float, float, float]  # m⁺_{Z,k}
    tau0: float
    tau1: float
    s0_lower: float  # s_{X,0}
    s1_lower: float  # s_{X,1}
    test_s0_lower: float  # s_{Z,0}
    test_s1_lower: float  # s_{Z,1}
    v1_upper: float  # v_{Z,1}: single-photon errors in the test basis (≤ m_Z)
    phase_error_ratio: float | None  # v_{Z,1} / s_{Z,1}; None when s_{Z,1} or s_{X,1} <= 0
    gamma: float | None  # γ(ε_sec, v/s, s_{Z,1}, s_{X,1}); None likewise (φ is then ½)
    phase_error_upper: float  # φ_X, capped at 0.5
    h_phase_error: float  # h(φ_X)
    entropy_bits: float  # s_{X,0} + s_{X,1} (1 − h(φ_X))
    secrecy_penalty_bits: float  # 6 log2(21/ε)


class KeyLengthResult(_Frozen):
    """The secret key length and every term of it.

    ℓ = ⌊ Σ_b [s_b,0 + s_b,1 (1 − h(φ_b))] − λ_EC − Σ_b 6 log2(21/ε_b) − log2(2/ε_cor) ⌋,
    clipped at 0 (Lim et al. Eq. 1; summed over the key bases). ``key_length_bits`` is the
    number of bits privacy amplification outputs from the whole corrected sifted key.
    """

    key_length_bits: int
    raw_key_length_bits: float  # before the floor and the clip at 0
    key_bases: tuple[str, ...]
    per_basis: tuple[BasisKeyBounds, ...]
    sifted_bits: int  # bits privacy amplification hashes (the key bases' sifted bits)
    leaked_ec_bits: int
    discarded_bits: int = 0  # sifted bits left out of the key, subtracted in full
    entropy_bits: float
    secrecy_penalty_bits: float
    correctness_penalty_bits: float
    epsilon_sec: float
    epsilon_cor: float
    reason: str | None = None  # why the key is empty, when it is

    def bounds(self, key_basis: str) -> BasisKeyBounds:
        for b in self.per_basis:
            if b.key_basis == key_basis:
                return b
        raise KeyError(f"no key drawn from basis {key_basis!r}; key bases: {self.key_bases}")
