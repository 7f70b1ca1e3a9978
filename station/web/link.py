"""The web view's one MQTT connection: status model in, operator commands out.

It subscribes to the station's whole tree ``P/#`` and hands every message to the
:class:`~station.web.feed.FeedHub` (which decides what a browser may see), and it
publishes the page's commands to ``P/cmd/<verb>`` exactly as ``qkd-station cmd`` does, so
they take the station's own command path: validation, mode rules, the safety gate, rate
limits. Replies come back on ``P/reply/<request_id>``; they are answered to the one HTTP
request that asked and never relayed to the feed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from typing import Any

import aiomqtt

from station.config.root import StationConfig
from station.mqtt.messages import CommandReply
from station.mqtt.service import client_kwargs
from station.web.feed import FeedHub

log = logging.getLogger("station.web.link")


class BrokerUnavailable(RuntimeError):
    """The web view is not connected to the broker right now."""


class MqttLink:
    """Keeps one aiomqtt client connected (backoff with jitter) for the feed and commands."""

    def __init__(self, cfg: StationConfig, hub: FeedHub) -> None:
        self.cfg = cfg
        self.hub = hub
        self.prefix = cfg.topic_prefix
        self.instance = uuid.uuid4().hex[:8]
        self._client: aiomqtt.Client | None = None
        self._replies: dict[str, asyncio.Future[CommandReply]] = {}
        self.connected = asyncio.Event()

    def _kwargs(self) -> dict[str, Any]:
        web = self.cfg.web
        mqtt = self.cfg.mqtt
        update: dict[str, Any] = {}
        if web.mqtt_username:
            update["username"] = web.mqtt_username
        if web.mqtt_password_file is not None:
            update.update(password_file=web.mqtt_password_file, password=None)
        if update:
            mqtt = mqtt.model_copy(update=update)
        return client_kwargs(mqtt, f"qkd-web-{self.cfg.station_id}-{self.instance}")

    async def run(self) -> None:
        """Connect, relay, reconnect; until cancelled."""
        delay_s = self.cfg.mqtt.reconnect_min_s
        while True:
            try:
                async with aiomqtt.Client(**self._kwargs()) as client:
                    await client.subscribe(f"{self.prefix}/#", qos=1)
                    self._client = client
                    self.connected.set()
                    delay_s = self.cfg.mqtt.reconnect_min_s
                    log.info("web view connected to the broker %s:%d", self.cfg.mqtt.host, self.cfg.mqtt.port)
                    async for msg in client.messages:
                        topic = msg.topic.value
                        payload = bytes(msg.payload) if isinstance(msg.payload, bytes | bytearray) else \
                            str(msg.payload or "").encode()
                        if topic.startswith(f"{self.prefix}/reply/"):
                            self._reply(topic, payload)
                        else:
                            self.hub.take(topic, payload)
            except aiomqtt.MqttError as exc:
                log.warning("web view: broker %s:%d: %s; retrying in %.1f s", self.cfg.mqtt.host,
                            self.cfg.mqtt.port, exc, delay_s)
            finally:
                self._client = None
                self.connected.clear()
            # Wall-time pacing of reconnects on purpose (as the station's own service).
            await asyncio.sleep(delay_s * random.uniform(0.8, 1.2))
            delay_s = min(delay_s * 2, self.cfg.mqtt.reconnect_max_s)

    def _reply(self, topic: str, payload: bytes) -> None:
        request_id = topic.rsplit("/", 1)[-1]
        fut = self._replies.get(request_id)
        if fut is None or fut.done():
            return
        try:
            fut.set_result(CommandReply.model_validate_json(payload))
        except ValueError as exc:
            fut.set_exception(RuntimeError(f"the station's reply could not be read: {exc}"))

    async def command(self, verb: str, args: dict[str, Any], *, user: str) -> CommandReply | None:
        """Publish ``P/cmd/<verb>`` and wait for its reply (None when none came in time)."""
        client = self._client
        if client is None:
            raise BrokerUnavailable(f"the web view is not connected to the broker "
                                    f"{self.cfg.mqtt.host}:{self.cfg.mqtt.port}")
        # The user's name in the id puts who asked in the station's log.
        request_id = f"web-{user}-{uuid.uuid4().hex[:12]}"[:64]
        fut: asyncio.Future[CommandReply] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = fut
        try:
            await client.publish(f"{self.prefix}/cmd/{verb}",
                                 json.dumps({**args, "request_id": request_id}), qos=1, retain=False)
            async with asyncio.timeout(self.cfg.web.command_timeout_s):
                return await fut
        except TimeoutError:
            return None
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailable(f"publishing the command failed: {exc}") from None
        finally:
            self._replies.pop(request_id, None)
