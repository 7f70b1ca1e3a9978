"""Every bound the station puts on MQTT traffic, and the helpers that enforce them.

One place for the numbers docs/mqtt.md ("Limits") states, so the dispatcher, the service
and the docs cannot disagree. Anything that comes from the network is bounded before it is
parsed, echoed, logged or used as a topic.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

#: Largest command payload parsed; a larger one is answered ``invalid_request`` unread.
MAX_COMMAND_BYTES = 16 * 1024
#: Deepest nesting of arrays/objects accepted in a command payload.
MAX_JSON_DEPTH = 16
#: Longest piece of a request (a value, a verb) echoed in a reply or an error message.
MAX_ECHO_CHARS = 80
#: Longest reply payload; a larger one is cut down (details dropped, message shortened).
MAX_REPLY_BYTES = 4 * 1024
#: Longest piece of network input written into one log line (after escaping).
MAX_LOG_CHARS = 160
#: Largest message the station publishes (Mosquitto's shipped ``max_packet_size`` is 1 MiB);
#: a larger one is dropped unsent and counted, never offered to the broker.
MAX_MESSAGE_BYTES = 256 * 1024
#: Longest MQTT 5 response topic accepted, in UTF-8 bytes.
MAX_RESPONSE_TOPIC_BYTES = 256
#: Largest MQTT 5 correlation data echoed back.
MAX_CORRELATION_BYTES = 256
#: Replies waiting to be sent; beyond, the oldest reply is dropped and counted. Alarms and
#: transitions have their own queue (``mqtt.queue_max``), never shared with replies.
REPLY_QUEUE_MAX = 256
#: A message in flight when the connection dropped this many times is taken to be refused
#: by the broker: it is dropped with a log line and counted, not retried forever.
MAX_SEND_ATTEMPTS = 3
#: Verbs that are never rate limited and never wait for ``command_max_running``.
SAFETY_VERBS = frozenset({"stop", "park"})
#: Safety commands running at once (a flood of ``stop`` cannot make unbounded tasks).
SAFETY_MAX_RUNNING = 8
#: Request ids remembered for de-duplication (also across restarts, in the state dir).
REMEMBER_IDS = 4096
#: ... and for at most this long on the station clock.
REMEMBER_WINDOW_S = 24 * 3600.0


def clip(text: str, limit: int = MAX_LOG_CHARS) -> str:
    """``text`` escaped (control characters, quotes and non-ASCII as ``\\x..``/``\\u..``)
    and cut to ``limit`` characters with the original length noted, for a log line."""
    head = text[: limit + 1]
    escaped = head.encode("unicode_escape", "backslashreplace").decode("ascii")
    if len(escaped) <= limit and len(text) <= limit:
        return escaped
    return f"{escaped[:limit]}… ({len(text)} characters)"


def brief(value: Any, limit: int = MAX_ECHO_CHARS) -> Any:
    """A small JSON-able stand-in for ``value`` to echo back: short strings and plain
    numbers as they are, long strings cut, anything nested as a cut-down JSON text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if abs(value) < 1e300 else clip(repr(value), limit)
    if isinstance(value, int):
        # A 4,000-digit integer is a valid JSON number; echo only its start.
        return value if abs(value) < 10**18 else f"{str(value)[:20]}… ({len(str(value))} digits)"
    if isinstance(value, str):
        # Control characters stay as they are: JSON escapes them; logs go through clip().
        return value if len(value) <= limit else f"{value[:limit]}… ({len(value)} characters)"
    try:
        text = json.dumps(value, default=str, separators=(",", ":"))
    except (ValueError, TypeError, RecursionError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else clip(text, limit)


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be published to, or None if it is a valid topic name.

    Valid: non-empty UTF-8 of at most 65,535 bytes, no wildcard (``+``, ``#``), no NUL and
    no control character (Mosquitto drops the connection of a client that sends one).
    """
    if not topic:
        return "empty topic"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid UTF-8"
    if size > 65535:
        return f"{size} bytes long (MQTT allows 65535)"
    if "+" in topic or "#" in topic:
        return "contains a wildcard (+ or #)"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in topic):
        return "contains a control character"
    return None


def json_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays/objects in ``value`` nest deeper than ``limit`` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


class TokenBucket:
    """The command rate limit: ``burst`` tokens, refilled at ``rate_per_s`` on the station
    clock (``now_s``); after the clock steps back, refilling waits until it has passed its
    latest reading again."""

    def __init__(self, now_s: Callable[[], float], *, rate_per_s: float, burst: int):
        self._now_s = now_s
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self._tokens = float(burst)
        self._tokens_at_s: float | None = None

    def take(self) -> bool:
        """Take one token if there is one."""
        now_s = self._now_s()
        if self._tokens_at_s is not None and now_s > self._tokens_at_s:
            self._tokens = min(self.burst, self._tokens + (now_s - self._tokens_at_s) * self.rate_per_s)
        self._tokens_at_s = now_s if self._tokens_at_s is None else max(now_s, self._tokens_at_s)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def refusal(self) -> str:
        """The ``rate_limited`` message."""
        return (f"too many commands: at most {self.burst:g} in a burst and "
                f"{self.rate_per_s:g}/s sustained (stop and park are never limited); "
                "try again in a moment")
