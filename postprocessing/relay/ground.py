"""A ground station's side of the trusted-node relay.

Station A (``offer``): moves blocks of its satellite key aside (peer
``relay-pending:B``), offers them to the satellite for B, and on the satellite's
acceptance makes them the key it shares with B (peer = B's name). Station B (``receive``):
asks for A's key, checks the announcement, and in one key-store transaction consumes its
own blocks named there and deposits ``own ⊕ announced`` for peer A under A's key IDs.
Neither ever logs or returns key bits; results are counts and key IDs.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from uuid import UUID

import numpy as np

from postprocessing.auth import AuthenticationError, KeyPoolError
from postprocessing.channel import ChannelError, SatelliteLink
from postprocessing.keystore import BlockState, KeyBlock, KeyStore, KeyStoreError
from postprocessing.relay.events import RelayEvents
from postprocessing.relay.messages import (
    MAX_RELAY_BLOCKS,
    RELAY_PASS_ID,
    RelayAnnouncement,
    RelayOffer,
    RelayOfferReply,
    RelayRequest,
)

log = logging.getLogger("postprocessing.relay")


class RelayError(Exception):
    """The relay was refused or its announcement did not check out (no key bits inside)."""


@dataclass(frozen=True)
class OfferResult:
    partner: str
    blocks: int
    bits: int
    key_ids: tuple[UUID, ...]


@dataclass(frozen=True)
class ReceiveResult:
    partner: str
    blocks: int
    bits: int
    key_ids: tuple[UUID, ...]
    consumed_own_key_ids: tuple[UUID, ...]


def pending_peer(partner: str) -> str:
    return f"relay-pending:{partner}"


async def offer(link: SatelliteLink, store: KeyStore, *, satellite: str, partner: str,
                blocks: int, events: RelayEvents | None = None) -> OfferResult:
    """Offer ``blocks`` of the key shared with ``satellite`` for a relay to ``partner``.

    ``events`` (optional) gets the steps ``offered``, then ``accepted`` or ``refused``."""
    def refused(reason: str, n: int = 0, bits: int = 0) -> RelayError:
        if events is not None:
            events.emit("refused", role="offering", partner=partner, satellite=satellite,
                        key_ids=n, bits=bits, reason=reason)
        return RelayError(reason)

    if not 1 <= blocks <= MAX_RELAY_BLOCKS:
        raise refused(f"offer of {blocks} blocks: 1..{MAX_RELAY_BLOCKS} per message")
    pending = pending_peer(partner)
    # Blocks set aside before an earlier offer that got no answer are offered again first.
    infos = store.list(pending, state=BlockState.available, limit=blocks)
    more = blocks - len(infos)
    if more:
        avail = store.list(satellite, state=BlockState.available, limit=more)
        if len(avail) < more:
            raise refused(f"{len(avail) + len(infos)} blocks shared with {satellite} "
                          f"available, {blocks} to offer")
        store.reassign([i.key_id for i in avail], from_peer=satellite, to_peer=pending)
        infos += avail
    ids = [i.key_id for i in infos]
    offered_bits = sum(i.size_bits for i in infos)
    if events is not None:
        events.emit("offered", role="offering", partner=partner, satellite=satellite,
                    key_ids=len(ids), bits=offered_bits)
    try:
        reply = await link.request(RELAY_PASS_ID, RelayOffer(partner=partner,
                                                             key_ids=[str(k) for k in ids]))
    except (ChannelError, AuthenticationError, KeyPoolError) as exc:
        # Authenticated refusals give the blocks back; silence leaves them pending (the
        # satellite may have taken the offer) for the next offer to repeat.
        if getattr(exc, "authenticated", False):
            store.reassign(ids, from_peer=pending, to_peer=satellite)
        raise refused(f"relay offer to {partner} failed: {exc}", len(ids), offered_bits) from None
    body = reply.body
    if not isinstance(body, RelayOfferReply) or body.partner != partner \
            or body.accepted_blocks != len(ids):
        raise refused("the satellite's offer reply does not match the offer", len(ids),
                      offered_bits)
    moved = store.reassign(ids, from_peer=pending, to_peer=partner)
    bits = sum(i.size_bits for i in moved)
    log.info("relay: offered %d blocks (%d bits) of the %s key for %s; now the key shared "
             "with %s: %s", len(ids), bits, satellite, partner, partner,
             ",".join(str(k) for k in ids[:4]) + (",..." if len(ids) > 4 else ""))
    if events is not None:
        events.emit("accepted", role="offering", partner=partner, satellite=satellite,
                    key_ids=len(ids), bits=bits)
    return OfferResult(partner, len(ids), bits, tuple(ids))


async def receive(link: SatelliteLink, store: KeyStore, *, satellite: str, partner: str,
                  max_blocks: int = MAX_RELAY_BLOCKS, request_id: UUID | None = None,
                  events: RelayEvents | None = None) -> ReceiveResult:
    """Ask the satellite for ``partner``'s key and store it for peer ``partner``.

    ``events`` (optional) gets ``requested``, ``announced``, then ``recovered`` or
    ``refused``."""
    rid = str(request_id or uuid.uuid4())

    def emit(step, **numbers) -> None:  # type: ignore[no-untyped-def]
        if events is not None:
            events.emit(step, role="receiving", partner=partner, satellite=satellite,
                        request_id=rid, **numbers)

    req = RelayRequest(partner=partner, max_blocks=max_blocks, request_id=rid)
    emit("requested")
    try:
        reply = await link.request(RELAY_PASS_ID, req)
    except (ChannelError, AuthenticationError, KeyPoolError) as exc:
        emit("refused", reason=f"relay from {partner} refused: {exc}")
        raise RelayError(f"relay from {partner} refused: {exc}") from None
    ann = reply.body
    if not isinstance(ann, RelayAnnouncement):
        emit("refused", reason=f"the relay was answered by {type(ann).__name__}")
        raise RelayError(f"the relay was answered by {type(ann).__name__}")
    n = len(ann.partner_key_ids)
    emit("announced", key_ids=n, bits=n * ann.block_bits)
    try:
        result = _recover(store, ann, reply.message.frames["xor"], satellite=satellite,
                          partner=partner, request_id=rid, max_blocks=max_blocks)
    except RelayError as exc:
        emit("refused", key_ids=n, bits=n * ann.block_bits, reason=str(exc))
        raise
    emit("recovered", key_ids=result.blocks, bits=result.bits)
    return result


def _recover(store: KeyStore, ann: RelayAnnouncement, xor: bytes, *, satellite: str,
             partner: str, request_id: str, max_blocks: int) -> ReceiveResult:
    n = len(ann.partner_key_ids)
    if ann.partner != partner or ann.request_id != request_id:
        raise RelayError("the announcement is for another partner or request")
    if n == 0 or n != len(ann.own_key_ids) or n > max_blocks:
        raise RelayError(f"the announcement names {n} partner and {len(ann.own_key_ids)} own "
                         f"blocks (asked at most {max_blocks})")
    step = ann.block_bits // 8
    if len(xor) != n * step:
        raise RelayError(f"the xor frame has {len(xor)} bytes for {n} blocks of "
                         f"{ann.block_bits} bits")
    pad = np.frombuffer(xor, dtype=np.uint8)

    def recover(own: list[KeyBlock]) -> np.ndarray:
        if any(b.size_bits != ann.block_bits for b in own):
            raise RelayError("own blocks named in the announcement differ in size from it")
        mine = np.frombuffer(b"".join(b.packed() for b in own), dtype=np.uint8)
        return np.unpackbits(np.bitwise_xor(mine, pad))

    partner_ids = [UUID(k) for k in ann.partner_key_ids]
    try:
        infos = store.convert(
            ann.own_key_ids, peer=satellite, purpose=f"relay-pad:{partner}", transform=recover,
            to_peer=partner, pass_id=f"relay-{request_id}", new_key_ids=partner_ids)
    except KeyStoreError as exc:
        raise RelayError(f"the relayed key could not be stored: {exc}") from None
    bits = sum(i.size_bits for i in infos)
    log.info("relay: received %d blocks (%d bits) of %s's key, stored for peer %s under its "
             "key IDs %s", n, bits, partner, partner,
             ",".join(str(k) for k in partner_ids[:4]) + (",..." if n > 4 else ""))
    return ReceiveResult(partner, n, bits, tuple(partner_ids),
                         tuple(UUID(k) for k in ann.own_key_ids))


__all__ = ["OfferResult", "ReceiveResult", "RelayError", "offer", "pending_peer", "receive"]
