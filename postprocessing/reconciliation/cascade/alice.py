"""Alice's side of Cascade: answers parity requests from her key, counting every bit."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from postprocessing.bits import as_bits
from postprocessing.reconciliation.cascade.messages import (
    SEED_BYTES,
    CascadeFinishReply,
    CascadeFinishRequest,
    CascadeSetupReply,
    CascadeSetupRequest,
    ParityReply,
    ParityRequest,
)
from postprocessing.reconciliation.cascade.permutations import pass_permutation
from postprocessing.reconciliation.errors import ReconciliationRefused

#: Alice refuses to reveal more parities than this fraction of the key in one session
#: (Cascade at 8 % QBER needs ~0.5; a Bob asking more is broken or hostile).
DEFAULT_MAX_LEAK_FRACTION = 0.75


class CascadeAlice:
    """Answers one Cascade session from ``alice_bits`` (her reference key, never changed).

    ``answer_setup`` once (she draws the public permutation seed), then
    ``answer_parities`` for requests numbered 1, 2, 3, ... in order, then
    ``answer_finish``. Refusals raise :class:`ReconciliationRefused` naming the reason
    (never a key bit). ``leaked_bits`` counts every parity revealed: λ_EC on her side.
    ``finished``, ``kept_mask()`` and ``kept_bits()`` mirror the LDPC
    :class:`~postprocessing.reconciliation.AliceReconciler` (Cascade keeps every bit), so
    a service can hold either.
    """

    def __init__(self, alice_bits: np.ndarray, *,
                 random_bytes: Callable[[int], bytes] = os.urandom,
                 max_leak_fraction: float = DEFAULT_MAX_LEAK_FRACTION) -> None:
        self._bits = as_bits(alice_bits, name="alice_bits").copy()
        self._random_bytes = random_bytes
        self._max_leak = int(max_leak_fraction * self._bits.size)
        self._block_sizes: list[int] | None = None
        self._seed: bytes | None = None
        self._prefix: dict[int, np.ndarray] = {}
        self._next_index = 1
        self.leaked_bits = 0
        self.round_trips = 0
        self.finished = False

    @property
    def key_bits(self) -> int:
        return int(self._bits.size)

    def answer_setup(self, request: CascadeSetupRequest) -> CascadeSetupReply:
        if self._seed is not None:
            raise ReconciliationRefused("cascade setup: this session is already set up "
                                        "(a second setup is refused)")
        if request.key_bits != self._bits.size:
            raise ReconciliationRefused(f"cascade setup: key_bits {request.key_bits} does not "
                                        f"match Alice's key of {self._bits.size} bits")
        self._seed = self._random_bytes(SEED_BYTES)
        self._block_sizes = list(request.block_sizes)
        self.round_trips += 1
        return CascadeSetupReply(seed=self._seed)

    def _pass_prefix(self, p: int) -> np.ndarray:
        # XOR prefix of the pass's permuted key: parity[s, e) = pre[e] ^ pre[s], O(1) each.
        pre = self._prefix.get(p)
        if pre is None:
            assert self._seed is not None
            perm = pass_permutation(self._seed, p, self._bits.size)
            pre = np.zeros(self._bits.size + 1, dtype=np.uint8)
            np.bitwise_xor.accumulate(self._bits[perm], out=pre[1:])
            self._prefix[p] = pre
        return pre

    def kept_mask(self) -> np.ndarray:
        """Cascade keeps every bit (all True)."""
        return np.ones(self._bits.size, dtype=bool)

    def kept_bits(self) -> np.ndarray:
        """Alice's key (unchanged by Cascade), a copy."""
        return self._bits.copy()

    def answer_finish(self, request: CascadeFinishRequest) -> CascadeFinishReply:
        if self._seed is None:
            raise ReconciliationRefused("cascade finish before setup")
        if self.finished:
            raise ReconciliationRefused("cascade finish: the session is already finished")
        if (request.parity_requests, request.leaked_bits) != (self._next_index - 1,
                                                              self.leaked_bits):
            raise ReconciliationRefused(
                f"cascade finish: Bob counts {request.parity_requests} requests and "
                f"{request.leaked_bits} parities, Alice answered {self._next_index - 1} "
                f"requests revealing {self.leaked_bits}")
        self.finished = True
        self.round_trips += 1
        return CascadeFinishReply(leaked_bits=self.leaked_bits)

    def answer_parities(self, request: ParityRequest) -> ParityReply:
        if self._seed is None or self._block_sizes is None:
            raise ReconciliationRefused("parity request before cascade setup")
        if self.finished:
            raise ReconciliationRefused(f"parity request {request.request_index} after the "
                                        "session finished")
        if request.request_index != self._next_index:
            what = ("replayed (already answered)" if request.request_index < self._next_index
                    else "out of order")
            raise ReconciliationRefused(f"parity request {request.request_index} is {what}; "
                                        f"expected request {self._next_index}")
        passes, starts, ends = request.arrays()
        n = self._bits.size
        n_passes = len(self._block_sizes)
        if int(passes.max()) >= n_passes:
            raise ReconciliationRefused(f"parity request {request.request_index}: pass "
                                        f"{int(passes.max())} out of range (session has "
                                        f"{n_passes} passes)")
        bad = (starts >= ends) | (ends > n)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ReconciliationRefused(
                f"parity request {request.request_index}: range {i} [{int(starts[i])}, "
                f"{int(ends[i])}) is empty or outside the key of {n} bits")
        if self.leaked_bits + request.range_count > self._max_leak:
            raise ReconciliationRefused(
                f"parity request {request.request_index}: {request.range_count} more parities "
                f"would exceed the session's cap of {self._max_leak} revealed bits")
        out = np.empty(request.range_count, dtype=np.uint8)
        for p in np.unique(passes):
            sel = passes == p
            pre = self._pass_prefix(int(p))
            out[sel] = pre[ends[sel]] ^ pre[starts[sel]]
        self._next_index += 1
        self.leaked_bits += request.range_count
        self.round_trips += 1
        return ParityReply(request_index=request.request_index, range_count=request.range_count,
                           parities=np.packbits(out).tobytes())
