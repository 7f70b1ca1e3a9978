"""ETSI GS QKD 014 v1.1.1 key delivery over mutual TLS (aiohttp), from a station's key store.

``KmeServer(config)`` serves one :class:`~postprocessing.keystore.KeyStore`; ``load_kme_config``
reads its TOML. The wire format and the rules are in docs/key-delivery.md.
"""

from postprocessing.kme.config import KmeConfig, LinkConfig, SaeConfig, TlsConfig, load_kme_config
from postprocessing.kme.server import KmeServer, build_app, server_ssl_context
from postprocessing.kme.service import DeliveryError, KeyDelivery

__all__ = [
    "DeliveryError",
    "KeyDelivery",
    "KmeConfig",
    "KmeServer",
    "LinkConfig",
    "SaeConfig",
    "TlsConfig",
    "build_app",
    "load_kme_config",
    "server_ssl_context",
]
