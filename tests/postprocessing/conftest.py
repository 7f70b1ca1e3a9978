"""Fixtures of the post-processing tests: the Micius pass recorded once per session by a
real rehearsal (config/sim.toml, seed 2016, max speed), the simulated satellite on a free
loopback port, provisioned authentication pools, and ground settings in a tmp dir."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO, free_port

SIM = REPO / "config" / "sim.toml"
MICIUS = "41731-20161219T164844Z"
STATION = "xinglong-sim"


def station_toml(tmp: Path, *, satellite_endpoint: str, satellite_config: Path | None = None) -> Path:
    """config/sim.toml for a test: its own state dir, ports, and the test's satellite."""
    text = SIM.read_text()
    text = re.sub(r'^state_dir = .*$', f'state_dir = "{tmp / "state"}"', text, flags=re.M)
    text = re.sub(r'^port = 18830', f"port = {free_port()}", text, flags=re.M)
    text = re.sub(r'^embedded = true\ntopic_root', 'embedded = false\ntopic_root', text, flags=re.M)
    text = text.replace('element_sources = ["elements"]', f'element_sources = ["{REPO / "config/elements"}"]')
    text = text.replace("tcp://127.0.0.1:5560", f"tcp://127.0.0.1:{free_port()}")
    text = re.sub(r'^embedded = true\nsatellite_config = .*$',
                  f'embedded = false\nsatellite_config = "{satellite_config or REPO / "config/satellite-sim.toml"}"\n'
                  "publish_mqtt = false", text, flags=re.M)
    text = text.replace('satellite_endpoint = "tcp://127.0.0.1:5570"', f'satellite_endpoint = "{satellite_endpoint}"')
    path = tmp / "station.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def micius_pass_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Micius pass of 2016-12-19, recorded by a rehearsal at max speed (~20 s)."""
    from station.cli.rehearse import rehearse
    from station.config import load_config

    tmp = tmp_path_factory.mktemp("micius-rehearsal")
    cfg = load_config(station_toml(tmp, satellite_endpoint="tcp://127.0.0.1:1"))
    report = asyncio.run(rehearse(cfg, pass_id=None, speed=float("inf"), measure_qber=False))
    assert report is not None and report.pass_file, "the rehearsal recorded no pass file"
    return Path(report.pass_file)


def provision_pools(tmp: Path, bits: int = 256 + 256 * 1024, seed: int = 7) -> tuple[Path, Path]:
    """Both copies of one pre-shared pool: (satellite's, ground's)."""
    from postprocessing.auth import KeyPool

    raw = np.random.default_rng(seed).integers(0, 2, bits, dtype=np.uint8)
    sat, ground = tmp / "sat" / "pool.json", tmp / "ground" / "pool.json"
    for p in (sat, ground):
        p.parent.mkdir(parents=True, exist_ok=True)
        KeyPool.create(p, raw).close()
    return sat, ground


def satellite_config(tmp: Path, sat_pool: Path, **overrides: Any):  # type: ignore[no-untyped-def]
    from postprocessing.satellite.config import SatelliteConfig, StationLink

    return SatelliteConfig(seed=2016, endpoint=f"tcp://127.0.0.1:{free_port()}", state_dir=tmp / "sat",
                           stations=[StationLink(name=STATION, auth_pool=sat_pool)], **overrides)


def ground_settings(tmp: Path, ground_pool: Path, endpoint: str, **overrides: Any):  # type: ignore[no-untyped-def]
    from postprocessing.ground import GroundSettings

    return GroundSettings(station=STATION, satellite_endpoint=endpoint, auth_pool=ground_pool,
                          keystore_dir=tmp / "ground" / "keys", work_dir=tmp / "ground" / "work",
                          timeout_s=120.0, **overrides)


@contextlib.asynccontextmanager
async def running_satellite(service: Any) -> AsyncIterator[str]:
    """Serve ``service`` (a SatelliteService) in this loop; yields its endpoint."""
    endpoint = service.bind()
    stop = asyncio.Event()
    task = asyncio.create_task(service.serve(stop))
    try:
        yield endpoint
    finally:
        stop.set()
        await task
        service.close()


def stored_bits(store_dir: Path, peer: str) -> np.ndarray:
    """Every key bit a store holds for ``peer``, in block order (consumes them)."""
    from postprocessing.keystore import KeyStore

    with KeyStore(store_dir) as store:
        level = store.level(peer)
        blocks = store.take(peer, level.available_blocks, purpose="test") if level.available_blocks else []
    return np.concatenate([b.bits() for b in blocks]) if blocks else np.zeros(0, np.uint8)


@dataclass
class Truth:
    """What the satellite's ground truth yields through the pass's own operations."""

    sifted_index: np.ndarray
    sessions: list[tuple[int, int, np.ndarray]]
    pa_seed: np.ndarray
    key_length_bits: int
    replenish_bits: int


def recording_service(cfg: Any, truths: dict[str, Truth]):  # type: ignore[no-untyped-def]
    """A SatelliteService that also records, at finalize, what the test needs to recompute
    the key from the ground truth: the sifted pulses, the kept masks, the PA seed."""
    from postprocessing.bits import unpack_bits
    from postprocessing.satellite.service import SatelliteService

    class Recording(SatelliteService):
        def _finalize(self, p, body):  # type: ignore[no-untyped-def]
            idx = p.index().copy()
            sessions = [(s.offset_bits, s.length_bits, s.reconciler.kept_mask().copy())
                        for s in sorted(p.ec.values(), key=lambda s: s.offset_bits)]
            reply, frames = super()._finalize(p, body)
            truths[p.pass_id] = Truth(idx, sessions, unpack_bits(frames["pa_seed"], reply.pa_seed_bits),
                                      reply.key_length_bits, reply.replenish_bits)
            return reply, frames

    return Recording(cfg)


def truth_key(t: Truth, seed: int = 2016) -> np.ndarray:
    from drivers.timetagger.bb84 import sent_pulses
    from postprocessing.amplification import toeplitz_hash

    _, bits, _ = sent_pulses(seed, t.sifted_index)
    kept = np.concatenate([bits[o:o + n][m] for o, n, m in t.sessions])
    return toeplitz_hash(kept, t.pa_seed, t.key_length_bits)


@dataclass
class E2E:
    report: Any
    ground_key: np.ndarray
    satellite_key: np.ndarray
    truth_final: np.ndarray
    truth: Truth


@pytest.fixture(scope="session")
def micius_e2e(micius_pass_file: Path, tmp_path_factory: pytest.TempPathFactory) -> E2E:
    """The Micius pass distilled once, offline, against the simulated satellite."""
    from postprocessing.ground import distill_pass_file

    tmp = tmp_path_factory.mktemp("micius-e2e")
    sat_pool, ground_pool = provision_pools(tmp)
    truths: dict[str, Truth] = {}

    async def run() -> Any:
        service = recording_service(satellite_config(tmp, sat_pool), truths)
        async with running_satellite(service) as endpoint:
            return await distill_pass_file(micius_pass_file, ground_settings(tmp, ground_pool, endpoint))

    report = asyncio.run(run())
    t = truths[MICIUS]
    return E2E(report, stored_bits(tmp / "ground" / "keys", "micius-sim"),
               stored_bits(tmp / "sat" / "keys", STATION), truth_key(t), t)
