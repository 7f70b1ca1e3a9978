"""The ground pipeline: live over the real event stream server, the key report on a real
Mosquitto, and the report's guarantees (numbers only)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from tests.conftest import Broker, free_port
from tests.postprocessing.conftest import (
    E2E,
    MICIUS,
    ground_settings,
    provision_pools,
    recording_service,
    running_satellite,
    satellite_config,
    truth_key,
)


@pytest.mark.slow
async def test_live_from_the_event_stream_gives_the_offline_key(
        micius_e2e: E2E, micius_pass_file: Path, tmp_path: Path) -> None:
    """The station's stream server serves the pass; the distiller consumes it through the
    reference client's public API and ends with the key the offline run got."""
    from postprocessing.auth import KeyPool
    from postprocessing.channel import SatelliteLink
    from postprocessing.ground.live import follow_stream
    from postprocessing.keystore import KeyStore
    from station.events.stream_server import StreamServer

    server = StreamServer(f"tcp://127.0.0.1:{free_port()}", micius_pass_file.parent)
    server.start()
    sat_pool, ground_pool = provision_pools(tmp_path)
    truths: dict = {}
    try:
        async with running_satellite(recording_service(satellite_config(tmp_path, sat_pool), truths)) as ep:
            settings = ground_settings(tmp_path, ground_pool, ep)
            with KeyPool(ground_pool) as pool, KeyStore(settings.keystore_dir) as store:
                link = SatelliteLink(ep, station=settings.station, pool=pool)
                try:
                    reports = await follow_stream(server.bound_endpoint, settings, link, store,
                                                  received_dir=tmp_path / "received", pass_id=MICIUS)
                finally:
                    link.close()
    finally:
        server.stop()
    assert [r.outcome for r in reports] == ["stored"], reports[0].reason
    report = reports[0]
    assert report.sifted_bits == micius_e2e.report.sifted_bits
    assert np.array_equal(truth_key(truths[MICIUS]), micius_e2e.truth_final)
    assert report.end_of_stream_to_key_s is not None


async def test_the_report_goes_out_on_mqtt_under_the_pass_topics(mosquitto: Broker) -> None:
    from postprocessing.report import KeyReport, publish_report

    report = KeyReport(pass_id=MICIUS, station="xinglong-sim", satellite="micius-sim",
                       outcome="stored", final_bits=1234, epsilon_sec=1e-9, epsilon_cor=1e-15)
    got: list[tuple[str, dict]] = []
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        await client.subscribe("qktest/+/passes/+/key", qos=1)
        topic = await publish_report(report, host=mosquitto.host, port=mosquitto.port,
                                     topic_root="qktest", station_id="xinglong-sim")
        async with asyncio.timeout(10):
            async for msg in client.messages:
                got.append((str(msg.topic), json.loads(bytes(msg.payload))))
                break
    assert topic == f"qktest/xinglong-sim/passes/{MICIUS}/key"
    assert got[0][0] == topic and got[0][1]["final_bits"] == 1234
    assert KeyReport.model_validate(got[0][1]) == report


def test_the_report_summary_compares_with_the_paper() -> None:
    from postprocessing.report import PAPER_MICIUS, KeyReport

    r = KeyReport(pass_id=MICIUS, station="s", satellite="m", outcome="stored", final_bits=300_939,
                  sifted_bits=1_671_072, detections=3_551_136, qber_overall=0.011,
                  epsilon_sec=1e-9, epsilon_cor=1e-15)
    text = r.summary(paper=PAPER_MICIUS)
    assert "Liao" in text and "1.000" in text
    assert all(ratio == pytest.approx(1.0) for *_, ratio in r.versus_paper())
    # With per-class tables the QBER compared is the signal class's, not the overall one
    # (which the ~50 % vacuum class and the decoys pull up).
    r.kept = {"Z": {"signal": 600, "vacuum": 10}, "X": {"signal": 400}}
    r.errors = {"Z": {"signal": 7, "vacuum": 5}, "X": {"signal": 4}}
    r.qber_overall = 16 / 1010
    qber = dict((name, ours) for name, ours, *_ in r.versus_paper())["QBER (signal class)"]
    assert qber == pytest.approx(0.011)


def test_the_station_configs_keys_defaults_are_the_pipelines() -> None:
    from postprocessing.ground import GroundSettings
    from station.config.keys import KeysConfig

    k, g = KeysConfig(), GroundSettings.model_fields
    for name in ("gate_ps", "chunk_batches", "ec_method", "ec_segment_bits", "cascade_segment_bits", "qber_prior", "satellite", "satellite_endpoint",
                 "rep_rate_hz", "sync_rate_hz"):
        assert getattr(k, name) == g[name].default, name
    sec = g["security"].default
    assert (k.epsilon_sec, k.epsilon_cor) == (sec.epsilon_sec, sec.epsilon_cor)
