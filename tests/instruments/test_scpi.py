"""SCPI reply parsing and the error-code to exception mapping (pure functions)."""

from __future__ import annotations

import pytest

from drivers.errors import LimitError
from drivers.instruments.base import (
    ErrorEntry,
    ScpiCommandError,
    ScpiDataOutOfRange,
    ScpiDeviceError,
    ScpiExecutionError,
    ScpiQueryError,
    ScpiSettingsConflict,
    error_class,
    parse_bool,
    parse_error_entry,
    parse_float,
)


@pytest.mark.parametrize(
    ("reply", "entry"),
    [
        ('+0,"No error"', ErrorEntry(0, "No error")),
        ('-222,"Data out of range"', ErrorEntry(-222, "Data out of range")),
        ("0, No Error", ErrorEntry(0, "No Error")),
        ('-300,"Device-specific error; TEC fault"', ErrorEntry(-300, "Device-specific error; TEC fault")),
        ("  -113 ,  \"Undefined header\"  ", ErrorEntry(-113, "Undefined header")),
        ("0", ErrorEntry(0, "")),
        ('12,"Laser diode open circuit"', ErrorEntry(12, "Laser diode open circuit")),
    ],
)
def test_parse_error_entry(reply: str, entry: ErrorEntry) -> None:
    assert parse_error_entry(reply) == entry


@pytest.mark.parametrize("reply", ["", "No error", "ERROR", ",x"])
def test_parse_error_entry_rejects_garbage(reply: str) -> None:
    with pytest.raises(ValueError, match="not a SCPI error-queue entry"):
        parse_error_entry(reply)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (-100, ScpiCommandError), (-113, ScpiCommandError), (-199, ScpiCommandError),
        (-200, ScpiExecutionError), (-221, ScpiSettingsConflict), (-222, ScpiDataOutOfRange),
        (-230, ScpiExecutionError), (-300, ScpiDeviceError), (-350, ScpiDeviceError),
        (-410, ScpiQueryError), (7, ScpiDeviceError),
    ],
)
def test_error_class(code: int, cls: type) -> None:
    assert error_class(code) is cls


def test_out_of_range_is_a_limit_error() -> None:
    assert issubclass(ScpiDataOutOfRange, LimitError)
    assert issubclass(ScpiSettingsConflict, ScpiExecutionError)


@pytest.mark.parametrize(
    ("reply", "value"),
    [("1", True), ("0", False), ("ON", True), ("off", False), ("+1\r", True), (" 0 ", False)],
)
def test_parse_bool(reply: str, value: bool) -> None:
    assert parse_bool(reply) is value


def test_parse_bool_rejects_other_words() -> None:
    with pytest.raises(ValueError, match="not a SCPI boolean"):
        parse_bool("2")


def test_parse_float_maps_scpi_nan_to_none() -> None:
    assert parse_float("+2.1E-09") == pytest.approx(2.1e-9)
    assert parse_float("-1.5") == -1.5
    assert parse_float("+9.91E+37") is None
    assert parse_float("-9.91E37") is None
    assert parse_float("nan") is None
