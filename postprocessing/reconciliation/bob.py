"""Bob's side: plan blocks, ask for syndromes, decode, reveal in rounds, finish.

The sync core (:class:`BobReconciler`) holds no event loop and does all numeric work in
:meth:`BobReconciler.decode_round`; :func:`reconcile` drives it over an async
:class:`~postprocessing.reconciliation.channel.ReconciliationChannel`, running each decode
round in an executor so the event loop stays free.

Per block (blind reconciliation after Martinez-Mateo, Elkouss, Martin 2012): the code of
the family and the block length ℓ are chosen so the syndrome discloses
``f_start · ℓ · h(QBER)`` bits; the n − ℓ other frame positions are shortened (zeros).
When a decoding fails, Alice discloses ``reveal_step · ℓ · h(QBER)`` extra parities of
the block (:mod:`.extension`: each the XOR of about 1/QBER key bits, so each carries
nearly one bit about the errors) and Bob decodes again with them stacked under the code,
until it converges or ``max_rounds`` attempts are spent; then the block is reported not converged and both sides discard it. All blocks of a round travel in one
message, so round trips do not grow with the number of blocks.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from ldpc import BpDecoder

from postprocessing.reconciliation.channel import ReconciliationChannel
from postprocessing.reconciliation.codes import CodeCatalog, LdpcCode
from postprocessing.reconciliation.errors import ReconciliationError
from postprocessing.reconciliation.extension import extension_rows, parity_degree_for
from postprocessing.reconciliation.messages import (
    MAX_BLOCKS_PER_MESSAGE,
    BlockRequest,
    BlockReveal,
    BlockVerdict,
    CodeRef,
    FinishReply,
    FinishRequest,
    RevealReply,
    RevealRequest,
    SyndromeReply,
    SyndromeRequest,
)
from postprocessing.reconciliation.result import BlockReport, ReconciliationResult, binary_entropy

# Prior error probability of a position Bob knows for sure (shortened or revealed): the
# decoder works on log-likelihood ratios, so "certain" is a large finite LLR (~41).
_KNOWN_PROB = 1e-18
# The QBER the rate is planned for is never taken below this (a zero estimate would plan
# a zero-redundancy block that cannot correct the one error there may be).
MIN_PLANNING_QBER = 0.002


@dataclass(frozen=True)
class ReconciliationConfig:
    """How Bob plans and decodes. Defaults are those measured in docs/_reconciliation.md."""

    f_start: float = 1.20
    reveal_step: float = 0.05
    max_rounds: int = 6
    max_iter: int = 80
    bp_method: str = "minimum_sum"
    # after a failed first attempt, decode again with this method before asking for more
    # (no extra disclosure), and use it for the rounds with extra parities; None: always
    # bp_method
    fallback_method: str | None = "product_sum"
    ms_scaling_factor: float = 0.8
    min_tail_bits: int = 4096
    blocks_per_message: int = 256

    def __post_init__(self) -> None:
        if not 1.0 <= self.f_start <= 3.0:
            raise ValueError(f"f_start: {self.f_start} outside 1..3")
        if not 0.0 < self.reveal_step <= 1.0:
            raise ValueError(f"reveal_step: {self.reveal_step} outside (0, 1]")
        if self.max_rounds < 1 or self.max_iter < 1:
            raise ValueError("max_rounds and max_iter must be at least 1")
        for name, method in (("bp_method", self.bp_method),
                             ("fallback_method", self.fallback_method)):
            if method not in ("minimum_sum", "product_sum") and not (
                    name == "fallback_method" and method is None):
                raise ValueError(f"{name}: {method!r} is not minimum_sum or product_sum")
        if not 1 <= self.blocks_per_message <= MAX_BLOCKS_PER_MESSAGE:
            raise ValueError(f"blocks_per_message: 1..{MAX_BLOCKS_PER_MESSAGE}")


@dataclass
class _BobBlock:
    index: int
    offset: int
    length: int
    code: LdpcCode
    punctured: int
    shortened: int
    step: int
    parity_degree: int
    syndrome: np.ndarray | None = None
    revealed_vals: list[np.ndarray] = field(default_factory=list)
    revealed: int = 0
    attempts: int = 0  # decoder runs
    rounds: int = 0  # decoding rounds (each after a disclosure)
    converged: bool = False
    done: bool = False
    corrected: np.ndarray | None = None
    errors: int = 0

    @property
    def leaked(self) -> int:
        return self.code.m - (self.punctured - self.revealed)


class BobReconciler:
    """The sync core of Bob's reconciliation (no I/O): plan → syndromes → decode rounds →
    verdicts. One instance per session; not thread-safe (one decode round at a time)."""

    def __init__(self, bob_bits: np.ndarray, qber_estimate: float, *,
                 error_probs: np.ndarray | None = None,
                 config: ReconciliationConfig | None = None,
                 catalog: CodeCatalog | None = None) -> None:
        bits = np.asarray(bob_bits)
        if bits.ndim != 1 or bits.dtype != np.uint8 or (bits.size and bits.max() > 1):
            raise ValueError("bob_bits: expected a 1-D uint8 array of 0/1")
        if not (0.0 <= qber_estimate < 0.5) or math.isnan(qber_estimate):
            raise ValueError(f"qber_estimate: {qber_estimate} outside [0, 0.5)")
        if error_probs is not None:
            error_probs = np.asarray(error_probs, dtype=np.float64)
            if error_probs.shape != bits.shape:
                raise ValueError(f"error_probs: shape {error_probs.shape}, bob_bits "
                                 f"{bits.shape}")
            if error_probs.size and not (np.all(error_probs > 0.0)
                                         and np.all(error_probs < 0.5)):
                raise ValueError("error_probs: every prior must lie in (0, 0.5)")
        self.error_probs = error_probs
        self.bits = bits
        self.qber_estimate = float(qber_estimate)
        self.config = config or ReconciliationConfig()
        self.catalog = catalog if catalog is not None else CodeCatalog.default()
        self._decoders: dict[str, BpDecoder] = {}
        self.blocks = self._plan()

    # --- planning -------------------------------------------------------------------
    def _plan(self) -> list[_BobBlock]:
        q = max(self.qber_estimate, MIN_PLANNING_QBER)
        hq = binary_entropy(q)
        code = self.catalog.choose(q, self.config.f_start)
        full = max(1, min(code.n, math.floor(code.m / (self.config.f_start * hq))))
        degree = parity_degree_for(q)
        blocks: list[_BobBlock] = []
        offset = 0
        while offset < self.bits.size:
            length = min(full, self.bits.size - offset)
            if length < min(self.config.min_tail_bits, full):
                break  # a tail too short to pay for a syndrome stays unreconciled
            # no puncturing: scaled min-sum loses more on punctured positions than the
            # puncturing saves (docs/_reconciliation.md); the rest of the frame is shortened
            step = max(1, math.ceil(self.config.reveal_step * length * hq))
            blocks.append(_BobBlock(index=len(blocks), offset=offset, length=length,
                                    code=code, punctured=0, shortened=code.n - length,
                                    step=step, parity_degree=min(degree, length)))
            offset += length
        return blocks

    def syndrome_requests(self) -> list[SyndromeRequest]:
        """The syndrome requests for all blocks, ``blocks_per_message`` per message."""
        out = []
        per = self.config.blocks_per_message
        for i in range(0, len(self.blocks), per):
            chunk = self.blocks[i:i + per]
            codes = {b.code.code_id: b.code for b in chunk}
            out.append(SyndromeRequest(
                codes=[CodeRef(code_id=c.code_id, sha256=c.digest) for c in codes.values()],
                blocks=[BlockRequest(block_index=b.index, key_offset_bits=b.offset,
                                     key_length_bits=b.length, code_id=b.code.code_id,
                                     punctured_bits=b.punctured, shortened_bits=b.shortened)
                        for b in chunk]))
        return out

    def accept_syndromes(self, reply: SyndromeReply, request: SyndromeRequest) -> None:
        want = [b.block_index for b in request.blocks]
        got = [b.block_index for b in reply.blocks]
        if got != want:
            raise ReconciliationError(
                f"syndrome reply names blocks {got[:8]}…, the request asked {want[:8]}…")
        for bs in reply.blocks:
            blk = self.blocks[bs.block_index]
            if bs.syndrome_bits != blk.code.m:
                raise ReconciliationError(
                    f"block {blk.index}: {bs.syndrome_bits} syndrome bits, code "
                    f"{blk.code.code_id} has {blk.code.m}")
            blk.syndrome = np.unpackbits(np.frombuffer(bs.syndrome, np.uint8),
                                         count=bs.syndrome_bits)

    def accept_reveals(self, reply: RevealReply, request: RevealRequest) -> None:
        want = [(b.block_index, b.first, b.count) for b in request.blocks]
        got = [(b.block_index, b.first, b.bit_count) for b in reply.blocks]
        if got != want:
            raise ReconciliationError("reveal reply does not match the request")
        for rb in reply.blocks:
            blk = self.blocks[rb.block_index]
            blk.revealed_vals.append(np.unpackbits(np.frombuffer(rb.bits, np.uint8),
                                                   count=rb.bit_count))
            blk.revealed += rb.bit_count

    # --- decoding -------------------------------------------------------------------
    def _new_decoder(self, pcm: sp.csr_matrix, method: str) -> BpDecoder:
        return BpDecoder(pcm, error_rate=0.01, max_iter=self.config.max_iter,
                         bp_method=method, ms_scaling_factor=self.config.ms_scaling_factor,
                         schedule="parallel", input_vector_type="syndrome")

    def _decoder(self, code: LdpcCode, method: str) -> BpDecoder:
        key = f"{code.code_id}/{method}"
        dec = self._decoders.get(key)
        if dec is None:
            dec = self._decoders[key] = self._new_decoder(code.pcm, method)
        return dec

    def _decode_block(self, blk: _BobBlock) -> None:
        assert blk.syndrome is not None
        code = blk.code
        key_pos, punct_pos, _short = code.frame_layout(blk.punctured, blk.shortened)
        y = np.zeros(code.n, dtype=np.uint8)
        y[key_pos] = self.bits[blk.offset:blk.offset + blk.length]
        probs = np.full(code.n, _KNOWN_PROB)
        if self.error_probs is not None:
            probs[key_pos] = self.error_probs[blk.offset:blk.offset + blk.length]
        else:
            probs[key_pos] = max(self.qber_estimate, MIN_PLANNING_QBER)
        probs[punct_pos] = 0.5
        if blk.revealed:
            # the code's checks with the block's extra parity checks stacked below
            ext = extension_rows(code, blk.punctured, blk.shortened, blk.index, 0,
                                 blk.revealed, blk.parity_degree)
            pcm = sp.vstack([code.pcm, ext], format="csr")
            alice_syn = np.concatenate([blk.syndrome, *blk.revealed_vals])
        else:
            pcm = code.pcm
            alice_syn = blk.syndrome
        target = alice_syn ^ (pcm @ y.astype(np.int32) % 2).astype(np.uint8)
        first = self.config.bp_method
        fallback = self.config.fallback_method
        methods = [first] if blk.attempts == 0 else [fallback or first]
        if blk.attempts == 0 and fallback and fallback != first:
            methods.append(fallback)  # same disclosure, a stronger decoder
        converged = False
        for method in methods:
            dec = (self._new_decoder(pcm, method) if blk.revealed
                   else self._decoder(code, method))
            dec.update_channel_probs(probs)
            err = dec.decode(target)
            blk.attempts += 1
            if dec.converge:
                converged = True
                break
        if converged:
            err_key = err[key_pos]
            blk.converged = True
            blk.done = True
            blk.corrected = y[key_pos] ^ err_key
            blk.errors = int(err_key.sum())
        blk.rounds += 1
        if not converged and (blk.rounds >= self.config.max_rounds
                              or blk.revealed >= blk.length):
            blk.done = True

    def decode_round(self) -> list[RevealRequest]:
        """Decode every pending block once; return the reveals the failures need
        (``blocks_per_message`` per message; empty when every block is done). Heavy: run
        it off the event loop."""
        for blk in self.blocks:
            if not blk.done and blk.syndrome is not None:
                self._decode_block(blk)
        asks = []
        for blk in self.blocks:
            if not blk.done:
                count = min(blk.step, blk.length - blk.revealed)
                asks.append(BlockReveal(block_index=blk.index, first=blk.revealed, count=count,
                                        parity_degree=blk.parity_degree))
        per = self.config.blocks_per_message
        return [RevealRequest(blocks=asks[i:i + per]) for i in range(0, len(asks), per)]

    # --- the end ----------------------------------------------------------------------
    @property
    def leaked_bits(self) -> int:
        return sum(b.leaked for b in self.blocks)

    @property
    def disclosed_bits(self) -> int:
        return sum(b.code.m + b.revealed for b in self.blocks)

    def finish_request(self) -> FinishRequest:
        return FinishRequest(
            verdicts=[BlockVerdict(block_index=b.index, converged=b.converged)
                      for b in self.blocks],
            disclosed_bits=self.disclosed_bits, leaked_bits=self.leaked_bits)

    def result(self, round_trips: int) -> ReconciliationResult:
        keep = np.zeros(self.bits.size, dtype=bool)
        parts = []
        errors = 0
        for b in self.blocks:
            if b.converged:
                assert b.corrected is not None
                keep[b.offset:b.offset + b.length] = True
                parts.append(b.corrected)
                errors += b.errors
        corrected = np.concatenate(parts) if parts else np.empty(0, np.uint8)
        kept = int(corrected.size)
        qber_measured = errors / kept if kept else float("nan")
        h = binary_entropy(qber_measured) if kept else 0.0
        f = self.leaked_bits / (kept * h) if kept and h > 0 else float("nan")
        reports = tuple(BlockReport(
            block_index=b.index, key_offset_bits=b.offset, key_length_bits=b.length,
            code_id=b.code.code_id, punctured_bits=b.punctured, shortened_bits=b.shortened,
            syndrome_bits=b.code.m, revealed_bits=b.revealed, decode_attempts=b.attempts,
            converged=b.converged, errors_corrected=b.errors) for b in self.blocks)
        return ReconciliationResult(
            corrected_bits=corrected, kept_mask=keep, leaked_bits=self.leaked_bits,
            disclosed_bits=self.disclosed_bits, qber_estimate=self.qber_estimate,
            qber_measured=qber_measured, efficiency_f=f, round_trips=round_trips,
            blocks=reports)


async def reconcile(bob_bits: np.ndarray, qber_estimate: float,
                    channel: ReconciliationChannel, *,
                    error_probs: np.ndarray | None = None,
                    config: ReconciliationConfig | None = None,
                    catalog: CodeCatalog | None = None,
                    executor: Executor | None = None) -> ReconciliationResult:
    """Correct ``bob_bits`` to Alice's over ``channel`` (one session).

    ``qber_estimate`` plans the rate. ``error_probs`` (optional, float per bit, in
    (0, 0.5)) is the decoder's prior per bit when the bits' error rates differ — e.g. the
    signal and decoy classes' QBERs; without it every bit gets ``qber_estimate``. Pass
    the bits' mean prior as ``qber_estimate`` then.

    Planning and code construction, and every decode round, run in ``executor`` (None:
    the loop's default thread pool). Raises :class:`ReconciliationError` if Alice's replies
    do not match the requests or the two sides' leakage counts differ; a refusal by Alice
    propagates as the channel raises it. Blocks that do not converge are reported in the
    result (``converged``) and left out of ``corrected_bits``, on both sides.
    """
    loop = asyncio.get_running_loop()
    bob = await loop.run_in_executor(
        executor, lambda: BobReconciler(bob_bits, qber_estimate, error_probs=error_probs,
                                        config=config, catalog=catalog))
    round_trips = 0
    for req in bob.syndrome_requests():
        reply = await channel.syndromes(req)
        round_trips += 1
        bob.accept_syndromes(reply, req)
    while True:
        reveals = await loop.run_in_executor(executor, bob.decode_round)
        if not reveals:
            break
        for reveal in reveals:
            reply_r = await channel.reveal(reveal)
            round_trips += 1
            bob.accept_reveals(reply_r, reveal)
    fin = bob.finish_request()
    reply_f: FinishReply = await channel.finish(fin)
    round_trips += 1
    if (reply_f.leaked_bits, reply_f.disclosed_bits) != (fin.leaked_bits, fin.disclosed_bits):
        raise ReconciliationError(
            f"leakage counts differ: Bob {fin.disclosed_bits}/{fin.leaked_bits}, Alice "
            f"{reply_f.disclosed_bits}/{reply_f.leaked_bits} (disclosed/leaked)")
    result = bob.result(round_trips)
    if reply_f.kept_bits != result.kept_bits:
        raise ReconciliationError(
            f"kept bits differ: Bob {result.kept_bits}, Alice {reply_f.kept_bits}")
    return result
