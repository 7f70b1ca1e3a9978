"""Commands over a real Mosquitto: every kind of bad request, retained and duplicate
requests, rate limiting, the MQTT 5 response topic. Behind the dispatcher are the real
station's operator commands (tests/mqtt/helpers.py CommandedStation), so motion is checked
on the simulated mount's own record. Every verb in every mode, on the whole running
station: tests/mqtt/test_station_commands.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from station.daemon.modes import Mode
from station.mqtt.service import MqttService
from tests.mqtt.helpers import collector, make_cfg

ID = "cmdstation"
P = f"qkd/{ID}"


@pytest.fixture
async def service(mosquitto, tmp_path, clock, station) -> AsyncIterator[MqttService]:
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port, station_id=ID,
                   command_burst=50, command_rate_per_s=1.0)
    async with MqttService(cfg, clock, station) as svc:
        async with asyncio.timeout(10):
            await svc.wait_connected()
        yield svc


@pytest.fixture
async def operator(mosquitto) -> AsyncIterator[Any]:
    async with collector(mosquitto.host, mosquitto.port, f"{P}/reply/#") as col:
        yield col


_counter = iter(range(1_000_000))


async def send(op, verb: str, payload: Any, *, retain: bool = False) -> None:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    await op.client.publish(f"{P}/cmd/{verb}", body, qos=1, retain=retain)


async def call(op, verb: str, **args: Any) -> dict[str, Any]:
    """Send one command and wait for its reply."""
    rid = f"t{next(_counter)}"
    await send(op, verb, {"request_id": rid, **args})
    topic = f"{P}/reply/{rid}"
    await op.wait_for(lambda: op.payloads(topic))
    (reply,) = op.json(topic)
    assert reply["request_id"] == rid and reply["verb"] == verb
    assert reply["time"].endswith("Z")
    return reply


@pytest.mark.parametrize(("verb", "payload", "code", "words"), [
    ("goto", b"{not json", "invalid_json", ["not valid JSON"]),
    ("goto", b"[1, 2]", "invalid_json", ["JSON object"]),
    ("goto", {"az_deg": 10, "el_deg": 20}, "invalid_request", ["request_id", "required"]),
    ("goto", {"request_id": "_bad id", "az_deg": 10, "el_deg": 20}, "invalid_request", ["request_id"]),
    ("fly", {"request_id": "r-fly"}, "unknown_verb", ["'fly'", "goto", "park"]),
    ("goto", {"request_id": "r-miss", "az_deg": 10}, "invalid_request", ["el_deg", "(missing)"]),
    ("goto", {"request_id": "r-range", "az_deg": 10, "el_deg": 400}, "invalid_request",
     ["el_deg", "400", "less than or equal to 180"]),
    ("goto", {"request_id": "r-type", "az_deg": "north", "el_deg": 20}, "invalid_request",
     ["az_deg", "'north'"]),
    ("set_mode", {"request_id": "r-mode", "mode": "turbo"}, "invalid_request",
     ["mode", "'turbo'", "auto", "maintenance"]),
    ("park", {"request_id": "r-extra", "speed": 3}, "invalid_request", ["speed", "not permitted"]),
    ("skip_pass", {"request_id": "r-nopass", "pass_id": "nope"}, "refused",
     ["unknown pass id 'nope'", "not in the current schedule"]),
])
async def test_bad_requests_get_an_error_that_says_what_was_wrong(
        service, operator, station, verb, payload, code, words):
    await send(operator, verb, payload)
    rid = payload.get("request_id") if isinstance(payload, dict) else None
    topic = f"{P}/reply/{rid if rid and not rid.startswith('_') else '_invalid'}"
    await operator.wait_for(lambda: operator.payloads(topic))
    (reply,) = operator.json(topic)
    assert reply["ok"] is False and reply["result"] is None
    assert reply["error"]["code"] == code
    for w in words:
        assert w in reply["error"]["message"], reply["error"]["message"]
    assert not station.mount.commands  # nothing moved
    # ... and the station still serves the next command.
    assert (await call(operator, "reschedule"))["ok"]


async def test_safety_refusals_and_daemon_errors_are_replies_not_crashes(
        service, operator, station, monkeypatch):
    await call(operator, "set_mode", mode="auto")
    r = await call(operator, "goto", az_deg=10, el_deg=45)
    assert r["error"]["code"] == "refused" and "auto mode" in r["error"]["message"]
    await call(operator, "set_mode", mode="maintenance")
    r = await call(operator, "goto", az_deg=10, el_deg=2)  # sim.toml's gate: min_el_deg 5
    assert r["error"]["code"] == "refused" and "safety gate" in r["error"]["message"]
    assert not [c for c in station.mount.commands if c.kind == "slew"]

    async def broken() -> Any:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(station, "reload_elements", broken)
    r = await call(operator, "reload_elements")
    assert r["error"]["code"] == "internal" and "ZeroDivisionError" in r["error"]["message"]
    assert (await call(operator, "reschedule"))["ok"]


async def test_a_retained_command_never_fires(mosquitto, tmp_path, clock, station, operator):
    # Someone left a retained goto on the broker before the station connected.
    await send(operator, "goto", {"request_id": "r-stale", "az_deg": 200, "el_deg": 30}, retain=True)
    try:
        cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port, station_id=ID)
        async with MqttService(cfg, clock, station) as svc:
            async with asyncio.timeout(10):
                await svc.wait_connected()
            # Messages are handled in order: once this reply is in, the retained goto was seen.
            assert (await call(operator, "reschedule"))["ok"]
            assert svc.dispatcher.stats.retained_ignored == 1
        assert station.calls == [("reschedule", None)]
        assert not station.mount.commands
        assert operator.payloads(f"{P}/reply/r-stale") == []
    finally:
        await operator.client.publish(f"{P}/cmd/goto", b"", qos=1, retain=True)


async def test_duplicate_request_ids_are_executed_and_answered_once(service, operator, station):
    for _ in range(3):
        await send(operator, "goto", {"request_id": "same-1", "az_deg": 30, "el_deg": 40})
    await operator.wait_for(lambda: operator.payloads(f"{P}/reply/same-1"))
    assert (await call(operator, "reschedule"))["ok"]  # everything before it was handled
    assert len(operator.payloads(f"{P}/reply/same-1")) == 1
    assert [c for c in station.calls if c[0] == "goto"] == [("goto", (30.0, 40.0))]
    assert service.dispatcher.stats.duplicates_ignored == 2


async def test_commands_are_rate_limited_on_the_station_clock(mosquitto, tmp_path, clock, station, operator):
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port, station_id=ID,
                   command_burst=3, command_rate_per_s=0.5)
    async with MqttService(cfg, clock, station) as svc:
        async with asyncio.timeout(10):
            await svc.wait_connected()
        replies = [await call(operator, "reschedule") for _ in range(5)]
        assert [r["ok"] for r in replies] == [True, True, True, False, False]
        assert replies[3]["error"]["code"] == "rate_limited"
        assert "3 in a burst" in replies[3]["error"]["message"]
        await clock.advance(2.0)  # one token back at 0.5/s
        assert [(await call(operator, "reschedule"))["ok"] for _ in range(2)] == [True, False]
        assert station.reschedules == 4


async def test_a_slow_command_does_not_hold_up_stop(service, operator, station):
    await call(operator, "set_mode", mode="manual")
    station.hold = asyncio.Event()
    await send(operator, "goto", {"request_id": "slow-goto", "az_deg": 90, "el_deg": 30})
    r = await call(operator, "stop")  # answered while the goto is still in flight
    assert r["ok"] and operator.payloads(f"{P}/reply/slow-goto") == []
    station.hold.set()
    await operator.wait_for(lambda: operator.payloads(f"{P}/reply/slow-goto"))
    assert operator.json(f"{P}/reply/slow-goto")[0]["ok"]


INBOX = f"{P}/reply/ops-inbox/42"  # a response topic must be under the station's reply/


async def test_mqtt5_reply_goes_to_the_response_topic_with_correlation_data(
        mosquitto, tmp_path, clock, station):
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port, station_id=ID, protocol="5")
    async with MqttService(cfg, clock, station) as svc:
        async with asyncio.timeout(10):
            await svc.wait_connected()
        async with collector(mosquitto.host, mosquitto.port, INBOX,
                             protocol=aiomqtt.ProtocolVersion.V5) as col:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = INBOX
            props.CorrelationData = b"corr-\x00\x01"
            await col.client.publish(f"{P}/cmd/reschedule", b'{"request_id": "v5-1"}', qos=1,
                                     properties=props)
            await col.wait_for(lambda: col.payloads(INBOX))
            msg = col.messages[0]
            assert json.loads(msg.payload)["ok"] is True
            assert msg.properties.CorrelationData == b"corr-\x00\x01"
            # Under MQTT 5 even a live command published with retain is refused.
            await col.client.publish(f"{P}/cmd/goto", b'{"request_id": "v5-ret", "az_deg": 1, '
                                     b'"el_deg": 45}', qos=1, retain=True)
            await col.client.publish(f"{P}/cmd/reschedule", b'{"request_id": "v5-2"}', qos=1,
                                     properties=props)
            await col.wait_for(lambda: len(col.payloads(INBOX)) == 2)
            await col.client.publish(f"{P}/cmd/goto", b"", qos=1, retain=True)
        assert svc.dispatcher.stats.retained_ignored == 1
        assert [c[0] for c in station.calls] == ["reschedule", "reschedule"]


def test_mode_values_match_the_daemon():
    from station.mqtt.messages import SetModeRequest

    assert set(SetModeRequest.model_json_schema()["$defs"]["Mode"]["enum"]) == {m.value for m in Mode}
