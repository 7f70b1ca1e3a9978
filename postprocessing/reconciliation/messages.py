"""The reconciliation messages between Bob (ground, asks) and Alice (satellite, answers).

Bob drives: he cuts the sifted key into blocks, picks a code and its rate adaptation per
block, asks Alice for the syndromes of her blocks, decodes, and (blind reconciliation)
asks her to reveal some of a block's punctured bits when a decoding fails. At the end he
tells her which blocks converged so both keep the same bits.

Every message is a frozen pydantic model; binary payloads are ``bytes`` of packed bits
(``np.packbits``, big-endian bit order, the last byte zero-padded). The models validate
sizes and ranges so a hostile or corrupt message is refused with a clear reason; what a
message may ask relative to the state of the session (block ranges inside Alice's key,
each syndrome once, no reveal beyond the punctured bits) is checked by Alice.

Message flow of one session (one sifted-key string both sides index alike)::

    Bob -> Alice  SyndromeRequest(codes, blocks)        Alice -> Bob  SyndromeReply
    Bob -> Alice  RevealRequest(blocks)   (0..k times)  Alice -> Bob  RevealReply
    Bob -> Alice  FinishRequest(verdicts)               Alice -> Bob  FinishReply

Each request/reply pair is one round trip. Bob sends no bit of his key. Alice sends
syndromes (parities of her frame) and, in blind rounds, extra parities of it; every one
of those bits is counted in the leakage λ_EC, which privacy amplification removes.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A message carries at most this many blocks: bounds the work one message can cause
# (a pass of 2e6 sifted bits in 16 kbit blocks is ~130 blocks).
MAX_BLOCKS_PER_MESSAGE = 4096
# A code's length bounds every per-block payload (frames are at most this long).
MAX_FRAME_BITS = 1 << 20
# Code identifiers: catalog names such as "bsc-r0.80-n16384-v1".
CODE_ID_PATTERN = r"^[a-z0-9][a-z0-9.\-]{0,63}$"

CodeId = Annotated[str, Field(pattern=CODE_ID_PATTERN)]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
BlockIndex = Annotated[int, Field(ge=0, lt=1 << 31)]
BitCount = Annotated[int, Field(ge=0, le=MAX_FRAME_BITS)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def packed_len(bit_count: int) -> int:
    """Bytes that hold ``bit_count`` packed bits."""
    return (bit_count + 7) // 8


class CodeRef(_Message):
    """A code of the catalog both sides build deterministically, with its digest.

    ``sha256`` is the SHA-256 of the code's canonical form (see ``codes.LdpcCode.digest``):
    Alice refuses a request whose code she would build differently, so a version skew
    between the two sides fails loudly instead of decoding garbage.
    """

    code_id: CodeId
    sha256: Sha256Hex


class BlockRequest(_Message):
    """One block: a range of the sifted key and how to fit it into a code's frame.

    The frame has the code's ``n`` bits: ``key_length_bits`` key bits, ``punctured_bits``
    positions Alice fills with fresh random bits (Bob does not know them), and
    ``shortened_bits`` positions fixed to zero (both know them). Which frame positions are
    punctured and shortened is the code's fixed order (``codes.LdpcCode``): the first
    ``punctured_bits`` of its puncturing order, the first ``shortened_bits`` of its
    shortening order; the key bits fill the remaining positions in increasing order.
    Constraint (checked by Alice against the code): key + punctured + shortened == n.
    """

    block_index: BlockIndex
    key_offset_bits: Annotated[int, Field(ge=0, lt=1 << 40)]
    key_length_bits: Annotated[int, Field(ge=1, le=MAX_FRAME_BITS)]
    code_id: CodeId
    punctured_bits: BitCount
    shortened_bits: BitCount


class SyndromeRequest(_Message):
    """Bob asks for the syndromes of these blocks of Alice's key (one round trip).

    ``codes`` lists every code the blocks name (each once). Block indices are unique in a
    session: Alice answers each block index once and refuses a repeat (a replay must not
    make her disclose more). A retry of a range at another rate is a new block index; its
    disclosure is counted again.
    """

    codes: Annotated[list[CodeRef], Field(min_length=1, max_length=64)]
    blocks: Annotated[list[BlockRequest], Field(min_length=1, max_length=MAX_BLOCKS_PER_MESSAGE)]

    @model_validator(mode="after")
    def _unique(self) -> SyndromeRequest:
        ids = [c.code_id for c in self.codes]
        if len(set(ids)) != len(ids):
            raise ValueError("codes: a code is listed twice")
        idx = [b.block_index for b in self.blocks]
        if len(set(idx)) != len(idx):
            raise ValueError("blocks: a block index is listed twice")
        missing = {b.code_id for b in self.blocks} - set(ids)
        if missing:
            raise ValueError(f"blocks name codes not listed in codes: {sorted(missing)}")
        return self


class BlockSyndrome(_Message):
    """Alice's syndrome of one block's frame: ``syndrome_bits`` parities, packed."""

    block_index: BlockIndex
    syndrome_bits: Annotated[int, Field(ge=1, le=MAX_FRAME_BITS)]
    syndrome: bytes

    @model_validator(mode="after")
    def _size(self) -> BlockSyndrome:
        if len(self.syndrome) != packed_len(self.syndrome_bits):
            raise ValueError(
                f"syndrome: {len(self.syndrome)} bytes for {self.syndrome_bits} bits "
                f"(expected {packed_len(self.syndrome_bits)})")
        return self


class SyndromeReply(_Message):
    """The syndromes, one per requested block, in the request's order."""

    blocks: Annotated[list[BlockSyndrome], Field(max_length=MAX_BLOCKS_PER_MESSAGE)]


