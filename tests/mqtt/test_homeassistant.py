"""Home Assistant discovery: payloads follow HA's MQTT discovery convention, every value
template renders (with Jinja2, as HA does) against real station payloads, and the
service announces them retained when the switch is on."""

from __future__ import annotations

import asyncio
import json

import jinja2

from station.mqtt.homeassistant import discovery_messages
from station.mqtt.service import MqttService
from tests.mqtt.helpers import START, collector, make_cfg, pass_in_progress

TOPIC_OF = {"state": "state", "mount": "mount", "timetagger": "timetagger", "pass": "pass",
            "health": "health", "alarms": "alarm"}


def test_discovery_payloads(tmp_path):
    cfg = make_cfg(tmp_path, "127.0.0.1", 1883, station_id="xinglong", home_assistant_discovery=True)
    msgs = {t: json.loads(p) for t, p in discovery_messages(cfg, version="0.1.0").items()}
    samples = pass_in_progress(START)
    env = jinja2.Environment()
    unique = set()
    for topic, conf in msgs.items():
        parts = topic.split("/")
        assert parts[0] == "homeassistant" and parts[2] == "qkd-xinglong" and parts[-1] == "config"
        assert parts[1] in ("sensor", "binary_sensor")
        assert conf["availability_topic"] == "qkd/xinglong/status"
        assert (conf["payload_available"], conf["payload_not_available"]) == ("online", "offline")
        assert conf["device"]["identifiers"] == ["qkd-xinglong"]
        assert conf["unique_id"] not in unique
        unique.add(conf["unique_id"])
        assert conf["state_topic"].startswith("qkd/xinglong/")
        source = samples[TOPIC_OF[conf["state_topic"].rsplit("/", 1)[1]]]
        value = env.from_string(conf["value_template"]).render(
            value_json=json.loads(source.model_dump_json()))
        if parts[1] == "binary_sensor":
            assert value in ("ON", "OFF"), (topic, value)
        elif conf.get("unit_of_measurement"):
            float(value)  # numeric sensors render numbers
        assert value not in ("", "None"), (topic, conf["value_template"])
    rendered = {t.split("/")[3]: env.from_string(c["value_template"]).render(
        value_json=json.loads(samples[TOPIC_OF[c["state_topic"].rsplit("/", 1)[1]]].model_dump_json()))
        for t, c in msgs.items()}
    assert rendered["mode"] == "auto" and rendered["current_pass"] == "MICIUS"
    assert rendered["rate_h"] == "5210.0" and rendered["tracking_error"] == "7.8"
    assert rendered["parked"] == "OFF" and rendered["time_reference_locked"] == "ON"
    assert rendered["last_alarm"] == "warning raised: timetagger.rate_low"


async def test_service_announces_discovery_retained(mosquitto, tmp_path, clock):
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port, station_id="ha-station",
                   home_assistant_discovery=True)
    expected = discovery_messages(cfg, version="9.9")
    async with MqttService(cfg, clock, version="9.9") as svc:
        async with asyncio.timeout(10):
            await svc.wait_connected()
            await svc.wait_drained()
        async with collector(mosquitto.host, mosquitto.port, "homeassistant/+/qkd-ha-station/#") as col:
            await col.wait_for(lambda: len(col.messages) >= len(expected))
            assert {m.topic.value: m.payload for m in col.messages} == expected
            assert all(m.retain for m in col.messages)
    # Clean up the retained configs so other tests' HA sessions start empty.
    async with collector(mosquitto.host, mosquitto.port) as col:
        for topic in expected:
            await col.client.publish(topic, b"", qos=1, retain=True)
