"""Auxiliary VISA instruments: the beacon laser and the time reference. (Owned by the
instruments work.)

Each is a backend choice like the mount: ``backend = "sim"`` opens the pyvisa-sim devices
shipped in ``drivers/instruments/*.yaml``; ``backend = "visa"`` needs
``options.resource_name`` (and usually ``options.visa_library``). The options are the
backend's ``Options`` model (see docs/instruments.md).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from station.config.base import BackendConfig, Strict


class BeaconLaserConfig(BackendConfig):
    """The beacon laser's diode controller."""

    kind: ClassVar[str] = "beacon_laser"
    enabled: bool = Field(
        True, description="False for a station without a beacon: no driver, no readiness check."
    )


class TimeReferenceConfig(BackendConfig):
    """The GPS-disciplined oscillator feeding the time tagger."""

    kind: ClassVar[str] = "time_reference"
    enabled: bool = Field(
        True,
        description="False for a station without a queryable time reference: no driver, "
        "no readiness check.",
    )


class InstrumentsConfig(Strict):
    """Beacon laser and time reference."""

    beacon_laser: BeaconLaserConfig = Field(
        default_factory=BeaconLaserConfig, description="The beacon laser (backend 'sim' or 'visa')."
    )
    time_reference: TimeReferenceConfig = Field(
        default_factory=TimeReferenceConfig,
        description="The time reference (backend 'sim' or 'visa').",
    )
