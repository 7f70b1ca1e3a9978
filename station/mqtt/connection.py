"""The MQTT service's connection: connect, serve one session, reconnect with backoff.

:class:`Connection` is the loop behind :meth:`station.mqtt.service.MqttService.run`. Each
session connects with aiomqtt (last will ``offline``), subscribes to ``cmd/+``, publishes
``online``, re-sends everything retained, then runs three tasks until one ends: the
command intake (:meth:`Connection._receive`, into the
:class:`~station.mqtt.commands.CommandDispatcher`), the sender
(:meth:`station.mqtt.outbox.Outbox.send`) and the stop watcher. Any error ends the session
and is followed by a reconnect with capped exponential backoff and jitter; only a stop
request or cancellation ends the loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import traceback
from collections.abc import Iterator
from enum import StrEnum
from typing import Any

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from station.clock import Clock
from station.config.mqtt import MqttConfig
from station.mqtt.commands import CommandDispatcher
from station.mqtt.limits import clip
from station.mqtt.messages import Status
from station.mqtt.outbox import MqttStats, Outbox, reraise_if_cancelled

log = logging.getLogger("station.mqtt")
# paho logs a lost socket at ERROR; the service says the same once, in its own words.
_paho_log = logging.getLogger("station.mqtt.paho")
_paho_log.setLevel(logging.CRITICAL)

#: Wall seconds a clean stop spends flushing queued alarms/replies before going offline.
STOP_FLUSH_S = 2.0


class ConnState(StrEnum):
    """Where the connection supervisor is."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"       # waiting before the next attempt
    STOPPING = "stopping"
    STOPPED = "stopped"


def backoff_delays(min_s: float, max_s: float, rng: random.Random | None = None) -> Iterator[float]:
    """Reconnect delays: exponential from ``min_s``, capped at ``max_s``, with jitter.

    Each delay is drawn uniformly in [cap/2, cap] of the current step ("equal jitter"), so
    stations restarted together do not hammer the broker in step, and no delay exceeds
    ``max_s``.
    """
    rng = rng or random.Random()
    step = min_s
    while True:
        yield rng.uniform(step / 2, step)
        step = min(step * 2, max_s)


