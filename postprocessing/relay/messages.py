"""The relay's messages on the classical channel (docs/relay.md is their wire spec).

Both are ground → satellite requests inside the channel's authenticated envelope
(docs/classical-channel.md) with ``pass_id = "relay"``; each is answered by one reply.

- ``relay_offer`` (station A): "these blocks of the key I share with you may be relayed to
  station B". Answer ``relay_offer_reply``.
- ``relay`` (station B): "give me A's key, one-time-pad encrypted with mine". Answer
  ``relay_reply``: A's key IDs, B's key IDs consumed, and the frame ``xor`` = K_A ⊕ K_B.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from postprocessing.channel import messages as channel_messages
from postprocessing.channel.messages import NAME_PATTERN, Body

RELAY_PASS_ID = "relay"
MAX_RELAY_BLOCKS = 16384  # per message: 16384 UUIDs are ~0.6 MiB of the 1 MiB header cap
_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

StationName = Annotated[str, Field(pattern=NAME_PATTERN)]
KeyIdText = Annotated[str, Field(pattern=_UUID)]
KeyIdList = Annotated[list[KeyIdText], Field(max_length=MAX_RELAY_BLOCKS)]


class RelayOffer(Body):
    """Station A gives up these blocks of its satellite key for a relay to ``partner``."""

    TYPE: ClassVar[str] = "relay_offer"
    partner: StationName
    key_ids: Annotated[KeyIdList, Field(min_length=1)]


class RelayOfferReply(Body):
    TYPE: ClassVar[str] = "relay_offer_reply"
    partner: StationName
    accepted_blocks: Annotated[int, Field(ge=0, le=MAX_RELAY_BLOCKS)]
    offered_total_blocks: Annotated[int, Field(ge=0)]


class RelayRequest(Body):
    """Station B asks for up to ``max_blocks`` blocks of ``partner``'s key.

    ``request_id`` makes a repeated request (after a lost reply) get the same answer."""

    TYPE: ClassVar[str] = "relay"
    partner: StationName
    max_blocks: Annotated[int, Field(ge=1, le=MAX_RELAY_BLOCKS)]
    request_id: KeyIdText


class RelayAnnouncement(Body):
    """The satellite's answer: ``xor`` frame = K_A ⊕ K_B, block by block, packed big-endian.

    Block i of the frame is A's block ``partner_key_ids[i]`` XOR B's block ``own_key_ids[i]``
    (``block_bits`` bits each). The satellite has erased both."""

    TYPE: ClassVar[str] = "relay_reply"
    FRAMES: ClassVar[tuple[str, ...]] = ("xor",)
    partner: StationName
    request_id: KeyIdText
    block_bits: Annotated[int, Field(ge=8, le=1 << 20, multiple_of=8)]
    partner_key_ids: KeyIdList
    own_key_ids: KeyIdList


def _register(request: type[Body], reply: type[Body]) -> None:
    register = getattr(channel_messages, "register_messages", None)
    if register is not None:
        register(request, reply)
        return
    # Until the channel has a registration function: the same three tables it reads.
    for table, model in ((channel_messages.REQUESTS, request), (channel_messages.REPLIES, reply)):
        if table.get(model.TYPE, model) is not model:
            raise RuntimeError(f"channel message type {model.TYPE!r} is already taken")
        table[model.TYPE] = model
    channel_messages.REPLY_OF[request.TYPE] = reply.TYPE


_register(RelayOffer, RelayOfferReply)
_register(RelayRequest, RelayAnnouncement)

__all__ = [
    "MAX_RELAY_BLOCKS",
    "RELAY_PASS_ID",
    "RelayAnnouncement",
    "RelayOffer",
    "RelayOfferReply",
    "RelayRequest",
]
