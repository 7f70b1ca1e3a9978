"""The stream answers only to keyholders (issue 11 §5): real pyzmq CURVE clients, real keys
made by the keygen helper, and the loopback rule for a station without keys."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest
import zmq
import zmq.auth as zmq_auth
from pydantic import ValidationError

from station.cli import main as cli_main
from station.config.events import EventsConfig
from station.events import EventPipeline
from station.events.client import StreamClient, StreamError
from station.events.curve import (
    CurveKeyError,
    is_loopback,
    load_keypair,
    load_public_key,
    write_keypair,
)
from station.events.stream_server import StreamServer
from tests.events.conftest import header, make_batches
from tests.events.independent_consumer import Consumer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "keys"
    allowed = d / "consumers"
    out: dict[str, Path] = {}
    out["station_pub"], out["station_sec"] = write_keypair(d, "station")
    out["good_pub"], out["good_sec"] = write_keypair(allowed, "ppcore")
    out["bad_pub"], out["bad_sec"] = write_keypair(d / "elsewhere", "intruder")
    out["allowed"] = allowed
    return out


async def curve_pipeline(tmp_path: Path, keys: dict[str, Path]) -> EventPipeline:
    cfg = EventsConfig(stream_endpoint="tcp://127.0.0.1:*", consumer_timeout_s=3.0,
                       curve_secret_key_file=keys["station_sec"],
                       curve_consumer_key_files=[keys["allowed"]])
    p = EventPipeline(cfg, state_dir=tmp_path / "state")
    await p.start()
    return p


def monitored(ctx: zmq.Context, endpoint: str, **curve: bytes) -> tuple[zmq.Socket, zmq.Socket]:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    for opt, value in curve.items():
        s.setsockopt(getattr(zmq, opt), value)
    mon = s.get_monitor_socket()
    s.connect(endpoint)
    return s, mon


def wait_event(mon: zmq.Socket, wanted: set[int], timeout_s: float = 20.0) -> int:
    from zmq.utils.monitor import recv_monitor_message

    deadline = zmq.Poller()
    deadline.register(mon, zmq.POLLIN)
    remaining_ms = int(timeout_s * 1000)
    while remaining_ms > 0:
        if not mon.poll(remaining_ms):
            break
        ev = recv_monitor_message(mon)["event"]
        if ev in wanted:
            return int(ev)
        remaining_ms -= 1  # poll again; the deadline is the poll's own timeout
    raise AssertionError(f"none of the socket events {wanted} within {timeout_s} s")


HANDSHAKE_FAILED = {zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_DISCONNECTED}


async def test_right_key_receives_the_pass_wrong_or_no_key_nothing_and_the_server_stays_up(
        tmp_path: Path, keys: dict[str, Path]) -> None:
    p = await curve_pipeline(tmp_path, keys)
    try:
        assert p.server is not None and p.server.curve
        rec = p.open_pass(header())
        batches = make_batches(15, seed=80)
        for b in batches:
            await rec.push(b)
        await rec.close("completed")
        station_pub = load_public_key(keys["station_pub"])
        good, bad = load_keypair(keys["good_sec"]), load_keypair(keys["bad_sec"])

        def attackers() -> list[int]:
            ctx = zmq.Context()
            events = []
            try:
                tries = {
                    "no key": {},
                    "unlisted key": {"CURVE_SERVERKEY": station_pub, "CURVE_PUBLICKEY": bad.public,
                                     "CURVE_SECRETKEY": bad.secret},
                    "wrong server key": {"CURVE_SERVERKEY": bad.public, "CURVE_PUBLICKEY": good.public,
                                         "CURVE_SECRETKEY": good.secret},
                }
                for opts in tries.values():
                    s, mon = monitored(ctx, p.endpoint, **opts)
                    s.send_json({"type": "list"})
                    s.send_json({"type": "hello", "protocol": 1, "pass_id": header().stem})
                    events.append(wait_event(mon, HANDSHAKE_FAILED))
                    assert s.poll(0) == 0, "an unauthenticated client received something"
                    s.disable_monitor()
                    mon.close(0)
                    s.close(0)
            finally:
                ctx.term()
            return events

        events = await asyncio.to_thread(attackers)
        # The unlisted key is refused by ZAP with an explicit failure.
        assert events[1] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        assert p.server.consumers_denied >= 1

        # The right key: the reference client and the independent one both get the pass.
        client = StreamClient(p.endpoint, tmp_path / "rx", server_public_key=station_pub,
                              keypair=good)
        try:
            rp = await asyncio.to_thread(client.receive_pass, header().stem)
        finally:
            client.close()
        assert rp.ok and rp.batches == 15 and rp.events == sum(len(b) for b in batches)
        ind = Consumer(p.endpoint, tmp_path / "ind", server_key=station_pub,
                       public_key=good.public, secret_key=good.secret)
        try:
            await asyncio.to_thread(ind.follow, lambda: bool(ind.completed), deadline_s=60)
        finally:
            ind.close()
        assert ind.completed == [header().stem]
        assert p.server.errors == 0  # the refusals never disturbed the server
    finally:
        await p.stop()


async def test_a_wrong_key_client_times_out_with_a_hint(tmp_path: Path, keys: dict[str, Path]) -> None:
    p = await curve_pipeline(tmp_path, keys)
    try:
        client = StreamClient(p.endpoint, tmp_path / "rx", timeout_s=1.0,
                              server_public_key=load_public_key(keys["station_pub"]),
                              keypair=load_keypair(keys["bad_sec"]))
        try:
            with pytest.raises(StreamError, match="CURVE"):
                await asyncio.to_thread(client.list_passes)
        finally:
            client.close()
    finally:
        await p.stop()


def test_without_curve_the_stream_binds_loopback_only(tmp_path: Path, keys: dict[str, Path]) -> None:
    assert is_loopback("tcp://127.0.0.1:5560") and is_loopback("tcp://[::1]:5560")
    assert is_loopback("ipc:///run/qkd/stream") and is_loopback("tcp://localhost:5560")
    assert not is_loopback("tcp://0.0.0.0:5560") and not is_loopback("tcp://eth0:5560")
    assert not is_loopback("tcp://192.168.1.5:5560")
    server = StreamServer("tcp://0.0.0.0:*", tmp_path)
    with pytest.raises(ValueError, match="loopback only"):
        server.start()
    server.stop()
    with pytest.raises(ValidationError, match="CURVE"):
        EventsConfig(stream_endpoint="tcp://0.0.0.0:5560")
    with pytest.raises(ValidationError, match="no consumer could connect"):
        EventsConfig(stream_endpoint="tcp://0.0.0.0:5560", curve_secret_key_file=keys["station_sec"])
    with pytest.raises(ValidationError, match="not a ZeroMQ endpoint"):
        EventsConfig(stream_endpoint="5560")
    with pytest.raises(ValidationError, match="port"):
        EventsConfig(stream_endpoint="tcp://127.0.0.1:99999")
    ok = EventsConfig(stream_endpoint="tcp://0.0.0.0:5560", curve_secret_key_file=keys["station_sec"],
                      curve_consumer_key_files=[keys["allowed"]])
    assert ok.file_problems() == []


def _config(tmp_path: Path, events: str) -> Path:
    example = (REPO / "config" / "sim.toml").read_text()
    text = example.replace('stream_endpoint = "tcp://127.0.0.1:5560"', events)
    assert text != example
    path = tmp_path / "station.toml"
    path.write_text(text)
    return path


def test_check_config_refuses_an_open_stream_and_reads_the_key_files(
        tmp_path: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    open_stream = _config(tmp_path, 'stream_endpoint = "tcp://0.0.0.0:5560"')
    assert cli_main(["check-config", str(open_stream)]) == 2
    assert "anyone could read the raw detections" in capsys.readouterr().err
    secure = _config(tmp_path, f'stream_endpoint = "tcp://0.0.0.0:5560"\n'
                     f'curve_secret_key_file = "{keys["station_sec"]}"\n'
                     f'curve_consumer_key_files = ["{keys["allowed"]}"]')
    assert cli_main(["check-config", str(secure)]) == 0
    assert "CURVE" in capsys.readouterr().out
    os.chmod(keys["station_sec"], 0o644)
    assert cli_main(["check-config", str(secure)]) == 2
    assert "readable by others" in capsys.readouterr().err
    os.chmod(keys["station_sec"], 0o600)
    keys["good_pub"].write_text("not a certificate\n")
    assert cli_main(["check-config", str(secure)]) == 2
    assert "not a ZeroMQ CURVE certificate" in capsys.readouterr().err


def test_example_config_shows_the_secure_stream() -> None:
    text = (REPO / "config" / "station.example.toml").read_text()
    assert 'stream_endpoint = "tcp://0.0.0.0:5560"' in text
    assert "\ncurve_secret_key_file = " in text and "\ncurve_consumer_key_files = " in text


def test_keygen_writes_a_pair_with_the_secret_0600_whatever_the_umask(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = os.umask(0)
    try:
        assert cli_main(["keygen", "--name", "ppcore", "--dir", str(tmp_path)]) == 0
    finally:
        os.umask(old)
    pub, sec = tmp_path / "ppcore.key", tmp_path / "ppcore.key_secret"
    assert stat.S_IMODE(sec.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    pair = load_keypair(sec)
    assert load_public_key(pub) == pair.public and zmq.curve_public(pair.secret) == pair.public
    assert "secret-key" not in pub.read_text()
    out = capsys.readouterr().out
    assert pair.public.decode() in out and pair.secret.decode() not in out
    assert pair.secret.decode() not in repr(pair)
    # pyzmq's own reader agrees (the format interoperates with zmq.auth / czmq zcert).
    assert zmq_auth.load_certificate(sec) == (pair.public, pair.secret)
    assert cli_main(["keygen", "--name", "ppcore", "--dir", str(tmp_path)]) == 1  # no overwrite
    assert "exists already" in capsys.readouterr().err
    assert cli_main(["keygen", "--name", "../x", "--dir", str(tmp_path)]) == 1
    with pytest.raises(CurveKeyError, match="40"):
        bad = tmp_path / "short.key"
        bad.write_text('metadata\ncurve\n    public-key = "abc"\n')
        load_public_key(bad)
    json.dumps(str(pair))  # repr/str never raise


@pytest.mark.slow
async def test_the_daemon_serves_a_whole_pass_to_the_keyholder_only(
        mosquitto: object, tmp_path: Path, keys: dict[str, Path]) -> None:
    """The station as `qkd-station run` assembles it, CURVE on: intruders hammer the stream
    through the Micius pass and get nothing; the keyholder gets the pass; the daemon stays up."""
    import threading

    from tests.daemon.station import MICIUS, free_port, running_station, sim_config

    cfg = sim_config(tmp_path, mosquitto.port, events={  # type: ignore[attr-defined]
        "stream_endpoint": f"tcp://127.0.0.1:{free_port()}",
        "curve_secret_key_file": str(keys["station_sec"]),
        "curve_consumer_key_files": [str(keys["allowed"])]})
    station_pub = load_public_key(keys["station_pub"])
    good, bad = load_keypair(keys["good_sec"]), load_keypair(keys["bad_sec"])
    received: list = []
    stop = threading.Event()
    intruder_frames: list[int] = []

    def consume() -> None:
        with StreamClient(cfg.events.stream_endpoint, tmp_path / "consumer", timeout_s=120,
                          server_public_key=station_pub, keypair=good) as c:
            received.extend(c.follow(max_passes=1))

    def intrude() -> None:
        ctx = zmq.Context()
        socks = []
        try:
            for opts in ({}, {"CURVE_SERVERKEY": station_pub, "CURVE_PUBLICKEY": bad.public,
                              "CURVE_SECRETKEY": bad.secret}):
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.RECONNECT_IVL, 50)
                for k, v in opts.items():
                    s.setsockopt(getattr(zmq, k), v)
                s.connect(cfg.events.stream_endpoint)
                socks.append(s)
            while not stop.is_set():
                for s in socks:
                    try:
                        s.send_json({"type": "hello", "protocol": 1, "pass_id": None},
                                    zmq.NOBLOCK)
                    except zmq.Again:
                        pass  # not connected (refused): nothing queued
                    while s.poll(0):
                        intruder_frames.append(len(s.recv_multipart()))
                stop.wait(0.05)
        finally:
            for s in socks:
                s.close(0)
            ctx.term()

    threads = [threading.Thread(target=f, daemon=True) for f in (consume, intrude)]
    for t in threads:
        t.start()
    try:
        async with running_station(cfg) as st:
            report = await st.next_pass()
            await asyncio.to_thread(threads[0].join, 120)
            assert st.supervisor is not None and st.ctx.pipeline.server is not None
            server = st.ctx.pipeline.server
            assert server.errors == 0 and server.consumers_denied >= 1
    finally:
        stop.set()
        await asyncio.to_thread(threads[1].join, 30)
    assert report.pass_id == MICIUS and report.outcome == "completed", report.reason
    assert received and received[0].ok and received[0].events == report.events_recorded > 0
    assert intruder_frames == []
