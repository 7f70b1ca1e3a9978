"""The station on MQTT: presence, state and telemetry publishing, operator commands.

- :mod:`station.mqtt.messages`: every payload as a pydantic model (and their JSON Schemas);
- :mod:`station.mqtt.service`: :class:`MqttService`, the connection supervisor the daemon runs;
- :mod:`station.mqtt.outbox`: its outgoing queues (priority, bounds, retries, counters);
- :mod:`station.mqtt.connection`: its connect/serve/reconnect loop and command intake;
- :mod:`station.mqtt.commands`: the :class:`StationControl` protocol and the command dispatcher;
- :mod:`station.mqtt.decode`: a command payload read and strictly validated (pure functions);
- :mod:`station.mqtt.limits`: every bound on MQTT traffic, and the helpers enforcing them;
- :mod:`station.mqtt.dedupe`: request ids already answered, kept in the state directory;
- :mod:`station.mqtt.broker`: the embedded amqtt broker for zero-setup runs;
- :mod:`station.mqtt.homeassistant`: Home Assistant MQTT discovery payloads;
- :mod:`station.mqtt.client`: station id and ``[mqtt]`` for clients (monitor, cmd);
- :mod:`station.mqtt.schemas`: ``python -m station.mqtt.schemas`` writes/checks docs/schemas.

Topics, payloads and commands are documented in ``docs/mqtt.md``.
"""
