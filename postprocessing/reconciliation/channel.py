"""Bob's view of Alice during reconciliation, and an in-memory implementation.

:class:`ReconciliationChannel` is what Bob's :func:`~postprocessing.reconciliation.reconcile`
talks to: three async questions, one round trip each. Over the real link the protocol
owner implements it on the authenticated ZeroMQ channel (each method sends the request
model and awaits the reply model); in tests and benches :class:`InMemoryChannel` answers
from an :class:`~postprocessing.reconciliation.alice.AliceReconciler` in the same process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from postprocessing.reconciliation.messages import (
    FinishReply,
    FinishRequest,
    RevealReply,
    RevealRequest,
    SyndromeReply,
    SyndromeRequest,
)

if TYPE_CHECKING:
    from postprocessing.reconciliation.alice import AliceReconciler


@runtime_checkable
class ReconciliationChannel(Protocol):
    """Bob's questions to Alice. Each call is one round trip; callers add deadlines
    (``asyncio.timeout``). A refusal by Alice raises
    :class:`~postprocessing.reconciliation.errors.ReconciliationRefused` (over the wire:
    the peer's error message carried back and raised as that)."""

    async def syndromes(self, request: SyndromeRequest) -> SyndromeReply:
        """The syndromes of the requested blocks of Alice's key."""
        ...

    async def reveal(self, request: RevealRequest) -> RevealReply:
        """The values of more punctured positions of failed blocks (blind rounds)."""
        ...

    async def finish(self, request: FinishRequest) -> FinishReply:
        """Tell Alice which blocks converged; she keeps the same bits and confirms the
        leakage count."""
        ...


class InMemoryChannel:
    """A :class:`ReconciliationChannel` that answers from an Alice in this process.

    It counts what crosses it — round trips, and the syndrome and revealed bits carried —
    so tests can check that the leakage Bob reports equals what was disclosed. Messages
    are passed through ``model_validate`` of their dumped form, as a wire would, so a
    model that could not cross a link does not pass here either.
    """

    def __init__(self, alice: AliceReconciler) -> None:
        self._alice = alice
        self.round_trips = 0
        self.syndrome_bits_carried = 0
        self.revealed_bits_carried = 0

    @property
    def disclosed_bits_carried(self) -> int:
        """Every key-dependent bit that went from Alice to Bob through this channel."""
        return self.syndrome_bits_carried + self.revealed_bits_carried

    async def syndromes(self, request: SyndromeRequest) -> SyndromeReply:
        self.round_trips += 1
        req = SyndromeRequest.model_validate(request.model_dump())
        reply = SyndromeReply.model_validate(self._alice.answer_syndromes(req).model_dump())
        self.syndrome_bits_carried += sum(b.syndrome_bits for b in reply.blocks)
        return reply

    async def reveal(self, request: RevealRequest) -> RevealReply:
        self.round_trips += 1
        req = RevealRequest.model_validate(request.model_dump())
        reply = RevealReply.model_validate(self._alice.answer_reveal(req).model_dump())
        self.revealed_bits_carried += sum(b.bit_count for b in reply.blocks)
        return reply

    async def finish(self, request: FinishRequest) -> FinishReply:
        self.round_trips += 1
        req = FinishRequest.model_validate(request.model_dump())
        return FinishReply.model_validate(self._alice.answer_finish(req).model_dump())
