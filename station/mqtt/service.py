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
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt_client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import BaseModel

from station import __version__
from station.clock import Clock
from station.config.mqtt import MqttConfig
from station.config.root import StationConfig
from station.mqtt.broker import EmbeddedBroker
from station.mqtt.commands import INVALID_REPLY_ID, CommandDispatcher, StationControl
from station.mqtt.dedupe import FILE_NAME as SEEN_FILE_NAME
from station.mqtt.dedupe import SeenRequests
from station.mqtt.limits import (
    MAX_MESSAGE_BYTES,
    MAX_SEND_ATTEMPTS,
    REPLY_QUEUE_MAX,
    clip,
    topic_problem,
)
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
    Status,
    TimeTaggerTelemetry,
    json_schemas,
)

log = logging.getLogger("station.mqtt")
# paho logs a lost socket at ERROR; the service says the same once, in its own words.
_paho_log = logging.getLogger("station.mqtt.paho")
_paho_log.setLevel(logging.CRITICAL)

#: Pass summaries kept for re-publishing after a reconnect (older ones stay on the broker).
SUMMARIES_KEPT = 20
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


@dataclass
class MqttStats:
    """Counters; nothing is dropped without being counted here."""

    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    published: int = 0
    dropped: int = 0                 # alarms/transitions lost to a full queue
    replies_dropped: int = 0         # command replies lost to a full reply queue
    invalid: int = 0                 # never queued: bad topic or larger than MAX_MESSAGE_BYTES
    refused: int = 0                 # dropped after MAX_SEND_ATTEMPTS failed sends
    internal_errors: int = 0         # unexpected errors inside a session (then reconnected)
    telemetry_coalesced: int = 0     # telemetry replaced by a newer value before sending
    telemetry_throttled: int = 0     # telemetry calls above the configured rate
    last_error: str = ""
    connected_at_s: list[float] = field(default_factory=list)  # station clock, per connect

    @property
    def dropped_total(self) -> int:
        """Every message lost for any reason but telemetry coalescing/thinning."""
        return self.dropped + self.replies_dropped + self.invalid + self.refused


@dataclass
class _Outgoing:
    """One queued QoS 1 message and how often sending it has failed."""

    topic: str
    payload: bytes
    props: Properties | None = None
    attempts: int = 0


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


def _encode(payload: BaseModel | bytes | str | dict[str, Any] | None) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, BaseModel):
        return payload.model_dump_json().encode()
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, separators=(",", ":")).encode()


#: paho return codes that mean "this message can never be sent", not "the link is down".
_LOCAL_REFUSALS = frozenset({mqtt_client.MQTT_ERR_PAYLOAD_SIZE, mqtt_client.MQTT_ERR_INVAL,
                             mqtt_client.MQTT_ERR_NOT_SUPPORTED})


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


