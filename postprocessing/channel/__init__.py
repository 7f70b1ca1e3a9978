"""The authenticated classical channel between a ground station and the satellite.

ZeroMQ multipart messages (JSON envelope, binary frames, Wegman–Carter tag), specified in
docs/classical-channel.md. :class:`SatelliteLink` is the ground's side (DEALER),
:class:`ChannelServer` the satellite's (ROUTER); :mod:`.messages` holds every message
model, :mod:`.framing` the framing, limits and authentication.
"""

from postprocessing.channel.framing import ChannelError, Message, dump_model, lower_bytes
from postprocessing.channel.link import ChannelServer, PeerRefused, Refusal, Reply, SatelliteLink

__all__ = [
    "ChannelError",
    "ChannelServer",
    "Message",
    "PeerRefused",
    "Refusal",
    "Reply",
    "SatelliteLink",
    "dump_model",
    "lower_bytes",
]
