"""Trusted-node relay through the satellite: station B recovers station A's key from
K_A ⊕ K_B announced by the satellite (Liao et al., PRL 120, 030501 (2018); Jinan-1,
Beijing ↔ Stellenbosch). docs/relay.md lists every party, message and what each learns.

- :mod:`.messages`: ``relay_offer`` / ``relay`` on the authenticated classical channel;
- :mod:`.node`: the satellite's side (:class:`RelayNode`, installed in its service);
- :mod:`.ground`: a station's side (:func:`offer` at A, :func:`receive` at B);
- :mod:`.events`: :class:`KeyRelayEvent` per step, to the station's log and transitions.
"""

from postprocessing.relay.events import KeyRelayEvent, RelayEvents
from postprocessing.relay.ground import OfferResult, ReceiveResult, RelayError, offer, receive
from postprocessing.relay.node import RelayNode, offered_peer

__all__ = ["KeyRelayEvent", "OfferResult", "ReceiveResult", "RelayError", "RelayEvents",
           "RelayNode", "offer", "offered_peer", "receive"]
