"""The feed: the station's MQTT status model, filtered, relayed to browsers over SSE.

One aiomqtt client subscribes to ``P/#``. Every message is admitted only if its topic is
part of the documented status model (:data:`MODEL_TOPICS`, the key-report topics), and
then re-serialised from its pydantic model (transitions by kind and the KME's key-store
levels through :mod:`station.web.views`), so neither an unknown topic nor an unknown
field can reach a browser (a seed, a secret, key bits). Key reports are reduced to their
numbers (:func:`numeric_fields`). Each admitted message is encoded once as an SSE frame
and handed to every connected browser's bounded queue; a browser that cannot keep up is
disconnected (its EventSource reconnects and gets a fresh snapshot), so a slow phone
never holds memory or anyone else back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from station.mqtt import messages as m
from station.web.views import TRANSITION, KeyLevelsView, PhaseTransitionView

log = logging.getLogger("station.web.feed")

#: topic suffix -> payload model of the status model MQTT publishes (docs/mqtt.md).
MODEL_TOPICS: dict[str, type[BaseModel]] = {
    "state": m.StateMessage, "schedule": m.ScheduleMessage, "mount": m.MountTelemetry,
    "timetagger": m.TimeTaggerTelemetry, "pass": m.PassProgress, "health": m.HealthMessage,
    "alarms": m.AlarmMessage, "transitions": m.PhaseTransition,
}
#: How each relayed topic is read: its model, or the web view's reading of it
#: (station.web.views: transitions by kind, the KME's key-store levels).
_READERS: dict[str, Callable[[bytes], BaseModel]] = {
    **{suffix: model.model_validate_json for suffix, model in MODEL_TOPICS.items()},
    "transitions": TRANSITION.validate_json,
    "keys/levels": KeyLevelsView.model_validate_json,
}
_PASS_TOPIC = re.compile(r"^passes/(?P<id>[A-Za-z0-9][A-Za-z0-9._:-]{0,63})/(?P<kind>summary|key)$")
KEY_LEVELS = "keys/levels"
#: Largest payload relayed at all (a schedule of a month of passes is ~100 kB).
MAX_PAYLOAD_BYTES = 512 * 1024
#: Largest key report relayed, and its field count / nesting once flattened.
MAX_NUMERIC_BYTES = 16 * 1024
MAX_NUMERIC_FIELDS = 64
MAX_NUMERIC_DEPTH = 3
_FIELD_NAME = re.compile(r"^[A-Za-z0-9_-]{1,48}$")
#: Integers beyond 2^53 are not counts a page shows; they could carry key material.
MAX_SAFE_INT = 2**53
#: Messages kept for a browser that connects mid-pass (strip charts, tracks).
HISTORY_MOUNT, HISTORY_TAGGER, HISTORY_TRANSITIONS, KEPT_PASSES = 3600, 900, 40, 20
#: Frames queued per browser before it is cut off as too slow.
BROWSER_QUEUE_MAX = 4096


def numeric_fields(payload: bytes) -> dict[str, float | int | bool] | None:
    """The numbers of a key report, flattened (``ec.kept_bits``, ``qber.Z.signal``).

    Only finite numbers and booleans under plain names survive, three levels deep at most;
    strings, lists and large integers are dropped: a key report is counts and rates, and
    whatever else a producer puts there (key bits, ids) never reaches a page.
    """
    if len(payload) > MAX_NUMERIC_BYTES:
        return None
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    out: dict[str, float | int | bool] = {}

    def walk(obj: dict[str, Any], prefix: str, depth: int) -> None:
        for key, value in obj.items():
            if len(out) >= MAX_NUMERIC_FIELDS or not isinstance(key, str) or not _FIELD_NAME.match(key):
                continue
            name = f"{prefix}{key}"
            if isinstance(value, bool):
                out[name] = value
            elif isinstance(value, int):
                if abs(value) <= MAX_SAFE_INT:
                    out[name] = value
            elif isinstance(value, float):
                if math.isfinite(value):
                    out[name] = value
            elif isinstance(value, dict) and depth < MAX_NUMERIC_DEPTH:
                walk(value, f"{name}.", depth + 1)

    walk(data, "", 1)
    return out


def sse_frame(topic: str, payload: Any, *, event: str = "msg") -> bytes:
    """One Server-Sent Events frame: ``event: msg`` / ``data: {"topic": ..., "payload": ...}``."""
    data = json.dumps({"topic": topic, "payload": payload}, separators=(",", ":"), ensure_ascii=True)
    return f"event: {event}\ndata: {data}\n\n".encode()


@dataclass(eq=False)
class Browser:
    """One connected feed: its queue and whether it was cut off."""

    queue: asyncio.Queue[bytes] = field(default_factory=lambda: asyncio.Queue(BROWSER_QUEUE_MAX))
    dropped: bool = False


@dataclass
class FeedStats:
    admitted: int = 0
    refused_topic: int = 0
    refused_payload: int = 0
    browsers_cut: int = 0


class FeedHub:
    """The latest status model, its recent history, and the browsers to send it to."""

    def __init__(self, prefix: str, *, on_pass: Callable[[str], None] | None = None,
                 on_time: Callable[[datetime], None] | None = None) -> None:
        self.prefix = prefix
        self.on_pass = on_pass          # a pass id appeared (current or next): fetch its track
        self.on_time = on_time          # station time moved (Sun and Moon)
        self.latest: dict[str, bytes] = {}           # suffix -> frame (retained-like topics)
        self.history: dict[str, deque[bytes]] = {
            "mount": deque(maxlen=HISTORY_MOUNT), "timetagger": deque(maxlen=HISTORY_TAGGER),
            "transitions": deque(maxlen=HISTORY_TRANSITIONS),
        }
        self.alarms: dict[str, bytes] = {}           # raised alarms by key
        self.per_pass: dict[str, bytes] = {}         # passes/<id>/<kind> -> frame, newest KEPT_PASSES
        self.tracks: dict[str, bytes] = {}           # pass id -> track frame
        self.browsers: set[Browser] = set()
        self.stats = FeedStats()
        self._current_pass: str | None = None

    # ------------------------------------------------------------------ intake

    def take(self, topic: str, payload: bytes) -> bool:
        """Admit one MQTT message (full topic); True when it was relayed."""
        if not topic.startswith(self.prefix + "/"):
            self.stats.refused_topic += 1
            return False
        suffix = topic[len(self.prefix) + 1:]
        if len(payload) > MAX_PAYLOAD_BYTES:
            self.stats.refused_payload += 1
            return False
        relayed = self._relay(suffix, payload)
        if relayed:
            self.stats.admitted += 1
        return relayed

    def _relay(self, suffix: str, payload: bytes) -> bool:
        if suffix == "status":
            text = payload.decode(errors="replace")
            if text not in ("online", "offline"):
                self.stats.refused_payload += 1
                return False
            frame = sse_frame(suffix, text)
            self._store_latest(suffix, frame)
            self.broadcast(frame)
            return True
        reader = _READERS.get(suffix)
        if reader is not None:
            return self._relay_model(suffix, reader, payload)
        match = _PASS_TOPIC.match(suffix)
        if match is not None:
            if match["kind"] == "summary":
                return self._relay_model(suffix, m.PassSummary.model_validate_json, payload)
            return self._relay_numbers(suffix, payload)
        self.stats.refused_topic += 1
        return False

    def _relay_model(self, suffix: str, read: Callable[[bytes], BaseModel], payload: bytes) -> bool:
        if not payload:  # a cleared retained topic
            return False
        try:
            msg = read(payload)
        except ValidationError:
            self.stats.refused_payload += 1
            return False
        data = msg.model_dump(mode="json")
        frame = sse_frame(suffix, data)
        if suffix in ("mount", "timetagger", "transitions"):
            if isinstance(msg, PhaseTransitionView) and data["to_phase"] == "prepare" \
                    and data["pass_id"] != self._current_pass:
                # A new pass: its strip charts start empty.
                self.history["mount"].clear()
                self.history["timetagger"].clear()
            self.history[suffix].append(frame)
        if suffix == "alarms":
            if data["state"] == "raised":
                self.alarms[data["key"]] = frame
            else:
                self.alarms.pop(data["key"], None)
        elif suffix.startswith("passes/"):
            self._keep_pass(suffix, frame)
        elif suffix not in ("transitions", "mount", "timetagger"):  # those: the history's last
            self._store_latest(suffix, frame)
        if isinstance(msg, m.StateMessage):
            for ref in (msg.current_pass, msg.next_pass):
                if ref is not None and self.on_pass is not None:
                    self.on_pass(ref.pass_id)
            self._current_pass = msg.current_pass.pass_id if msg.current_pass else self._current_pass
        when = getattr(msg, "time", None)
        if isinstance(when, datetime) and self.on_time is not None:
            self.on_time(when)
        self.broadcast(frame)
        return True

    def _relay_numbers(self, suffix: str, payload: bytes) -> bool:
        numbers = numeric_fields(payload)
        if numbers is None:
            self.stats.refused_payload += 1
            return False
        frame = sse_frame(suffix, numbers)
        self._keep_pass(suffix, frame)
        self.broadcast(frame)
        return True

    def _store_latest(self, suffix: str, frame: bytes) -> None:
        self.latest[suffix] = frame

    def _keep_pass(self, suffix: str, frame: bytes) -> None:
        self.per_pass.pop(suffix, None)
        self.per_pass[suffix] = frame
        while len(self.per_pass) > 2 * KEPT_PASSES:
            self.per_pass.pop(next(iter(self.per_pass)))

    def add_synthetic(self, topic: str, model: BaseModel, *, key: str | None = None) -> None:
        """Relay something the web process computed itself (``track``, ``sky``)."""
        frame = sse_frame(topic, model.model_dump(mode="json"))
        if topic == "track" and key is not None:
            self.tracks[key] = frame
            while len(self.tracks) > 8:
                self.tracks.pop(next(iter(self.tracks)))
        else:
            self.latest[topic] = frame
        self.broadcast(frame)

    # ------------------------------------------------------------------ output

    def snapshot(self) -> list[bytes]:
        """Frames that bring a new browser up to date, oldest first, then ``ready``."""
        frames: list[bytes] = list(self.tracks.values())
        frames += [f for k, f in self.latest.items() if k != "state"]
        frames += list(self.per_pass.values())
        for name in ("transitions", "mount", "timetagger"):
            frames += list(self.history[name])
        frames += list(self.alarms.values())
        if "state" in self.latest:       # last: the page lays itself out from it
            frames.append(self.latest["state"])
        frames.append(b"event: ready\ndata: {}\n\n")
        return frames

    def broadcast(self, frame: bytes) -> None:
        for browser in list(self.browsers):
            if browser.dropped:
                continue
            try:
                browser.queue.put_nowait(frame)
            except asyncio.QueueFull:
                browser.dropped = True
                self.stats.browsers_cut += 1
                self.browsers.discard(browser)
                log.warning("a browser fell %d messages behind: disconnected (it will reconnect)",
                            BROWSER_QUEUE_MAX)

    def connect(self) -> Browser:
        browser = Browser()
        self.browsers.add(browser)
        return browser

    def disconnect(self, browser: Browser) -> None:
        self.browsers.discard(browser)

