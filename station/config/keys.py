"""``[keys]``: the post-processing core's ground side (docs/postprocessing.md).

Read by ``qkd-station keys distill|list|show`` and, with ``embedded = true``, by the
daemon, which then starts the simulated satellite (``satellite_config``), a
follow-mode distiller and (with ``kme_port``) the station's KME as child processes and
stops them on exit. This section never
holds the satellite's secret: the simulated satellite has its own config file.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from station.config.base import ConfigPath, Strict


class KeysConfig(Strict):
    """Where the ground's keys, authentication pool and working state live, and how the
    pass is distilled."""

    embedded: bool = Field(
        False, description="The daemon starts the simulated satellite and a follow-mode "
        "distiller (`qkd-station keys satellite` / `keys distill --connect`) as children.")
    satellite_config: ConfigPath | None = Field(
        None, description="The simulated satellite's own config (embedded mode).")
    kme_port: int | None = Field(
        None, ge=1, le=65535, description="Embedded mode: also run the station's ETSI 014 KME "
        "(`qkd-station kme`) as a child on 127.0.0.1:<port>, serving the key store, with demo "
        "TLS material made in <state_dir>/<dir>/kme/ at first start; it publishes the key-store "
        "levels on MQTT. Unset: no KME child.")
    satellite: str = Field("micius-sim", pattern=r"^[a-z0-9][a-z0-9._\-]{0,63}$",
                           description="The satellite's name: the peer of the key store.")
    satellite_endpoint: str = Field("tcp://127.0.0.1:5570",
                                    description="The satellite's classical-channel endpoint.")
    dir: str = Field("keys", description="Folder of the key store, auth pool and working "
                     "state, relative to state_dir.")
    auth_pool: str = Field("auth-pool.json", description="The ground's copy of the pre-shared "
                           "authentication pool, relative to `dir`.")
    rep_rate_hz: float = Field(100e6, gt=0, le=1e11, description="The satellite source's pulse rate "
                               "(Micius 100 MHz); the satellite refuses a session that assumes another.")
    sync_rate_hz: float = Field(10e3, gt=0, le=1e9, description="The satellite's sync-pulse rate (Micius 10 kHz).")
    gate_ps: float = Field(1000.0, gt=0, le=1e6, description="Coincidence gate around each pulse (±).")
    chunk_batches: int = Field(50, ge=1, le=100_000, description="Stream batches per sifting round.")
    ec_method: Literal["ldpc", "cascade"] = Field(
        "cascade", description="Error correction: cascade (interactive, f ≈ 1.1) or ldpc "
                               "(syndromes, f ≈ 1.5); the satellite answers either.")
    ec_segment_bits: int = Field(100_000, ge=10_000, le=10_000_000,
                                 description="Sifted bits reconciled per LDPC EC session.")
    cascade_segment_bits: int = Field(1_000_000, ge=10_000, le=10_000_000,
                                      description="Sifted bits reconciled per Cascade EC session.")
    qber_prior: float = Field(0.03, gt=0, lt=0.25, description="QBER assumed for the first EC session.")
    epsilon_sec: float = Field(1e-9, gt=0, lt=1, description="Secrecy parameter (Liao et al. 2017: 1e-9).")
    epsilon_cor: float = Field(1e-15, gt=0, lt=1, description="Correctness parameter.")
    publish_mqtt: bool = Field(True, description="Publish each pass's key report on MQTT.")
