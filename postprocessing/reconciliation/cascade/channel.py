"""Bob's view of Alice during Cascade, and an in-memory implementation that counts."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from postprocessing.reconciliation.cascade.alice import CascadeAlice
from postprocessing.reconciliation.cascade.messages import (
    CascadeFinishReply,
    CascadeFinishRequest,
    CascadeSetupReply,
    CascadeSetupRequest,
    ParityReply,
    ParityRequest,
)


@runtime_checkable
class CascadeChannel(Protocol):
    """Bob's three questions to Alice; each call is one round trip. A refusal by Alice
    raises :class:`~postprocessing.reconciliation.errors.ReconciliationRefused` (over the
    wire: the peer's error message carried back and raised as that)."""

    async def setup(self, request: CascadeSetupRequest) -> CascadeSetupReply:
        """Open the session; Alice's reply carries the public permutation seed."""
        ...

    async def parities(self, request: ParityRequest) -> ParityReply:
        """The parities of Alice's key over the requested ranges of the passes."""
        ...

    async def finish(self, request: CascadeFinishRequest) -> CascadeFinishReply:
        """End the session; Alice confirms the leakage count."""
        ...


class InMemoryCascadeChannel:
    """A :class:`CascadeChannel` answering from a :class:`CascadeAlice` in this process.

    Messages pass through ``model_dump``/``model_validate`` as over a wire. It counts
    round trips and the parity bits carried from Alice to Bob (``parity_bits_carried``),
    so tests can check Bob's leakage against what crossed.
    """

    def __init__(self, alice: CascadeAlice) -> None:
        self._alice = alice
        self.round_trips = 0
        self.parity_bits_carried = 0
        self.request_bytes = 0

    async def setup(self, request: CascadeSetupRequest) -> CascadeSetupReply:
        self.round_trips += 1
        req = CascadeSetupRequest.model_validate(request.model_dump())
        return CascadeSetupReply.model_validate(self._alice.answer_setup(req).model_dump())

    async def parities(self, request: ParityRequest) -> ParityReply:
        self.round_trips += 1
        req = ParityRequest.model_validate(request.model_dump())
        self.request_bytes += len(req.passes) + len(req.starts) + len(req.ends)
        reply = ParityReply.model_validate(self._alice.answer_parities(req).model_dump())
        self.parity_bits_carried += reply.range_count
        return reply

    async def finish(self, request: CascadeFinishRequest) -> CascadeFinishReply:
        self.round_trips += 1
        req = CascadeFinishRequest.model_validate(request.model_dump())
        return CascadeFinishReply.model_validate(self._alice.answer_finish(req).model_dump())
