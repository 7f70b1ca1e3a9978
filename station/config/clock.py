"""Which clock the station runs on."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, Field, model_validator

from station.config.base import Strict


class ClockConfig(Strict):
    """Real UTC, or a simulated clock for rehearsals, demos and CI."""

    mode: Literal["real", "simulated"] = Field("real", description="'real' or 'simulated'.")
    start: AwareDatetime | None = Field(
        None, description="Simulated clock start, ISO 8601 UTC (required when simulated)."
    )
    speed: float | Literal["max"] = Field(
        1.0,
        description="Simulated seconds per wall second, or 'max' to jump whenever idle.",
    )

    @model_validator(mode="after")
    def _check(self) -> ClockConfig:
        if self.mode == "simulated" and self.start is None:
            raise ValueError("a simulated clock needs 'start', e.g. start = \"2016-12-19T16:40:00Z\"")
        if isinstance(self.speed, float) and not (0 < self.speed <= 1e6):
            raise ValueError(f"speed must be in (0, 1e6] or 'max', got {self.speed}")
        return self

    @property
    def speed_factor(self) -> float:
        return math.inf if self.speed == "max" else float(self.speed)

    def start_or(self, default: datetime) -> datetime:
        return self.start or default
