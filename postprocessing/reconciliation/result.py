"""What Bob's reconciliation returns: the corrected key and every figure of its cost."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def binary_entropy(p: float) -> float:
    """h(p) in bits; 0 at p = 0 or 1."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


@dataclass(frozen=True)
class BlockReport:
    """One block's outcome (no key bits).

    ``revealed_bits``: extra parities disclosed in blind rounds. ``disclosed_bits`` =
    syndrome bits + extra parities (what crossed the channel for this block);
    ``leaked_bits`` = syndrome bits − punctured positions + extra parities (the punctured
    positions' random values one-time-pad as many syndrome bits: see
    docs/_reconciliation.md; today's planner punctures none, so leaked = disclosed).
    ``decode_attempts``: decoder runs (a min-sum run and a product-sum run on the same
    disclosure count two). ``errors_corrected``: Bob's bits the decoder flipped (0 when
    not converged).
    """

    block_index: int
    key_offset_bits: int
    key_length_bits: int
    code_id: str
    punctured_bits: int
    shortened_bits: int
    syndrome_bits: int
    revealed_bits: int
    decode_attempts: int
    converged: bool
    errors_corrected: int

    @property
    def disclosed_bits(self) -> int:
        return self.syndrome_bits + self.revealed_bits

    @property
    def leaked_bits(self) -> int:
        return self.syndrome_bits - self.punctured_bits + self.revealed_bits


@dataclass(frozen=True)
class ReconciliationResult:
    """Bob's corrected key and the cost of getting it.

    - ``corrected_bits``: uint8 0/1, Bob's bits of the converged blocks, corrected to
      Alice's, concatenated in key order (what goes on to verification and PA);
    - ``kept_mask``: bool per input bit, True where the bit is in ``corrected_bits``
      (blocks that did not converge, and a tail too short to reconcile, are False; Alice
      keeps the same positions);
    - ``leaked_bits``: λ_EC, over ALL blocks including those discarded;
    - ``disclosed_bits``: every key-dependent bit that crossed the channel (syndromes and
      extra parities), ≥ ``leaked_bits``;
    - ``efficiency_f``: ``leaked_bits / (kept · h(qber_measured))`` (NaN if nothing kept
      or no error seen);
    - ``qber_measured``: errors corrected / kept bits (over converged blocks);
    - ``blocks``: a :class:`BlockReport` per block; ``converged`` the same as a list;
    - ``round_trips``: request/reply pairs with Alice (syndromes, reveals, finish).

    A non-converged block is never in ``corrected_bits``. The final guard against a block
    that converged to a wrong word is the verification hash (``postprocessing.verification``).
    """

    corrected_bits: np.ndarray = field(repr=False)
    kept_mask: np.ndarray = field(repr=False)
    leaked_bits: int
    disclosed_bits: int
    qber_estimate: float
    qber_measured: float
    efficiency_f: float
    round_trips: int
    blocks: tuple[BlockReport, ...] = field(repr=False)

    @property
    def converged(self) -> list[bool]:
        return [b.converged for b in self.blocks]

    @property
    def kept_bits(self) -> int:
        return int(self.corrected_bits.size)

    @property
    def failed_blocks(self) -> int:
        return sum(not b.converged for b in self.blocks)
