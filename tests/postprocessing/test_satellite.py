"""The simulated satellite's rules, over the real channel: what it answers from its ground
truth, and what a confused or hostile ground station cannot make it do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from drivers.timetagger.bb84 import sent_pulses
from postprocessing.auth import Direction, KeyPool
from postprocessing.channel import PeerRefused, SatelliteLink
from postprocessing.channel.messages import (
    Counters,
    EcOp,
    Finalize,
    Hello,
    HelloReply,
    Sift,
    SiftReply,
)
from postprocessing.satellite.service import SatelliteService
from tests.postprocessing.conftest import (
    STATION,
    provision_pools,
    running_satellite,
    satellite_config,
)

PASS = "41731-20161219T164844Z"


def _hello(pool: KeyPool, **kw: float) -> Hello:
    return Hello(rep_rate_hz=kw.get("rep", 100e6), sync_rate_hz=10e3,
                 counters=Counters(ground_to_satellite=pool.next_counter(Direction.GROUND_TO_SATELLITE),
                                   satellite_to_ground=pool.next_counter(Direction.SATELLITE_TO_GROUND)))


def _sift(idx: np.ndarray, basis: np.ndarray, chunk: int) -> tuple[Sift, dict[str, bytes]]:
    return (Sift(chunk=chunk, first_batch=0, last_batch=0, detections=int(idx.size)),
            {"pulse_index": idx.astype("<i8").tobytes(), "basis": np.packbits(basis).tobytes()})


async def test_sifting_answers_are_the_ground_truth_and_repeats_are_not_counted(tmp_path: Path) -> None:
    sat_pool, ground_pool = provision_pools(tmp_path)
    service = SatelliteService(satellite_config(tmp_path, sat_pool))
    async with running_satellite(service) as ep:
        with KeyPool(ground_pool) as pool:
            link = SatelliteLink(ep, station=STATION, pool=pool, timeout_s=30)
            try:
                with pytest.raises(PeerRefused, match=r"assumes 6.25e\+08 Hz pulses"):
                    await link.request(PASS, _hello(pool, rep=625e6))
                hello = (await link.request(PASS, _hello(pool))).body
                assert isinstance(hello, HelloReply) and hello.state == "new"
                idx = np.arange(10**17, 10**17 + 5000 * 37, 37, dtype=np.int64)
                basis = np.random.default_rng(1).integers(0, 2, idx.size).astype(np.uint8)
                reply = await link.request(PASS, *_sift(idx, basis, 0))
                assert isinstance(reply.body, SiftReply)
                truth_basis, _, truth_class = sent_pulses(2016, idx)
                got = np.unpackbits(np.frombuffer(reply.message.frames["basis"], np.uint8))[:idx.size]
                assert np.array_equal(got, truth_basis)
                assert reply.message.frames["intensity_class"] == truth_class.tobytes()
                sifted = reply.body.sifted_bits_total
                assert sifted == int((truth_basis == basis).sum())
                again = await link.request(PASS, *_sift(idx, basis, 0))  # a resumed ground
                assert again.body.sifted_bits_total == sifted
                with pytest.raises(PeerRefused, match="announced before with other detections"):
                    await link.request(PASS, *_sift(idx + 1, basis, 0))
            finally:
                link.close()
        # A refusal is the ground's to act on (it aborts the pass); the satellite's state holds.
        assert service.pass_state(STATION, PASS) == ("open", "")


@pytest.mark.parametrize("bad, match", [
    ("gap", "expected chunk 1"),
    ("backwards", "not after the last announced pulse"),
    ("ec_out_of_range", "tile the sifted key"),
    ("ec_session_skip", "expected 0"),
    ("finalize_early", "before every sifted bit was reconciled"),
])
async def test_requests_out_of_order_are_refused(tmp_path: Path, bad: str, match: str) -> None:
    sat_pool, ground_pool = provision_pools(tmp_path)
    service = SatelliteService(satellite_config(tmp_path, sat_pool))
    async with running_satellite(service) as ep:
        with KeyPool(ground_pool) as pool:
            link = SatelliteLink(ep, station=STATION, pool=pool, timeout_s=30)
            try:
                await link.request(PASS, _hello(pool))
                idx = np.arange(1000, 1000 + 400 * 10, 10, dtype=np.int64)
                await link.request(PASS, *_sift(idx, np.zeros(idx.size, np.uint8), 0))
                with pytest.raises(PeerRefused, match=match):
                    if bad == "gap":
                        await link.request(PASS, *_sift(idx + 10**6, np.zeros(idx.size, np.uint8), 2))
                    elif bad == "backwards":
                        await link.request(PASS, *_sift(idx, np.zeros(idx.size, np.uint8), 1))
                    elif bad == "ec_out_of_range":
                        await link.request(PASS, EcOp(session=0, offset_bits=0, length_bits=10**6,
                                                      op="syndromes", request={}))
                    elif bad == "ec_session_skip":
                        await link.request(PASS, EcOp(session=3, offset_bits=0, length_bits=10,
                                                      op="syndromes", request={}))
                    else:
                        z = {"signal": {"sifted_bits": 0, "errors": 0}, "decoy": {"sifted_bits": 0, "errors": 0},
                             "vacuum": {"sifted_bits": 0, "errors": 0}}
                        await link.request(PASS, Finalize.model_validate(
                            {"chunks": 1, "sifted_bits": 1, "kept_bits": 0, "ec_sessions": 0,
                             "leaked_ec_bits": 0, "counts_z": z, "counts_x": z}))
            finally:
                link.close()


@pytest.mark.parametrize("case, match", [
    ("cascade_without_vacuum", "must open with 'cascade_vacuum'"),
    ("ldpc_op_in_cascade_session", "reconciles by cascade"),
    ("ldpc_session_in_cascade_pass", "one method per pass"),
    ("vacuum_count", "vacuum-class bits"),
])
async def test_both_ends_must_agree_on_the_ec_method(tmp_path: Path, case: str, match: str) -> None:
    sat_pool, ground_pool = provision_pools(tmp_path)
    service = SatelliteService(satellite_config(tmp_path, sat_pool))
    async with running_satellite(service) as ep:
        with KeyPool(ground_pool) as pool:
            link = SatelliteLink(ep, station=STATION, pool=pool, timeout_s=30)
            try:
                await link.request(PASS, _hello(pool))
                idx = np.arange(1000, 1000 + 400 * 10, 10, dtype=np.int64)
                reply = await link.request(PASS, *_sift(idx, np.zeros(idx.size, np.uint8), 0))
                assert isinstance(reply.body, SiftReply)
                n = reply.body.sifted_bits_total
                half = n // 2

                def op(session: int, lo: int, hi: int, name: str, request: dict) -> EcOp:  # type: ignore[type-arg]
                    return EcOp(session=session, offset_bits=lo, length_bits=hi - lo, op=name,  # type: ignore[arg-type]
                                request=request)

                with pytest.raises(PeerRefused, match=match):
                    if case == "cascade_without_vacuum":
                        await link.request(PASS, op(0, 0, n, "cascade_setup",
                                                    {"key_bits": n, "block_sizes": [4]}))
                    elif case == "vacuum_count":
                        await link.request(PASS, op(0, 0, n, "cascade_vacuum", {"vacuum_bits": n + 1}))
                    else:
                        # the satellite's vacuum-class bits of [0, half), from the ground truth
                        basis, _, klass = sent_pulses(service.cfg.seed, idx, tuple(service.cfg.source.mu_probs))
                        vacuum = int((klass[basis == 0][:half] == 2).sum())
                        await link.request(PASS, op(0, 0, half, "cascade_vacuum", {"vacuum_bits": vacuum}))
                        if case == "ldpc_op_in_cascade_session":
                            await link.request(PASS, op(0, 0, half, "syndromes", {}))
                        else:
                            await link.request(PASS, op(1, half, n, "syndromes", {}))
            finally:
                link.close()


async def test_a_restarted_satellite_refuses_an_interrupted_pass_cleanly(tmp_path: Path) -> None:
    """The satellite keeps a pass's session in memory; restarted mid-pass it has lost what
    it disclosed, so it must neither continue nor start the pass over: its journal (0600,
    no bits) makes it answer the ground's hello with the pass aborted and why."""
    import os
    import stat

    sat_pool, ground_pool = provision_pools(tmp_path)
    cfg = satellite_config(tmp_path, sat_pool)
    idx = np.arange(1000, 1000 + 400 * 10, 10, dtype=np.int64)
    async with running_satellite(SatelliteService(cfg)) as ep:
        with KeyPool(ground_pool) as pool:
            link = SatelliteLink(ep, station=STATION, pool=pool, timeout_s=30)
            try:
                assert (await link.request(PASS, _hello(pool))).body.state == "new"
                await link.request(PASS, *_sift(idx, np.zeros(idx.size, np.uint8), 0))
            finally:
                link.close()
    journal = tmp_path / "sat" / "passes" / STATION / f"{PASS}.json"
    assert stat.S_IMODE(os.stat(journal).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(journal.parent).st_mode) == 0o700
    assert set(json.loads(journal.read_text())) == {"station", "pass_id", "state", "reason"}
    cfg2 = satellite_config(tmp_path, sat_pool)  # the same state dir, a new process's service
    for _ in range(2):  # and it stays refused
        async with running_satellite(SatelliteService(cfg2)) as ep:
            with KeyPool(ground_pool) as pool:
                link = SatelliteLink(ep, station=STATION, pool=pool, timeout_s=30)
                try:
                    reply = (await link.request(PASS, _hello(pool))).body
                    assert isinstance(reply, HelloReply)
                    assert reply.state == "aborted" and "restarted during this pass" in reply.reason
                    with pytest.raises(PeerRefused, match="aborted"):
                        await link.request(PASS, *_sift(idx, np.zeros(idx.size, np.uint8), 0))
                finally:
                    link.close()
    assert json.loads(journal.read_text())["state"] == "aborted"
    # Another pass is unaffected.
    async with running_satellite(SatelliteService(cfg2)) as ep:
        with KeyPool(ground_pool) as pool:
            link = SatelliteLink(ep, station=STATION, pool=pool, timeout_s=30)
            try:
                assert (await link.request("41731-20161220T000000Z", _hello(pool))).body.state == "new"
            finally:
                link.close()
