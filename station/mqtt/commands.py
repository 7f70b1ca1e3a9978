"""Operator commands over MQTT: what the daemon must implement, and the dispatcher.

A request arrives on ``<root>/<id>/cmd/<verb>`` as a JSON object with a ``request_id``
and the verb's arguments (see :data:`station.mqtt.messages.COMMANDS`). The
:class:`CommandDispatcher` checks it, in this order, and answers on
``<root>/<id>/reply/<request_id>`` (and the MQTT 5 response topic when one is given and
valid):

1. retained messages are ignored and counted, never executed and never answered (a
   retained ``goto`` must not fire when the station reconnects);
2. the request is decoded: at most :data:`~station.mqtt.limits.MAX_COMMAND_BYTES`, UTF-8,
   JSON (no NaN/Infinity, no number too long to read) that is an object nested at most
   :data:`~station.mqtt.limits.MAX_JSON_DEPTH` deep, with a ``request_id`` that fully
   matches its pattern, a known verb (``unknown_verb``) and arguments that validate
   strictly from the JSON text (``invalid_request``: a boolean is not a number, a string
   is not a number; each field, value and reason named), and an MQTT 5 response topic,
   if any, that is a topic name under ``<root>/<id>/reply/``;
3. every message except a valid ``stop`` or ``park`` takes a token from the rate limit
   (token bucket on the station clock); without one the answer is ``rate_limited``,
   whatever else was wrong with it;
4. a ``request_id`` already seen (also before a restart: see
   :mod:`station.mqtt.dedupe`) is not executed again and not answered again;
5. at most ``command_max_running`` commands run at once (``busy``); ``stop`` and ``park``
   have their own limit of :data:`~station.mqtt.limits.SAFETY_MAX_RUNNING`;
6. the :class:`StationControl` method runs in its own task, so a slow ``goto`` never
   holds up a ``stop``. :class:`CommandRefused` becomes a ``refused`` reply with its
   message; any other exception an ``internal`` reply (and a logged traceback).

Requests whose ``request_id`` cannot be read are answered on ``<root>/<id>/reply/_invalid``.
Whatever goes wrong in :meth:`CommandDispatcher.handle` is an error reply, never an
exception out of it. Replies are cut to :data:`~station.mqtt.limits.MAX_REPLY_BYTES` and
echo at most :data:`~station.mqtt.limits.MAX_ECHO_CHARS` characters of any value; log
lines escape and cut what came from the network.

Step 2 (decoding and the response-topic check) is :mod:`station.mqtt.decode`; the rate
limit is :class:`station.mqtt.limits.TokenBucket`.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from station.clock import Clock
from station.mqtt.decode import Reject, brief_verb, decode_request, jsonable, response_topic_problem
from station.mqtt.dedupe import SeenRequests
from station.mqtt.limits import (
    MAX_ECHO_CHARS,
    MAX_REPLY_BYTES,
    SAFETY_MAX_RUNNING,
    SAFETY_VERBS,
    TokenBucket,
    clip,
)
from station.mqtt.messages import (
    AbortPassRequest,
    AbortPassResult,
    CommandError,
    CommandReply,
    CommandRequest,
    CommandResult,
    ErrorCode,
    GotoRequest,
    GotoResult,
    IncludePassRequest,
    IncludePassResult,
    ParkRequest,
    ParkResult,
    ReloadElementsRequest,
    ReloadElementsResult,
    RescheduleRequest,
    RescheduleResult,
    SetModeRequest,
    SetModeResult,
    SkipPassRequest,
    SkipPassResult,
    StopRequest,
    StopResult,
)
from station.vocabulary import Mode

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
    """What the daemon offers to operators. Every method returns its verb's result model
    (:data:`station.mqtt.messages.RESULTS`; the reply's ``result``) or raises
    :class:`CommandRefused`.

    Methods are called from their own task; they may take time (a park waits for the
    mount) but should return once the action is done or clearly under way.
    """

    async def park(self) -> ParkResult:
        """Drive to the park position, ending any pass in progress."""
        ...

    async def stop(self) -> StopResult:
        """Stop all motion now."""
        ...

    async def goto(self, az_deg: float, el_deg: float) -> GotoResult:
        """Point at az/el through the safety gate (refuse in auto/safe mode as the daemon decides)."""
        ...

    async def set_mode(self, mode: Mode) -> SetModeResult:
        """Change the operating mode."""
        ...

    async def skip_pass(self, pass_id: str) -> SkipPassResult:
        """Exclude a planned pass."""
        ...

    async def abort_pass(self, reason: str) -> AbortPassResult:
        """End the current pass now; refuse when no pass is in progress."""
        ...

    async def include_pass(self, pass_id: str) -> IncludePassResult:
        """Force a pass into the plan."""
        ...

    async def reload_elements(self) -> ReloadElementsResult:
        """Re-read the orbital element sources."""
        ...

    async def reschedule(self) -> RescheduleResult:
        """Plan again now."""
        ...


def _call(control: StationControl, req: CommandRequest) -> Coroutine[Any, Any, CommandResult]:
    match req:
        case ParkRequest():
            return control.park()
        case StopRequest():
            return control.stop()
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
        case ReloadElementsRequest():
            return control.reload_elements()
        case RescheduleRequest():
            return control.reschedule()
    raise TypeError(f"no StationControl method for {type(req).__name__}")


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
    handler_errors: int = 0   # a bug or an unforeseen input while handling: answered `internal`


#: Where a reply goes: (reply, MQTT 5 response topic or None, correlation data or None).
ReplySink = Callable[[CommandReply, str | None, bytes | None], None]


@dataclass(frozen=True, slots=True)
class _Incoming:
    """Where a message came from and where its replies go."""

    verb: str
    shown_verb: str                 # the verb as a reply may echo it
    response_topic: str | None      # checked, or None
    correlation: bytes | None


class CommandDispatcher:
    """Validates, de-duplicates, rate-limits and runs commands; see the module docstring.

    ``reply_prefix`` (``<root>/<id>/reply/``) is where MQTT 5 response topics must point;
    ``seen`` is the de-duplication window (in memory only when not given).
    """

    def __init__(
        self,
        control: StationControl | None,
        clock: Clock,
        reply: ReplySink,
        *,
        rate_per_s: float = 2.0,
        burst: int = 5,
        max_running: int = 4,
        reply_prefix: str | None = None,
        seen: SeenRequests | None = None,
    ):
        self.control = control
        self._clock = clock
        self._reply = reply
        self._bucket = TokenBucket(clock.now_s, rate_per_s=rate_per_s, burst=burst)
        self._max_running = max_running
        self._reply_prefix = reply_prefix
        self.seen = seen if seen is not None else SeenRequests(None)
        self._tasks: set[asyncio.Task[None]] = set()
        self._safety_tasks: set[asyncio.Task[None]] = set()
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
        """Take one message from ``cmd/<verb>``. Never raises, never blocks.

        Whatever goes wrong while decoding or handling a message (a RecursionError from a
        deep payload, a ValueError from a huge number, a bug) becomes an error reply: no
        payload can end the MQTT service.
        """
        try:
            self._handle(verb, payload, retained, response_topic, correlation)
        except Exception as exc:
            self.stats.handler_errors += 1
            log.error("command on cmd/%s could not be handled (%s); answered 'internal':\n%s",
                      clip(verb, MAX_ECHO_CHARS), clip(f"{type(exc).__name__}: {exc}"),
                      "".join(traceback.format_tb(exc.__traceback__)))
            self._send(CommandReply(
                request_id=None, verb=brief_verb(verb), ok=False, time=self._clock.now(),
                error=CommandError(code=ErrorCode.INTERNAL,
                                   message=f"the station could not handle this message "
                                           f"({type(exc).__name__}; logged on the station)"),
            ), None, None)

    def _handle(self, verb: str, payload: bytes, retained: bool, response_topic: str | None,
                correlation: bytes | None) -> None:
        if retained and not payload:
            return  # someone clearing a retained command: nothing to do, nothing to count
        self.stats.received += 1
        if retained:
            self._ignore_retained(verb)
            return
        # A response topic that is not a topic name under our own reply/ is never used,
        # not even for the error reply.
        rt_problem = response_topic_problem(response_topic, correlation, self._reply_prefix)
        if rt_problem is not None:
            response_topic = correlation = None
        msg = _Incoming(verb, brief_verb(verb), response_topic, correlation)
        try:
            req = self._decode(verb, payload)
            if rt_problem is not None:
                raise Reject(ErrorCode.INVALID_REQUEST, rt_problem, req.request_id)
        except Reject as rej:
            self._reject(msg, rej)
            return
        tasks = self._admit(msg, req)
        if tasks is not None:
            self._start(msg, req, tasks)

    def _decode(self, verb: str, payload: bytes) -> CommandRequest:
        """The request, strictly validated, or :class:`Reject` saying what is wrong."""
        return decode_request(verb, payload)

    def _ignore_retained(self, verb: str) -> None:
        self.stats.retained_ignored += 1
        # Counted against the limit too, so a flood of retained messages is not a flood
        # of log lines.
        if self._bucket.take():
            log.warning("ignored a retained command on cmd/%s: commands are never taken from "
                        "retained messages (clear it with an empty retained publish)",
                        clip(verb, MAX_ECHO_CHARS))

    def _reject(self, msg: _Incoming, rej: Reject) -> None:
        """An invalid message: answered once per request id, within the rate limit."""
        # Invalid messages count against the limit like any other: a flood of them
        # cannot get past it, and cannot fill the reply queue faster than the limit.
        if not self._bucket.take():
            self.stats.rate_limited += 1
            self._fail(msg, ErrorCode.RATE_LIMITED, self._bucket.refusal(), rej.request_id)
            return
        if rej.request_id is not None:
            if rej.request_id in self.seen:
                self.stats.duplicates_ignored += 1
                return
            self.seen.add(rej.request_id, self._clock.now_s())
        self._fail(msg, rej.code, rej.message, rej.request_id, rej.details)

    def _admit(self, msg: _Incoming, req: CommandRequest) -> set[asyncio.Task[None]] | None:
        """Steps 3 to 5 for a valid request: the task set to run it in, or None when it is
        a duplicate, rate limited, unanswerable now or over the running limit."""
        verb = msg.verb
        safety = verb in SAFETY_VERBS
        if req.request_id in self.seen:
            # Counted against the limit too; logged only within it (no flood of log lines).
            quiet = not safety and not self._bucket.take()
            self.stats.duplicates_ignored += 1
            if not quiet:
                log.info("duplicate request_id %s on cmd/%s ignored (already answered)",
                         req.request_id, clip(verb, MAX_ECHO_CHARS))
            return None
        # stop and park are never rate limited: they are how an operator makes it safe.
        if not safety and not self._bucket.take():
            self.stats.rate_limited += 1
            self._fail(msg, ErrorCode.RATE_LIMITED, self._bucket.refusal(), req.request_id)
            return None  # not remembered: the same request may be sent again later
        if self.control is None:
            self.seen.add(req.request_id, self._clock.now_s())
            self._fail(msg, ErrorCode.REFUSED, "this station takes no commands (no control attached)",
                       req.request_id)
            return None
        tasks, limit = (self._safety_tasks, SAFETY_MAX_RUNNING) if safety else (self._tasks, self._max_running)
        if len(tasks) >= limit:
            self._fail(msg, ErrorCode.BUSY, f"{len(tasks)} {'safety ' if safety else ''}commands still "
                       f"running (limit {limit}); retry later", req.request_id)
            return None  # not remembered: may be retried
        return tasks

    def _start(self, msg: _Incoming, req: CommandRequest, tasks: set[asyncio.Task[None]]) -> None:
        verb = msg.verb
        self.seen.add(req.request_id, self._clock.now_s())
        self.stats.executed += 1
        log.info("command %s %s accepted: %s", verb, req.request_id,
                 clip(req.model_dump_json(exclude={"request_id"})))
        task = asyncio.get_running_loop().create_task(
            self._execute(verb, req, msg.response_topic, msg.correlation),
            name=f"mqtt-cmd-{verb}-{req.request_id}"
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _fail(self, msg: _Incoming, code: ErrorCode, message: str, request_id: str | None,
              details: list[dict[str, Any]] | None = None) -> None:
        self.stats.rejected += 1
        if code is not ErrorCode.RATE_LIMITED or self.stats.rate_limited % 100 == 1:
            log.warning("command %s (%s) rejected: %s%s", clip(msg.verb, MAX_ECHO_CHARS),
                        request_id or "no id", clip(message),
                        f" ({self.stats.rate_limited} rate limited so far)"
                        if code is ErrorCode.RATE_LIMITED else "")
        self._send(CommandReply(
            request_id=request_id, verb=msg.shown_verb, ok=False, time=self._clock.now(),
            error=CommandError(code=code, message=message, details=details or []),
        ), msg.response_topic, msg.correlation)

    # -- execution -----------------------------------------------------------------------
    async def _execute(self, verb: str, req: CommandRequest, response_topic: str | None,
                       correlation: bytes | None) -> None:
        assert self.control is not None
        error: CommandError | None = None
        result: dict[str, Any] | None = None
        try:
            result = (await _call(self.control, req)).model_dump(mode="json")
        except CommandRefused as exc:
            error = CommandError(code=ErrorCode.REFUSED, message=exc.message, details=jsonable(exc.details))
        except asyncio.CancelledError:
            self._send(CommandReply(
                request_id=req.request_id, verb=verb, ok=False, time=self._clock.now(),
                error=CommandError(code=ErrorCode.INTERNAL, message="cancelled: the station is stopping"),
            ), response_topic, correlation)
            raise
        except Exception as exc:  # a bug in the daemon must not take the dispatcher down
            log.exception("command %s %s failed", verb, req.request_id)
            error = CommandError(code=ErrorCode.INTERNAL,
                                 message=f"{type(exc).__name__}: {clip(str(exc))} (logged on the station)")
        if error is None:
            self.stats.succeeded += 1
            log.info("command %s %s done: %s", verb, req.request_id, clip(str(result)))
        else:
            self.stats.rejected += 1
            log.warning("command %s %s not done: %s", verb, req.request_id, clip(error.message))
        self._send(CommandReply(request_id=req.request_id, verb=verb, ok=error is None,
                                error=error, result=result if error is None else None,
                                time=self._clock.now()), response_topic, correlation)

    async def aclose(self) -> None:
        """Cancel commands still running and wait for them (their replies say 'cancelled')."""
        tasks = [*self._tasks, *self._safety_tasks]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def running(self) -> int:
        return len(self._tasks) + len(self._safety_tasks)

    # -- helpers -------------------------------------------------------------------------
    def _send(self, reply: CommandReply, response_topic: str | None, correlation: bytes | None) -> None:
        try:
            self._reply(bounded_reply(reply), response_topic, correlation)
        except Exception:  # the reply path must never break intake
            log.exception("could not queue the reply to %s", reply.request_id)


def bounded_reply(reply: CommandReply) -> CommandReply:
    """``reply``, cut down to at most :data:`MAX_REPLY_BYTES` of JSON: details dropped,
    then the message shortened, then the result replaced by a note of its size."""
    size = len(reply.to_json())
    if size <= MAX_REPLY_BYTES:
        return reply
    update: dict[str, Any] = {}
    if reply.error is not None:
        update["error"] = reply.error.model_copy(update={
            "details": [], "message": clip(reply.error.message, 1000)})
    if reply.result is not None:
        update["result"] = {"truncated": True, "result_bytes": size}
    out = reply.model_copy(update=update)
    log.warning("reply to %s cut to %d bytes (was %d)", out.request_id, len(out.to_json()), size)
    return out
