"""The Micius pass end to end (config/sim.toml, seed 2016): a real rehearsal's pass file,
the simulated satellite over the authenticated channel, the ground's pipeline.

Published (Liao et al., Nature 549, 43 (2017)): 1,671,072 sifted bits, 300,939 final bits.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO
from tests.postprocessing.conftest import (
    E2E,
    MICIUS,
    STATION,
    Truth,
    ground_settings,
    provision_pools,
    recording_service,
    running_satellite,
    satellite_config,
    station_toml,
    stored_bits,
    truth_key,
)

pytestmark = pytest.mark.slow

LIAO_SIFTED = 1_671_072
LIAO_FINAL = 300_939


def test_both_ends_hold_the_same_key_and_it_is_the_ground_truths(micius_e2e: E2E) -> None:
    e = micius_e2e
    r = e.report
    assert r.outcome == "stored", r.reason
    assert r.verification_passed
    assert e.ground_key.size == r.stored_bits > 0
    assert np.array_equal(e.ground_key, e.satellite_key)
    # What sent_pulses(2016, ·) yields through the pass's own sifting, kept masks and PA.
    assert e.truth_final.size == r.final_bits
    stored = e.truth_final[r.replenished_auth_bits:r.replenished_auth_bits + r.stored_bits]
    assert np.array_equal(stored, e.ground_key)


def test_sifted_bits_within_10_percent_of_liao(micius_e2e: E2E) -> None:
    sifted = micius_e2e.report.sifted_bits
    assert abs(sifted / LIAO_SIFTED - 1) <= 0.10, sifted


def test_final_key_within_15_percent_of_liao(micius_e2e: E2E) -> None:
    final = micius_e2e.report.final_bits
    assert abs(final / LIAO_FINAL - 1) <= 0.15, micius_e2e.report.summary()


def test_the_report_carries_numbers_only(micius_e2e: E2E) -> None:
    r = micius_e2e.report
    text = r.model_dump_json()
    assert r.qber["Z"]["signal"] is not None and 0.005 < r.qber["Z"]["signal"] < 0.02
    assert r.qber["X"]["vacuum"] is not None and r.qber["X"]["vacuum"] > 0.3
    assert r.decoy and all(d.s1_lower > 0 for d in r.decoy)
    assert r.ec.leaked_bits > 0 and r.ec.efficiency_f and r.ec.efficiency_f > 1.0
    assert r.epsilon_sec == 1e-9 and r.epsilon_cor == 1e-15
    bits = "".join(map(str, micius_e2e.ground_key[:64]))
    assert bits not in text


def _tampering_proxy(upstream: str, *, at: int, mode: str):  # type: ignore[no-untyped-def]
    from tests.postprocessing.test_channel import Proxy

    proxy = Proxy(upstream)
    if mode == "flip":
        def tamper(i: int, frames: list[bytes]) -> list[bytes]:
            if i == at:
                data = bytearray(frames[1])
                data[len(data) // 2] ^= 0x04
                return [frames[0], bytes(data), *frames[2:]]
            return frames
    else:  # replay an earlier message in place of message ``at``
        def tamper(i: int, frames: list[bytes]) -> list[bytes]:
            return proxy.up[at - 1] if i == at else frames
    proxy.tamper_up = tamper
    return proxy


@pytest.mark.parametrize("mode", ["flip", "replay"])
async def test_a_tampered_or_replayed_message_discards_the_pass(
        mode: str, micius_pass_file: Path, tmp_path: Path) -> None:
    from postprocessing.ground import PassAborted, distill_pass_file
    from postprocessing.keystore import KeyStore
    from postprocessing.satellite.service import SatelliteService

    sat_pool, ground_pool = provision_pools(tmp_path)
    service = SatelliteService(satellite_config(tmp_path, sat_pool))
    async with running_satellite(service) as endpoint:
        proxy = _tampering_proxy(endpoint, at=4, mode=mode)
        relay = asyncio.create_task(proxy.run())
        settings = ground_settings(tmp_path, ground_pool, proxy.endpoint)
        try:
            with pytest.raises(PassAborted) as err:
                await distill_pass_file(micius_pass_file, settings)
        finally:
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
            proxy.close()
        state = service.pass_state(STATION, MICIUS)
    report = err.value.report
    assert report.outcome == "aborted" and report.final_bits == 0
    assert ("tag does not match" if mode == "flip" else "replay") in report.reason
    assert state is not None and state[0] == "aborted" and "authentication" in state[1]
    # Nothing half-written: no key at either end, no checkpoint (raw bits) left behind.
    with KeyStore(settings.keystore_dir) as store:
        assert not store.has_pass("micius-sim", MICIUS)
    with KeyStore(tmp_path / "sat" / "keys") as store:
        assert not store.has_pass(STATION, MICIUS)
    assert not (settings.work_dir / MICIUS).exists()


async def test_consumer_killed_mid_pass_resumes_to_the_same_key(
        micius_e2e: E2E, micius_pass_file: Path, tmp_path: Path) -> None:
    """``keys distill`` killed with SIGKILL after 15 sifting rounds, then run again: the
    same final key as the run without the kill (the satellite's randomness is drawn from
    its secret and the pass id, so both runs hash with the same seeds)."""
    sat_pool, _ = provision_pools(tmp_path)
    truths: dict[str, Truth] = {}
    service = recording_service(satellite_config(tmp_path, sat_pool), truths)
    async with running_satellite(service) as endpoint:
        toml = station_toml(tmp_path, satellite_endpoint=endpoint)
        state = tmp_path / "state" / "keys"
        state.mkdir(parents=True)
        (tmp_path / "ground" / "pool.json").rename(state / "auth-pool.json")
        cmd = [sys.executable, "-m", "station", "keys", "distill", str(micius_pass_file),
               "--config", str(toml), "--report", str(tmp_path / "report.json")]
        progress = state / "work" / MICIUS / "progress.json"
        first = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if progress.exists() and json.loads(progress.read_text())["chunks"] >= 15:
                break
            await asyncio.sleep(0.05)
        else:
            first.kill()
            pytest.fail("the first run never reached 15 chunks")
        os.kill(first.pid, signal.SIGKILL)
        await first.wait()
        assert progress.exists(), "the checkpoint must survive the kill"
        second = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT)
        out, _ = await second.communicate()
        assert second.returncode == 0, out.decode()[-3000:]
    from postprocessing.report import KeyReport

    report = KeyReport.model_validate_json((tmp_path / "report.json").read_text())
    assert report.outcome == "stored", report.reason
    ground = stored_bits(state / "store", "micius-sim")
    final = truth_key(truths[MICIUS])
    assert np.array_equal(final, micius_e2e.truth_final), "the resumed run's key differs"
    assert report.sifted_bits == micius_e2e.report.sifted_bits  # no loss, no double count
    assert np.array_equal(ground, final[report.replenished_auth_bits:
                                       report.replenished_auth_bits + report.stored_bits])


async def test_live_consumer_killed_mid_pass_resumes_to_the_same_key(
        micius_e2e: E2E, micius_pass_file: Path, tmp_path: Path) -> None:
    """``keys distill --connect`` (live, consuming the station's stream server, which
    serves the recorded pass) killed with SIGKILL after 15 sifting rounds, then run again:
    it catches up from its received file and the stream, and ends with the same key as the
    offline run, with no sifted bit lost or counted twice at either end."""
    from station.events.stream_server import StreamServer
    from tests.conftest import free_port

    server = StreamServer(f"tcp://127.0.0.1:{free_port()}", micius_pass_file.parent)
    server.start()
    sat_pool, _ = provision_pools(tmp_path)
    truths: dict[str, Truth] = {}
    service = recording_service(satellite_config(tmp_path, sat_pool), truths)
    try:
        async with running_satellite(service) as endpoint:
            toml = station_toml(tmp_path, satellite_endpoint=endpoint)
            state = tmp_path / "state" / "keys"
            state.mkdir(parents=True)
            (tmp_path / "ground" / "pool.json").rename(state / "auth-pool.json")
            cmd = [sys.executable, "-m", "station", "keys", "distill", "--connect", server.bound_endpoint,
                   "--pass", MICIUS, "--config", str(toml), "--report", str(tmp_path / "report.json")]
            progress = state / "work" / MICIUS / "progress.json"
            first = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                                                         stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                if progress.exists() and json.loads(progress.read_text())["chunks"] >= 15:
                    break
                if first.returncode is not None:
                    pytest.fail(f"the first live run ended early ({first.returncode})")
                await asyncio.sleep(0.05)
            else:
                first.kill()
                pytest.fail("the first live run never reached 15 chunks")
            os.kill(first.pid, signal.SIGKILL)
            await first.wait()
            killed_at = json.loads(progress.read_text())
            assert killed_at["chunks"] >= 15, "the checkpoint must survive the kill"
            assert (state / "received" / f"{MICIUS}.arrows").exists()
            second = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stdout=subprocess.PIPE,
                                                          stderr=subprocess.STDOUT)
            out, _ = await second.communicate()
            assert second.returncode == 0, out.decode()[-3000:]
    finally:
        server.stop()
    from postprocessing.report import KeyReport

    report = KeyReport.model_validate_json((tmp_path / "report.json").read_text())
    assert report.outcome == "stored", report.reason
    t = truths[MICIUS]
    final = truth_key(t)
    assert np.array_equal(final, micius_e2e.truth_final), "the resumed live run's key differs"
    # No loss, no double count: the same sifted bits as offline, at both ends.
    assert report.sifted_bits == micius_e2e.report.sifted_bits == t.sifted_index.size
    assert report.detections == micius_e2e.report.detections
    ground = stored_bits(state / "store", "micius-sim")
    assert np.array_equal(ground, final[report.replenished_auth_bits:
                                       report.replenished_auth_bits + report.stored_bits])
    assert np.array_equal(ground, stored_bits(tmp_path / "sat" / "keys", STATION))


async def test_consumer_killed_inside_a_cascade_session_resumes_to_the_same_key(
        micius_pass_file: Path, tmp_path: Path) -> None:
    """``keys distill`` killed with SIGKILL in the middle of a Cascade session (its untagged
    messages half exchanged, no closing tag yet), then run again: the resumed ground re-runs
    the session from its first op, the satellite restarts its transcript and answers from
    its replay cache, the closing tags agree, and the key is the ground truth's, stored
    alike at both ends."""
    sat_pool, _ = provision_pools(tmp_path)
    truths: dict[str, Truth] = {}
    service = recording_service(satellite_config(tmp_path, sat_pool), truths)
    async with running_satellite(service) as endpoint:
        toml = station_toml(tmp_path, satellite_endpoint=endpoint)
        toml.write_text(toml.read_text().replace("[keys]\n", "[keys]\ncascade_segment_bits = 200000\n", 1))
        state = tmp_path / "state" / "keys"
        state.mkdir(parents=True)
        (tmp_path / "ground" / "pool.json").rename(state / "auth-pool.json")
        cmd = [sys.executable, "-m", "station", "keys", "distill", str(micius_pass_file),
               "--config", str(toml), "--report", str(tmp_path / "report.json")]
        first = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                                                     stderr=subprocess.DEVNULL)

        def mid_session() -> bool:
            p = service._passes.get((STATION, MICIUS))
            sess = p.ec.get(1) if p is not None else None  # the second session, well under way
            cascade = getattr(sess.reconciler, "cascade", None) if sess is not None else None
            return cascade is not None and cascade.round_trips >= 20 and not cascade.finished

        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not mid_session():
            if first.returncode is not None:
                pytest.fail(f"the first run ended early ({first.returncode})")
            await asyncio.sleep(0.01)
        else:
            if not mid_session():
                first.kill()
                pytest.fail("the first run never reached the middle of session 1")
        os.kill(first.pid, signal.SIGKILL)
        await first.wait()
        interrupted = service._passes[(STATION, MICIUS)].ec[1].reconciler
        assert not interrupted.finished, "the kill came after the session's closing exchange"
        leaked_before = interrupted.leaked_bits
        second = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT)
        out, _ = await second.communicate()
        assert second.returncode == 0, out.decode()[-3000:]
    from postprocessing.report import KeyReport

    report = KeyReport.model_validate_json((tmp_path / "report.json").read_text())
    assert report.outcome == "stored", report.reason
    assert report.ec.sessions >= 7  # 200,000-bit sessions
    assert report.ec.leaked_bits >= leaked_before > 0
    final = truth_key(truths[MICIUS])
    assert report.sifted_bits == truths[MICIUS].sifted_index.size
    ground = stored_bits(state / "store", "micius-sim")
    assert np.array_equal(ground, final[report.replenished_auth_bits:
                                       report.replenished_auth_bits + report.stored_bits])
    assert np.array_equal(ground, stored_bits(tmp_path / "sat" / "keys", STATION))


def test_ldpc_stays_selectable_end_to_end(micius_e2e: E2E, micius_pass_file: Path, tmp_path: Path) -> None:
    """``ec_method = "ldpc"``: the same pass over the same satellite distils by LDPC
    syndromes (more leakage than Cascade, so a shorter key), stored alike at both ends."""
    from postprocessing.ground import distill_pass_file

    sat_pool, ground_pool = provision_pools(tmp_path)
    truths: dict[str, Truth] = {}

    async def run() -> Any:
        service = recording_service(satellite_config(tmp_path, sat_pool), truths)
        async with running_satellite(service) as endpoint:
            return await distill_pass_file(micius_pass_file, ground_settings(tmp_path, ground_pool, endpoint,
                                                                             ec_method="ldpc"))

    report = asyncio.run(run())
    assert report.outcome == "stored", report.reason
    assert report.ec.blocks > report.ec.sessions  # LDPC blocks, not one Cascade block per session
    assert report.ec.leaked_bits > micius_e2e.report.ec.leaked_bits
    ground = stored_bits(tmp_path / "ground" / "keys", "micius-sim")
    assert np.array_equal(ground, stored_bits(tmp_path / "sat" / "keys", STATION))
    final = truth_key(truths[MICIUS])
    assert np.array_equal(ground, final[report.replenished_auth_bits:
                                       report.replenished_auth_bits + report.stored_bits])
