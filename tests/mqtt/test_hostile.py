"""Hostile input against the station on the real, shipped broker (config/mosquitto/:
TLS, passwords, the ACL, client ids bound to accounts), sent as the operator account
(the only one the ACL lets publish commands). Every payload is generated here.

What must hold (issue 11, sections 1-3): no payload silences the station, replies and log
lines stay small, response topics stay under the station's reply/, stop and park always
get through, alarms are never dropped for replies, request ids are remembered across a
restart, and no account can take the station's client id.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from station.mqtt.limits import (
    MAX_MESSAGE_BYTES,
    MAX_REPLY_BYTES,
    MAX_SEND_ATTEMPTS,
    REPLY_QUEUE_MAX,
)
from station.mqtt.messages import AlarmMessage
from station.mqtt.service import MqttService
from tests.conftest import free_port
from tests.mqtt.helpers import Collector, CommandedStation, collector, make_cfg
from tests.mqtt.secure import PREFIX, start_secure_broker, station_cfg, tls_client

P = PREFIX
STATUS = f"{P}/status"
INVALID = f"{P}/reply/_invalid"


@pytest.fixture
async def op(secure_broker) -> AsyncIterator[Collector]:
    broker, pki = secure_broker
    async with collector(**tls_client(broker, pki, "operator"),
                         topics=(f"{P}/reply/#", STATUS, f"{P}/alarms")) as col:
        yield col


@pytest.fixture
async def svc(secure_broker, tmp_path, clock, station) -> AsyncIterator[MqttService]:
    broker, pki = secure_broker
    cfg = station_cfg(tmp_path, broker, pki, command_burst=1000, command_rate_per_s=100.0)
    async with MqttService(cfg, clock, station) as service:
        async with asyncio.timeout(10):
            await service.wait_connected()
        yield service


async def send(op: Collector, verb: str, payload: Any, **kwargs: Any) -> None:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    await op.client.publish(f"{P}/cmd/{verb}", body, qos=1, **kwargs)


async def reply(op: Collector, topic: str, count: int = 1) -> dict[str, Any]:
    """The ``count``-th message on ``topic`` (waits for it)."""
    await op.wait_for(lambda: len(op.payloads(topic)) >= count)
    raw = op.payloads(topic)[count - 1]
    assert len(raw) <= MAX_REPLY_BYTES, f"reply of {len(raw)} bytes"
    return json.loads(raw)


def never_offline_since_online(col: Collector) -> bool:
    """No ``offline`` after the first ``online`` (a retained ``offline`` left by an earlier
    test's clean stop may come first)."""
    seen = col.payloads(STATUS)
    return b"online" in seen and b"offline" not in seen[seen.index(b"online"):]


def deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


# (verb, payload, reply topic suffix, code, words in the message). Generated, never files.
HOSTILE = [
    ("goto", b"[" * 10_000 + b"]" * 10_000, "_invalid", "invalid_request", ["20000 bytes", "16384"]),
    ("stop", b"[" * 8_000, "_invalid", "invalid_json", ["nested too deeply"]),
    ("goto", b'{"request_id": "deep-1", "az_deg": ' + b"[" * 5_000 + b"]" * 5_000 + b', "el_deg": 1}',
     "_invalid", "invalid_json", ["nested too deeply"]),
    ("goto", {"request_id": "deep-2", "az_deg": 1, "el_deg": 2, "x": deep(50)}, "deep-2",
     "invalid_json", ["nested too deeply"]),
    ("goto", b'{"request_id": "num-1", "az_deg": ' + b"1" * 5_000 + b', "el_deg": 20}',
     "_invalid", "invalid_json", ["not valid JSON"]),
    ("goto", b'{"request_id": "num-2", "az_deg": ' + b"9" * 4_000 + b', "el_deg": 20}',
     "num-2", "invalid_request", ["az_deg"]),
    ("goto", b'{"request_id": "nan-1", "az_deg": NaN, "el_deg": 20}', "_invalid", "invalid_json",
     ["NaN is not a JSON number"]),
    ("goto", {"request_id": "abc\n", "az_deg": 1, "el_deg": 20}, "_invalid", "invalid_request",
     ["request_id", "'abc\\n'"]),
    ("goto", {"request_id": "huge-1", "az_deg": "x" * 600_000, "el_deg": 20}, "_invalid",
     "invalid_request", ["bytes", "at most 16384"]),
    ("goto", {"request_id": "huge-2", "az_deg": "x" * 12_000, "el_deg": 20}, "huge-2",
     "invalid_request", ["az_deg", "12000 characters"]),
    ("goto", {"request_id": "bool-1", "az_deg": True, "el_deg": 20}, "bool-1", "invalid_request",
     ["az_deg: True", "valid number"]),
    ("goto", {"request_id": "str-1", "az_deg": "45", "el_deg": 20}, "str-1", "invalid_request",
     ["az_deg: '45'"]),
    ("set_mode", {"request_id": "ctl-1", "mode": "\x1b[31mred\r\n" * 500}, "ctl-1",
     "invalid_request", ["mode", "\\x1b"]),
    ("x" * 3_000, {"request_id": "verb-1"}, "verb-1", "unknown_verb", ["3000 characters"]),
    ("goto", b"\xff\xfe{}", "_invalid", "invalid_json", ["not UTF-8"]),
]


@pytest.mark.parametrize(("verb", "payload", "suffix", "code", "words"), HOSTILE,
                         ids=[f"{i}-{h[0][:8]}-{h[3]}" for i, h in enumerate(HOSTILE)])
async def test_no_payload_silences_the_station(svc, op, station: CommandedStation, caplog,
                                               verb, payload, suffix, code, words):
    caplog.set_level(logging.INFO, logger="station.mqtt")
    await send(op, verb, payload)
    r = await reply(op, f"{P}/reply/{suffix}")
    assert r["ok"] is False and r["error"]["code"] == code, r
    for w in words:
        assert w in r["error"]["message"], r["error"]["message"]
    assert len(r["verb"]) <= 120
    # Answered by design, not by the last-resort handler; and the station still obeys stop.
    assert svc.dispatcher.stats.handler_errors == 0
    await send(op, "stop", {"request_id": "then-stop"})
    assert (await reply(op, f"{P}/reply/then-stop"))["ok"] is True
    assert [c.kind for c in station.mount.commands] == ["stop"]
    # Never dropped, never reconnected, never offline.
    assert svc.connected and svc.stats.connects == 1 and svc.stats.disconnects == 0
    assert never_offline_since_online(op)
    # Log lines are bounded and escaped: no control character from the input gets through.
    for rec in caplog.records:
        text = rec.getMessage()
        assert len(text) <= 1000, f"{len(text)}-character log line: {text[:200]}"
        assert "\x1b" not in text and "\r" not in text


async def test_an_error_while_handling_is_an_internal_reply(svc, op, monkeypatch):
    def broken(verb: str, payload: bytes) -> Any:
        raise RecursionError("maximum recursion depth exceeded (injected)")

    monkeypatch.setattr(svc.dispatcher, "_decode", broken)
    await send(op, "goto", {"request_id": "r-1", "az_deg": 1, "el_deg": 20})
    r = await reply(op, INVALID)
    assert r["error"]["code"] == "internal" and "RecursionError" in r["error"]["message"]
    assert svc.dispatcher.stats.handler_errors == 1
    monkeypatch.undo()
    await send(op, "reschedule", {"request_id": "r-2"})
    assert (await reply(op, f"{P}/reply/r-2"))["ok"] is True
    assert svc.stats.connects == 1


async def test_an_error_in_a_session_reconnects_and_says_offline_meanwhile(
        secure_broker, tmp_path, clock, station, op):
    broker, pki = secure_broker
    service = MqttService(station_cfg(tmp_path, broker, pki), clock, station)
    original = service.outbox.send
    calls = 0

    async def send_failing_once(client: aiomqtt.Client) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.2)  # let `online` be seen first (wall pacing of the test)
            raise RuntimeError("a bug in the sender (injected)")
        await original(client)

    service.outbox.send = send_failing_once  # type: ignore[method-assign]
    async with service:
        def recovered() -> bool:  # online, then offline while it was away, then online again
            seen = op.payloads(STATUS)
            after = seen[seen.index(b"online"):] if b"online" in seen else []
            return b"offline" in after and after[-1] == b"online"

        await op.wait_for(recovered)
        async with asyncio.timeout(10):  # counted just after `online` is acknowledged
            while service.stats.connects < 2:
                await asyncio.sleep(0.01)
        assert service.stats.internal_errors == 1 and service.alive
        await send(op, "reschedule", {"request_id": "after-1"})
        assert (await reply(op, f"{P}/reply/after-1"))["ok"] is True


