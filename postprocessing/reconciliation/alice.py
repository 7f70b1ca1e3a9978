"""Alice's side of reconciliation: answer Bob's requests from her sifted bits.

Alice never decodes; she computes syndromes (a sparse matrix-vector product per block)
and keeps, per block, its frame (key bits and the random values she put into its
punctured positions) so she can disclose extra parities of it in blind rounds. She enforces the session's rules, so a confused or hostile request
cannot make her disclose more than the protocol allows:

- a block's key range lies inside her key, and its frame fits the named code;
- the code is in her catalog and its digest equals hers;
- each block index gets one syndrome (a replay is refused, not answered again);
- a block's extra parities go in order, each at most once;
- finish names exactly the blocks she answered, and Bob's leakage count equals hers.

She counts what she discloses (``disclosed_bits``, ``leaked_bits``) independently of Bob.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from postprocessing.reconciliation.codes import CodeCatalog, LdpcCode
from postprocessing.reconciliation.errors import ReconciliationRefused
from postprocessing.reconciliation.extension import extension_rows
from postprocessing.reconciliation.messages import (
    BlockSyndrome,
    FinishReply,
    FinishRequest,
    RevealedBits,
    RevealReply,
    RevealRequest,
    SyndromeReply,
    SyndromeRequest,
)

# Extra-parity terms (count × degree) one reveal request may ask for: ~0.1 s of work.
MAX_PARITY_WORK = 1 << 23


@dataclass
class _AliceBlock:
    offset: int
    length: int
    code: LdpcCode
    punctured: int
    shortened: int
    frame: np.ndarray  # key bits, her random fill at the punctured positions, zeros
    syndrome_bits: int
    revealed: int = 0

    @property
    def leaked(self) -> int:
        return self.syndrome_bits - (self.punctured - self.revealed)


def make_frame(code: LdpcCode, key_bits: np.ndarray, fill: np.ndarray,
               punctured: int, shortened: int) -> np.ndarray:
    """The n-bit frame: ``key_bits`` in the key positions, the punctured values ``fill``
    (puncturing order), zeros in the shortened positions."""
    key_pos, punct_pos, _short = code.frame_layout(punctured, shortened)
    frame = np.zeros(code.n, dtype=np.uint8)
    frame[key_pos] = key_bits
    frame[punct_pos] = fill
    return frame


def frame_syndrome(code: LdpcCode, frame: np.ndarray) -> np.ndarray:
    """The syndrome (uint8 0/1, m bits) of a frame."""
    return (code.pcm @ frame.astype(np.int32) % 2).astype(np.uint8)


class AliceReconciler:
    """Answers one session's requests from ``alice_bits`` (uint8 0/1).

    ``rng`` draws the punctured fill; it must be a cryptographically unpredictable source
    in a real run (default: numpy's generator seeded from the OS entropy pool); tests pass
    a seeded one.
    """

    def __init__(self, alice_bits: np.ndarray, *, catalog: CodeCatalog | None = None,
                 rng: np.random.Generator | None = None) -> None:
        bits = np.asarray(alice_bits)
        if bits.ndim != 1 or bits.dtype != np.uint8 or (bits.size and bits.max() > 1):
            raise ValueError("alice_bits: expected a 1-D uint8 array of 0/1")
        self._bits = bits
        self._catalog = catalog if catalog is not None else CodeCatalog.default()
        self._rng = rng if rng is not None else np.random.default_rng()
        self._blocks: dict[int, _AliceBlock] = {}
        self._kept: np.ndarray | None = None
        self.disclosed_bits = 0

    @property
    def leaked_bits(self) -> int:
        return sum(b.leaked for b in self._blocks.values())

    @property
    def finished(self) -> bool:
        return self._kept is not None

    def _refuse_if_finished(self) -> None:
        if self._kept is not None:
            raise ReconciliationRefused("the session is finished; no more requests")

    def answer_syndromes(self, request: SyndromeRequest) -> SyndromeReply:
        self._refuse_if_finished()
        codes: dict[str, LdpcCode] = {}
        for ref in request.codes:
            code = self._catalog.get(ref.code_id)  # raises ReconciliationRefused if unknown
            if code.digest != ref.sha256:
                raise ReconciliationRefused(
                    f"code {ref.code_id}: digest mismatch (Bob's {ref.sha256[:12]}…, "
                    f"Alice's {code.digest[:12]}…): the two sides build different codes")
            codes[ref.code_id] = code
        # validate every block before answering any (all or nothing)
        planned: list[tuple[int, _AliceBlock]] = []
        for blk in request.blocks:
            if blk.block_index in self._blocks:
                raise ReconciliationRefused(
                    f"block {blk.block_index}: syndrome already sent (replay refused)")
            code = codes[blk.code_id]
            end = blk.key_offset_bits + blk.key_length_bits
            if end > self._bits.size:
                raise ReconciliationRefused(
                    f"block {blk.block_index}: bits {blk.key_offset_bits}..{end} lie beyond "
                    f"the key's {self._bits.size} bits")
            if blk.key_length_bits + blk.punctured_bits + blk.shortened_bits != code.n:
                raise ReconciliationRefused(
                    f"block {blk.block_index}: key {blk.key_length_bits} + punctured "
                    f"{blk.punctured_bits} + shortened {blk.shortened_bits} bits != code "
                    f"{code.code_id}'s length {code.n}")
            if blk.punctured_bits > code.max_punctured:
                raise ReconciliationRefused(
                    f"block {blk.block_index}: {blk.punctured_bits} punctured bits, code "
                    f"{code.code_id} allows at most {code.max_punctured}")
            if blk.shortened_bits > code.shorten_order.size:
                raise ReconciliationRefused(
                    f"block {blk.block_index}: {blk.shortened_bits} shortened bits, code "
                    f"{code.code_id} allows at most {code.shorten_order.size}")
            planned.append((blk.block_index, _AliceBlock(
                offset=blk.key_offset_bits, length=blk.key_length_bits, code=code,
                punctured=blk.punctured_bits, shortened=blk.shortened_bits,
                frame=np.empty(0, np.uint8), syndrome_bits=code.m)))
        out = []
        for index, ab in planned:
            fill = self._rng.integers(0, 2, ab.punctured, dtype=np.uint8)
            ab.frame = make_frame(ab.code, self._bits[ab.offset:ab.offset + ab.length], fill,
                                  ab.punctured, ab.shortened)
            syn = frame_syndrome(ab.code, ab.frame)
            self._blocks[index] = ab
            self.disclosed_bits += ab.syndrome_bits
            out.append(BlockSyndrome(block_index=index, syndrome_bits=ab.syndrome_bits,
                                     syndrome=np.packbits(syn).tobytes()))
        return SyndromeReply(blocks=out)

    def answer_reveal(self, request: RevealRequest) -> RevealReply:
        self._refuse_if_finished()
        work = sum(rv.count * rv.parity_degree for rv in request.blocks)
        if work > MAX_PARITY_WORK:
            raise ReconciliationRefused(
                f"reveal: {work} parity terms in one request, at most {MAX_PARITY_WORK}")
        for rv in request.blocks:
            ab = self._blocks.get(rv.block_index)
            if ab is None:
                raise ReconciliationRefused(f"block {rv.block_index}: no syndrome was sent")
            if rv.first != ab.revealed:
                raise ReconciliationRefused(
                    f"block {rv.block_index}: reveal from {rv.first}, but {ab.revealed} are "
                    f"revealed (reveals go in order, each once)")
            limit = ab.length  # more parities than key bits would be pointless
            if rv.first + rv.count > limit:
                raise ReconciliationRefused(
                    f"block {rv.block_index}: parities up to {rv.first + rv.count}, the block "
                    f"can disclose {limit}")
            if rv.parity_degree > ab.length:
                raise ReconciliationRefused(
                    f"block {rv.block_index}: parity degree {rv.parity_degree} exceeds its "
                    f"{ab.length} key bits")
        out = []
        for rv in request.blocks:
            ab = self._blocks[rv.block_index]
            ext = extension_rows(ab.code, ab.punctured, ab.shortened, rv.block_index,
                                 rv.first, rv.count, rv.parity_degree)
            vals = (ext @ ab.frame.astype(np.int32) % 2).astype(np.uint8)
            ab.revealed += rv.count
            self.disclosed_bits += rv.count
            out.append(RevealedBits(block_index=rv.block_index, first=rv.first,
                                    bit_count=rv.count, bits=np.packbits(vals).tobytes()))
        return RevealReply(blocks=out)

    def answer_finish(self, request: FinishRequest) -> FinishReply:
        self._refuse_if_finished()
        named = {v.block_index for v in request.verdicts}
        if named != set(self._blocks):
            raise ReconciliationRefused(
                f"finish: verdicts for {len(named)} blocks, Alice answered "
                f"{len(self._blocks)} (missing {sorted(set(self._blocks) - named)[:8]}, "
                f"unknown {sorted(named - set(self._blocks))[:8]})")
        if (request.disclosed_bits != self.disclosed_bits
                or request.leaked_bits != self.leaked_bits):
            raise ReconciliationRefused(
                f"finish: Bob counts {request.disclosed_bits} disclosed / "
                f"{request.leaked_bits} leaked bits, Alice {self.disclosed_bits} / "
                f"{self.leaked_bits}")
        keep = np.zeros(self._bits.size, dtype=bool)
        for v in request.verdicts:
            if v.converged:
                ab = self._blocks[v.block_index]
                keep[ab.offset:ab.offset + ab.length] = True
        self._kept = keep
        for ab in self._blocks.values():
            ab.frame = np.empty(0, np.uint8)  # no longer needed
        return FinishReply(kept_bits=int(keep.sum()), disclosed_bits=self.disclosed_bits,
                           leaked_bits=self.leaked_bits)

    def kept_mask(self) -> np.ndarray:
        """Bool per key bit: True where the bit survives (after finish)."""
        if self._kept is None:
            raise ReconciliationRefused("the session is not finished yet")
        return self._kept.copy()

    def kept_bits(self) -> np.ndarray:
        """Alice's key after reconciliation: her bits of the converged blocks, in order."""
        return self._bits[self.kept_mask()]
