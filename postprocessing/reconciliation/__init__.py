"""Error correction: rate-adaptive LDPC syndrome reconciliation (seam 3).

Alice (the satellite) holds the reference key; Bob (ground) corrects his sifted bits to
hers. Bob drives, one session per sifted-key string that both sides index alike:

- Bob picks from the estimated QBER a code of the catalog (:mod:`.codes`: irregular
  repeat-accumulate LDPC codes of girth ≥ 6, built deterministically, cached on disk)
  and a block length, the rest of each frame shortened, and cuts his bits into blocks;
- he asks Alice for the blocks' syndromes (:class:`SyndromeRequest`); Alice
  (:class:`AliceReconciler`) answers from her bits;
- he decodes with ``ldpc``'s belief-propagation decoder (min-sum, then product-sum on
  the same disclosure); for a block that still fails he asks Alice for extra parities
  (:class:`RevealRequest`, blind reconciliation; :mod:`.extension`) and decodes again,
  up to a bounded number of rounds;
- he tells Alice which blocks converged (:class:`FinishRequest`); both keep those and
  discard the rest. λ_EC counts every block, kept or not.

Entry points:

- ``await reconcile(bob_bits, qber_estimate, channel, error_probs=None, config=...,
  catalog=..., executor=None) -> ReconciliationResult`` (Bob). Decoding runs off the event loop
  (``run_in_executor``; pass an executor or get the default thread pool); the sync core
  is :class:`BobReconciler`.
- ``AliceReconciler(alice_bits, rng=...)``: ``answer_syndromes``, ``answer_reveal``,
  ``answer_finish`` (sync, cheap), ``kept_bits()`` after finish.
- :class:`ReconciliationChannel` (Protocol) and :class:`InMemoryChannel`.

Bits are numpy uint8 arrays of 0/1; packed bytes only inside messages.
"""

from postprocessing.reconciliation.alice import AliceReconciler
from postprocessing.reconciliation.bob import BobReconciler, ReconciliationConfig, reconcile
from postprocessing.reconciliation.channel import InMemoryChannel, ReconciliationChannel
from postprocessing.reconciliation.codes import CodeCatalog, CodeSpec, LdpcCode
from postprocessing.reconciliation.errors import ReconciliationError, ReconciliationRefused
from postprocessing.reconciliation.messages import (
    BlockRequest,
    BlockReveal,
    BlockSyndrome,
    BlockVerdict,
    CodeRef,
    FinishReply,
    FinishRequest,
    RevealedBits,
    RevealReply,
    RevealRequest,
    SyndromeReply,
    SyndromeRequest,
)
from postprocessing.reconciliation.result import (
    BlockReport,
    ReconciliationResult,
    binary_entropy,
)

__all__ = [
    "AliceReconciler",
    "BobReconciler",
    "CodeCatalog",
    "CodeSpec",
    "LdpcCode",
    "ReconciliationConfig",
    "reconcile",
    "BlockReport",
    "BlockRequest",
    "BlockReveal",
    "BlockSyndrome",
    "BlockVerdict",
    "CodeRef",
    "FinishReply",
    "FinishRequest",
    "InMemoryChannel",
    "ReconciliationChannel",
    "ReconciliationError",
    "ReconciliationRefused",
    "ReconciliationResult",
    "RevealReply",
    "RevealRequest",
    "RevealedBits",
    "SyndromeReply",
    "SyndromeRequest",
    "binary_entropy",
]

# Cascade (interactive alternative; its own subpackage, imported last: it uses .errors/.result)
from postprocessing.reconciliation.cascade import (
    CascadeAlice,
    CascadeChannel,
    CascadeConfig,
    InMemoryCascadeChannel,
    cascade_reconcile,
)

__all__ += ["CascadeAlice", "CascadeChannel", "CascadeConfig", "InMemoryCascadeChannel",
            "cascade_reconcile"]
