"""The station on MQTT: presence, state and telemetry publishing, operator commands.

- :mod:`station.mqtt.messages`: every payload as a pydantic model (and their JSON Schemas);
- :mod:`station.mqtt.service`: :class:`MqttService`, the connection supervisor the daemon runs;
- :mod:`station.mqtt.commands`: the :class:`StationControl` protocol and the command dispatcher;
- :mod:`station.mqtt.broker`: the embedded amqtt broker for zero-setup runs;
- :mod:`station.mqtt.homeassistant`: Home Assistant MQTT discovery payloads.
"""
