"""Bob's side of Cascade, vectorised: all of a round's bisections advance in lockstep.

The protocol (Brassard–Salvail Cascade with the block-size schedule of Martinez-Mateo,
Pacher, Peev, Ciurana, Martin, "Demystifying the information reconciliation protocol
Cascade", QIC 15 (2015): k_i = 2·k_{i-1}, no BICONF; k1 = round(1.0/QBER) by default,
the classic 0.73/QBER as an option — see CascadeConfig):

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
   parity is inferred, not asked), and flips the bit a search ends on. Every parity
   learnt stays known: each pass is a partition into intervals of known parity. A flip
   toggles Bob's parity of the interval holding that bit in every other pass; those made
   odd are bisected from the next round on (the cascade step), batched the same way and
   starting at that smallest known interval, not at the top-level block.
4. Done when every block of every pass has Bob's parity equal to Alice's; Bob sends
   his leakage count (1 round trip) and Alice confirms it or refuses.

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
    CascadeFinishRequest,
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

    - ``k1_factor``: first block size k1 = round(k1_factor / QBER). 1.0 by default:
      measured f 1.10–1.14 at 1–4 % with ~60–75 round trips per 10^6 bits; 0.73 (the
      classic choice) gives f 1.14–1.19 with ~40 (docs/_reconciliation.md);
    - ``passes``: number of passes (block sizes k1·2^i, capped at the key length);
    - ``min_qber``: the QBER the schedule assumes at least (an estimate of 0 would give
      one huge block);
    - ``max_round_trips``: a session that has not settled by then ends not converged;
    - ``max_ranges_per_request``: Bob splits a larger set of ranges into several requests;
    - ``tail_ranges``, ``tail_depth``: when at most ``tail_ranges`` intervals are odd (the
      long tail of cascade steps), each is split ``tail_depth`` levels deep in one round
      trip (2^d − 1 parities instead of d over d round trips): fewer round trips for a
      little more leakage. ``tail_depth`` 1 is plain bisection.
    """

    k1_factor: float = 1.0
    passes: int = 4
    min_qber: float = 0.002
    max_round_trips: int = 20_000
    max_ranges_per_request: int = MAX_RANGES_PER_REQUEST
    tail_ranges: int = 0
    tail_depth: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.passes <= MAX_PASSES:
            raise ValueError(f"passes must be in [1, {MAX_PASSES}], got {self.passes}")
        if not self.k1_factor > 0:
            raise ValueError(f"k1_factor must be > 0, got {self.k1_factor}")
        if not 0 < self.min_qber < 0.5:
            raise ValueError(f"min_qber must be in (0, 0.5), got {self.min_qber}")
        if not 1 <= self.tail_depth <= 8 or self.tail_ranges < 0:
            raise ValueError(f"tail_depth must be in [1, 8] and tail_ranges >= 0, got "
                             f"{self.tail_depth}, {self.tail_ranges}")
        if not 1 <= self.max_ranges_per_request <= MAX_RANGES_PER_REQUEST:
            raise ValueError("max_ranges_per_request must be in "
                             f"[1, {MAX_RANGES_PER_REQUEST}], got {self.max_ranges_per_request}")


def block_schedule(n_bits: int, qber: float, config: CascadeConfig) -> list[int]:
    """The block size of each pass: k1 = round(k1_factor / QBER), doubling, ≥ 2; the
    passes stop at the first whose one block is the whole key (another would only repeat
    its parity)."""
    q = max(qber, config.min_qber)
    k1 = max(2, round(config.k1_factor / q))
    sizes: list[int] = []
    for i in range(config.passes):
        sizes.append(max(2, min(k1 << i, n_bits)))
        if sizes[-1] >= n_bits:
            break
    return sizes


