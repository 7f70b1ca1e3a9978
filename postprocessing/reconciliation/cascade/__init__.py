"""Cascade: interactive reconciliation by parities of permuted blocks (issue 13's allowed
alternative to LDPC), vectorised with numpy so all of a round's bisections share one
round trip.

Alice (satellite) holds the reference key and answers; Bob (ground) asks and corrects.
See :mod:`.bob` for the protocol, :mod:`.messages` for the wire models and
docs/_reconciliation.md ("Cascade") for round trips and measured figures.

Entry points:

- ``await cascade_reconcile(bob_bits, qber_estimate, channel, config=None,
  executor=None) -> ReconciliationResult`` (Bob; the LDPC stage's result type);
- ``CascadeAlice(alice_bits)``: ``answer_setup``, ``answer_parities``, ``answer_finish`` (sync, O(1) per
  range after an O(n) prefix per pass), ``leaked_bits``;
- :class:`CascadeChannel` (Protocol: ``setup``, ``parities``, ``finish``) and
  :class:`InMemoryCascadeChannel`.

Cascade does not prove the keys equal: run the verification hash after it.
"""

from postprocessing.reconciliation.cascade.alice import CascadeAlice
from postprocessing.reconciliation.cascade.bob import (
    CascadeBob,
    CascadeConfig,
    block_schedule,
    cascade_reconcile,
)
from postprocessing.reconciliation.cascade.channel import CascadeChannel, InMemoryCascadeChannel
from postprocessing.reconciliation.cascade.messages import (
    CascadeFinishReply,
    CascadeFinishRequest,
    CascadeSetupReply,
    CascadeSetupRequest,
    ParityReply,
    ParityRequest,
)

__all__ = [
    "CascadeAlice",
    "CascadeBob",
    "CascadeChannel",
    "CascadeConfig",
    "CascadeFinishReply",
    "CascadeFinishRequest",
    "CascadeSetupReply",
    "CascadeSetupRequest",
    "InMemoryCascadeChannel",
    "ParityReply",
    "ParityRequest",
    "block_schedule",
    "cascade_reconcile",
]
