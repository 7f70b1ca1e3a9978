"""The [instruments.*] config sections: backend choice, options checked at load time."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from station.config.instruments import InstrumentsConfig

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_shipped_simulations() -> None:
    cfg = InstrumentsConfig()
    assert cfg.beacon_laser.backend == "sim" and cfg.beacon_laser.enabled
    laser = cfg.beacon_laser.validated_options()
    assert laser.visa_library.endswith("beacon_laser.yaml@sim")
    assert Path(laser.visa_library.removesuffix("@sim")).is_file()
    ref = cfg.time_reference.validated_options()
    assert Path(ref.visa_library.removesuffix("@sim")).is_file()


def test_sim_toml_section_validates() -> None:
    data = tomllib.loads((REPO / "config" / "sim.toml").read_text())
    cfg = InstrumentsConfig(**data["instruments"])
    assert cfg.beacon_laser.validated_options().current_setpoint_mA == 80.0
    assert cfg.time_reference.backend == "sim"


def test_real_instrument_needs_a_resource_name() -> None:
    with pytest.raises(ValidationError, match="resource_name"):
        InstrumentsConfig(beacon_laser={"backend": "visa", "options": {"visa_library": "@py"}})
    cfg = InstrumentsConfig(
        time_reference={
            "backend": "visa",
            "options": {"resource_name": "ASRL/dev/ttyUSB0::INSTR", "visa_library": "@py",
                        "baud_rate": 115200, "read_termination": "\r\n"},
        }
    )
    assert cfg.time_reference.validated_options().baud_rate == 115200


def test_bad_option_is_named() -> None:
    with pytest.raises(ValidationError) as info:
        InstrumentsConfig(beacon_laser={"options": {"max_current_mA": -5}})
    assert "max_current_mA" in str(info.value)
    with pytest.raises(ValidationError, match="unknown beacon_laser backend 'ttl'"):
        InstrumentsConfig(beacon_laser={"backend": "ttl"})