class BlockReveal(_Message):
    """Disclose extra parities ``first .. first+count-1`` of one block (blind round).

    Each extra parity is the XOR of ``parity_degree`` key positions of the block's frame,
    chosen as ``extension.extension_rows`` defines (seeded by block index, parity index
    and degree). ``first`` must equal the number already disclosed for the block: parities
    go in order, each at most once. Every disclosed parity counts one bit of leakage."""

    block_index: BlockIndex
    first: BitCount
    count: Annotated[int, Field(ge=1, le=MAX_FRAME_BITS)]
    # bounded so one request cannot make Alice build a huge matrix (count · degree)
    parity_degree: Annotated[int, Field(ge=1, le=256)] = 32


class RevealRequest(_Message):
    """Blind reconciliation: Bob asks for extra parities of blocks that failed."""

    blocks: Annotated[list[BlockReveal], Field(min_length=1, max_length=MAX_BLOCKS_PER_MESSAGE)]

    @model_validator(mode="after")
    def _unique(self) -> RevealRequest:
        idx = [b.block_index for b in self.blocks]
        if len(set(idx)) != len(idx):
            raise ValueError("blocks: a block index is listed twice")
        return self


class RevealedBits(_Message):
    """The extra parities, packed, in order."""

    block_index: BlockIndex
    first: BitCount
    bit_count: Annotated[int, Field(ge=1, le=MAX_FRAME_BITS)]
    bits: bytes

    @model_validator(mode="after")
    def _size(self) -> RevealedBits:
        if len(self.bits) != packed_len(self.bit_count):
            raise ValueError(
                f"bits: {len(self.bits)} bytes for {self.bit_count} bits "
                f"(expected {packed_len(self.bit_count)})")
        return self


class RevealReply(_Message):
    """The revealed values, one entry per requested block, in the request's order."""

    blocks: Annotated[list[RevealedBits], Field(max_length=MAX_BLOCKS_PER_MESSAGE)]


class BlockVerdict(_Message):
    """Bob's outcome for one block: converged (kept by both) or not (discarded by both)."""

    block_index: BlockIndex
    converged: bool


class FinishRequest(_Message):
    """The end of a session: a verdict for every block Alice answered, and Bob's count of
    the bits disclosed and leaked, which Alice checks against her own."""

    verdicts: Annotated[list[BlockVerdict], Field(max_length=1 << 20)]
    disclosed_bits: Annotated[int, Field(ge=0)]
    leaked_bits: Annotated[int, Field(ge=0)]

    @model_validator(mode="after")
    def _unique(self) -> FinishRequest:
        idx = [v.block_index for v in self.verdicts]
        if len(set(idx)) != len(idx):
            raise ValueError("verdicts: a block index is listed twice")
        return self


class FinishReply(_Message):
    """Alice's agreement: the key bits she keeps and her own leakage count."""

    kept_bits: Annotated[int, Field(ge=0)]
    disclosed_bits: Annotated[int, Field(ge=0)]
    leaked_bits: Annotated[int, Field(ge=0)]


Request = SyndromeRequest | RevealRequest | FinishRequest
Reply = SyndromeReply | RevealReply | FinishReply
