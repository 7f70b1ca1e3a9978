"""The station's MQTT connection: presence, retained state, telemetry, commands.

:class:`MqttService` is one supervised component. Use it as ``async with`` (which also
starts the embedded broker when ``mqtt.embedded``), or run :meth:`MqttService.run` as a
task and cancel it. It connects with aiomqtt, keeps reconnecting with capped exponential
backoff and jitter, and never raises because the broker is away: the daemon starts and
runs without a broker, and catches up when one appears.

Publishing methods are plain synchronous calls that never block and never raise because
of the network. Behind them are bounded outgoing queues, sent in this order:

1. *alarms* (alarms and phase transitions; QoS 1): kept until sent; when
   ``mqtt.queue_max`` is reached, the oldest is dropped and counted (``stats.dropped``);
2. *replies* (command replies; QoS 1): a queue of their own, bounded by
   :data:`~station.mqtt.limits.REPLY_QUEUE_MAX` (``stats.replies_dropped``), so a flood
   of commands can never push an alarm out;
3. *retained* (status, state, schedule, health, schemas, pass summaries, Home Assistant
   discovery; QoS 1, retain): the newest value per topic, re-sent in full after every
   reconnect;
4. *telemetry* (mount, timetagger, pass progress; QoS 0): the newest value per topic;
   a value replaced before it could be sent is counted (``stats.telemetry_coalesced``),
   and calls faster than the configured rate are thinned on the station clock
   (``stats.telemetry_throttled``).

A message whose topic is not a valid topic name, or that is larger than
:data:`~station.mqtt.limits.MAX_MESSAGE_BYTES`, is never queued (``stats.invalid``). A
message the broker refuses (the connection drops while it is in flight, or the client
library rejects it) is tried at most :data:`~station.mqtt.limits.MAX_SEND_ATTEMPTS`
times, then dropped with a log line (``stats.refused``): never retried forever.

The service never ends on its own: any error inside a session is logged and followed by a
reconnect. If its task ends anyway (cancelled, or a BaseException), :attr:`alive` turns
false and :attr:`on_ended` is called, so the daemon stops feeding the watchdog and raises
an alarm; ``offline`` is published on the way out when the connection still allows it.

The queues are :class:`station.mqtt.outbox.Outbox`; the connect/serve/reconnect loop and
the command intake are :class:`station.mqtt.connection.Connection`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel

from station import __version__
from station.clock import Clock
from station.config.root import StationConfig
from station.mqtt.broker import EmbeddedBroker
from station.mqtt.commands import INVALID_REPLY_ID, CommandDispatcher, StationControl
from station.mqtt.connection import (
    STOP_FLUSH_S,
    Connection,
    ConnState,
    backoff_delays,
    client_kwargs,
)
from station.mqtt.dedupe import FILE_NAME as SEEN_FILE_NAME
from station.mqtt.dedupe import SeenRequests
from station.mqtt.limits import clip
from station.mqtt.messages import (
    AlarmMessage,
    CommandReply,
    HealthMessage,
    MountTelemetry,
    PassProgress,
    PassSummary,
    PhaseTransition,
    ScheduleMessage,
    StateMessage,
    TimeTaggerTelemetry,
    json_schemas,
)
from station.mqtt.outbox import SUMMARIES_KEPT, MqttStats, Outbox, encode

__all__ = ["STOP_FLUSH_S", "SUMMARIES_KEPT", "ConnState", "MqttService", "MqttStats",
           "backoff_delays", "client_kwargs"]

log = logging.getLogger("station.mqtt")


class MqttService:
    """The station on MQTT. See the module docstring.

    ``control`` receives operator commands (may be None: commands are then refused).
    ``clock`` stamps replies and paces telemetry and the command rate limit.
    """

    def __init__(
        self,
        cfg: StationConfig,
        clock: Clock,
        control: StationControl | None = None,
        *,
        version: str = __version__,
    ):
        self.cfg = cfg
        self.mqtt = cfg.mqtt
        self.clock = clock
        self.version = version
        self.prefix = cfg.topic_prefix
        self.client_id = self.mqtt.client_id or f"qkd-station-{cfg.station_id}"
        self.stats = MqttStats()
        self._stop_requested = asyncio.Event()
        self.outbox = Outbox(self.stats, clock, queue_max=self.mqtt.queue_max,
                             stopping=self._stop_requested)
        seen = SeenRequests(cfg.state_dir / SEEN_FILE_NAME if cfg.state_dir else None)
        seen.load(clock.now_s())
        self.dispatcher = CommandDispatcher(
            control, clock, self._queue_reply,
            rate_per_s=self.mqtt.command_rate_per_s, burst=self.mqtt.command_burst,
            max_running=self.mqtt.command_max_running,
            reply_prefix=self.topic("reply/"), seen=seen,
        )
        self.connection = Connection(
            self.mqtt, clock, client_id=self.client_id, prefix=self.prefix, stats=self.stats,
            outbox=self.outbox, dispatcher=self.dispatcher, stop_requested=self._stop_requested,
        )
        #: Called once with the reason if the service task ends without stop() (see module doc).
        self.on_ended: Callable[[str], None] | None = None
        self.ended_reason: str | None = None
        self._broker: EmbeddedBroker | None = None
        self._task: asyncio.Task[None] | None = None
        for name, schema in json_schemas().items():
            self.outbox.set_retained(self.topic(f"schema/{name}"), json.dumps(schema).encode())
        if self.mqtt.home_assistant_discovery:
            from station.mqtt.homeassistant import discovery_messages

            for topic, payload in discovery_messages(cfg, version=version).items():
                self.outbox.set_retained(topic, payload)

    # -- topics ----------------------------------------------------------------------------
    def topic(self, suffix: str) -> str:
        """``<topic_root>/<station_id>/<suffix>``."""
        return f"{self.prefix}/{suffix}"

    @property
    def state(self) -> ConnState:
        """Where the connection supervisor is."""
        return self.connection.state

    @property
    def connected(self) -> bool:
        return self.connection.state is ConnState.CONNECTED

    @property
    def alive(self) -> bool:
        """The service task is running (connected or reconnecting). False once it ended,
        whether by :meth:`stop` or not; the daemon feeds the watchdog only while true."""
        return self._task is not None and not self._task.done()

    async def wait_connected(self) -> None:
        """Wait until connected and ``online`` has been published (callers add a timeout)."""
        await self.connection.connected.wait()

    async def wait_drained(self) -> None:
        """Wait until every queued alarm, reply and retained update has been sent."""
        await self.outbox.wait_drained()

    # -- publishing API: synchronous, never blocks ----------------------------------------
    def set_retained(self, suffix: str, payload: BaseModel | bytes | str | dict[str, Any] | None) -> None:
        """Keep ``payload`` retained on ``<prefix>/<suffix>``, re-sent after each reconnect.

        ``None`` clears the retained message (an empty retained publish).
        """
        self.outbox.set_retained(self.topic(suffix), encode(payload))

    def publish_state(self, state: StateMessage) -> None:
        """The ``state`` document (retained). Call on every change of mode, phase or pass."""
        self.set_retained("state", state)

    def publish_schedule(self, schedule: ScheduleMessage) -> None:
        """The ``schedule`` (retained). Call whenever the plan changes."""
        self.set_retained("schedule", schedule)

    def publish_health(self, health: HealthMessage) -> None:
        """The ``health`` document (retained). ``mqtt_dropped_total`` is filled in here."""
        if health.mqtt_dropped_total < self.stats.dropped_total:
            health = health.model_copy(update={"mqtt_dropped_total": self.stats.dropped_total})
        self.set_retained("health", health)

    def publish_mount(self, telemetry: MountTelemetry, *, force: bool = False) -> bool:
        """Mount telemetry, thinned to ``telemetry_tracking_hz`` while tracking or moving and
        one per ``telemetry_idle_s`` otherwise. Call as often as you like; returns whether
        this value was taken. ``force`` bypasses the thinning (e.g. on arriving at park)."""
        active = telemetry.tracking or telemetry.moving
        period_s = 1.0 / self.mqtt.telemetry_tracking_hz if active else self.mqtt.telemetry_idle_s
        return self.outbox.put_telemetry(self.topic("mount"), telemetry, period_s, force)

    def publish_timetagger(self, telemetry: TimeTaggerTelemetry, *, force: bool = False) -> bool:
        """Count rates, thinned to ``timetagger_acquiring_hz`` while acquiring, else idle period."""
        period_s = (1.0 / self.mqtt.timetagger_acquiring_hz if telemetry.acquiring
                    else self.mqtt.telemetry_idle_s)
        return self.outbox.put_telemetry(self.topic("timetagger"), telemetry, period_s, force)

    def publish_pass_progress(self, progress: PassProgress, *, force: bool = False) -> bool:
        """Progress of the current pass, thinned to ``pass_progress_hz``."""
        return self.outbox.put_telemetry(self.topic("pass"), progress, 1.0 / self.mqtt.pass_progress_hz, force)

    def publish_telemetry(self, name: str, payload: BaseModel | bytes | str | dict[str, Any]) -> None:
        """Any other telemetry on ``<prefix>/<name>`` (QoS 0, newest value wins, no thinning)."""
        self.outbox.put_latest(self.topic(name), encode(payload))

    def publish_alarm(self, alarm: AlarmMessage | BaseModel) -> None:
        """One alarm raised/cleared on ``alarms`` (QoS 1, kept until sent).

        Accepts an :class:`AlarmMessage` or any model with the same fields (such as the
        daemon's ``AlarmEvent``), so ``alarm_book.set_sink(service.publish_alarm)`` works.
        """
        if not isinstance(alarm, AlarmMessage):
            alarm = AlarmMessage.model_validate(alarm.model_dump())
        self.outbox.put_alarm(self.topic("alarms"), alarm.to_json())

    def publish_transition(self, transition: PhaseTransition) -> None:
        """One pass phase change on ``transitions`` (QoS 1, not retained, kept until sent)."""
        self.outbox.put_alarm(self.topic("transitions"), transition.to_json())

    def publish_summary(self, summary: PassSummary) -> None:
        """A finished pass's summary on ``passes/<pass_id>/summary`` (retained, kept until sent)."""
        self.outbox.put_summary(self.topic(f"passes/{summary.pass_id}/summary"), summary.to_json())

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> MqttService:
        """Start the embedded broker when configured (raises BrokerStartError), then the service."""
        if self.mqtt.embedded:
            self._broker = EmbeddedBroker(self.mqtt.host, self.mqtt.port)
            await self._broker.start()
        self._task = asyncio.get_running_loop().create_task(self.run(), name="mqtt-service")
        self._task.add_done_callback(self._task_done)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.stop()
        finally:
            if self._broker is not None:
                await self._broker.stop()
                self._broker = None

    async def stop(self) -> None:
        """Clean stop: flush alarms/replies briefly, publish ``offline`` retained, disconnect."""
        self._stop_requested.set()
        self.outbox.wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        if task.done():  # ended on its own before: already reported by _task_done
            if not task.cancelled():
                task.exception()
            return
        try:
            async with asyncio.timeout(STOP_FLUSH_S + 5.0):
                await asyncio.shield(task)
        except TimeoutError:
            log.warning("MQTT service did not stop in time; cancelling it")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self._stop_requested.is_set():
            return
        if task.cancelled():
            reason = "the MQTT service task was cancelled"
        else:
            exc = task.exception()
            reason = (f"the MQTT service task ended: {type(exc).__name__}: {clip(str(exc))}"
                      if exc is not None else "the MQTT service task ended")
        self.ended_reason = reason
        log.critical("%s; commands are no longer received and status is no longer kept", reason)
        if self.on_ended is not None:
            try:
                self.on_ended(reason)
            except Exception:
                log.exception("on_ended callback failed")

    async def run(self) -> None:
        """Connect, serve and reconnect until :meth:`stop` or cancellation."""
        await self.connection.run()

    def _queue_reply(self, reply: CommandReply, response_topic: str | None, correlation: bytes | None) -> None:
        payload = reply.to_json()
        self.outbox.put_reply(self.topic(f"reply/{reply.request_id or INVALID_REPLY_ID}"), payload)
        # The dispatcher only passes a response topic it checked (under our reply/).
        if response_topic and self.mqtt.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)
            if correlation is not None:
                props.CorrelationData = correlation
            self.outbox.put_reply(response_topic, payload, props)
