"""Operator commands over MQTT: what the daemon must implement, and the dispatcher.

A request arrives on ``<root>/<id>/cmd/<verb>`` as a JSON object with a ``request_id``
and the verb's arguments (see :data:`station.mqtt.messages.COMMANDS`). The
:class:`CommandDispatcher` checks it, in this order, and answers on
``<root>/<id>/reply/<request_id>`` (and the MQTT 5 response topic when one is given):

1. retained messages are ignored and counted, never executed and never answered (a
   retained ``goto`` must not fire when the station reconnects);
2. the payload must be a JSON object (``invalid_json``) with a valid ``request_id``;
3. the verb must exist (``unknown_verb``);
4. a ``request_id`` already seen is not executed again and not answered again;
5. the rate limit (token bucket on the station clock) must allow it (``rate_limited``);
6. the arguments must validate (``invalid_request``, naming each field, value and reason);
7. at most ``command_max_running`` commands run at once (``busy``);
8. the :class:`StationControl` method runs in its own task, so a slow ``goto`` never
   holds up a ``stop``. :class:`CommandRefused` becomes a ``refused`` reply with its
   message; any other exception an ``internal`` reply (and a logged traceback).

Requests whose ``request_id`` cannot be read are answered on ``<root>/<id>/reply/_invalid``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pydantic import ValidationError

from station.clock import Clock
from station.daemon.modes import Mode
from station.mqtt.messages import (
    COMMANDS,
    REQUEST_ID_RE,
    AbortPassRequest,
    CommandError,
    CommandReply,
    CommandRequest,
    ErrorCode,
    GotoRequest,
    IncludePassRequest,
    SetModeRequest,
    SkipPassRequest,
)

log = logging.getLogger("station.mqtt.commands")

#: Reply topic suffix for requests whose request_id could not be read.
INVALID_REPLY_ID = "_invalid"


class CommandRefused(Exception):
    """Raised by a :class:`StationControl` method: the station will not do this now.

    ``message`` is shown to the operator as is, so say what and why, e.g.
    ``"goto refused: el 4.0° is below the elevation limit 10.0°"``.
    """

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or []


@runtime_checkable
class StationControl(Protocol):
    """What the daemon offers to operators. Every method returns a small JSON-able dict
    (the reply's ``result``) or raises :class:`CommandRefused`.

    Methods are called from their own task; they may take time (a park waits for the
    mount) but should return once the action is done or clearly under way.
    """

    async def park(self) -> dict[str, Any]:
        """Drive to the park position, ending any pass in progress."""
        ...

    async def stop(self) -> dict[str, Any]:
        """Stop all motion now."""
        ...

    async def goto(self, az_deg: float, el_deg: float) -> dict[str, Any]:
        """Point at az/el through the safety gate (refuse in auto/safe mode as the daemon decides)."""
        ...

    async def set_mode(self, mode: Mode) -> dict[str, Any]:
        """Change the operating mode."""
        ...

    async def skip_pass(self, pass_id: str) -> dict[str, Any]:
        """Exclude a planned pass."""
        ...

    async def abort_pass(self, reason: str) -> dict[str, Any]:
        """End the current pass now; refuse when no pass is in progress."""
        ...

    async def include_pass(self, pass_id: str) -> dict[str, Any]:
        """Force a pass into the plan."""
        ...

    async def reload_elements(self) -> dict[str, Any]:
        """Re-read the orbital element sources."""
        ...

    async def reschedule(self) -> dict[str, Any]:
        """Plan again now."""
        ...


def _call(control: StationControl, verb: str, req: CommandRequest) -> Coroutine[Any, Any, dict[str, Any]]:
    match req:
        case GotoRequest():
            return control.goto(req.az_deg, req.el_deg)
        case SetModeRequest():
            return control.set_mode(req.mode)
        case SkipPassRequest():
            return control.skip_pass(req.pass_id)
        case IncludePassRequest():
            return control.include_pass(req.pass_id)
        case AbortPassRequest():
            return control.abort_pass(req.reason)
        case _:
            return getattr(control, verb)()


@dataclass
class CommandStats:
    """Counters of everything the dispatcher saw; published in health, read by tests."""

    received: int = 0
    executed: int = 0
    succeeded: int = 0
    rejected: int = 0
    retained_ignored: int = 0
    duplicates_ignored: int = 0
    rate_limited: int = 0


#: Where a reply goes: (reply, MQTT 5 response topic or None, correlation data or None).
ReplySink = Callable[[CommandReply, str | None, bytes | None], None]


class CommandDispatcher:
    """Validates, de-duplicates, rate-limits and runs commands; see the module docstring."""

    def __init__(
        self,
        control: StationControl | None,
        clock: Clock,
        reply: ReplySink,
        *,
        rate_per_s: float = 2.0,
        burst: int = 5,
        max_running: int = 4,
        remember_ids: int = 4096,
    ):
        self.control = control
        self._clock = clock
        self._reply = reply
        self._rate_per_s = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._tokens_at_s: float | None = None
        self._max_running = max_running
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember_ids
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = CommandStats()

    # -- intake --------------------------------------------------------------------------
    def handle(
        self,
        verb: str,
        payload: bytes,
        *,
        retained: bool = False,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> None:
        """Take one message from ``cmd/<verb>``. Never raises, never blocks."""
        if retained and not payload:
            return  # someone clearing a retained command: nothing to do, nothing to count
        self.stats.received += 1
        if retained:
            self.stats.retained_ignored += 1
            log.warning("ignored a retained command on cmd/%s: commands are never taken from "
                        "retained messages (clear it with an empty retained publish)", verb)
            return

        def fail(code: ErrorCode, message: str, request_id: str | None,
                 details: list[dict[str, Any]] | None = None) -> None:
            self.stats.rejected += 1
            log.warning("command %s (%s) rejected: %s", verb, request_id or "no id", message)
            self._send(CommandReply(
                request_id=request_id, verb=verb, ok=False, time=self._clock.now(),
                error=CommandError(code=code, message=message, details=details or []),
            ), response_topic, correlation)

        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            fail(ErrorCode.INVALID_JSON, f"payload is not valid JSON: {exc}", None)
            return
        if not isinstance(data, dict):
            fail(ErrorCode.INVALID_JSON,
                 f"payload must be a JSON object with a request_id, got {type(data).__name__}", None)
            return
        request_id = data.get("request_id")
        if not isinstance(request_id, str) or not REQUEST_ID_RE.match(request_id):
            fail(ErrorCode.INVALID_REQUEST,
                 f"request_id: {request_id!r}: required, 1-64 characters of A-Z a-z 0-9 . _ : - "
                 "starting with a letter or digit", None)
            return
        if request_id in self._seen:
            self.stats.duplicates_ignored += 1
            log.info("duplicate request_id %s on cmd/%s ignored (already answered)", request_id, verb)
            return
        self._remember_id(request_id)

        model = COMMANDS.get(verb)
        if model is None:
            fail(ErrorCode.UNKNOWN_VERB,
                 f"unknown command {verb!r}; known: {', '.join(sorted(COMMANDS))}", request_id)
            return
        if not self._take_token():
            self.stats.rate_limited += 1
            fail(ErrorCode.RATE_LIMITED,
                 f"too many commands: at most {self._burst:g} in a burst and "
                 f"{self._rate_per_s:g}/s sustained; try again in a moment", request_id)
            return
        try:
            req = model.model_validate(data)
        except ValidationError as exc:
            details = [
                {"field": ".".join(str(p) for p in e["loc"]) or "(payload)",
                 "value": e.get("input") if e["type"] != "missing" else None,
                 "reason": e["msg"]}
                for e in exc.errors(include_url=False)
            ]
            text = "; ".join(
                f"{d['field']}: {'(missing)' if d['value'] is None else repr(d['value'])}: {d['reason']}"
                for d in details
            )
            fail(ErrorCode.INVALID_REQUEST, f"invalid {verb} request: {text}", request_id,
                 _jsonable(details))
            return
        if self.control is None:
            fail(ErrorCode.REFUSED, "this station takes no commands (no control attached)", request_id)
            return
        if len(self._tasks) >= self._max_running:
            fail(ErrorCode.BUSY,
                 f"{len(self._tasks)} commands still running (limit {self._max_running}); retry later",
                 request_id)
            return
        self.stats.executed += 1
        log.info("command %s %s accepted: %s", verb, request_id,
                 req.model_dump_json(exclude={"request_id"}))
        task = asyncio.get_running_loop().create_task(
            self._execute(verb, req, response_topic, correlation), name=f"mqtt-cmd-{verb}-{request_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- execution -----------------------------------------------------------------------
    async def _execute(self, verb: str, req: CommandRequest, response_topic: str | None,
                       correlation: bytes | None) -> None:
        assert self.control is not None
        error: CommandError | None = None
        result: dict[str, Any] | None = None
        try:
            result = await _call(self.control, verb, req)
            if result is not None and not isinstance(result, dict):
                result = {"value": result}
            result = _jsonable(result or {})
        except CommandRefused as exc:
            error = CommandError(code=ErrorCode.REFUSED, message=exc.message, details=_jsonable(exc.details))
        except asyncio.CancelledError:
            self._send(CommandReply(
                request_id=req.request_id, verb=verb, ok=False, time=self._clock.now(),
                error=CommandError(code=ErrorCode.INTERNAL, message="cancelled: the station is stopping"),
            ), response_topic, correlation)
            raise
        except Exception as exc:  # a bug in the daemon must not take the dispatcher down
            log.exception("command %s %s failed", verb, req.request_id)
            error = CommandError(code=ErrorCode.INTERNAL,
                                 message=f"{type(exc).__name__}: {exc} (logged on the station)")
        if error is None:
            self.stats.succeeded += 1
            log.info("command %s %s done: %s", verb, req.request_id, result)
        else:
            self.stats.rejected += 1
            log.warning("command %s %s not done: %s", verb, req.request_id, error.message)
        self._send(CommandReply(request_id=req.request_id, verb=verb, ok=error is None,
                                error=error, result=result if error is None else None,
                                time=self._clock.now()), response_topic, correlation)

    async def aclose(self) -> None:
        """Cancel commands still running and wait for them (their replies say 'cancelled')."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def running(self) -> int:
        return len(self._tasks)

    # -- helpers -------------------------------------------------------------------------
    def _send(self, reply: CommandReply, response_topic: str | None, correlation: bytes | None) -> None:
        try:
            self._reply(reply, response_topic, correlation)
        except Exception:  # the reply path must never break intake
            log.exception("could not queue the reply to %s", reply.request_id)

    def _remember_id(self, request_id: str) -> None:
        self._seen[request_id] = None
        while len(self._seen) > self._remember:
            self._seen.popitem(last=False)

    def _take_token(self) -> bool:
        now_s = self._clock.now_s()
        if self._tokens_at_s is not None and now_s > self._tokens_at_s:
            self._tokens = min(self._burst, self._tokens + (now_s - self._tokens_at_s) * self._rate_per_s)
        self._tokens_at_s = now_s if self._tokens_at_s is None else max(now_s, self._tokens_at_s)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def _jsonable(value: Any) -> Any:
    """Make a result or detail safe for JSON (enums, datetimes, numpy scalars -> plain)."""
    return json.loads(json.dumps(value, default=str))