class CascadeBob:
    """The sync core: Bob's bits and, per pass, a partition of the pass's order into
    intervals of known parity (Alice's, revealed or inferred, and Bob's current one).

    Each pass starts partitioned into its top-level blocks; a bisection step splits an
    interval in two at its middle, both halves' Alice parities known (one asked, one
    inferred). An interval whose parities differ holds an odd number of Bob's errors: it
    is bisected (a one-bit odd interval is a wrong bit: flipped). A flip toggles Bob's
    parity of the interval holding that bit in every pass, so a re-check (the cascade
    step) starts at the smallest interval of known parity, never above it.

    ``top_level_ranges()`` then ``accept_top(parities)``; then repeatedly
    ``next_ranges()`` (None once settled) and ``accept_step(parities)``.
    """

    def __init__(self, bob_bits: np.ndarray, block_sizes: list[int], seed: bytes, *,
                 tail_ranges: int = 0, tail_depth: int = 1) -> None:
        self.bits = as_bits(bob_bits, name="bob_bits").copy()
        self.tail_ranges, self.tail_depth = tail_ranges, tail_depth
        n = self.n = int(self.bits.size)
        self.k = list(block_sizes)
        self.n_passes = len(self.k)
        self.perm = [pass_permutation(seed, p, n) for p in range(self.n_passes)]
        self.inv = [inverse(pm) for pm in self.perm]
        # per pass: interval starts (sorted; the last interval ends at n), parities
        self._cut = [np.arange(-(-n // k), dtype=np.int64) * k for k in self.k]
        self._alice: list[np.ndarray] = []
        self._bob: list[np.ndarray] = []
        self.current_pass = 0
        self.flips = 0
        # A bit is flipped only where a one-bit interval is odd, i.e. Alice's bit differs:
        # with honest parities no bit is ever flipped twice. A second flip means the
        # parities contradict each other (altered in transit): Bob stops asking.
        self._flipped = np.zeros(n, dtype=bool)
        self.inconsistent = False
        self.top_parities = 0
        self.bisection_parities = 0
        # per request: (pass, starts, mids) of each layer of splits, in request order
        self._pending: list[tuple[int, np.ndarray, np.ndarray]] = []

    def _ends(self, p: int) -> np.ndarray:
        return np.append(self._cut[p][1:], self.n)

    def _range_parity(self, p: int, s: np.ndarray, e: np.ndarray) -> np.ndarray:
        """Bob's parities of ranges [s, e) of pass p (all non-empty), by one gather."""
        lengths = e - s
        offs = np.zeros(s.size, dtype=np.int64)
        np.cumsum(lengths[:-1], out=offs[1:])
        idx = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(offs - s, lengths)
        return np.bitwise_xor.reduceat(self.bits[self.perm[p][idx]], offs)

    # -- top level ----------------------------------------------------------------------
    def top_level_ranges(self) -> Ranges:
        passes = [np.full(c.size, p, dtype=np.int64) for p, c in enumerate(self._cut)]
        ends = [self._ends(p) for p in range(self.n_passes)]
        return np.concatenate(passes), np.concatenate(self._cut), np.concatenate(ends)

    def accept_top(self, parities: np.ndarray) -> None:
        at = 0
        for p in range(self.n_passes):
            nb = self._cut[p].size
            self._alice.append(parities[at:at + nb].astype(np.uint8))
            at += nb
            self._bob.append(np.bitwise_xor.reduceat(self.bits[self.perm[p]], self._cut[p]))
        self.top_parities += at

    # -- bisection rounds ---------------------------------------------------------------
    def _flip(self, key_positions: np.ndarray) -> None:
        key_positions = np.unique(key_positions)
        if self._flipped[key_positions].any():
            self.inconsistent = True
        self._flipped[key_positions] = True
        self.bits[key_positions] ^= 1
        self.flips += int(key_positions.size)
        for p in range(self.n_passes):
            where = np.searchsorted(self._cut[p], self.inv[p][key_positions], side="right") - 1
            np.bitwise_xor.at(self._bob[p], where, 1)

    def next_ranges(self) -> Ranges | None:
        """The left halves of every odd interval of the passes worked so far (flipping the
        bit of every one-bit odd interval first); None once every interval is even, or once
        Alice's parities proved inconsistent (:attr:`inconsistent`; the session then ends
        not converged, and its authentication or the verification hash rejects it)."""
        while True:
            if self.inconsistent:
                return None
            odd_by_pass: list[tuple[int, np.ndarray]] = []
            singles = []
            for p in range(self.current_pass + 1):
                odd = np.flatnonzero(self._alice[p] != self._bob[p])
                if not odd.size:
                    continue
                length = self._ends(p)[odd] - self._cut[p][odd]
                one = length == 1
                if one.any():
                    singles.append(self.perm[p][self._cut[p][odd[one]]])
                odd_by_pass.append((p, odd[~one]))
            if singles:
                self._flip(np.concatenate(singles))
                continue
            odd_by_pass = [(p, o) for p, o in odd_by_pass if o.size]
            if odd_by_pass:
                break
            if self.current_pass + 1 >= self.n_passes:
                return None
            self.current_pass += 1
        n_odd = sum(o.size for _, o in odd_by_pass)
        depth = self.tail_depth if n_odd <= self.tail_ranges else 1
        self._pending = []
        passes, starts, mids = [], [], []
        for p, odd in odd_by_pass:
            cs = self._cut[p][odd]
            ce = self._ends(p)[odd]
            cd = np.full(odd.size, depth, dtype=np.int64)
            while cs.size:  # one layer of the split tree per pass: every node at its middle
                mid = cs + (ce - cs) // 2
                self._pending.append((p, cs, mid))
                passes.append(np.full(cs.size, p, dtype=np.int64))
                starts.append(cs)
                mids.append(mid)
                ns, ne, nd = (np.concatenate([cs, mid]), np.concatenate([mid, ce]),
                              np.concatenate([cd, cd]) - 1)
                keep = (nd > 0) & (ne - ns >= 2)
                cs, ce, cd = ns[keep], ne[keep], nd[keep]
        return np.concatenate(passes), np.concatenate(starts), np.concatenate(mids)

    def accept_step(self, parities: np.ndarray) -> None:
        """Split every interval asked about at its middle (layer by layer in tail rounds);
        both halves' parities known."""
        at = 0
        for p, starts, mid in self._pending:
            alice_left = parities[at:at + starts.size].astype(np.uint8)
            at += starts.size
            odd = np.searchsorted(self._cut[p], starts)
            bob_left = self._range_parity(p, starts, mid)
            alice_right = self._alice[p][odd] ^ alice_left
            bob_right = self._bob[p][odd] ^ bob_left
            self._alice[p][odd] = alice_left
            self._bob[p][odd] = bob_left
            self._cut[p] = np.insert(self._cut[p], odd + 1, mid)
            self._alice[p] = np.insert(self._alice[p], odd + 1, alice_right)
            self._bob[p] = np.insert(self._bob[p], odd + 1, bob_right)
        self.bisection_parities += int(parities.size)
        self._pending = []

    def settled(self) -> bool:
        return (not self.inconsistent and self.current_pass + 1 >= self.n_passes
                and all((a == b).all() for a, b in zip(self._alice, self._bob, strict=True)))


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
    bits = _checked_bits(bob_bits, qber_estimate)
    loop = asyncio.get_running_loop()
    bob = await _set_up(bits, qber_estimate, channel, cfg, loop, executor)
    asker = _ParityAsker(channel, cfg.max_ranges_per_request)
    converged = await _bisect(bob, asker, cfg.max_round_trips, loop, executor)
    leaked = await _finish(bob, asker, channel)
    return _result(bob, converged, leaked, qber_estimate, asker.trips)


def _checked_bits(bob_bits: np.ndarray, qber_estimate: float) -> np.ndarray:
    """Bob's key as bits, refused if its length or the QBER estimate is out of range."""
    bits = as_bits(bob_bits, name="bob_bits")
    if not 2 <= bits.size <= MAX_KEY_BITS:
        raise ReconciliationError(f"bob_bits: {bits.size} bits, Cascade needs 2..{MAX_KEY_BITS}")
    if not 0.0 <= qber_estimate < 0.5:
        raise ReconciliationError(f"qber_estimate must be in [0, 0.5), got {qber_estimate}")
    return bits


async def _set_up(bits: np.ndarray, qber_estimate: float, channel: CascadeChannel,
                  cfg: CascadeConfig, loop: asyncio.AbstractEventLoop,
                  executor: Executor | None) -> CascadeBob:
    """The setup round trip: send the schedule, check Alice's scheme, build Bob's state."""
    sizes = block_schedule(int(bits.size), qber_estimate, cfg)
    setup = await channel.setup(CascadeSetupRequest(key_bits=int(bits.size), block_sizes=sizes))
    if setup.scheme != PERMUTATION_SCHEME:
        raise ReconciliationError(f"Alice's permutation scheme {setup.scheme!r} is not "
                                  f"{PERMUTATION_SCHEME!r}")
    return await loop.run_in_executor(
        executor, lambda: CascadeBob(bits, sizes, setup.seed, tail_ranges=cfg.tail_ranges,
                                     tail_depth=cfg.tail_depth))


class _ParityAsker:
    """Asks Alice the parities of ranges, at most ``max_ranges`` a request, counting the
    requests (``index``) and the round trips (``trips``, the setup's included)."""

    def __init__(self, channel: CascadeChannel, max_ranges: int) -> None:
        self._channel = channel
        self._max_ranges = max_ranges
        self.trips = 1
        self.index = 0

    async def ask(self, ranges: Ranges) -> np.ndarray:
        passes, starts, ends = ranges
        out = []
        for at in range(0, passes.size, self._max_ranges):
            sl = slice(at, at + self._max_ranges)
            self.index += 1
            req = ParityRequest.build(self.index, passes[sl], starts[sl], ends[sl])
            rep = await self._channel.parities(req)
            self.trips += 1
            if rep.request_index != req.request_index or rep.range_count != req.range_count:
                raise ReconciliationError(
                    f"parity reply ({rep.request_index}, {rep.range_count} ranges) does not "
                    f"match request ({req.request_index}, {req.range_count} ranges)")
            out.append(rep.bits())
        return np.concatenate(out)


async def _bisect(bob: CascadeBob, asker: _ParityAsker, max_round_trips: int,
                  loop: asyncio.AbstractEventLoop, executor: Executor | None) -> bool:
    """The top-level parities, then bisection rounds until settled or out of round trips;
    True when nothing is left to bisect and every block is even."""
    top = await asker.ask(bob.top_level_ranges())
    nxt = await loop.run_in_executor(executor, lambda: (bob.accept_top(top), bob.next_ranges())[1])
    while nxt is not None and asker.trips < max_round_trips:
        par = await asker.ask(nxt)
        nxt = await loop.run_in_executor(
            executor, lambda par=par: (bob.accept_step(par), bob.next_ranges())[1])
    return nxt is None and bob.settled()


async def _finish(bob: CascadeBob, asker: _ParityAsker, channel: CascadeChannel) -> int:
    """The finish round trip: Bob's leakage count, which Alice must confirm; returns it."""
    leaked = bob.top_parities + bob.bisection_parities
    fin = await channel.finish(CascadeFinishRequest(parity_requests=asker.index, leaked_bits=leaked))
    asker.trips += 1
    if fin.leaked_bits != leaked:
        raise ReconciliationError(f"Alice counts {fin.leaked_bits} revealed parities, Bob {leaked}")
    return leaked


def _result(bob: CascadeBob, converged: bool, leaked: int, qber_estimate: float,
            trips: int) -> ReconciliationResult:
    """The session's result: one :class:`BlockReport` for the whole key, every bit kept."""
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
