"""docs/mount-backends.md lists every option of every mount backend with its default and
description, exactly as the options models define them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from drivers.mount.gs232 import Gs232Mount
from drivers.mount.indi import IndiMount
from drivers.mount.rotctld import RotctldMount
from drivers.mount.sim import SimMount

DOC = Path(__file__).resolve().parents[2] / "docs" / "mount-backends.md"
BACKENDS = {"sim": SimMount, "rotctld": RotctldMount, "indi": IndiMount, "gs232": Gs232Mount}


def _shown(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value) if value == int(value) else format(value, ".6g")
    return str(value)


def _table(backend: str) -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    section = re.search(rf"^## `{backend}`.*?(?=^## )", text, re.S | re.M)
    assert section, f"no section for {backend}"
    lines = section.group(0).splitlines()
    start = lines.index("| option | default | meaning |") + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("| `"):
            break
        rows.append(line)
    return rows


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_option_is_documented_as_defined(backend):
    options = BACKENDS[backend].Options
    expected = [f"| `{name}` | `{_shown(f.default)}` | {f.description} |"
                for name, f in options.model_fields.items()]
    assert _table(backend) == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_capabilities_follow_the_axis_options(backend):
    options = BACKENDS[backend].Options()
    if backend == "rotctld":  # travel comes from dump_caps unless given
        options = BACKENDS[backend].Options(az_min_deg=-180.0, az_max_deg=180.0, el_min_deg=0.0, el_max_deg=90.0)
    caps = options.capabilities(encoder_resolution_deg=0.5)
    assert (caps.az.min_deg, caps.az.max_deg) == (options.az_min_deg, options.az_max_deg)
    assert (caps.el.min_deg, caps.el.max_deg) == (options.el_min_deg, options.el_max_deg)
    assert caps.az.max_rate_deg_s == options.az_max_rate_deg_s
    assert caps.el.max_accel_deg_s2 == options.el_max_accel_deg_s2
    assert (caps.park_az_deg, caps.park_el_deg) == (options.park_az_deg, options.park_el_deg)
    assert caps.command_latency_s == options.command_latency_s
    assert caps.el_over_zenith == (options.el_max_deg > 90.0)
    assert caps.encoder_resolution_deg == 0.5 and not caps.program_track