def client_kwargs(mqtt: MqttConfig, identifier: str | None) -> dict[str, Any]:
    """Keyword arguments for :class:`aiomqtt.Client` from the config (TLS, user, protocol).

    Shared by the service and the ``monitor``/``cmd`` sub-commands.
    """
    kwargs: dict[str, Any] = {
        "hostname": mqtt.host,
        "port": mqtt.port,
        "identifier": identifier,
        "keepalive": mqtt.keepalive_s,
        "protocol": aiomqtt.ProtocolVersion.V5 if mqtt.protocol == "5" else aiomqtt.ProtocolVersion.V311,
        "timeout": 10,
    }
    if mqtt.protocol == "5":
        kwargs["clean_start"] = True  # never receive commands queued while we were away
    else:
        kwargs["clean_session"] = True
    if mqtt.username:
        kwargs["username"] = mqtt.username
        kwargs["password"] = mqtt.resolved_password()
    if mqtt.tls is not None:
        kwargs["tls_params"] = aiomqtt.TLSParameters(
            ca_certs=str(mqtt.tls.ca_file),
            certfile=str(mqtt.tls.cert_file) if mqtt.tls.cert_file else None,
            keyfile=str(mqtt.tls.key_file) if mqtt.tls.key_file else None,
        )
        if mqtt.tls.insecure_skip_hostname_check:
            kwargs["tls_insecure"] = True
    return kwargs


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended.

    Python 3.11's ``asyncio.wait_for`` (inside aiomqtt's publish) can swallow a
    cancellation that races with the PUBACK; the sender would then loop on and the session
    would never end. A task still running after a moment is cancelled again.
    """
    for t in tasks:
        t.cancel()
    pending: set[asyncio.Task[None]] = set(tasks)
    while pending:
        # Wall-time pacing of the re-cancel, not domain time.
        _, pending = await asyncio.wait(pending, timeout=0.5)
        for t in pending:
            t.cancel()


class _SettingsProblem(Exception):
    """Internal: the MQTT settings cannot be used as they are (the message says why)."""


class _Stopping(Exception):
    """Internal: a clean stop was requested while connected."""


class Connection:
    """Sessions with the broker, one after the other. See the module docstring.

    ``stop_requested`` is the service's clean-stop request; ``connected`` is set while a
    session is up and ``online`` has been published.
    """

    def __init__(self, mqtt: MqttConfig, clock: Clock, *, client_id: str, prefix: str,
                 stats: MqttStats, outbox: Outbox, dispatcher: CommandDispatcher,
                 stop_requested: asyncio.Event):
        self.mqtt = mqtt
        self.clock = clock
        self.client_id = client_id
        self.prefix = prefix
        self.stats = stats
        self.outbox = outbox
        self.dispatcher = dispatcher
        self.state = ConnState.NEW
        self.connected = asyncio.Event()
        self._stop_requested = stop_requested

    def topic(self, suffix: str) -> str:
        return f"{self.prefix}/{suffix}"

    async def run(self) -> None:
        """Connect, serve and reconnect until the stop request or cancellation."""
        delays = backoff_delays(self.mqtt.reconnect_min_s, self.mqtt.reconnect_max_s)
        try:
            while not self._stop_requested.is_set():
                self.state = ConnState.CONNECTING
                connects_before = self.stats.connects
                try:
                    await self._session()
                except (aiomqtt.MqttError, OSError) as exc:  # OSError: also ssl errors, bad files
                    reraise_if_cancelled(exc)
                    self._on_connection_lost(exc, was_connected=self.stats.connects > connects_before)
                except _SettingsProblem as exc:
                    # A fixable local problem (empty password file ...): keep retrying, so
                    # fixing the file is enough, and never take the daemon down.
                    self._on_connection_lost(exc, was_connected=False)
                except Exception as exc:
                    reraise_if_cancelled(exc)
                    # A bug or an input nobody foresaw: never the end of the service.
                    self.stats.internal_errors += 1
                    log.error("MQTT session ended by an unexpected error (%s); reconnecting:\n%s",
                              clip(f"{type(exc).__name__}: {exc}"),
                              "".join(traceback.format_tb(exc.__traceback__)))
                    self._on_connection_lost(exc, was_connected=self.stats.connects > connects_before)
                else:
                    if self._stop_requested.is_set():
                        break
                    delays = backoff_delays(self.mqtt.reconnect_min_s, self.mqtt.reconnect_max_s)
                if self._stop_requested.is_set():
                    break
                self.state = ConnState.BACKOFF
                await self._back_off(next(delays))
        finally:
            self.connected.clear()
            self.state = ConnState.STOPPED
            await self.dispatcher.aclose()

    async def _back_off(self, delay_s: float) -> None:
        # Wall-clock I/O pacing, not domain time: a broker does not care about the sim clock.
        try:
            async with asyncio.timeout(delay_s):
                await self._stop_requested.wait()
        except TimeoutError:
            pass

    def _on_connection_lost(self, exc: BaseException, *, was_connected: bool) -> None:
        self.connected.clear()
        self.stats.last_error = clip(str(exc) or type(exc).__name__)
        if was_connected:
            self.stats.disconnects += 1
            log.warning("lost the MQTT broker %s:%d: %s; reconnecting", self.mqtt.host, self.mqtt.port,
                        self.stats.last_error)
        else:
            self.stats.connect_failures += 1
            # First failure loud, the rest quiet: a broker that is down is one problem.
            level = logging.WARNING if self.stats.connect_failures == 1 else logging.DEBUG
            log.log(level, "cannot reach the MQTT broker %s:%d: %s; retrying in the background",
                    self.mqtt.host, self.mqtt.port, self.stats.last_error)

    # -- one session -----------------------------------------------------------------------
    async def _session(self) -> None:
        async with self._client() as client:
            await self._announce(client)
            await self._serve(client)
        log.info("disconnected from MQTT broker; %s/status is offline", self.prefix)

    def _client(self) -> aiomqtt.Client:
        try:
            kwargs = client_kwargs(self.mqtt, self.client_id)
        except OSError as exc:
            raise _SettingsProblem(f"cannot read mqtt.password_file {self.mqtt.password_file}: "
                                   f"{exc.strerror or exc}") from None
        except IndexError:
            raise _SettingsProblem(f"mqtt.password_file {self.mqtt.password_file} is empty; "
                                   "its first line must be the password") from None
        will = aiomqtt.Will(self.topic("status"), Status.OFFLINE.value.encode(), qos=1, retain=True)
        return aiomqtt.Client(**kwargs, will=will, logger=_paho_log)

    async def _announce(self, client: aiomqtt.Client) -> None:
        """Subscribe to commands, say ``online``, and queue everything retained again."""
        if self.mqtt.protocol == "5":
            # Retain-as-published shows the retain flag on live messages too, so a
            # command published with retain is refused even the first time.
            await client.subscribe(self.topic("cmd/+"), options=SubscribeOptions(
                qos=1, retainAsPublished=True))
        else:
            await client.subscribe(self.topic("cmd/+"), qos=1)
        await client.publish(self.topic("status"), Status.ONLINE.value.encode(), qos=1, retain=True)
        self.state = ConnState.CONNECTED
        self.stats.connects += 1
        self.stats.connected_at_s.append(self.clock.now_s())
        self.stats.connected_at_s[:] = self.stats.connected_at_s[-50:]
        log.info("connected to MQTT broker %s:%d as %s; %s/status is online",
                 self.mqtt.host, self.mqtt.port, self.client_id, self.prefix)
        # Everything retained goes out again: the broker may have restarted empty.
        # State first; the static schemas and HA configs after it.
        self.outbox.resend_retained((self.topic("schema/"), f"{self.mqtt.home_assistant_prefix}/"))
        self.connected.set()

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Run intake, sender and stop watcher until one ends; re-raise its error."""
        tasks = [
            asyncio.create_task(self._receive(client), name="mqtt-receive"),
            asyncio.create_task(self.outbox.send(client), name="mqtt-send"),
            asyncio.create_task(self._watch_stop(client), name="mqtt-stop"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # Cancelled instead of stopped: still say goodbye, briefly.
            self.connected.clear()
            await _cancel_all(tasks)
            await self._say_offline(client)
            raise
        finally:
            self.connected.clear()
            await _cancel_all(tasks)
        for t in done:
            exc = t.exception()
            if isinstance(exc, _Stopping):
                self.state = ConnState.STOPPING
            elif exc is not None:
                if not isinstance(exc, aiomqtt.MqttError | OSError):
                    # The link may still be up: say offline, since a clean DISCONNECT
                    # makes the broker drop the will.
                    await self._say_offline(client)
                raise exc

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        try:
            await client.publish(self.topic("status"), Status.OFFLINE.value.encode(),
                                 qos=1, retain=True, timeout=STOP_FLUSH_S)
        except (aiomqtt.MqttError, OSError) as exc:
            log.warning("could not publish %s/status offline: %s", self.prefix, clip(str(exc)))

    async def _watch_stop(self, client: aiomqtt.Client) -> None:
        await self._stop_requested.wait()
        try:
            async with asyncio.timeout(STOP_FLUSH_S):
                await self.outbox.drained.wait()
        except TimeoutError:
            log.warning("stopping with %d alarm(s), %d reply(ies) and %d retained update(s) unsent",
                        len(self.outbox.alarms), len(self.outbox.replies), len(self.outbox.dirty))
        await client.publish(self.topic("status"), Status.OFFLINE.value.encode(), qos=1, retain=True,
                             timeout=STOP_FLUSH_S)
        raise _Stopping

    # -- command intake --------------------------------------------------------------------
    async def _receive(self, client: aiomqtt.Client) -> None:
        cmd_prefix = self.topic("cmd/")
        async for message in client.messages:
            try:
                self._take_message(message, cmd_prefix)
            except Exception:  # one message must never end the receive loop
                self.stats.internal_errors += 1
                log.exception("MQTT message on %s could not be taken", clip(str(message.topic)))

    def _take_message(self, message: aiomqtt.Message, cmd_prefix: str) -> None:
        topic = message.topic.value
        if not topic.startswith(cmd_prefix):
            return
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        response_topic = correlation = None
        props = message.properties
        if props is not None:
            response_topic = getattr(props, "ResponseTopic", None)
            correlation = getattr(props, "CorrelationData", None)
        self.dispatcher.handle(topic[len(cmd_prefix):], payload, retained=bool(message.retain),
                               response_topic=response_topic, correlation=correlation)
