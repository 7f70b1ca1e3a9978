"""The simulated satellite's own configuration (``config/satellite-sim.toml``).

It holds the satellite's secret — the simulator's seed, from which it knows what it sent —
and nothing the ground side reads. Paths are relative to the config file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from postprocessing.channel.messages import NAME_PATTERN
from postprocessing.estimation import SecurityParameters


class StationLink(BaseModel):
    """One ground station the satellite serves: its name and the satellite's copy of the
    pre-shared authentication pool."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    auth_pool: Path = Field(description="The satellite's pool file for this station.")


class SourceConfig(BaseModel):
    """What the satellite's source sends (the Micius defaults, Liao et al. 2017)."""

    model_config = ConfigDict(extra="forbid")

    rep_rate_hz: float = Field(100e6, gt=0)
    sync_rate_hz: float = Field(10e3, gt=0)
    mu_probs: tuple[float, float, float] = (0.5, 0.25, 0.25)


class SatelliteConfig(BaseModel):
    """``[satellite]``-level settings of the simulated satellite (Alice)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("micius-sim", pattern=NAME_PATTERN)
    seed: int = Field(ge=0, lt=2**63, repr=False,
                      description="The simulator's seed: what was sent is sent_pulses(seed, n). Secret.")
    endpoint: str = Field("tcp://127.0.0.1:5570", description="ZeroMQ endpoint the satellite binds.")
    state_dir: Path = Field(Path("satellite"), description="Key store and working state.")
    deterministic_randomness: bool = Field(
        True, description="Draw the protocol's random seeds (PA, verification, punctured fill) "
                          "from the secret seed and the pass id, so a simulated pass gives the "
                          "same key every time; false: from the OS entropy pool (a real satellite "
                          "uses its QRNG).")
    source: SourceConfig = SourceConfig()
    security: SecurityParameters = SecurityParameters()
    stations: list[StationLink] = Field(default_factory=list)

    @field_validator("stations")
    @classmethod
    def _unique(cls, v: list[StationLink]) -> list[StationLink]:
        names = [s.name for s in v]
        if len(set(names)) != len(names):
            raise ValueError(f"a station is listed twice: {names}")
        return v

    def __repr__(self) -> str:  # the seed is the satellite's secret
        return f"SatelliteConfig(name={self.name!r}, endpoint={self.endpoint!r}, stations={len(self.stations)})"

    __str__ = __repr__

    @property
    def keystore_dir(self) -> Path:
        return self.state_dir / "keys"


def load_satellite_config(path: Path | str) -> SatelliteConfig:
    """Read and validate the satellite's TOML; relative paths resolve against its folder."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the satellite config: {exc}") from exc
    base = path.resolve().parent
    try:
        cfg = SatelliteConfig.model_validate(data)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: {errs}") from None
    cfg.state_dir = cfg.state_dir if cfg.state_dir.is_absolute() else base / cfg.state_dir
    for s in cfg.stations:
        s.auth_pool = s.auth_pool if s.auth_pool.is_absolute() else base / s.auth_pool
    return cfg


__all__ = ["SatelliteConfig", "SourceConfig", "StationLink", "load_satellite_config"]
