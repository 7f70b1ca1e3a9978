"""Home Assistant MQTT discovery: the station's main sensors appear in HA by themselves.

With ``mqtt.home_assistant_discovery = true`` the service publishes, retained, one config
message per entity on ``<home_assistant_prefix>/<component>/qkd-<station_id>/<key>/config``
(HA's discovery convention). Every entity reads one of the station's own topics with a
value template, and uses ``<root>/<id>/status`` as availability, so HA greys the station
out when it goes offline (clean stop or last will).
"""

from __future__ import annotations

import json
from typing import Any

from drivers.timetagger.base import Channel
from station.config.root import StationConfig

#: (component, key, config without device/availability) of one entity.
Entity = tuple[str, str, dict[str, Any]]


def _sensor(key: str, name: str, topic: str, template: str, **extra: Any) -> Entity:
    return "sensor", key, {"name": name, "state_topic": topic, "value_template": template, **extra}


def _binary(key: str, name: str, topic: str, expr: str, **extra: Any) -> Entity:
    return "binary_sensor", key, {
        "name": name, "state_topic": topic, "payload_on": "ON", "payload_off": "OFF",
        "value_template": "{{ 'ON' if (" + expr + ") else 'OFF' }}", **extra,
    }


def entities(cfg: StationConfig) -> list[Entity]:
    """(component, key, config without device/availability) for every announced entity."""
    p = cfg.topic_prefix
    return [*_state_entities(f"{p}/state"), *_mount_and_tagger_entities(f"{p}/mount", f"{p}/timetagger"),
            *_pass_and_health_entities(f"{p}/pass", f"{p}/health", f"{p}/alarms")]


def _state_entities(state: str) -> list[Entity]:
    return [
        _sensor("mode", "Mode", state, "{{ value_json.mode }}", icon="mdi:state-machine"),
        _sensor("phase", "Phase", state, "{{ value_json.phase }}", icon="mdi:orbit"),
        _sensor("current_pass", "Current pass", state,
                "{{ value_json.current_pass.satellite if value_json.current_pass else 'none' }}",
                icon="mdi:satellite-variant"),
        _sensor("next_pass_aos", "Next pass AOS", state,
                "{{ value_json.next_pass.aos if value_json.next_pass else None }}",
                device_class="timestamp"),
        _sensor("next_pass_satellite", "Next pass satellite", state,
                "{{ value_json.next_pass.satellite if value_json.next_pass else 'none' }}",
                icon="mdi:satellite-variant"),
        _sensor("uptime", "Uptime", state, "{{ value_json.uptime_s | round(0) }}",
                device_class="duration", unit_of_measurement="s", entity_category="diagnostic"),
    ]


def _mount_and_tagger_entities(mount: str, tagger: str) -> list[Entity]:
    out = [
        _sensor("azimuth", "Azimuth", mount, "{{ value_json.actual_az_deg | round(3) }}",
                unit_of_measurement="°", state_class="measurement", icon="mdi:compass"),
        _sensor("elevation", "Elevation", mount, "{{ value_json.actual_el_deg | round(3) }}",
                unit_of_measurement="°", state_class="measurement", icon="mdi:angle-acute"),
        _sensor("tracking_error", "Tracking error", mount,
                "{{ value_json.tracking_error_arcsec | round(1) if value_json.tracking_error_arcsec "
                "is not none else None }}",
                unit_of_measurement="arcsec", state_class="measurement", icon="mdi:crosshairs"),
        _binary("parked", "Parked", mount, "value_json.parked", icon="mdi:parking"),
        _binary("moving", "Moving", mount, "value_json.moving", device_class="moving"),
        _binary("acquiring", "Acquiring", tagger, "value_json.acquiring", device_class="running"),
        _binary("tagger_overflow", "Time tagger overflow", tagger, "value_json.overflow",
                device_class="problem"),
    ]
    for ch in Channel:
        out.append(_sensor(
            f"rate_{ch.name.lower()}", f"Count rate {ch.name}", tagger,
            "{{ value_json.rates_hz.get('" + ch.name + "', 0) | round(1) }}",
            unit_of_measurement="Hz", state_class="measurement", icon="mdi:chart-bell-curve"))
    return out


def _pass_and_health_entities(pas: str, health: str, alarms: str) -> list[Entity]:
    return [
        _sensor("pass_elapsed", "Pass elapsed", pas, "{{ value_json.elapsed_s | round(0) }}",
                device_class="duration", unit_of_measurement="s"),
        _sensor("events_recorded", "Events recorded", pas, "{{ value_json.events_recorded }}",
                state_class="total_increasing", icon="mdi:counter"),
        _sensor("events_lost", "Events lost", pas, "{{ value_json.events_lost }}",
                state_class="total_increasing", icon="mdi:counter"),
        _binary("health_problem", "Health problem", health, "not value_json.ok",
                device_class="problem"),
        _sensor("disk_free", "Free disk", health,
                "{{ value_json.disk_free_bytes if value_json.disk_free_bytes is not none else None }}",
                device_class="data_size", unit_of_measurement="B", entity_category="diagnostic"),
        _binary("time_reference_locked", "Time reference locked", health,
                "value_json.time_reference_locked", device_class="lock",
                entity_category="diagnostic"),
        _binary("stream_consumer", "Stream consumer connected", health,
                "value_json.stream_consumer_connected", device_class="connectivity",
                entity_category="diagnostic"),
        _sensor("last_alarm", "Last alarm", alarms,
                "{{ value_json.severity }} {{ value_json.state }}: {{ value_json.key }}",
                json_attributes_topic=alarms, icon="mdi:alarm-light"),
    ]


def discovery_messages(cfg: StationConfig, *, version: str) -> dict[str, bytes]:
    """Topic -> retained JSON config payload for every entity."""
    node = f"qkd-{cfg.station_id}"
    device = {
        "identifiers": [node],
        "name": f"QKD station {cfg.site.name}",
        "manufacturer": "qkd-station",
        "model": "optical ground station",
        "sw_version": version,
    }
    availability = {
        "availability_topic": f"{cfg.topic_prefix}/status",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    out = {}
    for component, key, conf in entities(cfg):
        payload = {
            **conf,
            "unique_id": f"{node}-{key}",
            "object_id": f"{node}-{key}",
            **availability,
            "device": device,
            "origin": {"name": "qkd-station", "sw_version": version},
        }
        topic = f"{cfg.mqtt.home_assistant_prefix}/{component}/{node}/{key}/config"
        out[topic] = json.dumps(payload, separators=(",", ":")).encode()
    return out
