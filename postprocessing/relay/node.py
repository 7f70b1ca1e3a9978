"""The satellite's side of the trusted-node relay.

The satellite holds, in its own key store, the key it distilled with each station (peer =
the station's name, the same key IDs as the station's). Station A *offers* blocks of its
key for a partner B: the satellite moves them to its peer ``relay:A:B``. When B asks, the
satellite takes as many offered A blocks as it has B blocks, both in one transaction
(their bits are erased), and announces K_A ⊕ K_B with both lists of key IDs. The satellite
learns nothing new; it is trusted: it knew K_A and K_B all along.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

import numpy as np

from postprocessing.channel.framing import Message
from postprocessing.channel.link import Refusal
from postprocessing.channel.messages import Body
from postprocessing.keystore import BlockState, KeyNotAvailable, KeyStore, KeyStoreError
from postprocessing.relay.messages import (
    RelayAnnouncement,
    RelayOffer,
    RelayOfferReply,
    RelayRequest,
)

log = logging.getLogger("postprocessing.relay")

Answer = tuple[Body, dict[str, bytes] | None, tuple[bytes, ...]]


def offered_peer(station_a: str, station_b: str) -> str:
    """The satellite store's peer holding A's blocks offered for B."""
    return f"relay:{station_a}:{station_b}"


class RelayNode:
    """Answers ``relay_offer`` and ``relay`` for the stations in ``stations``."""

    def __init__(self, store: KeyStore, stations: set[str], *, replay_cache: int = 64):
        self.store = store
        self.stations = set(stations)
        # A lost reply is asked for again with the same request_id: the answer is public
        # (an XOR the eavesdropper already saw), so the satellite may keep it to resend.
        self._answers: OrderedDict[tuple[str, str], tuple[RelayAnnouncement, bytes]] = OrderedDict()
        self._cache = replay_cache
        self.relayed_blocks = 0

    async def handle(self, station: str, msg: Message) -> Answer:
        body = msg.body
        if isinstance(body, RelayOffer):
            return await asyncio.to_thread(self._offer, station, body), None, ()
        if isinstance(body, RelayRequest):
            reply, xor = await asyncio.to_thread(self._relay, station, body)
            return reply, {"xor": xor}, ()
        raise Refusal("bad_message", f"the relay does not handle {msg.envelope.type}")

    def _check_partner(self, station: str, partner: str) -> None:
        if partner == station:
            raise Refusal("refused", f"station {station} asked for a relay with itself")
        if partner not in self.stations:
            raise Refusal("refused", f"the satellite shares no key with station {partner!r}")

    def _offer(self, station: str, body: RelayOffer) -> RelayOfferReply:
        self._check_partner(station, body.partner)
        target = offered_peer(station, body.partner)
        fresh = []
        for kid in body.key_ids:
            try:
                info = self.store.info(kid)
            except KeyNotAvailable:
                raise Refusal("refused", f"key block {kid} is unknown to the satellite") from None
            if info.peer == target and info.state == BlockState.available:
                continue  # offered before (a repeated offer)
            if info.peer != station or info.state != BlockState.available:
                raise Refusal("refused", f"key block {kid} is not an available block of the "
                                         f"key shared with {station}")
            fresh.append(kid)
        if fresh:
            try:
                self.store.reassign(fresh, from_peer=station, to_peer=target)
            except KeyStoreError as exc:
                raise Refusal("refused", f"offer refused: {exc}") from None
        total = self.store.level(target).available_blocks
        log.info("relay: %s offered %d blocks for %s (%d new; %d on offer)", station,
                 len(body.key_ids), body.partner, len(fresh), total)
        return RelayOfferReply(partner=body.partner, accepted_blocks=len(body.key_ids),
                               offered_total_blocks=total)

    def _relay(self, station: str, body: RelayRequest) -> tuple[RelayAnnouncement, bytes]:
        self._check_partner(station, body.partner)
        cached = self._answers.get((station, body.request_id))
        if cached is not None:
            if cached[0].partner != body.partner:
                raise Refusal("refused", f"request {body.request_id} was for another partner")
            return cached
        source = offered_peer(body.partner, station)
        n = min(body.max_blocks, self.store.level(source).available_blocks,
                self.store.level(station).available_blocks)
        if n == 0:
            raise Refusal("refused", f"no key to relay from {body.partner} to {station}: "
                          f"{self.store.level(source).available_blocks} blocks offered by "
                          f"{body.partner}, {self.store.level(station).available_blocks} shared "
                          f"with {station}")
        try:
            a_blocks, b_blocks = self.store.take_many(
                [(source, n), (station, n)], purpose=f"relay:{body.partner}>{station}")
        except KeyStoreError as exc:
            raise Refusal("refused", f"relay refused: {exc}") from None
        sizes = {b.size_bits for b in a_blocks} | {b.size_bits for b in b_blocks}
        if len(sizes) != 1:
            raise Refusal("internal", "the two links' blocks differ in size")
        a = np.frombuffer(b"".join(b.packed() for b in a_blocks), dtype=np.uint8)
        b = np.frombuffer(b"".join(b.packed() for b in b_blocks), dtype=np.uint8)
        xor = np.bitwise_xor(a, b).tobytes()
        reply = RelayAnnouncement(
            partner=body.partner, request_id=body.request_id, block_bits=sizes.pop(),
            partner_key_ids=[str(x.key_id) for x in a_blocks],
            own_key_ids=[str(x.key_id) for x in b_blocks])
        self._answers[(station, body.request_id)] = (reply, xor)
        while len(self._answers) > self._cache:
            self._answers.popitem(last=False)
        self.relayed_blocks += n
        log.info("relay: announced %d blocks of %s's key to %s (K_A xor K_B; both erased here)",
                 n, body.partner, station)
        return reply, xor

    def install(self, service) -> None:
        """Route the relay's messages to this node in a satellite service.

        Uses the service's ``add_handler`` hook where it has one; otherwise wraps its
        ``handle`` (relay messages have no pass session, so they go first)."""
        add = getattr(service, "add_handler", None)
        if add is not None:
            add(RelayOffer, self.handle)
            add(RelayRequest, self.handle)
            return
        inner = service.handle

        async def handle(station: str, msg: Message) -> Answer:
            if isinstance(msg.body, RelayOffer | RelayRequest):
                return await self.handle(station, msg)
            return await inner(station, msg)

        service.handle = handle
        if getattr(service, "server", None) is not None:
            service.server.handler = handle
