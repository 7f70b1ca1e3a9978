"""Payload models: JSON round trips, UTC 'Z' timestamps, documented fields, and the shipped
JSON Schemas in docs/schemas/ matching the models (regenerate: python -m station.mqtt.schemas)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import BaseModel, ValidationError

from station.mqtt import messages as m
from station.mqtt import schemas
from station.mqtt.service import MqttService
from tests.mqtt.helpers import START, collector, make_cfg, pass_in_progress

SAMPLES = pass_in_progress(START)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip(name):
    model = SAMPLES[name]
    wire = model.model_dump_json()
    back = type(model).model_validate_json(wire)
    assert back == model
    assert back.model_dump_json() == wire


def test_times_are_utc_with_z_whatever_the_input_zone():
    cet = timezone(timedelta(hours=1))
    alarm = m.AlarmMessage(key="k", state="raised", severity="info", message="x",
                           time=datetime(2016, 12, 19, 17, 40, 0, 123456, tzinfo=cet))
    assert json.loads(alarm.to_json())["time"] == "2016-12-19T16:40:00.123Z"
    with pytest.raises(ValidationError, match="timezone"):
        m.AlarmMessage(key="k", state="raised", severity="info", message="x",
                       time=datetime(2016, 12, 19, 16, 40))


def _models() -> set[type[BaseModel]]:
    seen: set[type[BaseModel]] = set()
    todo = list(m.SCHEMAS.values())
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for f in cls.model_fields.values():
            for t in getattr(f.annotation, "__args__", ()) + (f.annotation,):
                if isinstance(t, type) and issubclass(t, BaseModel):
                    todo.append(t)
                for inner in getattr(t, "__args__", ()):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        todo.append(inner)
    return seen


def test_every_field_is_described():
    missing = [f"{cls.__name__}.{name}" for cls in _models()
               for name, f in cls.model_fields.items() if not f.description]
    assert missing == []


def test_unknown_fields_are_rejected():
    with pytest.raises(ValidationError, match="extra_field"):
        m.GotoRequest.model_validate({"request_id": "a", "az_deg": 1, "el_deg": 20, "extra_field": 1})


def test_shipped_schemas_are_current():
    assert schemas.stale_files(schemas.DEFAULT_DIR) == [], (
        "docs/schemas/ is stale: run `python -m station.mqtt.schemas`")


def test_schemas_describe_the_samples():
    # Without a JSON Schema validator at hand: every property a sample sends is declared,
    # and every required property is sent.
    all_schemas = m.json_schemas()
    for name, model in SAMPLES.items():
        schema = all_schemas[name]
        sent = json.loads(model.model_dump_json())
        assert set(sent) <= set(schema["properties"]), name
        assert set(schema.get("required", [])) <= set(sent), name
        assert schema["additionalProperties"] is False


def test_every_command_has_a_schema_and_a_request_id():
    for verb, model in m.COMMANDS.items():
        schema = m.json_schemas()[f"cmd_{verb}"]
        assert "request_id" in schema["required"], verb
        assert model.__doc__ and f"cmd/{verb}" in model.__doc__


async def test_schemas_are_published_retained(mosquitto, tmp_path, clock):
    cfg = make_cfg(tmp_path, mosquitto.host, mosquitto.port, station_id="schemas")
    async with MqttService(cfg, clock) as svc:
        async with asyncio.timeout(10):
            await svc.wait_connected()
            await svc.wait_drained()
        async with collector(mosquitto.host, mosquitto.port, "qkd/schemas/schema/+") as col:
            await col.wait_for(lambda: len(col.messages) >= len(m.SCHEMAS))
    got = {msg.topic.value.rsplit("/", 1)[1]: json.loads(msg.payload) for msg in col.messages}
    assert got == m.json_schemas()


@pytest.mark.parametrize(("extra", "words"), [
    ({"embedded": True, "protocol": "5"}, "MQTT 3.1.1 only"),
    ({"embedded": True, "tls": {"ca_file": "ca.crt"}}, "plain TCP"),
    ({"password": "x", "password_file": "pw"}, "either password or password_file"),
    ({"tls": {"ca_file": "ca.crt", "cert_file": "c.crt"}}, "cert_file and key_file go together"),
    ({"port": 70000}, "less than or equal to 65535"),
])
def test_mqtt_config_rejects_combinations_that_cannot_work(extra, words):
    from station.config.mqtt import MqttConfig

    with pytest.raises(ValidationError, match=words):
        MqttConfig(**extra)