async def test_response_topic_only_under_the_stations_reply_subtree(
        secure_broker, tmp_path, clock, station):
    broker, pki = secure_broker
    cfg = station_cfg(tmp_path, broker, pki, protocol="5", command_burst=20)
    async with MqttService(cfg, clock, station) as service, \
            collector(**tls_client(broker, pki, "dashboard", protocol=aiomqtt.ProtocolVersion.V5),
                      topics=(f"{P}/#",)) as dash:
        async with asyncio.timeout(10):
            await service.wait_connected()
        # The operator sends with MQTT 5 (to set a response topic); the dashboard reads.
        async with aiomqtt.Client(**tls_client(broker, pki, "operator",
                                               protocol=aiomqtt.ProtocolVersion.V5)) as v5:
            for n, (topic, corr) in enumerate([(f"{P}/reply/#", b"c"), (f"{P}/status", b"c"),
                                               (f"{P}/reply/+/x", b"c"), (f"{P}/state", b"c"),
                                               (f"{P}/reply/ok", b"c" * 300)]):
                props = Properties(PacketTypes.PUBLISH)
                props.ResponseTopic = topic
                props.CorrelationData = corr
                await v5.publish(f"{P}/cmd/reschedule", json.dumps({"request_id": f"rt-{n}"}),
                                 qos=1, properties=props)
                r = await reply(dash, f"{P}/reply/rt-{n}")
                assert r["error"]["code"] == "invalid_request", r
                assert ("response topic" in r["error"]["message"]
                        or "correlation data" in r["error"]["message"])
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = f"{P}/reply/inbox/7"
            props.CorrelationData = b"corr-7"
            await v5.publish(f"{P}/cmd/reschedule", b'{"request_id": "rt-ok"}', qos=1, properties=props)
            await dash.wait_for(lambda: dash.payloads(f"{P}/reply/inbox/7"))
        assert station.calls == [("reschedule", None)]  # only the good one ran
        assert service.connected and service.stats.connects == 1
        assert never_offline_since_online(dash)
        assert all(p.startswith(b"{") for p in dash.payloads(f"{P}/state"))
        assert not dash.payloads(f"{P}/reply/#") and not dash.payloads(f"{P}/reply/+/x")
        assert dash.messages[-1].properties.CorrelationData == b"corr-7"


