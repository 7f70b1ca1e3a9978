"""Bob's side of Cascade, vectorised: all of a round's bisections advance in lockstep.

The protocol (Brassard–Salvail Cascade with the block-size schedule of Martinez-Mateo,
Pacher, Peev, Ciurana, Martin, "Demystifying the information reconciliation protocol
Cascade", QIC 15 (2015): k1 ≈ 0.73/QBER, k_i = 2·k_{i-1}, no BICONF):

1. Setup (1 round trip): Bob sends the key length and the pass block sizes; Alice answers
   with a fresh public seed from which both derive a permutation per pass.
2. Top level (1 round trip, more only if over the request cap): Bob asks the parity of
   every block of every pass at once. These parities are the same whatever Bob does
   later (original Cascade reveals them all too), so asking them up front leaks nothing
   more and saves a round trip per pass.
3. Bisection rounds: passes are worked in order — pass i's odd blocks (Bob's parity ≠
   Alice's) are bisected once passes < i are settled — but every bisection under way, in
   any pass, advances one level per round trip: Bob asks the parities of the left halves
   of all of them in one request, keeps the half whose parity differs (the other half's
   parity is inferred, not asked), and flips the bit a search ends on. A flip changes
   the parity of the block holding that bit in every other pass; those that become odd
   start their own bisections in the next round (the cascade step), batched the same way.
   A search whose current range a flip made even again is dropped (its block is even).
4. Done when every block of every pass has Bob's parity equal to Alice's.

Every parity Alice reveals is one bit of leakage, counted exactly (inferred parities
cost nothing). Cascade leaves an even number of errors in every block undetected with a
small probability: the verification hash (:mod:`postprocessing.verification`) is the
final guard, as for LDPC.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from postprocessing.bits import as_bits
from postprocessing.reconciliation.cascade.channel import CascadeChannel
from postprocessing.reconciliation.cascade.messages import (
    MAX_KEY_BITS,
    MAX_PASSES,
    MAX_RANGES_PER_REQUEST,
    PERMUTATION_SCHEME,
    CascadeSetupRequest,
    ParityRequest,
)
from postprocessing.reconciliation.cascade.permutations import inverse, pass_permutation
from postprocessing.reconciliation.errors import ReconciliationError
from postprocessing.reconciliation.result import BlockReport, ReconciliationResult, binary_entropy

CASCADE_ID = "cascade-v1"

Ranges = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class CascadeConfig:
    """Cascade's knobs.

    - ``k1_factor``: first block size k1 = round(k1_factor / QBER) (0.73: Demystifying);
    - ``passes``: number of passes (block sizes k1·2^i, capped at the key length);
    - ``min_qber``: the QBER the schedule assumes at least (an estimate of 0 would give
      one huge block);
    - ``max_round_trips``: a session that has not settled by then ends not converged;
    - ``max_ranges_per_request``: Bob splits a larger set of ranges into several requests.
    """

    k1_factor: float = 0.73
    passes: int = 4
    min_qber: float = 0.002
    max_round_trips: int = 20_000
    max_ranges_per_request: int = MAX_RANGES_PER_REQUEST

    def __post_init__(self) -> None:
        if not 1 <= self.passes <= MAX_PASSES:
            raise ValueError(f"passes must be in [1, {MAX_PASSES}], got {self.passes}")
        if not self.k1_factor > 0:
            raise ValueError(f"k1_factor must be > 0, got {self.k1_factor}")
        if not 0 < self.min_qber < 0.5:
            raise ValueError(f"min_qber must be in (0, 0.5), got {self.min_qber}")
        if not 1 <= self.max_ranges_per_request <= MAX_RANGES_PER_REQUEST:
            raise ValueError("max_ranges_per_request must be in "
                             f"[1, {MAX_RANGES_PER_REQUEST}], got {self.max_ranges_per_request}")


def block_schedule(n_bits: int, qber: float, config: CascadeConfig) -> list[int]:
    """The block size of each pass: k1 = round(k1_factor / QBER), doubling, ≤ n, ≥ 2."""
    q = max(qber, config.min_qber)
    k1 = max(2, round(config.k1_factor / q))
    return [max(2, min(k1 << i, n_bits)) for i in range(config.passes)]


class CascadeBob:
    """The sync core: Bob's bits, the passes' state and the bisections under way.

    ``top_level_ranges()`` then ``accept_top(parities)``; then repeatedly
    ``next_ranges()`` (None once settled) and ``accept_step(parities)``.
    """

    def __init__(self, bob_bits: np.ndarray, block_sizes: list[int], seed: bytes) -> None:
        self.bits = as_bits(bob_bits, name="bob_bits").copy()
        n = self.n = int(self.bits.size)
        self.k = list(block_sizes)
        self.n_passes = len(self.k)
        self.perm = [pass_permutation(seed, p, n) for p in range(self.n_passes)]
        self.inv = [inverse(pm) for pm in self.perm]
        self.n_blocks = [-(-n // k) for k in self.k]
        self.alice_top: list[np.ndarray] = []
        self.bob_top: list[np.ndarray] = []
        self.active = [np.zeros(nb, dtype=bool) for nb in self.n_blocks]
        self.current_pass = 0
        self.flips = 0
        self.top_parities = 0
        self.bisection_parities = 0
        # the searches under way: pass, range [s, e) in the pass's order, Alice's parity
        self._sp = np.zeros(0, dtype=np.int64)
        self._ss = np.zeros(0, dtype=np.int64)
        self._se = np.zeros(0, dtype=np.int64)
        self._sa = np.zeros(0, dtype=np.uint8)
        self._mid = np.zeros(0, dtype=np.int64)

    # -- parities of Bob's current bits -------------------------------------------------
    def _block_starts(self, p: int) -> np.ndarray:
        return np.arange(self.n_blocks[p], dtype=np.int64) * self.k[p]

    def _range_parity(self, passes: np.ndarray, s: np.ndarray, e: np.ndarray) -> np.ndarray:
        out = np.empty(s.size, dtype=np.uint8)
        for p in np.unique(passes):
            sel = np.flatnonzero(passes == p)
            ss, ee = s[sel], e[sel]
            lengths = ee - ss
            offs = np.zeros(sel.size, dtype=np.int64)
            np.cumsum(lengths[:-1], out=offs[1:])
            idx = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(offs - ss, lengths)
            vals = self.bits[self.perm[int(p)][idx]]
            out[sel] = np.bitwise_xor.reduceat(vals, offs)
        return out

    # -- top level ----------------------------------------------------------------------
    def top_level_ranges(self) -> Ranges:
        passes, starts, ends = [], [], []
        for p in range(self.n_passes):
            st = self._block_starts(p)
            passes.append(np.full(st.size, p, dtype=np.int64))
            starts.append(st)
            ends.append(np.minimum(st + self.k[p], self.n))
        return np.concatenate(passes), np.concatenate(starts), np.concatenate(ends)

    def accept_top(self, parities: np.ndarray) -> None:
        at = 0
        for p in range(self.n_passes):
            nb = self.n_blocks[p]
            self.alice_top.append(parities[at:at + nb].astype(np.uint8))
            at += nb
            self.bob_top.append(np.bitwise_xor.reduceat(self.bits[self.perm[p]],
                                                        self._block_starts(p)))
        self.top_parities += at

    # -- bisection rounds ---------------------------------------------------------------
    def _flip(self, key_positions: np.ndarray) -> None:
        """Flip Bob's bits; update every pass's block parities; drop searches made even."""
        if key_positions.size == 0:
            return
        key_positions = np.unique(key_positions)
        self.bits[key_positions] ^= 1
        self.flips += int(key_positions.size)
        keep = np.ones(self._sp.size, dtype=bool)
        for p in range(self.n_passes):
            pos = self.inv[p][key_positions].astype(np.int64)
            np.bitwise_xor.at(self.bob_top[p], pos // self.k[p], 1)
            sel = np.flatnonzero(self._sp == p)
            if sel.size:
                pos.sort()
                inside = (np.searchsorted(pos, self._se[sel])
                          - np.searchsorted(pos, self._ss[sel]))
                odd = sel[(inside & 1) == 1]
                keep[odd] = False
                self.active[p][self._ss[odd] // self.k[p]] = False
        if not keep.all():
            self._sp, self._ss, self._se, self._sa = (
                self._sp[keep], self._ss[keep], self._se[keep], self._sa[keep])

    def _start_searches(self) -> None:
        """Start a search on every odd block of the passes worked so far; flip the bit of
        any one-bit block at once (its parity is the bit)."""
        while True:
            new_p, new_s = [], []
            for p in range(self.current_pass + 1):
                odd = np.flatnonzero((self.alice_top[p] != self.bob_top[p]) & ~self.active[p])
                if odd.size:
                    self.active[p][odd] = True
                    new_p.append(np.full(odd.size, p, dtype=np.int64))
                    new_s.append(odd.astype(np.int64) * self.k[p])
            if new_p:
                ps = np.concatenate(new_p)
                ss = np.concatenate(new_s)
                ks = np.asarray(self.k, dtype=np.int64)[ps]
                es = np.minimum(ss + ks, self.n)
                alice = self._alice_top_of(ps, ss)
                self._sp = np.concatenate([self._sp, ps])
                self._ss = np.concatenate([self._ss, ss])
                self._se = np.concatenate([self._se, es])
                self._sa = np.concatenate([self._sa, alice.astype(np.uint8)])
            if not self._resolve_single_bits():
                if self._sp.size or self.current_pass + 1 >= self.n_passes:
                    return
                self.current_pass += 1

    def _alice_top_of(self, ps: np.ndarray, ss: np.ndarray) -> np.ndarray:
        out = np.empty(ps.size, dtype=np.uint8)
        for p in np.unique(ps):
            sel = ps == p
            out[sel] = self.alice_top[int(p)][ss[sel] // self.k[int(p)]]
        return out

    def _resolve_single_bits(self) -> bool:
        """Searches narrowed to one bit: that bit is wrong. Returns whether any flipped."""
        done = (self._se - self._ss) == 1
        if not done.any():
            return False
        ps, ss = self._sp[done], self._ss[done]
        key_pos = np.empty(ps.size, dtype=np.int64)
        for p in np.unique(ps):
            sel = ps == p
            key_pos[sel] = self.perm[int(p)][ss[sel]]
            self.active[int(p)][ss[sel] // self.k[int(p)]] = False
        keep = ~done
        self._sp, self._ss, self._se, self._sa = (
            self._sp[keep], self._ss[keep], self._se[keep], self._sa[keep])
        self._flip(key_pos)
        return True

    def next_ranges(self) -> Ranges | None:
        """The left halves of every search under way (None: every block is even)."""
        self._start_searches()
        if not self._sp.size:
            return None
        self._mid = self._ss + (self._se - self._ss) // 2
        return self._sp.copy(), self._ss.copy(), self._mid.copy()

    def accept_step(self, parities: np.ndarray) -> None:
        mine = self._range_parity(self._sp, self._ss, self._mid)
        left = parities != mine
        self._sa = np.where(left, parities, self._sa ^ parities).astype(np.uint8)
        self._ss = np.where(left, self._ss, self._mid)
        self._se = np.where(left, self._mid, self._se)
        self.bisection_parities += int(parities.size)
        self._resolve_single_bits()

    def settled(self) -> bool:
        return (self.current_pass + 1 >= self.n_passes and not self._sp.size
                and all((a == b).all() for a, b in zip(self.alice_top, self.bob_top,
                                                       strict=True)))


async def cascade_reconcile(bob_bits: np.ndarray, qber_estimate: float,
                            channel: CascadeChannel, config: CascadeConfig | None = None, *,
                            executor: Executor | None = None) -> ReconciliationResult:
    """Correct ``bob_bits`` to Alice's over ``channel`` by Cascade (one session).

    ``qber_estimate`` sets the block schedule (:func:`block_schedule`). Bob's work between
    round trips runs in ``executor`` (None: the loop's default thread pool). Returns a
    :class:`ReconciliationResult` with one :class:`BlockReport` for the whole key
    (``code_id`` ``"cascade-v1"``; ``syndrome_bits`` = top-level parities,
    ``revealed_bits`` = bisection parities; ``decode_attempts`` = passes); every bit is
    kept. ``converged`` is True when every block of every pass ended even — not a proof
    of equality: verify with the hash. Raises :class:`ReconciliationError` on a reply
    that does not match its request; a refusal by Alice propagates as the channel raises it.
    """
    cfg = config or CascadeConfig()
    bits = as_bits(bob_bits, name="bob_bits")
    if not 2 <= bits.size <= MAX_KEY_BITS:
        raise ReconciliationError(f"bob_bits: {bits.size} bits, Cascade needs 2..{MAX_KEY_BITS}")
    if not 0.0 <= qber_estimate < 0.5:
        raise ReconciliationError(f"qber_estimate must be in [0, 0.5), got {qber_estimate}")
    loop = asyncio.get_running_loop()
    sizes = block_schedule(int(bits.size), qber_estimate, cfg)
    setup = await channel.setup(CascadeSetupRequest(key_bits=int(bits.size), block_sizes=sizes))
    if setup.scheme != PERMUTATION_SCHEME:
        raise ReconciliationError(f"Alice's permutation scheme {setup.scheme!r} is not "
                                  f"{PERMUTATION_SCHEME!r}")
    bob = await loop.run_in_executor(executor, CascadeBob, bits, sizes, setup.seed)
    trips = 1
    index = 0

    async def ask(ranges: Ranges) -> np.ndarray:
        nonlocal trips, index
        passes, starts, ends = ranges
        out = []
        for at in range(0, passes.size, cfg.max_ranges_per_request):
            sl = slice(at, at + cfg.max_ranges_per_request)
            index += 1
            req = ParityRequest.build(index, passes[sl], starts[sl], ends[sl])
            rep = await channel.parities(req)
            trips += 1
            if rep.request_index != req.request_index or rep.range_count != req.range_count:
                raise ReconciliationError(
                    f"parity reply ({rep.request_index}, {rep.range_count} ranges) does not "
                    f"match request ({req.request_index}, {req.range_count} ranges)")
            out.append(rep.bits())
        return np.concatenate(out)

    top = await ask(bob.top_level_ranges())
    nxt = await loop.run_in_executor(executor, lambda: (bob.accept_top(top), bob.next_ranges())[1])
    while nxt is not None and trips < cfg.max_round_trips:
        par = await ask(nxt)
        nxt = await loop.run_in_executor(
            executor, lambda par=par: (bob.accept_step(par), bob.next_ranges())[1])
    converged = nxt is None and bob.settled()
    leaked = bob.top_parities + bob.bisection_parities
    n = bob.n
    q_meas = bob.flips / n
    h = binary_entropy(q_meas)
    f = leaked / (n * h) if h > 0 else math.nan
    report = BlockReport(block_index=0, key_offset_bits=0, key_length_bits=n,
                         code_id=CASCADE_ID, punctured_bits=0, shortened_bits=0,
                         syndrome_bits=bob.top_parities, revealed_bits=bob.bisection_parities,
                         decode_attempts=bob.n_passes, converged=converged,
                         errors_corrected=bob.flips)
    return ReconciliationResult(
        corrected_bits=bob.bits, kept_mask=np.ones(n, dtype=bool), leaked_bits=leaked,
        disclosed_bits=leaked, qber_estimate=qber_estimate, qber_measured=q_meas,
        efficiency_f=f, round_trips=trips, blocks=(report,))
