"""The operator's web view: a process of its own that relays the station's MQTT status
model to browsers and publishes their commands as MQTT commands (docs/web.md)."""