async def test_stop_and_park_are_never_rate_limited(secure_broker, tmp_path, clock, station, op):
    broker, pki = secure_broker
    cfg = station_cfg(tmp_path, broker, pki, command_burst=5, command_rate_per_s=2.0)
    async with MqttService(cfg, clock, station) as service:
        async with asyncio.timeout(10):
            await service.wait_connected()
        for i in range(10):  # ten invalid requests use up the burst ...
            await send(op, "goto", b"{nope" if i % 2 else {"request_id": f"bad {i}"})
        await send(op, "goto", {"request_id": "g-1", "az_deg": 10, "el_deg": 40})
        r = await reply(op, f"{P}/reply/g-1")
        assert r["error"]["code"] == "rate_limited"  # ... so they did count
        # ... but stop and park still get through.
        await send(op, "stop", {"request_id": "s-1"})
        await send(op, "park", {"request_id": "p-1"})
        assert (await reply(op, f"{P}/reply/s-1"))["ok"] is True
        assert (await reply(op, f"{P}/reply/p-1"))["ok"] is True
        assert [c.kind for c in station.mount.commands] == ["stop", "park"]
        assert service.dispatcher.stats.rate_limited >= 6


async def test_a_flood_never_pushes_out_an_alarm(secure_broker, tmp_path, clock, station, op):
    broker, pki = secure_broker
    cfg = station_cfg(tmp_path, broker, pki, command_burst=5, command_rate_per_s=2.0)
    flood = 1_500
    async with MqttService(cfg, clock, station) as service:
        async with asyncio.timeout(10):
            await service.wait_connected()
        kinds = [("goto", b"{not json"), ("goto", b'{"request_id": "_bad"}'),
                 ("warp", b'{"request_id": "w"}'), ("goto", b"[1]")]

        async def one(i: int) -> None:
            verb, body = kinds[i % len(kinds)]
            if verb == "warp":
                body = json.dumps({"request_id": f"w-{i}"}).encode()
            await op.client.publish(f"{P}/cmd/{verb}", body, qos=1)

        for start in range(0, flood, 100):
            await asyncio.gather(*(one(i) for i in range(start, start + 100)))
            for k in range(start // 100 * 4, start // 100 * 4 + 4):  # alarms meanwhile
                service.publish_alarm(AlarmMessage(key=f"flood.{k}", state="raised", severity="warning",
                                                   message=f"alarm {k}", time=clock.now()))
        await op.wait_for(lambda: service.dispatcher.stats.received >= flood, timeout_s=60)
        await send(op, "stop", {"request_id": "s-after"})
        assert (await reply(op, f"{P}/reply/s-after"))["ok"] is True
        await op.wait_for(lambda: len(op.payloads(f"{P}/alarms")) >= 60, timeout_s=30)
        stats = service.dispatcher.stats
        assert stats.rate_limited >= flood - 5  # only the burst got an answer of its own
        assert service.stats.dropped == 0  # no alarm was dropped for a reply
        keys = [json.loads(p)["key"] for p in op.payloads(f"{P}/alarms")]
        assert keys == [f"flood.{k}" for k in range(60)]
        assert len(service.outbox.replies) <= REPLY_QUEUE_MAX
        assert service.stats.connects == 1


async def test_request_ids_are_remembered_across_a_restart(secure_broker, tmp_path, clock, station, op):
    broker, pki = secure_broker
    cfg = station_cfg(tmp_path, broker, pki)
    async with MqttService(cfg, clock, station) as service:
        async with asyncio.timeout(10):
            await service.wait_connected()
        await send(op, "reschedule", {"request_id": "once-1"})
        assert (await reply(op, f"{P}/reply/once-1"))["ok"] is True
    assert (cfg.state_dir / "mqtt-request-ids").stat().st_mode & 0o777 == 0o640
    # A restarted station (same state dir) gets the same request again: a replay.
    async with MqttService(cfg, clock, station) as service:
        async with asyncio.timeout(10):
            await service.wait_connected()
        await send(op, "reschedule", {"request_id": "once-1"})
        await send(op, "reschedule", {"request_id": "once-2"})
        assert (await reply(op, f"{P}/reply/once-2"))["ok"] is True
        assert service.dispatcher.stats.duplicates_ignored == 1
    assert station.reschedules == 2
    assert len(op.payloads(f"{P}/reply/once-1")) == 1


@pytest.mark.parametrize("identifier", [f"qkd-station-{PREFIX.split('/')[1]}", "xinglong"])
async def test_the_dashboard_cannot_take_the_stations_client_id(
        secure_broker, tmp_path, clock, station, op, identifier):
    broker, pki = secure_broker
    async with MqttService(station_cfg(tmp_path, broker, pki), clock, station) as service:
        async with asyncio.timeout(10):
            await service.wait_connected()
        for _ in range(3):
            async with aiomqtt.Client(**tls_client(broker, pki, "dashboard", identifier=identifier)):
                await send(op, "reschedule", {"request_id": f"id-{identifier}-{_}"})
                assert (await reply(op, f"{P}/reply/id-{identifier}-{_}"))["ok"] is True
        assert service.connected
        assert service.stats.connects == 1 and service.stats.disconnects == 0
        assert never_offline_since_online(op)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_a_message_the_broker_refuses_is_dropped_and_counted(tmp_path, clock, station, protocol):
    # The shipped broker, with a smaller packet limit than ours: Mosquitto drops the
    # connection of a client that sends a larger packet, every time it is sent.
    d = tmp_path / "broker"
    d.mkdir()
    broker, pki = start_secure_broker(d, replace={"max_packet_size": "20000"})
    try:
        cfg = station_cfg(tmp_path, broker, pki, protocol=protocol)
        async with collector(**tls_client(broker, pki, "dashboard"),
                             topics=(f"{P}/alarms", f"{P}/big")) as dash, \
                MqttService(cfg, clock, station) as service:
            async with asyncio.timeout(10):
                await service.wait_connected()

            def alarm(key: str, message: str) -> AlarmMessage:
                return AlarmMessage(key=key, state="raised", severity="warning", message=message,
                                    time=clock.now())

            service.publish_alarm(alarm("big", "x" * 30_000))
            service.set_retained("big", b"y" * 30_000)
            service.publish_alarm(alarm("after", "small"))
            await dash.wait_for(lambda: len(dash.payloads(f"{P}/alarms")) >= 1, timeout_s=30)
            await service.wait_drained()
            assert service.stats.refused == 2
            # The broker drops the connection each time: at most 3 tries for each of the two.
            assert service.stats.connects <= 1 + 2 * MAX_SEND_ATTEMPTS
            # It has stopped trying: connected, and the next message goes straight out.
            connects = service.stats.connects
            service.publish_alarm(alarm("later", "small"))
            await dash.wait_for(lambda: len(dash.payloads(f"{P}/alarms")) >= 2)
            assert service.stats.connects == connects and service.connected
            assert [json.loads(p)["key"] for p in dash.payloads(f"{P}/alarms")] == ["after", "later"]
            assert dash.payloads(f"{P}/big") == []
            assert service.stats.dropped_total == 2
    finally:
        broker.stop()


def test_messages_no_broker_could_take_are_never_queued(tmp_path, clock):
    service = MqttService(make_cfg(tmp_path, "127.0.0.1", free_port()), clock)
    service.publish_telemetry("mount/+", b"{}")
    service.publish_telemetry("mount/\n", b"{}")
    service.set_retained("state/#", b"{}")
    service.publish_alarm(AlarmMessage(key="k", state="raised", severity="info",
                                       message="m" * (MAX_MESSAGE_BYTES + 1), time=clock.now()))
    assert service.stats.invalid == 4
    assert not service.outbox.alarms and not service.outbox.latest
    assert not any(t.endswith("state/#") for t in service.outbox.retained)
