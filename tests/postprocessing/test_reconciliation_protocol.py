"""Reconciliation messages and Alice's rules: hostile or confused requests are refused
with a reason and make her disclose nothing more; codes are deterministic, girth ≥ 6 and
untainted-punctured."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from pydantic import ValidationError

from postprocessing.reconciliation import (
    AliceReconciler,
    BlockRequest,
    BlockReveal,
    BlockSyndrome,
    BlockVerdict,
    CodeCatalog,
    CodeRef,
    CodeSpec,
    FinishRequest,
    ReconciliationRefused,
    RevealRequest,
    SyndromeRequest,
)
from postprocessing.reconciliation.codes import build_code

SMALL = CodeSpec(name="test-r0.80-n4096", n=4096, m=820, var_degrees=(3, 6, 16),
                 var_fractions=(0.7, 0.2, 0.1), seed=3)


@pytest.fixture(scope="module")
def catalog() -> CodeCatalog:
    return CodeCatalog([SMALL])


@pytest.fixture
def alice(catalog: CodeCatalog) -> AliceReconciler:
    bits = np.random.default_rng(1).integers(0, 2, 20_000, dtype=np.uint8)
    return AliceReconciler(bits, catalog=catalog, rng=np.random.default_rng(2))


def _request(catalog: CodeCatalog, *, index: int = 0, offset: int = 0, punctured: int = 50,
             digest: str | None = None) -> SyndromeRequest:
    code = catalog.get(SMALL.name)
    key = SMALL.n - 205
    if punctured < 0:  # one more than the untainted positions, the rest of the frame key
        punctured = code.max_punctured + 1
        key = code.n - punctured
    return SyndromeRequest(
        codes=[CodeRef(code_id=code.code_id, sha256=digest or code.digest)],
        blocks=[BlockRequest(block_index=index, key_offset_bits=offset, key_length_bits=key,
                             code_id=code.code_id, punctured_bits=punctured,
                             shortened_bits=code.n - key - punctured)])


def test_code_is_deterministic_girth6_untainted() -> None:
    a, b = build_code(SMALL), build_code(SMALL)
    assert a.digest == b.digest
    assert (a.pcm != b.pcm).nnz == 0
    other = build_code(CodeSpec(**{**SMALL.__dict__, "seed": 4}))
    assert other.digest != a.digest
    h = a.pcm.astype(np.int32)
    assert h.max() == 1  # no repeated edges
    overlap = (h @ h.T).tocoo()
    off = overlap.row != overlap.col
    assert overlap.data[off].max() <= 1  # two checks share at most one variable: no 4-cycle
    # degrees: the staircase (degree 2, the last column degree 1) and the distribution
    col_deg = np.asarray(h.sum(axis=0)).ravel()
    k = SMALL.n - SMALL.m
    assert (col_deg[k:-1] == 2).all() and col_deg[-1] == 1
    counts = {d: int((col_deg[:k] == d).sum()) for d in SMALL.var_degrees}
    assert counts == {3: round(0.7 * k), 6: round(0.2 * k), 16: k - round(0.7 * k) - round(0.2 * k)}
    row_deg = np.asarray(h.sum(axis=1)).ravel()
    assert row_deg.max() - row_deg.min() <= 2  # concentrated checks (±1 after the repair)
    # untainted: no check has two punctured neighbours, so the punctured columns have
    # disjoint supports and are linearly independent
    punct = h[:, a.puncture_order]
    assert np.asarray(punct.sum(axis=1)).max() <= 1
    assert (np.asarray(punct.sum(axis=0)).ravel() >= 1).all()
    assert np.intersect1d(a.puncture_order, a.shorten_order).size == 0
    assert np.union1d(a.puncture_order, a.shorten_order).size == SMALL.n
    assert isinstance(a.pcm, sp.csr_matrix)


def test_syndrome_replay_is_refused(alice: AliceReconciler, catalog: CodeCatalog) -> None:
    reply = alice.answer_syndromes(_request(catalog))
    assert len(reply.blocks) == 1 and reply.blocks[0].syndrome_bits == SMALL.m
    before = alice.disclosed_bits
    with pytest.raises(ReconciliationRefused, match="replay"):
        alice.answer_syndromes(_request(catalog))
    assert alice.disclosed_bits == before


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"offset": 19_000}, "beyond the key"),
    ({"digest": "0" * 64}, "digest mismatch"),
    ({"punctured": -1}, "allows at most"),
])
def test_bad_syndrome_requests_are_refused(alice: AliceReconciler, catalog: CodeCatalog,
                                           kwargs: dict, reason: str) -> None:
    try:
        req = _request(catalog, **kwargs)
    except ValidationError:
        pytest.fail("the model should accept it; Alice must refuse it")
    with pytest.raises(ReconciliationRefused, match=reason):
        alice.answer_syndromes(req)
    assert alice.disclosed_bits == 0


def test_unknown_code_and_bad_frame_are_refused(alice: AliceReconciler,
                                                catalog: CodeCatalog) -> None:
    code = catalog.get(SMALL.name)
    with pytest.raises(ReconciliationRefused, match="not in the catalog"):
        alice.answer_syndromes(SyndromeRequest(
            codes=[CodeRef(code_id="nope-r0.50", sha256=code.digest)],
            blocks=[BlockRequest(block_index=0, key_offset_bits=0, key_length_bits=10,
                                 code_id="nope-r0.50", punctured_bits=0, shortened_bits=0)]))
    with pytest.raises(ReconciliationRefused, match="length"):
        alice.answer_syndromes(SyndromeRequest(
            codes=[CodeRef(code_id=code.code_id, sha256=code.digest)],
            blocks=[BlockRequest(block_index=0, key_offset_bits=0, key_length_bits=100,
                                 code_id=code.code_id, punctured_bits=0, shortened_bits=0)]))
    assert alice.disclosed_bits == 0


def test_extra_parities_go_in_order_up_to_the_block_length(alice: AliceReconciler,
                                                            catalog: CodeCatalog) -> None:
    from postprocessing.reconciliation.extension import extension_rows

    alice.answer_syndromes(_request(catalog, punctured=50))
    key_bits = SMALL.n - 205
    with pytest.raises(ReconciliationRefused, match="no syndrome"):
        alice.answer_reveal(RevealRequest(blocks=[BlockReveal(block_index=9, first=0, count=1)]))
    with pytest.raises(ReconciliationRefused, match="in order"):
        alice.answer_reveal(RevealRequest(blocks=[BlockReveal(block_index=0, first=5, count=1)]))
    r = alice.answer_reveal(RevealRequest(blocks=[
        BlockReveal(block_index=0, first=0, count=30, parity_degree=40)]))
    assert r.blocks[0].bit_count == 30 and len(r.blocks[0].bits) == 4
    with pytest.raises(ReconciliationRefused, match="in order"):  # a replayed request
        alice.answer_reveal(RevealRequest(blocks=[BlockReveal(block_index=0, first=0, count=30)]))
    with pytest.raises(ReconciliationRefused, match=f"can disclose {key_bits}"):
        alice.answer_reveal(RevealRequest(blocks=[
            BlockReveal(block_index=0, first=30, count=key_bits - 30 + 1)]))
    with pytest.raises(ValidationError):  # a degree that would make Alice build a huge matrix
        BlockReveal(block_index=0, first=30, count=1, parity_degree=key_bits + 1)
    with pytest.raises(ReconciliationRefused, match="parity terms"):  # a flood of work
        alice.answer_reveal(RevealRequest(blocks=[
            BlockReveal(block_index=i, first=0, count=3000, parity_degree=256)
            for i in range(12)]))
    # the parities are of her key bits only (rows never touch punctured positions)
    code = catalog.get(SMALL.name)
    key_pos, _p, _s = code.frame_layout(50, 155)
    ext = extension_rows(code, 50, 155, 0, 0, 30, 40)
    assert np.asarray(ext.sum(axis=1)).ravel().tolist() == [40] * 30
    assert ext[:, np.setdiff1d(np.arange(code.n), key_pos)].nnz == 0
    key = np.random.default_rng(1).integers(0, 2, 20_000, dtype=np.uint8)[:key_bits]
    expect = (ext[:, key_pos] @ key.astype(np.int32)) % 2
    got = np.unpackbits(np.frombuffer(r.blocks[0].bits, np.uint8), count=30)
    assert np.array_equal(got, expect)
    assert alice.disclosed_bits == SMALL.m + 30
    assert alice.leaked_bits == SMALL.m - 50 + 30


def test_finish_checks_verdicts_and_counts(alice: AliceReconciler, catalog: CodeCatalog) -> None:
    alice.answer_syndromes(_request(catalog, punctured=50))
    with pytest.raises(ReconciliationRefused, match="verdicts"):
        alice.answer_finish(FinishRequest(verdicts=[], disclosed_bits=SMALL.m,
                                          leaked_bits=SMALL.m - 50))
    with pytest.raises(ReconciliationRefused, match="Bob counts"):
        alice.answer_finish(FinishRequest(
            verdicts=[BlockVerdict(block_index=0, converged=True)],
            disclosed_bits=SMALL.m, leaked_bits=SMALL.m))
    with pytest.raises(ReconciliationRefused, match="not finished"):
        alice.kept_bits()
    reply = alice.answer_finish(FinishRequest(
        verdicts=[BlockVerdict(block_index=0, converged=False)],
        disclosed_bits=SMALL.m, leaked_bits=SMALL.m - 50))
    assert reply.kept_bits == 0 and alice.kept_bits().size == 0
    with pytest.raises(ReconciliationRefused, match="finished"):
        alice.answer_syndromes(_request(catalog, index=1))


def test_messages_validate_sizes_and_shapes() -> None:
    with pytest.raises(ValidationError, match="expected 2"):
        BlockSyndrome(block_index=0, syndrome_bits=9, syndrome=b"\x00")
    with pytest.raises(ValidationError, match="extra"):
        BlockVerdict.model_validate({"block_index": 0, "converged": True, "key": "0101"})
    with pytest.raises(ValidationError):
        BlockVerdict.model_validate({"block_index": -1, "converged": True})
    with pytest.raises(ValidationError):
        BlockRequest(block_index=0, key_offset_bits=0, key_length_bits=10,
                     code_id="Bad Name\n", punctured_bits=0, shortened_bits=0)
    ref = CodeRef(code_id="c-r0.5", sha256="a" * 64)
    blk = BlockRequest(block_index=0, key_offset_bits=0, key_length_bits=10, code_id="c-r0.5",
                       punctured_bits=0, shortened_bits=0)
    with pytest.raises(ValidationError, match="listed twice"):
        SyndromeRequest(codes=[ref], blocks=[blk, blk])
    with pytest.raises(ValidationError, match="not listed"):
        SyndromeRequest(codes=[CodeRef(code_id="other", sha256="a" * 64)], blocks=[blk])
    with pytest.raises(ValidationError):  # a flood of blocks in one message
        RevealRequest(blocks=[BlockReveal(block_index=i, first=0, count=1)
                              for i in range(5000)])
    # strict: a string where bytes belong is refused rather than coerced
    with pytest.raises(ValidationError):
        BlockSyndrome.model_validate({"block_index": 0, "syndrome_bits": 8, "syndrome": "x"})


def test_a_block_converging_to_a_wrong_word_is_caught_by_verification(
        catalog: CodeCatalog) -> None:
    """Bob's errors form a codeword of the block's frame: his syndrome equals Alice's, the
    decoder 'converges' at once to the wrong key. Reconciliation cannot see it; the
    verification hash does, so the wrong key is never accepted."""
    import asyncio
    import math

    from ldpc.mod2 import nullspace

    from postprocessing.reconciliation import (
        InMemoryChannel,
        ReconciliationConfig,
        binary_entropy,
        reconcile,
    )
    from postprocessing.verification import (
        new_verification_seed,
        tags_match,
        verification_tag,
    )

    code = catalog.get(SMALL.name)
    rng = np.random.default_rng(11)
    # one block of exactly the length Bob plans at a 5 % estimate: no puncturing, the
    # rest of the frame shortened
    length = math.floor(code.m / (1.2 * binary_entropy(0.05)))
    alice_bits = rng.integers(0, 2, length, dtype=np.uint8)
    key_pos, punct, _short = code.frame_layout(0, code.n - length)
    assert punct.size == 0
    kernel = nullspace(code.pcm[:, key_pos].tocsc())
    word = np.asarray(kernel[0].todense()).ravel().astype(np.uint8) % 2
    assert word.any() and not ((code.pcm[:, key_pos] @ word) % 2).any()
    bob_bits = alice_bits ^ word
    alice = AliceReconciler(alice_bits, catalog=catalog, rng=np.random.default_rng(5))
    result = asyncio.run(reconcile(bob_bits, 0.05, InMemoryChannel(alice), catalog=catalog,
                                   config=ReconciliationConfig(min_tail_bits=1000)))
    assert len(result.blocks) == 1 and result.blocks[0].key_length_bits == length
    assert result.converged == [True]  # the decoder cannot tell
    assert not np.array_equal(result.corrected_bits, alice.kept_bits())
    seed = new_verification_seed(1e-15)
    assert not tags_match(verification_tag(result.corrected_bits, seed),
                          verification_tag(alice.kept_bits(), seed))
