"""The satellite's secrets stay with the satellite: ground-side modules never import what
was sent (``sent_pulses``, ``pulse_hash``, the simulator's ground truth) and never read
the simulator's seed (the pass header's ``simulator_seed``, the tagger's options, the
satellite's config)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

GROUND_SIDE = [
    "postprocessing/pulses.py",
    "postprocessing/sifting.py",
    "postprocessing/report.py",
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "postprocessing/ground").glob("*.py")),
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "postprocessing/channel").glob("*.py")),
    "station/cli/keys.py",
]
FORBIDDEN_NAMES = {"sent_pulses", "pulse_hash", "hash_basis_bit", "hash_intensity", "simulator_seed",
                   "load_satellite_config", "SatelliteConfig", "SatelliteService"}
FORBIDDEN_MODULES = ("drivers.timetagger.bb84", "drivers.timetagger.sim", "postprocessing.satellite",
                     "station.daemon")


# Functions that run in the satellite's own process (``qkd-station keys satellite``).
SATELLITE_ENTRY_POINTS = {"_satellite", "_serve_satellite"}


def _ground_nodes(tree: ast.AST):  # type: ignore[no-untyped-def]
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in SATELLITE_ENTRY_POINTS:
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


@pytest.mark.parametrize("path", GROUND_SIDE)
def test_ground_side_module_never_touches_the_satellites_secrets(path: str) -> None:
    tree = ast.parse((REPO / path).read_text(), path)
    for node in _ground_nodes(tree):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            assert not mod.startswith(FORBIDDEN_MODULES), f"{path}:{node.lineno} imports {mod}"
            assert not {a.name for a in node.names} & FORBIDDEN_NAMES, f"{path}:{node.lineno}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                assert not a.name.startswith(FORBIDDEN_MODULES), f"{path}:{node.lineno} imports {a.name}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert "simulator_seed" not in node.value, f"{path}:{node.lineno} names simulator_seed"
        elif isinstance(node, ast.Attribute):
            assert node.attr not in ("seed", "simulator_seed", "sent_pulses"), (
                f"{path}:{node.lineno} reads .{node.attr}")


def test_importing_the_ground_pipeline_loads_no_ground_truth() -> None:
    code = ("import sys, postprocessing.ground, postprocessing.ground.live, station.cli.keys;"
            "bad=[m for m in sys.modules if m.startswith(('drivers.timetagger.bb84',"
            "'postprocessing.satellite','drivers.timetagger.sim','station.daemon'))];"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         check=True).stdout.strip()
    assert out == "", f"the ground side loaded {out}"


def test_the_seed_lives_in_the_satellites_config_and_matches_the_simulators() -> None:
    import tomllib

    sat = tomllib.loads((REPO / "config/satellite-sim.toml").read_text())
    sim = tomllib.loads((REPO / "config/sim.toml").read_text())
    assert sat["seed"] == sim["timetagger"]["options"]["seed"] == 2016
    assert "seed" not in sim.get("keys", {}), "the ground's [keys] must not hold the seed"
    assert Path(REPO / "config" / sim["keys"]["satellite_config"]).exists()
