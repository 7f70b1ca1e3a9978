"""The embedded MQTT broker (amqtt, MQTT 3.1.1) for zero-setup runs.

With ``mqtt.embedded = true`` the station starts this broker on ``mqtt.host:mqtt.port``
before connecting to it, so ``make run`` needs no other service. It is anonymous and
plain TCP: meant for a laptop or CI on loopback, not for a station on a network (use
Mosquitto with ``config/mosquitto/`` there).
"""

from __future__ import annotations

import errno
import logging
import socket

log = logging.getLogger("station.mqtt.broker")


class BrokerStartError(RuntimeError):
    """The embedded broker could not start; the message says why and what to change."""

    def __init__(self, message: str, *, host: str, port: int):
        super().__init__(message)
        self.host = host
        self.port = port


def _port_in_use(host: str, port: int) -> bool:
    """Whether a listener could not bind ``host:port`` the way amqtt's does.

    amqtt listens with SO_REUSEADDR, so the probe must too: without it, the connections
    a killed daemon left in TIME_WAIT would make the port look taken for a minute or so
    after a ``kill -9``, and the restart under systemd would fail.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _port_taken_message(host: str, port: int) -> str:
    return (
        f"cannot start the embedded MQTT broker: port {port} on {host} is already in use "
        f"(another broker or daemon?). Stop that process, or choose another port with "
        f"mqtt.port in the config file or QKD_STATION__MQTT__PORT=<port> in the environment, "
        f"or set mqtt.embedded = false to use the broker already running there."
    )


class EmbeddedBroker:
    """An in-process amqtt broker on ``host:port``. Use ``async with`` or start()/stop()."""

    def __init__(self, host: str, port: int):
        self.host = host
        self.port = port
        self._broker = None

    async def start(self) -> None:
        """Listen on host:port; raise :class:`BrokerStartError` when that is impossible."""
        # amqtt binds with SO_REUSEADDR and buries the OSError in its log; check first so
        # the operator gets one clear sentence naming the port.
        if _port_in_use(self.host, self.port):
            raise BrokerStartError(_port_taken_message(self.host, self.port), host=self.host, port=self.port)
        from amqtt.broker import Broker
        from amqtt.errors import BrokerError

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        broker = Broker(config)
        try:
            await broker.start()
        except BrokerError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
                raise BrokerStartError(
                    _port_taken_message(self.host, self.port), host=self.host, port=self.port
                ) from None
            raise BrokerStartError(
                f"cannot start the embedded MQTT broker on {self.host}:{self.port}: {exc}",
                host=self.host, port=self.port,
            ) from exc
        self._broker = broker
        log.info("embedded MQTT broker (amqtt, MQTT 3.1.1) listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Close every session and the listener. Safe to call twice."""
        broker, self._broker = self._broker, None
        if broker is None:
            return
        await broker.shutdown()
        log.info("embedded MQTT broker stopped")

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
