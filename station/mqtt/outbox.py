"""The MQTT service's outgoing queues: bounded, counted, sent in priority order.

:class:`Outbox` holds every message the station wants on the broker and sends them from
one task per connection (:meth:`Outbox.send`), in this order (see ``station.mqtt.service``
for the publishing API that fills it):

1. *alarms* (alarms and phase transitions; QoS 1): kept until sent; when ``queue_max`` is
   reached, the oldest is dropped and counted (``stats.dropped``);
2. *replies* (command replies; QoS 1), bounded by
   :data:`~station.mqtt.limits.REPLY_QUEUE_MAX` (``stats.replies_dropped``);
3. *retained*: the newest value per topic, re-sent in full after every reconnect
   (:meth:`Outbox.resend_retained`);
4. *telemetry* (QoS 0): the newest value per topic (``stats.telemetry_coalesced``),
   thinned on the station clock (``stats.telemetry_throttled``).

Filling it is synchronous and never blocks or raises because of the network. A message no
broker could take is never queued (``stats.invalid``); one the broker or client library
refuses is tried at most :data:`~station.mqtt.limits.MAX_SEND_ATTEMPTS` times
(``stats.refused``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt_client
from paho.mqtt.properties import Properties
from pydantic import BaseModel

from station.clock import Clock
from station.mqtt.limits import (
    MAX_MESSAGE_BYTES,
    MAX_SEND_ATTEMPTS,
    REPLY_QUEUE_MAX,
    clip,
    topic_problem,
)

log = logging.getLogger("station.mqtt")

#: Pass summaries kept for re-publishing after a reconnect (older ones stay on the broker).
SUMMARIES_KEPT = 20


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
class Outgoing:
    """One queued QoS 1 message and how often sending it has failed."""

    topic: str
    payload: bytes
    props: Properties | None = None
    attempts: int = 0


def encode(payload: BaseModel | bytes | str | dict[str, Any] | None) -> bytes:
    """The bytes published for ``payload`` (a model as its JSON; ``None`` as empty)."""
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


def reraise_if_cancelled(exc: BaseException | None) -> None:
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


class Outbox:
    """Every message waiting for the broker. See the module docstring.

    ``stopping`` is the service's stop request: a publish cut short by a clean stop is not
    counted as a failed attempt.
    """

    def __init__(self, stats: MqttStats, clock: Clock, *, queue_max: int, stopping: asyncio.Event):
        self.stats = stats
        self.clock = clock
        self.queue_max = queue_max
        self._stopping = stopping
        self.alarms: deque[Outgoing] = deque()   # alarms and transitions
        self.replies: deque[Outgoing] = deque()
        self.retained: dict[str, tuple[int, bytes]] = {}   # topic -> (generation, payload)
        self.dirty: dict[str, int] = {}                    # retained topics to (re)send
        self.latest: dict[str, bytes] = {}                 # telemetry, newest per topic
        self._retained_strikes: dict[str, int] = {}
        self._gen = 0
        self._last_accept_s: dict[str, float] = {}
        self._summaries: deque[str] = deque()
        #: Set whenever something is queued (and on stop): the sender looks again.
        self.wake = asyncio.Event()
        #: Set by the sender when no alarm, reply or retained update is left to send.
        self.drained = asyncio.Event()

    # -- filling: synchronous, never blocks ----------------------------------------------
    def pending_reliable(self) -> bool:
        """Whether an alarm, reply or retained update is still unsent."""
        return bool(self.alarms or self.replies or self.dirty)

    async def wait_drained(self) -> None:
        """Wait until every queued alarm, reply and retained update has been sent."""
        while self.pending_reliable():
            self.drained.clear()
            await self.drained.wait()

    def set_retained(self, topic: str, payload: bytes) -> None:
        """Keep ``payload`` retained on ``topic`` (re-sent after each reconnect)."""
        if not self._admissible(topic, payload):
            return
        self.drained.clear()
        self._gen += 1
        self.retained[topic] = (self._gen, payload)
        self.dirty[topic] = self._gen
        self.wake.set()

    def put_summary(self, topic: str, payload: bytes) -> None:
        """A pass summary: retained, the newest :data:`SUMMARIES_KEPT` kept for reconnects."""
        self.set_retained(topic, payload)
        if topic not in self._summaries:
            self._summaries.append(topic)
        while len(self._summaries) > SUMMARIES_KEPT:
            old = self._summaries.popleft()
            if old in self.dirty:
                self.stats.dropped += 1
                log.warning("pass summary %s dropped unsent: %d newer ones are queued", old, SUMMARIES_KEPT)
                self.dirty.pop(old, None)
            self.retained.pop(old, None)

    def put_latest(self, topic: str, payload: bytes) -> None:
        """Telemetry (QoS 0): replaces any unsent value of the same topic."""
        if not self._admissible(topic, payload):
            return
        if topic in self.latest:
            self.stats.telemetry_coalesced += 1
            del self.latest[topic]  # re-insert at the end: oldest-waiting topic goes first
        self.latest[topic] = payload
        self.wake.set()

    def put_telemetry(self, topic: str, payload: BaseModel, period_s: float, force: bool) -> bool:
        """Telemetry thinned to one per ``period_s`` of station time; whether it was taken."""
        now_s = self.clock.now_s()
        last_s = self._last_accept_s.get(topic)
        # A little slack so a caller ticking at exactly the period is never thinned.
        if not force and last_s is not None and 0 <= now_s - last_s < period_s * 0.98:
            self.stats.telemetry_throttled += 1
            return False
        self._last_accept_s[topic] = now_s
        self.put_latest(topic, encode(payload))
        return True

    def put_alarm(self, topic: str, payload: bytes) -> None:
        """An alarm or transition: QoS 1, kept until sent, in a queue replies never share."""
        if not self._admissible(topic, payload):
            return
        self.drained.clear()
        if len(self.alarms) >= self.queue_max:
            dropped = self.alarms.popleft()
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 100 == 0:
                log.warning("MQTT alarm queue full (%d): dropped the oldest message (%s); "
                            "%d dropped so far", self.queue_max, dropped.topic, self.stats.dropped)
        self.alarms.append(Outgoing(topic, payload))
        self.wake.set()

    def put_reply(self, topic: str, payload: bytes, props: Properties | None = None) -> None:
        """A command reply: QoS 1, in its own bounded queue."""
        if not self._admissible(topic, payload):
            return
        self.drained.clear()
        if len(self.replies) >= REPLY_QUEUE_MAX:
            dropped = self.replies.popleft()
            self.stats.replies_dropped += 1
            if self.stats.replies_dropped == 1 or self.stats.replies_dropped % 100 == 0:
                log.warning("MQTT reply queue full (%d): dropped the oldest reply (%s); "
                            "%d dropped so far", REPLY_QUEUE_MAX, clip(dropped.topic),
                            self.stats.replies_dropped)
        self.replies.append(Outgoing(topic, payload, props))
        self.wake.set()

    def resend_retained(self, last_prefixes: tuple[str, ...]) -> None:
        """Mark every retained message unsent (after a connect: the broker may have restarted
        empty); topics starting with one of ``last_prefixes`` go after the others."""
        self.dirty.clear()
        for topic, (gen, _) in sorted(self.retained.items(),
                                      key=lambda kv: kv[0].startswith(last_prefixes)):
            self.dirty[topic] = gen
        self.wake.set()

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

    # -- sending: one task per connection --------------------------------------------------
    async def send(self, client: aiomqtt.Client) -> None:
        """Send whatever is queued, in priority order, until cancelled or a publish fails
        (the error ends the session; the message stays queued unless refused for good)."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending_reliable() or self.latest:
                if not self.pending_reliable():
                    self.drained.set()
                queue = self.alarms or self.replies
                if queue:
                    sent = await self._send_queued(client, queue)
                elif self.dirty:
                    sent = await self._send_retained(client)
                else:
                    sent = await self._send_latest(client)
                if sent:
                    self.stats.published += 1
                    reraise_if_cancelled(None)  # sent, and bookkept, before stopping
            if not self.pending_reliable():
                self.drained.set()

    async def _send_queued(self, client: aiomqtt.Client, queue: deque[Outgoing]) -> bool:
        item = queue.popleft()
        try:
            await client.publish(item.topic, item.payload, qos=1, retain=False, properties=item.props)
        except BaseException as exc:
            if _refused_locally(exc):  # the client library refuses it: no retry
                self._refused(item.topic, 1, exc)
                return False
            if self._counts_as_attempt(exc):
                item.attempts += 1
            if item.attempts >= MAX_SEND_ATTEMPTS:
                self._refused(item.topic, item.attempts, exc)
            else:
                queue.appendleft(item)  # kept until sent
            raise
        return True

    async def _send_retained(self, client: aiomqtt.Client) -> bool:
        topic, gen = next(iter(self.dirty.items()))
        entry = self.retained.get(topic)
        if entry is None:
            self.dirty.pop(topic, None)
            return False
        try:
            await client.publish(topic, entry[1], qos=1, retain=True)
        except BaseException as exc:
            if _refused_locally(exc):
                self._drop_retained(topic, 1, exc)
                return False
            if self._counts_as_attempt(exc):
                strikes = self._retained_strikes.get(topic, 0) + 1
                self._retained_strikes[topic] = strikes
                if strikes >= MAX_SEND_ATTEMPTS:
                    self._drop_retained(topic, strikes, exc)
            raise
        self._retained_strikes.pop(topic, None)
        if self.dirty.get(topic) == gen:  # not changed again while we sent
            del self.dirty[topic]
        return True

    async def _send_latest(self, client: aiomqtt.Client) -> bool:
        topic = next(iter(self.latest))
        payload = self.latest.pop(topic)
        try:
            await client.publish(topic, payload, qos=0)
        except Exception as exc:
            if not _refused_locally(exc):
                raise
            self._refused(topic, 1, exc)
            return False
        return True

    def _counts_as_attempt(self, exc: BaseException) -> bool:
        # A publish cut short by a clean stop is not the broker refusing it.
        return not (isinstance(exc, asyncio.CancelledError) and self._stopping.is_set())

    def _refused(self, topic: str, attempts: int, exc: BaseException) -> None:
        self.stats.refused += 1
        log.error("MQTT message on %s dropped after %d failed attempt(s) (%s): the broker or the "
                  "client library refuses it; %d refused so far", clip(topic), attempts,
                  clip(str(exc) or type(exc).__name__), self.stats.refused)

    def _drop_retained(self, topic: str, attempts: int, exc: BaseException) -> None:
        self._refused(topic, attempts, exc)
        self.retained.pop(topic, None)
        self.dirty.pop(topic, None)
        self._retained_strikes.pop(topic, None)