def _reraise_if_cancelled(exc: BaseException | None) -> None:
    """Cancellation must stick: an error raised while a cancelled session closes (aiomqtt's
    disconnect timing out, say) must not turn it into a reconnect, and a publish that
    returned although its task was cancelled (3.11's wait_for race) must not go on."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


def _refused_locally(exc: BaseException) -> bool:
    """Whether the client library refused a message itself (bad topic, too large for the
    broker's announced maximum ...): retrying it cannot help."""
    if isinstance(exc, ValueError | TypeError):
        return True
    return isinstance(exc, aiomqtt.MqttCodeError) and exc.rc in _LOCAL_REFUSALS


class _SettingsProblem(Exception):
    """Internal: the MQTT settings cannot be used as they are (the message says why)."""


class _Stopping(Exception):
    """Internal: a clean stop was requested while connected."""


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
        self.state = ConnState.NEW
        self.stats = MqttStats()
        seen = SeenRequests(cfg.state_dir / SEEN_FILE_NAME if cfg.state_dir else None)
        seen.load(clock.now_s())
        self.dispatcher = CommandDispatcher(
            control, clock, self._queue_reply,
            rate_per_s=self.mqtt.command_rate_per_s, burst=self.mqtt.command_burst,
            max_running=self.mqtt.command_max_running,
            reply_prefix=self.topic("reply/"), seen=seen,
        )
        #: Called once with the reason if the service task ends without stop() (see module doc).
        self.on_ended: Callable[[str], None] | None = None
        self.ended_reason: str | None = None
        self._reliable: deque[_Outgoing] = deque()   # alarms and transitions
        self._replies: deque[_Outgoing] = deque()
        self._retained_strikes: dict[str, int] = {}
        self._retained: dict[str, tuple[int, bytes]] = {}
        self._dirty: dict[str, int] = {}
        self._latest: dict[str, bytes] = {}
        self._gen = 0
        self._last_accept_s: dict[str, float] = {}
        self._summaries: deque[str] = deque()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()  # set by the sender when nothing is left to send
        self._stop_requested = asyncio.Event()
        self._connected = asyncio.Event()
        self._broker: EmbeddedBroker | None = None
        self._task: asyncio.Task[None] | None = None
        for name, schema in json_schemas().items():
            self._set_retained_abs(self.topic(f"schema/{name}"), json.dumps(schema).encode())
        if self.mqtt.home_assistant_discovery:
            from station.mqtt.homeassistant import discovery_messages

            for topic, payload in discovery_messages(cfg, version=version).items():
                self._set_retained_abs(topic, payload)

    # -- topics ----------------------------------------------------------------------------
    def topic(self, suffix: str) -> str:
        """``<topic_root>/<station_id>/<suffix>``."""
        return f"{self.prefix}/{suffix}"

    @property
    def connected(self) -> bool:
        return self.state is ConnState.CONNECTED

    @property
    def alive(self) -> bool:
        """The service task is running (connected or reconnecting). False once it ended,
        whether by :meth:`stop` or not; the daemon feeds the watchdog only while true."""
        return self._task is not None and not self._task.done()

    async def wait_connected(self) -> None:
        """Wait until connected and ``online`` has been published (callers add a timeout)."""
        await self._connected.wait()

    async def wait_drained(self) -> None:
        """Wait until every queued alarm, reply and retained update has been sent."""
        while self._reliable or self._replies or self._dirty:
            self._drained.clear()
            await self._drained.wait()

    # -- publishing API: synchronous, never blocks ----------------------------------------
    def set_retained(self, suffix: str, payload: BaseModel | bytes | str | dict[str, Any] | None) -> None:
        """Keep ``payload`` retained on ``<prefix>/<suffix>``, re-sent after each reconnect.

        ``None`` clears the retained message (an empty retained publish).
        """
        self._set_retained_abs(self.topic(suffix), _encode(payload))

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
        return self._telemetry("mount", telemetry, period_s, force)

    def publish_timetagger(self, telemetry: TimeTaggerTelemetry, *, force: bool = False) -> bool:
        """Count rates, thinned to ``timetagger_acquiring_hz`` while acquiring, else idle period."""
        period_s = (1.0 / self.mqtt.timetagger_acquiring_hz if telemetry.acquiring
                    else self.mqtt.telemetry_idle_s)
        return self._telemetry("timetagger", telemetry, period_s, force)

    def publish_pass_progress(self, progress: PassProgress, *, force: bool = False) -> bool:
        """Progress of the current pass, thinned to ``pass_progress_hz``."""
        return self._telemetry("pass", progress, 1.0 / self.mqtt.pass_progress_hz, force)

    def publish_telemetry(self, name: str, payload: BaseModel | bytes | str | dict[str, Any]) -> None:
        """Any other telemetry on ``<prefix>/<name>`` (QoS 0, newest value wins, no thinning)."""
        self._put_latest(self.topic(name), _encode(payload))

    def publish_alarm(self, alarm: AlarmMessage | BaseModel) -> None:
        """One alarm raised/cleared on ``alarms`` (QoS 1, kept until sent).

        Accepts an :class:`AlarmMessage` or any model with the same fields (such as the
        daemon's ``AlarmEvent``), so ``alarm_book.set_sink(service.publish_alarm)`` works.
        """
        if not isinstance(alarm, AlarmMessage):
            alarm = AlarmMessage.model_validate(alarm.model_dump())
        self._put_reliable(self.topic("alarms"), alarm.to_json())

    def publish_transition(self, transition: PhaseTransition) -> None:
        """One pass phase change on ``transitions`` (QoS 1, not retained, kept until sent)."""
        self._put_reliable(self.topic("transitions"), transition.to_json())

    def publish_summary(self, summary: PassSummary) -> None:
        """A finished pass's summary on ``passes/<pass_id>/summary`` (retained, kept until sent)."""
        topic = self.topic(f"passes/{summary.pass_id}/summary")
        self._set_retained_abs(topic, summary.to_json())
        if topic not in self._summaries:
            self._summaries.append(topic)
        while len(self._summaries) > SUMMARIES_KEPT:
            old = self._summaries.popleft()
            if old in self._dirty:
                self.stats.dropped += 1
                log.warning("pass summary %s dropped unsent: %d newer ones are queued", old, SUMMARIES_KEPT)
                self._dirty.pop(old, None)
            self._retained.pop(old, None)

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
        self._wake.set()
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
        delays = backoff_delays(self.mqtt.reconnect_min_s, self.mqtt.reconnect_max_s)
        try:
            while not self._stop_requested.is_set():
                self.state = ConnState.CONNECTING
                connects_before = self.stats.connects
                try:
                    await self._session()
                except (aiomqtt.MqttError, OSError) as exc:  # OSError: also ssl errors, bad files
                    _reraise_if_cancelled(exc)
                    self._on_connection_lost(exc, was_connected=self.stats.connects > connects_before)
                except _SettingsProblem as exc:
                    # A fixable local problem (empty password file ...): keep retrying, so
                    # fixing the file is enough, and never take the daemon down.
                    self._on_connection_lost(exc, was_connected=False)
                except Exception as exc:
                    _reraise_if_cancelled(exc)
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
                delay_s = next(delays)
                # Wall-clock I/O pacing, not domain time: a broker does not care about the sim clock.
                try:
                    async with asyncio.timeout(delay_s):
                        await self._stop_requested.wait()
                except TimeoutError:
                    pass
        finally:
            self._connected.clear()
            self.state = ConnState.STOPPED
            await self.dispatcher.aclose()

    # -- internals -------------------------------------------------------------------------
    def _on_connection_lost(self, exc: BaseException, *, was_connected: bool) -> None:
        self._connected.clear()
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

    async def _session(self) -> None:
        try:
            kwargs = client_kwargs(self.mqtt, self.client_id)
        except OSError as exc:
            raise _SettingsProblem(f"cannot read mqtt.password_file {self.mqtt.password_file}: "
                                   f"{exc.strerror or exc}") from None
        except IndexError:
            raise _SettingsProblem(f"mqtt.password_file {self.mqtt.password_file} is empty; "
                                   "its first line must be the password") from None
        will = aiomqtt.Will(self.topic("status"), Status.OFFLINE.value.encode(), qos=1, retain=True)
        client = aiomqtt.Client(**kwargs, will=will, logger=_paho_log)
        async with client:
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
            self._dirty.clear()
            static = self.topic("schema/")
            ha = f"{self.mqtt.home_assistant_prefix}/"
            for topic, (gen, _) in sorted(self._retained.items(),
                                          key=lambda kv: kv[0].startswith((static, ha))):
                self._dirty[topic] = gen
            self._wake.set()
            self._connected.set()
            tasks = [
                asyncio.create_task(self._receive(client), name="mqtt-receive"),
                asyncio.create_task(self._send(client), name="mqtt-send"),
                asyncio.create_task(self._watch_stop(client), name="mqtt-stop"),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # Cancelled instead of stopped: still say goodbye, briefly.
                self._connected.clear()
                await _cancel_all(tasks)
                await self._say_offline(client)
                raise
            finally:
                self._connected.clear()
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
        log.info("disconnected from MQTT broker; %s/status is offline", self.prefix)

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
                await self._drained.wait()
        except TimeoutError:
            log.warning("stopping with %d alarm(s), %d reply(ies) and %d retained update(s) unsent",
                        len(self._reliable), len(self._replies), len(self._dirty))
        await client.publish(self.topic("status"), Status.OFFLINE.value.encode(), qos=1, retain=True,
                             timeout=STOP_FLUSH_S)
        raise _Stopping

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

    def _pending_reliable(self) -> bool:
        return bool(self._reliable or self._replies or self._dirty)

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending_reliable() or self._latest:
                if not self._pending_reliable():
                    self._drained.set()
                queue = self._reliable or self._replies
                if queue:
                    item = queue.popleft()
                    try:
                        await client.publish(item.topic, item.payload, qos=1, retain=False,
                                             properties=item.props)
                    except BaseException as exc:
                        if _refused_locally(exc):  # the client library refuses it: no retry
                            self._refused(item.topic, 1, exc)
                            continue
                        if self._counts_as_attempt(exc):
                            item.attempts += 1
                        if item.attempts >= MAX_SEND_ATTEMPTS:
                            self._refused(item.topic, item.attempts, exc)
                        else:
                            queue.appendleft(item)  # kept until sent
                        raise
                elif self._dirty:
                    topic, gen = next(iter(self._dirty.items()))
                    entry = self._retained.get(topic)
                    if entry is None:
                        self._dirty.pop(topic, None)
                        continue
                    try:
                        await client.publish(topic, entry[1], qos=1, retain=True)
                    except BaseException as exc:
                        if _refused_locally(exc):
                            self._drop_retained(topic, 1, exc)
                            continue
                        if self._counts_as_attempt(exc):
                            strikes = self._retained_strikes.get(topic, 0) + 1
                            self._retained_strikes[topic] = strikes
                            if strikes >= MAX_SEND_ATTEMPTS:
                                self._drop_retained(topic, strikes, exc)
                        raise
                    self._retained_strikes.pop(topic, None)
                    if self._dirty.get(topic) == gen:  # not changed again while we sent
                        del self._dirty[topic]
                else:
                    topic = next(iter(self._latest))
                    payload = self._latest.pop(topic)
                    try:
                        await client.publish(topic, payload, qos=0)
                    except Exception as exc:
                        if not _refused_locally(exc):
                            raise
                        self._refused(topic, 1, exc)
                        continue
                self.stats.published += 1
                _reraise_if_cancelled(None)  # sent, and bookkept, before stopping
            if not self._pending_reliable():
                self._drained.set()

    def _counts_as_attempt(self, exc: BaseException) -> bool:
        # A publish cut short by a clean stop is not the broker refusing it.
        return not (isinstance(exc, asyncio.CancelledError) and self._stop_requested.is_set())

    def _refused(self, topic: str, attempts: int, exc: BaseException) -> None:
        self.stats.refused += 1
        log.error("MQTT message on %s dropped after %d failed attempt(s) (%s): the broker or the "
                  "client library refuses it; %d refused so far", clip(topic), attempts,
                  clip(str(exc) or type(exc).__name__), self.stats.refused)

    def _drop_retained(self, topic: str, attempts: int, exc: BaseException) -> None:
        self._refused(topic, attempts, exc)
        self._retained.pop(topic, None)
        self._dirty.pop(topic, None)
        self._retained_strikes.pop(topic, None)

    def _admissible(self, topic: str, payload: bytes) -> bool:
        """Whether the broker could take this message at all; if not, log, count, refuse."""
        problem = topic_problem(topic)
        if problem is None and len(payload) > MAX_MESSAGE_BYTES:
            problem = f"payload of {len(payload)} bytes is over the {MAX_MESSAGE_BYTES} byte limit"
        if problem is None:
            return True
        self.stats.invalid += 1
        log.error("MQTT message on %s not sent: %s; %d such so far", clip(topic), problem,
                  self.stats.invalid)
        return False

    def _set_retained_abs(self, topic: str, payload: bytes) -> None:
        if not self._admissible(topic, payload):
            return
        self._drained.clear()
        self._gen += 1
        self._retained[topic] = (self._gen, payload)
        self._dirty[topic] = self._gen
        self._wake.set()

    def _put_latest(self, topic: str, payload: bytes) -> None:
        if not self._admissible(topic, payload):
            return
        if topic in self._latest:
            self.stats.telemetry_coalesced += 1
            del self._latest[topic]  # re-insert at the end: oldest-waiting topic goes first
        self._latest[topic] = payload
        self._wake.set()

    def _telemetry(self, name: str, payload: BaseModel, period_s: float, force: bool) -> bool:
        now_s = self.clock.now_s()
        last_s = self._last_accept_s.get(name)
        # A little slack so a caller ticking at exactly the period is never thinned.
        if not force and last_s is not None and 0 <= now_s - last_s < period_s * 0.98:
            self.stats.telemetry_throttled += 1
            return False
        self._last_accept_s[name] = now_s
        self._put_latest(self.topic(name), _encode(payload))
        return True

    def _put_reliable(self, topic: str, payload: bytes) -> None:
        """An alarm or transition: QoS 1, kept until sent, in a queue replies never share."""
        if not self._admissible(topic, payload):
            return
        self._drained.clear()
        if len(self._reliable) >= self.mqtt.queue_max:
            dropped = self._reliable.popleft()
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 100 == 0:
                log.warning("MQTT alarm queue full (%d): dropped the oldest message (%s); "
                            "%d dropped so far", self.mqtt.queue_max, dropped.topic, self.stats.dropped)
        self._reliable.append(_Outgoing(topic, payload))
        self._wake.set()

    def _put_reply(self, topic: str, payload: bytes, props: Properties | None = None) -> None:
        if not self._admissible(topic, payload):
            return
        self._drained.clear()
        if len(self._replies) >= REPLY_QUEUE_MAX:
            dropped = self._replies.popleft()
            self.stats.replies_dropped += 1
            if self.stats.replies_dropped == 1 or self.stats.replies_dropped % 100 == 0:
                log.warning("MQTT reply queue full (%d): dropped the oldest reply (%s); "
                            "%d dropped so far", REPLY_QUEUE_MAX, clip(dropped.topic),
                            self.stats.replies_dropped)
        self._replies.append(_Outgoing(topic, payload, props))
        self._wake.set()

    def _queue_reply(self, reply: CommandReply, response_topic: str | None, correlation: bytes | None) -> None:
        payload = reply.to_json()
        self._put_reply(self.topic(f"reply/{reply.request_id or INVALID_REPLY_ID}"), payload)
        # The dispatcher only passes a response topic it checked (under our reply/).
        if response_topic and self.mqtt.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)
            if correlation is not None:
                props.CorrelationData = correlation
            self._put_reply(response_topic, payload, props)
